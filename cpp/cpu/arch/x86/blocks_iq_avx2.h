// AVX2 decoding of the grid i-quants (quant/iquants.h) into KQuant<T> form (blocks_avx2.h), as
// blocks_iq_avx512.h but with signed codes (kSigned): the signed grid value itself (IQ1: 8 g +
// 8 delta), dg the block scale and no offset term. vpmaddubsw sums pairs of products in int16,
// which the unsigned codes 128 +- 62 would overflow; |code| <= 62 does not (the sign goes onto the
// activations). The 16 grid entries of a half go in "half order" (blocks_iq_avx512.h): two ymm
// of 8 indices, lo's entries then hi's; gathered 4 entries (one ymm of codes) at a time.
#pragma once

#include "common/unaligned.h"
#include "cpu/arch/x86/blocks_avx2.h"
#include "quant/iq_grids.h"
#include "quant/iquants.h"

namespace sl::cpu::impl::avx2 {

// 16 dword lanes as two ymm (lanes 0..7, 8..15).
struct Idx16 {
    __m256i a, b;
};

// Bytes 0, 1 of each dword, then bytes 2, 3.
inline __m128i half_order(__m128i v) {
    return _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
}
inline __m256i even_odd_dwords(__m256i v) { return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)); }
inline Idx16 bytes_to_idx(__m128i v) { return {_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))}; }
// Dwords 0..3 of v as blocks 0,0,1,1,2,2,3,3 (the block of each half-order lane of lo or hi).
inline __m256i per_block(__m128i v) {
    return _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(v), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}
inline __m256i bits_at(__m256i v, __m256i sh, int mask) {
    return _mm256_and_si256(_mm256_srlv_epi32(v, sh), _mm256_set1_epi32(mask));
}

// ksigns_iq2xs of 16 7-bit sign indices, one byte per lane.
inline __m128i ksigns16(Idx16 s7) {
    auto full = [](__m256i x) {
        __m256i p = _mm256_xor_si256(x, _mm256_srli_epi32(x, 4));
        p = _mm256_xor_si256(p, _mm256_srli_epi32(p, 2));
        p = _mm256_xor_si256(p, _mm256_srli_epi32(p, 1));
        return _mm256_or_si256(x, _mm256_slli_epi32(_mm256_and_si256(p, _mm256_set1_epi32(1)), 7));
    };
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(full(s7.a), full(s7.b)), 0xD8);
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

// v with the bytes whose bit of the 32-bit `neg` is set negated.
inline __m256i apply_signs(__m256i v, uint32_t neg) {
    const __m256i m = bits_to_bytes(neg);
    return _mm256_sub_epi8(_mm256_xor_si256(v, m), m);
}

// Four grid entries by scalar loads and inserts: about 5% faster decode than vpgatherqq on Zen 4
// (and gathers are slower still on the Intel parts with the gather-data-sampling fix).
inline __m256i gather8(const uint64_t * grid, __m128i idx) {
    const uint64_t i01 = uint64_t(_mm_cvtsi128_si64(idx)), i23 = uint64_t(_mm_extract_epi64(idx, 1));
    const __m128i a = _mm_insert_epi64(_mm_cvtsi64_si128(int64_t(grid[uint32_t(i01)])), int64_t(grid[i01 >> 32]), 1);
    const __m128i b = _mm_insert_epi64(_mm_cvtsi64_si128(int64_t(grid[uint32_t(i23)])), int64_t(grid[i23 >> 32]), 1);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
}

// Signed codes of 16 8-value grid entries in half order, one sign byte an entry.
inline Codes grid8_codes(const uint64_t * grid, Idx16 idx, __m128i signs) {
    return {apply_signs(gather8(grid, _mm256_castsi256_si128(idx.a)), uint32_t(_mm_cvtsi128_si32(signs))),
            apply_signs(gather8(grid, _mm256_extracti128_si256(idx.a, 1)), uint32_t(_mm_extract_epi32(signs, 1))),
            apply_signs(gather8(grid, _mm256_castsi256_si128(idx.b)), uint32_t(_mm_extract_epi32(signs, 2))),
            apply_signs(gather8(grid, _mm256_extracti128_si256(idx.b, 1)), uint32_t(_mm_extract_epi32(signs, 3)))};
}

