// The AVX2 kernel table (AVX2 + FMA + F16C).
#include "cpu/arch/x86/kernels_x86.h"

namespace sl::cpu::impl {

void fill_avx2(KernelTable & t) {}

}  // namespace sl::cpu::impl
