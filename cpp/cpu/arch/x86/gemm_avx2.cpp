// AVX2 kernels (AVX2 + FMA + F16C): filled in below.
#include "cpu/kernels.h"

namespace sl::cpu::impl {

void fill_avx2(KernelTable & t) {}

}  // namespace sl::cpu::impl
