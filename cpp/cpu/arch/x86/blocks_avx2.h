// AVX2 decoding of weight blocks, as blocks_avx512.h but in ymm: the codes of 4 blocks of 32
// (128 values, one ActQ8 group) are four ymm: lo01 = values 0..15 of blocks 0 and 1, lo23 of
// blocks 2 and 3, hi01 / hi23 their values 16..31 (the activation bytes 0-31, 32-63, 64-95,
// 96-127 of the group). Include only from *_avx2.cpp.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "common/unaligned.h"
#include "cpu/arch/x86/kernels_x86.h"
#include "quant/iquants.h"
#include "quant/kquants.h"
#include "quant/legacy.h"
#include "quant/mxfp4.h"
#include "quant/ternary.h"

namespace sl::cpu::impl::avx2 {

struct Codes {
    __m256i lo01, lo23, hi01, hi23;
};

inline __m128i load16(const uint8_t * p) { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)); }
inline __m256i load32(const uint8_t * p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }

// In-register transpose of an 8 x 8 matrix of 32-bit values (row i in v[i]).
inline void transpose8(__m256 v[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int j = 0; j < 2; ++j) {
        u[4 * j + 0] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], 0x44);
        u[4 * j + 1] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], 0xEE);
        u[4 * j + 2] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], 0x44);
        u[4 * j + 3] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
        v[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        v[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

// Codes of 4 blocks from their natural-order 32-byte code vectors c0..c3.
inline Codes from_blocks(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
    return {_mm256_permute2x128_si256(c0, c1, 0x20), _mm256_permute2x128_si256(c2, c3, 0x20),
            _mm256_permute2x128_si256(c0, c1, 0x31), _mm256_permute2x128_si256(c2, c3, 0x31)};
}

// 0xFF in byte i where bit i of x is set (32 bits -> 32 bytes).
inline __m256i bits_to_bytes(uint32_t x) {
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL,
                                            0x0303030303030303LL);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(x)), shuf);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

// ---- legacy formats: 4 blocks at a time (n < 4 at a row's end; missing blocks are zero) ----

// 4-bit codes of blocks j and j + 1 (qs[16] at OFF), lo and hi halves.
template <int BYTES, int OFF>
inline void nibble_pair(const uint8_t * b, int j, int n, __m256i * lo, __m256i * hi) {
    if (j >= n) {
        *lo = *hi = _mm256_setzero_si256();
        return;
    }
    const __m128i q0 = load16(b + BYTES * j + OFF);
    const __m128i q1 = j + 1 < n ? load16(b + BYTES * (j + 1) + OFF) : _mm_setzero_si128();
    const __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    const __m256i m4 = _mm256_set1_epi8(15);
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
}

template <int BYTES, int OFF>
inline Codes nibbles4(const uint8_t * b, int n) {
    Codes c;
    nibble_pair<BYTES, OFF>(b, 0, n, &c.lo01, &c.hi01);
    nibble_pair<BYTES, OFF>(b, 2, n, &c.lo23, &c.hi23);
    return c;
}

// Fifth bits of Q5 blocks (qh at QH): 16 into the codes whose bit is set.
template <int BYTES, int QH>
inline void fifth_bits(const uint8_t * b, int n, Codes * c) {
    const __m256i sixteen = _mm256_set1_epi8(16);
    __m256i e[4];
    for (int j = 0; j < 4; ++j)
        e[j] = j < n ? _mm256_and_si256(bits_to_bytes(load_u32(b + BYTES * j + QH)), sixteen) : _mm256_setzero_si256();
    const Codes h = from_blocks(e[0], e[1], e[2], e[3]);
    c->lo01 = _mm256_or_si256(c->lo01, h.lo01);
    c->lo23 = _mm256_or_si256(c->lo23, h.lo23);
    c->hi01 = _mm256_or_si256(c->hi01, h.hi01);
    c->hi23 = _mm256_or_si256(c->hi23, h.hi23);
}

