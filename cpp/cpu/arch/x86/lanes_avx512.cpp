// AVX-512 VNNI kernels for a few tokens (decode) over legacy blocks (Q4_0, Q4_1, Q5_1, Q8_0, IQ4_NL, MXFP4), with
// blocks in lanes. (Q5_0, whose 22-byte blocks need a gather for their fifth bits, and Q4_K, whose
// scales take longer to decode, ran up to 25% slower this way for one token, so they keep the
// blocks-as-stored kernel.)
// Sixteen blocks of a weight row (a group) are rearranged once into 8 zmm of unsigned codes in
// which lane j holds 4 codes of block j: vector g < 4 its values 4g..4g+3, vector 4 + g its
// values 16 + 4g..16 + 4g + 3. Each token's activations are rearranged the same way once per
// call, so 8 vpdpbusd per token leave every block's exact integer dot product in its own lane
// (offsets folded in as integers), and the float work (block scales, mins) is one short chain
// per 16 blocks instead of per 4. A row's arithmetic is the same for 1 token as for 8, so each
// row's result is bitwise the same for any number of tokens.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"

#include <cstring>
#include <type_traits>

namespace sl::cpu::impl::avx512 {

namespace {

constexpr int kGroup = 16;         // blocks per group
constexpr int kMaxBlockBytes = 34;  // the largest block of a format here (Q8_0)

// Activations of one token in lanes, per group of 16 blocks (zero past the row's padded end):
//   int8  q[8][64]   codes, as the weight codes (lane j: block j)
//   float d[16]      block scales
//   float s[16]      d * (sum of the block's codes)           (formats with a min)
//   int32 c[16]      -offset * (sum of the block's codes)     (formats with an offset)
constexpr int kQ = 0, kD = 512, kS = 576, kC = 640, kGroupBytes = 704;

// Per 128-bit lane, the 4x4 transpose of dwords: out[g] dword k = in[k] dword g.
SL_FORCE_INLINE void transpose4(__m512i v[4]) {
    const __m512i t0 = _mm512_unpacklo_epi32(v[0], v[1]), t1 = _mm512_unpackhi_epi32(v[0], v[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(v[2], v[3]), t3 = _mm512_unpackhi_epi32(v[2], v[3]);
    v[0] = _mm512_unpacklo_epi64(t0, t2);
    v[1] = _mm512_unpackhi_epi64(t0, t2);
    v[2] = _mm512_unpacklo_epi64(t1, t3);
    v[3] = _mm512_unpackhi_epi64(t1, t3);
}

// After transpose4 of four vectors, lane 4L + k holds item 4k + L; this permutation (lane j takes
// lane 4(j % 4) + j / 4) puts item j in lane j.
SL_FORCE_INLINE __m512i lane_order() { return _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15); }

// How a row's blocks split into groups: `full` groups of 16, then `tail` blocks (< 16). A tail
// of 1..kMaxShared blocks is computed for several rows at once: lane j of a shared group holds
// block j % tail of row j / tail (per = 16 / tail rows), and the activations of the tail
// are repeated to match. A longer tail is one more group per row (lanes past it zero).
constexpr int kMaxShared = 4;
struct Split {
    int full, tail, per = 0, n_sg = 0;  // per: rows in a shared group; n_sg: shared groups per 16 rows
    // Of a shared group: the tail block in lane j (rep), and of 16 rows, row i's first lane in
    // the concatenated shared groups (at: (i / per) * 16 + (i % per) * tail).
    alignas(64) int32_t rep[16] = {}, at[16] = {};
    explicit Split(int64_t K) : full(int(K / 32 / kGroup)), tail(int(K / 32 % kGroup)) {
        if (!shared()) return;
        per = kGroup / tail;
        n_sg = (16 + per - 1) / per;
        for (int j = 0; j < 16; ++j) {
            rep[j] = j % tail;
            at[j] = (j / per) * 16 + (j % per) * tail;
        }
    }
    bool shared() const { return tail > 0 && tail <= kMaxShared; }
    int groups() const { return full + (tail > 0); }
};

// One ActQ8 row to the lanes layout. The 4x4 transpose of ActQ8's four quads of a group (lane
// 4L + g of quad k's first 64 bytes: values 4g.. of block 4k + L) leaves block 4k + L in lane
// 4L + k; a permute puts it in lane 4k + L. The shared tail's group repeats its blocks.
template <int OFFSET, bool HAS_MIN>
void acts_to_lanes(const uint8_t * row, int64_t K, const Split & sp, uint8_t * out) {
    const int nq = int(ActQ8::padded(K) / 128);
    const int8_t * qs = ActQ8::qs(row);
    const float * d = ActQ8::d(row, K);
    const float * s = ActQ8::s(row, K);
    const __m512i order = lane_order();
    for (int G = 0; G < sp.groups(); ++G, out += kGroupBytes) {
        const int q0 = 4 * G;
        __m512i v[8];
        for (int k = 0; k < 4; ++k) {
            v[k] = q0 + k < nq ? _mm512_loadu_si512(qs + 128 * (q0 + k)) : _mm512_setzero_si512();
            v[4 + k] = q0 + k < nq ? _mm512_loadu_si512(qs + 128 * (q0 + k) + 64) : _mm512_setzero_si512();
        }
        transpose4(v);
        transpose4(v + 4);
        for (int g = 0; g < 8; ++g) v[g] = _mm512_permutexvar_epi32(order, v[g]);
        const __mmask16 m = __mmask16(nq - q0 >= 4 ? 0xFFFF : (1u << (4 * (nq - q0))) - 1);
        __m512 vd = _mm512_maskz_loadu_ps(m, d + 4 * q0);
        __m512 vs = HAS_MIN ? _mm512_maskz_loadu_ps(m, s + 4 * q0) : _mm512_setzero_ps();
        __m512i vc = _mm512_setzero_si512();
        if constexpr (OFFSET != 0) {
            const __m512i ones = _mm512_set1_epi8(1);
            for (int g = 0; g < 8; ++g) vc = _mm512_dpbusd_epi32(vc, ones, v[g]);
            vc = _mm512_mullo_epi32(vc, _mm512_set1_epi32(-OFFSET));
        }
        if (G == sp.full && sp.shared()) {
            // Lane j: block j % tail, for `per` rows.
            const __m512i idx = _mm512_load_si512(sp.rep);
            const __mmask16 k = __mmask16((1u << (sp.per * sp.tail)) - 1);
            for (int g = 0; g < 8; ++g) v[g] = _mm512_maskz_permutexvar_epi32(k, idx, v[g]);
            vd = _mm512_maskz_permutexvar_ps(k, idx, vd);
            vs = _mm512_maskz_permutexvar_ps(k, idx, vs);
            vc = _mm512_maskz_permutexvar_epi32(k, idx, vc);
        }
        for (int g = 0; g < 8; ++g) _mm512_store_si512(out + kQ + 64 * g, v[g]);
        _mm512_store_ps(out + kD, vd);
        _mm512_store_ps(out + kS, vs);
        _mm512_store_si512(out + kC, vc);
    }
}

// A row's group in lanes: codes, scales d and (formats with a min) mins m.
struct Group {
    __m512i w[8];
    __m512 d, m;
};

// ---- per format: n <= 16 blocks of a row into a Group (lanes past n zero) ----
template <QType WT>
struct LaneBlocks;

// Blocks of DW dwords (Q4_1: 5, Q5_1: 6): the group's 16 * DW dwords are DW whole registers, and
// one dword permutation over them picks dword C of every block (lane j: dword DW * j + C).
template <int DW>
struct DwordBlocks {
    // Lanes j whose dword DW * j + C lies in [lo, hi).
    template <int C>
    static constexpr __mmask16 in(int lo, int hi) {
        unsigned k = 0;
        for (int j = 0; j < 16; ++j) k |= unsigned(DW * j + C >= lo && DW * j + C < hi) << j;
        return __mmask16(k);
    }
    // Dword DW * j + C to lane j: from z[0..1], then z[2..3], then z[4] (and z[5]). Lanes not yet
    // picked keep their index (mask2 permutes), which the next permute uses.
    template <int C>
    static SL_FORCE_INLINE __m512i pick(const __m512i z[DW]) {
        const __m512i idx = _mm512_setr_epi32(C, DW + C, 2 * DW + C, 3 * DW + C, 4 * DW + C, 5 * DW + C, 6 * DW + C,
                                              7 * DW + C, 8 * DW + C, 9 * DW + C, 10 * DW + C, 11 * DW + C,
                                              12 * DW + C, 13 * DW + C, 14 * DW + C, 15 * DW + C);
        __m512i v = _mm512_mask2_permutex2var_epi32(z[0], idx, in<C>(0, 32), z[1]);
        v = _mm512_mask2_permutex2var_epi32(z[2], v, in<C>(32, 64), z[3]);
        if constexpr (DW == 6) return _mm512_mask2_permutex2var_epi32(z[4], v, in<C>(64, 96), z[5]);
        return _mm512_mask_permutexvar_epi32(v, in<C>(64, 80), v, z[4]);
    }
    // The group's dwords: whole 64-byte loads for 16 blocks (in this kernel they stream from
    // memory as fast as narrower ones), masked ones for fewer (never past the row).
    static SL_FORCE_INLINE void load(const uint8_t * b, int n, __m512i z[DW]) {
        if (n == kGroup) {
            for (int i = 0; i < DW; ++i) z[i] = _mm512_loadu_si512(b + 64 * i);
        } else {
            for (int i = 0; i < DW; ++i) {
                const int left = imax(0, imin(16, DW * n - 16 * i));
                z[i] = _mm512_maskz_loadu_epi32(__mmask16((1u << left) - 1), b + 64 * i);
            }
        }
    }
    // Code dwords C0 .. C0 + 3 (16 bytes: low nibbles values 0..15, high 16..31) into g->w.
    template <int C0>
    static SL_FORCE_INLINE void nibbles(const __m512i z[DW], Group * g) {
        const __m512i m4 = _mm512_set1_epi8(15);
        auto one = [&](auto c) {
            const __m512i q = pick<C0 + decltype(c)::value>(z);
            g->w[c] = _mm512_and_si512(q, m4);
            g->w[4 + c] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        };
        one(std::integral_constant<int, 0>());
        one(std::integral_constant<int, 1>());
        one(std::integral_constant<int, 2>());
        one(std::integral_constant<int, 3>());
    }
    // Dword 0, (d, m) as f16, to g->d and g->m.
    static SL_FORCE_INLINE void scales(const __m512i z[DW], Group * g) {
        const __m512i dm = pick<0>(z);
        g->d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        g->m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
    }
};

// Adds 16 to the codes whose fifth bit is set: lane j of qh holds block j's 32 fifth bits (bit i
// for value i). Vector c holds values 4c .. 4c + 3 of block j in bytes 4j .. 4j + 3; their bits
// are bits 4 (c % 2) .. of qh's byte c / 2, which a byte shuffle copies to those 4 bytes for a
// bit test.
SL_FORCE_INLINE void add_lane_fifth_bits(__m512i qh, Group * g) {
    // Byte 4j' + i of each 128-bit lane (j' = j % 4) takes the lane's byte 4j' (+ c / 2).
    const __m512i spread = _mm512_set4_epi32(0x0C0C0C0C, 0x08080808, 0x04040404, 0x00000000);
    const __m512i sixteen = _mm512_set1_epi8(16);
    for (int c = 0; c < 8; ++c) {
        const __m512i rep = _mm512_shuffle_epi8(qh, _mm512_add_epi8(spread, _mm512_set1_epi8(char(c / 2))));
        const __m512i bits = _mm512_set1_epi32(c % 2 ? int(0x80402010u) : 0x08040201);
        g->w[c] = _mm512_mask_add_epi8(g->w[c], _mm512_test_epi8_mask(rep, bits), g->w[c], sixteen);
    }
}

// Q4_1 (20-byte blocks: d, m as f16, 16 code bytes; 5 dwords) and Q5_1 (24 bytes: d, m, the fifth
// bits, 16 code bytes; 6 dwords): value = d * code + m.
template <int DW>
struct MinBlocks {
    static constexpr int kBytes = 4 * DW, kOffset = 0;
    static constexpr bool kHasMin = true;
    static SL_FORCE_INLINE void load(const uint8_t * b, int n, Group * g) {
        using D = DwordBlocks<DW>;
        __m512i z[DW];
        D::load(b, n, z);
        D::scales(z, g);
        D::template nibbles<DW - 4>(z, g);
        if constexpr (DW == 6) add_lane_fifth_bits(D::template pick<1>(z), g);
    }
};
template <>
struct LaneBlocks<QType::Q4_1> : MinBlocks<5> {};
template <>
struct LaneBlocks<QType::Q5_1> : MinBlocks<6> {};

// The f16 scales at the start of n <= 16 blocks of BYTES bytes, as floats in lanes 0..n-1 (zero
// past n), inserted word by word (streams from memory faster than picking them out of 64-byte
// loads by word permutes).
template <int BYTES>
SL_FORCE_INLINE __m512 block_scales(const uint8_t * b, int n) {
    auto d16 = [&](int j) {
        uint16_t h = 0;
        if (j < n) memcpy(&h, b + BYTES * j, 2);
        return int(h);
    };
    __m128i lo = _mm_cvtsi32_si128(d16(0)), hi = _mm_cvtsi32_si128(d16(8));
    lo = _mm_insert_epi16(lo, d16(1), 1);
    hi = _mm_insert_epi16(hi, d16(9), 1);
    lo = _mm_insert_epi16(lo, d16(2), 2);
    hi = _mm_insert_epi16(hi, d16(10), 2);
    lo = _mm_insert_epi16(lo, d16(3), 3);
    hi = _mm_insert_epi16(hi, d16(11), 3);
    lo = _mm_insert_epi16(lo, d16(4), 4);
    hi = _mm_insert_epi16(hi, d16(12), 4);
    lo = _mm_insert_epi16(lo, d16(5), 5);
    hi = _mm_insert_epi16(hi, d16(13), 5);
    lo = _mm_insert_epi16(lo, d16(6), 6);
    hi = _mm_insert_epi16(hi, d16(14), 6);
    lo = _mm_insert_epi16(lo, d16(7), 7);
    hi = _mm_insert_epi16(hi, d16(15), 7);
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

// The 16 code bytes at offset QS of n <= 16 blocks of BYTES bytes (low nibbles values 0..15,
// high nibbles 16..31) into g->w. Each block's bytes go to a 128-bit lane (block 4k + L: vector
// k, lane L); the 4x4 dword transpose then leaves dword c of block 4k + L in lane 4L + k, and
// lane_order puts it in lane 4k + L.
template <int BYTES, int QS>
SL_FORCE_INLINE void nibble_codes(const uint8_t * b, int n, Group * g) {
    auto ld = [&](int j) {
        if (j >= n) return _mm_setzero_si128();
        return _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + BYTES * j + QS));
    };
    __m512i v[4];
    for (int k = 0; k < 4; ++k) {
        const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(4 * k)), ld(4 * k + 1), 1);
        const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(4 * k + 2)), ld(4 * k + 3), 1);
        v[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    transpose4(v);
    const __m512i order = lane_order();
    const __m512i m4 = _mm512_set1_epi8(15);
    for (int c = 0; c < 4; ++c) {
        const __m512i q = _mm512_permutexvar_epi32(order, v[c]);
        g->w[c] = _mm512_and_si512(q, m4);
        g->w[4 + c] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    }
}

