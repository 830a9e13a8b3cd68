// Placement across devices, as llama.cpp does it: n_gpu_layers = N puts the output layer on the
// GPU first, then the last N - 1 transformer blocks (-1: all of them); the token embedding stays
// on the CPU. A layer's KV cache lives with it unless offload_kqv is off. GPU weights are
// uploaded once, tensor by tensor straight from the mapping (no host copy), after a check that
// everything the GPU will hold fits in its free memory. With op_offload, large prompt batches
// of the CPU layers run their matmuls on the GPU (op_offload.h).
#include <algorithm>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/cpu_backend.h"
#include "model/gpu.h"
#include "model/model.h"
#include "model/op_offload.h"

namespace sl {

namespace {

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

double mib(size_t n) { return double(n) / 1048576.0; }

// Calls f(pointer, floats) on each norm vector a layer has: input norms, query and key norms (per
// head: qwen3, gemma3; whole projections: olmo2), post-norms (gemma2/3, olmo2), an encoder's
// LayerNorms with their biases, gpt-oss's sinks, qwen2moe's shared-expert gate, bitnet's sub-norms,
// deepseek2's latent norms and selection bias, lfm2's convolution kernels, a Mamba-2 layer's vectors,
// qwen35's delta-net vectors.
template <class L_, class F>
void for_norms(L_ & L, const Config & c, F && f) {
    const int64_t qn = c.q_norm_len(), kn = c.k_norm_len();
    for (auto [p, n] : {std::pair{&L.attn_norm, int64_t(c.n_embd)}, {&L.attn_norm_b, int64_t(c.n_embd)},
                        {&L.ffn_norm_b, int64_t(c.n_embd)}, {&L.attn_q_norm, qn}, {&L.attn_k_norm, kn},
                        {&L.attn_post_norm, int64_t(c.n_embd)}, {&L.ffn_norm, int64_t(c.n_embd)},
                        {&L.ffn_post_norm, int64_t(c.n_embd)}, {&L.attn_ln, int64_t(c.n_embd)},
                        {&L.attn_ln_b, int64_t(c.n_embd)}, {&L.ffn_ln, int64_t(c.n_embd)},
                        {&L.ffn_ln_b, int64_t(c.n_embd)}, {&L.attn_sinks, int64_t(c.n_head)},
                        {&L.ffn_gate_inp_shexp, int64_t(c.n_embd)}, {&L.attn_sub_norm, int64_t(c.n_embd)},
                        {&L.ffn_sub_norm, int64_t(c.n_ff)},
                        {&L.ple_post_norm, int64_t(c.n_embd)}, {&L.router_w, int64_t(c.n_embd)},
                        {&L.ffn_pre_norm_2, int64_t(c.n_embd)}, {&L.ffn_post_norm_1, int64_t(c.n_embd)},
                        {&L.ffn_post_norm_2, int64_t(c.n_embd)}, {&L.down_exps_scale, int64_t(c.n_expert)},
                        {&L.q_a_norm, int64_t(c.q_lora_rank)}, {&L.kv_a_norm, int64_t(c.kv_lora_rank)},
                        {&L.exp_probs_b, int64_t(c.n_expert)},
                        {&L.conv_kernel, int64_t(c.conv_l_cache) * c.n_embd},
                        {&L.ssm_conv, int64_t(c.ssm_d_conv) * c.ssm_conv_dim()},
                        {&L.ssm_conv_b, int64_t(c.ssm_conv_dim())}, {&L.ssm_dt_b, int64_t(c.ssm_n_head)},
                        {&L.ssm_a, int64_t(c.ssm_n_head)}, {&L.ssm_d, int64_t(c.ssm_n_head)},
                        {&L.ssm_norm, int64_t(c.ssm_d_inner)},
                        {&L.dn_kernel, int64_t(c.conv_l_cache) * c.dn_conv_dim()}, {&L.dn_dt, int64_t(c.dn_v_heads)},
                        {&L.dn_a, int64_t(c.dn_v_heads)}, {&L.dn_norm, int64_t(c.dn_head_dim)}})
        if (*p) f(*p, n);
}

size_t norm_floats(const LayerWeights & L, const Config & c) {
    size_t n = 0;
    for_norms(L, c, [&](const float *, int64_t k) { n += size_t(k); });
    return n;
}

// What of a GPU block stays in host memory, for the CPU to run. A mixture-of-experts block keeps
// its router, selection bias and experts there (moe.cpp's moe_ffn_host), and a shared expert scaled
// per token (qwen2moe) with its gate; a block whose mixer has no GPU path (Model::host_mixer: the
// recurrent ones) keeps the mixer's weights and norms there too: only its feed-forward moves.
bool host_shared_expert(const LayerWeights & L) { return L.moe() && L.ffn_gate_inp_shexp; }

bool ffn_vector(const LayerWeights & L, const float * const & p) {
    for (const float * const * f : {&L.ffn_norm, &L.ffn_norm_b, &L.ffn_post_norm, &L.ffn_sub_norm, &L.ffn_pre_norm_2,
                                    &L.ffn_post_norm_1, &L.ffn_post_norm_2, &L.ffn_gate_inp_shexp, &L.exp_probs_b})
        if (&p == f) return true;
    return false;
}

bool host_vector(const LayerWeights & L, const float * const & p, bool host_mixer) {
    return (L.moe() && (&p == &L.exp_probs_b || &p == &L.ffn_gate_inp_shexp)) || (host_mixer && !ffn_vector(L, p));
}

// Calls f on each matrix of a block that its device holds: attention's four (not a host mixer's)
// and the feed-forward's three (not a host shared expert's).
template <class L_, class F>
void for_device_matrices(L_ & L, bool host_mixer, F && f) {
    decltype(&L.wq) const all[7] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int i = host_mixer ? 4 : 0; i < (host_shared_expert(L) ? 4 : 7); ++i) f(*all[i]);
}

// Bytes of what a GPU block leaves in host memory for its experts (0 but for a mixture of experts).
size_t host_expert_bytes(const LayerWeights & L, const Config & c) {
    if (!L.moe()) return 0;
    size_t bytes = 0;
    for (const WeightRef * w : {&L.gate_inp, &L.gate_exps, &L.up_exps, &L.down_exps}) bytes += w->bytes_with_bias();
    for_norms(L, c, [&](const float * const & p, int64_t n) {
        bytes += host_vector(L, p, false) ? sizeof(float) * size_t(n) : 0;
    });
    if (host_shared_expert(L))
        for (const WeightRef * w : {&L.w_gate, &L.w_up, &L.w_down}) bytes += w->bytes_with_bias();
    return bytes;
}

using LoraTable = std::vector<std::vector<LoraTerm>>;

// Calls f on each LoRA term of the matrices of a layer.
template <class F>
void for_lora(const LayerWeights & L, const LoraTable & lora, F && f) {
    for (const WeightRef * w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
        if (w->lora >= 0)
            for (const LoraTerm & t : lora[size_t(w->lora)]) f(t);
}

size_t layer_weight_bytes(const LayerWeights & L, const Config & c, const LoraTable & lora) {
    size_t bytes = sizeof(float) * norm_floats(L, c);
    for (const WeightRef * w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down, &L.gate_inp, &L.gate_exps,
                                &L.up_exps, &L.down_exps, &L.ple_gate, &L.ple_proj, &L.wq_a, &L.wq_b, &L.wkv_a,
                                &L.wk_b, &L.wv_b, &L.wkv_b, &L.conv_in, &L.conv_out, &L.ssm_in,
                                &L.ssm_out, &L.dn_qkv, &L.dn_z, &L.dn_beta, &L.dn_alpha, &L.dn_out})
        bytes += w->bytes_with_bias();
    for_lora(L, lora, [&](const LoraTerm & t) { bytes += t.a.nbytes() + t.b.nbytes(); });
    return bytes;
}

// Bytes a matrix (and its bias) takes in the GPU arena: each tensor 256-byte aligned.
size_t gpu_matrix_bytes(const WeightRef & w) {
    return align256(w.nbytes()) + (w.bias ? align256(sizeof(float) * size_t(w.rows)) : 0);
}

// Bytes of a GPU block's device part: unaligned as in the file (raw), or in the GPU arena (each
// tensor 256-byte aligned).
size_t device_layer_bytes(const LayerWeights & L, const Config & c, const LoraTable & lora, bool host_mixer,
                          bool raw) {
    auto sz = [&](size_t n) { return raw ? n : align256(n); };
    size_t bytes = 0;
    for_norms(L, c, [&](const float * const & p, int64_t n) {
        if (!host_vector(L, p, host_mixer)) bytes += sz(sizeof(float) * size_t(n));
    });
    for_device_matrices(L, host_mixer, [&](const WeightRef & w) {
        bytes += raw ? w.bytes_with_bias() : gpu_matrix_bytes(w);
        if (w.lora >= 0)
            for (const LoraTerm & t : lora[size_t(w.lora)]) bytes += sz(t.a.nbytes()) + sz(t.b.nbytes());
    });
    return bytes;
}

// Staging the op offload needs for the matmuls of one layer.
size_t offload_staging(const LayerWeights & L) {
    const WeightRef * qkv[3] = {&L.wq, &L.wk, &L.wv};
    const WeightRef * ffn[2] = {&L.w_gate, &L.w_up};
    const WeightRef * wo = &L.wo;
    const WeightRef * wd = &L.w_down;
    return std::max({OpOffload::staging_bytes(qkv, 3), OpOffload::staging_bytes(ffn, 2),
                     OpOffload::staging_bytes(&wo, 1), OpOffload::staging_bytes(&wd, 1)});
}

// ff: the widest feed-forward a GPU block may run (n_ff, or a shared expert's rows, which may be
// wider; the routed experts run on the host).
GpuBackendOptions gpu_options(const Config & c, const ModelParams & p, int slot_ctx, int ff) {
    GpuBackendOptions go;
    go.n_threads = p.n_threads;
    go.n_batch = p.n_batch;
    go.max_k = std::max({c.n_embd, c.q_dim(), ff});
    go.max_rows = std::max({c.n_vocab, ff, c.q_dim()});
    go.n_ff = ff;
    go.n_head = c.n_head;
    go.n_head_kv = c.n_head_kv;
    go.head_dim = c.head_dim;
    go.max_slot_ctx = slot_ctx;
    go.rope_swa = !c.swa_layers.empty();
    return go;
}

// Op-offload buffer sizes for the CPU blocks [0, n_cpu) (pointers left null).
// Op-offload buffer sizes for the CPU blocks [0, n_cpu) and every block's routed experts, which
// stay on the host wherever their block is (pointers left null; x: max_k floats a row).
OpOffloadBuffers offload_sizes(const Config & c, const std::vector<LayerWeights> & layers, int n_cpu, size_t nb,
                               int max_k) {
    OpOffloadBuffers ob;
    for (int l = 0; l < n_cpu; ++l) ob.weight_bytes = std::max(ob.weight_bytes, offload_staging(layers[l]));
    for (const LayerWeights & L : layers) {
        if (!L.moe() || L.up_exps.rows == 0) continue;  // (gemma4's fused gate_up: its blocks stay on the CPU)
        const WeightRef g = expert_slice(L.gate_exps, 0, c.n_expert), u = expert_slice(L.up_exps, 0, c.n_expert);
        const WeightRef d = expert_slice(L.down_exps, 0, c.n_expert);
        const WeightRef * gu[2] = {&u, &g};  // (an ungated expert: up alone)
        const WeightRef * dw = &d;
        ob.weight_bytes = std::max({ob.weight_bytes, OpOffload::staging_bytes(gu, L.gate_exps.rows ? 2 : 1),
                                    OpOffload::staging_bytes(&dw, 1)});
    }
    ob.x_floats = nb * size_t(max_k);
    ob.y_floats = nb * size_t(std::max({c.q_dim() + 2 * c.kv_dim(), c.n_ff, c.n_embd, c.n_ff_exp}));
    return ob;
}

}  // namespace