// The f16 at OFF of each of n <= 4 blocks, as 4 floats (zero past n).
template <int BYTES, int OFF>
inline __m128 halves4(const uint8_t * b, int n) {
    __m128i v = _mm_cvtsi32_si128(load_u16(b + OFF));
    if (n > 1) v = _mm_insert_epi16(v, load_u16(b + BYTES + OFF), 1);
    if (n > 2) v = _mm_insert_epi16(v, load_u16(b + 2 * BYTES + OFF), 2);
    if (n > 3) v = _mm_insert_epi16(v, load_u16(b + 3 * BYTES + OFF), 3);
    return _mm_cvtph_ps(v);
}

// load4: codes, d and m (d again for formats with an offset: value = d * (code - kOffset)).
// Q8_0 keeps signed codes (kSigned): its products go through the sign trick, not an offset.
template <QType WT>
struct Legacy;

template <>
struct Legacy<QType::Q4_0> {
    static constexpr int kBytes = 18, kOffset = 8;
    static constexpr bool kHasMin = false, kSigned = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles4<kBytes, 2>(b, n);
        *d = *m = halves4<kBytes, 0>(b, n);
    }
};

template <>
struct Legacy<QType::Q4_1> {
    static constexpr int kBytes = 20, kOffset = 0;
    static constexpr bool kHasMin = true, kSigned = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles4<kBytes, 4>(b, n);
        *d = halves4<kBytes, 0>(b, n);
        *m = halves4<kBytes, 2>(b, n);
    }
};

template <>
struct Legacy<QType::Q5_0> {
    static constexpr int kBytes = 22, kOffset = 16;
    static constexpr bool kHasMin = false, kSigned = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles4<kBytes, 6>(b, n);
        fifth_bits<kBytes, 2>(b, n, c);
        *d = *m = halves4<kBytes, 0>(b, n);
    }
};

template <>
struct Legacy<QType::Q5_1> {
    static constexpr int kBytes = 24, kOffset = 0;
    static constexpr bool kHasMin = true, kSigned = false;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = nibbles4<kBytes, 8>(b, n);
        fifth_bits<kBytes, 4>(b, n, c);
        *d = halves4<kBytes, 0>(b, n);
        *m = halves4<kBytes, 2>(b, n);
    }
};

template <>
struct Legacy<QType::Q8_0> {
    static constexpr int kBytes = 34, kOffset = 0;
    static constexpr bool kHasMin = false, kSigned = true;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        auto pair = [&](int j, int off) {
            if (j >= n) return _mm256_setzero_si256();
            const __m128i q0 = load16(b + kBytes * j + off);
            const __m128i q1 = j + 1 < n ? load16(b + kBytes * (j + 1) + off) : _mm_setzero_si128();
            return _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
        };
        *c = {pair(0, 2), pair(2, 2), pair(0, 18), pair(2, 18)};
        *d = *m = halves4<kBytes, 0>(b, n);
    }
};

// Codes of 4-bit indices into a table of 16 int8 levels (IQ4's non-linear ones, MXFP4's doubled
// E2M1 ones), signed (kSigned: pairs of products of unsigned codes up to 241 would overflow
// vpmaddubsw's int16 sums).
inline __m256i table_levels(const int8_t * table, __m256i nib) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i *>(table));
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(t), nib);
}

inline Codes table_levels(const int8_t * table, Codes c) {
    return {table_levels(table, c.lo01), table_levels(table, c.lo23), table_levels(table, c.hi01),
            table_levels(table, c.hi23)};
}

template <>
struct Legacy<QType::IQ4_NL> {
    static constexpr int kBytes = 18, kOffset = 0;
    static constexpr bool kHasMin = false, kSigned = true;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = table_levels(kvalues_iq4nl, nibbles4<kBytes, 2>(b, n));
        *d = *m = halves4<kBytes, 0>(b, n);
    }
};

