#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "common/threadpool.h"
#include "cpu/matmul.h"
#include "gguf/gguf.h"
#include "model/command_r.h"
#include "model/cpu_backend.h"
#include "model/imatrix.h"
#include "model/op_offload.h"
#include "model/weights_load.h"

namespace sl {

namespace {

// A layer's q, k, v: the rows of one fused tensor attn_qkv (q, then k, then v; its bias likewise),
// or three tensors.
void load_qkv(const GGUFFile & f, const Config & c, const std::string & b, bool fused, LayerWeights & L) {
    if (fused) {
        WeightRef qkv = matrix(f, c, b + "attn_qkv.weight", c.q_dim() + 2 * c.kv_dim(), c.n_embd);
        optional_bias(f, c, qkv, b + "attn_qkv.bias");
        L.wq = row_slice(qkv, 0, c.q_dim());
        L.wk = row_slice(qkv, c.q_dim(), c.kv_dim());
        L.wv = row_slice(qkv, c.q_dim() + c.kv_dim(), c.kv_dim());
    } else {
        L.wq = matrix(f, c, b + "attn_q.weight", c.q_dim(), c.n_embd);
        L.wk = matrix(f, c, b + "attn_k.weight", c.kv_dim(), c.n_embd);
        L.wv = matrix(f, c, b + "attn_v.weight", c.kv_dim(), c.n_embd);
    }
}

void apply_override(GGUFFile & f, const std::string & key, const KVOverride & v) {
    GGUFValue g;
    if (const bool * b = std::get_if<bool>(&v)) {
        g.type = GGUFType::BOOL;
        g.num.b = *b;
    } else if (const int64_t * i = std::get_if<int64_t>(&v)) {
        g.type = GGUFType::INT64;
        g.num.i64 = *i;
    } else if (const double * x = std::get_if<double>(&v)) {
        g.type = GGUFType::FLOAT64;
        g.num.f64 = *x;
    } else {
        g.type = GGUFType::STRING;
        f.set_override(key, g, std::get<std::string>(v));
        return;
    }
    f.set_override(key, g);
}

}  // namespace

WeightRef row_slice(const WeightRef & w, int64_t r0, int64_t n) {
    WeightRef s = w;
    s.rows = n;
    s.data = static_cast<const uint8_t *>(w.data) + row_size(w.type, w.K) * size_t(r0);
    if (w.bias) s.bias = w.bias + r0;
    return s;
}

WeightRef expert_slice(const WeightRef & w, int e, int n_expert) {
    return row_slice(w, w.rows / n_expert * e, w.rows / n_expert);
}

Model::Model(const std::string & path, const ModelParams & params, DryRun) : params_(params) {
    SL_CHECK(params.n_ctx >= 1, "n_ctx must be at least 1 (got %d)", params.n_ctx);
    SL_CHECK(params.n_batch >= 1, "n_batch must be at least 1 (got %d)", params.n_batch);
    SL_CHECK(params.n_seq_max >= 1 && params.n_seq_max <= params.n_ctx,
             "n_seq_max must be in [1, n_ctx] (got %d)", params.n_seq_max);
    for (QType t : {params.type_k, params.type_v})
        SL_CHECK(t == QType::F16 || t == QType::Q8_0 || t == QType::Q4_0,
                 "KV cache type %s is not supported (f16, q8_0, q4_0)", qtype_traits(t) ? qtype_traits(t)->name : "?");
    if (params_.n_threads <= 0) params_.n_threads = hardware_threads();
    file_ = std::make_unique<GGUFFile>(path);
    for (const auto & [key, value] : params.kv_overrides) apply_override(*file_, key, value);
    cfg_ = Config::from_gguf(*file_);
    cfg_.apply_rope(params.rope);
    load_weights();
    load_loras();
    setup_kv();
}

Model::Model(const std::string & path, const ModelParams & params) : Model(path, params, DryRun{}) {
    try {
        build_lora_b();
        place_layers();
        allocate_state();
    } catch (...) {  // the destructor will not run: free what was allocated (device memory too)
        for (const Owned & o : owned_) o.be->free(o.p);
        throw;
    }
}

Model::~Model() {
    for (const Owned & o : owned_) o.be->free(o.p);
}

void Model::load_weights() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const GGUFTensor * emb = f.find_tensor("token_embd.weight");
    if (!emb) throw GGUFError(strfmt("%s: tensor 'token_embd.weight' is missing", f.path().c_str()));
    if (c.n_vocab != 0 && emb->ne[1] != c.n_vocab)
        throw GGUFError(strfmt("%s: token_embd.weight has %lld rows but the vocabulary has %d tokens",
                               f.path().c_str(), (long long)emb->ne[1], c.n_vocab));
    cfg_.n_vocab = int(emb->ne[1]);
    w_.tok_embd = matrix(f, c, "token_embd.weight", c.n_vocab > 0 ? c.n_vocab : emb->ne[1], c.n_embd);
    check_readable(f, w_.tok_embd, "token_embd.weight");
    // (gemma-embedding: gemma3's blocks and output norm, no output layer)
    const bool embedding_only = c.arch == Arch::GemmaEmbedding;
    if (c.encoder && !embedding_only) return load_encoder_weights();
    // (lfm2's final norm is token_embd_norm, as its converter names it)
    const bool lfm2 = c.arch == Arch::Lfm2 || c.arch == Arch::Lfm2Moe;
    w_.output_norm = vector_f32(f, c, lfm2 ? "token_embd_norm.weight" : "output_norm.weight", c.n_embd);
    if (c.norm_bias) w_.output_norm_b = vector_f32(f, c, "output_norm.bias", c.n_embd);  // (starcoder2)
    if (embedding_only) load_dense();
    if ((c.arch == Arch::Gemma || c.arch == Arch::Gemma2 || c.arch == Arch::Cohere2) &&
        f.find_tensor("output.weight"))  // as llama.cpp
        throw GGUFError(strfmt("%s: tensor 'output.weight' is not expected: %s ties its output layer to "
                               "token_embd.weight", f.path().c_str(), c.arch_name.c_str()));
    check_llamalike_tensors(f, c);  // (command-r, exaone, internlm2: command_r.cpp)
    // (a gemma-embedding file's output.weight, if any, is not used, nor a bitnet one's: llama.cpp's neither)
    if (!embedding_only)
        w_.output = f.find_tensor("output.weight") && c.arch != Arch::Bitnet
                        ? matrix(f, c, "output.weight", cfg_.n_vocab, c.n_embd)
                        : w_.tok_embd;
    if (c.arch == Arch::PhiMoe) w_.output.bias = vector_f32(f, c, "output.bias", c.n_vocab);  // (required, as llama.cpp)
    load_cls_out();
    // Rotary frequency divisors: llama3's rope_freqs, or LongRoPE's long factors past the original
    // context and its short ones within it (llama.cpp's choice, by the context of a sequence).
    const char * factors = f.find_tensor("rope_factors_long.weight")
                               ? (params_.n_ctx / params_.n_seq_max > c.n_ctx_orig ? "rope_factors_long.weight"
                                                                                    : "rope_factors_short.weight")
                               : "rope_freqs.weight";
    if (f.find_tensor(factors)) {
        w_.rope_freqs = vector_f32(f, c, factors, c.n_rot / 2);
        for (int i = 0; i < c.n_rot / 2; ++i)
            if (!(w_.rope_freqs[i] > 0) || !std::isfinite(w_.rope_freqs[i]))
                throw GGUFError(strfmt("%s: tensor '%s' holds %g at %d; rotary factors must be positive",
                                       f.path().c_str(), factors, double(w_.rope_freqs[i]), i));
    }
    // phi3's sliding window is not applied: llama.cpp runs these models with full attention too.
    if (c.n_swa > 0 && c.swa_layers.empty() && params_.n_ctx / params_.n_seq_max > c.n_swa)
        warnings_.push_back(strfmt("%s: the model's sliding attention window (%d tokens) is not applied: past it "
                                   "every token attends to the whole context, as in llama.cpp", f.path().c_str(),
                                   c.n_swa));

