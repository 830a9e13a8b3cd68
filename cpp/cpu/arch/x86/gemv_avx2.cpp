// AVX2 kernels that read the weight blocks as stored, for any number of tokens (4 at a time,
// over blocks of rows that stay in cache). Products go through vpmaddubsw (unsigned codes x
// signed activations, pairs summed in int16) and vpmaddwd; each block's int32 lanes are scaled
// in float by d_w * d_a; offsets and mins are an fma per 4 blocks against the block sums.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx2.h"
#include "cpu/arch/x86/blocks_iq_avx2.h"

namespace sl::cpu::impl::avx2 {

namespace {

// A token count as a type (the lambdas below pick a template instance from it).
template <int N>
struct Nt {
    static constexpr int value = N;
};

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

template <int NT>
struct RowAcc {
    __m256 acc[NT][2];
    __m256 accm[NT];
    RowAcc() {
        for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = accm[t] = _mm256_setzero_ps();
    }
};

inline __m256i load_acts(const int8_t * p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }

// Blocks q..q+n-1 (n <= 4) of a legacy row.
template <QType WT, int NT>
inline void legacy_step(const uint8_t * row, int q, int n, const Acts<NT> & a, RowAcc<NT> & r, int half) {
    using B = Legacy<WT>;
    const __m256i e01 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), e23 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    Codes c;
    __m128 d, m;
    B::load4(row + q * B::kBytes, n, &c, &d, &m);
    for (int t = 0; t < NT; ++t) {
        const __m256 cx = _mm256_castps128_ps256(_mm_mul_ps(d, _mm_loadu_ps(a.d[t] + q)));
        if constexpr (!B::kSigned)
            r.accm[t] = _mm256_castps128_ps256(
                _mm_fmadd_ps(m, _mm_loadu_ps(a.s[t] + q), _mm256_castps256_ps128(r.accm[t])));
        const int8_t * x = a.qs[t] + 32 * q;
        __m256i d01, d23;
        if constexpr (small_signed_codes<WT>()) {
            d01 = dot4x2_signed(c.lo01, load_acts(x), c.hi01, load_acts(x + 64));
            d23 = dot4x2_signed(c.lo23, load_acts(x + 32), c.hi23, load_acts(x + 96));
        } else if constexpr (B::kSigned) {
            d01 = _mm256_add_epi32(dot4_signed(c.lo01, load_acts(x)), dot4_signed(c.hi01, load_acts(x + 64)));
            d23 = _mm256_add_epi32(dot4_signed(c.lo23, load_acts(x + 32)), dot4_signed(c.hi23, load_acts(x + 96)));
        } else {
            d01 = dot4x2(c.lo01, load_acts(x), c.hi01, load_acts(x + 64));
            d23 = dot4x2(c.lo23, load_acts(x + 32), c.hi23, load_acts(x + 96));
        }
        r.acc[t][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d01), _mm256_permutevar8x32_ps(cx, e01), r.acc[t][half]);
        r.acc[t][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d23), _mm256_permutevar8x32_ps(cx, e23), r.acc[t][half]);
    }
}

template <QType WT, int NT>
inline void legacy_row(const uint8_t * row, int nb, const Acts<NT> & a, __m256 * fin) {
    using B = Legacy<WT>;
    RowAcc<NT> r;
    int q = 0;
    for (; q + 8 <= nb; q += 8) {
        legacy_step<WT, NT>(row, q, 4, a, r, 0);
        legacy_step<WT, NT>(row, q + 4, 4, a, r, 1);
    }
    for (; q < nb; q += 4) legacy_step<WT, NT>(row, q, imin(4, nb - q), a, r, 0);
    const __m256 mscale = _mm256_set1_ps(B::kHasMin ? 1.0f : -float(B::kOffset));
    for (int t = 0; t < NT; ++t) {
        const __m256 m = _mm256_blend_ps(_mm256_setzero_ps(), r.accm[t], 0x0F);
        fin[t] = _mm256_fmadd_ps(mscale, m, _mm256_add_ps(r.acc[t][0], r.acc[t][1]));
    }
}

