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

// Values per block: 1 for the float types, 32 for the legacy ones, IQ4_NL and MXFP4, else 256.
constexpr int qtype_block_size(QType t) {
    return (t == QType::F32 || t == QType::F16 || t == QType::BF16) ? 1
           : (t == QType::Q4_0 || t == QType::Q4_1 || t == QType::Q5_0 || t == QType::Q5_1 || t == QType::Q8_0 ||
              t == QType::IQ4_NL || t == QType::MXFP4)
               ? 32
               : 256;
}

// Below this many tokens the quantized kernels read the weight blocks as stored; from it on
// they repack 16 rows at a time so that each decoded block serves many tokens (measured on
// Zen 4: the repacking costs about as much as 8-12 tokens' worth of the direct kernel).
constexpr int64_t kPackMinTokens = 10;
// The direct kernels walk this many rows for every group of tokens, so that the rows stay in
// cache while several groups of 4 tokens pass over them.
constexpr int64_t kRowBlock = 64;
// The decode kernels of the ternary types prefetch the weight bytes this far ahead (measured on
// a Sapphire Rapids: TQ1_0 at 4096 x 4096 from 2.1 to 4.3 GB/s with AVX2, 3.4 to 5.5 with AVX-512).
constexpr int64_t kTernaryPrefetch = 2048;
// Float weights, many tokens: the activations of a block of tokens (about this many bytes) pass
// over each packed panel of 16 rows (packed_float_avx512.cpp).
constexpr int64_t kFloatTokenBlockBytes = 4 * 1024 * 1024;
// and sum over chunks of this many values of K, the chunks' sums added in the output.
constexpr int64_t kFloatChunk = 512;

// The passes of the float kernels for many tokens (packed_float_avx512.cpp, the BF16 and AVX2
// ones): blocks of tb tokens, each packed once (pack_acts(t0, nt)); for each block, panels of 16
// weight rows (pack_panel(r0, nr)); for each panel, the block's tokens in groups of `group`
// (micro(t, n_t, r0, nr): tokens t .. t + n_t of the prompt, rows r0 .. r0 + nr).
template <class PackActs, class PackPanel, class Micro>
inline void packed_passes(int64_t n_rows, int64_t n_tok, int64_t tb, int64_t group, PackActs && pack_acts,
                          PackPanel && pack_panel, Micro && micro) {
    for (int64_t t0 = 0; t0 < n_tok; t0 += tb) {
        const int64_t nt = imin(tb, n_tok - t0);
        pack_acts(t0, nt);
        for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
            const int nr = int(imin<int64_t>(16, n_rows - r0));
            pack_panel(r0, nr);
            for (int64_t t = 0; t < nt; t += group) micro(t0 + t, int(imin(group, nt - t)), r0, nr);
        }
    }
}

// f(Type<T>{}) for the quantized weight type wt, the types of the AVX-512 packed and the AMX
// kernels; false for the others (the float types).
template <QType T>
struct Type {
    static constexpr QType value = T;
};
template <class F>
inline bool with_quant_type(QType wt, F && f) {
    switch (wt) {
        case QType::Q4_0: f(Type<QType::Q4_0>{}); return true;
        case QType::Q4_1: f(Type<QType::Q4_1>{}); return true;
        case QType::Q5_0: f(Type<QType::Q5_0>{}); return true;
        case QType::Q5_1: f(Type<QType::Q5_1>{}); return true;
        case QType::Q8_0: f(Type<QType::Q8_0>{}); return true;
        case QType::Q2_K: f(Type<QType::Q2_K>{}); return true;
        case QType::Q3_K: f(Type<QType::Q3_K>{}); return true;
        case QType::Q4_K: f(Type<QType::Q4_K>{}); return true;
        case QType::Q5_K: f(Type<QType::Q5_K>{}); return true;
        case QType::Q6_K: f(Type<QType::Q6_K>{}); return true;
        case QType::IQ4_NL: f(Type<QType::IQ4_NL>{}); return true;
        case QType::MXFP4: f(Type<QType::MXFP4>{}); return true;
        case QType::IQ4_XS: f(Type<QType::IQ4_XS>{}); return true;
        case QType::IQ2_XXS: f(Type<QType::IQ2_XXS>{}); return true;
        case QType::IQ2_XS: f(Type<QType::IQ2_XS>{}); return true;
        case QType::IQ2_S: f(Type<QType::IQ2_S>{}); return true;
        case QType::IQ3_XXS: f(Type<QType::IQ3_XXS>{}); return true;
        case QType::IQ3_S: f(Type<QType::IQ3_S>{}); return true;
        case QType::IQ1_S: f(Type<QType::IQ1_S>{}); return true;
        case QType::IQ1_M: f(Type<QType::IQ1_M>{}); return true;
        case QType::TQ1_0: f(Type<QType::TQ1_0>{}); return true;
        case QType::TQ2_0: f(Type<QType::TQ2_0>{}); return true;
        default: return false;
    }
}

// f(Int<n>{}) for a run-time n in [1, N]: micro-kernels templated on their token count.
template <int N>
struct Int {
    static constexpr int value = N;
};
template <int N, class F>
inline void with_count(int n, F && f) {
    if constexpr (N > 0) {
        if (n == N)
            f(Int<N>{});
        else
            with_count<N - 1>(n, f);
    }
}

namespace avx512 {
GemmFn gemv_kernel(QType wt);    // any n_tok; reads weight blocks as stored
GemmFn lanes_kernel(QType wt);   // any n_tok (meant for decode); Q4_0, Q4_1, Q5_1, Q8_0, IQ4_NL, MXFP4, else null
GemmFn gemv_bf16_rounding_kernel();  // BF16, few tokens, activations rounded to bf16 (as the packed
                                     // avx512bf16 kernel rounds them)
GemmFn packed_kernel(QType wt);  // n_tok >= kPackMinTokens; quantized and float types
GemmFn packed_float_kernel(QType wt);  // F32, F16, BF16 (packed_float_avx512.cpp), else null
// The 16-row weight panels of the packed kernels (packed_avx512.cpp), also read by the AMX ones:
// per 32-value block kPanelBlockBytes bytes: unsigned codes[8][16 rows][4] (a 64-byte row per 4
// values: an AMX B tile in VNNI order), float dg[2][16] at kPanelDg, float mg[2][16] at kPanelMg
// (value = dg * code + mg; [0] for the block's values 0..15, [1] for 16..31).
constexpr int kPanelBlockBytes = 8 * 64 + 4 * 64, kPanelDg = 512, kPanelMg = 640;
// Packs rows [0, nr) of W (nr <= 16, the rest zero) into P, K / 32 blocks.
typedef void (*PackPanelFn)(const uint8_t * W, size_t ldw, int64_t K, int nr, uint8_t * P);
// The packer of a quantized type, null for the others; *groups16: dg / mg differ between the
// two halves of a block.
PackPanelFn panel_packer(QType wt, bool * groups16);
void fill_act_attn(KernelTable & t);
}  // namespace avx512

namespace avx512bf16 {
GemmFn packed_kernel();  // BF16 weights, n_tok >= kPackMinTokens; needs AVX512_BF16
}  // namespace avx512bf16

namespace avx2 {
GemmFn gemv_kernel(QType wt);
GemmFn packed_kernel(QType wt);        // many tokens (gemm_avx2.cpp: pack_min_tokens)
GemmFn packed_quant_kernel(QType wt);  // the quantized types (packed_avx2.cpp), else null
void fill_act_attn(KernelTable & t);
}  // namespace avx2

}  // namespace sl::cpu::impl
