#pragma once
// Reading a model's tensors from its GGUF file into the weight structures (model.cpp's loaders,
// and those of the architectures in their own files: mla.cpp, conv.cpp, gemma4.cpp). Each checks
// the tensor's presence, shape (ggml order, against the metadata in c) and type, and throws
// GGUFError naming the file and the tensor.

#include <cstdint>
#include <string>

#include "gguf/gguf.h"
#include "model/config.h"
#include "model/model.h"

namespace sl {

// Throws unless rows of a table of this type can be read (get_rows).
void check_readable(const GGUFFile & f, const WeightRef & w, const char * name);
// The tensor, of shape [ne0, ne1, ne2] (ne1 < 0: a vector).
const GGUFTensor & require(const GGUFFile & f, const Config & c, const std::string & name, int64_t ne0, int64_t ne1,
                           int64_t ne2 = 1);
// An F32 vector of n values.
const float * vector_f32(const GGUFFile & f, const Config & c, const std::string & name, int64_t n);
// A matrix (rows, K), or n_stack of them stacked (a 3-D tensor, experts): rows * n_stack rows.
WeightRef matrix(const GGUFFile & f, const Config & c, const std::string & name, int64_t rows, int64_t K,
                 int64_t n_stack = 1);
// The biases of n_stack stacked matrices of rows_per rows (an F32 tensor [rows_per, n_stack]).
void stacked_bias(const GGUFFile & f, const Config & c, WeightRef & w, const std::string & name, int64_t rows_per,
                  int64_t n_stack);
// The bias of a matrix, where the file has one.
void optional_bias(const GGUFFile & f, const Config & c, WeightRef & w, const std::string & name);

}  // namespace sl
