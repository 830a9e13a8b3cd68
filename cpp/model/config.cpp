#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config_read.h"

namespace sl {

namespace {

// The architectures by their GGUF name, with the traits that set them apart (ArchTrait bits).
struct ArchTraits {
    const char * name;
    Arch arch;
    unsigned traits;
};
constexpr ArchTraits kArchs[] = {
    {"llama", Arch::Llama, 0},
    {"qwen2", Arch::Qwen2, kNeox | kQkvBias},
    {"qwen3", Arch::Qwen3, kNeox | kQkNorm},
    {"qwen3moe", Arch::Qwen3Moe, kNeox | kQkNorm | kAllRouted},
    {"phi3", Arch::Phi3, kNeox | kFusedQkv},
    {"gemma", Arch::Gemma, kNeox},
    {"gemma2", Arch::Gemma2, kNeox},
    {"gemma3", Arch::Gemma3, kNeox | kQkNorm},
    {"gemma-embedding", Arch::GemmaEmbedding, kNeox | kQkNorm},
    {"bert", Arch::Bert, 0},
    {"nomic-bert", Arch::NomicBert, kNeox},
    {"smollm3", Arch::SmolLM3, 0},
    {"granite", Arch::Granite, 0},
    {"olmo2", Arch::Olmo2, kNeox | kQkNorm},
    {"gpt-oss", Arch::GptOss, kNeox | kAllRouted | kFfnNormPost},  // (q/k/v biases optional, as in llama.cpp)
    {"mistral3", Arch::Mistral3, 0},  // (the rest: config_dense.cpp)
    {"glm4", Arch::Glm4, kNoWoBias},
    {"exaone4", Arch::Exaone4, kNeox | kQkNorm | kNoWoBias},
    {"ernie4_5", Arch::Ernie4_5, kNoWoBias},
    {"cohere2", Arch::Cohere2, kNoWoBias},
    {"qwen3vl", Arch::Qwen3VL, kNeox | kQkNorm},  // (text only)
    {"qwen2moe", Arch::Qwen2Moe, kNeox | kQkvBias | kExperts | kRoutedBlocks},
    {"olmoe", Arch::Olmoe, kNeox | kQkNorm | kExperts | kRoutedBlocks},
    {"granitemoe", Arch::GraniteMoe, kRoutedBlocks},
    {"deepseek2", Arch::DeepSeek2, kFfOptional | kDenseLead},
    {"lfm2", Arch::Lfm2, kNeox | kQkNorm},
    {"bitnet", Arch::Bitnet, kNeox},
    {"gemma4", Arch::Gemma4, kNeox | kQkNorm},
    {"seed_oss", Arch::SeedOss, kNeox | kNoWoBias | kFfnNormPost},  // (the rest: config_densevar.cpp)
    {"apertus", Arch::Apertus, kNeox | kQkNorm},
    {"hunyuan-dense", Arch::HunyuanDense, kNeox | kQkNorm | kNoWoBias},
    {"arcee", Arch::Arcee, kNoWoBias},
    {"starcoder2", Arch::Starcoder2, kNeox},
    // glm4moe: q/k/v biases, q/k norms optional
    {"glm4moe", Arch::Glm4Moe, kNeox | kFfOptional | kDenseLead | kSelBias | kNoWoBias | kFfnNormPost | kNextN},
    {"ernie4_5-moe", Arch::Ernie4_5Moe, kDenseLead | kNoWoBias},
    {"qwen3vlmoe", Arch::Qwen3VLMoe, kNeox | kQkNorm | kAllRouted},  // (text only)
    {"granitehybrid", Arch::GraniteHybrid, 0},  // (mamba2.cpp)
    {"nemotron_h", Arch::NemotronH, 0},  // (nemotron_h.cpp)
    {"qwen35", Arch::Qwen35, kNeox | kQkNorm},  // (model/qwen35.cpp)
    {"qwen35moe", Arch::Qwen35Moe, kNeox | kQkNorm | kAllRouted},
    {"llama4", Arch::Llama4, kExperts},  // (text only; model/llama4.cpp)
    // lfm2moe: lfm2's layers, experts: read_lfm2
    {"lfm2moe", Arch::Lfm2Moe, kNeox | kQkNorm | kExperts | kDenseLead | kSelBias},
    {"dots1", Arch::Dots1, kNeox | kQkNorm | kExperts | kDenseLead},  // (the rest: config_moevar.cpp)
    {"bailingmoe2", Arch::BailingMoe2, kNeox | kQkNorm | kExperts | kDenseLead | kNextN},
    {"hunyuan-moe", Arch::HunyuanMoe, kNeox | kQkNorm | kExperts | kRoutedBlocks},
    {"smallthinker", Arch::SmallThinker, kNeox | kExperts | kRoutedBlocks},
    {"qwen3next", Arch::Qwen3Next, kNeox | kQkNorm | kAllRouted},  // (qwen35.cpp, qwen3next.cpp)
    {"minimax-m2", Arch::MinimaxM2, kNeox | kQkNorm | kAllRouted | kSelBias | kNoWoBias},  // (config_minimax.cpp)
    {"phimoe", Arch::PhiMoe, kNeox | kAllRouted},
    {"nemotron_h_moe", Arch::NemotronHMoe, 0},  // (nemotron_h.cpp)
    {"falcon-h1", Arch::FalconH1, kNeox | kNoWoBias},  // (falcon_h1.cpp)
    {"command-r", Arch::CommandR, kNoWoBias},  // (the rest: command_r.cpp)
    {"exaone", Arch::Exaone, kNeox | kNoWoBias},
    {"internlm2", Arch::InternLM2, kNoWoBias},
    {"deci", Arch::Deci, 0},  // (model/deci.cpp)
};

std::string supported_archs() {
    std::string names;
    for (const ArchTraits & a : kArchs) names += (names.empty() ? "" : ", ") + std::string(a.name);
    return names;
}

}  // namespace

// (shared with config_dense.cpp through config_read.h)
int get_dim(const GGUFFile & f, const std::string & key, int64_t lo, int64_t hi) {
    const int64_t v = f.get_int(key);
    if (v < lo || v > hi)
        throw GGUFError(strfmt("%s: metadata '%s' = %lld is out of range [%lld, %lld]", f.path().c_str(),
                               key.c_str(), (long long)v, (long long)lo, (long long)hi));
    return int(v);
}

// (shared through config_read.h)
std::vector<int> layer_dims(const GGUFFile & f, const std::string & key, int n_layer, int64_t lo, int64_t hi,
                            int fallback) {
    const GGUFValue * v = f.find(key);
    if (!v || v->type != GGUFType::ARRAY)
        return std::vector<int>(size_t(n_layer), !v && fallback >= 0 ? fallback : get_dim(f, key, lo, hi));
    if (int64_t(v->arr.size()) != n_layer)
        throw GGUFError(strfmt("%s: metadata '%s' has %zu values for %d layers", f.path().c_str(), key.c_str(),
                               v->arr.size(), n_layer));
    std::vector<int> out;
    for (const GGUFValue & e : v->arr) {
        const int64_t x = !e.is_integer() ? lo - 1 : e.type == GGUFType::INT64 || e.type == GGUFType::INT32 ||
                                                            e.type == GGUFType::INT16 || e.type == GGUFType::INT8
                                                        ? e.num.i64 : int64_t(std::min<uint64_t>(e.num.u64, 1ull << 62));
        if (x < lo || x > hi)
            throw GGUFError(strfmt("%s: metadata '%s' holds a value outside [%lld, %lld] (or not an integer)",
                                   f.path().c_str(), key.c_str(), (long long)lo, (long long)hi));
        out.push_back(int(x));
    }
    return out;
}

// A positive (or with zero_ok, non-negative) float key, or the fallback when absent.
float get_positive(const GGUFFile & f, const std::string & key, double fallback, bool zero_ok) {
    const double v = f.get_float(key, fallback);
    if (!(v > 0 || (zero_ok && v == 0)) || !std::isfinite(v))
        throw GGUFError(strfmt("%s: metadata '%s' = %g must be %s", f.path().c_str(), key.c_str(), v,
                               zero_ok ? "positive or 0" : "positive"));
    return float(v);
}

// Which layers use the sliding window (as llama.cpp's load_swa_pattern): the key
// attention.sliding_window_pattern as one flag per layer, or as a period n (layer l slides
// unless l % n == n - 1; n = 0: every layer), else the architecture's period.
std::vector<uint8_t> swa_pattern(const GGUFFile & f, const std::string & key, int n_layer, int period) {
    std::vector<uint8_t> swa(size_t(n_layer), 0);
    if (const GGUFValue * v = f.find(key); v && v->type == GGUFType::ARRAY) {
        if (int64_t(v->arr.size()) != n_layer)
            throw GGUFError(strfmt("%s: metadata '%s' has %zu flags for %d layers", f.path().c_str(), key.c_str(),
                                   v->arr.size(), n_layer));
        for (int l = 0; l < n_layer; ++l) {
            const GGUFValue & e = v->arr[size_t(l)];
            if (e.type != GGUFType::BOOL)
                throw GGUFError(strfmt("%s: metadata '%s' must hold booleans", f.path().c_str(), key.c_str()));
            swa[size_t(l)] = e.num.b;
        }
        return swa;
    }
    if (f.find(key)) period = get_dim(f, key, 0, 1 << 20);
    for (int l = 0; l < n_layer; ++l) swa[size_t(l)] = period == 0 || l % period < period - 1;
    return swa;
}

// The flags, or none at all when no layer slides.
std::vector<uint8_t> any_swa(std::vector<uint8_t> swa) {
    if (std::find(swa.begin(), swa.end(), 1) == swa.end()) swa.clear();
    return swa;
}

namespace {

// EmbeddingGemma (llama.cpp's llama_model_gemma_embedding): gemma3's layers with a window that is
// required, queries always scaled by 1 / sqrt(head_dim), no soft-cap; sentence-transformers'
// dense projections (dense_2: n_embd -> dense_2_feat_out, dense_3: dense_3_feat_in -> n_embd)
// where the file has them.
void read_gemma_embedding(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.n_swa = get_dim(f, a + "attention.sliding_window", 0, 1 << 30);
    if (c.n_swa == 0)  // (llama.cpp would let each token of a local layer see itself alone)
        throw GGUFError(strfmt("%s: metadata '%sattention.sliding_window' = 0: a window of no tokens is not "
                               "supported", f.path().c_str(), a.c_str()));
    c.swa_layers = any_swa(swa_pattern(f, a + "attention.sliding_window_pattern", c.n_layer, 6));
    if (c.swa_layers.empty()) c.n_swa = 0;  // every layer global
    c.rope_base_swa = get_positive(f, a + "rope.freq_base_swa", 10000.0);
    c.rope_freq_scale_swa = 1.0f;
    auto dim = [&](const char * key, bool must_be_embd) {
        const std::string k = a + key;
        if (!f.find(k)) return 0;
        const int v = get_dim(f, k, 1, 1 << 20);
        if (must_be_embd && v != c.n_embd)
            throw GGUFError(strfmt("%s: metadata '%s' = %d must equal %sembedding_length = %d", f.path().c_str(),
                                   k.c_str(), v, a.c_str(), c.n_embd));
        return v;
    };
    dim("dense_2_feat_in", true);
    c.dense_2_out = dim("dense_2_feat_out", false);
    c.dense_3_in = dim("dense_3_feat_in", false);
    dim("dense_3_feat_out", true);
}

// Gemma's differences from llama (llama.cpp's llm_build_gemma*, gemma_pytorch's config).
void read_gemma(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.embd_scale = std::sqrt(float(c.n_embd));
    c.ffn_gelu = true;
    if (c.arch == Arch::Gemma) return;
    c.post_norms = true;
    // The 27B models scale queries by 1 / sqrt(n_embd / n_head), not by the head size (recognised by
    // their depth, as llama.cpp does).
    const int n_layer_27b = c.arch == Arch::Gemma2 ? 46 : c.arch == Arch::Gemma3 ? 62 : 0;
    if (c.n_layer == n_layer_27b) c.attn_scale = 1.0f / std::sqrt(float(c.n_embd / c.n_head));
    const std::string window_key = a + "attention.sliding_window";
    if (c.arch == Arch::GemmaEmbedding) return read_gemma_embedding(f, c);
    if (c.arch == Arch::Gemma2) {
        c.n_swa = f.find(window_key) ? get_dim(f, window_key, 1, 1 << 30) : 4096;
        c.swa_layers = any_swa(swa_pattern(f, a + "attention.sliding_window_pattern", c.n_layer, 2));
        c.rope_base_swa = get_positive(f, a + "rope.freq_base_swa", c.rope_base);
        c.rope_freq_scale_swa = c.rope_freq_scale;
        if (c.swa_layers.empty()) c.n_swa = 0;
        c.attn_softcap = get_positive(f, a + "attn_logit_softcapping", 50.0);
        c.final_softcap = get_positive(f, a + "final_logit_softcapping", 30.0, true);  // 0: none (llama.cpp)
        return;
    }
    c.n_swa = f.find(window_key) ? get_dim(f, window_key, 0, 1 << 30) : 0;
    if (c.n_swa > 0) {  // without a window every layer is global
        c.swa_layers = any_swa(swa_pattern(f, a + "attention.sliding_window_pattern", c.n_layer, 6));
        c.rope_base_swa = get_positive(f, a + "rope.freq_base_swa", 10000.0);
        c.rope_freq_scale_swa = 1.0f;
        if (c.swa_layers.empty()) c.n_swa = 0;
    }
    c.final_softcap = get_positive(f, a + "final_logit_softcapping", 0.0, true);
}

// Granite's multipliers (llama.cpp's llm_build_granite): embeddings times embedding_scale, the
// branch outputs times residual_scale, scores times attention.scale, logits over logit_scale (all
// but the last optional); rope.scaling.finetuned false turns the rotation off.
void read_granite(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    if (c.arch == Arch::Granite && c.n_expert > 0)
        throw GGUFError(strfmt("%s: a granite model with experts is not supported (granitemoe is)", f.path().c_str()));
    c.logit_scale = get_positive(f, a + "logit_scale", 1.0);
    if (!f.find(a + "logit_scale") && c.arch != Arch::GraniteHybrid)  // (optional there, as in llama.cpp)
        throw GGUFError(strfmt("%s: metadata '%slogit_scale' is missing", f.path().c_str(), a.c_str()));
    for (auto [key, v] : {std::pair{"residual_scale", &c.residual_scale}, {"embedding_scale", &c.embd_scale}}) {
        *v = get_positive(f, a + key, 1.0, true);
        if (*v == 0) *v = 1.0f;  // 0: none, as llama.cpp reads it
    }
    c.attn_scale = get_positive(f, a + "attention.scale", 0.0, true);
    if (!f.get_bool(a + "rope.scaling.finetuned", true)) c.nope_layers.assign(size_t(c.n_layer), 1);
}


// The largest of per-layer values; the array is dropped when they are all equal.
int max_of(std::vector<int> & v) {
    const int m = *std::max_element(v.begin(), v.end());
    if (std::all_of(v.begin(), v.end(), [&](int x) { return x == m; })) v.clear();
    return m;
}

// Gemma 4's head counts and feed-forward widths, which may be given per layer (arrays).
void read_gemma4_shapes(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.n_head_arr = layer_dims(f, a + "attention.head_count", c.n_layer, 1, 4096);
    c.n_head_kv_arr = f.find(a + "attention.head_count_kv")
                          ? layer_dims(f, a + "attention.head_count_kv", c.n_layer, 1, 4096)
                          : c.n_head_arr;
    for (int l = 0; l < c.n_layer; ++l)
        if (c.n_head_arr[size_t(l)] % c.n_head_kv_arr[size_t(l)] != 0)
            throw GGUFError(strfmt("%s: layer %d: %d key/value heads do not divide its %d query heads (metadata "
                                   "'%sattention.head_count_kv')", f.path().c_str(), l, c.n_head_kv_arr[size_t(l)],
                                   c.n_head_arr[size_t(l)], a.c_str()));
    c.n_ff_arr = layer_dims(f, a + "feed_forward_length", c.n_layer, 1, 1 << 20);
    c.n_head = max_of(c.n_head_arr);
    c.n_head_kv = max_of(c.n_head_kv_arr);
    c.n_ff = max_of(c.n_ff_arr);
    if (!c.n_head_arr.empty() && c.n_head_kv_arr.empty()) c.n_head_kv_arr.assign(size_t(c.n_layer), c.n_head_kv);
    if (c.n_head_arr.empty() && !c.n_head_kv_arr.empty()) c.n_head_arr.assign(size_t(c.n_layer), c.n_head);
}

// Gemma 4 (llama.cpp's llama_model_gemma4, src/models/gemma4.cpp): sliding-window layers flagged
// one by one, with a head size, rotated dimensions and rotary base of their own; queries and keys
// RMS-normed per head, values too (without a weight); scores not scaled (1.0); optional final
// soft-cap; the last shared_kv_layers layers reading earlier layers' caches.
void read_gemma4(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.embd_scale = std::sqrt(float(c.n_embd));
    c.ffn_gelu = true;
    c.post_norms = true;
    c.attn_scale = 1.0f;
    c.n_swa = get_dim(f, a + "attention.sliding_window", 1, 1 << 30);
    const std::string pattern = a + "attention.sliding_window_pattern";
    if (const GGUFValue * v = f.find(pattern); !v || v->type != GGUFType::ARRAY)
        throw GGUFError(strfmt("%s: metadata '%s' (one flag per layer) is %s", f.path().c_str(), pattern.c_str(),
                               v ? "not an array" : "missing"));
    c.swa_layers = any_swa(swa_pattern(f, pattern, c.n_layer, 0));
    if (c.swa_layers.empty()) c.n_swa = 0;
    c.rope_base_swa = get_positive(f, a + "rope.freq_base_swa", 10000.0);
    c.rope_freq_scale_swa = 1.0f;
    const int hd_swa = get_dim(f, a + "attention.key_length_swa", 2, 1024);
    if (hd_swa % 2 != 0 || f.get_int(a + "attention.value_length_swa", hd_swa) != hd_swa)
        throw GGUFError(strfmt("%s: metadata '%sattention.key_length_swa' = %d must be even and equal "
                               "'%sattention.value_length_swa'", f.path().c_str(), a.c_str(), hd_swa, a.c_str()));
    c.head_dim_swa = hd_swa;
    c.n_rot_swa = f.find(a + "rope.dimension_count_swa") ? get_dim(f, a + "rope.dimension_count_swa", 2, hd_swa)
                                                          : c.n_rot;
    if (c.n_rot_swa % 2 != 0 || c.n_rot_swa > hd_swa)
        throw GGUFError(strfmt("%s: rotated dimensions of the sliding layers (%d) must be even and at most their "
                               "head size %d", f.path().c_str(), c.n_rot_swa, hd_swa));
    c.final_softcap = get_positive(f, a + "final_logit_softcapping", 30.0, true);  // (absent: 30, as llama.cpp)
    c.n_embd_per_layer = f.find(a + "embedding_length_per_layer_input")
                             ? get_dim(f, a + "embedding_length_per_layer_input", 0, 1 << 16)
                             : 0;
    const int shared = f.find(a + "attention.shared_kv_layers")
                           ? get_dim(f, a + "attention.shared_kv_layers", 0, c.n_layer - 1)
                           : 0;
    c.n_layer_kv = shared > 0 ? c.n_layer - shared : 0;
    for (int l = c.n_layer_kv; shared > 0 && l < c.n_layer; ++l) {  // (llama.cpp's choice of the cache read)
        const int src = c.kv_source(l);
        if (src < 0 || c.is_swa(src) != c.is_swa(l))
            throw GGUFError(strfmt("%s: metadata '%sattention.shared_kv_layers' = %d: layer %d would read the cache "
                                   "of layer %d, which is not of its kind (sliding / global)", f.path().c_str(),
                                   a.c_str(), shared, l, src));
    }
    c.expert_weights_norm = true;  // (26B-A4B: the chosen experts' probabilities renormalized, as llama.cpp)
}

}  // namespace

namespace {

// YaRN's correction dimension for a wavelength of n_rot_turns turns over the original context
// (ggml_rope_yarn_corr_dim), in float as ggml computes it.
float yarn_corr_dim(int n_dims, int n_ctx_orig, float n_turns, float base) {
    return float(n_dims) * std::log(float(n_ctx_orig) / (n_turns * 2.0f * float(M_PI))) / (2.0f * std::log(base));
}

// gpt-oss (llama.cpp's llm_build_openai_moe_iswa): sliding-window layers every other one (the
// even ones), the same rotary base and scale on both kinds (YaRN from the metadata), attention
// sinks, and mixture-of-experts blocks whose router and experts have biases, gated by the softmax
// of the chosen experts' logits, with the clamped SwiGLU.
void read_gpt_oss(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.n_swa = get_dim(f, a + "attention.sliding_window", 1, 1 << 30);
    c.swa_layers = any_swa(swa_pattern(f, a + "attention.sliding_window_pattern", c.n_layer, 2));
    if (c.swa_layers.empty()) c.n_swa = 0;
    c.rope_base_swa = get_positive(f, a + "rope.freq_base_swa", c.rope_base);
    c.rope_freq_scale_swa = c.rope_freq_scale;
    c.moe_softmax_weight = true;
    c.expert_weights_norm = false;
    c.swiglu_oai = true;
    c.attn_sinks = true;
}

// qwen2moe, olmoe, granitemoe (llama.cpp's llm_build_qwen2moe, llm_build_olmoe, llm_build_granite):
// their graphs fix whether the chosen experts' softmax weights are renormalized (granitemoe only),
// whatever expert_weights_norm says. qwen2moe: experts of expert_feed_forward_length (else
// feed_forward_length / expert_used_count), a gated shared expert of
// expert_shared_feed_forward_length (else feed_forward_length); olmoe and granitemoe: experts of
// feed_forward_length; granitemoe's shared expert (granitemoeshared) where the key is given.
void read_moe_variant(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const bool granite = c.arch == Arch::GraniteMoe || c.arch == Arch::GraniteHybrid;
    c.expert_weights_norm = granite;
    const std::string exp_key = a + "expert_feed_forward_length", shexp_key = a + "expert_shared_feed_forward_length";
    c.n_ff_exp = c.n_ff;
    if (c.arch == Arch::Qwen2Moe) {
        c.n_ff_exp = f.find(exp_key) ? get_dim(f, exp_key, 1, 1 << 20) : c.n_ff / c.n_expert_used;
        if (c.n_ff_exp < 1)
            throw GGUFError(strfmt("%s: metadata '%sfeed_forward_length' = %d over %d experts used leaves the experts "
                                   "no width ('%s' is absent)", f.path().c_str(), a.c_str(), c.n_ff, c.n_expert_used,
                                   exp_key.c_str()));
        c.n_ff_shexp = f.find(shexp_key) ? get_dim(f, shexp_key, 1, 1 << 20) : c.n_ff;
        c.shexp_gate = true;
    } else if (granite && f.find(shexp_key)) {
        c.n_ff_shexp = get_dim(f, shexp_key, 0, 1 << 20);
    }
}

// deepseek2 (llama.cpp's llama_model_deepseek2): the latent attention's ranks and head sizes, the
// leading dense blocks, the shared experts and the router's settings.
void read_deepseek2(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    const char * path = f.path().c_str();
    auto opt_dim = [&](const char * key, int64_t lo, int64_t hi) { return f.find(a + key) ? get_dim(f, a + key, lo, hi) : 0; };
    if (f.find(a + "attention.temperature_scale"))
        throw GGUFError(strfmt("%s: metadata '%sattention.temperature_scale': attention temperature tuning is not "
                               "supported", path, a.c_str()));
    c.n_layer_dense_lead = opt_dim("leading_dense_block_count", 0, c.n_layer);
    if (c.n_layer_dense_lead > 0 && c.n_ff == 0)
        throw GGUFError(strfmt("%s: metadata '%sfeed_forward_length' is missing (the dense blocks' width)", path,
                               a.c_str()));
    if (c.n_layer_dense_lead < c.n_layer && c.n_expert == 0)
        throw GGUFError(strfmt("%s: metadata '%sexpert_count' is missing: blocks %d.. have experts", path, a.c_str(),
                               c.n_layer_dense_lead));
    c.q_lora_rank = opt_dim("attention.q_lora_rank", 0, 1 << 20);
    c.kv_lora_rank = get_dim(f, a + "attention.kv_lora_rank", 1, 1 << 20);
    // llama.cpp's is_mla: both MLA head sizes given (the converter's current files)
    c.head_dim_k_mla = opt_dim("attention.key_length_mla", 1, 4096);
    c.head_dim_v_mla = opt_dim("attention.value_length_mla", 1, 4096);
    c.mla = c.head_dim_k_mla > 0 && c.head_dim_v_mla > 0;
    if (c.mla) {
        if (c.n_head_kv != 1 || c.head_dim != c.kv_lora_rank + c.n_rot || c.head_dim_v != c.kv_lora_rank)
            throw GGUFError(strfmt("%s: an MLA file needs '%sattention.head_count_kv' = 1, key_length = kv_lora_rank "
                                   "+ rope.dimension_count = %d and value_length = kv_lora_rank = %d (got %d, %d, %d)",
                                   path, a.c_str(), c.kv_lora_rank + c.n_rot, c.kv_lora_rank, c.n_head_kv,
                                   c.head_dim, c.head_dim_v));
    } else {  // an older file: the decompressed heads (attn_kv_b)
        c.deepseek_kv_b = true;
        c.head_dim_k_mla = c.head_dim;
        c.head_dim_v_mla = c.head_dim_v;
        if (c.n_head_kv != c.n_head)
            throw GGUFError(strfmt("%s: metadata '%sattention.head_count_kv' = %d: a file without key_length_mla "
                                   "needs a key head per query head (%d)", path, a.c_str(), c.n_head_kv, c.n_head));
    }
    if (c.head_dim_k_mla <= c.n_rot)
        throw GGUFError(strfmt("%s: key head size %d leaves no dims unrotated (rope.dimension_count %d)", path,
                               c.head_dim_k_mla, c.n_rot));
    // (llama.cpp cancels the 0.1 its converter writes into DeepSeek's value)
    c.yarn_log_mul = float(f.get_float(a + "rope.scaling.yarn_log_multiplier", 0.0) / 0.1);
    if (!std::isfinite(c.yarn_log_mul))
        throw GGUFError(strfmt("%s: bad %srope.scaling.yarn_log_multiplier", path, a.c_str()));
    if (c.n_expert == 0) return;
    read_expert_router(f, c, false);  // (config_routed.cpp; softmax unless the file says otherwise)
}

// attention.head_count_kv: one count, or one per layer (llama.cpp's per-layer form); the layers
// that attend must agree. lfm2's zeros mark its convolution layers (Config::conv_layers).
int read_head_count_kv(const GGUFFile & f, Config & c) {
    const std::string key = c.arch_name + ".attention.head_count_kv";
    const GGUFValue * v = f.find(key);
    if (!v || v->type != GGUFType::ARRAY) return int(f.get_int(key, c.n_head));
    if (int64_t(v->arr.size()) != c.n_layer)
        throw GGUFError(strfmt("%s: metadata '%s' has %zu entries for %d layers", f.path().c_str(), key.c_str(),
                               v->arr.size(), c.n_layer));
    int n_kv = 0;
    std::vector<uint8_t> conv(size_t(c.n_layer), 0);
    for (int l = 0; l < c.n_layer; ++l) {
        const GGUFValue & e = v->arr[size_t(l)];
        if (!e.is_integer())
            throw GGUFError(strfmt("%s: metadata '%s' must hold integers", f.path().c_str(), key.c_str()));
        const int64_t k = e.num.i64;  // (small values read alike as signed or unsigned)
        if (k == 0 && (c.arch == Arch::Lfm2 || c.arch == Arch::GraniteHybrid || c.nemotron() ||
                       c.arch == Arch::Lfm2Moe)) {
            conv[size_t(l)] = 1;
            continue;
        }
        if (k < 1 || k > 4096 || (n_kv != 0 && k != n_kv))
            throw GGUFError(strfmt("%s: metadata '%s' = %lld at layer %d: splitllm needs the same number of "
                                   "key/value heads in every attention layer (%d before)", f.path().c_str(),
                                   key.c_str(), (long long)k, l, n_kv));
        n_kv = int(k);
    }
    if (std::find(conv.begin(), conv.end(), 1) != conv.end()) c.conv_layers = conv;
    return n_kv > 0 ? n_kv : c.n_head;  // (no attention layer: no cache either)
}

// lfm2 (llama.cpp's llama_model_lfm2): the convolution's length; no sliding window. lfm2moe
// (llama_model_lfm2moe, LFM2-8B-A1B): experts from block leading_dense_block_count on, chosen by
// their sigmoid (or softmax) scores plus exp_probs_b, weighed by the scores renormalized.
void read_lfm2(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    c.conv_l_cache = get_dim(f, a + "shortconv.l_cache", 2, 1024);
    if (c.arch == Arch::Lfm2Moe) {
        const std::string lead = a + "leading_dense_block_count";
        c.n_layer_dense_lead = f.find(lead) ? get_dim(f, lead, 0, c.n_layer) : 0;
        const int gating = get_dim(f, a + "expert_gating_func", 1, 2);  // (1 softmax, 2 sigmoid)
        c.moe_sigmoid = gating == 2;
        c.expert_weights_norm = true;  // (llama.cpp's norm_w, whatever the key)
    }
    if (c.q_dim() != c.n_embd)  // (the convolution's output shares the attention's buffer; llama.cpp's too)
        throw GGUFError(strfmt("%s: lfm2 needs head_count x head size = embedding_length (%d x %d != %d)",
                               f.path().c_str(), c.n_head, c.head_dim, c.n_embd));
    if (c.n_swa > 0)
        throw GGUFError(strfmt("%s: metadata '%sattention.sliding_window': lfm2's sliding-window attention layers "
                               "are not supported", f.path().c_str(), a.c_str()));
}

}  // namespace

double Config::inv_freq(int i, bool swa) const {
    const double scale = swa ? rope_freq_scale_swa : rope_freq_scale;
    const float base = swa ? rope_base_swa : rope_base;
    const int rot = n_rot_of(swa);
    const double theta = std::pow(double(base), -2.0 * i / rot);
    if (yarn_ext_factor == 0.0f) return scale * theta;
    // ggml's rope_yarn: ramp 1 below the fast correction dim, 0 above the slow one, linear between
    const float lo = std::max(0.0f, std::floor(yarn_corr_dim(rot, n_ctx_orig_yarn, yarn_beta_fast, base)));
    const float hi = std::min(float(rot - 1), std::ceil(yarn_corr_dim(rot, n_ctx_orig_yarn, yarn_beta_slow, base)));
    const float y = (float(i) - lo) / std::max(0.001f, hi - lo);
    const double mix = double((1.0f - std::min(1.0f, std::max(0.0f, y))) * yarn_ext_factor);
    return theta * (scale * (1.0 - mix) + mix);
}

void Config::apply_rope(const RopeParams & p) {
    SL_CHECK(p.scaling_type >= kRopeUnspecified && p.scaling_type <= kRopeLongRope,
             "rope_scaling_type must be -1 (the model's), 0 (none), 1 (linear), 2 (yarn) or 3 (longrope); got %d",
             p.scaling_type);
    SL_CHECK(p.freq_base >= 0 && std::isfinite(p.freq_base), "rope_freq_base must be >= 0 (0: the model's)");
    SL_CHECK(p.freq_scale >= 0 && std::isfinite(p.freq_scale), "rope_freq_scale must be >= 0 (0: the model's)");
    SL_CHECK(p.orig_ctx >= 0, "yarn_orig_ctx must be >= 0 (0: the model's)");
    for (float v : {p.ext_factor, p.attn_factor, p.beta_fast, p.beta_slow})
        SL_CHECK(std::isfinite(v), "the yarn_* settings must be finite numbers");
    rope_base = p.freq_base > 0 ? p.freq_base : rope_base_train;
    rope_freq_scale = p.freq_scale > 0 ? p.freq_scale : rope_freq_scale_train;
    SL_CHECK(std::isfinite(1.0f / rope_freq_scale), "rope_freq_scale %g is too small (its inverse overflows)",
             double(rope_freq_scale));
    n_ctx_orig_yarn = p.orig_ctx > 0 ? p.orig_ctx : n_ctx_orig;
    rope_scaling = p.scaling_type != kRopeUnspecified ? p.scaling_type : rope_scaling_train;
    if (rope_scaling == kRopeNone) rope_freq_scale = 1.0f;
    yarn_ext_factor = p.ext_factor >= 0 ? p.ext_factor : rope_scaling == kRopeYarn ? 1.0f : 0.0f;
    yarn_beta_fast = p.beta_fast >= 0 ? p.beta_fast : yarn_beta_fast_train;
    yarn_beta_slow = p.beta_slow >= 0 ? p.beta_slow : yarn_beta_slow_train;
    // llama_context: YaRN's attention factor 0.1 ln(factor) + 1, divided by what ggml's rope_yarn
    // multiplies in again; then the model's attn_factor.
    float attn = p.attn_factor >= 0 ? p.attn_factor : 1.0f;
    if (yarn_ext_factor != 0.0f) {
        const float factor = 1.0f / rope_freq_scale;
        auto get_mscale = [&](float m) { return factor <= 1.0f ? 1.0f : 0.1f * m * std::log(factor) + 1.0f; };
        // with rope.scaling.yarn_log_multiplier (DeepSeek's mscale_all_dim; its mscale taken equal
        // to it for deepseek2 unless 1, as llama.cpp assumes): their ratio
        const float log_mul = yarn_log_mul;
        const float mscale = arch == Arch::DeepSeek2 && log_mul != 1.0f ? log_mul : 1.0f;
        attn = (log_mul != 0.0f ? get_mscale(mscale) / get_mscale(log_mul) : get_mscale(1.0f)) /
               (1.0f + 0.1f * std::log(factor));
    }
    attn *= rope_attn_factor;
    if (arch == Arch::DeepSeek2) {  // llama.cpp's kq_scale: mscale^2 / sqrt(key head size)
        const float org = attn * (1.0f + 0.1f * std::log(1.0f / rope_freq_scale));
        const float m = org * (1.0f + 0.1f * yarn_log_mul * std::log(1.0f / rope_freq_scale));
        attn_scale = m * m / std::sqrt(float(head_dim_k_mla));
    }
    // ggml's rope_yarn: times 1 + 0.1 ln(1 / freq_scale) of the layer when ext_factor != 0
    auto magnitude = [&](float scale) {
        return yarn_ext_factor != 0.0f ? attn * (1.0f + 0.1f * std::log(1.0f / scale)) : attn;
    };
    rope_mscale = magnitude(rope_freq_scale);
    rope_mscale_swa = magnitude(rope_freq_scale_swa);
}

int Config::max_gqa() const {
    int g = n_head / n_head_kv;
    for (size_t l = 0; l < n_head_arr.size(); ++l)  // (deci: layers without key/value heads skipped)
        if (n_head_kv_of(int(l)) > 0) g = std::max(g, n_head_of(int(l)) / n_head_kv_of(int(l)));
    return g;
}

int Config::kv_source(int l) const {
    // llama.cpp's layer reuse for Gemma 3n / 4: the last layer with a cache of the same kind
    if (n_layer_kv <= 0 || l < n_layer_kv) return l;
    return n_layer_kv - (is_swa(l) ? 2 : 1);
}

std::string Config::shape_keys() const {
    const std::string a = arch_name + ".";
    std::string keys = strfmt("%sembedding_length = %d, %sfeed_forward_length = %d, %sattention.head_count = %d, "
                              "%sattention.head_count_kv = %d, head size %d, %d tokens", a.c_str(), n_embd, a.c_str(),
                              n_ff, a.c_str(), n_head, a.c_str(), n_head_kv, head_dim, n_vocab);
    if (n_expert > 0)
        keys += strfmt(", %sexpert_count = %d, expert width %d", a.c_str(), n_expert, n_ff_exp);
    if (n_ff_shexp > 0) keys += strfmt(", shared expert width %d", n_ff_shexp);
    return keys;
}

Config Config::from_gguf(const GGUFFile & f) {
    Config c;
    c.arch_name = f.get_str("general.architecture");
    const ArchTraits * t = std::find_if(std::begin(kArchs), std::end(kArchs),
                                        [&](const ArchTraits & a) { return c.arch_name == a.name; });
    if (t == std::end(kArchs))
        throw GGUFError(strfmt("%s: metadata 'general.architecture' = '%s' is not supported (supported: %s)",
                               f.path().c_str(), c.arch_name.c_str(), supported_archs().c_str()));
    c.arch = t->arch;
    c.traits = t->traits;
    c.rope_neox = c.has(kNeox);
    c.has_qkv_bias = c.has(kQkvBias);
    c.has_qk_norm = c.has(kQkNorm);
    c.fused_qkv = c.has(kFusedQkv);
    const std::string a = c.arch_name + ".";
    c.n_layer = get_dim(f, a + "block_count", 1, 1024);
    if (c.has(kNextN)) c.n_layer -= nextn_layers(f, c);  // (MTP: not run)
    c.n_embd = get_dim(f, a + "embedding_length", 1, 1 << 17);
    const bool experts = c.has(kExperts);
    if (c.arch == Arch::Gemma4) {  // (head counts and widths may be per layer)
        read_gemma4_shapes(f, c);
    } else if (c.arch == Arch::Deci) {
        c.read_deci(f);
    } else {
        c.n_head = get_dim(f, a + "attention.head_count", 1, 4096);
        c.n_head_kv = read_head_count_kv(f, c);  // (lfm2: per layer, 0 at its convolution layers)
        if (c.n_head_kv < 1 || c.n_head % c.n_head_kv != 0)
            throw GGUFError(strfmt("%s: metadata '%sattention.head_count_kv' = %d does not divide "
                                   "'%sattention.head_count' = %d", f.path().c_str(), a.c_str(), c.n_head_kv,
                                   a.c_str(), c.n_head));
        const std::string ff_key = a + "feed_forward_length";
        c.n_ff = (c.has(kFfOptional) && !f.find(ff_key)) || c.nemotron() ? 0  // (nemotron: read_nemotron_h's)
                                                                          : get_dim(f, ff_key, 1, 1 << 20);
    }
    if (experts || f.find(a + "expert_count")) c.n_expert = get_dim(f, a + "expert_count", experts ? 1 : 0, 4096);
    if (c.n_expert > 0) {
        c.n_expert_used = get_dim(f, a + "expert_used_count", 1, c.n_expert);
        c.n_ff_exp = f.find(a + "expert_feed_forward_length") || c.n_ff == 0
                         ? get_dim(f, a + "expert_feed_forward_length", 1, 1 << 20)
                         : c.n_ff;
        c.expert_weights_norm = f.get_bool(a + "expert_weights_norm", true);
        if (c.arch == Arch::Qwen2Moe || c.arch == Arch::Olmoe || c.arch == Arch::GraniteMoe ||
            c.arch == Arch::GraniteHybrid)
            read_moe_variant(f, c);
    }
    c.n_ctx_train = int(f.get_int(a + "context_length", 4096));
    c.n_ctx_orig = f.find(a + "rope.scaling.original_context_length")
                       ? get_dim(f, a + "rope.scaling.original_context_length", 1, 1 << 24)
                       : c.n_ctx_train;
    c.rope_attn_factor = float(f.get_float(a + "rope.scaling.attn_factor", 1.0));
    if (!(c.rope_attn_factor > 0) || c.rope_attn_factor > 100)
        throw GGUFError(strfmt("%s: bad %srope.scaling.attn_factor", f.path().c_str(), a.c_str()));
    if (f.find(a + "attention.sliding_window")) c.n_swa = get_dim(f, a + "attention.sliding_window", 0, 1 << 30);
    c.encoder = c.arch == Arch::Bert || c.arch == Arch::NomicBert || c.arch == Arch::GemmaEmbedding;
    c.learned_pos = c.arch == Arch::Bert;
    // LayerNorm epsilon for bert, nomic-bert and cohere2; RMSNorm's for the rest (required by
    // gemma-embedding)
    const bool ln_encoder = c.encoder && c.arch != Arch::GemmaEmbedding;
    const bool layer_norm =
        ln_encoder || c.arch == Arch::Cohere2 || c.arch == Arch::Starcoder2 || c.arch == Arch::CommandR;
    const std::string eps_key = a + (layer_norm ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon");
    c.rms_eps = float(c.encoder || layer_norm ? f.get_float(eps_key) : f.get_float(eps_key, 1e-5));
    if (!(c.rms_eps > 0) || c.rms_eps > 1)
        throw GGUFError(strfmt("%s: bad %s", f.path().c_str(), eps_key.c_str()));
    // (gemma-embedding is non-causal whatever the key says, as in llama.cpp)
    if (ln_encoder && f.get_bool(a + "attention.causal", true))
        throw GGUFError(strfmt("%s: metadata '%sattention.causal' is true or absent: splitllm runs %s models as "
                               "encoders (non-causal) only", f.path().c_str(), a.c_str(), c.arch_name.c_str()));
    const int64_t key_len = f.get_int(a + "attention.key_length", c.n_embd / c.n_head);
    const int64_t val_len = f.get_int(a + "attention.value_length", key_len);
    const bool narrow_v = c.arch == Arch::DeepSeek2;  // (values narrower than keys)
    if ((key_len != val_len && !(narrow_v && val_len < key_len)) || val_len < 2 || key_len > 1024 || key_len % 2 != 0)
        throw GGUFError(strfmt("%s: unsupported head size (key_length %lld, value_length %lld)",
                               f.path().c_str(), (long long)key_len, (long long)val_len));
    c.head_dim = int(key_len);
    c.head_dim_v = int(val_len);
    c.n_rot = int(f.get_int(a + "rope.dimension_count", c.head_dim));
    if (c.n_rot < 2 || c.n_rot > c.head_dim || c.n_rot % 2 != 0)
        throw GGUFError(strfmt("%s: rope.dimension_count = %d must be even and at most the head size %d",
                               f.path().c_str(), c.n_rot, c.head_dim));
    c.rope_base = float(f.get_float(a + "rope.freq_base", 10000.0));
    if (!(c.rope_base > 1))
        throw GGUFError(strfmt("%s: bad %srope.freq_base", f.path().c_str(), a.c_str()));
    // llama.cpp: the type "linear" when absent; the factor from rope.scaling.factor (or the old
    // rope.scale_linear); "none" keeps the factor but never applies it.
    const std::string scaling = f.get_str(a + "rope.scaling.type", "linear");
    if (scaling == "none")
        c.rope_scaling_train = kRopeNone;
    else if (scaling == "linear")
        c.rope_scaling_train = kRopeLinear;
    else if (scaling == "yarn")
        c.rope_scaling_train = kRopeYarn;
    else if (scaling == "longrope")
        c.rope_scaling_train = kRopeLongRope;
    else
        throw GGUFError(strfmt("%s: rope scaling '%s' is not supported (none, linear, yarn, longrope; llama3 "
                               "scaling comes as the rope_freqs tensor)", f.path().c_str(), scaling.c_str()));
    const std::string factor_key = f.find(a + "rope.scaling.factor") ? a + "rope.scaling.factor" : a + "rope.scale_linear";
    if (f.find(factor_key)) {
        const double factor = f.get_float(factor_key);
        if (!(factor >= 0) || !std::isfinite(factor))
            throw GGUFError(strfmt("%s: bad %s", f.path().c_str(), factor_key.c_str()));
        if (factor > 0) c.rope_freq_scale = float(1.0 / factor);
    }
    if (c.arch == Arch::Gemma || c.arch == Arch::Gemma2 || c.arch == Arch::Gemma3 || c.arch == Arch::GemmaEmbedding)
        read_gemma(f, c);
    if (c.arch == Arch::SmolLM3)  // llama.cpp's n_no_rope_layer_step: layer l skips it if (l + 1) % 4 == 0
        for (int l = 0; l < c.n_layer; ++l) c.nope_layers.push_back((l + 1) % 4 == 0);
    if (c.arch == Arch::Granite || c.arch == Arch::GraniteMoe || c.arch == Arch::GraniteHybrid) read_granite(f, c);
    if (c.arch == Arch::GraniteHybrid) c.read_mamba2(f);
    if (c.nemotron()) c.read_nemotron_h(f);
    if (c.arch == Arch::FalconH1) c.read_falcon_h1(f);
    if (c.arch == Arch::Deci) c.check_deci(f);
    if (c.arch == Arch::Olmoe) c.qk_norm_full = true;  // (olmo2's below)
    if (c.arch == Arch::Gemma4) read_gemma4(f, c);
    if (c.arch == Arch::GptOss) read_gpt_oss(f, c);
    c.read_dense(f);
    c.read_dense_variant(f);
    c.read_llamalike(f);
    c.read_moe_variants(f);
    if (c.arch == Arch::DeepSeek2) read_deepseek2(f, c);
    if (c.arch == Arch::Glm4Moe) read_glm4moe(f, c);
    if (c.arch == Arch::Ernie4_5Moe) read_ernie4_5_moe(f, c);
    if (c.arch == Arch::Qwen3VLMoe) read_qwen3vlmoe(f, c);
    if (c.arch == Arch::MinimaxM2) read_minimax_m2(f, c);
    if (c.arch == Arch::PhiMoe) read_phimoe(f, c);
    if (c.arch == Arch::Lfm2 || c.arch == Arch::Lfm2Moe) read_lfm2(f, c);
    if (c.arch == Arch::Llama4) read_llama4(f, c);
    if (c.arch == Arch::Qwen35 || c.arch == Arch::Qwen35Moe || c.arch == Arch::Qwen3Next) read_qwen35(f, c);
    if (c.arch == Arch::Olmo2) {  // post-norms only; q/k norms over whole projections
        if (c.n_swa > 0)  // (0: no window, as llama.cpp reads it)
            throw GGUFError(strfmt("%s: metadata '%sattention.sliding_window': OLMo 3's sliding-window layers are "
                                   "not supported", f.path().c_str(), a.c_str()));
        c.pre_norms = false;
        c.post_norms = true;
        c.qk_norm_full = true;
    }
    if (c.arch == Arch::Bitnet) {  // llama.cpp's: attn_sub_norm (n_embd) is applied to the attention output
        c.sub_norms = true;
        if (c.q_dim() != c.n_embd)
            throw GGUFError(strfmt("%s: bitnet needs head_count x key_length = embedding_length (%d x %d != %d)",
                                   f.path().c_str(), c.n_head, c.head_dim, c.n_embd));
    }
    c.rope_base_train = c.rope_base;
    c.rope_freq_scale_train = c.rope_freq_scale;
    c.apply_rope(RopeParams{});
    // Vocabulary size: the token list is authoritative; vocab_size is optional.
    if (const GGUFValue * toks = f.find("tokenizer.ggml.tokens"); toks && toks->type == GGUFType::ARRAY)
        c.n_vocab = int(toks->arr.size());
    else
        c.n_vocab = int(f.get_int(a + "vocab_size", 0));
    return c;
}

}  // namespace sl