int Model::gpu_ff() const {
    // (op offload may run any host feed-forward's matmuls on the GPU: the routed experts', a gated
    // shared expert's; else only the GPU blocks' own)
    const bool offload = params_.op_offload;
    int ff = cfg_.n_expert > 0 && offload ? std::max(cfg_.n_ff, cfg_.n_ff_exp) : cfg_.n_ff;
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const LayerWeights & L = w_.layers[l];
        for_device_matrices(L, host_mixer(l), [&](const WeightRef & w) {
            if (&w == &L.w_gate || &w == &L.w_up) ff = std::max(ff, int(w.rows));
        });
        if (offload) ff = std::max({ff, int(L.w_gate.rows), int(L.w_up.rows)});
    }
    return ff;
}

// Calls mv(host pointer, bytes) -> pointer for every tensor of the GPU-resident parts (blocks
// first_gpu.. and, if output_gpu, the output layer) and stores the result in its place.
template <class Move>
void Model::move_gpu_tensors(int first_gpu, bool output_gpu, Move && mv) {
    const Config & c = cfg_;
    auto vec = [&](const float *& p, int64_t n) {
        if (p) p = static_cast<const float *>(mv(static_cast<const void *>(p), sizeof(float) * size_t(n)));
    };
    auto mat = [&](WeightRef & w) {
        w.data = mv(w.data, w.nbytes());
        vec(w.bias, w.rows);
        if (w.lora >= 0)
            for (LoraTerm & t : lora_[size_t(w.lora)]) {
                t.a.data = mv(t.a.data, t.a.nbytes());
                t.b.data = mv(t.b.data, t.b.nbytes());
            }
    };
    for (int l = first_gpu; l < c.n_layer; ++l) {
        LayerWeights & L = w_.layers[l];
        for_norms(L, c, [&](const float *& p, int64_t n) {
            if (!host_vector(L, p, host_mixer(l))) vec(p, n);
        });
        for_device_matrices(L, host_mixer(l), mat);
    }
    if (output_gpu) {
        vec(w_.output_norm, c.n_embd);
        mat(w_.output);
    }
}

