// Comparison hooks for a GCC-instrumented _core, forwarded to atheris's libFuzzer.
//
// GCC's -fsanitize-coverage=trace-cmp emits calls to __sanitizer_cov_trace_cmp* (GCC has no
// inline-8bit-counters, and libFuzzer ignores trace-pc). libFuzzer turns those calls into
// coverage features when run with -use_value_profile=1, and into mutation hints. The module
// is loaded RTLD_LOCAL and the preloaded ASan runtime carries no-op versions of the same
// hooks, so this file defines them inside _core (hidden, bound at link time) and forwards each
// by a tail call, which keeps the caller's return address: libFuzzer sees the real compare
// site. sl_fuzz_attach() points the hooks at the libFuzzer that atheris loaded.
#include <dlfcn.h>
#include <stdint.h>

#define HOOK __attribute__((visibility("hidden")))

typedef void (*cmp1_fn)(uint8_t, uint8_t);
typedef void (*cmp2_fn)(uint16_t, uint16_t);
typedef void (*cmp4_fn)(uint32_t, uint32_t);
typedef void (*cmp8_fn)(uint64_t, uint64_t);
typedef void (*switch_fn)(uint64_t, uint64_t *);

static cmp1_fn cmp1, const_cmp1;
static cmp2_fn cmp2, const_cmp2;
static cmp4_fn cmp4, const_cmp4;
static cmp8_fn cmp8, const_cmp8;
static switch_fn trace_switch;

// Returns 1 when the libFuzzer at `path` (already loaded) provides the hooks.
__attribute__((visibility("default"))) int sl_fuzz_attach(const char * path) {
    void * h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) return 0;
    cmp1 = (cmp1_fn)dlsym(h, "__sanitizer_cov_trace_cmp1");
    cmp2 = (cmp2_fn)dlsym(h, "__sanitizer_cov_trace_cmp2");
    cmp4 = (cmp4_fn)dlsym(h, "__sanitizer_cov_trace_cmp4");
    cmp8 = (cmp8_fn)dlsym(h, "__sanitizer_cov_trace_cmp8");
    const_cmp1 = (cmp1_fn)dlsym(h, "__sanitizer_cov_trace_const_cmp1");
    const_cmp2 = (cmp2_fn)dlsym(h, "__sanitizer_cov_trace_const_cmp2");
    const_cmp4 = (cmp4_fn)dlsym(h, "__sanitizer_cov_trace_const_cmp4");
    const_cmp8 = (cmp8_fn)dlsym(h, "__sanitizer_cov_trace_const_cmp8");
    trace_switch = (switch_fn)dlsym(h, "__sanitizer_cov_trace_switch");
    return cmp1 && cmp2 && cmp4 && cmp8 && const_cmp1 && const_cmp2 && const_cmp4 && const_cmp8 && trace_switch;
}

HOOK void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { if (cmp1) cmp1(a, b); }
HOOK void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { if (cmp2) cmp2(a, b); }
HOOK void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { if (cmp4) cmp4(a, b); }
HOOK void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { if (cmp8) cmp8(a, b); }
HOOK void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { if (const_cmp1) const_cmp1(a, b); }
HOOK void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { if (const_cmp2) const_cmp2(a, b); }
HOOK void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { if (const_cmp4) const_cmp4(a, b); }
HOOK void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { if (const_cmp8) const_cmp8(a, b); }
HOOK void __sanitizer_cov_trace_switch(uint64_t v, uint64_t * cases) { if (trace_switch) trace_switch(v, cases); }
// Float comparisons (GCC emits these too): libFuzzer has no use for them.
HOOK void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a; (void)b; }
HOOK void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a; (void)b; }