    if (c.arch == Arch::Gemma4) return load_gemma4_layers();
    if (c.nemotron()) return load_nemotron_h_layers();
    if (c.arch == Arch::Deci) return load_deci_layers();
    // (glm4, exaone4, ernie4_5, cohere2, seed_oss, hunyuan-dense, arcee, glm4moe and ernie4_5-moe read
    // no attn_output.bias: llama.cpp's graphs have none)
    const bool wo_bias = !c.has(kNoWoBias);
    w_.layers.resize(c.n_layer);
    for (int l = 0; l < c.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights & L = w_.layers[l];
        if (c.pre_norms) L.attn_norm = vector_f32(f, c, b + "attn_norm.weight", c.n_embd);
        if (c.delta_net) {  // qwen35 / qwen35moe: gated attention or a delta net (qwen35.cpp)
            load_qwen35_layer(l, b, L);
        } else if (c.is_conv(l) && !c.parallel_ssm) {  // lfm2: a convolution in place of attention (granitehybrid: Mamba-2)
            if (c.mamba2())
                load_mamba2_layer(b, L);
            else
                load_conv_layer(b, L);
        } else {
            if (c.arch == Arch::DeepSeek2) {
                load_mla_layer(b, L);
            } else {
                load_qkv(f, c, b, c.fused_qkv || c.attn_qkv, L);
                L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, c.q_dim());
            }
            // Attention biases: q, k, v required by qwen2; optional for llama (attention_bias=True
            // checkpoints), as is the output projection's for both.
            for (auto [w, name] :
                 {std::pair{&L.wq, "attn_q"}, {&L.wk, "attn_k"}, {&L.wv, "attn_v"}, {&L.wo, "attn_output"}}) {
                const std::string bias = b + name + ".bias";
                if (w->bias) continue;  // (a fused tensor's)
                const bool required = c.has_qkv_bias && w != &L.wo;
                if (w == &L.wo && !wo_bias && f.find_tensor(bias))
                    throw GGUFError(strfmt("%s: tensor '%s': llama.cpp's %s has no attention output bias",
                                           f.path().c_str(), bias.c_str(), c.arch_name.c_str()));
                if (required || f.find_tensor(bias)) w->bias = vector_f32(f, c, bias, w->rows);
            }
            // per head, or (olmo2) over the whole projections; glm4moe's where the file has them
            if (c.has_qk_norm || (c.arch == Arch::Glm4Moe && f.find_tensor(b + "attn_q_norm.weight"))) {
                L.attn_q_norm = vector_f32(f, c, b + "attn_q_norm.weight", c.q_norm_len());
                L.attn_k_norm = vector_f32(f, c, b + "attn_k_norm.weight", c.k_norm_len());
            }
            if (c.arch == Arch::CommandR) load_command_r_qk_norms(f, c, b, L);  // (Command R+: per head)
            if (c.parallel_ssm) load_mamba2_layer(b, L);  // falcon-h1: beside the attention
        }
        if (c.sub_norms) {  // bitnet
            L.attn_sub_norm = vector_f32(f, c, b + "attn_sub_norm.weight", c.n_embd);
            L.ffn_sub_norm = vector_f32(f, c, b + "ffn_sub_norm.weight", c.n_ff);
            for (auto [p, name] : {std::pair{&L.q_scale, "attn_q"}, {&L.k_scale, "attn_k"}, {&L.v_scale, "attn_v"},
                                   {&L.o_scale, "attn_output"}, {&L.gate_scale, "ffn_gate"}, {&L.up_scale, "ffn_up"},
                                   {&L.down_scale, "ffn_down"}}) {
                const std::string scale = b + name + ".scale";
                if (!f.find_tensor(scale)) continue;
                *p = vector_f32(f, c, scale, 1)[0];
                if (!std::isfinite(*p))
                    throw GGUFError(strfmt("%s: tensor '%s' is not finite", f.path().c_str(), scale.c_str()));
            }
        }
        if (c.post_norms) {
            L.attn_post_norm = vector_f32(f, c, b + "post_attention_norm.weight", c.n_embd);
            L.ffn_post_norm = vector_f32(f, c, b + "post_ffw_norm.weight", c.n_embd);
        }
        // (cohere2's feed-forward reads the attention's input; gpt-oss, seed_oss, glm4moe and qwen35 name
        // its norm post_attention_norm)
        const bool ffn_norm_post = c.has(kFfnNormPost) || c.delta_net;
        // (falcon-h1: "ffn_norm" alone, the name llama.cpp's converter gives pre_ff_layernorm.weight)
        const char * ffn_norm = ffn_norm_post ? "post_attention_norm.weight"
                                : c.arch == Arch::FalconH1 ? "ffn_norm" : "ffn_norm.weight";
        if (c.pre_norms && !c.parallel_ffn) L.ffn_norm = vector_f32(f, c, b + ffn_norm, c.n_embd);
        if (c.attn_sinks) L.attn_sinks = vector_f32(f, c, b + "attn_sinks.weight", c.n_head);
        // a mixture-of-experts block (these architectures have no other kind: its router is required;
        // deepseek2, glm4moe, ernie4_5-moe, dots1, bailingmoe2: those after the leading dense ones)
        const bool moe_only = c.has(kRoutedBlocks);
        const bool lead = c.has(kDenseLead);
        const bool moe = lead                     ? l >= c.n_layer_dense_lead
                         : c.arch == Arch::Llama4 ? c.moe_step_layer(l)
                                                  : c.n_expert > 0 && (moe_only || f.find_tensor(b + "ffn_gate_inp.weight"));
        if (moe) {
            L.gate_inp = matrix(f, c, b + "ffn_gate_inp.weight", c.n_expert, c.n_embd);
            L.gate_exps = matrix(f, c, b + "ffn_gate_exps.weight", c.n_ff_exp, c.n_embd, c.n_expert);
            L.up_exps = matrix(f, c, b + "ffn_up_exps.weight", c.n_ff_exp, c.n_embd, c.n_expert);
            L.down_exps = matrix(f, c, b + "ffn_down_exps.weight", c.n_embd, c.n_ff_exp, c.n_expert);
            if (c.arch == Arch::GptOss) {  // the router's and every expert's biases
                L.gate_inp.bias = vector_f32(f, c, b + "ffn_gate_inp.bias", c.n_expert);
                stacked_bias(f, c, L.gate_exps, b + "ffn_gate_exps.bias", c.n_ff_exp, c.n_expert);
                stacked_bias(f, c, L.up_exps, b + "ffn_up_exps.bias", c.n_ff_exp, c.n_expert);
                stacked_bias(f, c, L.down_exps, b + "ffn_down_exps.bias", c.n_embd, c.n_expert);
            }
            if (c.n_ff_shexp > 0) {  // the shared expert(s), in the dense feed-forward's place
                L.w_gate = matrix(f, c, b + "ffn_gate_shexp.weight", c.n_ff_shexp, c.n_embd);
                L.w_up = matrix(f, c, b + "ffn_up_shexp.weight", c.n_ff_shexp, c.n_embd);
                L.w_down = matrix(f, c, b + "ffn_down_shexp.weight", c.n_embd, c.n_ff_shexp);
                if (c.shexp_gate) L.ffn_gate_inp_shexp = vector_f32(f, c, b + "ffn_gate_inp_shexp.weight", c.n_embd);
            }
            // (glm4moe's, lfm2moe's and minimax-m2's selection bias is required)
            if (c.has(kSelBias) || f.find_tensor(b + "exp_probs_b.bias"))
                L.exp_probs_b = vector_f32(f, c, b + "exp_probs_b.bias", c.n_expert);
        } else if (c.fused_qkv || c.fused_gate_up) {  // ffn_up holds the gate rows, then the up rows
            const WeightRef gate_up = matrix(f, c, b + "ffn_up.weight", 2 * int64_t(c.n_ff), c.n_embd);
            L.w_gate = row_slice(gate_up, 0, c.n_ff);
            L.w_up = row_slice(gate_up, c.n_ff, c.n_ff);
            L.w_down = matrix(f, c, b + "ffn_down.weight", c.n_embd, c.n_ff);
        } else {  // (apertus, arcee, starcoder2: no gate)
            if (c.ffn_act == FfnAct::Glu) L.w_gate = matrix(f, c, b + "ffn_gate.weight", c.n_ff, c.n_embd);
            L.w_up = matrix(f, c, b + "ffn_up.weight", c.n_ff, c.n_embd);
            L.w_down = matrix(f, c, b + "ffn_down.weight", c.n_embd, c.n_ff);
        }
        if (c.ffn_act != FfnAct::Glu || c.norm_bias) load_densevar_layer(b, L);  // (extra tensors, norm biases)
        for (const char * name : {"ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"})
            if (!c.norm_bias && f.find_tensor(b + name))
                throw GGUFError(strfmt("%s: tensor '%s%s': feed-forward biases are not supported", f.path().c_str(),
                                       b.c_str(), name));
    }
}

