#include "build_info.h"
#include "common/threadpool.h"
#include "python/bind.h"

namespace sl::py {

void bind_system(pyb::module_ & m) {
    m.def("hardware_threads", &sl::hardware_threads, "Hardware threads available to this process.");
    m.attr("commit") = sl::build_commit();
#ifdef SL_CUDA
    m.attr("cuda_built") = true;
#else
    m.attr("cuda_built") = false;
#endif
}

}  // namespace sl::py
