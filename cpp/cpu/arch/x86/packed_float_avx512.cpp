// AVX-512 kernels for float weights (F32, F16, BF16) and many tokens (prefill). As for the
// quantized types (packed_avx512.cpp), a panel of 16 weight rows is laid out rows-in-lanes once,
// here as f32: one zmm per k holding the 16 rows' values. The micro-kernel broadcasts x[t][k] for
// each of RN tokens and fma's it against that zmm, accumulating 16 rows' dot products per token
// without any horizontal sum; one panel load serves RN tokens. The activations keep full f32
// precision (F16 and BF16 weights are widened exactly), so the result is the scalar kernel's up
// to the order of the additions (chains of kFloatChunk values, their sums added in the output).
// With AVX512_BF16, BF16 weights take packed_bf16_avx512bf16.cpp's kernel instead.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"

namespace sl::cpu::impl::avx512 {

namespace {

// Rows [0, nr) of W, K values each, to P[k * 16 + r] (rows past nr and k past K are zero, up to
// K rounded up to 16).
template <class L>
void pack_float(const uint8_t * W, size_t ldw, int64_t K, int nr, float * P) {
    for (int64_t k = 0; k < K; k += 16) {
        const int n = int(imin<int64_t>(16, K - k));
        const __mmask16 m = __mmask16((1u << n) - 1);
        __m512 v[16];
        for (int r = 0; r < 16; ++r) {
            if (r >= nr)
                v[r] = _mm512_setzero_ps();
            else
                v[r] = n == 16 ? L::load(W + r * ldw, k) : L::load(W + r * ldw, k, m);
        }
        transpose16(v);
        for (int j = 0; j < 16; ++j) _mm512_store_ps(P + (k + j) * 16, v[j]);
    }
}

// Activation rows t0.. of a block of nt tokens to groups of 16 tokens laid out tokens-in-lanes:
// X[(g * Kp + k) * 16 + t] = x[16 g + t][k], zero past nt and K (Kp = K rounded up to 16).
void pack_acts(const uint8_t * acts, size_t lda, int64_t K, int64_t nt, float * X) {
    const int64_t Kp = int64_t(round_up(size_t(K), 16));
    for (int64_t g = 0; g * 16 < nt; ++g) {
        const int n_t = int(imin<int64_t>(16, nt - 16 * g));
        float * Xg = X + g * Kp * 16;
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = __mmask16((1u << imin<int64_t>(16, K - k)) - 1);
            __m512 v[16];
            for (int t = 0; t < 16; ++t)
                v[t] = t < n_t ? LoadF32::load(acts + (16 * g + t) * lda, k, m) : _mm512_setzero_ps();
            transpose16(v);
            for (int j = 0; j < 16; ++j) _mm512_store_ps(Xg + (k + j) * 16, v[j]);
        }
    }
}

// RN <= 16 tokens of a packed group times the 16 rows of a panel; nr valid rows go to
// y[t * ldy + r]. Per k: one panel load, RN broadcasts, RN fma. The sums run over chunks of
// kFloatChunk values, added up in y: one long chain of f32 additions per result would lose
// more precision than the direct kernels' partial sums.
template <int RN>
void micro(const float * P, const float * X, int64_t K, float * y, int64_t ldy, int nr) {
    const __mmask16 m = __mmask16((1u << nr) - 1);
    for (int64_t k0 = 0; k0 < K; k0 += kFloatChunk) {
        __m512 acc[RN];
        for (int t = 0; t < RN; ++t) acc[t] = _mm512_setzero_ps();
        const int64_t k1 = imin(K, k0 + kFloatChunk);
        for (int64_t k = k0; k < k1; ++k) {
            const __m512 w = _mm512_load_ps(P + k * 16);
            for (int t = 0; t < RN; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_set1_ps(X[k * 16 + t]), acc[t]);
        }
        for (int t = 0; t < RN; ++t) {
            if (k0 > 0) acc[t] = _mm512_add_ps(acc[t], _mm512_maskz_loadu_ps(m, y + t * ldy));
            _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
        }
    }
}

template <class L>
void gemm_packed_float(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                       int64_t n_tok, float * y, int64_t ldy) {
    const int64_t Kp = int64_t(round_up(size_t(K), 16));
    // A block of tokens is packed once and every panel passes over it; each block packs every
    // panel once.
    const int64_t tb = imax<int64_t>(16, int64_t(kFloatTokenBlockBytes / (Kp * 4)) / 16 * 16);
    float * P = reinterpret_cast<float *>(scratch(0, size_t(Kp) * 16 * sizeof(float)));
    float * X = reinterpret_cast<float *>(scratch(2, size_t(imin(tb, n_tok) + 15) / 16 * 16 * size_t(Kp) * sizeof(float)));
    packed_passes(
        n_rows, n_tok, tb, 16, [&](int64_t t0, int64_t nt) { pack_acts(acts + t0 * lda, lda, K, nt, X); },
        [&](int64_t r0, int nr) { pack_float<L>(W + r0 * ldw, ldw, K, nr, P); },
        [&](int64_t t, int n_t, int64_t r0, int nr) {
            const float * Xg = X + (t % tb) / 16 * Kp * 16;  // the group of t within its block
            with_count<16>(n_t, [&](auto rn) { micro<decltype(rn)::value>(P, Xg, K, y + t * ldy + r0, ldy, nr); });
        });
}

}  // namespace

GemmFn packed_float_kernel(QType wt) {
    switch (wt) {
        case QType::F32: return gemm_packed_float<LoadF32>;
        case QType::F16: return gemm_packed_float<LoadF16>;
        case QType::BF16: return gemm_packed_float<LoadBF16>;
        default: return nullptr;
    }
}

}  // namespace sl::cpu::impl::avx512
