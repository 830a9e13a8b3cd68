// Importance-matrix statistics (llama.cpp's llama-imatrix): for every weight matrix the forward
// pass multiplies, the sum over the tokens of the squared activation entering each input column,
// and the number of tokens summed per matrix (per expert for stacked MoE experts). Off unless a
// Model's imatrix_start() is called; the forward pass then hands each matmul input to observe().
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace sl {

class ThreadPool;

struct ImatrixEntry {
    std::string name;           // the weight's GGUF tensor name
    int64_t n_per_row = 0;      // input columns (the matrix's K)
    int n_mat = 1;              // stacked matrices (experts), 1 for a dense weight
    // Sums in double: llama-imatrix adds each token's squares into floats, which over many chunks
    // loses digits; the file stores float32 either way.
    std::vector<double> sums;      // (n_mat, n_per_row)
    std::vector<int64_t> counts;   // (n_mat) tokens summed
};

class ImatrixCollector {
public:
    explicit ImatrixCollector(bool process_output) : process_output_(process_output) {}

    bool process_output() const { return process_output_; }
    // The entry for a weight, made on first use (-1 for an empty name: nothing to collect).
    int entry(const std::string & name, int64_t n_per_row, int n_mat);
    // Adds the squares of n_rows rows of x (n_rows, n_per_row) in host memory to matrix mat of
    // entry e, and n_rows to its count.
    void accumulate(int e, int mat, const float * x, int64_t n_rows, ThreadPool & pool);
    const std::vector<ImatrixEntry> & entries() const { return entries_; }
    // Host staging for inputs that live on another device.
    float * staging(size_t n_floats);

private:
    bool process_output_;
    std::vector<ImatrixEntry> entries_;
    std::unordered_map<std::string, int> index_;
    std::vector<float> staging_;
};

}  // namespace sl