template <QType WT, int NT>
inline void kquant_row(const uint8_t * row, int64_t K, const Acts<NT> & a, __m256 * fin) {
    using B = KQuant<WT>;
    RowAcc<NT> r;
    const __m256i dlo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), dhi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    // Lanes 0-3 / 4-7 of a block pair's products: 16-value groups (of the half's 8) 0 and 2, ...
    const __m256i e[4] = {_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6),
                          _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3), _mm256_setr_epi32(5, 5, 5, 5, 7, 7, 7, 7)};
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const uint8_t * sb = row + i * B::kBytes;
        __m256 dg[2], mg[2];
        B::scales(sb, dg, mg);
        __m256 c[NT][2];
        for (int t = 0; t < NT; ++t) {
            const __m256 da = _mm256_loadu_ps(a.d[t] + 8 * i);
            c[t][0] = _mm256_mul_ps(dg[0], _mm256_permutevar8x32_ps(da, dlo));
            c[t][1] = _mm256_mul_ps(dg[1], _mm256_permutevar8x32_ps(da, dhi));
            if constexpr (!B::kSigned) {  // signed codes have no offset
                r.accm[t] = _mm256_fmadd_ps(mg[0], _mm256_loadu_ps(a.s16[t] + 16 * i), r.accm[t]);
                r.accm[t] = _mm256_fmadd_ps(mg[1], _mm256_loadu_ps(a.s16[t] + 16 * i + 8), r.accm[t]);
            }
        }
        for (int g = 0; g < 2; ++g) {
            const Codes cd = B::codes(sb, g);
            for (int t = 0; t < NT; ++t) {
                const int8_t * x = a.qs[t] + QK_K * i + 128 * g;
                const __m256i a0 = load_acts(x), a1 = load_acts(x + 32), a2 = load_acts(x + 64), a3 = load_acts(x + 96);
                __m256 & acc = r.acc[t][g];
                if constexpr (B::kSigned && B::kGroups16) {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4_signed(cd.lo01, a0)), _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4_signed(cd.lo23, a1)), _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4_signed(cd.hi01, a2)), _mm256_permutevar8x32_ps(c[t][g], e[2]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4_signed(cd.hi23, a3)), _mm256_permutevar8x32_ps(c[t][g], e[3]), acc);
                } else if constexpr (small_signed_codes<WT>()) {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4x2_signed(cd.lo01, a0, cd.hi01, a2)),
                                          _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4x2_signed(cd.lo23, a1, cd.hi23, a3)),
                                          _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                } else if constexpr (B::kSigned) {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(dot4_signed(cd.lo01, a0), dot4_signed(cd.hi01, a2))),
                                          _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(dot4_signed(cd.lo23, a1), dot4_signed(cd.hi23, a3))),
                                          _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                } else if constexpr (B::kGroups16) {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4(cd.lo01, a0)), _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4(cd.lo23, a1)), _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4(cd.hi01, a2)), _mm256_permutevar8x32_ps(c[t][g], e[2]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4(cd.hi23, a3)), _mm256_permutevar8x32_ps(c[t][g], e[3]), acc);
                } else {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4x2(cd.lo01, a0, cd.hi01, a2)),
                                          _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4x2(cd.lo23, a1, cd.hi23, a3)),
                                          _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                }
            }
        }
    }
    for (int t = 0; t < NT; ++t) fin[t] = _mm256_add_ps(_mm256_add_ps(r.acc[t][0], r.acc[t][1]), r.accm[t]);
}

// The whole-half decoder of a grid type and its super-block signs (blocks_iq_avx2.h), or null.
template <QType WT>
constexpr auto grid_decoder() {
    if constexpr (WT == QType::IQ2_XXS) return &GridDecode::iq2_xxs;
    else if constexpr (WT == QType::IQ2_XS) return &GridDecode::iq2_xs;
    else if constexpr (WT == QType::IQ2_S) return &GridDecode::iq2_s;
    else if constexpr (WT == QType::IQ3_XXS) return &GridDecode::iq3_xxs;
    else if constexpr (WT == QType::IQ3_S) return &GridDecode::iq3_s;
    else if constexpr (WT == QType::IQ1_S) return &GridDecode::iq1_s;
    else if constexpr (WT == QType::IQ1_M) return &GridDecode::iq1_m;
    else return nullptr;
}
template <QType WT>
constexpr auto grid_signs() {
    if constexpr (WT == QType::IQ2_XXS) return &GridDecode::signs_iq2_xxs;
    else if constexpr (WT == QType::IQ2_XS) return &GridDecode::signs_iq2_xs;
    else if constexpr (WT == QType::IQ2_S) return &GridDecode::signs_iq2_s;
    else if constexpr (WT == QType::IQ3_XXS) return &GridDecode::signs_iq3_xxs;
    else if constexpr (WT == QType::IQ3_S) return &GridDecode::signs_iq3_s;
    else return &GridDecode::signs_none;
}
template <QType WT>
constexpr auto grid_int_scales() {
    if constexpr (WT == QType::IQ2_XS) return &GridDecode::int_scales_iq2_xs;
    else if constexpr (WT == QType::IQ2_S) return &GridDecode::int_scales_iq2_s;
    else if constexpr (WT == QType::IQ1_M) return &GridDecode::int_scales_iq1_m;
    else return &GridDecode::int_scales_none;
}