// 4-value grids: lo / hi each 16 entries (blocks 0..3 x entries 0..3 / 4..7) as two ymm.
inline Codes grid4_codes(const uint32_t * grid, Idx16 lo, Idx16 hi, __m128i signs) {
    auto g = [&](__m256i ix) { return _mm256_i32gather_epi32(reinterpret_cast<const int *>(grid), ix, 4); };
    return {apply_signs(g(lo.a), uint32_t(_mm_cvtsi128_si32(signs))), apply_signs(g(lo.b), uint32_t(_mm_extract_epi32(signs, 1))),
            apply_signs(g(hi.a), uint32_t(_mm_extract_epi32(signs, 2))), apply_signs(g(hi.b), uint32_t(_mm_extract_epi32(signs, 3)))};
}

// IQ1 codes 8 g + 8 delta of 16 entries in half order; neg: dword lanes, all ones where delta < 0.
inline Codes iq1_codes(Idx16 idx, Idx16 neg) {
    auto code = [](__m128i ix, __m128i n) {
        const __m256i v = gather8(iq1s_grid, ix);
        const __m256i c = _mm256_slli_epi16(_mm256_add_epi8(v, _mm256_set1_epi8(1)), 3);  // 8 (g + 1)
        const __m256i nq = _mm256_cvtepi32_epi64(n);
        return _mm256_add_epi8(c, _mm256_sub_epi8(_mm256_set1_epi8(-7), _mm256_and_si256(nq, _mm256_set1_epi8(2))));
    };
    auto lo = [](__m256i v) { return _mm256_castsi256_si128(v); };
    auto hi = [](__m256i v) { return _mm256_extracti128_si256(v, 1); };
    return {code(lo(idx.a), lo(neg.a)), code(hi(idx.a), hi(neg.a)), code(lo(idx.b), lo(neg.b)), code(hi(idx.b), hi(neg.b))};
}

// The 16 per-16 scales of 8 per-block ones (lane b of v: block b's, in the order of dg's lanes:
// groups 2b and 2b + 1), times mul; no offset term.
inline void block_scales(__m256 v, float mul, __m256 dg[2], __m256 mg[2]) {
    const __m256 m = _mm256_mul_ps(v, _mm256_set1_ps(mul));
    dg[0] = _mm256_permutevar8x32_ps(m, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    dg[1] = _mm256_permutevar8x32_ps(m, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    mg[0] = mg[1] = _mm256_setzero_ps();
}

// 0.5 + the top 4 bits of 8 dwords, as floats (IQ2_XXS, IQ3_XXS block scales).
inline __m256 top_nibble_half(__m256i v) {
    return _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28)), _mm256_set1_ps(0.5f));
}

template <>
struct KQuant<QType::IQ2_XXS> {
    static constexpr int kBytes = 66;
    static constexpr bool kGroups16 = false, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        const __m256i v = even_odd_dwords(load32(sb + 2 + 32 * g));
        const __m256i a1 = per_block(_mm256_extracti128_si256(v, 1));
        const Idx16 s7 = {bits_at(a1, _mm256_setr_epi32(0, 7, 0, 7, 0, 7, 0, 7), 127),
                          bits_at(a1, _mm256_setr_epi32(14, 21, 14, 21, 14, 21, 14, 21), 127)};
        return grid8_codes(iq2xxs_grid, bytes_to_idx(half_order(_mm256_castsi256_si128(v))), ksigns16(s7));
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        // Block b's scale word: dword 2b + 1 from sb + 2 (odd dwords of blocks 0..3, then 4..7).
        const __m256 odd = _mm256_shuffle_ps(_mm256_castsi256_ps(load32(sb + 2)), _mm256_castsi256_ps(load32(sb + 34)), 0xDD);
        const __m256i v = _mm256_permute4x64_epi64(_mm256_castps_si256(odd), 0xD8);
        block_scales(top_nibble_half(v), h2f(reinterpret_cast<const block_iq2_xxs *>(sb)->d) * 0.25f, dg, mg);
    }
};

