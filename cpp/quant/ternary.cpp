// Ternary reference quantizers and dequantizers (quant/ternary.h): ggml's quantize_row_tq1_0_ref /
// quantize_row_tq2_0_ref (what ggml_quantize_chunk calls, with or without an importance matrix)
// and dequantize_row_tq1_0 / tq2_0, the same float operations, so the bytes and floats are ggml's:
//   d = max |x| over the 256 values (stored as f16); trit = lroundf(x * (1 / d)) + 1.
#include "quant/ternary.h"

#include <cmath>

#include "quant/ref.h"

namespace sl {

namespace {

// The block's scale as ggml computes it: max |x|, and its float inverse (0 for zeros).
float block_scale(const float * x, float * id) {
    float amax = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    *id = amax != 0.0f ? 1.0f / amax : 0.0f;
    return amax;
}

inline int trit(float x, float id) { return int(std::lround(x * id)) + 1; }

// n values x[0], x[stride], ... as base-3 digits (first most significant), times 3^(5 - n),
// stored as the fraction ceil(t * 256 / 243).
uint8_t pack_trits(const float * x, int stride, int n, float id) {
    unsigned t = 0;
    for (int k = 0; k < n; ++k) t = t * 3 + unsigned(trit(x[k * stride], id));
    for (int k = n; k < 5; ++k) t *= 3;
    return uint8_t((t * 256 + 242) / 243);
}

}  // namespace

void quantize_row_tq1_0(const float * x, void * y, int64_t n) {
    block_tq1_0 * b = static_cast<block_tq1_0 *>(y);
    for (int64_t i = 0; i < n / QK_TQ; ++i, x += QK_TQ) {
        float id;
        b[i].d = fp32_to_fp16(block_scale(x, &id));
        for (int m = 0; m < 32; ++m) b[i].qs[m] = pack_trits(x + m, 32, 5, id);
        for (int m = 0; m < 16; ++m) b[i].qs[32 + m] = pack_trits(x + 160 + m, 16, 5, id);
        for (int j = 0; j < 4; ++j) b[i].qh[j] = pack_trits(x + 240 + j, 4, 4, id);
    }
}

void dequantize_row_tq1_0(const void * x, float * y, int64_t n) {
    const block_tq1_0 * b = static_cast<const block_tq1_0 *>(x);
    for (int64_t i = 0; i < n / QK_TQ; ++i, y += QK_TQ) {
        const float d = fp16_to_fp32(b[i].d);
        for (int t = 0; t < 5; ++t) {
            for (int m = 0; m < 32; ++m) y[32 * t + m] = float(tq1_trit(b[i].qs[m], t) - 1) * d;
            for (int m = 0; m < 16; ++m) y[160 + 16 * t + m] = float(tq1_trit(b[i].qs[32 + m], t) - 1) * d;
        }
        for (int t = 0; t < 4; ++t)
            for (int j = 0; j < 4; ++j) y[240 + 4 * t + j] = float(tq1_trit(b[i].qh[j], t) - 1) * d;
    }
}

void quantize_row_tq2_0(const float * x, void * y, int64_t n) {
    block_tq2_0 * b = static_cast<block_tq2_0 *>(y);
    for (int64_t i = 0; i < n / QK_TQ; ++i, x += QK_TQ) {
        float id;
        b[i].d = fp32_to_fp16(block_scale(x, &id));
        for (int h = 0; h < 2; ++h)
            for (int m = 0; m < 32; ++m) {
                unsigned q = 0;
                for (int l = 0; l < 4; ++l) q |= unsigned(trit(x[128 * h + 32 * l + m], id) & 3) << (2 * l);
                b[i].qs[32 * h + m] = uint8_t(q);
            }
    }
}

void dequantize_row_tq2_0(const void * x, float * y, int64_t n) {
    const block_tq2_0 * b = static_cast<const block_tq2_0 *>(x);
    for (int64_t i = 0; i < n / QK_TQ; ++i, y += QK_TQ) {
        const float d = fp16_to_fp32(b[i].d);
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 4; ++l)
                for (int m = 0; m < 32; ++m) y[128 * h + 32 * l + m] = float(((b[i].qs[32 * h + m] >> (2 * l)) & 3) - 1) * d;
    }
}

}  // namespace sl
