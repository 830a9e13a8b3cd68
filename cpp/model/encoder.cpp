// The forward pass of an encoder (bert, nomic-bert, gemma-embedding): the embeddings of whole
// texts, every token attending to the tokens of its text, on the CPU. As llama.cpp's graphs:
// bert / nomic-bert: x = LayerNorm(token + position (bert) + token type 0 embeddings); per layer
// x = LayerNorm(x + W_o attn(x) + b_o) (nomic-bert rotates queries and keys), then
// x = LayerNorm(x + ffn(x)), ffn = W_down gelu(W_up x + b_up) + b_down (bert; exact GELU) or
// W_down (silu(W_gate x) * W_up x) (nomic-bert); the output is x (no output norm).
// gemma-embedding: gemma3's decoder layers (forward.cpp) without the causal mask, the sliding-window
// layers' queries seeing the keys within n_swa / 2 positions either side; the output is
// rmsnorm(x) (the pooling and the dense projections are the Python side's).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/vecmath.h"
#include "cpu/matmul.h"
#include "gguf/gguf.h"
#include "model/cpu_backend.h"
#include "model/model.h"

namespace sl {

namespace {

// y = (x - mean(x)) / sqrt(var(x) + eps) * w + b per row of n; y may be x.
void layer_norm(ThreadPool & pool, const float * x, const float * w, const float * b, float * y, int n_tok, int n,
                float eps) {
    pool.parallel_for(n_tok, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float * xr = x + t * n;
            float * yr = y + t * n;
            double mean = 0.0, var = 0.0;
            for (int i = 0; i < n; ++i) mean += xr[i];
            mean /= n;
            for (int i = 0; i < n; ++i) var += (xr[i] - mean) * (xr[i] - mean);
            const float inv = float(1.0 / std::sqrt(var / n + eps)), m = float(mean);
            for (int i = 0; i < n; ++i) yr[i] = (xr[i] - m) * inv * w[i] + b[i];
        }
    });
}

// Per-thread buffers of text_attention, carved from one vector.
struct AttnWork {
    float * k;   // (len, hd) the text's keys of the head
    float * vt;  // (hd, len) its values, transposed
    float * vw;  // (hd, keys) a window's columns of vt (windowed attention only)
    float * q;   // (tile, act row of hd) a tile of queries, as the CPU kernels' activation rows
    float * p;   // (tile, act row of len) their scores, then probabilities
    float * o;   // (tile, hd) their outputs

    static constexpr int kTile = 128;  // queries per pass (the many-token kernels need >= 10)
    static size_t floats(int64_t n_batch, int hd, bool windowed) {
        return size_t((windowed ? 3 : 2) * n_batch * hd) + size_t(kTile) * (cpu::act_row_bytes(QType::F32, hd) / 4) +
               size_t(kTile) * (cpu::act_row_bytes(QType::F32, n_batch) / 4) + size_t(kTile * hd);
    }
    AttnWork(float * base, int64_t n_batch, int hd, bool windowed)
        : k(base), vt(k + n_batch * hd), vw(vt + n_batch * hd), q(vw + (windowed ? n_batch * hd : 0)),
          p(q + size_t(kTile) * (cpu::act_row_bytes(QType::F32, hd) / 4)),
          o(p + size_t(kTile) * (cpu::act_row_bytes(QType::F32, n_batch) / 4)) {}
};