void Model::load_encoder_weights() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    if (c.learned_pos) {
        w_.pos_embd = matrix(f, c, "position_embd.weight", c.n_ctx_train, c.n_embd);
        check_readable(f, w_.pos_embd, "position_embd.weight");
    }
    if (const GGUFTensor * t = f.find_tensor("token_types.weight")) {  // only type 0 ("sentence A") is used
        if (t->ne[1] < 1)
            throw GGUFError(strfmt("%s: tensor 'token_types.weight' has no rows", f.path().c_str()));
        const WeightRef types = matrix(f, c, "token_types.weight", t->ne[1], c.n_embd);
        check_readable(f, types, "token_types.weight");
        w_.type_row.resize(size_t(c.n_embd));
        if (types.type == QType::F32)
            std::memcpy(w_.type_row.data(), types.data, sizeof(float) * size_t(c.n_embd));
        else
            qtype_traits(types.type)->to_float(types.data, w_.type_row.data(), c.n_embd);
    }
    w_.embd_norm = vector_f32(f, c, "token_embd_norm.weight", c.n_embd);
    w_.embd_norm_b = vector_f32(f, c, "token_embd_norm.bias", c.n_embd);
    auto bias = [&](WeightRef & w, const std::string & name) { optional_bias(f, c, w, name); };
    load_cls_out();
    w_.layers.resize(c.n_layer);
    for (int l = 0; l < c.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights & L = w_.layers[l];
        load_qkv(f, c, b, f.find_tensor(b + "attn_qkv.weight") != nullptr, L);
        if (!L.wq.bias) {  // separate biases (also beside a fused matrix, as llama.cpp allows)
            bias(L.wq, b + "attn_q.bias");
            bias(L.wk, b + "attn_k.bias");
            bias(L.wv, b + "attn_v.bias");
        }
        L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, c.q_dim());
        bias(L.wo, b + "attn_output.bias");
        L.attn_ln = vector_f32(f, c, b + "attn_output_norm.weight", c.n_embd);
        L.attn_ln_b = vector_f32(f, c, b + "attn_output_norm.bias", c.n_embd);
        // bert: W_down gelu(W_up x + b) + b; nomic-bert: W_down (silu(W_gate x) * W_up x)
        const bool gated = c.arch == Arch::NomicBert;
        if (!gated && f.find_tensor(b + "ffn_gate.weight"))
            throw GGUFError(strfmt("%s: tensor '%sffn_gate.weight': a gated feed-forward in a %s model is not "
                                   "supported", f.path().c_str(), b.c_str(), c.arch_name.c_str()));
        if (gated) L.w_gate = matrix(f, c, b + "ffn_gate.weight", c.n_ff, c.n_embd);
        L.w_up = matrix(f, c, b + "ffn_up.weight", c.n_ff, c.n_embd);
        L.w_down = matrix(f, c, b + "ffn_down.weight", c.n_embd, c.n_ff);
        for (auto [w, name] : {std::pair{&L.w_up, "ffn_up.bias"}, {&L.w_down, "ffn_down.bias"}}) {
            // (llama.cpp loads a nomic-bert's but never adds them: refused rather than guessed)
            if (gated && f.find_tensor(b + name))
                throw GGUFError(strfmt("%s: tensor '%s%s': biases in a gated feed-forward are not supported",
                                       f.path().c_str(), b.c_str(), name));
            bias(*w, b + name);
        }
        L.ffn_ln = vector_f32(f, c, b + "layer_output_norm.weight", c.n_embd);
        L.ffn_ln_b = vector_f32(f, c, b + "layer_output_norm.bias", c.n_embd);
    }
}