template <>
struct LaneBlocks<QType::Q4_0> {
    static constexpr int kBytes = 18, kOffset = 8;
    static constexpr bool kHasMin = false;
    static SL_FORCE_INLINE void load(const uint8_t * b, int n, Group * g) {
        nibble_codes<kBytes, 2>(b, n, g);
        g->d = block_scales<kBytes>(b, n);
    }
};

// IQ4_NL: Q4_0's layout, each nibble a non-linear level (code = level + 128).
template <>
struct LaneBlocks<QType::IQ4_NL> {
    static constexpr int kBytes = 18, kOffset = 128;
    static constexpr bool kHasMin = false;
    static SL_FORCE_INLINE void load(const uint8_t * b, int n, Group * g) {
        nibble_codes<kBytes, 2>(b, n, g);
        for (int c = 0; c < 8; ++c) g->w[c] = table_levels(kvalues_iq4nl, g->w[c]);
        g->d = block_scales<kBytes>(b, n);
    }
};

// The E8M0 scales at the start of n <= 16 blocks of BYTES bytes as floats 2^(e - 128) in lanes
// 0..n-1 (zero past n), inserted byte by byte as block_scales does.
template <int BYTES>
SL_FORCE_INLINE __m512 block_e8m0_scales(const uint8_t * b, int n) {
    auto e = [&](int j) { return j < n ? int(b[BYTES * j]) : 0; };
    __m128i lo = _mm_cvtsi32_si128(e(0)), hi = _mm_cvtsi32_si128(e(8));
    lo = _mm_insert_epi8(lo, e(1), 1);
    hi = _mm_insert_epi8(hi, e(9), 1);
    lo = _mm_insert_epi8(lo, e(2), 2);
    hi = _mm_insert_epi8(hi, e(10), 2);
    lo = _mm_insert_epi8(lo, e(3), 3);
    hi = _mm_insert_epi8(hi, e(11), 3);
    lo = _mm_insert_epi8(lo, e(4), 4);
    hi = _mm_insert_epi8(hi, e(12), 4);
    lo = _mm_insert_epi8(lo, e(5), 5);
    hi = _mm_insert_epi8(hi, e(13), 5);
    lo = _mm_insert_epi8(lo, e(6), 6);
    hi = _mm_insert_epi8(hi, e(14), 6);
    lo = _mm_insert_epi8(lo, e(7), 7);
    hi = _mm_insert_epi8(hi, e(15), 7);
    const __m512 d = e8m0_half(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(lo, hi)));
    return _mm512_maskz_mov_ps(n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1), d);
}

