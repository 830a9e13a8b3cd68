// deepseek2's multi-head latent attention (DeepSeek-V2, llama.cpp's MLA form), on the CPU.
//
// Per token, h = rmsnorm(x): queries q = W_q h (or W_qb rmsnorm(W_qa h)), per head a no-rope part
// q_nope (nope dims) and a rotary part q_pe (n_rot); [c; k_pe] = W_kva h, c (kv_lora_rank) the
// normed latent, k_pe (n_rot) one rotary key part for every head. The model's head h attends with
// keys [W_kb,h c; rope(k_pe)] and values W_vb,h c; since q_nope . (W_kb,h c) = (W_kb,h^T q_nope) . c,
// the cache holds only [rope(k_pe); c] per token (one KV head) and the queries become
// [rope(q_pe); W_kb,h^T q_nope] (attn_k_b holds W_kb,h^T): an attention with one KV head whose
// output per head, a mix of latents, goes through W_vb,h (attn_v_b) and then W_o.
// (The rotary part comes first in our rows so that the rotation is that of the other models; the
// dot products are the same in any order.)
//
// Older files (attn_kv_b: W_kb and W_vb of every head stacked) cache each head's decompressed
// key [rope(k_pe); W_kb,h c] and value W_vb,h c instead.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "model/model.h"
#include "model/weights_load.h"

