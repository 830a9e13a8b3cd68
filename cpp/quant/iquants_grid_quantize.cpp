// Quantizers of IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: ggml's quantize_row_iq2_*_impl and
// quantize_row_iq3_*_impl, with ggml's float operations in ggml's order (so the bytes are
// ggml's). Per group of 16 or 32 values (one scale each):
//   1. weights from the importance matrix (quant/iquants_grid_quantize.h), the signs split off
//      (IQ2_XXS, IQ2_XS, IQ3_XXS store 7 sign bits per 8 values and imply the eighth by even
//      parity: with an odd count of negatives, the least important value takes the wrong sign);
//   2. candidate inverse scales around (2 kMaxQ - 1) / max: the magnitudes are rounded to
//      levels l (value (2 l + 1) * scale), and each 8 (IQ2) or 4 (IQ3) levels that are no grid
//      entry are replaced by the neighbouring entry of least weighted error (quant/iq_grid_map.h);
//      the candidate with the best weighted least-squares fit wins;
//   3. the groups off the grid are coded again with the winning scale, which is refitted;
//   4. the super-block scale d = max scale / 31, each group's scale a 4-bit multiple of it.
// The types differ in the details the SearchSpec table names.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "quant/iq_grid_map.h"
#include "quant/iquants.h"
#include "quant/iquants_grid_quantize.h"
#include "quant/kquants_search.h"