// MXFP4: IQ4_NL's layout with a one-byte E8M0 scale (17-byte blocks), each nibble an E2M1
// level (code = level + 128).
template <>
struct LaneBlocks<QType::MXFP4> {
    static constexpr int kBytes = 17, kOffset = 128;
    static constexpr bool kHasMin = false;
    static SL_FORCE_INLINE void load(const uint8_t * b, int n, Group * g) {
        nibble_codes<kBytes, 1>(b, n, g);
        for (int c = 0; c < 8; ++c) g->w[c] = table_levels(kvalues_mxfp4, g->w[c]);
        g->d = block_e8m0_scales<kBytes>(b, n);
    }
};

// Q8_0: 34-byte blocks (d as f16, 32 int8 codes). The codes of blocks j and j + 8 go to the
// halves of one zmm; an 8x8 dword transpose within 256-bit halves puts dword g of block j in
// lane j of vector g. Codes are made unsigned (+128; the offset goes to the activation sums).
template <>
struct LaneBlocks<QType::Q8_0> {
    static constexpr int kBytes = 34, kOffset = 128;
    static constexpr bool kHasMin = false;
    static SL_FORCE_INLINE void load(const uint8_t * b, int n, Group * g) {
        auto ld = [&](int j) {
            if (j >= n) return _mm256_setzero_si256();
            return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b + kBytes * j + 2));
        };
        __m512i v[8];
        for (int p = 0; p < 8; ++p) v[p] = _mm512_inserti64x4(_mm512_castsi256_si512(ld(p)), ld(p + 8), 1);
        transpose4(v);
        transpose4(v + 4);
        // v[4j + r], 128-bit lane (half h, c) = dword 4c + r of blocks 4j..4j+3 (+ 8h).
        const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
        const __m512i hi_idx = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
        const __m512i flip = _mm512_set1_epi8(-128);
        for (int r = 0; r < 4; ++r) {
            g->w[r] = _mm512_xor_si512(_mm512_permutex2var_epi64(v[r], lo_idx, v[4 + r]), flip);
            g->w[4 + r] = _mm512_xor_si512(_mm512_permutex2var_epi64(v[r], hi_idx, v[4 + r]), flip);
        }
        g->d = block_scales<kBytes>(b, n);
    }
};

