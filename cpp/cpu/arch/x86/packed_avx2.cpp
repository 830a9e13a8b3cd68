// AVX2 kernels for many tokens (prefill) over quantized weights, on the plan of packed_avx512.cpp
// without VNNI. A panel of 16 weight rows is decoded once (blocks_avx2.h, blocks_iq_avx2.h) into
// a rows-in-lanes layout: per 32-value block, 8 groups of 4 values, each two ymm (rows 0-7 and
// 8-15) whose dword lane r holds row r's 4 codes; then the per-row affine terms. The micro-kernel
// broadcasts 4 activation bytes of a token and vpmaddubsw's them against both ymm.
//
// Unsigned codes (the legacy and k-quants but Q8_0): pairs of products sum in int16, and runs of
// groups add up in int16 as long as they cannot overflow (run_groups below: 8 groups for codes <= 15,
// 4 for <= 31, 2 for <= 63); a vpmaddwd per run widens them. Signed codes (Q8_0, IQ4, MXFP4, the
// grid types) take the sign trick (|w| times a with w's sign), in runs as their magnitudes allow
// (Q8_0's and IQ4's: one group).
#include "cpu/arch/x86/blocks_avx2.h"
#include "cpu/arch/x86/blocks_iq_avx2.h"
#include "cpu/arch/x86/kernels_x86.h"

