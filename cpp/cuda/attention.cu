#include "cuda/attention.h"
#include "cuda/blocks.h"
#include "cuda/common.cuh"

namespace sl::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int kMaxRows = 32;  // query rows of one prefill block
constexpr int kTile = 32;     // keys per prefill tile (one per lane for the scores)
constexpr int kMaxHeadDim = 256;

// ---- cache rows ----

// Value d of a cache row.
template <QType T>
__device__ __forceinline__ float kv_value(const uint8_t * row, int d) {
    if constexpr (T == QType::F16) {
        return h2f(row + 2 * d);
    } else if constexpr (T == QType::Q8_0) {
        const uint8_t * b = row + (d / 32) * sizeof(block_q8_0);
        return h2f(b) * float(int8_t(b[2 + d % 32]));
    } else {
        const uint8_t * b = row + (d / 32) * sizeof(block_q4_0);
        const int j = d % 32;
        const int nib = j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4;
        return h2f(b) * float(nib - 8);
    }
}

// A runtime-typed value (a warp-uniform branch), where the type is not a template parameter.
__device__ __forceinline__ float kv_value(QType t, const uint8_t * row, int d) {
    if (t == QType::F16) return kv_value<QType::F16>(row, d);
    if (t == QType::Q8_0) return kv_value<QType::Q8_0>(row, d);
    return kv_value<QType::Q4_0>(row, d);
}

// dot(q, row) for a query q of hd floats (shared memory); per-block sums as the CPU does.
template <QType T>
__device__ __forceinline__ float kv_dot(const uint8_t * row, const float * q, int hd) {
    float acc = 0.0f;
    if constexpr (T == QType::F16) {
        if (hd % 2 == 0) {
            const __half2 * h = reinterpret_cast<const __half2 *>(row);
            for (int d = 0; d < hd; d += 2) {
                const float2 f = __half22float2(h[d / 2]);
                acc += q[d] * f.x + q[d + 1] * f.y;
            }
        } else {
            for (int d = 0; d < hd; ++d) acc += q[d] * h2f(row + 2 * d);
        }
    } else if constexpr (T == QType::Q8_0) {
        for (int b = 0; b < hd / 32; ++b) {
            const uint8_t * blk = row + b * sizeof(block_q8_0);
            const float * qb = q + 32 * b;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 32; i += 4) {
                const uint32_t v = ld4_a2(blk + 2 + i);
                s += qb[i] * float(int8_t(v)) + qb[i + 1] * float(int8_t(v >> 8)) + qb[i + 2] * float(int8_t(v >> 16)) +
                     qb[i + 3] * float(int8_t(v >> 24));
            }
            acc += h2f(blk) * s;
        }
    } else {
        for (int b = 0; b < hd / 32; ++b) {
            const uint8_t * blk = row + b * sizeof(block_q4_0);
            const float * qb = q + 32 * b;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i += 4) {
                const uint32_t v = ld4_a2(blk + 2 + i);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int byte = int((v >> (8 * k)) & 0xFF);
                    s += qb[i + k] * float((byte & 15) - 8) + qb[i + k + 16] * float((byte >> 4) - 8);
                }
            }
            acc += h2f(blk) * s;
        }
    }
    return acc;
}

// Cell of position p (a ring: p % slot_ctx).
__device__ __forceinline__ size_t kv_cell(const KvShape & s, int p) { return size_t(s.ring ? p % s.slot_ctx : p); }

// ---- storing the batch's keys and values ----