// The E8M0 byte at OFF of each of n <= 4 blocks as 2^(e - 128) (ggml's e8m0_to_fp32_half:
// exponent field e - 1, or for e = 0, 1 the denormals 0x00200000 << e), zero past n.
template <int BYTES, int OFF>
inline __m128 e8m0_halves4(const uint8_t * b, int n) {
    __m128i e = _mm_cvtsi32_si128(b[OFF]);
    if (n > 1) e = _mm_insert_epi32(e, b[BYTES + OFF], 1);
    if (n > 2) e = _mm_insert_epi32(e, b[2 * BYTES + OFF], 2);
    if (n > 3) e = _mm_insert_epi32(e, b[3 * BYTES + OFF], 3);
    const __m128i norm = _mm_slli_epi32(_mm_sub_epi32(e, _mm_set1_epi32(1)), 23);
    const __m128i den = _mm_sllv_epi32(_mm_set1_epi32(0x00200000), e);
    const __m128i bits = _mm_blendv_epi8(norm, den, _mm_cmplt_epi32(e, _mm_set1_epi32(2)));
    const __m128i valid = _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3));
    return _mm_castsi128_ps(_mm_and_si128(bits, valid));
}

template <>
struct Legacy<QType::MXFP4> {
    static constexpr int kBytes = 17, kOffset = 0;
    static constexpr bool kHasMin = false, kSigned = true;
    static void load4(const uint8_t * b, int n, Codes * c, __m128 * d, __m128 * m) {
        *c = table_levels(kvalues_mxfp4, nibbles4<kBytes, 1>(b, n));
        *d = *m = e8m0_halves4<kBytes, 0>(b, n);
    }
};

// ---- k-quants: half a super-block (g = 0, 1: 4 blocks of 32) at a time ----
// scales(): dg and mg of the 16 groups of 16 values, groups 0..7 in [0], 8..15 in [1].
// kSigned: the codes are signed (value = dg * code; products by the sign trick, no mg term).
template <QType WT>
struct KQuant;

// Q2_K / Q3_K low bits: block j of half g is bits 2j of qs[32g + l].
inline void two_bit_blocks(const uint8_t * qs32, __m256i c[4]) {
    const __m256i q = load32(qs32), m3 = _mm256_set1_epi8(3);
    for (int j = 0; j < 4; ++j) c[j] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
}

template <>
struct KQuant<QType::Q2_K> {
    static constexpr int kBytes = 84;
    static constexpr bool kGroups16 = true, kSigned = false;
    static Codes codes(const uint8_t * sb, int g) {
        __m256i c[4];
        two_bit_blocks(reinterpret_cast<const block_q2_K *>(sb)->qs + 32 * g, c);
        return from_blocks(c[0], c[1], c[2], c[3]);
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const block_q2_K * b = reinterpret_cast<const block_q2_K *>(sb);
        const __m256 d = _mm256_set1_ps(h2f(b->d)), dmin = _mm256_set1_ps(-h2f(b->dmin));
        for (int h = 0; h < 2; ++h) {
            const __m256i s = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(b->scales + 8 * h)));
            dg[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(s, _mm256_set1_epi32(15))));
            mg[h] = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(s, 4)));
        }
    }
};

