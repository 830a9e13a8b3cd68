// Gemma 4's blocks (llama.cpp's llama_model_gemma4 graph, src/models/gemma4.cpp; transformers'
// Gemma4TextModel), on the CPU. Text input only: the bidirectional sliding attention that
// llama.cpp turns on for image tokens does not arise. What a block does to the residual stream x:
//   h = rmsnorm(x) attn_norm
//   q = rope(rmsnorm_head(Wq h) q_norm)                  per head, the layer's own head size
//   k = rope(rmsnorm_head(Wk h) k_norm), v = rmsnorm_head(Wv h)   (no weight; Wv = Wk without
//       v_proj: "attention_k_eq_v"); a KV-shared layer (shared_kv_layers) computes neither and
//       reads an earlier layer's cache
//   x += rmsnorm(Wo attn(q, k, v)) post_attention_norm   scores q.k unscaled (scale 1.0)
//   x += rmsnorm(W_down (gelu(W_gate h') * W_up h')) post_ffw_norm,  h' = rmsnorm(x) ffn_norm
//   x += rmsnorm(proj(gelu(inp_gate x) * e_l)) post_norm  (E2B / E4B: per-layer input e_l)
//   x *= layer_output_scale                               (the whole stream, where the file has it)
// Sliding layers rotate with rope.freq_base_swa over their rope.dimension_count_swa dimensions;
// global ones with rope.freq_base and the rope_freqs factors ("proportional" rope: factors of
// 1e30 leave the dimensions past the rotated fraction as they are).
#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/weights_load.h"

