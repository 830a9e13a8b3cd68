// The pybind11 module is split by subsystem; each file only converts types.
#pragma once

#include <pybind11/pybind11.h>

namespace sl::py {

namespace pyb = pybind11;

void bind_errors(pyb::module_ & m);
void bind_system(pyb::module_ & m);
void bind_gguf(pyb::module_ & m);
void bind_quant(pyb::module_ & m);
void bind_model(pyb::module_ & m);
void bind_cpu(pyb::module_ & m);
void bind_cuda(pyb::module_ & m);
void bind_sample(pyb::module_ & m);

}  // namespace sl::py
