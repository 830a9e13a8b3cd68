// Op offload (as llama.cpp does it): a prompt batch of at least kMinBatch tokens that reaches a
// CPU-resident layer runs that layer's matmuls on the GPU, the weights copied over for each
// matmul into one staging buffer (sized for the largest group of matrices sharing an input) and
// the activations in and out. Below the threshold, copying the weights costs more than the CPU
// spends computing with them. Everything else of the layer stays on the CPU.
#pragma once

#include <cstddef>

#include "model/backend.h"

namespace sl {

class CpuBackend;

// Device buffers of the offload, allocated by the model (it owns device memory).
struct OpOffloadBuffers {
    void * weights = nullptr;  // staging for the weights (and biases) of one matmul
    size_t weight_bytes = 0;
    float * x = nullptr;       // (n_batch, max_k)
    size_t x_floats = 0;
    float * y = nullptr;       // (n_batch, max_out): all outputs of one matmul
    size_t y_floats = 0;
};

class OpOffload final : public Backend {
public:
    static constexpr int kMinBatch = 32;

    OpOffload(CpuBackend & cpu, Backend & gpu, const OpOffloadBuffers & buf);

    // The layer still lives on the CPU: host memory, host pointers.
    std::string name() const override;
    bool is_cpu() const override { return true; }

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

    // Staging bytes for a set of matrices staged together (what the buffers must hold).
    static size_t staging_bytes(const WeightRef * const * w, int n_w);

private:
    // Copies the matrices to the staging buffer; false if they do not fit (then the CPU runs them).
    bool stage(const WeightRef * const * w, int n_w, WeightRef * dev);

    CpuBackend & cpu_;
    Backend & gpu_;
    OpOffloadBuffers buf_;
};

}  // namespace sl