void Model::load_dense() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const std::string a = c.arch_name + ".";
    // Each needs its width from the metadata (llama.cpp's shapes); chained, the widths must agree.
    for (auto [name, key, width] : {std::tuple{"dense_2.weight", "dense_2_feat_out", c.dense_2_out},
                                    {"dense_3.weight", "dense_3_feat_in", c.dense_3_in}})
        if (f.find_tensor(name) && width == 0)
            throw GGUFError(strfmt("%s: tensor '%s' without metadata '%s%s'", f.path().c_str(), name, a.c_str(), key));
    if (f.find_tensor("dense_2.bias") && !f.find_tensor("dense_2.weight"))
        throw GGUFError(strfmt("%s: tensor 'dense_2.bias' without 'dense_2.weight'", f.path().c_str()));
    if (f.find_tensor("dense_2.weight")) {
        w_.dense_2 = matrix(f, c, "dense_2.weight", c.dense_2_out, c.n_embd);
        optional_bias(f, c, w_.dense_2, "dense_2.bias");
    }
    if (f.find_tensor("dense_3.weight")) w_.dense_3 = matrix(f, c, "dense_3.weight", c.n_embd, c.dense_3_in);
    const int64_t mid = w_.dense_2.rows > 0 ? w_.dense_2.rows : c.n_embd;  // what dense_3 reads
    if (w_.dense_3.rows > 0 && w_.dense_3.K != mid)
        throw GGUFError(strfmt("%s: tensor 'dense_3.weight' reads %lld values, but %s gives %lld", f.path().c_str(),
                               (long long)w_.dense_3.K, w_.dense_2.rows > 0 ? "dense_2.weight" : "the model",
                               (long long)mid));
    // (llama.cpp reads n_embd values of the result whatever its width)
    if (w_.dense_3.rows == 0 && mid != c.n_embd)
        throw GGUFError(strfmt("%s: tensor 'dense_2.weight' gives %lld values and no 'dense_3.weight' maps them "
                               "back to the %d of an embedding", f.path().c_str(), (long long)mid, c.n_embd));
}

void Model::load_cls_out() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const GGUFTensor * t = f.find_tensor("cls.output.weight");
    if (!t) {
        if (f.find_tensor("cls.weight"))
            throw GGUFError(strfmt("%s: tensor 'cls.weight' without 'cls.output.weight': not a classification head "
                                   "splitllm can run", f.path().c_str()));
        return;
    }
    if (t->ne[1] < 1 || t->ne[1] > 1 << 16)
        throw GGUFError(strfmt("%s: tensor 'cls.output.weight' has %lld outputs", f.path().c_str(), (long long)t->ne[1]));
    // llama.cpp takes the head's width from the labels (1 without): they must agree
    const GGUFValue * labels = f.find(c.arch_name + ".classifier.output_labels");
    const int64_t n_labels = labels && labels->type == GGUFType::ARRAY ? int64_t(labels->arr.size()) : 1;
    if (t->ne[1] != n_labels)
        throw GGUFError(strfmt("%s: tensor 'cls.output.weight' has %lld outputs but '%s.classifier.output_labels' "
                               "names %lld", f.path().c_str(), (long long)t->ne[1], c.arch_name.c_str(),
                               (long long)n_labels));
    w_.cls_out = matrix(f, c, "cls.output.weight", t->ne[1], c.n_embd);
    optional_bias(f, c, w_.cls_out, "cls.output.bias");
    if (f.find_tensor("cls.weight")) {
        w_.cls = matrix(f, c, "cls.weight", c.n_embd, c.n_embd);
        optional_bias(f, c, w_.cls, "cls.bias");
    }
}

size_t Weights::input_bytes() const {
    const size_t n_embd = size_t(tok_embd.K);
    // (a decoder's output norm belongs to its output layer; an encoder has none)
    const size_t out_norm = output.rows == 0 && output_norm ? sizeof(float) * n_embd : 0;
    // (gemma4 E2B / E4B: the per-layer embedding table and its projection, read with the token
    // embedding; their norm's few floats left out)
    const size_t ple = ple_tok_embd.nbytes() + ple_model_proj.nbytes();
    return pos_embd.nbytes() + sizeof(float) * type_row.size() + (embd_norm ? 2 * sizeof(float) * n_embd : 0) +
           cls.bytes_with_bias() + cls_out.bytes_with_bias() + out_norm + dense_2.bytes_with_bias() + dense_3.nbytes() +
           ple;
}

