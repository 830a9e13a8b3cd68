#include "cuda/common.cuh"
#include "cuda/rms_norm.h"

namespace sl::cuda {

namespace {

constexpr int kThreads = 256;

// The sum of v over the block's threads, for every thread.
__device__ double block_sum(double v) {
    __shared__ double part[kThreads / kWarp];
    __shared__ double total;
    v = warp_sum(v);
    __syncthreads();  // (part may still be read from a previous call)
    if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < kThreads / kWarp; ++i) t += part[i];
        total = t;
    }
    __syncthreads();
    return total;
}

// One block per row; the sum of squares in double, as the CPU backend does. y may be x (no
// __restrict__ on them): each element is read, then written by the same thread.
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const float * x, const float * __restrict__ w, float * y,
                                                            int n, float eps) {
    const float * xr = x + size_t(blockIdx.x) * n;
    float * yr = y + size_t(blockIdx.x) * n;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += kThreads) ss += double(xr[i]) * double(xr[i]);
    const float scale = float(1.0 / sqrt(block_sum(ss) / n + double(eps)));
    for (int i = threadIdx.x; i < n; i += kThreads) yr[i] = xr[i] * scale * w[i];
}

// LayerNorm without a bias, as the CPU backend computes it: the mean, then the variance about it.
__global__ void __launch_bounds__(kThreads) layer_norm_kernel(const float * x, const float * __restrict__ w,
                                                              float * y, int n, float eps) {
    const float * xr = x + size_t(blockIdx.x) * n;
    float * yr = y + size_t(blockIdx.x) * n;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += kThreads) s += double(xr[i]);
    const float mean = float(block_sum(s) / n);
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += kThreads) ss += double(xr[i] - mean) * double(xr[i] - mean);
    const float scale = float(1.0 / sqrt(block_sum(ss) / n + double(eps)));
    for (int i = threadIdx.x; i < n; i += kThreads) yr[i] = (xr[i] - mean) * scale * w[i];
}

}  // namespace

void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps, cudaStream_t stream) {
    SL_CHECK(n_tok >= 0 && n > 0, "cuda rms_norm: bad shape (%d, %d)", n_tok, n);
    if (n_tok == 0) return;
    rms_norm_kernel<<<n_tok, kThreads, 0, stream>>>(x, w, y, n, eps);
    SL_CUDA_LAUNCHED("rms_norm");
}

void layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps, cudaStream_t stream) {
    SL_CHECK(n_tok >= 0 && n > 0, "cuda layer_norm: bad shape (%d, %d)", n_tok, n);
    if (n_tok == 0) return;
    layer_norm_kernel<<<n_tok, kThreads, 0, stream>>>(x, w, y, n, eps);
    SL_CUDA_LAUNCHED("layer_norm");
}

}  // namespace sl::cuda
