// GPU device information and the op-by-op test entry points (model/gpu_check.h). Arrays:
// weights and caches are uint8 arrays of raw GGUF blocks, everything else float32 / int32.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "model/gpu.h"
#include "model/gpu_check.h"
#include "python/bind.h"

namespace sl::py {

namespace {

using F32 = pyb::array_t<float, pyb::array::c_style | pyb::array::forcecast>;
using I32 = pyb::array_t<int32_t, pyb::array::c_style | pyb::array::forcecast>;
using U8 = pyb::array_t<uint8_t, pyb::array::c_style | pyb::array::forcecast>;

QType qtype(int id) {
    if (!qtype_traits(uint32_t(id))) throw pyb::value_error("unknown tensor type id " + std::to_string(id));
    return QType(id);
}

QType qtype_named(const std::string & name) {
    QType t;
    if (!qtype_from_name(name.c_str(), &t)) throw pyb::value_error("unknown type '" + name + "'");
    return t;
}

void need_2d(const pyb::array & a, const char * what) {
    if (a.ndim() != 2) throw pyb::value_error(std::string(what) + " must be a 2-D array");
}

// Values per row of a (rows, bytes) block array.
int64_t row_values(QType t, const U8 & w, const char * what) {
    need_2d(w, what);
    const QTypeTraits * tr = qtype_traits(t);
    if (w.shape(1) % int64_t(tr->type_size) != 0)
        throw pyb::value_error(std::string(what) + ": rows are not a whole number of " + tr->name + " blocks");
    return w.shape(1) / int64_t(tr->type_size) * tr->blck_size;
}

F32 to_array(const std::vector<float> & v, int64_t rows, int64_t cols) {
    F32 out({rows, cols});
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

gpucheck::Device device(const std::string & name, int vec_tokens, int attn_vec_tokens, bool graphs) {
    gpucheck::Device d;
    d.name = name;
    d.vec_tokens = vec_tokens;
    d.attn_vec_tokens = attn_vec_tokens;
    d.graphs = graphs;
    return d;
}

F32 op_matmul(const std::string & dev, int t, const U8 & w, const F32 & x, const std::optional<F32> & bias,
              const std::optional<F32> & y0, int vec_tokens) {
    const QType type = qtype(t);
    const int64_t K = row_values(type, w, "w"), rows = w.shape(0);
    need_2d(x, "x");
    if (x.shape(1) != K) throw pyb::value_error("x: rows must have as many values as the weight rows");
    const int64_t n = x.shape(0);
    if (bias && bias->size() != rows) throw pyb::value_error("bias: one value per weight row");
    if (y0 && (y0->ndim() != 2 || y0->shape(0) != n || y0->shape(1) != rows))
        throw pyb::value_error("y0: shape (n_tok, rows)");
    std::vector<float> y;
    {
        pyb::gil_scoped_release nogil;
        y = gpucheck::matmul(device(dev, vec_tokens, 8, false), type, w.data(), rows, K, bias ? bias->data() : nullptr,
                             x.data(), int(n), y0 ? y0->data() : nullptr);
    }
    return to_array(y, n, rows);
}

F32 op_glu(const std::string & dev, int tg, const U8 & gate, int tu, const U8 & up, const F32 & x, int vec_tokens,
           bool gelu) {
    const QType type_g = qtype(tg), type_u = qtype(tu);
    const int64_t K = row_values(type_g, gate, "gate"), rows = gate.shape(0);
    if (row_values(type_u, up, "up") != K || up.shape(0) != rows) throw pyb::value_error("up: shape differs from gate");
    need_2d(x, "x");
    if (x.shape(1) != K) throw pyb::value_error("x: rows must have as many values as the weight rows");
    std::vector<float> y;
    {
        pyb::gil_scoped_release nogil;
        y = gpucheck::glu(device(dev, vec_tokens, 8, false), gelu ? Glu::Gelu : Glu::Silu, type_g, gate.data(), type_u,
                          up.data(), rows, K, x.data(), int(x.shape(0)));
    }
    return to_array(y, x.shape(0), rows);
}

F32 op_add(const std::string & dev, const F32 & y, const F32 & x, float scale) {
    need_2d(y, "y");
    if (x.ndim() != 2 || x.shape(0) != y.shape(0) || x.shape(1) != y.shape(1))
        throw pyb::value_error("x: the shape of y");
    std::vector<float> out;
    {
        pyb::gil_scoped_release nogil;
        out = gpucheck::add(device(dev, 8, 8, false), y.data(), x.data(), y.size(), scale);
    }
    return to_array(out, y.shape(0), y.shape(1));
}

F32 op_rms_norm(const std::string & dev, const F32 & x, const F32 & w, float eps, bool layer) {
    need_2d(x, "x");
    if (w.size() != x.shape(1)) throw pyb::value_error("w: one value per column of x");
    std::vector<float> y;
    {
        pyb::gil_scoped_release nogil;
        y = gpucheck::rms_norm(device(dev, 8, 8, false), x.data(), w.data(), int(x.shape(0)), int(x.shape(1)), eps,
                               layer);
    }
    return to_array(y, x.shape(0), x.shape(1));
}

pyb::tuple op_rope(const std::string & dev, const F32 & q, const F32 & k, const I32 & pos, int n_head, int n_head_kv,
                   int head_dim, int n_rot, float base, float freq_scale, bool neox,
                   const std::optional<F32> & freq_factors, bool swa, float base_swa, float freq_scale_swa) {
    need_2d(q, "q");
    need_2d(k, "k");
    const int64_t n = q.shape(0);
    if (q.shape(1) != int64_t(n_head) * head_dim || k.shape(0) != n || k.shape(1) != int64_t(n_head_kv) * head_dim ||
        pos.size() != n)
        throw pyb::value_error("q (n_tok, n_head * head_dim), k (n_tok, n_head_kv * head_dim), pos (n_tok)");
    if (freq_factors && freq_factors->size() != n_rot / 2) throw pyb::value_error("freq_factors: n_rot / 2 values");
    gpucheck::RopeSpec r;
    r.n_head = n_head;
    r.n_head_kv = n_head_kv;
    r.head_dim = head_dim;
    r.n_rot = n_rot;
    r.base = base;
    r.freq_scale = freq_scale;
    r.neox = neox;
    r.freq_factors = freq_factors ? freq_factors->data() : nullptr;
    r.swa = swa;
    r.base_swa = base_swa;
    r.freq_scale_swa = freq_scale_swa;
    F32 qo({n, q.shape(1)}), ko({n, k.shape(1)});
    std::copy(q.data(), q.data() + q.size(), qo.mutable_data());
    std::copy(k.data(), k.data() + k.size(), ko.mutable_data());
    {
        pyb::gil_scoped_release nogil;
        gpucheck::rope(device(dev, 8, 8, false), r, pos.data(), int(n), qo.mutable_data(), ko.mutable_data());
    }
    return pyb::make_tuple(qo, ko);
}

F32 op_hadamard(const std::string & dev, const F32 & x) {
    need_2d(x, "x");
    if (x.shape(1) < 2 || x.shape(1) > 1024 || x.shape(1) % 2 != 0)
        throw pyb::value_error("x: rows of an even number of values, at most 1024");
    F32 out({x.shape(0), x.shape(1)});
    std::copy(x.data(), x.data() + x.size(), out.mutable_data());
    {
        pyb::gil_scoped_release nogil;
        gpucheck::hadamard(device(dev, 8, 8, false), out.mutable_data(), x.shape(0), int(x.shape(1)));
    }
    return out;
}

pyb::tuple op_attention(const std::string & dev, const F32 & q, const F32 & k, const F32 & v, const I32 & pos,
                        const I32 & slot, const U8 & k_cache, const U8 & v_cache, int n_head, int n_head_kv,
                        int head_dim, int n_slots, int slot_ctx, const std::string & type_k,
                        const std::string & type_v, int attn_vec_tokens, bool graphs, float scale, float softcap,
                        int window, bool ring, const std::optional<F32> & sinks) {
    KVLayout kv;
    kv.type_k = qtype_named(type_k);
    kv.type_v = qtype_named(type_v);
    kv.n_slots = n_slots;
    kv.slot_ctx = slot_ctx;
    kv.n_head_kv = n_head_kv;
    kv.head_dim = head_dim;
    kv.ring = ring;
    need_2d(q, "q");
    const int64_t n = q.shape(0);
    if (q.shape(1) != int64_t(n_head) * head_dim || k.size() != n * n_head_kv * head_dim ||
        v.size() != k.size() || pos.size() != n || slot.size() != n)
        throw pyb::value_error("q (n_tok, n_head * head_dim), k and v (n_tok, n_head_kv * head_dim), pos and slot (n_tok)");
    if (size_t(k_cache.size()) != kv.k_bytes() || size_t(v_cache.size()) != kv.v_bytes())
        throw pyb::value_error("k_cache / v_cache: wrong size for the cache layout");
    if (sinks && sinks->size() != n_head) throw pyb::value_error("sinks: one logit per query head");
    AttnParams ap{scale, softcap, window, sinks ? sinks->data() : nullptr};
    U8 kc(k_cache.size()), vc(v_cache.size());
    std::copy(k_cache.data(), k_cache.data() + k_cache.size(), kc.mutable_data());
    std::copy(v_cache.data(), v_cache.data() + v_cache.size(), vc.mutable_data());
    std::vector<float> out;
    {
        pyb::gil_scoped_release nogil;
        out = gpucheck::attention(device(dev, 8, attn_vec_tokens, graphs), kv, n_head, pos.data(), slot.data(), int(n),
                                  q.data(), k.data(), v.data(), kc.mutable_data(), vc.mutable_data(), ap);
    }
    return pyb::make_tuple(to_array(out, n, q.shape(1)), kc, vc);
}

F32 op_get_rows(const std::string & dev, int t, const U8 & table, const I32 & tokens) {
    const QType type = qtype(t);
    const int64_t K = row_values(type, table, "table");
    std::vector<float> out;
    {
        pyb::gil_scoped_release nogil;
        out = gpucheck::get_rows(device(dev, 8, 8, false), type, table.data(), table.shape(0), K, tokens.data(),
                                 int(tokens.size()));
    }
    return to_array(out, tokens.size(), K);
}

F32 blocks_dequantize(int t, const U8 & rows) {
    const QType type = qtype(t);
    const int64_t K = row_values(type, rows, "rows");
    F32 out({rows.shape(0), K});
    gpucheck::blocks_dequantize(type, rows.data(), rows.shape(0), K, out.mutable_data());
    return out;
}

F32 blocks_matvec(int t, const U8 & w, const F32 & x) {
    const QType type = qtype(t);
    const int64_t K = row_values(type, w, "w");
    need_2d(x, "x");
    if (x.shape(1) != K) throw pyb::value_error("x: rows must have as many values as the weight rows");
    F32 out({x.shape(0), w.shape(0)});
    gpucheck::blocks_matvec(type, w.data(), w.shape(0), K, x.data(), int(x.shape(0)), out.mutable_data());
    return out;
}

}  // namespace

void bind_cuda(pyb::module_ & m) {
    m.def("gpu_info", [] {
        const GpuInfo g = gpu_info();
        return pyb::dict(pyb::arg("available") = g.available, pyb::arg("name") = g.name,
                         pyb::arg("description") = g.description, pyb::arg("free_bytes") = g.free_bytes,
                         pyb::arg("total_bytes") = g.total_bytes, pyb::arg("reason") = g.reason);
    }, "The GPU splitllm would use (CUDA0, or FAKEGPU0 with SPLITLLM_FAKE_GPU=1), or why there is none.");
    m.def("gpu_op_matmul", &op_matmul, pyb::arg("device"), pyb::arg("qtype"), pyb::arg("w"), pyb::arg("x"),
          pyb::kw_only(), pyb::arg("bias") = pyb::none(), pyb::arg("y0") = pyb::none(), pyb::arg("vec_tokens") = 8,
          "x (n_tok, K) . w^T (+ bias, + y0) on device 'cpu' or 'gpu': (n_tok, rows).");
    m.def("gpu_op_glu", &op_glu, pyb::arg("device"), pyb::arg("type_gate"), pyb::arg("gate"),
          pyb::arg("type_up"), pyb::arg("up"), pyb::arg("x"), pyb::kw_only(), pyb::arg("vec_tokens") = 8,
          pyb::arg("gelu") = false, "f(x . gate^T) * (x . up^T), f = silu (or gelu): (n_tok, rows).");
    m.def("gpu_op_add", &op_add, pyb::arg("device"), pyb::arg("y"), pyb::arg("x"), pyb::arg("scale") = 1.0f,
          "y + scale * x by Backend::add.");
    m.def("gpu_op_rms_norm", &op_rms_norm, pyb::arg("device"), pyb::arg("x"), pyb::arg("w"), pyb::arg("eps"),
          pyb::arg("layer") = false);
    m.def("gpu_op_rope", &op_rope, pyb::arg("device"), pyb::arg("q"), pyb::arg("k"), pyb::arg("pos"), pyb::kw_only(),
          pyb::arg("n_head"), pyb::arg("n_head_kv"), pyb::arg("head_dim"), pyb::arg("n_rot"), pyb::arg("base"),
          pyb::arg("freq_scale") = 1.0f, pyb::arg("neox") = false, pyb::arg("freq_factors") = pyb::none(),
          pyb::arg("swa") = false, pyb::arg("base_swa") = 10000.0f, pyb::arg("freq_scale_swa") = 1.0f,
          "Rotated (q, k); with swa, as a sliding-window layer (base_swa, freq_scale_swa) rotates them.");
    m.def("gpu_op_attention", &op_attention, pyb::arg("device"), pyb::arg("q"), pyb::arg("k"), pyb::arg("v"),
          pyb::arg("pos"), pyb::arg("slot"), pyb::arg("k_cache"), pyb::arg("v_cache"), pyb::kw_only(),
          pyb::arg("n_head"), pyb::arg("n_head_kv"), pyb::arg("head_dim"), pyb::arg("n_slots"), pyb::arg("slot_ctx"),
          pyb::arg("type_k") = "f16", pyb::arg("type_v") = "f16", pyb::arg("attn_vec_tokens") = 8,
          pyb::arg("graphs") = false, pyb::arg("scale") = 0.0f, pyb::arg("softcap") = 0.0f, pyb::arg("window") = 0,
          pyb::arg("ring") = false, pyb::arg("sinks") = pyb::none(),
          "Stores k, v at (slot, pos) and attends: (out, k_cache, v_cache); caches are flat uint8 arrays; sinks: "
          "a logit per query head joining each softmax (gpt-oss).");
    m.def("gpu_op_hadamard", &op_hadamard, pyb::arg("device"), pyb::arg("x"),
          "Each row rotated block by block by the orthonormal Hadamard matrix (KV cache rotation).");
    m.def("gpu_op_get_rows", &op_get_rows, pyb::arg("device"), pyb::arg("qtype"), pyb::arg("table"),
          pyb::arg("tokens"));
    m.def("gpu_blocks_dequantize", &blocks_dequantize, pyb::arg("qtype"), pyb::arg("rows"),
          "Rows decoded by the CUDA block readers compiled for the host: (n_rows, K).");
    m.def("gpu_blocks_matvec", &blocks_matvec, pyb::arg("qtype"), pyb::arg("w"), pyb::arg("x"),
          "The CUDA mat-vec arithmetic (int8 activations, dp4a groups) on the host: (n_tok, n_rows).");
}

}  // namespace sl::py