// Q3_K and Q6_K also give their 16 group scales as signed bytes (int_scales, group k in byte k),
// the super-block d (super_d) and their code offset (kOffset: value = d * scale * (code - kOffset)),
// for kquant16_row (gemv_avx2.cpp), which keeps the group scales in the integer products.
template <>
struct KQuant<QType::Q3_K> {
    static constexpr int kBytes = 110, kOffset = 4;
    static constexpr bool kGroups16 = true, kSigned = false;
    // Straight into the Codes layout, no lane permutes: a 128-bit lane holds values 0..15 (or
    // 16..31) of one block, so each lane shifts the same 16 bytes of qs / hmask by its block's
    // count (32-bit shifts: the masks keep bits that stay within their byte).
    static Codes codes(const uint8_t * sb, int g) {
        const block_q3_K * b = reinterpret_cast<const block_q3_K *>(sb);
        auto bcast = [](const uint8_t * p) { return _mm256_broadcastsi128_si256(load16(p)); };
        const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
        const __m256i s01 = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), s23 = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
        const __m256i ql = bcast(b->qs + 32 * g), qh = bcast(b->qs + 32 * g + 16);
        const __m256i hl = bcast(b->hmask), hh = bcast(b->hmask + 16);
        // Bit 4g + j of hmask (+ 4) to bit 2: shift by 4g + j - 2.
        auto high = [&](__m256i h, int k) {
            if (g == 0) {
                return k == 0 ? _mm256_sllv_epi32(h, _mm256_setr_epi32(2, 2, 2, 2, 1, 1, 1, 1))
                              : _mm256_srlv_epi32(h, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
            }
            return _mm256_srlv_epi32(h, k == 0 ? _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)
                                               : _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5));
        };
        auto code = [&](__m256i q, __m256i sh, __m256i h, int k) {
            return _mm256_or_si256(_mm256_and_si256(_mm256_srlv_epi32(q, sh), m3), _mm256_and_si256(high(h, k), four));
        };
        return {code(ql, s01, hl, 0), code(ql, s23, hl, 1), code(qh, s01, hh, 0), code(qh, s23, hh, 1)};
    }
    // In vector code from the 16 bytes ending at d (scales at 2..13; no read past the block):
    // groups 0-7 / 8-15 the low / high nibbles of scales[0..7], bits 4-5 from scales[8..11]
    // shifted by 2 per 4 groups.
    static __m128i int_scales(const uint8_t * sb) {
        const __m128i v = load16(sb + offsetof(block_q3_K, scales) - 2);
        const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3);
        const __m128i lo = _mm_shuffle_epi8(v, _mm_setr_epi8(2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9));
        const __m128i nib = _mm_and_si128(_mm_srlv_epi64(lo, _mm_setr_epi32(0, 0, 4, 0)), m4);
        const __m128i hb = _mm_shuffle_epi8(v, _mm_setr_epi8(10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13));
        const __m128i hi = _mm_slli_epi16(_mm_and_si128(_mm_srlv_epi32(hb, _mm_setr_epi32(0, 2, 4, 6)), m2), 4);
        return _mm_sub_epi8(_mm_or_si128(nib, hi), _mm_set1_epi8(32));
    }
    static float super_d(const uint8_t * sb) { return h2f(reinterpret_cast<const block_q3_K *>(sb)->d); }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const __m128i sv = int_scales(sb);
        const __m256 d = _mm256_set1_ps(super_d(sb));
        for (int h = 0; h < 2; ++h) {
            const __m256i v = _mm256_cvtepi8_epi32(h ? _mm_unpackhi_epi64(sv, sv) : sv);
            dg[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(v));
            mg[h] = _mm256_mul_ps(_mm256_set1_ps(-4.0f), dg[h]);
        }
    }
};

// Q4_K / Q5_K: 8 six-bit scales and mins (one per 32 values), widened to one per 16.
inline void k4_scales(const uint8_t * q, fp16_t d, fp16_t dmin, __m256 dg[2], __m256 mg[2]) {
    uint32_t u[3];
    memcpy(u, q, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const uint32_t s[4] = {u[0] & m6, (u[2] & m4) | (((u[0] >> 6) & m2) << 4), u[1] & m6,
                           ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4)};
    const __m128i sv = _mm_setr_epi32(int(s[0]), int(s[1]), int(s[2]), int(s[3]));
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sv));
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(sv, sv)));
    const __m256i lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    const __m256 vd = _mm256_set1_ps(h2f(d)), vm = _mm256_set1_ps(-h2f(dmin));
    dg[0] = _mm256_mul_ps(vd, _mm256_permutevar8x32_ps(sc, lo));
    dg[1] = _mm256_mul_ps(vd, _mm256_permutevar8x32_ps(sc, hi));
    mg[0] = _mm256_mul_ps(vm, _mm256_permutevar8x32_ps(mn, lo));
    mg[1] = _mm256_mul_ps(vm, _mm256_permutevar8x32_ps(mn, hi));
}

// Q4_K / Q5_K low bits of half g: block 2c low nibbles of qs[64g + 32c + l], 2c + 1 high.
inline void k4_blocks(const uint8_t * qs64, __m256i c[4]) {
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i q0 = load32(qs64), q1 = load32(qs64 + 32);
    c[0] = _mm256_and_si256(q0, m4);
    c[1] = _mm256_and_si256(_mm256_srli_epi16(q0, 4), m4);
    c[2] = _mm256_and_si256(q1, m4);
    c[3] = _mm256_and_si256(_mm256_srli_epi16(q1, 4), m4);
}

