// Matmul inputs, converted once per matmul from float rows x (n_tok, K):
//   quantize_act_q8: the int8 rows of blocks.h's ActQ8 (mat-vec kernels of the quantized
//     types), quantized as the CPU kernels quantize theirs (scale max|x| / 127, round to
//     nearest even), so both see the same codes;
//   convert_act_f16: half rows of act_f16_ld(K) values, zero-padded past K and saturated to
//     +-65504 (GEMM kernels).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace sl::cuda {

size_t act_q8_row_bytes(int64_t K);
void quantize_act_q8(const float * x, int64_t K, int n_tok, uint8_t * out, cudaStream_t stream);

int64_t act_f16_ld(int64_t K);  // halves per converted row (K rounded up to 32)
void convert_act_f16(const float * x, int64_t K, int n_tok, void * out, cudaStream_t stream);

}  // namespace sl::cuda
