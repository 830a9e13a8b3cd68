#include "cuda/act.h"
#include "cuda/blocks.h"
#include "cuda/common.cuh"

namespace sl::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

// One warp per block of 32 values: lane i quantizes value i.
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp) quantize_q8_kernel(const float * __restrict__ x, int K,
                                                                             int n_blocks, size_t row_bytes,
                                                                             uint8_t * __restrict__ out) {
    const int blk = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
    if (blk >= n_blocks) return;
    const int lane = threadIdx.x % kWarp;
    const int per_row = K / 32;
    const int t = blk / per_row, b = blk % per_row;
    const float v = x[size_t(t) * K + size_t(b) * 32 + lane];
    const float amax = warp_max(fabsf(v));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __frcp_rn(d) : 0.0f;
    const int q = __float2int_rn(__fmul_rn(v, id));
    int s = q;  // sums of lanes 0..15 and 16..31
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    uint8_t * row = out + size_t(t) * row_bytes;
    reinterpret_cast<int8_t *>(row)[size_t(b) * 32 + lane] = int8_t(q);
    float * dd = reinterpret_cast<float *>(row + K);
    if (lane == 0) dd[b] = d;
    if (lane % 16 == 0) dd[per_row + 2 * b + lane / 16] = d * float(s);
}

__global__ void convert_f16_kernel(const float * __restrict__ x, int K, int ld, int n, __half * __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int t = i / ld, k = i % ld;
    const float v = k < K ? fminf(fmaxf(x[size_t(t) * K + k], -65504.0f), 65504.0f) : 0.0f;
    out[i] = __float2half_rn(v);
}

}  // namespace

size_t act_q8_row_bytes(int64_t K) { return ActQ8::row_bytes(K); }

void quantize_act_q8(const float * x, int64_t K, int n_tok, uint8_t * out, cudaStream_t stream) {
    SL_CHECK(K > 0 && K % 32 == 0 && K < (int64_t(1) << 30), "cuda quantize_act_q8: K = %lld", (long long)K);
    const int64_t n_blocks = int64_t(n_tok) * (K / 32);
    if (n_blocks <= 0) return;
    SL_CHECK(n_blocks < (int64_t(1) << 31), "cuda quantize_act_q8: too many blocks");
    quantize_q8_kernel<<<unsigned(ceil_div(int(n_blocks), kWarpsPerBlock)), kWarpsPerBlock * kWarp, 0, stream>>>(
        x, int(K), int(n_blocks), ActQ8::row_bytes(K), out);
    SL_CUDA_LAUNCHED("quantize_act_q8");
}

int64_t act_f16_ld(int64_t K) { return (K + 31) / 32 * 32; }

void convert_act_f16(const float * x, int64_t K, int n_tok, void * out, cudaStream_t stream) {
    const int64_t ld = act_f16_ld(K);
    const int64_t n = ld * n_tok;
    SL_CHECK(K > 0 && n < (int64_t(1) << 31), "cuda convert_act_f16: K = %lld, n_tok = %d", (long long)K, n_tok);
    if (n == 0) return;
    convert_f16_kernel<<<unsigned(ceil_div(int(n), 256)), 256, 0, stream>>>(x, int(K), int(ld), int(n),
                                                                            static_cast<__half *>(out));
    SL_CUDA_LAUNCHED("convert_act_f16");
}

}  // namespace sl::cuda
