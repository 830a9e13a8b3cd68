#include "quant/quantize.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>

#include "common/error.h"

namespace sl {

namespace {

// Index of the first non-finite value in x[0, n), or -1.
int64_t first_non_finite(const float * x, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i])) return i;
    return -1;
}

}  // namespace

bool can_quantize(QType t, bool with_imatrix) {
    const QTypeTraits * tr = qtype_traits(t);
    return tr && (tr->from_float != nullptr || (with_imatrix && tr->from_float_w != nullptr));
}

void check_quant_args(QType t, int64_t nrows, int64_t n_per_row, bool want_quantize, const char * what,
                      bool with_imatrix) {
    const QTypeTraits * tr = qtype_traits(t);
    SL_CHECK(tr, "%s: unknown type id %u", what, unsigned(t));
    if (want_quantize && !can_quantize(t, with_imatrix) && tr->from_float_w)
        throw Error(std::string(what) + ": type " + tr->name + " needs an importance matrix (imatrix) to be quantized");
    SL_CHECK(want_quantize ? can_quantize(t, with_imatrix) : tr->to_float != nullptr,
             "%s: type %s has no %s in splitllm", what, tr->name, want_quantize ? "quantizer" : "dequantizer");
    SL_CHECK(nrows >= 0 && n_per_row >= 0, "%s: negative shape (%lld rows of %lld values)", what, (long long)nrows,
             (long long)n_per_row);
    SL_CHECK(n_per_row % tr->blck_size == 0, "%s: row length %lld is not a multiple of the %s block size %lld", what,
             (long long)n_per_row, tr->name, (long long)tr->blck_size);
}

void quantize_rows(QType t, const float * src, void * dst, int64_t nrows, int64_t n_per_row, ThreadPool & pool,
                   const float * imatrix) {
    const QTypeTraits * tr = qtype_traits(t);
    const bool weighted = imatrix != nullptr && tr && tr->from_float_w != nullptr;
    check_quant_args(t, nrows, n_per_row, true, "quantize", weighted);
    const int64_t bs = tr->blck_size;
    const int64_t per_row = n_per_row / bs;
    const int64_t n_blocks = nrows * per_row;
    const bool need_finite = tr->is_quantized;
    std::atomic<int64_t> bad{INT64_MAX};
    // Records the first non-finite value of [v0, v1) (flat indices); true if there is one.
    auto non_finite = [&](int64_t v0, int64_t v1) {
        if (!need_finite) return false;
        const int64_t i = first_non_finite(src + v0, v1 - v0);
        if (i < 0) return false;
        int64_t cur = bad.load();
        while (v0 + i < cur && !bad.compare_exchange_weak(cur, v0 + i)) {
        }
        return true;
    };
    if (weighted) {
        // Whole rows, one call each: ggml's weighted legacy quantizers weigh by the row's mean
        // square (the k-quants and IQ4 by the super-block's), so a call must see the whole row.
        pool.parallel_for(nrows, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                if (non_finite(r * n_per_row, (r + 1) * n_per_row)) return;
                tr->from_float_w(src + r * n_per_row, static_cast<char *>(dst) + size_t(r * per_row) * tr->type_size,
                                 n_per_row, imatrix);
            }
        });
    } else {
        pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
            if (non_finite(b0 * bs, b1 * bs)) return;
            tr->from_float(src + b0 * bs, static_cast<char *>(dst) + size_t(b0) * tr->type_size, (b1 - b0) * bs);
        });
    }
    const int64_t i = bad.load();
    SL_CHECK(i == INT64_MAX, "quantize: value %g at row %lld, column %lld is not finite; %s needs finite input",
             double(src[i]), (long long)(i / n_per_row), (long long)(i % n_per_row), tr->name);
}

void dequantize_rows(QType t, const void * src, float * dst, int64_t nrows, int64_t n_per_row, ThreadPool & pool) {
    check_quant_args(t, nrows, n_per_row, false, "dequantize");
    const QTypeTraits * tr = qtype_traits(t);
    const int64_t bs = tr->blck_size;
    const int64_t n_blocks = nrows * (n_per_row / bs);
    pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
        tr->to_float(static_cast<const char *>(src) + size_t(b0) * tr->type_size, dst + b0 * bs, (b1 - b0) * bs);
    });
}

namespace {

template <class F>
void with_pool(int n_threads, F && fn) {
    SL_CHECK(n_threads >= 0, "n_threads must be >= 0 (0: all hardware threads), got %d", n_threads);
    if (n_threads == 0) {
        fn(ThreadPool::global());
        return;
    }
    ThreadPool pool(n_threads);
    fn(pool);
}

}  // namespace

void quantize_rows(QType t, const float * src, void * dst, int64_t nrows, int64_t n_per_row, int n_threads,
                   const float * imatrix) {
    with_pool(n_threads, [&](ThreadPool & pool) { quantize_rows(t, src, dst, nrows, n_per_row, pool, imatrix); });
}

void dequantize_rows(QType t, const void * src, float * dst, int64_t nrows, int64_t n_per_row, int n_threads) {
    with_pool(n_threads, [&](ThreadPool & pool) { dequantize_rows(t, src, dst, nrows, n_per_row, pool); });
}

}  // namespace sl