namespace sl::cpu::impl::avx2 {

namespace {

// Panel layout per 32-value block (as packed_avx512.cpp's): codes[8 groups][16 rows][4], then
// float dg[2 halves][16 rows], mg[2][16]. Types with one scale per 32 values fill half 0 only.
constexpr int kPanelRows = 16;
constexpr int kBlockBytes = 8 * 64 + 4 * 64;
constexpr int kDg = 512, kMg = 640;

template <QType WT>
constexpr bool is_legacy() {
    return qtype_block_size(WT) == 32;
}

template <QType WT>
constexpr bool groups_of_16() {
    if constexpr (is_legacy<WT>())
        return false;
    else
        return KQuant<WT>::kGroups16;
}

template <QType WT>
constexpr bool signed_codes() {
    if constexpr (is_legacy<WT>())
        return Legacy<WT>::kSigned;
    else
        return KQuant<WT>::kSigned;
}

// Groups of 4 values whose int16 pair sums may be added before widening (each lane then holds
// 2 * kRun products of |code| <= max and |a| <= 127: 2 * kRun * max * 127 < 32768).
template <QType WT>
constexpr int run_groups() {
    switch (WT) {
        case QType::Q5_0: case QType::Q5_1: case QType::Q5_K: return 4;
        case QType::Q6_K: return 2;
        // Signed codes' magnitudes: MXFP4's doubled levels <= 12, IQ1's 8 g + 8 delta <= 9, the
        // IQ2 grids' <= 43, IQ3's <= 62; Q8_0 and IQ4 reach 127.
        case QType::MXFP4: case QType::IQ1_S: case QType::IQ1_M: return 8;
        case QType::IQ2_XXS: case QType::IQ2_XS: case QType::IQ2_S: case QType::IQ3_XXS: case QType::IQ3_S: return 2;
        default: return signed_codes<WT>() ? 1 : 8;
    }
}

// ---- packing ----

inline __m256 as_ps(__m256i v) { return _mm256_castsi256_ps(v); }


// One of a Codes' four ymm (which = 0 lo01, 1 lo23, 2 hi01, 3 hi23) of 8 rows, transposed: lane
// k holds group k & 3 of the low (k < 4) or high block of the pair, values 0..15 or 16..31.
void store_quarter(uint8_t * P, int64_t b, int n, int h, int which, __m256 v[8]) {
    transpose8(v);
    const int blk0 = 2 * (which & 1), g0 = 4 * (which >> 1);
    for (int k = 0; k < 8; ++k) {
        const int j = blk0 + k / 4;
        if (j < n) _mm256_store_ps(reinterpret_cast<float *>(P + (b + j) * kBlockBytes + 64 * (g0 + k % 4) + 32 * h), v[k]);
    }
}

// Codes of 4 blocks (n valid) of rows 8h .. 8h + 7 into blocks b .. b + n - 1 of the panel.
void store_codes(uint8_t * P, int64_t b, int n, int h, const Codes c[8]) {
    __m256 v[8];
    for (int r = 0; r < 8; ++r) v[r] = as_ps(c[r].lo01);
    store_quarter(P, b, n, h, 0, v);
    for (int r = 0; r < 8; ++r) v[r] = as_ps(c[r].lo23);
    store_quarter(P, b, n, h, 1, v);
    for (int r = 0; r < 8; ++r) v[r] = as_ps(c[r].hi01);
    store_quarter(P, b, n, h, 2, v);
    for (int r = 0; r < 8; ++r) v[r] = as_ps(c[r].hi23);
    store_quarter(P, b, n, h, 3, v);
}

// Affine terms: v[r] holds row r's values of n <= 8 consecutive slots; slot s goes to block
// b + s / per_block, half s % per_block (per_block 1: one term per block, in half 0).
void store_terms(uint8_t * P, int64_t b, int n, int per_block, int off, int h, __m256 v[8]) {
    transpose8(v);
    for (int s = 0; s < n; ++s)
        _mm256_store_ps(reinterpret_cast<float *>(P + (b + s / per_block) * kBlockBytes + off + 64 * (s % per_block) + 32 * h),
                        v[s]);
}

template <QType WT>
void pack_legacy(const uint8_t * W, size_t ldw, int64_t K, int nr, uint8_t * P) {
    using B = Legacy<WT>;
    const int nb = int(K / 32);
    for (int h = 0; h < 2; ++h) {
        for (int q = 0; q < nb; q += 4) {
            const int n = imin(4, nb - q);
            Codes c[8];
            __m256 d[8], m[8];
            for (int i = 0; i < 8; ++i) {
                const int r = 8 * h + i;
                __m128 d4 = _mm_setzero_ps(), m4 = _mm_setzero_ps();
                if (r < nr)
                    B::load4(W + r * ldw + q * B::kBytes, n, &c[i], &d4, &m4);
                else
                    c[i].lo01 = c[i].lo23 = c[i].hi01 = c[i].hi23 = _mm256_setzero_si256();
                const __m128 mg = B::kHasMin ? m4 : _mm_mul_ps(_mm_set1_ps(-float(B::kOffset)), d4);
                d[i] = _mm256_castps128_ps256(d4);
                m[i] = _mm256_castps128_ps256(mg);
            }
            store_codes(P, q, n, h, c);
            store_terms(P, q, n, 1, kDg, h, d);
            store_terms(P, q, n, 1, kMg, h, m);
        }
    }
}

template <QType WT>
void pack_kquant(const uint8_t * W, size_t ldw, int64_t K, int nr, uint8_t * P) {
    using B = KQuant<WT>;
    for (int h = 0; h < 2; ++h) {
        for (int64_t i = 0; i < K / QK_K; ++i) {
            const uint8_t * sb = W + i * B::kBytes;
            for (int g = 0; g < 2; ++g) {
                Codes c[8];
                for (int k = 0; k < 8; ++k) {
                    const int r = 8 * h + k;
                    if (r < nr)
                        c[k] = B::codes(sb + r * ldw, g);
                    else
                        c[k].lo01 = c[k].lo23 = c[k].hi01 = c[k].hi23 = _mm256_setzero_si256();
                }
                store_codes(P, 8 * i + 4 * g, 4, h, c);
            }
            __m256 dg[8][2], mg[8][2];
            for (int k = 0; k < 8; ++k) {
                if (8 * h + k < nr)
                    B::scales(sb + (8 * h + k) * ldw, dg[k], mg[k]);
                else
                    dg[k][0] = dg[k][1] = mg[k][0] = mg[k][1] = _mm256_setzero_ps();
            }
            // Lane l of dg[e]: 16-value group 8e + l, i.e. block 4e + l / 2, half l % 2.
            for (int e = 0; e < 2; ++e) {
                __m256 v[8];
                for (int k = 0; k < 8; ++k) v[k] = dg[k][e];
                store_terms(P, 8 * i + 4 * e, 8, 2, kDg, h, v);
                for (int k = 0; k < 8; ++k) v[k] = mg[k][e];
                store_terms(P, 8 * i + 4 * e, 8, 2, kMg, h, v);
            }
        }
    }
}

// ---- micro-kernel ----

inline __m256i bcast4(const int8_t * p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

inline __m256 load_ps(const uint8_t * p) { return _mm256_load_ps(reinterpret_cast<const float *>(p)); }

// Products of group g (values 4g .. 4g + 3 of the block) of the panel's two ymm (w0, w1) with
// RN tokens' activation bytes at off, into the int16 (int32 for signed single-group runs) sums s.
template <int RN, bool SIGNED, int RUN, int FLUSH>
SL_FORCE_INLINE void group_products(int g, __m256i w0, __m256i w1, const int8_t * const qs[RN], int64_t off,
                                    __m256i s[RN][2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i u0 = SIGNED ? _mm256_sign_epi8(w0, w0) : w0, u1 = SIGNED ? _mm256_sign_epi8(w1, w1) : w1;
    for (int t = 0; t < RN; ++t) {
        const __m256i a = bcast4(qs[t] + off);
        __m256i p0 = _mm256_maddubs_epi16(u0, SIGNED ? _mm256_sign_epi8(a, w0) : a);
        __m256i p1 = _mm256_maddubs_epi16(u1, SIGNED ? _mm256_sign_epi8(a, w1) : a);
        if constexpr (SIGNED && RUN == 1) {
            p0 = _mm256_madd_epi16(p0, ones);
            p1 = _mm256_madd_epi16(p1, ones);
            s[t][0] = g % FLUSH == 0 ? p0 : _mm256_add_epi32(s[t][0], p0);
            s[t][1] = g % FLUSH == 0 ? p1 : _mm256_add_epi32(s[t][1], p1);
        } else {
            s[t][0] = g % FLUSH == 0 ? p0 : _mm256_add_epi16(s[t][0], p0);
            s[t][1] = g % FLUSH == 0 ? p1 : _mm256_add_epi16(s[t][1], p1);
        }
    }
    // Keeps the sums in order: GCC would otherwise reassociate them into a tree whose products
    // all wait in memory.
    for (int t = 0; t < RN; ++t) __asm__("" : "+x"(s[t][0]), "+x"(s[t][1]));
}

// The end of a run: acc += float(sums) * dg * d_a (dg of the half at P + kDg + 64 half).
template <int RN, bool WIDEN>
SL_FORCE_INLINE void flush(const uint8_t * P, int half, const float * const da[RN], int64_t b, __m256i s[RN][2],
                           __m256 acc[RN][2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256 dg0 = load_ps(P + kDg + 64 * half), dg1 = load_ps(P + kDg + 64 * half + 32);
    for (int t = 0; t < RN; ++t) {
        const __m256 d = _mm256_set1_ps(da[t][b]);
        const __m256i i0 = WIDEN ? _mm256_madd_epi16(s[t][0], ones) : s[t][0];
        const __m256i i1 = WIDEN ? _mm256_madd_epi16(s[t][1], ones) : s[t][1];
        acc[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(dg0, d), acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(dg1, d), acc[t][1]);
    }
}

// The end of an int16 run: s32 (+)= its int32 pair sums.
template <int RN>
SL_FORCE_INLINE void widen(bool first, const __m256i s[RN][2], __m256i s32[RN][2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int t = 0; t < RN; ++t)
        for (int v = 0; v < 2; ++v) {
            const __m256i w = _mm256_madd_epi16(s[t][v], ones);
            s32[t][v] = first ? w : _mm256_add_epi32(s32[t][v], w);
        }
}

// RN tokens times the 16 rows of a panel; nr valid rows go to y[t * ldy + r].
template <int RN, bool G16, bool SIGNED, int RUN>
void micro(const uint8_t * P, int64_t K, const uint8_t * acts, size_t lda, float * y, int64_t ldy, int nr) {
    // Sums are turned into float (scaled by the half's dg and the token's d) once per scale: every
    // FLUSH groups. int16 runs shorter than that (HOLD) are widened into int32 sums s32 at their
    // ends (Q6_K, Q5, IQ2 / IQ3: 5-8% faster than a float step per run).
    constexpr int FLUSH = G16 ? 4 : 8;
    constexpr bool HOLD = !(SIGNED && RUN == 1) && RUN < FLUSH;
    const int8_t * qs[RN];
    const float * da[RN];
    const float * sa[RN];
    __m256 acc[RN][2];
    for (int t = 0; t < RN; ++t) {
        qs[t] = ActQ8::qs(acts + t * lda);
        da[t] = ActQ8::d(acts + t * lda, K);
        sa[t] = G16 ? ActQ8::s16(acts + t * lda, K) : ActQ8::s(acts + t * lda, K);
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < K / 32; ++b, P += kBlockBytes) {
        __m256i s[RN][2], s32[RN][2];
        // Unrolled whole: with run-time g the sums and accumulators live in memory (GCC 12).
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
            const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i *>(P + 64 * g));
            const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i *>(P + 64 * g + 32));
            // Value 4g of block b: ActQ8 byte pos(b, 0) + 64 (g / 4) + 4 (g % 4).
            group_products<RN, SIGNED, RUN, HOLD ? RUN : FLUSH>(g, w0, w1, qs, ActQ8::pos(b, 0) + 64 * (g >> 2) + 4 * (g & 3), s);
            if constexpr (HOLD) {
                if ((g + 1) % RUN == 0) widen<RN>((g + 1) % FLUSH == RUN, s, s32);
                if ((g + 1) % FLUSH == 0) flush<RN, false>(P, G16 ? g / 4 : 0, da, b, s32, acc);
            } else {
                if ((g + 1) % FLUSH == 0) flush<RN, !(SIGNED && RUN == 1)>(P, G16 ? g / 4 : 0, da, b, s, acc);
            }
        }
        if constexpr (!SIGNED) {  // the offset or min terms against the activations' block sums
            for (int half = 0; half < (G16 ? 2 : 1); ++half) {
                const __m256 mg0 = load_ps(P + kMg + 64 * half), mg1 = load_ps(P + kMg + 64 * half + 32);
                for (int t = 0; t < RN; ++t) {
                    const __m256 m = _mm256_set1_ps(sa[t][G16 ? 2 * b + half : b]);
                    acc[t][0] = _mm256_fmadd_ps(mg0, m, acc[t][0]);
                    acc[t][1] = _mm256_fmadd_ps(mg1, m, acc[t][1]);
                }
            }
        }
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    for (int t = 0; t < RN; ++t) {
        _mm256_maskstore_ps(y + t * ldy, m0, acc[t][0]);
        _mm256_maskstore_ps(y + t * ldy + 8, m1, acc[t][1]);
    }
}

template <QType WT>
void micro_any(const uint8_t * P, int64_t K, const uint8_t * acts, size_t lda, int64_t n_tok, float * y,
               int64_t ldy, int nr) {
    constexpr bool G16 = groups_of_16<WT>(), SIGNED = signed_codes<WT>();
    constexpr int RUN = run_groups<WT>();
    // Per token two accumulators and two sums: 3 tokens fill the 16 ymm (measured on Zen 4:
    // 2 tokens are slower for every type, even where the sign trick spills).
    constexpr int RN = 3;
    int64_t t = 0;
    for (; t + RN <= n_tok; t += RN) micro<RN, G16, SIGNED, RUN>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
    if (n_tok - t == 2) micro<2, G16, SIGNED, RUN>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
    if (n_tok - t == 1) micro<1, G16, SIGNED, RUN>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
}

template <QType WT>
void gemm_packed(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                 int64_t n_tok, float * y, int64_t ldy) {
    uint8_t * P = scratch(0, size_t(K / 32) * kBlockBytes);
    // Token blocks whose activations stay in L2 (with the panel) while every panel passes over
    // them: each block repacks every panel once.
    const int64_t tb = imax<int64_t>(16, int64_t(512 * 1024 / lda) / 16 * 16);
    for (int64_t t0 = 0; t0 < n_tok; t0 += tb) {
        const int64_t nt = imin(tb, n_tok - t0);
        for (int64_t r0 = 0; r0 < n_rows; r0 += kPanelRows) {
            const int nr = int(imin<int64_t>(kPanelRows, n_rows - r0));
            if constexpr (is_legacy<WT>())
                pack_legacy<WT>(W + r0 * ldw, ldw, K, nr, P);
            else
                pack_kquant<WT>(W + r0 * ldw, ldw, K, nr, P);
            micro_any<WT>(P, K, acts + t0 * lda, lda, nt, y + t0 * ldy + r0, ldy, nr);
        }
    }
}

}  // namespace

GemmFn packed_quant_kernel(QType wt) {
    switch (wt) {
        case QType::Q4_0: return gemm_packed<QType::Q4_0>;
        case QType::Q4_1: return gemm_packed<QType::Q4_1>;
        case QType::Q5_0: return gemm_packed<QType::Q5_0>;
        case QType::Q5_1: return gemm_packed<QType::Q5_1>;
        case QType::Q8_0: return gemm_packed<QType::Q8_0>;
        case QType::Q2_K: return gemm_packed<QType::Q2_K>;
        case QType::Q3_K: return gemm_packed<QType::Q3_K>;
        case QType::Q4_K: return gemm_packed<QType::Q4_K>;
        case QType::Q5_K: return gemm_packed<QType::Q5_K>;
        case QType::Q6_K: return gemm_packed<QType::Q6_K>;
        case QType::IQ4_NL: return gemm_packed<QType::IQ4_NL>;
        case QType::MXFP4: return gemm_packed<QType::MXFP4>;
        case QType::IQ4_XS: return gemm_packed<QType::IQ4_XS>;
        case QType::IQ2_XXS: return gemm_packed<QType::IQ2_XXS>;
        case QType::IQ2_XS: return gemm_packed<QType::IQ2_XS>;
        case QType::IQ2_S: return gemm_packed<QType::IQ2_S>;
        case QType::IQ3_XXS: return gemm_packed<QType::IQ3_XXS>;
        case QType::IQ3_S: return gemm_packed<QType::IQ3_S>;
        case QType::IQ1_S: return gemm_packed<QType::IQ1_S>;
        case QType::IQ1_M: return gemm_packed<QType::IQ1_M>;
        case QType::TQ1_0: return gemm_packed<QType::TQ1_0>;
        case QType::TQ2_0: return gemm_packed<QType::TQ2_0>;
        default: return nullptr;
    }
}

}  // namespace sl::cpu::impl::avx2