// One head's attention over one text, whose tokens are text[0, len) at positions 0, 1, ...: for
// every query token t, att[t] = softmax_j(scale q[t] . k[j]) v[j] over the text's tokens j (with
// half_window >= 0, those with |t - j| <= half_window only), as two matrix products on the CPU
// kernels (scores = K q for a tile of queries, over the keys any of them sees, then V^T p),
// float32 throughout. q, k, v, att: the head's first column in rows of q_stride / kv_stride /
// q_stride floats.
// Only the queries of tiles [tile0, tile1) (of AttnWork::kTile tokens) are computed: a long text's
// tiles can go to different threads.
void text_attention(const float * q, const float * k, const float * v, int64_t q_stride, int64_t kv_stride,
                    const int32_t * text, int len, int hd, float scale, int half_window, int tile0, int tile1,
                    const AttnWork & w, float * att) {
    for (int j = 0; j < len; ++j) {
        const float * kj = k + text[j] * kv_stride;
        const float * vj = v + text[j] * kv_stride;
        std::memcpy(w.k + int64_t(j) * hd, kj, size_t(hd) * sizeof(float));
        for (int d = 0; d < hd; ++d) w.vt[int64_t(d) * len + j] = vj[d];
    }
    const int64_t q_row = int64_t(cpu::act_row_bytes(QType::F32, hd) / 4);
    const int reach = half_window < 0 ? len : half_window;  // how far a query sees either way
    for (int t0 = tile0 * AttnWork::kTile; t0 < std::min(len, tile1 * AttnWork::kTile); t0 += AttnWork::kTile) {
        const int nt = std::min(AttnWork::kTile, len - t0);
        const int j0 = std::max(0, t0 - reach), j1 = std::min(len, t0 + nt + reach);  // the tile's keys
        const int nj = j1 - j0;
        const int64_t p_row = int64_t(cpu::act_row_bytes(QType::F32, nj) / 4);
        const float * vt = w.vt;  // (hd, nj) the values of those keys, transposed
        if (nj < len) {
            for (int d = 0; d < hd; ++d)
                std::memcpy(w.vw + int64_t(d) * nj, w.vt + int64_t(d) * len + j0, size_t(nj) * sizeof(float));
            vt = w.vw;
        }
        for (int i = 0; i < nt; ++i)
            std::memcpy(w.q + i * q_row, q + text[t0 + i] * q_stride, size_t(hd) * sizeof(float));
        cpu::gemm(QType::F32, w.k + int64_t(j0) * hd, hd, 0, nj, w.q, nt, w.p, p_row);
        for (int i = 0; i < nt; ++i) {  // softmax over the keys query t0 + i sees, zero elsewhere
            float * row = w.p + i * p_row;
            const int lo = std::max(j0, t0 + i - reach) - j0, hi = std::min(j1, t0 + i + reach + 1) - j0;
            const float mx = vec::max_value(row + lo, size_t(hi - lo));
            const float inv = float(1.0 / vec::sum_exp(row + lo, row + lo, size_t(hi - lo), mx, scale));
            for (int j = lo; j < hi; ++j) row[j] *= inv;
            std::fill(row, row + lo, 0.0f);
            std::fill(row + hi, row + nj, 0.0f);
        }
        cpu::gemm(QType::F32, vt, nj, 0, hd, w.p, nt, w.o, hd);
        for (int i = 0; i < nt; ++i)
            std::memcpy(att + text[t0 + i] * q_stride, w.o + int64_t(i) * hd, size_t(hd) * sizeof(float));
    }
}

}  // namespace

size_t encoder_attention_floats(int64_t n_batch, int head_dim, bool windowed) {
    return AttnWork::floats(n_batch, head_dim, windowed);
}

void Model::check_encoder_batch(const int32_t * pos, const int32_t * slot, int n, bool embeddings,
                                bool classify) const {
    const Config & c = cfg_;
    SL_CHECK(embeddings, "%s: a %s model is an encoder: it computes embeddings (embed / create_embedding, "
             "loaded with embedding=True), not logits", file_->path().c_str(), c.arch_name.c_str());
    SL_CHECK(!classify || w_.cls_out.rows > 0, "%s: the model has no classification head (cls.output.weight): "
             "it is not a reranker", file_->path().c_str());
    SL_CHECK(n <= params_.n_batch, "an encoder reads each text in one batch: %d tokens exceed n_batch = %d", n,
             params_.n_batch);
    // Slots only tell the texts of a batch apart (there is no cache): any of [0, encoder_slots()).
    const int n_slots = encoder_slots();
    std::vector<int> next(size_t(n_slots), 0);
    for (int i = 0; i < n; ++i) {
        SL_CHECK(slot[i] >= 0 && slot[i] < n_slots, "token %d: sequence %d outside [0, %d)", i, slot[i], n_slots);
        SL_CHECK(pos[i] < params_.n_ctx, "token %d: position %d is outside the context of %d tokens (n_ctx)", i,
                 pos[i], params_.n_ctx);
        int & want = next[size_t(slot[i])];
        SL_CHECK(pos[i] == want, "token %d: position %d in sequence slot %d, expected %d: an encoder reads a text "
                 "whole, at positions 0, 1, ... in one call", i, pos[i], slot[i], want);
        SL_CHECK(!c.learned_pos || pos[i] < c.n_ctx_train, "token %d: position %d is past the %d positions the "
                 "model has embeddings for (%s.context_length)", i, pos[i], c.n_ctx_train, c.arch_name.c_str());
        ++want;
    }
}

