#include "cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "cuda/act.h"
#include "cuda/attention.h"
#include "cuda/blocks.h"
#include "cuda/common.cuh"
#include "cuda/get_rows.h"
#include "cuda/hadamard.h"
#include "cuda/matmul.h"
#include "cuda/rms_norm.h"
#include "cuda/rope.h"
#include "cuda/glu.h"
#include "model/config.h"

namespace sl::cuda {

namespace {

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Offsets of the scratch buffers inside the one scratch allocation.
struct ScratchLayout {
    size_t act_q8 = 0, act_f16 = 0, ff = 0, batch = 0, total = 0;
    size_t cos[2] = {0, 0}, sin[2] = {0, 0}, inv_freq[2] = {0, 0};  // [1]: sliding-window layers

    explicit ScratchLayout(const GpuBackendOptions & o) {
        const size_t nb = size_t(std::max(o.n_batch, 1));
        const int64_t k32 = (int64_t(std::max(o.max_k, 1)) + 31) / 32 * 32;
        const size_t half_rot = size_t(std::max(o.head_dim, 2) / 2);
        size_t off = 0;
        auto take = [&](size_t bytes) {
            const size_t at = off;
            off += align256(bytes);
            return at;
        };
        act_q8 = take(nb * ActQ8::row_bytes(k32));
        act_f16 = take(nb * size_t(act_f16_ld(k32)) * 2);
        ff = take(nb * size_t(std::max(o.n_ff, 1)) * sizeof(float));
        batch = take((3 * nb + 1) * sizeof(int32_t));
        for (int k = 0; k < (o.rope_swa ? 2 : 1); ++k) {
            cos[k] = take(nb * half_rot * sizeof(float));
            sin[k] = take(nb * half_rot * sizeof(float));
            inv_freq[k] = take(half_rot * sizeof(float));
        }
        total = off;
    }
};

size_t batch_bytes(int n_batch) { return (3 * size_t(n_batch) + 1) * sizeof(int32_t); }

}  // namespace

size_t backend_scratch_bytes(const GpuBackendOptions & opt) { return ScratchLayout(opt).total; }

CudaBackend::CudaBackend(const GpuBackendOptions & opt) : opt_(opt) {
    SL_CHECK(opt.n_batch >= 1 && opt.max_k >= 1 && opt.n_head >= 1 && opt.n_head_kv >= 1 && opt.head_dim >= 2,
             "cuda backend: incomplete options");
    SL_CUDA_CHECK(cudaSetDevice(0));
    try {
        SL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        SL_CUDA_CHECK(cudaEventCreateWithFlags(&batch_copied_, cudaEventDisableTiming));
        const ScratchLayout lay(opt);
        SL_CUDA_CHECK(cudaMalloc(&scratch_, lay.total));
        auto * base = static_cast<uint8_t *>(scratch_);
        act_q8_ = base + lay.act_q8;
        act_f16_ = base + lay.act_f16;
        ff_tmp_ = reinterpret_cast<float *>(base + lay.ff);
        d_batch_ = reinterpret_cast<int32_t *>(base + lay.batch);
        for (int k = 0; k < (opt.rope_swa ? 2 : 1); ++k) {
            rope_[k].cos = reinterpret_cast<float *>(base + lay.cos[k]);
            rope_[k].sin = reinterpret_cast<float *>(base + lay.sin[k]);
            rope_[k].inv_freq = reinterpret_cast<float *>(base + lay.inv_freq[k]);
        }
        SL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void **>(&h_batch_), batch_bytes(opt.n_batch)));
    } catch (...) {
        release();
        throw;
    }
    KvShape s;
    s.n_head = opt.n_head;
    s.n_head_kv = opt.n_head_kv;
    chunk_tokens_ = attention_chunk_tokens(s);
    pos_.resize(opt.n_batch);
    slot_.resize(opt.n_batch);
    const char * g = std::getenv("SPLITLLM_CUDA_GRAPHS");
    if (g && std::strcmp(g, "0") == 0) opt_.graphs = false;
}

CudaBackend::~CudaBackend() { release(); }

void CudaBackend::release() noexcept {
    // Nothing here may throw: errors are dropped (the process may be tearing CUDA down).
    abandon_capture();
    for (cudaGraphExec_t g : graphs_)
        if (g) cudaGraphExecDestroy(g);
    graphs_.clear();
    if (stream_) cudaStreamSynchronize(stream_);
    if (h_batch_) cudaFreeHost(h_batch_);
    if (scratch_) cudaFree(scratch_);
    if (batch_copied_) cudaEventDestroy(batch_copied_);
    if (stream_) cudaStreamDestroy(stream_);
    h_batch_ = nullptr;
    scratch_ = nullptr;
    batch_copied_ = nullptr;
    stream_ = nullptr;
    (void)cudaGetLastError();
}

