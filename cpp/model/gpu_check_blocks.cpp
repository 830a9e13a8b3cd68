// The CUDA block readers (cpp/cuda/blocks.h) compiled for the host: see gpu_check.h.
#include <cmath>
#include <vector>

#include "common/error.h"
#include "cuda/blocks.h"
#include "model/gpu_check.h"

namespace sl::gpucheck {

using cuda::ActQ8;
using cuda::Group16;

namespace {

void check(QType t, int64_t K) {
    const QTypeTraits * tr = qtype_traits(t);
    bool known = false;
    cuda::visit_weight_type(t, [&](auto) { known = true; });
    SL_CHECK(known && K > 0 && K % tr->blck_size == 0, "blocks: type %s with rows of %lld values",
             tr ? tr->name : "?", (long long)K);
}

// The GPU activation quantizer's rule (act.cu), one row: per 32 values d = max|x| / 127,
// q = round-to-even(x / d); s16 = d * (sum of each 16 codes).
void quantize_row(const float * x, int64_t K, uint8_t * row) {
    auto * qs = reinterpret_cast<int8_t *>(row);
    auto * d = reinterpret_cast<float *>(row + K);
    float * s16 = d + K / 32;
    for (int64_t b = 0; b < K / 32; ++b) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[32 * b + j]));
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        int sum[2] = {0, 0};
        for (int j = 0; j < 32; ++j) {
            const int q = int(std::nearbyint(x[32 * b + j] * id));
            qs[32 * b + j] = int8_t(q);
            sum[j / 16] += q;
        }
        d[b] = dd;
        s16[2 * b] = dd * float(sum[0]);
        s16[2 * b + 1] = dd * float(sum[1]);
    }
}

}  // namespace

void blocks_dequantize(QType t, const uint8_t * rows, int64_t n_rows, int64_t K, float * out) {
    check(t, K);
    const size_t rb = row_size(t, K);
    cuda::visit_weight_type(t, [&](auto tag) {
        constexpr QType T = decltype(tag)::value;
        for (int64_t r = 0; r < n_rows; ++r) {
            const uint8_t * row = rows + size_t(r) * rb;
            float * o = out + r * K;
            if constexpr (cuda::is_float_type(T)) {
                for (int64_t k = 0; k < K; ++k) o[k] = cuda::float_value<T>(row, k);
            } else {
                for (int g = 0; g < K / 16; ++g) {
                    const Group16 w = cuda::Blk<T>::group(row, g);
                    for (int i = 0; i < 16; ++i) o[16 * g + i] = cuda::group_value(w, i);
                }
            }
        }
    });
}

void blocks_matvec(QType t, const uint8_t * W, int64_t n_rows, int64_t K, const float * x, int n_tok, float * y) {
    check(t, K);
    SL_CHECK(qtype_traits(t)->is_quantized, "blocks_matvec: %s is not a block-quantized type", qtype_traits(t)->name);
    const size_t lda = ActQ8::row_bytes(K), rb = row_size(t, K);
    std::vector<uint8_t> act(lda * size_t(n_tok));
    for (int i = 0; i < n_tok; ++i) quantize_row(x + i * K, K, act.data() + i * lda);
    cuda::visit_weight_type(t, [&](auto tag) {
        constexpr QType T = decltype(tag)::value;
        if constexpr (!cuda::is_float_type(T)) {
            for (int64_t r = 0; r < n_rows; ++r)
                for (int i = 0; i < n_tok; ++i) {
                    float acc = 0.0f;
                    for (int g = 0; g < K / 16; ++g)
                        acc += cuda::group_dot(cuda::Blk<T>::group(W + size_t(r) * rb, g), act.data() + i * lda, K, g);
                    y[i * n_rows + r] = acc;
                }
        }
    });
}

}  // namespace sl::gpucheck
