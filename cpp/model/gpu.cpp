#include "model/gpu.h"

namespace sl {

GpuInfo gpu_info() { return fake_gpu_enabled() ? fake_gpu_info() : cuda_device_info(); }

size_t gpu_backend_overhead(const GpuBackendOptions & opt) {
    return fake_gpu_enabled() ? 0 : cuda_backend_overhead(opt);
}

std::unique_ptr<Backend> make_gpu_backend(const GpuBackendOptions & opt) {
    return fake_gpu_enabled() ? make_fake_gpu_backend(opt) : make_cuda_backend(opt);
}

}  // namespace sl
