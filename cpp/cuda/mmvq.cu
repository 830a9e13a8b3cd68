// Mat-vec for block-quantized weights: one warp per weight row, each lane a group of 16 values
// at a time (blocks.h), dp4a against the int8 activations of up to NT tokens.
#include "cuda/act.h"
#include "cuda/blocks.h"
#include "cuda/common.cuh"
#include "cuda/matmul.h"

namespace sl::cuda {

namespace {

constexpr int kRowsPerBlock = 4;

template <QType T, int NT>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp)
    mmvq_kernel(const uint8_t * __restrict__ W, size_t ldw, int K, int rows, const uint8_t * __restrict__ act,
                size_t lda, int n_tok, float * __restrict__ y, int64_t ldy, const float * __restrict__ bias,
                bool accumulate) {
    const int r = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
    if (r >= rows) return;  // whole warps leave; no block-wide synchronisation below
    const int lane = threadIdx.x % kWarp;
    const uint8_t * wr = W + size_t(r) * ldw;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int g = lane; g < K / 16; g += kWarp) {
        const Group16 w = Blk<T>::group(wr, g);
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (t < n_tok) acc[t] += group_dot(w, act + size_t(t) * lda, K, g);
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
void launch(const MatArgs & a, const uint8_t * act, int n_tok, float * y, cudaStream_t stream) {
    const unsigned blocks = unsigned((a.rows + kRowsPerBlock - 1) / kRowsPerBlock);
    mmvq_kernel<T, NT><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(
        static_cast<const uint8_t *>(a.W), row_size(T, a.K), int(a.K), int(a.rows), act, ActQ8::row_bytes(a.K),
        n_tok, y, a.ldy, a.bias, a.accumulate);
    SL_CUDA_LAUNCHED("mmvq");
}

}  // namespace

void mmvq(const MatArgs & a, const uint8_t * act_q8, cudaStream_t stream) {
    SL_CHECK(qtype_traits(a.type) && qtype_traits(a.type)->is_quantized && matmul_supports(a.type),
             "cuda mmvq: unsupported weight type %u", unsigned(a.type));
    const int64_t blk = qtype_traits(a.type)->blck_size;
    SL_CHECK(a.K > 0 && a.K % blk == 0 && a.K < (int64_t(1) << 30) && a.rows > 0 && a.rows < (int64_t(1) << 31),
             "cuda mmvq: bad shape (%lld, %lld) for %s", (long long)a.rows, (long long)a.K, qtype_traits(a.type)->name);
    SL_CHECK(reinterpret_cast<uintptr_t>(a.W) % 16 == 0 && reinterpret_cast<uintptr_t>(act_q8) % 16 == 0,
             "cuda mmvq: weights and activations must be 16-byte aligned");
    const size_t lda = ActQ8::row_bytes(a.K);
    visit_weight_type(a.type, [&](auto tag) {
        constexpr QType T = decltype(tag)::value;
        if constexpr (!is_float_type(T)) {
            for (int t0 = 0; t0 < a.n_tok; t0 += kVecTok) {
                const int n = a.n_tok - t0 < kVecTok ? a.n_tok - t0 : kVecTok;
                const uint8_t * act = act_q8 + size_t(t0) * lda;
                float * y = a.y + t0 * a.ldy;
                if (n == 1)
                    launch<T, 1>(a, act, n, y, stream);
                else if (n == 2)
                    launch<T, 2>(a, act, n, y, stream);
                else if (n <= 4)
                    launch<T, 4>(a, act, n, y, stream);
                else
                    launch<T, 8>(a, act, n, y, stream);
            }
        }
    });
}

bool matmul_supports(QType t) {
    return visit_weight_type(t, [](auto) {});
}

}  // namespace sl::cuda
