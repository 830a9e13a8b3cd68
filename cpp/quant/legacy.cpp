// Reference quantizers and dequantizers of the legacy 32-value block formats (quant/legacy.h),
// and the weighted quantizers of ggml's quantize_q4_0 / q4_1 / q5_0 / q5_1 given an importance
// matrix. The arithmetic follows ggml's step for step (same float operations in the same
// order), so the bytes match ggml's (and for the reference path gguf-py's) exactly.
#include <cmath>
#include <cstring>

#include "quant/kquants_search.h"
#include "quant/legacy.h"
#include "quant/ref.h"

namespace sl {

namespace {

constexpr int QK = 32;

// Truncates v + bias to an integer code in [0, hi]; NaN goes to 0 (no undefined conversion).
inline uint8_t trunc_code(float v, float hi) {
    v = v > 0.0f ? v : 0.0f;  // comparisons, not fmax / fmin: no libm calls
    return uint8_t(v < hi ? v : hi);
}

// The value of largest magnitude (the first one on ties), with its sign.
inline float signed_absmax(const float * x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; ++j) {
        if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    return max;
}

inline void min_max(const float * x, int n, float * mn, float * mx) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < n; ++j) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

// Packs 32 codes of 4 bits: byte j holds code j (low nibble) and code j + 16 (high nibble).
inline void pack_nibbles(const uint8_t * q, uint8_t * qs) {
    for (int j = 0; j < QK / 2; ++j) qs[j] = uint8_t((q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4));
}

// Bit 4 of each of 32 codes, code j at bit j of a little-endian uint32.
inline void pack_high_bits(const uint8_t * q, uint8_t * qh) {
    uint32_t h = 0;
    for (int j = 0; j < QK; ++j) h |= uint32_t((q[j] >> 4) & 1) << j;
    for (int b = 0; b < 4; ++b) qh[b] = uint8_t(h >> (8 * b));
}

inline uint32_t load_high_bits(const uint8_t * qh) {
    return uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
}

// Symmetric blocks (Q4_0, Q5_0): d = max / -half, code = trunc(x / d + half + 0.5).
inline float quantize_symmetric(const float * x, int half, uint8_t * q) {
    const float d = signed_absmax(x, QK) / float(-half);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float bias = float(half) + 0.5f;
    for (int j = 0; j < QK; ++j) q[j] = trunc_code(x[j] * id + bias, float(2 * half - 1));
    return d;
}

// Blocks with a minimum (Q4_1, Q5_1): d = (max - min) / nmax, code = trunc((x - min) / d + 0.5).
inline float quantize_affine(const float * x, int nmax, uint8_t * q, float * min_out) {
    float mn, mx;
    min_max(x, QK, &mn, &mx);
    const float d = (mx - mn) / float(nmax);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK; ++j) q[j] = trunc_code((x[j] - mn) * id + 0.5f, float(nmax));
    *min_out = mn;
    return d;
}

// Q8_0 / Q8_1: d = amax / 127, code = round-half-away(x / d) (ggml's roundf). Written so that the
// compiler vectorizes it with the baseline instruction set: the maximum as a comparison (a NaN
// value leaves it unchanged, as fmax does), and the rounding as truncation (cvttps2dq: exact for
// |v| <= 127 and a little more) plus one where the exact remainder v - trunc(v) reaches a half.
// A NaN value gets code -127, as fmin(fmax(round(NaN), -127), 127) gave. No libm calls.
inline float quantize_q8(const float * x, int8_t * qs) {
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) {
        const float a = std::fabs(x[j]);
        amax = a > amax ? a : amax;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK; ++j) {
        float v = x[j] * id;
        v = v > -127.0f ? v : -127.0f;  // (NaN too; clamped before the cast)
        v = v < 127.0f ? v : 127.0f;
        const int t = int(v);
        const float r = v - float(t);
        qs[j] = int8_t(t + (r >= 0.5f) - (r <= -0.5f));
    }
    return d;
}

}  // namespace

void quantize_row_q4_0(const float * x, void * y, int64_t n) {
    block_q4_0 * b = static_cast<block_q4_0 *>(y);
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; ++i, x += QK) {
        b[i].d = fp32_to_fp16(quantize_symmetric(x, 8, q));
        pack_nibbles(q, b[i].qs);
    }
}