// ---- graphs ----

template <class F>
void CudaBackend::enqueue(F && f) {
    if (!capturing_ && opt_.graphs && n_tok_ == 1) {
        SL_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        capturing_ = true;
    }
    try {
        f();
    } catch (...) {
        abandon_capture();
        throw;
    }
}

void CudaBackend::abandon_capture() noexcept {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError();
}

void CudaBackend::end_capture_and_launch() {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t g = nullptr;
    SL_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    struct Owner {
        cudaGraph_t g;
        ~Owner() { cudaGraphDestroy(g); }
    } owner{g};
    if (segment_ >= graphs_.size()) graphs_.push_back(nullptr);
    cudaGraphExec_t & exec = graphs_[segment_++];
    if (exec) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(exec, g, &info) != cudaSuccess) {
            (void)cudaGetLastError();  // another shape of work: instantiate afresh
            cudaGraphExecDestroy(exec);
            exec = nullptr;
        }
    }
    if (!exec) SL_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    SL_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
}

// ---- memory ----

void * CudaBackend::alloc(size_t bytes) {
    void * p = nullptr;
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw CudaError(strfmt("CUDA0: out of device memory allocating %.1f MiB (%.1f MiB free of %.1f MiB): %s",
                               bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0, cudaGetErrorString(err)));
    }
    return p;
}

void CudaBackend::free(void * p) {
    if (!p) return;
    abandon_capture();
    cudaStreamSynchronize(stream_);
    cudaFree(p);
    (void)cudaGetLastError();
}

void CudaBackend::upload(void * dst, const void * src, size_t n) {
    end_capture_and_launch();  // copies from pageable host memory cannot be captured
    SL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::download(void * dst, const void * src, size_t n) {
    end_capture_and_launch();
    SL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_));
    SL_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::memset0(void * dst, size_t n) {
    enqueue([&] { SL_CUDA_CHECK(cudaMemsetAsync(dst, 0, n, stream_)); });
}

void CudaBackend::copy(void * dst, const void * src, size_t n) {
    enqueue([&] { SL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_)); });
}

