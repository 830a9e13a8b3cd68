// The forward pass of a llama-style decoder, written once against the Backend interface.
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/vecmath.h"
#include "model/command_r.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/op_offload.h"

namespace sl {

void Model::forward(const int32_t * tokens, const int32_t * pos, const int32_t * slot, const uint8_t * want, int n,
                    float * logits, bool embeddings, bool classify) {
    const Config & c = cfg_;
    const BatchInfo batch{n, pos, slot};
    for (auto & [be, s] : scratch_) be->begin_batch(batch);
    const size_t x_bytes = size_t(n) * c.n_embd * sizeof(float);

    // Token embedding, on the CPU.
    Backend * cur = cpu_.get();
    cpu_->get_rows(w_.tok_embd, tokens, n, scratch(cur).x);
    if (c.embd_scale != 1.0f) {  // gemma: sqrt(n_embd)
        float * x = scratch(cur).x;
        for (size_t i = 0; i < size_t(n) * c.n_embd; ++i) x[i] *= c.embd_scale;
    }
    if (c.n_embd_per_layer > 0) gemma4_inputs(tokens, scratch(cur).x, n);  // (E2B / E4B)

    // Moves the residual stream to another device at a split boundary.
    auto move_to = [&](Backend * be) {
        if (be == cur) return;
        float * src = scratch(cur).x;
        float * dst = scratch(be).x;
        if (cur->is_cpu()) {
            be->upload(dst, src, x_bytes);
        } else if (be->is_cpu()) {
            cur->download(dst, src, x_bytes);
        } else {
            cur->download(host_x_, src, x_bytes);
            be->upload(dst, host_x_, x_bytes);
        }
        cur = be;
    };

    for (int l = 0; l < c.n_layer; ++l) {
        Backend * be = layer_backend_[l];
        move_to(be);
        const LayerWeights & L = w_.layers[l];
        Scratch & s = scratch(be);
        // Matmuls of a CPU layer may run on the GPU for large batches (op offload).
        Backend * mm = offload_ && be->is_cpu() && n >= OpOffload::kMinBatch ? offload_.get() : be;
        n_op_offload_ += mm != be;
        if (c.arch == Arch::Gemma4) {  // (gemma4.cpp)
            gemma4_layer(be, mm, l, s, n);
            continue;
        }
        if (c.arch == Arch::Deci) {  // (deci.cpp: shapes per layer)
            deci_layer(be, mm, l, s, n);
            continue;
        }
        if (c.nemotron() && !c.is_conv(l) && L.wq.rows == 0) {  // its MLP / MoE layers (nemotron_h.cpp)
            nemotron_h_mlp(mm, l, s, n);
            continue;
        }
        if (c.router_on_input && L.moe()) router_logits(be, l, s.x, n);  // smallthinker: of the block's input
        if (!be->is_cpu() && host_mixer(l))  // (its input down, the mixer on the CPU, its output up)
            mixer_on_host(be, l, s, n, pos, slot);
        else
            mixer(be, mm, l, s, n, pos, slot);
        if (c.nemotron()) continue;  // (one mixer a layer)
        // Feed-forward: x += W_down . (f(W_gate h) * W_up h), h = rmsnorm(x) (olmo2: x), f = silu or gelu
        // (cohere2: the attention's normed input h, still in s.h)
        const float * hf = L.ffn_norm || c.parallel_ffn ? s.h : s.x;
        if (L.ffn_norm) norm(be, s.x, L.ffn_norm, s.h, n, L.ffn_norm_b);
        if (L.moe()) {  // x += sum over the token's chosen experts e of weight_e * expert_e(h)
            if (be->is_cpu())
                moe_ffn(be, mm, L, s, n);
            else  // a GPU block's experts (and a gated shared expert) run on the host (moe.cpp)
                moe_ffn_host(be, L, s, n);
            if (L.w_gate.rows == 0 || (!be->is_cpu() && L.ffn_gate_inp_shexp)) continue;
            mm = be;  // then the shared expert's, below (on the CPU: the experts' layers run there)
        }
        ffn(be, mm, l, hf, s, n);
    }

    // Output: logits = W_out . rmsnorm(x) for the rows that want them.
    move_to(output_backend_);
    Scratch & s = scratch(output_backend_);
    int n_out = 0;
    for (int i = 0; i < n;) {
        if (want && !want[i]) {
            ++i;
            continue;
        }
        int e = i + 1;
        while (e < n && (!want || want[e])) ++e;
        if (n_out != i)
            output_backend_->copy(s.x + size_t(n_out) * c.n_embd, s.x + size_t(i) * c.n_embd,
                                  size_t(e - i) * c.n_embd * sizeof(float));
        n_out += e - i;
        i = e;
    }
    n_eval_ += n;
    ++n_forward_;
    if (n_out == 0 || !logits) return;
    norm(output_backend_, s.x, w_.output_norm, s.h, n_out, w_.output_norm_b);
    if (embeddings) {  // the normed hidden states themselves (or a reranker's scores of them)
        const size_t bytes = size_t(n_out) * c.n_embd * sizeof(float);
        float * rows = classify ? (output_backend_->is_cpu() ? s.h : host_x_) : logits;
        if (rows != s.h) {
            if (output_backend_->is_cpu())
                std::memcpy(rows, s.h, bytes);
            else
                output_backend_->download(rows, s.h, bytes);
        }
        if (classify) classify_rows(rows, n_out, logits);
        return;
    }
    const WeightRef * wout = &w_.output;
    float * out = output_backend_->is_cpu() ? logits : dev_logits_;
    if (imx_) imx_observe(-1, 0, s.h, n_out, output_backend_);
    output_backend_->matmul(&wout, &out, 1, s.h, n_out, false);
    apply_lora(output_backend_, &wout, &out, 1, s.h, s, n_out);
    if (!output_backend_->is_cpu())
        output_backend_->download(logits, dev_logits_, size_t(n_out) * c.n_vocab * sizeof(float));
    if (c.final_softcap > 0) {  // gemma2: logits -> cap * tanh(logits / cap)
        const float cap = c.final_softcap;
        cpu_->pool().parallel_for(n_out, [&](int64_t r0, int64_t r1) {
            for (float * x = logits + r0 * c.n_vocab; x < logits + r1 * c.n_vocab; ++x) *x = cap * std::tanh(*x / cap);
        });
    }
    if (c.logit_scale != 1.0f) {  // granite: logits / logit_scale (cohere2: times its logit_scale)
        const float inv = 1.0f / c.logit_scale;
        cpu_->pool().parallel_for(n_out, [&](int64_t r0, int64_t r1) {
            for (float * x = logits + r0 * c.n_vocab; x < logits + r1 * c.n_vocab; ++x) *x *= inv;
        });
    }
}

void Model::mixer(Backend * be, Backend * mm, int l, Scratch & s, int n, const int32_t * pos, const int32_t * slot) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[l];
    const bool rotate_k = params_.kv_rotate && kv_.type_k != QType::F16;
    const bool rotate_v = params_.kv_rotate && kv_.type_v != QType::F16;
    if (c.delta_net) {  // gated attention or a gated delta net (qwen35.cpp)
        qwen35_mixer(be, l, s, n, slot);
    } else if (c.is_conv(l) && !c.parallel_ssm) {  // lfm2: x += out_proj(C * conv(B * x)), (B, C, x) = in_proj rmsnorm(x)
        norm(be, s.x, L.attn_norm, s.h, n);
        if (c.mamba2())  // granitehybrid: a Mamba-2 mixer instead (mamba2.cpp)
            mamba2_block(l, s, n, slot);
        else
            conv_block(l, s, n, slot);
    } else {
        // Attention: x += Wo . attn(rope(Wq h), rope(Wk h), Wv h), h = rmsnorm(x) (olmo2: h = x)
        const float * h = L.attn_norm ? s.h : s.x;
        if (L.attn_norm) norm(be, s.x, L.attn_norm, s.h, n, L.attn_norm_b);
        if (c.parallel_ssm) falcon_h1_save_h(s, n);  // (falcon_h1.cpp)
        if (c.arch == Arch::DeepSeek2) {  // multi-head latent attention (mla.cpp)
            mla_attention(be, l, s, n);
        } else {
            const WeightRef * qkv[3] = {&L.wq, &L.wk, &L.wv};
            float * qkv_out[3] = {s.q, s.k, s.v};
            if (imx_)
                for (int site : {kImxQ, kImxK, kImxV}) imx_observe(l, site, h, n, be);
            mm->matmul(qkv, qkv_out, 3, h, n, false);
            apply_lora(be, qkv, qkv_out, 3, h, s, n);
            if (c.sub_norms) {  // bitnet: each output times its scale (y += (scale - 1) y: no other op needed)
                const float sc[3] = {L.q_scale, L.k_scale, L.v_scale};
                for (int i = 0; i < 3; ++i)
                    if (sc[i] != 1.0f) be->add(qkv_out[i], qkv_out[i], int64_t(n) * qkv[i]->rows, sc[i] - 1.0f);
            }
            if (c.qk_norm_heads) {  // command-r: each head LayerNormed, weights per head (command_r.cpp)
                SL_CHECK(be->is_cpu(), "internal: command-r's q/k norms run on the CPU only");
                command_r_qk_norm(cpu_->pool(), c, L, s.q, s.k, n);
            } else if (L.attn_q_norm && c.qk_norm_full) {  // olmo2: the whole projections RMS-normed
                be->rms_norm(s.q, L.attn_q_norm, s.q, n, c.q_dim(), c.rms_eps);
                be->rms_norm(s.k, L.attn_k_norm, s.k, n, c.kv_dim(), c.rms_eps);
            } else if (L.attn_q_norm && !c.qk_norm_after_rope) {  // qwen3: each query and key head RMS-normed before the rotation
                be->rms_norm(s.q, L.attn_q_norm, s.q, n * c.n_head, c.head_dim, c.rms_eps);
                be->rms_norm(s.k, L.attn_k_norm, s.k, n * c.n_head_kv, c.head_dim, c.rms_eps);
            }
            const bool swa = c.is_swa(l);
            if (c.rotates(l)) be->rope(s.q, s.k, n, swa && !c.swa_rope_global);  // (smollm3's NoPE layers do not)
            if (c.arch == Arch::Llama4) llama4_qk(be, l, s, n, pos);  // (q / k L2 norms, or temperature)
            if (L.attn_q_norm && c.qk_norm_after_rope) {  // hunyuan-dense, hunyuan-moe: after the rotation
                be->rms_norm(s.q, L.attn_q_norm, s.q, n * c.n_head, c.head_dim, c.rms_eps);
                be->rms_norm(s.k, L.attn_k_norm, s.k, n * c.n_head_kv, c.head_dim, c.rms_eps);
            }
            // A quantized cache stores keys (values) rotated, and queries meet them rotated too;
            // the output, a mix of rotated values, is rotated back.
            if (rotate_k) {
                be->hadamard(s.q, int64_t(n) * c.n_head, c.head_dim);
                be->hadamard(s.k, int64_t(n) * c.n_head_kv, c.head_dim);
            }
            if (rotate_v) be->hadamard(s.v, int64_t(n) * c.n_head_kv, c.head_dim);
            AttnParams ap{c.attn_scale, c.attn_softcap, swa ? c.n_swa : 0, L.attn_sinks};
            ap.chunked = swa && c.swa_chunked;
            if (kv_backend_[l] == be)
                be->attention(layer_kv(l), k_cache_[l], v_cache_[l], s.q, s.k, s.v, s.att, n, ap);
            else
                attention_via(kv_backend_[l], l, s, n, ap);
            if (rotate_v) be->hadamard(s.att, int64_t(n) * c.n_head, c.head_dim);
            if (L.attn_sub_norm) be->rms_norm(s.att, L.attn_sub_norm, s.att, n, c.q_dim(), c.rms_eps);  // bitnet
            // x += W_o . att, or with a post-norm (gemma2/3) x += rmsnorm(W_o . att)
            const WeightRef * wo = &L.wo;
            if (imx_) imx_observe(l, kImxO, s.att, n, be);
            add_output(be, mm, wo, L.attn_post_norm, s.att, s, n, nullptr, L.o_scale);
        }
        if (c.parallel_ssm) falcon_h1_mamba2(l, s, n, slot);  // x += Mamba-2 of the same h
    }
}

