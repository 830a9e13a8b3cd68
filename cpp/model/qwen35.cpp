// Qwen3.5 (llama.cpp's qwen35, transformers' Qwen3_5ForCausalLM): most layers mix tokens by a
// gated delta net (linear attention), every few layers by softmax attention whose queries carry an
// output gate. A delta-net layer keeps per sequence, beside the KV cache of the attention layers,
// the last conv_l_cache - 1 inputs of its short convolution and one (head_dim x head_dim) state
// matrix per value head (Config::state_floats; kept, reset and saved as lfm2's convolution states,
// conv.cpp). The recurrence runs token by token, in prefill too.
// Qwen3-Next (qwen3next) is the same model with its projections laid out otherwise (qwen3next.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/threadpool.h"
#include "gguf/gguf.h"
#include "model/config_read.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/qwen3next.h"
#include "model/weights_load.h"

namespace sl {

namespace {

constexpr int kMaxDeltaHead = 512;  // (a head's delta row lives on the stack)

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }  // (ggml's threshold)

// Whether M-RoPE's sections give every rotated pair of a text token its position: with the same
// position in the t, h and w components (and 0 in the fourth, llama.cpp's for text) that is the plain
// NEOX rotation. ggml's interleaved layout (IMROPE) assigns pair i by sector i % the sections' sum.
bool imrope_covers(const int s[4], int n_pairs) {
    const int sum = s[0] + s[1] + s[2] + s[3];
    if (sum <= 0) return false;
    for (int i = 0; i < n_pairs; ++i) {
        const int sec = i % sum;
        const bool t = sec % 3 == 0 && sec < 3 * s[0], h = sec % 3 == 1 && sec < 3 * s[1],
                   w = sec % 3 == 2 && sec < 3 * s[2];
        if (!t && !h && !w) return false;
    }
    return true;
}

// Text positions only: M-RoPE's sections (qwen35, qwen35moe) must rotate as NEOX over the rotated
// dimensions.
void read_sections(const GGUFFile & f, const Config & c) {
    const std::string a = c.arch_name + ".";
    const std::string sk = a + "rope.dimension_sections";
    const GGUFValue * sv = f.find(sk);
    const char * path = f.path().c_str();
    if (!sv || sv->type != GGUFType::ARRAY || sv->arr.size() < 3 || sv->arr.size() > 4)
        throw GGUFError(strfmt("%s: metadata '%s' (3 or 4 integers) is %s", path, sk.c_str(), sv ? "malformed" : "missing"));
    int sec[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < sv->arr.size(); ++i) {
        if (!sv->arr[i].is_integer() || sv->arr[i].num.i64 < 0 || sv->arr[i].num.i64 > 4096)
            throw GGUFError(strfmt("%s: metadata '%s' must hold small non-negative integers", path, sk.c_str()));
        sec[i] = int(sv->arr[i].num.i64);
    }
    if (!imrope_covers(sec, c.n_rot / 2))
        throw GGUFError(strfmt("%s: metadata '%s' = [%d, %d, %d, %d] leaves some of the %d rotated pairs at position 0 "
                               "for text; not supported", path, sk.c_str(), sec[0], sec[1], sec[2], sec[3], c.n_rot / 2));
}

}  // namespace

