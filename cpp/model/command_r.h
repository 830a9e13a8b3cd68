// command-r, exaone and internlm2 (model/command_r.cpp): what their blocks read and run beyond the
// llama-like layers of model.cpp and forward.cpp.
#pragma once

#include <string>

#include "gguf/gguf.h"
#include "model/config.h"
#include "model/model.h"

namespace sl {

class ThreadPool;

// The output layer and rotary factors as llama.cpp's graphs read them: command-r ties its output to
// token_embd.weight, internlm2 requires output.weight; neither reads rope_freqs.weight (exaone may).
void check_llamalike_tensors(const GGUFFile & f, const Config & c);
// command-r's per-head query and key LayerNorm weights of a block (blk.N.): required from 64 layers
// on (Command R+), refused in a shallower model, as llama.cpp's loader has it.
void load_command_r_qk_norms(const GGUFFile & f, const Config & c, const std::string & b, LayerWeights & L);
// q (n, n_head, head_dim) and k (n, n_head_kv, head_dim) in place: each head LayerNormed (mean
// removed, no bias) and times its own weight row (attn_q_norm / attn_k_norm).
void command_r_qk_norm(ThreadPool & pool, const Config & c, const LayerWeights & L, float * q, float * k, int n);

}  // namespace sl
