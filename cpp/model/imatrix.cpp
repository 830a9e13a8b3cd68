// Importance-matrix accumulation (see imatrix.h).
#include "model/imatrix.h"

#include <algorithm>

#include "common/error.h"
#include "common/threadpool.h"

namespace sl {

int ImatrixCollector::entry(const std::string & name, int64_t n_per_row, int n_mat) {
    if (name.empty()) return -1;
    const auto it = index_.find(name);
    if (it != index_.end()) {
        const ImatrixEntry & e = entries_[size_t(it->second)];
        SL_CHECK(e.n_per_row == n_per_row && e.n_mat == n_mat, "imatrix: %s seen as %lld x %d and as %lld x %d",
                 name.c_str(), (long long)e.n_per_row, e.n_mat, (long long)n_per_row, n_mat);
        return it->second;
    }
    ImatrixEntry e;
    e.name = name;
    e.n_per_row = n_per_row;
    e.n_mat = n_mat;
    e.sums.assign(size_t(n_per_row) * size_t(n_mat), 0.0);
    e.counts.assign(size_t(n_mat), 0);
    entries_.push_back(std::move(e));
    index_.emplace(name, int(entries_.size() - 1));
    return int(entries_.size() - 1);
}

void ImatrixCollector::accumulate(int e, int mat, const float * x, int64_t n_rows, ThreadPool & pool) {
    ImatrixEntry & en = entries_[size_t(e)];
    const int64_t k = en.n_per_row;
    double * acc = en.sums.data() + size_t(mat) * size_t(k);
    // Each thread owns a range of columns and walks every row: no two threads add to one sum.
    constexpr int64_t kCols = 64;
    pool.parallel_for((k + kCols - 1) / kCols, [&](int64_t b0, int64_t b1) {
        const int64_t c0 = b0 * kCols, c1 = std::min(b1 * kCols, k);
        int64_t r = 0;
        for (; r + 4 <= n_rows; r += 4) {  // four rows a pass: a quarter of the loads and stores of acc
            const float * x0 = x + r * k, * x1 = x0 + k, * x2 = x1 + k, * x3 = x2 + k;
            for (int64_t c = c0; c < c1; ++c) {
                const double a = x0[c], b = x1[c], d = x2[c], e = x3[c];
                acc[c] += (a * a + b * b) + (d * d + e * e);
            }
        }
        for (; r < n_rows; ++r) {
            const float * row = x + r * k;
            for (int64_t c = c0; c < c1; ++c) acc[c] += double(row[c]) * double(row[c]);
        }
    });
    en.counts[size_t(mat)] += n_rows;
}

float * ImatrixCollector::staging(size_t n_floats) {
    if (staging_.size() < n_floats) staging_.resize(n_floats);
    return staging_.data();
}

}  // namespace sl

// ------------------------------------------------------------------------------------------------
// The model's side: which weight each matmul of the forward pass reads, and the observations.

#include "gguf/gguf.h"
#include "model/cpu_backend.h"
#include "model/model.h"

