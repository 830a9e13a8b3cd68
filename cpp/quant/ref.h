// Scalar reference row functions, one quantizer and one dequantizer per type. Each converts n
// values (a multiple of the type's block size) between floats and packed blocks, bit-exact
// with ggml's reference path (quantize_row_*_ref / dequantize_row_*) without an importance
// matrix. They are the from_float / to_float entries of the traits table (qtype.cpp); callers
// that want many rows at once use quant/quantize.h, which splits the work over a thread pool.
//
// Inputs are expected to be finite: quantize_rows() checks that before calling these.
#pragma once

#include <cstdint>

namespace sl {

// Plain number types (block size 1).
void quantize_row_f32(const float * x, void * y, int64_t n);
void dequantize_row_f32(const void * x, float * y, int64_t n);
void quantize_row_f16(const float * x, void * y, int64_t n);
void dequantize_row_f16(const void * x, float * y, int64_t n);
void quantize_row_bf16(const float * x, void * y, int64_t n);
void dequantize_row_bf16(const void * x, float * y, int64_t n);

// Legacy 32-value blocks (quant/legacy.h).
void quantize_row_q4_0(const float * x, void * y, int64_t n);
void dequantize_row_q4_0(const void * x, float * y, int64_t n);
void quantize_row_q4_1(const float * x, void * y, int64_t n);
void dequantize_row_q4_1(const void * x, float * y, int64_t n);
void quantize_row_q5_0(const float * x, void * y, int64_t n);
void dequantize_row_q5_0(const void * x, float * y, int64_t n);
void quantize_row_q5_1(const float * x, void * y, int64_t n);
void dequantize_row_q5_1(const void * x, float * y, int64_t n);
void quantize_row_q8_0(const float * x, void * y, int64_t n);
void dequantize_row_q8_0(const void * x, float * y, int64_t n);
void quantize_row_q8_1(const float * x, void * y, int64_t n);
void dequantize_row_q8_1(const void * x, float * y, int64_t n);

// K-quant 256-value super-blocks (quant/kquants.h).
void quantize_row_q2_K(const float * x, void * y, int64_t n);
void dequantize_row_q2_K(const void * x, float * y, int64_t n);
void quantize_row_q3_K(const float * x, void * y, int64_t n);
void dequantize_row_q3_K(const void * x, float * y, int64_t n);
void quantize_row_q4_K(const float * x, void * y, int64_t n);
void dequantize_row_q4_K(const void * x, float * y, int64_t n);
void quantize_row_q5_K(const float * x, void * y, int64_t n);
void dequantize_row_q5_K(const void * x, float * y, int64_t n);
void quantize_row_q6_K(const float * x, void * y, int64_t n);
void dequantize_row_q6_K(const void * x, float * y, int64_t n);
void quantize_row_q8_K(const float * x, void * y, int64_t n);
void dequantize_row_q8_K(const void * x, float * y, int64_t n);

// Weighted quantizers (from_float_w): ggml's quantize_<type> given an importance matrix, qw
// holding the matrix's entries for these n columns. Called on whole rows (n = the row length):
// the legacy types' weights use the row's mean square; the others work per super-block.
void quantize_row_q4_0_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q4_1_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q5_0_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q5_1_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q2_K_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q3_K_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q4_K_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q5_K_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_q6_K_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq4_nl_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq4_xs_w(const float * x, void * y, int64_t n, const float * qw);

// I-quants (quant/iquants.h). The IQ4 quantizers are ggml's quantize_iq4_nl / quantize_iq4_xs
// (what ggml_quantize_chunk and llama-quantize call), not quantize_row_iq4_nl_ref, which
// searches no scales.
void quantize_row_iq4_nl(const float * x, void * y, int64_t n);
void dequantize_row_iq4_nl(const void * x, float * y, int64_t n);
void quantize_row_iq4_xs(const float * x, void * y, int64_t n);
void dequantize_row_iq4_xs(const void * x, float * y, int64_t n);
void dequantize_row_iq2_xxs(const void * x, float * y, int64_t n);
void dequantize_row_iq2_xs(const void * x, float * y, int64_t n);
void dequantize_row_iq2_s(const void * x, float * y, int64_t n);
void dequantize_row_iq3_xxs(const void * x, float * y, int64_t n);
void dequantize_row_iq3_s(const void * x, float * y, int64_t n);
void dequantize_row_iq1_s(const void * x, float * y, int64_t n);
void dequantize_row_iq1_m(const void * x, float * y, int64_t n);

// MXFP4 (quant/mxfp4.h): ggml's quantize_row_mxfp4_ref, which ggml_quantize_chunk calls too.
void quantize_row_mxfp4(const float * x, void * y, int64_t n);
void dequantize_row_mxfp4(const void * x, float * y, int64_t n);

// Ternary TQ1_0 / TQ2_0 (quant/ternary.h): ggml's quantize_row_tq*_0_ref, which
// ggml_quantize_chunk calls too (it ignores an importance matrix for these types).
void quantize_row_tq1_0(const float * x, void * y, int64_t n);
void dequantize_row_tq1_0(const void * x, float * y, int64_t n);
void quantize_row_tq2_0(const float * x, void * y, int64_t n);
void dequantize_row_tq2_0(const void * x, float * y, int64_t n);

}  // namespace sl
