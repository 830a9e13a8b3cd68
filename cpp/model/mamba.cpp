// Pure state-space models (llama.cpp's src/models/mamba.cpp, mamba-base.cpp): every layer is one
// mixer on the RMS-normed residual stream, x += mixer(rmsnorm(x)), no attention (no KV cache), no
// feed-forward; the final norm and the output layer. mamba2 (Mamba-2: state-spaces/mamba2-*,
// Codestral Mamba): mamba2.cpp's mixer. mamba (Mamba-1: state-spaces/mamba-*, Falcon-Mamba;
// transformers' MambaMixer.slow_forward, FalconMambaMixer's):
//
//   (x, z) = in_proj h; x = silu(conv(x) + conv_bias), the causal depthwise convolution of
//   mamba2.cpp (its last d_conv - 1 inputs kept per sequence); (dt, B, C) = x_proj x (dt_rank,
//   d_state, d_state), with ssm.dt_b_c_rms (falcon-mamba) each RMS-normed without a weight;
//   dt = softplus(dt_proj dt + dt_bias) per channel; per channel e and state k
//   S[e,k] = S[e,k] exp(dt[e] A[e,k]) + dt[e] B[k] x[e], y[e] = sum_k S[e,k] C[k] + D[e] x[e];
//   x += out_proj (y * silu(z)).
//
// The state of a sequence lives in conv.cpp's slots as a Mamba-2 layer's does: the convolution's
// inputs (d_conv - 1, d_inner), then S (d_inner, d_state).
#include <cmath>

#include "common/error.h"
#include "common/threadpool.h"
#include "common/vecmath.h"
#include "gguf/gguf.h"
#include "model/config_read.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/ssm.h"
#include "model/weights_load.h"

namespace sl {

void Config::read_ssm_only(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    const char * path = f.path().c_str();
    // (the converter writes head_count and feed_forward_length 0; llama.cpp reads neither)
    if (!f.find(a + "attention.layer_norm_rms_epsilon"))  // (llama.cpp requires it)
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", path, a.c_str()));
    ssm_only = true;
    n_head = n_head_kv = 1;  // (placeholders: no layer attends, no cache is kept)
    n_ff = 0;
    conv_layers.assign(size_t(n_layer), 1);
    if (arch == Arch::Mamba2) return read_mamba2(f);
    ssm_d_conv = get_dim(f, a + "ssm.conv_kernel", 1, 1024);
    ssm_d_inner = get_dim(f, a + "ssm.inner_size", 1, 1 << 20);
    ssm_d_state = get_dim(f, a + "ssm.state_size", 1, 4096);
    ssm_dt_rank = get_dim(f, a + "ssm.time_step_rank", 1, ssm_d_inner);
    ssm_dt_b_c_rms = f.get_bool(a + "ssm.dt_b_c_rms", false);
    ssm_n_head = ssm_d_inner;  // (a "head" per channel, as llama.cpp's build_mamba_layer)
    ssm_n_group = 0;           // (B and C of x_proj, shared by every channel: conv_dim is d_inner)
}

void Model::load_ssm_only_layers() {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const int64_t di = c.ssm_d_inner, ds = c.ssm_d_state, dr = c.ssm_dt_rank;
    auto f32 = [&](const std::string & name, int64_t ne0, int64_t ne1) {
        const GGUFTensor & t = require(f, c, name, ne0, ne1);
        if (t.type != QType::F32)
            throw GGUFError(strfmt("%s: tensor '%s' has type %s, expected F32", f.path().c_str(), name.c_str(),
                                   qtype_traits(t.type)->name));
        return reinterpret_cast<const float *>(t.data);
    };
    w_.layers.resize(size_t(c.n_layer));
    for (int l = 0; l < c.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights & L = w_.layers[size_t(l)];
        L.attn_norm = vector_f32(f, c, b + "attn_norm.weight", c.n_embd);
        if (!c.mamba1()) {
            load_mamba2_layer(b, L);
            continue;
        }
        L.ssm_in = matrix(f, c, b + "ssm_in.weight", 2 * di, c.n_embd);
        L.ssm_conv = f32(b + "ssm_conv1d.weight", c.ssm_d_conv, di);
        L.ssm_conv_b = f32(b + "ssm_conv1d.bias", di, -1);
        L.ssm_x = matrix(f, c, b + "ssm_x.weight", dr + 2 * ds, di);
        L.ssm_dt = matrix(f, c, b + "ssm_dt.weight", di, dr);
        L.ssm_dt_b = f32(b + "ssm_dt.bias", di, -1);
        L.ssm_a = f32(b + "ssm_a", ds, di);
        L.ssm_d = f32(b + "ssm_d", di, -1);
        L.ssm_out = matrix(f, c, b + "ssm_out.weight", c.n_embd, di);
        for (const char * name : {"ssm_in.bias", "ssm_x.bias", "ssm_out.bias", "ssm_dt_norm.weight"})
            if (f.find_tensor(b + name))
                throw GGUFError(strfmt("%s: tensor '%s%s' is not supported (nor by llama.cpp's mamba)",
                                       f.path().c_str(), b.c_str(), name));
    }
}

void Model::ssm_only_layer(int l, Scratch & s, int n, const int32_t * slot) {
    norm(cpu_.get(), s.x, w_.layers[size_t(l)].attn_norm, s.h, n);
    if (cfg_.mamba1())
        mamba1_block(l, s, n, slot);
    else
        mamba2_block(l, s, n, slot);
}

namespace {

// v = v / sqrt(mean(v^2) + eps) (ggml's rms_norm without a weight)
void rms_norm_plain(float * v, int64_t len, float eps) {
    double ss = 0.0;
    for (int64_t j = 0; j < len; ++j) ss += double(v[j]) * v[j];
    const float scale = float(1.0 / std::sqrt(ss / double(len) + double(eps)));
    for (int64_t j = 0; j < len; ++j) v[j] *= scale;
}

}  // namespace

void Model::mamba1_block(int l, Scratch & s, int n, const int32_t * slot) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    Backend * be = cpu_.get();
    const int64_t di = c.ssm_d_inner, ds = c.ssm_d_state, dr = c.ssm_dt_rank, xw = dr + 2 * ds;
    const size_t nn = size_t(n);
    // The work rows (ssm_y_): x after the convolution (then y in its place), x_proj's (dt, B, C),
    // dt's input, dt.
    float * xc = ssm_y_;                  // (n, d_inner)
    float * xdb = xc + nn * size_t(di);   // (n, dt_rank + 2 d_state)
    float * dt_in = xdb + nn * size_t(xw);  // (n, dt_rank)
    float * dt = dt_in + nn * size_t(dr);   // (n, d_inner)