Model::PlacementPlan Model::plan_placement() const {
    const Config & c = cfg_;
    PlacementPlan pp;
    const int ngl = params_.n_gpu_layers;
    pp.n_gpu = ngl < 0 ? c.n_layer + 1 : std::min(ngl, c.n_layer + 1);  // parts: output + blocks
    if (c.encoder && pp.n_gpu > 0) {  // no CUDA encoder (LayerNorm, non-causal attention) yet
        pp.warning = strfmt("n_gpu_layers=%d: a %s model (an encoder) runs on the CPU in this version", ngl,
                            c.arch_name.c_str());
        return pp;
    }
    if (c.encoder) return pp;  // (and no op offload)
    if (c.arch == Arch::Gemma4 && pp.n_gpu > 1) {  // (per-layer head shapes, value norms: model/gemma4.cpp)
        pp.warning = strfmt("n_gpu_layers=%d: the blocks of a gemma4 model run on the CPU in this version; only "
                            "the output layer goes to the GPU", ngl);
        pp.n_gpu = 1;
    }
    // (deepseek2's latent attention, llama4's chunked layers, deci's per-layer heads: no CUDA path yet)
    if ((c.arch == Arch::DeepSeek2 || c.arch == Arch::Llama4 || c.arch == Arch::Deci) && pp.n_gpu > 1) {
        pp.warning = strfmt("n_gpu_layers=%d: the blocks of a %s model (%s) run on the CPU in this version; only the "
                            "output layer goes to the GPU", ngl, c.arch_name.c_str(),
                            c.arch == Arch::DeepSeek2 ? "latent attention"
                            : c.arch == Arch::Llama4  ? "chunked attention"
                                                      : "attention shapes per layer");
        pp.n_gpu = 1;
    }
    if (c.nemotron() && pp.n_gpu > 1) {  // (its MLP layers' squared ReLU: no CUDA path yet)
        pp.warning = strfmt("n_gpu_layers=%d: the blocks of an %s model (Mamba-2 layers, squared-ReLU MLPs) run on "
                            "the CPU in this version; only the output layer goes to the GPU", ngl, c.arch_name.c_str());
        pp.n_gpu = 1;
    }
    if (c.qk_norm_heads && pp.n_gpu > 1) {  // (command-r's per-head q/k LayerNorms: no CUDA path yet)
        pp.warning = strfmt("n_gpu_layers=%d: the blocks of a %s model (per-head query and key LayerNorms) run on "
                            "the CPU in this version; only the output layer goes to the GPU", ngl, c.arch_name.c_str());
        pp.n_gpu = 1;
    }
    if (c.norm_bias && pp.n_gpu > 0) {  // (no CUDA LayerNorm bias yet: the output norm has one too)
        pp.warning = strfmt("n_gpu_layers=%d: a %s model (norms with biases) runs on the CPU in this version",
                            ngl, c.arch_name.c_str());
        pp.n_gpu = 0;
    } else if (c.ffn_act != FfnAct::Glu && pp.n_gpu > 1) {  // no CUDA xIELU / ReLU squared yet
        pp.warning = strfmt("n_gpu_layers=%d: the blocks of an %s model (its feed-forward's activation) run on the "
                            "CPU in this version; only the output layer goes to the GPU", ngl, c.arch_name.c_str());
        pp.n_gpu = 1;
    }
    if ((c.n_expert > 0 || c.recurrent()) && pp.n_gpu > 1 && pp.warning.empty()) {
        // (no CUDA expert, short-convolution, Mamba-2 or delta-net kernels yet)
        const char * mixers = c.mamba2() ? "Mamba-2 mixers" : c.delta_net ? "gated delta-net and gated attention mixers"
                                                                          : "short-convolution mixers";
        const std::string what = c.recurrent() && c.n_expert > 0 ? strfmt("%s and experts", mixers)
                                 : c.recurrent()                 ? std::string(mixers)
                                                                 : std::string("experts");
        pp.warning = strfmt("n_gpu_layers=%d: the %s of an %s model stay in host memory and run on the CPU in this "
                            "version%s; the rest of its blocks go to the GPU", ngl, what.c_str(), c.arch_name.c_str(),
                            c.n_expert > 0 ? " (the experts as llama.cpp's --cpu-moe places them)" : "");
    }
    pp.output_gpu = pp.n_gpu >= 1;
    pp.first_gpu = c.n_layer - std::max(pp.n_gpu - 1, 0);  // first block on the GPU
    // (op offload: of the CPU blocks' matmuls, and of the routed experts, on the host wherever their block is)
    pp.offload = params_.op_offload && (pp.first_gpu > 0 || (c.n_expert > 0 && pp.n_gpu > 1));
    if (pp.n_gpu == 0 && !pp.offload) return pp;
    const GpuInfo gi = gpu_info();
    if (!gi.available) {
        if (pp.n_gpu > 0)
            pp.warning = strfmt("n_gpu_layers=%d requested, but %s; running on the CPU", ngl, gi.reason.c_str());
        return pp;
    }

    // Everything the GPU will hold, checked against its free memory before anything is allocated.
    const GpuBackendOptions go = gpu_options(c, params_, kv_.slot_ctx, gpu_ff());
    const size_t nb = size_t(params_.n_batch);
    pp.gpu_buffers = gpu_backend_overhead(go);
    for (int l = pp.first_gpu; l < c.n_layer; ++l)
        pp.gpu_weights += device_layer_bytes(w_.layers[l], c, lora_, host_mixer(l), false);
    if (pp.output_gpu) pp.gpu_weights += align256(sizeof(float) * c.n_embd) + gpu_matrix_bytes(w_.output);
    if (pp.output_gpu && w_.output.lora >= 0)
        for (const LoraTerm & t : lora_[size_t(w_.output.lora)])
            pp.gpu_weights += align256(t.a.nbytes()) + align256(t.b.nbytes());
    if (params_.offload_kqv)
        for (int l = pp.first_gpu; l < c.n_layer; ++l) pp.gpu_kv += host_mixer(l) ? 0 : layer_kv_bytes(l);
    if (pp.n_gpu > 0) pp.gpu_buffers += activation_bytes(false) + sizeof(float) * nb * size_t(c.n_vocab);  // + logits
    if (pp.offload) {
        const OpOffloadBuffers ob = offload_sizes(c, w_.layers, pp.first_gpu, nb, go.max_k);
        pp.gpu_buffers += ob.weight_bytes + sizeof(float) * (ob.y_floats + ob.x_floats);
    }
    const size_t need = pp.gpu_weights + pp.gpu_kv + pp.gpu_buffers;
    if (need > gi.free_bytes) {
        const std::string msg = strfmt(
            "not enough memory on %s (%s) for n_gpu_layers=%d: it needs %.1f MiB (weights %.1f, KV cache %.1f, "
            "buffers %.1f) and %.1f MiB is free; lower n_gpu_layers%s",
            gi.name.c_str(), gi.description.c_str(), ngl, mib(need), mib(pp.gpu_weights), mib(pp.gpu_kv),
            mib(pp.gpu_buffers), mib(gi.free_bytes),
            params_.offload_kqv && pp.n_gpu > 1 ? " or pass offload_kqv=False" : "");
        if (pp.n_gpu > 0) throw CudaError(msg);
        pp.warning = "op offload disabled: " + msg;
        pp.gpu_weights = pp.gpu_kv = pp.gpu_buffers = 0;
        return pp;
    }
    pp.use_gpu = true;
    return pp;
}

