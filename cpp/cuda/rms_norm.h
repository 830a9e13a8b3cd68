// RMSNorm on the GPU: y = x * w / sqrt(mean(x^2) + eps) per row; x, y (n_tok, n), w (n).
#pragma once

#include <cuda_runtime_api.h>

namespace sl::cuda {

void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps, cudaStream_t stream);

}  // namespace sl::cuda
