#include "cuda/common.cuh"
#include "cuda/rope.h"

namespace sl::cuda {

namespace {

__global__ void rope_tables_kernel(const int * __restrict__ pos, const float * __restrict__ inv_freq, int n, int half,
                                   double mscale, float * __restrict__ cos_t, float * __restrict__ sin_t) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int t = i / half, j = i % half;
    double s, c;
    sincos(double(pos[t]) * double(inv_freq[j]), &s, &c);  // double: unaffected by fast math
    cos_t[i] = float(c * mscale);
    sin_t[i] = float(s * mscale);
}

// One block per token; threads over (head, pair).
__global__ void rope_kernel(float * __restrict__ q, float * __restrict__ k, const float * __restrict__ cos_t,
                            const float * __restrict__ sin_t, RopeShape s) {
    const int t = blockIdx.x, half = s.n_rot / 2;
    const float * c = cos_t + size_t(t) * half;
    const float * sn = sin_t + size_t(t) * half;
    const int n_heads = s.n_head + s.n_head_kv;
    for (int i = threadIdx.x; i < n_heads * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        float * head = h < s.n_head ? q + (size_t(t) * s.n_head + h) * s.head_dim
                                    : k + (size_t(t) * s.n_head_kv + (h - s.n_head)) * s.head_dim;
        const int a = s.neox ? j : 2 * j, b = s.neox ? j + half : 2 * j + 1;
        const float x0 = head[a], x1 = head[b];
        head[a] = x0 * c[j] - x1 * sn[j];
        head[b] = x0 * sn[j] + x1 * c[j];
    }
}

// One block per token: its query row times the temperature of its position (as the CPU backend
// computes it, in double).
__global__ void attn_temp_kernel(float * __restrict__ q, const int * __restrict__ pos, int row, float scale,
                                 int floor_scale) {
    const int t = blockIdx.x;
    const float m = float(log(floor(double(pos[t]) / floor_scale) + 1.0) * scale + 1.0);
    for (int i = threadIdx.x; i < row; i += blockDim.x) q[size_t(t) * row + i] *= m;
}

}  // namespace

void rope_tables(const int * pos, const float * inv_freq, int n_tok, int n_rot, float mscale, float * cos_t,
                 float * sin_t, cudaStream_t stream) {
    const int n = n_tok * (n_rot / 2);
    if (n <= 0) return;
    rope_tables_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(pos, inv_freq, n, n_rot / 2, double(mscale), cos_t, sin_t);
    SL_CUDA_LAUNCHED("rope_tables");
}

void rope(float * q, float * k, const float * cos_t, const float * sin_t, const int * pos, int n_tok,
          const RopeShape & s, cudaStream_t stream) {
    SL_CHECK(s.n_rot >= 0 && s.n_rot % 2 == 0 && s.n_rot <= s.head_dim, "cuda rope: n_rot %d for head_dim %d",
             s.n_rot, s.head_dim);
    if (n_tok <= 0 || s.n_rot == 0) return;
    const int work = (s.n_head + s.n_head_kv) * (s.n_rot / 2);
    const int threads = work >= 256 ? 256 : (work + 31) / 32 * 32;
    rope_kernel<<<n_tok, threads, 0, stream>>>(q, k, cos_t, sin_t, s);
    SL_CUDA_LAUNCHED("rope");
    if (s.temp_scale != 0.0f) {
        attn_temp_kernel<<<n_tok, 128, 0, stream>>>(q, pos, s.n_head * s.head_dim, s.temp_scale, s.temp_floor);
        SL_CUDA_LAUNCHED("attn_temp");
    }
}

}  // namespace sl::cuda
