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

size_t layer_weight_bytes(const LayerWeights & L, const Config & c) {
    size_t bytes = L.wq.nbytes() + L.wk.nbytes() + L.wv.nbytes() + L.wo.nbytes() + L.w_gate.nbytes() +
                   L.w_up.nbytes() + L.w_down.nbytes() + sizeof(float) * 2 * c.n_embd;
    if (c.has_qkv_bias) bytes += sizeof(float) * (c.q_dim() + 2 * c.kv_dim());
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

GpuBackendOptions gpu_options(const Config & c, const ModelParams & p, int slot_ctx) {
    GpuBackendOptions go;
    go.n_threads = p.n_threads;
    go.n_batch = p.n_batch;
    go.max_k = std::max({c.n_embd, c.q_dim(), c.n_ff});
    go.max_rows = std::max({c.n_vocab, c.n_ff, c.q_dim()});
    go.n_ff = c.n_ff;
    go.n_head = c.n_head;
    go.n_head_kv = c.n_head_kv;
    go.head_dim = c.head_dim;
    go.max_slot_ctx = slot_ctx;
    return go;
}

// Op-offload buffer sizes for the CPU blocks [0, n_cpu) (pointers left null).
OpOffloadBuffers offload_sizes(const Config & c, const std::vector<LayerWeights> & layers, int n_cpu, size_t nb) {
    OpOffloadBuffers ob;
    for (int l = 0; l < n_cpu; ++l) ob.weight_bytes = std::max(ob.weight_bytes, offload_staging(layers[l]));
    ob.y_floats = nb * size_t(std::max({c.q_dim() + 2 * c.kv_dim(), c.n_ff, c.n_embd}));
    return ob;
}

}  // namespace

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
    };
    for (int l = first_gpu; l < c.n_layer; ++l) {
        LayerWeights & L = w_.layers[l];
        vec(L.attn_norm, c.n_embd);
        for (WeightRef * w : {&L.wq, &L.wk, &L.wv, &L.wo}) mat(*w);
        vec(L.ffn_norm, c.n_embd);
        for (WeightRef * w : {&L.w_gate, &L.w_up, &L.w_down}) mat(*w);
    }
    if (output_gpu) {
        vec(w_.output_norm, c.n_embd);
        mat(w_.output);
    }
}

void Model::place_on_devices() {
    const Config & c = cfg_;
    Backend * cpu = cpu_.get();
    layer_backend_.assign(c.n_layer, cpu);
    kv_backend_.assign(c.n_layer, cpu);
    output_backend_ = cpu;
    const int ngl = params_.n_gpu_layers;
    const int n_gpu = ngl < 0 ? c.n_layer + 1 : std::min(ngl, c.n_layer + 1);  // parts: output + blocks
    const bool output_gpu = n_gpu >= 1;
    const int first_gpu = c.n_layer - std::max(n_gpu - 1, 0);  // first block on the GPU
    const bool offload = params_.op_offload && first_gpu > 0;
    if (n_gpu == 0 && !offload) return describe_placement();
    const GpuInfo gi = gpu_info();
    if (!gi.available) {
        if (n_gpu > 0)
            warnings_.push_back(strfmt("n_gpu_layers=%d requested, but %s; running on the CPU", ngl, gi.reason.c_str()));
        return describe_placement();
    }

    const GpuBackendOptions go = gpu_options(c, params_, kv_.slot_ctx);

    // Everything the GPU will hold, checked against its free memory before anything is allocated.
    const size_t nb = size_t(params_.n_batch);
    size_t weights = 0, kv = 0, buffers = gpu_backend_overhead(go);
    move_gpu_tensors(first_gpu, output_gpu, [&](const void * p, size_t n) {
        weights += align256(n);
        return p;
    });
    if (params_.offload_kqv) kv = size_t(c.n_layer - first_gpu) * align256(kv_.k_bytes() + kv_.v_bytes());
    if (n_gpu > 0)  // the activations of allocate_state(), and the logits
        buffers += sizeof(float) * nb * (2 * size_t(c.n_embd) + 2 * c.q_dim() + 2 * c.kv_dim() + c.n_ff + c.n_vocab);
    OpOffloadBuffers ob;
    if (offload) {
        ob = offload_sizes(c, w_.layers, first_gpu, nb);
        buffers += ob.weight_bytes + sizeof(float) * (ob.y_floats + nb * go.max_k);
    }
    const size_t need = weights + kv + buffers;
    if (need > gi.free_bytes) {
        const std::string msg = strfmt(
            "not enough memory on %s (%s) for n_gpu_layers=%d: it needs %.1f MiB (weights %.1f, KV cache %.1f, "
            "buffers %.1f) and %.1f MiB is free; lower n_gpu_layers%s",
            gi.name.c_str(), gi.description.c_str(), ngl, mib(need), mib(weights), mib(kv), mib(buffers),
            mib(gi.free_bytes), params_.offload_kqv && n_gpu > 1 ? " or pass offload_kqv=False" : "");
        if (n_gpu > 0) throw CudaError(msg);
        warnings_.push_back("op offload disabled: " + msg);
        return describe_placement();
    }

    gpu_ = make_gpu_backend(go);
    gpu_->init_rope(c, w_.rope_freqs);  // frequency factors are read on the host
    Backend * gpu = gpu_.get();
    for (int l = first_gpu; l < c.n_layer; ++l) {
        layer_backend_[l] = gpu;
        kv_backend_[l] = params_.offload_kqv ? gpu : cpu;
    }
    if (output_gpu) output_backend_ = gpu;

    // Upload, tensor by tensor from the mapping; the mapped pages are then dropped, except the
    // embedding's when the output layer shares it.
    if (weights > 0) {
        auto * arena = static_cast<uint8_t *>(alloc_on(gpu, weights));
        size_t off = 0;
        const void * embd = w_.tok_embd.data;
        move_gpu_tensors(first_gpu, output_gpu, [&](const void * p, size_t n) -> const void * {
            void * d = arena + off;
            off += align256(n);
            gpu->upload(d, p, n);
            if (p != embd) file_->advise_dontneed(p, n);
            return d;
        });
        gpu->synchronize();
    }
    if (output_gpu)
        dev_logits_ = static_cast<float *>(alloc_on(gpu, sizeof(float) * nb * size_t(c.n_vocab)));
    if (offload) {
        ob.weights = alloc_on(gpu, ob.weight_bytes);
        ob.x = static_cast<float *>(alloc_on(gpu, sizeof(float) * nb * go.max_k));
        ob.y = static_cast<float *>(alloc_on(gpu, sizeof(float) * ob.y_floats));
        offload_ = std::make_unique<OpOffload>(*cpu_, *gpu, ob);
    }
    describe_placement();
}

void Model::describe_placement() {
    const Config & c = cfg_;
    placement_.clear();
    placement_.push_back({"token_embd", cpu_->name(), w_.tok_embd.nbytes(), 0, ""});
    for (int l = 0; l < c.n_layer; ++l)
        placement_.push_back({"blk." + std::to_string(l), layer_backend_[l]->name(),
                              layer_weight_bytes(w_.layers[l], c), kv_.k_bytes() + kv_.v_bytes(),
                              kv_backend_[l]->name()});
    // A tied output layer on the CPU reads the embedding; on the GPU it has its own copy.
    const bool shared = output_backend_->is_cpu() && w_.output.data == w_.tok_embd.data;
    placement_.push_back({"output", output_backend_->name(),
                          (shared ? 0 : w_.output.nbytes()) + sizeof(float) * c.n_embd, 0, ""});
}

}  // namespace sl
