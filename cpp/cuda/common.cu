#include "cuda/common.cuh"

namespace sl::cuda {

void throw_cuda_error(cudaError_t err, const char * call, const char * file, int line) {
    const char * base = file;
    for (const char * p = file; *p; ++p)
        if (*p == '/') base = p + 1;
    throw CudaError(strfmt("CUDA error %d (%s: %s) in %s at %s:%d", int(err), cudaGetErrorName(err),
                           cudaGetErrorString(err), call, base, line));
}

void check_launch(const char * kernel) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        throw CudaError(strfmt("CUDA error %d (%s: %s) launching %s", int(err), cudaGetErrorName(err),
                               cudaGetErrorString(err), kernel));
}

}  // namespace sl::cuda
