#include "model/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/vecmath.h"
#include "cpu/matmul.h"
#include "model/config.h"

namespace sl {

namespace {

constexpr int kMaxChunk = 256;        // most weight rows one thread computes at a time
constexpr int kAttnChunk = 16;        // most query tokens of one sequence attended together
constexpr size_t kAttnBudget = 1 << 20;  // floats of attention scores per thread

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Bytes of one row of k activations in the widest format a matmul may take (f32 or 8-bit blocks).
size_t moe_act_row(int64_t k) {
    return std::max(cpu::act_row_bytes(QType::F32, k), cpu::act_row_bytes(QType::Q8_0, round_up(k, 256)));
}

// Weight rows per work item: a few items per thread for load balance, multiples of 16 rows.
int64_t chunk_rows(int64_t total_rows, int n_tok, int nth) {
    if (n_tok > 1) {
        int64_t cs = 64;
        while (cs > 16 && total_rows / cs < 2 * nth) cs /= 2;
        return cs;
    }
    return std::clamp<int64_t>(round_up(total_rows / (int64_t(nth) * 4), 16), 16, kMaxChunk);
}

}  // namespace

void CpuBackendOptions::allow_any_weights() {
    size_t widest = 0;
    for (uint32_t t = 0; t < uint32_t(QType::COUNT); ++t)
        if (qtype_traits(t) && cpu::supports_weight_type(QType(t)) && max_k % qtype_traits(t)->blck_size == 0)
            widest = std::max(widest, cpu::act_row_bytes(QType(t), max_k));
    for (size_t & row : act_slot_row) row = widest;
}

CpuBackend::CpuBackend(const CpuBackendOptions & opt) : opt_(opt), pool_(opt.n_threads) {
    const int nth = pool_.size();
    tmp_.resize(nth);
    for (auto & t : tmp_) t.resize(size_t(2) * kMaxChunk * opt.n_batch);
    const int gqa = opt.n_head / std::max(1, opt.n_head_kv);
    const size_t scores = std::max(kAttnBudget, size_t(gqa) * opt.max_slot_ctx);
    att_.resize(nth);
    for (auto & a : att_) a.resize(scores + size_t(2) * kAttnChunk * gqa * opt.head_dim);
    q_heads_ = opt.n_head;
    kv_heads_ = opt.n_head_kv;
    head_dim_ = opt.head_dim;
    pos_.resize(opt.n_batch);
    slot_.resize(opt.n_batch);
    chunk_start_.resize(opt.n_batch + 1);
    for (int j = 0; j < 3; ++j) acts_[j].resize(size_t(opt.n_batch) * opt.act_slot_row[j]);
    if (opt.moe_ff > 0) {
        moe_qx_.resize(kMoeEntries * moe_act_row(opt.moe_embd));
        moe_qa_.resize(kMoeEntries * moe_act_row(opt.moe_ff));
        moe_act_.resize(size_t(kMoeEntries) * opt.moe_ff);
        moe_out_.resize(size_t(kMoeEntries) * opt.moe_embd);
    }
    size_rope();
}

void CpuBackend::size_rope() {
    const size_t half[2] = {size_t(opt_.n_rot / 2), size_t((opt_.n_rot_swa > 0 ? opt_.n_rot_swa : opt_.n_rot) / 2)};
    for (int k = 0; k < 2; ++k) {
        const size_t n = k == 0 || opt_.rope_swa ? half[k] : 0;
        rope_[k].inv_freq.resize(n);
        rope_[k].cos.resize(size_t(opt_.n_batch) * n);
        rope_[k].sin.resize(size_t(opt_.n_batch) * n);
    }
}

CpuBackend::~CpuBackend() = default;

size_t CpuBackend::scratch_bytes(const CpuBackendOptions & opt) {
    const size_t nth = size_t(std::max(1, opt.n_threads)), nb = size_t(opt.n_batch);
    const size_t gqa = size_t(opt.n_head / std::max(1, opt.n_head_kv));
    const size_t att = std::max(kAttnBudget, gqa * opt.max_slot_ctx) + 2 * kAttnChunk * gqa * opt.head_dim;
    size_t bytes = nth * sizeof(float) * (2 * kMaxChunk * nb + att);
    const int rot_swa = opt.rope_swa ? (opt.n_rot_swa > 0 ? opt.n_rot_swa : opt.n_rot) : 0;
    bytes += sizeof(float) * size_t(opt.n_rot / 2 + rot_swa / 2) * (1 + 2 * nb);  // inverse frequencies, cos, sin
    bytes += nb * (2 * sizeof(int32_t) + sizeof(int64_t)) + sizeof(int64_t);  // batch positions, chunks
    for (size_t row : opt.act_slot_row) bytes += nb * row;
    if (opt.moe_ff > 0)
        bytes += kMoeEntries * (moe_act_row(opt.moe_embd) + moe_act_row(opt.moe_ff) +
                                sizeof(float) * size_t(opt.moe_ff + opt.moe_embd));
    return bytes;
}

size_t CpuBackend::scratch_bytes() const {
    size_t bytes = 0;
    for (const auto & t : tmp_) bytes += t.size() * sizeof(float);
    for (const auto & a : att_) bytes += a.size() * sizeof(float);
    for (const RopeTables & r : rope_) bytes += sizeof(float) * (r.inv_freq.size() + r.cos.size() + r.sin.size());
    bytes += sizeof(int32_t) * (pos_.size() + slot_.size()) + sizeof(int64_t) * chunk_start_.size();
    for (const auto & a : acts_) bytes += a.size();
    bytes += moe_qx_.size() + moe_qa_.size() + sizeof(float) * (moe_act_.size() + moe_out_.size());
    return bytes;
}

void * CpuBackend::alloc(size_t bytes) {
    void * p = std::aligned_alloc(64, round_up(std::max<size_t>(bytes, 64), 64));
    if (!p) throw Error(strfmt("out of host memory allocating %zu bytes", bytes));
    return p;
}

void CpuBackend::free(void * p) { std::free(p); }

void CpuBackend::upload(void * dst, const void * src, size_t n) { std::memcpy(dst, src, n); }

void CpuBackend::download(void * dst, const void * src, size_t n) { std::memcpy(dst, src, n); }

void CpuBackend::memset0(void * dst, size_t n) { std::memset(dst, 0, n); }

void CpuBackend::copy(void * dst, const void * src, size_t n) { std::memmove(dst, src, n); }

void CpuBackend::init_rope(const Config & c, const float * freq_factors) {
    const bool swa = !c.swa_layers.empty();
    // (backends built without the model's rotary shape: tests)
    if (c.n_rot != opt_.n_rot || swa != opt_.rope_swa || c.n_rot_swa != opt_.n_rot_swa) {
        opt_.n_rot = c.n_rot;
        opt_.n_rot_swa = c.n_rot_swa;
        opt_.rope_swa = swa;
        size_rope();
    }
    n_rot_[0] = c.n_rot_of(false);
    n_rot_[1] = c.n_rot_of(true);
    rope_neox_ = c.rope_neox;
    temp_scale_ = c.attn_temp_scale;
    temp_floor_ = c.attn_temp_floor;
    rope_mscale_[0] = double(c.rope_magnitude(false));
    rope_mscale_[1] = double(c.rope_magnitude(true));
    for (int i = 0; i < c.n_rot / 2; ++i)
        rope_[0].inv_freq[i] = float(c.inv_freq(i, false) / (freq_factors ? double(freq_factors[i]) : 1.0));
    for (size_t i = 0; i < rope_[1].inv_freq.size(); ++i) rope_[1].inv_freq[i] = float(c.inv_freq(int(i), true));
}

void CpuBackend::RopeTables::fill(const int32_t * pos, int n_tok, double mscale) {
    const size_t half = inv_freq.size();
    for (int t = 0; t < n_tok; ++t) {
        for (size_t i = 0; i < half; ++i) {
            const double theta = double(pos[t]) * double(inv_freq[i]);
            cos[size_t(t) * half + i] = float(std::cos(theta) * mscale);
            sin[size_t(t) * half + i] = float(std::sin(theta) * mscale);
        }
    }
}

void CpuBackend::begin_batch(const BatchInfo & b) {
    SL_CHECK(b.n_tok >= 1 && b.n_tok <= opt_.n_batch, "batch of %d tokens (n_batch is %d)", b.n_tok, opt_.n_batch);
    n_tok_ = b.n_tok;
    std::copy(b.pos, b.pos + b.n_tok, pos_.begin());
    std::copy(b.slot, b.slot + b.n_tok, slot_.begin());
    for (int k = 0; k < 2; ++k) rope_[k].fill(b.pos, b.n_tok, rope_mscale_[k]);
}

void CpuBackend::rms_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) {
    auto rows = [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float * xr = x + t * n;
            float * yr = y + t * n;
            double ss = 0;
            for (int i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
            const float scale = float(1.0 / std::sqrt(ss / n + double(eps)));
            for (int i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
        }
    };
    if (int64_t(n_tok) * n < (1 << 16))
        rows(0, n_tok);
    else
        pool_.parallel_for(n_tok, rows);
}

void CpuBackend::layer_norm(const float * x, const float * w, float * y, int n_tok, int n, float eps) {
    auto rows = [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float * xr = x + t * n;
            float * yr = y + t * n;
            double sum = 0;
            for (int i = 0; i < n; ++i) sum += xr[i];
            const float mean = float(sum / n);
            double ss = 0;
            for (int i = 0; i < n; ++i) ss += double(xr[i] - mean) * (xr[i] - mean);
            const float scale = float(1.0 / std::sqrt(ss / n + double(eps)));
            for (int i = 0; i < n; ++i) yr[i] = (xr[i] - mean) * scale * w[i];
        }
    };
    if (int64_t(n_tok) * n < (1 << 16))
        rows(0, n_tok);
    else
        pool_.parallel_for(n_tok, rows);
}

