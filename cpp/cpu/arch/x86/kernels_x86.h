// Internal to cpp/cpu/arch/x86: the pieces each instruction set's files hand to its table.
#pragma once

#include <immintrin.h>

#include "cpu/kernels.h"

// GCC 12's AVX-512 intrinsic headers trip -Wuninitialized when inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sl::cpu::impl {

// Small helpers with internal linkage (see SL_FORCE_INLINE in cpu/kernels.h).
// f16 <-> f32 by F16C (every file here is built with it): as fp16_to_fp32 / fp32_to_fp16.
static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t f2h(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
static inline float bf2f(uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
template <class T>
static inline T imin(T a, T b) {
    return a < b ? a : b;
}
template <class T>
static inline T imax(T a, T b) {
    return a < b ? b : a;
}

constexpr int qtype_block_size(QType t) {
    return (t == QType::Q2_K || t == QType::Q3_K || t == QType::Q4_K || t == QType::Q5_K || t == QType::Q6_K) ? 256
           : (t == QType::F32 || t == QType::F16 || t == QType::BF16)                                          ? 1
                                                                                                               : 32;
}

// Below this many tokens the quantized kernels read the weight blocks as stored; from it on
// they repack 16 rows at a time so that each decoded block serves many tokens (measured on
// Zen 4: the repacking costs about as much as 8-12 tokens' worth of the direct kernel).
constexpr int64_t kPackMinTokens = 10;
// The direct kernels walk this many rows for every group of tokens, so that the rows stay in
// cache while several groups of 4 tokens pass over them.
constexpr int64_t kRowBlock = 64;

namespace avx512 {
GemmFn gemv_kernel(QType wt);    // any n_tok; reads weight blocks as stored
GemmFn lanes_kernel(QType wt);   // any n_tok (meant for decode); Q4_0, Q4_1, Q5_1, Q8_0, else null
GemmFn packed_kernel(QType wt);  // n_tok >= kPackMinTokens; quantized types only
void fill_act_attn(KernelTable & t);
}  // namespace avx512

namespace avx2 {
GemmFn gemv_kernel(QType wt);
GemmFn packed_kernel(QType wt);
void fill_act_attn(KernelTable & t);
}  // namespace avx2

}  // namespace sl::cpu::impl
