// The orthonormal Hadamard rotation of a quantized KV cache on the GPU (Backend::hadamard):
// every row of x (n_rows, row) is transformed in place, block by block of n values (n a power
// of two dividing row), by H_n / sqrt(n).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sl::cuda {

void hadamard(float * x, int64_t n_rows, int row, int n, cudaStream_t stream);

}  // namespace sl::cuda
