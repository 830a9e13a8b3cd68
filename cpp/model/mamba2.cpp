// Mamba-2 layers (granitehybrid: IBM Granite 4.0 H; transformers' GraniteMoeHybridMambaLayer,
// llama.cpp's build_mamba2_layer) and the per-sequence state they keep beside the KV cache, in the
// slots of lfm2's convolution states (conv.cpp: the same checks, saving and reuse): the last
// d_conv - 1 inputs of the convolution, oldest first, then the scan's state of every head.
//
// Per token: (z, xBC, dt) = in_proj h; xBC = silu(conv(xBC) + conv_bias), split into x (n_head
// heads of head_dim), B and C (n_group groups of d_state; head h reads group h / (n_head / n_group));
// per head dt' = softplus(dt + dt_bias), S = S exp(dt' A) + dt' x B^T, y = S C + D x; then
// y * silu(z), RMS-normed per group of d_inner / n_group and times ssm_norm; x += out_proj y.
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/threadpool.h"
#include "gguf/gguf.h"
#include "model/config_read.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/ssm.h"
#include "model/weights_load.h"

namespace sl {

void Config::read_mamba2(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    ssm_d_conv = get_dim(f, a + "ssm.conv_kernel", 1, 1024);
    ssm_d_inner = get_dim(f, a + "ssm.inner_size", 1, 1 << 20);
    ssm_d_state = get_dim(f, a + "ssm.state_size", 1, 4096);
    ssm_n_head = get_dim(f, a + "ssm.time_step_rank", 1, ssm_d_inner);
    ssm_n_group = get_dim(f, a + "ssm.group_count", 1, ssm_n_head);
    if (ssm_d_inner % ssm_n_head != 0 || ssm_n_head % ssm_n_group != 0)
        throw GGUFError(strfmt("%s: metadata '%sssm.time_step_rank' = %d (the heads) must divide '%sssm.inner_size' "
                               "= %d, and '%sssm.group_count' = %d the heads", f.path().c_str(), a.c_str(), ssm_n_head,
                               a.c_str(), ssm_d_inner, a.c_str(), ssm_n_group));
}

void Model::load_mamba2_layer(const std::string & b, LayerWeights & L) {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    const int64_t cd = c.ssm_conv_dim(), nh = c.ssm_n_head, di = c.ssm_d_inner, ng = c.ssm_n_group;
    L.ssm_in = matrix(f, c, b + "ssm_in.weight", c.ssm_in_dim(), c.n_embd);
    L.ssm_out = matrix(f, c, b + "ssm_out.weight", c.n_embd, di);
    auto f32 = [&](const std::string & name, int64_t ne0, int64_t ne1) {
        const GGUFTensor & t = require(f, c, b + name, ne0, ne1);
        if (t.type != QType::F32)
            throw GGUFError(strfmt("%s: tensor '%s%s' has type %s, expected F32", f.path().c_str(), b.c_str(),
                                   name.c_str(), qtype_traits(t.type)->name));
        return reinterpret_cast<const float *>(t.data);
    };
    L.ssm_conv = f32("ssm_conv1d.weight", c.ssm_d_conv, cd);
    if (c.ssm_only || f.find_tensor(b + "ssm_conv1d.bias")) L.ssm_conv_b = f32("ssm_conv1d.bias", cd, -1);
    L.ssm_dt_b = f32("ssm_dt.bias", nh, -1);
    L.ssm_a = f32("ssm_a", 1, nh);
    L.ssm_d = f32("ssm_d", 1, nh);
    if (c.arch != Arch::FalconH1 || f.find_tensor(b + "ssm_norm.weight"))  // (falcon-h1's optional)
        L.ssm_norm = f32("ssm_norm.weight", di / ng, ng);
    for (const char * name : {"ssm_in.bias", "ssm_out.bias"})
        if (f.find_tensor(b + name))
            throw GGUFError(strfmt("%s: tensor '%s%s': projection biases are not supported (nor by llama.cpp)",
                                   f.path().c_str(), b.c_str(), name));
}

using ssm::silu;
using ssm::softplus;

void Model::ssm_conv(int l, const float * in, int64_t in_stride, float * out, int64_t out_stride, int n,
                     const int32_t * slot) {
    // Per channel the kernel over the slot's last d inputs (oldest first) and this token's, which
    // then joins the state; a slot's tokens in batch order.
    const LayerWeights & L = w_.layers[size_t(l)];
    const int64_t cd = cfg_.ssm_conv_dim();
    const int d = cfg_.ssm_d_conv - 1;
    cpu_->pool().parallel_for(cd, [&](int64_t e0, int64_t e1) {
        for (int i = 0; i < n; ++i) {
            const float * xi = in + size_t(i) * size_t(in_stride);
            float * yi = out + size_t(i) * size_t(out_stride);
            float * st = conv_state(l, slot[i]);  // (d, cd)
            for (int64_t e = e0; e < e1; ++e) {
                const float * w = L.ssm_conv + e * (d + 1);
                const float v = xi[e];
                float acc = L.ssm_conv_b ? L.ssm_conv_b[e] : 0.0f;
                for (int k = 0; k < d; ++k) acc += w[k] * st[k * cd + e];
                acc += w[d] * v;
                for (int k = 0; k + 1 < d; ++k) st[k * cd + e] = st[(k + 1) * cd + e];
                if (d > 0) st[(d - 1) * cd + e] = v;
                yi[e] = silu(acc);
            }
        }
    });
}

void Model::mamba2_block(int l, Scratch & s, int n, const int32_t * slot) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    Backend * be = cpu_.get();
    const int64_t di = c.ssm_d_inner, cd = c.ssm_conv_dim(), row = c.ssm_in_dim(), nh = c.ssm_n_head;
    const int64_t hd = c.ssm_head_dim(), ds = c.ssm_d_state, ng = c.ssm_n_group;
    const int d = c.ssm_d_conv - 1;
    // (z; xBC; dt) = in_proj h, one row of ssm_in_dim per token
    const WeightRef * in = &L.ssm_in;
    float * zxbcdt = s.ff;
    if (imx_) imx_observe(l, kImxQ, s.h, n, be);  // (the attention's sites, see imatrix_start)
    be->matmul(&in, &zxbcdt, 1, s.h, n, false);

