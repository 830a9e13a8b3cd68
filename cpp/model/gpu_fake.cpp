// FAKEGPU0: the test device. A CPU backend with its own allocations behind the GPU interface;
// every pointer an operation receives must lie inside memory this backend allocated (device
// memory, in a real GPU's terms), so a host pointer leaking across a split throws at once.
#include <cstdlib>
#include <cstring>
#include <map>

#include "common/error.h"
#include "model/cpu_backend.h"
#include "model/gpu.h"

namespace sl {

namespace {

constexpr size_t kDefaultFakeMiB = 65536;

class FakeGpuBackend final : public Backend {
public:
    FakeGpuBackend(const CpuBackendOptions & o, const GpuBackendOptions & g) : cpu_(o), max_k_(g.max_k), n_ff_(g.n_ff) {}

    std::string name() const override { return "FAKEGPU0"; }
    bool is_cpu() const override { return false; }

    void * alloc(size_t bytes) override {
        void * p = cpu_.alloc(bytes);
        blocks_[reinterpret_cast<uintptr_t>(p)] = bytes;
        return p;
    }
    void free(void * p) override {
        blocks_.erase(reinterpret_cast<uintptr_t>(p));
        cpu_.free(p);
    }
    void upload(void * dst, const void * src, size_t n) override {
        need(dst, n, "upload destination");
        std::memcpy(dst, src, n);
    }
    void download(void * dst, const void * src, size_t n) override {
        need(src, n, "download source");
        std::memcpy(dst, src, n);
    }
    void memset0(void * dst, size_t n) override {
        need(dst, n, "memset0");
        std::memset(dst, 0, n);
    }
    void copy(void * dst, const void * src, size_t n) override {
        need(dst, n, "copy destination");
        need(src, n, "copy source");
        std::memmove(dst, src, n);
    }
    void synchronize() override {}

    void begin_batch(const BatchInfo & b) override { cpu_.begin_batch(b); }
    void rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) override {
        const size_t row = sizeof(float) * size_t(n);
        need(x, row * n_tok, "rms_norm x");
        need(w, row, "rms_norm weight");
        need(y, row * n_tok, "rms_norm y");
        cpu_.rms_norm(x, w, y, n_tok, n, eps);
    }
    void layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) override {
        const size_t row = sizeof(float) * size_t(n);
        need(x, row * n_tok, "layer_norm x");
        need(w, row, "layer_norm weight");
        need(y, row * n_tok, "layer_norm y");
        cpu_.layer_norm(x, w, y, n_tok, n, eps);
    }
    void matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                bool accumulate) override {
        for (int i = 0; i < n_w; ++i) {
            need(*w[i], "matmul");
            need(y[i], sizeof(float) * size_t(n_tok) * w[i]->rows, "matmul output");
        }
        need(x, sizeof(float) * size_t(n_tok) * w[0]->K, "matmul input");
        SL_CHECK(w[0]->K <= max_k_, "FAKEGPU0 matmul: input width %lld (max %d)", (long long)w[0]->K, max_k_);
        cpu_.matmul(w, y, n_w, x, n_tok, accumulate);
    }
    void glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act, int n_tok) override {
        need(gate, "glu gate");
        need(up, "glu up");
        need(x, sizeof(float) * size_t(n_tok) * gate.K, "glu input");
        need(act, sizeof(float) * size_t(n_tok) * gate.rows, "glu output");
        SL_CHECK(gate.rows <= n_ff_ && gate.K <= max_k_, "FAKEGPU0 glu: shape (%lld, %lld) beyond the scratch",
                 (long long)gate.rows, (long long)gate.K);  // (as the CUDA backend's)
        SL_CHECK(gpu_glu_supported(f, gate, up),
                 "FAKEGPU0 glu: the clamped SwiGLU, ReGLU and projection biases run on the CPU only");
        cpu_.glu(f, gate, up, x, act, n_tok);
    }
    void add(float * y, const float * x, int64_t n, float scale) override {
        need(y, sizeof(float) * size_t(n), "add y");
        need(x, sizeof(float) * size_t(n), "add x");
        cpu_.add(y, x, n, scale);
    }
    void act_mul(Glu f, float * g, const float * u, int64_t n) override {
        SL_CHECK(gpu_act_supported(f), "FAKEGPU0 act_mul: the clamped SwiGLU and ReGLU run on the CPU only");
        need(g, sizeof(float) * size_t(n), "act_mul g");
        need(u, sizeof(float) * size_t(n), "act_mul u");
        cpu_.act_mul(f, g, u, n);
    }
    void rope(float * q, float * k, int n_tok, bool swa) override {
        need(q, sizeof(float), "rope q");
        need(k, sizeof(float), "rope k");
        cpu_.rope(q, k, n_tok, swa);
    }
    void attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                   const float * v, float * out, int n_tok, const AttnParams & p) override {
        check_gpu_attention(kv, p);
        need(k_cache, kv.k_bytes(), "K cache");
        need(v_cache, kv.v_bytes(), "V cache");
        for (const void * p : {static_cast<const void *>(q), static_cast<const void *>(k),
                               static_cast<const void *>(v), static_cast<const void *>(out)})
            need(p, sizeof(float), "attention operand");
        cpu_.attention(kv, k_cache, v_cache, q, k, v, out, n_tok, p);
    }
    void hadamard(float * x, int64_t n_rows, int row) override {
        need(x, sizeof(float) * size_t(n_rows) * row, "hadamard rows");
        cpu_.hadamard(x, n_rows, row);
    }
    void get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) override {
        need(table, "get_rows table");
        need(tokens, sizeof(int32_t) * size_t(n_tok), "get_rows tokens");
        need(out, sizeof(float) * size_t(n_tok) * table.K, "get_rows output");
        cpu_.get_rows(table, tokens, n_tok, out);
    }
    void init_rope(const Config & c, const float * freq_factors) override { cpu_.init_rope(c, freq_factors); }

