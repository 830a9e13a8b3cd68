// AVX-512 VNNI kernels that read the weight blocks as stored (decode: a few tokens at a time).
// Four blocks of a weight row (128 codes, two zmm in the activation order) are dotted with up
// to 4 tokens' int8 activations by two vpdpbusd (unsigned codes x signed activations), which
// leave each block's sum in 4 int32 lanes; those are scaled in float by d_w * d_a, spread to
// the lanes by vpermps. Offsets and mins are one xmm fma per 4 blocks against the activation
// block sums. Weight bytes are read with 16- and 32-byte loads in address order (streams from
// memory at full speed on Zen 4, where 64-byte loads across blocks did not). Rows go in groups
// of 16 whose final sums are one transposing reduction. Float weights: 16 values per fma.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"
#include "cpu/arch/x86/blocks_iq_avx512.h"

namespace sl::cpu::impl::avx512 {

namespace {

// KQuant types that decode a whole super-block at once for the decode kernel (codes_sb).
template <class B, class = void>
struct HasCodesSb {
    static constexpr bool value = false;
};
template <class B>
struct HasCodesSb<B, decltype(void(&B::codes_sb))> {
    static constexpr bool value = true;
};

// Up to 4 tokens' activation rows.
template <int NT>
struct Acts {
    const int8_t * qs[NT];
    const float * d[NT];
    const float * s[NT];
    const float * s16[NT];
    Acts(const uint8_t * acts, size_t lda, int64_t K) {
        for (int t = 0; t < NT; ++t) {
            const uint8_t * row = acts + t * lda;
            qs[t] = ActQ8::qs(row);
            d[t] = ActQ8::d(row, K);
            s[t] = ActQ8::s(row, K);
            s16[t] = ActQ8::s16(row, K);
        }
    }
};

// Per token: the row's dot product so far, as vectors to be summed.
template <int NT>
struct RowAcc {
    __m512 acc[NT][2];
    __m512 accm[NT];
    RowAcc() {
        for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = accm[t] = _mm512_setzero_ps();
    }
};

// Blocks q..q+n-1 (n <= 4) of a legacy row; `half` picks the accumulator (two dependency chains).
template <QType WT, int NT>
inline void legacy_step(const uint8_t * row, int q, int n, const Acts<NT> & a, RowAcc<NT> & r, int half) {
    using B = Legacy<WT>;
    const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    Codes c;
    __m128 d, m;
#ifdef SL_PF
    for (int o = 0; o < 4 * B::kBytes; o += 64) _mm_prefetch(reinterpret_cast<const char *>(row + q * B::kBytes + o + SL_PF), _MM_HINT_T0);
#endif
    B::load4(row + q * B::kBytes, n, &c, &d, &m);
    for (int t = 0; t < NT; ++t) {
        const __m128 cx = _mm_mul_ps(d, _mm_loadu_ps(a.d[t] + q));
        r.accm[t] = _mm512_castps128_ps512(
            _mm_fmadd_ps(m, _mm_loadu_ps(a.s[t] + q), _mm512_castps512_ps128(r.accm[t])));
        const int8_t * x = a.qs[t] + 32 * q;
        __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c.lo, _mm512_loadu_si512(x));
        dot = _mm512_dpbusd_epi32(dot, c.hi, _mm512_loadu_si512(x + 64));
        r.acc[t][half] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(cx)),
                                         r.acc[t][half]);
    }
}

// One legacy row times NT tokens: fin[t] = vector whose lanes sum to the dot product.
template <QType WT, int NT>
inline void legacy_row(const uint8_t * row, int nb, const Acts<NT> & a, __m512 * fin) {
    using B = Legacy<WT>;
    RowAcc<NT> r;
    // The xmm accumulators of the offset / min terms live in the low lanes of accm.
    int q = 0;
    for (; q + 8 <= nb; q += 8) {
        legacy_step<WT, NT>(row, q, 4, a, r, 0);
        legacy_step<WT, NT>(row, q + 4, 4, a, r, 1);
    }
    for (; q < nb; q += 4) legacy_step<WT, NT>(row, q, imin(4, nb - q), a, r, 0);
    const __m512 mscale = _mm512_set1_ps(B::kHasMin ? 1.0f : -float(B::kOffset));
    for (int t = 0; t < NT; ++t)
        fin[t] = _mm512_fmadd_ps(mscale, _mm512_maskz_mov_ps(0xF, r.accm[t]), _mm512_add_ps(r.acc[t][0], r.acc[t][1]));
}