void dequantize_row_q4_0(const void * x, float * y, int64_t n) {
    const block_q4_0 * b = static_cast<const block_q4_0 *>(x);
    for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK / 2; ++j) {
            y[j] = float((b[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK / 2] = float((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void quantize_row_q4_1(const float * x, void * y, int64_t n) {
    block_q4_1 * b = static_cast<block_q4_1 *>(y);
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; ++i, x += QK) {
        float mn;
        b[i].d = fp32_to_fp16(quantize_affine(x, 15, q, &mn));
        b[i].m = fp32_to_fp16(mn);
        pack_nibbles(q, b[i].qs);
    }
}

void dequantize_row_q4_1(const void * x, float * y, int64_t n) {
    const block_q4_1 * b = static_cast<const block_q4_1 *>(x);
    for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        const float m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < QK / 2; ++j) {
            y[j] = float(b[i].qs[j] & 0x0F) * d + m;
            y[j + QK / 2] = float(b[i].qs[j] >> 4) * d + m;
        }
    }
}

void quantize_row_q5_0(const float * x, void * y, int64_t n) {
    block_q5_0 * b = static_cast<block_q5_0 *>(y);
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; ++i, x += QK) {
        b[i].d = fp32_to_fp16(quantize_symmetric(x, 16, q));
        pack_high_bits(q, b[i].qh);
        pack_nibbles(q, b[i].qs);
    }
}

void dequantize_row_q5_0(const void * x, float * y, int64_t n) {
    const block_q5_0 * b = static_cast<const block_q5_0 *>(x);
    for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        const uint32_t qh = load_high_bits(b[i].qh);
        for (int j = 0; j < QK / 2; ++j) {
            const int lo = (b[i].qs[j] & 0x0F) | int((qh >> j) & 1) << 4;
            const int hi = (b[i].qs[j] >> 4) | int((qh >> (j + QK / 2)) & 1) << 4;
            y[j] = float(lo - 16) * d;
            y[j + QK / 2] = float(hi - 16) * d;
        }
    }
}

void quantize_row_q5_1(const float * x, void * y, int64_t n) {
    block_q5_1 * b = static_cast<block_q5_1 *>(y);
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; ++i, x += QK) {
        float mn;
        b[i].d = fp32_to_fp16(quantize_affine(x, 31, q, &mn));
        b[i].m = fp32_to_fp16(mn);
        pack_high_bits(q, b[i].qh);
        pack_nibbles(q, b[i].qs);
    }
}

void dequantize_row_q5_1(const void * x, float * y, int64_t n) {
    const block_q5_1 * b = static_cast<const block_q5_1 *>(x);
    for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        const float m = fp16_to_fp32(b[i].m);
        const uint32_t qh = load_high_bits(b[i].qh);
        for (int j = 0; j < QK / 2; ++j) {
            const int lo = (b[i].qs[j] & 0x0F) | int((qh >> j) & 1) << 4;
            const int hi = (b[i].qs[j] >> 4) | int((qh >> (j + QK / 2)) & 1) << 4;
            y[j] = float(lo) * d + m;
            y[j + QK / 2] = float(hi) * d + m;
        }
    }
}

void quantize_row_q8_0(const float * x, void * y, int64_t n) {
    block_q8_0 * b = static_cast<block_q8_0 *>(y);
    for (int64_t i = 0; i < n / QK; ++i, x += QK) b[i].d = fp32_to_fp16(quantize_q8(x, b[i].qs));
}

void dequantize_row_q8_0(const void * x, float * y, int64_t n) {
    const block_q8_0 * b = static_cast<const block_q8_0 *>(x);
    for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK; ++j) y[j] = float(b[i].qs[j]) * d;
    }
}

// Q8_1 also stores s = d * sum(qs), which the dot products with Q4_1/Q5_1 weights use.
void quantize_row_q8_1(const float * x, void * y, int64_t n) {
    block_q8_1 * b = static_cast<block_q8_1 *>(y);
    for (int64_t i = 0; i < n / QK; ++i, x += QK) {
        const float d = quantize_q8(x, b[i].qs);
        int sum = 0;
        for (int j = 0; j < QK; ++j) sum += b[i].qs[j];
        b[i].d = fp32_to_fp16(d);
        b[i].s = fp32_to_fp16(float(sum) * d);
    }
}