// int16 lanes of the group scales (bytes 2 b + h of s) for lo01, lo23, hi01, hi23 of half g:
// lanes 0-7 block 4 g + 2 k's group h, lanes 8-15 the next block's.
template <int G, int K, int H>
inline __m256i group_scales16(__m256i s) {
    constexpr char b0 = char(2 * (4 * G + 2 * K) + H), b1 = char(b0 + 2), z = char(-128);
    return _mm256_shuffle_epi8(s, _mm256_setr_epi8(b0, z, b0, z, b0, z, b0, z, b0, z, b0, z, b0, z, b0, z,
                                                   b1, z, b1, z, b1, z, b1, z, b1, z, b1, z, b1, z, b1, z));
}

// kquant_row for the grid types: magnitudes and sign bytes (the signs go onto the activations):
// the same integer sums as kquant_row's signed-code branches. Per-16 scales (IQ2_XS, IQ2_S,
// IQ1_M) as integers in vpmaddwd, so one float step per block pair as for the others; IQ1 as
// unsigned codes (no sign step) and an offset term on the activation sums. All token counts
// of the decode kernel take this path: a token's result does not depend on the batch. Flattened: GCC
// left the decoders' lambdas as calls, through memory (1.5 GB/s instead of 2.3 on IQ2_XXS).
template <QType WT, int NT>
__attribute__((flatten)) inline void grid_row(const uint8_t * row, int64_t K, const Acts<NT> & a, __m256 * fin) {
    using B = KQuant<WT>;
    constexpr bool kBiased = WT == QType::IQ1_S || WT == QType::IQ1_M;  // unsigned codes 16 + v
    RowAcc<NT> r;
    const __m256i dlo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), dhi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    const __m256i e[4] = {_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6),
                          _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3), _mm256_setr_epi32(5, 5, 5, 5, 7, 7, 7, 7)};
    auto sg = [](__m256i x, __m256i s) { return _mm256_sign_epi8(x, s); };
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const uint8_t * sb = row + i * B::kBytes;
        __m256 dg[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, mg[2];
        if constexpr (!B::kGroups16) B::scales(sb, dg, mg);
        __m256i isc = _mm256_setzero_si256();
        __m256 cs[2] = {dg[0], dg[1]};  // the float factor of the products
        float f = 0.0f;
        if constexpr (B::kGroups16) {  // integer group scales in the products, d / 8 in float
            isc = grid_int_scales<WT>()(sb, &f);
            cs[0] = cs[1] = _mm256_set1_ps(f);
        }
        __m256 off[2];  // IQ1_M: codes 16 + v; IQ1_S: 8 + g, the delta per block in the offset
        if constexpr (WT == QType::IQ1_S) {
            GridDecode::iq1_s_offsets(sb, dg, off);
        } else if constexpr (kBiased) {  // -16 x the group scales d / 8 x (2 s + 1)
            const __m128i b = _mm256_castsi256_si128(isc);
            const __m256 m = _mm256_set1_ps(-16.0f * f);
            off[0] = _mm256_mul_ps(m, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
            off[1] = _mm256_mul_ps(m, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8))));
        }
        __m256 c[NT][2];
        for (int t = 0; t < NT; ++t) {
            const __m256 da = _mm256_loadu_ps(a.d[t] + 8 * i);
            c[t][0] = _mm256_mul_ps(cs[0], _mm256_permutevar8x32_ps(da, dlo));
            c[t][1] = _mm256_mul_ps(cs[1], _mm256_permutevar8x32_ps(da, dhi));
            if constexpr (kBiased) {  // IQ1: off x (d_a x the 16 codes' sum)
                r.accm[t] = _mm256_fmadd_ps(off[0], _mm256_loadu_ps(a.s16[t] + 16 * i), r.accm[t]);
                r.accm[t] = _mm256_fmadd_ps(off[1], _mm256_loadu_ps(a.s16[t] + 16 * i + 8), r.accm[t]);
            }
        }
        const __m256i s32 = grid_signs<WT>()(sb);
        for (int g = 0; g < 2; ++g) {
            Codes m, s;
            grid_decoder<WT>()(sb, g, s32, &m, &s);
            for (int t = 0; t < NT; ++t) {
                const int8_t * x = a.qs[t] + QK_K * i + 128 * g;
                __m256i a0 = load_acts(x), a1 = load_acts(x + 32), a2 = load_acts(x + 64), a3 = load_acts(x + 96);
                if constexpr (!kBiased) {
                    a0 = sg(a0, s.lo01);
                    a1 = sg(a1, s.lo23);
                    a2 = sg(a2, s.hi01);
                    a3 = sg(a3, s.hi23);
                }
                __m256 & acc = r.acc[t][g];
                if constexpr (B::kGroups16) {
                    auto dot = [](__m256i w0, __m256i x0, __m256i s0, __m256i w1, __m256i x1, __m256i s1) {
                        return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w0, x0), s0),
                                                _mm256_madd_epi16(_mm256_maddubs_epi16(w1, x1), s1));
                    };
                    __m256i d01, d23;
                    if (g == 0) {
                        d01 = dot(m.lo01, a0, group_scales16<0, 0, 0>(isc), m.hi01, a2, group_scales16<0, 0, 1>(isc));
                        d23 = dot(m.lo23, a1, group_scales16<0, 1, 0>(isc), m.hi23, a3, group_scales16<0, 1, 1>(isc));
                    } else {
                        d01 = dot(m.lo01, a0, group_scales16<1, 0, 0>(isc), m.hi01, a2, group_scales16<1, 0, 1>(isc));
                        d23 = dot(m.lo23, a1, group_scales16<1, 1, 0>(isc), m.hi23, a3, group_scales16<1, 1, 1>(isc));
                    }
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d01), _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d23), _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                } else {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4x2(m.lo01, a0, m.hi01, a2)),
                                          _mm256_permutevar8x32_ps(c[t][g], e[0]), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4x2(m.lo23, a1, m.hi23, a3)),
                                          _mm256_permutevar8x32_ps(c[t][g], e[1]), acc);
                }
            }
        }
    }
    for (int t = 0; t < NT; ++t) fin[t] = _mm256_add_ps(_mm256_add_ps(r.acc[t][0], r.acc[t][1]), r.accm[t]);
}

