// Scale (and minimum) searches shared by the k-quant quantizers and the weighted legacy ones:
// ggml's searches (make_qx_quants, make_q3_quants, make_qkx2/3_quants, make_qp_quants), with and
// without importance weights, with the same float operations in the same order, so the codes
// and scales they pick are ggml's.
#pragma once

#include <cstdint>
#include <cstring>

namespace sl::kq {

// Round to nearest, ties to even, for |v| < 2^22 (adding 1.5 * 2^23 puts the integer part in
// the low mantissa bits). Values out of that range give garbage, never undefined behaviour.
inline int nearest_int(float v) {
    const float shifted = v + 12582912.0f;
    int32_t bits;
    std::memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K / Q5_K.
inline void get_scale_min_k4(int j, const uint8_t * s, uint8_t * sc, uint8_t * m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = uint8_t((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = uint8_t((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// The searches run on several groups at once, one group per SIMD lane (compiler vector
// extensions); every lane does exactly the float operations of ggml's one-group search, in the
// same order, so the results do not depend on the grouping (or on the padding of a last, partial
// vector of groups). This relies on multiply-adds not being fused (the x86-64 baseline has no
// FMA; a build with -ffp-contract=fast on an FMA target could differ from ggml's x86 bytes in
// rare last-bit ties).
constexpr int kMaxGroupSize = 32;

// Symmetric codes for ngroups groups of n (<= 32) values: group g is x[g * n, g * n + n), its
// codes L[g * n + i] in [0, 2 * nmax) stand for (L - nmax) * scales[g]. Tries 19 scales around
// nmax / max|x| and keeps the best weighted least-squares fit (ggml's make_qx_quants with
// rmse_type 1): weights[g * n + i], or x^2 where weights is null. The scale is signed; an
// all-zero group (max|x| < 1e-15) gets scale 0 and codes 0.
void make_qx_quants(int ngroups, int n, int nmax, const float * x, const float * weights, int8_t * L,
                    float * scales);

// As above with nmax = 4 for Q3_K, one group, weights x^2: starts from nmax / max|x| and then
// moves single codes while that improves the weighted fit (up to 5 sweeps). Codes in [0, 2 * nmax).
float make_q3_quants(int n, int nmax, const float * x, int8_t * L);

// Codes in [0, nmax] for ngroups groups of n (<= 32) values, value scales[g] * L - mins[g]
// (mins[g] >= 0), searching nstep + 1 scales (nmax + rmin + rdelta * k) / (max - min) with a
// weighted least-squares refit of scale and min at each, by squared (or, with use_mad,
// absolute) error: ggml's make_qkx2_quants, and make_qkx3_quants given weights (the two differ
// only where weights are null). Layout of x, weights and L as for make_qx_quants.
void make_qkx_quants(int ngroups, int n, int nmax, const float * x, const float * weights, uint8_t * L,
                     float * scales, float * mins, float rmin, float rdelta, int nstep, bool use_mad);

// Non-negative codes in [0, nmax] for n (<= 32) values x >= 0 (the sub-block scales or mins of
// a weighted k-quant super-block), value scale * L: the scale nmax / max x and 8 neighbours by
// weighted squared error, then single-code moves while the weighted fit improves (ggml's
// make_qp_quants). Returns the scale; all x < 1e-15 gives 0 and codes 0.
float make_qp_quants(int n, int nmax, const float * x, uint8_t * L, const float * weights);

}  // namespace sl::kq
