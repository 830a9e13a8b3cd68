// Token sampler: the chain llama-cpp-python 0.3.36 builds for create_completion, in its order:
//
//   logit_bias -> penalties (repeat / frequency / presence over the last repeat_last_n accepted
//   tokens) -> top_k -> top_p -> min_p -> temperature -> seeded draw from the softmax.
//
//   temperature == 0: greedy argmax after logit_bias and penalties (no filters, no random draw).
//   temperature  < 0: a draw from the softmax of all logits after logit_bias and penalties, with
//                     no top_k / top_p / min_p and no scaling (llama.cpp's "dist only" chain).
//
// min_keep is 1 for every filter. Ties are broken towards the lower token id (greedy and top_k).
// NaN logits count as -inf (never picked while any other token is possible).
// The draw follows llama.cpp's dist sampler: std::mt19937 seeded with the seed (seeds of 2^32 and
// more go through std::seed_seq), one double from two 32-bit outputs per sample (also when one
// candidate is left), a scan of the candidates in llama.cpp's order. Given the same logits, a
// seed below 2^32 picks what llama.cpp picks with that seed (up to float rounding at a boundary).
//
// The other samplers (typical_p, mirostat 1 / 2, XTC, top-n-sigma, dynamic temperature) take a
// general path that replays llama.cpp's operations on its candidate array (sample/replay.h): it
// runs only when one of them is on, so the chain above keeps its fast path. Their places:
//
//   llama-cpp-python's chain (server_chain false; Llama._init_sampler, with llama-server's
//   places for the samplers llama-cpp-python lacks):
//     temperature > 0, mirostat off: logit_bias -> penalties -> top_n_sigma -> top_k -> typical
//       -> top_p -> min_p -> xtc -> temperature (dynamic when dynatemp_range > 0) -> draw
//     temperature > 0, mirostat on: logit_bias -> penalties -> mirostat (no temperature, no
//       filters)
//     temperature <= 0: as above (greedy, or the unfiltered draw), whatever else is set.
//   llama-server's chain (server_chain true; common/sampling.cpp with its default order):
//     mirostat off: as llama-cpp-python's, but temperature <= 0 is no shortcut: the filters run
//       and the temperature step keeps the first highest logit left (or scales by the dynamic
//       temperature), then the draw (so typical_p or XTC may move a "greedy" pick)
//     mirostat on: logit_bias -> temperature -> mirostat (no penalties, no filters)
//
// DRY (sample/dry.h), when on, runs right after the penalties in both chains (llama-server's place;
// llama-cpp-python has no DRY), also before a greedy pick, and not at all with mirostat (as in
// llama-server). It only lowers logits, before any sort, so it needs no general path. Its history
// is the prompt (accept_prompt) then the accepted tokens.
//
// min_keep is 1 (llama-server's 0 gives the same candidates for these samplers). XTC draws from
// its own generator, seeded like the main one. Mirostat keeps mu (2 * tau after construction and
// reset()), updated by each sample(): a draw the caller throws away (a grammar's rejection)
// counts, as it does in llama.cpp.
// The settings are fixed at construction; the penalty history, mu and the random states are the
// Sampler's own and change through accept() / sample() / reset().
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "sample/dry.h"
#include "sample/replay.h"

namespace sl {

struct SamplerParams {
    float temperature = 0.8f;        // 0: greedy; < 0: unfiltered draw (see above)
    int32_t top_k = 40;              // <= 0 or >= n_vocab: the whole vocabulary
    float top_p = 0.95f;             // >= 1: off; keep the smallest prefix with mass >= top_p
    float min_p = 0.05f;             // <= 0: off; keep p >= min_p * p_max
    float repeat_penalty = 1.0f;     // > 0; divides positive logits, multiplies the others
    int32_t repeat_last_n = 64;      // penalty window over accepted tokens; 0: penalties off
    float frequency_penalty = 0.0f;  // logit -= count * frequency_penalty
    float presence_penalty = 0.0f;   // logit -= presence_penalty if count > 0
    std::vector<std::pair<int32_t, float>> logit_bias;  // (token, added to its logit)
    // The general path's samplers (see above); these values leave them off.
    float typical_p = 1.0f;          // >= 1: off
    int32_t mirostat = 0;            // 0: off; 1: mirostat (m = 100); 2: mirostat 2.0
    float mirostat_tau = 5.0f;       // target surprise
    float mirostat_eta = 0.1f;       // learning rate
    float xtc_probability = 0.0f;    // <= 0: off
    float xtc_threshold = 0.1f;      // > 0.5: off
    float top_n_sigma = -1.0f;       // <= 0: off
    float dynatemp_range = 0.0f;     // <= 0: off; temperature +- range, from the entropy
    float dynatemp_exponent = 1.0f;
    // DRY (sample/dry.h): after the penalties, in both chains (not with mirostat).
    float dry_multiplier = 0.0f;     // 0: off
    float dry_base = 1.75f;          // < 1: off
    int32_t dry_allowed_length = 2;  // repeats longer than this are penalised
    int32_t dry_penalty_last_n = 64; // window over accepted (and prompt) tokens; 0: off; -1: all
    DryBreakers dry_breakers;        // the sequence breakers as tokens (splitllm/dry.py)
    bool server_chain = false;       // llama-server's chain instead of llama-cpp-python's
};

class Sampler {
public:
    static constexpr size_t kBuckets = 256;  // top_p mass histogram (see sampler.cpp)

