// AVX-512 decoding of weight blocks into the form every kernel consumes: unsigned 8-bit codes
// in the activation order (cpu/kernels.h, ActQ8: per 128 values, `lo` holds values 0..15 of 4
// blocks of 32, `hi` their values 16..31) and affine terms (value = dg * code + mg), exactly as
// the scalar unpackers in cpu/scalar_unpack.cpp define them; the float loads and the transpose of
// the packed kernels. Include only from *_avx512.cpp, and *_avx512bf16.cpp for what is forced
// inline (the transpose, the float loads: no out-of-line copy built with other flags to share).
#pragma once

#include <immintrin.h>

#include <cstring>

#include "common/unaligned.h"
#include "cpu/arch/x86/kernels_x86.h"
#include "quant/iquants.h"
#include "quant/kquants.h"
#include "quant/legacy.h"
#include "quant/mxfp4.h"
#include "quant/ternary.h"

namespace sl::cpu::impl::avx512 {

// In-register transpose of a 16 x 16 matrix of 32-bit values (row i in v[i]).
SL_FORCE_INLINE void transpose16(__m512i v[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int j = 0; j < 4; ++j) {
        u[4 * j + 0] = _mm512_unpacklo_epi64(t[4 * j], t[4 * j + 2]);
        u[4 * j + 1] = _mm512_unpackhi_epi64(t[4 * j], t[4 * j + 2]);
        u[4 * j + 2] = _mm512_unpacklo_epi64(t[4 * j + 1], t[4 * j + 3]);
        u[4 * j + 3] = _mm512_unpackhi_epi64(t[4 * j + 1], t[4 * j + 3]);
    }
    // u[4j + c], 128-bit lane L = rows 4j..4j+3 of column 4L + c.
    for (int c = 0; c < 4; ++c) {
        const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
        const __m512i x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
        const __m512i x2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        const __m512i x3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
        v[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
        v[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
        v[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
    }
}

SL_FORCE_INLINE void transpose16(__m512 v[16]) { transpose16(reinterpret_cast<__m512i *>(v)); }

// Float weights: 16 values from k on (masked: the first popcount(m)), widened to f32.
struct LoadF32 {
    static SL_FORCE_INLINE __m512 load(const uint8_t * row, int64_t k) {
        // Two 32-byte loads: 64-byte ones that straddle cache lines stream more slowly.
        const float * p = reinterpret_cast<const float *>(row) + k;
        return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(p)), _mm256_loadu_ps(p + 8), 1);
    }
    static SL_FORCE_INLINE __m512 load(const uint8_t * row, int64_t k, __mmask16 m) {
        return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float *>(row) + k);
    }
};
struct LoadF16 {
    static SL_FORCE_INLINE __m512 load(const uint8_t * row, int64_t k) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(row + 2 * k)));
    }
    static SL_FORCE_INLINE __m512 load(const uint8_t * row, int64_t k, __mmask16 m) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t *>(row) + k));
    }
};
struct LoadBF16 {
    static SL_FORCE_INLINE __m512 widen(__m256i h) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static SL_FORCE_INLINE __m512 load(const uint8_t * row, int64_t k) {
        return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(row + 2 * k)));
    }
    static SL_FORCE_INLINE __m512 load(const uint8_t * row, int64_t k, __mmask16 m) {
        return widen(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t *>(row) + k));
    }
};

struct Codes {
    __m512i lo, hi;
};

// 64 bytes by two 32-byte loads (whole 64-byte loads that straddle cache lines stream more
// slowly from memory on Zen 4).
inline __m512i load64(const uint8_t * p) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p))),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + 32)), 1);
}

// Low and high nibbles of 64 bytes.
inline Codes nibbles(__m512i q) {
    const __m512i m4 = _mm512_set1_epi8(15);
    return {_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_srli_epi16(q, 4), m4)};
}