int CpuBackend::plan_inputs(const WeightRef * const * w, int n_w, int n_tok, const void ** acts,
                            const WeightRef ** firsts) {
    // Distinct activation formats among the matrices: each is converted once.
    QType seen[3];
    int n_seen = 0;
    for (int i = 0; i < n_w; ++i) {
        const QType at = cpu::act_type(w[i]->type);
        int j = 0;
        while (j < n_seen && seen[j] != at) ++j;
        if (j == n_seen) {
            SL_CHECK(n_seen < 3, "more than three activation formats in one matmul");
            const size_t need = size_t(n_tok) * cpu::act_row_bytes(w[i]->type, w[i]->K);
            SL_CHECK(need <= acts_[j].size(), "internal: activation buffer %d holds %zu bytes, %zu needed", j,
                     acts_[j].size(), need);
            seen[n_seen] = at;
            firsts[n_seen++] = w[i];
        }
        acts[i] = acts_[j].data();
    }
    return n_seen;
}

void CpuBackend::quantize_inputs(const WeightRef * const * firsts, int n_formats, const float * x, int n_tok,
                                 int ith, int nth) {
    const int64_t per = (n_tok + nth - 1) / nth;
    const int64_t t0 = std::min<int64_t>(per * ith, n_tok);
    const int64_t t1 = std::min<int64_t>(t0 + per, n_tok);
    if (t0 >= t1) return;
    for (int j = 0; j < n_formats; ++j)
        cpu::quantize_acts(firsts[j]->type, x, firsts[j]->K, firsts[j]->K, t0, t1, acts_[j].data());
}

