#include "cuda/common.cuh"
#include "cuda/glu.h"

namespace sl::cuda {

namespace {

struct Silu {
    __device__ float operator()(float x) const { return x / (1.0f + expf(-x)); }
};

// gelu(x) = x * sigmoid(2 z), z = sqrt(2 / pi) * (x + 0.044715 x^3): the tanh form without tanh.
struct Gelu {
    __device__ float operator()(float x) const {
        const float z2 = x * (1.5957691216057308f + 0.0713548162726009f * x * x);
        return x / (1.0f + expf(-z2));
    }
};

template <class F>
__global__ void act_mul_kernel(float * __restrict__ g, const float * __restrict__ u, int64_t n, F f) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        g[i] = f(g[i]) * u[i];
}

// (y may be x: bitnet's matmul scales, y *= 1 + scale)
__global__ void add_kernel(float * y, const float * x, int64_t n, float scale) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] += scale * x[i];
}

unsigned grid(int64_t n) {
    const int64_t blocks = (n + 255) / 256;
    return unsigned(blocks < 65536 ? blocks : 65536);
}

}  // namespace

void silu_mul(float * g, const float * u, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    act_mul_kernel<<<grid(n), 256, 0, stream>>>(g, u, n, Silu{});
    SL_CUDA_LAUNCHED("silu_mul");
}

void gelu_mul(float * g, const float * u, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    act_mul_kernel<<<grid(n), 256, 0, stream>>>(g, u, n, Gelu{});
    SL_CUDA_LAUNCHED("gelu_mul");
}

void add(float * y, const float * x, int64_t n, float scale, cudaStream_t stream) {
    if (n <= 0) return;
    add_kernel<<<grid(n), 256, 0, stream>>>(y, x, n, scale);
    SL_CUDA_LAUNCHED("add");
}

}  // namespace sl::cuda
