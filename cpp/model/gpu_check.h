// Test support for the GPU backend (bound in cpp/python/bind_cuda.cpp):
//   * backend operations run one at a time on a named device with host inputs and outputs, so
//     tests can hold the CUDA backend (or FAKEGPU0) against the CPU backend op by op;
//   * the CUDA block readers (cpp/cuda/blocks.h) compiled for the host, so their decoding of
//     every weight type is checked against the reference dequantizers on machines without a GPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/backend.h"

namespace sl::gpucheck {

// Where an operation runs: "cpu" (CpuBackend) or "gpu" (the device of gpu_info()).
// vec_tokens / attn_vec_tokens pick the GPU kernels (mat-vec up to that many tokens).
struct Device {
    std::string name = "cpu";
    int n_threads = 1;
    int vec_tokens = 8;
    int attn_vec_tokens = 8;
    bool graphs = false;
};

// y (n_tok, n) = rmsnorm(x) * w, or with layer the bias-free LayerNorm (Backend::layer_norm).
std::vector<float> rms_norm(const Device & d, const float * x, const float * w, int n_tok, int n, float eps,
                            bool layer = false);

// y (n_tok, rows) = x (n_tok, K) . W^T + bias (+ y0 when given).
std::vector<float> matmul(const Device & d, QType type, const uint8_t * W, int64_t rows, int64_t K,
                          const float * bias, const float * x, int n_tok, const float * y0);

// act (n_tok, rows) = f(x . gate^T) * (x . up^T), f = silu or gelu.
std::vector<float> glu(const Device & d, Glu f, QType type_gate, const uint8_t * gate, QType type_up,
                       const uint8_t * up, int64_t rows, int64_t K, const float * x, int n_tok);

// y + x (n values each), by Backend::add.
std::vector<float> add(const Device & d, const float * y, const float * x, int64_t n, float scale);

struct RopeSpec {
    int n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
    float base = 10000.0f, freq_scale = 1.0f;
    bool neox = false;
    const float * freq_factors = nullptr;  // (n_rot / 2) or null
    // With swa, the rotation of a sliding-window layer of a model whose global layers use the
    // values above: base_swa and freq_scale_swa, no factors.
    bool swa = false;
    float base_swa = 10000.0f, freq_scale_swa = 1.0f;
};

// Rotates q (n_tok, n_head * head_dim) and k (n_tok, n_head_kv * head_dim) in place.
void rope(const Device & d, const RopeSpec & r, const int32_t * pos, int n_tok, float * q, float * k);

// Stores k, v into the caches (updated in place, raw bytes of kv's layout) and returns the
// attention output (n_tok, n_head * head_dim).
std::vector<float> attention(const Device & d, const KVLayout & kv, int n_head, const int32_t * pos,
                             const int32_t * slot, int n_tok, const float * q, const float * k, const float * v,
                             uint8_t * k_cache, uint8_t * v_cache, const AttnParams & p);

// x (n_rows, row) rotated in place by Backend::hadamard.
void hadamard(const Device & d, float * x, int64_t n_rows, int row);

// out (n_tok, K) = rows tokens[i] of the table as floats.
std::vector<float> get_rows(const Device & d, QType type, const uint8_t * table, int64_t rows, int64_t K,
                            const int32_t * tokens, int n_tok);

// ---- the CUDA block readers on the host ----

// Rows of type t decoded with Blk<T>::group / float_value: out (n_rows, K).
void blocks_dequantize(QType t, const uint8_t * rows, int64_t n_rows, int64_t K, float * out);

// The mat-vec kernels' arithmetic on the host: x quantized to the kernels' int8 layout (as the
// GPU quantizer does), then per group of 16 dp4a sums and the affine terms: y (n_tok, n_rows).
void blocks_matvec(QType t, const uint8_t * W, int64_t n_rows, int64_t K, const float * x, int n_tok, float * y);

}  // namespace sl::gpucheck