namespace sl {

void Model::gemma4_inputs(const int32_t * tokens, const float * x, int n) {
    // Per-layer inputs (llama.cpp's project_per_layer_inputs): for each token and layer,
    //   e_l = (rmsnorm(P_l x / sqrt(n_embd)) per_layer_proj_norm + E_l[token] sqrt(n_per)) / sqrt(2)
    // P_l the layer's rows of per_layer_model_proj, E_l its slice of per_layer_token_embd.
    const Config & c = cfg_;
    const int per = c.n_embd_per_layer;
    const size_t width = size_t(per) * size_t(c.n_layer), total = size_t(n) * width;
    float * proj = ple_.data();
    float * emb = ple_.data() + size_t(params_.n_batch) * width;
    const WeightRef * w = &w_.ple_model_proj;
    cpu_->matmul(&w, &proj, 1, x, n, false);
    const float inv_embd = 1.0f / std::sqrt(float(c.n_embd));
    for (size_t i = 0; i < total; ++i) proj[i] *= inv_embd;
    cpu_->rms_norm(proj, w_.ple_proj_norm, proj, n * c.n_layer, per, c.rms_eps);
    cpu_->get_rows(w_.ple_tok_embd, tokens, n, emb);
    const float emb_scale = std::sqrt(float(per)), inv_sqrt2 = 1.0f / std::sqrt(2.0f);
    for (size_t i = 0; i < total; ++i) proj[i] = (proj[i] + emb[i] * emb_scale) * inv_sqrt2;
}

void Model::gemma4_layer(Backend * be, Backend * mm, int l, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    SL_CHECK(be->is_cpu(), "internal: gemma4 blocks run on the CPU");
    const int src = c.kv_source(l), hd = c.head_dim_of(l), n_q = c.n_head_of(l), n_kv = c.n_head_kv_of(src);
    const bool swa = c.is_swa(l), own_kv = src == l;
    const bool rotate_k = params_.kv_rotate && kv_.type_k != QType::F16;
    const bool rotate_v = params_.kv_rotate && kv_.type_v != QType::F16;
    const size_t x_len = size_t(n) * size_t(c.n_embd);

    // Attention: q (and, for a layer with a cache of its own, k and v) of h = rmsnorm(x)
    be->rms_norm(s.x, L.attn_norm, s.h, n, c.n_embd, c.rms_eps);
    const WeightRef * qkv[3] = {&L.wq, &L.wk, &L.wv};
    float * qkv_out[3] = {s.q, s.k, s.v};
    const int n_w = !own_kv ? 1 : L.wv.rows > 0 ? 3 : 2;
    if (imx_)
        for (int site = kImxQ; site < kImxQ + n_w; ++site) imx_observe(l, site, s.h, n, be);
    mm->matmul(qkv, qkv_out, n_w, s.h, n, false);
    apply_lora(be, qkv, qkv_out, n_w, s.h, s, n);
    const int64_t kv_len = int64_t(n) * n_kv * hd;
    if (own_kv && n_w == 2) be->copy(s.v, s.k, sizeof(float) * size_t(kv_len));  // values = keys' projection
    // Per-head RMS norms (the values' without a weight), then the rotation of the layer's kind
    be->rms_norm(s.q, L.attn_q_norm, s.q, n * n_q, hd, c.rms_eps);
    if (own_kv) {
        be->rms_norm(s.k, L.attn_k_norm, s.k, n * n_kv, hd, c.rms_eps);
        be->rms_norm(s.v, ones_.data(), s.v, n * n_kv, hd, c.rms_eps);
    }
    cpu_->rope_heads(s.q, own_kv ? s.k : nullptr, n, swa, n_q, n_kv, hd);
    if (rotate_k) {  // a quantized cache holds rotated keys (values): see Model::forward
        be->hadamard(s.q, int64_t(n) * n_q, hd);
        if (own_kv) be->hadamard(s.k, int64_t(n) * n_kv, hd);
    }
    if (rotate_v && own_kv) be->hadamard(s.v, kv_len / hd, hd);
    const AttnParams ap{c.attn_scale, 0.0f, swa ? c.n_swa : 0, nullptr, n_q};
    cpu_->attention(layer_kv(l), k_cache_[size_t(l)], v_cache_[size_t(l)], s.q, own_kv ? s.k : nullptr,
                    own_kv ? s.v : nullptr, s.att, n, ap);
    if (rotate_v) be->hadamard(s.att, int64_t(n) * n_q, hd);
    if (imx_) imx_observe(l, kImxO, s.att, n, be);
    add_output(be, mm, &L.wo, L.attn_post_norm, s.att, s, n);

    // Feed-forward (GeGLU), post-normed
    be->rms_norm(s.x, L.ffn_norm, s.h, n, c.n_embd, c.rms_eps);
    if (imx_) {
        imx_observe(l, kImxGate, s.h, n, be);
        imx_observe(l, kImxUp, s.h, n, be);
    }
    if (lora_on(L.w_gate) || lora_on(L.w_up)) {
        const WeightRef * gu[2] = {&L.w_gate, &L.w_up};
        float * gu_out[2] = {s.ff, s.up};
        for (int i = 0; i < 2; ++i) mm->matmul(&gu[i], &gu_out[i], 1, s.h, n, false);
        apply_lora(be, gu, gu_out, 2, s.h, s, n);
        be->act_mul(Glu::Gelu, s.ff, s.up, int64_t(n) * L.w_gate.rows);
    } else {
        mm->glu(Glu::Gelu, L.w_gate, L.w_up, s.h, s.ff, n);
    }
    if (imx_) imx_observe(l, kImxDown, s.ff, n, be);
    if (L.moe())
        gemma4_moe(be, mm, l, s, n);
    else
        add_output(be, mm, &L.w_down, L.ffn_post_norm, s.ff, s, n);

    // Per-layer input: x += rmsnorm(proj(gelu(inp_gate x) * e_l)) post_norm
    if (c.n_embd_per_layer > 0) {
        const int per = c.n_embd_per_layer;
        const size_t width = size_t(per) * size_t(c.n_layer);
        const WeightRef * gate = &L.ple_gate;
        mm->matmul(&gate, &s.ff, 1, s.x, n, false);
        for (int t = 0; t < n; ++t) {
            const float * e = ple_.data() + size_t(t) * width + size_t(l) * size_t(per);
            float * g = s.ff + size_t(t) * size_t(per);
            glu_mul(Glu::Gelu, g, e, g, size_t(per));
        }
        add_output(be, mm, &L.ple_proj, L.ple_post_norm, s.ff, s, n);
    }
    if (L.out_scale != 1.0f)
        for (size_t i = 0; i < x_len; ++i) s.x[i] *= L.out_scale;
}

void Model::gemma4_moe(Backend * be, Backend * mm, int l, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    const size_t len = size_t(n) * size_t(c.n_embd), nb = size_t(params_.n_batch) * size_t(c.n_embd);
    float * mlp = g4_moe_.data();
    float * in = mlp + nb;
    float * acc = in + nb;
    // The dense feed-forward (the shared expert), post-normed on its own
    const WeightRef * wd = &L.w_down;
    mm->matmul(&wd, &mlp, 1, s.ff, n, false);
    apply_lora(be, &wd, &mlp, 1, s.ff, s, n);
    be->rms_norm(mlp, L.ffn_post_norm_1, mlp, n, c.n_embd, c.rms_eps);
    // Router: logits of rmsnorm(x) ffn_gate_inp.scale / sqrt(n_embd); softmax, top k, renormalized,
    // each chosen expert's weight times its down scale
    be->rms_norm(s.x, L.router_w, in, n, c.n_embd, c.rms_eps);
    const WeightRef * gi = &L.gate_inp;
    if (imx_) imx_observe(l, kImxRouter, in, n, be);
    be->matmul(&gi, &s.router, 1, in, n, false);
    route(s.router, n, nullptr);
    if (L.down_exps_scale)
        for (size_t i = 0; i < size_t(n) * size_t(c.n_expert_used); ++i)
            routes_.weight[i] *= L.down_exps_scale[routes_.pick[i]];
    // Experts (GeGLU) on pre_norm_2(x), summed into acc, post-normed
    be->rms_norm(s.x, L.ffn_pre_norm_2, in, n, c.n_embd, c.rms_eps);
    std::fill(acc, acc + len, 0.0f);
    Scratch t = s;
    t.h = in;
    t.x = acc;
    run_experts(be, be, L, t, n, Glu::Gelu);
    be->rms_norm(acc, L.ffn_post_norm_2, acc, n, c.n_embd, c.rms_eps);
    // x += post_norm(dense + experts)
    be->add(mlp, acc, int64_t(len), 1.0f);
    be->rms_norm(mlp, L.ffn_post_norm, mlp, n, c.n_embd, c.rms_eps);
    be->add(s.x, mlp, int64_t(len), 1.0f);
}

// Gemma 4's blocks (gemma4.cpp): head shapes and feed-forward widths per layer, optional v_proj
// and layer_output_scale, no k projection in a layer reading another's cache, the E2B / E4B
// per-layer embedding.
void Model::load_gemma4_layers() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const int per = c.n_embd_per_layer;
    const bool any_global = std::count(c.swa_layers.begin(), c.swa_layers.end(), 1) < c.n_layer;
    if (!w_.rope_freqs && any_global)
        throw GGUFError(strfmt("%s: tensor 'rope_freqs.weight' is missing (the full-attention layers' "
                               "proportional rotary factors)", f.path().c_str()));
    if (per > 0) {
        const int64_t width = int64_t(per) * c.n_layer;
        w_.ple_tok_embd = matrix(f, c, "per_layer_token_embd.weight", c.n_vocab, width);
        check_readable(f, w_.ple_tok_embd, "per_layer_token_embd.weight");
        w_.ple_model_proj = matrix(f, c, "per_layer_model_proj.weight", width, c.n_embd);
        w_.ple_proj_norm = vector_f32(f, c, "per_layer_proj_norm.weight", per);
    }
    w_.layers.resize(c.n_layer);
    g4_router_w_.assign(c.n_expert > 0 ? size_t(c.n_layer) * size_t(c.n_embd) : 0, 0.0f);
    for (int l = 0; l < c.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights & L = w_.layers[l];
        const int hd = c.head_dim_of(l), q_dim = c.q_dim_of(l), kv_dim = c.kv_dim_of(l), n_ff = c.n_ff_of(l);
        for (const char * name : {"attn_qkv.weight"})
            if (f.find_tensor(b + name))
                throw GGUFError(strfmt("%s: tensor '%s%s' is not supported in a gemma4 model by this version",
                                       f.path().c_str(), b.c_str(), name));
        L.attn_norm = vector_f32(f, c, b + "attn_norm.weight", c.n_embd);
        L.wq = matrix(f, c, b + "attn_q.weight", q_dim, c.n_embd);
        L.attn_q_norm = vector_f32(f, c, b + "attn_q_norm.weight", hd);
        if (c.kv_source(l) == l) {  // (a layer reading another's cache projects no keys or values)
            L.wk = matrix(f, c, b + "attn_k.weight", kv_dim, c.n_embd);
            L.attn_k_norm = vector_f32(f, c, b + "attn_k_norm.weight", hd);
            if (f.find_tensor(b + "attn_v.weight")) L.wv = matrix(f, c, b + "attn_v.weight", kv_dim, c.n_embd);
        }
        L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, q_dim);
        L.attn_post_norm = vector_f32(f, c, b + "post_attention_norm.weight", c.n_embd);
        L.ffn_norm = vector_f32(f, c, b + "ffn_norm.weight", c.n_embd);
        L.w_gate = matrix(f, c, b + "ffn_gate.weight", n_ff, c.n_embd);
        L.w_up = matrix(f, c, b + "ffn_up.weight", n_ff, c.n_embd);
        L.w_down = matrix(f, c, b + "ffn_down.weight", c.n_embd, n_ff);
        L.ffn_post_norm = vector_f32(f, c, b + "post_ffw_norm.weight", c.n_embd);
        if (f.find_tensor(b + "layer_output_scale.weight")) {
            L.out_scale = *vector_f32(f, c, b + "layer_output_scale.weight", 1);
            if (!std::isfinite(L.out_scale))
                throw GGUFError(strfmt("%s: tensor '%slayer_output_scale.weight' is not finite", f.path().c_str(),
                                       b.c_str()));
        }
        if (f.find_tensor(b + "ffn_gate_inp.weight")) load_gemma4_experts(l);
        if (per > 0) {
            L.ple_gate = matrix(f, c, b + "inp_gate.weight", per, c.n_embd);
            L.ple_proj = matrix(f, c, b + "proj.weight", c.n_embd, per);
            L.ple_post_norm = vector_f32(f, c, b + "post_norm.weight", c.n_embd);
        }
    }
}

