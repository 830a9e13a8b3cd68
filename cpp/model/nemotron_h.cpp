// nemotron_h (NVIDIA Nemotron-H, Nemotron Nano 2; llama.cpp's src/models/nemotron-h.cpp): every
// layer is one mixer on the RMS-normed residual stream, x += mixer(rmsnorm(x)): a Mamba-2 layer
// (mamba2.cpp; head_count_kv and feed_forward_length both 0), an attention layer without rotation
// (feed_forward_length 0), or a squared-ReLU MLP, x += W_down relu(W_up h)^2 (head_count_kv 0).
// nemotron_h_moe (NVIDIA Nemotron 3 Nano; llama.cpp's nemotron-h-moe.cpp, nemotron_h's loader and
// graph): its MLP layers are mixtures of experts, the experts and a shared expert squared-ReLU
// MLPs without a gate, routed by sigmoid scores (chosen with exp_probs_b, weighted without it),
// renormalized if expert_weights_norm, times expert_weights_scale (moe.cpp).
#include <algorithm>

#include "common/error.h"
#include "common/threadpool.h"
#include "gguf/gguf.h"
#include "model/config_read.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/weights_load.h"

namespace sl {

void Config::read_nemotron_h(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    n_ff_arr = layer_dims(f, a + "feed_forward_length", n_layer, 0, 1 << 20);
    n_ff = *std::max_element(n_ff_arr.begin(), n_ff_arr.end());
    n_head_kv_arr = layer_dims(f, a + "attention.head_count_kv", n_layer, 0, 4096);
    conv_layers.assign(size_t(n_layer), 0);
    for (int l = 0; l < n_layer; ++l) {
        const int kv = n_head_kv_arr[size_t(l)], ff = n_ff_arr[size_t(l)];
        conv_layers[size_t(l)] = kv == 0 && ff == 0;  // (llama.cpp's is_recr)
        if (kv != 0 && ff != 0)
            throw GGUFError(strfmt("%s: layer %d has both key/value heads (%d) and a feed-forward width (%d): a "
                                   "nemotron_h layer is Mamba-2, attention or an MLP", f.path().c_str(), l, kv, ff));
    }
    if (std::find(conv_layers.begin(), conv_layers.end(), 1) == conv_layers.end()) conv_layers.clear();
    nope_layers.assign(size_t(n_layer), 1);  // (its attention is not rotated)
    // the RMS norms' epsilon; llama.cpp falls back to attention.layer_norm_epsilon, which it requires
    const double eps =
        f.get_float(a + "attention.layer_norm_rms_epsilon", f.get_float(a + "attention.layer_norm_epsilon"));
    if (!(eps > 0) || eps > 1)
        throw GGUFError(strfmt("%s: bad %sattention.layer_norm_rms_epsilon", f.path().c_str(), a.c_str()));
    rms_eps = float(eps);
    attn_scale = get_positive(f, a + "attention.scale", 0.0, true);
    if (n_expert > 0) read_nemotron_h_experts(f);
    read_mamba2(f);
}

void Config::read_nemotron_h_experts(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    const char * path = f.path().c_str();
    for (const char * key : {"moe_latent_size", "nextn_predict_layers"})
        if (f.find(a + key))
            throw GGUFError(strfmt("%s: metadata '%s%s': %s is not supported", path, a.c_str(), key,
                                   key[0] == 'm' ? "a latent MoE projection (Nemotron 3 Super)"
                                                 : "a file with an MTP block"));
    read_expert_router(f, *this, true);  // (config_routed.cpp)
    moe_sigmoid = true;  // (llama.cpp's graph: sigmoid whatever expert_gating_func says)
    n_ff_shexp = get_dim(f, a + "expert_shared_feed_forward_length", 1, 1 << 20);
}

void Model::load_nemotron_h_layers() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    w_.layers.resize(size_t(c.n_layer));
    for (int l = 0; l < c.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights & L = w_.layers[size_t(l)];
        L.attn_norm = vector_f32(f, c, b + "attn_norm.weight", c.n_embd);
        if (c.is_conv(l)) {
            load_mamba2_layer(b, L);
        } else if (c.n_ff_of(l) == 0) {  // attention (optional biases, as llama.cpp's create_tensor_qkv)
            const int64_t kv = int64_t(c.n_head_kv_of(l)) * c.head_dim;
            L.wq = matrix(f, c, b + "attn_q.weight", c.q_dim(), c.n_embd);
            L.wk = matrix(f, c, b + "attn_k.weight", kv, c.n_embd);
            L.wv = matrix(f, c, b + "attn_v.weight", kv, c.n_embd);
            L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, c.q_dim());
            for (auto [w, name] :
                 {std::pair{&L.wq, "attn_q"}, {&L.wk, "attn_k"}, {&L.wv, "attn_v"}, {&L.wo, "attn_output"}})
                optional_bias(f, c, *w, b + name + ".bias");
        } else if (c.n_expert > 0) {  // experts without a gate, the router's bias, the shared expert
            L.gate_inp = matrix(f, c, b + "ffn_gate_inp.weight", c.n_expert, c.n_embd);
            L.exp_probs_b = vector_f32(f, c, b + "exp_probs_b.bias", c.n_expert);
            L.up_exps = matrix(f, c, b + "ffn_up_exps.weight", c.n_ff_exp, c.n_embd, c.n_expert);
            L.down_exps = matrix(f, c, b + "ffn_down_exps.weight", c.n_embd, c.n_ff_exp, c.n_expert);
            L.w_up = matrix(f, c, b + "ffn_up_shexp.weight", c.n_ff_shexp, c.n_embd);
            L.w_down = matrix(f, c, b + "ffn_down_shexp.weight", c.n_embd, c.n_ff_shexp);
        } else {  // the MLP
            L.w_up = matrix(f, c, b + "ffn_up.weight", c.n_ff_of(l), c.n_embd);
            L.w_down = matrix(f, c, b + "ffn_down.weight", c.n_embd, c.n_ff_of(l));
            for (const char * name : {"ffn_up.bias", "ffn_down.bias"})
                if (f.find_tensor(b + name))
                    throw GGUFError(strfmt("%s: tensor '%s%s': feed-forward biases are not supported",
                                           f.path().c_str(), b.c_str(), name));
        }
    }
}

void Model::relu_squared(float * v, int64_t n) {
    cpu_->pool().parallel_for(n, [&](int64_t i0, int64_t i1) {
        for (float * p = v + i0; p < v + i1; ++p) *p = *p > 0.0f ? *p * *p : 0.0f;
    });
}

void Model::nemotron_h_mlp(Backend * mm, int l, Scratch & s, int n) {
    const LayerWeights & L = w_.layers[size_t(l)];
    Backend * be = cpu_.get();
    norm(be, s.x, L.attn_norm, s.h, n);
    if (L.moe()) {  // nemotron_h_moe: x += the chosen experts' relu(W_up h)^2 mix (moe.cpp), then the shared one's
        moe_ffn(be, be, L, s, n);
        mm = be;  // (on the CPU, as the experts)
    }
    // s.ff = relu(W_up h)^2, then x += W_down s.ff
    const WeightRef * up = &L.w_up;
    if (imx_) imx_observe(l, kImxUp, s.h, n, be);
    mm->matmul(&up, &s.ff, 1, s.h, n, false);
    relu_squared(s.ff, int64_t(n) * L.w_up.rows);
    if (imx_) imx_observe(l, kImxDown, s.ff, n, be);
    add_output(be, mm, &L.w_down, nullptr, s.ff, s, n);
}

}  // namespace sl