void Model::mixer_on_host(Backend * be, int l, Scratch & s, int n, const int32_t * pos, const int32_t * slot) {
    Backend * cpu = cpu_.get();
    Scratch & hs = scratch(cpu);  // (the CPU's stream buffer is free while the stream is on the GPU)
    const size_t bytes = size_t(n) * cfg_.n_embd * sizeof(float);
    be->download(hs.x, s.x, bytes);
    mixer(cpu, cpu, l, hs, n, pos, slot);
    be->upload(s.x, hs.x, bytes);
}

void Model::ffn(Backend * be, Backend * mm, int l, const float * hf, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[l];
    // (qwen2moe: the shared expert's output times a gate per token)
    const float * gates = L.ffn_gate_inp_shexp ? shared_expert_gates(L, s, n) : nullptr;
    const Glu act = c.ffn_gelu ? Glu::Gelu : Glu::Silu;
    if (imx_ && c.ffn_act == FfnAct::Glu) {
        imx_observe(l, kImxGate, hf, n, be);
        imx_observe(l, kImxUp, hf, n, be);
    }
    const int64_t n_ff = int64_t(n) * L.w_gate.rows;
    if (c.ffn_act != FfnAct::Glu) {  // apertus, arcee, starcoder2: act(W_up h + b) (densevar.cpp)
        ungated_ffn(be, mm, l, hf, s, n);
    } else if (lora_on(L.w_gate) || lora_on(L.w_up) || c.sub_norms) {  // the projections, updates, activation
        const WeightRef * gu[2] = {&L.w_gate, &L.w_up};
        float * gu_out[2] = {s.ff, s.up};
        for (int i = 0; i < 2; ++i) mm->matmul(&gu[i], &gu_out[i], 1, hf, n, false);  // (op offload's buffers)
        apply_lora(be, gu, gu_out, 2, hf, s, n);
        if (L.gate_scale != 1.0f) be->add(s.ff, s.ff, n_ff, L.gate_scale - 1.0f);  // bitnet's scales
        if (L.up_scale != 1.0f) be->add(s.up, s.up, n_ff, L.up_scale - 1.0f);
        be->act_mul(act, s.ff, s.up, n_ff);
    } else {
        mm->glu(act, L.w_gate, L.w_up, hf, s.ff, n);
    }
    if (L.ffn_sub_norm) be->rms_norm(s.ff, L.ffn_sub_norm, s.ff, n, L.w_gate.rows, c.rms_eps);  // bitnet
    if (imx_) imx_observe(l, kImxDown, s.ff, n, be);
    add_output(be, mm, &L.w_down, L.ffn_post_norm, s.ff, s, n, gates, L.down_scale);
}

