// deci (DeciLM-7B; NVIDIA's Llama-3.1-Nemotron NAS models: Nemotron-51B, Llama-3.3-Nemotron-Super-49B
// v1 / v1.5, Llama-3.1-Nemotron-Ultra-253B; llama.cpp's llama_model_deci, src/models/deci.cpp, and
// transformers' DeciLMDecoderLayer): llama's blocks with shapes per layer, from arrays in
// attention.head_count, attention.head_count_kv and feed_forward_length. What block l does to x:
//   head_count 0                      no attention ("no_op")
//   head_count > 0, head_count_kv 0   "linear attention": x += W_o rmsnorm(x) attn_norm (W_o n_embd x n_embd)
//   head_count_kv > 0                 llama's attention with the layer's own head counts
//   feed_forward_length > 0           x += W_down (silu(W_gate h) * W_up h), h = rmsnorm(x) ffn_norm
// A layer without a feed-forward keeps its attention's output, as transformers' model does (llama.cpp's
// graph drops it: its 'continue' skips the layer's output; the converted models give such layers no
// attention either). Layers without attention hold no KV cache. The blocks run on the CPU.
#include <algorithm>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config_read.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/weights_load.h"

namespace sl {

void Config::read_deci(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    const char * path = f.path().c_str();
    n_head_arr = layer_dims(f, a + "attention.head_count", n_layer, 0, 4096);
    // (head_count_kv absent: head_count's, as llama.cpp)
    n_head_kv_arr = f.find(a + "attention.head_count_kv") ? layer_dims(f, a + "attention.head_count_kv", n_layer, 0, 4096)
                                                          : n_head_arr;
    n_ff_arr = layer_dims(f, a + "feed_forward_length", n_layer, 0, 1 << 20);
    for (int l = 0; l < n_layer; ++l) {
        const int h = n_head_arr[size_t(l)], kv = n_head_kv_arr[size_t(l)];
        if (kv > 0 && (h == 0 || h % kv != 0))
            throw GGUFError(strfmt("%s: layer %d: %d key/value heads do not divide its %d query heads (metadata "
                                   "'%sattention.head_count_kv')", path, l, kv, h, a.c_str()));
    }
    n_head = *std::max_element(n_head_arr.begin(), n_head_arr.end());
    n_head_kv = *std::max_element(n_head_kv_arr.begin(), n_head_kv_arr.end());
    n_ff = *std::max_element(n_ff_arr.begin(), n_ff_arr.end());
    if (n_head_kv == 0)
        throw GGUFError(strfmt("%s: metadata '%sattention.head_count_kv': no layer attends", path, a.c_str()));
    if (!f.find(a + "attention.layer_norm_rms_epsilon"))  // (required by llama.cpp's deci)
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", path, a.c_str()));
}

void Config::check_deci(const GGUFFile & f) const {
    if (n_rot != head_dim || head_dim_v != head_dim)  // (llama.cpp: "invalid n_rot", its graph's asserts)
        throw GGUFError(strfmt("%s: deci needs rope.dimension_count = key_length = value_length (%d, %d, %d)",
                               f.path().c_str(), n_rot, head_dim, head_dim_v));
}

void Model::load_deci_layers() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const char * path = f.path().c_str();
    w_.layers.resize(size_t(c.n_layer));
    for (int l = 0; l < c.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights & L = w_.layers[size_t(l)];
        const int n_q = c.n_head_of(l), n_kv = c.n_head_kv_of(l), n_ff = c.n_ff_of(l);
        if (n_q > 0) L.attn_norm = vector_f32(f, c, b + "attn_norm.weight", c.n_embd);
        if (n_q > 0 && n_kv == 0) {  // linear attention
            L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, c.n_embd);
            if (f.find_tensor(b + "attn_output.bias"))  // (llama.cpp reads it but never adds it)
                throw GGUFError(strfmt("%s: tensor '%sattn_output.bias': a linear-attention layer has no bias", path,
                                       b.c_str()));
        } else if (n_q > 0) {
            const int64_t q = int64_t(n_q) * c.head_dim, kv = int64_t(n_kv) * c.head_dim;
            L.wq = matrix(f, c, b + "attn_q.weight", q, c.n_embd);
            L.wk = matrix(f, c, b + "attn_k.weight", kv, c.n_embd);
            L.wv = matrix(f, c, b + "attn_v.weight", kv, c.n_embd);
            L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, q);
            for (auto [w, name] :
                 {std::pair{&L.wq, "attn_q"}, {&L.wk, "attn_k"}, {&L.wv, "attn_v"}, {&L.wo, "attn_output"}})
                optional_bias(f, c, *w, b + name + ".bias");
        }
        // (tensors of what the layer lacks: llama.cpp refuses the file, its count of tensors off)
        enum Part { kAttn, kQkv, kFfn };
        for (auto [name, part] : {std::pair{"attn_norm.weight", kAttn}, {"attn_output.weight", kAttn},
                                  {"attn_q.weight", kQkv}, {"attn_k.weight", kQkv}, {"attn_v.weight", kQkv},
                                  {"ffn_norm.weight", kFfn}, {"ffn_gate.weight", kFfn}, {"ffn_up.weight", kFfn},
                                  {"ffn_down.weight", kFfn}}) {
            const char * key = part == kFfn ? "feed_forward_length"
                               : n_q == 0   ? "attention.head_count"
                                            : "attention.head_count_kv";
            const bool lacks = part == kFfn ? n_ff == 0 : n_q == 0 || (part == kQkv && n_kv == 0);
            if (lacks && f.find_tensor(b + name))
                throw GGUFError(strfmt("%s: tensor '%s%s' in a layer without %s (metadata '%s.%s' = 0)", path,
                                       b.c_str(), name, part == kFfn ? "a feed-forward" : "attention heads",
                                       c.arch_name.c_str(), key));
        }
        if (n_ff > 0) {
            L.ffn_norm = vector_f32(f, c, b + "ffn_norm.weight", c.n_embd);
            L.w_gate = matrix(f, c, b + "ffn_gate.weight", n_ff, c.n_embd);
            L.w_up = matrix(f, c, b + "ffn_up.weight", n_ff, c.n_embd);
            L.w_down = matrix(f, c, b + "ffn_down.weight", c.n_embd, n_ff);
        }
        for (const char * name : {"ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"})
            if (f.find_tensor(b + name))
                throw GGUFError(strfmt("%s: tensor '%s%s': feed-forward biases are not supported", path, b.c_str(),
                                       name));
    }
}

