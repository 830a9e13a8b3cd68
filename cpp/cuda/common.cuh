// Shared by the CUDA kernels: error checking (every runtime call goes through SL_CUDA_CHECK and
// a failure becomes sl::CudaError), warp reductions and small device helpers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/error.h"

namespace sl::cuda {

constexpr int kWarp = 32;

// Throws CudaError naming the call, the file and line, and CUDA's description of the error.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char * call, const char * file, int line);

// Throws if the last kernel launch failed (bad configuration, missing kernel image).
void check_launch(const char * kernel);

}  // namespace sl::cuda

#define SL_CUDA_CHECK(call)                                                                 \
    do {                                                                                    \
        const cudaError_t sl_err_ = (call);                                                 \
        if (sl_err_ != cudaSuccess) ::sl::cuda::throw_cuda_error(sl_err_, #call, __FILE__, __LINE__); \
    } while (0)

#define SL_CUDA_LAUNCHED(name) ::sl::cuda::check_launch(name)

#if defined(__CUDACC__)

namespace sl::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace sl::cuda

#endif
