#include "cuda/blocks.h"
#include "cuda/common.cuh"
#include "cuda/get_rows.h"
#include "cuda/matmul.h"

namespace sl::cuda {

namespace {

constexpr int kThreads = 128;

// One block per token; threads over groups of 16 (quantized) or single values (float types).
template <QType T>
__global__ void __launch_bounds__(kThreads) get_rows_kernel(const uint8_t * __restrict__ table, size_t row_bytes,
                                                            int64_t n_rows, int K, const int32_t * __restrict__ tokens,
                                                            float * __restrict__ out) {
    const int32_t id = tokens[blockIdx.x];
    float * dst = out + size_t(blockIdx.x) * K;
    if (id < 0 || id >= n_rows) {
        for (int k = threadIdx.x; k < K; k += kThreads) dst[k] = __int_as_float(0x7fc00000);
        return;
    }
    const uint8_t * row = table + size_t(id) * row_bytes;
    if constexpr (is_float_type(T)) {
        for (int k = threadIdx.x; k < K; k += kThreads) dst[k] = float_value<T>(row, k);
    } else {
        for (int g = threadIdx.x; g < K / 16; g += kThreads) {
            const Group16 w = Blk<T>::group(row, g);
#pragma unroll
            for (int i = 0; i < 16; ++i) dst[16 * g + i] = group_value(w, i);
        }
    }
}

}  // namespace

void get_rows(QType type, const void * table, int64_t n_rows, int64_t K, const int32_t * tokens, int n_tok,
              float * out, cudaStream_t stream) {
    const QTypeTraits * tr = qtype_traits(type);
    SL_CHECK(tr && matmul_supports(type), "cuda get_rows: unsupported table type %u", unsigned(type));
    SL_CHECK(K > 0 && K % tr->blck_size == 0 && K < (int64_t(1) << 30), "cuda get_rows: row of %lld values",
             (long long)K);
    SL_CHECK(tr->blck_size == 1 || reinterpret_cast<uintptr_t>(table) % 16 == 0,
             "cuda get_rows: table must be 16-byte aligned");
    if (n_tok <= 0) return;
    visit_weight_type(type, [&](auto tag) {
        constexpr QType T = decltype(tag)::value;
        get_rows_kernel<T><<<n_tok, kThreads, 0, stream>>>(static_cast<const uint8_t *>(table), row_size(T, K), n_rows,
                                                           int(K), tokens, out);
        SL_CUDA_LAUNCHED("get_rows");
    });
}

}  // namespace sl::cuda
