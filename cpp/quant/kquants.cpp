// K-quant dequantizers (quant/kquants.h) and the Q8_K activation quantizer. The reference
// quantizers of the weight formats, with their scale searches, are in kquants_quantize.cpp.
// Each dequantized value is computed as ggml computes it ((d * scale) * q - dmin * min, in
// float), so the floats match ggml's and gguf-py's bit for bit.
#include <cmath>
#include <cstring>

#include "quant/kquants.h"
#include "quant/kquants_search.h"
#include "quant/ref.h"

namespace sl {

using kq::get_scale_min_k4;

void dequantize_row_q2_K(const void * x, float * y, int64_t n) {
    const block_q2_K * b = static_cast<const block_q2_K *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const float dmin = fp16_to_fp32(b[i].dmin);
        // Each 32 bytes of qs hold 128 values: the 2-bit field at shift 2j is values 32j..32j+31.
        for (int h = 0; h < 2; ++h) {
            const uint8_t * q = b[i].qs + 32 * h;
            for (int j = 0; j < 4; ++j) {
                for (int half = 0; half < 2; ++half) {
                    const uint8_t sc = b[i].scales[8 * h + 2 * j + half];
                    const float dl = d * float(sc & 0xF);
                    const float ml = dmin * float(sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * float((q[16 * half + l] >> (2 * j)) & 3) - ml;
                }
            }
        }
    }
}

namespace {

// The 16 signed 6-bit scales of a Q3_K block (stored biased by 32).
void unpack_q3_scales(const uint8_t * s, int * out) {
    for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
        const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (lo | hi << 4) - 32;
    }
}

}  // namespace

void dequantize_row_q3_K(const void * x, float * y, int64_t n) {
    const block_q3_K * b = static_cast<const block_q3_K *>(x);
    int scales[16];
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        unpack_q3_scales(b[i].scales, scales);
        // Low 2 bits as in Q2_K; the high bit of value 32k + l is bit k of hmask[l], and a clear
        // bit means "subtract 4".
        for (int h = 0; h < 2; ++h) {
            const uint8_t * q = b[i].qs + 32 * h;
            for (int j = 0; j < 4; ++j) {
                const uint8_t m = uint8_t(1u << (4 * h + j));
                for (int half = 0; half < 2; ++half) {
                    const float dl = d * float(scales[8 * h + 2 * j + half]);
                    const uint8_t * hm = b[i].hmask + 16 * half;
                    const uint8_t * qq = q + 16 * half;
                    for (int l = 0; l < 16; ++l) {
                        const int v = ((qq[l] >> (2 * j)) & 3) - ((hm[l] & m) ? 0 : 4);
                        *y++ = dl * float(v);
                    }
                }
            }
        }
    }
}

void dequantize_row_q4_K(const void * x, float * y, int64_t n) {
    const block_q4_K * b = static_cast<const block_q4_K *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const float dmin = fp16_to_fp32(b[i].dmin);
        for (int c = 0; c < 4; ++c) {
            const uint8_t * q = b[i].qs + 32 * c;
            uint8_t sc, m;
            get_scale_min_k4(2 * c, b[i].scales, &sc, &m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            get_scale_min_k4(2 * c + 1, b[i].scales, &sc, &m);
            const float d2 = d * float(sc), m2 = dmin * float(m);
            for (int l = 0; l < 32; ++l) y[l] = d1 * float(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) y[32 + l] = d2 * float(q[l] >> 4) - m2;
            y += 64;
        }
    }
}

void dequantize_row_q5_K(const void * x, float * y, int64_t n) {
    const block_q5_K * b = static_cast<const block_q5_K *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const float dmin = fp16_to_fp32(b[i].dmin);
        const uint8_t * qh = b[i].qh;
        for (int c = 0; c < 4; ++c) {
            const uint8_t * q = b[i].qs + 32 * c;
            const uint8_t u1 = uint8_t(1u << (2 * c)), u2 = uint8_t(2u << (2 * c));
            uint8_t sc, m;
            get_scale_min_k4(2 * c, b[i].scales, &sc, &m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            get_scale_min_k4(2 * c + 1, b[i].scales, &sc, &m);
            const float d2 = d * float(sc), m2 = dmin * float(m);
            for (int l = 0; l < 32; ++l) y[l] = d1 * float((q[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) y[32 + l] = d2 * float((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
            y += 64;
        }
    }
}

void dequantize_row_q6_K(const void * x, float * y, int64_t n) {
    const block_q6_K * b = static_cast<const block_q6_K *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        // Per 128 values: 64 bytes of low nibbles, 32 bytes of 2-bit high parts, 8 scales.
        for (int h = 0; h < 2; ++h) {
            const uint8_t * ql = b[i].ql + 64 * h;
            const uint8_t * qh = b[i].qh + 32 * h;
            const int8_t * sc = b[i].scales + 8 * h;
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * float(sc[is]) * float(q1);
                y[l + 32] = d * float(sc[is + 2]) * float(q2);
                y[l + 64] = d * float(sc[is + 4]) * float(q3);
                y[l + 96] = d * float(sc[is + 6]) * float(q4);
            }
            y += 128;
        }
    }
}

// Q8_K: d = max / -127 where max is the value of largest magnitude (so that value gets code
// -127), codes round(x / d) to nearest even, and bsums the sums of each 16 codes.
void quantize_row_q8_K(const float * x, void * y, int64_t n) {
    block_q8_K * b = static_cast<block_q8_K *>(y);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; ++j) {
            if (std::fabs(x[j]) > amax) {
                amax = std::fabs(x[j]);
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            std::memset(&b[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; ++j) b[i].qs[j] = int8_t(kq::clamp_int(kq::nearest_int(iscale * x[j]), -128, 127));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += b[i].qs[16 * j + l];
            b[i].bsums[j] = int16_t(sum);
        }
        b[i].d = 1.0f / iscale;
    }
}

void dequantize_row_q8_K(const void * x, float * y, int64_t n) {
    const block_q8_K * b = static_cast<const block_q8_K *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        for (int j = 0; j < QK_K; ++j) y[j] = b[i].d * float(b[i].qs[j]);
    }
}

}  // namespace sl