// acc + the dot products of a group with one token's activation group `a`. The integer sums
// are exact, so the number of chains (for latency) does not change the result.
template <QType WT, int CHAINS>
SL_FORCE_INLINE __m512 group_dot(const Group & g, const uint8_t * a, __m512 acc) {
    using B = LaneBlocks<WT>;
    __m512i s[CHAINS];
    for (int c = 0; c < CHAINS; ++c) s[c] = _mm512_setzero_si512();
    if constexpr (B::kOffset != 0) s[0] = _mm512_load_si512(a + kC);
    for (int i = 0; i < 8; ++i)
        s[i % CHAINS] = _mm512_dpbusd_epi32(s[i % CHAINS], g.w[i], _mm512_load_si512(a + kQ + 64 * i));
    for (int w = CHAINS / 2; w >= 1; w /= 2)
        for (int c = 0; c < w; ++c) s[c] = _mm512_add_epi32(s[c], s[c + w]);
    if constexpr (B::kHasMin) acc = _mm512_fmadd_ps(g.m, _mm512_load_ps(a + kS), acc);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0]), _mm512_mul_ps(g.d, _mm512_load_ps(a + kD)), acc);
}

// Integer chains per token: two where few tokens give little other work to overlap (measured).
template <int NT>
constexpr int chains() {
    return NT <= 2 ? 2 : 1;
}

