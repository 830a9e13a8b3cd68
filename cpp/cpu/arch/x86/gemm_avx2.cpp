// The AVX2 kernel table (AVX2 + FMA + F16C): per weight type, the blocks-as-stored kernel, and
// a repacking one from kPackMinTokens on (16 tokens for the float types).
#include "cpu/arch/x86/kernels_x86.h"

namespace sl::cpu::impl {

namespace {

GemmFn g_gemv[int(QType::COUNT)];
GemmFn g_packed[int(QType::COUNT)];

template <QType WT>
void gemm(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
          int64_t n_tok, float * y, int64_t ldy) {
    // The float kernels' panels are packed by 8 x 8 transposes, dearer than AVX-512's: below 16
    // tokens the direct kernel is as fast on the small shapes (measured on Zen 4).
    constexpr int64_t min_tokens = qtype_block_size(WT) == 1 ? 16 : kPackMinTokens;
    const GemmFn f = n_tok >= min_tokens && g_packed[int(WT)] ? g_packed[int(WT)] : g_gemv[int(WT)];
    f(W, ldw, K, n_rows, acts, lda, n_tok, y, ldy);
}

template <QType WT>
void add(KernelTable & t) {
    g_gemv[int(WT)] = avx2::gemv_kernel(WT);
    g_packed[int(WT)] = avx2::packed_kernel(WT);
    t.gemm[int(WT)] = gemm<WT>;
}

}  // namespace

void fill_avx2(KernelTable & t) {
    add<QType::F32>(t);
    add<QType::F16>(t);
    add<QType::BF16>(t);
    add<QType::Q4_0>(t);
    add<QType::Q4_1>(t);
    add<QType::Q5_0>(t);
    add<QType::Q5_1>(t);
    add<QType::Q8_0>(t);
    add<QType::Q2_K>(t);
    add<QType::Q3_K>(t);
    add<QType::Q4_K>(t);
    add<QType::Q5_K>(t);
    add<QType::Q6_K>(t);
    add<QType::IQ4_NL>(t);
    add<QType::MXFP4>(t);
    add<QType::IQ4_XS>(t);
    add<QType::IQ2_XXS>(t);
    add<QType::IQ2_XS>(t);
    add<QType::IQ2_S>(t);
    add<QType::IQ3_XXS>(t);
    add<QType::IQ3_S>(t);
    add<QType::IQ1_S>(t);
    add<QType::IQ1_M>(t);
    avx2::fill_act_attn(t);
}

}  // namespace sl::cpu::impl
