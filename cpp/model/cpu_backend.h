// The CPU backend: SIMD kernels from cpp/cpu over weights read straight from the mmapped file,
// work split over a thread pool that lives as long as the model.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "common/threadpool.h"
#include "model/backend.h"

namespace sl {

struct CpuBackendOptions {
    int n_threads = 1;
    int n_batch = 512;        // most tokens in one forward pass
    int max_k = 0;            // widest matmul input (max of n_embd, q_dim, n_ff)
    int max_rows = 0;         // most rows of one matrix (n_vocab usually)
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int max_slot_ctx = 0;     // longest sequence the attention scratch must cover
    int n_rot = 0;            // rotated dimensions per head (rotary tables)
    bool rope_swa = false;    // a second set of rotary tables, for sliding-window layers
    int n_rot_swa = 0;        // their rotated dimensions (0: n_rot)
    // Mixture of experts (moe_ff > 0): expert width and model width, for moe_small's buffers.
    int moe_ff = 0;
    int moe_embd = 0;
    // Converted-activation buffers: act_slot_row[j] is the widest row (at max_k) that a matmul's
    // j-th distinct activation format needs; 0 for slots no matmul uses.
    size_t act_slot_row[3] = {0, 0, 0};

    // Sizes every activation slot for any weight type whose block divides max_k (test backends
    // that run arbitrary matmuls).
    void allow_any_weights();
};

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(const CpuBackendOptions & opt);
    ~CpuBackend() override;

    std::string name() const override { return "CPU"; }
    bool is_cpu() const override { return true; }

    void * alloc(size_t bytes) override;
    void free(void * p) override;
    void upload(void * dst, const void * src, size_t n) override;
    void download(void * dst, const void * src, size_t n) override;
    void memset0(void * dst, size_t n) override;
    void copy(void * dst, const void * src, size_t n) override;
    void synchronize() override {}

    void begin_batch(const BatchInfo & b) override;
    void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) override;
    void layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) override;
    void matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                bool accumulate) override;
    void glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act, int n_tok) override;
    void add(float * y, const float * x, int64_t n, float scale) override;
    void act_mul(Glu f, float * g, const float * u, int64_t n) override;
    void rope(float * q, float * k, int n_tok, bool swa) override;
    // With p.n_head set, k and v may be null: the queries attend to what the cache holds (a layer
    // reading another's cache) and nothing is stored.
    void attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                   const float * v, float * out, int n_tok, const AttnParams & p) override;
    void hadamard(float * x, int64_t n_rows, int row) override;
    void get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) override;
    void init_rope(const Config & c, const float * freq_factors) override;

    // A mixture-of-experts feed-forward for a few tokens in one pass of the thread pool:
    //   y[t] += sum_j weight[t k + j] * down_e(f(gate_e x_t) * up_e x_t),  e = pick[t k + j],
    // expert e being rows e * rows / n_expert.. of each stacked matrix (and of its bias, if the
    // matrix has one: added to its products; fused gate/up experts: gate_exps the whole tensor,
    // up_exps its rows from the first expert's up rows on); a token's terms are added
    // in the order of its picks. The arithmetic of every term is that of the same expert's
    // swiglu and matmul over a few tokens, so the result does not depend on the batch. Returns
    // false, having done nothing, for more than kMoeEntries (token, expert) pairs or matrices
    // whose activation formats differ (the caller runs the experts one by one).
    static constexpr int kMoeEntries = 32;
    bool moe_small(Glu f, const WeightRef & gate_exps, const WeightRef & up_exps, const WeightRef & down_exps,
                   int n_expert, const float * x, int n_tok, const int32_t * pick, const float * weight, int k,
                   float * y);

    // rope() for a layer of its own shape: n_q, n_kv heads of head_dim values (k may be null).
    void rope_heads(float * q, float * k, int n_tok, bool swa, int n_q, int n_kv, int head_dim);

    ThreadPool & pool() { return pool_; }

    // Bytes of scratch a backend with these options holds: per-thread buffers, the rotary tables,
    // the batch bookkeeping and the activation buffers. All of it is allocated at construction.
    static size_t scratch_bytes(const CpuBackendOptions & opt);
    // The same, for this backend as it is now.
    size_t scratch_bytes() const;

private:
    // Picks the activation buffer of each matrix (one per distinct format); returns the number
    // of formats and, in firsts, one matrix of each.
    int plan_inputs(const WeightRef * const * w, int n_w, int n_tok, const void ** acts, const WeightRef ** firsts);
    // Thread ith of nth converts its share of the tokens of x into every format.
    void quantize_inputs(const WeightRef * const * firsts, int n_formats, const float * x, int n_tok, int ith,
                         int nth);

    CpuBackendOptions opt_;
    ThreadPool pool_;
    std::atomic<int64_t> next_chunk_{0};

    // Scratch, allocated once.
    std::vector<uint8_t> acts_[3];       // (n_batch, act_row_bytes) per activation format in use
    std::vector<std::vector<float>> tmp_;  // per thread: gemm chunk outputs
    std::vector<std::vector<float>> att_;  // per thread: attention scores and query/output staging
    // moe_small: quantized inputs, then per (token, expert) pair the swiglu activations (moe_ff),
    // their quantized form, and the expert's output (moe_embd). Empty for dense models.
    std::vector<uint8_t> moe_qx_, moe_qa_;
    std::vector<float> moe_act_, moe_out_;

    // Rotary embedding: inverse frequencies (n_rot / 2) and per-batch cos/sin (n_tok, n_rot / 2),
    // of the global layers and, for models with sliding-window layers of other frequencies, theirs.
    int n_rot_[2] = {0, 0};  // rotated dimensions of the global and of the sliding-window layers
    bool rope_neox_ = false;
    float temp_scale_ = 0.0f;  // Config::attn_temp_scale, attn_temp_floor
    int temp_floor_ = 1;
    double rope_mscale_[2] = {1.0, 1.0};  // cos and sin scaled by it (Config::rope_magnitude), [1]: swa
    int q_heads_ = 0, kv_heads_ = 0, head_dim_ = 0;
    struct RopeTables {
        std::vector<float> inv_freq, cos, sin;
        void fill(const int32_t * pos, int n_tok, double mscale);
    };
    RopeTables rope_[2];
    void size_rope();  // the tables for opt_.n_rot, opt_.n_batch, opt_.rope_swa

    // Current batch.
    int n_tok_ = 0;
    std::vector<int32_t> pos_, slot_;
    std::vector<int64_t> chunk_start_;  // attention query chunks of the batch
};

}  // namespace sl
