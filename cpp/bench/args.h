// Command line of splitllm-bench, modelled on llama-bench: every option takes a comma-separated
// list (or may be repeated), and every combination of the listed values is one test.
#pragma once

#include <string>
#include <vector>

namespace sl::bench {

struct Args {
    std::vector<std::string> models;
    std::vector<int> n_prompt = {512};
    std::vector<int> n_gen = {128};
    std::vector<int> depth = {0};
    std::vector<int> threads;           // default: all hardware threads
    std::vector<int> n_gpu_layers = {0};
    std::vector<int> n_batch = {512};
    std::vector<std::string> type_k = {"f16"};
    std::vector<std::string> type_v = {"f16"};
    std::vector<int> embeddings = {0};  // 1: the final hidden states instead of logits (llama-bench's -embd)
    int reps = 5;
    std::string output = "md";          // md, json, csv
    bool progress = false;
    unsigned seed = 1234;
};

// Thrown for a bad command line; main() prints it with the usage and exits with 2.
struct UsageError {
    std::string message;
};

Args parse_args(int argc, char ** argv);
void print_usage(const char * prog);

}  // namespace sl::bench
