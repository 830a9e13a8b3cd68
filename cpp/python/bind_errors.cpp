#include "common/error.h"
#include "python/bind.h"

namespace sl::py {

void bind_errors(pyb::module_ & m) {
    // pybind11 tries the newest translator first: register the base class before its children.
    auto & error = pyb::register_exception<sl::Error>(m, "Error", PyExc_RuntimeError);
    pyb::register_exception<sl::CudaError>(m, "CudaError", error.ptr());
    pyb::register_exception<sl::GGUFError>(m, "GGUFError", PyExc_ValueError);
}

}  // namespace sl::py
