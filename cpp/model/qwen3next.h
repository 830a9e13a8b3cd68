// Qwen3-Next (llama.cpp's qwen3next, transformers' Qwen3NextForCausalLM): qwen35's layers (qwen35.cpp)
// with its delta nets' input projections laid out per key head (Hugging Face's order, kept by the
// converter): q, k, v and the gate z in one matrix or in attn_qkv and attn_gate, beta and alpha in one.
#pragma once

#include <string>

#include "model/model.h"

namespace sl {

class ThreadPool;

// A delta net's input projections: attn_qkv (q heads, k heads, v heads grouped by key head) and
// attn_gate, or the older files' ssm_in (per key head: q, k, its v heads, their z) in dn_qkv with
// dn_z empty; ssm_ba (per key head: its value heads' beta, then their alpha) in dn_beta.
void load_qwen3next_in(const GGUFFile & f, const Config & c, const std::string & b, LayerWeights & L);

// Floats per token qwen3next_in needs beside qwen35's: the fused projections' outputs.
size_t qwen3next_raw_floats(const Config & c);

// qkv (n, dn_conv_dim), z (n, dn_v_dim), beta and alpha (n, dn_v_heads) from h (n, n_embd), through
// raw (n, qwen3next_raw_floats).
void qwen3next_in(Backend * be, ThreadPool & pool, const Config & c, const LayerWeights & L, const float * h,
                  int n, float * qkv, float * z, float * beta, float * alpha, float * raw);

}  // namespace sl