// One k-quant row times NT tokens.
template <QType WT, int NT>
inline void kquant_row(const uint8_t * row, int64_t K, const Acts<NT> & a, __m512 * fin) {
    using B = KQuant<WT>;
    RowAcc<NT> r;
    const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    // Lanes 4j..4j+3 hold block j of a half super-block: 16-value groups 2j (values 0..15), 2j + 1.
    const __m512i grp = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const uint8_t * sb = row + i * B::kBytes;
        // The ternary types read few bytes per value, and the hardware prefetcher falls behind
        // (kTernaryPrefetch); the other types are timed without a prefetch.
        if constexpr (WT == QType::TQ1_0 || WT == QType::TQ2_0)
            _mm_prefetch(reinterpret_cast<const char *>(sb + kTernaryPrefetch), _MM_HINT_T0);
        __m512 dg, mg;
        B::scales(sb, &dg, &mg);
        __m512 c[NT];
        for (int t = 0; t < NT; ++t) {
            const __m512 da = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(a.d[t] + 8 * i)));
            c[t] = _mm512_mul_ps(dg, da);
            r.accm[t] = _mm512_fmadd_ps(mg, _mm512_loadu_ps(a.s16[t] + 16 * i), r.accm[t]);
        }
        Codes whole[2];
        if constexpr (HasCodesSb<B>::value) B::codes_sb(sb, whole);
        for (int g = 0; g < 2; ++g) {
            Codes cd;
            if constexpr (HasCodesSb<B>::value) cd = whole[g];
            else cd = B::codes(sb, g);
            const __m512i ilo = _mm512_add_epi32(grp, _mm512_set1_epi32(8 * g));
            for (int t = 0; t < NT; ++t) {
                const int8_t * x = a.qs[t] + QK_K * i + 128 * g;
                if constexpr (B::kGroups16) {
                    const __m512i dlo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), cd.lo, _mm512_loadu_si512(x));
                    const __m512i dhi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), cd.hi, _mm512_loadu_si512(x + 64));
                    const __m512i ihi = _mm512_add_epi32(ilo, _mm512_set1_epi32(1));
                    r.acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dlo), _mm512_permutexvar_ps(ilo, c[t]), r.acc[t][0]);
                    r.acc[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dhi), _mm512_permutexvar_ps(ihi, c[t]), r.acc[t][1]);
                } else {
                    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), cd.lo, _mm512_loadu_si512(x));
                    dot = _mm512_dpbusd_epi32(dot, cd.hi, _mm512_loadu_si512(x + 64));
                    r.acc[t][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(ilo, c[t]), r.acc[t][g]);
                }
            }
        }
    }
    for (int t = 0; t < NT; ++t) fin[t] = _mm512_add_ps(_mm512_add_ps(r.acc[t][0], r.acc[t][1]), r.accm[t]);
}

// Rows in groups of 16 so that their final sums are one transposing reduction.
template <QType WT, int NT>
void quant_rows(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                float * y, int64_t ldy) {
    const Acts<NT> a(acts, lda, K);
    for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
        const int nr = int(imin<int64_t>(16, n_rows - r0));
        __m512 fin[NT][16];
        for (int i = 0; i < 16; ++i) {
            __m512 f[NT];
            if (i >= nr) {
                for (int t = 0; t < NT; ++t) f[t] = _mm512_setzero_ps();
            } else if constexpr (qtype_block_size(WT) == 32) {
                legacy_row<WT, NT>(W + (r0 + i) * ldw, int(K / 32), a, f);
            } else {
                kquant_row<WT, NT>(W + (r0 + i) * ldw, K, a, f);
            }
            for (int t = 0; t < NT; ++t) fin[t][i] = f[t];
        }
        for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy + r0, __mmask16((1u << nr) - 1), hsum16(fin[t]));
    }
}

template <QType WT>
void gemv_quant(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy) {
    const int64_t rb = n_tok > 4 ? kRowBlock : n_rows;
    for (int64_t r0 = 0; r0 < n_rows; r0 += rb) {
        const int64_t nr = imin(rb, n_rows - r0);
        const uint8_t * w = W + r0 * ldw;
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4) quant_rows<WT, 4>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy);
        switch (n_tok - t) {
            case 3: quant_rows<WT, 3>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy); break;
            case 2: quant_rows<WT, 2>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy); break;
            case 1: quant_rows<WT, 1>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy); break;
            default: break;
        }
    }
}

// ---- float weights: 16 values per step, converted to f32 and fma'd with the float activations ----