// From kPrefetchFrom tokens on, a row's weights are prefetched kPrefetchRows rows ahead
// (measured on Zen 4: the hardware prefetcher alone leaves the slow many-token passes waiting
// on memory, while passes of fewer tokens stream faster without).
constexpr int kPrefetchFrom = 5, kPrefetchRows = 8;

// One row times NT tokens over the row's own groups: out[t] = vector whose lanes sum to the dot
// product (the shared tail excluded).
template <QType WT, int NT>
SL_FORCE_INLINE void own_groups(const uint8_t * row, size_t ldw, const Split & sp, const uint8_t * lanes, size_t ldl,
                       __m512 out[NT]) {
    using B = LaneBlocks<WT>;
    for (int t = 0; t < NT; ++t) out[t] = _mm512_setzero_ps();
    const int ng = sp.shared() ? sp.full : sp.groups();
    for (int G = 0; G < ng; ++G, lanes += kGroupBytes) {
        const uint8_t * b = row + G * kGroup * B::kBytes;
        if (NT >= kPrefetchFrom)
            for (int o = 0; o < kGroup * B::kBytes; o += 64)
                _mm_prefetch(reinterpret_cast<const char *>(b + o + kPrefetchRows * ldw), _MM_HINT_T0);
        Group g;
        B::load(b, G < sp.full ? kGroup : sp.tail, &g);
        for (int t = 0; t < NT; ++t) out[t] = group_dot<WT, chains<NT>()>(g, lanes + t * ldl, out[t]);
    }
}

