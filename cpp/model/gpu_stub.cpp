// Stand-ins for the CUDA backend in builds without CUDA (SPLITLLM_CUDA=OFF).
#ifndef SL_CUDA

#include "common/error.h"
#include "model/gpu.h"

namespace sl {

bool cuda_built() { return false; }

GpuInfo cuda_device_info() {
    GpuInfo g;
    g.reason = "this build of splitllm has no CUDA support";
    return g;
}

size_t cuda_backend_overhead(const GpuBackendOptions &) { return 0; }

std::unique_ptr<Backend> make_cuda_backend(const GpuBackendOptions &) {
    throw CudaError("this build of splitllm has no CUDA support");
}

}  // namespace sl

#endif
