// Scalar decoding of every block-quantized weight type into one form: unsigned 8-bit codes
// and, per 16 values, an affine map value = dg * code + mg. The reference gemm dots the codes
// with the Q8 activations; the SIMD kernels compute the same sums from the packed blocks.
#include <cstring>

#include "common/unaligned.h"
#include "cpu/kernels.h"
#include "quant/iq_grids.h"
#include "quant/iquants.h"
#include "quant/kquants.h"
#include "quant/legacy.h"
#include "quant/mxfp4.h"
#include "quant/ternary.h"

namespace sl::cpu::impl {

namespace {

// 4-bit codes of a legacy block: low nibbles are values 0..15, high nibbles 16..31.
void nibbles32(const uint8_t * qs, uint8_t * codes) {
    for (int j = 0; j < 16; ++j) {
        codes[j] = qs[j] & 15;
        codes[j + 16] = qs[j] >> 4;
    }
}

void add_high_bits(const uint8_t * qh4, uint8_t * codes) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 32; ++j) codes[j] |= uint8_t(((qh >> j) & 1) << 4);
}

void set_pair(float * dg, float * mg, float d, float m) {
    dg[0] = dg[1] = d;
    mg[0] = mg[1] = m;
}

void unpack_q4_0(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q4_0 * b = reinterpret_cast<const block_q4_0 *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        nibbles32(b[i].qs, codes);
        const float d = fp16_to_fp32(b[i].d);
        set_pair(dg, mg, d, -8.0f * d);
    }
}

void unpack_q4_1(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q4_1 * b = reinterpret_cast<const block_q4_1 *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        nibbles32(b[i].qs, codes);
        set_pair(dg, mg, fp16_to_fp32(b[i].d), fp16_to_fp32(b[i].m));
    }
}

void unpack_q5_0(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q5_0 * b = reinterpret_cast<const block_q5_0 *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        nibbles32(b[i].qs, codes);
        add_high_bits(b[i].qh, codes);
        const float d = fp16_to_fp32(b[i].d);
        set_pair(dg, mg, d, -16.0f * d);
    }
}

void unpack_q5_1(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q5_1 * b = reinterpret_cast<const block_q5_1 *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        nibbles32(b[i].qs, codes);
        add_high_bits(b[i].qh, codes);
        set_pair(dg, mg, fp16_to_fp32(b[i].d), fp16_to_fp32(b[i].m));
    }
}

void unpack_q8_0(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        for (int j = 0; j < 32; ++j) codes[j] = uint8_t(b[i].qs[j] + 128);
        const float d = fp16_to_fp32(b[i].d);
        set_pair(dg, mg, d, -128.0f * d);
    }
}

void unpack_q2_K(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q2_K * b = reinterpret_cast<const block_q2_K *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, codes += QK_K, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        for (int g = 0; g < 16; ++g) {
            dg[g] = d * float(b[i].scales[g] & 15);
            mg[g] = -dmin * float(b[i].scales[g] >> 4);
        }
        // Value n*128 + j*32 + l comes from bits 2j of qs[n*32 + l].
        for (int n = 0; n < 2; ++n)
            for (int j = 0; j < 4; ++j)
                for (int l = 0; l < 32; ++l) codes[n * 128 + j * 32 + l] = (b[i].qs[n * 32 + l] >> (2 * j)) & 3;
    }
}

// The 16 6-bit Q3_K scales, biased by 32.
void q3_K_scales(const uint8_t * s, int * out) {
    for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
        const int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (lo | (hi << 4)) - 32;
    }
}

void unpack_q3_K(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q3_K * b = reinterpret_cast<const block_q3_K *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, codes += QK_K, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        int sc[16];
        q3_K_scales(b[i].scales, sc);
        for (int g = 0; g < 16; ++g) {
            dg[g] = d * float(sc[g]);
            mg[g] = -4.0f * dg[g];
        }
        // Value n*128 + j*32 + l: 2 low bits at bits 2j of qs[n*32 + l], high bit n*4 + j of hmask[l].
        for (int n = 0; n < 2; ++n)
            for (int j = 0; j < 4; ++j)
                for (int l = 0; l < 32; ++l) {
                    const int lo = (b[i].qs[n * 32 + l] >> (2 * j)) & 3;
                    const int hi = (b[i].hmask[l] >> (n * 4 + j)) & 1;
                    codes[n * 128 + j * 32 + l] = uint8_t(lo | (hi << 2));
                }
    }
}

