// The mixture-of-experts feed-forward (Mixtral, Qwen3-MoE, gpt-oss, Qwen2-MoE, OLMoE, Granite MoE,
// DeepSeek-V2 / V3): a router scores every expert for each token, the n_expert_used best are run,
// and their outputs are mixed by the router's softmax probabilities (renormalized over the chosen
// ones when expert_weights_norm; gpt-oss: the softmax of the chosen ones' logits, and biases on
// the router and the experts; deepseek2: sigmoid scores, a selection bias, group-limited choice,
// scaled weights, shared experts; llama4: the top logits chosen, their sigmoids scaling the
// experts' inputs; lfm2moe: deepseek2's sigmoid scores and bias without groups). A few tokens go
// through the CPU backend's moe_small in one pass; more are grouped by expert so that each expert runs once per batch, over all the tokens
// routed to it. Either way a token's expert outputs are added in the order of the experts'
// indices, so both give the same sums. A shared expert (Qwen2-MoE, Granite MoE shared; deepseek2's
// n_expert_shared of them, one matrix of their stacked rows) runs as the dense feed-forward of the
// block (forward.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/op_offload.h"

namespace sl {

namespace {

// DeepSeek V3's group-limited routing (llama.cpp's build_moe_ffn): a group's score is the sum of
// its two best selection scores; the experts outside the n_group_used best groups (ties: the
// lower index) are not chosen (their scores set to -inf). group, order: n_expert_groups floats
// and ints of work.
void mask_groups(const Config & c, float * sel, float * group, int32_t * order) {
    const int ng = c.n_expert_groups, per = c.n_expert / ng;
    for (int g = 0; g < ng; ++g) {
        const float * v = sel + size_t(g) * per;
        float best = -INFINITY, second = -INFINITY;
        for (int i = 0; i < per; ++i) {
            if (v[i] > best) {
                second = best;
                best = v[i];
            } else if (v[i] > second) {
                second = v[i];
            }
        }
        group[g] = per > 1 ? best + second : best;
        order[g] = g;
    }
    std::partial_sort(order, order + c.n_group_used, order + ng, [&](int a, int b) {
        return group[a] > group[b] || (group[a] == group[b] && a < b);
    });
    for (int j = c.n_group_used; j < ng; ++j) std::fill_n(sel + size_t(order[j]) * per, per, -INFINITY);
}

}  // namespace

void Model::Routes::reserve(size_t n_batch, int n_expert, int n_used) {
    probs.assign(size_t(n_expert), 0.0f);
    pick.assign(n_batch * size_t(n_used), 0);
    weight.assign(n_batch * size_t(n_used), 0.0f);
    start.assign(size_t(n_expert) + 1, 0);
    order.assign(n_batch * size_t(n_used), 0);
    idx.assign(size_t(n_expert), 0);
    sel.assign(size_t(n_expert), 0.0f);
    group.assign(size_t(n_expert), 0.0f);
}

void Model::route(const float * logits, int n, const float * bias) {
    const Config & c = cfg_;
    const int ne = c.n_expert, k = c.n_expert_used;
    Routes & r = routes_;
    std::fill(r.start.begin(), r.start.end(), 0);
    for (int t = 0; t < n; ++t) {
        // softmax over the experts, in double (sigmoid scores with moe_sigmoid, the logits
        // themselves with softmax_weight); the k best by their selection scores (the scores plus
        // the bias, within the best groups; ties: the lower index)
        const float * z = logits + size_t(t) * ne;
        const float zmax = *std::max_element(z, z + ne);
        if (c.moe_softmax_weight) {
            std::copy(z, z + ne, r.probs.begin());
        } else if (c.moe_sigmoid) {
            for (int e = 0; e < ne; ++e) r.probs[e] = float(1.0 / (1.0 + std::exp(-double(z[e]))));
        } else {
            double sum = 0;
            for (int e = 0; e < ne; ++e) sum += std::exp(double(z[e]) - zmax);
            for (int e = 0; e < ne; ++e) r.probs[e] = float(std::exp(double(z[e]) - zmax) / sum);
        }
        for (int e = 0; e < ne; ++e) r.sel[e] = bias ? r.probs[e] + bias[e] : r.probs[e];
        if (c.moe_weight_input) std::copy(z, z + ne, r.sel.begin());  // (llama4: by the logits, as llama.cpp)
        if (c.n_expert_groups > 1) mask_groups(c, r.sel.data(), r.group.data(), r.idx.data());
        for (int e = 0; e < ne; ++e) r.idx[e] = e;
        std::partial_sort(r.idx.begin(), r.idx.begin() + k, r.idx.end(), [&](int a, int b) {
            return r.sel[a] > r.sel[b] || (r.sel[a] == r.sel[b] && a < b);
        });
        std::sort(r.idx.begin(), r.idx.begin() + k);  // the chosen ones in index order (see above)
        if (c.moe_softmax_weight) {  // the chosen logits' softmax (the largest is among them)
            double s = 0;
            for (int j = 0; j < k; ++j) s += std::exp(double(r.probs[r.idx[j]]) - zmax);
            for (int j = 0; j < k; ++j) r.probs[r.idx[j]] = float(std::exp(double(r.probs[r.idx[j]]) - zmax) / s);
        }
        double chosen = 0;
        for (int j = 0; j < k; ++j) chosen += r.probs[r.idx[j]];
        // (llama.cpp clamps the sum at float16's smallest normal; granitemoe: times residual_scale,
        // as its branch outputs are)
        const double scale = (c.expert_weights_norm ? 1.0 / std::max(chosen, 6.103515625e-5) : 1.0) *
                             c.expert_weights_scale * c.residual_scale;
        for (int j = 0; j < k; ++j) {
            const int e = r.idx[j];
            r.pick[size_t(t) * k + j] = e;
            r.weight[size_t(t) * k + j] = float(r.probs[e] * scale);
            ++r.start[e + 1];
        }
    }
    // Counting sort of the (token, choice) entries by expert.
    for (int e = 0; e < ne; ++e) r.start[e + 1] += r.start[e];
    std::vector<int32_t> & fill = r.idx;  // reused as the write cursor of each expert
    std::copy(r.start.begin(), r.start.end() - 1, fill.begin());
    for (int i = 0; i < n * k; ++i) r.order[fill[r.pick[i]]++] = i;
}

const float * Model::shared_expert_gates(const LayerWeights & L, Scratch & s, int n) {
    const size_t row = size_t(cfg_.n_embd);
    if (imx_) imx_observe(int(&L - w_.layers.data()), kImxShexpGate, s.h, n, cpu_.get());
    for (int t = 0; t < n; ++t) {
        const float * h = s.h + size_t(t) * row;
        double z = 0;
        for (size_t i = 0; i < row; ++i) z += double(L.ffn_gate_inp_shexp[i]) * h[i];
        s.router[t] = float(1.0 / (1.0 + std::exp(-z)));
    }
    return s.router;
}

void Model::router_logits(Backend * be, int l, const float * x, int n) {
    const WeightRef * gi = &w_.layers[l].gate_inp;
    Scratch & hs = scratch(cpu_.get());
    if (!be->is_cpu()) {  // (moe_in is free until the experts run)
        be->download(hs.moe_in, x, size_t(n) * cfg_.n_embd * sizeof(float));
        x = hs.moe_in;
    }
    if (imx_) imx_observe(l, kImxRouter, x, n, cpu_.get());
    cpu_->matmul(&gi, &hs.router, 1, x, n, false);
}

void Model::moe_ffn(Backend * be, Backend * mm, const LayerWeights & L, Scratch & s, int n) {
    const Config & c = cfg_;
    SL_CHECK(be->is_cpu(), "internal: mixture-of-experts blocks run on the CPU");
    // (smallthinker's logits: from the block's input, before its attention)
    if (!c.router_on_input) router_logits(be, int(&L - w_.layers.data()), s.h, n);
    route(s.router, n, L.exp_probs_b);
    run_experts(be, mm, L, s, n, c.swiglu_oai ? Glu::SwigluOai : c.experts_relu ? Glu::Relu : Glu::Silu);
}

void Model::moe_ffn_host(Backend * be, const LayerWeights & L, Scratch & s, int n) {
    // The residual stream and the block's normed input down to the CPU's buffers, the experts'
    // outputs added there as on a CPU block (the same sums, in the same order), the stream back up.
    Backend * cpu = cpu_.get();
    Scratch & hs = scratch(cpu);
    const size_t bytes = size_t(n) * cfg_.n_embd * sizeof(float);
    be->download(hs.h, s.h, bytes);
    be->download(hs.x, s.x, bytes);
    // A large batch's expert matmuls go to the GPU with their weights (op offload), as a CPU block's.
    Backend * mm = offload_ && n >= OpOffload::kMinBatch ? static_cast<Backend *>(offload_.get()) : cpu;
    n_op_offload_ += mm != cpu;
    moe_ffn(cpu, mm, L, hs, n);
    if (L.ffn_gate_inp_shexp && L.w_gate.rows > 0)  // qwen2moe: the shared expert, scaled per token on the host
        ffn(cpu, mm, int(&L - w_.layers.data()), hs.h, hs, n);
    be->upload(s.x, hs.x, bytes);
}

void Model::run_experts(Backend * be, Backend * mm, const LayerWeights & L, Scratch & s, int n, Glu act) {
    const Config & c = cfg_;
    const int k = c.n_expert_used;
    const int l = int(&L - w_.layers.data());
    const bool fused = L.up_exps.rows == 0;  // (gemma4's ffn_gate_up_exps: each expert's gate rows, then its up rows)
    // llama4: each chosen expert reads weight * h and its output is added as it is
    const bool scale_in = c.moe_weight_input;
    const bool ungated = L.gate_exps.rows == 0;  // (nemotron_h_moe: relu(up x)^2, whatever act says)
    const float * in = s.h;
    const float * weights = routes_.weight.data();
    const size_t row = size_t(c.n_embd);
    if (scale_in && k == 1 && !imx_) {  // (one expert a token: its scaled input a row of moe_in, weights 1)
        for (int t = 0; t < n; ++t) {
            const float w = routes_.weight[size_t(t)];
            for (size_t i = 0; i < row; ++i) s.moe_in[t * row + i] = w * s.h[t * row + i];
            s.router[t] = 1.0f;  // (the router's logits are spent)
        }
        in = s.moe_in;
        weights = s.router;
    }
    // (importance-matrix collection needs each expert's inputs: the grouped path below)
    const WeightRef up_exps = fused ? row_slice(L.gate_exps, c.n_ff_exp, L.gate_exps.rows - c.n_ff_exp) : L.up_exps;
    if (!imx_ && !ungated && (!scale_in || k == 1) && be == static_cast<Backend *>(cpu_.get()) &&
        cpu_->moe_small(act, L.gate_exps, up_exps, L.down_exps, c.n_expert, in, n, routes_.pick.data(), weights, k,
                        s.x))
        return;
    for (int e = 0; e < c.n_expert; ++e) {
        const int b = routes_.start[e], m = routes_.start[e + 1] - b;
        if (m == 0) continue;
        for (int j = 0; j < m; ++j) {  // gather the tokens routed to e (llama4: times their weights)
            const int entry = routes_.order[b + j];
            float * dst = s.moe_in + j * row;
            std::memcpy(dst, s.h + size_t(entry / k) * row, row * sizeof(float));
            if (scale_in)
                for (size_t i = 0; i < row; ++i) dst[i] *= routes_.weight[size_t(entry)];
        }
        const WeightRef up = fused ? row_slice(L.gate_exps, int64_t(2) * c.n_ff_exp * e + c.n_ff_exp, c.n_ff_exp)
                                   : expert_slice(L.up_exps, e, c.n_expert);
        const WeightRef down = expert_slice(L.down_exps, e, c.n_expert);
        const WeightRef * wd = &down;
        if (imx_) {
            if (!ungated) imx_observe(l, kImxGateExps, s.moe_in, m, be, e);
            if (!fused) imx_observe(l, kImxUpExps, s.moe_in, m, be, e);
        }
        if (ungated) {
            const WeightRef * wu = &up;
            mm->matmul(&wu, &s.ff, 1, s.moe_in, m, false);
            relu_squared(s.ff, int64_t(m) * c.n_ff_exp);
        } else {
            const WeightRef gate = fused ? row_slice(L.gate_exps, int64_t(2) * c.n_ff_exp * e, c.n_ff_exp)
                                         : expert_slice(L.gate_exps, e, c.n_expert);
            mm->glu(act, gate, up, s.moe_in, s.ff, m);
        }
        if (imx_) imx_observe(l, kImxDownExps, s.ff, m, be, e);
        mm->matmul(&wd, &s.moe_out, 1, s.ff, m, false);
        for (int j = 0; j < m; ++j) {  // x += weight * expert output, back at each token's row
            const int entry = routes_.order[b + j];
            const float w = scale_in ? 1.0f : routes_.weight[entry];
            float * x = s.x + size_t(entry / k) * row;
            const float * y = s.moe_out + j * row;
            for (size_t i = 0; i < row; ++i) x[i] += w * y[i];
        }
    }
}

}  // namespace sl
