// lfm2's gated short-convolution layers (transformers' Lfm2ShortConv, llama.cpp's
// build_shortconv_block) and the per-sequence state they keep beside the KV cache: the last
// conv_l_cache - 1 inputs of the convolution of each slot. Like llama.cpp's recurrent cache, a
// state cannot be cut back: a slot continues exactly where it stopped, or starts over at 0.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/threadpool.h"
#include "model/cpu_backend.h"
#include "model/model.h"
#include "model/weights_load.h"

namespace sl {

void Model::check_conv(const int32_t * pos, const int32_t * slot, int n) {
    // A slot's tokens in a batch: consecutive positions, the first one 0 (a new sequence) or the
    // position its states have reached.
    std::vector<int> last(size_t(kv_.n_slots), -1);
    for (int i = 0; i < n; ++i) {
        int & prev = last[size_t(slot[i])];
        if (prev >= 0)
            SL_CHECK(pos[i] == prev + 1, "token %d: position %d after %d in sequence slot %d; with a recurrent "
                     "state (lfm2, qwen35) a batch's positions of one sequence must be consecutive", i, pos[i], prev, slot[i]);
        else if (pos[i] > 0)
            SL_CHECK(pos[i] == conv_pos_[size_t(slot[i])],
                     "token %d: position %d of sequence slot %d does not continue the slot's recurrent state (it "
                     "follows %d positions); a %s sequence continues only where it stopped: evaluate it again "
                     "from position 0", i, pos[i], slot[i], conv_pos_[size_t(slot[i])], cfg_.arch_name.c_str());
        prev = pos[i];
    }
    // The states of the slots in the batch are unknown until it has run; those starting over are zeros.
    const size_t per_slot = conv_slot_floats();
    for (int i = 0; i < n; ++i) {
        if (last[size_t(slot[i])] < 0) continue;  // (already seen)
        last[size_t(slot[i])] = -1;
        conv_pos_[size_t(slot[i])] = -1;
        if (pos[i] != 0) continue;
        for (int l = 0; l < cfg_.n_layer; ++l)
            if (cfg_.is_conv(l)) std::fill_n(conv_state(l, slot[i]), per_slot, 0.0f);
    }
}

void Model::note_conv(const int32_t * pos, const int32_t * slot, int n) {
    for (int i = 0; i < n; ++i) conv_pos_[size_t(slot[i])] = pos[i] + 1;
}

void Model::conv_block(int l, Scratch & s, int n, const int32_t * slot) {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[size_t(l)];
    Backend * be = cpu_.get();
    // (B; C; x) = in_proj h, one row of 3 n_embd per token
    const WeightRef * in = &L.conv_in;
    float * bcx = s.ff;
    if (imx_) imx_observe(l, kImxQ, s.h, n, be);  // (the attention's sites, see imatrix_start)
    be->matmul(&in, &bcx, 1, s.h, n, false);
    // y = C * conv(B * x): per channel, the kernel over the slot's last d inputs (oldest first) and
    // this token's, which then joins the state; a slot's tokens in batch order (consecutive).
    const int64_t E = c.n_embd;
    const int d = c.conv_l_cache - 1;
    cpu_->pool().parallel_for(E, [&](int64_t e0, int64_t e1) {
        for (int i = 0; i < n; ++i) {
            const float * row = bcx + size_t(i) * 3 * size_t(E);
            float * st = conv_state(l, slot[i]);  // (d, E)
            float * y = s.att + size_t(i) * size_t(E);
            for (int64_t e = e0; e < e1; ++e) {
                const float * w = L.conv_kernel + e * (d + 1);
                const float bx = row[e] * row[2 * E + e];
                float acc = 0.0f;
                for (int k = 0; k < d; ++k) acc += w[k] * st[k * E + e];
                acc += w[d] * bx;
                for (int k = 0; k + 1 < d; ++k) st[k * E + e] = st[(k + 1) * E + e];
                st[(d - 1) * E + e] = bx;
                y[e] = row[E + e] * acc;
            }
        }
    });
    // x += out_proj y
    if (imx_) imx_observe(l, kImxO, s.att, n, be);
    add_output(be, be, &L.conv_out, nullptr, s.att, s, n);
}

void Model::load_conv_layer(const std::string & b, LayerWeights & L) {
    const GGUFFile & f = *file_;
    const Config & c = cfg_;
    L.conv_in = matrix(f, c, b + "shortconv.in_proj.weight", 3 * int64_t(c.n_embd), c.n_embd);
    L.conv_out = matrix(f, c, b + "shortconv.out_proj.weight", c.n_embd, c.n_embd);
    const GGUFTensor & k = require(f, c, b + "shortconv.conv.weight", c.conv_l_cache, c.n_embd);
    if (k.type != QType::F32)
        throw GGUFError(strfmt("%s: tensor '%sshortconv.conv.weight' has type %s, expected F32", f.path().c_str(),
                               b.c_str(), qtype_traits(k.type)->name));
    L.conv_kernel = reinterpret_cast<const float *>(k.data);
    for (const char * name : {"shortconv.in_proj.bias", "shortconv.out_proj.bias", "shortconv.conv.bias"})
        if (f.find_tensor(b + name))
            throw GGUFError(strfmt("%s: tensor '%s%s': convolution biases are not supported (nor by llama.cpp)",
                                   f.path().c_str(), b.c_str(), name));
}

}  // namespace sl
