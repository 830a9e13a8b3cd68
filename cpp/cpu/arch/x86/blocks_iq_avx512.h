// AVX-512 decoding of the grid i-quants (quant/iquants.h) into KQuant<T> form (blocks_avx512.h):
// codes(sb, g) gives half a super-block (4 blocks of 32) as unsigned codes 128 + signed grid
// value in the ActQ8 order, scales(sb, ...) the 16 per-16 terms dg = the block scale, mg = -128 dg.
// IQ1_S / IQ1_M: value = dl * (g + delta), g in {-1, 0, 1}, delta = +-1/8 per 8 values, so
// code = 128 + 8 g + 8 delta and dg = dl / 8. The same as scalar_unpack.cpp's unpackers.
//
// codes(): grid entries (8 values in a qword, or 4 in a dword) are gathered from quant/iq_grids.h
// (codes_sb, the decode kernel's whole super-block: register tables, or scalar
// loads of precomputed codes for IQ2_XXS, IQ2_XS, IQ2_S and IQ1, below). The 16
// entries of a half (8 in lo, 8 in hi for 8-value grids) go in "half order": lo's entries
// 0, 1 of blocks 0..3, then hi's entries 2, 3 (lane j of lo / hi = block j's values 0..15 /
// 16..31); their sign bytes in the same order are the byte masks of lo and hi as they stand.
#pragma once

#include "common/unaligned.h"
#include "cpu/arch/x86/blocks_avx512.h"
#include "quant/iq_grids.h"
#include "quant/iquants.h"

namespace sl::cpu::impl::avx512 {

inline __m256i load32(const uint8_t * p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }
inline __m128i load16(const uint8_t * p) { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)); }

// Bytes 0, 1 of each dword, then bytes 2, 3 (4 blocks' entries 0, 1 then 2, 3: half order).
inline __m128i half_order(__m128i v) {
    return _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
}

// Dwords 0, 2, 4, 6 then 1, 3, 5, 7.
inline __m256i even_odd_dwords(__m256i v) { return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)); }

// Word x of 4 blocks (dwords 0..3 of v) spread to half order: lane k holds block (k % 8) / 2's.
inline __m512i per_block_half_order(__m128i v) {
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3),
                                    _mm512_castsi128_si512(v));
}

// ggml's ksigns_iq2xs of 16 7-bit sign indices (dword lanes): the index plus an eighth bit that
// makes the count of set bits even; one byte per lane.
inline __m128i ksigns16(__m512i s7) {
    __m512i p = _mm512_xor_si512(s7, _mm512_srli_epi32(s7, 4));
    p = _mm512_xor_si512(p, _mm512_srli_epi32(p, 2));
    p = _mm512_xor_si512(p, _mm512_srli_epi32(p, 1));
    return _mm512_cvtepi32_epi8(_mm512_or_si512(s7, _mm512_slli_epi32(_mm512_and_si512(p, _mm512_set1_epi32(1)), 7)));
}

// 128 + v, or 128 - v in the bytes whose bit of neg is set.
inline __m512i signed_codes(__m512i v, __mmask64 neg) {
    const __m512i c128 = _mm512_set1_epi8(-128);
    return _mm512_mask_sub_epi8(_mm512_add_epi8(v, c128), neg, c128, v);
}

// Codes of 16 8-value grid entries in half order (idx: dword lanes), signs one byte an entry.
inline __m512i lookup8(const uint64_t * grid, const uint32_t * i) {
    const __m128i a = _mm_set_epi64x(int64_t(grid[i[1]]), int64_t(grid[i[0]]));
    const __m128i b = _mm_set_epi64x(int64_t(grid[i[3]]), int64_t(grid[i[2]]));
    const __m128i c = _mm_set_epi64x(int64_t(grid[i[5]]), int64_t(grid[i[4]]));
    const __m128i d = _mm_set_epi64x(int64_t(grid[i[7]]), int64_t(grid[i[6]]));
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1)),
                              _mm256_inserti128_si256(_mm256_castsi128_si256(c), d, 1), 1);
}