// llama.cpp's llama_model_qwen35::load_arch_hparams: the delta nets' shapes (ssm.*), which layers
// are recurrent (attention.recurrent_layers, else all but every full_attention_interval-th), the
// multi-token-prediction blocks past the trunk (nextn_predict_layers: not run).
void read_qwen35(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    const int nextn = f.find(a + "nextn_predict_layers") ? get_dim(f, a + "nextn_predict_layers", 0, c.n_layer - 1) : 0;
    const int n_all = c.n_layer;
    c.n_layer -= nextn;
    c.delta_net = true;
    c.conv_l_cache = get_dim(f, a + "ssm.conv_kernel", 1, 64);
    c.dn_head_dim = get_dim(f, a + "ssm.state_size", 1, kMaxDeltaHead);
    c.dn_k_heads = get_dim(f, a + "ssm.group_count", 1, 4096);
    c.dn_v_heads = get_dim(f, a + "ssm.time_step_rank", 1, 4096);
    if (c.dn_v_heads % c.dn_k_heads != 0)
        throw GGUFError(strfmt("%s: metadata '%sssm.time_step_rank' = %d (value heads) is not a multiple of "
                               "'%sssm.group_count' = %d (key heads)", path, a.c_str(), c.dn_v_heads, a.c_str(),
                               c.dn_k_heads));
    if (const int inner = get_dim(f, a + "ssm.inner_size", 1, 1 << 20); inner != c.dn_v_dim())
        throw GGUFError(strfmt("%s: metadata '%sssm.inner_size' = %d must be ssm.time_step_rank x ssm.state_size "
                               "= %d (value heads of the keys' size)", path, a.c_str(), inner, c.dn_v_dim()));
    std::vector<uint8_t> rec(size_t(c.n_layer), 0);
    const std::string rk = a + "attention.recurrent_layers";
    if (const GGUFValue * v = f.find(rk)) {
        if (v->type != GGUFType::ARRAY || (int64_t(v->arr.size()) != n_all && int64_t(v->arr.size()) != c.n_layer))
            throw GGUFError(strfmt("%s: metadata '%s' must hold one flag per layer (%d)", path, rk.c_str(), n_all));
        for (int l = 0; l < c.n_layer; ++l) {
            const GGUFValue & e = v->arr[size_t(l)];
            if (e.type != GGUFType::BOOL)
                throw GGUFError(strfmt("%s: metadata '%s' must hold booleans", path, rk.c_str()));
            rec[size_t(l)] = e.num.b;
        }
    } else {
        const std::string ik = a + "full_attention_interval";
        const int every = f.find(ik) ? get_dim(f, ik, 1, 1 << 20) : 4;
        for (int l = 0; l < c.n_layer; ++l) rec[size_t(l)] = (l + 1) % every != 0;
    }
    c.conv_layers.clear();
    if (std::find(rec.begin(), rec.end(), 1) != rec.end()) c.conv_layers = rec;
    c.dn_grouped = c.arch == Arch::Qwen3Next;
    if (c.arch == Arch::Qwen3Next && c.n_expert == 0)  // (llama.cpp's qwen3next has no dense feed-forward)
        throw GGUFError(strfmt("%s: metadata '%sexpert_count': a qwen3next model needs experts", path, a.c_str()));
    if (c.arch != Arch::Qwen3Next) read_sections(f, c);
    if (c.n_swa > 0)
        throw GGUFError(strfmt("%s: metadata '%sattention.sliding_window': %s has no sliding-window layers",
                               path, a.c_str(), c.arch_name.c_str()));
    if (c.arch == Arch::Qwen35 && c.n_expert > 0)
        throw GGUFError(strfmt("%s: a qwen35 file with experts (%sexpert_count): qwen35moe has them", path, a.c_str()));
    if (c.arch != Arch::Qwen35) {  // a gated shared expert beside the routed ones (as qwen2moe's)
        const std::string shexp_key = a + "expert_shared_feed_forward_length";
        c.n_ff_shexp = f.find(shexp_key) ? get_dim(f, shexp_key, 0, 1 << 20) : 0;
        c.shexp_gate = c.n_ff_shexp > 0;
        if (f.find(a + "expert_weights_scale") && f.get_float(a + "expert_weights_scale") != 1.0)
            throw GGUFError(strfmt("%s: metadata '%sexpert_weights_scale' other than 1 is not supported", path,
                                   a.c_str()));
    }
}