void Model::deci_layer(Backend * be, Backend * mm, int l, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    SL_CHECK(be->is_cpu(), "internal: deci blocks run on the CPU");
    const int n_q = c.n_head_of(l), n_kv = c.n_head_kv_of(l), hd = c.head_dim;
    if (n_q > 0) be->rms_norm(s.x, L.attn_norm, s.h, n, c.n_embd, c.rms_eps);
    if (n_q > 0 && n_kv == 0) {  // linear attention: x += W_o h
        if (imx_) imx_observe(l, kImxO, s.h, n, be);
        add_output(be, mm, &L.wo, nullptr, s.h, s, n);
    } else if (n_q > 0) {  // x += W_o attn(rope(W_q h), rope(W_k h), W_v h), the layer's head counts
        const WeightRef * qkv[3] = {&L.wq, &L.wk, &L.wv};
        float * qkv_out[3] = {s.q, s.k, s.v};
        if (imx_)
            for (int site : {kImxQ, kImxK, kImxV}) imx_observe(l, site, s.h, n, be);
        mm->matmul(qkv, qkv_out, 3, s.h, n, false);
        apply_lora(be, qkv, qkv_out, 3, s.h, s, n);
        cpu_->rope_heads(s.q, s.k, n, false, n_q, n_kv, hd);
        const bool rotate_k = params_.kv_rotate && kv_.type_k != QType::F16;  // (see Model::forward)
        const bool rotate_v = params_.kv_rotate && kv_.type_v != QType::F16;
        if (rotate_k) {
            be->hadamard(s.q, int64_t(n) * n_q, hd);
            be->hadamard(s.k, int64_t(n) * n_kv, hd);
        }
        if (rotate_v) be->hadamard(s.v, int64_t(n) * n_kv, hd);
        AttnParams ap{c.attn_scale, 0.0f, 0, nullptr, n_q};
        cpu_->attention(layer_kv(l), k_cache_[size_t(l)], v_cache_[size_t(l)], s.q, s.k, s.v, s.att, n, ap);
        if (rotate_v) be->hadamard(s.att, int64_t(n) * n_q, hd);
        if (imx_) imx_observe(l, kImxO, s.att, n, be);
        add_output(be, mm, &L.wo, nullptr, s.att, s, n);
    }
    if (c.n_ff_of(l) == 0) return;
    be->rms_norm(s.x, L.ffn_norm, s.h, n, c.n_embd, c.rms_eps);
    ffn(be, mm, l, s.h, s, n);
}

}  // namespace sl
