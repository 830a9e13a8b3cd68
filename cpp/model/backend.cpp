#include "model/backend.h"

#include <algorithm>
#include <vector>

#include "common/error.h"
#include "common/vecmath.h"

namespace sl {

void glu_mul(Glu f, const float * g, const float * u, float * out, size_t n) {
    switch (f) {
        case Glu::Silu: return vec::silu_mul(g, u, out, n);
        case Glu::Gelu: return vec::gelu_mul(g, u, out, n);
        case Glu::SwigluOai: return vec::swiglu_oai_mul(g, u, out, n);
        case Glu::Relu:
            for (size_t i = 0; i < n; ++i) out[i] = (g[i] > 0.0f ? g[i] : 0.0f) * u[i];
            return;
    }
}

size_t WeightRef::nbytes() const { return row_size(type, K) * size_t(rows); }

size_t KVLayout::k_row() const { return row_size(type_k, head_dim); }

size_t KVLayout::v_row() const { return v_in_k ? 0 : row_size(type_v, v_dim()); }

size_t KVLayout::v_offset() const { return row_size(type_k, head_dim - v_dim()); }

void check_gpu_attention(const KVLayout & kv, const AttnParams & p) {
    SL_CHECK(p.n_head == 0 && !p.chunked, "GPU attention: per-layer head counts and chunked windows run on the CPU only");
    SL_CHECK(!kv.v_in_k && kv.v_dim() == kv.head_dim, "GPU attention: values narrower than keys run on the CPU only");
}

bool gpu_act_supported(Glu f) { return f != Glu::SwigluOai && f != Glu::Relu; }

bool gpu_glu_supported(Glu f, const WeightRef & gate, const WeightRef & up) {
    return gpu_act_supported(f) && !gate.bias && !up.bias;
}

void check_ring_batch(const KVLayout & kv, const AttnParams & p, const int32_t * pos, const int32_t * slot,
                      int n_tok) {
    if (!kv.ring) return;
    SL_CHECK(p.window > 0 && p.window < kv.slot_ctx, "a ring KV cache of %d cells for a window of %d",
             kv.slot_ctx, p.window);
    // Per slot, the positions the batch reads and writes: [min pos - window + 1, max pos].
    std::vector<std::pair<int, int>> span(size_t(kv.n_slots), {1 << 30, -1});
    for (int t = 0; t < n_tok; ++t) {
        auto & [lo, hi] = span[size_t(slot[t])];
        lo = std::min(lo, int(pos[t]));
        hi = std::max(hi, int(pos[t]));
    }
    for (int s = 0; s < kv.n_slots; ++s) {
        const auto [lo, hi] = span[size_t(s)];
        SL_CHECK(hi < 0 || hi - lo + p.window <= kv.slot_ctx,
                 "sequence slot %d: positions %d..%d of one batch and their window of %d overflow the %d cells of "
                 "its ring KV cache", s, lo, hi, p.window, kv.slot_ctx);
    }
}

}  // namespace sl