inline Codes grid8_codes(const uint64_t * grid, __m512i idx, __m128i signs) {
    alignas(64) uint32_t ix[16];
    _mm512_store_si512(ix, idx);
    const __m512i lo = lookup8(grid, ix);
    const __m512i hi = lookup8(grid, ix + 8);
    return {signed_codes(lo, __mmask64(_mm_cvtsi128_si64(signs))), signed_codes(hi, __mmask64(_mm_extract_epi64(signs, 1)))};
}

// Codes of 4-value grid entries: lo's 16 (blocks 0..3, entries 0..3 each), hi's 16 (4..7);
// signs one byte per two entries, in half order.
inline Codes grid4_codes(const uint32_t * grid, __m512i idx_lo, __m512i idx_hi, __m128i signs) {
    const __m512i lo = _mm512_i32gather_epi32(idx_lo, grid, 4);
    const __m512i hi = _mm512_i32gather_epi32(idx_hi, grid, 4);
    return {signed_codes(lo, __mmask64(_mm_cvtsi128_si64(signs))), signed_codes(hi, __mmask64(_mm_extract_epi64(signs, 1)))};
}

// IQ1 codes of 16 entries in half order: 8 (g + 1) + 120 + (neg ? -1 : 1) = 128 + 8 g + 8 delta.
inline Codes iq1_codes(__m512i idx, __mmask16 neg) {
    const __m512i one = _mm512_set1_epi8(1), pos = _mm512_set1_epi8(121), negv = _mm512_set1_epi8(119);
    auto code = [&](__m256i ix, __mmask8 n) {
        const __m512i v = _mm512_i32gather_epi64(ix, iq1s_grid, 8);
        // (g + 1) * 8 <= 16: the 16-bit shift leaves every byte in place.
        const __m512i c = _mm512_slli_epi16(_mm512_add_epi8(v, one), 3);
        return _mm512_add_epi8(c, _mm512_mask_mov_epi64(pos, n, negv));
    };
    return {code(_mm512_castsi512_si256(idx), __mmask8(neg)), code(_mm512_extracti64x4_epi64(idx, 1), __mmask8(neg >> 8))};
}

// dg = d * (0.5 + ls) * f (f = 0.25 for IQ2, 0.5 for IQ3_XXS), mg = -128 dg; ls int32 lanes.
inline void half_scales(float d, __m512i ls, float f, __m512 * dg, __m512 * mg) {
    const __m512 s = _mm512_add_ps(_mm512_set1_ps(0.5f), _mm512_cvtepi32_ps(ls));
    *dg = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(d), s), _mm512_set1_ps(f));
    *mg = _mm512_mul_ps(_mm512_set1_ps(-128.0f), *dg);
}

// dg = d * (2 s + 1) * f, mg = -128 dg.
inline void odd_scales(float d, __m512i s, float f, __m512 * dg, __m512 * mg) {
    const __m512 o = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(s, s), _mm512_set1_epi32(1)));
    *dg = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(d), o), _mm512_set1_ps(f));
    *mg = _mm512_mul_ps(_mm512_set1_ps(-128.0f), *dg);
}

// The 16 4-bit scales of 8 bytes (low nibble: values 0..15 of a block, high: 16..31).
inline __m512i nibble_scales16(const uint8_t * p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(p));
    const __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    return _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4)),
                            _mm512_set1_epi32(15));
}

// Dwords 0..7 of v, each twice.
inline __m512i dup8(__m256i v) {
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
                                    _mm512_castsi256_si512(v));
}

