#include "python/bind.h"

namespace sl::py {

void bind_quant(pyb::module_ & m) {}

}  // namespace sl::py