void CpuBackend::matmul(const WeightRef * const * w, float * const * y, int n_w, const float * x, int n_tok,
                        bool accumulate) {
    SL_CHECK(n_w >= 1 && n_w <= 3, "matmul of %d matrices", n_w);
    const void * acts[3];
    const WeightRef * firsts[3];
    const int n_formats = plan_inputs(w, n_w, n_tok, acts, firsts);

    // Work items: chunks of rows of each matrix, numbered matrix by matrix.
    int64_t total_rows = 0;
    for (int i = 0; i < n_w; ++i) total_rows += w[i]->rows;
    const int64_t cs = chunk_rows(total_rows, n_tok, pool_.size());
    int64_t first_chunk[4] = {0, 0, 0, 0};
    for (int i = 0; i < n_w; ++i) first_chunk[i + 1] = first_chunk[i] + (w[i]->rows + cs - 1) / cs;
    const int64_t n_chunks = first_chunk[n_w];
    next_chunk_.store(pool_.size(), std::memory_order_relaxed);

    pool_.run([&](int ith, int nth) {
        quantize_inputs(firsts, n_formats, x, n_tok, ith, nth);
        pool_.barrier();
        float * tmp = tmp_[ith].data();
        for (int64_t c = ith; c < n_chunks; c = next_chunk_.fetch_add(1, std::memory_order_relaxed)) {
            int i = 0;
            while (c >= first_chunk[i + 1]) ++i;
            const WeightRef & m = *w[i];
            const int64_t r0 = (c - first_chunk[i]) * cs;
            const int64_t r1 = std::min(r0 + cs, m.rows);
            const int64_t nr = r1 - r0;
            float * out = y[i];
            if (!accumulate && !m.bias) {
                cpu::gemm(m.type, m.data, m.K, r0, r1, acts[i], n_tok, out, m.rows);
                continue;
            }
            const uint8_t * rows = static_cast<const uint8_t *>(m.data) + size_t(r0) * row_size(m.type, m.K);
            cpu::gemm(m.type, rows, m.K, 0, nr, acts[i], n_tok, tmp, nr);
            for (int t = 0; t < n_tok; ++t) {
                float * dst = out + int64_t(t) * m.rows + r0;
                const float * src = tmp + int64_t(t) * nr;
                if (m.bias) {
                    const float * b = m.bias + r0;
                    if (accumulate)
                        for (int64_t r = 0; r < nr; ++r) dst[r] += src[r] + b[r];
                    else
                        for (int64_t r = 0; r < nr; ++r) dst[r] = src[r] + b[r];
                } else {
                    for (int64_t r = 0; r < nr; ++r) dst[r] += src[r];
                }
            }
        }
    });
}

