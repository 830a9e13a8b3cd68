// Reading the GGUF weight blocks on the GPU, one group of 16 values at a time. Portable: the
// same code compiles for the device (with vector loads and SIMD byte intrinsics) and for the
// host, where tests check it against the reference dequantizers without a GPU.
//
// Every block-quantized weight type is read as groups of 16 consecutive values, each an int8
// code per value and one affine map, value = d * q + m (m = 0 for the symmetric types, whose
// codes are centred: Q4_0 q - 8, Q5_0 q - 16, Q3_K q - 4, Q6_K q - 32, Q8_0 as stored, the
// i-quants the signed grid or kvalues_iq4nl values, MXFP4 kvalues_mxfp4; IQ1_S / IQ1_M 8 g + 8
// delta with d / 8; TQ1_0 / TQ2_0 trit - 1). The mat-vec kernels dot the codes with int8
// activations (dp4a); the GEMM turns them into halves.
//
// Alignment: rows start 16-byte aligned (device allocations are; row sizes of the k-quants
// Q4_K/Q5_K are multiples of 16). Legacy blocks (18..34 bytes) are read with 2- or 4-byte loads,
// the i-quants (18..136 bytes) with 1-, 2- and 4-byte loads at 2-aligned addresses, MXFP4
// (17 bytes) with byte loads, TQ2_0 (66) with 2-byte loads, TQ1_0 (54) with byte loads; the
// i-quants' tables come from quant/iq_grids.h (device memory in device code).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "common/fp16.h"
#include "quant/iq_grids.h"
#include "quant/iquants.h"
#include "quant/kquants.h"
#include "quant/legacy.h"
#include "quant/mxfp4.h"
#include "quant/qtype.h"
#include "quant/ternary.h"

namespace sl::cuda {

// 16 weights: codes q (value 4i + b in byte b of q[i], as int8) and value = d * q + m.
struct Group16 {
    int q[4];
    float d;
    float m;
};

// ---- loads ----

SL_HD float h2f(const uint8_t * p) {  // an f16 at a 2-aligned address
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short *>(p)));
#else
    uint16_t h;
    memcpy(&h, p, 2);
    return fp16_to_fp32(h);
#endif
}

SL_HD float h2f_bits(uint16_t h) {  // an f16 given by its bits
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h));
#else
    return fp16_to_fp32(h);
#endif
}

SL_HD uint32_t ld4_a2(const uint8_t * p) {  // 4 bytes at a 2-aligned address
#if defined(__CUDA_ARCH__)
    const unsigned short * h = reinterpret_cast<const unsigned short *>(p);
    return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
#else
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#endif
}

SL_HD uint32_t ld4_a4(const uint8_t * p) {
#if defined(__CUDA_ARCH__)
    return *reinterpret_cast<const uint32_t *>(p);
#else
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#endif
}

SL_HD void ld16_a2(const uint8_t * p, uint32_t v[4]) {
    for (int i = 0; i < 4; ++i) v[i] = ld4_a2(p + 4 * i);
}

SL_HD void ld16_a4(const uint8_t * p, uint32_t v[4]) {
    for (int i = 0; i < 4; ++i) v[i] = ld4_a4(p + 4 * i);
}

SL_HD void ld16_a16(const uint8_t * p, uint32_t v[4]) {
#if defined(__CUDA_ARCH__)
    const uint4 x = *reinterpret_cast<const uint4 *>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
#else
    memcpy(v, p, 16);
#endif
}

// Bytewise x - c (each byte wraps), which turns unsigned codes into centred int8 codes.
SL_HD uint32_t sub_bytes(uint32_t x, uint32_t c) {
#if defined(__CUDA_ARCH__)
    return __vsub4(x, c);
#else
    uint32_t r = 0;
    for (int b = 0; b < 32; b += 8) r |= (((x >> b) - (c >> b)) & 0xFFu) << b;
    return r;
#endif
}

// sum over the 4 bytes of a * b (signed int8 each) + c.
SL_HD int dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__)
    return __dp4a(a, b, c);
#else
    for (int s = 0; s < 32; s += 8) c += int(int8_t(uint32_t(a) >> s)) * int(int8_t(uint32_t(b) >> s));
    return c;
#endif
}

// Bits 0..3 of x to bit 0 of bytes 0..3.
SL_HD uint32_t spread4(uint32_t x) { return (x & 1u) | ((x & 2u) << 7) | ((x & 4u) << 14) | ((x & 8u) << 21); }

