// Attention over the KV cache on the GPU, with the CPU backend's semantics: the cache of a layer
// is head-major, (n_slots, n_head_kv, slot_ctx, head_dim) rows of type_k / type_v (F16, Q8_0 or
// Q4_0; ggml's block layouts); token t's keys and values go to cell pos[t] of slot slot[t], and
// its query attends causally to cells [0, pos[t]] of that slot (the last `window` of them for a
// sliding-window layer).
//
//   store_kv:          writes the batch's k, v (n_tok, n_head_kv * head_dim) into the cache
//                      (Q8_0 / Q4_0 rows quantized as the CPU reference quantizes them);
//   attention_decode:  one block per (token, query head), warps split the keys; for few tokens;
//   attention_prefill: one block per (chunk of tokens of one sequence, KV head, query-head
//                      group): K/V tiles dequantized once into shared memory serve every query
//                      row of the chunk (GQA heads share them); online softmax in both.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "quant/qtype.h"

namespace sl::cuda {

struct KvShape {
    QType type_k = QType::F16, type_v = QType::F16;
    int n_slots = 1, slot_ctx = 0;
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    size_t k_row = 0, v_row = 0;  // bytes of one cache row
    bool ring = false;            // position p at cell p % slot_ctx (KVLayout::ring)
};

// Device arrays describing the batch. chunk_start (n_chunks + 1) is only read by the prefill
// kernel: runs of consecutive tokens of one slot with increasing positions, each at most
// attention_chunk_tokens() long.
struct AttnBatch {
    const int32_t * pos = nullptr;
    const int32_t * slot = nullptr;
    int n_tok = 0;
    const int32_t * chunk_start = nullptr;
    int n_chunks = 0;
};

// How scores are formed: scale * q . k, then softcap * tanh(score / softcap) if softcap > 0;
// with window > 0 a query at position p sees cells (p - window, p] only. sinks (device, one per
// query head; gpt-oss): a logit that joins each row's softmax without a value.
struct AttnScore {
    float scale = 1.0f;
    float softcap = 0.0f;
    int window = 0;
    const float * sinks = nullptr;
};

// Throws unless the cache types and head size are supported (head_dim <= 256; a multiple of 32
// for quantized caches; n_head a multiple of n_head_kv).
void attention_check(const KvShape & s);
int attention_chunk_tokens(const KvShape & s);

void store_kv(const KvShape & s, const AttnBatch & b, const float * k, const float * v, void * k_cache,
              void * v_cache, cudaStream_t stream);
void attention_decode(const KvShape & s, const AttnBatch & b, const float * q, const void * k_cache,
                      const void * v_cache, float * out, const AttnScore & sc, cudaStream_t stream);
void attention_prefill(const KvShape & s, const AttnBatch & b, const float * q, const void * k_cache,
                       const void * v_cache, float * out, const AttnScore & sc, cudaStream_t stream);

}  // namespace sl::cuda
