// The mixture-of-experts variants beside deepseek2 that reuse its routing (config_routed.cpp's
// read_expert_router: softmax or sigmoid scores, selection bias, groups, scaled weights) and the
// shared experts as a block's dense feed-forward: dots1, bailingmoe2, hunyuan-moe and smallthinker,
// as llama.cpp's src/models/<arch>.cpp reads them.
#include <vector>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/config_read.h"

namespace sl {

namespace {

// llama.cpp's get_key without a default: an integer key within [lo, hi] that must be there.
int required_dim(const GGUFFile & f, const std::string & key, int64_t lo, int64_t hi) {
    if (!f.find(key)) throw GGUFError(strfmt("%s: metadata '%s' is missing", f.path().c_str(), key.c_str()));
    return get_dim(f, key, lo, hi);
}

// expert_gating_func, which llama.cpp reads without a default for these (0 would abort its graph):
// 1 softmax, 2 sigmoid.
int required_gating(const GGUFFile & f, const Config & c) {
    const std::string key = c.arch_name + ".expert_gating_func";
    const int g = required_dim(f, key, 0, 1 << 20);
    if (g < 1 || g > 2)
        throw GGUFError(strfmt("%s: metadata '%s' = %d is not supported (1: softmax, 2: sigmoid)", f.path().c_str(),
                               key.c_str(), g));
    return g;
}

// The leading dense blocks (leading_dense_block_count, absent: none), experts of
// expert_feed_forward_length and the router (read_expert_router: expert_shared_count shared experts
// of the experts' width each, run as one feed-forward of their stacked rows); bailingmoe2's each of
// expert_shared_feed_forward_length where given.
void read_lead_and_router(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const std::string lead = a + "leading_dense_block_count";
    c.n_layer_dense_lead = f.find(lead) ? get_dim(f, lead, 0, c.n_layer) : 0;
    c.n_ff_exp = required_dim(f, a + "expert_feed_forward_length", 1, 1 << 20);
    required_dim(f, a + "expert_shared_count", 0, 64);
    required_gating(f, c);
    read_expert_router(f, c, false);
    const std::string shexp = a + "expert_shared_feed_forward_length";
    if (c.arch == Arch::BailingMoe2 && f.find(shexp) && f.get_int(shexp) > 0)
        c.n_ff_shexp = get_dim(f, shexp, 1, 1 << 20) * c.n_expert_shared;
}

// smallthinker's sliding-window layers (llama.cpp's llama_model_smallthinker): where the file has a
// window, every layer but one in four slides (the first of each four global; or the file's pattern:
// flags, or a period counted the same way), over 4096 positions whatever the window says (as
// llama.cpp pins it), rotated with rope.freq_base_swa; layers 0, 4, 8, ... are not rotated at all
// (NoPE). Without a window, every layer is global and rotates.
void read_smallthinker_windows(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.n_swa = 0;
    if (!f.find(a + "attention.sliding_window") || get_dim(f, a + "attention.sliding_window", 0, 1 << 30) == 0) return;
    const std::string key = a + "attention.sliding_window_pattern";
    std::vector<uint8_t> swa(size_t(c.n_layer), 0);
    if (const GGUFValue * v = f.find(key); v && v->type == GGUFType::ARRAY) {
        swa = swa_pattern(f, key, c.n_layer, 0);
    } else {
        const int period = f.find(key) ? get_dim(f, key, 0, 1 << 20) : 4;
        for (int l = 0; l < c.n_layer; ++l) swa[size_t(l)] = period == 0 || l % period != 0;
    }
    c.swa_layers = any_swa(swa);
    c.n_swa = c.swa_layers.empty() ? 0 : 4096;
    c.rope_base_swa = get_positive(f, a + "rope.freq_base_swa", c.rope_base);
    c.rope_freq_scale_swa = c.rope_freq_scale;
    for (int l = 0; l < c.n_layer; ++l) c.nope_layers.push_back(l % 4 == 0);
}

}  // namespace

void Config::read_moe_variants(const GGUFFile & f) {
    switch (arch) {
    case Arch::Dots1:  // dots.llm1: deepseek-v3's router (its gating function required) and shared experts
        read_lead_and_router(f, *this);
        break;
    case Arch::BailingMoe2:  // Ling / Ring 2.0: q, k, v in one tensor, partial rotation, deepseek-v3's router
        attn_qkv = true;
        read_lead_and_router(f, *this);
        break;
    case Arch::HunyuanMoe: {  // Hunyuan-A13B: q/k norms after the rotation; experts and shared expert
        // as wide as the dense feed-forward (unless expert_shared_feed_forward_length), softmax router
        // renormalized, as llama.cpp's graph fixes it
        qk_norm_after_rope = true;
        n_ff_exp = n_ff;
        const std::string shexp = arch_name + ".expert_shared_feed_forward_length";
        n_ff_shexp = f.find(shexp) && f.get_int(shexp) > 0 ? get_dim(f, shexp, 1, 1 << 20) : n_ff;
        expert_weights_norm = true;
        break;
    }
    case Arch::SmallThinker:  // the router on the block's input, ReGLU experts, windows and NoPE layers
        router_on_input = true;
        experts_relu = true;
        moe_sigmoid = required_gating(f, *this) == 2;
        expert_weights_norm = true;  // (llama.cpp's graph: renormalized, never scaled)
        expert_weights_scale = 1.0f;
        read_smallthinker_windows(f, *this);
        break;
    default:
        break;
    }
}

}  // namespace sl
