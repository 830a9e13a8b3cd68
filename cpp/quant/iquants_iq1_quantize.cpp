// Quantizers of IQ1_S and IQ1_M: ggml's quantize_row_iq1_s_impl / quantize_row_iq1_m_impl with
// ggml's float operations in ggml's order (so the bytes are ggml's). A value is
// scale * (g + delta), g in {-1, 0, 1} from an 8-value entry of iq1s_grid and delta = +-1/8 per
// group (IQ1_S, 32 values) or per half group (IQ1_M, 8 of its 16 values). Per group:
//   1. with the values sorted, every split into three runs (-1, 0, +1) and every delta sign is
//      tried through prefix sums; the best weighted least-squares fit wins (exhaustive);
//   2. the levels of each 8 values that are no grid entry are replaced by the neighbouring entry
//      of least weighted error (quant/iq_grid_map.h) and the scale refitted;
//   3. the super-block scale: IQ1_S d = max scale / 15 with 3-bit group scales; IQ1_M refits d
//      by least squares over the whole super-block with the 3-bit scales in place.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>

#include "quant/iq_grid_map.h"
#include "quant/iquants.h"
#include "quant/iquants_grid_quantize.h"
#include "quant/kquants_search.h"

namespace sl {

namespace {

using iqg::GridMap;

constexpr float kDelta = 0.125f;
// Level values with delta added (IQ1_S shift +1, IQ1_M sign bit clear) or subtracted.
constexpr float kUp[3] = {-1 + kDelta, kDelta, 1 + kDelta};
constexpr float kDown[3] = {-1 - kDelta, -kDelta, 1 - kDelta};

inline float max_f(float a, float b) { return a > b ? a : b; }  // ggml's MAX

// Order of n values ascending. ggml sorts (value, index) pairs with qsort, which glibc runs as
// a merge sort: equal values keep their order, as here.
void sort_order(const float * xb, int n, int * order) {
    std::iota(order, order + n, 0);
    std::stable_sort(order, order + n, [xb](int a, int b) { return xb[a] < xb[b]; });
}

// Weights of a group: qw * sqrt(sigma2 + x^2), or x^2 without a matrix.
void group_weights(const float * xb, const float * qw, float sigma2, int n, float * w) {
    for (int i = 0; i < n; ++i) w[i] = qw ? qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]) : xb[i] * xb[i];
}

// The entry among the neighbours of point u of least sum(w (scale * xx[level] - x)^2). ggml
// aborts (after reading past its input) where every distance is non-finite; the first here.
int nearest_entry(const GridMap & g, uint32_t u, const float * xb, const float * w, float scale, const float * xx) {
    int count;
    const uint16_t * nb = g.neighbours(u, &count);
    float best = FLT_MAX;
    int found = -1;
    for (int j = 0; j < count; ++j) {
        float d2 = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const float diff = scale * xx[g.level(nb[j], i)] - xb[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            found = nb[j];
        }
    }
    return found >= 0 ? found : nb[0];
}

// Step 2 for the 8-value entries of a group with levels L: entries into index; the scale
// refitted if any was off the grid. xx_of(k) gives entry k's level values.
template <class XX>
float snap_to_grid(const GridMap & g, int n, const float * xb, const float * w, const int8_t * L, float scale,
                   XX xx_of, uint16_t * index) {
    bool all_on_grid = true;
    for (int k = 0; k < n / 8; ++k) {
        uint32_t u = 0;
        for (int j = 0; j < 8; ++j) u |= uint32_t(L[8 * k + j]) << (2 * j);
        int e = g.entry(u);
        if (e < 0) {
            all_on_grid = false;
            e = nearest_entry(g, u, xb + 8 * k, w + 8 * k, scale, xx_of(k));
        }
        index[k] = uint16_t(e);
    }
    if (all_on_grid) return scale;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int k = 0; k < n / 8; ++k) {
        const float * xx = xx_of(k);
        for (int j = 0; j < 8; ++j) {
            const float q = xx[g.level(index[k], j)];
            sumqx += w[8 * k + j] * q * xb[8 * k + j];
            sumq2 += w[8 * k + j] * q * q;
        }
    }
    return sumqx > 0 && sumq2 > 0 ? sumqx / sumq2 : scale;
}

