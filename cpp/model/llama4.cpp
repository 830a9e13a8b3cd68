// Llama 4 (Scout, Maverick; text only), llama.cpp's llama_model_llama4 (src/models/llama4.cpp) and
// transformers' Llama4TextModel: llama's blocks where
// - every interleave_moe_layer_step-th block has experts: a router's top expert_used_count logits
//   chosen, sigmoid(logit) scaling each chosen expert's input (not its output), and a shared expert
//   of the experts' width beside them; the other blocks a dense feed-forward (feed_forward_length);
// - three layers in four rotate (interleaved pairs, llama3's rope_freqs) and attend within chunks of
//   8192 positions, their rotated query and key heads RMS-normed without a weight (the 16-expert
//   Scout; not the 128-expert Maverick, as llama.cpp decides by the expert count);
// - every fourth layer (NoPE) neither rotates nor chunks: it attends to the whole context, its
//   queries times the temperature 1 + 0.1 ln(floor((pos + 1) / 8192) + 1).
// The chunk, the temperature's floor and scale are llama.cpp's constants (its GGUF files carry
// none); attention.sliding_window = 0 (MobileLLM-style files) turns chunks and NoPE layers off.
#include <cmath>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/config_read.h"
#include "model/cpu_backend.h"
#include "model/model.h"

namespace sl {

namespace {

constexpr int kChunk = 8192;       // llama.cpp's n_swa for llama4 (transformers' attention_chunk_size)
constexpr int kTempFloor = 8192;   // floor_scale
constexpr float kTempScale = 0.1f; // attn_scale
constexpr int kNoRopeStep = 4;     // llama.cpp's n_no_rope_layer_step (no_rope_layer_interval)

}  // namespace

void read_llama4(const GGUFFile & f, Config & c) {
    const std::string a = c.arch_name + ".";
    if (!f.find(a + "expert_feed_forward_length"))
        throw GGUFError(strfmt("%s: metadata '%sexpert_feed_forward_length' is missing", f.path().c_str(), a.c_str()));
    c.moe_layer_step = get_dim(f, a + "interleave_moe_layer_step", 0, c.n_layer);
    if (c.n_rot != c.head_dim)  // (llama.cpp asserts it)
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_count' = %d must equal the head size %d in llama4",
                               f.path().c_str(), a.c_str(), c.n_rot, c.head_dim));
    // The router: the top k logits, their sigmoids the weights as they are (llama.cpp's norm_w false).
    c.moe_sigmoid = true;
    c.expert_weights_norm = false;
    c.moe_weight_input = true;
    c.n_ff_shexp = c.n_ff_exp;
    c.qk_l2_norm = c.n_expert != 128;
    const std::string window = a + "attention.sliding_window";
    if (f.find(window) && f.get_int(window) == 0) {  // every layer rotates and sees the whole context
        c.n_swa = 0;
        return;
    }
    c.n_swa = kChunk;  // (whatever the key says, as llama.cpp)
    c.swa_chunked = true;
    c.swa_layers = any_swa(swa_pattern(f, a + "attention.sliding_window_pattern", c.n_layer, 4));
    if (c.swa_layers.empty()) c.n_swa = 0;
    for (int l = 0; l < c.n_layer; ++l) c.nope_layers.push_back((l + 1) % kNoRopeStep == 0);
    c.nope_temp_scale = kTempScale;
    c.attn_temp_floor = kTempFloor;
    // The chunked layers rotate as the others (rope_freqs included).
    if (f.find(a + "rope.freq_base_swa") && float(f.get_float(a + "rope.freq_base_swa")) != c.rope_base)
        throw GGUFError(strfmt("%s: metadata '%srope.freq_base_swa' other than rope.freq_base is not supported",
                               f.path().c_str(), a.c_str()));
    c.swa_rope_global = true;
}

void Model::llama4_qk(Backend * be, int l, Scratch & s, int n, const int32_t * pos) {
    const Config & c = cfg_;
    SL_CHECK(be->is_cpu(), "internal: llama4 blocks run on the CPU");
    if (c.rotates(l)) {  // Llama4TextL2Norm of each rotated query and key head
        if (c.qk_l2_norm) {
            be->rms_norm(s.q, ones_.data(), s.q, n * c.n_head, c.head_dim, c.rms_eps);
            be->rms_norm(s.k, ones_.data(), s.k, n * c.n_head_kv, c.head_dim, c.rms_eps);
        }
        return;
    }
    if (c.nope_temp_scale == 0.0f) return;
    const int64_t q_dim = c.q_dim();
    for (int t = 0; t < n; ++t) {  // the NoPE layers' attention temperature
        const float m = attn_temperature(pos[t] + 1, c.nope_temp_scale, c.attn_temp_floor);
        for (float * x = s.q + t * q_dim; x < s.q + (t + 1) * q_dim; ++x) *x *= m;
    }
}

}  // namespace sl