void Model::forward_encoder(const int32_t * tokens, const int32_t * pos, const int32_t * slot, const uint8_t * want,
                            int n, float * out, bool classify) {
    const Config & c = cfg_;
    CpuBackend & be = *cpu_;
    Scratch & s = scratch(&be);
    const int64_t D = c.n_embd;

    be.begin_batch(BatchInfo{n, pos, slot});
    be.get_rows(w_.tok_embd, tokens, n, s.x);
    if (c.embd_scale != 1.0f)  // gemma: sqrt(n_embd)
        for (float * x = s.x; x < s.x + n * D; ++x) *x *= c.embd_scale;
    if (c.learned_pos) {
        be.get_rows(w_.pos_embd, pos, n, s.h);
        be.add(s.x, s.h, n * D, 1.0f);
    }
    if (!w_.type_row.empty())
        for (int t = 0; t < n; ++t) be.add(s.x + t * D, w_.type_row.data(), D, 1.0f);
    if (w_.embd_norm) layer_norm(be.pool(), s.x, w_.embd_norm, w_.embd_norm_b, s.x, n, c.n_embd, c.rms_eps);

    // The texts of the batch: the tokens grouped by slot, in order (a counting sort; buffers sized
    // at load).
    std::vector<int32_t> & start = enc_start_;
    std::fill(start.begin(), start.end(), 0);
    for (int t = 0; t < n; ++t) ++start[size_t(slot[t]) + 1];
    for (size_t i = 1; i < start.size(); ++i) start[i] += start[i - 1];
    for (int t = 0; t < n; ++t) enc_order_[size_t(start[size_t(slot[t])]++)] = t;  // starts become ends
    for (size_t i = start.size() - 1; i > 0; --i) start[i] = start[i - 1];
    start[0] = 0;
    enc_texts_.clear();
    for (size_t sl = 0; sl + 1 < start.size(); ++sl)
        if (start[sl + 1] > start[sl]) enc_texts_.push_back(int32_t(sl));

    for (int l = 0; l < c.n_layer; ++l) {
        if (c.post_norms)
            encoder_gemma_layer(l, s, n);
        else
            encoder_bert_layer(l, s, n);
    }
    if (w_.output_norm) be.rms_norm(s.x, w_.output_norm, s.x, n, c.n_embd, c.rms_eps);  // gemma-embedding

    int n_out = 0;
    float * rows = classify ? s.h : out;  // a head's input, gathered
    for (int t = 0; t < n && rows; ++t)
        if (!want || want[t]) std::memcpy(rows + int64_t(n_out++) * D, s.x + t * D, sizeof(float) * size_t(D));
    if (classify && n_out > 0 && out) classify_rows(s.h, n_out, out);  // (s.x is free now)
    n_eval_ += n;
    ++n_forward_;
}

