// MXFP4 reference quantizer and dequantizer (quant/mxfp4.h): ggml's quantize_row_mxfp4_ref
// (what ggml_quantize_chunk calls, with or without an importance matrix) and
// dequantize_row_mxfp4, the same float operations in the same order, so the bytes and floats
// are ggml's:
//   e = floor(log2(max |x|)) - 2 + 127 (0 for an all-zero block), the scale d = 2^(e - 128);
//   each value takes the level of kvalues_mxfp4 nearest to x / d (the first on ties).
#include "quant/mxfp4.h"

#include <cmath>

#include "quant/ref.h"

namespace sl {

namespace {

// Index of the level nearest to x at scale d: ggml's best_index_mxfp4 (|level * d - x|, the
// first of equal errors, so zero is code 0).
inline uint8_t nearest_level(float x, float d) {
    int best = 0;
    float best_err = std::fabs(float(kvalues_mxfp4[0]) * d - x);
    for (int i = 1; i < 16; ++i) {
        const float err = std::fabs(float(kvalues_mxfp4[i]) * d - x);
        if (err < best_err) {
            best = i;
            best_err = err;
        }
    }
    return uint8_t(best);
}

}  // namespace

void quantize_row_mxfp4(const float * x, void * y, int64_t n) {
    block_mxfp4 * b = static_cast<block_mxfp4 *>(y);
    for (int64_t i = 0; i < n / QK_MXFP4; ++i, x += QK_MXFP4) {
        float amax = 0.0f;
        for (int j = 0; j < QK_MXFP4; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        // ggml converts the float exponent straight to uint8_t; below 2^-125 it is negative and
        // x86 keeps the low byte of the int32 conversion, as this does.
        const uint8_t e = amax > 0.0f ? uint8_t(int32_t(std::floor(std::log2(amax)) - 2.0f + 127.0f)) : 0;
        const float d = e8m0_to_fp32_half(e);
        b[i].e = e;
        for (int j = 0; j < QK_MXFP4 / 2; ++j)
            b[i].qs[j] = uint8_t(nearest_level(x[j], d) | (nearest_level(x[j + QK_MXFP4 / 2], d) << 4));
    }
}

void dequantize_row_mxfp4(const void * x, float * y, int64_t n) {
    const block_mxfp4 * b = static_cast<const block_mxfp4 *>(x);
    for (int64_t i = 0; i < n / QK_MXFP4; ++i, y += QK_MXFP4) {
        const float d = e8m0_to_fp32_half(b[i].e);
        for (int j = 0; j < QK_MXFP4 / 2; ++j) {
            y[j] = float(kvalues_mxfp4[b[i].qs[j] & 0xF]) * d;
            y[j + QK_MXFP4 / 2] = float(kvalues_mxfp4[b[i].qs[j] >> 4]) * d;
        }
    }
}

}  // namespace sl