    // (x; z) = in_proj h
    const WeightRef * in = &L.ssm_in;
    float * xz = s.ff;  // (n, 2 d_inner)
    if (imx_) imx_observe(l, kImxQ, s.h, n, be);  // (the attention's sites, see imatrix_start)
    be->matmul(&in, &xz, 1, s.h, n, false);
    // x = silu(conv(x) + bias)
    ssm_conv(l, xz, 2 * di, xc, di, n, slot);
    // (dt, B, C) = x_proj x; falcon-mamba: each RMS-normed; dt = dt_proj dt (its bias below)
    const WeightRef * wx = &L.ssm_x;
    be->matmul(&wx, &xdb, 1, xc, n, false);
    cpu_->pool().parallel_for(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float * r = xdb + t * xw;
            float * d_in = dt_in + t * dr;
            for (int64_t j = 0; j < dr; ++j) d_in[j] = r[j];
            if (!c.ssm_dt_b_c_rms) continue;
            rms_norm_plain(d_in, dr, c.rms_eps);
            rms_norm_plain(r + dr, ds, c.rms_eps);
            rms_norm_plain(r + dr + ds, ds, c.rms_eps);
        }
    });
    const WeightRef * wdt = &L.ssm_dt;
    be->matmul(&wdt, &dt, 1, dt_in, n, false);

    // The selective scan channel by channel (each its own row of the state), a slot's tokens in
    // order: S = S exp(dt' A) + dt' x B, y = S C + D x, written over x.
    const int64_t state_at = int64_t(c.ssm_d_conv - 1) * di;
    cpu_->pool().parallel_for(di, [&](int64_t e0, int64_t e1) {
        for (int i = 0; i < n; ++i) {
            const float * B = xdb + size_t(i) * size_t(xw) + dr;
            const float * C = B + ds;
            float * S = conv_state(l, slot[i]) + state_at;  // (d_inner, d_state)
            float * xi = xc + size_t(i) * size_t(di);
            const float * dti = dt + size_t(i) * size_t(di);
            for (int64_t e = e0; e < e1; ++e) {
                const float sp = ssm::softplus(dti[e] + L.ssm_dt_b[e]);
                const float xv = xi[e], xdt = xv * sp;
                const float * A = L.ssm_a + e * ds;
                float * sr = S + e * ds;
                float acc = 0.0f;
                for (int64_t k = 0; k < ds; ++k) {
                    sr[k] = sr[k] * std::exp(sp * A[k]) + B[k] * xdt;
                    acc += sr[k] * C[k];
                }
                xi[e] = acc + L.ssm_d[e] * xv;
            }
        }
    });
    // y * silu(z), then x += out_proj y
    cpu_->pool().parallel_for(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) vec::silu_mul(xz + t * 2 * di + di, xc + t * di, xc + t * di, size_t(di));
    });
    if (imx_) imx_observe(l, kImxO, xc, n, be);
    add_output(be, be, &L.ssm_out, nullptr, xc, s, n);
}

}  // namespace sl