// ---- one reader per weight type: Blk<T>::group(row, g) reads values [16g, 16g + 16) ----

template <QType T>
struct Blk;

template <>
struct Blk<QType::Q4_0> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_q4_0);
        uint32_t v[4];
        ld16_a2(b + 2, v);
        const int sh = (g & 1) * 4;
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int(sub_bytes((v[i] >> sh) & 0x0F0F0F0Fu, 0x08080808u));
        r.d = h2f(b);
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::Q4_1> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_q4_1);
        uint32_t v[4];
        ld16_a4(b + 4, v);
        const int sh = (g & 1) * 4;
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int((v[i] >> sh) & 0x0F0F0F0Fu);
        r.d = h2f(b);
        r.m = h2f(b + 2);
        return r;
    }
};

template <>
struct Blk<QType::Q5_0> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_q5_0);
        uint32_t v[4];
        ld16_a2(b + 6, v);
        const uint32_t qh = ld4_a2(b + 2) >> ((g & 1) * 16);
        const int sh = (g & 1) * 4;
        Group16 r;
        for (int i = 0; i < 4; ++i) {
            const uint32_t code = ((v[i] >> sh) & 0x0F0F0F0Fu) | (spread4(qh >> (4 * i)) << 4);
            r.q[i] = int(sub_bytes(code, 0x10101010u));
        }
        r.d = h2f(b);
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::Q5_1> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_q5_1);
        uint32_t v[4];
        ld16_a4(b + 8, v);
        const uint32_t qh = ld4_a4(b + 4) >> ((g & 1) * 16);
        const int sh = (g & 1) * 4;
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int(((v[i] >> sh) & 0x0F0F0F0Fu) | (spread4(qh >> (4 * i)) << 4));
        r.d = h2f(b);
        r.m = h2f(b + 2);
        return r;
    }
};

template <>
struct Blk<QType::Q8_0> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_q8_0);
        uint32_t v[4];
        ld16_a2(b + 2 + (g & 1) * 16, v);
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int(v[i]);
        r.d = h2f(b);
        r.m = 0.0f;
        return r;
    }
};

// Position of group gi (0..15) of a 256-value super-block in the 2-bit-plane layouts (Q2_K, Q3_K,
// Q6_K): half n of 128 values, 32-value plane j, first byte l0 of the 32-byte run.
struct KPlane {
    int n, j, l0;
    SL_HD explicit KPlane(int gi) : n(gi >> 3), j((gi >> 1) & 3), l0((gi & 1) * 16) {}
};

template <>
struct Blk<QType::Q2_K> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_q2_K);
        const int gi = g & 15;
        const KPlane p(gi);
        uint32_t v[4];
        ld16_a4(b + 16 + p.n * 32 + p.l0, v);
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int((v[i] >> (2 * p.j)) & 0x03030303u);
        const int sc = b[gi];
        r.d = h2f(b + 80) * float(sc & 15);
        r.m = -h2f(b + 82) * float(sc >> 4);
        return r;
    }
};

template <>
struct Blk<QType::Q3_K> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_q3_K);
        const int gi = g & 15;
        const KPlane p(gi);
        uint32_t v[4], hm[4];
        ld16_a2(b + 32 + p.n * 32 + p.l0, v);
        ld16_a2(b + p.l0, hm);
        Group16 r;
        for (int i = 0; i < 4; ++i) {
            const uint32_t lo = (v[i] >> (2 * p.j)) & 0x03030303u;
            const uint32_t hi = (hm[i] >> (4 * p.n + p.j)) & 0x01010101u;
            r.q[i] = int(sub_bytes(lo | (hi << 2), 0x04040404u));
        }
        const uint8_t * s = b + 96;
        const int lo4 = gi < 8 ? s[gi] & 15 : s[gi - 8] >> 4;
        const int hi2 = (s[8 + (gi & 3)] >> (2 * (gi >> 2))) & 3;
        r.d = h2f(b + 108) * float((lo4 | (hi2 << 4)) - 32);
        r.m = 0.0f;
        return r;
    }
};

// Q4_K / Q5_K 6-bit scale and min of 32-value sub-block j.
SL_HD void k4_scale_min(const uint8_t * s, int j, int * sc, int * mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

template <>
struct Blk<QType::Q4_K> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_q4_K);
        const int gi = g & 15, c = gi >> 2, h = (gi >> 1) & 1;
        uint32_t v[4];
        ld16_a16(b + 16 + c * 32 + (gi & 1) * 16, v);
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int((v[i] >> (4 * h)) & 0x0F0F0F0Fu);
        int sc, mn;
        k4_scale_min(b + 4, gi >> 1, &sc, &mn);
        r.d = h2f(b) * float(sc);
        r.m = -h2f(b + 2) * float(mn);
        return r;
    }
};