template <>
struct KQuant<QType::Q4_K> {
    static constexpr int kBytes = 144;
    static constexpr bool kGroups16 = false, kSigned = false;
    static Codes codes(const uint8_t * sb, int g) {
        __m256i c[4];
        k4_blocks(reinterpret_cast<const block_q4_K *>(sb)->qs + 64 * g, c);
        return from_blocks(c[0], c[1], c[2], c[3]);
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const block_q4_K * b = reinterpret_cast<const block_q4_K *>(sb);
        k4_scales(b->scales, b->d, b->dmin, dg, mg);
    }
};

template <>
struct KQuant<QType::Q5_K> {
    static constexpr int kBytes = 176;
    static constexpr bool kGroups16 = false, kSigned = false;
    static Codes codes(const uint8_t * sb, int g) {
        const block_q5_K * b = reinterpret_cast<const block_q5_K *>(sb);
        __m256i c[4];
        k4_blocks(b->qs + 64 * g, c);
        const __m256i h = load32(b->qh), sixteen = _mm256_set1_epi8(16);
        for (int j = 0; j < 4; ++j) {
            const __m256i bit = _mm256_set1_epi8(char(1 << (4 * g + j)));
            c[j] = _mm256_or_si256(c[j], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit), sixteen));
        }
        return from_blocks(c[0], c[1], c[2], c[3]);
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const block_q5_K * b = reinterpret_cast<const block_q5_K *>(sb);
        k4_scales(b->scales, b->d, b->dmin, dg, mg);
    }
};

template <>
struct KQuant<QType::Q6_K> {
    static constexpr int kBytes = 210, kOffset = 32;
    static constexpr bool kGroups16 = true, kSigned = false;
    // Block k of half g: nibble k >> 1 of ql[64g + 32(k & 1) + l], bits 2k of qh[32g + l]. Built
    // in the Codes layout (as Q3_K's): blocks 0 and 1 from two 16-byte loads, the high bits from
    // qh shifted per lane to bits 4-5 (32-bit shifts; the mask keeps bits within their byte).
    static Codes codes(const uint8_t * sb, int g) {
        const block_q6_K * b = reinterpret_cast<const block_q6_K *>(sb);
        const uint8_t * ql = b->ql + 64 * g;
        auto pair = [](const uint8_t * p0, const uint8_t * p1) {
            return _mm256_inserti128_si256(_mm256_castsi128_si256(load16(p0)), load16(p1), 1);
        };
        const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
        const __m256i lq = pair(ql, ql + 32), hq = pair(ql + 16, ql + 48);
        const __m256i hl = _mm256_broadcastsi128_si256(load16(b->qh + 32 * g));
        const __m256i hh = _mm256_broadcastsi128_si256(load16(b->qh + 32 * g + 16));
        const __m256i up = _mm256_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2), down = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
        auto six = [&](__m256i low, __m256i h, bool first) {
            const __m256i hb = first ? _mm256_sllv_epi32(h, up) : _mm256_srlv_epi32(h, down);
            return _mm256_or_si256(_mm256_and_si256(low, m4), _mm256_and_si256(hb, m30));
        };
        return {six(lq, hl, true), six(_mm256_srli_epi16(lq, 4), hl, false), six(hq, hh, true),
                six(_mm256_srli_epi16(hq, 4), hh, false)};
    }
    static __m128i int_scales(const uint8_t * sb) { return load16(reinterpret_cast<const uint8_t *>(reinterpret_cast<const block_q6_K *>(sb)->scales)); }
    static float super_d(const uint8_t * sb) { return h2f(reinterpret_cast<const block_q6_K *>(sb)->d); }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const block_q6_K * b = reinterpret_cast<const block_q6_K *>(sb);
        const __m256 d = _mm256_set1_ps(h2f(b->d));
        for (int h = 0; h < 2; ++h) {
            const __m256i s = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(b->scales + 8 * h)));
            dg[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(s));
            mg[h] = _mm256_mul_ps(_mm256_set1_ps(-32.0f), dg[h]);
        }
    }
};