// ---- register-table decoding of the 4-value grids (IQ3_XXS, IQ3_S), a super-block at once ----
// Each grid entry is coded in 16 bits (IQ3_XXS: 4 values x 3 bits, levels 4, 12, .., 52, 62),
// held as a low-byte and a high-byte table of 256 bytes (4 zmm each, looked up by vpermi2b + a
// blend on the index's top bit; a second pair and a blend on bit 8 for 512 entries). vpermi2b
// then spreads each entry's two code bytes over its dword, vpmultishiftqb moves each value's
// code bits to its byte and vpermb maps them to the level. The sign bytes (ksigns, also a
// vpermi2b table) are spread to their 8 values' qword and turned into a byte mask by vptestmb.
template <int N>
struct GridTables {
    alignas(64) uint8_t lo[N], hi[N];       // the entries' 16-bit codes
    alignas(64) uint8_t levels[64];         // vpermb table: byte i = level of code i % (levels)
    alignas(64) uint8_t code_ctl[4][64];    // [2 g + p]: code bytes of half g, part p (lo / hi)
    alignas(64) uint8_t sign_ctl[4][64];    // [2 g + p]: its sign bytes, one a qword, repeated
    alignas(64) uint8_t shift[64];          // vpmultishiftqb: value j's code bits
};

inline constexpr uint8_t kBitOfByte[64] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
                                           1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
                                           1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
                                           1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

// 4-value grids of levels base + step c, c < 8 (IQ3_XXS: 4, 12, .., 52 and 62; IQ3_S: 1, 3, ..,
// 15): entry e of block b at byte 8 b + e; dword k of half g, part p is block 4 g + k / 4's
// entry 4 p + k % 4; sign field f (values 8 f..8 f + 7) of block b at byte 8 b + f.
template <int N>
constexpr GridTables<N> make_grid4_tables(const uint32_t * grid, int base, int step, const uint8_t (&lv)[8]) {
    GridTables<N> t{};
    for (int i = 0; i < N; ++i) {
        uint32_t c = 0;
        for (int j = 0; j < 4; ++j) c |= uint32_t((uint8_t(grid[i] >> (8 * j)) - base) / step) << (3 * j);
        t.lo[i] = uint8_t(c);
        t.hi[i] = uint8_t(c >> 8);
    }
    for (int i = 0; i < 64; ++i) t.levels[i] = lv[i & 7];
    for (int gp = 0; gp < 4; ++gp) {
        for (int k = 0; k < 16; ++k) {
            const int pos = 8 * (4 * (gp >> 1) + k / 4) + 4 * (gp & 1) + k % 4;
            for (int m = 0; m < 4; ++m) t.code_ctl[gp][4 * k + m] = uint8_t(m % 2 ? 64 + pos : pos);
        }
        for (int k = 0; k < 8; ++k)
            for (int m = 0; m < 8; ++m) t.sign_ctl[gp][8 * k + m] = uint8_t(8 * (4 * (gp >> 1) + k / 2) + 2 * (gp & 1) + k % 2);
    }
    for (int k = 0; k < 8; ++k)
        for (int j = 0; j < 8; ++j) t.shift[8 * k + j] = uint8_t(32 * (j / 4) + 3 * (j % 4));
    return t;
}

inline constexpr uint8_t kIq3xxsLevels[8] = {4, 12, 20, 28, 36, 44, 52, 62};
inline constexpr uint8_t kIq3sLevels[8] = {1, 3, 5, 7, 9, 11, 13, 15};
alignas(64) inline constexpr GridTables<256> kIq3xxsTables = make_grid4_tables<256>(iq3xxs_grid, 4, 8, kIq3xxsLevels);
alignas(64) inline constexpr GridTables<512> kIq3sTables = make_grid4_tables<512>(iq3s_grid, 1, 2, kIq3sLevels);

inline __m512i ld64(const uint8_t * p) { return _mm512_load_si512(p); }

// One of the 16-bit code bytes (table tb: lo or hi) of the entries whose low 8 index bits are
// the bytes of idx (top: their bit 7); b8: their bit 8 (512-entry grids).
inline __m512i lookup256(const uint8_t * tb, __m512i idx, __mmask64 top) {
    return _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(ld64(tb), idx, ld64(tb + 64)),
                                  _mm512_permutex2var_epi8(ld64(tb + 128), idx, ld64(tb + 192)));
}
inline __m512i lookup512(const uint8_t * tb, __m512i idx, __mmask64 top, __mmask64 b8) {
    return _mm512_mask_blend_epi8(b8, lookup256(tb, idx, top), lookup256(tb + 256, idx, top));
}
template <int N>
inline void entry_codes(const GridTables<N> & t, __m512i idx, __mmask64 b8, __m512i * lo, __m512i * hi) {
    const __mmask64 top = _mm512_movepi8_mask(idx);
    if constexpr (N == 256) {
        *lo = lookup256(t.lo, idx, top);
        *hi = lookup256(t.hi, idx, top);
    } else {
        *lo = lookup512(t.lo, idx, top, b8);
        *hi = lookup512(t.hi, idx, top, b8);
    }
}