template <>
struct Blk<QType::Q5_K> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_q5_K);
        const int gi = g & 15, c = gi >> 2, h = (gi >> 1) & 1;
        uint32_t v[4], hv[4];
        ld16_a16(b + 48 + c * 32 + (gi & 1) * 16, v);
        ld16_a16(b + 16 + (gi & 1) * 16, hv);
        Group16 r;
        for (int i = 0; i < 4; ++i)
            r.q[i] = int(((v[i] >> (4 * h)) & 0x0F0F0F0Fu) | (((hv[i] >> (2 * c + h)) & 0x01010101u) << 4));
        int sc, mn;
        k4_scale_min(b + 4, gi >> 1, &sc, &mn);
        r.d = h2f(b) * float(sc);
        r.m = -h2f(b + 2) * float(mn);
        return r;
    }
};

template <>
struct Blk<QType::Q6_K> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_q6_K);
        const int gi = g & 15;
        const KPlane p(gi);
        uint32_t lv[4], hv[4];
        ld16_a2(b + p.n * 64 + 32 * (p.j & 1) + p.l0, lv);
        ld16_a2(b + 128 + p.n * 32 + p.l0, hv);
        Group16 r;
        for (int i = 0; i < 4; ++i) {
            const uint32_t lo = (lv[i] >> (4 * (p.j >> 1))) & 0x0F0F0F0Fu;
            const uint32_t hi = (hv[i] >> (2 * p.j)) & 0x03030303u;
            r.q[i] = int(sub_bytes(lo | (hi << 4), 0x20202020u));
        }
        r.d = h2f(b + 208) * float(int8_t(b[192 + gi]));
        r.m = 0.0f;
        return r;
    }
};

// ---- i-quants: codes are the signed values themselves (IQ1: 8 g + 8 delta, d = dl / 8), m = 0 ----

SL_HD uint32_t ld2_a2(const uint8_t * p) {  // a u16 at a 2-aligned address
#if defined(__CUDA_ARCH__)
    return *reinterpret_cast<const unsigned short *>(p);
#else
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
#endif
}

// n / 4 words of codes from the n (8 or 4) bytes of a grid entry, byte j negated where bit j of
// signs is set.
SL_HD void grid_codes(uint64_t entry, int n, uint32_t signs, int * q) {
    for (int w = 0; w < n / 4; ++w) {
        uint32_t r = 0;
        for (int b = 0; b < 4; ++b) {
            const int v = int((entry >> (32 * w + 8 * b)) & 0xFF);
            r |= uint32_t(((signs >> (4 * w + b)) & 1 ? -v : v) & 0xFF) << (8 * b);
        }
        q[w] = int(r);
    }
}

// IQ1 codes 8 g + 8 delta of the 8 int8 values of a grid entry (delta = -1/8 where neg).
SL_HD void iq1_codes(uint64_t entry, bool neg, int * q) {
    for (int w = 0; w < 2; ++w) {
        uint32_t r = 0;
        for (int b = 0; b < 4; ++b) {
            const int g = int(int8_t(uint8_t(entry >> (32 * w + 8 * b))));
            r |= uint32_t((8 * g + (neg ? -1 : 1)) & 0xFF) << (8 * b);
        }
        q[w] = int(r);
    }
}

// Group g = values 16 g.. of a 256-value super-block row: block ib (of 32), half h, and
// the super-block's first byte.
struct IqGroup {
    const uint8_t * b;
    int gi, ib, h;
    SL_HD IqGroup(const uint8_t * row, int g, int bytes) : b(row + (g >> 4) * bytes), gi(g & 15), ib(gi >> 1), h(g & 1) {}
};

