// Quantizers of the k-quant weight formats: ggml's reference path (no importance matrix,
// quantize_row_<t>_ref) and its weighted path (quantize_row_<t>_impl with quant_weights, the
// _w functions). Both search a scale (and min) per sub-block, quantize the sub-block scales
// against the super-block, then re-code every value with the scales as stored; the weighted path
// weighs each value's error by qw * sqrt(sigma2 + x^2) (sigma2 from the super-block's mean
// square) and searches the sub-block scales too (make_qp_quants / make_qx_quants with the
// summed weights). The float operations follow ggml's order so the bytes are the same as ggml's.
#include <cmath>
#include <cstring>

#include "quant/kquants.h"
#include "quant/kquants_search.h"
#include "quant/ref.h"

namespace sl {

using kq::clamp_int;
using kq::get_scale_min_k4;
using kq::nearest_int;

namespace {

// 2-bit fields: byte l of each 32-byte group holds values l, l + 32, l + 64, l + 96.
void pack_2bit(const uint8_t * L, uint8_t * qs) {
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            qs[j / 4 + l] = uint8_t(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }
}

// Q4_K / Q5_K: stores the 6-bit sub-block scales ls and mins lm (packed as kquants.h says) with
// their steps d and dmin, then re-codes every value against them; a sub-block whose stored
// scale is 0 keeps its search codes in L.
void store_scale_min_block(const float * x, int nmax, const uint8_t * ls, const uint8_t * lm, float d_block,
                           float m_block, uint8_t * L, uint8_t * packed, fp16_t * d_out, fp16_t * dmin_out) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = uint8_t((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            packed[j - 4] |= uint8_t((ls[j] >> 4) << 6);
            packed[j] |= uint8_t((lm[j] >> 4) << 6);
        }
    }
    *d_out = fp32_to_fp16(d_block);
    *dmin_out = fp32_to_fp16(m_block);
    const float d = fp16_to_fp32(*d_out), dmin = fp16_to_fp32(*dmin_out);
    for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, packed, &sc, &m);
        const float dl = d * float(sc);
        if (dl == 0.0f) continue;
        const float dm = dmin * float(m);
        for (int l = 0; l < 32; ++l) L[32 * j + l] = uint8_t(clamp_int(nearest_int((x[32 * j + l] + dm) / dl), 0, nmax));
    }
}

// Q4_K / Q5_K reference: 8 sub-blocks of 32 with a (scale, min) pair each found by
// make_qkx2_quants, weights sqrt(mean x^2) + |x|; the pairs as 6-bit multiples of d and dmin.
void quantize_scale_min_block(const float * x, int nmax, float rmin, int nstep, uint8_t * L, uint8_t * packed,
                              fp16_t * d_out, fp16_t * dmin_out) {
    float scales[8], mins[8], weights[QK_K];
    for (int j = 0; j < 8; ++j) {
        const float * xs = x + 32 * j;
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        const float av_x = std::sqrt(sum_x2 / 32.0f);
        for (int l = 0; l < 32; ++l) weights[32 * j + l] = av_x + std::fabs(xs[l]);
    }
    kq::make_qkx_quants(8, 32, nmax, x, weights, L, scales, mins, rmin, 0.1f, nstep, false);
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; ++j) {
        ls[j] = uint8_t(clamp_int(uint8_t(nearest_int(inv_scale * scales[j])), 0, 63));
        lm[j] = uint8_t(clamp_int(uint8_t(nearest_int(inv_min * mins[j])), 0, 63));
    }
    std::memset(packed, 0, K_SCALE_SIZE);
    store_scale_min_block(x, nmax, ls, lm, max_scale / 63.0f, max_min / 63.0f, L, packed, d_out, dmin_out);
}

// The weights of the weighted path for nsub sub-blocks of len values: qw * sqrt(sigma2 + x^2),
// and their sum per sub-block.
void importance_weights(const float * x, const float * qw, float sigma2, int nsub, int len, float * w, float * sw) {
    for (int j = 0; j < nsub; ++j) {
        for (int l = 0; l < len; ++l) {
            const float v = x[len * j + l];
            w[len * j + l] = qw[len * j + l] * std::sqrt(sigma2 + v * v);
        }
        float sum = 0.0f;
        for (int l = 0; l < len; ++l) sum += w[len * j + l];
        sw[j] = sum;
    }
}