// IQ2_XS / IQ2_S: a 4-bit scale per 16 values.
inline void iq2_nibble_scales(float d, const uint8_t * sc, __m256 dg[2], __m256 mg[2]) {
    const __m256i sh = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
    const __m256 dq = _mm256_set1_ps(d * 0.25f), half = _mm256_set1_ps(0.5f);
    for (int h = 0; h < 2; ++h) {
        const __m256i b = per_block(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(int(load_u32(sc + 4 * h)))));
        dg[h] = _mm256_mul_ps(dq, _mm256_add_ps(_mm256_cvtepi32_ps(bits_at(b, sh, 15)), half));
        mg[h] = _mm256_setzero_ps();
    }
}

template <>
struct KQuant<QType::IQ2_XS> {
    static constexpr int kBytes = 74;
    static constexpr bool kGroups16 = true, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        const __m256i v = even_odd_dwords(load32(sb + 2 + 32 * g));
        const Idx16 q = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), _mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1))};
        const __m256i m9 = _mm256_set1_epi32(511);
        return grid8_codes(iq2xs_grid, {_mm256_and_si256(q.a, m9), _mm256_and_si256(q.b, m9)},
                           ksigns16({_mm256_srli_epi32(q.a, 9), _mm256_srli_epi32(q.b, 9)}));
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        iq2_nibble_scales(h2f(reinterpret_cast<const block_iq2_xs *>(sb)->d), sb + 66, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ2_S> {
    static constexpr int kBytes = 82;
    static constexpr bool kGroups16 = true, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        Idx16 idx = bytes_to_idx(half_order(load16(sb + 2 + 16 * g)));
        const __m256i qh = _mm256_set1_epi32(int(load_u32(sb + 66 + 4 * g)));
        idx.a = _mm256_or_si256(idx.a, _mm256_slli_epi32(bits_at(qh, _mm256_setr_epi32(0, 2, 8, 10, 16, 18, 24, 26), 3), 8));
        idx.b = _mm256_or_si256(idx.b, _mm256_slli_epi32(bits_at(qh, _mm256_setr_epi32(4, 6, 12, 14, 20, 22, 28, 30), 3), 8));
        return grid8_codes(iq2s_grid, idx, half_order(load16(sb + 34 + 16 * g)));
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        iq2_nibble_scales(h2f(reinterpret_cast<const block_iq2_s *>(sb)->d), sb + 74, dg, mg);
    }
};

// IQ3 grid indices of a half: lo (entries 0..3 of blocks 0..3), hi (4..7).
inline void iq3_indices(const uint8_t * qs32, Idx16 * lo, Idx16 * hi) {
    const __m256i v = even_odd_dwords(load32(qs32));
    const __m128i l = _mm256_castsi256_si128(v), h = _mm256_extracti128_si256(v, 1);
    *lo = {_mm256_cvtepu8_epi32(l), _mm256_cvtepu8_epi32(_mm_srli_si128(l, 8))};
    *hi = {_mm256_cvtepu8_epi32(h), _mm256_cvtepu8_epi32(_mm_srli_si128(h, 8))};
}

template <>
struct KQuant<QType::IQ3_XXS> {
    static constexpr int kBytes = 98;
    static constexpr bool kGroups16 = false, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        Idx16 lo, hi;
        iq3_indices(sb + 2 + 32 * g, &lo, &hi);
        const __m256i aux = per_block(load16(sb + 66 + 16 * g));
        const Idx16 s7 = {bits_at(aux, _mm256_setr_epi32(0, 7, 0, 7, 0, 7, 0, 7), 127),
                          bits_at(aux, _mm256_setr_epi32(14, 21, 14, 21, 14, 21, 14, 21), 127)};
        return grid4_codes(iq3xxs_grid, lo, hi, ksigns16(s7));
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        block_scales(top_nibble_half(load32(sb + 66)), h2f(reinterpret_cast<const block_iq3_xxs *>(sb)->d) * 0.5f, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ3_S> {
    static constexpr int kBytes = 110;
    static constexpr bool kGroups16 = false, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        Idx16 lo, hi;
        iq3_indices(sb + 2 + 32 * g, &lo, &hi);
        const __m256i qh = _mm256_set1_epi32(int(load_u32(sb + 66 + 4 * g)));
        const __m256i s01 = _mm256_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11), s23 = _mm256_setr_epi32(16, 17, 18, 19, 24, 25, 26, 27);
        const __m256i four = _mm256_set1_epi32(4);
        auto add = [&](__m256i ix, __m256i sh) { return _mm256_or_si256(ix, _mm256_slli_epi32(bits_at(qh, sh, 1), 8)); };
        lo = {add(lo.a, s01), add(lo.b, s23)};
        hi = {add(hi.a, _mm256_add_epi32(s01, four)), add(hi.b, _mm256_add_epi32(s23, four))};
        return grid4_codes(iq3s_grid, lo, hi, half_order(load16(sb + 74 + 16 * g)));
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        // Block b's scale: nibble b % 2 of byte 106 + b / 2; value 1 + 2 x.
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi32_si128(int(load_u32(sb + 106)))),
                                                          _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
        const __m256i x = bits_at(bytes, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4), 15);
        const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32(x, 1), _mm256_set1_epi32(1)));
        block_scales(v, h2f(reinterpret_cast<const block_iq3_s *>(sb)->d), dg, mg);
    }
};

