// The mixture-of-experts variants beside deepseek2 that reuse its routing (config.cpp's
// read_expert_router: softmax or sigmoid scores, selection bias, groups, scaled weights) and the
// shared experts as a block's dense feed-forward: dots1, bailingmoe2 and hunyuan-moe, as llama.cpp's
// src/models/<arch>.cpp reads them.
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

// The leading dense blocks (leading_dense_block_count, absent: none), experts of
// expert_feed_forward_length and expert_shared_count shared experts of that width each (bailingmoe2:
// of expert_shared_feed_forward_length where given), run as one feed-forward of their stacked rows.
void read_lead_and_shared(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const std::string lead = a + "leading_dense_block_count";
    c.n_layer_dense_lead = f.find(lead) ? get_dim(f, lead, 0, c.n_layer) : 0;
    c.n_ff_exp = required_dim(f, a + "expert_feed_forward_length", 1, 1 << 20);
    c.n_expert_shared = required_dim(f, a + "expert_shared_count", 0, 64);
    const std::string shexp = a + "expert_shared_feed_forward_length";
    const bool own_width = c.arch == Arch::BailingMoe2 && f.find(shexp) && f.get_int(shexp) > 0;
    c.n_ff_shexp = (own_width ? get_dim(f, shexp, 1, 1 << 20) : c.n_ff_exp) * c.n_expert_shared;
}

}  // namespace

void Config::read_moe_variants(const GGUFFile & f) {
    switch (arch) {
    case Arch::Dots1:  // dots.llm1: deepseek-v3's router (its gating function required) and shared experts
        read_lead_and_shared(f, *this);
        read_expert_router(f, *this, true);
        break;
    case Arch::BailingMoe2:  // Ling / Ring 2.0: q, k, v in one tensor, partial rotation, deepseek-v3's router
        attn_qkv = true;
        read_lead_and_shared(f, *this);
        read_expert_router(f, *this, true);
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
    default:
        break;
    }
}

}  // namespace sl
