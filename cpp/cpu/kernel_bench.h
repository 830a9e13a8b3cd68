// Timing loops for the CPU kernels (bench/bench_kernels.py calls them through the binding, so
// that no Python overhead enters the figures).
#pragma once

#include <cstdint>

#include "cpu/matmul.h"

namespace sl::cpu {

struct GemmTiming {
    double seconds;        // best time of one gemm over all rows (activation conversion excluded)
    double quant_seconds;  // best time of quantize_acts for the n_tok rows
};

// gemm of a (n_rows, K) weight matrix W of type wt with n_tok random tokens, rows split evenly
// over n_threads threads. `copies` > 1 cycles through that many copies of W, so that a matrix
// smaller than the caches is read from memory as in a model's forward pass. Each measurement
// repeats until min_seconds have passed; the best of `reps` measurements is returned.
// Single-threaded runs are timed on the thread's CPU clock, others on the wall clock.
GemmTiming time_gemm(Isa isa, QType wt, const void * W, int64_t n_rows, int64_t K, int64_t n_tok, int n_threads,
                     int copies, double min_seconds, int reps);

// Decode attention over one KV head: attn_scores then attn_values for n_q query rows against
// n_kv cached rows of type kt (keys and values), single-threaded. Best seconds per call.
double time_attention(Isa isa, QType kt, int64_t n_q, int64_t n_kv, int64_t head_dim, double min_seconds, int reps);

}  // namespace sl::cpu