// The 16 bytes at offset OFF of each of n <= 4 blocks of BYTES bytes, one block per 128-bit
// lane (zero lanes past n), by 16-byte loads in address order.
template <int BYTES, int OFF>
inline __m512i lanes16(const uint8_t * b, int n) {
    auto ld = [&](int j) { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + BYTES * j + OFF)); };
    if (n >= 4)
        return _mm512_inserti32x4(
            _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(ld(0)), ld(1), 1), ld(2), 2), ld(3), 3);
    __m512i v = _mm512_zextsi128_si512(ld(0));
    if (n > 1) v = _mm512_inserti32x4(v, ld(1), 1);
    if (n > 2) v = _mm512_inserti32x4(v, ld(2), 2);
    return v;
}

// The 32-bit word at offset OFF of each of n <= 4 blocks (zero past n).
template <int BYTES, int OFF>
inline __m128i words32(const uint8_t * b, int n) {
    auto ld = [&](int j) {
        int v;
        memcpy(&v, b + BYTES * j + OFF, 4);
        return v;
    };
    __m128i v = _mm_cvtsi32_si128(ld(0));
    if (n > 1) v = _mm_insert_epi32(v, ld(1), 1);
    if (n > 2) v = _mm_insert_epi32(v, ld(2), 2);
    if (n > 3) v = _mm_insert_epi32(v, ld(3), 3);
    return v;
}

// The 16-bit word at offset OFF of each of n <= 4 blocks (zero past n), in words 0..3.
template <int BYTES, int OFF>
inline __m128i words16(const uint8_t * b, int n) {
    auto ld = [&](int j) {
        uint16_t v;
        memcpy(&v, b + BYTES * j + OFF, 2);
        return int(v);
    };
    __m128i v = _mm_cvtsi32_si128(ld(0));
    if (n > 1) v = _mm_insert_epi16(v, ld(1), 1);
    if (n > 2) v = _mm_insert_epi16(v, ld(2), 2);
    if (n > 3) v = _mm_insert_epi16(v, ld(3), 3);
    return v;
}

// ---- legacy formats: 4 blocks of 32 at a time (n < 4 at a row's end) ----
// (Loads go 16 bytes at a time in address order: whole 64-byte loads that straddle blocks
// and cache lines stream more slowly from memory.)
//
// load4 gives the codes, d of each block and m (d again for the formats with an offset:
// value = d * (code - kOffset)); loads never reach past the n blocks.
template <QType WT>
struct Legacy;

template <>
struct Legacy<QType::Q4_0> {
    static constexpr int kBytes = 18, kOffset = 8;
    static constexpr bool kHasMin = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles(lanes16<kBytes, 2>(b, n));
        *d = *m = _mm_cvtph_ps(words16<kBytes, 0>(b, n));
    }
};

// Low halves of 4 dwords, then their high halves ((d, m) pairs -> d0..d3, m0..m3).
inline __m128i split_halves(__m128i v) {
    return _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
}

template <>
struct Legacy<QType::Q4_1> {
    static constexpr int kBytes = 20, kOffset = 0;
    static constexpr bool kHasMin = true;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles(lanes16<kBytes, 4>(b, n));
        // (d, m) pairs -> d0..d3, m0..m3
        const __m256 f = _mm256_cvtph_ps(split_halves(words32<kBytes, 0>(b, n)));
        *d = _mm256_castps256_ps128(f);
        *m = _mm256_extractf128_ps(f, 1);
    }
};

// Adds 16 to the codes whose fifth bit is set: qh words of 4 blocks gathered as
// [values 0..15 of blocks 0..3 | values 16..31 of blocks 0..3].
inline void add_fifth_bits(Codes * c, __m128i qh) {
    const __m512i sixteen = _mm512_set1_epi8(16);
    c->lo = _mm512_mask_add_epi8(c->lo, __mmask64(_mm_cvtsi128_si64(qh)), c->lo, sixteen);
    c->hi = _mm512_mask_add_epi8(c->hi, __mmask64(_mm_extract_epi64(qh, 1)), c->hi, sixteen);
}

