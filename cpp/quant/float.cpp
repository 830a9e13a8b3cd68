// F32, F16 and BF16 rows. F16 rounds to nearest even (overflow to infinity); BF16 rounds to
// nearest even and keeps NaNs quiet, both exactly as ggml does (common/fp16.h).
#include <cstring>

#include "common/fp16.h"
#include "quant/ref.h"

namespace sl {

void quantize_row_f32(const float * x, void * y, int64_t n) { std::memcpy(y, x, size_t(n) * sizeof(float)); }

void dequantize_row_f32(const void * x, float * y, int64_t n) { std::memcpy(y, x, size_t(n) * sizeof(float)); }

void quantize_row_f16(const float * x, void * y, int64_t n) {
    fp16_t * out = static_cast<fp16_t *>(y);
    for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_fp16(x[i]);
}

void dequantize_row_f16(const void * x, float * y, int64_t n) {
    const fp16_t * in = static_cast<const fp16_t *>(x);
    for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(in[i]);
}

void quantize_row_bf16(const float * x, void * y, int64_t n) {
    bf16_t * out = static_cast<bf16_t *>(y);
    for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(x[i]);
}

void dequantize_row_bf16(const void * x, float * y, int64_t n) {
    const bf16_t * in = static_cast<const bf16_t *>(x);
    for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(in[i]);
}

}  // namespace sl