void Model::setup_kv() {
    const Config & c = cfg_;
    kv_.type_k = params_.type_k;
    kv_.type_v = params_.type_v;
    kv_.n_slots = params_.n_seq_max;
    kv_.slot_ctx = params_.n_ctx / params_.n_seq_max;
    kv_.n_head_kv = c.encoder ? 0 : c.n_head_kv;  // an encoder keeps no cache
    kv_.head_dim = c.head_dim;
    kv_.head_dim_v = c.head_dim_v;
    kv_.v_in_k = c.mla;  // (the latent is both)
    for (QType t : {kv_.type_k, kv_.type_v})
        for (int hd : {c.head_dim, c.head_dim_v, c.head_dim_swa > 0 ? c.head_dim_swa : c.head_dim})
            SL_CHECK(c.encoder || hd % qtype_traits(t)->blck_size == 0,  // (an encoder keeps no cache)
                     "KV cache type %s needs a head size divisible by %lld (head size %d, of values %d%s)",
                     qtype_traits(t)->name, (long long)qtype_traits(t)->blck_size, c.head_dim, c.head_dim_v,
                     c.head_dim_swa > 0 ? strfmt(", of the sliding layers %d", c.head_dim_swa).c_str() : "");
    // values read inside the key rows (after whole blocks: both head sizes are of whole blocks)
    SL_CHECK(!c.mla || kv_.type_k == kv_.type_v, "%s: the latent attention cache holds values inside the keys: "
             "type_k and type_v must be equal (%s, %s)", file_->path().c_str(), qtype_traits(kv_.type_k)->name,
             qtype_traits(kv_.type_v)->name);
    // A sliding-window layer needs the last n_swa positions: a ring of n_swa + n_batch cells holds
    // them for every token of a batch while the batch's own keys are stored (llama.cpp's SWA cache).
    kv_swa_ = kv_;
    kv_conv_ = kv_;
    kv_conv_.n_head_kv = 0;
    const int64_t ring = int64_t(c.n_swa) + params_.n_batch;
    if (!c.encoder && !c.swa_layers.empty() && !params_.swa_full && ring < kv_.slot_ctx) {
        kv_swa_.slot_ctx = int(ring);
        kv_swa_.ring = true;
        ring_high_.assign(size_t(kv_.n_slots), -1);
        ring_low_.assign(size_t(kv_.n_slots), 0);
    }
    kv_layer_.clear();
    for (int l = 0; l < c.n_layer; ++l) {  // (gemma4: head shapes per layer; a shared layer's is its source's)
        const bool no_kv = c.is_conv(l) && !c.parallel_ssm;  // (lfm2's convolution layers: none; falcon-h1: all)
        KVLayout kv = no_kv ? kv_conv_ : c.is_swa(l) ? kv_swa_ : kv_;
        if (!c.encoder && !no_kv) {
            kv.n_head_kv = c.n_head_kv_of(c.kv_source(l));
            kv.head_dim = c.head_dim_of(c.kv_source(l));
            if (c.arch == Arch::Gemma4) kv.head_dim_v = kv.head_dim;  // (values of the keys' size, per layer)
        }
        kv_layer_.push_back(kv);
    }
}

size_t Model::layer_kv_bytes(int l) const {
    return cfg_.kv_source(l) == l ? layer_kv(l).k_bytes() + layer_kv(l).v_bytes() : 0;
}

bool Model::ring_holds(int slot, int pos) const {
    return pos >= ring_low_[size_t(slot)] && pos > ring_high_[size_t(slot)] - kv_swa_.slot_ctx;
}

void Model::check_rings(const int32_t * pos, const int32_t * slot, int n) {
    // A slot's tokens in a batch: consecutive positions (so that they fit the ring's margin), the
    // first attending to positions the ring still holds, unless the slot starts over at 0.
    std::vector<int> last(size_t(kv_.n_slots), -1);
    for (int i = 0; i < n; ++i) {
        int & prev = last[size_t(slot[i])];
        if (prev >= 0) {
            SL_CHECK(pos[i] == prev + 1, "token %d: position %d after %d in sequence slot %d; with a sliding-window "
                     "cache a batch's positions of one sequence must be consecutive", i, pos[i], prev, slot[i]);
        } else if (pos[i] > 0) {
            const int lo = std::max(0, pos[i] - cfg_.n_swa + 1);
            SL_CHECK(pos[i] - 1 <= ring_high_[size_t(slot[i])], "token %d: position %d of sequence slot %d follows "
                     "positions never evaluated (the slot holds up to %d)", i, pos[i], slot[i],
                     ring_high_[size_t(slot[i])]);
            SL_CHECK(ring_holds(slot[i], lo),
                     "token %d: position %d of sequence slot %d attends to positions from %d, which the "
                     "sliding-window cache (%d cells) no longer holds; evaluate the sequence again from position 0 "
                     "(or load with swa_full)", i, pos[i], slot[i], lo, kv_swa_.slot_ctx);
        }
        prev = pos[i];
    }
}

void Model::note_rings(const int32_t * pos, const int32_t * slot, int n) {
    for (int i = 0; i < n; ++i) {
        const size_t s = size_t(slot[i]);
        if (pos[i] == 0) ring_high_[s] = -1, ring_low_[s] = 0;  // the slot starts over
        ring_high_[s] = std::max(ring_high_[s], int(pos[i]));
    }
}

int Model::kv_reusable(int slot, int n) const {
    SL_CHECK(slot >= 0 && slot < kv_.n_slots, "sequence slot %d outside [0, %d)", slot, kv_.n_slots);
    if (cfg_.recurrent()) return n > 0 && conv_pos_[size_t(slot)] == n ? n : 0;
    if (!kv_swa_.ring || n <= 0) return std::max(n, 0);
    // the token at position n attends to [n - n_swa + 1, n]: the cells of [.., n - 1] must be held
    const bool held = n - 1 <= ring_high_[size_t(slot)] && ring_holds(slot, std::max(0, n - cfg_.n_swa + 1));
    return held ? n : 0;
}