float sum_squares(const float * x, int n) {
    float s = 0.0f;
    for (int j = 0; j < n; ++j) s += x[j] * x[j];
    return s;
}

// Q4_K / Q5_K weighted: make_qkx3_quants per sub-block, the scales and mins each by
// make_qp_quants weighted by the sub-blocks' summed weights. Q5_K caps the codes at 63.
void quantize_scale_min_block_w(const float * x, const float * qw, int nmax, bool cap63, uint8_t * L,
                                uint8_t * packed, fp16_t * d_out, fp16_t * dmin_out) {
    float weights[QK_K], sw[8], scales[8], mins[8];
    const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
    importance_weights(x, qw, sigma2, 8, 32, weights, sw);
    kq::make_qkx_quants(8, 32, nmax, x, weights, L, scales, mins, -0.9f, 0.05f, 36, false);
    uint8_t ls[8], lm[8];
    const float d_block = kq::make_qp_quants(8, 63, scales, ls, sw);
    const float m_block = kq::make_qp_quants(8, 63, mins, lm, sw);
    for (int j = 0; j < 8 && cap63; ++j) {
        ls[j] = ls[j] < 63 ? ls[j] : 63;
        lm[j] = lm[j] < 63 ? lm[j] : 63;
    }
    std::memset(packed, 0, K_SCALE_SIZE);
    store_scale_min_block(x, nmax, ls, lm, d_block, m_block, L, packed, d_out, dmin_out);
}

// Quantizes n sub-block scales (all >= 0) to 4 bits against their maximum; returns the step.
float quantize_scales_4bit(const float * v, int n, int shift, uint8_t * out) {
    float max = 0.0f;
    for (int j = 0; j < n; ++j)
        if (v[j] > max) max = v[j];
    if (!(max > 0.0f)) return 0.0f;
    const float iscale = 15.0f / max;
    for (int j = 0; j < n; ++j) out[j] |= uint8_t(unsigned(nearest_int(iscale * v[j])) << shift);
    return max / 15.0f;
}

}  // namespace

namespace {

// Q2_K: stores the 4-bit scales ls and mins lm with their steps, re-codes every value against
// them (a sub-block whose stored scale is 0 keeps its search codes) and packs the codes.
void store_q2_block(const float * x, const uint8_t * ls, const uint8_t * lm, float d_block, float m_block,
                    uint8_t * L, block_q2_K & b) {
    for (int j = 0; j < 16; ++j) b.scales[j] = uint8_t(ls[j] | (lm[j] << 4));
    b.d = fp32_to_fp16(d_block);
    b.dmin = fp32_to_fp16(m_block);
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 16; ++j) {
        const float dl = d * float(b.scales[j] & 0xF);
        if (dl == 0.0f) continue;
        const float ml = dmin * float(b.scales[j] >> 4);
        for (int l = 0; l < 16; ++l) L[16 * j + l] = uint8_t(clamp_int(nearest_int((x[16 * j + l] + ml) / dl), 0, 3));
    }
    pack_2bit(L, b.qs);
}

}  // namespace

void quantize_row_q2_K(const float * x, void * y, int64_t n) {
    block_q2_K * b = static_cast<block_q2_K *>(y);
    uint8_t L[QK_K];
    float weights[QK_K], scales[16], mins[16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        // Sub-blocks of 16: scale and min by mean absolute error, weights |x|.
        for (int j = 0; j < QK_K; ++j) weights[j] = std::fabs(x[j]);
        kq::make_qkx_quants(16, 16, 3, x, weights, L, scales, mins, -0.5f, 0.1f, 15, true);
        uint8_t ls[16] = {}, lm[16] = {};
        const float d_block = quantize_scales_4bit(scales, 16, 0, ls);
        const float m_block = quantize_scales_4bit(mins, 16, 0, lm);
        store_q2_block(x, ls, lm, d_block, m_block, L, b[i]);
    }
}