// Levels 0 / 1 / 2 from the runs [0, i1), [i1, i2), [i2, n) of the sorted order.
void split_levels(const int * order, int n, int i1, int i2, int8_t * L) {
    for (int j = 0; j < n; ++j) L[order[j]] = int8_t(j < i1 ? 0 : j < i2 ? 1 : 2);
}

struct Iq1Group {
    float scale;  // >= 0; 0 for a zero group
    int shift;    // IQ1_S: +1 / -1 (delta sign); IQ1_M: 0..3, bit 1 first half, bit 0 second half negative
    uint16_t index[4];
};

// One IQ1_S group of 32 values (steps 1 and 2).
Iq1Group fit_iq1_s_group(const GridMap & g, const float * xb, const float * w) {
    constexpr int n = 32;
    Iq1Group r{0.0f, 1, {0, 0, 0, 0}};
    float max = std::fabs(xb[0]);
    for (int i = 1; i < n; ++i) max = max_f(max, std::fabs(xb[i]));
    if (max < 1e-12f) return r;
    int order[n];
    sort_order(xb, n, order);
    float sumx[n + 1], sumw[n + 1];
    sumx[0] = sumw[0] = 0.0f;
    for (int j = 0; j < n; ++j) {
        sumx[j + 1] = sumx[j] + w[order[j]] * xb[order[j]];
        sumw[j + 1] = sumw[j] + w[order[j]];
    }
    float best = -FLT_MAX, scale = max;
    int b1 = -1, b2 = -1, shift = 0;
    for (int i1 = 0; i1 <= n; ++i1)
        for (int i2 = i1; i2 <= n; ++i2)
            for (int s = 1; s >= -1; s -= 2) {
                const float * xs = s == 1 ? kUp : kDown;
                const float sumqx =
                    (sumx[i1] - sumx[0]) * xs[0] + (sumx[i2] - sumx[i1]) * xs[1] + (sumx[n] - sumx[i2]) * xs[2];
                const float sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0] + (sumw[i2] - sumw[i1]) * xs[1] * xs[1] +
                                    (sumw[n] - sumw[i2]) * xs[2] * xs[2];
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    scale = sumqx / sumq2;
                    best = scale * sumqx;
                    b1 = i1, b2 = i2, shift = s;
                }
            }
    if (b1 < 0 || b2 < 0 || shift == 0) return r;
    int8_t L[n];
    split_levels(order, n, b1, b2, L);
    if (scale < 0) {
        for (int j = 0; j < n; ++j) L[j] = int8_t(2 - L[j]);
        scale = -scale;
        shift = -shift;
    }
    const float * xx = shift == 1 ? kUp : kDown;
    r.scale = snap_to_grid(g, n, xb, w, L, scale, [xx](int) { return xx; }, r.index);
    r.shift = shift;
    return r;
}

// Level values of half k (0, 1) of an IQ1_M group with sign pattern shift.
inline const float * iq1_m_half(int shift, int k) {
    return (k == 0 ? shift < 2 : shift % 2 == 0) ? kUp : kDown;
}