template <>
struct KQuant<QType::IQ1_S> {
    static constexpr int kBytes = 50;
    static constexpr bool kGroups16 = false, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        Idx16 idx = bytes_to_idx(half_order(load16(sb + 2 + 16 * g)));
        const __m256i qh = per_block(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 34 + 8 * g))));
        idx.a = _mm256_or_si256(idx.a, _mm256_slli_epi32(bits_at(qh, _mm256_setr_epi32(0, 3, 0, 3, 0, 3, 0, 3), 7), 8));
        idx.b = _mm256_or_si256(idx.b, _mm256_slli_epi32(bits_at(qh, _mm256_setr_epi32(6, 9, 6, 9, 6, 9, 6, 9), 7), 8));
        const __m256i neg = _mm256_cmpeq_epi32(_mm256_and_si256(qh, _mm256_set1_epi32(0x8000)), _mm256_set1_epi32(0x8000));
        return iq1_codes(idx, {neg, neg});
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const block_iq1_s * b = reinterpret_cast<const block_iq1_s *>(sb);
        const __m256i qh = _mm256_cvtepu16_epi32(load16(reinterpret_cast<const uint8_t *>(b->qh)));
        const __m256i x = _mm256_and_si256(_mm256_srli_epi32(qh, 12), _mm256_set1_epi32(7));
        const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32(x, 1), _mm256_set1_epi32(1)));
        block_scales(v, h2f(b->d) * 0.125f, dg, mg);
    }
};

template <>
struct KQuant<QType::IQ1_M> {
    static constexpr int kBytes = 56;
    static constexpr bool kGroups16 = true, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        Idx16 idx = bytes_to_idx(half_order(load16(sb + 16 * g)));
        const __m256i qh = per_block(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 32 + 8 * g))));
        const Idx16 nib = {bits_at(qh, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4), 15),
                           bits_at(qh, _mm256_setr_epi32(8, 12, 8, 12, 8, 12, 8, 12), 15)};
        const __m256i seven = _mm256_set1_epi32(7), eight = _mm256_set1_epi32(8);
        idx.a = _mm256_or_si256(idx.a, _mm256_slli_epi32(_mm256_and_si256(nib.a, seven), 8));
        idx.b = _mm256_or_si256(idx.b, _mm256_slli_epi32(_mm256_and_si256(nib.b, seven), 8));
        return iq1_codes(idx, {_mm256_cmpeq_epi32(_mm256_and_si256(nib.a, eight), eight),
                               _mm256_cmpeq_epi32(_mm256_and_si256(nib.b, eight), eight)});
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        // Group G: bits 3 (G % 4) of scale word G / 4 (dg[h]: groups 8 h .. 8 h + 7).
        const float d = h2f(iq1_m_scale(*reinterpret_cast<const block_iq1_m *>(sb))) * 0.125f;
        const __m256i w = _mm256_castsi128_si256(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 48))));
        const __m256i sh = _mm256_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9);
        for (int h = 0; h < 2; ++h) {
            const __m256i v = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(2 * h, 2 * h, 2 * h, 2 * h, 2 * h + 1, 2 * h + 1, 2 * h + 1, 2 * h + 1));
            const __m256i x = bits_at(v, sh, 7);
            dg[h] = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32(x, 1), _mm256_set1_epi32(1))));
            mg[h] = _mm256_setzero_ps();
        }
    }
};