// IQ4_XS (kSigned, as IQ4_NL): block j of half g is qs[64g + 16j ..]; mg is zero.
template <>
struct KQuant<QType::IQ4_XS> {
    static constexpr int kBytes = 136;
    static constexpr bool kGroups16 = false, kSigned = true;
    static Codes codes(const uint8_t * sb, int g) {
        return table_levels(kvalues_iq4nl, nibbles4<16, 0>(reinterpret_cast<const block_iq4_xs *>(sb)->qs + 64 * g, 4));
    }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        const block_iq4_xs * b = reinterpret_cast<const block_iq4_xs *>(sb);
        const __m256i blk = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        uint32_t sl;
        memcpy(&sl, b->scales_l, 4);
        const __m256 d = _mm256_set1_ps(h2f(b->d));
        for (int h = 0; h < 2; ++h) {
            const __m256i ib = _mm256_add_epi32(blk, _mm256_set1_epi32(4 * h));
            const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(sl)), _mm256_slli_epi32(ib, 2)),
                                                _mm256_set1_epi32(15));
            const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(b->scales_h), _mm256_slli_epi32(ib, 1)),
                                                _mm256_set1_epi32(3));
            const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
            dg[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(ls));
            mg[h] = _mm256_setzero_ps();
        }
    }
};

// ---- ternary TQ1_0 / TQ2_0: codes 0..2 (value = d * (code - 1)), one scale per super-block ----

inline void ternary_scales(const fp16_t * dp, __m256 dg[2], __m256 mg[2]) {
    const float d = h2f(*dp);
    dg[0] = dg[1] = _mm256_set1_ps(d);
    mg[0] = mg[1] = _mm256_set1_ps(-d);
}

// Both ternary types build their codes straight in the Codes layout (no lane permutes, as Q3_K's):
// a 128-bit lane holds values 0..15 (or 16..31) of one block of 32.
inline __m256i bcast16(const uint8_t * p) { return _mm256_broadcastsi128_si256(load16(p)); }

// TQ2_0: Q2_K's order of 2-bit codes (quant/ternary.h): block j of half g is bits 2j of
// qs[32g + l]; each lane shifts the same 16 bytes by its block's count (32-bit shifts, masked
// per byte).
template <>
struct KQuant<QType::TQ2_0> {
    static constexpr int kBytes = 66;
    static constexpr bool kGroups16 = false, kSigned = false;
    static Codes codes(const uint8_t * sb, int g) {
        const uint8_t * qs = reinterpret_cast<const block_tq2_0 *>(sb)->qs + 32 * g;
        const __m256i ql = bcast16(qs), qh = bcast16(qs + 16), m3 = _mm256_set1_epi8(3);
        const __m256i s01 = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), s23 = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
        return {_mm256_and_si256(_mm256_srlv_epi32(ql, s01), m3), _mm256_and_si256(_mm256_srlv_epi32(ql, s23), m3),
                _mm256_and_si256(_mm256_srlv_epi32(qh, s01), m3), _mm256_and_si256(_mm256_srlv_epi32(qh, s23), m3)};
    }
    static float super_d(const uint8_t * sb) { return h2f(reinterpret_cast<const block_tq2_0 *>(sb)->d); }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        ternary_scales(&reinterpret_cast<const block_tq2_0 *>(sb)->d, dg, mg);
    }
};

// 3 v in each byte (mod 256): the next trit of a TQ1_0 byte to the top.
inline __m256i times3(__m256i v) { return _mm256_add_epi8(v, _mm256_add_epi8(v, v)); }

// [v | 3 v]: the lower lane as it is, the upper one times 3.
inline __m256i times13(__m256i v) { return _mm256_blend_epi32(v, times3(v), 0xF0); }

// The top trit of each byte b, (b * 3) >> 8, without multiplies: with x = max(b - 1, 0),
// avg(x, avg(x, 0)) >> 6 (vpavgb rounds up: the two averages give about 3 x / 4).
inline __m256i top_trit(__m256i b) {
    const __m256i x = _mm256_subs_epu8(b, _mm256_set1_epi8(1));
    const __m256i y = _mm256_avg_epu8(x, _mm256_avg_epu8(x, _mm256_setzero_si256()));
    return _mm256_and_si256(_mm256_srli_epi16(y, 6), _mm256_set1_epi8(3));
}

