// The CPU backend's mixture-of-experts feed-forward for a few tokens (decode): every chosen
// expert's gate/up rows, then every down row, as work items of one pass of the thread pool, instead
// of a swiglu and a matmul call per expert (each a pass of its own, for a few hundred rows).
#include <algorithm>
#include <atomic>

#include "common/error.h"
#include "common/vecmath.h"
#include "cpu/matmul.h"
#include "model/cpu_backend.h"

namespace sl {

namespace {

// Rows per work item: about four items per thread over all the pairs' rows, multiples of 16.
int64_t moe_chunk(int64_t rows, int n_pairs, int nth) {
    const int64_t per = rows * n_pairs / (int64_t(nth) * 4);
    return std::clamp<int64_t>((per + 15) / 16 * 16, 16, 256);
}

// [t0, t1): thread ith's share of n items.
void share(int64_t n, int ith, int nth, int64_t & t0, int64_t & t1) {
    const int64_t per = (n + nth - 1) / nth;
    t0 = std::min(per * ith, n);
    t1 = std::min(t0 + per, n);
}

}  // namespace

bool CpuBackend::moe_small(Glu f, const WeightRef & gate_exps, const WeightRef & up_exps,
                           const WeightRef & down_exps, int n_expert, const float * x, int n_tok, const int32_t * pick,
                           const float * weight, int k, float * y) {
    const int n_pairs = n_tok * k;
    // Expert e's gate rows start at e * stride, its up rows likewise in up_exps: stride ff, or 2 ff
    // for fused gate/up experts (up_exps then the same tensor from row ff on).
    const int64_t ff = opt_.moe_ff, stride = gate_exps.rows / n_expert, embd = down_exps.rows / n_expert;
    if (n_pairs > kMoeEntries || (stride != ff && stride != 2 * ff) || down_exps.K != ff || opt_.moe_embd != embd ||
        gate_exps.K != embd || cpu::act_type(gate_exps.type) != cpu::act_type(up_exps.type))
        return false;
    const QType gt = gate_exps.type, ut = up_exps.type, dt = down_exps.type;
    const size_t xrow = cpu::act_row_bytes(gt, embd), arow = cpu::act_row_bytes(dt, ff);
    const size_t gate_ld = row_size(gt, embd), up_ld = row_size(ut, embd), down_ld = row_size(dt, ff);
    const uint8_t * G = static_cast<const uint8_t *>(gate_exps.data);
    const uint8_t * U = static_cast<const uint8_t *>(up_exps.data);
    const uint8_t * D = static_cast<const uint8_t *>(down_exps.data);
    const int nth = pool_.size();
    const int64_t cs1 = moe_chunk(ff, n_pairs, nth), nc1 = (ff + cs1 - 1) / cs1;
    const int64_t cs2 = moe_chunk(embd, n_pairs, nth), nc2 = (embd + cs2 - 1) / cs2;
    std::atomic<int64_t> next1{nth}, next2{nth};
    float * act = moe_act_.data();
    float * out = moe_out_.data();

    pool_.run([&](int ith, int nth_) {
        int64_t t0, t1;
        share(n_tok, ith, nth_, t0, t1);  // 1. the tokens' activations in the experts' input format
        if (t0 < t1) cpu::quantize_acts(gt, x, embd, embd, t0, t1, moe_qx_.data());
        pool_.barrier();
        float * g = tmp_[ith].data();  // 2. f(gate x + b) * (up x + b), per pair and chunk of rows
        float * u = g + 256;
        for (int64_t it = ith; it < n_pairs * nc1; it = next1.fetch_add(1, std::memory_order_relaxed)) {
            const int64_t i = it / nc1, r0 = it % nc1 * cs1, nr = std::min(cs1, ff - r0);
            const int64_t row = int64_t(pick[i]) * stride + r0;
            const uint8_t * xa = moe_qx_.data() + size_t(i / k) * xrow;
            cpu::gemm(gt, G + size_t(row) * gate_ld, embd, 0, nr, xa, 1, g, nr);
            cpu::gemm(ut, U + size_t(row) * up_ld, embd, 0, nr, xa, 1, u, nr);
            if (gate_exps.bias) vec::add_to(g, gate_exps.bias + row, size_t(nr));
            if (up_exps.bias) vec::add_to(u, up_exps.bias + row, size_t(nr));
            glu_mul(f, g, u, act + i * ff + r0, size_t(nr));
        }
        pool_.barrier();
        share(n_pairs, ith, nth_, t0, t1);  // 3. those activations in the down matrices' format
        if (t0 < t1) cpu::quantize_acts(dt, act, ff, ff, t0, t1, moe_qa_.data());
        pool_.barrier();
        for (int64_t it = ith; it < n_pairs * nc2; it = next2.fetch_add(1, std::memory_order_relaxed)) {
            const int64_t i = it / nc2, r0 = it % nc2 * cs2, nr = std::min(cs2, embd - r0);  // 4. down
            const int64_t row = int64_t(pick[i]) * embd + r0;
            cpu::gemm(dt, D + size_t(row) * down_ld, ff, 0, nr, moe_qa_.data() + size_t(i) * arow, 1, out + i * embd + r0,
                      nr);
            if (down_exps.bias) vec::add_to(out + i * embd + r0, down_exps.bias + row, size_t(nr));
        }
        pool_.barrier();
        share(embd, ith, nth_, t0, t1);  // 5. y += the weighted outputs, each token's in pick order
        for (int t = 0; t < n_tok; ++t)
            for (int j = 0; j < k; ++j) {
                const float w = weight[t * k + j];
                const float * o = out + int64_t(t * k + j) * embd;
                float * yt = y + int64_t(t) * embd;
                for (int64_t r = t0; r < t1; ++r) yt[r] += w * o[r];
            }
    });
    return true;
}

}  // namespace sl
