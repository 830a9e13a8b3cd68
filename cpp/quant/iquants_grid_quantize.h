// Quantizers of the grid i-quants, byte-identical to ggml's quantize_iq2_xxs, _iq2_xs, _iq2_s,
// _iq3_xxs, _iq3_s, _iq1_s and _iq1_m (what ggml_quantize_chunk calls). Each searches, per group
// of 16 or 32 values, a scale and the lattice entries (quant/iq_grid_map.h) that fit the values
// best under importance weights.
//
// The *_w functions take qw, the importance weights of these n columns (an imatrix's entries);
// the weights of a value are then qw * sqrt(sigma2 + x^2), sigma2 a multiple of the mean square
// of its 256-value super-block. Without a matrix ggml weighs by x^2 (IQ2_S: sigma2 / 4 + x^2);
// it refuses IQ2_XXS, IQ2_XS and IQ1_S without one, so those have no unweighted entry here.
// Every super-block is quantized on its own: rows can be cut anywhere between super-blocks.
#pragma once

#include <cstdint>

namespace sl {

void quantize_row_iq2_xxs_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq2_xs_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq2_s_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq2_s(const float * x, void * y, int64_t n);
void quantize_row_iq3_xxs_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq3_xxs(const float * x, void * y, int64_t n);
void quantize_row_iq3_s_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq3_s(const float * x, void * y, int64_t n);
void quantize_row_iq1_s_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq1_m_w(const float * x, void * y, int64_t n, const float * qw);
void quantize_row_iq1_m(const float * x, void * y, int64_t n);

}  // namespace sl
