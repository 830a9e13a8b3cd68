#include "model/op_offload.h"

#include "common/error.h"
#include "model/cpu_backend.h"

namespace sl {

namespace {

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

OpOffload::OpOffload(CpuBackend & cpu, Backend & gpu, const OpOffloadBuffers & buf) : cpu_(cpu), gpu_(gpu), buf_(buf) {}

std::string OpOffload::name() const { return cpu_.name() + "+" + gpu_.name(); }

void * OpOffload::alloc(size_t bytes) { return cpu_.alloc(bytes); }
void OpOffload::free(void * p) { cpu_.free(p); }
void OpOffload::upload(void * dst, const void * src, size_t n) { cpu_.upload(dst, src, n); }
void OpOffload::download(void * dst, const void * src, size_t n) { cpu_.download(dst, src, n); }
void OpOffload::memset0(void * dst, size_t n) { cpu_.memset0(dst, n); }
void OpOffload::copy(void * dst, const void * src, size_t n) { cpu_.copy(dst, src, n); }
void OpOffload::synchronize() { cpu_.synchronize(); }
void OpOffload::begin_batch(const BatchInfo & b) { cpu_.begin_batch(b); }
void OpOffload::rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) {
    cpu_.rms_norm(x, w, y, n_tok, n, eps);
}
void OpOffload::layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) {
    cpu_.layer_norm(x, w, y, n_tok, n, eps);
}
void OpOffload::add(float * y, const float * x, int64_t n, float scale) { cpu_.add(y, x, n, scale); }
void OpOffload::act_mul(Glu f, float * g, const float * u, int64_t n) { cpu_.act_mul(f, g, u, n); }
void OpOffload::rope(float * q, float * k, int n_tok, bool swa) { cpu_.rope(q, k, n_tok, swa); }
void OpOffload::attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                          const float * v, float * out, int n_tok, const AttnParams & p) {
    cpu_.attention(kv, k_cache, v_cache, q, k, v, out, n_tok, p);
}
void OpOffload::hadamard(float * x, int64_t n_rows, int row) { cpu_.hadamard(x, n_rows, row); }
void OpOffload::get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) {
    cpu_.get_rows(table, tokens, n_tok, out);
}
void OpOffload::init_rope(const Config & c, const float * freq_factors) { cpu_.init_rope(c, freq_factors); }

size_t OpOffload::staging_bytes(const WeightRef * const * w, int n_w) {
    size_t n = 0;
    for (int i = 0; i < n_w; ++i) {
        n += align256(w[i]->nbytes());
        if (w[i]->bias) n += align256(sizeof(float) * size_t(w[i]->rows));
    }
    return n;
}

bool OpOffload::stage(const WeightRef * const * w, int n_w, WeightRef * dev) {
    if (staging_bytes(w, n_w) > buf_.weight_bytes) return false;
    auto * at = static_cast<uint8_t *>(buf_.weights);
    for (int i = 0; i < n_w; ++i) {
        dev[i] = *w[i];
        gpu_.upload(at, w[i]->data, w[i]->nbytes());
        dev[i].data = at;
        at += align256(w[i]->nbytes());
        if (w[i]->bias) {
            gpu_.upload(at, w[i]->bias, sizeof(float) * size_t(w[i]->rows));
            dev[i].bias = reinterpret_cast<const float *>(at);
            at += align256(sizeof(float) * size_t(w[i]->rows));
        }
    }
    return true;
}

void OpOffload::matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                       bool accumulate) {
    SL_CHECK(n_w >= 1 && n_w <= 3, "matmul of %d matrices", n_w);
    size_t y_need = 0;
    for (int i = 0; i < n_w; ++i) y_need += size_t(n_tok) * w[i]->rows;
    WeightRef dev[3];
    if (y_need > buf_.y_floats || size_t(n_tok) * w[0]->K > buf_.x_floats || !stage(w, n_w, dev)) {
        cpu_.matmul(w, y, n_w, x, n_tok, accumulate);
        return;
    }
    const WeightRef * dw[3] = {&dev[0], &dev[1], &dev[2]};
    float * dy[3];
    float * at = buf_.y;
    for (int i = 0; i < n_w; ++i) {
        dy[i] = at;
        at += size_t(n_tok) * w[i]->rows;
        if (accumulate) gpu_.upload(dy[i], y[i], sizeof(float) * size_t(n_tok) * w[i]->rows);
    }
    gpu_.upload(buf_.x, x, sizeof(float) * size_t(n_tok) * w[0]->K);
    gpu_.matmul(dw, dy, n_w, buf_.x, n_tok, accumulate);
    for (int i = 0; i < n_w; ++i) gpu_.download(y[i], dy[i], sizeof(float) * size_t(n_tok) * w[i]->rows);
}

void OpOffload::glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act, int n_tok) {
    const WeightRef * w[2] = {&gate, &up};
    WeightRef dev[2];
    if (!gpu_glu_supported(f, gate, up) || size_t(n_tok) * gate.rows > buf_.y_floats || size_t(n_tok) * gate.K > buf_.x_floats ||
        !stage(w, 2, dev)) {
        cpu_.glu(f, gate, up, x, act, n_tok);
        return;
    }
    gpu_.upload(buf_.x, x, sizeof(float) * size_t(n_tok) * gate.K);
    gpu_.glu(f, dev[0], dev[1], buf_.x, buf_.y, n_tok);
    gpu_.download(act, buf_.y, sizeof(float) * size_t(n_tok) * gate.rows);
}

}  // namespace sl