template <>
struct Legacy<QType::Q5_0> {
    static constexpr int kBytes = 22, kOffset = 16;
    static constexpr bool kHasMin = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles(lanes16<kBytes, 6>(b, n));
        add_fifth_bits(c, split_halves(words32<kBytes, 2>(b, n)));
        *d = *m = _mm_cvtph_ps(words16<kBytes, 0>(b, n));
    }
};

template <>
struct Legacy<QType::Q5_1> {
    static constexpr int kBytes = 24, kOffset = 0;
    static constexpr bool kHasMin = true;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles(lanes16<kBytes, 8>(b, n));
        add_fifth_bits(c, split_halves(words32<kBytes, 4>(b, n)));
        const __m256 f = _mm256_cvtph_ps(split_halves(words32<kBytes, 0>(b, n)));
        *d = _mm256_castps256_ps128(f);
        *m = _mm256_extractf128_ps(f, 1);
    }
};

template <>
struct Legacy<QType::Q8_0> {
    static constexpr int kBytes = 34, kOffset = 128;
    static constexpr bool kHasMin = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        const __m512i flip = _mm512_set1_epi8(-128);  // int8 q -> code q + 128
        c->lo = _mm512_xor_si512(lanes16<kBytes, 2>(b, n), flip);
        c->hi = _mm512_xor_si512(lanes16<kBytes, 18>(b, n), flip);
        *d = *m = _mm_cvtph_ps(words16<kBytes, 0>(b, n));
    }
};

// Codes of 4-bit indices (nibbles in bytes) into a table of 16 int8 levels (IQ4's non-linear
// ones, MXFP4's doubled E2M1 ones): level + 128, looked up in every 128-bit lane.
inline __m512i table_levels(const int8_t * table, __m512i nib) {
    const __m128i levels = _mm_loadu_si128(reinterpret_cast<const __m128i *>(table));
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_xor_si128(levels, _mm_set1_epi8(-128))), nib);
}

inline Codes table_levels(const int8_t * table, Codes n) {
    return {table_levels(table, n.lo), table_levels(table, n.hi)};
}

template <>
struct Legacy<QType::IQ4_NL> {
    static constexpr int kBytes = 18, kOffset = 128;
    static constexpr bool kHasMin = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = table_levels(kvalues_iq4nl, nibbles(lanes16<kBytes, 2>(b, n)));
        *d = *m = _mm_cvtph_ps(words16<kBytes, 0>(b, n));
    }
};

// 2^(e - 128) of E8M0 bytes e (0..255) in 32-bit lanes, as ggml's e8m0_to_fp32_half: exponent
// field e - 1, or for e = 0, 1 the denormals 2^-128, 2^-127 (bits 0x00200000 << e).
inline __m512 e8m0_half(__m512i e) {
    const __m512i norm = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    const __mmask16 den = _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2));
    return _mm512_castsi512_ps(_mm512_mask_sllv_epi32(norm, den, _mm512_set1_epi32(0x00200000), e));
}

inline __m128 e8m0_half(__m128i e) {
    const __m128i norm = _mm_slli_epi32(_mm_sub_epi32(e, _mm_set1_epi32(1)), 23);
    const __mmask8 den = _mm_cmplt_epu32_mask(e, _mm_set1_epi32(2));
    return _mm_castsi128_ps(_mm_mask_sllv_epi32(norm, den, _mm_set1_epi32(0x00200000), e));
}

// The byte at offset OFF of each of n <= 4 blocks, in 32-bit lanes (zero past n).
template <int BYTES, int OFF>
inline __m128i bytes4(const uint8_t * b, int n) {
    __m128i v = _mm_cvtsi32_si128(b[OFF]);
    if (n > 1) v = _mm_insert_epi32(v, b[BYTES + OFF], 1);
    if (n > 2) v = _mm_insert_epi32(v, b[2 * BYTES + OFF], 2);
    if (n > 3) v = _mm_insert_epi32(v, b[3 * BYTES + OFF], 3);
    return v;
}

