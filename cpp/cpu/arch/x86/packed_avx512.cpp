// AVX-512 VNNI kernels for many tokens (prefill). A panel of 16 weight rows is decoded once into
// a rows-in-lanes layout: per 32-value block, 8 zmm of codes where lane r holds 4 consecutive
// codes of row r, then the per-row affine terms. The micro-kernel broadcasts 4 activation bytes
// of a token and vpdpbusd's them against a zmm, accumulating 16 rows' dot products at once; a
// block costs 8 vpdpbusd + 4 float ops per token and 16 rows, and the panel serves every token.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"
#include "cpu/arch/x86/blocks_iq_avx512.h"

namespace sl::cpu::impl::avx512 {

namespace {

// Panel layout per 32-value block: codes[8][16 rows][4], float dg[2][16], float mg[2][16].
constexpr int kPanelRows = 16;
constexpr int kBlockBytes = kPanelBlockBytes;
constexpr int kDg = kPanelDg, kMg = kPanelMg;

// Stores the transposed codes of 4 blocks (n valid): half 0 holds groups 0..3 (values 0..15),
// half 1 groups 4..7 of each block.
void store_codes(uint8_t * P, int64_t b, int n, int half, const __m512i v[16]) {
    for (int j = 0; j < n; ++j)
        for (int g = 0; g < 4; ++g) _mm512_store_si512(P + (b + j) * kBlockBytes + 64 * (4 * half + g), v[4 * j + g]);
}

void store_codes(uint8_t * P, int64_t b, int n, Codes c[16]) {
    __m512i v[16];
    for (int r = 0; r < 16; ++r) v[r] = c[r].lo;
    transpose16(v);
    store_codes(P, b, n, 0, v);
    for (int r = 0; r < 16; ++r) v[r] = c[r].hi;
    transpose16(v);
    store_codes(P, b, n, 1, v);
}

void store_affine(uint8_t * P, int64_t b, int half, __m512 dg, __m512 mg) {
    _mm512_store_ps(P + b * kBlockBytes + kDg + 64 * half, dg);
    _mm512_store_ps(P + b * kBlockBytes + kMg + 64 * half, mg);
}

template <QType WT>
void pack_legacy(const uint8_t * W, size_t ldw, int64_t K, int nr, uint8_t * P) {
    using B = Legacy<WT>;
    const int nb = int(K / 32);
    for (int q = 0; q < nb; q += 4) {
        const int n = imin(4, nb - q);
        Codes c[16];
        __m128 d, m;
        for (int r = 0; r < 16; ++r) {
            if (r < nr)
                B::load4(W + r * ldw + q * B::kBytes, n, &c[r], &d, &m);
            else
                c[r].lo = c[r].hi = _mm512_setzero_si512();
        }
        store_codes(P, q, n, c);
    }
    for (int b0 = 0; b0 < nb; b0 += 16) {
        const int n = imin(16, nb - b0);
        __m512 d[16], m[16];
        for (int r = 0; r < 16; ++r) {
            if (r < nr)
                legacy_scales<WT>(W + r * ldw + b0 * B::kBytes, n, &d[r], &m[r]);
            else
                d[r] = m[r] = _mm512_setzero_ps();
        }
        transpose16(d);
        transpose16(m);
        for (int j = 0; j < n; ++j) {
            const __m512 mg = B::kHasMin ? m[j] : _mm512_mul_ps(_mm512_set1_ps(-float(B::kOffset)), d[j]);
            store_affine(P, b0 + j, 0, d[j], mg);
            store_affine(P, b0 + j, 1, d[j], mg);
        }
    }
}

template <QType WT>
void pack_kquant(const uint8_t * W, size_t ldw, int64_t K, int nr, uint8_t * P) {
    using B = KQuant<WT>;
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const uint8_t * sb = W + i * B::kBytes;
        for (int g = 0; g < 2; ++g) {
            Codes c[16];
            for (int r = 0; r < 16; ++r) {
                if (r < nr)
                    c[r] = B::codes(sb + r * ldw, g);
                else
                    c[r].lo = c[r].hi = _mm512_setzero_si512();
            }
            store_codes(P, 8 * i + 4 * g, 4, c);
        }
        __m512 dg[16], mg[16];
        for (int r = 0; r < 16; ++r) {
            if (r < nr)
                B::scales(sb + r * ldw, &dg[r], &mg[r]);
            else
                dg[r] = mg[r] = _mm512_setzero_ps();
        }
        transpose16(dg);
        transpose16(mg);
        for (int g = 0; g < 16; ++g) store_affine(P, 8 * i + g / 2, g & 1, dg[g], mg[g]);
    }
}

inline __m512i bcast4(const int8_t * p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// RN tokens times the 16 rows of a panel; nr valid rows go to y[t * ldy + r].
// G16: the affine terms differ between the two halves of a block (16-value groups).
template <int RN, bool G16>
void micro(const uint8_t * P, int64_t K, const uint8_t * acts, size_t lda, float * y, int64_t ldy, int nr) {
    const int64_t nb = K / 32;
    const int8_t * qs[RN];
    const float * da[RN];
    const float * sa[RN];
    __m512 acc[RN];
    for (int t = 0; t < RN; ++t) {
        qs[t] = ActQ8::qs(acts + t * lda);
        da[t] = ActQ8::d(acts + t * lda, K);
        sa[t] = G16 ? ActQ8::s16(acts + t * lda, K) : ActQ8::s(acts + t * lda, K);
        acc[t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b, P += kBlockBytes) {
        __m512i w[8];
        for (int g = 0; g < 8; ++g) w[g] = _mm512_load_si512(P + 64 * g);
        const __m512 dg0 = _mm512_load_ps(P + kDg), mg0 = _mm512_load_ps(P + kMg);
        for (int t = 0; t < RN; ++t) {
            // Values 0..15 of block b, then (q + 64) its values 16..31 (ActQ8 order).
            const int8_t * q = qs[t] + ActQ8::pos(b, 0);
            const __m512 d = _mm512_set1_ps(da[t][b]);
            if constexpr (!G16) {
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast4(q));
                for (int g = 1; g < 4; ++g) s = _mm512_dpbusd_epi32(s, w[g], bcast4(q + 4 * g));
                for (int g = 4; g < 8; ++g) s = _mm512_dpbusd_epi32(s, w[g], bcast4(q + 64 + 4 * (g - 4)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dg0, d), acc[t]);
                acc[t] = _mm512_fmadd_ps(mg0, _mm512_set1_ps(sa[t][b]), acc[t]);
            } else {
                const __m512 dg1 = _mm512_load_ps(P + kDg + 64), mg1 = _mm512_load_ps(P + kMg + 64);
                __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast4(q));
                __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[4], bcast4(q + 64));
                for (int g = 1; g < 4; ++g) {
                    s0 = _mm512_dpbusd_epi32(s0, w[g], bcast4(q + 4 * g));
                    s1 = _mm512_dpbusd_epi32(s1, w[4 + g], bcast4(q + 64 + 4 * g));
                }
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(dg0, d), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(dg1, d), acc[t]);
                acc[t] = _mm512_fmadd_ps(mg0, _mm512_set1_ps(sa[t][2 * b]), acc[t]);
                acc[t] = _mm512_fmadd_ps(mg1, _mm512_set1_ps(sa[t][2 * b + 1]), acc[t]);
            }
        }
    }
    const __mmask16 m = __mmask16((1u << nr) - 1);
    for (int t = 0; t < RN; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

template <bool G16>
void micro_any(const uint8_t * P, int64_t K, const uint8_t * acts, size_t lda, int64_t n_tok, float * y,
               int64_t ldy, int nr) {
    int64_t t = 0;
    for (; t + 16 <= n_tok; t += 16) micro<16, G16>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
    if (t + 8 <= n_tok) {
        micro<8, G16>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
        t += 8;
    }
    if (t + 4 <= n_tok) {
        micro<4, G16>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
        t += 4;
    }
    if (t + 2 <= n_tok) {
        micro<2, G16>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
        t += 2;
    }
    if (t < n_tok) micro<1, G16>(P, K, acts + t * lda, lda, y + t * ldy, ldy, nr);
}

template <QType WT>
constexpr bool groups_of_16() {
    if constexpr (qtype_block_size(WT) == 32)
        return false;
    else
        return KQuant<WT>::kGroups16;
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
            if constexpr (qtype_block_size(WT) == 32)
                pack_legacy<WT>(W + r0 * ldw, ldw, K, nr, P);
            else
                pack_kquant<WT>(W + r0 * ldw, ldw, K, nr, P);
            micro_any<groups_of_16<WT>()>(P, K, acts + t0 * lda, lda, nt, y + t0 * ldy + r0, ldy, nr);
        }
    }
}

}  // namespace

PackPanelFn panel_packer(QType wt, bool * groups16) {
    PackPanelFn pack = nullptr;
    with_quant_type(wt, [&](auto t) {
        constexpr QType WT = decltype(t)::value;
        *groups16 = groups_of_16<WT>();
        if constexpr (qtype_block_size(WT) == 32)
            pack = pack_legacy<WT>;
        else
            pack = pack_kquant<WT>;
    });
    return pack;
}

GemmFn packed_kernel(QType wt) {
    GemmFn f = nullptr;
    if (!with_quant_type(wt, [&](auto t) { f = gemm_packed<decltype(t)::value>; })) return packed_float_kernel(wt);
    return f;
}

}  // namespace sl::cpu::impl::avx512
