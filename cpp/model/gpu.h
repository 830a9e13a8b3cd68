// The GPU side of placement: what device there is, how much memory it has, and the factory for
// its backend. With SPLITLLM_FAKE_GPU=1 in the environment (tests), the "GPU" is FAKEGPU0: a
// second CPU backend with its own memory that refuses pointers it did not allocate, so that the
// split logic (uploads, transfers at boundaries, KV placement, op offload) is exercised without
// a GPU. SPLITLLM_FAKE_GPU_MEM=<MiB> sets its free memory (default 65536).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "model/backend.h"

namespace sl {

struct GpuInfo {
    bool available = false;
    std::string name;         // backend name: "CUDA0", "FAKEGPU0"
    std::string description;  // "NVIDIA H100 80GB HBM3 (compute 9.0)"
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    std::string reason;       // why no GPU is available
};

struct GpuBackendOptions {
    int n_threads = 1;          // FAKEGPU0 only: its thread pool
    int n_batch = 512;          // most tokens in one forward pass
    int max_k = 0;              // widest matmul input
    int max_rows = 0;           // most rows of one matrix
    int n_ff = 0;               // feed-forward width (SwiGLU scratch)
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int max_slot_ctx = 0;
    bool rope_swa = false;      // rotary tables for sliding-window layers too
    // Kernel choice (tests force each path): mat-vec kernels up to this many tokens, GEMM above;
    // decode attention up to attn_vec_tokens tokens, prefill attention above.
    int vec_tokens = 8;
    int attn_vec_tokens = 8;
    bool graphs = true;         // CUDA graphs for single-token batches (SPLITLLM_CUDA_GRAPHS=0 disables)
};

// The device a GPU backend would run on (fake or CUDA), or why there is none.
GpuInfo gpu_info();

// Device memory the backend allocates for itself (scratch, tables), beyond what is asked of it.
size_t gpu_backend_overhead(const GpuBackendOptions & opt);

// A backend on the device of gpu_info(); throws CudaError if there is none.
std::unique_ptr<Backend> make_gpu_backend(const GpuBackendOptions & opt);

// ---- implemented in cpp/cuda (stubs in gpu_stub.cpp without SL_CUDA) ----
bool cuda_built();
GpuInfo cuda_device_info();
size_t cuda_backend_overhead(const GpuBackendOptions & opt);
std::unique_ptr<Backend> make_cuda_backend(const GpuBackendOptions & opt);

// ---- the test device (gpu_fake.cpp) ----
bool fake_gpu_enabled();
GpuInfo fake_gpu_info();
std::unique_ptr<Backend> make_fake_gpu_backend(const GpuBackendOptions & opt);

}  // namespace sl