void dequantize_row_q8_1(const void * x, float * y, int64_t n) {
    const block_q8_1 * b = static_cast<const block_q8_1 *>(x);
    for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK; ++j) y[j] = float(b[i].qs[j]) * d;
    }
}

// ---- weighted quantizers ---------------------------------------------------------------------

namespace {

// Runs search(first block, block count, values, weights) over the blocks of one whole row of n
// values, kChunk blocks at a time, with ggml's weights qw * sqrt(sigma2 + x^2). sigma2 is the
// row's mean square: these quantizers need whole rows (quantize_rows calls them so).
template <class Search>
void over_weighted_blocks(const float * x, const float * qw, int64_t n, Search && search) {
    constexpr int kChunk = 8;
    float sum_x2 = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    const float sigma2 = sum_x2 / float(n);
    float w[kChunk * QK];
    const int64_t nblocks = n / QK;
    for (int64_t b0 = 0; b0 < nblocks; b0 += kChunk) {
        const int nb = int(nblocks - b0 < kChunk ? nblocks - b0 : kChunk);
        const float * xb = x + b0 * QK;
        for (int j = 0; j < nb * QK; ++j) w[j] = qw[b0 * QK + j] * std::sqrt(sigma2 + xb[j] * xb[j]);
        search(b0, nb, xb, w);
    }
}

// Q4_0 / Q5_0: symmetric codes by make_qx_quants (rmse_type 1 with the weights), L in [0, 2 half).
template <class Block, bool kHigh>
void quantize_symmetric_w(const float * x, Block * b, int64_t n, const float * qw, int half) {
    over_weighted_blocks(x, qw, n, [&](int64_t b0, int nb, const float * xb, const float * w) {
        int8_t L[8 * QK];
        float d[8];
        kq::make_qx_quants(nb, QK, half, xb, w, L, d);
        for (int k = 0; k < nb; ++k) {
            uint8_t q[QK];
            for (int j = 0; j < QK; ++j) q[j] = uint8_t(L[k * QK + j]);
            b[b0 + k].d = fp32_to_fp16(d[k]);
            if constexpr (kHigh) pack_high_bits(q, b[b0 + k].qh);
            pack_nibbles(q, b[b0 + k].qs);
        }
    });
}

// Q4_1 / Q5_1: codes with a minimum by make_qkx3_quants (-0.9 + 0.05 k, 37 steps).
template <class Block, bool kHigh>
void quantize_affine_w(const float * x, Block * b, int64_t n, const float * qw, int nmax) {
    over_weighted_blocks(x, qw, n, [&](int64_t b0, int nb, const float * xb, const float * w) {
        uint8_t L[8 * QK];
        float d[8], mins[8];
        kq::make_qkx_quants(nb, QK, nmax, xb, w, L, d, mins, -0.9f, 0.05f, 36, false);
        for (int k = 0; k < nb; ++k) {
            b[b0 + k].d = fp32_to_fp16(d[k]);
            b[b0 + k].m = fp32_to_fp16(-mins[k]);
            if constexpr (kHigh) pack_high_bits(L + k * QK, b[b0 + k].qh);
            pack_nibbles(L + k * QK, b[b0 + k].qs);
        }
    });
}

}  // namespace

void quantize_row_q4_0_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_symmetric_w<block_q4_0, false>(x, static_cast<block_q4_0 *>(y), n, qw, 8);
}

void quantize_row_q5_0_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_symmetric_w<block_q5_0, true>(x, static_cast<block_q5_0 *>(y), n, qw, 16);
}

void quantize_row_q4_1_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_affine_w<block_q4_1, false>(x, static_cast<block_q4_1 *>(y), n, qw, 15);
}

void quantize_row_q5_1_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_affine_w<block_q5_1, true>(x, static_cast<block_q5_1 *>(y), n, qw, 31);
}

}  // namespace sl
