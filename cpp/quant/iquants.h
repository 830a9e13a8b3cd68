// The i-quant block formats, byte-identical to ggml's (ggml-common.h). Headers in cpp/quant stay
// free of host-only code: the CUDA kernels include them too.
//
//   type     bits/w  layout
//   IQ4_NL   4.5     d:f16, qs[16]; value j = d * kvalues_iq4nl[nibble j] (low nibbles: values
//                    0..15, high nibbles 16..31, as Q4_0)
//   IQ4_XS   4.25    d:f16, scales_h:u16, scales_l[4], qs[128]; 8 blocks of 32 values, block ib
//                    has the 6-bit scale ls = (4 bits of scales_l[ib / 2] at 4 * (ib % 2)) |
//                    (2 bits of scales_h at 2 * ib) << 4, value = d * (ls - 32) * kvalues_iq4nl[q],
//                    the nibbles of block ib in qs[16 ib .. 16 ib + 15] as IQ4_NL's
//   IQ2_XXS  2.0625  d:f16, qs[32] (u16)
//   IQ2_XS   2.3125  d:f16, qs[32] (u16), scales[8]
//   IQ2_S    2.5625  d:f16, qs[64], qh[8], scales[8]
//   IQ3_XXS  3.0625  d:f16, qs[96]
//   IQ3_S    3.4375  d:f16, qs[64], qh[8], signs[32], scales[4]
//   IQ1_S    1.5625  d:f16, qs[32], qh[8] (u16)
//   IQ1_M    1.75    qs[32], qh[16], scales[8] (the f16 super-block scale spread over the
//                    top nibbles of the four u16 words of scales)
// The grid types (IQ2_*, IQ3_*, IQ1_*) index lattice tables of 8 or 4 values (quant/iq_grids.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/fp16.h"
#include "quant/kquants.h"

namespace sl {

constexpr int QK4_NL = 32;

// The 16 non-linear 4-bit levels of IQ4_NL and IQ4_XS (host; device code reads
// SL_IQ_TABLE(kvalues_iq4nl), quant/iq_grids.h).
inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

struct block_iq4_nl {
    fp16_t d;
    uint8_t qs[QK4_NL / 2];
};
static_assert(sizeof(block_iq4_nl) == 18, "wrong iq4_nl block size");

struct block_iq4_xs {
    fp16_t d;
    uint16_t scales_h;
    uint8_t scales_l[QK_K / 64];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_iq4_xs) == 136, "wrong iq4_xs block size");

// 6-bit scale of 32-value block ib (0..7) of an IQ4_XS super-block, biased by 32.
inline int iq4_xs_scale(const block_iq4_xs & b, int ib) {
    return int(((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((b.scales_h >> (2 * ib)) & 3) << 4));
}

struct block_iq2_xxs {
    fp16_t d;
    uint16_t qs[QK_K / 8];
};
static_assert(sizeof(block_iq2_xxs) == 66, "wrong iq2_xxs block size");

struct block_iq2_xs {
    fp16_t d;
    uint16_t qs[QK_K / 8];
    uint8_t scales[QK_K / 32];
};
static_assert(sizeof(block_iq2_xs) == 74, "wrong iq2_xs block size");

struct block_iq2_s {
    fp16_t d;
    uint8_t qs[QK_K / 4];
    uint8_t qh[QK_K / 32];
    uint8_t scales[QK_K / 32];
};
static_assert(sizeof(block_iq2_s) == 82, "wrong iq2_s block size");

struct block_iq3_xxs {
    fp16_t d;
    uint8_t qs[3 * QK_K / 8];
};
static_assert(sizeof(block_iq3_xxs) == 98, "wrong iq3_xxs block size");

struct block_iq3_s {
    fp16_t d;
    uint8_t qs[QK_K / 4];
    uint8_t qh[QK_K / 32];
    uint8_t signs[QK_K / 8];
    uint8_t scales[QK_K / 64];
};
static_assert(sizeof(block_iq3_s) == 110, "wrong iq3_s block size");

struct block_iq1_s {
    fp16_t d;
    uint8_t qs[QK_K / 8];
    uint16_t qh[QK_K / 32];
};
static_assert(sizeof(block_iq1_s) == 50, "wrong iq1_s block size");

struct block_iq1_m {
    uint8_t qs[QK_K / 8];
    uint8_t qh[QK_K / 16];
    uint8_t scales[QK_K / 32];
};
static_assert(sizeof(block_iq1_m) == 56, "wrong iq1_m block size");

// IQ1_M's f16 super-block scale: the top nibbles of the four u16 words of scales, low word first.
inline fp16_t iq1_m_scale(const block_iq1_m & b) {
    uint16_t sc[4];
    memcpy(sc, b.scales, 8);
    return fp16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000));
}

// IQ1_M's 3-bit scale of 16-value group g (0..15): value = d * (2 s + 1) * (grid + delta).
inline int iq1_m_group_scale(const block_iq1_m & b, int g) {
    uint16_t w;
    memcpy(&w, b.scales + 2 * (g / 4), 2);
    return (w >> (3 * (g % 4))) & 7;
}

}  // namespace sl
