// The CUDA backend: the Backend interface on one device and one stream. Weights, KV cache and
// activations live in device memory; scratch (converted activations, batch tables) is
// allocated once at construction, so a forward pass allocates nothing. Host<->device copies
// happen only through upload/download (the split boundaries). Single-token batches are
// captured into CUDA graphs, one per run of device work between host synchronisations, and
// replayed (updated in place) on the following tokens.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

#include "model/backend.h"
#include "model/gpu.h"

namespace sl::cuda {

// Device scratch of a backend with these options, in bytes (the memory check counts it).
size_t backend_scratch_bytes(const GpuBackendOptions & opt);

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(const GpuBackendOptions & opt);
    ~CudaBackend() override;
    CudaBackend(const CudaBackend &) = delete;
    CudaBackend & operator=(const CudaBackend &) = delete;

    std::string name() const override { return "CUDA0"; }
    bool is_cpu() const override { return false; }

    void * alloc(size_t bytes) override;
    void free(void * p) override;
    void upload(void * dst, const void * src, size_t n) override;
    void download(void * dst, const void * src, size_t n) override;
    void memset0(void * dst, size_t n) override;
    void copy(void * dst, const void * src, size_t n) override;
    void synchronize() override;

    void begin_batch(const BatchInfo & b) override;
    void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) override;
    void layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) override;
    void matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                bool accumulate) override;
    void glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act, int n_tok) override;
    void add(float * y, const float * x, int64_t n, float scale) override;
    void act_mul(Glu f, float * g, const float * u, int64_t n) override;
    void rope(float * q, float * k, int n_tok, bool swa) override;
    void attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                   const float * v, float * out, int n_tok, const AttnParams & p) override;
    void hadamard(float * x, int64_t n_rows, int row) override;
    void get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) override;
    void init_rope(const Config & c, const float * freq_factors) override;

private:
    // Runs f (which enqueues work) after starting a graph capture where one applies; a failure
    // abandons the capture before the exception leaves.
    template <class F>
    void enqueue(F && f);
    void end_capture_and_launch();  // the captured segment, if any, is launched
    void abandon_capture() noexcept;
    void release() noexcept;  // frees everything this backend holds
    // Converts x (n_tok, K) into what the kernels for these weights read.
    void prepare_input(const WeightRef * const * w, int n_w, const float * x, int n_tok, bool gemm);
    void matmul_one(const WeightRef & w, float * y, const float * x, int n_tok, bool accumulate, bool gemm);
    void check_batch(int n_tok, const char * op) const;

    GpuBackendOptions opt_;
    cudaStream_t stream_ = nullptr;
    cudaEvent_t batch_copied_ = nullptr;

    // Device scratch: one allocation, carved up by the layout of backend_scratch_bytes().
    void * scratch_ = nullptr;
    uint8_t * act_q8_ = nullptr;    // (n_batch, ActQ8 row of max_k)
    void * act_f16_ = nullptr;      // (n_batch, act_f16_ld(max_k)) halves
    float * ff_tmp_ = nullptr;      // (n_batch, n_ff) the up projection beside the gate
    int32_t * d_batch_ = nullptr;   // pos (n_batch), slot (n_batch), chunk starts (n_batch + 1)
    // Rotary tables of the global layers ([0]) and, with opt_.rope_swa, of the sliding-window ones.
    struct RopeTables {
        float * cos = nullptr;       // (n_batch, head_dim / 2)
        float * sin = nullptr;
        float * inv_freq = nullptr;  // (head_dim / 2)
    };
    RopeTables rope_[2];
    int32_t * h_batch_ = nullptr;   // pinned staging of d_batch_

    int n_rot_ = 0;
    bool rope_neox_ = false;
    float temp_scale_ = 0.0f;  // Config::attn_temp_scale, attn_temp_floor
    int temp_floor_ = 1;
    float rope_mscale_[2] = {1.0f, 1.0f};  // Config::rope_magnitude ([1]: sliding-window layers)
    int chunk_tokens_ = 1;

    // Current batch.
    int n_tok_ = 0;
    int n_chunks_ = 0;
    std::vector<int32_t> pos_, slot_;

    // CUDA graphs: the executable graph of each segment of a single-token batch.
    bool capturing_ = false;
    size_t segment_ = 0;
    std::vector<cudaGraphExec_t> graphs_;
};

}  // namespace sl::cuda
