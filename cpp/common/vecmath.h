// Hot elementwise loops (the sampler over the vocabulary, softmax and SwiGLU in the CPU backend):
// max, exp and sums, written once with GCC/Clang vector extensions (4 floats: SSE2 on the x86-64
// baseline, NEON on Arm) so that they need no per-ISA file and no -ffast-math.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

namespace sl::vec {

typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));

inline f4 load(const float * p) {
    f4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store(float * p, f4 v) { std::memcpy(p, &v, sizeof v); }

inline f4 splat(float x) { return f4{x, x, x, x}; }

// mask ? a : b, lane by lane (mask lanes are all ones or all zeros).
inline f4 select(i4 mask, f4 a, f4 b) { return (f4)((mask & (i4)a) | (~mask & (i4)b)); }

// Cephes' single-precision exp polynomial (about 1 ulp) for x <= 0; 0 below -87. Clamping
// first keeps NaN and positive input (non-finite logits) away from the integer conversion.
inline f4 exp_nonpos(f4 x) {
    const i4 tiny = x < splat(-87.0f);
    f4 xc = select(x > splat(-87.0f), x, splat(-87.0f));
    xc = select(xc < splat(0.0f), xc, splat(0.0f));
    const f4 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const f4 nf = (xc * splat(1.44269504088896341f) + magic) - magic;
    const f4 r = (xc - nf * splat(0.693359375f)) - nf * splat(-2.12194440e-4f);
    f4 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    const i4 bits = (__builtin_convertvector(nf, i4) + 127) << 23;  // 2^n, n in [-126, 0]
    return select(tiny, splat(0.0f), p * (f4)bits);
}

inline float exp_nonpos(float x) {
    const f4 v = exp_nonpos(splat(x));
    return v[0];
}

// dst[i] = src[i], with NaN replaced by -inf.
inline void copy_nan_to_ninf(float * dst, const float * src, size_t n) {
    const f4 ninf = splat(-std::numeric_limits<float>::infinity());
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const f4 v = load(src + i);
        store(dst + i, select(v == v, v, ninf));
    }
    for (; i < n; ++i) dst[i] = src[i] == src[i] ? src[i] : ninf[0];
}

// Largest value of x[0, n); NaN entries are ignored (-inf when all are NaN).
inline float max_value(const float * x, size_t n) {
    const float ninf = -std::numeric_limits<float>::infinity();
    f4 m0 = splat(ninf), m1 = m0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const f4 a = load(x + i), b = load(x + i + 4);
        m0 = select(a > m0, a, m0);
        m1 = select(b > m1, b, m1);
    }
    m0 = select(m1 > m0, m1, m0);
    float r = ninf;
    for (int j = 0; j < 4; ++j) r = m0[j] > r ? m0[j] : r;
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
}

// Sum of exp((x[i] - mx) * scale) over x[0, n); with out, the terms are also stored there (out
// may be x). Each block of 256 terms is summed in float lanes, the blocks in double.
inline double sum_exp(const float * x, float * out, size_t n, float mx, float scale) {
    const f4 vmx = splat(mx), vs = splat(scale);
    double r = 0.0;
    size_t i = 0;
    while (i + 4 <= n) {
        const size_t end = i + 256 < n ? i + 256 : n;
        f4 acc = splat(0.0f);
        for (; i + 4 <= end; i += 4) {
            const f4 e = exp_nonpos((load(x + i) - vmx) * vs);
            if (out) store(out + i, e);
            acc += e;
        }
        r += (double(acc[0]) + double(acc[1])) + (double(acc[2]) + double(acc[3]));
    }
    for (; i < n; ++i) {
        const float e = exp_nonpos((x[i] - mx) * scale);
        if (out) out[i] = e;
        r += double(e);
    }
    return r;
}

// out[i] = silu(g[i]) * u[i], silu(g) = g / (1 + exp(-g)); out may alias g or u.
inline void silu_mul(const float * g, const float * u, float * out, size_t n) {
    const f4 one = splat(1.0f), zero = splat(0.0f);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const f4 x = load(g + i);
        const i4 pos = x >= zero;
        const f4 e = exp_nonpos(select(pos, -x, x));  // exp(-|x|)
        const f4 sig = select(pos, one / (one + e), e / (one + e));
        store(out + i, x * sig * load(u + i));
    }
    for (; i < n; ++i) {
        const float x = g[i];
        const float e = exp_nonpos(x >= 0 ? -x : x);
        out[i] = x * (x >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e)) * u[i];
    }
}

// y[i] += x[i].
inline void add_to(float * y, const float * x, size_t n) {
    for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

// gpt-oss's clamped SwiGLU (ggml's swiglu_oai, alpha 1.702, limit 7): x = min(g, 7),
// out = x * sigmoid(1.702 x) * (clamp(u, -7, 7) + 1). out may alias g or u.
inline void swiglu_oai_mul(const float * g, const float * u, float * out, size_t n) {
    constexpr float kAlpha = 1.702f, kLimit = 7.0f;
    for (size_t i = 0; i < n; ++i) {
        const float x = g[i] < kLimit ? g[i] : kLimit;
        const float y = u[i] < -kLimit ? -kLimit : u[i] > kLimit ? kLimit : u[i];
        out[i] = x / (1.0f + std::exp(kAlpha * -x)) * (y + 1.0f);
    }
}

// out[i] = gelu(g[i]) * u[i] (GeGLU) with gelu's tanh approximation:
//   gelu(x) = x / 2 * (1 + tanh(z)) = x * sigmoid(2 z),  z = sqrt(2 / pi) * (x + 0.044715 x^3).
// out may alias g or u.
inline void gelu_mul(const float * g, const float * u, float * out, size_t n) {
    constexpr float kA = 2.0f * 0.7978845608028654f, kB = 2.0f * 0.7978845608028654f * 0.044715f;
    const f4 one = splat(1.0f), zero = splat(0.0f), a = splat(kA), b = splat(kB);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const f4 x = load(g + i);
        const f4 z2 = x * (a + b * x * x);  // 2 z
        const i4 pos = z2 >= zero;
        const f4 e = exp_nonpos(select(pos, -z2, z2));  // exp(-|2 z|)
        const f4 sig = select(pos, one / (one + e), e / (one + e));
        store(out + i, x * sig * load(u + i));
    }
    for (; i < n; ++i) {
        const float x = g[i];
        const float z2 = x * (kA + kB * x * x);
        const float e = exp_nonpos(z2 >= 0 ? -z2 : z2);
        out[i] = x * (z2 >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e)) * u[i];
    }
}

// x . y over n floats, in four float lanes.
inline float dot(const float * x, const float * y, size_t n) {
    f4 acc = splat(0.0f);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) acc += load(x + i) * load(y + i);
    float r = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; i < n; ++i) r += x[i] * y[i];
    return r;
}

// True when one of x[0, 16) is greater than t.
inline bool any_greater16(const float * x, float t) {
    const f4 vt = splat(t);
    const i4 m = (load(x) > vt) | (load(x + 4) > vt) | (load(x + 8) > vt) | (load(x + 12) > vt);
    return (m[0] | m[1] | m[2] | m[3]) != 0;
}

// True when one of x[0, 16) equals t.
inline bool any_equal16(const float * x, float t) {
    const f4 vt = splat(t);
    const i4 m = (load(x) == vt) | (load(x + 4) == vt) | (load(x + 8) == vt) | (load(x + 12) == vt);
    return (m[0] | m[1] | m[2] | m[3]) != 0;
}

}  // namespace sl::vec
