// The small interface every compute device implements (the CPU with its SIMD kernels, the GPU
// with CUDA): memory, copies, and the operations of the forward pass. The forward pass is
// written once against it; placement decides which backend runs each layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "quant/qtype.h"

namespace sl {

struct Config;

// A weight matrix (rows, K) in its GGUF type, resident in a backend's memory; optional F32 bias.
struct WeightRef {
    QType type = QType::F32;
    int64_t rows = 0;
    int64_t K = 0;
    const void * data = nullptr;
    const float * bias = nullptr;
    int lora = -1;  // the model's LoRA updates of this matrix (an index into them), or -1
    size_t nbytes() const;
    size_t bytes_with_bias() const { return nbytes() + (bias ? sizeof(float) * size_t(rows) : 0); }
};

// KV cache geometry of one layer. Storage is head-major:
// K: (n_slots, n_head_kv, slot_ctx, head_dim) in type_k, V: (n_slots, n_head_kv, slot_ctx, head_dim_v)
// in type_v, one row per cell and head. Position p of a sequence is at cell p, or in a ring (the
// cache of a sliding-window layer, which needs only the last positions) at cell p % slot_ctx.
// With v_in_k (multi-head latent attention: deepseek2) there is no V cache: a cell's value is the
// last head_dim_v values of its key row.
struct KVLayout {
    QType type_k = QType::F16;
    QType type_v = QType::F16;
    int n_slots = 1;
    int slot_ctx = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int head_dim_v = 0;   // (0: head_dim)
    bool v_in_k = false;
    bool ring = false;

    int v_dim() const { return head_dim_v > 0 ? head_dim_v : head_dim; }

    int cell(int pos) const { return ring ? pos % slot_ctx : pos; }
    bool holds(int pos) const { return pos >= 0 && (ring || pos < slot_ctx); }  // a position it can store

    size_t k_row() const;  // bytes of one head's key at one cell
    size_t v_row() const;  // (0 with v_in_k)
    size_t v_offset() const;  // bytes from a key row's start to its value (v_in_k)
    size_t k_bytes() const { return k_row() * size_t(slot_ctx) * n_head_kv * n_slots; }
    size_t v_bytes() const { return v_row() * size_t(slot_ctx) * n_head_kv * n_slots; }
};

// The gated feed-forward's activation: SwiGLU's silu, or GeGLU's tanh-approximated gelu (gemma).
enum class Glu { Silu, Gelu, SwigluOai, Relu };  // (Relu: ReGLU, smallthinker's experts)

// out = f(g) * u for n values (out may alias g or u).
void glu_mul(Glu f, const float * g, const float * u, float * out, size_t n);

// How one layer's attention scores its keys.
struct AttnParams {
    float scale = 0.0f;    // score = scale * q . k (0: 1 / sqrt(head_dim))
    float softcap = 0.0f;  // score -> softcap * tanh(score / softcap) (gemma2); 0: none
    int window = 0;        // sliding window: a query at position p sees cells (p - window, p]; 0: all of [0, p]
    // gpt-oss: one learned logit per query head taking part in its softmax (a sink for attention
    // that no cell's value receives); null: none.
    const float * sinks = nullptr;
    // Query heads of the layer (0: the backend's); when set, the head size is the cache's
    // (KVLayout::head_dim): layers of other shapes (gemma4). CPU backend only.
    int n_head = 0;
    // llama4's chunked layers: a query at position p sees cells [p - p % window, p]. CPU backend only.
    bool chunked = false;
};

// Throws unless the GPU backends' attention takes these parameters (no per-layer head counts or
// chunked windows; values as wide as keys, in their own cache). FAKEGPU0 checks it too.
void check_gpu_attention(const KVLayout & kv, const AttnParams & p);

// Whether the GPU backends' glu / act_mul take this activation (and projections): not the clamped
// SwiGLU (gpt-oss), ReGLU, or projection biases. The CUDA backend and FAKEGPU0 refuse the rest; op
// offload keeps it on the CPU.
bool gpu_act_supported(Glu f);
bool gpu_glu_supported(Glu f, const WeightRef & gate, const WeightRef & up);

// Throws unless a ring cache (kv.ring) can take a batch: a window, and per slot the batch's
// positions and the window before the first fit the ring (no cell read is overwritten).
void check_ring_batch(const KVLayout & kv, const AttnParams & p, const int32_t * pos, const int32_t * slot,
                      int n_tok);

// Host-side description of the tokens of a batch, handed to each backend before the layers run.
struct BatchInfo {
    int n_tok = 0;
    const int32_t * pos = nullptr;   // (n_tok) position of each token in its sequence
    const int32_t * slot = nullptr;  // (n_tok) KV slot (sequence) of each token
};

// The Hadamard block of a row of n values: the largest power of two dividing n.
inline int hadamard_block(int n) { return n & -n; }

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;
    virtual bool is_cpu() const = 0;

