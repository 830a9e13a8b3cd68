// MXFP4 (OCP microscaling FP4, as gpt-oss stores its experts), byte-identical to ggml's
// block_mxfp4 (ggml-common.h). Free of host-only code: the CUDA kernels include it too.
//
//   type    bits/w  layout
//   MXFP4   4.25    e:u8 (E8M0 scale), qs[16]; value j = kvalues_mxfp4[nibble j] * 2^(e - 128)
//                   (low nibbles: values 0..15, high nibbles 16..31, as Q4_0 / IQ4_NL)
//
// kvalues_mxfp4 are the E2M1 values doubled, so the scale is E8M0's 2^(e - 127) halved.
#pragma once

#include <cstdint>

#include "common/fp16.h"

namespace sl {

constexpr int QK_MXFP4 = 32;

// The 16 E2M1 levels, doubled (host; device code reads SL_IQ_TABLE(kvalues_mxfp4),
// quant/iq_grids.h). Codes 0 and 8 are both zero.
inline constexpr int8_t kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

struct block_mxfp4 {
    uint8_t e;
    uint8_t qs[QK_MXFP4 / 2];
};
static_assert(sizeof(block_mxfp4) == 17, "wrong mxfp4 block size");

// 2^(e - 128) as a float: ggml's ggml_e8m0_to_fp32_half. e = 0 and 1 give the denormals
// 2^-128 and 2^-127; e = 255 gives 2^127 (E8M0's NaN is not read as one, as in ggml).
SL_HD float e8m0_to_fp32_half(uint8_t e) {
    return f32_from_bits(e < 2 ? 0x00200000u << e : uint32_t(e - 1) << 23);
}

}  // namespace sl