// Q4_K / Q5_K 6-bit scale and min of sub-block j (of 8).
void scale_min_k4(int j, const uint8_t * q, int * sc, int * m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void k4_affine(const uint8_t * scales, float d, float dmin, float * dg, float * mg) {
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        scale_min_k4(j, scales, &sc, &m);
        set_pair(dg + 2 * j, mg + 2 * j, d * float(sc), -dmin * float(m));
    }
}

void unpack_q4_K(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q4_K * b = reinterpret_cast<const block_q4_K *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, codes += QK_K, dg += 16, mg += 16) {
        k4_affine(b[i].scales, fp16_to_fp32(b[i].d), fp16_to_fp32(b[i].dmin), dg, mg);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
                codes[c * 64 + l] = b[i].qs[c * 32 + l] & 15;
                codes[c * 64 + 32 + l] = b[i].qs[c * 32 + l] >> 4;
            }
    }
}

void unpack_q5_K(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q5_K * b = reinterpret_cast<const block_q5_K *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, codes += QK_K, dg += 16, mg += 16) {
        k4_affine(b[i].scales, fp16_to_fp32(b[i].d), fp16_to_fp32(b[i].dmin), dg, mg);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
                const uint8_t h = b[i].qh[l];
                codes[c * 64 + l] = uint8_t((b[i].qs[c * 32 + l] & 15) | (((h >> (2 * c)) & 1) << 4));
                codes[c * 64 + 32 + l] = uint8_t((b[i].qs[c * 32 + l] >> 4) | (((h >> (2 * c + 1)) & 1) << 4));
            }
    }
}

void unpack_q6_K(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_q6_K * b = reinterpret_cast<const block_q6_K *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, codes += QK_K, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int g = 0; g < 16; ++g) {
            dg[g] = d * float(b[i].scales[g]);
            mg[g] = -32.0f * dg[g];
        }
        // Half n (128 values): value n*128 + 32k + l from ql[n*64 + l + 32(k&1)] nibble k>>1
        // and bits 2k of qh[n*32 + l].
        for (int n = 0; n < 2; ++n)
            for (int k = 0; k < 4; ++k)
                for (int l = 0; l < 32; ++l) {
                    const int lo = (b[i].ql[n * 64 + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 15;
                    const int hi = (b[i].qh[n * 32 + l] >> (2 * k)) & 3;
                    codes[n * 128 + 32 * k + l] = uint8_t(lo | (hi << 4));
                }
    }
}

// Blocks of 32 4-bit indices into 16 levels (IQ4's non-linear ones, MXFP4's E2M1 ones, doubled):
// code = level + 128, value = d * level.
void level_codes32(const int8_t * table, const uint8_t * qs, uint8_t * codes) {
    nibbles32(qs, codes);
    for (int j = 0; j < 32; ++j) codes[j] = uint8_t(table[codes[j]] + 128);
}

void unpack_iq4_nl(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq4_nl * b = reinterpret_cast<const block_iq4_nl *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        level_codes32(kvalues_iq4nl, b[i].qs, codes);
        const float d = fp16_to_fp32(b[i].d);
        set_pair(dg, mg, d, -128.0f * d);
    }
}

void unpack_iq4_xs(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq4_xs * b = reinterpret_cast<const block_iq4_xs *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, codes += 32, dg += 2, mg += 2) {
            level_codes32(kvalues_iq4nl, b[i].qs + 16 * ib, codes);
            const float dl = d * float(iq4_xs_scale(b[i], ib) - 32);
            set_pair(dg, mg, dl, -128.0f * dl);
        }
    }
}

// ---- grid i-quants: code = 128 + signed grid value, dg = the scale, mg = -128 dg ----

// n grid values (bytes of `entry`) as codes, value j negated where bit j of signs is set.
void grid_codes(uint64_t entry, int n, unsigned signs, uint8_t * codes) {
    for (int j = 0; j < n; ++j) {
        const int v = uint8_t(entry >> (8 * j));
        codes[j] = uint8_t(128 + ((signs >> j) & 1 ? -v : v));
    }
}