// int16 lanes of the group scales for lo01, lo23, hi01, hi23 (K, H as group_scales16) from
// s16 = the 8 int16 scales of the half in both 128-bit lanes.
template <int K, int H>
inline __m256i half_scales16(__m256i s16) {
    constexpr char b0 = char(2 * (2 * K) + H), b1 = char(b0 + 2);
    constexpr char l0 = char(2 * b0), h0 = char(2 * b0 + 1), l1 = char(2 * b1), h1 = char(2 * b1 + 1);
    return _mm256_shuffle_epi8(s16, _mm256_setr_epi8(l0, h0, l0, h0, l0, h0, l0, h0, l0, h0, l0, h0, l0, h0, l0, h0,
                                                     l1, h1, l1, h1, l1, h1, l1, h1, l1, h1, l1, h1, l1, h1, l1, h1));
}

// kquant_row for Q3_K and Q6_K (unsigned codes, signed int8 scales per 16 values): the group
// scales go into vpmaddwd (|code x act| pairs <= 2 x 63 x 127, times |scale| <= 128, summed over
// a block: far inside int32) instead of a float step per group pair;
// the code offset stays an fma against the activations' 16-value sums.
template <QType WT, int NT>
inline void kquant16_row(const uint8_t * row, int64_t K, const Acts<NT> & a, __m256 * fin) {
    using B = KQuant<WT>;
    RowAcc<NT> r;
    // Lane order of the block sums after two rounds of vphaddd over the four block pairs.
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    auto dot = [](__m256i w0, __m256i x0, __m256i s0, __m256i w1, __m256i x1, __m256i s1) {
        return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w0, x0), s0),
                                _mm256_madd_epi16(_mm256_maddubs_epi16(w1, x1), s1));
    };
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const uint8_t * sb = row + i * B::kBytes;
        const __m128i s8 = B::int_scales(sb);
        const float d = B::super_d(sb);
        const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(-float(B::kOffset) * d);
        const __m256 mg0 = _mm256_mul_ps(mv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8)));
        const __m256 mg1 = _mm256_mul_ps(mv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(s8, s8))));
        const __m256i s16 = _mm256_cvtepi8_epi16(s8);
        __m256i isc[2][4];
        for (int g = 0; g < 2; ++g) {
            const __m256i h = g ? _mm256_permute2x128_si256(s16, s16, 0x11) : _mm256_permute2x128_si256(s16, s16, 0x00);
            isc[g][0] = half_scales16<0, 0>(h), isc[g][1] = half_scales16<0, 1>(h);
            isc[g][2] = half_scales16<1, 0>(h), isc[g][3] = half_scales16<1, 1>(h);
        }
        __m256 c[NT];
        for (int t = 0; t < NT; ++t) {
            c[t] = _mm256_mul_ps(dv, _mm256_permutevar8x32_ps(_mm256_loadu_ps(a.d[t] + 8 * i), order));
            r.accm[t] = _mm256_fmadd_ps(mg0, _mm256_loadu_ps(a.s16[t] + 16 * i), r.accm[t]);
            r.accm[t] = _mm256_fmadd_ps(mg1, _mm256_loadu_ps(a.s16[t] + 16 * i + 8), r.accm[t]);
        }
        __m256i half[NT][2];
        for (int g = 0; g < 2; ++g) {
            const Codes cd = B::codes(sb, g);
            for (int t = 0; t < NT; ++t) {
                const int8_t * x = a.qs[t] + QK_K * i + 128 * g;
                const __m256i a0 = load_acts(x), a1 = load_acts(x + 32), a2 = load_acts(x + 64), a3 = load_acts(x + 96);
                const __m256i d01 = dot(cd.lo01, a0, isc[g][0], cd.hi01, a2, isc[g][1]);
                const __m256i d23 = dot(cd.lo23, a1, isc[g][2], cd.hi23, a3, isc[g][3]);
                half[t][g] = _mm256_hadd_epi32(d01, d23);  // blocks 4g + (0, 2, 1, 3), two lanes each
            }
        }
        for (int t = 0; t < NT; ++t) {  // one lane per block: |sum| <= 32 x 63 x 127 x 128 < 2^31
            const __m256i sums = _mm256_hadd_epi32(half[t][0], half[t][1]);
            r.acc[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), c[t], r.acc[t][0]);
        }
    }
    for (int t = 0; t < NT; ++t) fin[t] = _mm256_add_ps(_mm256_add_ps(r.acc[t][0], r.acc[t][1]), r.accm[t]);
}