void CudaBackend::synchronize() {
    end_capture_and_launch();
    SL_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// ---- batch ----

void CudaBackend::init_rope(const Config & c, const float * freq_factors) {
    SL_CHECK(c.n_rot % 2 == 0 && c.n_rot <= opt_.head_dim, "cuda backend: n_rot %d for head_dim %d", c.n_rot,
             opt_.head_dim);
    SL_CHECK(c.swa_layers.empty() || opt_.rope_swa, "cuda backend: built without sliding-window rotary tables");
    n_rot_ = c.n_rot;
    rope_neox_ = c.rope_neox;
    temp_scale_ = c.attn_temp_scale;
    temp_floor_ = c.attn_temp_floor;
    rope_mscale_[0] = c.rope_magnitude(false);
    rope_mscale_[1] = c.rope_magnitude(true);
    const int half = c.n_rot / 2;
    std::vector<float> inv(size_t(std::max(2 * half, 2)));
    for (int i = 0; i < half; ++i) {  // as the CPU backend computes them
        inv[size_t(i)] = float(c.inv_freq(i, false) / (freq_factors ? double(freq_factors[i]) : 1.0));
        inv[size_t(half + i)] = float(c.inv_freq(i, true));
    }
    end_capture_and_launch();
    for (int k = 0; k < (opt_.rope_swa ? 2 : 1); ++k)
        SL_CUDA_CHECK(cudaMemcpyAsync(rope_[k].inv_freq, inv.data() + size_t(k) * half, sizeof(float) * half,
                                      cudaMemcpyHostToDevice, stream_));
    SL_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::begin_batch(const BatchInfo & b) {
    SL_CHECK(b.n_tok >= 1 && b.n_tok <= opt_.n_batch, "batch of %d tokens (n_batch is %d)", b.n_tok, opt_.n_batch);
    end_capture_and_launch();  // work left from the previous batch
    segment_ = 0;
    // The staging buffer may still feed the previous batch's copy.
    SL_CUDA_CHECK(cudaEventSynchronize(batch_copied_));
    const int n = b.n_tok;
    std::copy(b.pos, b.pos + n, pos_.begin());
    std::copy(b.slot, b.slot + n, slot_.begin());
    int32_t * pos = h_batch_;
    int32_t * slot = pos + n;
    int32_t * chunks = slot + n;
    std::memcpy(pos, b.pos, sizeof(int32_t) * n);
    std::memcpy(slot, b.slot, sizeof(int32_t) * n);
    // Prefill attention chunks: runs of one sequence with increasing positions.
    int nc = 0;
    for (int t = 0; t < n;) {
        int e = t + 1;
        while (e < n && e - t < chunk_tokens_ && b.slot[e] == b.slot[t] && b.pos[e] > b.pos[e - 1]) ++e;
        chunks[nc++] = t;
        t = e;
    }
    chunks[nc] = n;
    n_chunks_ = nc;
    // Device layout: pos at 0, slot at n_batch, chunks at 2 n_batch.
    SL_CUDA_CHECK(cudaMemcpyAsync(d_batch_, pos, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
    SL_CUDA_CHECK(cudaMemcpyAsync(d_batch_ + opt_.n_batch, slot, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
    SL_CUDA_CHECK(cudaMemcpyAsync(d_batch_ + 2 * opt_.n_batch, chunks, sizeof(int32_t) * (nc + 1),
                                  cudaMemcpyHostToDevice, stream_));
    SL_CUDA_CHECK(cudaEventRecord(batch_copied_, stream_));
    for (int k = 0; k < (opt_.rope_swa ? 2 : 1); ++k)
        rope_tables(d_batch_, rope_[k].inv_freq, n, n_rot_, rope_mscale_[k], rope_[k].cos, rope_[k].sin, stream_);
    n_tok_ = n;
}

void CudaBackend::check_batch(int n_tok, const char * op) const {
    SL_CHECK(n_tok >= 0 && n_tok <= opt_.n_batch, "cuda %s: %d tokens (n_batch is %d)", op, n_tok, opt_.n_batch);
}

// ---- operations ----

void CudaBackend::rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) {
    // rows: the batch's tokens, or (per-head norms, qwen3) its query heads
    SL_CHECK(n_tok >= 0 && int64_t(n_tok) <= int64_t(opt_.n_batch) * std::max(opt_.n_head, 1),
             "cuda rms_norm: %d rows (n_batch is %d)", n_tok, opt_.n_batch);
    enqueue([&] { cuda::rms_norm(x, w, y, n_tok, n, eps, stream_); });
}

void CudaBackend::layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) {
    check_batch(n_tok, "layer_norm");
    enqueue([&] { cuda::layer_norm(x, w, y, n_tok, n, eps, stream_); });
}

void CudaBackend::prepare_input(const WeightRef * const * w, int n_w, const float * x, int n_tok, bool gemm) {
    const int64_t K = w[0]->K;
    if (gemm) {
        convert_act_f16(x, K, n_tok, act_f16_, stream_);
        return;
    }
    for (int i = 0; i < n_w; ++i)
        if (!is_float_type(w[i]->type)) {
            quantize_act_q8(x, K, n_tok, act_q8_, stream_);
            return;
        }
}

void CudaBackend::matmul_one(const WeightRef & w, float * y, const float * x, int n_tok, bool accumulate,
                             bool gemm) {
    MatArgs a;
    a.type = w.type;
    a.W = w.data;
    a.rows = w.rows;
    a.K = w.K;
    a.bias = w.bias;
    a.n_tok = n_tok;
    a.y = y;
    a.ldy = w.rows;
    a.accumulate = accumulate;
    if (gemm)
        cuda::gemm(a, act_f16_, stream_);
    else if (is_float_type(w.type))
        mmv(a, x, stream_);
    else
        mmvq(a, act_q8_, stream_);
}

void CudaBackend::matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                         bool accumulate) {
    SL_CHECK(n_w >= 1 && n_w <= 3, "cuda matmul of %d matrices", n_w);
    check_batch(n_tok, "matmul");
    for (int i = 0; i < n_w; ++i) {
        SL_CHECK(matmul_supports(w[i]->type), "cuda matmul: unsupported weight type %s",
                 qtype_traits(w[i]->type) ? qtype_traits(w[i]->type)->name : "?");
        SL_CHECK(w[i]->K == w[0]->K && w[i]->K <= opt_.max_k, "cuda matmul: input width %lld (max %d)",
                 (long long)w[i]->K, opt_.max_k);
    }
    if (n_tok == 0) return;
    const bool gemm = n_tok > opt_.vec_tokens;
    enqueue([&] {
        prepare_input(w, n_w, x, n_tok, gemm);
        for (int i = 0; i < n_w; ++i) matmul_one(*w[i], y[i], x, n_tok, accumulate, gemm);
    });
}

void CudaBackend::add(float * y, const float * x, int64_t n, float scale) {
    enqueue([&] { cuda::add(y, x, n, scale, stream_); });
}

void CudaBackend::act_mul(Glu f, float * g, const float * u, int64_t n) {
    SL_CHECK(gpu_act_supported(f), "cuda act_mul: the clamped SwiGLU and ReGLU run on the CPU only");
    enqueue([&] {
        if (f == Glu::Silu)
            silu_mul(g, u, n, stream_);
        else
            gelu_mul(g, u, n, stream_);
    });
}

void CudaBackend::glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act, int n_tok) {
    SL_CHECK(gate.rows == up.rows && gate.K == up.K, "gate and up projections differ in shape");
    SL_CHECK(gate.rows <= opt_.n_ff && gate.K <= opt_.max_k, "cuda glu: shape (%lld, %lld) beyond the scratch",
             (long long)gate.rows, (long long)gate.K);
    SL_CHECK(matmul_supports(gate.type) && matmul_supports(up.type), "cuda glu: unsupported weight type");
    SL_CHECK(gpu_glu_supported(f, gate, up), "cuda glu: the clamped SwiGLU, ReGLU and projection biases run on the CPU only");
    check_batch(n_tok, "glu");
    if (n_tok == 0) return;
    const bool gemm = n_tok > opt_.vec_tokens;
    const WeightRef * w[2] = {&gate, &up};
    enqueue([&] {
        prepare_input(w, 2, x, n_tok, gemm);
        matmul_one(gate, act, x, n_tok, false, gemm);
        matmul_one(up, ff_tmp_, x, n_tok, false, gemm);
        if (f == Glu::Silu)
            silu_mul(act, ff_tmp_, int64_t(n_tok) * gate.rows, stream_);
        else
            gelu_mul(act, ff_tmp_, int64_t(n_tok) * gate.rows, stream_);
    });
}

void CudaBackend::rope(float * q, float * k, int n_tok, bool swa) {
    SL_CHECK(n_tok == n_tok_, "cuda rope: %d tokens in a batch of %d", n_tok, n_tok_);
    const RopeTables & tab = rope_[swa && opt_.rope_swa ? 1 : 0];
    RopeShape s;
    s.n_head = opt_.n_head;
    s.n_head_kv = opt_.n_head_kv;
    s.head_dim = opt_.head_dim;
    s.n_rot = n_rot_;
    s.neox = rope_neox_;
    s.temp_scale = temp_scale_;
    s.temp_floor = temp_floor_;
    enqueue([&] { cuda::rope(q, k, tab.cos, tab.sin, d_batch_, n_tok, s, stream_); });
}

void CudaBackend::hadamard(float * x, int64_t n_rows, int row) {
    const int n = hadamard_block(row);
    if (n < 2) return;  // an odd row: H_1 is the identity
    enqueue([&] { cuda::hadamard(x, n_rows, row, n, stream_); });
}

void CudaBackend::attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                            const float * v, float * out, int n_tok, const AttnParams & p) {
    SL_CHECK(n_tok == n_tok_, "cuda attention: %d tokens in a batch of %d", n_tok, n_tok_);
    check_gpu_attention(kv, p);
    SL_CHECK(kv.head_dim == opt_.head_dim && kv.n_head_kv == opt_.n_head_kv && kv.slot_ctx <= opt_.max_slot_ctx,
             "cuda attention: cache geometry differs from the backend's");
    for (int t = 0; t < n_tok; ++t)
        SL_CHECK(slot_[t] >= 0 && slot_[t] < kv.n_slots && kv.holds(pos_[t]),
                 "token %d: slot %d / position %d outside the KV cache (%d slots of %d cells)", t, slot_[t], pos_[t],
                 kv.n_slots, kv.slot_ctx);
    check_ring_batch(kv, p, pos_.data(), slot_.data(), n_tok);
    KvShape s;
    s.type_k = kv.type_k;
    s.type_v = kv.type_v;
    s.n_slots = kv.n_slots;
    s.slot_ctx = kv.slot_ctx;
    s.n_head = opt_.n_head;
    s.n_head_kv = kv.n_head_kv;
    s.head_dim = kv.head_dim;
    s.k_row = kv.k_row();
    s.v_row = kv.v_row();
    s.ring = kv.ring;
    attention_check(s);
    AttnBatch b;
    b.pos = d_batch_;
    b.slot = d_batch_ + opt_.n_batch;
    b.n_tok = n_tok;
    b.chunk_start = d_batch_ + 2 * opt_.n_batch;
    b.n_chunks = n_chunks_;
    AttnScore sc;
    sc.scale = p.scale > 0 ? p.scale : 1.0f / std::sqrt(float(kv.head_dim));
    sc.softcap = p.softcap;
    sc.window = p.window;
    sc.sinks = p.sinks;
    enqueue([&] {
        store_kv(s, b, k, v, k_cache, v_cache, stream_);
        if (n_tok <= opt_.attn_vec_tokens)
            attention_decode(s, b, q, k_cache, v_cache, out, sc, stream_);
        else
            attention_prefill(s, b, q, k_cache, v_cache, out, sc, stream_);
    });
}

void CudaBackend::get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) {
    check_batch(n_tok, "get_rows");
    enqueue([&] { cuda::get_rows(table.type, table.data, table.rows, table.K, tokens, n_tok, out, stream_); });
}

}  // namespace sl::cuda
