// Internal to cpp/cpu: the activation row layout shared by every instruction set, and the
// per-ISA kernel tables that matmul.cpp dispatches through.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/matmul.h"
#include "quant/qtype.h"

// Helpers shared by files built for different instruction sets are forced inline: an
// out-of-line copy built with AVX-512 flags could otherwise be the one the linker keeps for
// every caller (and the SIMD files instantiate no standard-library templates, for the same
// reason: they get their buffers from scratch()).
#define SL_FORCE_INLINE inline __attribute__((always_inline))

namespace sl::cpu::impl {

SL_FORCE_INLINE size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

// Unit of 64-byte aligned buffers (std::vector<Line64>), outside the SIMD files.
struct alignas(64) Line64 {
    uint8_t b[64];
};

// A 64-byte aligned per-thread buffer of at least `bytes` (slot 0: repacked weights, 1:
// attention tiles, 2: repacked activations); it keeps its largest size. Built in a baseline file.
uint8_t * scratch(int slot, size_t bytes);

// Quantized activations, one row per token, used with every block-quantized weight type
// (legacy and k-quants alike, so one conversion serves all the matmuls that read an input).
// K is padded with zeros to Kp = a multiple of 128 (4 blocks of 32):
//   int8  qs[Kp]       codes; x[i] ~= d[i / 32] * code. The codes of each 4 blocks (128 values)
//                      are stored as the 4 blocks' values 0..15, then the 4 blocks' values
//                      16..31: the order in which a 16-byte load of 4-bit weights unpacks, so
//                      that 4 legacy blocks are dotted with two 64-byte vpdpbusd.
//   float d[Kp / 32]   block scale = max|x| / 127 over the 32 values
//   float s[Kp / 32]   d * (sum of the block's codes)          (offsets and mins, 32-groups)
//   float s16[Kp / 16] d * (sum of each 16 codes of the block)  (offsets and mins, 16-groups)
// The row is padded to 64 bytes.
struct ActQ8 {
    static SL_FORCE_INLINE int64_t padded(int64_t K) { return (K + 127) / 128 * 128; }
    static SL_FORCE_INLINE size_t row_bytes(int64_t K) { return round_up(size_t(padded(K)) * 3 / 2, 64); }
    // Byte of value i (0..31) of block b within qs.
    static SL_FORCE_INLINE int64_t pos(int64_t b, int i) {
        return 128 * (b >> 2) + 64 * (i >> 4) + 16 * (b & 3) + (i & 15);
    }
    static SL_FORCE_INLINE const int8_t * qs(const uint8_t * row) { return reinterpret_cast<const int8_t *>(row); }
    static SL_FORCE_INLINE const float * d(const uint8_t * row, int64_t K) {
        return reinterpret_cast<const float *>(row + padded(K));
    }
    static SL_FORCE_INLINE const float * s(const uint8_t * row, int64_t K) { return d(row, K) + padded(K) / 32; }
    static SL_FORCE_INLINE const float * s16(const uint8_t * row, int64_t K) { return d(row, K) + padded(K) / 16; }
};

// Float activations (F32, F16 and BF16 weights): the float row, padded to 64 bytes.
SL_FORCE_INLINE size_t act_f32_row_bytes(int64_t K) { return round_up(size_t(K) * 4, 64); }

// Rows [0, n_rows) of W (row stride ldw bytes) times n_tok activation rows (stride lda bytes):
// y[t * ldy + r] = dot(W[r], acts[t]).
typedef void (*GemmFn)(const uint8_t * W, size_t ldw, int64_t K, int64_t n_rows, const uint8_t * acts,
                       size_t lda, int64_t n_tok, float * y, int64_t ldy);
// One row of K floats (K a multiple of 32) to the ActQ8 layout, padding included.
typedef void (*QuantizeFn)(const float * x, int64_t K, uint8_t * row);
typedef void (*ScoresFn)(const float * q, int64_t ldq, int64_t n_q, const uint8_t * Kc, size_t ldk,
                         int64_t n_kv, int64_t head_dim, float scale, float * scores, int64_t lds);
typedef void (*ValuesFn)(const float * w, int64_t ldw, int64_t n_q, const uint8_t * Vc, size_t ldv,
                         int64_t n_kv, int64_t head_dim, float * out, int64_t ldo);
// One row of head_dim floats to a cache row.
typedef void (*StoreFn)(const float * src, int64_t head_dim, uint8_t * dst);

// KV-cache types, in table order.
enum KvType : int { KV_F16 = 0, KV_Q8_0 = 1, KV_Q4_0 = 2, KV_COUNT = 3 };

struct KernelTable {
    GemmFn gemm[int(QType::COUNT)] = {};
    QuantizeFn quantize_q8 = nullptr;
    ScoresFn scores[KV_COUNT] = {};
    ValuesFn values[KV_COUNT] = {};
    StoreFn store[KV_COUNT] = {};
};

// Each fills in what its instruction set implements, over a table already holding the
// narrower set's kernels (scalar, then AVX2, then AVX-512, then AMX).
void fill_scalar(KernelTable & t);
void fill_avx2(KernelTable & t);
void fill_avx512(KernelTable & t);
void fill_amx(KernelTable & t);
void fill_scalar_attention(KernelTable & t);

// ---- scalar helpers shared by the reference kernels ----

// One quantized weight row as codes and affine terms per 16 values:
// value[i] = dg[i / 16] * codes[i] + mg[i / 16].
typedef void (*UnpackFn)(const uint8_t * row, int64_t K, uint8_t * codes, float * dg, float * mg);
UnpackFn scalar_unpack(QType wt);


}  // namespace sl::cpu::impl