// One warp per (token, KV head): the row of head_dim floats to a cache row of type T.
template <QType T>
__global__ void store_kernel(KvShape s, const int32_t * __restrict__ pos, const int32_t * __restrict__ slot,
                             const float * __restrict__ src, uint8_t * __restrict__ cache, size_t row_bytes) {
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    const int p = pos[t], sl = slot[t];
    if (p < 0 || (!s.ring && p >= s.slot_ctx) || sl < 0 || sl >= s.n_slots) return;  // checked on the host
    const int hd = s.head_dim;
    const float * x = src + (size_t(t) * s.n_head_kv + h) * hd;
    uint8_t * dst = cache + ((size_t(sl) * s.n_head_kv + h) * s.slot_ctx + kv_cell(s, p)) * row_bytes;
    if constexpr (T == QType::F16) {
        for (int d = lane; d < hd; d += kWarp) reinterpret_cast<__half *>(dst)[d] = __float2half_rn(x[d]);
    } else if constexpr (T == QType::Q8_0) {
        for (int b = 0; b < hd / 32; ++b) {
            const float v = x[32 * b + lane];
            const float amax = warp_max(fabsf(v));
            const float d = __fdiv_rn(amax, 127.0f);
            const float id = d != 0.0f ? __frcp_rn(d) : 0.0f;
            uint8_t * blk = dst + b * sizeof(block_q8_0);
            blk[2 + lane] = uint8_t(int8_t(__float2int_rn(__fmul_rn(v, id))));
            if (lane == 0) *reinterpret_cast<__half *>(blk) = __float2half_rn(d);
        }
    } else {
        for (int b = 0; b < hd / 32; ++b) {
            const float v = x[32 * b + lane];
            // The value of largest magnitude, the first one on ties (as the reference quantizer).
            float best = fabsf(v);
            int at = lane;
#pragma unroll
            for (int o = kWarp / 2; o > 0; o >>= 1) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, o);
                const int oa = __shfl_xor_sync(0xffffffffu, at, o);
                if (ob > best || (ob == best && oa < at)) best = ob, at = oa;
            }
            const float vmax = __shfl_sync(0xffffffffu, v, at);
            const float d = __fdiv_rn(vmax, -8.0f);
            const float id = d != 0.0f ? __frcp_rn(d) : 0.0f;
            const int code = min(15, __float2int_rz(__fadd_rn(__fmul_rn(v, id), 8.5f)));
            const int hi = __shfl_down_sync(0xffffffffu, code, 16);
            uint8_t * blk = dst + b * sizeof(block_q4_0);
            if (lane < 16) blk[2 + lane] = uint8_t(code | (hi << 4));
            if (lane == 0) *reinterpret_cast<__half *>(blk) = __float2half_rn(d);
        }
    }
}

// ---- online softmax state of one query row, spread over a warp (dims lane + 32 i) ----

template <int ND>
struct RowState {
    float m = -INFINITY, l = 0.0f;
    float o[ND];

    __device__ void clear() {
#pragma unroll
        for (int i = 0; i < ND; ++i) o[i] = 0.0f;
    }
    // Folds in this lane's score sc (-inf if masked); returns its weight exp(sc - max).
    __device__ float add_scores(float sc) {
        const float m_new = fmaxf(m, warp_max(sc));
        const float p = __expf(sc - m_new);
        const float corr = __expf(m - m_new);
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ND; ++i) o[i] *= corr;
        m = m_new;
        return p;
    }
};

// The score of a key: scale * dot, soft-capped if asked.
__device__ __forceinline__ float score(const AttnScore & sc, float dot) {
    const float s = sc.scale * dot;
    return sc.softcap > 0.0f ? sc.softcap * tanhf(s / sc.softcap) : s;
}

// First cell a query at position p sees.
__device__ __forceinline__ int first_cell(const AttnScore & sc, int p) {
    return sc.window > 0 ? max(0, p - sc.window + 1) : 0;
}

// ---- decode: one block per (token, query head) ----

