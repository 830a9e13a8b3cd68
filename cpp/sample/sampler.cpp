#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "common/error.h"
#include "common/vecmath.h"

namespace sl {

namespace {

// top_k up to this size keeps a heap while scanning the vocabulary once; larger k (or k that is
// a large share of the vocabulary) partitions a full candidate array instead.
constexpr size_t kHeapMaxK = 1024;
// top_p over the whole vocabulary sorts the min_p survivors outright when there are at most
// this many; otherwise a mass histogram narrows the set first.
constexpr size_t kTopPSortAll = 1024;

void require(bool ok, const std::string & what) {
    if (!ok) throw std::invalid_argument("sampler: " + what);
}

// Candidate order: higher logit first, then lower id. A function object, so that the sorts
// inline it.
struct Better {
    bool operator()(const Sampler::Cand & a, const Sampler::Cand & b) const {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    }
};
constexpr Better better{};

constexpr size_t kBlock = 16;  // top_k scan: block tested at once
// top_p over the whole vocabulary: mass histogram resolution (buckets per logit unit, and
// buckets in all: distances beyond kBuckets / kBucketsPerUnit share the last one).
constexpr size_t kBucketsPerUnit = 8;

// As llama.cpp's samplers seed their generators (seeds of 2^32 and more: through std::seed_seq).
void seed_rng(std::mt19937 & rng, uint64_t seed) {
    if (seed >> 32 == 0) {
        rng.seed(uint32_t(seed));
    } else {
        std::seed_seq seq{uint32_t(seed), uint32_t(seed >> 32)};
        rng.seed(seq);
    }
}

}  // namespace

Sampler::Sampler(const SamplerParams & params, int32_t n_vocab, uint64_t seed)
    : params_(params), n_vocab_(n_vocab),
      dry_(params.dry_multiplier, params.dry_base, params.dry_allowed_length, params.dry_penalty_last_n,
           params.dry_breakers, std::max(n_vocab, 1)) {
    const SamplerParams & p = params_;
    require(n_vocab > 0, strfmt("n_vocab must be positive, got %d", n_vocab));
    require(std::isfinite(p.temperature), "temperature must be finite");
    require(std::isfinite(p.top_p), "top_p must be finite");
    require(std::isfinite(p.min_p), "min_p must be finite");
    require(std::isfinite(p.repeat_penalty) && p.repeat_penalty > 0.0f,
            strfmt("repeat_penalty must be finite and > 0, got %g", p.repeat_penalty));
    require(p.repeat_last_n >= 0, strfmt("repeat_last_n must be >= 0, got %d", p.repeat_last_n));
    require(std::isfinite(p.frequency_penalty), "frequency_penalty must be finite");
    require(std::isfinite(p.presence_penalty), "presence_penalty must be finite");
    for (const auto & [name, v] : {std::pair<const char *, float>{"typical_p", p.typical_p},
                                   {"mirostat_tau", p.mirostat_tau}, {"mirostat_eta", p.mirostat_eta},
                                   {"xtc_probability", p.xtc_probability}, {"xtc_threshold", p.xtc_threshold},
                                   {"top_n_sigma", p.top_n_sigma}, {"dynatemp_range", p.dynatemp_range},
                                   {"dynatemp_exponent", p.dynatemp_exponent}}) {
        require(std::isfinite(v), strfmt("%s must be finite", name));
    }
    require(p.mirostat >= 0 && p.mirostat <= 2, strfmt("mirostat must be 0, 1 or 2, got %d", p.mirostat));
    for (const auto & [token, bias] : p.logit_bias) {
        require(token >= 0 && token < n_vocab,
                strfmt("logit_bias token %d is outside the vocabulary [0, %d)", token, n_vocab));
        require(!std::isnan(bias) && bias != std::numeric_limits<float>::infinity(),
                strfmt("logit_bias for token %d must be a number or -inf, got %g", token, bias));
    }
    penalties_off_ = (p.repeat_penalty == 1.0f && p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f) ||
                     (p.server_chain && p.mirostat != 0);
    const bool extra = p.typical_p < 1.0f || p.mirostat != 0 || p.top_n_sigma > 0.0f ||
                       (p.xtc_probability > 0.0f && p.xtc_threshold <= 0.5f) || p.dynatemp_range > 0.0f;
    dry_on_ = dry_.on() && p.mirostat == 0;
    general_ = p.server_chain ? extra || p.temperature < 0.0f : extra && p.temperature > 0.0f;
    if (general_) cand_data_.resize(size_t(n_vocab));
    ring_.reserve(std::min<size_t>(size_t(p.repeat_last_n), 4096));
    count_.assign(size_t(n_vocab), 0);
    scratch_.resize(size_t(n_vocab));
    cand_.resize(size_t(n_vocab));
    prob_.resize(size_t(n_vocab));
    mass_.resize(kBuckets);
    reset(seed);
}

void Sampler::reset(uint64_t seed) {
    seed_rng(rng_, seed);
    seed_rng(xtc_rng_, seed);  // llama-server gives XTC the same seed
    mu_ = 2.0f * params_.mirostat_tau;
    for (int32_t t : ring_) count_[size_t(t)] = 0;
    ring_.clear();
    ring_head_ = 0;
    dry_.reset();
}

void Sampler::accept(int32_t token) {
    require(token >= 0 && token < n_vocab_,
            strfmt("accepted token %d is outside the vocabulary [0, %d)", token, n_vocab_));
    if (dry_on_) dry_.accept(token);
    const size_t cap = size_t(params_.repeat_last_n);
    if (cap == 0) return;
    if (ring_.size() < cap) {
        ring_.push_back(token);
    } else {
        // Full: the oldest entry leaves the window and its slot takes the new token.
        count_[size_t(ring_[ring_head_])]--;
        ring_[ring_head_] = token;
        ring_head_ = (ring_head_ + 1) % cap;
    }
    count_[size_t(token)]++;
}

void Sampler::accept_prompt(const int32_t * tokens, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        require(tokens[i] >= 0 && tokens[i] < n_vocab_,
                strfmt("prompt token %d is outside the vocabulary [0, %d)", tokens[i], n_vocab_));
    }
    if (!dry_on_) return;
    for (size_t i = 0; i < n; ++i) dry_.accept(tokens[i]);
}

