// minimax-m2 (MiniMax-M2 / M2.1; llama.cpp's llama_model_minimax_m2): every block a mixture of
// experts with a sigmoid router and its selection bias (exp_probs_b), the chosen experts' weights
// renormalized and never scaled; q and k RMS-normed over the whole projections (all heads
// together) before the NEOX rotation of each head's first rope.dimension_count dims.
#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/config_read.h"

namespace sl {

void read_minimax_m2(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    if (!f.find(a + "expert_feed_forward_length"))  // (llama.cpp requires it)
        throw GGUFError(strfmt("%s: metadata '%sexpert_feed_forward_length' is missing", path, a.c_str()));
    if (!f.find(a + "attention.layer_norm_rms_epsilon"))
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", path, a.c_str()));
    if (f.find(a + "expert_shared_count") && f.get_int(a + "expert_shared_count") != 0)
        throw GGUFError(strfmt("%s: metadata '%sexpert_shared_count': minimax-m2 has no shared experts", path,
                               a.c_str()));
    if (f.find(a + "expert_group_count") && f.get_int(a + "expert_group_count") > 1)
        throw GGUFError(strfmt("%s: metadata '%sexpert_group_count': minimax-m2 routes without groups", path,
                               a.c_str()));
    read_gating_func(f, c, true);  // (sigmoid unless the file says softmax)
    // llama.cpp's graph renormalizes the chosen weights and reads no scale, whatever the keys say
    c.expert_weights_norm = true;
    c.expert_weights_scale = 1.0f;
    c.qk_norm_full = true;
}

}  // namespace sl
