#include "cuda/common.cuh"
#include "cuda/hadamard.h"

namespace sl::cuda {

namespace {

constexpr int kMaxRow = 1024;  // head_dim limit of the model config

// One thread block per row: the row in shared memory, log2(n) rounds of butterflies, each
// thread taking pairs (j, j + len) of the row's row / 2.
__global__ void hadamard_kernel(float * __restrict__ x, int row, int n, float scale) {
    __shared__ float sh[kMaxRow];
    float * xr = x + int64_t(blockIdx.x) * row;
    for (int i = threadIdx.x; i < row; i += blockDim.x) sh[i] = xr[i];
    __syncthreads();
    for (int len = 1; len < n; len *= 2) {
        for (int p = threadIdx.x; p < row / 2; p += blockDim.x) {
            // Pair p: block p / (n / 2); within it, group (k / len) of 2 * len values, offset k % len.
            const int blk = p / (n / 2), k = p % (n / 2);
            const int i0 = blk * n + (k / len) * 2 * len + k % len, i1 = i0 + len;
            const float u = sh[i0], v = sh[i1];
            sh[i0] = u + v;
            sh[i1] = u - v;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < row; i += blockDim.x) xr[i] = sh[i] * scale;
}

}  // namespace

void hadamard(float * x, int64_t n_rows, int row, int n, cudaStream_t stream) {
    SL_CHECK(row >= 2 && row <= kMaxRow && n >= 2 && row % n == 0 && (n & (n - 1)) == 0,
             "cuda hadamard: bad row %d / block %d", row, n);
    SL_CHECK(n_rows < (int64_t(1) << 31), "cuda hadamard: %lld rows", (long long)n_rows);
    if (n_rows <= 0) return;
    const int threads = row / 2 < 32 ? 32 : (row / 2 > 256 ? 256 : row / 2);
    hadamard_kernel<<<unsigned(n_rows), threads, 0, stream>>>(x, row, n, 1.0f / sqrtf(float(n)));
    SL_CUDA_LAUNCHED("hadamard");
}

}  // namespace sl::cuda