void Model::load_gemma4_experts(int l) {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const std::string b = "blk." + std::to_string(l) + ".";
    LayerWeights & L = w_.layers[size_t(l)];
    if (c.n_expert == 0)
        throw GGUFError(strfmt("%s: tensor '%sffn_gate_inp.weight' but no metadata '%s.expert_count'",
                               f.path().c_str(), b.c_str(), c.arch_name.c_str()));
    L.gate_inp = matrix(f, c, b + "ffn_gate_inp.weight", c.n_expert, c.n_embd);
    const float * scale = vector_f32(f, c, b + "ffn_gate_inp.scale", c.n_embd);
    float * rw = g4_router_w_.data() + size_t(l) * size_t(c.n_embd);
    for (int i = 0; i < c.n_embd; ++i) rw[i] = scale[i] / std::sqrt(float(c.n_embd));
    L.router_w = rw;
    if (f.find_tensor(b + "ffn_gate_up_exps.weight")) {  // each expert's gate rows, then its up rows
        L.gate_exps = matrix(f, c, b + "ffn_gate_up_exps.weight", 2 * int64_t(c.n_ff_exp), c.n_embd, c.n_expert);
    } else {
        L.gate_exps = matrix(f, c, b + "ffn_gate_exps.weight", c.n_ff_exp, c.n_embd, c.n_expert);
        L.up_exps = matrix(f, c, b + "ffn_up_exps.weight", c.n_ff_exp, c.n_embd, c.n_expert);
    }
    L.down_exps = matrix(f, c, b + "ffn_down_exps.weight", c.n_embd, c.n_ff_exp, c.n_expert);
    if (f.find_tensor(b + "ffn_down_exps.scale"))
        L.down_exps_scale = vector_f32(f, c, b + "ffn_down_exps.scale", c.n_expert);
    L.ffn_pre_norm_2 = vector_f32(f, c, b + "pre_ffw_norm_2.weight", c.n_embd);
    L.ffn_post_norm_1 = vector_f32(f, c, b + "post_ffw_norm_1.weight", c.n_embd);
    L.ffn_post_norm_2 = vector_f32(f, c, b + "post_ffw_norm_2.weight", c.n_embd);
}

}  // namespace sl
