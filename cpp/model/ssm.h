// The scalar functions of the state-space layers (mamba2.cpp, mamba.cpp), as ggml computes them.
#pragma once

#include <cmath>

namespace sl::ssm {

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

// ggml's softplus: log(1 + e^v), v itself past 20
inline float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

}  // namespace sl::ssm
