// AMX-INT8 kernels for many tokens (prefill), over the weight panels of the AVX-512 packed
// kernels (packed_avx512.cpp). A panel's 8 rows of codes for one 32-value block (4 values of
// each of 16 weight rows per 64-byte row, unsigned) are an AMX B tile as they stand; the same
// block's activation codes of 16 tokens (signed, repacked once per call into 32 contiguous bytes
// per token) are an A tile; one TDPBSUD gives the 16 tokens x 16 rows int32 block sums that the
// AVX-512 micro-kernel builds with 8 vpdpbusd per token. The sums go through a 1 KiB buffer into
// zmm rows and are scaled with the same float operations in the same order, so the results equal
// Isa::AVX512's bit for bit. Types whose affine terms change every 16 values (Q6_K, Q3_K, Q2_K,
// ...) take two half-block products (K = 16) per block.
//
// Memory: the activations of a block of tokens repacked (K bytes a token, about kActBytes in all)
// and one panel (1.5 bytes a weight of 16 rows), both per-thread scratch; weights are read as
// mapped.
#include "cpu/arch/x86/kernels_x86.h"

namespace sl::cpu::impl {

namespace {

using avx512::kPanelBlockBytes;
using avx512::kPanelDg;
using avx512::kPanelMg;

// The kernels for few tokens (the AVX-512 table's), and the weight types handled here.
GemmFn g_next[int(QType::COUNT)];

// Bytes of repacked activations per block of tokens: they stay in L2 with a panel while every
// panel of the call passes over them.
constexpr int64_t kActBytes = 1024 * 1024;
constexpr int kTileTokens = 16;
// Below these many tokens the AVX-512 kernels are as fast or faster (AVX-512 vs AMX, 4096 x 4096,
// GFLOP/s: at 10 tokens Q4_K 141 vs 135, Q6_K 117 vs 87; at 16 Q4_K 184 vs 198; Q6_K level from 16
// to 64 tokens, 1.15x faster on AMX from 128): types with whole-block scales, and those with
// 16-value groups (two products a block).
constexpr int64_t kMinTokens = 16, kMinTokensG16 = 64;
// Bytes of one block's repacked activations for a group of 16 tokens.
constexpr int kActBlock = kTileTokens * 32;

// LDTILECFG's 64-byte operand, palette 1.
struct TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tiles 0, 1: sums (16 tokens x 16 rows of int32); 2, 4: activation codes (16 tokens x kb bytes);
// 3, 5: weight codes (kb / 4 rows of 64 bytes). kb = 32 (whole blocks) or 16 (half blocks).
void configure(int kb) {
    TileConfig c;
    for (int i = 0; i < 6; ++i) {
        const bool sums = i < 2, acts = i == 2 || i == 4;
        c.rows[i] = uint8_t(sums || acts ? kTileTokens : kb / 4);
        c.colsb[i] = uint16_t(acts ? kb : 64);
    }
    _tile_loadconfig(&c);
}

// The codes of n (1..16) tokens' activation rows as A tiles: block b of the group at A + b *
// kActBlock, token t's 32 values (natural order) at + 32 t. Rows past n repeat token n - 1.
void pack_acts(const uint8_t * acts, size_t lda, int64_t K, int n, int8_t * A) {
    const int64_t nb = K / 32;
    for (int t = 0; t < kTileTokens; ++t) {
        const int8_t * q = ActQ8::qs(acts + imin(t, n - 1) * lda);
        for (int64_t b = 0; b < nb; ++b) {
            const int8_t * p = q + ActQ8::pos(b, 0);
            const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
            const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 64));
            _mm256_store_si256(reinterpret_cast<__m256i *>(A + b * kActBlock + 32 * t), _mm256_set_m128i(hi, lo));
        }
    }
}

// Two int32 products of 16 tokens' codes (a0, a1: rows 32 bytes apart) with panel codes (w0, w1)
// into c[0] and c[1] (row t: token t): two blocks, or a block's two halves (K = 16 tiles).
SL_FORCE_INLINE void two_sums(const int8_t * a0, const uint8_t * w0, const int8_t * a1, const uint8_t * w1,
                              int32_t c[2][kTileTokens * 16]) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_loadd(2, a0, 32);
    _tile_loadd(3, w0, 64);
    _tile_loadd(4, a1, 32);
    _tile_loadd(5, w1, 64);
    _tile_dpbsud(0, 2, 3);
    _tile_dpbsud(1, 4, 5);
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
}