    // Throws std::invalid_argument for n_vocab <= 0, a logit_bias token outside [0, n_vocab),
    // a NaN or +inf bias, non-finite settings, repeat_penalty <= 0, repeat_last_n < 0 or a
    // mirostat other than 0, 1, 2.
    Sampler(const SamplerParams & params, int32_t n_vocab, uint64_t seed);

    // Clears the penalty history, reseeds the generators and sets mirostat's mu to 2 * tau.
    void reset(uint64_t seed);

    // Adds a token to the penalty history (the window keeps the last repeat_last_n) and DRY's.
    // Throws std::invalid_argument for a token outside [0, n_vocab).
    void accept(int32_t token);
    // The prompt's tokens, before the first sample(): DRY's history takes them (llama-server
    // accepts the prompt into its chain); the penalty window does not (llama-cpp-python's never
    // sees the prompt). A no-op when DRY is off.
    void accept_prompt(const int32_t * tokens, size_t n);

    // Picks the next token from logits (n_vocab floats, left untouched). Does not accept it.
    int32_t sample(const float * logits);
    // Same, after checking that n == n_vocab (std::invalid_argument otherwise).
    int32_t sample(const float * logits, size_t n);

    // Debug and tests: the final candidates and the probabilities the draw would use, in
    // descending probability order (ties: lower id first). Touches neither the history nor
    // the random state. Greedy gives the argmax with probability 1.
    void probs(const float * logits, size_t n, std::vector<int32_t> & ids, std::vector<float> & p);

    // Debug and tests: the logits after logit_bias, the penalties and DRY (NaN as -inf) into out
    // (n_vocab floats). Touches neither the histories nor the random state.
    void adjusted(const float * logits, size_t n, float * out);

    const SamplerParams & params() const { return params_; }
    // True when the general path (sample/replay.h) picks the tokens.
    bool general() const { return general_; }
    // True when DRY runs (its settings turn it on and mirostat is off).
    bool dry() const { return dry_on_; }
    // Mirostat's current mu (2 * tau while mirostat is off).
    float mirostat_mu() const { return mu_; }
    int32_t n_vocab() const { return n_vocab_; }

    // A candidate token (public for the helpers in sampler.cpp).
    struct Cand {
        float logit;
        int32_t id;
    };

private:
    void check_logits(size_t n) const;
    void apply_bias_and_penalties(const float * logits);  // and DRY, into scratch_
    void apply_penalties(float * x);
    void run_general(const float * logits, replay::Array & cur);  // the chain on cand_data_
    int32_t argmax() const;
    size_t candidates();                  // runs top_k / top_p / min_p (or none for temp < 0)
    size_t candidates_top_k();            // 0 < top_k < n_vocab
    size_t candidates_all();              // top_k off
    float top_p_threshold(float max_logit, double & z);
    size_t select_top_k(size_t k);        // cand_[0, k) = the k best, sorted
    size_t collect(float threshold);      // cand_ = every token with logit >= threshold
    size_t top_p_cut(size_t m, float max_logit, double z) const;
    double softmax(size_t m);             // prob_[i] = exp(logit_i / T - max / T); returns sum
    double uniform();                     // [0, 1), the same on every platform
    int32_t sample_general(const float * logits);
    void probs_general(const float * logits, std::vector<int32_t> & ids, std::vector<float> & p);

    SamplerParams params_;
    int32_t n_vocab_;
    std::mt19937 rng_;             // seeded like llama.cpp's dist sampler (seeds < 2^32)
    bool penalties_off_;           // neutral settings, or llama-server's mirostat chain
    bool general_;                 // a sampler of the general path is on
    Dry dry_;                      // DRY's settings and history
    bool dry_on_;                  // dry_.on() and mirostat off

    // The general path's state: XTC's generator and mirostat's mu.
    std::mt19937 xtc_rng_;
    float mu_ = 0.0f;

    // Penalty history: the last repeat_last_n accepted tokens (a ring once full; it grows up to
    // that size as tokens come) and the count of each token in it.
    std::vector<int32_t> ring_;    // (<= repeat_last_n)
    size_t ring_head_ = 0;         // oldest entry once the ring is full
    std::vector<int32_t> count_;   // (n_vocab)

    // Scratch, allocated once.
    std::vector<float> scratch_;   // (n_vocab) logits after bias and penalties
    std::vector<Cand> cand_;       // (n_vocab) surviving candidates
    std::vector<float> prob_;      // (n_vocab) unnormalised probabilities of cand_
    std::vector<double> mass_;     // (kBuckets) top_p histogram
    std::vector<replay::TokenData> cand_data_;  // (n_vocab when general_) llama.cpp's array
    replay::Scratch replay_;       // the general path's buffers
};

}  // namespace sl