void Sampler::check_logits(size_t n) const {
    require(n == size_t(n_vocab_),
            strfmt("expected %d logits (n_vocab), got %zu", n_vocab_, n));
}

void Sampler::apply_bias_and_penalties(const float * logits) {
    // NaN becomes -inf (never picked): the candidate order must be a strict weak order.
    float * x = scratch_.data();
    vec::copy_nan_to_ninf(x, logits, size_t(n_vocab_));
    for (const auto & [token, bias] : params_.logit_bias) {
        const float l = x[token] + bias;  // +inf + -inf is NaN
        x[token] = std::isnan(l) ? -std::numeric_limits<float>::infinity() : l;
    }

    apply_penalties(x);
    if (dry_on_) dry_.apply(x);  // llama-server's place: after the penalties
}

void Sampler::apply_penalties(float * x) {
    const SamplerParams & p = params_;
    if (ring_.empty() || penalties_off_) return;
    // Each distinct token once: its count is negated while penalised, then restored.
    for (int32_t t : ring_) {
        const int32_t c = count_[size_t(t)];
        if (c <= 0) continue;
        float l = x[t];
        l = l <= 0.0f ? l * p.repeat_penalty : l / p.repeat_penalty;
        x[t] = l - (float(c) * p.frequency_penalty + p.presence_penalty);
        count_[size_t(t)] = -c;
    }
    for (int32_t t : ring_) {
        if (count_[size_t(t)] < 0) count_[size_t(t)] = -count_[size_t(t)];
    }
}

int32_t Sampler::argmax() const {
    const float * x = scratch_.data();
    const size_t n = size_t(n_vocab_);
    const float mx = vec::max_value(x, n);
    size_t i = 0;
    while (i + kBlock <= n && !vec::any_equal16(x + i, mx)) i += kBlock;
    for (; i < n; ++i) {
        if (x[i] == mx) return int32_t(i);  // the first of any ties
    }
    return 0;  // not reached: scratch_ holds no NaN
}

