// CPUID / XGETBV feature detection and the process-wide instruction-set choice.
//
// AVX2 kernels need AVX2, FMA, F16C and BMI2 (the files are compiled with those flags) and the
// OS saving the ymm state; AVX-512 kernels need F, BW, VL, DQ, VNNI and VBMI and the OS saving
// the opmask and zmm state. AMX (prefill kernels with AMX-INT8 tiles, over the AVX-512 set)
// needs AMX-TILE and AMX-INT8, the OS saving the tile state, and on Linux the process's
// permission to use it (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, requested once here).
// SPLITLLM_CPU_ISA=scalar|avx2|avx512|amx caps the default choice (avx512: AMX off).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <strings.h>

#include "cpu/matmul.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define SL_X86 1
#endif
#if defined(SL_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sl::cpu {

namespace {

struct Features {
    bool avx = false, avx2 = false, fma = false, f16c = false, bmi2 = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
    bool avx512vnni = false, avx512vbmi = false, avx512bf16 = false, avx_vnni = false;
    bool amx_tile = false, amx_int8 = false;
    bool os_ymm = false, os_zmm = false, os_tile = false;
    std::string text;
};

#ifdef SL_X86
uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}
#endif

void describe(Features & f) {
    const struct {
        bool on;
        const char * name;
    } names[] = {{f.avx, "AVX"},           {f.avx2, "AVX2"},         {f.fma, "FMA"},
                 {f.f16c, "F16C"},         {f.bmi2, "BMI2"},         {f.avx_vnni, "AVX_VNNI"},
                 {f.avx512f, "AVX512F"},   {f.avx512bw, "AVX512BW"}, {f.avx512vl, "AVX512VL"},
                 {f.avx512dq, "AVX512DQ"}, {f.avx512vnni, "AVX512_VNNI"}, {f.avx512vbmi, "AVX512_VBMI"},
                 {f.avx512bf16, "AVX512_BF16"}, {f.amx_tile, "AMX_TILE"}, {f.amx_int8, "AMX_INT8"}};
    for (const auto & n : names)
        if (n.on) f.text += std::string(f.text.empty() ? "" : " ") + n.name;
    if (f.text.empty()) f.text = "(no SIMD extensions used by splitllm)";
}

#ifdef SL_X86
// Linux enables the AMX tile data state per process, on request (kernel 5.16 and later).
bool request_tile_data() {
#ifdef __linux__
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}
#endif

Features probe() {
    Features f;
#ifdef SL_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = (c >> 27) & 1;
    f.fma = (c >> 12) & 1;
    f.avx = (c >> 28) & 1;
    f.f16c = (c >> 29) & 1;
    if (osxsave) {
        const uint64_t xcr0 = xgetbv0();
        f.os_ymm = (xcr0 & 0x6) == 0x6;
        f.os_zmm = f.os_ymm && (xcr0 & 0xE0) == 0xE0;
        f.os_tile = (xcr0 & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA
    }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        f.avx2 = (b >> 5) & 1;
        f.bmi2 = (b >> 8) & 1;
        f.avx512f = (b >> 16) & 1;
        f.avx512dq = (b >> 17) & 1;
        f.avx512bw = (b >> 30) & 1;
        f.avx512vl = (b >> 31) & 1;
        f.avx512vbmi = (c >> 1) & 1;
        f.avx512vnni = (c >> 11) & 1;
        f.amx_tile = (d >> 24) & 1;
        f.amx_int8 = (d >> 25) & 1;
        if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) {
            f.avx_vnni = (a >> 4) & 1;
            f.avx512bf16 = (a >> 5) & 1;
        }
    }
    if (!f.os_ymm) f.avx = f.avx2 = f.fma = f.f16c = f.avx_vnni = false;
    if (!f.os_zmm) f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = f.avx512vnni = f.avx512vbmi = f.avx512bf16 = false;
    if (!(f.os_tile && f.amx_tile && f.amx_int8 && request_tile_data())) f.amx_tile = f.amx_int8 = false;
#endif
    describe(f);
    return f;
}

const Features & features() {
    static const Features f = probe();
    return f;
}

Isa hardware_isa() {
    const Features & f = features();
    const bool avx2 = f.avx2 && f.fma && f.f16c && f.bmi2;
    if (avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.avx512vbmi)
        return f.amx_tile && f.amx_int8 ? Isa::AMX : Isa::AVX512;
    return avx2 ? Isa::AVX2 : Isa::Scalar;
}

Isa clamp(Isa isa) { return int(isa) <= int(hardware_isa()) ? isa : hardware_isa(); }

Isa default_isa() {
    const char * env = std::getenv("SPLITLLM_CPU_ISA");
    Isa isa;
    if (env && *env && isa_from_name(env, &isa)) return clamp(isa);
    return hardware_isa();
}

std::atomic<int> g_active{-1};

}  // namespace

Isa detect_isa() { return hardware_isa(); }

bool has_avx512_bf16() { return int(hardware_isa()) >= int(Isa::AVX512) && features().avx512bf16; }

Isa active_isa() {
    int v = g_active.load(std::memory_order_relaxed);
    if (v < 0) {
        v = int(default_isa());
        g_active.store(v, std::memory_order_relaxed);
    }
    return Isa(v);
}

Isa set_isa(Isa isa) {
    const Isa v = clamp(isa);
    g_active.store(int(v), std::memory_order_relaxed);
    return v;
}

const char * isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::AVX2: return "avx2";
        case Isa::AVX512: return "avx512";
        case Isa::AMX: return "amx";
    }
    return "?";
}

bool isa_from_name(const char * name, Isa * out) {
    for (Isa isa : {Isa::Scalar, Isa::AVX2, Isa::AVX512, Isa::AMX})
        if (strcasecmp(name, isa_name(isa)) == 0) {
            *out = isa;
            return true;
        }
    return false;
}

Isa usable_isa(Isa isa) { return clamp(isa); }

const char * cpu_features() { return features().text.c_str(); }


}  // namespace sl::cpu
