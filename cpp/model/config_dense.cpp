// The dense decoders beside llama whose settings go past the architecture table (config.cpp):
// mistral3, glm4, exaone4, ernie4_5, cohere2 and qwen3vl, as llama.cpp's src/models/<arch>.cpp reads
// them.
#include <cmath>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/config_read.h"

namespace sl {

namespace {

// llama.cpp's get_key without a default: the key must be there.
void require_key(const GGUFFile & f, const std::string & key) {
    if (!f.find(key)) throw GGUFError(strfmt("%s: metadata '%s' is missing", f.path().c_str(), key.c_str()));
}

// A float key that is finite and at least lo, or the fallback when absent.
float get_at_least(const GGUFFile & f, const std::string & key, double fallback, double lo) {
    const double v = f.get_float(key, fallback);
    if (!(v >= lo) || !std::isfinite(v))
        throw GGUFError(strfmt("%s: metadata '%s' = %g must be at least %g", f.path().c_str(), key.c_str(), v, lo));
    return float(v);
}

// Sliding-window layers with a period of 4 (or the file's pattern) and a window the file names
// (or `window`), rotated by the global layers' frequencies (the graphs of exaone4 and cohere2
// pass the global base and scale); the global layers not rotated at all.
void sliding_unrotated_globals(const GGUFFile & f, Config & c, int window) {
    const std::string a = c.arch_name + ".";
    const std::string key = a + "attention.sliding_window";
    c.n_swa = f.find(key) ? get_dim(f, key, 1, 1 << 30) : window;
    const std::vector<uint8_t> swa = swa_pattern(f, a + "attention.sliding_window_pattern", c.n_layer, 4);
    c.nope_layers.clear();
    for (uint8_t s : swa) c.nope_layers.push_back(!s);
    c.swa_layers = any_swa(swa);
    if (c.swa_layers.empty()) c.n_swa = 0;
    c.swa_rope_global = true;
}

}  // namespace

void Config::read_dense(const GGUFFile & f) {
    const std::string a = arch_name + ".";
    const bool rms = arch == Arch::Mistral3 || arch == Arch::Glm4 || arch == Arch::Exaone4 || arch == Arch::Ernie4_5 ||
                     arch == Arch::Qwen3VL;
    if (rms) require_key(f, a + "attention.layer_norm_rms_epsilon");
    if (rms && arch != Arch::Glm4 && n_rot != head_dim)  // (llama.cpp asserts it)
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_count' = %d: %s rotates whole heads (%d)",
                               f.path().c_str(), a.c_str(), n_rot, arch_name.c_str(), head_dim));
    switch (arch) {
    case Arch::Mistral3:  // YaRN's settings and Llama 4's attention temperature
        yarn_beta_fast_train = get_at_least(f, a + "rope.scaling.yarn_beta_fast", 32.0, 0.0);
        yarn_beta_slow_train = get_at_least(f, a + "rope.scaling.yarn_beta_slow", 1.0, 0.0);
        yarn_log_mul = get_at_least(f, a + "rope.scaling.yarn_log_multiplier", 0.0, 0.0);
        attn_temp_scale = get_at_least(f, a + "attention.temperature_scale", 0.0, 0.0);
        attn_temp_floor = n_ctx_orig;  // (rope.scaling.original_context_length, else context_length)
        break;
    case Arch::Glm4:  // post-norms, gate and up in one tensor, partial rotation
        if (f.find(a + "rope.dimension_sections"))
            throw GGUFError(strfmt("%s: metadata '%srope.dimension_sections': GLM-4V's multimodal rotation (M-RoPE) "
                                   "is not supported", f.path().c_str(), a.c_str()));
        post_norms = true;
        fused_gate_up = true;
        break;
    case Arch::Exaone4:  // no input norms; post-norms; per-head q/k norms; windows only in the 32B
        pre_norms = false;
        post_norms = true;
        n_swa = 0;  // (the 1.2B's window is not applied, as in llama.cpp)
        if (n_layer == 64) sliding_unrotated_globals(f, *this, 4096);
        break;
    case Arch::Cohere2:  // LayerNorm, attention and feed-forward in parallel, logits times logit_scale
        require_key(f, a + "attention.sliding_window");
        require_key(f, a + "logit_scale");
        layer_norm = true;
        parallel_ffn = true;
        sliding_unrotated_globals(f, *this, 0);
        logit_scale = 1.0f / get_positive(f, a + "logit_scale", 1.0);
        break;
    case Arch::Qwen3VL:
        // qwen3's layers. Text tokens: M-RoPE with every section at the token's position is the plain
        // NEOX rotation, and the deepstack inputs (rows past n_embd of a vision embedding) are zeros.
        require_key(f, a + "rope.dimension_sections");
        break;
    default:
        break;
    }
}

}  // namespace sl