// x rounded to the nearest bfloat16 (ties to even), as vcvtne2ps2bf16 rounds (NaN kept).
inline __m512 round_bf16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))),
                                       _mm512_set1_epi32(int(0xFFFF0000u)));
    return _mm512_mask_mov_ps(_mm512_castsi512_ps(r), _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

// One weight row times NT tokens; K any length (the tail is masked). Two accumulators per token
// alternate over steps of 16 values.
template <class L, int NT>
void float_row(const uint8_t * W, int64_t K, const uint8_t * acts, size_t lda, float * y, int64_t ldy) {
    __m512 acc[2][NT];
    for (int h = 0; h < 2; ++h)
        for (int t = 0; t < NT; ++t) acc[h][t] = _mm512_setzero_ps();
    auto x_at = [&](int t, int64_t k) { return reinterpret_cast<const float *>(acts + t * lda) + k; };
    auto step = [&](int h, int64_t k) {
        const __m512 w = L::load(W, k);
        for (int t = 0; t < NT; ++t) acc[h][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x_at(t, k)), acc[h][t]);
    };
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        step(0, k);
        step(1, k + 16);
    }
    if (k + 16 <= K) {
        step(0, k);
        k += 16;
    }
    if (k < K) {
        const __mmask16 m = __mmask16((1u << (K - k)) - 1);
        const __m512 w = L::load(W, k, m);
        for (int t = 0; t < NT; ++t) acc[1][t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, x_at(t, k)), acc[1][t]);
    }
    for (int t = 0; t < NT; ++t) y[t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][t], acc[1][t]));
}

// One row at a time (two rows side by side halve the speed of streaming them from memory when
// there are several tokens: measured on Zen 4).
template <class L, int NT>
void float_rows(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                float * y, int64_t ldy) {
    for (int64_t r = 0; r < n_rows; ++r) float_row<L, NT>(W + r * ldw, K, acts, lda, y + r, ldy);
}

template <class L>
void gemm_float(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy) {
    const int64_t rb = n_tok > 4 ? kRowBlock : n_rows;
    for (int64_t r0 = 0; r0 < n_rows; r0 += rb) {
        const int64_t nr = imin(rb, n_rows - r0);
        const uint8_t * w = W + r0 * ldw;
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4) float_rows<L, 4>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy);
        switch (n_tok - t) {
            case 3: float_rows<L, 3>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy); break;
            case 2: float_rows<L, 2>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy); break;
            case 1: float_rows<L, 1>(w, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy); break;
            default: break;
        }
    }
}

}  // namespace

GemmFn gemv_kernel(QType wt) {
    switch (wt) {
        case QType::F32: return gemm_float<LoadF32>;
        case QType::F16: return gemm_float<LoadF16>;
        case QType::BF16: return gemm_float<LoadBF16>;
        case QType::Q4_0: return gemv_quant<QType::Q4_0>;
        case QType::Q4_1: return gemv_quant<QType::Q4_1>;
        case QType::Q5_0: return gemv_quant<QType::Q5_0>;
        case QType::Q5_1: return gemv_quant<QType::Q5_1>;
        case QType::Q8_0: return gemv_quant<QType::Q8_0>;
        case QType::Q2_K: return gemv_quant<QType::Q2_K>;
        case QType::Q3_K: return gemv_quant<QType::Q3_K>;
        case QType::Q4_K: return gemv_quant<QType::Q4_K>;
        case QType::Q5_K: return gemv_quant<QType::Q5_K>;
        case QType::Q6_K: return gemv_quant<QType::Q6_K>;
        case QType::IQ4_NL: return gemv_quant<QType::IQ4_NL>;
        case QType::MXFP4: return gemv_quant<QType::MXFP4>;
        case QType::IQ4_XS: return gemv_quant<QType::IQ4_XS>;
        case QType::IQ2_XXS: return gemv_quant<QType::IQ2_XXS>;
        case QType::IQ2_XS: return gemv_quant<QType::IQ2_XS>;
        case QType::IQ2_S: return gemv_quant<QType::IQ2_S>;
        case QType::IQ3_XXS: return gemv_quant<QType::IQ3_XXS>;
        case QType::IQ3_S: return gemv_quant<QType::IQ3_S>;
        case QType::IQ1_S: return gemv_quant<QType::IQ1_S>;
        case QType::IQ1_M: return gemv_quant<QType::IQ1_M>;
        case QType::TQ1_0: return gemv_quant<QType::TQ1_0>;
        case QType::TQ2_0: return gemv_quant<QType::TQ2_0>;
        default: return nullptr;
    }
}

namespace {

// BF16 weights, few tokens, the activations rounded to bf16 once (a copy in scratch slot 2), then
// the float kernel: as the packed avx512bf16 kernel rounds them.
void gemm_bf16_rounding(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                        int64_t n_tok, float * y, int64_t ldy) {
    uint8_t * r = scratch(2, size_t(n_tok) * lda);
    for (int64_t t = 0; t < n_tok; ++t) {
        const float * x = reinterpret_cast<const float *>(acts + t * lda);
        float * o = reinterpret_cast<float *>(r + t * lda);
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = __mmask16((1u << imin<int64_t>(16, K - k)) - 1);
            _mm512_mask_storeu_ps(o + k, m, round_bf16(_mm512_maskz_loadu_ps(m, x + k)));
        }
    }
    gemm_float<LoadBF16>(W, ldw, K, n_rows, r, lda, n_tok, y, ldy);
}

}  // namespace

GemmFn gemv_bf16_rounding_kernel() { return gemm_bf16_rounding; }

}  // namespace sl::cpu::impl::avx512
