// falcon-h1 (TII Falcon-H1; llama.cpp's src/models/falcon-h1.cpp): every layer runs attention
// (NEOX rotation) and a Mamba-2 mixer (mamba2.cpp; its gated norm optional) side by side on the
// same RMS-normed input, x += attn(h) + mamba2(h), then the SwiGLU feed-forward on its own norm.
// Its multipliers (embedding, lm_head, attention in / out, key, ssm in / out, the mup vector over
// in_proj's z / x / B / C / dt rows, the MLP's gate and down) are folded into the weights by the
// converter, as llama.cpp's FalconH1Model does: the graph has none of them.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/model.h"

namespace sl {

void Config::read_falcon_h1(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    const char * path = f.path().c_str();
    if (!f.find(a + "attention.layer_norm_rms_epsilon"))  // (llama.cpp requires it)
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", path, a.c_str()));
    read_mamba2(f);
    if (ssm_d_inner < n_embd)
        throw GGUFError(strfmt("%s: metadata '%sssm.inner_size' = %d is narrower than the model (%d): not supported",
                               path, a.c_str(), ssm_d_inner, n_embd));
    conv_layers.assign(size_t(n_layer), 1);  // (every layer keeps a Mamba-2 state, and a KV cache)
    parallel_ssm = true;
    for (int l = 0; l < n_layer; ++l)
        for (const char * name : {"ffn_gate.bias", "ffn_up.bias", "ffn_down.bias", "rope_freqs.weight"}) {
            const std::string t = "blk." + std::to_string(l) + "." + name;
            if (f.find_tensor(t))
                throw GGUFError(strfmt("%s: tensor '%s' is not supported", path, t.c_str()));
        }
}

void Model::falcon_h1_save_h(Scratch & s, int n) {
    std::memcpy(ssm_y_, s.h, sizeof(float) * size_t(n) * size_t(cfg_.n_embd));
}

void Model::falcon_h1_mamba2(int l, Scratch & s, int n, const int32_t * slot) {
    std::memcpy(s.h, ssm_y_, sizeof(float) * size_t(n) * size_t(cfg_.n_embd));  // (add_output used s.h)
    mamba2_block(l, s, n, slot);
}

}  // namespace sl
