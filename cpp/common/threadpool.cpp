#include "common/threadpool.h"

#include <chrono>
#include <sched.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SL_PAUSE() _mm_pause()
#else
#define SL_PAUSE() std::this_thread::yield()
#endif

namespace sl {

namespace {
// How long an idle worker spins before sleeping.
constexpr auto kSpin = std::chrono::microseconds(300);

// Spin-wait step: pause, and every few thousand spins give the core away, so that a thread we
// wait for but the OS has descheduled (more busy threads than cores) gets to run.
inline void spin_pause(int & spins) {
    SL_PAUSE();
    if (++spins >= 4096) {
        spins = 0;
        std::this_thread::yield();
    }
}
}  // namespace

int hardware_threads() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? int(n) : 1;
}

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
    threads_.reserve(n_ - 1);
    for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_.store(true);
    }
    cv_.notify_all();
    for (auto & t : threads_) t.join();
}

ThreadPool & ThreadPool::global() {
    static ThreadPool pool(hardware_threads());
    return pool;
}

void ThreadPool::run_impl(Task task, void * ctx) {
    if (n_ == 1) {
        task(ctx, 0, 1);
        return;
    }
    std::lock_guard<std::mutex> run_lk(run_mu_);
    task_ = task;
    ctx_ = ctx;
    pending_.store(n_ - 1, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lk(mu_);
        gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    task(ctx, 0, n_);
    int spins = 0;
    while (pending_.load(std::memory_order_acquire) != 0) spin_pause(spins);
}

void ThreadPool::worker(int ith) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = gen_.load(std::memory_order_acquire);
        if (g == seen) {
            const auto t0 = std::chrono::steady_clock::now();
            int spins = 0;
            while ((g = gen_.load(std::memory_order_acquire)) == seen) {
                if (stop_.load(std::memory_order_relaxed)) return;
                SL_PAUSE();
                if (++spins == 256) {
                    spins = 0;
                    if (std::chrono::steady_clock::now() - t0 > kSpin) {
                        std::unique_lock<std::mutex> lk(mu_);
                        cv_.wait(lk, [&] { return gen_.load() != seen || stop_.load(); });
                    }
                }
            }
        }
        if (stop_.load()) return;
        seen = g;
        task_(ctx_, ith, n_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::barrier() {
    if (n_ == 1) return;
    const int sense = bar_sense_.load(std::memory_order_acquire);
    if (bar_count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
        bar_count_.store(0, std::memory_order_relaxed);
        bar_sense_.store(sense ^ 1, std::memory_order_release);
    } else {
        int spins = 0;
        while (bar_sense_.load(std::memory_order_acquire) == sense) spin_pause(spins);
    }
}

}  // namespace sl
