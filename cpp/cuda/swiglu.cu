#include "cuda/common.cuh"
#include "cuda/swiglu.h"

namespace sl::cuda {

namespace {

__global__ void silu_mul_kernel(float * __restrict__ g, const float * __restrict__ u, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

}  // namespace

void silu_mul(float * g, const float * u, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    const int64_t blocks = (n + 255) / 256;
    silu_mul_kernel<<<unsigned(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(g, u, n);
    SL_CUDA_LAUNCHED("silu_mul");
}

}  // namespace sl::cuda
