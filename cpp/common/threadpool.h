// A persistent pool of worker threads that lives as long as its owner (a Model, or the
// process-wide pool used by the quantizers). run(fn) calls fn(ith, nth) on every thread,
// the caller being thread 0, and returns when all are done: no thread is created per call.
// Workers spin briefly between calls (decode steps follow each other within microseconds),
// then sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace sl {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool & operator=(const ThreadPool &) = delete;

    int size() const { return n_; }

    // fn(int ith, int nth) on all threads; returns when every call has returned.
    // Calls from different host threads are serialised.
    template <class F>
    void run(F && fn) {
        using Fn = std::remove_reference_t<F>;
        run_impl([](void * ctx, int ith, int nth) { (*static_cast<Fn *>(ctx))(ith, nth); },
                 const_cast<void *>(static_cast<const void *>(&fn)));
    }

    // fn(begin, end) over [0, n) split into contiguous ranges, one per thread.
    template <class F>
    void parallel_for(int64_t n, F && fn) {
        if (n <= 0) return;
        if (n_ == 1 || n == 1) {
            fn(int64_t(0), n);
            return;
        }
        run([&](int ith, int nth) {
            const int64_t per = (n + nth - 1) / nth;
            const int64_t b = per * ith;
            const int64_t e = b + per < n ? b + per : n;
            if (b < e) fn(b, e);
        });
    }

    // Waits until every thread of the current run() has reached it. Only inside run().
    void barrier();

    // Process-wide pool with one thread per hardware thread (quantizers, converters).
    static ThreadPool & global();

private:
    typedef void (*Task)(void * ctx, int ith, int nth);
    void run_impl(Task task, void * ctx);
    void worker(int ith);

    int n_;
    std::vector<std::thread> threads_;
    std::mutex run_mu_;

    alignas(64) std::atomic<uint64_t> gen_{0};
    alignas(64) std::atomic<int> pending_{0};
    alignas(64) std::atomic<int> bar_count_{0};
    alignas(64) std::atomic<int> bar_sense_{0};
    Task task_ = nullptr;
    void * ctx_ = nullptr;
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<bool> stop_{false};
};

// Number of hardware threads available to this process (affinity-aware).
int hardware_threads();

}  // namespace sl
