// Reference dequantizers of the i-quant formats (quant/iquants.h): the same float operations in
// the same order as ggml's dequantize_row_iq* (and gguf-py's), so the floats are identical.
#include "quant/iquants.h"

#include "quant/ref.h"

namespace sl {

namespace {

// 32 values of an IQ4 block: nibble j of qs (low: value j, high: value j + 16) times d.
inline void iq4_values(const uint8_t * qs, float d, float * y) {
    for (int j = 0; j < 16; ++j) {
        y[j] = d * float(kvalues_iq4nl[qs[j] & 0xF]);
        y[j + 16] = d * float(kvalues_iq4nl[qs[j] >> 4]);
    }
}

}  // namespace

void dequantize_row_iq4_nl(const void * x, float * y, int64_t n) {
    const block_iq4_nl * b = static_cast<const block_iq4_nl *>(x);
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) iq4_values(b[i].qs, fp16_to_fp32(b[i].d), y);
}

void dequantize_row_iq4_xs(const void * x, float * y, int64_t n) {
    const block_iq4_xs * b = static_cast<const block_iq4_xs *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32) iq4_values(b[i].qs + 16 * ib, d * float(iq4_xs_scale(b[i], ib) - 32), y);
    }
}

}  // namespace sl
