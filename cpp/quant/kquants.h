// The k-quant super-block formats (256 values), byte-identical to ggml's (ggml-common.h).
//
//   type  bits/w  layout
//   Q2_K  2.625   scales[16] (4-bit scale | 4-bit min << 4, per 16 values), qs[64], d:f16, dmin:f16
//                 value = d * scale * q - dmin * min, q in 0..3
//   Q3_K  3.4375  hmask[32], qs[64], scales[12] (16 x 6-bit, biased by 32), d:f16
//                 value = d * (scale - 32) * (q - (hmask bit ? 0 : 4)), low 2 bits in qs
//   Q4_K  4.5     d:f16, dmin:f16, scales[12] (8 x 6-bit scale, 8 x 6-bit min, per 32 values), qs[128]
//                 value = d * scale * q - dmin * min, q in 0..15
//   Q5_K  5.5     d:f16, dmin:f16, scales[12], qh[32], qs[128]; as Q4_K with a 5th bit from qh
//   Q6_K  6.5625  ql[128], qh[64], scales[16] (int8, per 16 values), d:f16
//                 value = d * scale * (q - 32), q in 0..63
//   Q8_K  9.125   d:f32, qs[256] (int8), bsums[16] (sum of each 16 qs)   (activations only)
//
// Q4_K/Q5_K 6-bit scales: for j < 4, scale = s[j] & 63, min = s[j + 4] & 63; for j >= 4,
// scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4).
// Nibble order within a 64-value chunk: the 32 bytes' low nibbles are values 0..31, the high
// nibbles values 32..63.
#pragma once

#include <cstdint>

#include "common/fp16.h"

namespace sl {

constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

struct block_q2_K {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    fp16_t d;
    fp16_t dmin;
};
static_assert(sizeof(block_q2_K) == 84, "wrong q2_K block size");

struct block_q3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[K_SCALE_SIZE];
    fp16_t d;
};
static_assert(sizeof(block_q3_K) == 110, "wrong q3_K block size");

struct block_q4_K {
    fp16_t d;
    fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "wrong q4_K block size");

struct block_q5_K {
    fp16_t d;
    fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "wrong q5_K block size");

struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    fp16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "wrong q6_K block size");

struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};
static_assert(sizeof(block_q8_K) == 292, "wrong q8_K block size");

}  // namespace sl