void CpuBackend::add(float * y, const float * x, int64_t n, float scale) {
    auto range = [&](int64_t i0, int64_t i1) {
        if (scale == 1.0f)
            for (int64_t i = i0; i < i1; ++i) y[i] += x[i];
        else
            for (int64_t i = i0; i < i1; ++i) y[i] += scale * x[i];
    };
    if (n < (1 << 16))
        range(0, n);
    else
        pool_.parallel_for(n, range);
}

void CpuBackend::act_mul(Glu f, float * g, const float * u, int64_t n) {
    auto range = [&](int64_t i0, int64_t i1) { glu_mul(f, g + i0, u + i0, g + i0, size_t(i1 - i0)); };
    if (n < (1 << 14))
        range(0, n);
    else
        pool_.parallel_for(n, range);
}

void CpuBackend::glu(Glu f, const WeightRef & gate, const WeightRef & up, const float * x, float * act, int n_tok) {
    SL_CHECK(gate.rows == up.rows && gate.K == up.K, "gate and up projections differ in shape");
    const WeightRef * w[2] = {&gate, &up};
    const void * acts[2];
    const WeightRef * firsts[2];
    const int n_formats = plan_inputs(w, 2, n_tok, acts, firsts);
    const int64_t n_ff = gate.rows;
    const int64_t cs = chunk_rows(n_ff, n_tok, pool_.size());
    const int64_t n_chunks = (n_ff + cs - 1) / cs;
    const size_t gate_row = row_size(gate.type, gate.K), up_row = row_size(up.type, up.K);
    next_chunk_.store(pool_.size(), std::memory_order_relaxed);

    pool_.run([&](int ith, int nth) {
        quantize_inputs(firsts, n_formats, x, n_tok, ith, nth);
        pool_.barrier();
        float * g = tmp_[ith].data();
        float * u = g + size_t(kMaxChunk) * opt_.n_batch;
        for (int64_t c = ith; c < n_chunks; c = next_chunk_.fetch_add(1, std::memory_order_relaxed)) {
            const int64_t r0 = c * cs, r1 = std::min(r0 + cs, n_ff), nr = r1 - r0;
            cpu::gemm(gate.type, static_cast<const uint8_t *>(gate.data) + r0 * gate_row, gate.K, 0, nr, acts[0],
                      n_tok, g, nr);
            cpu::gemm(up.type, static_cast<const uint8_t *>(up.data) + r0 * up_row, up.K, 0, nr, acts[1], n_tok, u,
                      nr);
            for (int t = 0; t < n_tok; ++t) {
                float * dst = act + int64_t(t) * n_ff + r0;
                float * gt = g + int64_t(t) * nr;
                float * ut = u + int64_t(t) * nr;
                if (gate.bias) vec::add_to(gt, gate.bias + r0, size_t(nr));
                if (up.bias) vec::add_to(ut, up.bias + r0, size_t(nr));
                glu_mul(f, gt, ut, dst, size_t(nr));
            }
        }
    });
}