void Model::load_qwen35_layer(int l, const std::string & b, LayerWeights & L) {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    if (!c.is_conv(l)) {  // attention: each query head's rows, then its gate's
        L.wq = matrix(f, c, b + "attn_q.weight", 2 * int64_t(c.q_dim()), c.n_embd);
        L.wk = matrix(f, c, b + "attn_k.weight", c.kv_dim(), c.n_embd);
        L.wv = matrix(f, c, b + "attn_v.weight", c.kv_dim(), c.n_embd);
        L.wo = matrix(f, c, b + "attn_output.weight", c.n_embd, c.q_dim());
        L.attn_q_norm = vector_f32(f, c, b + "attn_q_norm.weight", c.head_dim);
        L.attn_k_norm = vector_f32(f, c, b + "attn_k_norm.weight", c.head_dim);
        return;
    }
    const int64_t cd = c.dn_conv_dim(), vd = c.dn_v_dim(), hv = c.dn_v_heads;
    if (c.arch == Arch::Qwen3Next) {
        load_qwen3next_in(f, c, b, L);
    } else {
        L.dn_qkv = matrix(f, c, b + "attn_qkv.weight", cd, c.n_embd);
        L.dn_z = matrix(f, c, b + "attn_gate.weight", vd, c.n_embd);
        L.dn_beta = matrix(f, c, b + "ssm_beta.weight", hv, c.n_embd);
        L.dn_alpha = matrix(f, c, b + "ssm_alpha.weight", hv, c.n_embd);
    }
    L.dn_out = matrix(f, c, b + "ssm_out.weight", c.n_embd, vd);
    const GGUFTensor & k = require(f, c, b + "ssm_conv1d.weight", c.conv_l_cache, cd);
    if (k.type != QType::F32)
        throw GGUFError(strfmt("%s: tensor '%sssm_conv1d.weight' has type %s, expected F32", f.path().c_str(),
                               b.c_str(), qtype_traits(k.type)->name));
    L.dn_kernel = reinterpret_cast<const float *>(k.data);
    L.dn_dt = vector_f32(f, c, b + "ssm_dt.bias", hv);
    L.dn_a = vector_f32(f, c, b + "ssm_a", hv);
    L.dn_norm = vector_f32(f, c, b + "ssm_norm.weight", c.dn_head_dim);
}

size_t Model::qwen35_floats() const {
    const Config & c = cfg_;
    if (!c.delta_net) return 0;
    // attention: queries with their gates; delta net: q, k, v, the gate z, beta, the decay, output
    // (qwen3next: the fused projections' outputs past them)
    return std::max(2 * size_t(c.q_dim()), size_t(c.dn_conv_dim()) + 2 * size_t(c.dn_v_dim()) +
                                               2 * size_t(c.dn_v_heads) +
                                               (c.arch == Arch::Qwen3Next ? qwen3next_raw_floats(c) : 0));
}

void Model::qwen35_mixer(Backend * be, int l, Scratch & s, int n, const int32_t * slot) {
    SL_CHECK(be->is_cpu(), "internal: qwen35's layers run on the CPU");
    norm(be, s.x, w_.layers[size_t(l)].attn_norm, s.h, n);
    if (cfg_.is_conv(l))
        delta_net(be, l, s, n, slot);
    else
        qwen35_attention(be, l, s, n);
}

