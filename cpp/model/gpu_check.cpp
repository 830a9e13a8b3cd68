#include "model/gpu_check.h"

#include <algorithm>
#include <memory>

#include "common/error.h"
#include "model/config.h"
#include "model/cpu_backend.h"
#include "model/gpu.h"

namespace sl::gpucheck {

namespace {

// A backend for one operation and the buffers it was given, freed on the way out.
class Session {
public:
    Session(const Device & d, GpuBackendOptions o) {
        o.n_batch = std::max(o.n_batch, 1);
        o.n_head = std::max(o.n_head, 1);
        o.n_head_kv = std::max(o.n_head_kv, 1);
        o.head_dim = std::max(o.head_dim, 2);
        o.max_k = std::max(o.max_k, 1);
        o.max_rows = std::max(o.max_rows, 1);
        o.n_ff = std::max(o.n_ff, 1);
        o.n_threads = d.n_threads;
        o.vec_tokens = d.vec_tokens;
        o.attn_vec_tokens = d.attn_vec_tokens;
        o.graphs = d.graphs;
        if (d.name == "cpu") {
            CpuBackendOptions c;
            c.n_threads = o.n_threads;
            c.n_batch = o.n_batch;
            c.max_k = o.max_k;
            c.max_rows = o.max_rows;
            c.n_head = o.n_head;
            c.n_head_kv = o.n_head_kv;
            c.head_dim = o.head_dim;
            c.max_slot_ctx = std::max(o.max_slot_ctx, 1);
            c.allow_any_weights();
            be_ = std::make_unique<CpuBackend>(c);
        } else if (d.name == "gpu") {
            be_ = make_gpu_backend(o);
        } else {
            throw Error("unknown device '" + d.name + "' (cpu, gpu)");
        }
    }
    ~Session() {
        for (void * p : owned_) be_->free(p);
    }
    Session(const Session &) = delete;
    Session & operator=(const Session &) = delete;

    Backend & be() { return *be_; }