namespace sl {

namespace {

// llama-imatrix asks the scheduler only for matmuls (MUL_MAT) of at least 16 rows; the stacked
// experts' (MUL_MAT_ID) it takes at any size.
constexpr int kMinDenseRows = 16;

}  // namespace

Model::ImxTarget Model::imx_target(const std::string & name, const WeightRef & w, int n_mat) const {
    ImxTarget t;
    if (w.rows > 0 && file_->find_tensor(name)) {
        t.name = name;
        t.k = w.K;
        t.n_mat = n_mat;
    }
    return t;
}

void Model::imatrix_start(bool process_output) {
    const Config & c = cfg_;
    SL_CHECK(c.arch != Arch::DeepSeek2, "%s: importance-matrix collection is not supported on a deepseek2 model "
             "(its latent attention's matmuls are not observed)", file_->path().c_str());
    SL_CHECK(!c.parallel_ssm, "%s: importance-matrix collection is not supported on a falcon-h1 model (its "
             "attention and Mamba-2 mixer would share sites)", file_->path().c_str());
    imx_sites_.assign(size_t(c.n_layer), {});
    for (int l = 0; l < c.n_layer; ++l) {
        const LayerWeights & L = w_.layers[size_t(l)];
        const std::string b = "blk." + std::to_string(l) + ".";
        auto & s = imx_sites_[size_t(l)];
        // A fused weight is one matmul in llama.cpp: its first slice stands for it.
        if (file_->find_tensor(b + "attn_qkv.weight")) {
            s[kImxQ] = imx_target(b + "attn_qkv.weight", L.wq);
        } else {
            s[kImxQ] = imx_target(b + "attn_q.weight", L.wq);
            s[kImxK] = imx_target(b + "attn_k.weight", L.wk);
            s[kImxV] = imx_target(b + "attn_v.weight", L.wv);
        }
        s[kImxO] = imx_target(b + "attn_output.weight", L.wo);
        const std::string sh = L.moe() ? "_shexp" : "";  // (a MoE block's dense matrices: its shared expert)
        if (!L.moe() && L.w_gate.rows > 0 && !file_->find_tensor(b + "ffn_gate.weight")) {  // gate rows in ffn_up
            s[kImxGate] = imx_target(b + "ffn_up.weight", L.w_gate);
        } else {
            s[kImxGate] = imx_target(b + "ffn_gate" + sh + ".weight", L.w_gate);
            s[kImxUp] = imx_target(b + "ffn_up" + sh + ".weight", L.w_up);
        }
        s[kImxDown] = imx_target(b + "ffn_down" + sh + ".weight", L.w_down);
        if (c.is_conv(l) && c.delta_net) {  // qwen35's delta nets: attn_qkv (or qwen3next's ssm_in), ssm_out
            const bool ssm_in = file_->find_tensor(b + "ssm_in.weight") != nullptr;
            s[kImxQ] = imx_target(b + (ssm_in ? "ssm_in.weight" : "attn_qkv.weight"), L.dn_qkv);
            s[kImxO] = imx_target(b + "ssm_out.weight", L.dn_out);
        } else if (c.is_conv(l)) {  // lfm2's convolution layers: in_proj and out_proj at the attention's sites
            const bool ssm = c.mamba2();  // (granitehybrid's Mamba-2 layers: ssm_in, ssm_out)
            s[kImxQ] = ssm ? imx_target(b + "ssm_in.weight", L.ssm_in)
                           : imx_target(b + "shortconv.in_proj.weight", L.conv_in);
            s[kImxO] = ssm ? imx_target(b + "ssm_out.weight", L.ssm_out)
                           : imx_target(b + "shortconv.out_proj.weight", L.conv_out);
        }
        if (L.moe()) {
            s[kImxRouter] = imx_target(b + "ffn_gate_inp.weight", L.gate_inp);
            if (L.ffn_gate_inp_shexp) {  // (a vector: one row of n_embd)
                WeightRef gate;
                gate.rows = 1;
                gate.K = c.n_embd;
                s[kImxShexpGate] = imx_target(b + "ffn_gate_inp_shexp.weight", gate);
            }
            s[kImxGateExps] = imx_target(b + "ffn_gate_exps.weight", L.gate_exps, c.n_expert);
            s[kImxUpExps] = imx_target(b + "ffn_up_exps.weight", L.up_exps, c.n_expert);
            s[kImxDownExps] = imx_target(b + "ffn_down_exps.weight", L.down_exps, c.n_expert);
        }
    }
    // Only a separate output.weight: a tied output multiplies token_embd.weight, which
    // llama-imatrix does not collect.
    imx_output_ = {};
    if (process_output && !c.encoder)
        imx_output_ = imx_target("output.weight", w_.output);
    imx_ = std::make_unique<ImatrixCollector>(process_output);
}

std::unique_ptr<ImatrixCollector> Model::imatrix_stop() {
    imx_sites_.clear();
    imx_output_ = {};
    return std::move(imx_);
}

void Model::imx_observe(int l, int site, const float * x, int n, Backend * be, int mat) {
    ImxTarget & t = l < 0 ? imx_output_ : imx_sites_[size_t(l)][size_t(site)];
    if (t.name.empty() || n <= 0) return;
    const bool experts = site >= kImxGateExps;
    if (!experts && n < kMinDenseRows) return;
    if (t.entry < 0) t.entry = imx_->entry(t.name, t.k, t.n_mat);
    if (!be->is_cpu()) {  // a GPU layer's input: copied to the host through the backend
        const size_t floats = size_t(n) * size_t(t.k);
        float * host = imx_->staging(floats);
        be->download(host, x, floats * sizeof(float));
        be->synchronize();
        x = host;
    }
    imx_->accumulate(t.entry, mat, x, n, cpu_->pool());
}

}  // namespace sl