// Codes (128 +- level) of half g, part p from the entry codes and the sign bytes.
template <int N>
inline __m512i table_codes(const GridTables<N> & t, int gp, __m512i lo, __m512i hi, __m512i signs) {
    const __m512i c = _mm512_permutex2var_epi8(lo, ld64(t.code_ctl[gp]), hi);
    const __m512i v = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(ld64(t.shift), c), ld64(t.levels));
    const __m512i s = _mm512_permutexvar_epi8(ld64(t.sign_ctl[gp]), signs);
    return signed_codes(v, _mm512_test_epi8_mask(s, ld64(kBitOfByte)));
}

template <int N>
inline void table_codes_sb(const GridTables<N> & t, __m512i lo, __m512i hi, __m512i signs, Codes c[2]) {
    for (int g = 0; g < 2; ++g) c[g] = {table_codes(t, 2 * g, lo, hi, signs), table_codes(t, 2 * g + 1, lo, hi, signs)};
}

// ksigns of the 7-bit fields (bits 0..6 of each byte).
inline __m512i ksigns64(__m512i s7) {
    return _mm512_permutex2var_epi8(_mm512_loadu_si512(ksigns_iq2xs), s7, _mm512_loadu_si512(ksigns_iq2xs + 64));
}

// ---- decode of a whole super-block by scalar loads of precomputed entry codes (IQ2, IQ1) ----
// Each entry is one qword load from a table of its 8 codes; the scalar units build the indices
// (pdep of a block's 4 low index bytes and its high bits: 4 16-bit indices in a register).
// Cheaper than gathers, and than IQ2_S's 16 register-table lookups.
template <int N>
struct CodeTable {
    alignas(64) uint64_t e[N];
};

// IQ2_XXS, IQ2_XS, IQ2_S: 128 + level (8, 25, 43) per byte; a sign negates the byte.
constexpr CodeTable<1024> make_iq2s_codes() {
    CodeTable<1024> t{};
    for (int i = 0; i < 1024; ++i) t.e[i] = iq2s_grid[i] ^ 0x8080808080808080ULL;
    return t;
}
alignas(64) inline constexpr CodeTable<1024> kIq2sCodes = make_iq2s_codes();
constexpr CodeTable<256> make_iq2xxs_codes() {
    CodeTable<256> t{};
    for (int i = 0; i < 256; ++i) t.e[i] = iq2xxs_grid[i] ^ 0x8080808080808080ULL;
    return t;
}
alignas(64) inline constexpr CodeTable<256> kIq2xxsCodes = make_iq2xxs_codes();
constexpr CodeTable<512> make_iq2xs_codes() {
    CodeTable<512> t{};
    for (int i = 0; i < 512; ++i) t.e[i] = iq2xs_grid[i] ^ 0x8080808080808080ULL;
    return t;
}
alignas(64) inline constexpr CodeTable<512> kIq2xsCodes = make_iq2xs_codes();

// Entries at bits s and s + 16 of p (16-bit indices) as a 128-bit lane.
inline __m128i grid_pair(const uint64_t * tab, uint64_t p, int s) {
    const __m128i a = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(tab + ((p >> s) & 0xFFFF)));
    return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(a), reinterpret_cast<const double *>(tab + ((p >> (s + 16)) & 0xFFFF))));
}

inline __m512i lanes4(__m128i a, __m128i b, __m128i c, __m128i d) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1)),
                              _mm256_inserti128_si256(_mm256_castsi128_si256(c), d, 1), 1);
}