// ---- decode (gemv_avx2.cpp, grid_row): half a super-block at a time ----
// Each 8-value entry is one qword load from a table (IQ3: two dwords), the index bytes read by
// the scalar units; the sign bytes are expanded in vector code to bytes +1 / -1 for vpsignb on
// the activations, so the grid magnitudes (all nonzero) go to vpmaddubsw as they are. The
// products equal dot4_signed's of the signed codes exactly. IQ1 takes unsigned codes with a
// bias instead (no sign step; the bias and IQ1_S's block delta go through the activation sums).
// Index bits built in vector code reach the scalar units through a stack array.

// IQ1_M entries as codes 16 + 8 g + delta per byte, index bit 11 the delta's sign (7..25):
// unsigned and small, so vpmaddubsw takes them with the activations as they are, and the bias
// 16 comes off through the activation sums (grid_row). 32 KB, but one lookup an entry.
template <int N>
struct Iq1Table {
    alignas(64) uint64_t e[N];
};
constexpr Iq1Table<4096> make_iq1_table() {
    Iq1Table<4096> t{};
    for (int i = 0; i < 4096; ++i)
        for (int j = 0; j < 8; ++j)
            t.e[i] |= uint64_t(uint8_t(8 * int(int8_t(uint8_t(iq1s_grid[i & 2047] >> (8 * j)))) + (i & 2048 ? 15 : 17))) << (8 * j);
    return t;
}
alignas(64) inline constexpr Iq1Table<4096> kIq1Entries = make_iq1_table();

// IQ1_S entries as codes 8 g + 8 (0, 8, 16); bias and delta through the activation sums.
constexpr Iq1Table<2048> make_iq1s_table() {
    Iq1Table<2048> t{};
    for (int i = 0; i < 2048; ++i)
        for (int j = 0; j < 8; ++j) t.e[i] |= uint64_t(uint8_t(8 * int(int8_t(uint8_t(iq1s_grid[i] >> (8 * j)))) + 8)) << (8 * j);
    return t;
}
alignas(64) inline constexpr Iq1Table<2048> kIq1sEntries = make_iq1s_table();

// Magnitudes of a half in the Codes order: f(j, e) gives entry e (8 values) of block j of the
// half; lo01 = block 0's entries 0, 1 then block 1's, hi01 their entries 2, 3.
template <class F>
SL_FORCE_INLINE Codes entries_half(F f) {
    auto ymm = [&](int j, int e) {
        return _mm256_setr_epi64x(int64_t(f(j, e)), int64_t(f(j, e + 1)), int64_t(f(j + 1, e)), int64_t(f(j + 1, e + 1)));
    };
    return {ymm(0, 0), ymm(2, 0), ymm(0, 2), ymm(2, 2)};
}

// The 16 sign bytes of a half (byte 4 j + e: entry e of block j; bit i negates value i) as
// vpsignb operands in the Codes order.
SL_FORCE_INLINE Codes sign_masks(__m128i s16) {
    const __m256i s = _mm256_broadcastsi128_si256(s16);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL), one = _mm256_set1_epi8(1);
    auto m = [&](int b0, int b1) {
        const __m256i ctl = _mm256_setr_epi64x(0x0101010101010101LL * b0, 0x0101010101010101LL * (b0 + 1),
                                               0x0101010101010101LL * b1, 0x0101010101010101LL * (b1 + 1));
        return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(s, ctl), bit), bit), one);
    };
    return {m(0, 4), m(8, 12), m(2, 6), m(10, 14)};
}

// ksigns of 32 bytes of 7-bit indices (bit 7 clear): the eighth bit makes the count even
// (the parity of each nibble from a vpshufb table).
SL_FORCE_INLINE __m256i ksigns_bytes(__m256i x) {
    const __m256i par = _mm256_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0,
                                         0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0);
    const __m256i lo = _mm256_and_si256(x, _mm256_set1_epi8(15)), hi = _mm256_srli_epi16(x, 4);  // x < 128: hi < 8
    return _mm256_or_si256(x, _mm256_xor_si256(_mm256_shuffle_epi8(par, lo), _mm256_shuffle_epi8(par, _mm256_and_si256(hi, _mm256_set1_epi8(15)))));
}