namespace sl {

namespace {

using iqg::GridMap;
using iqg::Lattice;

// ggml's MAX(a, b): b unless a is larger (the sign of an equal zero follows b).
inline float max_f(float a, float b) { return a > b ? a : b; }

struct SearchSpec {
    Lattice lattice;
    int group;             // values per scale: 16 or 32
    int kmaxq;             // levels per coordinate: 3 (IQ2) or 8 (IQ3)
    bool even_signs;       // 7 stored sign bits per 8 values, the eighth by parity
    float eps;             // groups with max |x| below this are zero; 0: only an all-zero group
    int n_steps;           // candidate inverse scales (2 kMaxQ - 1 + is * step) / max, |is| <= n_steps
    float step;
    bool from_qp;          // IQ2_XXS: candidates around ggml's make_qp_quants scale, all re-coded
    bool recode_all;       // step 3 re-codes every entry, not only those that were off the grid
    bool start_off_grid;   // IQ3_S: step 3 runs even if no candidate beat the starting scale
    float sigma2_mult;     // sigma2 = mult * sum(x^2) / 256
    bool sigma2_prior;     // without a matrix, weights sigma2 / 4 + x^2 (IQ2_S) instead of x^2
    float d_fudge;         // stored d = d * fudge
};

const SearchSpec kIq2Xxs = {Lattice::IQ2XXS, 32, 3, true, 1e-15f, 6, 0.1f, true, true, true, 1.0f, false, 1.0f};
const SearchSpec kIq2Xs = {Lattice::IQ2XS, 16, 3, true, 1e-15f, 9, 0.1f, false, false, false, 1.0f, false, 1.0f};
const SearchSpec kIq2S = {Lattice::IQ2S, 16, 3, false, 1e-8f, 9, 0.1f, false, false, false, 2.0f, true, 0.9875f};
const SearchSpec kIq3Xxs = {Lattice::IQ3XXS, 32, 8, true, 1e-8f, 15, 0.2f, false, false, false, 2.0f, false, 1.0125f};
const SearchSpec kIq3S = {Lattice::IQ3S, 32, 8, false, 0.0f, 9, 0.2f, false, true, true, 2.0f, false, 1.033f};

constexpr int kMaxGroup = 32;

// The fit of one group: scale >= 0, an entry per 8 or 4 values, sign bits per 8 values.
struct GroupFit {
    float scale;
    uint16_t index[kMaxGroup / 4];
    uint8_t signs[kMaxGroup / 8];
};

// ggml's make_qp_quants for one group: codes in [0, nmax] for x >= 0 with a scale search and
// single-code refinement; returns the scale. The codes are uint8 as ggml's, so a negative
// rounding (the value whose sign parity flipped) wraps, and the refinement reads it so.
float fit_positive_scale(int n, int nmax, const float * x, const float * w, uint8_t * L) {
    float max = 0.0f;
    for (int i = 0; i < n; ++i) max = max_f(max, x[i]);
    if (max < 1e-15f) return 0.0f;
    float iscale = float(nmax) / max;
    for (int i = 0; i < n; ++i) L[i] = uint8_t(kq::nearest_int(iscale * x[i]));
    const float scale = 1.0f / iscale;
    float best_mse = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - scale * float(L[i]);
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * float(is) + float(nmax)) / max;
        const float scale_is = 1.0f / iscale_is;
        float mse = 0.0f;
        for (int i = 0; i < n; ++i) {
            const int l = std::min(nmax, kq::nearest_int(iscale_is * x[i]));
            const float diff = x[i] - scale_is * float(l);
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = std::min(nmax, kq::nearest_int(iscale * x[i]));
        L[i] = uint8_t(l);
        sumlx += w[i] * x[i] * float(l);
        suml2 += w[i] * float(l) * float(l);
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float li = float(L[i]);
            float slx = sumlx - w[i] * x[i] * li;
            float sl2 = suml2 - w[i] * li * li;
            if (!(slx > 0.0f && sl2 > 0.0f)) continue;
            const int new_l = std::min(nmax, kq::nearest_int(x[i] * sl2 / slx));
            if (new_l == int(L[i])) continue;
            slx += w[i] * x[i] * float(new_l);
            sl2 += w[i] * float(new_l) * float(new_l);
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = uint8_t(new_l);
                sumlx = slx;
                suml2 = sl2;
                ++n_changed;
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Sign bits of 8 values (bit i: value i negative), their magnitudes into xval. With even
// parity and an odd count, the value of least w x^2 keeps its sign: its xval is negative.
uint8_t split_signs(const float * xb, const float * w, bool even, float * xval) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; ++i) {
        xval[i] = xb[i] >= 0 ? xb[i] : -xb[i];
        if (xb[i] < 0) {
            ++nflip;
            s = uint8_t(s | (1 << i));
        }
    }
    if (!even) return s;
    if (nflip % 2) {
        int imin = 0;
        float min = w[0] * xb[0] * xb[0];
        for (int i = 1; i < 8; ++i) {
            const float ax = w[i] * xb[i] * xb[i];
            if (ax < min) {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s = uint8_t(s ^ (1 << imin));
    }
    return uint8_t(s & 127);
}

// The entry of least error sum(waux (scale (2 l + 1) - x)^2) among the neighbours of point u;
// its levels go to L. ggml aborts where every distance is non-finite; the first neighbour here.
int nearest_entry(const GridMap & g, uint32_t u, const float * xval, const float * waux, float scale, int8_t * L) {
    int count;
    const uint16_t * nb = g.neighbours(u, &count);
    float best = FLT_MAX;
    int found = -1;
    for (int j = 0; j < count; ++j) {
        const int8_t * pg = g.odd(nb[j]);
        float d2 = 0.0f;
        for (int i = 0; i < g.dims; ++i) {
            const float diff = scale * float(pg[i]) - xval[i];
            d2 += waux[i] * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            found = nb[j];
        }
    }
    if (found < 0) found = nb[0];
    for (int i = 0; i < g.dims; ++i) L[i] = int8_t(g.level(found, i));
    return found;
}

// Levels of one entry's values at inverse scale id into L; true if they are a grid entry,
// else L holds the nearest neighbour's (measured at `scale`).
bool code_entry(const GridMap & g, int kmaxq, const float * xval, const float * waux, float id, float scale,
                int8_t * L) {
    uint32_t u = 0;
    for (int i = 0; i < g.dims; ++i) {
        const int l = kq::clamp_int(kq::nearest_int(0.5f * (id * xval[i] - 1.0f)), 0, kmaxq - 1);
        L[i] = int8_t(l);
        u |= uint32_t(l) << (g.bits * i);
    }
    if (g.entry(u) >= 0) return true;
    nearest_entry(g, u, xval, waux, scale, L);
    return false;
}

// sum(w x q) and sum(w q^2) with q = 2 l + 1.
void level_sums(int n, const float * w, const float * xval, const int8_t * L, float & sumqx, float & sumq2) {
    sumqx = 0.0f;
    sumq2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float q = float(2 * L[i] + 1);
        sumqx += w[i] * xval[i] * q;
        sumq2 += w[i] * q * q;
    }
}

// Steps 2 and 3 for a group with magnitudes xval: the scale (possibly negative) and levels L.
float search_levels(const SearchSpec & sp, const GridMap & g, const float * xval, const float * w,
                    const float * waux, float scale, float top, int8_t * L) {
    const int n = sp.group, ne = n / g.dims;
    int8_t Laux[kMaxGroup];
    bool on[kMaxGroup / 4], on_aux[kMaxGroup / 4];
    for (int k = 0; k < ne; ++k) on[k] = !sp.start_off_grid;
    float best = 0.0f;
    for (int is = -sp.n_steps; is <= sp.n_steps; ++is) {
        const float id = (float(2 * sp.kmaxq - 1) + float(is) * sp.step) / top;
        const float this_scale = 1.0f / id;
        for (int k = 0; k < ne; ++k)
            on_aux[k] =
                code_entry(g, sp.kmaxq, xval + g.dims * k, waux + g.dims * k, id, this_scale, Laux + g.dims * k);
        float sumqx, sumq2;
        level_sums(n, w, xval, Laux, sumqx, sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            std::memcpy(L, Laux, size_t(n));
            std::memcpy(on, on_aux, sizeof on);
        }
    }
    bool any_off = sp.from_qp;
    for (int k = 0; k < ne; ++k) any_off |= !on[k];
    if (any_off && scale > 0) {
        const float id = 1.0f / scale;
        for (int k = 0; k < ne; ++k)
            if (sp.recode_all || !on[k])
                code_entry(g, sp.kmaxq, xval + g.dims * k, waux + g.dims * k, id, scale, L + g.dims * k);
        float sumqx, sumq2;
        level_sums(n, w, xval, L, sumqx, sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

// Steps 1 to 3 for one group; false for a group stored as zero.
bool fit_group(const SearchSpec & sp, const GridMap & g, const float * xb, const float * w, GroupFit & fit) {
    const int n = sp.group;
    float xval[kMaxGroup], waux[kMaxGroup];
    int8_t L[kMaxGroup] = {};
    for (int i = 0; i < n; ++i) waux[i] = std::sqrt(w[i]);
    for (int k = 0; k < n / 8; ++k) fit.signs[k] = split_signs(xb + 8 * k, w + 8 * k, sp.even_signs, xval + 8 * k);
    float max = xval[0];
    for (int i = 1; i < n; ++i) max = max_f(max, xval[i]);
    if (sp.eps > 0.0f ? max < sp.eps : max == 0.0f) return false;
    float scale = max / float(2 * sp.kmaxq - 1), top = max;
    if (sp.from_qp) {
        uint8_t Lqp[kMaxGroup];
        scale = fit_positive_scale(n, sp.kmaxq + 1, xval, w, Lqp);
        top = scale * float(sp.kmaxq);
        if (top <= 0) return false;
    }
    scale = search_levels(sp, g, xval, w, waux, scale, top, L);
    if (scale < 0) {  // ggml: "should never happen"; the signs flip instead
        scale = -scale;
        for (int k = 0; k < n / 8; ++k) fit.signs[k] = uint8_t(sp.even_signs ? ~fit.signs[k] & 127 : ~fit.signs[k]);
    }
    for (int k = 0; k < n / g.dims; ++k) {
        uint32_t u = 0;
        for (int i = 0; i < g.dims; ++i) u |= uint32_t(L[g.dims * k + i]) << (g.bits * i);
        fit.index[k] = uint16_t(g.entry(u) >= 0 ? g.entry(u) : 0);  // always an entry by now
    }
    fit.scale = scale;
    return true;
}

// The groups of one 256-value super-block.
struct SuperBlockFit {
    GroupFit fit[QK_K / 16];
    bool live[QK_K / 16];  // false: a zero group (scale 0, no entries or signs stored)
    float max_scale;
};

void fit_super_block(const SearchSpec & sp, const float * xbl, const float * qw, SuperBlockFit & out) {
    const GridMap & g = iqg::grid_map(sp.lattice);
    float sumx2 = 0.0f;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
    const float sigma2 = sp.sigma2_mult * sumx2 / float(QK_K);
    out.max_scale = 0.0f;
    float w[kMaxGroup];
    for (int ib = 0; ib < QK_K / sp.group; ++ib) {
        const float * xb = xbl + sp.group * ib;
        for (int i = 0; i < sp.group; ++i) {
            if (qw)
                w[i] = qw[sp.group * ib + i] * std::sqrt(sigma2 + xb[i] * xb[i]);
            else
                w[i] = sp.sigma2_prior ? 0.25f * sigma2 + xb[i] * xb[i] : xb[i] * xb[i];
        }
        out.live[ib] = fit_group(sp, g, xb, w, out.fit[ib]);
        if (!out.live[ib]) {
            out.fit[ib].scale = 0.0f;
            continue;
        }
        out.max_scale = max_f(out.max_scale, out.fit[ib].scale);
    }
}

// The 4-bit code of a group scale against the super-block's d (id = 1 / d).
inline int scale_code(float id, float scale, int hi) {
    return kq::clamp_int(kq::nearest_int(0.5f * (id * scale - 1.0f)), 0, hi);
}

template <class Block, class Pack>
void quantize_blocks(const SearchSpec & sp, const float * x, void * y, int64_t n, const float * qw, Pack pack) {
    Block * b = static_cast<Block *>(y);
    SuperBlockFit f;
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        fit_super_block(sp, x + QK_K * ibl, qw ? qw + QK_K * ibl : nullptr, f);
        std::memset(&b[ibl], 0, sizeof(Block));
        const float d = f.max_scale / 31.0f;
        pack(f, d, f.max_scale != 0.0f ? 1.0f / d : 0.0f, b[ibl]);
    }
}

// IQ2_XXS: per 32 values two u32 words: 4 entry bytes; 4 x 7 sign bits and the 4-bit scale.
// Where every scale came out zero ggml stores nothing of the groups.
void pack_iq2_xxs(const SuperBlockFit & f, float d, float id, block_iq2_xxs & b) {
    if (f.max_scale == 0.0f) return;
    uint32_t q2[2 * (QK_K / 32)] = {};
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        if (f.live[ib])
            for (int k = 0; k < 4; ++k) {
                q2[2 * ib] |= uint32_t(f.fit[ib].index[k]) << (8 * k);
                q2[2 * ib + 1] |= uint32_t(f.fit[ib].signs[k]) << (7 * k);
            }
        q2[2 * ib + 1] |= uint32_t(scale_code(id, f.fit[ib].scale, 15)) << 28;
    }
    b.d = fp32_to_fp16(d);
    std::memcpy(b.qs, q2, sizeof q2);
}

// IQ2_XS: per 8 values a u16 of a 9-bit entry and 7 sign bits; a 4-bit scale per 16 values.
void pack_iq2_xs(const SuperBlockFit & f, float d, float id, block_iq2_xs & b) {
    if (f.max_scale == 0.0f) return;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        if (f.live[ib])
            for (int k = 0; k < 2; ++k) b.qs[2 * ib + k] = uint16_t(f.fit[ib].index[k] | (f.fit[ib].signs[k] << 9));
        b.scales[ib / 2] |= uint8_t(scale_code(id, f.fit[ib].scale, 15) << (4 * (ib % 2)));
    }
    b.d = fp32_to_fp16(d);
}

// IQ2_S: per 8 values an entry byte (qs[0, 32)), 2 more bits in qh, a sign byte (qs[32, 64)).
// ggml keeps the entries and signs even where every scale came out zero.
void pack_iq2_s(const SuperBlockFit & f, float d, float id, block_iq2_s & b) {
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        if (!f.live[ib]) continue;
        for (int k = 0; k < 2; ++k) {
            const int i8 = 2 * ib + k;
            b.qs[i8] = uint8_t(f.fit[ib].index[k] & 255);
            b.qh[i8 / 4] |= uint8_t((f.fit[ib].index[k] >> 8) << (2 * (i8 % 4)));
            b.qs[QK_K / 8 + i8] = f.fit[ib].signs[k];
        }
    }
    if (f.max_scale == 0.0f) return;
    b.d = fp32_to_fp16(d * kIq2S.d_fudge);
    for (int ib = 0; ib < QK_K / 16; ++ib)
        b.scales[ib / 2] |= uint8_t(scale_code(id, f.fit[ib].scale, 15) << (4 * (ib % 2)));
}

// IQ3_XXS: per 4 values an entry byte (qs[0, 64)); per 32 values a u32 of 4 x 7 sign bits and
// the 4-bit scale (qs[64, 96)).
void pack_iq3_xxs(const SuperBlockFit & f, float d, float id, block_iq3_xxs & b) {
    if (f.max_scale == 0.0f) return;
    uint32_t signs_scales[QK_K / 32] = {};
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        if (f.live[ib]) {
            for (int k = 0; k < 8; ++k) b.qs[8 * ib + k] = uint8_t(f.fit[ib].index[k]);
            for (int k = 0; k < 4; ++k) signs_scales[ib] |= uint32_t(f.fit[ib].signs[k]) << (7 * k);
        }
        signs_scales[ib] |= uint32_t(scale_code(id, f.fit[ib].scale, 15)) << 28;
    }
    std::memcpy(b.qs + QK_K / 4, signs_scales, sizeof signs_scales);
    b.d = fp32_to_fp16(d * kIq3Xxs.d_fudge);
}

