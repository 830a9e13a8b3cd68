#include "sample/dry.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/error.h"

namespace sl {

namespace {

void require(bool ok, const std::string & what) {
    if (!ok) throw std::invalid_argument("sampler: " + what);
}

}  // namespace

Dry::Dry(float multiplier, float base, int32_t allowed_length, int32_t penalty_last_n,
         const DryBreakers & breakers, int32_t n_vocab)
    : multiplier_(multiplier), base_(base), allowed_(allowed_length) {
    require(std::isfinite(multiplier), "dry_multiplier must be finite");
    require(std::isfinite(base), "dry_base must be finite");
    require(allowed_length >= 0, strfmt("dry_allowed_length must be >= 0, got %d", allowed_length));
    require(penalty_last_n >= -1,
            strfmt("dry_penalty_last_n must be >= -1 (-1: all, 0: off), got %d", penalty_last_n));
    on_ = multiplier != 0.0f && base >= 1.0f && penalty_last_n != 0;
    last_n_ = penalty_last_n < 0 ? SIZE_MAX : size_t(penalty_last_n);
    for (const auto & [head, tail] : breakers) {
        require(head >= 0 && head < n_vocab,
                strfmt("DRY breaker token %d is outside the vocabulary [0, %d)", head, n_vocab));
        for (int32_t t : tail) {
            require(t >= 0 && t < n_vocab,
                    strfmt("DRY breaker token %d is outside the vocabulary [0, %d)", t, n_vocab));
        }
    }
    if (!on_) return;
    single_.assign(size_t(n_vocab), 0);
    for (const auto & [head, tail] : breakers) {
        tails_[head].push_back(tail);
        if (tail.empty()) single_[size_t(head)] = 1;
    }
    // The largest exponent whose power stays below FLT_MAX (llama.cpp: float quotient, truncated).
    if (base > 1.000001f) max_exponent_ = int(88.7228391f / std::log(base));
    max_len_.assign(size_t(n_vocab), -1);
}

void Dry::accept(int32_t token) {
    if (!on_) return;
    hist_.push_back(token);
    // Keep at most twice the window, so that trimming costs O(1) a token on average.
    if (last_n_ != SIZE_MAX && hist_.size() >= 2 * last_n_ + 64) {
        hist_.erase(hist_.begin(), hist_.end() - ptrdiff_t(last_n_));
    }
}

size_t Dry::window() const { return std::min(hist_.size(), last_n_); }

// The cap on repeat lengths: the number of tokens after the most recent sequence breaker that is
// complete in the window (rev_[i] a head, its tail right after it in time). Where several tails
// of that head match, the longest counts. n when there is none.
int32_t Dry::breaker_limit(size_t n) const {
    for (size_t i = 0; i < n; ++i) {
        const auto it = tails_.find(rev_[i]);
        if (it == tails_.end()) continue;
        long longest = -1;
        for (const std::vector<int32_t> & tail : it->second) {
            const size_t len = tail.size();
            if (long(len) <= longest || len > i) continue;
            // tail[o] comes o + 1 tokens after the head, rev_[i - o - 1] in the reversed window.
            size_t o = 0;
            while (o < len && tail[o] == rev_[i - o - 1]) ++o;
            if (o == len) longest = long(len);
        }
        if (longest >= 0) return int32_t(long(i) - longest);
    }
    return int32_t(n);
}

// z_[k] = the length of the longest common prefix of rev_ and rev_[k, n), capped at limit: the
// newest tokens of the history, repeated ending k tokens back (a standard Z-function).
void Dry::repeat_lengths(size_t n, int32_t limit) {
    z_.assign(n, 0);
    size_t box_l = 0, box_r = 0;  // [box_l, box_r): the rightmost match found so far
    for (size_t k = 1; k < n; ++k) {
        size_t len = k < box_r ? std::min(box_r - k, size_t(z_[k - box_l])) : 0;
        while (k + len < n && rev_[len] == rev_[k + len]) ++len;
        z_[k] = int32_t(len);
        if (k + len > box_r) {
            box_l = k;
            box_r = k + len;
        }
    }
    for (size_t k = 1; k < n; ++k) z_[k] = std::min(z_[k], limit);
}

void Dry::apply(float * logits) {
    if (!on_) return;
    const size_t n = window();
    if (long(n) <= long(allowed_)) return;
    rev_.resize(n);
    for (size_t j = 0; j < n; ++j) rev_[j] = hist_[hist_.size() - 1 - j];

    const int32_t limit = breaker_limit(n);
    if (limit < allowed_) return;
    repeat_lengths(n, limit);

    // A repeat of length z_[k] ends k tokens back; the token that followed it (rev_[k - 1])
    // would extend the current one to z_[k] + 1.
    for (size_t k = 1; k < n; ++k) {
        const int32_t len = z_[k];
        if (len < allowed_) continue;
        const int32_t t = rev_[k - 1];
        int32_t & best = max_len_[size_t(t)];
        if (best < 0) touched_.push_back(t);
        best = std::max(best, len);
    }

    for (int32_t t : touched_) {
        if (!single_[size_t(t)]) {
            int exponent = max_len_[size_t(t)] - allowed_;
            if (max_exponent_ > 0 && exponent > max_exponent_) exponent = max_exponent_;
            // llama.cpp: float * std::pow(float, int) (a double power), stored in a float.
            const float penalty = float(double(multiplier_) * std::pow(double(base_), double(exponent)));
            logits[t] -= penalty;
        }
        max_len_[size_t(t)] = -1;
    }
    touched_.clear();
}

}  // namespace sl
