// Ternary block formats (TriLM / BitNet b1.58 weights), byte-identical to ggml's block_tq1_0 /
// block_tq2_0 (ggml-common.h). Free of host-only code: the CUDA kernels include it too.
//
//   type   bits/w  layout                                      value
//   TQ1_0  1.6875  qs[48], qh[4], d:f16 (at the end)           d * (trit - 1), trit in 0..2
//   TQ2_0  2.0625  qs[64], d:f16 (at the end)                  d * (code - 1), code in 0..2
//
// TQ1_0 packs 5 trits a byte (4 in qh) as a fixed-point fraction: byte = ceil(t * 256 / 243),
// t = the trits as a base-3 number, first trit most significant; trit n of byte q is
// ((uint8_t)(q * 3^n) * 3) >> 8. Value order in a 256-value block:
//   0..159    trit n of qs[m], m < 32:        value 32 n + m
//   160..239  trit n of qs[32 + m], m < 16:   value 160 + 16 n + m
//   240..255  trit n of qh[j], n < 4, j < 4:  value 240 + 4 n + j
// TQ2_0: value 128 h + 32 l + m is bits 2 l of qs[32 h + m] (Q2_K's order of its codes).
#pragma once

#include <cstdint>

#include "common/fp16.h"

namespace sl {

constexpr int QK_TQ = 256;

struct block_tq1_0 {
    uint8_t qs[(QK_TQ - 4 * QK_TQ / 64) / 5];  // 48: 5 trits a byte
    uint8_t qh[QK_TQ / 64];                    // 4: 4 trits a byte
    fp16_t d;
};
static_assert(sizeof(block_tq1_0) == 54, "wrong tq1_0 block size");

struct block_tq2_0 {
    uint8_t qs[QK_TQ / 4];  // 2 bits a value
    fp16_t d;
};
static_assert(sizeof(block_tq2_0) == 66, "wrong tq2_0 block size");

// Trit n (0..4, most significant first) of a TQ1_0 byte.
SL_HD int tq1_trit(uint8_t q, int n) {
    constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
    return (unsigned(uint8_t(q * kPow3[n])) * 3u) >> 8;
}

}  // namespace sl