    // xBC = silu(conv(xBC) + bias) in place
    ssm_conv(l, zxbcdt + di, row, zxbcdt + di, row, n, slot);

    // The selective scan, head by head (each head's state its own), a slot's tokens in order:
    // y = S C + D x after S = S exp(dt' A) + dt' x B^T.
    float * y = ssm_y_;  // (n, d_inner)
    const int64_t heads_per_group = nh / ng;
    cpu_->pool().parallel_for(nh, [&](int64_t h0, int64_t h1) {
        for (int i = 0; i < n; ++i) {
            const float * r = zxbcdt + size_t(i) * size_t(row);
            const float * x = r + di;
            const float * B = x + di;
            const float * C = B + ng * ds;
            const float * dt = r + di + cd;
            float * S = conv_state(l, slot[i]) + size_t(d) * size_t(cd);  // (nh, hd, ds)
            float * yi = y + size_t(i) * size_t(di);
            for (int64_t h = h0; h < h1; ++h) {
                const float sp = softplus(dt[h] + L.ssm_dt_b[h]);
                const float decay = std::exp(sp * L.ssm_a[h]);
                const float * Bg = B + (h / heads_per_group) * ds;
                const float * Cg = C + (h / heads_per_group) * ds;
                for (int64_t p = 0; p < hd; ++p) {
                    const float xv = x[h * hd + p];
                    const float xdt = xv * sp;
                    float * sr = S + (h * hd + p) * ds;
                    float acc = 0.0f;
                    for (int64_t k = 0; k < ds; ++k) {
                        sr[k] = sr[k] * decay + Bg[k] * xdt;
                        acc += sr[k] * Cg[k];
                    }
                    yi[h * hd + p] = acc + L.ssm_d[h] * xv;
                }
            }
        }
    });

    // y = rmsnorm(y * silu(z)) per group, times the norm's weight
    const int64_t gs = di / ng;
    cpu_->pool().parallel_for(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float * yt = y + t * di;
            const float * z = zxbcdt + t * row;
            for (int64_t j = 0; j < di; ++j) yt[j] *= silu(z[j]);
            for (int64_t g = 0; g < ng && L.ssm_norm; ++g) {
                float * yg = yt + g * gs;
                double ss = 0.0;
                for (int64_t j = 0; j < gs; ++j) ss += double(yg[j]) * yg[j];
                const float scale = float(1.0 / std::sqrt(ss / double(gs) + double(c.rms_eps)));
                for (int64_t j = 0; j < gs; ++j) yg[j] *= scale * L.ssm_norm[g * gs + j];
            }
        }
    });
    // x += out_proj y
    if (imx_) imx_observe(l, kImxO, y, n, be);
    add_output(be, be, &L.ssm_out, nullptr, y, s, n);
}

}  // namespace sl
