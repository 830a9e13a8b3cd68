// The matmul kernels' common arguments: y (n_tok, ldy) = x (n_tok, K) . W^T (+ bias), with W
// (rows, K) in its GGUF type; with accumulate the result is added to y.
//   mmvq: quantized W, few tokens: int8 dot products (dp4a) on ActQ8 activations (act.h);
//   mmv:  F32/F16/BF16 W, few tokens: float dot products on the float activations;
//   gemm: any W, many tokens: W tiles dequantized to half in shared memory, tensor cores
//         (wmma 16x16x16, f32 accumulation) against half activations (act.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "quant/qtype.h"

namespace sl::cuda {

struct MatArgs {
    QType type = QType::F32;
    const void * W = nullptr;
    int64_t rows = 0, K = 0;
    const float * bias = nullptr;  // (rows) or null
    int n_tok = 0;
    float * y = nullptr;
    int64_t ldy = 0;
    bool accumulate = false;
};

// Most tokens a mat-vec kernel handles in one pass (more are done in passes of this many).
constexpr int kVecTok = 8;

// True if the kernels read weights of this type.
bool matmul_supports(QType t);

void mmvq(const MatArgs & a, const uint8_t * act_q8, cudaStream_t stream);
void mmv(const MatArgs & a, const float * x, cudaStream_t stream);
void gemm(const MatArgs & a, const void * x_f16, cudaStream_t stream);

}  // namespace sl::cuda
