// minimax-m2 (MiniMax-M2 / M2.1; llama.cpp's llama_model_minimax_m2): every block a mixture of
// experts with a sigmoid router and its selection bias (exp_probs_b), the chosen experts' weights
// renormalized and never scaled; q and k RMS-normed over the whole projections (all heads
// together) before the NEOX rotation of each head's first rope.dimension_count dims.
// phimoe (Phi-3.5-MoE; llama_model_phimoe, run by llama_model_phi3's graph): RMS norms with biases
// (the checkpoint's LayerNorms, as llama.cpp's graph runs them), experts in every block chosen by
// the softmax's top k and renormalized (sparsemixer's routing, as llama.cpp runs it), biases on the
// attention output and the output layer, phi3's LongRoPE factors.
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

void read_phimoe(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    if (!f.find(a + "attention.layer_norm_rms_epsilon"))  // (llama.cpp requires it)
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", f.path().c_str(),
                               a.c_str()));
    if (c.head_dim * c.n_head != c.n_embd)  // (llama.cpp's tensors are n_embd / n_head per head)
        throw GGUFError(strfmt("%s: phimoe needs head_count x key_length = embedding_length (%d x %d != %d)",
                               f.path().c_str(), c.n_head, c.head_dim, c.n_embd));
    c.norm_bias = true;
    // llama.cpp's graph: the softmax over all experts, the chosen renormalized, never scaled
    c.moe_sigmoid = false;
    c.expert_weights_norm = true;
    c.expert_weights_scale = 1.0f;
}

}  // namespace sl