void Model::norm(Backend * be, const float * x, const float * w, float * y, int n, const float * b) {
    if (cfg_.layer_norm)
        be->layer_norm(x, w, y, n, cfg_.n_embd, cfg_.rms_eps);
    else
        be->rms_norm(x, w, y, n, cfg_.n_embd, cfg_.rms_eps);
    if (!b) return;
    SL_CHECK(be->is_cpu(), "internal: a norm's bias (starcoder2) is added on the CPU only");
    for (int t = 0; t < n; ++t) vec::add_to(y + size_t(t) * cfg_.n_embd, b, size_t(cfg_.n_embd));
}

void Model::add_output(Backend * be, Backend * mm, const WeightRef * w, const float * post_norm, const float * in,
                       Scratch & s, int n, const float * row_scale, float out_scale) {
    const float scale = cfg_.residual_scale * out_scale;
    if (!post_norm && scale == 1.0f && !row_scale) {
        mm->matmul(&w, &s.x, 1, in, n, true);
        apply_lora(be, &w, &s.x, 1, in, s, n);
        return;
    }
    mm->matmul(&w, &s.h, 1, in, n, false);
    apply_lora(be, &w, &s.h, 1, in, s, n);
    if (post_norm) be->rms_norm(s.h, post_norm, s.h, n, cfg_.n_embd, cfg_.rms_eps);
    if (row_scale) {
        SL_CHECK(be->is_cpu(), "internal: rows scaled on the host for a CPU layer only");
        for (int t = 0; t < n; ++t)
            for (float * y = s.h + size_t(t) * cfg_.n_embd, * e = y + cfg_.n_embd; y < e; ++y) *y *= row_scale[t];
    }
    be->add(s.x, s.h, int64_t(n) * cfg_.n_embd, scale);
}

void Model::attention_via(Backend * kvb, int l, Scratch & s, int n, const AttnParams & ap) {
    // offload_kqv=False: the layer's q, k, v go to its KV cache's backend and the output comes back.
    const Config & c = cfg_;
    Backend * be = layer_backend_[l];
    Scratch & h = scratch(kvb);
    const size_t q_bytes = size_t(n) * c.q_dim() * sizeof(float), kv_bytes = size_t(n) * c.kv_dim() * sizeof(float);
    SL_CHECK(kvb->is_cpu(), "internal: a KV cache away from its layer must be on the CPU");
    be->download(h.q, s.q, q_bytes);
    be->download(h.k, s.k, kv_bytes);
    be->download(h.v, s.v, kv_bytes);
    kvb->attention(layer_kv(l), k_cache_[l], v_cache_[l], h.q, h.k, h.v, h.att, n, ap);
    be->upload(s.att, h.att, q_bytes);
}

}  // namespace sl
