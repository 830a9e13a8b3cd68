// The CUDA device the backend runs on (device 0 of those CUDA_VISIBLE_DEVICES shows), and the
// factory. A machine without a driver or a device is reported, not an error.
#include <cuda_runtime_api.h>

#include "common/error.h"
#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"
#include "model/gpu.h"

namespace sl {

namespace {

constexpr int kMinMajor = 8;                   // kernels are built for sm_80 and sm_90
constexpr size_t kReserve = size_t(192) << 20;  // kernel images, graphs, allocation rounding

}  // namespace

bool cuda_built() { return true; }

GpuInfo cuda_device_info() {
    GpuInfo g;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        g.reason = "no CUDA driver (or one too old for this build's CUDA runtime) was found";
        return g;
    }
    if (err != cudaSuccess && err != cudaErrorNoDevice) {
        (void)cudaGetLastError();
        g.reason = strfmt("no usable CUDA device (%s)", cudaGetErrorString(err));
        return g;
    }
    if (err == cudaErrorNoDevice || n == 0) {
        (void)cudaGetLastError();
        g.reason = "no CUDA device is visible";
        return g;
    }
    cudaDeviceProp p;
    err = cudaGetDeviceProperties(&p, 0);
    if (err == cudaSuccess && p.major < kMinMajor) {
        g.reason = strfmt("CUDA0 (%s) has compute capability %d.%d; splitllm's kernels need 8.0 or newer", p.name,
                          p.major, p.minor);
        return g;
    }
    if (err == cudaSuccess) err = cudaSetDevice(0);
    if (err == cudaSuccess) err = cudaMemGetInfo(&g.free_bytes, &g.total_bytes);  // creates the context
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        g.reason = strfmt("CUDA device 0 cannot be used (%s)", cudaGetErrorString(err));
        return g;
    }
    g.available = true;
    g.name = "CUDA0";
    g.description = strfmt("%s (compute %d.%d, %.0f MiB)", p.name, p.major, p.minor, g.total_bytes / 1048576.0);
    return g;
}

size_t cuda_backend_overhead(const GpuBackendOptions & opt) { return cuda::backend_scratch_bytes(opt) + kReserve; }

std::unique_ptr<Backend> make_cuda_backend(const GpuBackendOptions & opt) {
    return std::make_unique<cuda::CudaBackend>(opt);
}

}  // namespace sl
