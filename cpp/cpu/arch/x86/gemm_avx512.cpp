// The AVX-512 kernel table: per weight type, the kernel for a few tokens (blocks in lanes where
// lanes_avx512.cpp has one, else blocks as stored) and the repacking one from kPackMinTokens on.
#include "cpu/arch/x86/kernels_x86.h"

namespace sl::cpu::impl {

namespace {

GemmFn g_gemv[int(QType::COUNT)];
GemmFn g_packed[int(QType::COUNT)];

template <QType WT>
void gemm(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
          int64_t n_tok, float * y, int64_t ldy) {
    const GemmFn f = n_tok >= kPackMinTokens && g_packed[int(WT)] ? g_packed[int(WT)] : g_gemv[int(WT)];
    f(W, ldw, K, n_rows, acts, lda, n_tok, y, ldy);
}

template <QType WT>
void add(KernelTable & t) {
    const GemmFn lanes = avx512::lanes_kernel(WT);
    g_gemv[int(WT)] = lanes ? lanes : avx512::gemv_kernel(WT);
    g_packed[int(WT)] = avx512::packed_kernel(WT);
    t.gemm[int(WT)] = gemm<WT>;
}

}  // namespace

void fill_avx512(KernelTable & t) {
    add<QType::F32>(t);
    add<QType::F16>(t);
    add<QType::BF16>(t);
    if (has_avx512_bf16()) {
        // BF16 activations rounded to bf16 whatever the token count, as llama.cpp does: a token's
        // results do not depend on what else shares its batch (the server's decode steps).
        g_packed[int(QType::BF16)] = avx512bf16::packed_kernel();
        g_gemv[int(QType::BF16)] = avx512::gemv_bf16_rounding_kernel();
    }
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
    add<QType::TQ1_0>(t);
    add<QType::TQ2_0>(t);
    avx512::fill_act_attn(t);
}

}  // namespace sl::cpu::impl