// kquant_row for the ternary types (codes 0..2, value = d (code - 1), one d per super-block): the
// blocks' sums stay integers up to one float step per super-block (vphaddd gathers the 8 of
// them, as kquant16_row's), the offset an fma against the activations' block sums.
template <QType WT, int NT>
inline void ternary_row(const uint8_t * row, int64_t K, const Acts<NT> & a, __m256 * fin) {
    using B = KQuant<WT>;
    RowAcc<NT> r;
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // block of each lane of the sums
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const uint8_t * sb = row + i * B::kBytes;
        _mm_prefetch(reinterpret_cast<const char *>(sb + kTernaryPrefetch), _MM_HINT_T0);
        const __m256 dv = _mm256_set1_ps(B::super_d(sb));
        // blocks 4g + (0, 2, 1, 3) of half g, two lanes each
        auto half = [&](const Codes & cd, int t, int g) {
            const int8_t * x = a.qs[t] + QK_K * i + 128 * g;
            const __m256i d01 = dot4x2(cd.lo01, load_acts(x), cd.hi01, load_acts(x + 64));
            const __m256i d23 = dot4x2(cd.lo23, load_acts(x + 32), cd.hi23, load_acts(x + 96));
            return _mm256_hadd_epi32(d01, d23);
        };
        __m256i h0[NT];
        const Codes c0 = B::codes(sb, 0);
        for (int t = 0; t < NT; ++t) h0[t] = half(c0, t, 0);
        const Codes c1 = B::codes(sb, 1);
        for (int t = 0; t < NT; ++t) {
            const __m256 c = _mm256_mul_ps(dv, _mm256_permutevar8x32_ps(_mm256_loadu_ps(a.d[t] + 8 * i), order));
            const __m256i sums = _mm256_hadd_epi32(h0[t], half(c1, t, 1));
            r.acc[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), c, r.acc[t][0]);
            r.accm[t] = _mm256_fnmadd_ps(dv, _mm256_loadu_ps(a.s[t] + 8 * i), r.accm[t]);
        }
    }
    for (int t = 0; t < NT; ++t) fin[t] = _mm256_add_ps(_mm256_add_ps(r.acc[t][0], r.acc[t][1]), r.accm[t]);
}