private:
    // Throws unless [p, p + n) lies inside one of this backend's allocations.
    void need(const void * p, size_t n, const char * what) const {
        const uintptr_t a = reinterpret_cast<uintptr_t>(p);
        auto it = blocks_.upper_bound(a);
        if (it != blocks_.begin()) {
            --it;
            if (a >= it->first && a - it->first <= it->second && n <= it->second - (a - it->first)) return;
        }
        throw Error(strfmt("FAKEGPU0: %s (%p, %zu bytes) is not in this device's memory", what, p, n));
    }
    void need(const WeightRef & w, const char * what) const {
        need(w.data, w.nbytes(), what);
        if (w.bias) need(w.bias, sizeof(float) * size_t(w.rows), what);
    }

    CpuBackend cpu_;
    int max_k_, n_ff_;  // the CUDA backend's scratch limits, checked as it checks them
    std::map<uintptr_t, size_t> blocks_;
};

size_t fake_free_bytes() {
    const char * e = std::getenv("SPLITLLM_FAKE_GPU_MEM");
    const size_t mib = e && *e ? size_t(std::strtoull(e, nullptr, 10)) : kDefaultFakeMiB;
    return mib << 20;
}

}  // namespace

bool fake_gpu_enabled() {
    const char * e = std::getenv("SPLITLLM_FAKE_GPU");
    return e && *e && std::strcmp(e, "0") != 0;
}

GpuInfo fake_gpu_info() {
    GpuInfo g;
    g.available = true;
    g.name = "FAKEGPU0";
    g.description = "fake GPU for tests (CPU kernels, separate memory)";
    g.free_bytes = g.total_bytes = fake_free_bytes();
    return g;
}

std::unique_ptr<Backend> make_fake_gpu_backend(const GpuBackendOptions & opt) {
    CpuBackendOptions o;
    // One thread: a second spinning pool would fight the CPU backend's for the same cores.
    o.n_threads = 1;
    o.n_batch = opt.n_batch;
    o.max_k = opt.max_k;
    o.max_rows = opt.max_rows;
    o.n_head = opt.n_head;
    o.n_head_kv = opt.n_head_kv;
    o.head_dim = opt.head_dim;
    o.max_slot_ctx = opt.max_slot_ctx;
    o.rope_swa = opt.rope_swa;
    o.allow_any_weights();
    return std::make_unique<FakeGpuBackend>(o, opt);
}

}  // namespace sl