size_t Sampler::select_top_k(size_t k) {
    const float * x = scratch_.data();
    Cand * c = cand_.data();
    const size_t n = size_t(n_vocab_);
    if (k > kHeapMaxK || k * 8 > n) {
        for (size_t i = 0; i < n; ++i) c[i] = {x[i], int32_t(i)};
        std::nth_element(c, c + (k - 1), c + n, better);
        std::sort(c, c + k, better);
        return k;
    }
    // A heap of the k best so far with the worst at c[0]. Later ids lose ties, so a newcomer
    // enters only with a strictly larger logit.
    for (size_t i = 0; i < k; ++i) c[i] = {x[i], int32_t(i)};
    std::make_heap(c, c + k, better);
    float worst = c[0].logit;
    auto offer = [&](size_t i) {
        if (!(x[i] > worst)) return;
        std::pop_heap(c, c + k, better);
        c[k - 1] = {x[i], int32_t(i)};
        std::push_heap(c, c + k, better);
        worst = c[0].logit;
    };
    size_t i = k;
    for (; i + kBlock <= n; i += kBlock) {
        // Most blocks hold nothing better than the current k-th: one vector test skips them.
        if (!vec::any_greater16(x + i, worst)) continue;
        for (size_t j = 0; j < kBlock; ++j) offer(i + j);
    }
    for (; i < n; ++i) offer(i);
    std::sort(c, c + k, better);
    return k;
}

size_t Sampler::collect(float threshold) {
    const float * x = scratch_.data();
    Cand * c = cand_.data();
    size_t m = 0;
    for (int32_t i = 0; i < n_vocab_; ++i) {
        if (x[i] >= threshold) c[m++] = {x[i], i};
    }
    return m;
}

// Length of the smallest prefix of the sorted cand_[0, m) whose probability mass (softmax at
// temperature 1 with normaliser z) reaches top_p, or 0 when all m together stay below top_p.
size_t Sampler::top_p_cut(size_t m, float max_logit, double z) const {
    const double target = double(params_.top_p) * z;
    double cum = 0.0;
    for (size_t i = 0; i < m; ++i) {
        cum += double(vec::exp_nonpos(cand_[i].logit - max_logit));
        if (cum >= target) return i + 1;
    }
    return 0;
}

// One pass over the vocabulary: the softmax normaliser z, and a logit threshold above which the
// top_p prefix certainly lies, from a histogram of probability mass by distance to the max
// (kBucketsPerUnit buckets per logit unit). -inf when the histogram cannot tell.
float Sampler::top_p_threshold(float mx, double & z) {
    std::fill(mass_.begin(), mass_.end(), 0.0);
    const float * x = scratch_.data();
    const size_t n = size_t(n_vocab_);
    const float last = float(kBuckets - 1);
    auto add = [&](float dist, float e) {  // dist = mx - logit >= 0, or NaN
        const size_t b = dist < last ? size_t(dist) : kBuckets - 1;
        mass_[b] += double(e);
    };
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const vec::f4 v = vec::load(x + i);
        const vec::f4 e = vec::exp_nonpos(v - vec::splat(mx));
        const vec::f4 d = (vec::splat(mx) - v) * vec::splat(float(kBucketsPerUnit));
        for (int j = 0; j < 4; ++j) add(d[j], e[j]);
    }
    for (; i < n; ++i) add((mx - x[i]) * float(kBucketsPerUnit), vec::exp_nonpos(x[i] - mx));
    z = 0.0;
    for (double m : mass_) z += m;
    const double target = double(params_.top_p) * z;
    double cum = 0.0;
    for (size_t b = 0; b + 1 < kBuckets; ++b) {
        cum += mass_[b];
        // One bucket of margin for rounding at the bucket edges.
        if (cum >= target) return mx - float(b + 2) / float(kBucketsPerUnit);
    }
    return -std::numeric_limits<float>::infinity();
}

size_t Sampler::candidates_top_k() {
    const SamplerParams & p = params_;
    size_t m = select_top_k(size_t(p.top_k));
    const float mx = cand_[0].logit;
    if (p.top_p < 1.0f) {
        double z = 0.0;
        for (size_t i = 0; i < m; ++i) z += double(vec::exp_nonpos(cand_[i].logit - mx));
        const size_t cut = top_p_cut(m, mx, z);
        if (cut) m = cut;
    }
    if (p.min_p > 0.0f) {
        const float min_logit = mx + std::log(p.min_p);
        size_t i = 1;
        while (i < m && cand_[i].logit >= min_logit) ++i;
        m = i;
    }
    return m;
}