CpuBackendOptions Model::cpu_options() const {
    const Config & c = cfg_;
    CpuBackendOptions o;
    o.n_threads = params_.n_threads;
    o.n_batch = params_.n_batch;
    o.max_k = std::max({c.n_embd, c.q_dim(), c.ff_k_max(), c.q_lora_rank, c.kv_lora_rank, c.dn_v_dim()});
    o.max_rows = std::max({c.n_vocab, c.ff_max(), c.q_dim(), c.n_expert, 2 * c.q_dim(), c.dn_conv_dim(),
                           c.n_head * (c.head_dim_k_mla + c.head_dim_v_mla)});  // (deepseek2: attn_kv_b)
    o.n_head = c.n_head;
    o.n_head_kv = std::max(1, c.n_head / c.max_gqa());  // (the most query heads per key/value head)
    o.head_dim = c.max_head_dim();
    o.max_slot_ctx = kv_.slot_ctx;
    o.n_rot = c.n_rot;
    o.n_rot_swa = c.n_rot_swa;
    o.rope_swa = !c.swa_layers.empty();
    if (c.n_expert > 0) {
        o.moe_ff = c.n_ff_exp;
        o.moe_embd = c.n_embd;
    }
    // Activation buffers: a matmul's j-th distinct activation format goes to slot j; each slot is
    // sized for the widest format any CPU-side matmul puts there.
    auto group = [&](std::initializer_list<const WeightRef *> ws) {
        QType seen[3];
        int n = 0;
        for (const WeightRef * w : ws) {
            if (w->rows == 0) continue;  // absent in this block (dense vs mixture-of-experts)
            const QType at = cpu::act_type(w->type);
            int j = 0;
            while (j < n && seen[j] != at) ++j;
            if (j < n || j >= 3) continue;
            seen[n++] = at;
            o.act_slot_row[j] = std::max(o.act_slot_row[j], cpu::act_row_bytes(w->type, o.max_k));
        }
    };
    for (const auto & terms : lora_)
        for (const LoraTerm & t : terms) {
            group({&t.a});
            group({&t.b});
        }
    for (const LayerWeights & L : w_.layers) {
        for (const WeightRef * w : {&L.wq_a, &L.wq_b, &L.wkv_a, &L.wk_b, &L.wv_b, &L.wkv_b}) group({w});
        group({&L.wq, &L.wk, &L.wv});
        group({&L.wo});
        group({&L.w_gate, &L.w_up});
        group({&L.w_down});
        group({&L.gate_inp});
        group({&L.gate_exps, &L.up_exps});
        group({&L.down_exps});
        group({&L.conv_in});
        group({&L.conv_out});
        group({&L.ssm_in});
        group({&L.ssm_out});
        group({&L.dn_qkv, &L.dn_z, &L.dn_beta, &L.dn_alpha});
        group({&L.dn_out});
    }
    group({&w_.output});
    group({&w_.cls});
    group({&w_.cls_out});
    return o;
}

void Model::place_layers() {
    cpu_ = std::make_unique<CpuBackend>(cpu_options());
    cpu_->init_rope(cfg_, w_.rope_freqs);
    place_on_devices();  // placement.cpp
}

void * Model::alloc_on(Backend * be, size_t bytes, Kind kind) {
    void * p = be->alloc(bytes);
    owned_.push_back({be, p, bytes, kind});
    return p;
}

Model::Scratch & Model::scratch(Backend * be) {
    for (auto & [b, s] : scratch_)
        if (b == be) return s;
    throw Error("internal: no scratch buffers for backend " + be->name());
}

size_t Model::activation_bytes(bool cpu) const {
    const Config & c = cfg_;
    const size_t moe = cpu && c.n_expert > 0 ? 2 * size_t(c.n_embd) + size_t(c.n_expert) : 0;  // moe_in, moe_out, router
    const size_t lora = size_t(lora_rank_) + (split_glu() ? size_t(c.ff_max()) : 0);     // lora, up
    // gemma4: the per-layer inputs (and their work half), a MoE block's three rows (Model::ple_, g4_moe_)
    const size_t g4 = cpu && c.arch == Arch::Gemma4
                          ? 2 * size_t(c.n_layer) * size_t(c.n_embd_per_layer) + (c.n_expert > 0 ? 3 * size_t(c.n_embd) : 0)
                          : 0;
    const size_t mla = cpu ? mla_floats() : 0;
    const size_t ssm = cpu && c.mamba2() ? size_t(c.ssm_d_inner) : 0;  // a Mamba-2 layer's output (ssm_y_)
    return sizeof(float) * size_t(params_.n_batch) *
           (2 * size_t(c.n_embd) + 2 * size_t(c.q_dim()) + 2 * size_t(c.kv_dim()) + size_t(c.ff_max()) + moe + lora +
            mla + g4 + ssm + (cpu ? qwen35_floats() : 0));
}