// The four 7-bit fields (bits 0, 7, 14, 21) of 8 dwords to bytes 4 j .. 4 j + 3.
SL_FORCE_INLINE __m256i sign_fields(__m256i v) {
    const __m256i f0 = _mm256_and_si256(v, _mm256_set1_epi32(0x7F));
    const __m256i f1 = _mm256_and_si256(_mm256_slli_epi32(v, 1), _mm256_set1_epi32(0x7F00));
    const __m256i f2 = _mm256_and_si256(_mm256_slli_epi32(v, 2), _mm256_set1_epi32(0x7F0000));
    const __m256i f3 = _mm256_and_si256(_mm256_slli_epi32(v, 3), _mm256_set1_epi32(0x7F000000));
    return _mm256_or_si256(_mm256_or_si256(f0, f1), _mm256_or_si256(f2, f3));
}

// Half g's 16 bytes of a super-block's 32.
SL_FORCE_INLINE __m128i half_of(__m256i v, int g) { return g ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v); }

// 4-value entries of a half in the Codes order from its 32 indices ix (8 j + i: entry i of
// block j), four dword inserts per 16 values (cheaper than joining pairs in the scalar units,
// or than vpgatherdd: 25% slower).
template <class I>
SL_FORCE_INLINE Codes grid4_half(const uint32_t * grid, const I * ix) {
    auto four = [&](int k) {
        __m128i v = _mm_cvtsi32_si128(int(grid[ix[k]]));
        v = _mm_insert_epi32(v, int(grid[ix[k + 1]]), 1);
        v = _mm_insert_epi32(v, int(grid[ix[k + 2]]), 2);
        return _mm_insert_epi32(v, int(grid[ix[k + 3]]), 3);
    };
    auto ymm = [&](int k0, int k1) { return _mm256_inserti128_si256(_mm256_castsi128_si256(four(k0)), four(k1), 1); };
    return {ymm(0, 8), ymm(16, 24), ymm(4, 12), ymm(20, 28)};
}

struct GridDecode {
    // The 32 sign bytes of a super-block (byte 4 b + e: entry e of block b), computed once.
    static SL_FORCE_INLINE __m256i signs_iq2_xxs(const uint8_t * sb) {
        // Block b's second dword: 4 x 7 sign bits and the scale (odd dwords from sb + 2).
        const __m256 odd = _mm256_shuffle_ps(_mm256_castsi256_ps(load32(sb + 2)), _mm256_castsi256_ps(load32(sb + 34)), 0xDD);
        return ksigns_bytes(sign_fields(_mm256_permute4x64_epi64(_mm256_castps_si256(odd), 0xD8)));
    }
    static SL_FORCE_INLINE __m256i signs_iq2_xs(const uint8_t * sb) {
        const __m256i p = _mm256_packus_epi16(_mm256_srli_epi16(load32(sb + 2), 9), _mm256_srli_epi16(load32(sb + 34), 9));
        return ksigns_bytes(_mm256_permute4x64_epi64(p, 0xD8));
    }
    static SL_FORCE_INLINE __m256i signs_iq2_s(const uint8_t * sb) { return load32(sb + 34); }
    static SL_FORCE_INLINE __m256i signs_iq3_xxs(const uint8_t * sb) { return ksigns_bytes(sign_fields(load32(sb + 66))); }
    static SL_FORCE_INLINE __m256i signs_iq3_s(const uint8_t * sb) { return load32(sb + 74); }
    static SL_FORCE_INLINE __m256i signs_none(const uint8_t *) { return _mm256_setzero_si256(); }

