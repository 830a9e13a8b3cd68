// Block formats: the type table and the row-parallel quantizers (quant/quantize.h).
// splitllm.quants wraps these with gguf-py's shape conventions.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <tuple>

#include "common/error.h"
#include "python/bind.h"
#include "quant/qtype.h"
#include "quant/quantize.h"

namespace sl::py {

namespace {

using FloatRows = pyb::array_t<float, pyb::array::c_style | pyb::array::forcecast>;
using ByteRows = pyb::array_t<uint8_t, pyb::array::c_style | pyb::array::forcecast>;
using TypeInfo = std::tuple<std::string, int64_t, size_t, bool, bool, bool, bool>;

std::optional<TypeInfo> type_info(uint32_t id) {
    const QTypeTraits * tr = qtype_traits(id);
    if (!tr) return std::nullopt;
    return TypeInfo{tr->name, tr->blck_size, tr->type_size, tr->is_quantized, tr->from_float != nullptr,
                    tr->to_float != nullptr, tr->from_float_w != nullptr};
}

std::optional<uint32_t> type_from_name(const std::string & name) {
    QType t;
    if (!qtype_from_name(name.c_str(), &t)) return std::nullopt;
    return uint32_t(t);
}

pyb::array_t<uint8_t> quantize(const FloatRows & src, uint32_t type_id, int n_threads,
                               const std::optional<FloatRows> & imatrix) {
    if (src.ndim() != 2) throw pyb::value_error("quantize_rows: src must be 2-D (rows, values per row)");
    const QType t = QType(type_id);
    const int64_t nrows = src.shape(0), n_per_row = src.shape(1);
    if (imatrix && (imatrix->ndim() != 1 || imatrix->shape(0) != n_per_row))
        throw pyb::value_error("quantize_rows: imatrix must be 1-D with one weight per column (" +
                               std::to_string(n_per_row) + ")");
    const float * qw = imatrix ? imatrix->data() : nullptr;
    check_quant_args(t, nrows, n_per_row, true, "quantize", qw && qtype_traits(t) && qtype_traits(t)->from_float_w);
    pyb::array_t<uint8_t> out({nrows, int64_t(row_size(t, n_per_row))});
    const float * in = src.data();
    uint8_t * dst = out.mutable_data();
    {
        pyb::gil_scoped_release nogil;
        quantize_rows(t, in, dst, nrows, n_per_row, n_threads, qw);
    }
    return out;
}

pyb::array_t<float> dequantize(const ByteRows & src, uint32_t type_id, int n_threads) {
    if (src.ndim() != 2) throw pyb::value_error("dequantize_rows: src must be 2-D (rows, bytes per row)");
    const QType t = QType(type_id);
    const QTypeTraits * tr = qtype_traits(t);
    SL_CHECK(tr, "dequantize: unknown type id %u", unsigned(type_id));
    const int64_t nrows = src.shape(0), nbytes = src.shape(1);
    SL_CHECK(nbytes % int64_t(tr->type_size) == 0, "dequantize: %lld bytes per row is not a multiple of the %s block (%zu bytes)",
             (long long)nbytes, tr->name, tr->type_size);
    const int64_t n_per_row = nbytes / int64_t(tr->type_size) * tr->blck_size;
    check_quant_args(t, nrows, n_per_row, false, "dequantize");
    pyb::array_t<float> out({nrows, n_per_row});
    const uint8_t * in = src.data();
    float * dst = out.mutable_data();
    {
        pyb::gil_scoped_release nogil;
        dequantize_rows(t, in, dst, nrows, n_per_row, n_threads);
    }
    return out;
}

}  // namespace

void bind_quant(pyb::module_ & m) {
    m.def("quant_type_info", &type_info, pyb::arg("type_id"),
          "(name, block_size, type_size, is_quantized, can_quantize, can_dequantize, takes_imatrix) of a ggml type "
          "id, or None. can_quantize: without an importance matrix; takes_imatrix: ggml's quantizer uses one.");
    m.def("quant_type_from_name", &type_from_name, pyb::arg("name"),
          "ggml type id of a type name in any case ('q4_k', 'BF16'), or None.");
    m.def("quantize_rows", &quantize, pyb::arg("src"), pyb::arg("type_id"), pyb::arg("n_threads") = 0,
          pyb::arg("imatrix") = pyb::none(),
          "Quantizes a (rows, n) float32 array to a (rows, row bytes) uint8 array; n_threads 0 = all. imatrix: n "
          "importance weights (one per column) for the types whose ggml quantizer takes them, ignored by the others.");
    m.def("dequantize_rows", &dequantize, pyb::arg("src"), pyb::arg("type_id"), pyb::arg("n_threads") = 0,
          "Dequantizes a (rows, row bytes) uint8 array to a (rows, n) float32 array; n_threads 0 = all.");
}

}  // namespace sl::py