void Model::allocate_state() {
    const Config & c = cfg_;
    const size_t nb = size_t(params_.n_batch);
    std::vector<Backend *> used = {cpu_.get()};
    for (Backend * be : layer_backend_)
        if (std::find(used.begin(), used.end(), be) == used.end()) used.push_back(be);
    if (std::find(used.begin(), used.end(), output_backend_) == used.end()) used.push_back(output_backend_);
    for (Backend * be : used) {
        Scratch s;
        s.x = static_cast<float *>(alloc_on(be, nb * c.n_embd * sizeof(float)));
        s.h = static_cast<float *>(alloc_on(be, nb * c.n_embd * sizeof(float)));
        s.q = static_cast<float *>(alloc_on(be, nb * c.q_dim() * sizeof(float)));
        s.k = static_cast<float *>(alloc_on(be, nb * c.kv_dim() * sizeof(float)));
        s.v = static_cast<float *>(alloc_on(be, nb * c.kv_dim() * sizeof(float)));
        s.att = static_cast<float *>(alloc_on(be, nb * c.q_dim() * sizeof(float)));
        s.ff = static_cast<float *>(alloc_on(be, nb * c.ff_max() * sizeof(float)));
        if (c.n_expert > 0 && be->is_cpu()) {  // experts run on the CPU only
            s.moe_in = static_cast<float *>(alloc_on(be, nb * c.n_embd * sizeof(float)));
            s.moe_out = static_cast<float *>(alloc_on(be, nb * c.n_embd * sizeof(float)));
            s.router = static_cast<float *>(alloc_on(be, nb * c.n_expert * sizeof(float)));
        }
        if (c.arch == Arch::DeepSeek2 && be->is_cpu())  // (its blocks run on the CPU)
            s.mla = static_cast<float *>(alloc_on(be, nb * mla_floats() * sizeof(float)));
        if (lora_rank_ > 0) s.lora = static_cast<float *>(alloc_on(be, nb * size_t(lora_rank_) * sizeof(float)));
        if (split_glu()) s.up = static_cast<float *>(alloc_on(be, nb * c.ff_max() * sizeof(float)));
        scratch_.push_back({be, s});
    }
    if (used.size() > 1) host_x_ = static_cast<float *>(alloc_on(cpu_.get(), nb * c.n_embd * sizeof(float)));
    k_cache_.resize(c.n_layer);
    v_cache_.resize(c.n_layer);
    for (int l = 0; l < c.n_layer; ++l) {
        if (const int src = c.kv_source(l); src != l) {  // (gemma4: reads an earlier layer's cache)
            k_cache_[l] = k_cache_[size_t(src)];
            v_cache_[l] = v_cache_[size_t(src)];
            continue;
        }
        k_cache_[l] = alloc_on(kv_backend_[l], layer_kv(l).k_bytes(), Kind::KV);
        v_cache_[l] = alloc_on(kv_backend_[l], layer_kv(l).v_bytes(), Kind::KV);
    }
    want_all_.assign(nb, 1);
    if (c.encoder) {
        enc_start_.assign(size_t(encoder_slots()) + 1, 0);
        enc_order_.assign(nb, 0);
        enc_texts_.reserve(nb);
        enc_tasks_.reserve(nb);
        enc_work_floats_ = encoder_attention_floats(int64_t(nb), c.head_dim, c.n_swa > 0);
        enc_work_.assign(size_t(cpu_->pool().size()) * enc_work_floats_, 0.0f);
    }
    if (c.n_expert > 0) routes_.reserve(nb, c.n_expert, c.n_expert_used);
    if (c.recurrent()) {  // lfm2's convolution states, on the CPU with their layers
        conv_index_.assign(size_t(c.n_layer), -1);
        int n_conv = 0;
        for (int l = 0; l < c.n_layer; ++l)
            if (c.is_conv(l)) conv_index_[size_t(l)] = n_conv++;
        conv_state_.assign(size_t(n_conv) * size_t(kv_.n_slots) * conv_slot_floats(), 0.0f);
        conv_pos_.assign(size_t(kv_.n_slots), 0);
        if (c.mamba2())  // (a Mamba-2 layer's output before out_proj)
            ssm_y_ = static_cast<float *>(alloc_on(cpu_.get(), nb * size_t(c.ssm_d_inner) * sizeof(float)));
    }
    if (c.delta_net) dn_work_.assign(nb * qwen35_floats(), 0.0f);
    if (c.qk_l2_norm) ones_.assign(size_t(c.head_dim), 1.0f);  // (llama4's weightless q / k norms)
    if (c.arch == Arch::Gemma4) {
        ones_.assign(size_t(c.max_head_dim()), 1.0f);
        ple_.assign(2 * nb * size_t(c.n_layer) * size_t(c.n_embd_per_layer), 0.0f);  // (and a work half)
        if (c.n_expert > 0) g4_moe_.assign(3 * nb * size_t(c.n_embd), 0.0f);
    }
}

void Model::decode(const int32_t * tokens, const int32_t * pos, const int32_t * slot, const uint8_t * want,
                   int n, float * logits, bool embeddings, bool classify) {
    SL_CHECK(n >= 0, "negative token count");
    SL_CHECK(!classify || (embeddings && w_.cls_out.rows > 0), "%s: the model has no classification head "
             "(cls.output.weight): it is not a reranker", file_->path().c_str());
    if (cfg_.encoder) {
        for (int i = 0; i < n; ++i)
            SL_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.n_vocab, "token %d: id %d is outside the vocabulary [0, %d)",
                     i, tokens[i], cfg_.n_vocab);
        check_encoder_batch(pos, slot, n, embeddings, classify);
        if (n > 0) forward_encoder(tokens, pos, slot, want, n, logits, classify);
        return;
    }
    for (int i = 0; i < n; ++i) {
        SL_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.n_vocab, "token %d: id %d is outside the vocabulary [0, %d)",
                 i, tokens[i], cfg_.n_vocab);
        SL_CHECK(slot[i] >= 0 && slot[i] < kv_.n_slots, "token %d: sequence slot %d outside [0, %d)", i, slot[i],
                 kv_.n_slots);
        SL_CHECK(pos[i] >= 0 && pos[i] < kv_.slot_ctx,
                 "token %d: position %d is outside the context of %d tokens (n_ctx)", i, pos[i], kv_.slot_ctx);
    }
    for (int i0 = 0; i0 < n; i0 += params_.n_batch) {
        const int m = std::min(params_.n_batch, n - i0);
        const uint8_t * w = want ? want + i0 : nullptr;
        if (kv_swa_.ring) check_rings(pos + i0, slot + i0, m);
        if (cfg_.recurrent()) check_conv(pos + i0, slot + i0, m);
        forward(tokens + i0, pos + i0, slot + i0, w, m, logits, embeddings, classify);
        if (kv_swa_.ring) note_rings(pos + i0, slot + i0, m);
        if (cfg_.recurrent()) note_conv(pos + i0, slot + i0, m);
        int n_out = 0;
        for (int i = 0; i < m; ++i) n_out += w ? (w[i] != 0) : 1;
        if (logits) logits += size_t(n_out) * (classify ? n_cls_out() : embeddings ? cfg_.n_embd : cfg_.n_vocab);
    }
}