    // A device buffer of n bytes holding host[0, n) (zeros if host is null).
    template <class T = void>
    T * put(const void * host, size_t n) {
        void * p = be_->alloc(std::max<size_t>(n, 1));
        owned_.push_back(p);
        if (host)
            be_->upload(p, host, n);
        else
            be_->memset0(p, n);
        return static_cast<T *>(p);
    }
    std::vector<float> get(const float * dev, size_t n) {
        std::vector<float> out(n);
        be_->download(out.data(), dev, n * sizeof(float));
        return out;
    }

private:
    std::unique_ptr<Backend> be_;
    std::vector<void *> owned_;
};

WeightRef weight_on(Session & s, QType t, const uint8_t * W, int64_t rows, int64_t K, const float * bias) {
    WeightRef w;
    w.type = t;
    w.rows = rows;
    w.K = K;
    w.data = s.put(W, w.nbytes());
    if (bias) w.bias = s.put<float>(bias, sizeof(float) * size_t(rows));
    return w;
}

void check_type(QType t, int64_t K) {
    const QTypeTraits * tr = qtype_traits(t);
    SL_CHECK(tr && K > 0 && K % tr->blck_size == 0, "weight rows of %lld values do not fit type %s", (long long)K,
             tr ? tr->name : "?");
}

}  // namespace

std::vector<float> rms_norm(const Device & d, const float * x, const float * w, int n_tok, int n, float eps,
                            bool layer) {
    GpuBackendOptions o;
    o.n_batch = n_tok;
    Session s(d, o);
    const size_t bytes = sizeof(float) * size_t(n_tok) * n;
    const float * dx = s.put<float>(x, bytes);
    const float * dw = s.put<float>(w, sizeof(float) * size_t(n));
    float * dy = s.put<float>(nullptr, bytes);
    if (layer)
        s.be().layer_norm(dx, dw, dy, n_tok, n, eps);
    else
        s.be().rms_norm(dx, dw, dy, n_tok, n, eps);
    return s.get(dy, size_t(n_tok) * n);
}

std::vector<float> matmul(const Device & d, QType type, const uint8_t * W, int64_t rows, int64_t K,
                          const float * bias, const float * x, int n_tok, const float * y0) {
    check_type(type, K);
    GpuBackendOptions o;
    o.n_batch = n_tok;
    o.max_k = int(K);
    o.max_rows = int(rows);
    o.n_ff = int(rows);
    Session s(d, o);
    const WeightRef w = weight_on(s, type, W, rows, K, bias);
    const float * dx = s.put<float>(x, sizeof(float) * size_t(n_tok) * K);
    float * dy = s.put<float>(y0, sizeof(float) * size_t(n_tok) * rows);
    const WeightRef * pw = &w;
    s.be().matmul(&pw, &dy, 1, dx, n_tok, y0 != nullptr);
    return s.get(dy, size_t(n_tok) * rows);
}

std::vector<float> glu(const Device & d, Glu f, QType type_gate, const uint8_t * gate, QType type_up,
                       const uint8_t * up, int64_t rows, int64_t K, const float * x, int n_tok) {
    check_type(type_gate, K);
    check_type(type_up, K);
    GpuBackendOptions o;
    o.n_batch = n_tok;
    o.max_k = int(K);
    o.max_rows = int(rows);
    o.n_ff = int(rows);
    Session s(d, o);
    const WeightRef g = weight_on(s, type_gate, gate, rows, K, nullptr);
    const WeightRef u = weight_on(s, type_up, up, rows, K, nullptr);
    const float * dx = s.put<float>(x, sizeof(float) * size_t(n_tok) * K);
    float * act = s.put<float>(nullptr, sizeof(float) * size_t(n_tok) * rows);
    s.be().glu(f, g, u, dx, act, n_tok);
    return s.get(act, size_t(n_tok) * rows);
}

std::vector<float> add(const Device & d, const float * y, const float * x, int64_t n, float scale) {
    GpuBackendOptions o;
    Session s(d, o);
    float * dy = s.put<float>(y, sizeof(float) * size_t(n));
    const float * dx = s.put<float>(x, sizeof(float) * size_t(n));
    s.be().add(dy, dx, n, scale);
    return s.get(dy, size_t(n));
}

void rope(const Device & d, const RopeSpec & r, const int32_t * pos, int n_tok, float * q, float * k) {
    GpuBackendOptions o;
    o.n_batch = n_tok;
    o.n_head = r.n_head;
    o.n_head_kv = r.n_head_kv;
    o.head_dim = r.head_dim;
    Session s(d, o);
    Config c;
    c.n_head = r.n_head;
    c.n_head_kv = r.n_head_kv;
    c.head_dim = r.head_dim;
    c.n_rot = r.n_rot;
    c.rope_base = r.base;
    c.rope_freq_scale = r.freq_scale;
    c.rope_neox = r.neox;
    if (r.swa) {
        c.swa_layers = {1};
        c.rope_base_swa = r.base_swa;
        c.rope_freq_scale_swa = r.freq_scale_swa;
    }
    s.be().init_rope(c, r.freq_factors);
    const std::vector<int32_t> slot(size_t(n_tok), 0);
    s.be().begin_batch(BatchInfo{n_tok, pos, slot.data()});
    const size_t nq = size_t(n_tok) * r.n_head * r.head_dim, nk = size_t(n_tok) * r.n_head_kv * r.head_dim;
    float * dq = s.put<float>(q, nq * sizeof(float));
    float * dk = s.put<float>(k, nk * sizeof(float));
    s.be().rope(dq, dk, n_tok, r.swa);
    const std::vector<float> oq = s.get(dq, nq), ok = s.get(dk, nk);
    std::copy(oq.begin(), oq.end(), q);
    std::copy(ok.begin(), ok.end(), k);
}

std::vector<float> attention(const Device & d, const KVLayout & kv, int n_head, const int32_t * pos,
                             const int32_t * slot, int n_tok, const float * q, const float * k, const float * v,
                             uint8_t * k_cache, uint8_t * v_cache, const AttnParams & p) {
    GpuBackendOptions o;
    o.n_batch = n_tok;
    o.n_head = n_head;
    o.n_head_kv = kv.n_head_kv;
    o.head_dim = kv.head_dim;
    o.max_slot_ctx = kv.slot_ctx;
    Session s(d, o);
    Config c;  // no rotation: init_rope only sizes the tables
    c.n_rot = 0;
    s.be().init_rope(c, nullptr);
    s.be().begin_batch(BatchInfo{n_tok, pos, slot});
    const size_t nq = size_t(n_tok) * n_head * kv.head_dim, nk = size_t(n_tok) * kv.n_head_kv * kv.head_dim;
    const float * dq = s.put<float>(q, nq * sizeof(float));
    const float * dk = s.put<float>(k, nk * sizeof(float));
    const float * dv = s.put<float>(v, nk * sizeof(float));
    void * kc = s.put(k_cache, kv.k_bytes());
    void * vc = s.put(v_cache, kv.v_bytes());
    float * out = s.put<float>(nullptr, nq * sizeof(float));
    AttnParams dp = p;  // (the sinks too in the device's memory)
    if (p.sinks) dp.sinks = s.put<float>(p.sinks, sizeof(float) * size_t(n_head));
    s.be().attention(kv, kc, vc, dq, dk, dv, out, n_tok, dp);
    std::vector<float> result = s.get(out, nq);
    s.be().download(k_cache, kc, kv.k_bytes());
    s.be().download(v_cache, vc, kv.v_bytes());
    return result;
}

void hadamard(const Device & d, float * x, int64_t n_rows, int row) {
    GpuBackendOptions o;
    Session s(d, o);
    const size_t n = size_t(n_rows) * row;
    float * dx = s.put<float>(x, n * sizeof(float));
    s.be().hadamard(dx, n_rows, row);
    const std::vector<float> out = s.get(dx, n);
    std::copy(out.begin(), out.end(), x);
}

std::vector<float> get_rows(const Device & d, QType type, const uint8_t * table, int64_t rows, int64_t K,
                            const int32_t * tokens, int n_tok) {
    check_type(type, K);
    GpuBackendOptions o;
    o.n_batch = n_tok;
    o.max_k = int(K);
    Session s(d, o);
    const WeightRef w = weight_on(s, type, table, rows, K, nullptr);
    const int32_t * dt = s.put<int32_t>(tokens, sizeof(int32_t) * size_t(n_tok));
    float * out = s.put<float>(nullptr, sizeof(float) * size_t(n_tok) * K);
    s.be().get_rows(w, dt, n_tok, out);
    return s.get(out, size_t(n_tok) * K);
}

}  // namespace sl::gpucheck