// MXFP4: IQ4_NL's nibbles in 17-byte blocks after the E8M0 byte (d zero past n).
template <>
struct Legacy<QType::MXFP4> {
    static constexpr int kBytes = 17, kOffset = 128;
    static constexpr bool kHasMin = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = table_levels(kvalues_mxfp4, nibbles(lanes16<kBytes, 1>(b, n)));
        *d = *m = _mm_maskz_mov_ps(__mmask8((1u << n) - 1), e8m0_half(bytes4<kBytes, 0>(b, n)));
    }
};

// Scales of up to 16 consecutive legacy blocks (n valid): d as floats, and m (or d again for
// offset formats). Lanes past n are zero.
template <QType WT>
inline void legacy_scales(const uint8_t * blocks, int n, __m512 * d, __m512 * m) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(Legacy<WT>::kBytes));
    const __mmask16 k = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, blocks, 1);
    if constexpr (WT == QType::MXFP4) {  // the E8M0 byte
        *d = *m = _mm512_maskz_mov_ps(k, e8m0_half(_mm512_and_si512(g, _mm512_set1_epi32(0xFF))));
        return;
    }
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
    *m = Legacy<WT>::kHasMin ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))) : *d;
}

// ---- k-quants: codes of half a super-block (g = 0, 1: 4 blocks of 32) at a time ----
//
// scales() gives dg and mg for the super-block's 16 groups of 16 values; kGroups16 says
// whether the two halves of a block of 32 have different terms.
template <QType WT>
struct KQuant;

// The 16 bytes at p in all four 128-bit lanes.
inline __m512i bcast16(const uint8_t * p) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}

// Right shifts of 16-bit words by 0, 2, 4, 6 in lanes 0..3.
inline __m512i srl_0246(__m512i v) {
    return _mm512_srlv_epi16(v, _mm512_setr_epi64(0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                                  0x0004000400040004LL, 0x0004000400040004LL,
                                                  0x0006000600060006LL, 0x0006000600060006LL));
}

// Bytes of v whose bit (first + lane) is set, lane = 0..3 (first = 0 or 4).
inline __mmask64 test_bits_lanes(__m512i v, int first) {
    const __m512i bits = _mm512_setr_epi32(0x01010101, 0x01010101, 0x01010101, 0x01010101, 0x02020202, 0x02020202,
                                           0x02020202, 0x02020202, 0x04040404, 0x04040404, 0x04040404, 0x04040404,
                                           0x08080808, 0x08080808, 0x08080808, 0x08080808);
    return _mm512_test_epi8_mask(v, _mm512_sll_epi32(bits, _mm_cvtsi32_si128(first)));
}

// Q2_K / Q3_K low bits: value n*128 + 32j + l is bits 2j of qs[32n + l].
inline Codes two_bit_codes(const uint8_t * qs32) {
    const __m512i m3 = _mm512_set1_epi8(3);
    return {_mm512_and_si512(srl_0246(bcast16(qs32)), m3), _mm512_and_si512(srl_0246(bcast16(qs32 + 16)), m3)};
}

template <>
struct KQuant<QType::Q2_K> {
    static constexpr int kBytes = 84;
    static constexpr bool kGroups16 = true;
    static Codes codes(const uint8_t * sb, int g) {
        return two_bit_codes(reinterpret_cast<const block_q2_K *>(sb)->qs + 32 * g);
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const block_q2_K * b = reinterpret_cast<const block_q2_K *>(sb);
        const __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b->scales)));
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_and_si512(s, _mm512_set1_epi32(15)));
        const __m512 mn = _mm512_cvtepi32_ps(_mm512_srli_epi32(s, 4));
        *dg = _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), sc);
        *mg = _mm512_mul_ps(_mm512_set1_ps(-h2f(b->dmin)), mn);
    }
};

