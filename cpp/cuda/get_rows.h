// Embedding lookup on the GPU: out (n_tok, K) = rows tokens[i] of table (n_rows, K) in its GGUF
// type, as floats. tokens is in device memory; an id outside [0, n_rows) gives a row of NaNs
// (the caller checks ids on the host: kernels cannot throw).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "quant/qtype.h"

namespace sl::cuda {

void get_rows(QType type, const void * table, int64_t n_rows, int64_t K, const int32_t * tokens, int n_tok,
              float * out, cudaStream_t stream);

}  // namespace sl::cuda
