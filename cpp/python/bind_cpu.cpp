// CPU kernels on numpy arrays, for tests and benchmarks: weight and cache rows are uint8
// arrays of raw GGUF blocks, activations float32. `isa` is "scalar", "avx2", "avx512", "amx" or None
// (the active set); it is clamped to what the CPU supports.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "common/error.h"
#include "cpu/kernel_bench.h"
#include "cpu/matmul.h"
#include "python/bind.h"

namespace sl::py {

namespace {

using F32 = pyb::array_t<float, pyb::array::c_style | pyb::array::forcecast>;
using U8 = pyb::array_t<uint8_t, pyb::array::c_style>;

cpu::Isa to_isa(const std::optional<std::string> & name) {
    if (!name) return cpu::active_isa();
    cpu::Isa isa;
    if (!cpu::isa_from_name(name->c_str(), &isa)) throw pyb::value_error("unknown isa '" + *name + "'");
    return isa;
}

QType to_qtype(int t) {
    const QTypeTraits * tr = qtype_traits(uint32_t(t));
    if (!tr) throw pyb::value_error("unknown tensor type id " + std::to_string(t));
    return QType(t);
}

void need_2d(const pyb::array & a, const char * what) {
    if (a.ndim() != 2) throw pyb::value_error(std::string(what) + " must be a 2-D array");
}

// K of a weight row of `row_bytes` bytes.
int64_t row_values(QType t, int64_t row_bytes, const char * what) {
    const QTypeTraits * tr = qtype_traits(t);
    if (row_bytes % int64_t(tr->type_size) != 0)
        throw pyb::value_error(std::string(what) + ": row of " + std::to_string(row_bytes) +
                               " bytes is not a whole number of " + tr->name + " blocks");
    return row_bytes / int64_t(tr->type_size) * tr->blck_size;
}

U8 quantize_acts(int wt_id, const F32 & x, const std::optional<std::string> & isa_name) {
    need_2d(x, "x");
    const QType wt = to_qtype(wt_id);
    const cpu::Isa isa = to_isa(isa_name);
    const int64_t n = x.shape(0), K = x.shape(1);
    const size_t rb = cpu::act_row_bytes(wt, K);
    U8 out({n, int64_t(rb)});
    std::fill(out.mutable_data(), out.mutable_data() + out.size(), 0);
    {
        pyb::gil_scoped_release nogil;
        cpu::quantize_acts(isa, wt, x.data(), K, K, 0, n, out.mutable_data());
    }
    return out;
}

F32 gemm(int wt_id, const U8 & W, const U8 & acts, const std::optional<std::string> & isa_name, int64_t r0,
         std::optional<int64_t> r1_opt) {
    need_2d(W, "W");
    need_2d(acts, "acts");
    const QType wt = to_qtype(wt_id);
    const cpu::Isa isa = to_isa(isa_name);
    const int64_t n_rows = W.shape(0), K = row_values(wt, W.shape(1), "W"), n_tok = acts.shape(0);
    const int64_t r1 = r1_opt ? *r1_opt : n_rows;
    if (r0 < 0 || r1 < r0 || r1 > n_rows) throw pyb::value_error("rows [r0, r1) out of range");
    if (acts.shape(1) != int64_t(cpu::act_row_bytes(wt, K))) throw pyb::value_error("acts: wrong row size");
    F32 y({n_tok, n_rows});
    std::fill(y.mutable_data(), y.mutable_data() + y.size(), 0.0f);
    {
        pyb::gil_scoped_release nogil;
        cpu::gemm(isa, wt, W.data(), K, r0, r1, acts.data(), n_tok, y.mutable_data(), n_rows);
    }
    return y;
}

F32 matmul(int wt_id, const U8 & W, const F32 & x, const std::optional<std::string> & isa_name) {
    need_2d(x, "x");
    return gemm(wt_id, W, quantize_acts(wt_id, x, isa_name), isa_name, 0, std::nullopt);
}

F32 attn_scores(int kt_id, const F32 & q, const U8 & Kc, int64_t head_dim, float scale,
                const std::optional<std::string> & isa_name) {
    need_2d(q, "q");
    need_2d(Kc, "Kc");
    const QType kt = to_qtype(kt_id);
    const cpu::Isa isa = to_isa(isa_name);
    if (q.shape(1) != head_dim) throw pyb::value_error("q: rows must have head_dim values");
    if (Kc.shape(1) < int64_t(row_size(kt, head_dim))) throw pyb::value_error("Kc: rows too short");
    const int64_t n_q = q.shape(0), n_kv = Kc.shape(0);
    F32 s({n_q, n_kv});
    {
        pyb::gil_scoped_release nogil;
        cpu::attn_scores(isa, kt, q.data(), head_dim, n_q, Kc.data(), size_t(Kc.shape(1)), n_kv, head_dim, scale,
                         s.mutable_data(), n_kv);
    }
    return s;
}

F32 attn_values(int vt_id, const F32 & w, const U8 & Vc, int64_t head_dim, const F32 & out_in,
                const std::optional<std::string> & isa_name) {
    need_2d(w, "w");
    need_2d(Vc, "Vc");
    need_2d(out_in, "out");
    const QType vt = to_qtype(vt_id);
    const cpu::Isa isa = to_isa(isa_name);
    const int64_t n_q = w.shape(0), n_kv = w.shape(1);
    if (Vc.shape(0) != n_kv) throw pyb::value_error("Vc: needs one row per column of w");
    if (Vc.shape(1) < int64_t(row_size(vt, head_dim))) throw pyb::value_error("Vc: rows too short");
    if (out_in.shape(0) != n_q || out_in.shape(1) != head_dim) throw pyb::value_error("out: shape (n_q, head_dim)");
    F32 out({n_q, head_dim});
    std::copy(out_in.data(), out_in.data() + out_in.size(), out.mutable_data());
    {
        pyb::gil_scoped_release nogil;
        cpu::attn_values(isa, vt, w.data(), n_kv, n_q, Vc.data(), size_t(Vc.shape(1)), n_kv, head_dim,
                         out.mutable_data(), head_dim);
    }
    return out;
}

U8 store_kv(int kt_id, const F32 & x, const std::optional<std::string> & isa_name) {
    need_2d(x, "x");
    const QType kt = to_qtype(kt_id);
    const cpu::Isa isa = to_isa(isa_name);
    const int64_t n = x.shape(0), head_dim = x.shape(1);
    if (head_dim % qtype_traits(kt)->blck_size != 0) throw pyb::value_error("x: head_dim not a whole number of blocks");
    const size_t rb = row_size(kt, head_dim);
    U8 out({n, int64_t(rb)});
    {
        pyb::gil_scoped_release nogil;
        cpu::store_kv(isa, kt, x.data(), head_dim, n, head_dim, out.mutable_data(), rb);
    }
    return out;
}

pyb::tuple time_gemm(int wt_id, const U8 & W, int64_t n_tok, const std::optional<std::string> & isa_name,
                     int threads, int copies, double min_seconds, int reps) {
    need_2d(W, "W");
    const QType wt = to_qtype(wt_id);
    const cpu::Isa isa = to_isa(isa_name);
    const int64_t K = row_values(wt, W.shape(1), "W");
    cpu::GemmTiming t;
    {
        pyb::gil_scoped_release nogil;
        t = cpu::time_gemm(isa, wt, W.data(), W.shape(0), K, n_tok, threads, copies, min_seconds, reps);
    }
    return pyb::make_tuple(t.seconds, t.quant_seconds);
}

double time_attention(int kt_id, int64_t n_q, int64_t n_kv, int64_t head_dim,
                      const std::optional<std::string> & isa_name, double min_seconds, int reps) {
    const QType kt = to_qtype(kt_id);
    const cpu::Isa isa = to_isa(isa_name);
    pyb::gil_scoped_release nogil;
    return cpu::time_attention(isa, kt, n_q, n_kv, head_dim, min_seconds, reps);
}

}  // namespace

void bind_cpu(pyb::module_ & m) {
    m.def("cpu_features", &cpu::cpu_features, "CPU features the kernels can use, as a space-separated list.");
    m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
          "Instruction set the CPU kernels use now.");
    m.def("cpu_detect_isa", [] { return std::string(cpu::isa_name(cpu::detect_isa())); },
          "Best instruction set this CPU supports.");
    m.def("cpu_set_isa", [](const std::string & name) { return std::string(cpu::isa_name(cpu::set_isa(to_isa(name)))); },
          pyb::arg("isa"), "Selects the kernels' instruction set (clamped to the CPU's); returns the one in effect.");
    m.def("cpu_usable_isa", [](const std::string & name) { return std::string(cpu::isa_name(cpu::usable_isa(to_isa(name)))); },
          pyb::arg("isa"), "The instruction set a call with this isa would run.");
    m.def("cpu_supports_weight_type", [](int t) { return cpu::supports_weight_type(to_qtype(t)); }, pyb::arg("qtype"));
    m.def("cpu_act_type", [](int t) { return int(cpu::act_type(to_qtype(t))); }, pyb::arg("qtype"),
          "Type id of the activation format used with weights of this type.");
    m.def("cpu_act_row_bytes", [](int t, int64_t K) { return cpu::act_row_bytes(to_qtype(t), K); },
          pyb::arg("qtype"), pyb::arg("K"));
    m.def("cpu_quantize_acts", &quantize_acts, pyb::arg("qtype"), pyb::arg("x"), pyb::kw_only(),
          pyb::arg("isa") = pyb::none(), "Float activations (n_tok, K) to the kernel format: uint8 (n_tok, row bytes).");
    m.def("cpu_gemm", &gemm, pyb::arg("qtype"), pyb::arg("w"), pyb::arg("acts"), pyb::kw_only(),
          pyb::arg("isa") = pyb::none(), pyb::arg("r0") = 0, pyb::arg("r1") = pyb::none(),
          "Weight rows (uint8 blocks) times converted activations: (n_tok, n_rows); rows outside [r0, r1) are 0.");
    m.def("cpu_matmul", &matmul, pyb::arg("qtype"), pyb::arg("w"), pyb::arg("x"), pyb::kw_only(),
          pyb::arg("isa") = pyb::none(), "x (n_tok, K) float32 times the weight rows: (n_tok, n_rows).");
    m.def("cpu_attn_scores", &attn_scores, pyb::arg("qtype"), pyb::arg("q"), pyb::arg("k_cache"),
          pyb::arg("head_dim"), pyb::kw_only(), pyb::arg("scale") = 1.0f, pyb::arg("isa") = pyb::none(),
          "scale * q (n_q, head_dim) . cache rows: (n_q, n_kv).");
    m.def("cpu_attn_values", &attn_values, pyb::arg("qtype"), pyb::arg("w"), pyb::arg("v_cache"),
          pyb::arg("head_dim"), pyb::arg("out"), pyb::kw_only(), pyb::arg("isa") = pyb::none(),
          "out + w (n_q, n_kv) @ cache rows: (n_q, head_dim).");
    m.def("cpu_store_kv", &store_kv, pyb::arg("qtype"), pyb::arg("x"), pyb::kw_only(), pyb::arg("isa") = pyb::none(),
          "Float rows (n, head_dim) to KV-cache rows: uint8 (n, row bytes).");
    m.def("cpu_time_gemm", &time_gemm, pyb::arg("qtype"), pyb::arg("w"), pyb::arg("n_tok"), pyb::kw_only(),
          pyb::arg("isa") = pyb::none(), pyb::arg("threads") = 1, pyb::arg("copies") = 1,
          pyb::arg("min_seconds") = 0.1, pyb::arg("reps") = 3,
          "Best (gemm seconds, activation conversion seconds) for the weight rows and n_tok random tokens.");
    m.def("cpu_time_attention", &time_attention, pyb::arg("qtype"), pyb::arg("n_q"), pyb::arg("n_kv"),
          pyb::arg("head_dim"), pyb::kw_only(), pyb::arg("isa") = pyb::none(), pyb::arg("min_seconds") = 0.1,
          pyb::arg("reps") = 3, "Best seconds of attn_scores + attn_values over one KV head.");
}

}  // namespace sl::py