// The shared tails of a block of nr <= 16 rows, side by side in up to 4 groups of `per`
// rows (group G at buf + G * kTailBuf). They are copied after the block's rows (their bytes
// are in cache by then), by loads of exactly a tail's bytes (each row's store runs past its
// tail and is overwritten by the next row's), and read back a block later: a wide load right
// after narrower stores to the same bytes would wait for them.
constexpr int kTailBuf = kGroup * kMaxBlockBytes + 64;

template <class B>
inline void copy_tails(const uint8_t * W, size_t ldw, const Split & sp, int nr, uint8_t * buf) {
    const uint8_t * p = W + sp.full * kGroup * B::kBytes;
    const int n = sp.tail * B::kBytes;
    for (int G = 0, i = 0; i < nr; ++G)
        for (int r = 0; r < sp.per && i < nr; ++r, ++i) {
            uint8_t * dst = buf + G * kTailBuf + r * n;
            for (int o = 0; o < n; o += 64) {
                const __mmask64 m = n - o >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - o)) - 1;
                _mm512_storeu_si512(dst + o, _mm512_maskz_loadu_epi8(m, p + i * ldw + o));
            }
        }
}

// The shared tails of nr <= 16 rows (copied to buf) for NT tokens: out[t] lane i = row i's tail
// dot product.
template <QType WT, int NT>
SL_FORCE_INLINE void shared_tails(const uint8_t * buf, const Split & sp, int nr, const uint8_t * lanes, size_t ldl,
                         __m512 out[NT]) {
    using B = LaneBlocks<WT>;
    const int per = sp.per, n_sg = sp.n_sg;
    const uint8_t * a = lanes + sp.full * kGroupBytes;
    __m512 part[NT][4];
#pragma GCC unroll 4
    for (int G = 0; G < 4; ++G) {
        const int rows = imax(0, imin(per, nr - G * per));
        if (G >= n_sg || rows == 0) {
            for (int t = 0; t < NT; ++t) part[t][G] = _mm512_setzero_ps();
            continue;
        }
        Group g;
        B::load(buf + G * kTailBuf, rows * sp.tail, &g);
        for (int t = 0; t < NT; ++t) part[t][G] = group_dot<WT, chains<NT>()>(g, a + t * ldl, _mm512_setzero_ps());
    }
    // Row i's lanes: (i / per) * 16 + (i % per) * tail + b of the (up to 4) shared groups, summed
    // in order of b.
    const __m512i base = _mm512_load_si512(sp.at);
    const __mmask16 hi = _mm512_cmpge_epi32_mask(base, _mm512_set1_epi32(32));
    for (int t = 0; t < NT; ++t) {
        __m512 sum = _mm512_setzero_ps();
        for (int b = 0; b < sp.tail; ++b) {
            const __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32(b));
            __m512 v = _mm512_permutex2var_ps(part[t][0], idx, part[t][1]);
            if (n_sg > 2) v = _mm512_mask_blend_ps(hi, v, _mm512_permutex2var_ps(part[t][2], idx, part[t][3]));
            sum = b == 0 ? v : _mm512_add_ps(sum, v);
        }
        out[t] = sum;
    }
}

// The sums of r0..r3's lanes per 128-bit lane, in hsum16's order: lane 4c + t holds
// (a[4c] + a[4c + 2]) + (a[4c + 1] + a[4c + 3]) of a = r_t.
SL_FORCE_INLINE __m512 chunk_sums(__m512 r0, __m512 r1, __m512 r2, __m512 r3) {
    const __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(r0, r1), _mm512_unpackhi_ps(r0, r1));
    const __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(r2, r3), _mm512_unpackhi_ps(r2, r3));
    const __m512d p = _mm512_castps_pd(x01), q = _mm512_castps_pd(x23);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
}

// 128-bit lanes added in pairs: [a0 + a1, a2 + a3, b0 + b1, b2 + b3] (hsum16's last two levels).
SL_FORCE_INLINE __m512 lane_pairs(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}

// Per 128-bit lane, the 4x4 transpose of floats: out[g] lane k = in[k] lane g.
SL_FORCE_INLINE void transpose4(__m512 v[4]) { transpose4(reinterpret_cast<__m512i *>(v)); }

// ---- the lane sums of 16 rows x NT tokens, fed a row at a time (row i = 4q + J) ----
// Every (row, token) vector is summed in hsum16's order, whatever NT: chunk_sums, then two
// levels of lane_pairs. No row's vectors are stored as soon as they are computed: a store
// still waiting for its data holds up the later loads that alias it modulo 4 KiB (measured:
// passes up to 1.5x slower, depending on where the stack and the scratch fall). Partial sums
// stay in registers, or are stored a step late. finish() gives out[t] lane i = row i's sum.