// Entries 0, 1 (lo) and 2, 3 (hi) of the 4 blocks of a half, p[j] block j's packed indices.
inline Codes grid_half(const uint64_t * tab, const uint64_t * p) {
    return {lanes4(grid_pair(tab, p[0], 0), grid_pair(tab, p[1], 0), grid_pair(tab, p[2], 0), grid_pair(tab, p[3], 0)),
            lanes4(grid_pair(tab, p[0], 32), grid_pair(tab, p[1], 32), grid_pair(tab, p[2], 32), grid_pair(tab, p[3], 32))};
}

template <>
struct KQuant<QType::IQ2_XXS> {
    static constexpr int kBytes = 66;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        // Per block 8 bytes: a0 (4 grid indices), a1 (4 x 7 sign bits, scale).
        const __m256i v = even_odd_dwords(load32(sb + 2 + 32 * g));
        const __m512i idx = _mm512_cvtepu8_epi32(half_order(_mm256_castsi256_si128(v)));
        const __m512i a1 = per_block_half_order(_mm256_extracti128_si256(v, 1));
        const __m512i sh = _mm512_setr_epi32(0, 7, 0, 7, 0, 7, 0, 7, 14, 21, 14, 21, 14, 21, 14, 21);
        const __m512i s7 = _mm512_and_si512(_mm512_srlv_epi32(a1, sh), _mm512_set1_epi32(127));
        return grid8_codes(iq2xxs_grid, idx, ksigns16(s7));
    }
    // Both halves (decode).
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        // Sign field e of block b: bits 32 + 7 e of qword b (its ksigns to byte 8 b + e), then
        // the sign bytes of each half's lo (entries 0, 1 of its blocks) and hi (2, 3) in half order.
        const __m512i q = _mm512_loadu_si512(sb + 2);
        const __m512i s8 = ksigns64(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x352E2720), q));
        const __m512i ctl = _mm512_castsi256_si512(_mm256_setr_epi64x(0x1918111009080100, 0x1B1A13120B0A0302,
                                                                       0x3938313029282120, 0x3B3A33322B2A2322));
        const __m256i signs = _mm512_castsi512_si256(_mm512_permutexvar_epi8(ctl, s8));
        const __m512i z = _mm512_setzero_si512();
        for (int g = 0; g < 2; ++g) {
            uint64_t p[4];
            for (int j = 0; j < 4; ++j) p[j] = _pdep_u64(load_u32(sb + 2 + 32 * g + 8 * j), 0x00FF00FF00FF00FF);
            const __m128i sg = g ? _mm256_extracti128_si256(signs, 1) : _mm256_castsi256_si128(signs);
            const Codes e = grid_half(kIq2xxsCodes.e, p);
            c[g] = {_mm512_mask_sub_epi8(e.lo, __mmask64(_mm_cvtsi128_si64(sg)), z, e.lo),
                    _mm512_mask_sub_epi8(e.hi, __mmask64(_mm_extract_epi64(sg, 1)), z, e.hi)};
        }
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const __m512i q = _mm512_loadu_si512(sb + 2);
        const __m512i a1 = _mm512_permutexvar_epi32(_mm512_setr_epi32(1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15), q);
        half_scales(h2f(reinterpret_cast<const block_iq2_xxs *>(sb)->d), _mm512_srli_epi32(a1, 28), 0.25f, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ2_XS> {
    static constexpr int kBytes = 74;
    static constexpr bool kGroups16 = true;
    static Codes codes(const uint8_t * sb, int g) {
        // u16 per entry: 9-bit grid index, 7 sign bits.
        const __m512i q = _mm512_cvtepu16_epi32(even_odd_dwords(load32(sb + 2 + 32 * g)));
        const __m512i idx = _mm512_and_si512(q, _mm512_set1_epi32(511));
        return grid8_codes(iq2xs_grid, idx, ksigns16(_mm512_srli_epi32(q, 9)));
    }
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        // u16 of entry n = 4 b + l: 9-bit grid index, 7 sign bits (ksigns).
        const __m512i q = _mm512_loadu_si512(sb + 2);
        const __m256i signs = _mm512_cvtepi16_epi8(ksigns64(_mm512_srli_epi16(q, 9)));
        for (int g = 0; g < 2; ++g) {
            uint64_t p[4];
            for (int j = 0; j < 4; ++j) p[j] = load_u64(sb + 2 + 32 * g + 8 * j) & 0x01FF01FF01FF01FF;
            const __m128i s = half_order(g ? _mm256_extracti128_si256(signs, 1) : _mm256_castsi256_si128(signs));
            const Codes e = grid_half(kIq2xsCodes.e, p);
            const __m512i z = _mm512_setzero_si512();
            c[g] = {_mm512_mask_sub_epi8(e.lo, __mmask64(_mm_cvtsi128_si64(s)), z, e.lo),
                    _mm512_mask_sub_epi8(e.hi, __mmask64(_mm_extract_epi64(s, 1)), z, e.hi)};
        }
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        half_scales(h2f(reinterpret_cast<const block_iq2_xs *>(sb)->d), nibble_scales16(sb + 66), 0.25f, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ2_S> {
    static constexpr int kBytes = 82;
    static constexpr bool kGroups16 = true;
    static Codes codes(const uint8_t * sb, int g) {
        // Index bits 0..7 in qs[4 b + l], 8..9 at bits 2 l of qh[b]; sign bytes at qs[32 + 4 b + l].
        __m512i idx = _mm512_cvtepu8_epi32(half_order(load16(sb + 2 + 16 * g)));
        uint32_t qh;
        memcpy(&qh, sb + 66 + 4 * g, 4);
        const __m512i sh = _mm512_setr_epi32(0, 2, 8, 10, 16, 18, 24, 26, 4, 6, 12, 14, 20, 22, 28, 30);
        const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(qh)), sh), _mm512_set1_epi32(3));
        idx = _mm512_or_si512(idx, _mm512_slli_epi32(hi, 8));
        return grid8_codes(iq2s_grid, idx, half_order(load16(sb + 34 + 16 * g)));
    }
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        // Entry l of block b: index bits 0..7 in qs[4 b + l], 8..9 at bits 2 l of qh[b]; its
        // sign byte at qs[32 + 4 b + l] (bytes 0, 1 of each dword of a half's 16: lo, 2, 3: hi).
        for (int g = 0; g < 2; ++g) {
            uint64_t p[4];
            for (int j = 0; j < 4; ++j)
                p[j] = _pdep_u64(load_u32(sb + 2 + 16 * g + 4 * j), 0x00FF00FF00FF00FF) |
                       _pdep_u64(sb[66 + 4 * g + j], 0x0300030003000300);
            const __m128i s = half_order(load16(sb + 34 + 16 * g));
            const Codes e = grid_half(kIq2sCodes.e, p);
            const __m512i z = _mm512_setzero_si512();
            c[g] = {_mm512_mask_sub_epi8(e.lo, __mmask64(_mm_cvtsi128_si64(s)), z, e.lo),
                    _mm512_mask_sub_epi8(e.hi, __mmask64(_mm_extract_epi64(s, 1)), z, e.hi)};
        }
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        half_scales(h2f(reinterpret_cast<const block_iq2_s *>(sb)->d), nibble_scales16(sb + 74), 0.25f, dg, mg);
    }
};