// IQ1: value = dl * (g + delta), g in {-1, 0, 1}, delta = +-1/8: code 128 + 8 g + 8 delta, dg = dl / 8.
void iq1_codes(uint64_t entry, bool neg_delta, uint8_t * codes) {
    for (int j = 0; j < 8; ++j) codes[j] = uint8_t(128 + 8 * int(int8_t(entry >> (8 * j))) + (neg_delta ? -1 : 1));
}

void set_grid_scales(float * dg, float * mg, int g, int n, float d) {
    for (int i = g; i < g + n; ++i) {
        dg[i] = d;
        mg[i] = -128.0f * d;
    }
}

void unpack_iq2_xxs(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq2_xxs * b = reinterpret_cast<const block_iq2_xxs *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            const uint32_t a0 = load_u32(b[i].qs + 4 * ib), a1 = load_u32(b[i].qs + 4 * ib + 2);
            set_grid_scales(dg, mg, 2 * ib, 2, d * (0.5f + float(a1 >> 28)) * 0.25f);
            for (int l = 0; l < 4; ++l, codes += 8)
                grid_codes(iq2xxs_grid[(a0 >> (8 * l)) & 255], 8, ksigns_iq2xs[(a1 >> (7 * l)) & 127], codes);
        }
    }
}

void unpack_iq2_xs(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq2_xs * b = reinterpret_cast<const block_iq2_xs *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            set_grid_scales(dg, mg, 2 * ib, 1, d * (0.5f + float(b[i].scales[ib] & 15)) * 0.25f);
            set_grid_scales(dg, mg, 2 * ib + 1, 1, d * (0.5f + float(b[i].scales[ib] >> 4)) * 0.25f);
            for (int l = 0; l < 4; ++l, codes += 8) {
                const uint16_t q = b[i].qs[4 * ib + l];
                grid_codes(iq2xs_grid[q & 511], 8, ksigns_iq2xs[q >> 9], codes);
            }
        }
    }
}

void unpack_iq2_s(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq2_s * b = reinterpret_cast<const block_iq2_s *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            set_grid_scales(dg, mg, 2 * ib, 1, d * (0.5f + float(b[i].scales[ib] & 15)) * 0.25f);
            set_grid_scales(dg, mg, 2 * ib + 1, 1, d * (0.5f + float(b[i].scales[ib] >> 4)) * 0.25f);
            for (int l = 0; l < 4; ++l, codes += 8) {
                const int idx = b[i].qs[4 * ib + l] | (((b[i].qh[ib] >> (2 * l)) & 3) << 8);
                grid_codes(iq2s_grid[idx], 8, b[i].qs[QK_K / 8 + 4 * ib + l], codes);
            }
        }
    }
}

void unpack_iq3_xxs(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq3_xxs * b = reinterpret_cast<const block_iq3_xxs *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            const uint32_t aux = load_u32(b[i].qs + QK_K / 4 + 4 * ib);
            set_grid_scales(dg, mg, 2 * ib, 2, d * (0.5f + float(aux >> 28)) * 0.5f);
            for (int l = 0; l < 4; ++l, codes += 8) {
                const unsigned s = ksigns_iq2xs[(aux >> (7 * l)) & 127];
                grid_codes(iq3xxs_grid[b[i].qs[8 * ib + 2 * l]], 4, s, codes);
                grid_codes(iq3xxs_grid[b[i].qs[8 * ib + 2 * l + 1]], 4, s >> 4, codes + 4);
            }
        }
    }
}

void unpack_iq3_s(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq3_s * b = reinterpret_cast<const block_iq3_s *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            set_grid_scales(dg, mg, 2 * ib, 2, d * float(1 + 2 * ((b[i].scales[ib / 2] >> (4 * (ib % 2))) & 15)));
            for (int e = 0; e < 8; ++e, codes += 4) {
                const int idx = b[i].qs[8 * ib + e] | (((b[i].qh[ib] >> e) & 1) << 8);
                grid_codes(iq3s_grid[idx], 4, b[i].signs[4 * ib + e / 2] >> (4 * (e % 2)), codes);
            }
        }
    }
}

void unpack_iq1_s(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq1_s * b = reinterpret_cast<const block_iq1_s *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            const unsigned qh = b[i].qh[ib];
            set_grid_scales(dg, mg, 2 * ib, 2, d * float(2 * ((qh >> 12) & 7) + 1) * 0.125f);
            for (int l = 0; l < 4; ++l, codes += 8)
                iq1_codes(iq1s_grid[b[i].qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)], qh & 0x8000, codes);
        }
    }
}