// The float step of block b (panel block w) for the 16 tokens, from the int32 sums c (per half
// block for G16: c[0] values 0..15, c[1] 16..31), as the AVX-512 micro-kernel does it:
// acc += sum * (dg * d) + mg * s.
template <bool G16>
SL_FORCE_INLINE void scale_block(const int32_t c[][kTileTokens * 16], const uint8_t * w, const float * const da[],
                                 const float * const sa[], int64_t b, __m512 acc[]) {
    const __m512 dg0 = _mm512_load_ps(w + kPanelDg), mg0 = _mm512_load_ps(w + kPanelMg);
    if constexpr (!G16) {
        for (int t = 0; t < kTileTokens; ++t) {
            const __m512 s = _mm512_cvtepi32_ps(_mm512_load_si512(c[0] + 16 * t));
            acc[t] = _mm512_fmadd_ps(s, _mm512_mul_ps(dg0, _mm512_set1_ps(da[t][b])), acc[t]);
            acc[t] = _mm512_fmadd_ps(mg0, _mm512_set1_ps(sa[t][b]), acc[t]);
        }
    } else {
        const __m512 dg1 = _mm512_load_ps(w + kPanelDg + 64), mg1 = _mm512_load_ps(w + kPanelMg + 64);
        for (int t = 0; t < kTileTokens; ++t) {
            const __m512 d = _mm512_set1_ps(da[t][b]);
            const __m512 s0 = _mm512_cvtepi32_ps(_mm512_load_si512(c[0] + 16 * t));
            const __m512 s1 = _mm512_cvtepi32_ps(_mm512_load_si512(c[1] + 16 * t));
            acc[t] = _mm512_fmadd_ps(s0, _mm512_mul_ps(dg0, d), acc[t]);
            acc[t] = _mm512_fmadd_ps(s1, _mm512_mul_ps(dg1, d), acc[t]);
            acc[t] = _mm512_fmadd_ps(mg0, _mm512_set1_ps(sa[t][2 * b]), acc[t]);
            acc[t] = _mm512_fmadd_ps(mg1, _mm512_set1_ps(sa[t][2 * b + 1]), acc[t]);
        }
    }
}

// 16 tokens (n valid, their ActQ8 rows at acts, the codes at A) times the 16 rows of panel P
// (nr valid): y[t * ldy + r].
template <bool G16>
void micro(const uint8_t * P, int64_t K, const int8_t * A, const uint8_t * acts, size_t lda, int n, float * y,
           int64_t ldy, int nr) {
    const int64_t nb = K / 32;
    alignas(64) int32_t c[2][kTileTokens * 16];
    const float * da[kTileTokens];
    const float * sa[kTileTokens];
    __m512 acc[kTileTokens];
    for (int t = 0; t < kTileTokens; ++t) {
        const uint8_t * row = acts + imin(t, n - 1) * lda;
        da[t] = ActQ8::d(row, K);
        sa[t] = G16 ? ActQ8::s16(row, K) : ActQ8::s(row, K);
        acc[t] = _mm512_setzero_ps();
    }
    int64_t b = 0;
    if constexpr (!G16) {
        // Two blocks a step in two sets of tiles.
        for (; b + 2 <= nb; b += 2) {
            const int8_t * a = A + b * kActBlock;
            const uint8_t * w = P + b * kPanelBlockBytes;
            two_sums(a, w, a + kActBlock, w + kPanelBlockBytes, c);
            scale_block<false>(c, w, da, sa, b, acc);
            scale_block<false>(c + 1, w + kPanelBlockBytes, da, sa, b + 1, acc);
        }
    }
    for (; b < nb; ++b) {  // G16: the two halves of each block; else the last block (twice, once kept)
        const int8_t * a = A + b * kActBlock;
        const uint8_t * w = P + b * kPanelBlockBytes;
        if constexpr (G16)
            two_sums(a, w, a + 16, w + 4 * 64, c);
        else
            two_sums(a, w, a, w, c);
        scale_block<G16>(c, w, da, sa, b, acc);
    }
    const __mmask16 m = __mmask16((1u << nr) - 1);
    for (int t = 0; t < n; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

template <QType WT>
void gemm(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
          int64_t n_tok, float * y, int64_t ldy) {
    bool g16 = false;
    const avx512::PackPanelFn pack = avx512::panel_packer(WT, &g16);
    if (n_tok < (g16 ? kMinTokensG16 : kMinTokens))
        return g_next[int(WT)](W, ldw, K, n_rows, acts, lda, n_tok, y, ldy);
    uint8_t * P = scratch(0, size_t(K / 32) * kPanelBlockBytes);
    const int64_t tb = imax<int64_t>(kTileTokens, kActBytes / K / kTileTokens * kTileTokens);
    const int64_t tokens = imin<int64_t>(tb, int64_t(round_up(size_t(n_tok), kTileTokens)));
    int8_t * A = reinterpret_cast<int8_t *>(scratch(2, size_t(tokens * K)));
    // The tile configuration is per thread and is not assumed to survive between calls.
    configure(g16 ? 16 : 32);
    for (int64_t t0 = 0; t0 < n_tok; t0 += tb) {
        const int64_t nt = imin(tb, n_tok - t0);
        for (int64_t g = 0; g < nt; g += kTileTokens)
            pack_acts(acts + (t0 + g) * lda, lda, K, int(imin<int64_t>(kTileTokens, nt - g)), A + g * K);
        for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
            const int nr = int(imin<int64_t>(16, n_rows - r0));
            pack(W + r0 * ldw, ldw, K, nr, P);
            for (int64_t g = 0; g < nt; g += kTileTokens) {
                const int n = int(imin<int64_t>(kTileTokens, nt - g));
                float * yt = y + (t0 + g) * ldy + r0;
                if (g16)
                    micro<true>(P, K, A + g * K, acts + (t0 + g) * lda, lda, n, yt, ldy, nr);
                else
                    micro<false>(P, K, A + g * K, acts + (t0 + g) * lda, lda, n, yt, ldy, nr);
            }
        }
    }
    _tile_release();
}

template <QType WT>
void add(KernelTable & t) {
    g_next[int(WT)] = t.gemm[int(WT)];
    t.gemm[int(WT)] = gemm<WT>;
}

}  // namespace

void fill_amx(KernelTable & t) {
    for (int i = 0; i < int(QType::COUNT); ++i)
        with_quant_type(QType(i), [&](auto wt) { add<decltype(wt)::value>(t); });
}

}  // namespace sl::cpu::impl
