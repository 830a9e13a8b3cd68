// Scalar reference attention over a KV cache of F16, Q8_0 or Q4_0 rows (ggml's block layouts,
// blocks of 32 along head_dim), and the cache-row writers. Queries stay in float: the score of a
// quantized key is sum_b d_b * dot(q_b, codes_b), with no dequantized copy of the cache.
#include <algorithm>
#include <cmath>

#include "common/fp16.h"
#include "cpu/kernels.h"
#include "quant/legacy.h"

namespace sl::cpu::impl {

namespace {

float dot_f16(const float * q, const uint8_t * row, int64_t n) {
    const fp16_t * k = reinterpret_cast<const fp16_t *>(row);
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += q[i] * fp16_to_fp32(k[i]);
    return acc;
}

float dot_q8_0(const float * q, const uint8_t * row, int64_t n) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row);
    float acc = 0.0f;
    for (int64_t i = 0; i < n / 32; ++i, q += 32) {
        float s = 0.0f;
        for (int j = 0; j < 32; ++j) s += q[j] * float(b[i].qs[j]);
        acc += fp16_to_fp32(b[i].d) * s;
    }
    return acc;
}

float dot_q4_0(const float * q, const uint8_t * row, int64_t n) {
    const block_q4_0 * b = reinterpret_cast<const block_q4_0 *>(row);
    float acc = 0.0f;
    for (int64_t i = 0; i < n / 32; ++i, q += 32) {
        float s = 0.0f;
        for (int j = 0; j < 16; ++j) {
            s += q[j] * float((b[i].qs[j] & 15) - 8);
            s += q[j + 16] * float((b[i].qs[j] >> 4) - 8);
        }
        acc += fp16_to_fp32(b[i].d) * s;
    }
    return acc;
}

template <float (*DOT)(const float *, const uint8_t *, int64_t)>
void scores(const float * q, int64_t ldq, int64_t n_q, const uint8_t * Kc, size_t ldk, int64_t n_kv,
            int64_t head_dim, float scale, float * out, int64_t lds) {
    for (int64_t i = 0; i < n_q; ++i)
        for (int64_t j = 0; j < n_kv; ++j) out[i * lds + j] = scale * DOT(q + i * ldq, Kc + j * ldk, head_dim);
}

void row_f16(const uint8_t * row, int64_t n, float * v) {
    const fp16_t * h = reinterpret_cast<const fp16_t *>(row);
    for (int64_t i = 0; i < n; ++i) v[i] = fp16_to_fp32(h[i]);
}

void row_q8_0(const uint8_t * row, int64_t n, float * v) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row);
    for (int64_t i = 0; i < n / 32; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 32; ++j) v[i * 32 + j] = d * float(b[i].qs[j]);
    }
}

void row_q4_0(const uint8_t * row, int64_t n, float * v) {
    const block_q4_0 * b = reinterpret_cast<const block_q4_0 *>(row);
    for (int64_t i = 0; i < n / 32; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; ++j) {
            v[i * 32 + j] = d * float((b[i].qs[j] & 15) - 8);
            v[i * 32 + j + 16] = d * float((b[i].qs[j] >> 4) - 8);
        }
    }
}

template <void (*ROW)(const uint8_t *, int64_t, float *)>
void values(const float * w, int64_t ldw, int64_t n_q, const uint8_t * Vc, size_t ldv, int64_t n_kv,
            int64_t head_dim, float * out, int64_t ldo) {
    float v[1024];
    for (int64_t j = 0; j < n_kv; ++j) {
        ROW(Vc + j * ldv, head_dim, v);
        for (int64_t i = 0; i < n_q; ++i) {
            const float wij = w[i * ldw + j];
            float * o = out + i * ldo;
            for (int64_t d = 0; d < head_dim; ++d) o[d] += wij * v[d];
        }
    }
}

void store_f16(const float * x, int64_t n, uint8_t * dst) {
    fp16_t * h = reinterpret_cast<fp16_t *>(dst);
    for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(x[i]);
}

// As ggml's reference quantizers (quantize_row_q8_0_ref, quantize_row_q4_0_ref), except that
// Q8_0 rounds halfway cases to even, as the SIMD versions do.
void store_q8_0(const float * x, int64_t n, uint8_t * dst) {
    block_q8_0 * b = reinterpret_cast<block_q8_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        for (int j = 0; j < 32; ++j) b[i].qs[j] = int8_t(std::nearbyint(x[j] * id));
    }
}

void store_q4_0(const float * x, int64_t n, uint8_t * dst) {
    block_q4_0 * b = reinterpret_cast<block_q4_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < 32; ++j)
            if (amax < std::fabs(x[j])) {
                amax = std::fabs(x[j]);
                vmax = x[j];
            }
        const float d = vmax / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        for (int j = 0; j < 16; ++j) {
            const int lo = std::min(15, int(x[j] * id + 8.5f));
            const int hi = std::min(15, int(x[j + 16] * id + 8.5f));
            b[i].qs[j] = uint8_t(lo | (hi << 4));
        }
    }
}

}  // namespace

void fill_scalar_attention(KernelTable & t) {
    t.scores[KV_F16] = scores<dot_f16>;
    t.scores[KV_Q8_0] = scores<dot_q8_0>;
    t.scores[KV_Q4_0] = scores<dot_q4_0>;
    t.values[KV_F16] = values<row_f16>;
    t.values[KV_Q8_0] = values<row_q8_0>;
    t.values[KV_Q4_0] = values<row_q4_0>;
    t.store[KV_F16] = store_f16;
    t.store[KV_Q8_0] = store_q8_0;
    t.store[KV_Q4_0] = store_q4_0;
}

}  // namespace sl::cpu::impl