template <>
struct KQuant<QType::Q3_K> {
    static constexpr int kBytes = 110;
    static constexpr bool kGroups16 = true;
    static Codes codes(const uint8_t * sb, int g) {
        const block_q3_K * b = reinterpret_cast<const block_q3_K *>(sb);
        Codes c = two_bit_codes(b->qs + 32 * g);
        // High bit n*4 + j of hmask[l].
        const __m512i four = _mm512_set1_epi8(4);
        c.lo = _mm512_mask_add_epi8(c.lo, test_bits_lanes(bcast16(b->hmask), 4 * g), c.lo, four);
        c.hi = _mm512_mask_add_epi8(c.hi, test_bits_lanes(bcast16(b->hmask + 16), 4 * g), c.hi, four);
        return c;
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const block_q3_K * b = reinterpret_cast<const block_q3_K *>(sb);
        uint32_t a[3];
        memcpy(a, b->scales, 12);
        const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
        const uint32_t s[4] = {(a[0] & m4) | ((a[2] & m2) << 4), (a[1] & m4) | (((a[2] >> 2) & m2) << 4),
                               ((a[0] >> 4) & m4) | (((a[2] >> 4) & m2) << 4),
                               ((a[1] >> 4) & m4) | (((a[2] >> 6) & m2) << 4)};
        const __m512i v = _mm512_cvtepu8_epi32(_mm_setr_epi32(int(s[0]), int(s[1]), int(s[2]), int(s[3])));
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(32)));
        *dg = _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), sc);
        *mg = _mm512_mul_ps(_mm512_set1_ps(-4.0f), *dg);
    }
};

// Q4_K / Q5_K: 8 six-bit scales and mins, each for 32 values, widened to one per 16.
inline void k4_scales(const uint8_t * q, fp16_t d, fp16_t dmin, __m512 * dg, __m512 * mg) {
    uint32_t u[3];
    memcpy(u, q, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    // scales 0..3, 4..7, mins 0..3, 4..7
    const uint32_t s[4] = {u[0] & m6, (u[2] & m4) | (((u[0] >> 6) & m2) << 4), u[1] & m6,
                           ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4)};
    const __m512i v = _mm512_cvtepu8_epi32(_mm_setr_epi32(int(s[0]), int(s[1]), int(s[2]), int(s[3])));
    const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(dup, v));
    const __m512 mn = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(_mm512_add_epi32(dup, _mm512_set1_epi32(8)), v));
    *dg = _mm512_mul_ps(_mm512_set1_ps(h2f(d)), sc);
    *mg = _mm512_mul_ps(_mm512_set1_ps(-h2f(dmin)), mn);
}

// Q4_K / Q5_K low bits of half a super-block: 64 qs bytes; block 2c holds the low nibbles of
// bytes 32c.., block 2c + 1 the high nibbles.
inline Codes k4_codes(const uint8_t * qs64) {
    const Codes n = nibbles(load64(qs64));
    const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i hi_idx = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    return {_mm512_permutex2var_epi64(n.lo, lo_idx, n.hi), _mm512_permutex2var_epi64(n.lo, hi_idx, n.hi)};
}

template <>
struct KQuant<QType::Q4_K> {
    static constexpr int kBytes = 144;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) { return k4_codes(reinterpret_cast<const block_q4_K *>(sb)->qs + 64 * g); }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const block_q4_K * b = reinterpret_cast<const block_q4_K *>(sb);
        k4_scales(b->scales, b->d, b->dmin, dg, mg);
    }
};

template <>
struct KQuant<QType::Q5_K> {
    static constexpr int kBytes = 176;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        const block_q5_K * b = reinterpret_cast<const block_q5_K *>(sb);
        Codes c = k4_codes(b->qs + 64 * g);
        // Bit 4g + j of qh[l] is the fifth bit of block j's value l.
        const __m512i sixteen = _mm512_set1_epi8(16);
        c.lo = _mm512_mask_add_epi8(c.lo, test_bits_lanes(bcast16(b->qh), 4 * g), c.lo, sixteen);
        c.hi = _mm512_mask_add_epi8(c.hi, test_bits_lanes(bcast16(b->qh + 16), 4 * g), c.hi, sixteen);
        return c;
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const block_q5_K * b = reinterpret_cast<const block_q5_K *>(sb);
        k4_scales(b->scales, b->d, b->dmin, dg, mg);
    }
};

