// llama.cpp's sampler operations on its candidate array, replayed step by step (the general path
// of sample/sampler.h, taken when a sampler outside the fast chain is on).
//
// Each function is a port of the llama.cpp function named in its comment (src/llama-sampler.cpp,
// as vendored by llama-cpp-python 0.3.36): the same float and double arithmetic in the same
// order, the same libm calls (expf, logf, powf, log2f), the same standard sorts with the same
// comparators. With libstdc++ (what llama.cpp is built with on Linux) the candidate orders are
// then the same as llama.cpp's, ties included; with another standard library only the order of
// tied candidates may differ. The random draws are written out (see canonical_double /
// canonical_float) so that they are the same with every standard library.
//
// Two places where llama.cpp converts an out-of-range float to int (undefined behaviour) follow
// what x86-64 does (see x86_int): the bucket of a +inf or NaN logit in the partial sort, and
// mirostat's k when it overflows int (then 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace sl::replay {

// llama_token_data: one candidate.
struct TokenData {
    int32_t id;
    float logit;
    float p;
};

// llama_token_data_array: the candidates still in play, data[0, size). XTC moves data forward.
struct Array {
    TokenData * data;
    size_t size;
    int64_t selected;  // index of the drawn token in data, -1 before the draw
    bool sorted;       // data is in descending logit order
};

// Buffers the operations reuse (llama.cpp allocates them per call; the results are the same).
struct Scratch {
    std::vector<TokenData> sorted;      // partial-sort output (top_p keeps it between steps)
    std::vector<TokenData> tmp;         // partial_sort_inplace, min_p, typical
    std::vector<int> bucket;            // partial sort: each candidate's bucket
    std::vector<float> score;           // typical: shifted scores
    std::vector<size_t> index;          // typical: candidate order
    std::vector<double> cum;            // discrete draw: cumulative probabilities
};

// What (int) v gives on x86-64 (cvttss2si): INT32_MIN for NaN and values outside int's range.
int32_t x86_int(float v);

// std::generate_canonical<double, 53>(mt19937) of libstdc++: two outputs, in [0, 1).
double canonical_double(std::mt19937 & rng);
// std::uniform_real_distribution<float>(0, 1)(mt19937) of libstdc++: one output, in [0, 1).
float canonical_float(std::mt19937 & rng);

// llama_token_data_array_partial_sort_inplace: the npartial best of cur, sorted; cur.size =
// npartial, cur.sorted = true.
void partial_sort_inplace(Array & cur, size_t npartial, Scratch & s);

// llama_sampler_softmax_impl: p = softmax of the logits (float sums), sorting first if do_sort.
void softmax(Array & cur, bool do_sort, Scratch & s);

void top_k(Array & cur, int32_t k, Scratch & s);                            // llama_sampler_top_k_impl
void top_p(Array & cur, float p, size_t min_keep, Scratch & s);             // ..._top_p_apply
void min_p(Array & cur, float p, size_t min_keep, Scratch & s);             // ..._min_p_apply
void typical(Array & cur, float p, size_t min_keep, Scratch & s);           // ..._typical_apply
void top_n_sigma(Array & cur, float n);                                     // ..._top_n_sigma_apply
void xtc(Array & cur, float probability, float threshold, size_t min_keep,  // llama_sample_xtc_apply
         std::mt19937 & rng, Scratch & s);
void temp(Array & cur, float t);                                            // llama_sampler_temp_impl
void temp_ext(Array & cur, float t, float delta, float exponent, Scratch & s);  // ..._temp_ext_apply

// llama_sampler_dist_apply: one double draw (also for one candidate), selected set, p normalised.
void dist(Array & cur, std::mt19937 & rng);

// llama_sampler_mirostat_apply (m candidates estimate s_hat) and llama_sampler_mirostat_v2_apply:
// draw, selected set, mu updated from the drawn token's surprise.
void mirostat(Array & cur, int32_t n_vocab, float tau, float eta, int32_t m, float & mu,
              std::mt19937 & rng, Scratch & s);
void mirostat_v2(Array & cur, float tau, float eta, float & mu, std::mt19937 & rng, Scratch & s);

}  // namespace sl::replay