// Step 1 of IQ1_M: prefix sums per half (each half has its own delta sign). Since
// xx[0] - xx[1] = xx[1] - xx[2] = -1 for both signs, a split's sum(w q x) is T xx[2] - S(i1) - S(i2).
void search_iq1_m_split(const float * xb, const float * w, const int * order, float & scale, int & b1, int & b2,
                        int & bk) {
    constexpr int n = 16;
    float px[2][n + 1], pw[2][n + 1];
    px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0.0f;
    for (int j = 0; j < n; ++j) {
        const int i = order[j], h = i < n / 2 ? 0 : 1;
        px[h][j + 1] = px[h][j] + w[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + w[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    const float txs[2] = {px[0][n], px[1][n]}, tws[2] = {pw[0][n], pw[1][n]};
    const float p2 = kUp[2], m2 = kDown[2];
    const float cp1 = kUp[0] * kUp[0] - kUp[1] * kUp[1], cp2 = kUp[1] * kUp[1] - kUp[2] * kUp[2];
    const float cm1 = kDown[0] * kDown[0] - kDown[1] * kDown[1], cm2 = kDown[1] * kDown[1] - kDown[2] * kDown[2];
    float best = -FLT_MAX;
    for (int i1 = 0; i1 <= n; ++i1)
        for (int i2 = i1; i2 <= n; ++i2) {
            float qp[2], qm[2], q2p[2], q2m[2];
            for (int h = 0; h < 2; ++h) {
                const float sx = px[h][i1] + px[h][i2];
                qp[h] = txs[h] * p2 - sx;
                qm[h] = txs[h] * m2 - sx;
                q2p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            const float sumqx[4] = {qp[0] + qp[1], qp[0] + qm[1], qm[0] + qp[1], qm[0] + qm[1]};
            const float sumq2[4] = {q2p[0] + q2p[1], q2p[0] + q2m[1], q2m[0] + q2p[1], q2m[0] + q2m[1]};
            for (int k = 0; k < 4; ++k)
                if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best * sumq2[k]) {
                    scale = sumqx[k] / sumq2[k];
                    best = scale * sumqx[k];
                    b1 = i1, b2 = i2, bk = k;
                }
        }
}

// One IQ1_M group of 16 values (steps 1 and 2).
Iq1Group fit_iq1_m_group(const GridMap & g, const float * xb, const float * w) {
    constexpr int n = 16;
    Iq1Group r{0.0f, 0, {0, 0, 0, 0}};
    float max = std::fabs(xb[0]);
    for (int i = 1; i < n; ++i) max = max_f(max, std::fabs(xb[i]));
    if (max < 1e-7f) return r;
    int order[n];
    sort_order(xb, n, order);
    float scale = max;
    int b1 = -1, b2 = -1, bk = -1;
    search_iq1_m_split(xb, w, order, scale, b1, b2, bk);
    if (b1 < 0 || b2 < 0 || bk < 0) return r;
    int8_t L[n];
    split_levels(order, n, b1, b2, L);
    if (scale < 0) {
        for (int j = 0; j < n; ++j) L[j] = int8_t(2 - L[j]);
        scale = -scale;
        bk = 3 - bk;  // both delta signs flip
    }
    r.scale = snap_to_grid(g, n, xb, w, L, scale, [bk](int k) { return iq1_m_half(bk, k); }, r.index);
    r.shift = bk;
    return r;
}

inline int scale_code(float id, float scale) {
    return kq::clamp_int(kq::nearest_int(0.5f * (id * scale - 1.0f)), 0, 7);
}

float super_block_sigma2(const float * xbl) {
    float sumx2 = 0.0f;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
    return 2.0f * sumx2 / float(QK_K);
}

// IQ1_S: per 32 values 4 entry bytes and a u16 of 4 x 3 high entry bits, a 3-bit scale and
// the delta sign (bit 15).
void quantize_iq1_s_block(const GridMap & g, const float * xbl, const float * qw, block_iq1_s & b) {
    std::memset(&b, 0, sizeof b);
    const float sigma2 = super_block_sigma2(xbl);
    Iq1Group fit[QK_K / 32];
    float max_scale = 0.0f;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        float w[32];
        group_weights(xbl + 32 * ib, qw + 32 * ib, sigma2, 32, w);
        fit[ib] = fit_iq1_s_group(g, xbl + 32 * ib, w);
        uint16_t h = 0;
        for (int k = 0; k < 4; ++k) {
            b.qs[4 * ib + k] = uint8_t(fit[ib].index[k] & 255);
            h = uint16_t(h | ((fit[ib].index[k] >> 8) << (3 * k)));
        }
        b.qh[ib] = h;
        max_scale = max_f(max_scale, fit[ib].scale);
    }
    if (max_scale == 0.0f) return;
    const float d = max_scale / 15.0f;
    b.d = fp32_to_fp16(d * 1.125f);
    const float id = 1.0f / d;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        int l = scale_code(id, fit[ib].scale);
        if (fit[ib].shift == -1) l |= 8;
        b.qh[ib] = uint16_t(b.qh[ib] | (l << 12));
    }
}

// IQ1_M: per 16 values 2 entry bytes and a byte of 2 x (3 high entry bits, delta sign); 3-bit
// scales, 4 per u16 of scales, whose top nibbles hold the f16 super-block scale.
void quantize_iq1_m_block(const GridMap & g, const float * xbl, const float * qw, block_iq1_m & b) {
    std::memset(&b, 0, sizeof b);
    const float sigma2 = super_block_sigma2(xbl);
    Iq1Group fit[QK_K / 16];
    float w[QK_K];
    float max_scale = 0.0f;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        group_weights(xbl + 16 * ib, qw ? qw + 16 * ib : nullptr, sigma2, 16, w + 16 * ib);
        fit[ib] = fit_iq1_m_group(g, xbl + 16 * ib, w + 16 * ib);
        for (int k = 0; k < 2; ++k) b.qs[2 * ib + k] = uint8_t(fit[ib].index[k] & 255);
        b.qh[ib] = uint8_t((fit[ib].index[0] >> 8) | ((fit[ib].index[1] >> 8) << 4));
        max_scale = max_f(max_scale, fit[ib].scale);
    }
    if (max_scale == 0.0f) return;
    constexpr uint8_t kSignBits[4] = {0x00, 0x80, 0x08, 0x88};
    uint16_t sc[4] = {};
    float d = max_scale / 15.0f;
    const float id = 1.0f / d;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const int l = scale_code(id, fit[ib].scale);
        sc[ib / 4] = uint16_t(sc[ib / 4] | (l << (3 * (ib % 4))));
        b.qh[ib] |= kSignBits[fit[ib].shift];
        for (int k = 0; k < 2; ++k) {
            const float * xx = iq1_m_half(fit[ib].shift, k);
            for (int j = 0; j < 8; ++j) {
                const int i = 16 * ib + 8 * k + j;
                const float q = xx[g.level(fit[ib].index[k], j)] * float(2 * l + 1);
                sumqx += w[i] * q * xbl[i];
                sumq2 += w[i] * q * q;
            }
        }
    }
    if (sumq2 > 0) d = sumqx / sumq2;
    const uint16_t s = fp32_to_fp16(d * 1.1125f);
    sc[0] = uint16_t(sc[0] | ((s & 0x000f) << 12));
    sc[1] = uint16_t(sc[1] | ((s & 0x00f0) << 8));
    sc[2] = uint16_t(sc[2] | ((s & 0x0f00) << 4));
    sc[3] = uint16_t(sc[3] | (s & 0xf000));
    std::memcpy(b.scales, sc, sizeof sc);
}

}  // namespace

void quantize_row_iq1_s_w(const float * x, void * y, int64_t n, const float * qw) {
    const GridMap & g = iqg::grid_map(iqg::Lattice::IQ1S);
    block_iq1_s * b = static_cast<block_iq1_s *>(y);
    for (int64_t i = 0; i < n / QK_K; ++i) quantize_iq1_s_block(g, x + QK_K * i, qw + QK_K * i, b[i]);
}

void quantize_row_iq1_m_w(const float * x, void * y, int64_t n, const float * qw) {
    const GridMap & g = iqg::grid_map(iqg::Lattice::IQ1S);
    block_iq1_m * b = static_cast<block_iq1_m *>(y);
    for (int64_t i = 0; i < n / QK_K; ++i) quantize_iq1_m_block(g, x + QK_K * i, qw ? qw + QK_K * i : nullptr, b[i]);
}

void quantize_row_iq1_m(const float * x, void * y, int64_t n) { quantize_row_iq1_m_w(x, y, n, nullptr); }

}  // namespace sl