template <>
struct KQuant<QType::Q6_K> {
    static constexpr int kBytes = 210;
    static constexpr bool kGroups16 = true;
    static Codes codes(const uint8_t * sb, int g) {
        const block_q6_K * b = reinterpret_cast<const block_q6_K *>(sb);
        // Block k of this half: low nibbles (k < 2) or high nibbles of ql[64g + 32(k & 1) + l],
        // bits 2k of qh[32g + l].
        const Codes n = nibbles(load64(b->ql + 64 * g));
        const __m512i lo_idx = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13);
        const __m512i hi_idx = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
        const __m512i m3 = _mm512_set1_epi8(3);
        const __m512i h_lo = _mm512_and_si512(srl_0246(bcast16(b->qh + 32 * g)), m3);
        const __m512i h_hi = _mm512_and_si512(srl_0246(bcast16(b->qh + 32 * g + 16)), m3);
        return {_mm512_or_si512(_mm512_permutex2var_epi64(n.lo, lo_idx, n.hi), _mm512_slli_epi16(h_lo, 4)),
                _mm512_or_si512(_mm512_permutex2var_epi64(n.lo, hi_idx, n.hi), _mm512_slli_epi16(h_hi, 4))};
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const block_q6_K * b = reinterpret_cast<const block_q6_K *>(sb);
        const __m512i s = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b->scales)));
        *dg = _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), _mm512_cvtepi32_ps(s));
        *mg = _mm512_mul_ps(_mm512_set1_ps(-32.0f), *dg);
    }
};

// IQ4_XS: block j of half g is qs[64g + 16j ..] (nibbles as IQ4_NL's), one block per lane.
template <>
struct KQuant<QType::IQ4_XS> {
    static constexpr int kBytes = 136;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        return table_levels(kvalues_iq4nl, nibbles(load64(reinterpret_cast<const block_iq4_xs *>(sb)->qs + 64 * g)));
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        const block_iq4_xs * b = reinterpret_cast<const block_iq4_xs *>(sb);
        // Scale of 16-value group j: low 4 bits from nibble j / 2 of scales_l, high 2 bits
        // from bits 2 (j / 2) of scales_h.
        const __m512i grp = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
        uint32_t sl;
        memcpy(&sl, b->scales_l, 4);
        const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(sl)), _mm512_slli_epi32(grp, 2)),
                                            _mm512_set1_epi32(15));
        const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(b->scales_h), _mm512_slli_epi32(grp, 1)),
                                            _mm512_set1_epi32(3));
        const __m512i ls = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
        *dg = _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), _mm512_cvtepi32_ps(ls));
        *mg = _mm512_mul_ps(_mm512_set1_ps(-128.0f), *dg);
    }
};

// ---- ternary TQ1_0 / TQ2_0: codes 0..2 (value = d * (code - 1)), one scale per super-block ----

inline void ternary_scales(const fp16_t * dp, __m512 * dg, __m512 * mg) {
    const float d = h2f(*dp);
    *dg = _mm512_set1_ps(d);
    *mg = _mm512_set1_ps(-d);
}

// TQ2_0: Q2_K's order of 2-bit codes (quant/ternary.h).
template <>
struct KQuant<QType::TQ2_0> {
    static constexpr int kBytes = 66;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        return two_bit_codes(reinterpret_cast<const block_tq2_0 *>(sb)->qs + 32 * g);
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        ternary_scales(&reinterpret_cast<const block_tq2_0 *>(sb)->d, dg, mg);
    }
};

// The top trit of each byte b, (b * 3) >> 8 = [b >= 86] + [b >= 171].
inline __m512i top_trit(__m512i b) {
    const __m512i one = _mm512_set1_epi8(1);
    const __m512i t = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(b, _mm512_set1_epi8(86)), one);
    return _mm512_mask_add_epi8(t, _mm512_cmpge_epu8_mask(b, _mm512_set1_epi8(char(171))), t, one);
}

// 3 v in each byte (mod 256): the next trit of a TQ1_0 byte to the top.
inline __m512i times3(__m512i v) { return _mm512_add_epi8(v, _mm512_add_epi8(v, v)); }