template <>
struct Blk<QType::IQ2_XXS> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq2_xxs));
        const uint32_t a0 = ld4_a2(p.b + 2 + 8 * p.ib), a1 = ld4_a2(p.b + 6 + 8 * p.ib);
        Group16 r;
        for (int k = 0; k < 2; ++k) {
            const int l = 2 * p.h + k;
            grid_codes(SL_IQ_TABLE(iq2xxs_grid)[(a0 >> (8 * l)) & 255], 8, SL_IQ_TABLE(ksigns_iq2xs)[(a1 >> (7 * l)) & 127],
                       r.q + 2 * k);
        }
        r.d = h2f(p.b) * (0.5f + float(a1 >> 28)) * 0.25f;
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ2_XS> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq2_xs));
        Group16 r;
        for (int k = 0; k < 2; ++k) {
            const uint32_t q = ld2_a2(p.b + 2 + 8 * p.ib + 4 * p.h + 2 * k);  // 9-bit index, 7 sign bits
            grid_codes(SL_IQ_TABLE(iq2xs_grid)[q & 511], 8, SL_IQ_TABLE(ksigns_iq2xs)[q >> 9], r.q + 2 * k);
        }
        r.d = h2f(p.b) * (0.5f + float((p.b[66 + p.ib] >> (4 * p.h)) & 15)) * 0.25f;
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ2_S> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq2_s));
        Group16 r;
        for (int k = 0; k < 2; ++k) {
            const int l = 2 * p.h + k;
            const int idx = p.b[2 + 4 * p.ib + l] | (((p.b[66 + p.ib] >> (2 * l)) & 3) << 8);
            grid_codes(SL_IQ_TABLE(iq2s_grid)[idx], 8, p.b[34 + 4 * p.ib + l], r.q + 2 * k);
        }
        r.d = h2f(p.b) * (0.5f + float((p.b[74 + p.ib] >> (4 * p.h)) & 15)) * 0.25f;
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ3_XXS> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq3_xxs));
        const uint32_t aux = ld4_a2(p.b + 66 + 4 * p.ib);  // 4 x 7 sign bits, scale
        Group16 r;
        for (int k = 0; k < 4; ++k) {
            const int e = 4 * p.h + k;  // entry of 4 values; its sign bits: nibble e % 2 of pair e / 2
            const uint32_t s = SL_IQ_TABLE(ksigns_iq2xs)[(aux >> (7 * (e / 2))) & 127] >> (4 * (e % 2));
            grid_codes(SL_IQ_TABLE(iq3xxs_grid)[p.b[2 + 8 * p.ib + e]], 4, s, r.q + k);
        }
        r.d = h2f(p.b) * (0.5f + float(aux >> 28)) * 0.5f;
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ3_S> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq3_s));
        Group16 r;
        for (int k = 0; k < 4; ++k) {
            const int e = 4 * p.h + k;
            const int idx = p.b[2 + 8 * p.ib + e] | (((p.b[66 + p.ib] >> e) & 1) << 8);
            grid_codes(SL_IQ_TABLE(iq3s_grid)[idx], 4, p.b[74 + 4 * p.ib + e / 2] >> (4 * (e % 2)), r.q + k);
        }
        r.d = h2f(p.b) * float(1 + 2 * ((p.b[106 + p.ib / 2] >> (4 * (p.ib % 2))) & 15));
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ1_S> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq1_s));
        const uint32_t qh = ld2_a2(p.b + 34 + 2 * p.ib);  // 4 x 3 index bits, scale, delta sign
        Group16 r;
        for (int k = 0; k < 2; ++k) {
            const int l = 2 * p.h + k;
            iq1_codes(SL_IQ_TABLE(iq1s_grid)[p.b[2 + 4 * p.ib + l] | (((qh >> (3 * l)) & 7) << 8)], qh & 0x8000,
                      r.q + 2 * k);
        }
        r.d = h2f(p.b) * float(2 * ((qh >> 12) & 7) + 1) * 0.125f;
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ1_M> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq1_m));
        uint32_t sc[4];
        for (int i = 0; i < 4; ++i) sc[i] = ld2_a2(p.b + 48 + 2 * i);
        const uint32_t dh = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
        const uint32_t qh = p.b[32 + p.gi];  // entries 2h, 2h + 1 of block ib: a nibble each
        Group16 r;
        for (int k = 0; k < 2; ++k) {
            const uint32_t nib = (qh >> (4 * k)) & 15;
            iq1_codes(SL_IQ_TABLE(iq1s_grid)[p.b[4 * p.ib + 2 * p.h + k] | ((nib & 7) << 8)], nib & 8, r.q + 2 * k);
        }
        const int s = (sc[p.gi / 4] >> (3 * (p.gi % 4))) & 7;
        r.d = h2f_bits(uint16_t(dh)) * float(2 * s + 1) * 0.125f;
        r.m = 0.0f;
        return r;
    }
};

