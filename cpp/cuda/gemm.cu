// Prefill matmul on tensor cores: each block computes a 64 (weight rows) x 64 (tokens) tile of
// y^T. Per 32-wide step of K, the block dequantizes its 64 x 32 weight tile to half in shared
// memory (blocks.h readers, one 16-value group per thread), loads the 64 x 32 half activation
// tile, and its four warps each run 2 x 2 wmma 16x16x16 products (f32 accumulation) on a
// 32 x 32 quarter. Rows and tokens past the ends are zero-filled and never stored.
#include <mma.h>

#include "cuda/act.h"
#include "cuda/blocks.h"
#include "cuda/common.cuh"
#include "cuda/matmul.h"

namespace sl::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int BM = 64, BN = 64, BK = 32;
constexpr int LDS = BK + 8;    // halves per shared tile row (padding against bank conflicts)
constexpr int LDC = BM + 4;    // floats per shared output column
constexpr int kThreads = 128;  // 4 warps in a 2 x 2 arrangement

struct Tiles {
    __half w[BM][LDS];  // weight rows x k
    __half x[BN][LDS];  // tokens x k
};

union __align__(32) Smem {
    Tiles t;
    float c[BN][LDC];   // tokens x rows, after the K loop
};

// 16 halves to shared memory (32-byte aligned destination).
__device__ __forceinline__ void store16(__half * dst, const float v[16]) {
    __align__(16) __half2 h[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    reinterpret_cast<uint4 *>(dst)[0] = reinterpret_cast<const uint4 *>(h)[0];
    reinterpret_cast<uint4 *>(dst)[1] = reinterpret_cast<const uint4 *>(h)[1];
}

// Values [k, k + 16) of a weight row as floats (zero past K for the float types).
template <QType T>
__device__ __forceinline__ void weight16(const uint8_t * row, int k, int K, float v[16]) {
    if constexpr (is_float_type(T)) {
#pragma unroll
        for (int i = 0; i < 16; ++i) v[i] = k + i < K ? float_value<T>(row, k + i) : 0.0f;
    } else {
        const Group16 g = Blk<T>::group(row, k / 16);
#pragma unroll
        for (int i = 0; i < 16; ++i) v[i] = group_value(g, i);
    }
}

__device__ __forceinline__ float sat_half(float v) { return fminf(fmaxf(v, -65504.0f), 65504.0f); }

template <QType T>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(const uint8_t * __restrict__ W, size_t ldw, int K, int rows, const __half * __restrict__ X, int ldx,
                int n_tok, float * __restrict__ y, int64_t ldy, const float * __restrict__ bias, bool accumulate) {
    __shared__ Smem sm;
    const int tid = threadIdx.x, warp = tid / kWarp;
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    const int r0 = blockIdx.x * BM, t0 = blockIdx.y * BN;
    // Each thread fills 16 values of one weight row and 16 of one token row per step.
    const int lr = tid >> 1, lk = (tid & 1) * 16;
    const bool row_ok = r0 + lr < rows, tok_ok = t0 + lr < n_tok;
    const uint8_t * wrow = W + size_t(row_ok ? r0 + lr : 0) * ldw;
    const __half * xrow = X + size_t(tok_ok ? t0 + lr : 0) * ldx;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int k0 = 0; k0 < K; k0 += BK) {
        float v[16];
        if (row_ok) {
            weight16<T>(wrow, k0 + lk, K, v);
#pragma unroll
            for (int i = 0; i < 16; ++i) v[i] = sat_half(v[i]);
        } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) v[i] = 0.0f;
        }
        store16(&sm.t.w[lr][lk], v);
        uint4 * xd = reinterpret_cast<uint4 *>(&sm.t.x[lr][lk]);
        if (tok_ok) {
            const uint4 * xs = reinterpret_cast<const uint4 *>(xrow + k0 + lk);
            xd[0] = xs[0];
            xd[1] = xs[1];
        } else {
            xd[0] = xd[1] = make_uint4(0, 0, 0, 0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &sm.t.w[wm + 16 * i][kk], LDS);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &sm.t.x[wn + 16 * j][kk], LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    // Element (row m, token n) of a fragment goes to c[n][m].
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(&sm.c[wn + 16 * j][wm + 16 * i], acc[i][j], LDC, wmma::mem_col_major);
    __syncthreads();
    for (int e = tid; e < BM * BN; e += kThreads) {
        const int n = e / BM, m = e % BM;
        const int r = r0 + m, t = t0 + n;
        if (r < rows && t < n_tok) {
            float * dst = y + t * ldy + r;
            const float out = sm.c[n][m] + (bias ? bias[r] : 0.0f);
            *dst = accumulate ? *dst + out : out;
        }
    }
}

}  // namespace

void gemm(const MatArgs & a, const void * x_f16, cudaStream_t stream) {
    const QTypeTraits * tr = qtype_traits(a.type);
    SL_CHECK(tr && matmul_supports(a.type), "cuda gemm: unsupported weight type %u", unsigned(a.type));
    SL_CHECK(a.K > 0 && a.K % tr->blck_size == 0 && a.K < (int64_t(1) << 30) && a.rows > 0 &&
                 a.rows < (int64_t(1) << 31),
             "cuda gemm: bad shape (%lld, %lld) for %s", (long long)a.rows, (long long)a.K, tr->name);
    SL_CHECK(reinterpret_cast<uintptr_t>(a.W) % 16 == 0 && reinterpret_cast<uintptr_t>(x_f16) % 16 == 0,
             "cuda gemm: weights and activations must be 16-byte aligned");
    if (a.n_tok <= 0) return;
    const dim3 grid(unsigned((a.rows + BM - 1) / BM), unsigned((a.n_tok + BN - 1) / BN));
    SL_CHECK(grid.y <= 65535, "cuda gemm: %d tokens is too many for one call", a.n_tok);
    const int ldx = int(act_f16_ld(a.K));
    visit_weight_type(a.type, [&](auto tag) {
        constexpr QType T = decltype(tag)::value;
        gemm_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const uint8_t *>(a.W), row_size(T, a.K), int(a.K),
                                                      int(a.rows), static_cast<const __half *>(x_f16), ldx, a.n_tok,
                                                      a.y, a.ldy, a.bias, a.accumulate);
        SL_CUDA_LAUNCHED("gemm");
    });
}

}  // namespace sl::cuda