void CpuBackend::rope(float * q, float * k, int n_tok, bool swa) {
    rope_heads(q, k, n_tok, swa, q_heads_, kv_heads_, head_dim_);
}

void CpuBackend::rope_heads(float * q, float * k, int n_tok, bool swa, int n_q, int n_kv, int hd) {
    const int kind = swa && !rope_[1].inv_freq.empty() ? 1 : 0;
    const RopeTables & tab = rope_[kind];
    const int half = n_rot_[kind] / 2;
    auto rotate = [&](float * head, const float * c, const float * s) {
        if (rope_neox_) {
            for (int i = 0; i < half; ++i) {
                const float x0 = head[i], x1 = head[i + half];
                head[i] = x0 * c[i] - x1 * s[i];
                head[i + half] = x0 * s[i] + x1 * c[i];
            }
        } else {
            for (int i = 0; i < half; ++i) {
                const float x0 = head[2 * i], x1 = head[2 * i + 1];
                head[2 * i] = x0 * c[i] - x1 * s[i];
                head[2 * i + 1] = x0 * s[i] + x1 * c[i];
            }
        }
    };
    auto rows = [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float * c = tab.cos.data() + t * half;
            const float * s = tab.sin.data() + t * half;
            for (int h = 0; h < n_q; ++h) rotate(q + (t * n_q + h) * hd, c, s);
            for (int h = 0; k && h < n_kv; ++h) rotate(k + (t * n_kv + h) * hd, c, s);
            if (temp_scale_ != 0.0f) {  // mistral3's attention temperature
                const float m = attn_temperature(pos_[size_t(t)], temp_scale_, temp_floor_);
                for (float * x = q + t * n_q * hd; x < q + (t + 1) * n_q * hd; ++x) *x *= m;
            }
        }
    };
    if (n_tok < 16)
        rows(0, n_tok);
    else
        pool_.parallel_for(n_tok, rows);
}

void CpuBackend::hadamard(float * x, int64_t n_rows, int row) {
    const int n = hadamard_block(row);
    const float scale = 1.0f / std::sqrt(float(n));
    auto rows = [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            for (float * b = x + r * row; b < x + (r + 1) * row; b += n) {
                // Fast Walsh-Hadamard transform: log2(n) rounds of butterflies.
                for (int len = 1; len < n; len *= 2)
                    for (int i = 0; i < n; i += 2 * len)
                        for (int j = i; j < i + len; ++j) {
                            const float u = b[j], v = b[j + len];
                            b[j] = u + v;
                            b[j + len] = u - v;
                        }
                for (int j = 0; j < n; ++j) b[j] *= scale;
            }
        }
    };
    if (n_rows < 64)
        rows(0, n_rows);
    else
        pool_.parallel_for(n_rows, rows);
}

void CpuBackend::get_rows(const WeightRef & table, const int32_t * tokens, int n_tok, float * out) {
    const QTypeTraits * tr = qtype_traits(table.type);
    SL_CHECK(tr && (tr->to_float || table.type == QType::F32), "cannot read embedding rows of type %s",
             tr ? tr->name : "?");
    const size_t rb = row_size(table.type, table.K);
    for (int i = 0; i < n_tok; ++i) {
        SL_CHECK(tokens[i] >= 0 && tokens[i] < table.rows, "token id %d out of range [0, %lld)", tokens[i],
                 (long long)table.rows);
        const uint8_t * row = static_cast<const uint8_t *>(table.data) + size_t(tokens[i]) * rb;
        if (table.type == QType::F32)
            std::memcpy(out + int64_t(i) * table.K, row, rb);
        else
            tr->to_float(row, out + int64_t(i) * table.K, table.K);
    }
}

