// The ungated feed-forwards of apertus (xIELU), arcee (ReLU squared) and starcoder2 (GELU, with
// biases), and starcoder2's bias tensors (llama.cpp's src/models/<arch>.cpp: build_ffn with
// LLM_FFN_SEQ). These layers run on the CPU (model placement keeps them there).
#include <cmath>

#include "common/error.h"
#include "common/threadpool.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/weights_load.h"

namespace sl {

namespace {

// ggml's activations, elementwise in place on x[0, n).
void xielu(float * x, int64_t n, const XieluParams & p) {
    for (float * e = x + n; x < e; ++x) {
        const float v = *x;
        *x = v > 0.0f ? p.alpha_p * v * v + p.beta * v : (std::expm1(std::fmin(v, p.eps)) - v) * p.alpha_n + p.beta * v;
    }
}

void relu_sqr(float * x, int64_t n) {
    for (float * e = x + n; x < e; ++x) *x = *x > 0.0f ? *x * *x : 0.0f;
}

// The tanh approximation: x / 2 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
void gelu(float * x, int64_t n) {
    constexpr float kC = 0.7978845608028654f, kA = 0.044715f;
    for (float * e = x + n; x < e; ++x) {
        const float v = *x;
        *x = 0.5f * v * (1.0f + std::tanh(kC * v * (1.0f + kA * v * v)));
    }
}

}  // namespace

void Model::load_densevar_layer(const std::string & b, LayerWeights & L) {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    if (c.ffn_act != FfnAct::Glu && f.find_tensor(b + "ffn_gate.weight"))  // (llama.cpp would not read it)
        throw GGUFError(strfmt("%s: tensor '%sffn_gate.weight': %s's feed-forward has no gate", f.path().c_str(),
                               b.c_str(), c.arch_name.c_str()));
    if (!c.norm_bias) return;
    // starcoder2, phimoe: every bias is required (the q/k/v ones are optional, model.cpp)
    L.attn_norm_b = vector_f32(f, c, b + "attn_norm.bias", c.n_embd);
    L.ffn_norm_b = vector_f32(f, c, b + "ffn_norm.bias", c.n_embd);
    if (!L.wo.bias) L.wo.bias = vector_f32(f, c, b + "attn_output.bias", c.n_embd);
    if (c.ffn_act == FfnAct::Glu) return;  // (phimoe: its experts have none)
    L.w_up.bias = vector_f32(f, c, b + "ffn_up.bias", c.n_ff);
    L.w_down.bias = vector_f32(f, c, b + "ffn_down.bias", c.n_embd);
}

void Model::ungated_ffn(Backend * be, Backend * mm, int l, const float * h, Scratch & s, int n) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    SL_CHECK(be->is_cpu(), "internal: %s's feed-forward runs on the CPU only", c.arch_name.c_str());
    if (imx_) imx_observe(l, kImxUp, h, n, be);
    const WeightRef * up = &L.w_up;
    float * out = s.ff;
    mm->matmul(&up, &out, 1, h, n, false);  // (with its bias)
    apply_lora(be, &up, &out, 1, h, s, n);
    const int64_t n_ff = L.w_up.rows;
    cpu_->pool().parallel_for(n, [&](int64_t t0, int64_t t1) {
        float * x = s.ff + t0 * n_ff;
        const int64_t m = (t1 - t0) * n_ff;
        switch (c.ffn_act) {
        case FfnAct::Xielu: return xielu(x, m, c.xielu[size_t(l)]);
        case FfnAct::ReluSqr: return relu_sqr(x, m);
        case FfnAct::Gelu: return gelu(x, m);
        case FfnAct::Glu: break;
        }
    });
}

}  // namespace sl
