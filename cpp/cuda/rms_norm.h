// Norms on the GPU, one row of x, y (n_tok, n) at a time with the weight w (n):
// RMSNorm y = x * w / sqrt(mean(x^2) + eps); LayerNorm without a bias (cohere2)
// y = (x - mean(x)) * w / sqrt(var(x) + eps).
#pragma once

#include <cuda_runtime_api.h>

namespace sl::cuda {

void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps, cudaStream_t stream);
void layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps, cudaStream_t stream);

}  // namespace sl::cuda
