// Ports of llama.cpp's sampler functions (src/llama-sampler.cpp, MIT licence, as vendored by
// llama-cpp-python 0.3.36). Kept as close to the original as the surrounding types allow: the
// point is that every float operation, sort and draw happens as it does there.
#include "sample/replay.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

namespace sl::replay {

namespace {

// llama.cpp's comparator: higher logit first, nothing else (the standard sorts decide ties).
struct ByLogit {
    bool operator()(const TokenData & a, const TokenData & b) const { return a.logit > b.logit; }
};

// llama_token_data_array_partial_sort: the npartial best of cur, sorted, at the front of res
// (res holds every candidate of the buckets reached; cur is left alone).
void partial_sort(const Array & cur, int npartial, std::vector<TokenData> & res, Scratch & s) {
    constexpr int nbuckets = 128;
    constexpr float bucket_low = -10.0f;
    constexpr float bucket_high = 10.0f;
    constexpr float bucket_scale = nbuckets / (bucket_high - bucket_low);
    constexpr float bucket_inter = -bucket_low * bucket_scale;

    std::vector<int> & bucket_idx = s.bucket;
    bucket_idx.clear();
    int histo[nbuckets] = {};
    for (int i = 0; i < int(cur.size); ++i) {
        const float val = cur.data[i].logit;
        int ib = x86_int(bucket_scale * val + bucket_inter);
        ib = std::max(0, std::min(nbuckets - 1, ib));
        bucket_idx.push_back(ib);
        ++histo[ib];
    }
    int nhave = 0;
    int ib = nbuckets - 1;
    for (; ib >= 0; --ib) {
        nhave += histo[ib];
        if (nhave >= npartial) break;
    }
    res.resize(size_t(nhave));
    TokenData * bucket_ptrs[nbuckets];
    TokenData * ptr = res.data();
    for (int j = nbuckets - 1; j >= ib; --j) {
        bucket_ptrs[nbuckets - 1 - j] = ptr;
        ptr += histo[j];
    }
    for (int i = 0; i < int(cur.size); ++i) {
        const int j = bucket_idx[size_t(i)];
        if (j >= ib) *bucket_ptrs[nbuckets - 1 - j]++ = cur.data[i];
    }
    ptr = res.data();
    int ndone = 0;
    for (int j = nbuckets - 1; j > ib; --j) {
        std::sort(ptr, ptr + histo[j], ByLogit{});
        ptr += histo[j];
        ndone += histo[j];
    }
    std::partial_sort(ptr, ptr + npartial - ndone, ptr + histo[ib], ByLogit{});
}

// llama_sample_dist: std::discrete_distribution<int> over the float p of cur, as libstdc++
// builds and draws it (no draw for fewer than two candidates).
int discrete(const Array & cur, std::mt19937 & rng, Scratch & s) {
    if (cur.size < 2) return 0;
    double sum = 0.0;
    for (size_t i = 0; i < cur.size; ++i) sum = sum + double(cur.data[i].p);
    std::vector<double> & cp = s.cum;
    cp.resize(cur.size);
    double run = 0.0;
    for (size_t i = 0; i < cur.size; ++i) {
        const double prob = double(cur.data[i].p) / sum;
        run = i == 0 ? prob : run + prob;
        cp[i] = run;
    }
    cp.back() = 1.0;
    const double u = canonical_double(rng);
    return int(std::lower_bound(cp.begin(), cp.end(), u) - cp.begin());
}

// The largest logit: the first one when the array is sorted (llama.cpp's softmax and dist).
float max_logit(const Array & cur) {
    float max_l = cur.data[0].logit;
    if (!cur.sorted) {
        for (size_t i = 1; i < cur.size; ++i) max_l = std::max(max_l, cur.data[i].logit);
    }
    return max_l;
}

}  // namespace

int32_t x86_int(float v) {
    if (!(v >= -2147483648.0f && v < 2147483648.0f)) return INT32_MIN;
    return int32_t(v);
}

double canonical_double(std::mt19937 & rng) {
    double sum = 0.0;
    sum += double(rng()) * 1.0;
    sum += double(rng()) * 0x1.0p32;
    const double r = sum / 0x1.0p64;
    return r >= 1.0 ? std::nextafter(1.0, 0.0) : r;
}

float canonical_float(std::mt19937 & rng) {
    const float r = float(rng()) / 0x1.0p32f;
    return r >= 1.0f ? std::nextafter(1.0f, 0.0f) : r;
}

void partial_sort_inplace(Array & cur, size_t npartial, Scratch & s) {
    if (npartial <= 128) {
        std::partial_sort(cur.data, cur.data + npartial, cur.data + cur.size, ByLogit{});
    } else {
        partial_sort(cur, int(npartial), s.tmp, s);
        std::copy(s.tmp.data(), s.tmp.data() + npartial, cur.data);
    }
    cur.size = npartial;
    cur.sorted = true;
}

void softmax(Array & cur, bool do_sort, Scratch & s) {
    if (cur.size == 0) return;  // (llama.cpp asserts)
    if (do_sort && !cur.sorted) partial_sort_inplace(cur, cur.size, s);
    const float max_l = max_logit(cur);
    float cum_sum = 0.0f;
    for (size_t i = 0; i < cur.size; ++i) {
        const float p = std::exp(cur.data[i].logit - max_l);
        cur.data[i].p = p;
        cum_sum += p;
    }
    for (size_t i = 0; i < cur.size; ++i) cur.data[i].p /= cum_sum;
}

void top_k(Array & cur, int32_t k, Scratch & s) {
    if (k <= 0) return;
    k = std::min(k, int32_t(cur.size));
    if (!cur.sorted) partial_sort_inplace(cur, size_t(k), s);
    cur.size = size_t(k);
}

void top_p(Array & cur, float p, size_t min_keep, Scratch & s) {
    if (p >= 1.0f) return;
    softmax(cur, false, s);
    size_t k = cur.size;
    TokenData * pdata = cur.data;
    std::vector<TokenData> & buf_sort = s.sorted;
    if (!cur.sorted && cur.size > 1024) {  // adaptive top-k sorting
        k = std::min<size_t>(256, cur.size);
        partial_sort(cur, int(k), buf_sort, s);
        pdata = buf_sort.data();
    } else if (!cur.sorted) {
        partial_sort_inplace(cur, k, s);
    }
    float cum_sum = 0.0f;
    size_t last_idx = cur.size;
    for (size_t i = 0; i < cur.size; ++i) {
        cum_sum += pdata[i].p;
        if (cum_sum >= p && i + 1 >= min_keep) {
            last_idx = i + 1;
            break;
        }
        if (!cur.sorted && i == k - 1) {  // past the heuristic: sort everything
            k = cur.size;
            partial_sort(cur, int(k), buf_sort, s);
            pdata = buf_sort.data();
        }
    }
    if (!cur.sorted) {
        std::copy(buf_sort.data(), buf_sort.data() + last_idx, cur.data);
        cur.sorted = true;
    }
    cur.size = last_idx;
}

void min_p(Array & cur, float p, size_t min_keep, Scratch & s) {
    if (p <= 0.0f || cur.size == 0) return;
    bool applied = false;
    if (!cur.sorted) {  // the unsorted implementation first
        std::vector<TokenData> & filtered = s.tmp;
        filtered.clear();
        float max_logit = -FLT_MAX;
        for (size_t i = 0; i < cur.size; ++i) max_logit = std::max(max_logit, cur.data[i].logit);
        const float min_logit = max_logit + std::log(p);
        for (size_t i = 0; i < cur.size; ++i) {
            if (cur.data[i].logit >= min_logit) filtered.push_back(cur.data[i]);
        }
        if (!filtered.empty() && filtered.size() >= min_keep) {
            std::copy(filtered.begin(), filtered.end(), cur.data);
            cur.size = filtered.size();
            applied = true;
        }
    }
    if (!applied) {
        if (!cur.sorted) partial_sort_inplace(cur, cur.size, s);
        const float min_logit = cur.data[0].logit + std::log(p);
        size_t i = 1;
        for (; i < cur.size; ++i) {
            if (cur.data[i].logit < min_logit && i >= min_keep) break;
        }
        cur.size = i;
    }
}

void typical(Array & cur, float p, size_t min_keep, Scratch & s) {
    if (p >= 1.0f) return;
    softmax(cur, true, s);
    float entropy = 0.0f;
    for (size_t i = 0; i < cur.size; ++i) entropy += -cur.data[i].p * std::log(cur.data[i].p);
    std::vector<float> & shifted = s.score;
    shifted.clear();
    for (size_t i = 0; i < cur.size; ++i) shifted.push_back(std::fabs(-std::log(cur.data[i].p) - entropy));
    std::vector<size_t> & indices = s.index;
    indices.resize(cur.size);
    std::iota(indices.begin(), indices.end(), size_t(0));
    std::sort(indices.begin(), indices.end(), [&](size_t a, size_t b) { return shifted[a] < shifted[b]; });
    float cum_sum = 0.0f;
    size_t last_idx = indices.size();
    for (size_t i = 0; i < indices.size(); ++i) {
        cum_sum += cur.data[indices[i]].p;
        if (cum_sum > p && (min_keep == 0 || i >= min_keep - 1)) {
            last_idx = i + 1;
            break;
        }
    }
    std::vector<TokenData> & kept = s.tmp;
    kept.clear();
    for (size_t i = 0; i < last_idx; ++i) kept.push_back(cur.data[indices[i]]);
    std::copy(kept.begin(), kept.end(), cur.data);
    cur.size = kept.size();
    cur.sorted = false;
}

void top_n_sigma(Array & cur, float n) {
    if (n <= 0.0f || cur.size <= 1) return;
    const float ninf = -INFINITY;
    float max = cur.data[0].logit;
    float logits_sum = 0;
    size_t valid_count = 0;
    for (size_t i = 0; i < cur.size; ++i) {
        if (cur.data[i].logit != ninf) {  // -inf takes no part
            max = std::max(max, cur.data[i].logit);
            logits_sum += cur.data[i].logit;
            valid_count++;
        }
    }
    const float mean = valid_count > 0 ? logits_sum / float(valid_count) : 0;
    float acc = 0;
    for (size_t i = 0; i < cur.size; ++i) {
        if (cur.data[i].logit != ninf) {
            const double d = double(cur.data[i].logit - mean);  // pow(float, 2): a double square
            acc = float(double(acc) + d * d);
        }
    }
    const float sd = valid_count > 0 ? float(std::sqrt(double(acc / float(valid_count)))) : 0;
    for (size_t i = 0; i < cur.size; ++i) {
        if (cur.data[i].logit < max - (n * sd)) cur.data[i].logit = ninf;
    }
}

void xtc(Array & cur, float probability, float threshold, size_t min_keep, std::mt19937 & rng, Scratch & s) {
    if (probability <= 0.0f || threshold > 0.5f || cur.size < 2) return;
    const float chance = canonical_float(rng);
    if (chance > probability) return;
    softmax(cur, true, s);
    int pos_last = 0;
    for (size_t i = 0; i < cur.size; ++i) {
        if (cur.data[i].p >= threshold) {
            pos_last = int(i);
        } else {
            break;
        }
    }
    if (cur.size - size_t(pos_last) >= min_keep && pos_last > 0) {
        cur.data += pos_last;
        cur.size -= size_t(pos_last);
    }
}

void temp(Array & cur, float t) {
    if (cur.size == 0) return;
    if (t <= 0.0f) {  // keep the first highest logit, the rest become -inf
        size_t max_i = 0;
        float max_l = cur.data[0].logit;
        for (size_t i = 1; i < cur.size; ++i) {
            if (cur.data[i].logit > max_l) {
                cur.data[max_i].logit = -INFINITY;
                max_i = i;
                max_l = cur.data[i].logit;
            } else {
                cur.data[i].logit = -INFINITY;
            }
        }
        return;
    }
    for (size_t i = 0; i < cur.size; ++i) cur.data[i].logit /= t;
}

void temp_ext(Array & cur, float t, float delta, float exponent, Scratch & s) {
    if (!(delta > 0)) {
        temp(cur, t);
        return;
    }
    const float min_temp = std::max(0.0f, t - delta);
    const float max_temp = t + delta;
    if (cur.size <= 1) return;
    const float max_entropy = -std::log(1.0f / float(cur.size));
    softmax(cur, true, s);
    float entropy = 0.0f;
    for (size_t i = 0; i < cur.size; ++i) {
        const float prob = cur.data[i].p;
        if (prob > 0.0f) entropy -= prob * std::log(prob);
    }
    const float normalized_entropy = entropy / max_entropy;
    const float dyn_temp = min_temp + (max_temp - min_temp) * std::pow(normalized_entropy, exponent);
    temp(cur, dyn_temp);
    // Probabilities after the scaling, in double.
    const double max_l_double = cur.data[0].logit;
    double cum_sum_double = 0.0;
    for (size_t i = 0; i < cur.size; ++i) {
        const double p = std::exp(double(cur.data[i].logit) - max_l_double);
        cur.data[i].p = float(p);
        cum_sum_double += p;
    }
    for (size_t i = 0; i < cur.size; ++i) cur.data[i].p = float(double(cur.data[i].p) / cum_sum_double);
}

void dist(Array & cur, std::mt19937 & rng) {
    if (cur.size == 0) {
        cur.selected = -1;
        return;
    }
    cur.selected = 0;
    if (cur.size == 1) {
        canonical_double(rng);  // drawn anyway, as llama.cpp does
        cur.data[0].p = 1.0f;
        return;
    }
    const float max_l = max_logit(cur);
    double sum_cum = 0.0;
    for (size_t i = 0; i < cur.size; ++i) {
        const float p = std::exp(cur.data[i].logit - max_l);
        cur.data[i].p = p;
        sum_cum += p;
    }
    const double rnd = canonical_double(rng);
    double sum_run = 0.0;
    const double sum_tgt = sum_cum * rnd;
    bool found = false;
    for (size_t i = 0; i < cur.size; ++i) {
        if (!found) {
            sum_run += cur.data[i].p;
            if (sum_run >= sum_tgt) {
                cur.selected = int64_t(i);
                found = true;
            }
        }
        cur.data[i].p = float(double(cur.data[i].p) / sum_cum);
    }
    if (!found) cur.selected = int64_t(cur.size) - 1;
}

void mirostat(Array & cur, int32_t n_vocab, float tau, float eta, int32_t m, float & mu,
              std::mt19937 & rng, Scratch & s) {
    softmax(cur, true, s);
    // Estimate s_hat from the m most probable tokens.
    float sum_ti_bi = 0.0;
    float sum_ti_sq = 0.0;
    for (size_t i = 0; i < size_t(m - 1) && i < cur.size - 1; ++i) {
        const float t_i = std::log(float(i + 2) / float(i + 1));
        const float b_i = std::log(cur.data[i].p / cur.data[i + 1].p);
        sum_ti_bi += t_i * b_i;
        sum_ti_sq += t_i * t_i;
    }
    const float s_hat = sum_ti_bi / sum_ti_sq;
    // k from s_hat and the target surprise.
    const float epsilon_hat = s_hat - 1;
    const float k = std::pow((epsilon_hat * std::pow(2.0f, mu)) / (1 - std::pow(float(n_vocab), -epsilon_hat)),
                             1 / s_hat);
    top_k(cur, std::max(x86_int(k), int32_t(1)), s);
    softmax(cur, true, s);
    const int idx = discrete(cur, rng, s);
    cur.selected = idx;
    const float observed_surprise = -std::log2(cur.data[idx].p);
    const float e = observed_surprise - tau;
    mu = mu - eta * e;
}

void mirostat_v2(Array & cur, float tau, float eta, float & mu, std::mt19937 & rng, Scratch & s) {
    softmax(cur, true, s);
    // Drop the tokens whose surprise exceeds mu.
    cur.size = size_t(std::find_if(cur.data, cur.data + cur.size,
                                   [&](const TokenData & c) { return -std::log2(c.p) > mu; }) - cur.data);
    if (cur.size == 0) cur.size = 1;
    softmax(cur, true, s);
    const int idx = discrete(cur, rng, s);
    cur.selected = idx;
    const float observed_surprise = -std::log2(cur.data[idx].p);
    const float e = observed_surprise - tau;
    mu = mu - eta * e;
}

}  // namespace sl::replay