template <QType TK, int ND>
__global__ void __launch_bounds__(kThreads)
    decode_kernel(KvShape s, const int32_t * __restrict__ pos, const int32_t * __restrict__ slot,
                  const float * __restrict__ q, const uint8_t * __restrict__ kc, const uint8_t * __restrict__ vc,
                  float * __restrict__ out, AttnScore sc_p) {
    extern __shared__ float sm[];  // q (hd), then per warp m, l and o (hd)
    const int t = blockIdx.x, hq = blockIdx.y, hd = s.head_dim;
    const int hk = hq / (s.n_head / s.n_head_kv);
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    float * qs = sm;
    for (int d = threadIdx.x; d < hd; d += kThreads) qs[d] = q[(size_t(t) * s.n_head + hq) * hd + d];
    __syncthreads();
    const int n_kv = pos[t] + 1, lo = first_cell(sc_p, pos[t]);
    const size_t head = (size_t(slot[t]) * s.n_head_kv + hk) * s.slot_ctx;
    const uint8_t * kh = kc + head * s.k_row;
    const uint8_t * vh = vc + head * s.v_row;

    RowState<ND> st;
    st.clear();
    for (int base = lo + warp * kWarp; base < n_kv; base += kThreads) {
        const int j = base + lane;
        const float sc = j < n_kv ? score(sc_p, kv_dot<TK>(kh + kv_cell(s, j) * s.k_row, qs, hd)) : -INFINITY;
        const float p = st.add_scores(sc);
        const int n_valid = min(kWarp, n_kv - base);
        for (int jj = 0; jj < n_valid; ++jj) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const uint8_t * vrow = vh + kv_cell(s, base + jj) * s.v_row;
#pragma unroll
            for (int i = 0; i < ND; ++i) {
                const int d = lane + kWarp * i;
                if (d < hd) st.o[i] += pj * kv_value(s.type_v, vrow, d);
            }
        }
    }
    // Merge the warps' partial softmax states.
    float * ms = sm + hd;
    float * ls = ms + kWarps;
    float * os = ls + kWarps;
    if (lane == 0) ms[warp] = st.m, ls[warp] = st.l;
#pragma unroll
    for (int i = 0; i < ND; ++i) {
        const int d = lane + kWarp * i;
        if (d < hd) os[warp * hd + d] = st.o[i];
    }
    __syncthreads();
    const float sink = sc_p.sinks ? sc_p.sinks[hq] : -INFINITY;
    float M = sink;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ms[w]);
    float L = sc_p.sinks ? __expf(sink - M) : 0.0f;
    for (int w = 0; w < kWarps; ++w) L += ms[w] == -INFINITY ? 0.0f : ls[w] * __expf(ms[w] - M);
    for (int d = threadIdx.x; d < hd; d += kThreads) {
        float o = 0.0f;
        for (int w = 0; w < kWarps; ++w)
            if (ms[w] != -INFINITY) o += os[w * hd + d] * __expf(ms[w] - M);
        out[(size_t(t) * s.n_head + hq) * hd + d] = o / L;
    }
}

// ---- prefill: one block per (chunk, KV head, query-head group) ----

struct PrefillLayout {
    int rows_heads;  // query heads per block (gq)
    int groups;      // query-head groups per KV head
    int chunk;       // most tokens per chunk
};

PrefillLayout prefill_layout(const KvShape & s) {
    const int gqa = s.n_head / s.n_head_kv;
    PrefillLayout p;
    p.rows_heads = gqa < kMaxRows ? gqa : kMaxRows;
    p.groups = (gqa + p.rows_heads - 1) / p.rows_heads;
    p.chunk = kMaxRows / p.rows_heads;
    return p;
}

// Odd stride of the shared key tile, so that lanes reading different keys hit different banks.
__host__ __device__ inline int key_stride(int hd) { return hd % 2 ? hd : hd + 1; }

size_t prefill_smem(int hd) { return sizeof(float) * (size_t(kMaxRows) * hd + size_t(kTile) * key_stride(hd) + size_t(kTile) * hd); }

