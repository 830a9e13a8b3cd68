// Result rows of splitllm-bench and their output as a Markdown table, JSON or CSV.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sl::bench {

struct Row {
    std::string model, model_path, backend, test, type_k, type_v;
    uint64_t size = 0, params = 0;
    int threads = 0, n_gpu_layers = 0, n_batch = 0, n_prompt = 0, n_gen = 0, depth = 0;
    int embeddings = 0;  // 1: hidden states timed instead of logits
    std::vector<double> samples_ts;  // tokens/s of each timed repetition

    double mean() const;
    double stdev() const;  // sample standard deviation
};

class Report {
public:
    // show_embd: an "embd" column in the Markdown table (as llama-bench shows a non-default -embd)
    Report(std::string format, std::string cpu_features, std::string commit, bool show_embd);
    void add(const Row & r);  // md rows print as they come
    void finish();            // json/csv print here

private:
    std::string format_, cpu_, commit_;
    std::vector<Row> rows_;
    bool header_done_ = false;
    bool show_embd_ = false;
};

}  // namespace sl::bench