void Model::qwen35_attention(Backend * be, int l, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    const int hd = c.head_dim, nh = c.n_head;
    // (q; gate) per head = Wq h, k = Wk h, v = Wv h
    float * qg = dn_work_.data();  // (n, n_head, 2 head_dim)
    const WeightRef * w[3] = {&L.wq, &L.wk, &L.wv};
    float * y[3] = {qg, s.k, s.v};
    if (imx_)
        for (int site : {kImxQ, kImxK, kImxV}) imx_observe(l, site, s.h, n, be);
    be->matmul(w, y, 3, s.h, n, false);
    for (int64_t r = 0; r < int64_t(n) * nh; ++r)
        std::memcpy(s.q + r * hd, qg + 2 * r * hd, sizeof(float) * size_t(hd));
    // per-head RMS norms of q and k, the rotation of their first n_rot dims, attention
    be->rms_norm(s.q, L.attn_q_norm, s.q, n * nh, hd, c.rms_eps);
    be->rms_norm(s.k, L.attn_k_norm, s.k, n * c.n_head_kv, hd, c.rms_eps);
    be->rope(s.q, s.k, n, false);
    const bool rotate_k = params_.kv_rotate && kv_.type_k != QType::F16;
    const bool rotate_v = params_.kv_rotate && kv_.type_v != QType::F16;
    if (rotate_k) {
        be->hadamard(s.q, int64_t(n) * nh, hd);
        be->hadamard(s.k, int64_t(n) * c.n_head_kv, hd);
    }
    if (rotate_v) be->hadamard(s.v, int64_t(n) * c.n_head_kv, hd);
    const AttnParams ap{c.attn_scale, 0.0f, 0, nullptr};
    be->attention(layer_kv(l), k_cache_[size_t(l)], v_cache_[size_t(l)], s.q, s.k, s.v, s.att, n, ap);
    if (rotate_v) be->hadamard(s.att, int64_t(n) * nh, hd);
    // att *= sigmoid(gate); x += Wo att
    cpu_->pool().parallel_for(int64_t(n) * nh, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const float * g = qg + (2 * r + 1) * hd;
            float * a = s.att + r * hd;
            for (int i = 0; i < hd; ++i) a[i] *= sigmoid(g[i]);
        }
    });
    if (imx_) imx_observe(l, kImxO, s.att, n, be);
    add_output(be, be, &L.wo, nullptr, s.att, s, n);
}

