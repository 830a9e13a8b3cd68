// Public CPU kernel entry points: argument checks, then a call through the kernel table of the
// chosen instruction set (cpu/kernels.h). Tables are built once; a narrower set's kernels stand
// in wherever a wider one has none.
#include "cpu/matmul.h"

#include <cstring>
#include <vector>

#include "common/error.h"
#include "cpu/kernels.h"

namespace sl::cpu {

namespace impl {

uint8_t * scratch(int slot, size_t bytes) {
    thread_local std::vector<Line64> bufs[3];
    std::vector<Line64> & b = bufs[slot];
    const size_t n = (bytes + 63) / 64;
    if (b.size() < n) b.resize(n);
    return reinterpret_cast<uint8_t *>(b.data());
}

#if !(defined(__x86_64__) || defined(_M_X64))
void fill_avx2(KernelTable &) {}
void fill_avx512(KernelTable &) {}
void fill_amx(KernelTable &) {}
#endif
}  // namespace impl

namespace {

using impl::KernelTable;

struct Tables {
    KernelTable t[4];
    // The fill functions are built with their instruction set's flags: call only those the CPU runs.
    Tables() {
        impl::fill_scalar(t[0]);
        t[1] = t[2] = t[3] = t[0];
        const Isa hw = detect_isa();
        if (int(hw) >= int(Isa::AVX2)) {
            impl::fill_avx2(t[1]);
            t[2] = t[3] = t[1];
        }
        if (int(hw) >= int(Isa::AVX512)) {
            impl::fill_avx512(t[2]);
            t[3] = t[2];
        }
        if (hw == Isa::AMX) impl::fill_amx(t[3]);
    }
};

const KernelTable & table(Isa isa) {
    static const Tables tables;
    return tables.t[int(usable_isa(isa))];
}

bool is_float_type(QType wt) { return wt == QType::F32 || wt == QType::F16 || wt == QType::BF16; }

void check_weight(QType wt, int64_t K) {
    SL_CHECK(supports_weight_type(wt), "CPU kernels: unsupported weight type %u", unsigned(wt));
    const QTypeTraits * tr = qtype_traits(wt);
    SL_CHECK(K > 0 && K % tr->blck_size == 0, "CPU kernels: K = %lld is not a multiple of %s's block size %lld",
             (long long)K, tr->name, (long long)tr->blck_size);
}

impl::KvType kv_index(QType kt, int64_t head_dim) {
    impl::KvType k;
    switch (kt) {
        case QType::F16: k = impl::KV_F16; break;
        case QType::Q8_0: k = impl::KV_Q8_0; break;
        case QType::Q4_0: k = impl::KV_Q4_0; break;
        default: throw Error(strfmt("CPU attention: unsupported KV cache type %u (F16, Q8_0, Q4_0)", unsigned(kt)));
    }
    SL_CHECK(head_dim > 0 && head_dim <= 1024, "CPU attention: head_dim %lld out of range", (long long)head_dim);
    SL_CHECK(k == impl::KV_F16 || head_dim % 32 == 0, "CPU attention: head_dim %lld is not a multiple of 32",
             (long long)head_dim);
    return k;
}

}  // namespace

bool supports_weight_type(QType wt) {
    switch (wt) {
        case QType::F32: case QType::F16: case QType::BF16:
        case QType::Q4_0: case QType::Q4_1: case QType::Q5_0: case QType::Q5_1: case QType::Q8_0:
        case QType::Q2_K: case QType::Q3_K: case QType::Q4_K: case QType::Q5_K: case QType::Q6_K:
        case QType::IQ4_NL: case QType::IQ4_XS: case QType::MXFP4:
        case QType::IQ2_XXS: case QType::IQ2_XS: case QType::IQ2_S: case QType::IQ3_XXS: case QType::IQ3_S:
        case QType::IQ1_S: case QType::IQ1_M: case QType::TQ1_0: case QType::TQ2_0:
            return true;
        default:
            return false;
    }
}

QType act_type(QType wt) {
    SL_CHECK(supports_weight_type(wt), "CPU kernels: unsupported weight type %u", unsigned(wt));
    return is_float_type(wt) ? QType::F32 : QType::Q8_0;
}

size_t act_row_bytes(QType wt, int64_t K) {
    check_weight(wt, K);
    return is_float_type(wt) ? impl::act_f32_row_bytes(K) : impl::ActQ8::row_bytes(K);
}

void quantize_acts(Isa isa, QType wt, const float * x, int64_t ldx, int64_t K, int64_t t0, int64_t t1,
                   void * acts) {
    const size_t rb = act_row_bytes(wt, K);
    uint8_t * out = static_cast<uint8_t *>(acts);
    if (is_float_type(wt)) {
        for (int64_t t = t0; t < t1; ++t) memcpy(out + t * rb, x + t * ldx, size_t(K) * sizeof(float));
        return;
    }
    const impl::QuantizeFn q = table(isa).quantize_q8;
    for (int64_t t = t0; t < t1; ++t) q(x + t * ldx, K, out + t * rb);
}

void gemm(Isa isa, QType wt, const void * W, int64_t K, int64_t r0, int64_t r1, const void * acts,
          int64_t n_tok, float * y, int64_t ldy) {
    check_weight(wt, K);
    if (r1 <= r0 || n_tok <= 0) return;
    const size_t ldw = row_size(wt, K);
    table(isa).gemm[int(wt)](static_cast<const uint8_t *>(W) + r0 * ldw, ldw, K, r1 - r0,
                             static_cast<const uint8_t *>(acts), act_row_bytes(wt, K), n_tok, y + r0, ldy);
}

void attn_scores(Isa isa, QType kt, const float * q, int64_t ldq, int64_t n_q, const void * Kc, size_t ldk,
                 int64_t n_kv, int64_t head_dim, float scale, float * scores, int64_t lds) {
    const impl::KvType k = kv_index(kt, head_dim);
    if (n_q <= 0 || n_kv <= 0) return;
    table(isa).scores[k](q, ldq, n_q, static_cast<const uint8_t *>(Kc), ldk, n_kv, head_dim, scale, scores, lds);
}

void attn_values(Isa isa, QType vt, const float * w, int64_t ldw, int64_t n_q, const void * Vc, size_t ldv,
                 int64_t n_kv, int64_t head_dim, float * out, int64_t ldo) {
    const impl::KvType k = kv_index(vt, head_dim);
    if (n_q <= 0 || n_kv <= 0) return;
    table(isa).values[k](w, ldw, n_q, static_cast<const uint8_t *>(Vc), ldv, n_kv, head_dim, out, ldo);
}

void store_kv(Isa isa, QType kt, const float * src, int64_t lds, int64_t n, int64_t head_dim, void * dst,
              size_t ldd) {
    const impl::KvType k = kv_index(kt, head_dim);
    const impl::StoreFn st = table(isa).store[k];
    for (int64_t i = 0; i < n; ++i) st(src + i * lds, head_dim, static_cast<uint8_t *>(dst) + i * ldd);
}

// ---- active instruction set ----

void quantize_acts(QType wt, const float * x, int64_t ldx, int64_t K, int64_t t0, int64_t t1, void * acts) {
    quantize_acts(active_isa(), wt, x, ldx, K, t0, t1, acts);
}

void gemm(QType wt, const void * W, int64_t K, int64_t r0, int64_t r1, const void * acts, int64_t n_tok,
          float * y, int64_t ldy) {
    gemm(active_isa(), wt, W, K, r0, r1, acts, n_tok, y, ldy);
}

void attn_scores(QType kt, const float * q, int64_t ldq, int64_t n_q, const void * Kc, size_t ldk, int64_t n_kv,
                 int64_t head_dim, float scale, float * scores, int64_t lds) {
    attn_scores(active_isa(), kt, q, ldq, n_q, Kc, ldk, n_kv, head_dim, scale, scores, lds);
}

void attn_values(QType vt, const float * w, int64_t ldw, int64_t n_q, const void * Vc, size_t ldv, int64_t n_kv,
                 int64_t head_dim, float * out, int64_t ldo) {
    attn_values(active_isa(), vt, w, ldw, n_q, Vc, ldv, n_kv, head_dim, out, ldo);
}

void store_kv(QType kt, const float * src, int64_t lds, int64_t n, int64_t head_dim, void * dst, size_t ldd) {
    store_kv(active_isa(), kt, src, lds, n, head_dim, dst, ldd);
}

}  // namespace sl::cpu