void CpuBackend::attention(const KVLayout & kv, void * k_cache, void * v_cache, const float * q, const float * k,
                           const float * v, float * out, int n_tok, const AttnParams & p) {
    // keys (and queries) of hd values a head, values (and outputs) of hv; a layer of its own shape
    // (p.n_head set: gemma4) has the head size of its cache
    const int n_q_h = p.n_head > 0 ? p.n_head : q_heads_;
    const int hd = p.n_head > 0 ? kv.head_dim : head_dim_, hv = kv.v_dim(), n_kv_h = kv.n_head_kv,
              gqa = n_q_h / n_kv_h;
    SL_CHECK(hd == kv.head_dim && hv <= hd, "internal: KV head sizes %d / %d for a backend of %d", kv.head_dim, hv, hd);
    const int64_t q_dim = int64_t(n_q_h) * hd, kv_dim = int64_t(n_kv_h) * hd;
    const int64_t out_dim = int64_t(n_q_h) * hv, v_dim = int64_t(n_kv_h) * hv;
    const size_t k_row = kv.k_row(), v_row = kv.v_in_k ? k_row : kv.v_row();  // (a value inside its key row)
    const size_t head_k = k_row * kv.slot_ctx, head_v = v_row * kv.slot_ctx;
    const QType type_v = kv.v_in_k ? kv.type_k : kv.type_v;
    uint8_t * kc = static_cast<uint8_t *>(k_cache);
    uint8_t * vc = static_cast<uint8_t *>(v_cache);
    for (int t = 0; t < n_tok; ++t)
        SL_CHECK(slot_[t] >= 0 && slot_[t] < kv.n_slots && kv.holds(pos_[t]),
                 "token %d: slot %d / position %d outside the KV cache (%d slots of %d cells)", t, slot_[t],
                 pos_[t], kv.n_slots, kv.slot_ctx);
    check_ring_batch(kv, p, pos_.data(), slot_.data(), n_tok);

    // Query chunks: runs of consecutive tokens of one sequence (a prompt), at most kAttnChunk long
    // and small enough for the per-thread score buffer.
    SL_CHECK(kv.slot_ctx <= opt_.max_slot_ctx, "KV slot of %d cells exceeds the attention scratch (%d)",
             kv.slot_ctx, opt_.max_slot_ctx);
    const size_t staging = size_t(kAttnChunk) * gqa * (hd + hv);
    const int max_chunk =
        int(std::clamp<size_t>((att_[0].size() - staging) / (size_t(gqa) * kv.slot_ctx), 1, kAttnChunk));
    int64_t * chunk_start = chunk_start_.data();
    int n_chunks = 0;
    for (int t = 0; t < n_tok;) {
        int e = t + 1;
        while (e < n_tok && e - t < max_chunk && slot_[e] == slot_[t] && pos_[e] > pos_[e - 1]) ++e;
        chunk_start[n_chunks++] = t;
        t = e;
    }
    chunk_start[n_chunks] = n_tok;
    const int64_t n_tasks = int64_t(n_chunks) * n_kv_h;
    const float scale = p.scale > 0 ? p.scale : 1.0f / std::sqrt(float(hd));
    const float cap = p.softcap;
    // Query token t sees cells [lo(t), pos_t]: everything, the last `window` positions, or its chunk.
    auto first_seen = [&](int t) {
        if (p.chunked) return pos_[t] - pos_[t] % p.window;  // (llama4: the query's chunk)
        return p.window > 0 ? std::max(0, pos_[t] - p.window + 1) : 0;
    };
    next_chunk_.store(pool_.size(), std::memory_order_relaxed);

    pool_.run([&](int ith, int nth) {
        // 1. Append this batch's keys and values to the cache.
        for (int64_t r = ith; k && r < int64_t(n_tok) * n_kv_h; r += nth) {
            const int t = int(r / n_kv_h), h = int(r % n_kv_h);
            const size_t cell = (size_t(slot_[t]) * n_kv_h + h) * kv.slot_ctx + kv.cell(pos_[t]);
            cpu::store_kv(kv.type_k, k + t * kv_dim + h * hd, hd, 1, hd, kc + cell * k_row, k_row);
            if (!kv.v_in_k) cpu::store_kv(kv.type_v, v + t * v_dim + h * hv, hv, 1, hv, vc + cell * v_row, v_row);
        }
        pool_.barrier();
        // 2. Each task: one chunk of query tokens x one KV head (its gqa query heads).
        float * S = att_[ith].data();
        for (int64_t task = ith; task < n_tasks; task = next_chunk_.fetch_add(1, std::memory_order_relaxed)) {
            const int c = int(task / n_kv_h), h = int(task % n_kv_h);
            const int t0 = int(chunk_start[c]), t1 = int(chunk_start[c + 1]);
            const int nq = (t1 - t0) * gqa;
            // The chunk's cells: [lo, n_kv) (positions increase along a chunk)
            const int lo = first_seen(t0), n_kv = pos_[t1 - 1] + 1 - lo;
            float * qs = S + size_t(nq) * n_kv;
            float * os = qs + size_t(nq) * hd;
            for (int t = t0; t < t1; ++t)
                std::memcpy(qs + size_t(t - t0) * gqa * hd, q + t * q_dim + int64_t(h) * gqa * hd,
                            sizeof(float) * gqa * hd);
            const size_t head = size_t(slot_[t0]) * n_kv_h + h;
            // Cells of positions [lo, lo + n_kv): one run, or two where a ring wraps around.
            const int c0 = kv.cell(lo), run0 = std::min(n_kv, kv.slot_ctx - c0);
            const uint8_t * kh = kc + head * head_k;
            cpu::attn_scores(kv.type_k, qs, hd, nq, kh + size_t(c0) * k_row, k_row, run0, hd, scale, S, n_kv);
            if (run0 < n_kv)
                cpu::attn_scores(kv.type_k, qs, hd, nq, kh, k_row, n_kv - run0, hd, scale, S + run0, n_kv);
            // Causal softmax over the cells each query token sees (and the head's sink, which takes
            // part in the sum but adds no value).
            for (int i = 0; i < nq; ++i) {
                float * row = S + size_t(i) * n_kv;
                const int t = t0 + i / gqa;
                const int first = first_seen(t) - lo, end = pos_[t] + 1 - lo;
                if (cap > 0)
                    for (int j = first; j < end; ++j) row[j] = cap * std::tanh(row[j] / cap);
                float mx = vec::max_value(row + first, size_t(end - first));
                const float sink = p.sinks ? p.sinks[h * gqa + i % gqa] : 0.0f;
                if (p.sinks) mx = std::max(mx, sink);
                double sum = vec::sum_exp(row + first, row + first, size_t(end - first), mx, 1.0f);
                if (p.sinks) sum += std::exp(double(sink) - double(mx));
                const float inv = float(1.0 / sum);
                for (int j = 0; j < first; ++j) row[j] = 0;
                for (int j = first; j < end; ++j) row[j] *= inv;
                for (int j = end; j < n_kv; ++j) row[j] = 0;
            }
            std::memset(os, 0, sizeof(float) * nq * hv);
            const uint8_t * vh = kv.v_in_k ? kh + kv.v_offset() : vc + head * head_v;
            cpu::attn_values(type_v, S, n_kv, nq, vh + size_t(c0) * v_row, v_row, run0, hv, os, hv);
            if (run0 < n_kv) cpu::attn_values(type_v, S + run0, n_kv, nq, vh, v_row, n_kv - run0, hv, os, hv);
            for (int t = t0; t < t1; ++t)
                std::memcpy(out + t * out_dim + int64_t(h) * gqa * hv, os + size_t(t - t0) * gqa * hv,
                            sizeof(float) * gqa * hv);
        }
    });
}

}  // namespace sl
