#include "cpu/kernel_bench.h"

#include <algorithm>
#include <ctime>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/error.h"
#include "common/threadpool.h"
#include "cpu/kernels.h"

namespace sl::cpu {

namespace {

// Seconds on the wall clock, or on this thread's CPU clock (which does not run while other
// processes hold the core: single-threaded figures stay meaningful on a busy machine).
double now(bool cpu_clock) {
    timespec ts;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Best seconds per call of fn() over reps measurements of at least min_seconds each.
template <class F>
double best_time(F && fn, double min_seconds, int reps, bool cpu_clock) {
    fn();  // warm-up
    double best = 1e30;
    for (int r = 0; r < std::max(1, reps); ++r) {
        int64_t n = 0;
        const double t0 = now(cpu_clock);
        double dt = 0.0;
        do {
            fn();
            ++n;
            dt = now(cpu_clock) - t0;
        } while (dt < min_seconds);
        best = std::min(best, dt / double(n));
    }
    return best;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float & x : v) x = dist(rng);
    return v;
}

}  // namespace

GemmTiming time_gemm(Isa isa, QType wt, const void * W, int64_t n_rows, int64_t K, int64_t n_tok, int n_threads,
                     int copies, double min_seconds, int reps) {
    SL_CHECK(n_rows > 0 && n_tok > 0 && copies >= 1 && n_threads >= 1, "time_gemm: bad arguments");
    const size_t wbytes = row_size(wt, K) * size_t(n_rows);
    std::vector<impl::Line64> wcopies((wbytes + 63) / 64 * size_t(copies));
    uint8_t * wbase = reinterpret_cast<uint8_t *>(wcopies.data());
    const size_t wstride = (wbytes + 63) / 64 * 64;
    for (int c = 0; c < copies; ++c) memcpy(wbase + c * wstride, W, wbytes);

    const std::vector<float> x = random_floats(size_t(n_tok * K), 1234);
    const size_t arb = act_row_bytes(wt, K);
    std::vector<impl::Line64> acts((arb * size_t(n_tok) + 63) / 64);
    std::vector<float> y(size_t(n_tok * n_rows));

    GemmTiming out{};
    out.quant_seconds = best_time([&] { quantize_acts(isa, wt, x.data(), K, K, 0, n_tok, acts.data()); },
                                  min_seconds / 4, reps, true);
    ThreadPool pool(n_threads);
    int next = 0;
    out.seconds = best_time(
        [&] {
            const uint8_t * w = wbase + size_t(next) * wstride;
            next = (next + 1) % copies;
            pool.run([&](int ith, int nth) {
                const int64_t per = (n_rows + nth - 1) / nth;
                const int64_t r0 = std::min(n_rows, per * ith), r1 = std::min(n_rows, r0 + per);
                gemm(isa, wt, w, K, r0, r1, acts.data(), n_tok, y.data(), n_rows);
            });
        },
        min_seconds, reps, n_threads == 1);
    return out;
}

double time_attention(Isa isa, QType kt, int64_t n_q, int64_t n_kv, int64_t head_dim, double min_seconds, int reps) {
    const size_t rb = row_size(kt, head_dim);
    const std::vector<float> kv = random_floats(size_t(n_kv * head_dim), 99);
    std::vector<uint8_t> kc(rb * size_t(n_kv)), vc(rb * size_t(n_kv));
    store_kv(isa, kt, kv.data(), head_dim, n_kv, head_dim, kc.data(), rb);
    store_kv(isa, kt, kv.data(), head_dim, n_kv, head_dim, vc.data(), rb);
    const std::vector<float> q = random_floats(size_t(n_q * head_dim), 7);
    std::vector<float> s(size_t(n_q * n_kv)), o(size_t(n_q * head_dim));
    return best_time(
        [&] {
            attn_scores(isa, kt, q.data(), head_dim, n_q, kc.data(), rb, n_kv, head_dim, 0.125f, s.data(), n_kv);
            std::fill(o.begin(), o.end(), 0.0f);
            attn_values(isa, kt, s.data(), n_kv, n_q, vc.data(), rb, n_kv, head_dim, o.data(), head_dim);
        },
        min_seconds, reps, true);
}

}  // namespace sl::cpu