void unpack_iq1_m(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_iq1_m * b = reinterpret_cast<const block_iq1_m *>(row);
    for (int64_t i = 0; i < K / QK_K; ++i, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(iq1_m_scale(b[i]));
        for (int g = 0; g < 16; ++g) set_grid_scales(dg, mg, g, 1, d * float(2 * iq1_m_group_scale(b[i], g) + 1) * 0.125f);
        for (int e = 0; e < 32; ++e, codes += 8) {
            const unsigned h = (b[i].qh[e / 2] >> (4 * (e % 2))) & 15;
            iq1_codes(iq1s_grid[b[i].qs[e] | ((h & 7) << 8)], h & 8, codes);
        }
    }
}

// MXFP4: IQ4_NL's layout with the E2M1 levels (code = level + 128) and a power-of-two scale.
void unpack_mxfp4(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_mxfp4 * b = reinterpret_cast<const block_mxfp4 *>(row);
    for (int64_t i = 0; i < K / 32; ++i, codes += 32, dg += 2, mg += 2) {
        level_codes32(kvalues_mxfp4, b[i].qs, codes);
        const float d = e8m0_to_fp32_half(b[i].e);
        set_pair(dg, mg, d, -128.0f * d);
    }
}

// Ternary: code = trit (0..2), value = d * (code - 1).
void unpack_tq1_0(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_tq1_0 * b = reinterpret_cast<const block_tq1_0 *>(row);
    for (int64_t i = 0; i < K / QK_TQ; ++i, codes += QK_TQ, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int g = 0; g < 16; ++g) dg[g] = d, mg[g] = -d;
        for (int t = 0; t < 5; ++t) {
            for (int m = 0; m < 32; ++m) codes[32 * t + m] = uint8_t(tq1_trit(b[i].qs[m], t));
            for (int m = 0; m < 16; ++m) codes[160 + 16 * t + m] = uint8_t(tq1_trit(b[i].qs[32 + m], t));
        }
        for (int t = 0; t < 4; ++t)
            for (int j = 0; j < 4; ++j) codes[240 + 4 * t + j] = uint8_t(tq1_trit(b[i].qh[j], t));
    }
}

void unpack_tq2_0(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg) {
    const block_tq2_0 * b = reinterpret_cast<const block_tq2_0 *>(row);
    for (int64_t i = 0; i < K / QK_TQ; ++i, codes += QK_TQ, dg += 16, mg += 16) {
        const float d = fp16_to_fp32(b[i].d);
        for (int g = 0; g < 16; ++g) dg[g] = d, mg[g] = -d;
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 4; ++l)
                for (int m = 0; m < 32; ++m) codes[128 * h + 32 * l + m] = (b[i].qs[32 * h + m] >> (2 * l)) & 3;
    }
}

}  // namespace

UnpackFn scalar_unpack(QType wt) {
    switch (wt) {
        case QType::Q4_0: return unpack_q4_0;
        case QType::Q4_1: return unpack_q4_1;
        case QType::Q5_0: return unpack_q5_0;
        case QType::Q5_1: return unpack_q5_1;
        case QType::Q8_0: return unpack_q8_0;
        case QType::Q2_K: return unpack_q2_K;
        case QType::Q3_K: return unpack_q3_K;
        case QType::Q4_K: return unpack_q4_K;
        case QType::Q5_K: return unpack_q5_K;
        case QType::Q6_K: return unpack_q6_K;
        case QType::IQ4_NL: return unpack_iq4_nl;
        case QType::IQ4_XS: return unpack_iq4_xs;
        case QType::MXFP4: return unpack_mxfp4;
        case QType::IQ2_XXS: return unpack_iq2_xxs;
        case QType::IQ2_XS: return unpack_iq2_xs;
        case QType::IQ2_S: return unpack_iq2_s;
        case QType::IQ3_XXS: return unpack_iq3_xxs;
        case QType::IQ3_S: return unpack_iq3_s;
        case QType::IQ1_S: return unpack_iq1_s;
        case QType::IQ1_M: return unpack_iq1_m;
        case QType::TQ1_0: return unpack_tq1_0;
        case QType::TQ2_0: return unpack_tq2_0;
        default: return nullptr;
    }
}

}  // namespace sl::cpu::impl