// transformers' Qwen3_5GatedDeltaNet with its recurrent rule (torch_recurrent_gated_delta_rule):
// q, k, v = silu(conv(W_qkv h)), q and k l2-normed per head (q also / sqrt(head_dim)); per value
// head, g = exp(-exp(A_log) softplus(alpha + dt_bias)), b = sigmoid(beta), S = g S,
// S += k (b (v - S^T k))^T, o = S^T q; out = W_out (rmsnorm(o) * norm * silu(z)) per head.
// Value head j reads key head j % key heads (llama.cpp's converter tiles qwen35's value heads so), or
// (qwen3next, Hugging Face's order) j / (value heads / key heads).
void Model::delta_net(Backend * be, int l, Scratch & s, int n, const int32_t * slot) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    const int64_t cd = c.dn_conv_dim(), vd = c.dn_v_dim(), hv = c.dn_v_heads, hk = c.dn_k_heads;
    const int d = c.dn_head_dim, kc = c.conv_l_cache - 1;  // kc: past inputs the convolution keeps
    float * qkv = dn_work_.data();        // (n, cd) q, k, v heads
    float * z = qkv + size_t(n) * cd;     // (n, vd) output gate
    float * beta = z + size_t(n) * vd;    // (n, hv)
    float * alpha = beta + size_t(n) * hv;  // (n, hv)
    float * o = alpha + size_t(n) * hv;   // (n, vd)
    ThreadPool & pool = cpu_->pool();
    if (imx_) imx_observe(l, kImxQ, s.h, n, be);
    if (c.arch == Arch::Qwen3Next) {
        qwen3next_in(be, pool, c, L, s.h, n, qkv, z, beta, alpha, o + size_t(n) * vd);
    } else {
        const WeightRef * w[4] = {&L.dn_qkv, &L.dn_z, &L.dn_beta, &L.dn_alpha};
        float * y[4] = {qkv, z, beta, alpha};
        be->matmul(w, y, 3, s.h, n, false);  // (at most three at once)
        be->matmul(w + 3, y + 3, 1, s.h, n, false);
    }
    // Causal depthwise convolution of each channel over the slot's last kc inputs (oldest first) and
    // this token's, which then joins them; SiLU. A slot's tokens come in position order.
    pool.parallel_for(cd, [&](int64_t c0, int64_t c1) {
        for (int i = 0; i < n; ++i) {
            float * st = conv_state(l, slot[i]);  // (kc, cd)
            float * row = qkv + size_t(i) * cd;
            for (int64_t ch = c0; ch < c1; ++ch) {
                const float * k = L.dn_kernel + ch * (kc + 1);
                float acc = k[kc] * row[ch];
                for (int j = 0; j < kc; ++j) acc += k[j] * st[j * cd + ch];
                for (int j = 0; j + 1 < kc; ++j) st[j * cd + ch] = st[(j + 1) * cd + ch];
                if (kc > 0) st[(kc - 1) * cd + ch] = row[ch];
                row[ch] = acc * sigmoid(acc);
            }
        }
    });
    // q and k heads l2-normed (q also scaled)
    const float q_scale = 1.0f / std::sqrt(float(d));
    pool.parallel_for(int64_t(n) * 2 * hk, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            float * x = qkv + (r / (2 * hk)) * cd + (r % (2 * hk)) * d;
            double ss = 0.0;
            for (int i = 0; i < d; ++i) ss += double(x[i]) * x[i];
            const float m = float(1.0 / std::sqrt(ss + double(c.rms_eps))) * (r % (2 * hk) < hk ? q_scale : 1.0f);
            for (int i = 0; i < d; ++i) x[i] *= m;
        }
    });
    // The gated delta rule, each value head over the batch's tokens in order, on its slot's state
    pool.parallel_for(hv, [&](int64_t h0, int64_t h1) {
        float delta[kMaxDeltaHead];
        for (int64_t h = h0; h < h1; ++h) {
            const int64_t kh = c.dn_grouped ? h / (hv / hk) : h % hk;
            for (int i = 0; i < n; ++i) {
                const float * row = qkv + size_t(i) * cd;
                const float * q = row + kh * d, * k = row + (hk + kh) * d, * v = row + 2 * hk * d + h * d;
                float * S = conv_state(l, slot[i]) + size_t(kc) * cd + size_t(h) * d * d;  // (d keys, d values)
                const float g = std::exp(L.dn_a[h] * softplus(alpha[size_t(i) * hv + h] + L.dn_dt[h]));
                const float b = sigmoid(beta[size_t(i) * hv + h]);
                std::fill_n(delta, d, 0.0f);
                for (int a = 0; a < d; ++a) {  // S *= g; delta = S^T k
                    float * Sa = S + size_t(a) * d;
                    const float ka = k[a];
                    for (int e = 0; e < d; ++e) {
                        Sa[e] *= g;
                        delta[e] += Sa[e] * ka;
                    }
                }
                for (int e = 0; e < d; ++e) delta[e] = b * (v[e] - delta[e]);
                float * out = o + size_t(i) * vd + size_t(h) * d;
                std::fill_n(out, d, 0.0f);
                for (int a = 0; a < d; ++a) {  // S += k delta^T; out = S^T q
                    float * Sa = S + size_t(a) * d;
                    const float ka = k[a], qa = q[a];
                    for (int e = 0; e < d; ++e) {
                        Sa[e] += ka * delta[e];
                        out[e] += Sa[e] * qa;
                    }
                }
            }
        }
    });
    // Gated RMSNorm of each head's output: rmsnorm(o) * norm * silu(z)
    pool.parallel_for(int64_t(n) * hv, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            float * x = o + r * d;
            const float * zr = z + r * d;
            double ss = 0.0;
            for (int i = 0; i < d; ++i) ss += double(x[i]) * x[i];
            const float m = float(1.0 / std::sqrt(ss / d + double(c.rms_eps)));
            for (int i = 0; i < d; ++i) x[i] = x[i] * m * L.dn_norm[i] * zr[i] * sigmoid(zr[i]);
        }
    });
    // x += W_out o
    if (imx_) imx_observe(l, kImxO, o, n, be);
    add_output(be, be, &L.dn_out, nullptr, o, s, n);
}

}  // namespace sl