// Rows in groups of 8: their final sums are one transposing reduction.
template <QType WT, int NT>
void quant_rows(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                float * y, int64_t ldy) {
    const Acts<NT> a(acts, lda, K);
    for (int64_t r0 = 0; r0 < n_rows; r0 += 8) {
        const int nr = int(imin<int64_t>(8, n_rows - r0));
        __m256 fin[NT][8];
        for (int i = 0; i < 8; ++i) {
            __m256 f[NT];
            if (i >= nr) {
                for (int t = 0; t < NT; ++t) f[t] = _mm256_setzero_ps();
            } else if constexpr (qtype_block_size(WT) == 32) {
                legacy_row<WT, NT>(W + (r0 + i) * ldw, int(K / 32), a, f);
            } else if constexpr (grid_decoder<WT>() != nullptr) {
                grid_row<WT, NT>(W + (r0 + i) * ldw, K, a, f);
            } else if constexpr (WT == QType::Q3_K || WT == QType::Q6_K) {
                kquant16_row<WT, NT>(W + (r0 + i) * ldw, K, a, f);
            } else if constexpr (WT == QType::TQ1_0 || WT == QType::TQ2_0) {
                ternary_row<WT, NT>(W + (r0 + i) * ldw, K, a, f);
            } else {
                kquant_row<WT, NT>(W + (r0 + i) * ldw, K, a, f);
            }
            for (int t = 0; t < NT; ++t) fin[t][i] = f[t];
        }
        for (int t = 0; t < NT; ++t) {
            alignas(32) float out[8];
            _mm256_store_ps(out, hsum8(fin[t]));
            for (int i = 0; i < nr; ++i) y[t * ldy + r0 + i] = out[i];
        }
    }
}

// Blocks of rows; in each, groups of 4 tokens (then the rest).
template <class Rows1, class Rows2, class Rows3, class Rows4>
void by_blocks(int64_t n_rows, int64_t n_tok, Rows1 f1, Rows2 f2, Rows3 f3, Rows4 f4) {
    const int64_t rb = n_tok > 4 ? kRowBlock : n_rows;
    for (int64_t r0 = 0; r0 < n_rows; r0 += rb) {
        const int64_t nr = imin(rb, n_rows - r0);
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4) f4(r0, nr, t);
        switch (n_tok - t) {
            case 3: f3(r0, nr, t); break;
            case 2: f2(r0, nr, t); break;
            case 1: f1(r0, nr, t); break;
            default: break;
        }
    }
}

template <QType WT>
void gemv_quant(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy) {
    auto f = [&](auto nt) {
        return [&, nt](int64_t r0, int64_t nr, int64_t t) {
            quant_rows<WT, decltype(nt)::value>(W + r0 * ldw, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy);
        };
    };
    by_blocks(n_rows, n_tok, f(Nt<1>()), f(Nt<2>()),
              f(Nt<3>()), f(Nt<4>()));
}

// ---- float weights: 8 values per step; the K % 8 tail through a zero-padded copy ----