void Model::encoder_attention(Scratch & s, int half_window) {
    // att[t, head] = softmax_j(scale q[t, head] . k[j, head / gqa]) v[j, head / gqa] over the
    // tokens j of t's text (within half_window of t, if >= 0). A task: one head of one text, for
    // a run of tiles of queries (a long text is split so that a model with few heads still keeps
    // every thread busy; each task gathers the text's keys and values again, a small cost).
    const Config & c = cfg_;
    const int hd = c.head_dim, gqa = c.n_gqa();
    const int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim();
    const float scale = c.attn_scale > 0 ? c.attn_scale : 1.0f / std::sqrt(float(hd));
    const std::vector<int32_t> & start = enc_start_;
    const int nth_all = cpu_->pool().size();
    // Tiles per task: as many as keep the tasks at about two per thread, at least one.
    int64_t n_tiles = 0;
    for (int32_t sl : enc_texts_)
        n_tiles += (start[size_t(sl) + 1] - start[size_t(sl)] + AttnWork::kTile - 1) / AttnWork::kTile;
    const int64_t per_task = std::max<int64_t>(1, n_tiles * c.n_head / (2 * int64_t(nth_all)));
    enc_tasks_.clear();  // (text index, first tile, end tile), heads expanded below
    for (size_t i = 0; i < enc_texts_.size(); ++i) {
        const int32_t sl = enc_texts_[i];
        const int tiles = (start[size_t(sl) + 1] - start[size_t(sl)] + AttnWork::kTile - 1) / AttnWork::kTile;
        for (int t = 0; t < tiles; t += int(per_task))
            enc_tasks_.push_back({int32_t(i), t, int(std::min<int64_t>(tiles, t + per_task))});
    }
    cpu_->pool().run([&](int ith, int nth) {
        const AttnWork w(enc_work_.data() + size_t(ith) * enc_work_floats_, params_.n_batch, hd, c.n_swa > 0);
        const int64_t tasks = int64_t(enc_tasks_.size()) * c.n_head;
        for (int64_t u = ith; u < tasks; u += nth) {
            const EncTask & task = enc_tasks_[size_t(u / c.n_head)];
            const int32_t sl = enc_texts_[size_t(task.text)];
            const int head = int(u % c.n_head);
            const int64_t kv_off = int64_t(head / gqa) * hd, q_off = int64_t(head) * hd;
            const int32_t * text = enc_order_.data() + start[size_t(sl)];
            text_attention(s.q + q_off, s.k + kv_off, s.v + kv_off, q_dim, kv_dim, text,
                           start[size_t(sl) + 1] - start[size_t(sl)], hd, scale, half_window, task.tile0,
                           task.tile1, w, s.att + q_off);
        }
    });
}

void Model::encoder_bert_layer(int l, Scratch & s, int n) {
    const Config & c = cfg_;
    CpuBackend & be = *cpu_;
    ThreadPool & pool = be.pool();
    const LayerWeights & L = w_.layers[l];
    const WeightRef * qkv[3] = {&L.wq, &L.wk, &L.wv};
    float * qkv_out[3] = {s.q, s.k, s.v};
    if (imx_)
        for (int site : {kImxQ, kImxK, kImxV}) imx_observe(l, site, s.x, n, &be);
    be.matmul(qkv, qkv_out, 3, s.x, n, false);
    if (!c.learned_pos) be.rope(s.q, s.k, n, false);
    encoder_attention(s, -1);
    const WeightRef * wo = &L.wo;
    if (imx_) imx_observe(l, kImxO, s.att, n, &be);
    be.matmul(&wo, &s.x, 1, s.att, n, true);  // x += W_o att + b_o
    layer_norm(pool, s.x, L.attn_ln, L.attn_ln_b, s.x, n, c.n_embd, c.rms_eps);
    const WeightRef * up = &L.w_up;
    const WeightRef * down = &L.w_down;
    if (imx_) {
        imx_observe(l, kImxGate, s.x, n, &be);
        imx_observe(l, kImxUp, s.x, n, &be);
    }
    if (L.w_gate.rows > 0) {
        be.glu(Glu::Silu, L.w_gate, L.w_up, s.x, s.ff, n);
    } else {
        // BERT's GELU, exact: x / 2 * (1 + erf(x / sqrt 2)) (transformers' "gelu"; llama.cpp
        // reads a float16 table of the tanh approximation, up to 1e-3 away in the embeddings)
        be.matmul(&up, &s.ff, 1, s.x, n, false);
        const int64_t n_act = int64_t(n) * c.n_ff;
        pool.parallel_for((n_act + 1023) / 1024, [&](int64_t b0, int64_t b1) {
            for (float * x = s.ff + b0 * 1024; x < s.ff + std::min(b1 * 1024, n_act); ++x)
                *x = 0.5f * *x * (1.0f + std::erf(*x * 0.70710678118654752f));
        });
    }
    if (imx_) imx_observe(l, kImxDown, s.ff, n, &be);
    be.matmul(&down, &s.x, 1, s.ff, n, true);  // x += W_down gelu(...) + b_down
    layer_norm(pool, s.x, L.ffn_ln, L.ffn_ln_b, s.x, n, c.n_embd, c.rms_eps);
}

