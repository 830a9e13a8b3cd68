#include "python/bind.h"

PYBIND11_MODULE(_core, m) {
    m.doc() = "splitllm native core: GGUF reader, block formats, CPU/CUDA engine";
    sl::py::bind_errors(m);
    sl::py::bind_system(m);
    sl::py::bind_gguf(m);
    sl::py::bind_quant(m);
    sl::py::bind_model(m);
    sl::py::bind_cpu(m);
    sl::py::bind_cuda(m);
    sl::py::bind_sample(m);
}