struct LoadF32 {
    static __m256 load(const uint8_t * row, int64_t k) { return _mm256_loadu_ps(reinterpret_cast<const float *>(row) + k); }
    static float one(const uint8_t * row, int64_t k) { return reinterpret_cast<const float *>(row)[k]; }
};
struct LoadF16 {
    static __m256 load(const uint8_t * row, int64_t k) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(row + 2 * k)));
    }
    static float one(const uint8_t * row, int64_t k) { return h2f(reinterpret_cast<const uint16_t *>(row)[k]); }
};
struct LoadBF16 {
    static __m256 load(const uint8_t * row, int64_t k) {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(row + 2 * k)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    }
    static float one(const uint8_t * row, int64_t k) { return bf2f(reinterpret_cast<const uint16_t *>(row)[k]); }
};

// One weight row times NT tokens; two accumulators per token alternate over steps of 8.
template <class L, int NT>
void float_row(const uint8_t * W, int64_t K, const uint8_t * acts, size_t lda, float * y, int64_t ldy) {
    __m256 acc[2][NT];
    for (int h = 0; h < 2; ++h)
        for (int t = 0; t < NT; ++t) acc[h][t] = _mm256_setzero_ps();
    auto step = [&](int h, __m256 w, auto load_x) {
        for (int t = 0; t < NT; ++t) acc[h][t] = _mm256_fmadd_ps(w, load_x(t), acc[h][t]);
    };
    auto x_at = [&](int t, int64_t k) { return reinterpret_cast<const float *>(acts + t * lda) + k; };
    const int64_t K8 = K / 8 * 8;
    auto full = [&](int h, int64_t k) { step(h, L::load(W, k), [&](int t) { return _mm256_loadu_ps(x_at(t, k)); }); };
    // Unrolled by two steps so that the accumulators stay in registers (a run-time index into
    // acc would keep them in memory).
    int64_t k = 0;
    for (; k + 16 <= K8; k += 16) {
        full(0, k);
        full(1, k + 8);
    }
    if (k < K8) full(0, k);
    if (K8 < K) {
        alignas(32) float w[8] = {};
        for (int64_t j = K8; j < K; ++j) w[j - K8] = L::one(W, j);
        step(int((K8 >> 3) & 1), _mm256_load_ps(w), [&](int t) {
            alignas(32) float x[8] = {};
            for (int64_t j = K8; j < K; ++j) x[j - K8] = x_at(t, 0)[j];
            return _mm256_load_ps(x);
        });
    }
    for (int t = 0; t < NT; ++t) {
        const __m256 a = _mm256_add_ps(acc[0][t], acc[1][t]);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        y[t * ldy] = _mm_cvtss_f32(s);
    }
}

template <class L, int NT>
void float_rows(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                float * y, int64_t ldy) {
    // One row at a time (two rows side by side stream from memory more slowly when there are
    // several tokens: measured on Zen 4).
    for (int64_t r = 0; r < n_rows; ++r) float_row<L, NT>(W + r * ldw, K, acts, lda, y + r, ldy);
}

template <class L>
void gemm_float(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy) {
    auto f = [&](auto nt) {
        return [&, nt](int64_t r0, int64_t nr, int64_t t) {
            float_rows<L, decltype(nt)::value>(W + r0 * ldw, ldw, K, nr, acts + t * lda, lda, y + t * ldy + r0, ldy);
        };
    };
    by_blocks(n_rows, n_tok, f(Nt<1>()), f(Nt<2>()),
              f(Nt<3>()), f(Nt<4>()));
}


// ---- float weights, many tokens: a panel of 16 rows packed rows-in-lanes (two ymm per k, as in
// packed_float_avx512.cpp) and the tokens in groups of 6, tokens-in-lanes; the micro-kernel
// broadcasts each of the 6 tokens' values against the panel's two ymm (12 accumulators). Packing
// is scalar: it costs a few percent of a prompt's fma work.

constexpr int kFloatGroup = 6;


// Rows [0, nr) of W to P[k * 16 + r] (zero past nr), 8 values of 8 rows per transpose.
template <class L>
void pack_float(const uint8_t * W, size_t ldw, int64_t K, int nr, float * P) {
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        for (int h = 0; h < 2; ++h) {
            __m256 v[8];
            for (int r = 0; r < 8; ++r) v[r] = 8 * h + r < nr ? L::load(W + (8 * h + r) * ldw, k) : _mm256_setzero_ps();
            transpose8(v);
            for (int j = 0; j < 8; ++j) _mm256_store_ps(P + (k + j) * 16 + 8 * h, v[j]);
        }
    }
    for (; k < K; ++k)
        for (int r = 0; r < 16; ++r) P[k * 16 + r] = r < nr ? L::one(W + r * ldw, k) : 0.0f;
}

