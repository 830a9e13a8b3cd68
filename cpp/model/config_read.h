// Metadata readers shared by config.cpp and config_dense.cpp; each throws GGUFError naming the
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
// A positive (or with zero_ok, non-negative) float key, or the fallback when absent.
float get_positive(const GGUFFile & f, const std::string & key, double fallback, bool zero_ok = false);
// Which layers use the sliding window (llama.cpp's load_swa_pattern): the key as one flag per
// layer, or as a period n (layer l slides unless l % n == n - 1; 0: every layer), else `period`.
std::vector<uint8_t> swa_pattern(const GGUFFile & f, const std::string & key, int n_layer, int period);
// The flags, or none at all when no layer slides.
std::vector<uint8_t> any_swa(std::vector<uint8_t> swa);
// The router's settings (expert_weights_norm / _scale, expert_gating_func, the expert groups), as
// llama.cpp's build_moe_ffn takes them; with gating_required the gating key must be 1 or 2.
void read_expert_router(const GGUFFile & f, Config & c, bool gating_required);

}  // namespace sl
