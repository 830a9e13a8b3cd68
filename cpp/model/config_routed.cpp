// Mixtures of experts read past the architecture table: glm4moe (GLM-4.5 / 4.5-Air / 4.6 / 4.7;
// llama.cpp's llama_model_glm4_moe), with the router settings it shares with deepseek2,
// ernie4_5-moe (ERNIE-4.5-21B-A3B / 300B-A47B; llama_model_ernie4_5_moe) and qwen3vlmoe's text
// model (Qwen3-VL-30B-A3B / 235B-A22B; llama_model_qwen3vlmoe).
#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/config_read.h"

namespace sl {

void read_gating_func(const GGUFFile & f, Config & c, bool sigmoid_default) {
    // llama_expert_gating_func_type: 0 (absent: the architecture's default), 1 softmax, 2 sigmoid
    const std::string gating_key = c.arch_name + ".expert_gating_func";
    const int gating = f.find(gating_key) ? get_dim(f, gating_key, 0, 1 << 20) : 0;
    if (gating > 2)
        throw GGUFError(strfmt("%s: metadata '%s' = %d is not supported (1: softmax, 2: sigmoid)", f.path().c_str(),
                               gating_key.c_str(), gating));
    c.moe_sigmoid = gating == 2 || (gating == 0 && sigmoid_default);
}

void read_expert_router(const GGUFFile & f, Config & c, bool sigmoid_default) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    c.n_expert_shared = get_dim(f, a + "expert_shared_count", 0, 64);
    c.n_ff_shexp = c.n_ff_exp * c.n_expert_shared;  // (they run as one feed-forward of their stacked rows)
    c.expert_weights_norm = f.get_bool(a + "expert_weights_norm", false);
    c.expert_weights_scale = get_positive(f, a + "expert_weights_scale", 0.0, true);
    if (c.expert_weights_scale == 0) c.expert_weights_scale = 1.0f;  // 0: none
    read_gating_func(f, c, sigmoid_default);
    auto opt_dim = [&](const char * key, int64_t hi) { return f.find(a + key) ? get_dim(f, a + key, 0, hi) : 0; };
    c.n_expert_groups = opt_dim("expert_group_count", c.n_expert - 1);
    c.n_group_used = opt_dim("expert_group_used_count", 4096);
    if (c.n_expert_groups > 1 &&
        (c.n_expert % c.n_expert_groups != 0 || c.n_group_used < 1 || c.n_group_used >= c.n_expert_groups ||
         c.n_expert_used > c.n_group_used * (c.n_expert / c.n_expert_groups)))
        throw GGUFError(strfmt("%s: metadata '%sexpert_group_count' = %d, expert_group_used_count = %d do not fit "
                               "%d experts, %d used", path, a.c_str(), c.n_expert_groups, c.n_group_used, c.n_expert,
                               c.n_expert_used));
}

int nextn_layers(const GGUFFile & f, const Config & c) {
    const std::string key = c.arch_name + ".nextn_predict_layers";
    if (!f.find(key)) return 0;
    return get_dim(f, key, 0, c.n_layer - 1);  // (at least one layer of the trunk)
}

void read_glm4moe(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    if (c.n_expert == 0)
        throw GGUFError(strfmt("%s: metadata '%sexpert_count' is missing (glm4moe has experts)", path, a.c_str()));
    if (f.find(a + "rope.dimension_sections"))
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_sections': GLM-4.5V's multimodal rotation (M-RoPE) "
                               "is not supported", path, a.c_str()));
    const std::string lead_key = a + "leading_dense_block_count";
    c.n_layer_dense_lead = f.find(lead_key) ? get_dim(f, lead_key, 0, c.n_layer) : 0;
    if (c.n_layer_dense_lead > 0 && c.n_ff == 0)
        throw GGUFError(strfmt("%s: metadata '%sfeed_forward_length' is missing (the dense blocks' width)", path,
                               a.c_str()));
    c.n_ff_exp = get_dim(f, a + "expert_feed_forward_length", 1, 1 << 20);  // (required, as llama.cpp)
    read_expert_router(f, c, true);  // (sigmoid unless the file says otherwise, as llama.cpp)
}

void read_ernie4_5_moe(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    if (c.n_expert == 0)
        throw GGUFError(strfmt("%s: metadata '%sexpert_count' is missing (ernie4_5-moe has experts)", path,
                               a.c_str()));
    if (!f.find(a + "attention.layer_norm_rms_epsilon"))
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", path, a.c_str()));
    if (c.n_rot != c.head_dim)  // (llama.cpp asserts it)
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_count' = %d: ernie4_5-moe rotates whole heads (%d)",
                               path, a.c_str(), c.n_rot, c.head_dim));
    // llama.cpp loads experts in every block from leading_dense_block_count on, but its graph runs
    // them only where (l + 1) % interleave_moe_layer_step == 0: the two agree for a step of 1 only
    const int step = get_dim(f, a + "interleave_moe_layer_step", 1, c.n_layer);
    if (step != 1)
        throw GGUFError(strfmt("%s: metadata '%sinterleave_moe_layer_step' = %d: only experts in every block from "
                               "leading_dense_block_count on (a step of 1) are supported", path, a.c_str(), step));
    const std::string lead_key = a + "leading_dense_block_count";
    c.n_layer_dense_lead = f.find(lead_key) ? get_dim(f, lead_key, 0, c.n_layer) : 0;
    c.n_ff_exp = get_dim(f, a + "expert_feed_forward_length", 1, 1 << 20);
    const std::string shexp_key = a + "expert_shared_feed_forward_length";
    c.n_ff_shexp = f.find(shexp_key) ? get_dim(f, shexp_key, 0, 1 << 20) : 0;
    // the softmax over all experts, the chosen (by probability plus any exp_probs_b) renormalized,
    // never scaled: llama.cpp's graph fixes these whatever the keys say
    c.moe_sigmoid = false;
    c.expert_weights_norm = true;
    c.expert_weights_scale = 1.0f;
}

void read_qwen3vlmoe(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    // Text tokens: M-RoPE with every section at the token's position is the plain NEOX rotation,
    // and the deepstack inputs (rows past n_embd of a vision embedding) are zeros, as for qwen3vl.
    for (const char * key : {"rope.dimension_sections", "attention.layer_norm_rms_epsilon"})
        if (!f.find(a + key)) throw GGUFError(strfmt("%s: metadata '%s%s' is missing", path, a.c_str(), key));
    if (c.n_rot != c.head_dim)  // (llama.cpp asserts it)
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_count' = %d: qwen3vlmoe rotates whole heads (%d)",
                               path, a.c_str(), c.n_rot, c.head_dim));
    // the experts' width: expert_feed_forward_length, else feed_forward_length / expert_used_count
    const std::string exp_key = a + "expert_feed_forward_length";
    c.n_ff_exp = f.find(exp_key) ? get_dim(f, exp_key, 1, 1 << 20) : c.n_ff / c.n_expert_used;
    if (c.n_ff_exp < 1)
        throw GGUFError(strfmt("%s: metadata '%s' is missing and feed_forward_length / expert_used_count leaves the "
                               "experts no width", path, exp_key.c_str()));
    c.expert_weights_norm = true;  // (llama.cpp's graph renormalizes whatever expert_weights_norm says)
}

}  // namespace sl
