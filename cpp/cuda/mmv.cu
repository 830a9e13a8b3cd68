// Mat-vec for F32/F16/BF16 weights: one warp per weight row, float activations, 8 values per
// lane per step (16/32-byte loads) when rows allow it, one value otherwise.
#include "cuda/blocks.h"
#include "cuda/common.cuh"
#include "cuda/matmul.h"

namespace sl::cuda {

namespace {

constexpr int kRowsPerBlock = 4;

// 8 consecutive weights starting at k (k a multiple of 8, row 16-byte aligned).
template <QType T>
__device__ __forceinline__ void load8(const uint8_t * row, int k, float w[8]) {
    if constexpr (T == QType::F32) {
        const float4 a = reinterpret_cast<const float4 *>(row)[k / 4];
        const float4 b = reinterpret_cast<const float4 *>(row)[k / 4 + 1];
        w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
    } else {
        const uint4 v = reinterpret_cast<const uint4 *>(row)[k / 8];
        const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if constexpr (T == QType::F16) {
                const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&u[i]));
                w[2 * i] = f.x, w[2 * i + 1] = f.y;
            } else {
                w[2 * i] = __uint_as_float(u[i] << 16);
                w[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
            }
        }
    }
}

template <QType T, int NT, bool VEC>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp)
    mmv_kernel(const uint8_t * __restrict__ W, size_t ldw, int K, int rows, const float * __restrict__ x, int n_tok,
               float * __restrict__ y, int64_t ldy, const float * __restrict__ bias, bool accumulate) {
    const int r = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
    if (r >= rows) return;
    const int lane = threadIdx.x % kWarp;
    const uint8_t * wr = W + size_t(r) * ldw;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    if constexpr (VEC) {
        for (int k = lane * 8; k < K; k += kWarp * 8) {
            float w[8];
            load8<T>(wr, k, w);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= n_tok) break;
                const float4 * xv = reinterpret_cast<const float4 *>(x + size_t(t) * K + k);
                const float4 a = xv[0], b = xv[1];
                acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
                          w[7] * b.w;
            }
        }
    } else {
        for (int k = lane; k < K; k += kWarp) {
            const float w = float_value<T>(wr, k);
#pragma unroll
            for (int t = 0; t < NT; ++t)
                if (t < n_tok) acc[t] += w * x[size_t(t) * K + k];
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float v = warp_sum(acc[t]);
        if (lane == 0 && t < n_tok) {
            float * dst = y + t * ldy + r;
            const float out = v + (bias ? bias[r] : 0.0f);
            *dst = accumulate ? *dst + out : out;
        }
    }
}

template <QType T, int NT>
void launch(const MatArgs & a, const float * x, int n_tok, float * y, bool vec, cudaStream_t stream) {
    const unsigned blocks = unsigned((a.rows + kRowsPerBlock - 1) / kRowsPerBlock);
    const auto * W = static_cast<const uint8_t *>(a.W);
    const size_t ldw = row_size(T, a.K);
    if (vec)
        mmv_kernel<T, NT, true><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(W, ldw, int(a.K), int(a.rows), x, n_tok,
                                                                             y, a.ldy, a.bias, a.accumulate);
    else
        mmv_kernel<T, NT, false><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(W, ldw, int(a.K), int(a.rows), x,
                                                                              n_tok, y, a.ldy, a.bias, a.accumulate);
    SL_CUDA_LAUNCHED("mmv");
}

}  // namespace

void mmv(const MatArgs & a, const float * x, cudaStream_t stream) {
    SL_CHECK(is_float_type(a.type), "cuda mmv: weight type %u is not F32/F16/BF16", unsigned(a.type));
    SL_CHECK(a.K > 0 && a.K < (int64_t(1) << 30) && a.rows > 0 && a.rows < (int64_t(1) << 31),
             "cuda mmv: bad shape (%lld, %lld)", (long long)a.rows, (long long)a.K);
    const bool vec = a.K % 8 == 0 && reinterpret_cast<uintptr_t>(a.W) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(x) % 16 == 0;
    visit_weight_type(a.type, [&](auto tag) {
        constexpr QType T = decltype(tag)::value;
        if constexpr (is_float_type(T)) {
            for (int t0 = 0; t0 < a.n_tok; t0 += kVecTok) {
                const int n = a.n_tok - t0 < kVecTok ? a.n_tok - t0 : kVecTok;
                const float * xt = x + size_t(t0) * a.K;
                float * y = a.y + t0 * a.ldy;
                if (n == 1)
                    launch<T, 1>(a, xt, n, y, vec, stream);
                else if (n == 2)
                    launch<T, 2>(a, xt, n, y, vec, stream);
                else if (n <= 4)
                    launch<T, 4>(a, xt, n, y, vec, stream);
                else
                    launch<T, 8>(a, xt, n, y, vec, stream);
            }
        }
    });
}

}  // namespace sl::cuda