void quantize_row_q2_K_w(const float * x, void * y, int64_t n, const float * qw) {
    block_q2_K * b = static_cast<block_q2_K *>(y);
    uint8_t L[QK_K], ls[16], lm[16];
    float weights[QK_K], sw[16], scales[16], mins[16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        const float sigma2 = sum_squares(x, QK_K) / QK_K;
        importance_weights(x, qw, sigma2, 16, 16, weights, sw);
        kq::make_qkx_quants(16, 16, 3, x, weights, L, scales, mins, -0.9f, 0.05f, 36, false);
        const float d_block = kq::make_qp_quants(16, 15, scales, ls, sw);
        const float m_block = kq::make_qp_quants(16, 15, mins, lm, sw);
        store_q2_block(x, ls, lm, d_block, m_block, L, b[i]);
    }
}

namespace {

// The 16 Q3_K scales as 6-bit values biased by 32: low nibbles in bytes 0..7, the 2 high bits
// of scale j at bit 2 * (j / 4) of byte 8 + j % 4.
void pack_q3_scales(const int * ls, uint8_t * s) {
    std::memset(s, 0, K_SCALE_SIZE);
    for (int j = 0; j < 16; ++j) {
        const int l = ls[j];
        if (j < 8)
            s[j] = uint8_t(l & 0xF);
        else
            s[j - 8] |= uint8_t((l & 0xF) << 4);
        s[8 + j % 4] |= uint8_t((l >> 4) << (2 * (j / 4)));
    }
}

int q3_scale(const uint8_t * s, int j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return (lo | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
}

// Q3_K after the scales are stored: re-codes every value against them (a sub-block whose
// stored scale is 0 keeps its search codes) and packs codes 0..7, bit 2 to hmask (value j at
// bit j / 32 of byte j % 32), the rest as Q2_K.
void finish_q3_block(const float * x, int8_t * L, block_q3_K & b) {
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < 16; ++j) {
        const float dl = d * float(q3_scale(b.scales, j));
        if (dl == 0.0f) continue;
        for (int l = 0; l < 16; ++l) L[16 * j + l] = int8_t(clamp_int(nearest_int(x[16 * j + l] / dl), -4, 3) + 4);
    }
    std::memset(b.hmask, 0, sizeof b.hmask);
    uint8_t low[QK_K];
    for (int j = 0; j < QK_K; ++j) {
        if (L[j] > 3) b.hmask[j % 32] |= uint8_t(1u << (j / 32));
        low[j] = uint8_t(L[j] & 3);
    }
    pack_2bit(low, b.qs);
}

}  // namespace

void quantize_row_q3_K(const float * x, void * y, int64_t n) {
    block_q3_K * b = static_cast<block_q3_K *>(y);
    int8_t L[QK_K];
    float scales[16];
    int ls[16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0.0f, amax = 0.0f;
        for (int j = 0; j < 16; ++j) {
            scales[j] = kq::make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            if (std::fabs(scales[j]) > amax) {
                amax = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        if (max_scale != 0.0f) {
            const float iscale = -32.0f / max_scale;
            for (int j = 0; j < 16; ++j) ls[j] = clamp_int(int8_t(nearest_int(iscale * scales[j])), -32, 31) + 32;
            pack_q3_scales(ls, b[i].scales);
            b[i].d = fp32_to_fp16(1.0f / iscale);
        } else {
            std::memset(b[i].scales, 0, K_SCALE_SIZE);
            b[i].d = fp32_to_fp16(0.0f);
        }
        finish_q3_block(x, L, b[i]);
    }
}

// Weighted Q3_K: the sub-block scales by make_qx_quants with the importance weights, then the
// 16 scales themselves by make_qx_quants (nmax 32) weighted by the sub-blocks' summed weights.
void quantize_row_q3_K_w(const float * x, void * y, int64_t n, const float * qw) {
    block_q3_K * b = static_cast<block_q3_K *>(y);
    int8_t L[QK_K], Ls[16];
    float weights[QK_K], sw[16], scales[16];
    int ls[16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
        importance_weights(x, qw, sigma2, 16, 16, weights, sw);
        kq::make_qx_quants(16, 16, 4, x, weights, L, scales);
        float d_block;
        kq::make_qx_quants(1, 16, 32, scales, sw, Ls, &d_block);
        for (int j = 0; j < 16; ++j) ls[j] = Ls[j];
        pack_q3_scales(ls, b[i].scales);
        b[i].d = fp32_to_fp16(d_block);
        finish_q3_block(x, L, b[i]);
    }
}

namespace {

void pack_q4_K(const uint8_t * L, block_q4_K & b) {
    for (int c = 0; c < 4; ++c) {
        for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

// Bit 4 of value 64c + l goes to bit 2c of qh[l], of value 64c + 32 + l to bit 2c + 1.
void pack_q5_K(const uint8_t * L, block_q5_K & b) {
    std::memset(b.qh, 0, sizeof b.qh);
    for (int c = 0; c < 4; ++c) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
            b.qh[l] |= uint8_t(((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1)));
            b.qs[32 * c + l] = uint8_t((l1 & 0xF) | ((l2 & 0xF) << 4));
        }
    }
}

}  // namespace

void quantize_row_q4_K(const float * x, void * y, int64_t n) {
    block_q4_K * b = static_cast<block_q4_K *>(y);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        quantize_scale_min_block(x, 15, -1.0f, 20, L, b[i].scales, &b[i].d, &b[i].dmin);
        pack_q4_K(L, b[i]);
    }
}

void quantize_row_q4_K_w(const float * x, void * y, int64_t n, const float * qw) {
    block_q4_K * b = static_cast<block_q4_K *>(y);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        quantize_scale_min_block_w(x, qw, 15, false, L, b[i].scales, &b[i].d, &b[i].dmin);
        pack_q4_K(L, b[i]);
    }
}

