// Qwen3-Next's delta-net input projections (qwen3next.h); the rest of its layers are qwen35's.
#include "model/qwen3next.h"

#include <cstring>

#include "common/threadpool.h"
#include "gguf/gguf.h"
#include "model/weights_load.h"

namespace sl {

void load_qwen3next_in(const GGUFFile & f, const Config & c, const std::string & b, LayerWeights & L) {
    const int64_t cd = c.dn_conv_dim(), vd = c.dn_v_dim();
    if (f.find_tensor(b + "ssm_in.weight")) {
        L.dn_qkv = matrix(f, c, b + "ssm_in.weight", cd + vd, c.n_embd);
    } else {
        L.dn_qkv = matrix(f, c, b + "attn_qkv.weight", cd, c.n_embd);
        L.dn_z = matrix(f, c, b + "attn_gate.weight", vd, c.n_embd);
    }
    L.dn_beta = matrix(f, c, b + "ssm_ba.weight", 2 * int64_t(c.dn_v_heads), c.n_embd);
}

size_t qwen3next_raw_floats(const Config & c) {
    return size_t(c.dn_conv_dim()) + size_t(c.dn_v_dim()) + 2 * size_t(c.dn_v_heads);
}

void qwen3next_in(Backend * be, ThreadPool & pool, const Config & c, const LayerWeights & L, const float * h,
                  int n, float * qkv, float * z, float * beta, float * alpha, float * raw) {
    const int64_t cd = c.dn_conv_dim(), vd = c.dn_v_dim(), hv = c.dn_v_heads, hk = c.dn_k_heads;
    const int64_t d = c.dn_head_dim, r = hv / hk, kd = hk * d, in = cd + vd;
    const bool fused = L.dn_z.rows == 0;
    float * ba = raw + size_t(n) * (fused ? in : 0);  // (n, 2 hv)
    if (fused) {
        const WeightRef * w[2] = {&L.dn_qkv, &L.dn_beta};
        float * y[2] = {raw, ba};
        be->matmul(w, y, 2, h, n, false);
    } else {
        const WeightRef * w[3] = {&L.dn_qkv, &L.dn_z, &L.dn_beta};
        float * y[3] = {qkv, z, ba};
        be->matmul(w, y, 3, h, n, false);
    }
    // per key head g: (q, k, v of its r value heads, their z) and (their beta, their alpha)
    pool.parallel_for(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float * q = qkv + t * cd;
            for (int64_t g = 0; g < hk; ++g) {
                if (fused) {
                    const float * src = raw + t * in + g * (2 * d + 2 * r * d);
                    std::memcpy(q + g * d, src, sizeof(float) * size_t(d));
                    std::memcpy(q + kd + g * d, src + d, sizeof(float) * size_t(d));
                    std::memcpy(q + 2 * kd + g * r * d, src + 2 * d, sizeof(float) * size_t(r * d));
                    std::memcpy(z + t * vd + g * r * d, src + 2 * d + r * d, sizeof(float) * size_t(r * d));
                }
                const float * src = ba + t * 2 * hv + g * 2 * r;
                std::memcpy(beta + t * hv + g * r, src, sizeof(float) * size_t(r));
                std::memcpy(alpha + t * hv + g * r, src + r, sizeof(float) * size_t(r));
            }
        }
    });
}

}  // namespace sl
