// CPU matrix kernels: weights stay in their GGUF block format; activations are converted once
// per matmul into the format the weight type is dotted with (ggml's "vec_dot_type"), so that
// the inner loops are integer dot products. One implementation per instruction set
// (cpu/arch/x86/*_avx2.cpp, *_avx512.cpp) plus the scalar one, chosen at start-up from CPUID.
//
// Layout conventions (all row-major):
//   W    (n_rows, K)   weight rows of row_size(wt, K) bytes each
//   x    (n_tok, K)    float activations, row stride ldx floats
//   acts (n_tok, K)    converted activations, row stride act_row_bytes(wt, K) bytes
//   y    (n_tok, ldy)  output; y[t * ldy + r] = dot(W[r], x[t])
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/qtype.h"

namespace sl::cpu {

// AMX: the AVX-512 kernels, with AMX-INT8 tiles for the quantized types' prefill (many tokens).
enum class Isa : int { Scalar = 0, AVX2 = 1, AVX512 = 2, AMX = 3 };

// The best instruction set this CPU supports (CPUID + OS support for the wider registers).
Isa detect_isa();
// The instruction set the kernels below use; defaults to detect_isa(). Tests force Scalar.
Isa active_isa();
// Selects an instruction set (clamped to what the CPU supports); returns the one in effect.
Isa set_isa(Isa isa);
const char * isa_name(Isa isa);
// Human-readable feature list for logs and benchmarks ("AVX2 FMA F16C AVX512F AVX512_VNNI ...").
const char * cpu_features();
// Whether the CPU (and OS) run AVX512_BF16: BF16 weights then take bf16 activations in prefill.
bool has_avx512_bf16();
// "scalar" / "avx2" / "avx512" / "amx" (any case) to an Isa; false if unknown.
bool isa_from_name(const char * name, Isa * out);
// isa clamped to what this CPU supports (what set_isa would select, without selecting it).
Isa usable_isa(Isa isa);
// The environment variable SPLITLLM_CPU_ISA (scalar|avx2|avx512|amx) caps the default choice
// (avx512 turns AMX off).

// True if the CPU kernels compute with weights of this type.
bool supports_weight_type(QType wt);

// Format the activations are converted to for weights of type wt, and the bytes of one row.
QType act_type(QType wt);
size_t act_row_bytes(QType wt, int64_t K);

// Converts rows [t0, t1) of x into acts (row t goes to acts + t * act_row_bytes(wt, K)).
void quantize_acts(QType wt, const float * x, int64_t ldx, int64_t K, int64_t t0, int64_t t1, void * acts);

// y[t * ldy + r] = dot(W[r], acts[t]) for r in [r0, r1), t in [0, n_tok).
// K is a multiple of the weight type's block size.
void gemm(QType wt, const void * W, int64_t K, int64_t r0, int64_t r1, const void * acts, int64_t n_tok,
          float * y, int64_t ldy);

// ---- attention over a KV cache (cache types F16, Q8_0, Q4_0; rows of head_dim values) ----

// scores[i * lds + j] = scale * dot(q[i], Kc[j]) for i in [0, n_q), j in [0, n_kv).
// q rows have stride ldq floats; Kc rows stride ldk bytes.
void attn_scores(QType kt, const float * q, int64_t ldq, int64_t n_q, const void * Kc, size_t ldk,
                 int64_t n_kv, int64_t head_dim, float scale, float * scores, int64_t lds);

// out[i] += sum_j w[i * ldw + j] * Vc[j] for i in [0, n_q); out rows stride ldo floats.
void attn_values(QType vt, const float * w, int64_t ldw, int64_t n_q, const void * Vc, size_t ldv,
                 int64_t n_kv, int64_t head_dim, float * out, int64_t ldo);

// Stores n rows of head_dim floats into cache rows of type kt (F16, Q8_0 or Q4_0).
void store_kv(QType kt, const float * src, int64_t lds, int64_t n, int64_t head_dim, void * dst, size_t ldd);

// ---- notes on the formats (splitllm additions) ----
// Activations: F32, F16 and BF16 weights take float rows (act_type F32). Every block-quantized
// weight type (legacy and k-quants) takes the same splitllm-internal Q8 rows (act_type Q8_0):
// per 32 values int8 codes and a float scale, plus block sums; the byte layout is not ggml's
// block_q8_0, so size buffers with act_row_bytes() only. Weight types with equal act_type()
// can share one conversion of the same input (e.g. attn_q/k/v, ffn_gate/up).
// Rows of act_row_bytes() are multiples of 64 bytes; 64-byte aligned buffers are fastest.
// Kernels are deterministic: the same inputs give the same bits whatever the row split.
// Speed: rows are processed in groups of 16, so split rows between threads at multiples of 16.
// With AVX-512, from 10 tokens on, quantized gemm repacks 16 rows at a time into an interleaved layout (in a
// per-thread scratch buffer) and reuses it for all tokens; below that it reads the blocks as
// stored. A call does not allocate after its thread's first call with the largest K.
// With AMX, from 16 tokens on (64 for types with 16-value groups: Q6_K, Q3_K, Q2_K, ...) AMX-INT8
// tiles compute the same int32 sums: results equal AVX-512's bit for bit.
// Errors (unsupported type, K not a multiple of the block size) throw sl::Error.
// head_dim for the attention functions: a multiple of 32 for quantized caches, at most 1024.

// ---- the same functions with an explicit instruction set (tests, benchmarks) ----
// isa is clamped to what the CPU supports. quantize_acts and store_kv produce the same bytes
// for every isa; gemm and attention agree to float rounding.
void quantize_acts(Isa isa, QType wt, const float * x, int64_t ldx, int64_t K, int64_t t0, int64_t t1,
                   void * acts);
void gemm(Isa isa, QType wt, const void * W, int64_t K, int64_t r0, int64_t r1, const void * acts,
          int64_t n_tok, float * y, int64_t ldy);
void attn_scores(Isa isa, QType kt, const float * q, int64_t ldq, int64_t n_q, const void * Kc, size_t ldk,
                 int64_t n_kv, int64_t head_dim, float scale, float * scores, int64_t lds);
void attn_values(Isa isa, QType vt, const float * w, int64_t ldw, int64_t n_q, const void * Vc, size_t ldv,
                 int64_t n_kv, int64_t head_dim, float * out, int64_t ldo);
void store_kv(Isa isa, QType kt, const float * src, int64_t lds, int64_t n, int64_t head_dim, void * dst,
              size_t ldd);

}  // namespace sl::cpu
