#include "quant/kquants_search.h"

#include <cmath>

namespace sl::kq {

namespace {

constexpr int N = kMaxGroupSize;
constexpr float kGroupMaxEps = 1e-15f;

// One lane per group, kLanes groups per vector. GCC/Clang vector extensions: element-wise IEEE
// operations (the same as the scalar ones, lane by lane), compiled to the target's SIMD (one
// SSE2 register on the x86-64 baseline). Comparisons give -1/0 masks; `m ? a : b` selects.
constexpr int kLanes = 4;
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

inline vf splat(float v) { return vf{} + v; }
inline vi splat_i(int v) { return vi{} + v; }
inline vf to_float(vi v) { return __builtin_convertvector(v, vf); }

inline vi vnearest(vf v) {
    const vf shifted = v + 12582912.0f;
    vi bits;
    std::memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

inline vi vclamp(vi v, int lo, int hi) {
    v = v < lo ? splat_i(lo) : v;
    return v > hi ? splat_i(hi) : v;
}

inline vf vabs(vf v) {
    vi bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0x7fffffff;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

// Transposes kLanes groups of n values: out[i][g] = x[g * n + i].
void transpose_in(int n, const float * x, vf * out) {
    for (int g = 0; g < kLanes; ++g)
        for (int i = 0; i < n; ++i) out[i][g] = x[g * n + i];
}

// ---- make_qx_quants ------------------------------------------------------------------------

// Codes for the trial inverse scales, with sum(w x l) and sum(w l^2).
void qx_trial(int n, int nmax, const vf * x, const vf * w, vf iscale, vi * L, vf * sumlx_out, vf * suml2_out) {
    vf sumlx = {}, suml2 = {};
    for (int i = 0; i < n; ++i) {
        const vi l = vclamp(vnearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = l;
        const vf fl = to_float(l);
        sumlx += w[i] * x[i] * fl;
        suml2 += w[i] * fl * fl;
    }
    *sumlx_out = sumlx;
    *suml2_out = suml2;
}

void qx_quants_lanes(int n, int nmax, const float * xin, const float * win, int8_t * Lout, float * scales) {
    vf x[N], w[N];
    transpose_in(n, xin, x);
    if (win)
        transpose_in(n, win, w);
    else
        for (int i = 0; i < n; ++i) w[i] = x[i] * x[i];
    vf max = {}, amax = {};
    for (int i = 0; i < n; ++i) {
        const vf ax = vabs(x[i]);
        const vi larger = ax > amax;
        amax = larger ? ax : amax;
        max = larger ? x[i] : max;
    }
    vi L[N], trial[N];
    vf sumlx, suml2;
    qx_trial(n, nmax, x, w, splat(float(-nmax)) / max, L, &sumlx, &suml2);
    vf scale = suml2 != 0.0f ? sumlx / suml2 : splat(0.0f);
    vf best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        const vf iscale = splat(-(float(nmax) + 0.1f * float(is))) / max;
        qx_trial(n, nmax, x, w, iscale, trial, &sumlx, &suml2);
        const vi take = (suml2 > 0.0f) & (sumlx * sumlx > best * suml2);
        const vf s = sumlx / suml2;
        scale = take ? s : scale;
        best = take ? s * sumlx : best;
        for (int i = 0; i < n; ++i) L[i] = take ? trial[i] : L[i];
    }
    for (int g = 0; g < kLanes; ++g) {
        const bool zero = amax[g] < kGroupMaxEps;
        scales[g] = zero ? 0.0f : scale[g];
        for (int i = 0; i < n; ++i) Lout[g * n + i] = int8_t(zero ? 0 : L[i][g] + nmax);
    }
}

}  // namespace

float make_q3_quants(int n, int nmax, const float * x, int8_t * L) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; ++i) {
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    }
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    const float iscale = float(-nmax) / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = int8_t(l);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * float(l);
        suml2 += w * float(l) * float(l);
    }
    // Coordinate descent: give code i the value that is optimal with the others held, and keep
    // the change if the fit sum(wxl)^2 / sum(wl^2) improves.
    for (int sweep = 0; sweep < 5; ++sweep) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * float(L[i]);
            if (!(slx > 0.0f)) continue;
            float sl2 = suml2 - w * float(L[i]) * float(L[i]);
            const int l = clamp_int(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (l == L[i]) continue;
            slx += w * x[i] * float(l);
            sl2 += w * float(l) * float(l);
            if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = int8_t(l);
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// ---- make_qkx2_quants ----------------------------------------------------------------------

namespace {

struct AffineGroups {
    int n, nmax;
    bool use_mad;
    vf x[N], w[N];
    vf min, max, sum_w, sum_x;  // min clamped to <= 0
};

void load_affine(int n, int nmax, const float * x, const float * weights, bool use_mad, AffineGroups & a) {
    a.n = n;
    a.nmax = nmax;
    a.use_mad = use_mad;
    transpose_in(n, x, a.x);
    transpose_in(n, weights, a.w);
    vf x0 = {}, w0 = {};  // value 0 of each group, read from the input (n >= 1)
    for (int g = 0; g < kLanes; ++g) {
        x0[g] = x[g * n];
        w0[g] = weights[g * n];
    }
    a.min = a.max = x0;
    a.sum_w = w0;
    a.sum_x = a.sum_w * x0;
    for (int i = 1; i < n; ++i) {
        a.min = a.x[i] < a.min ? a.x[i] : a.min;
        a.max = a.x[i] > a.max ? a.x[i] : a.max;
        a.sum_w += a.w[i];
        a.sum_x += a.w[i] * a.x[i];
    }
    a.min = a.min > 0.0f ? splat(0.0f) : a.min;
}

// Weighted error of codes L for value scale * L + min.
vf affine_error(const AffineGroups & a, const vi * L, vf scale, vf min) {
    vf err = {};
    for (int i = 0; i < a.n; ++i) {
        vf diff = scale * to_float(L[i]) + min - a.x[i];
        diff = a.use_mad ? vabs(diff) : diff * diff;
        err += a.w[i] * diff;
    }
    return err;
}

// One trial: codes for iscale relative to cur_min (the best min so far), then the least-squares
// scale and min for those codes (min <= 0). Returns the mask of lanes where the fit is regular.
vi affine_trial(const AffineGroups & a, vf iscale, vf cur_min, vi * L, vf * scale_out, vf * min_out) {
    vf sum_l = {}, sum_l2 = {}, sum_xl = {};
    for (int i = 0; i < a.n; ++i) {
        const vi l = vclamp(vnearest(iscale * (a.x[i] - cur_min)), 0, a.nmax);
        L[i] = l;
        const vf fl = to_float(l);
        sum_l += a.w[i] * fl;
        sum_l2 += a.w[i] * fl * fl;
        sum_xl += a.w[i] * fl * a.x[i];
    }
    const vf D = a.sum_w * sum_l2 - sum_l * sum_l;
    const vf s = (a.sum_w * sum_xl - a.sum_x * sum_l) / D;
    const vf m = (sum_l2 * a.sum_x - sum_l * sum_xl) / D;
    const vi positive = m > 0.0f;
    *min_out = positive ? splat(0.0f) : m;
    *scale_out = positive ? sum_xl / sum_l2 : s;
    return D > 0.0f;
}

void qkx2_quants_lanes(int n, int nmax, const float * x, const float * weights, uint8_t * Lout, float * scales,
                       float * mins, float rmin, float rdelta, int nstep, bool use_mad) {
    AffineGroups a;
    load_affine(n, nmax, x, weights, use_mad, a);
    vi L[N], trial[N];
    const vf iscale0 = splat(float(nmax)) / (a.max - a.min);
    vf scale = 1.0f / iscale0, min = a.min;
    for (int i = 0; i < n; ++i) L[i] = vclamp(vnearest(iscale0 * (a.x[i] - min)), 0, nmax);
    vf best = affine_error(a, L, scale, min);
    for (int is = 0; nstep >= 1 && is <= nstep; ++is) {
        // Both the scale range and the codes follow the best min found so far.
        const vf iscale = splat(rmin + rdelta * float(is) + float(nmax)) / (a.max - min);
        vf t_scale, t_min;
        vi take = affine_trial(a, iscale, min, trial, &t_scale, &t_min);
        const vf err = affine_error(a, trial, t_scale, t_min);
        take &= err < best;
        best = take ? err : best;
        scale = take ? t_scale : scale;
        min = take ? t_min : min;
        for (int i = 0; i < n; ++i) L[i] = take ? trial[i] : L[i];
    }
    // A group with max == min (all values equal and <= 0) has scale 0, codes 0, min -value.
    for (int g = 0; g < kLanes; ++g) {
        const bool flat = a.max[g] == a.min[g];
        scales[g] = flat ? 0.0f : scale[g];
        mins[g] = -(flat ? a.min[g] : min[g]);
        for (int i = 0; i < n; ++i) Lout[g * n + i] = uint8_t(flat ? 0 : L[i][g]);
    }
}

// Runs a kLanes-group kernel over ngroups groups of n values: whole vectors in place, a last
// partial vector on copies padded with its last group (the extra lanes' results are dropped).
// lanes(x, w, L, out) reads kLanes groups of x and w (w may be null), writes their codes and
// nout floats of results per group, at out[k * kLanes + g] for group g.
template <class Code, class Lanes>
void over_groups(int ngroups, int n, int nout, const float * x, const float * w, Code * L, float * const * outs,
                 Lanes && lanes) {
    int g = 0;
    for (; g + kLanes <= ngroups; g += kLanes) {
        float * o[2] = {outs[0] + g, nout > 1 ? outs[1] + g : nullptr};
        lanes(x + g * n, w ? w + g * n : nullptr, L + g * n, o);
    }
    if (g == ngroups) return;
    const int rest = ngroups - g;
    float xp[kLanes * N], wp[kLanes * N], op[2][kLanes];
    Code Lp[kLanes * N];
    for (int k = 0; k < kLanes; ++k) {
        const int src = g + (k < rest ? k : rest - 1);
        std::memcpy(xp + k * n, x + src * n, sizeof(float) * n);
        if (w) std::memcpy(wp + k * n, w + src * n, sizeof(float) * n);
    }
    float * o[2] = {op[0], op[1]};
    lanes(xp, w ? wp : nullptr, Lp, o);
    std::memcpy(L + g * n, Lp, sizeof(Code) * rest * n);
    for (int k = 0; k < nout; ++k) std::memcpy(outs[k] + g, op[k], sizeof(float) * rest);
}

}  // namespace

void make_qx_quants(int ngroups, int n, int nmax, const float * x, const float * weights, int8_t * L,
                    float * scales) {
    float * outs[1] = {scales};
    over_groups(ngroups, n, 1, x, weights, L, outs, [&](const float * xg, const float * wg, int8_t * Lg, float ** o) {
        qx_quants_lanes(n, nmax, xg, wg, Lg, o[0]);
    });
}

void make_qkx_quants(int ngroups, int n, int nmax, const float * x, const float * weights, uint8_t * L,
                     float * scales, float * mins, float rmin, float rdelta, int nstep, bool use_mad) {
    float * outs[2] = {scales, mins};
    over_groups(ngroups, n, 2, x, weights, L, outs, [&](const float * xg, const float * wg, uint8_t * Lg, float ** o) {
        qkx2_quants_lanes(n, nmax, xg, wg, Lg, o[0], o[1], rmin, rdelta, nstep, use_mad);
    });
}

// ---- make_qp_quants ------------------------------------------------------------------------

namespace {

// Weighted squared error of x against scale * min(nmax, round(iscale * x)).
float qp_error(int n, int nmax, const float * x, const float * w, float iscale, float scale) {
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = nmax < l ? nmax : l;
        const float diff = x[i] - scale * float(l);
        err += w[i] * diff * diff;
    }
    return err;
}

}  // namespace

float make_qp_quants(int n, int nmax, const float * x, uint8_t * L, const float * w) {
    float max = 0.0f;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < kGroupMaxEps) {
        std::memset(L, 0, size_t(n));
        return 0.0f;
    }
    // The first error uses the codes unclamped, stored as bytes (as ggml's does).
    float iscale = float(nmax) / max;
    for (int i = 0; i < n; ++i) L[i] = uint8_t(nearest_int(iscale * x[i]));
    const float scale = 1.0f / iscale;
    float best = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - scale * float(L[i]);
        best += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * float(is) + float(nmax)) / max;
        const float err = qp_error(n, nmax, x, w, iscale_is, 1.0f / iscale_is);
        if (err < best) {
            best = err;
            iscale = iscale_is;
        }
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = nmax < l ? nmax : l;
        L[i] = uint8_t(l);
        sumlx += w[i] * x[i] * float(l);
        suml2 += w[i] * float(l) * float(l);
    }
    // Coordinate descent as in make_q3_quants, with the given weights and codes >= 0 by type.
    for (int sweep = 0; sweep < 5; ++sweep) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            const float li = float(L[i]);
            float slx = sumlx - w[i] * x[i] * li;
            float sl2 = suml2 - w[i] * li * li;
            if (!(slx > 0.0f && sl2 > 0.0f)) continue;
            int l = nearest_int(x[i] * sl2 / slx);
            l = nmax < l ? nmax : l;
            if (l == L[i]) continue;
            slx += w[i] * x[i] * float(l);
            sl2 += w[i] * float(l) * float(l);
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = uint8_t(l);
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

}  // namespace sl::kq
