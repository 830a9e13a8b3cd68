// Scalar reference kernels: activation quantization and gemm for every weight type. Every SIMD
// kernel is tested against these; they also run where no SIMD set is available.
#include <cmath>
#include <vector>

#include "common/fp16.h"
#include "cpu/kernels.h"

namespace sl::cpu::impl {

namespace {

void quantize_q8_row(const float * x, int64_t K, uint8_t * row) {
    const int64_t Kp = ActQ8::padded(K), nbp = Kp / 32;
    int8_t * qs = reinterpret_cast<int8_t *>(row);
    float * d = reinterpret_cast<float *>(row + Kp);
    for (int64_t b = 0; b < nbp; ++b) {
        const float * xb = x + 32 * b;
        float amax = 0.0f;
        if (32 * b < K)
            for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        int sum[2] = {0, 0};
        for (int j = 0; j < 32; ++j) {
            // Round to nearest even, as the SIMD conversions do.
            const int q = 32 * b < K ? int(std::nearbyint(xb[j] * id)) : 0;
            qs[ActQ8::pos(b, j)] = int8_t(q);
            sum[j >> 4] += q;
        }
        d[b] = dd;
        d[nbp + b] = dd * float(sum[0] + sum[1]);
        d[2 * nbp + 2 * b] = dd * float(sum[0]);
        d[2 * nbp + 2 * b + 1] = dd * float(sum[1]);
    }
}

// Generic quantized gemm: unpack a weight row once, dot it with every token.
template <QType WT>
void gemm_quant(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy) {
    const UnpackFn unpack = scalar_unpack(WT);
    thread_local std::vector<uint8_t> codes;
    thread_local std::vector<float> dg, mg;
    codes.resize(K);
    dg.resize(K / 16);
    mg.resize(K / 16);
    for (int64_t r = 0; r < n_rows; ++r) {
        unpack(W + r * ldw, K, codes.data(), dg.data(), mg.data());
        for (int64_t t = 0; t < n_tok; ++t) {
            const uint8_t * a = acts + t * lda;
            const int8_t * qs = ActQ8::qs(a);
            const float * da = ActQ8::d(a, K);
            const float * s16 = ActQ8::s16(a, K);
            float acc = 0.0f;
            for (int64_t g = 0; g < K / 16; ++g) {
                int32_t isum = 0;
                for (int j = 0; j < 16; ++j)
                    isum += int32_t(codes[g * 16 + j]) * int32_t(qs[ActQ8::pos(g / 2, 16 * (g & 1) + j)]);
                acc += dg[g] * (da[g / 2] * float(isum)) + mg[g] * s16[g];
            }
            y[t * ldy + r] = acc;
        }
    }
}

template <class ToFloat>
void gemm_float(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
                int64_t n_tok, float * y, int64_t ldy, ToFloat to_float) {
    thread_local std::vector<float> w;
    w.resize(K);
    for (int64_t r = 0; r < n_rows; ++r) {
        for (int64_t k = 0; k < K; ++k) w[k] = to_float(W + r * ldw, k);
        for (int64_t t = 0; t < n_tok; ++t) {
            const float * x = reinterpret_cast<const float *>(acts + t * lda);
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
            y[t * ldy + r] = acc;
        }
    }
}

void gemm_f32(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
              int64_t n_tok, float * y, int64_t ldy) {
    gemm_float(W, ldw, K, n_rows, acts, lda, n_tok, y, ldy,
               [](const uint8_t * row, int64_t k) { return reinterpret_cast<const float *>(row)[k]; });
}

void gemm_f16(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
              int64_t n_tok, float * y, int64_t ldy) {
    gemm_float(W, ldw, K, n_rows, acts, lda, n_tok, y, ldy, [](const uint8_t * row, int64_t k) {
        return fp16_to_fp32(reinterpret_cast<const fp16_t *>(row)[k]);
    });
}

void gemm_bf16(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
               int64_t n_tok, float * y, int64_t ldy) {
    gemm_float(W, ldw, K, n_rows, acts, lda, n_tok, y, ldy, [](const uint8_t * row, int64_t k) {
        return bf16_to_fp32(reinterpret_cast<const bf16_t *>(row)[k]);
    });
}

}  // namespace

void fill_scalar(KernelTable & t) {
    t.quantize_q8 = quantize_q8_row;
    t.gemm[int(QType::F32)] = gemm_f32;
    t.gemm[int(QType::F16)] = gemm_f16;
    t.gemm[int(QType::BF16)] = gemm_bf16;
    t.gemm[int(QType::Q4_0)] = gemm_quant<QType::Q4_0>;
    t.gemm[int(QType::Q4_1)] = gemm_quant<QType::Q4_1>;
    t.gemm[int(QType::Q5_0)] = gemm_quant<QType::Q5_0>;
    t.gemm[int(QType::Q5_1)] = gemm_quant<QType::Q5_1>;
    t.gemm[int(QType::Q8_0)] = gemm_quant<QType::Q8_0>;
    t.gemm[int(QType::Q2_K)] = gemm_quant<QType::Q2_K>;
    t.gemm[int(QType::Q3_K)] = gemm_quant<QType::Q3_K>;
    t.gemm[int(QType::Q4_K)] = gemm_quant<QType::Q4_K>;
    t.gemm[int(QType::Q5_K)] = gemm_quant<QType::Q5_K>;
    t.gemm[int(QType::Q6_K)] = gemm_quant<QType::Q6_K>;
    t.gemm[int(QType::IQ4_NL)] = gemm_quant<QType::IQ4_NL>;
    t.gemm[int(QType::MXFP4)] = gemm_quant<QType::MXFP4>;
    t.gemm[int(QType::IQ4_XS)] = gemm_quant<QType::IQ4_XS>;
    t.gemm[int(QType::IQ2_XXS)] = gemm_quant<QType::IQ2_XXS>;
    t.gemm[int(QType::IQ2_XS)] = gemm_quant<QType::IQ2_XS>;
    t.gemm[int(QType::IQ2_S)] = gemm_quant<QType::IQ2_S>;
    t.gemm[int(QType::IQ3_XXS)] = gemm_quant<QType::IQ3_XXS>;
    t.gemm[int(QType::IQ3_S)] = gemm_quant<QType::IQ3_S>;
    t.gemm[int(QType::IQ1_S)] = gemm_quant<QType::IQ1_S>;
    t.gemm[int(QType::IQ1_M)] = gemm_quant<QType::IQ1_M>;
    t.gemm[int(QType::TQ1_0)] = gemm_quant<QType::TQ1_0>;
    t.gemm[int(QType::TQ2_0)] = gemm_quant<QType::TQ2_0>;
    fill_scalar_attention(t);
}

}  // namespace sl::cpu::impl
