#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/imatrix.h"
#include "model/model.h"
#include "python/bind.h"

namespace sl::py {

namespace {

QType kv_type(const std::string & name) {
    QType t;
    if (!qtype_from_name(name.c_str(), &t)) throw pyb::value_error("unknown KV cache type '" + name + "'");
    return t;
}

using I32 = pyb::array_t<int32_t, pyb::array::c_style | pyb::array::forcecast>;
using U8 = pyb::array_t<uint8_t, pyb::array::c_style | pyb::array::forcecast>;
using F32 = pyb::array_t<float, pyb::array::c_style>;

// Checks the batch arrays and returns how many logits rows they ask for.
int64_t check_batch(const Model & m, const I32 & tokens, const I32 & pos, const I32 & slot,
                    const std::optional<U8> & want) {
    const int64_t n = tokens.size();
    if (tokens.ndim() != 1 || pos.ndim() != 1 || slot.ndim() != 1 || pos.size() != n || slot.size() != n)
        throw pyb::value_error("tokens, pos and slot must be 1-D arrays of the same length");
    if (want && (want->ndim() != 1 || want->size() != n))
        throw pyb::value_error("want_logits must be a 1-D array as long as tokens");
    int64_t n_out = n;
    if (want) {
        n_out = 0;
        for (int64_t i = 0; i < n; ++i) n_out += want->data()[i] != 0;
    }
    (void)m;
    return n_out;
}

ModelParams make_params(int n_ctx, int n_batch, int n_threads, int n_seq_max, int n_gpu_layers,
                        const std::string & type_k, const std::string & type_v, bool offload_kqv, bool op_offload,
                        bool kv_rotate, bool swa_full, const std::vector<std::pair<std::string, float>> & loras) {
    ModelParams p;
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_threads = n_threads;
    p.n_seq_max = n_seq_max;
    p.n_gpu_layers = n_gpu_layers;
    p.type_k = kv_type(type_k);
    p.type_v = kv_type(type_v);
    p.offload_kqv = offload_kqv;
    p.op_offload = op_offload;
    p.kv_rotate = kv_rotate;
    p.swa_full = swa_full;
    p.loras = loras;
    return p;
}

pyb::dict device_dict(const DeviceMemory & d) {
    return pyb::dict(pyb::arg("name") = d.device, pyb::arg("weights") = d.weights, pyb::arg("kv") = d.kv,
                     pyb::arg("buffers") = d.buffers, pyb::arg("overhead") = d.overhead);
}

pyb::list devices_list(const std::vector<DeviceMemory> & ds) {
    pyb::list out;
    for (const DeviceMemory & d : ds) out.append(device_dict(d));
    return out;
}

pyb::list parts_list(const std::vector<Placement> & ps) {
    pyb::list out;
    for (const Placement & p : ps)
        out.append(pyb::dict(pyb::arg("name") = p.name, pyb::arg("device") = p.device,
                             pyb::arg("weight_bytes") = p.weight_bytes, pyb::arg("kv_bytes") = p.kv_bytes,
                             pyb::arg("kv_device") = p.kv_device));
    return out;
}

}  // namespace

void bind_model(pyb::module_ & m) {
    m.def(
        "plan_memory",
        [](const std::string & path, int n_ctx, int n_batch, int n_threads, int n_seq_max, int n_gpu_layers,
           const std::string & type_k, const std::string & type_v, bool offload_kqv, bool op_offload,
           bool swa_full, const std::vector<std::pair<std::string, float>> & loras) {
            const ModelParams p = make_params(n_ctx, n_batch, n_threads, n_seq_max, n_gpu_layers, type_k, type_v,
                                              offload_kqv, op_offload, true, swa_full, loras);
            MemoryEstimate e;
            {
                pyb::gil_scoped_release nogil;
                e = Model::estimate(path, p);
            }
            return pyb::dict(pyb::arg("n_layer") = e.n_layer, pyb::arg("n_gpu_layers") = e.n_gpu_layers,
                             pyb::arg("n_ctx") = n_ctx, pyb::arg("kv_bytes_per_token") = e.kv_bytes_per_token,
                             pyb::arg("swa_cells") = e.swa_cells,
                             pyb::arg("devices") = devices_list(e.devices), pyb::arg("parts") = parts_list(e.parts),
                             pyb::arg("gpu_warning") = e.gpu_warning,
                             pyb::arg("tokenizer_entries") = e.tokenizer_entries);
        },
        pyb::arg("path"), pyb::kw_only(), pyb::arg("n_ctx") = 4096, pyb::arg("n_batch") = 512,
        pyb::arg("n_threads") = 0, pyb::arg("n_seq_max") = 1, pyb::arg("n_gpu_layers") = 0,
        pyb::arg("type_k") = "f16", pyb::arg("type_v") = "f16", pyb::arg("offload_kqv") = true,
        pyb::arg("op_offload") = true, pyb::arg("swa_full") = false,
        pyb::arg("loras") = std::vector<std::pair<std::string, float>>{},
        "What a Model with these settings would hold per device, from the GGUF header alone.");

    pyb::class_<Model>(m, "Model")
        .def(pyb::init([](const std::string & path, int n_ctx, int n_batch, int n_threads, int n_seq_max,
                          int n_gpu_layers, const std::string & type_k, const std::string & type_v, bool offload_kqv,
                          bool op_offload, bool kv_rotate, bool swa_full,
                          const std::vector<std::pair<std::string, float>> & loras, int rope_scaling_type,
                          float rope_freq_base, float rope_freq_scale, float yarn_ext_factor, float yarn_attn_factor,
                          float yarn_beta_fast, float yarn_beta_slow, int yarn_orig_ctx,
                          const std::vector<std::pair<std::string, KVOverride>> & kv_overrides) {
                 ModelParams p = make_params(n_ctx, n_batch, n_threads, n_seq_max, n_gpu_layers, type_k, type_v,
                                             offload_kqv, op_offload, kv_rotate, swa_full, loras);
                 p.rope = {rope_scaling_type, rope_freq_base, rope_freq_scale, yarn_ext_factor, yarn_attn_factor,
                           yarn_beta_fast, yarn_beta_slow, yarn_orig_ctx};
                 p.kv_overrides = kv_overrides;
                 pyb::gil_scoped_release nogil;
                 return new Model(path, p);
             }),
             pyb::arg("path"), pyb::kw_only(), pyb::arg("n_ctx") = 4096, pyb::arg("n_batch") = 512,
             pyb::arg("n_threads") = 0, pyb::arg("n_seq_max") = 1, pyb::arg("n_gpu_layers") = 0,
             pyb::arg("type_k") = "f16", pyb::arg("type_v") = "f16", pyb::arg("offload_kqv") = true,
             pyb::arg("op_offload") = true, pyb::arg("kv_rotate") = true, pyb::arg("swa_full") = false,
             pyb::arg("loras") = std::vector<std::pair<std::string, float>>{},
             pyb::arg("rope_scaling_type") = -1, pyb::arg("rope_freq_base") = 0.0f, pyb::arg("rope_freq_scale") = 0.0f,
             pyb::arg("yarn_ext_factor") = -1.0f, pyb::arg("yarn_attn_factor") = -1.0f,
             pyb::arg("yarn_beta_fast") = -1.0f, pyb::arg("yarn_beta_slow") = -1.0f, pyb::arg("yarn_orig_ctx") = 0,
             pyb::arg("kv_overrides") = std::vector<std::pair<std::string, KVOverride>>{})
        .def(
            "decode",
            [](Model & self, const I32 & tokens, const I32 & pos, const I32 & slot, std::optional<U8> want,
               std::optional<F32> out, bool embeddings, bool classify) {
                const int64_t n = tokens.size();
                const int64_t n_out = check_batch(self, tokens, pos, slot, want);
                const int64_t width = classify ? self.n_cls_out() : embeddings ? self.n_embd() : self.n_vocab();
                F32 result = out ? *out : F32({n_out, width});
                if (result.ndim() != 2 || result.shape(0) != n_out || result.shape(1) != width)
                    throw pyb::value_error(classify     ? "out must be a C-contiguous float32 array of shape (n_wanted, n_cls_out)"
                                           : embeddings ? "out must be a C-contiguous float32 array of shape (n_wanted, n_embd)"
                                                        : "out must be a C-contiguous float32 array of shape (n_logits, n_vocab)");
                float * dst = n_out ? result.mutable_data() : nullptr;
                const uint8_t * w = want ? want->data() : nullptr;
                {
                    pyb::gil_scoped_release nogil;
                    self.decode(tokens.data(), pos.data(), slot.data(), w, int(n), dst, embeddings, classify);
                }
                return result;
            },
            pyb::arg("tokens"), pyb::arg("pos"), pyb::arg("slot"), pyb::arg("want_logits") = pyb::none(),
            pyb::arg("out") = pyb::none(), pyb::arg("embeddings") = false, pyb::arg("classify") = false,
            "Evaluates tokens at positions pos of sequence slots slot; returns float32 logits "
            "(n_wanted, n_vocab) for the tokens flagged in want_logits (all when None), or with "
            "embeddings the final hidden states after the output norm (n_wanted, n_embd); with classify "
            "(a reranker) each flagged token's classification scores (n_wanted, n_cls_out).")
        .def_property_readonly("memory", [](const Model & self) { return devices_list(self.memory()); },
                               "Bytes held per device: weights, kv, buffers, overhead.")
        .def_property_readonly("n_vocab", &Model::n_vocab)
        .def_property_readonly("n_embd", &Model::n_embd)
        .def(
            "kv_read",
            [](const Model & self, int slot, int n) {
                SL_CHECK(n >= 0 && n <= self.slot_ctx(), "%d cells: outside the slot's %d", n, self.slot_ctx());
                std::string out(self.kv_state_bytes(n), '\0');
                {
                    pyb::gil_scoped_release nogil;
                    self.kv_read(slot, n, reinterpret_cast<uint8_t *>(out.data()));
                }
                return pyb::bytes(out);
            },
            pyb::arg("slot"), pyb::arg("n"), "The K/V of cells [0, n) of a slot, every layer, as bytes.")
        .def(
            "kv_write",
            [](Model & self, int slot, int n, const pyb::bytes & data) {
                SL_CHECK(n >= 0, "negative cell count %d", n);
                const std::string_view v(data);
                SL_CHECK(v.size() == self.kv_state_bytes(n), "a KV state of %zu bytes; %d cells of this model take %zu",
                         v.size(), n, self.kv_state_bytes(n));
                pyb::gil_scoped_release nogil;
                self.kv_write(slot, n, reinterpret_cast<const uint8_t *>(v.data()));
            },
            pyb::arg("slot"), pyb::arg("n"), pyb::arg("data"), "Puts back what kv_read gave (cells [0, n)).")
        .def("kv_reusable", &Model::kv_reusable, pyb::arg("slot"), pyb::arg("n"),
             "The longest prefix of a slot's n cached positions evaluation may continue from: n, or 0 "
             "when the sliding-window cache no longer holds what the next token attends to.")
        .def_property_readonly("swa_cells", &Model::swa_cells)
        .def_property_readonly("slot_ctx", &Model::slot_ctx)
        .def_property_readonly("n_eval", &Model::n_eval)
        .def_property_readonly("n_forward", &Model::n_forward)
        .def_property_readonly("n_op_offload", &Model::n_op_offload)
        .def("imatrix_start", &Model::imatrix_start, pyb::arg("process_output") = false,
             "Starts importance-matrix collection (llama-imatrix's): every decode adds the squared "
             "matmul inputs per weight; process_output: output.weight's too. Restarting drops what "
             "was collected.")
        .def(
            "imatrix_stop",
            [](Model & self) {
                const std::unique_ptr<ImatrixCollector> c = self.imatrix_stop();
                pyb::list out;
                if (!c) return out;
                for (const ImatrixEntry & e : c->entries()) {
                    pyb::array_t<double> sums({int64_t(e.n_mat), e.n_per_row});
                    pyb::array_t<int64_t> counts(int64_t(e.n_mat));
                    std::copy(e.sums.begin(), e.sums.end(), sums.mutable_data());
                    std::copy(e.counts.begin(), e.counts.end(), counts.mutable_data());
                    out.append(pyb::make_tuple(e.name, sums, counts));
                }
                return out;
            },
            "Stops collection; returns [(weight name, sums (n_mat, n_per_row) float64, counts (n_mat,) "
            "int64)] in the order first seen ([] when collection was off).")
        .def_property_readonly("imatrix_active", &Model::imatrix_active)
        .def_property_readonly("warnings", &Model::warnings)
        .def_property_readonly("lora_scales", &Model::lora_scales,
                               "The LoRA adapters' scales, one per entry of loras, as set last.")
        .def("set_lora_scales", &Model::set_lora_scales, pyb::arg("scales"),
             "Sets every LoRA adapter's scale (one per entry of loras) for the decodes that follow; "
             "0 skips an adapter. The K/V already cached are left as they are.")
        .def_property_readonly("placement", [](const Model & self) { return parts_list(self.placement()); })
        .def_property_readonly("config", [](const Model & self) {
            const Config & c = self.config();
            std::vector<int> swa;  // the sliding-window layers
            for (int l = 0; l < c.n_layer; ++l)
                if (c.is_swa(l)) swa.push_back(l);
            std::vector<int> conv;  // lfm2's convolution layers (a recurrent state per sequence)
            for (int l = 0; l < c.n_layer; ++l)
                if (c.is_conv(l)) conv.push_back(l);
            return pyb::dict(pyb::arg("n_swa") = c.n_swa, pyb::arg("swa_layers") = swa,
                             pyb::arg("conv_layers") = conv, pyb::arg("conv_l_cache") = c.conv_l_cache,
                             pyb::arg("recurrent") = c.recurrent(),
                             pyb::arg("ssm") = std::vector<int>{c.ssm_d_conv, c.ssm_d_inner, c.ssm_d_state,
                                                                c.ssm_n_head, c.ssm_n_group},
                             pyb::arg("arch") = c.arch_name, pyb::arg("n_layer") = c.n_layer,
                             pyb::arg("n_embd") = c.n_embd, pyb::arg("n_head") = c.n_head,
                             pyb::arg("n_head_kv") = c.n_head_kv, pyb::arg("head_dim") = c.head_dim,
                             pyb::arg("n_ff") = c.n_ff, pyb::arg("n_vocab") = c.n_vocab,
                             pyb::arg("n_ctx_train") = c.n_ctx_train, pyb::arg("rms_eps") = c.rms_eps,
                             pyb::arg("n_rot") = c.n_rot, pyb::arg("rope_base") = c.rope_base,
                             pyb::arg("rope_freq_scale") = c.rope_freq_scale, pyb::arg("rope_neox") = c.rope_neox,
                             pyb::arg("encoder") = c.encoder, pyb::arg("learned_pos") = c.learned_pos,
                             pyb::arg("n_cls_out") = self.n_cls_out(),
                             pyb::arg("has_cls_out") = self.file().find_tensor("cls.output.weight") != nullptr);
        });
}

}  // namespace sl::py