void Model::encoder_gemma_layer(int l, Scratch & s, int n) {
    const Config & c = cfg_;
    CpuBackend & be = *cpu_;
    const LayerWeights & L = w_.layers[l];
    const bool swa = c.is_swa(l);
    // Attention: x += rmsnorm(W_o attn(rope(qnorm(W_q h)), rope(knorm(W_k h)), W_v h)), h = rmsnorm(x)
    be.rms_norm(s.x, L.attn_norm, s.h, n, c.n_embd, c.rms_eps);
    const WeightRef * qkv[3] = {&L.wq, &L.wk, &L.wv};
    float * qkv_out[3] = {s.q, s.k, s.v};
    if (imx_)
        for (int site : {kImxQ, kImxK, kImxV}) imx_observe(l, site, s.h, n, &be);
    be.matmul(qkv, qkv_out, 3, s.h, n, false);
    be.rms_norm(s.q, L.attn_q_norm, s.q, n * c.n_head, c.head_dim, c.rms_eps);
    be.rms_norm(s.k, L.attn_k_norm, s.k, n * c.n_head_kv, c.head_dim, c.rms_eps);
    be.rope(s.q, s.k, n, swa);  // (the local layers with their own base)
    encoder_attention(s, swa ? c.n_swa / 2 : -1);
    if (imx_) imx_observe(l, kImxO, s.att, n, &be);
    add_output(&be, &be, &L.wo, L.attn_post_norm, s.att, s, n);
    // Feed-forward: x += rmsnorm(W_down (gelu(W_gate h) * W_up h)), h = rmsnorm(x)
    be.rms_norm(s.x, L.ffn_norm, s.h, n, c.n_embd, c.rms_eps);
    if (imx_) {
        imx_observe(l, kImxGate, s.h, n, &be);
        imx_observe(l, kImxUp, s.h, n, &be);
    }
    be.glu(Glu::Gelu, L.w_gate, L.w_up, s.h, s.ff, n);
    if (imx_) imx_observe(l, kImxDown, s.ff, n, &be);
    add_output(&be, &be, &L.w_down, L.ffn_post_norm, s.ff, s, n);
}

void Model::classify_rows(const float * rows, int n, float * out) {
    // scores = cls_out(tanh(cls(x) + b)) + b, as llama.cpp's rank pooling; qwen3 (a causal reranker
    // scoring its last token): softmax over its outputs ("yes", "no")
    CpuBackend & be = *cpu_;
    float * tmp = scratch(&be).x;  // (n_batch x n_embd), free at the output
    const float * in = rows;
    if (w_.cls.rows > 0) {
        const WeightRef * cls = &w_.cls;
        be.matmul(&cls, &tmp, 1, rows, n, false);
        for (float * x = tmp; x < tmp + int64_t(n) * cfg_.n_embd; ++x) *x = std::tanh(*x);
        in = tmp;
    }
    const WeightRef * head = &w_.cls_out;
    be.matmul(&head, &out, 1, in, n, false);
    if (cfg_.arch == Arch::Qwen3) {
        const int64_t k = w_.cls_out.rows;
        for (float * r = out; r < out + int64_t(n) * k; r += k) {
            const float mx = *std::max_element(r, r + k);
            double sum = 0.0;
            for (float * x = r; x < r + k; ++x) sum += (*x = std::exp(*x - mx));
            for (float * x = r; x < r + k; ++x) *x = float(*x / sum);
        }
    }
}

}  // namespace sl