void Model::place_on_devices() {
    const Config & c = cfg_;
    Backend * cpu = cpu_.get();
    layer_backend_.assign(c.n_layer, cpu);
    kv_backend_.assign(c.n_layer, cpu);
    output_backend_ = cpu;
    const PlacementPlan pp = plan_placement();
    if (!pp.warning.empty()) warnings_.push_back(pp.warning);
    if (!pp.use_gpu) return describe_placement();

    const GpuBackendOptions go = gpu_options(c, params_, kv_.slot_ctx, gpu_ff());
    const size_t nb = size_t(params_.n_batch);
    gpu_ = make_gpu_backend(go);
    gpu_->init_rope(c, w_.rope_freqs);  // frequency factors are read on the host
    Backend * gpu = gpu_.get();
    for (int l = pp.first_gpu; l < c.n_layer; ++l) {
        layer_backend_[l] = gpu;
        kv_backend_[l] = params_.offload_kqv && !host_mixer(l) ? gpu : cpu;  // (a host mixer's cache: with it)
    }
    if (pp.output_gpu) output_backend_ = gpu;

    // Upload, tensor by tensor from the mapping; the mapped pages are then dropped, except the
    // embedding's when the output layer shares it.
    if (pp.gpu_weights > 0) {
        auto * arena = static_cast<uint8_t *>(alloc_on(gpu, pp.gpu_weights, Kind::Weights));
        size_t off = 0;
        const void * embd = w_.tok_embd.data;
        move_gpu_tensors(pp.first_gpu, pp.output_gpu, [&](const void * p, size_t n) -> const void * {
            void * d = arena + off;
            off += align256(n);
            gpu->upload(d, p, n);
            if (p != embd && file_->contains(p, n)) file_->advise_dontneed(p, n);  // (not an adapter's)
            return d;
        });
        SL_CHECK(off == pp.gpu_weights, "internal: uploaded %zu bytes of weights, planned %zu", off, pp.gpu_weights);
        gpu->synchronize();
        drop_uploaded_lora_b(pp.first_gpu, pp.output_gpu);
    }
    if (pp.output_gpu)
        dev_logits_ = static_cast<float *>(alloc_on(gpu, sizeof(float) * nb * size_t(c.n_vocab)));
    if (pp.offload) {
        OpOffloadBuffers ob = offload_sizes(c, w_.layers, pp.first_gpu, nb, go.max_k);
        ob.weights = alloc_on(gpu, ob.weight_bytes);
        ob.x = static_cast<float *>(alloc_on(gpu, sizeof(float) * ob.x_floats));
        ob.y = static_cast<float *>(alloc_on(gpu, sizeof(float) * ob.y_floats));
        offload_ = std::make_unique<OpOffload>(*cpu_, *gpu, ob);
    }
    describe_placement();
}

