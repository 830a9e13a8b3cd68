#include "quant/qtype.h"

#include <cctype>
#include <cstring>

#include "quant/iquants_grid_quantize.h"
#include "quant/ref.h"

namespace sl {

namespace {

struct Entry {
    uint32_t id;
    QTypeTraits traits;
};

// Every type ggml defines, so that the GGUF reader can size any tensor; the functions are
// named here for the types splitllm computes with.
const Entry kTable[] = {
    {0, {"F32", 1, 4, false, dequantize_row_f32, quantize_row_f32}},
    {1, {"F16", 1, 2, false, dequantize_row_f16, quantize_row_f16}},
    {2, {"Q4_0", 32, 18, true, dequantize_row_q4_0, quantize_row_q4_0, quantize_row_q4_0_w}},
    {3, {"Q4_1", 32, 20, true, dequantize_row_q4_1, quantize_row_q4_1, quantize_row_q4_1_w}},
    {6, {"Q5_0", 32, 22, true, dequantize_row_q5_0, quantize_row_q5_0, quantize_row_q5_0_w}},
    {7, {"Q5_1", 32, 24, true, dequantize_row_q5_1, quantize_row_q5_1, quantize_row_q5_1_w}},
    {8, {"Q8_0", 32, 34, true, dequantize_row_q8_0, quantize_row_q8_0}},
    {9, {"Q8_1", 32, 36, true, dequantize_row_q8_1, quantize_row_q8_1}},  // ggml: f16 d, f16 s, 32 x int8 (gguf-py says 40)
    {10, {"Q2_K", 256, 84, true, dequantize_row_q2_K, quantize_row_q2_K, quantize_row_q2_K_w}},
    {11, {"Q3_K", 256, 110, true, dequantize_row_q3_K, quantize_row_q3_K, quantize_row_q3_K_w}},
    {12, {"Q4_K", 256, 144, true, dequantize_row_q4_K, quantize_row_q4_K, quantize_row_q4_K_w}},
    {13, {"Q5_K", 256, 176, true, dequantize_row_q5_K, quantize_row_q5_K, quantize_row_q5_K_w}},
    {14, {"Q6_K", 256, 210, true, dequantize_row_q6_K, quantize_row_q6_K, quantize_row_q6_K_w}},
    {15, {"Q8_K", 256, 292, true, dequantize_row_q8_K, quantize_row_q8_K}},
    {16, {"IQ2_XXS", 256, 66, true, dequantize_row_iq2_xxs, nullptr, quantize_row_iq2_xxs_w}},
    {17, {"IQ2_XS", 256, 74, true, dequantize_row_iq2_xs, nullptr, quantize_row_iq2_xs_w}},
    {18, {"IQ3_XXS", 256, 98, true, dequantize_row_iq3_xxs, quantize_row_iq3_xxs, quantize_row_iq3_xxs_w}},
    {19, {"IQ1_S", 256, 50, true, dequantize_row_iq1_s, nullptr, quantize_row_iq1_s_w}},
    {20, {"IQ4_NL", 32, 18, true, dequantize_row_iq4_nl, quantize_row_iq4_nl, quantize_row_iq4_nl_w}},
    {21, {"IQ3_S", 256, 110, true, dequantize_row_iq3_s, quantize_row_iq3_s, quantize_row_iq3_s_w}},
    {22, {"IQ2_S", 256, 82, true, dequantize_row_iq2_s, quantize_row_iq2_s, quantize_row_iq2_s_w}},
    {23, {"IQ4_XS", 256, 136, true, dequantize_row_iq4_xs, quantize_row_iq4_xs, quantize_row_iq4_xs_w}},
    {24, {"I8", 1, 1, false, nullptr, nullptr}},
    {25, {"I16", 1, 2, false, nullptr, nullptr}},
    {26, {"I32", 1, 4, false, nullptr, nullptr}},
    {27, {"I64", 1, 8, false, nullptr, nullptr}},
    {28, {"F64", 1, 8, false, nullptr, nullptr}},
    {29, {"IQ1_M", 256, 56, true, dequantize_row_iq1_m, quantize_row_iq1_m, quantize_row_iq1_m_w}},
    {30, {"BF16", 1, 2, false, dequantize_row_bf16, quantize_row_bf16}},
    {34, {"TQ1_0", 256, 54, true, dequantize_row_tq1_0, quantize_row_tq1_0}},
    {35, {"TQ2_0", 256, 66, true, dequantize_row_tq2_0, quantize_row_tq2_0}},
    {39, {"MXFP4", 32, 17, true, dequantize_row_mxfp4, quantize_row_mxfp4}},
};

}  // namespace

const QTypeTraits * qtype_traits(uint32_t id) {
    for (const Entry & e : kTable)
        if (e.id == id) return &e.traits;
    return nullptr;
}

bool qtype_from_name(const char * name, QType * out) {
    for (const Entry & e : kTable) {
        const char * a = e.traits.name;
        const char * b = name;
        while (*a && *b && std::toupper((unsigned char)*a) == std::toupper((unsigned char)*b)) ++a, ++b;
        if (*a == 0 && *b == 0) {
            *out = QType(e.id);
            return true;
        }
    }
    return false;
}

}  // namespace sl