// Grid indices of the 4 blocks of a half of IQ3 types: lo (entries 0..3), hi (4..7) of each.
inline void iq3_indices(const uint8_t * qs32, __m512i * lo, __m512i * hi) {
    const __m256i v = even_odd_dwords(load32(qs32));
    *lo = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(v));
    *hi = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(v, 1));
}

template <>
struct KQuant<QType::IQ3_XXS> {
    static constexpr int kBytes = 98;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        __m512i lo, hi;
        iq3_indices(sb + 2 + 32 * g, &lo, &hi);
        // Per block a u32 of 4 x 7 sign bits (one per 8 values) and the scale.
        const __m512i aux = per_block_half_order(load16(sb + 66 + 16 * g));
        const __m512i sh = _mm512_setr_epi32(0, 7, 0, 7, 0, 7, 0, 7, 14, 21, 14, 21, 14, 21, 14, 21);
        const __m512i s7 = _mm512_and_si512(_mm512_srlv_epi32(aux, sh), _mm512_set1_epi32(127));
        return grid4_codes(iq3xxs_grid, lo, hi, ksigns16(s7));
    }
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        const auto & t = kIq3xxsTables;
        __m512i lo, hi;
        entry_codes(t, _mm512_loadu_si512(sb + 2), 0, &lo, &hi);
        // Sign field f of block b (bits 7 f of its aux word) to byte 8 b + f.
        const __m512i aux = _mm512_cvtepu32_epi64(load32(sb + 66));
        const __m512i signs = ksigns64(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x150e0700), aux));
        table_codes_sb(t, lo, hi, signs, c);
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const __m512i ls = _mm512_srli_epi32(dup8(load32(sb + 66)), 28);
        half_scales(h2f(reinterpret_cast<const block_iq3_xxs *>(sb)->d), ls, 0.5f, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ3_S> {
    static constexpr int kBytes = 110;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        __m512i lo, hi;
        iq3_indices(sb + 2 + 32 * g, &lo, &hi);
        // Index bit 8 of entry e of block b: bit e of qh[b].
        uint32_t qh;
        memcpy(&qh, sb + 66 + 4 * g, 4);
        const __m512i q = _mm512_set1_epi32(int(qh)), one = _mm512_set1_epi32(1);
        const __m512i sh = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
        lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(q, sh), one), 8));
        hi = _mm512_or_si512(hi, _mm512_slli_epi32(
                                     _mm512_and_si512(_mm512_srlv_epi32(q, _mm512_add_epi32(sh, _mm512_set1_epi32(4))), one), 8));
        return grid4_codes(iq3s_grid, lo, hi, half_order(load16(sb + 74 + 16 * g)));
    }
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        // Index bit 8 of entry e of block b: bit 8 b + e of qh; sign byte f of block b to 8 b + f.
        uint64_t qh;
        memcpy(&qh, sb + 66, 8);
        __m512i lo, hi;
        entry_codes(kIq3sTables, _mm512_loadu_si512(sb + 2), __mmask64(qh), &lo, &hi);
        table_codes_sb(kIq3sTables, lo, hi, _mm512_cvtepu32_epi64(load32(sb + 74)), c);
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        // Block ib: nibble ib % 2 of scales[ib / 2].
        uint32_t s;
        memcpy(&s, sb + 106, 4);
        const __m512i sh = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
        const __m512i v = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(s)), sh), _mm512_set1_epi32(15));
        odd_scales(h2f(reinterpret_cast<const block_iq3_s *>(sb)->d), v, 1.0f, dg, mg);
    }
};