// One token: 4 rows to a chunk_sums (lane 4c + J: row 4q + J), everything in registers.
struct RowSums1 {
    __m512 a0, a1, a2, ya, wa, res;
    SL_FORCE_INLINE void push(int i, const __m512 r[1]) {
        const int q = i / 4, J = i % 4;
        if (J == 0) a0 = r[0];
        if (J == 1) a1 = r[0];
        if (J == 2) a2 = r[0];
        if (J == 3) {
            const __m512 y = chunk_sums(a0, a1, a2, r[0]);
            if (q % 2 == 0) {
                ya = y;
            } else if (q == 1) {
                wa = lane_pairs(ya, y);
            } else {
                res = lane_pairs(wa, lane_pairs(ya, y));
            }
        }
    }
    SL_FORCE_INLINE void finish(__m512 out[1]) { out[0] = res; }
};

// Two tokens: 2 rows to a chunk_sums (lane 4c + 2h + t: row 2u + h), rows 0..7 then 8..15 in
// one vector each (lane 4k + 2h + t: row 8s + 2k + h).
struct RowSums2 {
    __m512 a0, a1, ya, wa, v0, v1;
    SL_FORCE_INLINE void push(int i, const __m512 r[2]) {
        const int q = i / 4, J = i % 4;
        if (J % 2 == 0) {
            a0 = r[0];
            a1 = r[1];
            return;
        }
        const __m512 y = chunk_sums(a0, a1, r[0], r[1]);
        if (J == 1) {
            ya = y;
        } else {
            const __m512 w = lane_pairs(ya, y);
            if (q % 2 == 0)
                wa = w;
            else if (q == 1)
                v0 = lane_pairs(wa, w);
            else
                v1 = lane_pairs(wa, w);
        }
    }
    SL_FORCE_INLINE void finish(__m512 out[2]) {
        alignas(64) int32_t idx[16];
        for (int t = 0; t < 2; ++t) {
            for (int i = 0; i < 16; ++i) idx[i] = 16 * (i / 8) + 4 * ((i % 8) / 2) + 2 * (i % 2) + t;
            out[t] = _mm512_permutex2var_ps(v0, _mm512_load_si512(idx), v1);
        }
    }
};

// Three or four tokens: one chunk_sums per row (lane 4c + t), one vector per 4 rows (lane
// 4J + t: row 4q + J), stored a quad late.
template <int NT>
struct RowSums4 {
    __m512 v[4];
    __m512 ya, wa, held;
    SL_FORCE_INLINE void push(int i, const __m512 r[NT]) {
        const int q = i / 4, J = i % 4;
        const __m512 y = chunk_sums(r[0], r[1], r[2], NT > 3 ? r[3] : _mm512_setzero_ps());
        if (J % 2 == 0) {
            ya = y;
        } else if (J == 1) {
            wa = lane_pairs(ya, y);
        } else {
            if (q > 0) v[q - 1] = held;
            held = lane_pairs(wa, lane_pairs(ya, y));
        }
    }
    SL_FORCE_INLINE void finish(__m512 out[NT]) {
        v[3] = held;
        transpose4(v);
        const __m512i order = lane_order();
        for (int t = 0; t < NT; ++t) out[t] = _mm512_permutexvar_ps(order, v[t]);
    }
};

// Five to eight tokens: two chunk_sums per row, one vector per 2 rows (lane 8h + 4g + t: row
// 2k + h, token 4g + t), stored a pair late.
template <int NT>
struct RowSums8 {
    __m512 v[8];
    __m512 half, held;
    SL_FORCE_INLINE void push(int i, const __m512 r[NT]) {
        const __m512 z = _mm512_setzero_ps();
        const __m512 w = lane_pairs(chunk_sums(r[0], r[1], r[2], r[3]),
                                    chunk_sums(r[4], NT > 5 ? r[5] : z, NT > 6 ? r[6] : z, NT > 7 ? r[7] : z));
        if (i % 2 == 0) {
            half = w;
        } else {
            const int k = i / 2;
            if (k > 0) v[k - 1] = held;
            held = lane_pairs(half, w);
        }
    }
    SL_FORCE_INLINE void finish(__m512 out[NT]) {
        v[7] = held;
        __m512 a[4] = {v[0], v[1], v[2], v[3]}, b[4] = {v[4], v[5], v[6], v[7]};
        transpose4(a);
        transpose4(b);
        alignas(64) int32_t idx[2][16];
        for (int g = 0; g < 2; ++g)
            for (int i = 0; i < 16; ++i) idx[g][i] = 16 * (i / 8) + 4 * (2 * (i % 2) + g) + (i % 8) / 2;
        for (int t = 0; t < NT; ++t)
            out[t] = _mm512_permutex2var_ps(a[t % 4], _mm512_load_si512(idx[t / 4]), b[t % 4]);
    }
};

