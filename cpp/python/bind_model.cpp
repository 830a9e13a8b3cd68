#include "python/bind.h"

namespace sl::py {

void bind_model(pyb::module_ & m) {}

}  // namespace sl::py