// IQ3_S: per 4 values an entry byte and a ninth bit in qh; sign bytes; 4-bit scales per 32.
// ggml advances its qs and signs cursors only past groups it stored: after an all-zero group
// the later groups' entry and sign bytes sit one group early (qh and scales stay in place),
// which its dequantizer then misreads. Kept for byte-identity; real weights rarely have 32
// exact zeros in a row.
void pack_iq3_s(const SuperBlockFit & f, float d, float id, block_iq3_s & b) {
    int slot = 0;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        if (!f.live[ib]) continue;
        for (int k = 0; k < 8; ++k) {
            b.qs[8 * slot + k] = uint8_t(f.fit[ib].index[k] & 255);
            b.qh[ib] |= uint8_t((f.fit[ib].index[k] >> 8) << k);
        }
        for (int k = 0; k < 4; ++k) b.signs[4 * slot + k] = f.fit[ib].signs[k];
        ++slot;
    }
    if (f.max_scale == 0.0f) return;
    b.d = fp32_to_fp16(d * kIq3S.d_fudge);
    for (int ib = 0; ib < QK_K / 32; ++ib)
        b.scales[ib / 2] |= uint8_t(scale_code(id, f.fit[ib].scale, 15) << (4 * (ib % 2)));
}

}  // namespace

void quantize_row_iq2_xxs_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_blocks<block_iq2_xxs>(kIq2Xxs, x, y, n, qw, pack_iq2_xxs);
}

void quantize_row_iq2_xs_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_blocks<block_iq2_xs>(kIq2Xs, x, y, n, qw, pack_iq2_xs);
}

void quantize_row_iq2_s_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_blocks<block_iq2_s>(kIq2S, x, y, n, qw, pack_iq2_s);
}
void quantize_row_iq2_s(const float * x, void * y, int64_t n) { quantize_row_iq2_s_w(x, y, n, nullptr); }

void quantize_row_iq3_xxs_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_blocks<block_iq3_xxs>(kIq3Xxs, x, y, n, qw, pack_iq3_xxs);
}
void quantize_row_iq3_xxs(const float * x, void * y, int64_t n) { quantize_row_iq3_xxs_w(x, y, n, nullptr); }

void quantize_row_iq3_s_w(const float * x, void * y, int64_t n, const float * qw) {
    quantize_blocks<block_iq3_s>(kIq3S, x, y, n, qw, pack_iq3_s);
}
void quantize_row_iq3_s(const float * x, void * y, int64_t n) { quantize_row_iq3_s_w(x, y, n, nullptr); }

}  // namespace sl
