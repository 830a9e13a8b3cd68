// The gated feed-forward's elementwise step on the GPU, g[i] = f(g[i]) * u[i]:
//   silu_mul: f(g) = g / (1 + exp(-g))                                   (SwiGLU)
//   gelu_mul: f(g) = g / 2 * (1 + tanh(sqrt(2 / pi) * (g + 0.044715 g^3)))  (GeGLU, tanh approximation)
// and add: y[i] += x[i] (residual adds).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sl::cuda {

void silu_mul(float * g, const float * u, int64_t n, cudaStream_t stream);
void gelu_mul(float * g, const float * u, int64_t n, cudaStream_t stream);
void add(float * y, const float * x, int64_t n, float scale, cudaStream_t stream);

}  // namespace sl::cuda