// X[(g * K + k) * 6 + t] = x[6 g + t][k], zero past nt.
void pack_acts(const uint8_t * acts, size_t lda, int64_t K, int64_t nt, float * X) {
    for (int64_t g = 0; g * kFloatGroup < nt; ++g) {
        float * Xg = X + g * K * kFloatGroup;
        for (int t = 0; t < kFloatGroup; ++t) {
            const int64_t i = g * kFloatGroup + t;
            const float * x = i < nt ? reinterpret_cast<const float *>(acts + i * lda) : nullptr;
            for (int64_t k = 0; k < K; ++k) Xg[k * kFloatGroup + t] = x ? x[k] : 0.0f;
        }
    }
}

// A packed group of 6 tokens times a panel; tokens [0, n_t) and rows [0, nr) go to
// y[t * ldy + r]. Twelve named accumulators (GCC 12 keeps an array of them in memory here); the
// sums run over chunks of kFloatChunk values of K, added up in y, as in the AVX-512 kernel.
void micro_float(const float * P, const float * X, int64_t K, float * y, int64_t ldy, int nr, int n_t) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    for (int64_t k0 = 0; k0 < K; k0 += kFloatChunk) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0;
        const float * p = P + k0 * 16;
        const float * x = X + k0 * kFloatGroup;
        for (int64_t k = k0; k < imin(K, k0 + kFloatChunk); ++k, p += 16, x += kFloatGroup) {
            const __m256 w0 = _mm256_load_ps(p), w1 = _mm256_load_ps(p + 8);
            auto step = [&](int t, __m256 & a, __m256 & b) {
                const __m256 v = _mm256_broadcast_ss(x + t);
                a = _mm256_fmadd_ps(w0, v, a);
                b = _mm256_fmadd_ps(w1, v, b);
            };
            step(0, a0, b0);
            step(1, a1, b1);
            step(2, a2, b2);
            step(3, a3, b3);
            step(4, a4, b4);
            step(5, a5, b5);
        }
        __m256 lo[kFloatGroup] = {a0, a1, a2, a3, a4, a5}, hi[kFloatGroup] = {b0, b1, b2, b3, b4, b5};
        for (int t = 0; t < n_t; ++t) {
            float * yt = y + t * ldy;
            if (k0 > 0) {
                lo[t] = _mm256_add_ps(lo[t], _mm256_maskload_ps(yt, m0));
                hi[t] = _mm256_add_ps(hi[t], _mm256_maskload_ps(yt + 8, m1));
            }
            _mm256_maskstore_ps(yt, m0, lo[t]);
            _mm256_maskstore_ps(yt + 8, m1, hi[t]);
        }
    }
}

template <class L>
void gemm_packed_float(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                       int64_t n_tok, float * y, int64_t ldy) {
    const int64_t tb = imax<int64_t>(kFloatGroup, int64_t(kFloatTokenBlockBytes / (K * 4)) / kFloatGroup * kFloatGroup);
    const int64_t n_groups = (imin(tb, n_tok) + kFloatGroup - 1) / kFloatGroup;
    float * P = reinterpret_cast<float *>(scratch(0, size_t(K) * 16 * sizeof(float)));
    float * X = reinterpret_cast<float *>(scratch(2, size_t(n_groups * kFloatGroup * K) * sizeof(float)));
    packed_passes(
        n_rows, n_tok, tb, kFloatGroup, [&](int64_t t0, int64_t nt) { pack_acts(acts + t0 * lda, lda, K, nt, X); },
        [&](int64_t r0, int nr) { pack_float<L>(W + r0 * ldw, ldw, K, nr, P); },
        [&](int64_t t, int n_t, int64_t r0, int nr) {
            micro_float(P, X + (t % tb) * K, K, y + t * ldy + r0, ldy, nr, n_t);  // (tb: whole groups)
        });
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

GemmFn packed_kernel(QType wt) {
    switch (wt) {
        case QType::F32: return gemm_packed_float<LoadF32>;
        case QType::F16: return gemm_packed_float<LoadF16>;
        case QType::BF16: return gemm_packed_float<LoadBF16>;
        default: return packed_quant_kernel(wt);
    }
}

}  // namespace sl::cpu::impl::avx2