// 16 codes of a 4-bit non-linear type: the nibbles (low: values 0..15, high: 16..31 of the block;
// half h) of 16 bytes as the 16 levels (kvalues_iq4nl, kvalues_mxfp4).
SL_HD void level_codes(const int8_t * levels, const uint8_t * qs, int h, int * q) {
    for (int w = 0; w < 4; ++w) {
        uint32_t r = 0;
        for (int b = 0; b < 4; ++b) r |= uint32_t(uint8_t(levels[(qs[4 * w + b] >> (4 * h)) & 15])) << (8 * b);
        q[w] = int(r);
    }
}

SL_HD void iq4_codes(const uint8_t * qs, int h, int * q) { level_codes(SL_IQ_TABLE(kvalues_iq4nl), qs, h, q); }

template <>
struct Blk<QType::IQ4_NL> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_iq4_nl);
        Group16 r;
        iq4_codes(b + 2, g & 1, r.q);
        r.d = h2f(b);
        r.m = 0.0f;
        return r;
    }
};

template <>
struct Blk<QType::IQ4_XS> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const IqGroup p(row, g, sizeof(block_iq4_xs));
        Group16 r;
        iq4_codes(p.b + 8 + 16 * p.ib, p.h, r.q);
        const int ls = ((p.b[4 + p.ib / 2] >> (4 * (p.ib % 2))) & 15) | (((ld2_a2(p.b + 2) >> (2 * p.ib)) & 3) << 4);
        r.d = h2f(p.b) * float(ls - 32);
        r.m = 0.0f;
        return r;
    }
};

// MXFP4: IQ4_NL's nibbles as kvalues_mxfp4 after a one-byte E8M0 scale, 2^(e - 128) (17-byte
// blocks at any address: byte loads only).
template <>
struct Blk<QType::MXFP4> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 1) * sizeof(block_mxfp4);
        Group16 r;
        level_codes(SL_IQ_TABLE(kvalues_mxfp4), b + 1, g & 1, r.q);
        r.d = e8m0_to_fp32_half(b[0]);
        r.m = 0.0f;
        return r;
    }
};

// ---- ternary: codes trit - 1, one f16 scale per 256 values (quant/ternary.h), m = 0 ----

// TQ2_0: Q2_K's 2-bit planes (qs at 0), the scale at 64.
template <>
struct Blk<QType::TQ2_0> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_tq2_0);
        const KPlane p(g & 15);
        uint32_t v[4];
        ld16_a2(b + p.n * 32 + p.l0, v);
        Group16 r;
        for (int i = 0; i < 4; ++i) r.q[i] = int(sub_bytes((v[i] >> (2 * p.j)) & 0x03030303u, 0x01010101u));
        r.d = h2f(b + 64);
        r.m = 0.0f;
        return r;
    }
};

// TQ1_0: group gi < 10 is trit gi / 2 of qs[16 (gi % 2) ..], gi < 15 trit gi - 10 of qs[32 ..],
// group 15 value 4 n + j trit n of qh[j]. Byte loads (54-byte blocks); the scale at 52.
template <>
struct Blk<QType::TQ1_0> {
    static SL_HD Group16 group(const uint8_t * row, int g) {
        const uint8_t * b = row + (g >> 4) * sizeof(block_tq1_0);
        const int gi = g & 15;
        Group16 r;
        for (int i = 0; i < 4; ++i) {
            uint32_t q = 0;
            for (int k = 0; k < 4; ++k) {
                const int v = 4 * i + k;
                int t;
                if (gi < 10) t = tq1_trit(b[16 * (gi & 1) + v], gi >> 1);
                else if (gi < 15) t = tq1_trit(b[32 + v], gi - 10);
                else t = tq1_trit(b[48 + (v & 3)], v >> 2);
                q |= uint32_t(uint8_t(t - 1)) << (8 * k);
            }
            r.q[i] = int(q);
        }
        r.d = h2f(b + 52);
        r.m = 0.0f;
        return r;
    }
};

// Value i of group w as a float.
SL_HD float group_value(const Group16 & w, int i) {
    return w.d * float(int8_t(uint32_t(w.q[i >> 2]) >> (8 * (i & 3)))) + w.m;
}

// ---- plain number types: value k of a row ----