// IQ1 entries (codes_sb) as codes 128 + 8 g + 1 (the delta +1/8); a negative delta takes 2 off
// its entries' bytes (a masked qword subtract).
constexpr CodeTable<2048> make_iq1_codes() {
    CodeTable<2048> t{};
    for (int i = 0; i < 2048; ++i)
        for (int j = 0; j < 8; ++j)
            t.e[i] |= uint64_t(uint8_t(8 * int(int8_t(uint8_t(iq1s_grid[i] >> (8 * j)))) + 129)) << (8 * j);
    return t;
}
alignas(64) inline constexpr CodeTable<2048> kIq1Codes = make_iq1_codes();

// Codes of half g from the packed indices p[0..3] of its blocks (entries 0..3 at bits 16 l);
// neg_lo / neg_hi: the qwords (entries) whose delta is negative.
inline Codes iq1_half(const uint64_t * p, __mmask8 neg_lo, __mmask8 neg_hi) {
    const __m512i two = _mm512_set1_epi64(0x0202020202020202);
    const Codes e = grid_half(kIq1Codes.e, p);
    return {_mm512_mask_sub_epi64(e.lo, neg_lo, e.lo, two), _mm512_mask_sub_epi64(e.hi, neg_hi, e.hi, two)};
}

// IQ1: index bits 8..10 of entry l of a block at bits 3 l of its qh word (IQ1_S; bit 15 the
// delta sign of the block) or in nibble l of its two qh bytes (IQ1_M; bit 3 the delta sign).
template <>
struct KQuant<QType::IQ1_S> {
    static constexpr int kBytes = 50;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        __m512i idx = _mm512_cvtepu8_epi32(half_order(load16(sb + 2 + 16 * g)));
        const __m512i qh = per_block_half_order(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 34 + 8 * g))));
        const __m512i sh = _mm512_setr_epi32(0, 3, 0, 3, 0, 3, 0, 3, 6, 9, 6, 9, 6, 9, 6, 9);
        idx = _mm512_or_si512(idx, _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(qh, sh), _mm512_set1_epi32(7)), 8));
        return iq1_codes(idx, _mm512_test_epi32_mask(qh, _mm512_set1_epi32(0x8000)));
    }
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        for (int g = 0; g < 2; ++g) {
            // Block b's qh word: index bits 8..10 of entry l at bits 3 l, the delta sign at 15.
            const uint64_t qh = load_u64(sb + 34 + 8 * g);
            uint64_t p[4];
            for (int j = 0; j < 4; ++j)
                p[j] = _pdep_u64(load_u32(sb + 2 + 16 * g + 4 * j), 0x00FF00FF00FF00FF) |
                       _pdep_u64(qh >> (16 * j), 0x0700070007000700);
            const uint32_t neg = uint32_t(_pext_u64(qh, 0x8000800080008000));
            const __mmask8 m = __mmask8(_pdep_u32(neg, 0x55) * 3);
            c[g] = iq1_half(p, m, m);
        }
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const __m512i qh = dup8(_mm256_cvtepu16_epi32(load16(sb + 34)));
        const __m512i s = _mm512_and_si512(_mm512_srli_epi32(qh, 12), _mm512_set1_epi32(7));
        odd_scales(h2f(reinterpret_cast<const block_iq1_s *>(sb)->d), s, 0.125f, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ1_M> {
    static constexpr int kBytes = 56;
    static constexpr bool kGroups16 = true;
    static Codes codes(const uint8_t * sb, int g) {
        __m512i idx = _mm512_cvtepu8_epi32(half_order(load16(sb + 16 * g)));
        // qh[2 b + l / 2], nibble l % 2: as a u16 per block, entry l's nibble at 4 l.
        const __m512i qh = per_block_half_order(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 32 + 8 * g))));
        const __m512i sh = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 8, 12, 8, 12, 8, 12, 8, 12);
        const __m512i nib = _mm512_srlv_epi32(qh, sh);
        idx = _mm512_or_si512(idx, _mm512_slli_epi32(_mm512_and_si512(nib, _mm512_set1_epi32(7)), 8));
        return iq1_codes(idx, _mm512_test_epi32_mask(nib, _mm512_set1_epi32(8)));
    }
    static void codes_sb(const uint8_t * sb, Codes c[2]) {
        for (int g = 0; g < 2; ++g) {
            // Block b's qh bytes 2 b, 2 b + 1: entry l's nibble at 4 l (bit 3 the delta sign).
            const uint64_t qh = load_u64(sb + 32 + 8 * g);
            uint64_t p[4];
            for (int j = 0; j < 4; ++j)
                p[j] = _pdep_u64(load_u32(sb + 16 * g + 4 * j), 0x00FF00FF00FF00FF) |
                       _pdep_u64((qh >> (16 * j)) & 0x7777, 0x0F000F000F000F00);
            c[g] = iq1_half(p, __mmask8(_pext_u64(qh, 0x0088008800880088)), __mmask8(_pext_u64(qh, 0x8800880088008800)));
        }
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        // Group G: bits 3 (G % 4) of scale word G / 4.
        const __m128i w = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 48)));
        const __m512i v = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                                   _mm512_castsi128_si512(w));
        const __m512i sh = _mm512_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9);
        const __m512i s = _mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi32(7));
        odd_scales(h2f(iq1_m_scale(*reinterpret_cast<const block_iq1_m *>(sb))), s, 0.125f, dg, mg);
    }
};

}  // namespace sl::cpu::impl::avx512