    // ---- memory ----
    virtual void * alloc(size_t bytes) = 0;
    virtual void free(void * p) = 0;
    virtual void upload(void * dst, const void * src, size_t n) = 0;    // host -> backend
    virtual void download(void * dst, const void * src, size_t n) = 0;  // backend -> host
    virtual void memset0(void * dst, size_t n) = 0;
    virtual void copy(void * dst, const void * src, size_t n) = 0;     // within the backend
    virtual void synchronize() = 0;

    // ---- forward-pass operations; every pointer is in this backend's memory ----
    virtual void begin_batch(const BatchInfo & b) = 0;

    // y = x * w / rms(x) per row: x, y (n_tok, n); y may be x
    virtual void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) = 0;

    // LayerNorm without a bias (cohere2): y = (x - mean(x)) * w / sqrt(var(x) + eps) per row
    virtual void layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) = 0;

    // y_i (n_tok, w_i.rows) = x (n_tok, K) . w_i^T + bias_i, for the n_w matrices sharing the input;
    // with accumulate the result is added to y_i instead.
    virtual void matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                        bool accumulate) = 0;

    // act (n_tok, n_ff) = f(x . gate^T) * (x . up^T), f = silu or gelu (tanh approximation)
    virtual void glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act,
                     int n_tok) = 0;

    // y[i] += scale * x[i] for i < n; y may be x (then y *= 1 + scale: bitnet's matmul scales)
    virtual void add(float * y, const float * x, int64_t n, float scale) = 0;

    // g[i] = f(g[i]) * u[i] for i < n (glu's elementwise step, for gate and up computed apart)
    virtual void act_mul(Glu f, float * g, const float * u, int64_t n) = 0;

    // Rotary embedding in place on q (n_tok, n_head * head_dim) and k (n_tok, n_head_kv * head_dim)
    // at the positions of the current batch, with the frequencies of the global layers (swa
    // false) or of the sliding-window layers (Config::rope_base_swa, rope_freq_scale_swa); then
    // the queries times the attention temperature of their position (Config::attn_temp_scale).
    virtual void rope(float * q, float * k, int n_tok, bool swa) = 0;

    // Stores k (n_tok, n_head_kv * head_dim), v (n_tok, n_head_kv * v_dim) into the layer's cache at
    // each token's slot and position (v ignored with kv.v_in_k), then out (n_tok, n_head * v_dim) =
    // causal attention of q (n_tok, n_head * head_dim) over the slot's cells (within p.window of
    // each query's position, if set). Only the CPU backend takes v_dim < head_dim.
    virtual void attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                           const float * v, float * out, int n_tok, const AttnParams & p) = 0;

    // Orthonormal Hadamard rotation in place: every row of x (n_rows, row) becomes, block by block
    // of n = hadamard_block(row) values, the block times H_n / sqrt(n) (H_n Sylvester's Hadamard
    // matrix). Symmetric and its own inverse. Rotating queries, keys and values before a
    // quantized KV cache stores them spreads outlier channels over the block (q . k is
    // unchanged); the attention output is rotated back with the same call.
    virtual void hadamard(float * x, int64_t n_rows, int row) = 0;

    // out[i] = embedding row tokens[i] converted to f32 (table (n_vocab, n) in its GGUF type).
    virtual void get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) = 0;

    // Prepares the rotary tables of both layer kinds (called once at load; freq_factors apply to
    // the global layers).
    virtual void init_rope(const Config & c, const float * freq_factors) = 0;
};

}  // namespace sl
