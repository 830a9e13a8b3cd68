// The "legacy" 32-value block formats, byte-identical to ggml's (ggml-common.h).
// Headers in cpp/quant stay free of host-only code: the CUDA kernels include them too.
//
//   type  bits/w  layout                                        value
//   Q4_0  4.5     d:f16, qs[16]                                 d * (q - 8)
//   Q4_1  5.0     d:f16, m:f16, qs[16]                          d * q + m
//   Q5_0  5.5     d:f16, qh[4], qs[16]                          d * (q - 16)
//   Q5_1  6.0     d:f16, m:f16, qh[4], qs[16]                   d * q + m
//   Q8_0  8.5     d:f16, qs[32] (int8)                          d * q
//   Q8_1  9.0     d:f16, s:f16 (= d * sum(qs)), qs[32] (int8)   d * q   (activations only)
//
// 4-bit codes: byte j holds value j in its low nibble and value j + 16 in its high nibble.
// 5-bit codes: bit j of the little-endian uint32 qh is bit 4 of value j.
#pragma once

#include <cstdint>

#include "common/fp16.h"

namespace sl {

constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK5_0 = 32;
constexpr int QK5_1 = 32;
constexpr int QK8_0 = 32;
constexpr int QK8_1 = 32;

struct block_q4_0 {
    fp16_t d;
    uint8_t qs[QK4_0 / 2];
};
static_assert(sizeof(block_q4_0) == 18, "wrong q4_0 block size");

struct block_q4_1 {
    fp16_t d;
    fp16_t m;
    uint8_t qs[QK4_1 / 2];
};
static_assert(sizeof(block_q4_1) == 20, "wrong q4_1 block size");

struct block_q5_0 {
    fp16_t d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
};
static_assert(sizeof(block_q5_0) == 22, "wrong q5_0 block size");

struct block_q5_1 {
    fp16_t d;
    fp16_t m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
};
static_assert(sizeof(block_q5_1) == 24, "wrong q5_1 block size");

struct block_q8_0 {
    fp16_t d;
    int8_t qs[QK8_0];
};
static_assert(sizeof(block_q8_0) == 34, "wrong q8_0 block size");

struct block_q8_1 {
    fp16_t d;
    fp16_t s;
    int8_t qs[QK8_1];
};
static_assert(sizeof(block_q8_1) == 36, "wrong q8_1 block size");

}  // namespace sl