// Whole vocabulary. top_p and min_p both keep a prefix of the sorted order, so the set top_p
// sorts can be cut first (by min_p and by the histogram threshold), as long as top_p's
// normaliser covers every token.
size_t Sampler::candidates_all() {
    const SamplerParams & p = params_;
    const float ninf = -std::numeric_limits<float>::infinity();
    const float mx = vec::max_value(scratch_.data(), size_t(n_vocab_));
    const float min_logit = p.min_p > 0.0f ? mx + std::log(p.min_p) : ninf;
    if (p.top_p >= 1.0f) return collect(min_logit);
    auto sort_and_cut = [&](size_t m, double z) {
        std::sort(cand_.begin(), cand_.begin() + ptrdiff_t(m), better);
        const size_t cut = top_p_cut(m, mx, z);
        return cut ? cut : m;
    };
    if (p.min_p > 0.0f) {
        const size_t m = collect(min_logit);
        if (m <= kTopPSortAll) {  // min_p left few: sorting them all is cheap
            return sort_and_cut(m, vec::sum_exp(scratch_.data(), nullptr, size_t(n_vocab_), mx, 1.0f));
        }
    }
    double z = 0.0;
    const float top_p_logit = top_p_threshold(mx, z);
    if (top_p_logit > min_logit) {
        // The threshold leaves little more than the prefix.
        const size_t m = collect(top_p_logit);
        std::sort(cand_.begin(), cand_.begin() + ptrdiff_t(m), better);
        const size_t cut = top_p_cut(m, mx, z);
        if (cut) return cut;
    }
    // The histogram could not narrow the set (non-finite logits, or rounding): sort them all.
    return sort_and_cut(collect(min_logit), z);
}

size_t Sampler::candidates() {
    const SamplerParams & p = params_;
    size_t m = 0;
    if (p.temperature < 0.0f) {
        m = collect(-std::numeric_limits<float>::infinity());
    } else if (p.top_k > 0 && p.top_k < n_vocab_) {
        m = candidates_top_k();
    } else {
        m = candidates_all();
        // llama.cpp's top_k of n_vocab or more sorts everything (top_p < 1 has sorted already):
        // the order decides which token a given random number picks.
        if (p.top_k >= n_vocab_ && p.top_p >= 1.0f) {
            std::sort(cand_.begin(), cand_.begin() + ptrdiff_t(m), better);
        }
    }
    if (m > 0) return m;
    const int32_t best = argmax();  // defensive: the max always passes the filters
    cand_[0] = {scratch_[size_t(best)], best};
    return 1;
}

// prob_[i] = exp(l_i / T - max_j l_j / T) for the m candidates (T = 1 when temperature < 0, as
// llama.cpp divides the logits by T first); returns their sum.
double Sampler::softmax(size_t m) {
    float * p = prob_.data();
    const float t = params_.temperature > 0.0f ? params_.temperature : 1.0f;
    for (size_t i = 0; i < m; ++i) p[i] = cand_[i].logit / t;
    return vec::sum_exp(p, p, m, vec::max_value(p, m), 1.0f);
}

// Two 32-bit draws make one double in [0, 1), the way libstdc++'s generate_canonical does
// (what llama.cpp's std::uniform_real_distribution<double> uses), written out so that it is
// the same with every standard library.
double Sampler::uniform() {
    const double lo = double(rng_());
    const double hi = double(rng_());
    const double u = (lo + hi * 0x1.0p32) * 0x1.0p-64;
    return u < 1.0 ? u : std::nextafter(1.0, 0.0);
}

int32_t Sampler::sample(const float * logits) {
    if (general_) return sample_general(logits);
    apply_bias_and_penalties(logits);
    if (params_.temperature == 0.0f) return argmax();
    const size_t m = candidates();
    const double sum = softmax(m);
    const double target = uniform() * sum;  // drawn even for one candidate, as llama.cpp does
    double run = 0.0;
    for (size_t i = 0; i < m; ++i) {
        run += prob_[i];
        if (run >= target) return cand_[i].id;
    }
    // The running sum fell short of target by rounding (sum was added up in another order).
    for (size_t i = m; i-- > 0;) {
        if (prob_[i] > 0.0f) return cand_[i].id;
    }
    return cand_[0].id;
}

