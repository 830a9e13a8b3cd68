// BF16 weights and many tokens on CPUs with AVX512_BF16 (Zen 4, Sapphire Rapids): the
// activations are rounded to bf16 (to nearest, even) and vdpbf16ps multiplies pairs of values,
// twice the f32 kernel's products per instruction. llama.cpp does the same (its vec_dot_type for
// BF16 is BF16). Layout as packed_float_avx512.cpp's, with pairs of k in place of single values:
// the panel holds per pair of k one zmm of 16 rows x 2 bf16, the packed activations per pair of k
// 16 tokens x 2 bf16, and the micro-kernel broadcasts a token's pair against the panel's zmm.
// The sums run in one chain per result: the activations' rounding (2^-9) outweighs the chain's.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"

namespace sl::cpu::impl::avx512bf16 {

namespace {

using avx512::LoadF32;
using avx512::transpose16;


// Pairs of k (K rounded up to 32 values: whole zmm of pairs when packing).
int64_t pairs(int64_t K) { return int64_t(round_up(size_t(K), 32)) / 2; }

// 32 values from k on as 16 pairs (zero past K).
__mmask32 tail_mask(int64_t K, int64_t k) {
    const int64_t n = imin<int64_t>(32, K - k);
    return n == 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1);
}

// Rows [0, nr) of bf16 W to P[(kk * 16 + r)] = the pair (W[r][2 kk], W[r][2 kk + 1]) as 32 bits.
void pack_panel(const uint8_t * W, size_t ldw, int64_t K, int nr, uint32_t * P) {
    for (int64_t k = 0; k < K; k += 32) {
        const __mmask32 m = tail_mask(K, k);
        __m512i v[16];
        for (int r = 0; r < 16; ++r)
            v[r] = r < nr ? _mm512_maskz_loadu_epi16(m, W + r * ldw + 2 * k) : _mm512_setzero_si512();
        transpose16(v);
        for (int j = 0; j < 16; ++j) _mm512_store_si512(P + (k / 2 + j) * 16, v[j]);
    }
}

// Activation rows of nt tokens, rounded to bf16, in groups of 16 tokens:
// X[(g * Kh + kk) * 16 + t] = the pair (x[16 g + t][2 kk], x[16 g + t][2 kk + 1]).
void pack_acts(const uint8_t * acts, size_t lda, int64_t K, int64_t nt, uint32_t * X) {
    const int64_t Kh = pairs(K);
    for (int64_t g = 0; g * 16 < nt; ++g) {
        const int n_t = int(imin<int64_t>(16, nt - 16 * g));
        uint32_t * Xg = X + g * Kh * 16;
        for (int64_t k = 0; k < K; k += 32) {
            const int64_t n = imin<int64_t>(32, K - k);
            const __mmask16 m0 = __mmask16((1u << imin<int64_t>(16, n)) - 1);
            const __mmask16 m1 = n > 16 ? __mmask16((1u << (n - 16)) - 1) : __mmask16(0);
            __m512i v[16];
            for (int t = 0; t < 16; ++t) {
                if (t >= n_t) {
                    v[t] = _mm512_setzero_si512();
                    continue;
                }
                const uint8_t * row = acts + (16 * g + t) * lda;
                const __m512 lo = LoadF32::load(row, k, m0);
                const __m512 hi = m1 ? LoadF32::load(row, k + 16, m1) : _mm512_setzero_ps();
                v[t] = _mm512_castps_si512(__m512(_mm512_cvtne2ps_pbh(hi, lo)));
            }
            transpose16(v);
            for (int j = 0; j < 16; ++j) _mm512_store_si512(Xg + (k / 2 + j) * 16, v[j]);
        }
    }
}

template <int RN>
void micro(const uint32_t * P, const uint32_t * X, int64_t Kh, float * y, int64_t ldy, int nr) {
    __m512 acc[RN];
    for (int t = 0; t < RN; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < Kh; ++kk, P += 16, X += 16) {
        const __m512bh w = __m512bh(_mm512_load_si512(P));
        for (int t = 0; t < RN; ++t)
            acc[t] = _mm512_dpbf16_ps(acc[t], w, __m512bh(_mm512_set1_epi32(int(X[t]))));
    }
    const __mmask16 m = __mmask16((1u << nr) - 1);
    for (int t = 0; t < RN; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

void gemm_packed_bf16(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                      int64_t n_tok, float * y, int64_t ldy) {
    const int64_t Kh = pairs(K);
    const int64_t tb = imax<int64_t>(16, int64_t(kFloatTokenBlockBytes / (Kh * 4)) / 16 * 16);
    uint32_t * P = reinterpret_cast<uint32_t *>(scratch(0, size_t(Kh) * 16 * 4));
    uint32_t * X = reinterpret_cast<uint32_t *>(scratch(2, size_t(imin(tb, n_tok) + 15) / 16 * 16 * size_t(Kh) * 4));
    // The pairs past K are zero in both the panel and the activations: the loop may run over them.
    const int64_t Kr = (K + 1) / 2;
    packed_passes(
        n_rows, n_tok, tb, 16, [&](int64_t t0, int64_t nt) { pack_acts(acts + t0 * lda, lda, K, nt, X); },
        [&](int64_t r0, int nr) { pack_panel(W + r0 * ldw, ldw, K, nr, P); },
        [&](int64_t t, int n_t, int64_t r0, int nr) {
            const uint32_t * Xg = X + (t % tb) / 16 * Kh * 16;
            with_count<16>(n_t, [&](auto rn) { micro<decltype(rn)::value>(P, Xg, Kr, y + t * ldy + r0, ldy, nr); });
        });
}

}  // namespace

GemmFn packed_kernel() { return gemm_packed_bf16; }

}  // namespace sl::cpu::impl::avx512bf16