    // Types with a scale per 16 values: the odd integers 2 s + 1 of the 16 groups (byte 2 b + h:
    // values 16 h .. 16 h + 15 of block b) in both lanes, and the float factor d / 8 of them.
    static SL_FORCE_INLINE __m256i odd_nibbles(const uint8_t * p) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(p));
        const __m128i n = _mm_and_si128(_mm_unpacklo_epi8(b, _mm_srli_epi16(b, 4)), _mm_set1_epi8(15));
        return _mm256_broadcastsi128_si256(_mm_add_epi8(_mm_add_epi8(n, n), _mm_set1_epi8(1)));
    }
    static SL_FORCE_INLINE __m256i int_scales_iq2_xs(const uint8_t * sb, float * f) {
        *f = h2f(reinterpret_cast<const block_iq2_xs *>(sb)->d) * 0.125f;
        return odd_nibbles(sb + 66);
    }
    static SL_FORCE_INLINE __m256i int_scales_iq2_s(const uint8_t * sb, float * f) {
        *f = h2f(reinterpret_cast<const block_iq2_s *>(sb)->d) * 0.125f;
        return odd_nibbles(sb + 74);
    }
    static SL_FORCE_INLINE __m256i int_scales_iq1_m(const uint8_t * sb, float * f) {
        // Group G: bits 3 (G % 4) of scale word G / 4.
        *f = h2f(iq1_m_scale(*reinterpret_cast<const block_iq1_m *>(sb))) * 0.125f;
        const __m256i w = _mm256_castsi128_si256(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 48))));
        const __m256i sh = _mm256_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9);
        auto part = [&](int h) {
            const __m256i v = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(2 * h, 2 * h, 2 * h, 2 * h, 2 * h + 1, 2 * h + 1, 2 * h + 1, 2 * h + 1));
            const __m256i x = bits_at(v, sh, 7);
            return _mm256_add_epi32(_mm256_add_epi32(x, x), _mm256_set1_epi32(1));
        };
        const __m256i p16 = _mm256_packus_epi32(part(0), part(1));  // lanes: G 0-3, 8-11 | 4-7, 12-15
        const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
        return _mm256_broadcastsi128_si256(_mm_shuffle_epi8(b, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15)));
    }
    static SL_FORCE_INLINE __m256i int_scales_none(const uint8_t *, float * f) {
        *f = 0.0f;
        return _mm256_setzero_si256();
    }

    static SL_FORCE_INLINE void iq2_xxs(const uint8_t * sb, int g, __m256i s32, Codes * mag, Codes * sgn) {
        // Block: 4 index bytes, then a dword of 4 x 7 sign bits and the scale.
        const uint8_t * h = sb + 2 + 32 * g;
        *mag = entries_half([&](int j, int e) { return iq2xxs_grid[h[8 * j + e]]; });
        *sgn = sign_masks(half_of(s32, g));
    }
    static SL_FORCE_INLINE void iq2_xs(const uint8_t * sb, int g, __m256i s32, Codes * mag, Codes * sgn) {
        // A u16 per entry: 9-bit index, 7 sign bits.
        const uint8_t * h = sb + 2 + 32 * g;
        *mag = entries_half([&](int j, int e) { return iq2xs_grid[load_u16(h + 8 * j + 2 * e) & 511]; });
        *sgn = sign_masks(half_of(s32, g));
    }
    static SL_FORCE_INLINE void iq2_s(const uint8_t * sb, int g, __m256i s32, Codes * mag, Codes * sgn) {
        // Index of entry e of block b: byte 4 b + e, bits 8, 9 at bits 2 e of qh[b] (built by the
        // scalar units: as IQ3_S's in vector code and back through memory, 15% slower).
        *mag = entries_half([&](int j, int e) {
            const int b = 4 * g + j;
            return iq2s_grid[sb[2 + 4 * b + e] | ((uint32_t(sb[66 + b]) << (8 - 2 * e)) & 0x300)];
        });
        *sgn = sign_masks(half_of(s32, g));
    }
    static SL_FORCE_INLINE void iq3_xxs(const uint8_t * sb, int g, __m256i s32, Codes * mag, Codes * sgn) {
        *mag = grid4_half(iq3xxs_grid, sb + 2 + 32 * g);
        *sgn = sign_masks(half_of(s32, g));
    }
    static SL_FORCE_INLINE void iq3_s(const uint8_t * sb, int g, __m256i s32, Codes * mag, Codes * sgn) {
        // Index of 4-value entry i of block j: byte 8 j + i, bit 8 = bit i of qh[j]; as u16 in
        // vector code (qh byte j to the high byte of its 8 lanes, tested bit by bit).
        const __m256i q = load32(sb + 2 + 32 * g);
        const __m256i qh = _mm256_set1_epi32(int(load_u32(sb + 66 + 4 * g)));
        const __m256i bit = _mm256_setr_epi16(0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000, 0x4000, -0x8000,
                                              0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000, 0x4000, -0x8000);
        auto idx = [&](__m128i lo, int j) {  // blocks j, j + 1
            const int8_t z = -128, a = int8_t(j), b = int8_t(j + 1);
            const __m256i ctl = _mm256_setr_epi8(z, a, z, a, z, a, z, a, z, a, z, a, z, a, z, a,
                                                 z, b, z, b, z, b, z, b, z, b, z, b, z, b, z, b);
            const __m256i t = _mm256_and_si256(_mm256_shuffle_epi8(qh, ctl), bit);
            const __m256i h = _mm256_and_si256(_mm256_cmpeq_epi16(t, bit), _mm256_set1_epi16(0x100));
            return _mm256_or_si256(_mm256_cvtepu8_epi16(lo), h);
        };
        alignas(32) uint16_t ix[32];
        _mm256_store_si256(reinterpret_cast<__m256i *>(ix), idx(_mm256_castsi256_si128(q), 0));
        _mm256_store_si256(reinterpret_cast<__m256i *>(ix + 16), idx(_mm256_extracti128_si256(q, 1), 2));
        *mag = grid4_half(iq3s_grid, ix);
        *sgn = sign_masks(half_of(s32, g));
    }
    static SL_FORCE_INLINE void iq1_s(const uint8_t * sb, int g, __m256i, Codes * mag, Codes * sgn) {
        // Block: 4 index bytes; a u16 of 3 high index bits per entry, the scale, the delta sign.
        // Codes 8 g + 8: the delta (one per block) goes with the bias into iq1_s_offsets.
        const __m256i qh = _mm256_castsi128_si256(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 34 + 8 * g))));
        const __m256i sh = _mm256_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9);
        alignas(32) uint32_t ix[16];
        const Idx16 lo = bytes_to_idx(load16(sb + 2 + 16 * g));
        auto hi = [&](int j) {
            const __m256i q = _mm256_permutevar8x32_epi32(qh, _mm256_setr_epi32(j, j, j, j, j + 1, j + 1, j + 1, j + 1));
            return _mm256_slli_epi32(bits_at(q, sh, 7), 8);
        };
        _mm256_store_si256(reinterpret_cast<__m256i *>(ix), _mm256_or_si256(lo.a, hi(0)));
        _mm256_store_si256(reinterpret_cast<__m256i *>(ix + 8), _mm256_or_si256(lo.b, hi(2)));
        *mag = entries_half([&](int j, int e) { return kIq1sEntries.e[ix[4 * j + e]]; });
        *sgn = *mag;  // unused
    }
    // IQ1_S's offset factors per 16 values: value = dg (8 g + delta) = dg (code - 8 + delta).
    static SL_FORCE_INLINE void iq1_s_offsets(const uint8_t * sb, const __m256 dg[2], __m256 off[2]) {
        const __m256i qh = _mm256_cvtepu16_epi32(load16(sb + 34));
        const __m256i neg = _mm256_srai_epi32(_mm256_slli_epi32(qh, 16), 31);
        const __m256 k = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(-7), _mm256_add_epi32(neg, neg)));
        off[0] = _mm256_mul_ps(dg[0], _mm256_permutevar8x32_ps(k, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)));
        off[1] = _mm256_mul_ps(dg[1], _mm256_permutevar8x32_ps(k, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7)));
    }
    static SL_FORCE_INLINE void iq1_m(const uint8_t * sb, int g, __m256i, Codes * mag, Codes * sgn) {
        // Block: 4 index bytes; a u16 of a nibble per entry (3 high index bits, the delta sign):
        // the nibble is index bits 8..11 of kIq1Entries (bit 11: the negative delta's entries).
        const __m256i qh = _mm256_castsi128_si256(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(sb + 32 + 8 * g))));
        const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12);
        alignas(32) uint32_t ix[16];
        const Idx16 lo = bytes_to_idx(load16(sb + 16 * g));
        auto hi = [&](int j) {
            const __m256i q = _mm256_permutevar8x32_epi32(qh, _mm256_setr_epi32(j, j, j, j, j + 1, j + 1, j + 1, j + 1));
            return _mm256_slli_epi32(bits_at(q, sh, 15), 8);
        };
        _mm256_store_si256(reinterpret_cast<__m256i *>(ix), _mm256_or_si256(lo.a, hi(0)));
        _mm256_store_si256(reinterpret_cast<__m256i *>(ix + 8), _mm256_or_si256(lo.b, hi(2)));
        *mag = entries_half([&](int j, int e) { return kIq1Entries.e[ix[4 * j + e]]; });
        *sgn = *mag;  // unused
    }
};

}  // namespace sl::cpu::impl::avx2