// TQ1_0 (order of values: quant/ternary.h): half 0 is trits 0..3 of qs[0..31] (lo01 = trits 0
// and 1 of qs[0..15], ...); half 1 is trit 4 of qs[0..31], then trits 0..4 of qs[32..47] (16
// values each) and trits 0..3 of qh (4 values each).
template <>
struct KQuant<QType::TQ1_0> {
    static constexpr int kBytes = 54;
    static constexpr bool kGroups16 = false, kSigned = false;
    static Codes codes(const uint8_t * sb, int g) {
        const block_tq1_0 * b = reinterpret_cast<const block_tq1_0 *>(sb);
        if (g == 0) {
            const __m256i x = times13(bcast16(b->qs)), y = times13(bcast16(b->qs + 16));
            return {top_trit(x), top_trit(times3(times3(x))), top_trit(y), top_trit(times3(times3(y)))};
        }
        const __m256i a81 = times3(times3(times3(times3(load32(b->qs)))));  // [81 qs[0..15] | 81 qs[16..31]]
        const __m256i q = bcast16(b->qs + 32), q3 = times3(q), q9 = times3(q3), q27 = times3(q9);
        // qh[0..3] times 1, 3, 9, 27 in dwords 0..3: the products' low bytes by 16-bit multiplies
        const __m128i h = _mm_set1_epi32(int(load_u32(b->qh)));
        const __m128i m = _mm_setr_epi32(0x10001, 0x30003, 0x90009, 0x1B001B);
        const __m128i even = _mm_and_si128(_mm_mullo_epi16(h, m), _mm_set1_epi16(0xFF));
        const __m128i odd = _mm_mullo_epi16(_mm_and_si128(h, _mm_set1_epi16(short(0xFF00))), m);
        const __m128i hq = _mm_or_si128(even, odd);
        return {top_trit(_mm256_blend_epi32(a81, q, 0xF0)), top_trit(_mm256_blend_epi32(q9, times3(q27), 0xF0)),
                top_trit(_mm256_permute2x128_si256(a81, q3, 0x21)),
                top_trit(_mm256_inserti128_si256(q27, hq, 1))};
    }
    static float super_d(const uint8_t * sb) { return h2f(reinterpret_cast<const block_tq1_0 *>(sb)->d); }
    static void scales(const uint8_t * sb, __m256 dg[2], __m256 mg[2]) {
        ternary_scales(&reinterpret_cast<const block_tq1_0 *>(sb)->d, dg, mg);
    }
};

// Sums of each of 8 vectors, as one vector (lane i = sum of the lanes of a[i]).
inline __m256 hsum8(const __m256 a[8]) {
    const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 t0 = _mm256_hadd_ps(s01, s23), t1 = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// int32 lanes of 4 products each: unsigned codes u times signed activations s (pairs of
// products must fit int16: codes up to 128).
inline __m256i dot4(__m256i u, __m256i s) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)); }

// As dot4 for two pairs whose int16 sums cannot overflow (codes up to 64 over both).
inline __m256i dot4x2(__m256i u0, __m256i s0, __m256i u1, __m256i s1) {
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)),
                             _mm256_set1_epi16(1));
}

// Signed codes w times signed activations s (|w| <= 128, s in -127..127).
inline __m256i dot4_signed(__m256i w, __m256i s) { return dot4(_mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w)); }

// The sum of two dot4_signed for codes |w| <= 64 (four products per int16 lane fit): MXFP4 and
// the grid types (their magnitudes: packed_avx2.cpp, run_groups).
inline __m256i dot4x2_signed(__m256i w0, __m256i s0, __m256i w1, __m256i s1) {
    return dot4x2(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(s0, w0), _mm256_sign_epi8(w1, w1), _mm256_sign_epi8(s1, w1));
}

template <QType WT>
constexpr bool small_signed_codes() {
    return WT == QType::MXFP4 || WT == QType::IQ2_XXS || WT == QType::IQ2_XS || WT == QType::IQ2_S ||
           WT == QType::IQ3_XXS || WT == QType::IQ3_S || WT == QType::IQ1_S || WT == QType::IQ1_M;
}

}  // namespace sl::cpu::impl::avx2