namespace sl {

namespace {

// dst row t (stride ld_dst) = src row t (stride ld_src), n values each, for n_tok rows.
void copy_rows(float * dst, int64_t ld_dst, const float * src, int64_t ld_src, int64_t n, int n_tok) {
    for (int t = 0; t < n_tok; ++t) std::memcpy(dst + t * ld_dst, src + t * ld_src, sizeof(float) * size_t(n));
}

}  // namespace

size_t Model::mla_floats() const {
    const Config & c = cfg_;
    if (c.arch != Arch::DeepSeek2) return 0;
    const size_t nope = size_t(c.head_dim_k_mla - c.n_rot), r = size_t(c.kv_lora_rank), vd = size_t(c.head_dim_v_mla);
    // q, q_a, [latent; k_pe], a head's input, a head's output, the heads' outputs (or attn_kv_b's)
    return size_t(c.n_head) * c.head_dim_k_mla + size_t(c.q_lora_rank) + r + c.n_rot + std::max(nope, r) +
           std::max(r, vd) + size_t(c.n_head) * (nope + vd);
}

void Model::mla_attention(Backend * be, int l, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    SL_CHECK(be->is_cpu() && s.mla, "internal: latent attention runs on the CPU");
    const int H = c.n_head, qk = c.head_dim_k_mla, vd = c.head_dim_v_mla, rot = c.n_rot, nope = qk - rot;
    const int r = c.kv_lora_rank, hd = c.head_dim;  // hd: a cached key head (MLA: rot + r)
    const size_t nb = size_t(params_.n_batch);
    float * q = s.mla;                                      // (n, H * qk)
    float * qa = q + nb * H * qk;                           // (n, q_lora_rank)
    float * kva = qa + nb * c.q_lora_rank;                  // (n, r + rot)
    float * hin = kva + nb * (r + rot);                     // (n, max(nope, r))
    float * hout = hin + nb * std::max(nope, r);            // (n, max(r, vd))
    float * o = hout + nb * std::max(r, vd);                // (n, H * (nope + vd))
    auto mm = [&](const WeightRef & w, const float * x, float * y, bool acc = false) {
        const WeightRef * pw = &w;
        be->matmul(&pw, &y, 1, x, n, acc);
    };

    // Queries (n, H * qk), each head [q_nope; q_pe].
    if (c.q_lora_rank > 0) {
        mm(L.wq_a, s.h, qa);
        be->rms_norm(qa, L.q_a_norm, qa, n, c.q_lora_rank, c.rms_eps);
        mm(L.wq_b, qa, q);
    } else {
        mm(L.wq, s.h, q);
    }
    // The latent (normed) and the rotary key part: kva rows [c; k_pe].
    mm(L.wkv_a, s.h, kva);
    for (int t = 0; t < n; ++t) {
        float * row = kva + size_t(t) * (r + rot);
        be->rms_norm(row, L.kv_a_norm, row, 1, r, c.rms_eps);
    }
    // Keys [k_pe; ...] and queries [q_pe; ...] of every cached head.
    const int n_kv_head = c.n_head_kv;
    for (int h = 0; h < n_kv_head; ++h) copy_rows(s.k + h * hd, c.kv_dim(), kva + r, r + rot, rot, n);
    for (int h = 0; h < H; ++h) copy_rows(s.q + size_t(h) * hd, c.q_dim(), q + size_t(h) * qk + nope, H * qk, rot, n);
    if (c.mla) {
        copy_rows(s.k + rot, hd, kva, r + rot, r, n);  // the latent (also the value)
        for (int h = 0; h < H; ++h) {  // q_nope absorbed: W_kb,h^T q_nope (attn_k_b's rows of head h)
            copy_rows(hin, nope, q + size_t(h) * qk, H * qk, nope, n);
            mm(expert_slice(L.wk_b, h, H), hin, hout);
            copy_rows(s.q + size_t(h) * hd + rot, c.q_dim(), hout, r, r, n);
        }
    } else {  // each head's key and value from the latent
        copy_rows(hin, r, kva, r + rot, r, n);
        mm(L.wkv_b, hin, o);  // rows per head [k_nope (nope); v (vd)]
        for (int h = 0; h < H; ++h) {
            copy_rows(s.k + size_t(h) * hd + rot, c.kv_dim(), o + size_t(h) * (nope + vd), H * (nope + vd), nope, n);
            copy_rows(s.v + size_t(h) * vd, c.v_dim(), o + size_t(h) * (nope + vd) + nope, H * (nope + vd), vd, n);
            copy_rows(s.q + size_t(h) * hd + rot, c.q_dim(), q + size_t(h) * qk, H * qk, nope, n);
        }
    }
    be->rope(s.q, s.k, n, false);
    // A quantized cache stores keys (and values) Hadamard-rotated (see forward.cpp); the MLA value,
    // a part of the key row, is rotated with it where its blocks start at a block of the key.
    const int hb = hadamard_block(hd);
    const bool quant_k = params_.kv_rotate && kv_.type_k != QType::F16;
    const bool rotate_k = quant_k && (!c.mla || rot % hb == 0);
    const bool rotate_v = c.mla ? rotate_k : params_.kv_rotate && kv_.type_v != QType::F16;
    if (rotate_k) {
        be->hadamard(s.q, int64_t(n) * H, hd);
        be->hadamard(s.k, int64_t(n) * n_kv_head, hd);
    }
    if (rotate_v && !c.mla) be->hadamard(s.v, int64_t(n) * n_kv_head, vd);
    const AttnParams ap{c.attn_scale, 0.0f, 0, nullptr};
    be->attention(kv_, k_cache_[size_t(l)], v_cache_[size_t(l)], s.q, s.k, s.v, s.att, n, ap);
    const int hv = c.head_dim_v;  // an output head: a latent (MLA) or a value
    if (rotate_v) be->hadamard(s.att, int64_t(n) * H * (c.mla ? hv / hb : 1), c.mla ? hb : hv);
    const float * att = s.att;
    if (c.mla) {  // each head's latent mix through W_vb,h
        for (int h = 0; h < H; ++h) {
            copy_rows(hin, r, s.att + size_t(h) * r, H * r, r, n);
            mm(expert_slice(L.wv_b, h, H), hin, hout);
            copy_rows(o + size_t(h) * vd, H * vd, hout, vd, vd, n);
        }
        att = o;
    }
    mm(L.wo, att, s.x, true);  // x += W_o . att
}

// deepseek2's latent attention weights (LayerWeights, Config::mla): the query path (low-rank or
// not), the latent's, and the latent's per-head key and value maps (attn_k_b / attn_v_b, or the
// older attn_kv_b).
void Model::load_mla_layer(const std::string & b, LayerWeights & L) {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const int64_t qk = c.head_dim_k_mla, vd = c.head_dim_v_mla, nope = qk - c.n_rot, r = c.kv_lora_rank;
    if (c.q_lora_rank > 0) {
        L.wq_a = matrix(f, c, b + "attn_q_a.weight", c.q_lora_rank, c.n_embd);
        L.q_a_norm = vector_f32(f, c, b + "attn_q_a_norm.weight", c.q_lora_rank);
        L.wq_b = matrix(f, c, b + "attn_q_b.weight", c.n_head * qk, c.q_lora_rank);
    } else {
        L.wq = matrix(f, c, b + "attn_q.weight", c.n_head * qk, c.n_embd);
    }
    L.wkv_a = matrix(f, c, b + "attn_kv_a_mqa.weight", r + c.n_rot, c.n_embd);
    L.kv_a_norm = vector_f32(f, c, b + "attn_kv_a_norm.weight", r);
    if (c.mla) {
        L.wk_b = matrix(f, c, b + "attn_k_b.weight", r, nope, c.n_head);
        L.wv_b = matrix(f, c, b + "attn_v_b.weight", vd, r, c.n_head);
    } else {
        L.wkv_b = matrix(f, c, b + "attn_kv_b.weight", c.n_head * (nope + vd), r);
    }
    L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, c.n_head * vd);
}

}  // namespace sl
