// Reference dequantizers of the i-quant formats (quant/iquants.h): the same float operations in
// the same order as ggml's dequantize_row_iq* (and gguf-py's), so the floats are identical.
#include "quant/iquants.h"

#include <cstring>

#include "common/unaligned.h"
#include "quant/iq_grids.h"
#include "quant/ref.h"

namespace sl {

namespace {

// 32 values of an IQ4 block: nibble j of qs (low: value j, high: value j + 16) times d.
inline void iq4_values(const uint8_t * qs, float d, float * y) {
    for (int j = 0; j < 16; ++j) {
        y[j] = d * float(kvalues_iq4nl[qs[j] & 0xF]);
        y[j + 16] = d * float(kvalues_iq4nl[qs[j] >> 4]);
    }
}

// n (8 or 4) grid values (bytes of `entry`) times db, value j negated where bit j of signs is set:
// ggml's db * grid[j] * (sign ? -1 : 1).
inline void grid_values(uint64_t entry, int n, float db, unsigned signs, float * y) {
    for (int j = 0; j < n; ++j) {
        const float v = db * float(uint8_t(entry >> (8 * j)));
        y[j] = (signs >> j) & 1 ? -v : v;
    }
}

// 8 values of an IQ1 grid entry (int8 -1, 0, 1): dl * (grid + delta).
inline void iq1_values(uint64_t entry, float dl, float delta, float * y) {
    for (int j = 0; j < 8; ++j) y[j] = dl * (float(int8_t(entry >> (8 * j))) + delta);
}

constexpr float kIq1Delta = 0.125f;

}  // namespace

void dequantize_row_iq2_xxs(const void * x, float * y, int64_t n) {
    const block_iq2_xxs * b = static_cast<const block_iq2_xxs *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            // 4 grid indices (bytes of a0), then 4 x 7 sign bits and a 4-bit scale (a1).
            const uint32_t a0 = load_u32(b[i].qs + 4 * ib), a1 = load_u32(b[i].qs + 4 * ib + 2);
            const float db = d * (0.5f + float(a1 >> 28)) * 0.25f;
            for (int l = 0; l < 4; ++l, y += 8)
                grid_values(iq2xxs_grid[(a0 >> (8 * l)) & 255], 8, db, ksigns_iq2xs[(a1 >> (7 * l)) & 127], y);
        }
    }
}

void dequantize_row_iq2_xs(const void * x, float * y, int64_t n) {
    const block_iq2_xs * b = static_cast<const block_iq2_xs *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float db[2] = {d * (0.5f + float(b[i].scales[ib] & 15)) * 0.25f,
                                 d * (0.5f + float(b[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l, y += 8) {
                const uint16_t q = b[i].qs[4 * ib + l];  // 9-bit grid index, 7 sign bits
                grid_values(iq2xs_grid[q & 511], 8, db[l / 2], ksigns_iq2xs[q >> 9], y);
            }
        }
    }
}

void dequantize_row_iq2_s(const void * x, float * y, int64_t n) {
    const block_iq2_s * b = static_cast<const block_iq2_s *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const uint8_t * signs = b[i].qs + QK_K / 8;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float db[2] = {d * (0.5f + float(b[i].scales[ib] & 15)) * 0.25f,
                                 d * (0.5f + float(b[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l, y += 8) {
                const int idx = b[i].qs[4 * ib + l] | (((b[i].qh[ib] >> (2 * l)) & 3) << 8);
                grid_values(iq2s_grid[idx], 8, db[l / 2], signs[4 * ib + l], y);
            }
        }
    }
}

void dequantize_row_iq3_xxs(const void * x, float * y, int64_t n) {
    const block_iq3_xxs * b = static_cast<const block_iq3_xxs *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const uint8_t * qs = b[i].qs;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const uint32_t aux = load_u32(qs + QK_K / 4 + 4 * ib);  // 4 x 7 sign bits, 4-bit scale
            const float db = d * (0.5f + float(aux >> 28)) * 0.5f;
            for (int l = 0; l < 4; ++l, y += 8) {
                const unsigned s = ksigns_iq2xs[(aux >> (7 * l)) & 127];
                grid_values(iq3xxs_grid[qs[8 * ib + 2 * l]], 4, db, s, y);
                grid_values(iq3xxs_grid[qs[8 * ib + 2 * l + 1]], 4, db, s >> 4, y + 4);
            }
        }
    }
}

void dequantize_row_iq3_s(const void * x, float * y, int64_t n) {
    const block_iq3_s * b = static_cast<const block_iq3_s *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float db = d * float(1 + 2 * ((b[i].scales[ib / 2] >> (4 * (ib % 2))) & 15));
            for (int e = 0; e < 8; ++e, y += 4) {  // 8 entries of 4 values: 9-bit indices
                const int idx = b[i].qs[8 * ib + e] | (((b[i].qh[ib] >> e) & 1) << 8);
                grid_values(iq3s_grid[idx], 4, db, b[i].signs[4 * ib + e / 2] >> (4 * (e % 2)), y);
            }
        }
    }
}

void dequantize_row_iq1_s(const void * x, float * y, int64_t n) {
    const block_iq1_s * b = static_cast<const block_iq1_s *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const unsigned qh = b[i].qh[ib];  // 4 x 3 index bits, 3-bit scale, delta sign
            const float dl = d * float(2 * ((qh >> 12) & 7) + 1);
            const float delta = qh & 0x8000 ? -kIq1Delta : kIq1Delta;
            for (int l = 0; l < 4; ++l, y += 8)
                iq1_values(iq1s_grid[b[i].qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)], dl, delta, y);
        }
    }
}

void dequantize_row_iq1_m(const void * x, float * y, int64_t n) {
    const block_iq1_m * b = static_cast<const block_iq1_m *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(iq1_m_scale(b[i]));
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            for (int l = 0; l < 4; ++l, y += 8) {
                // Nibble l % 2 of qh[2 ib + l / 2]: 3 index bits, delta sign.
                const unsigned h = (b[i].qh[2 * ib + l / 2] >> (4 * (l % 2))) & 15;
                const float dl = d * float(2 * iq1_m_group_scale(b[i], 2 * ib + l / 2) + 1);
                iq1_values(iq1s_grid[b[i].qs[4 * ib + l] | ((h & 7) << 8)], dl, h & 8 ? -kIq1Delta : kIq1Delta, y);
            }
        }
    }
}

void dequantize_row_iq4_nl(const void * x, float * y, int64_t n) {
    const block_iq4_nl * b = static_cast<const block_iq4_nl *>(x);
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) iq4_values(b[i].qs, fp16_to_fp32(b[i].d), y);
}

void dequantize_row_iq4_xs(const void * x, float * y, int64_t n) {
    const block_iq4_xs * b = static_cast<const block_iq4_xs *>(x);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32) iq4_values(b[i].qs + 16 * ib, d * float(iq4_xs_scale(b[i], ib) - 32), y);
    }
}

}  // namespace sl
