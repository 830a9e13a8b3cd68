// Quantizers of IQ4_NL and IQ4_XS, the algorithm of ggml's quantize_iq4_nl / quantize_iq4_xs
// (the path ggml_quantize_chunk and llama-quantize take), without and with an importance matrix:
//   1. per 32-value block, weights w = x^2, or with an importance matrix qw * sqrt(sigma2 + x^2)
//      (sigma2 = 2 * mean x^2 over the block for IQ4_NL, over the super-block for IQ4_XS); a first scale from the value of largest magnitude
//      (max / 127, so that it maps to the level -127), refined by least squares over the codes
//      it gives, then 15 more candidate scales (max / (-127 + t), t = -7..7) each refined the
//      same way; the one with the largest sum(w q x)^2 / sum(w q^2) wins;
//   2. IQ4_NL stores that scale (f16) and re-codes the block with it; IQ4_XS quantizes the 8
//      block scales to 6 bits against d = -(the scale of largest magnitude) / 32 and re-codes
//      every block with its stored scale d * l.
// The float operations are ggml's in ggml's order, so the bytes are the same as ggml's.
#include <cmath>
#include <cstring>

#include "quant/iquants.h"
#include "quant/kquants_search.h"
#include "quant/ref.h"

namespace sl {

namespace {

constexpr int kBlock = 32;      // values per scale
constexpr int kSearchSteps = 7;  // candidate scales max / (-127 + t), t = -7..7
// Blocks whose largest magnitude is below this get scale 0 (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// The levels of kvalues_iq4nl as floats (exact).
constexpr float kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

constexpr bool levels_match() {
    for (int i = 0; i < 16; ++i)
        if (kLevels[i] != float(kvalues_iq4nl[i])) return false;
    return true;
}
static_assert(levels_match(), "kLevels must equal kvalues_iq4nl");

// Index of the level nearest to x, ties to the upper one: ggml's best_index_int8. Its bisection
// ends at hi = 15 - (the number of inner levels 1..14 above x), counted here without branches;
// a NaN is above none and lands where ggml's does, on the last level.
inline int nearest_level(float x) {
    if (x <= kLevels[0]) return 0;
    if (x >= kLevels[15]) return 15;
    int hi = 15;
    for (int i = 1; i < 15; ++i) hi -= x < kLevels[i];
    return x - kLevels[hi - 1] < kLevels[hi] - x ? hi - 1 : hi;
}

// sum(w q x) and sum(w q^2) over a block coded with inverse scale inv_scale.
inline void code_block(const float * xb, const float * w, float inv_scale, float & sumqx, float & sumq2) {
    sumqx = 0.0f;
    sumq2 = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
        const float q = kLevels[nearest_level(inv_scale * xb[j])];
        sumqx += w[j] * q * xb[j];
        sumq2 += w[j] * q * q;
    }
}

// Best scale of one 32-value block with weights w (step 1 above).
float search_block_scale(const float * xb, const float * w) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
        const float ax = std::fabs(xb[j]);
        if (ax > amax) {
            amax = ax;
            max = xb[j];
        }
    }
    if (amax < kGroupMaxEps) return 0.0f;
    float sumqx, sumq2;
    code_block(xb, w, 1.0f / (-max / kLevels[0]), sumqx, sumq2);
    float d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int t = -kSearchSteps; t <= kSearchSteps; ++t) {
        code_block(xb, w, float(t + kvalues_iq4nl[0]) / max, sumqx, sumq2);
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// Codes of one 32-value block with inverse scale id, packed as IQ4_NL / IQ4_XS nibbles (value j
// in the low nibble of qs[j], value j + 16 in the high one).
void pack_block(const float * xb, float id, uint8_t * qs) {
    uint8_t L[kBlock];
    for (int j = 0; j < kBlock; ++j) L[j] = uint8_t(nearest_level(id * xb[j]));
    for (int j = 0; j < kBlock / 2; ++j) qs[j] = uint8_t(L[j] | (L[j + kBlock / 2] << 4));
}

// The search weights of nb blocks: x^2, or with importance weights qw * sqrt(sigma2 + x^2),
// sigma2 = 2 * (sum of x^2 over the nb blocks) / (nb * 32).
void search_weights(const float * x, const float * qw, int nb, float * w) {
    const int len = nb * kBlock;
    if (!qw) {
        for (int j = 0; j < len; ++j) w[j] = x[j] * x[j];
        return;
    }
    float sigma2 = 0.0f;
    for (int j = 0; j < len; ++j) sigma2 += x[j] * x[j];
    sigma2 *= 2.0f / float(len);
    for (int j = 0; j < len; ++j) w[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
}

void quantize_iq4_nl_rows(const float * x, block_iq4_nl * b, int64_t n, const float * qw) {
    float w[kBlock];
    for (int64_t i = 0; i < n / QK4_NL; ++i, x += QK4_NL) {
        search_weights(x, qw ? qw + i * QK4_NL : nullptr, 1, w);
        const float d = search_block_scale(x, w);
        b[i].d = fp32_to_fp16(d);
        pack_block(x, d != 0.0f ? 1.0f / d : 0.0f, b[i].qs);
    }
}

void quantize_iq4_xs_rows(const float * x, block_iq4_xs * b, int64_t n, const float * qw) {
    constexpr int nb = QK_K / kBlock;
    float w[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        search_weights(x, qw ? qw + i * QK_K : nullptr, nb, w);
        float scales[nb];
        float max_scale = 0.0f, amax_scale = 0.0f;
        for (int ib = 0; ib < nb; ++ib) {
            scales[ib] = search_block_scale(x + kBlock * ib, w + kBlock * ib);
            if (std::fabs(scales[ib]) > amax_scale) {
                amax_scale = std::fabs(scales[ib]);
                max_scale = scales[ib];
            }
        }
        // d is negative where the largest scale is positive, so that l = -32 is reachable for it.
        const float d = -max_scale / 32.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        b[i].scales_h = 0;
        for (int ib = 0; ib < nb; ++ib) {
            const int l = kq::clamp_int(kq::nearest_int(id * scales[ib]), -32, 31);
            const float dl = d * float(l);
            pack_block(x + kBlock * ib, dl != 0.0f ? 1.0f / dl : 0.0f, b[i].qs + kBlock / 2 * ib);
            const int ls = l + 32;
            if (ib % 2 == 0)
                b[i].scales_l[ib / 2] = uint8_t(ls & 0xF);
            else
                b[i].scales_l[ib / 2] |= uint8_t((ls & 0xF) << 4);
            b[i].scales_h = uint16_t(b[i].scales_h | ((ls >> 4) << (2 * ib)));
        }
    }
}

}  // namespace

void quantize_row_iq4_nl(const float * x, void * y, int64_t n) {
    quantize_iq4_nl_rows(x, static_cast<block_iq4_nl *>(y), n, nullptr);
}

void quantize_row_iq4_nl_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_iq4_nl_rows(x, static_cast<block_iq4_nl *>(y), n, qw);
}

void quantize_row_iq4_xs(const float * x, void * y, int64_t n) {
    quantize_iq4_xs_rows(x, static_cast<block_iq4_xs *>(y), n, nullptr);
}

void quantize_row_iq4_xs_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_iq4_xs_rows(x, static_cast<block_iq4_xs *>(y), n, qw);
}

}  // namespace sl
