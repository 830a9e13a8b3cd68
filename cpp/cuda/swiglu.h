// SwiGLU's elementwise step on the GPU: g[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sl::cuda {

void silu_mul(float * g, const float * u, int64_t n, cudaStream_t stream);

}  // namespace sl::cuda
