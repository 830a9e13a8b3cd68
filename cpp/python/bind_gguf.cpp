#include "python/bind.h"

namespace sl::py {

void bind_gguf(pyb::module_ & m) {}

}  // namespace sl::py
