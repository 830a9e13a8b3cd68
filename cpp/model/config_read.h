// Metadata readers shared by config.cpp, config_dense.cpp and config_routed.cpp; each throws GGUFError naming the
// file and the key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sl {

class GGUFFile;
struct Config;

// An integer key within [lo, hi].
int get_dim(const GGUFFile & f, const std::string & key, int64_t lo, int64_t hi);
// One value per layer: an array of n_layer integers in [lo, hi], or one integer for every layer
// (absent: fallback, or an error where fallback < 0).
std::vector<int> layer_dims(const GGUFFile & f, const std::string & key, int n_layer, int64_t lo, int64_t hi,
                            int fallback = -1);
// A positive (or with zero_ok, non-negative) float key, or the fallback when absent.
float get_positive(const GGUFFile & f, const std::string & key, double fallback, bool zero_ok = false);
// Which layers use the sliding window (llama.cpp's load_swa_pattern): the key as one flag per
// layer, or as a period n (layer l slides unless l % n == n - 1; 0: every layer), else `period`.
std::vector<uint8_t> swa_pattern(const GGUFFile & f, const std::string & key, int n_layer, int period);
// The flags, or none at all when no layer slides.
std::vector<uint8_t> any_swa(std::vector<uint8_t> swa);
// qwen35's delta-net layers, their shapes and its rotation (model/qwen35.cpp).
void read_qwen35(const GGUFFile & f, Config & c);

// config_routed.cpp. The sigmoid-routed experts' settings (deepseek2, glm4moe): shared experts,
// weight normalization and scale, the gating function (absent: sigmoid_default), expert groups.
void read_expert_router(const GGUFFile & f, Config & c, bool sigmoid_default);
// The gating function alone (expert_gating_func; absent: sigmoid_default).
void read_gating_func(const GGUFFile & f, Config & c, bool sigmoid_default);
// The multi-token-prediction layers (nextn_predict_layers) counted in block_count, which llama.cpp
// loads but never runs: 0 when absent.
int nextn_layers(const GGUFFile & f, const Config & c);
// glm4moe's dense lead, expert widths and router (llama.cpp's llama_model_glm4_moe).
void read_glm4moe(const GGUFFile & f, Config & c);
// ernie4_5-moe's dense lead, expert widths, shared expert width and router.
void read_ernie4_5_moe(const GGUFFile & f, Config & c);
// qwen3vlmoe's (text only): qwen3moe's blocks with M-RoPE sections, the chosen experts' weights
// always renormalized.
void read_qwen3vlmoe(const GGUFFile & f, Config & c);
// minimax-m2's router and q/k norms (config_minimax.cpp).
void read_minimax_m2(const GGUFFile & f, Config & c);
// phimoe's norm biases and router (config_minimax.cpp).
void read_phimoe(const GGUFFile & f, Config & c);

// Llama 4's settings (model/llama4.cpp).
void read_llama4(const GGUFFile & f, Config & c);

}  // namespace sl
