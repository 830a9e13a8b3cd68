// Scalar IEEE half and bfloat16 conversions, bit-exact with ggml's (round to nearest even;
// bf16 from f32 keeps NaNs quiet). Header-only and free of host-only code.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SL_HD __host__ __device__ inline
#else
#define SL_HD inline
#endif

namespace sl {

typedef uint16_t fp16_t;
typedef uint16_t bf16_t;

SL_HD float f32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, 4);
    return f;
}

SL_HD uint32_t f32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, 4);
    return w;
}

SL_HD float fp16_to_fp32(fp16_t h) {
    const uint32_t w = uint32_t(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = f32_from_bits(0x7800000u);  // 2^-112
    const float normalized = f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized = f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = 1u << 27;
    const uint32_t result =
        sign | (two_w < denormalized_cutoff ? f32_to_bits(denormalized) : f32_to_bits(normalized));
    return f32_from_bits(result);
}

SL_HD fp16_t fp32_to_fp16(float f) {
    const float scale_to_inf = f32_from_bits(0x77800000u);   // 2^112
    const float scale_to_zero = f32_from_bits(0x08800000u);  // 2^-110
    float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
    const uint32_t w = f32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return fp16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

SL_HD float bf16_to_fp32(bf16_t h) { return f32_from_bits(uint32_t(h) << 16); }

SL_HD bf16_t fp32_to_bf16(float f) {
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t((u >> 16) | 64);  // quiet NaN
    return bf16_t((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

}  // namespace sl
