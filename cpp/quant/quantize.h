// Many rows at once: the reference quantizers and dequantizers of the traits table (ref.h)
// run over a thread pool. Blocks are independent, so the work is split into contiguous runs
// of blocks, one per thread; the bytes do not depend on the number of threads. Given an
// importance matrix, the weighted quantizers (from_float_w) get whole rows instead, a run of
// rows per thread: ggml's weighted legacy quantizers (Q4_0, Q4_1, Q5_0, Q5_1) weigh each value
// by the mean square of its whole row.
//
// Errors (sl::Error, nothing is written past what the arguments describe):
//   - a type without a quantizer / dequantizer (TQ*, integer types, ...), or IQ2_XXS, IQ2_XS,
//     IQ1_S without an importance matrix (ggml requires one for them);
//   - n_per_row not a multiple of the type's block size, or a negative count;
//   - quantize_rows of a block type (Q*) on input holding NaN or infinity: the scale
//     searches are meaningless there. F32, F16 and BF16 store non-finite values as they are
//     (F16 overflows to infinity; BF16 keeps NaN quiet), as ggml and gguf-py do.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/threadpool.h"
#include "quant/qtype.h"

namespace sl {

// dst receives nrows * row_size(t, n_per_row) bytes. imatrix, when not null, holds n_per_row
// importance weights (one per column, the same for every row), as ggml_quantize_chunk takes
// them: types with a weighted quantizer use it, the others ignore it. Threads get runs of
// blocks that may start or end mid-row: no quantizer needs a whole row (the grid i-quants'
// searches, whose weights use the mean square of the values around them, take it over one
// 256-value super-block, as ggml's do).
void quantize_rows(QType t, const float * src, void * dst, int64_t nrows, int64_t n_per_row, ThreadPool & pool,
                   const float * imatrix = nullptr);

// src holds nrows * row_size(t, n_per_row) bytes; dst receives nrows * n_per_row floats.
void dequantize_rows(QType t, const void * src, float * dst, int64_t nrows, int64_t n_per_row, ThreadPool & pool);

// As above on a pool of n_threads threads: 0 means ThreadPool::global() (one thread per
// hardware thread); otherwise a pool of that size lives for the call.
void quantize_rows(QType t, const float * src, void * dst, int64_t nrows, int64_t n_per_row, int n_threads,
                   const float * imatrix = nullptr);
void dequantize_rows(QType t, const void * src, float * dst, int64_t nrows, int64_t n_per_row, int n_threads);

// Throws sl::Error unless rows of n_per_row values of type t can be quantized (want_quantize;
// with_imatrix: given an importance matrix) or dequantized by the functions above; `what`
// starts the message ("quantize", a tensor name).
void check_quant_args(QType t, int64_t nrows, int64_t n_per_row, bool want_quantize, const char * what,
                      bool with_imatrix = false);

// Whether type t can be quantized without an importance matrix / with one.
bool can_quantize(QType t, bool with_imatrix);

}  // namespace sl