template <QType T>
SL_HD float float_value(const uint8_t * row, int64_t k) {
    static_assert(T == QType::F32 || T == QType::F16 || T == QType::BF16, "not a float type");
    if constexpr (T == QType::F32) {
#if defined(__CUDA_ARCH__)
        return reinterpret_cast<const float *>(row)[k];
#else
        float f;
        memcpy(&f, row + 4 * k, 4);
        return f;
#endif
    } else if constexpr (T == QType::F16) {
        return h2f(row + 2 * k);
    } else {
        uint16_t h;
#if defined(__CUDA_ARCH__)
        h = reinterpret_cast<const uint16_t *>(row)[k];
#else
        memcpy(&h, row + 2 * k, 2);
#endif
        return bf16_to_fp32(h);
    }
}

// ---- int8 activations for the mat-vec kernels (a GPU-internal layout) ----
// One row per token: int8 qs[K]; float d[K / 32] (block scale max|x| / 127); float s16[K / 16]
// (d times the sum of each 16 codes, for the m term). K is a multiple of 32; rows are padded to
// 16 bytes so that every 16-code group is one aligned 16-byte load.
struct ActQ8 {
    static SL_HD size_t row_bytes(int64_t K) { return (size_t(K) + size_t(K / 32) * 4 + size_t(K / 16) * 4 + 15) / 16 * 16; }
    static SL_HD const float * d(const uint8_t * row, int64_t K) { return reinterpret_cast<const float *>(row + K); }
    static SL_HD const float * s16(const uint8_t * row, int64_t K) { return d(row, K) + K / 32; }
};

// dot(weights of group g, activations of group g) for one activation row.
SL_HD float group_dot(const Group16 & w, const uint8_t * act, int64_t K, int g) {
    uint32_t a[4];
    ld16_a16(act + 16 * g, a);
    int s = 0;
    for (int i = 0; i < 4; ++i) s = dp4a(w.q[i], int(a[i]), s);
    return w.d * (ActQ8::d(act, K)[g >> 1] * float(s)) + w.m * ActQ8::s16(act, K)[g];
}

// ---- one dispatch over the types (host side) ----

template <QType T>
using QTag = std::integral_constant<QType, T>;

SL_HD constexpr bool is_float_type(QType t) { return t == QType::F32 || t == QType::F16 || t == QType::BF16; }

// Calls f(QTag<T>{}) for the weight type t; returns false for a type the kernels do not read.
template <class F>
bool visit_weight_type(QType t, F && f) {
    switch (t) {
        case QType::F32: f(QTag<QType::F32>{}); return true;
        case QType::F16: f(QTag<QType::F16>{}); return true;
        case QType::BF16: f(QTag<QType::BF16>{}); return true;
        case QType::Q4_0: f(QTag<QType::Q4_0>{}); return true;
        case QType::Q4_1: f(QTag<QType::Q4_1>{}); return true;
        case QType::Q5_0: f(QTag<QType::Q5_0>{}); return true;
        case QType::Q5_1: f(QTag<QType::Q5_1>{}); return true;
        case QType::Q8_0: f(QTag<QType::Q8_0>{}); return true;
        case QType::Q2_K: f(QTag<QType::Q2_K>{}); return true;
        case QType::Q3_K: f(QTag<QType::Q3_K>{}); return true;
        case QType::Q4_K: f(QTag<QType::Q4_K>{}); return true;
        case QType::Q5_K: f(QTag<QType::Q5_K>{}); return true;
        case QType::Q6_K: f(QTag<QType::Q6_K>{}); return true;
        case QType::IQ4_NL: f(QTag<QType::IQ4_NL>{}); return true;
        case QType::IQ4_XS: f(QTag<QType::IQ4_XS>{}); return true;
        case QType::MXFP4: f(QTag<QType::MXFP4>{}); return true;
        case QType::IQ2_XXS: f(QTag<QType::IQ2_XXS>{}); return true;
        case QType::IQ2_XS: f(QTag<QType::IQ2_XS>{}); return true;
        case QType::IQ2_S: f(QTag<QType::IQ2_S>{}); return true;
        case QType::IQ3_XXS: f(QTag<QType::IQ3_XXS>{}); return true;
        case QType::IQ3_S: f(QTag<QType::IQ3_S>{}); return true;
        case QType::IQ1_S: f(QTag<QType::IQ1_S>{}); return true;
        case QType::IQ1_M: f(QTag<QType::IQ1_M>{}); return true;
        case QType::TQ1_0: f(QTag<QType::TQ1_0>{}); return true;
        case QType::TQ2_0: f(QTag<QType::TQ2_0>{}); return true;
        default: return false;
    }
}

}  // namespace sl::cuda
