// DRY ("Don't Repeat Yourself"): llama.cpp's llama_sampler_dry (src/llama-sampler.cpp, as vendored
// by llama-cpp-python 0.3.36; Koboldcpp's sampler by pi6am), rewritten here.
//
// It lowers the logit of every token that would extend a sequence already seen in the history
// (the last penalty_last_n accepted tokens):
//
//   len(t) = the longest suffix of the history that also appears earlier, followed there by t
//            (capped where the last sequence breaker starts, see below)
//   logit(t) -= multiplier * base ^ (len(t) - allowed_length)     when len(t) >= allowed_length
//
// The exponent is capped so that the power stays finite in float (88.7228391 / log(base)), and
// single-token sequence breakers are never penalised. Off (a no-op that keeps no history) when
// multiplier == 0, base < 1 or penalty_last_n == 0.
//
// Sequence breakers: strings such as "\n" or ":" that end a repeat. The caller turns them into
// tokens (as llama.cpp's get_overlapping_token_sequences does, see splitllm/dry.py): each token
// whose text contains a breaker is a head with an empty tail (a single-token breaker); a token
// whose text ends with the start of a breaker is a head whose tail is the tokenization of the
// rest. The most recent breaker in the history (the longest matching tail where several start
// with the same head) caps the repeat length at the number of tokens after it.
//
// The arithmetic is llama.cpp's: a float multiplier times the double power, rounded to float,
// subtracted from the float logit. Repeat lengths are those of llama.cpp's reversed Z-algorithm
// (a plain Z-function here: the lengths are the same numbers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sl {

// (head token, tail tokens): one way a sequence breaker starts in the vocabulary.
using DryBreakers = std::vector<std::pair<int32_t, std::vector<int32_t>>>;

class Dry {
public:
    // penalty_last_n: the window (-1: every accepted token, llama-server's "context size").
    // Throws std::invalid_argument for non-finite settings, allowed_length < 0,
    // penalty_last_n < -1 or a breaker token outside [0, n_vocab).
    Dry(float multiplier, float base, int32_t allowed_length, int32_t penalty_last_n,
        const DryBreakers & breakers, int32_t n_vocab);

    bool on() const { return on_; }
    void accept(int32_t token);  // (token checked by the caller)
    void reset() { hist_.clear(); }
    // Subtracts the penalties from logits (n_vocab floats).
    void apply(float * logits);

private:
    size_t window() const;                // tokens of the history in play
    int32_t breaker_limit(size_t n) const;  // repeat cap from the most recent breaker
    void repeat_lengths(size_t n, int32_t limit);  // z_[k] for the reversed window rev_

    float multiplier_;
    float base_;
    int32_t allowed_;
    size_t last_n_;                       // SIZE_MAX for -1
    bool on_;
    int max_exponent_ = 0;                // 0: no cap (base too close to 1)

    std::unordered_map<int32_t, std::vector<std::vector<int32_t>>> tails_;  // head -> its tails
    std::vector<uint8_t> single_;         // (n_vocab) 1: a single-token breaker

    std::vector<int32_t> hist_;           // accepted tokens, oldest first (trimmed lazily)
    std::vector<int32_t> rev_;            // (window) the window, newest first
    std::vector<int32_t> z_;              // (window) repeat length at each position of rev_
    std::vector<int32_t> max_len_;        // (n_vocab) longest repeat each token extends, -1: none
    std::vector<int32_t> touched_;        // tokens whose max_len_ is set
};

}  // namespace sl