void quantize_row_q5_K(const float * x, void * y, int64_t n) {
    block_q5_K * b = static_cast<block_q5_K *>(y);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        quantize_scale_min_block(x, 31, -0.5f, 15, L, b[i].scales, &b[i].d, &b[i].dmin);
        pack_q5_K(L, b[i]);
    }
}

void quantize_row_q5_K_w(const float * x, void * y, int64_t n, const float * qw) {
    block_q5_K * b = static_cast<block_q5_K *>(y);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        quantize_scale_min_block_w(x, qw, 31, true, L, b[i].scales, &b[i].d, &b[i].dmin);
        pack_q5_K(L, b[i]);
    }
}

namespace {

// Q6_K, reference and weighted alike (ggml's weighted path passes the importance matrix to
// make_qx_quants as the weights, without sigma2): 16 sub-blocks of 16 by make_qx_quants with
// weights qw (x^2 where null), their scales to int8 against the largest, every value re-coded.
void quantize_q6_K_rows(const float * x, block_q6_K * b, int64_t n, const float * qw) {
    int8_t L[QK_K];
    float scales[16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        kq::make_qx_quants(16, 16, 32, x, qw ? qw + i * QK_K : nullptr, L, scales);
        float max_scale = 0.0f, max_abs = 0.0f;
        for (int j = 0; j < 16; ++j) {
            if (std::fabs(scales[j]) > max_abs) {
                max_abs = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        if (max_abs < 1e-15f) {
            std::memset(&b[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.0f / max_scale;
        b[i].d = fp32_to_fp16(1.0f / iscale);
        for (int j = 0; j < 16; ++j) b[i].scales[j] = int8_t(clamp_int(nearest_int(iscale * scales[j]), -128, 127));
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; ++j) {
            const float dl = d * float(b[i].scales[j]);
            if (dl == 0.0f) continue;
            for (int l = 0; l < 16; ++l) L[16 * j + l] = int8_t(clamp_int(nearest_int(x[16 * j + l] / dl), -32, 31) + 32);
        }
        // Per 128 values: low nibbles of values l and l + 64 share ql[l], of l + 32 and l + 96
        // share ql[l + 32]; the 2-bit high parts of l, l + 32, l + 64, l + 96 share qh[l].
        for (int h = 0; h < 2; ++h) {
            const int8_t * Lh = L + 128 * h;
            uint8_t * ql = b[i].ql + 64 * h;
            uint8_t * qh = b[i].qh + 32 * h;
            for (int l = 0; l < 32; ++l) {
                ql[l] = uint8_t((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
                ql[l + 32] = uint8_t((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
                qh[l] = uint8_t((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

}  // namespace

void quantize_row_q6_K(const float * x, void * y, int64_t n) {
    quantize_q6_K_rows(x, static_cast<block_q6_K *>(y), n, nullptr);
}

void quantize_row_q6_K_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_q6_K_rows(x, static_cast<block_q6_K *>(y), n, qw);
}

}  // namespace sl
