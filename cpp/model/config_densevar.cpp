// The dense decoders seed_oss, apertus, hunyuan-dense, arcee and starcoder2: what llama.cpp's
// src/models/<arch>.cpp reads beyond the architecture table (config.cpp).
#include <cmath>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/config_read.h"

namespace sl {

namespace {

// llama.cpp's get_key_or_arr for a float: one value for every layer, or an array of n_layer.
std::vector<float> per_layer_floats(const GGUFFile & f, const std::string & key, int n_layer) {
    const GGUFValue * v = f.find(key);
    if (!v) throw GGUFError(strfmt("%s: metadata '%s' is missing", f.path().c_str(), key.c_str()));
    std::vector<float> out;
    if (v->type != GGUFType::ARRAY) {
        out.assign(size_t(n_layer), float(f.get_float(key)));
    } else {
        if (int64_t(v->arr.size()) != n_layer)
            throw GGUFError(strfmt("%s: metadata '%s' has %zu values for %d layers", f.path().c_str(), key.c_str(),
                                   v->arr.size(), n_layer));
        for (const GGUFValue & e : v->arr) {
            if (!e.is_float())
                throw GGUFError(strfmt("%s: metadata '%s' must hold floats", f.path().c_str(), key.c_str()));
            out.push_back(float(e.num.f64));
        }
    }
    for (float x : out)
        if (!std::isfinite(x))
            throw GGUFError(strfmt("%s: metadata '%s' holds %g (not finite)", f.path().c_str(), key.c_str(), double(x)));
    return out;
}

// ggml's softplus (ggml_compute_softplus_f32), in float as it computes it.
float softplus(float x) { return x > 20.0f ? x : std::log(1.0f + std::exp(x)); }

void require_key(const GGUFFile & f, const std::string & key) {
    if (!f.find(key)) throw GGUFError(strfmt("%s: metadata '%s' is missing", f.path().c_str(), key.c_str()));
}

}  // namespace

void Config::read_dense_variant(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    const bool ours = arch == Arch::SeedOss || arch == Arch::Apertus || arch == Arch::HunyuanDense ||
                      arch == Arch::Arcee || arch == Arch::Starcoder2;
    if (!ours) return;
    // (llama.cpp's graphs assert whole-head rotation; starcoder2 reads LayerNorm's epsilon, config.cpp)
    if (arch != Arch::Starcoder2) require_key(f, a + "attention.layer_norm_rms_epsilon");
    if (n_rot != head_dim)
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_count' = %d: %s rotates whole heads (%d)",
                               f.path().c_str(), a.c_str(), n_rot, arch_name.c_str(), head_dim));
    if (n_expert > 0 && !(arch == Arch::HunyuanDense && n_expert == 1))
        throw GGUFError(strfmt("%s: metadata '%sexpert_count' = %d: a %s model has no experts", f.path().c_str(),
                               a.c_str(), n_expert, arch_name.c_str()));
    n_expert = n_expert_used = n_ff_exp = 0;  // (hunyuan-dense: llama.cpp reads one expert as none)
    switch (arch) {
    case Arch::Apertus: {  // xIELU feed-forward with per-layer settings; output layer of its own
        const std::vector<float> an = per_layer_floats(f, "xielu.alpha_n", n_layer);
        const std::vector<float> ap = per_layer_floats(f, "xielu.alpha_p", n_layer);
        const std::vector<float> be = per_layer_floats(f, "xielu.beta", n_layer);
        const std::vector<float> ep = per_layer_floats(f, "xielu.eps", n_layer);
        ffn_act = FfnAct::Xielu;
        xielu.clear();
        for (int l = 0; l < n_layer; ++l)  // (as ggml_xielu stores them)
            xielu.push_back({be[size_t(l)] + softplus(an[size_t(l)]), softplus(ap[size_t(l)]), be[size_t(l)],
                             ep[size_t(l)]});
        if (!f.find_tensor("output.weight"))
            throw GGUFError(strfmt("%s: tensor 'output.weight' is missing (llama.cpp's apertus requires it)",
                                   f.path().c_str()));
        break;
    }
    case Arch::HunyuanDense:  // q/k norms after the rotation; NTK-alpha scaling of the base
        if (f.find(a + "rope.dimension_sections"))
            throw GGUFError(strfmt("%s: metadata '%srope.dimension_sections': HunyuanVL's XD-RoPE is not supported",
                                   f.path().c_str(), a.c_str()));
        qk_norm_after_rope = true;
        if (const float alpha = get_positive(f, a + "rope.scaling.alpha", 0.0, true); alpha > 0)  // (in float, as llama.cpp)
            rope_base *= std::pow(alpha, float(head_dim) / float(head_dim - 2));
        break;
    case Arch::Arcee:
        ffn_act = FfnAct::ReluSqr;
        break;
    case Arch::Starcoder2:  // LayerNorms with biases, GELU feed-forward with biases
        layer_norm = true;
        norm_bias = true;
        ffn_act = FfnAct::Gelu;
        break;
    default:  // seed_oss: llama's layers with the feed-forward norm named post_attention_norm (model.cpp)
        break;
    }
}

}  // namespace sl