MemoryEstimate Model::estimate(const std::string & path, const ModelParams & params) {
    const Model m(path, params, DryRun{});
    const Config & c = m.cfg_;
    const PlacementPlan pp = m.plan_placement();
    const int first_gpu = pp.use_gpu ? pp.first_gpu : c.n_layer;
    const bool output_gpu = pp.use_gpu && pp.output_gpu;
    const std::string gpu_name = pp.use_gpu ? gpu_info().name : "";
    MemoryEstimate e;
    e.n_layer = c.n_layer;
    e.n_gpu_layers = pp.use_gpu ? pp.n_gpu : 0;
    for (int l = 0; l < c.n_layer; ++l)  // the layers whose cache grows with the context
        if (const KVLayout & kv = m.layer_kv(l); !kv.ring && c.kv_source(l) == l)  // (lfm2's convolution layers: none)
            e.kv_bytes_per_token += size_t(kv.n_head_kv) * (kv.k_row() + kv.v_row());
    e.swa_cells = m.swa_cells();
    e.gpu_warning = pp.warning;
    for (const char * key : {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
        if (const GGUFValue * v = m.file_->find(key); v && v->type == GGUFType::ARRAY) e.tokenizer_entries += v->arr.size();

    const bool kv_gpu = params.offload_kqv;
    DeviceMemory cpu{"CPU"};
    cpu.weights = m.w_.tok_embd.nbytes() + m.w_.input_bytes();
    e.parts.push_back({"token_embd", "CPU", cpu.weights, 0, ""});
    for (int l = 0; l < c.n_layer; ++l) {
        const bool on_gpu = l >= first_gpu;
        const size_t first = e.parts.size();
        m.layer_parts(l, on_gpu ? gpu_name : "CPU", on_gpu && kv_gpu && !m.host_mixer(l) ? gpu_name : "CPU", e.parts);
        for (size_t i = first; i < e.parts.size(); ++i) {
            if (e.parts[i].device == "CPU") cpu.weights += e.parts[i].weight_bytes;
            if (e.parts[i].kv_device == "CPU") cpu.kv += e.parts[i].kv_bytes;
        }
    }
    const bool shared = !output_gpu && m.w_.output.data == m.w_.tok_embd.data;
    const size_t out_bytes = m.output_bytes(shared);
    if (!output_gpu) cpu.weights += out_bytes;
    if (!c.encoder) e.parts.push_back({"output", output_gpu ? gpu_name : "CPU", out_bytes, 0, ""});
    cpu.kv += m.conv_state_bytes();
    cpu.buffers = CpuBackend::scratch_bytes(m.cpu_options()) + m.activation_bytes(true);
    if (c.encoder)  // the encoder's attention buffers, one set per thread (Model::enc_work_)
        cpu.buffers += sizeof(float) * encoder_attention_floats(params.n_batch, c.head_dim, c.n_swa > 0) *
                       size_t(std::max(1, m.cpu_options().n_threads));
    if (first_gpu < c.n_layer || output_gpu) cpu.buffers += sizeof(float) * size_t(params.n_batch) * c.n_embd;
    cpu.overhead = m.file_->header_bytes();  // (every part of a split)
    e.devices.push_back(cpu);
    if (pp.use_gpu) e.devices.push_back({gpu_name, pp.gpu_weights, pp.gpu_kv, pp.gpu_buffers, 0});
    return e;
}

std::vector<DeviceMemory> Model::memory() const {
    std::vector<DeviceMemory> out;
    auto dev = [&](const std::string & name) -> DeviceMemory & {
        for (DeviceMemory & d : out)
            if (d.device == name) return d;
        out.push_back({name});
        return out.back();
    };
    DeviceMemory & cpu = dev("CPU");
    for (const Placement & p : placement_)
        if (p.device == "CPU") cpu.weights += p.weight_bytes;
    cpu.buffers = cpu_->scratch_bytes() + (enc_work_.size() + dn_work_.size()) * sizeof(float);  // (+ qwen35's)
    cpu.overhead = file_->header_bytes();
    for (const Owned & o : owned_) {
        DeviceMemory & d = dev(o.be->name());
        (o.kind == Kind::Weights ? d.weights : o.kind == Kind::KV ? d.kv : d.buffers) += o.bytes;
    }
    if (gpu_) dev(gpu_->name()).buffers += gpu_backend_overhead(gpu_options(cfg_, params_, kv_.slot_ctx, gpu_ff()));
    dev("CPU").kv += conv_state_bytes();
    return out;
}

void Model::describe_placement() {
    const Config & c = cfg_;
    placement_.clear();
    placement_.push_back({"token_embd", cpu_->name(), w_.tok_embd.nbytes() + w_.input_bytes(), 0, ""});
    for (int l = 0; l < c.n_layer; ++l)
        layer_parts(l, layer_backend_[l]->name(), kv_backend_[l]->name(), placement_);
    // A tied output layer on the CPU reads the embedding; on the GPU it has its own copy.
    const bool shared = output_backend_->is_cpu() && w_.output.data == w_.tok_embd.data;
    if (!c.encoder) placement_.push_back({"output", output_backend_->name(), output_bytes(shared), 0, ""});
}

void Model::layer_parts(int l, const std::string & dev, const std::string & kv_dev, std::vector<Placement> & out) const {
    const Config & c = cfg_;
    const LayerWeights & L = w_.layers[l];
    const std::string name = "blk." + std::to_string(l);
    const size_t total = layer_weight_bytes(L, c, lora_);
    if (dev == "CPU") {
        out.push_back({name, dev, total, layer_kv_bytes(l), c.encoder ? "" : kv_dev});  // (an encoder: no cache)
        return;
    }
    const size_t device = device_layer_bytes(L, c, lora_, host_mixer(l), true), experts = host_expert_bytes(L, c);
    out.push_back({name, dev, device, layer_kv_bytes(l), kv_dev});
    if (total - device > experts) out.push_back({name + ".mixer", "CPU", total - device - experts, 0, ""});
    if (experts > 0) out.push_back({name + ".experts", "CPU", experts, 0, ""});
}

size_t Model::output_bytes(bool shared) const {
    if (cfg_.encoder) return 0;  // no output layer
    return (shared ? 0 : w_.output.nbytes()) + sizeof(float) * cfg_.n_embd + lora_bytes(w_.output);
}

}  // namespace sl