int32_t Sampler::sample(const float * logits, size_t n) {
    check_logits(n);
    return sample(logits);
}

void Sampler::probs(const float * logits, size_t n, std::vector<int32_t> & ids, std::vector<float> & p) {
    check_logits(n);
    if (general_) {
        probs_general(logits, ids, p);
        return;
    }
    apply_bias_and_penalties(logits);
    if (params_.temperature == 0.0f) {
        ids.assign(1, argmax());
        p.assign(1, 1.0f);
        return;
    }
    const size_t m = candidates();
    const double sum = softmax(m);
    std::vector<size_t> order(m);
    for (size_t i = 0; i < m; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return prob_[a] > prob_[b] || (prob_[a] == prob_[b] && cand_[a].id < cand_[b].id);
    });
    ids.resize(m);
    p.resize(m);
    for (size_t i = 0; i < m; ++i) {
        ids[i] = cand_[order[i]].id;
        p[i] = float(double(prob_[order[i]]) / sum);
    }
}

void Sampler::adjusted(const float * logits, size_t n, float * out) {
    check_logits(n);
    apply_bias_and_penalties(logits);
    std::copy(scratch_.begin(), scratch_.end(), out);
}

// ---- general path: llama.cpp's array operations (see sampler.h for the chains)

void Sampler::run_general(const float * logits, replay::Array & cur) {
    apply_bias_and_penalties(logits);  // (penalties_off_ under llama-server's mirostat)
    const SamplerParams & p = params_;
    const size_t n = size_t(n_vocab_);
    replay::TokenData * d = cand_data_.data();
    for (size_t i = 0; i < n; ++i) d[i] = {int32_t(i), scratch_[i], 0.0f};
    cur = {d, n, -1, false};
    replay::Scratch & s = replay_;
    if (p.mirostat != 0) {
        if (p.server_chain) replay::temp(cur, p.temperature);
        if (p.mirostat == 1) {
            replay::mirostat(cur, n_vocab_, p.mirostat_tau, p.mirostat_eta, 100, mu_, rng_, s);
        } else {
            replay::mirostat_v2(cur, p.mirostat_tau, p.mirostat_eta, mu_, rng_, s);
        }
        return;
    }
    replay::top_n_sigma(cur, p.top_n_sigma);
    replay::top_k(cur, p.top_k, s);
    replay::typical(cur, p.typical_p, 1, s);
    replay::top_p(cur, p.top_p, 1, s);
    replay::min_p(cur, p.min_p, 1, s);
    replay::xtc(cur, p.xtc_probability, p.xtc_threshold, 1, xtc_rng_, s);
    replay::temp_ext(cur, p.temperature, p.dynatemp_range, p.dynatemp_exponent, s);
    replay::dist(cur, rng_);
}

int32_t Sampler::sample_general(const float * logits) {
    replay::Array cur{};
    run_general(logits, cur);
    if (cur.selected < 0 || size_t(cur.selected) >= cur.size) return argmax();  // not reached
    return cur.data[cur.selected].id;
}

void Sampler::probs_general(const float * logits, std::vector<int32_t> & ids, std::vector<float> & p) {
    // Run the chain on copies of the state: the draws and mu move, then come back.
    const std::mt19937 rng = rng_;
    const std::mt19937 xtc_rng = xtc_rng_;
    const float mu = mu_;
    replay::Array cur{};
    run_general(logits, cur);
    rng_ = rng;
    xtc_rng_ = xtc_rng;
    mu_ = mu;
    std::vector<size_t> order(cur.size);
    for (size_t i = 0; i < cur.size; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        const replay::TokenData & x = cur.data[a];
        const replay::TokenData & y = cur.data[b];
        return x.p > y.p || (x.p == y.p && x.id < y.id);
    });
    ids.resize(cur.size);
    p.resize(cur.size);
    for (size_t i = 0; i < cur.size; ++i) {
        ids[i] = cur.data[order[i]].id;
        p[i] = cur.data[order[i]].p;
    }
}

}  // namespace sl