template <int NT>
using RowSums = std::conditional_t<NT == 1, RowSums1, std::conditional_t<NT == 2, RowSums2,
                                   std::conditional_t<(NT <= 4), RowSums4<NT>, RowSums8<NT>>>>;

// Rows in blocks of 16 so that their final sums are one transposing reduction.
template <QType WT, int NT>
void lanes_rows(const uint8_t * W, size_t ldw, const Split & sp, int64_t n_rows, const uint8_t * lanes, size_t ldl,
                float * y, int64_t ldy) {
    // The shared tails of a block are added to its results one block later (see copy_tails).
    alignas(64) uint8_t buf[2][4 * kTailBuf];
    auto add_tails = [&](int64_t r0, int nr, const uint8_t * b) {
        __m512 tails[NT];
        shared_tails<WT, NT>(b, sp, nr, lanes, ldl, tails);
        const __mmask16 m = __mmask16((1u << nr) - 1);
        for (int t = 0; t < NT; ++t) {
            float * yt = y + t * ldy + r0;
            _mm512_mask_storeu_ps(yt, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, yt), tails[t]));
        }
    };
    for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
        const int nr = int(imin<int64_t>(16, n_rows - r0));
        const uint8_t * w = W + r0 * ldw;
        RowSums<NT> rs;
        for (int i = 0; i < 16; ++i) {
            __m512 cur[NT];
            if (i < nr)
                own_groups<WT, NT>(w + i * ldw, ldw, sp, lanes, ldl, cur);
            else
                for (int t = 0; t < NT; ++t) cur[t] = _mm512_setzero_ps();
            rs.push(i, cur);
        }
        __m512 sums[NT];
        rs.finish(sums);
        const __mmask16 m = __mmask16((1u << nr) - 1);
        for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy + r0, m, sums[t]);
        if (sp.shared()) {
            const int k = int(r0 / 16) % 2;
            copy_tails<LaneBlocks<WT>>(w, ldw, sp, nr, buf[k]);
            if (r0 > 0) add_tails(r0 - 16, 16, buf[1 - k]);
        }
    }
    if (sp.shared() && n_rows > 0) {
        const int64_t r0 = (n_rows - 1) / 16 * 16;
        add_tails(r0, int(n_rows - r0), buf[int(r0 / 16) % 2]);
    }
}

constexpr int kMaxTok = 8;  // tokens per pass over the rows

template <QType WT>
void gemv_lanes(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy) {
    const Split sp(K);
    const size_t ldl = size_t(sp.groups()) * kGroupBytes;
    uint8_t * lanes = scratch(0, ldl * size_t(n_tok));
    for (int64_t t = 0; t < n_tok; ++t)
        acts_to_lanes<LaneBlocks<WT>::kOffset, LaneBlocks<WT>::kHasMin>(acts + t * lda, K, sp, lanes + t * ldl);
    const int64_t rb = n_tok > kMaxTok ? kRowBlock : n_rows;
    for (int64_t r0 = 0; r0 < n_rows; r0 += rb) {
        const int64_t nr = imin(rb, n_rows - r0);
        const uint8_t * w = W + r0 * ldw;
        for (int64_t t = 0; t < n_tok; t += kMaxTok) {
            const uint8_t * l = lanes + t * ldl;
            float * yt = y + t * ldy + r0;
            switch (imin<int64_t>(kMaxTok, n_tok - t)) {
                case 1: lanes_rows<WT, 1>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                case 2: lanes_rows<WT, 2>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                case 3: lanes_rows<WT, 3>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                case 4: lanes_rows<WT, 4>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                case 5: lanes_rows<WT, 5>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                case 6: lanes_rows<WT, 6>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                case 7: lanes_rows<WT, 7>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
                default: lanes_rows<WT, 8>(w, ldw, sp, nr, l, ldl, yt, ldy); break;
            }
        }
    }
}

}  // namespace

GemmFn lanes_kernel(QType wt) {
    switch (wt) {
        case QType::Q4_0: return gemv_lanes<QType::Q4_0>;
        case QType::Q4_1: return gemv_lanes<QType::Q4_1>;
        case QType::Q5_1: return gemv_lanes<QType::Q5_1>;
        case QType::Q8_0: return gemv_lanes<QType::Q8_0>;
        case QType::IQ4_NL: return gemv_lanes<QType::IQ4_NL>;
        case QType::MXFP4: return gemv_lanes<QType::MXFP4>;
        default: return nullptr;
    }
}

}  // namespace sl::cpu::impl::avx512