template <int ND>
__global__ void __launch_bounds__(kThreads)
    prefill_kernel(KvShape s, const int32_t * __restrict__ pos, const int32_t * __restrict__ slot,
                   const int32_t * __restrict__ chunk_start, const float * __restrict__ q,
                   const uint8_t * __restrict__ kc, const uint8_t * __restrict__ vc, float * __restrict__ out,
                   AttnScore sc_p, int gq) {
    extern __shared__ float sm[];
    const int hd = s.head_dim, ks = key_stride(hd);
    float * qs = sm;                          // (kMaxRows, hd)
    float * kt = qs + kMaxRows * hd;          // (kTile, ks)
    float * vt = kt + kTile * ks;             // (kTile, hd)
    const int gqa = s.n_head / s.n_head_kv;
    const int hk = blockIdx.y;
    const int hq0 = hk * gqa + blockIdx.z * gq;
    const int nh = min(gq, gqa - int(blockIdx.z) * gq);
    const int t0 = chunk_start[blockIdx.x], nt = chunk_start[blockIdx.x + 1] - t0;
    const int nq = nt * nh;  // <= kMaxRows by construction of the chunks
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;

    for (int e = threadIdx.x; e < nq * hd; e += kThreads) {
        const int r = e / hd, d = e % hd;
        qs[e] = q[(size_t(t0 + r / nh) * s.n_head + hq0 + r % nh) * hd + d];
    }
    const int n_kv = pos[t0 + nt - 1] + 1, lo = first_cell(sc_p, pos[t0]);
    const size_t head = (size_t(slot[t0]) * s.n_head_kv + hk) * s.slot_ctx;
    const uint8_t * kh = kc + head * s.k_row;
    const uint8_t * vh = vc + head * s.v_row;

    constexpr int R = kMaxRows / kWarps;  // rows per warp: warp + kWarps * i
    RowState<ND> st[R];
    int rpos[R], rlo[R];  // the cells [rlo, rpos] each row sees
#pragma unroll
    for (int i = 0; i < R; ++i) {
        st[i].clear();
        const int r = warp + kWarps * i;
        rpos[i] = r < nq ? pos[t0 + r / nh] : -1;
        rlo[i] = r < nq ? first_cell(sc_p, rpos[i]) : 0;
    }

    for (int c0 = lo; c0 < n_kv; c0 += kTile) {
        __syncthreads();  // the previous tile is consumed (and the queries are loaded)
        for (int e = threadIdx.x; e < kTile * hd; e += kThreads) {
            const int j = e / hd, d = e % hd, cell = c0 + j;
            const bool ok = cell < n_kv;
            kt[j * ks + d] = ok ? kv_value(s.type_k, kh + kv_cell(s, cell) * s.k_row, d) : 0.0f;
            vt[j * hd + d] = ok ? kv_value(s.type_v, vh + kv_cell(s, cell) * s.v_row, d) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = warp + kWarps * i;
            if (r >= nq || c0 > rpos[i] || c0 + kTile <= rlo[i]) continue;  // warp-uniform
            const float * qr = qs + r * hd;
            float sc = -INFINITY;
            if (c0 + lane <= rpos[i] && c0 + lane >= rlo[i]) {
                const float * kr = kt + lane * ks;
                float acc = 0.0f;
                for (int d = 0; d < hd; ++d) acc += qr[d] * kr[d];
                sc = score(sc_p, acc);
            }
            const float p = st[i].add_scores(sc);
            const int n_valid = min(kTile, rpos[i] - c0 + 1);
            for (int jj = 0; jj < n_valid; ++jj) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int k = 0; k < ND; ++k) {
                    const int d = lane + kWarp * k;
                    if (d < hd) st[i].o[k] += pj * vt[jj * hd + d];
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int r = warp + kWarps * i;
        if (r >= nq) continue;
        float * dst = out + (size_t(t0 + r / nh) * s.n_head + hq0 + r % nh) * hd;
        float inv = 1.0f / st[i].l;
        if (sc_p.sinks) {  // the head's sink logit joins the softmax: m, l and o rescaled to the new max
            const float sink = sc_p.sinks[hq0 + r % nh], m = fmaxf(st[i].m, sink), corr = __expf(st[i].m - m);
            inv = corr / (st[i].l * corr + __expf(sink - m));
        }
#pragma unroll
        for (int k = 0; k < ND; ++k) {
            const int d = lane + kWarp * k;
            if (d < hd) dst[d] = st[i].o[k] * inv;
        }
    }
}

// Calls f(std::integral_constant<int, ND>) with the dims-per-lane count covering head_dim.
template <class F>
void with_nd(int hd, F && f) {
    if (hd <= 32)
        f(std::integral_constant<int, 1>{});
    else if (hd <= 64)
        f(std::integral_constant<int, 2>{});
    else if (hd <= 128)
        f(std::integral_constant<int, 4>{});
    else
        f(std::integral_constant<int, 8>{});
}

}  // namespace

