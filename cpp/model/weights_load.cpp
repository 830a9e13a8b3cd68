#include "model/weights_load.h"

#include "common/error.h"
#include "cpu/matmul.h"

namespace sl {

// Throws unless rows of a table of this type can be read (get_rows).
void check_readable(const GGUFFile & f, const WeightRef & w, const char * name) {
    const QTypeTraits * t = qtype_traits(w.type);
    if (!t->to_float && w.type != QType::F32)
        throw GGUFError(strfmt("%s: %s type %s cannot be read", f.path().c_str(), name, t->name));
}

// Checks a tensor's presence, shape (ggml order: ne0 = row length, from the metadata in c) and type.
const GGUFTensor & require(const GGUFFile & f, const Config & c, const std::string & name, int64_t ne0, int64_t ne1,
                           int64_t ne2) {
    const GGUFTensor * t = f.find_tensor(name);
    if (!t) throw GGUFError(strfmt("%s: tensor '%s' is missing", f.path().c_str(), name.c_str()));
    const int64_t want1 = ne1 < 0 ? 1 : ne1;
    if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != ne2 || t->ne[3] != 1)
        throw GGUFError(strfmt("%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], but the metadata (%s) gives "
                               "[%lld, %lld, %lld]", f.path().c_str(), name.c_str(), (long long)t->ne[0],
                               (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], c.shape_keys().c_str(),
                               (long long)ne0, (long long)want1, (long long)ne2));
    return *t;
}

const float * vector_f32(const GGUFFile & f, const Config & c, const std::string & name, int64_t n) {
    const GGUFTensor & t = require(f, c, name, n, -1);
    if (t.type != QType::F32)
        throw GGUFError(strfmt("%s: tensor '%s' has type %s, expected F32", f.path().c_str(), name.c_str(),
                               qtype_traits(t.type)->name));
    return reinterpret_cast<const float *>(t.data);
}

// A matrix (rows, K), or n_stack of them stacked (a 3-D tensor, experts): rows * n_stack rows.
WeightRef matrix(const GGUFFile & f, const Config & c, const std::string & name, int64_t rows, int64_t K,
                 int64_t n_stack) {
    const GGUFTensor & t = require(f, c, name, K, rows, n_stack);
    if (!cpu::supports_weight_type(t.type))
        throw GGUFError(strfmt("%s: tensor '%s' has type %s, which splitllm cannot compute with",
                               f.path().c_str(), name.c_str(), qtype_traits(t.type)->name));
    WeightRef w;
    w.type = t.type;
    w.rows = rows * n_stack;
    w.K = K;
    w.data = t.data;
    return w;
}

// The biases of n_stack stacked matrices of rows_per rows (an F32 tensor [rows_per, n_stack]).
void stacked_bias(const GGUFFile & f, const Config & c, WeightRef & w, const std::string & name, int64_t rows_per,
                  int64_t n_stack) {
    const GGUFTensor & t = require(f, c, name, rows_per, n_stack);
    if (t.type != QType::F32)
        throw GGUFError(strfmt("%s: tensor '%s' has type %s, expected F32", f.path().c_str(), name.c_str(),
                               qtype_traits(t.type)->name));
    w.bias = reinterpret_cast<const float *>(t.data);
}

// The bias of a matrix, where the file has one.
void optional_bias(const GGUFFile & f, const Config & c, WeightRef & w, const std::string & name) {
    if (f.find_tensor(name)) w.bias = vector_f32(f, c, name, w.rows);
}

}  // namespace sl
