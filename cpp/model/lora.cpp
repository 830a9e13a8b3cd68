// LoRA adapters applied at run time, as llama.cpp does (llama_adapter_lora): an adapter file holds,
// for some matrices W of the model (rows, K), a pair A (rank, K) and B (rows, rank), named after
// W with the suffixes .lora_a / .lora_b; the layer computes W x + s * B (A x), s = scale * alpha /
// rank (alpha 0: s = scale). B is kept as an F32 copy already multiplied by s; A is read from the
// adapter's mapping (or uploaded with its layer to the GPU). A new scale fills B again from the
// mapping (set_lora_scales), so a changed scale computes what a model loaded with it computes.
#include <algorithm>
#include <cmath>
#include <map>

#include "common/error.h"
#include "cpu/matmul.h"
#include "gguf/gguf.h"
#include "model/model.h"

namespace sl {

namespace {

constexpr const char * kSuffixA = ".lora_a";
constexpr const char * kSuffixB = ".lora_b";

bool ends_with(const std::string & s, const char * suffix) {
    const size_t n = std::char_traits<char>::length(suffix);
    return s.size() > n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

void Model::load_loras() {
    if (params_.loras.empty()) return;
    for (const auto & pl : params_.loras) lora_scales_.push_back(pl.second);
    const Config & c = cfg_;
    // The matrices an adapter may update, by GGUF name: (matrix, its first row in the tensor);
    // a fused tensor (phi3) is several matrices.
    std::map<std::string, std::vector<std::pair<WeightRef *, int64_t>>> targets;
    std::map<std::string, int> layer_of;  // the block of each target (-1: the output layer)
    for (int l = 0; l < c.n_layer; ++l) {
        LayerWeights & L = w_.layers[size_t(l)];
        const std::string b = "blk." + std::to_string(l) + ".";
        for (const char * t :
             {"attn_qkv", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
            layer_of[b + t + ".weight"] = l;
        if (c.fused_qkv || c.attn_qkv) {
            targets[b + "attn_qkv.weight"] = {{&L.wq, 0}, {&L.wk, c.q_dim()}, {&L.wv, c.q_dim() + c.kv_dim()}};
        } else {
            targets[b + "attn_q.weight"] = {{&L.wq, 0}};
            targets[b + "attn_k.weight"] = {{&L.wk, 0}};
            targets[b + "attn_v.weight"] = {{&L.wv, 0}};
        }
        targets[b + "attn_output.weight"] = {{&L.wo, 0}};
        if (L.moe()) continue;
        if (c.fused_qkv) {
            targets[b + "ffn_up.weight"] = {{&L.w_gate, 0}, {&L.w_up, c.n_ff}};
        } else {
            targets[b + "ffn_gate.weight"] = {{&L.w_gate, 0}};
            targets[b + "ffn_up.weight"] = {{&L.w_up, 0}};
        }
        targets[b + "ffn_down.weight"] = {{&L.w_down, 0}};
    }
    if (file_->find_tensor("output.weight")) targets["output.weight"] = {{&w_.output, 0}};
    layer_of["output.weight"] = -1;

    for (const auto & [path, scale] : params_.loras) {
        SL_CHECK(c.arch != Arch::DeepSeek2 && !c.delta_net, "%s: LoRA adapters are not supported on a %s model (its "
                 "%s would run without them)", path.c_str(), c.arch_name.c_str(),
                 c.delta_net ? "gated attention and delta nets" : "latent attention and experts");
        lora_files_.push_back(std::make_unique<GGUFFile>(path));
        const GGUFFile & f = *lora_files_.back();
        const char * p = f.path().c_str();
        if (f.get_str("general.type", "") != "adapter" || f.get_str("adapter.type", "") != "lora")
            throw GGUFError(strfmt("%s: not a LoRA adapter (general.type '%s', adapter.type '%s'; expected 'adapter', "
                                   "'lora')", p, f.get_str("general.type", "").c_str(),
                                   f.get_str("adapter.type", "").c_str()));
        const std::string arch = f.get_str("general.architecture", "");
        if (arch != c.arch_name)
            throw GGUFError(strfmt("%s: a LoRA adapter for architecture '%s', but the model is '%s'", p, arch.c_str(),
                                   c.arch_name.c_str()));
        const double alpha = f.get_float("adapter.lora.alpha", 0.0);
        if (f.find("adapter.alora.invocation_tokens"))
            warnings_.push_back(strfmt("%s: an activated LoRA (aLoRA): its invocation tokens are not looked for; the "
                                       "adapter applies to every token (as llama-cpp-python applies it)", p));
        int n_pairs = 0, n_norms = 0;
        for (const GGUFTensor & ta : f.tensors()) {
            if (ends_with(ta.name, kSuffixB)) {
                const std::string base = ta.name.substr(0, ta.name.size() - std::char_traits<char>::length(kSuffixB));
                if (!f.find_tensor(base + kSuffixA))
                    throw GGUFError(
                        strfmt("%s: tensor '%s' has no '%s%s'", p, ta.name.c_str(), base.c_str(), kSuffixA));
                continue;
            }
            if (!ends_with(ta.name, kSuffixA))
                throw GGUFError(strfmt("%s: tensor '%s' is not a LoRA pair's (%s / %s)", p, ta.name.c_str(), kSuffixA,
                                       kSuffixB));
            const std::string base = ta.name.substr(0, ta.name.size() - std::char_traits<char>::length(kSuffixA));
            const GGUFTensor * tb = f.find_tensor(base + kSuffixB);
            if (!tb)
                throw GGUFError(strfmt("%s: tensor '%s' has no '%s%s'", p, ta.name.c_str(), base.c_str(), kSuffixB));
            if (ends_with(base, "_norm.weight")) {  // mergekit's norm deltas: llama.cpp skips them too
                ++n_norms;
                continue;
            }
            const auto it = targets.find(base);
            if (it == targets.end()) {
                if (base == "output.weight" && w_.output.data == w_.tok_embd.data)
                    throw GGUFError(strfmt("%s: LoRA of 'output.weight', but the model ties its output layer to "
                                           "token_embd.weight", p));
                const bool experts =
                    base.find("_exps") != std::string::npos || base.find("gate_inp") != std::string::npos;
                const char * why = base == "token_embd.weight" ? "the token embedding's is not supported"
                                   : experts ? "mixture-of-experts tensors are not supported"
                                             : "no such matrix in the model (wrong base model?)";
                throw GGUFError(strfmt("%s: LoRA of '%s': %s", p, base.c_str(), why));
            }
            int64_t rows = 0;
            for (const auto & [w, r0] : it->second) rows = std::max(rows, r0 + w->rows);
            const int64_t K = it->second.front().first->K, rank = ta.ne[1];
            const bool flat = ta.ne[2] == 1 && ta.ne[3] == 1 && tb->ne[2] == 1 && tb->ne[3] == 1;
            if (!flat || ta.ne[0] != K || tb->ne[1] != rows || tb->ne[0] != rank || rank < 1 || rank > K)
                throw GGUFError(strfmt("%s: LoRA of '%s': A is [%lld, %lld, %lld, %lld] and B "
                                       "[%lld, %lld, %lld, %lld], but the matrix is [%lld, %lld] (ggml order; A [K, rank], B [rank, rows], "
                                       "rank at most K)", p, base.c_str(), (long long)ta.ne[0], (long long)ta.ne[1],
                                       (long long)ta.ne[2], (long long)ta.ne[3], (long long)tb->ne[0],
                                       (long long)tb->ne[1], (long long)tb->ne[2], (long long)tb->ne[3],
                                       (long long)K, (long long)rows));
            if (!cpu::supports_weight_type(ta.type) || !qtype_traits(tb->type) ||
                (!qtype_traits(tb->type)->to_float && tb->type != QType::F32))
                throw GGUFError(strfmt("%s: LoRA of '%s': tensor types %s / %s are not supported", p, base.c_str(),
                                       qtype_traits(ta.type) ? qtype_traits(ta.type)->name : "?",
                                       qtype_traits(tb->type) ? qtype_traits(tb->type)->name : "?"));
            // B becomes floats times the scale when the model is built (build_lora_b), not for a plan.
            LoraPair & pair = lora_pairs_.emplace_back();
            pair.b = tb;
            pair.adapter = int(lora_files_.size()) - 1;
            pair.alpha = alpha;
            pair.rows = rows;
            pair.rank = rank;
            pair.layer = layer_of.at(base);
            pair.attention = base.find(".attn_") != std::string::npos;
            for (const auto & [w, r0] : it->second) {
                LoraTerm t;
                t.a.type = ta.type;
                t.a.rows = rank;
                t.a.K = K;
                t.a.data = ta.data;
                t.b.rows = w->rows;
                t.b.K = rank;
                if (w->lora < 0) {
                    w->lora = int(lora_.size());
                    lora_.emplace_back();
                }
                pair.uses.push_back({w->lora, int(lora_[size_t(w->lora)].size()), r0});
                lora_[size_t(w->lora)].push_back(t);
            }
            lora_rank_ = std::max(lora_rank_, int(rank));
            ++n_pairs;
        }
        if (n_pairs + n_norms == 0)
            throw GGUFError(strfmt("%s: a LoRA adapter without any .lora_a / .lora_b pair", p));
        if (n_norms > 0)
            warnings_.push_back(strfmt("%s: %d LoRA pairs of norm weights are skipped (as llama.cpp skips them)", p,
                                       n_norms));
    }
    // A gate or up projection with an update: glu computes them apart (lora_ffn_).
    for (const LayerWeights & L : w_.layers)
        lora_ffn_ = lora_ffn_ || L.w_gate.lora >= 0 || L.w_up.lora >= 0;
}

void Model::fill_lora_b(LoraPair & pair, float adapter_scale, float * dst) const {
    pair.scale = float(pair.alpha != 0 ? double(adapter_scale) * pair.alpha / double(pair.rank)
                                       : double(adapter_scale));
    const GGUFTensor & tb = *pair.b;
    const size_t rb = row_size(tb.type, pair.rank);
    for (int64_t r = 0; r < pair.rows; ++r) {
        float * d = dst + r * pair.rank;
        const uint8_t * src = tb.data + size_t(r) * rb;
        if (tb.type == QType::F32)
            std::copy_n(reinterpret_cast<const float *>(src), pair.rank, d);
        else
            qtype_traits(tb.type)->to_float(src, d, pair.rank);
        for (int64_t i = 0; i < pair.rank; ++i) d[i] *= pair.scale;
    }
}

void Model::build_lora_b() {
    for (LoraPair & pair : lora_pairs_) {
        pair.host.resize(size_t(pair.rows * pair.rank));
        fill_lora_b(pair, lora_scales_[size_t(pair.adapter)], pair.host.data());
        for (const auto & [lora, term, r0] : pair.uses) {
            LoraTerm & t = lora_[size_t(lora)][size_t(term)];
            t.b.data = pair.host.data() + r0 * pair.rank;
            t.off = lora_scales_[size_t(pair.adapter)] == 0.0f;
        }
    }
}

void Model::set_lora_scales(const std::vector<float> & scales) {
    SL_CHECK(scales.size() == lora_scales_.size(), "%zu LoRA scales given; the model has %zu adapters",
             scales.size(), lora_scales_.size());
    for (size_t i = 0; i < scales.size(); ++i)
        SL_CHECK(std::isfinite(scales[i]), "%s: LoRA scale must be a finite number (got %g)",
                 params_.loras[i].first.c_str(), double(scales[i]));
    std::vector<float> staging;  // B of a pair whose copy is on the GPU
    for (LoraPair & pair : lora_pairs_) {
        const float s = scales[size_t(pair.adapter)];
        if (s == lora_scales_[size_t(pair.adapter)]) continue;
        const bool on_gpu = pair.host.empty();  // drop_uploaded_lora_b freed the host copy
        if (on_gpu) staging.resize(size_t(pair.rows * pair.rank));
        float * dst = on_gpu ? staging.data() : pair.host.data();
        fill_lora_b(pair, s, dst);
        for (const auto & [lora, term, r0] : pair.uses) {
            LoraTerm & t = lora_[size_t(lora)][size_t(term)];
            t.off = s == 0.0f;
            if (on_gpu) gpu_->upload(const_cast<void *>(t.b.data), dst + r0 * pair.rank, t.b.nbytes());
        }
        if (on_gpu) gpu_->synchronize();  // (staging is reused by the next pair)
    }
    lora_scales_ = scales;
}

void Model::drop_uploaded_lora_b(int first_gpu, bool output_gpu) {
    for (LoraPair & pair : lora_pairs_)  // (a host mixer's attention stays on the host, and its updates too)
        if (pair.layer < 0 ? output_gpu : pair.layer >= first_gpu && !(pair.attention && host_mixer(pair.layer)))
            std::vector<float>().swap(pair.host);
}

bool Model::lora_on(const WeightRef & w) const {
    if (w.lora < 0) return false;
    for (const LoraTerm & t : lora_[size_t(w.lora)])
        if (!t.off) return true;
    return false;
}

size_t Model::lora_bytes(const WeightRef & w) const {
    size_t n = 0;
    if (w.lora >= 0)
        for (const LoraTerm & t : lora_[size_t(w.lora)]) n += t.a.nbytes() + t.b.nbytes();
    return n;
}

void Model::apply_lora(Backend * be, const WeightRef * const * w, float * const * y, int n_w, const float * x,
                       Scratch & s, int n) {
    for (int i = 0; i < n_w; ++i) {
        if (w[i]->lora < 0) continue;
        for (const LoraTerm & t : lora_[size_t(w[i]->lora)]) {
            if (t.off) continue;
            const WeightRef * a = &t.a;
            const WeightRef * b = &t.b;
            float * yi = y[i];
            be->matmul(&a, &s.lora, 1, x, n, false);
            be->matmul(&b, &yi, 1, s.lora, n, true);
        }
    }
}

}  // namespace sl
