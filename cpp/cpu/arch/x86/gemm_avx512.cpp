// AVX-512 kernels (F/BW/VL/DQ + VNNI + VBMI): filled in below.
#include "cpu/kernels.h"

namespace sl::cpu::impl {

void fill_avx512(KernelTable & t) {}

}  // namespace sl::cpu::impl