size_t Model::kv_state_bytes(int n) const {
    size_t bytes = kv_swa_.ring ? sizeof(int64_t) : 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const KVLayout & kv = layer_kv(l);
        const int cells = kv.ring ? std::min(n, kv.slot_ctx) : n;
        if (cfg_.kv_source(l) != l) continue;  // (another layer's cache)
        bytes += size_t(kv.n_head_kv) * size_t(cells) * (kv.k_row() + kv.v_row());
    }
    if (cfg_.recurrent()) bytes += sizeof(int64_t) + sizeof(float) * conv_state_.size() / size_t(kv_.n_slots);
    return bytes;
}

// Calls f(layer, which, cache byte offset, state byte offset, bytes) for each run of the state of
// the first n positions of a slot: cells [0, n) of each head of a layer; of a ring, the cells of
// the last `held` positions of the min(n, ring) it has room for (state rows before them unused),
// one run or two where the ring wraps.
template <class F>
void Model::kv_runs(int slot, int n, int held, F && f) const {
    size_t at = kv_swa_.ring ? sizeof(int64_t) : 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const KVLayout & kv = layer_kv(l);
        const int cells = kv.ring ? std::min(n, kv.slot_ctx) : n;
        if (cfg_.kv_source(l) != l) continue;  // (another layer's cache)
        for (int which = 0; which < 2; ++which) {
            const size_t row = which == 0 ? kv.k_row() : kv.v_row();
            for (int h = 0; h < kv.n_head_kv; ++h) {
                const size_t head = (size_t(slot) * kv.n_head_kv + size_t(h)) * size_t(kv.slot_ctx) * row;
                if (!kv.ring) {
                    f(l, which, head, at, size_t(n) * row);
                } else if (held > 0) {
                    const int first = n - held, c0 = kv.cell(first), run0 = std::min(held, kv.slot_ctx - c0);
                    const size_t skip = size_t(cells - held) * row;
                    f(l, which, head + size_t(c0) * row, at + skip, size_t(run0) * row);
                    if (run0 < held) f(l, which, head, at + skip + size_t(run0) * row, size_t(held - run0) * row);
                }
                at += size_t(cells) * row;
            }
        }
    }
}

void Model::kv_read(int slot, int n, uint8_t * dst) const {
    SL_CHECK(slot >= 0 && slot < kv_.n_slots, "sequence slot %d outside [0, %d)", slot, kv_.n_slots);
    SL_CHECK(n >= 0 && n <= kv_.slot_ctx, "%d cells: outside the slot's %d", n, kv_.slot_ctx);
    int held = 0;
    if (kv_swa_.ring) {  // the last positions the rings still hold
        const int room = std::min(n, kv_swa_.slot_ctx);
        while (held < room && ring_holds(slot, n - 1 - held) && n - 1 - held <= ring_high_[size_t(slot)]) ++held;
        std::memset(dst, 0, kv_state_bytes(n));
        const int64_t h64 = held;
        std::memcpy(dst, &h64, sizeof h64);
    }
    kv_runs(slot, n, held, [&](int l, int which, size_t off, size_t at, size_t bytes) {
        const auto * cache = static_cast<const uint8_t *>(which == 0 ? k_cache_[size_t(l)] : v_cache_[size_t(l)]);
        kv_backend_[size_t(l)]->download(dst + at, cache + off, bytes);
    });
    if (cfg_.recurrent()) {  // the positions the states follow (n, or -1: not those of n), then the states
        uint8_t * p = dst + kv_state_bytes(n) - sizeof(float) * conv_state_.size() / size_t(kv_.n_slots) -
                      sizeof(int64_t);
        const int64_t at = conv_pos_[size_t(slot)] == n ? n : -1;
        std::memcpy(p, &at, sizeof at);
        p += sizeof at;
        for (int l = 0; l < cfg_.n_layer; ++l, p += sizeof(float) * (cfg_.is_conv(l) ? conv_slot_floats() : 0))
            if (cfg_.is_conv(l))
                std::memcpy(p, const_cast<Model *>(this)->conv_state(l, slot), sizeof(float) * conv_slot_floats());
    }
}

void Model::kv_write(int slot, int n, const uint8_t * src) {
    SL_CHECK(slot >= 0 && slot < kv_.n_slots, "sequence slot %d outside [0, %d)", slot, kv_.n_slots);
    SL_CHECK(n >= 0 && n <= kv_.slot_ctx, "%d cells: outside the slot's %d", n, kv_.slot_ctx);
    int held = 0;
    if (kv_swa_.ring) {
        int64_t h64 = 0;
        std::memcpy(&h64, src, sizeof h64);
        SL_CHECK(h64 >= 0 && h64 <= std::min(n, kv_swa_.slot_ctx), "a KV state holding %lld ring cells of %d",
                 (long long)h64, std::min(n, kv_swa_.slot_ctx));
        held = int(h64);
    }
    kv_runs(slot, n, held, [&](int l, int which, size_t off, size_t at, size_t bytes) {
        auto * cache = static_cast<uint8_t *>(which == 0 ? k_cache_[size_t(l)] : v_cache_[size_t(l)]);
        kv_backend_[size_t(l)]->upload(cache + off, src + at, bytes);
    });
    if (kv_swa_.ring) {  // the rings hold the last `held` of the n positions
        ring_high_[size_t(slot)] = n - 1;
        ring_low_[size_t(slot)] = n - held;
    }
    if (cfg_.recurrent()) {
        const uint8_t * p = src + kv_state_bytes(n) - sizeof(float) * conv_state_.size() / size_t(kv_.n_slots) -
                            sizeof(int64_t);
        int64_t at = 0;
        std::memcpy(&at, p, sizeof at);
        SL_CHECK(at == -1 || at == n, "a recurrent state following %lld positions for %d cells", (long long)at, n);
        p += sizeof at;
        for (int l = 0; l < cfg_.n_layer; ++l, p += sizeof(float) * (cfg_.is_conv(l) ? conv_slot_floats() : 0))
            if (cfg_.is_conv(l)) std::memcpy(conv_state(l, slot), p, sizeof(float) * conv_slot_floats());
        conv_pos_[size_t(slot)] = int(at);
    }
}

}  // namespace sl
