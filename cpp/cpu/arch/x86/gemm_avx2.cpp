// The AVX2 kernel table (AVX2 + FMA + F16C): per weight type, the blocks-as-stored kernel, and
// a repacking one from pack_min_tokens() on.
#include "cpu/arch/x86/kernels_x86.h"

namespace sl::cpu::impl {

namespace {

GemmFn g_gemv[int(QType::COUNT)];
GemmFn g_packed[int(QType::COUNT)];

// From this many tokens on the repacking kernels run (measured on Zen 4, 576 x 1536 and 4096 x
// 4096): the float panels are packed by 8 x 8 transposes, dearer than AVX-512's; Q8_0 takes the
// sign trick in both kernels, and the direct one keeps up to about 16 tokens. The others' packed
// kernels are ahead from about 6 tokens, but passes below kPackMinTokens must stay on the direct
// kernels: there each token's results do not depend on the batch (the server's decode steps).
constexpr int64_t pack_min_tokens(QType t) {
    return qtype_block_size(t) == 1 || t == QType::Q8_0 ? 16 : kPackMinTokens;
}

template <QType WT>
void gemm(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts, size_t lda,
          int64_t n_tok, float * y, int64_t ldy) {
    constexpr int64_t min_tokens = pack_min_tokens(WT);
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
    add<QType::TQ1_0>(t);
    add<QType::TQ2_0>(t);
    avx2::fill_act_attn(t);
}

}  // namespace sl::cpu::impl
