// Tensor element types, numbered as ggml numbers them (the ids stored in GGUF files), and
// the one traits table that ties each type to its block geometry and functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sl {

enum class QType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    COUNT = 40,
};

// Converts n values (a multiple of blck_size) between a packed row and floats.
typedef void (*to_float_fn)(const void * src, float * dst, int64_t n);
typedef void (*from_float_fn)(const float * src, void * dst, int64_t n);
// The same with importance weights: qw[i] weighs the error of src[i] (an importance matrix's
// entries for these columns, llama-imatrix's mean squared activations). src is always one whole
// row (n = the row length; quantize_rows calls it so): some weighted quantizers use statistics
// of the whole row (ggml's Q4_0 .. Q5_1 weigh by the row's mean square).
typedef void (*from_float_w_fn)(const float * src, void * dst, int64_t n, const float * qw);

struct QTypeTraits {
    const char * name;       // as gguf-py names it: "Q4_K", "F16", ...
    int64_t blck_size;       // values per block
    size_t type_size;        // bytes per block
    bool is_quantized;       // block-quantized (not a plain number type)
    to_float_fn to_float;    // dequantizer, null where splitllm does not compute with the type
    from_float_fn from_float;  // reference quantizer, null likewise
    // ggml's quantizer given an importance matrix (quantize_<type>(..., quant_weights)), null
    // where ggml ignores the matrix (plain number types, Q8_0, MXFP4). A type with this and no
    // from_float cannot be quantized without a matrix (IQ2_XXS, IQ2_XS, IQ1_S: ggml asserts one).
    from_float_w_fn from_float_w = nullptr;
};

// Traits of a type id, or nullptr for an id ggml does not define.
const QTypeTraits * qtype_traits(uint32_t id);
inline const QTypeTraits * qtype_traits(QType t) { return qtype_traits(uint32_t(t)); }

// Type id from a name in any case ("q4_k", "Q4_K", "bf16"); returns false if unknown.
bool qtype_from_name(const char * name, QType * out);

// Bytes of a row of n values; n must be a multiple of the block size.
inline size_t row_size(QType t, int64_t n) {
    const QTypeTraits * tr = qtype_traits(t);
    return size_t(n / tr->blck_size) * tr->type_size;
}

}  // namespace sl