// The top trit of each byte of x times its 16-bit word's multiplier in m (a power of 3, mod 256:
// the products' low bytes by two 16-bit multiplies).
inline __m512i trits_times(__m512i x, __m512i m) {
    const __m512i even = _mm512_mullo_epi16(x, m);
    const __m512i odd = _mm512_slli_epi16(_mm512_mullo_epi16(_mm512_srli_epi16(x, 8), m), 8);
    return top_trit(_mm512_mask_blend_epi8(__mmask64(0xAAAAAAAAAAAAAAAAull), even, odd));
}

// The same multiplier in every 16-bit word of a 128-bit lane: m0 .. m3 for lanes 0..3.
inline __m512i lane_mults(int m0, int m1, int m2, int m3) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_setr_epi32(
                                  m0 * 0x10001, m0 * 0x10001, m0 * 0x10001, m0 * 0x10001, m1 * 0x10001,
                                  m1 * 0x10001, m1 * 0x10001, m1 * 0x10001)),
                              _mm256_setr_epi32(m2 * 0x10001, m2 * 0x10001, m2 * 0x10001, m2 * 0x10001,
                                                m3 * 0x10001, m3 * 0x10001, m3 * 0x10001, m3 * 0x10001), 1);
}

// TQ1_0 (order of values: quant/ternary.h), one block of 32 a lane: half 0 is trits 0..3 of
// qs[0..31]; half 1 trit 4 of qs[0..31], then trits 0..4 of qs[32..47] (16 values each) and
// trits 0..3 of qh (4 each).
template <>
struct KQuant<QType::TQ1_0> {
    static constexpr int kBytes = 54;
    static constexpr bool kGroups16 = false;
    static Codes codes(const uint8_t * sb, int g) {
        const block_tq1_0 * b = reinterpret_cast<const block_tq1_0 *>(sb);
        if (g == 0) {
            // qs[0..31] times 1 and 3 (lanes 0-1, 2-3), then times 9 and 27, by byte adds; the
            // lanes regrouped so that lane j holds 16 bytes times 3^j
            const __m512i w = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(b->qs)));
            const __m512i p = _mm512_mask_mov_epi64(w, 0xF0, times3(w)), p9 = times3(times3(p));
            return {top_trit(_mm512_shuffle_i64x2(p, p9, 0x88)), top_trit(_mm512_shuffle_i64x2(p, p9, 0xDD))};
        }
        auto ld = [](const uint8_t * p) { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)); };
        const __m512i q = bcast16(b->qs + 32);
        const __m512i lo = _mm512_inserti32x4(q, ld(b->qs), 0);
        __m512i hi = _mm512_inserti32x4(q, ld(b->qs + 16), 0);
        hi = _mm512_inserti32x4(hi, _mm_set1_epi32(int(load_u32(b->qh))), 3);
        const __m512i mhi = _mm512_inserti32x4(lane_mults(81, 3, 27, 0), _mm_setr_epi32(0x10001, 0x30003, 0x90009, 0x1B001B), 3);
        return {trits_times(lo, lane_mults(81, 1, 9, 81)), trits_times(hi, mhi)};
    }
    // Both halves (the decode kernel's: each half's code with its constant g).
    static void codes_sb(const uint8_t * sb, Codes out[2]) {
        out[0] = codes(sb, 0);
        out[1] = codes(sb, 1);
    }
    static void scales(const uint8_t * sb, __m512 * dg, __m512 * mg) {
        ternary_scales(&reinterpret_cast<const block_tq1_0 *>(sb)->d, dg, mg);
    }
};

// Sums of each of 16 vectors, as one vector (lane i = sum of the lanes of a[i]).
inline __m512 hsum16(const __m512 a[16]) {
    __m512 x[8], y[4], z[2];
    for (int i = 0; i < 8; ++i)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {
        const __m512d p = _mm512_castps_pd(x[2 * i]), q = _mm512_castps_pd(x[2 * i + 1]);
        y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
    }
    for (int i = 0; i < 2; ++i)
        z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
}

}  // namespace sl::cpu::impl::avx512