void attention_check(const KvShape & s) {
    for (QType t : {s.type_k, s.type_v}) {
        SL_CHECK(t == QType::F16 || t == QType::Q8_0 || t == QType::Q4_0,
                 "cuda attention: KV cache type %u is not supported (F16, Q8_0, Q4_0)", unsigned(t));
        SL_CHECK(t == QType::F16 || s.head_dim % 32 == 0, "cuda attention: head_dim %d is not a multiple of 32",
                 s.head_dim);
    }
    SL_CHECK(s.head_dim > 0 && s.head_dim <= kMaxHeadDim, "cuda attention: head_dim %d outside [1, %d]", s.head_dim,
             kMaxHeadDim);
    SL_CHECK(s.n_head_kv > 0 && s.n_head % s.n_head_kv == 0, "cuda attention: %d query heads for %d KV heads",
             s.n_head, s.n_head_kv);
    SL_CHECK(s.k_row == row_size(s.type_k, s.head_dim) && s.v_row == row_size(s.type_v, s.head_dim),
             "cuda attention: cache row sizes do not match the types");
}

int attention_chunk_tokens(const KvShape & s) { return prefill_layout(s).chunk; }

void store_kv(const KvShape & s, const AttnBatch & b, const float * k, const float * v, void * k_cache,
              void * v_cache, cudaStream_t stream) {
    attention_check(s);
    if (b.n_tok <= 0) return;
    const dim3 grid(b.n_tok, s.n_head_kv);
    auto store = [&](QType t, const float * src, void * cache, size_t row) {
        auto * c = static_cast<uint8_t *>(cache);
        if (t == QType::F16)
            store_kernel<QType::F16><<<grid, kWarp, 0, stream>>>(s, b.pos, b.slot, src, c, row);
        else if (t == QType::Q8_0)
            store_kernel<QType::Q8_0><<<grid, kWarp, 0, stream>>>(s, b.pos, b.slot, src, c, row);
        else
            store_kernel<QType::Q4_0><<<grid, kWarp, 0, stream>>>(s, b.pos, b.slot, src, c, row);
        SL_CUDA_LAUNCHED("store_kv");
    };
    store(s.type_k, k, k_cache, s.k_row);
    store(s.type_v, v, v_cache, s.v_row);
}

void attention_decode(const KvShape & s, const AttnBatch & b, const float * q, const void * k_cache,
                      const void * v_cache, float * out, const AttnScore & sc, cudaStream_t stream) {
    attention_check(s);
    if (b.n_tok <= 0) return;
    const dim3 grid(b.n_tok, s.n_head);
    const size_t smem = sizeof(float) * (size_t(s.head_dim) + 2 * kWarps + size_t(kWarps) * s.head_dim);
    const auto * kc = static_cast<const uint8_t *>(k_cache);
    const auto * vc = static_cast<const uint8_t *>(v_cache);
    with_nd(s.head_dim, [&](auto nd) {
        constexpr int ND = decltype(nd)::value;
        if (s.type_k == QType::F16)
            decode_kernel<QType::F16, ND><<<grid, kThreads, smem, stream>>>(s, b.pos, b.slot, q, kc, vc, out, sc);
        else if (s.type_k == QType::Q8_0)
            decode_kernel<QType::Q8_0, ND><<<grid, kThreads, smem, stream>>>(s, b.pos, b.slot, q, kc, vc, out, sc);
        else
            decode_kernel<QType::Q4_0, ND><<<grid, kThreads, smem, stream>>>(s, b.pos, b.slot, q, kc, vc, out, sc);
        SL_CUDA_LAUNCHED("attention_decode");
    });
}

void attention_prefill(const KvShape & s, const AttnBatch & b, const float * q, const void * k_cache,
                       const void * v_cache, float * out, const AttnScore & sc, cudaStream_t stream) {
    attention_check(s);
    if (b.n_chunks <= 0) return;
    const PrefillLayout lay = prefill_layout(s);
    const dim3 grid(b.n_chunks, s.n_head_kv, lay.groups);
    const size_t smem = prefill_smem(s.head_dim);
    const auto * kc = static_cast<const uint8_t *>(k_cache);
    const auto * vc = static_cast<const uint8_t *>(v_cache);
    with_nd(s.head_dim, [&](auto nd) {
        constexpr int ND = decltype(nd)::value;
        if (smem > 48 * 1024)
            SL_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<ND>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(smem)));
        prefill_kernel<ND><<<grid, kThreads, smem, stream>>>(s, b.pos, b.slot, b.chunk_start, q, kc, vc, out, sc,
                                                             lay.rows_heads);
        SL_CUDA_LAUNCHED("attention_prefill");
    });
}

}  // namespace sl::cuda
