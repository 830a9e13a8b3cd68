// AVX-512 activation quantizer, KV-cache writers and attention. Attention reads the cache in
// its stored format: tiles of 16 (scores) or 32 (values) rows are converted into a small float
// buffer that stays in L1, never the whole cache. Quantizers give the scalar code's exact bytes.
#include <algorithm>
#include <vector>

#include "common/fp16.h"
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"
#include "quant/legacy.h"

namespace sl::cpu::impl::avx512 {

namespace {

inline __m512 abs_ps(__m512 v) { return _mm512_abs_ps(v); }

// The Q8 activation format (cpu/kernels.h), one row, padding included.
void quantize_q8(const float * x, int64_t K, uint8_t * row) {
    const int64_t Kp = ActQ8::padded(K), nbp = Kp / 32, nb = K / 32;
    int8_t * qs = reinterpret_cast<int8_t *>(row);
    float * d = reinterpret_cast<float *>(row + Kp);
    for (int64_t b = 0; b < nb; ++b) {
        const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_ps(v0), abs_ps(v1)));
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 0)), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 16)), _mm512_cvtepi32_epi8(q1));
        const int s0 = _mm512_reduce_add_epi32(q0), s1 = _mm512_reduce_add_epi32(q1);
        d[b] = dd;
        d[nbp + b] = dd * float(s0 + s1);
        d[2 * nbp + 2 * b] = dd * float(s0);
        d[2 * nbp + 2 * b + 1] = dd * float(s1);
    }
    for (int64_t b = nb; b < nbp; ++b) {
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 0)), _mm_setzero_si128());
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 16)), _mm_setzero_si128());
        d[b] = d[nbp + b] = d[2 * nbp + 2 * b] = d[2 * nbp + 2 * b + 1] = 0.0f;
    }
}

void store_f16(const float * x, int64_t n, uint8_t * dst) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst + 2 * i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) reinterpret_cast<fp16_t *>(dst)[i] = fp32_to_fp16(x[i]);
}

void store_q8_0(const float * x, int64_t n, uint8_t * dst) {
    block_q8_0 * b = reinterpret_cast<block_q8_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_ps(v0), abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(b[i].qs), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(b[i].qs + 16), _mm512_cvtepi32_epi8(q1));
    }
}

void store_q4_0(const float * x, int64_t n, uint8_t * dst) {
    block_q4_0 * b = reinterpret_cast<block_q4_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_ps(v0), abs_ps(v1)));
        // The first value of largest magnitude, with its sign.
        const uint32_t hit = uint32_t(_mm512_cmpeq_ps_mask(abs_ps(v0), _mm512_set1_ps(amax))) |
                             uint32_t(_mm512_cmpeq_ps_mask(abs_ps(v1), _mm512_set1_ps(amax))) << 16;
        const float vmax = amax > 0.0f ? x[__builtin_ctz(hit)] : 0.0f;
        const float d = vmax / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        const __m512 vid = _mm512_set1_ps(id), half = _mm512_set1_ps(8.5f);
        const __m512i c15 = _mm512_set1_epi32(15);
        const __m512i lo = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(v0, vid), half)), c15);
        const __m512i hi = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(v1, vid), half)), c15);
        const __m512i q = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(b[i].qs), _mm512_cvtepi32_epi8(q));
    }
}

// ---- cache rows to floats (a tile row of hd16 floats, zero past head_dim) ----

void row_f16(const uint8_t * row, int64_t hd, float * v) {
    const uint16_t * h = reinterpret_cast<const uint16_t *>(row);
    for (int64_t i = 0; i < hd; i += 16) {
        const __mmask16 m = hd - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (hd - i)) - 1);
        _mm512_store_ps(v + i, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i)));
    }
}

void row_q8_0(const uint8_t * row, int64_t hd, float * v) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row);
    for (int64_t i = 0; i < hd / 32; ++i, v += 32) {
        const __m512 d = _mm512_set1_ps(h2f(b[i].d));
        const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b[i].qs));
        const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b[i].qs + 16));
        _mm512_store_ps(v, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0))));
        _mm512_store_ps(v + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1))));
    }
}

void row_q4_0(const uint8_t * row, int64_t hd, float * v) {
    const block_q4_0 * b = reinterpret_cast<const block_q4_0 *>(row);
    const __m512i c15 = _mm512_set1_epi32(15), c8 = _mm512_set1_epi32(8);
    for (int64_t i = 0; i < hd / 32; ++i, v += 32) {
        const __m512 d = _mm512_set1_ps(h2f(b[i].d));
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b[i].qs)));
        const __m512i lo = _mm512_sub_epi32(_mm512_and_si512(q, c15), c8);
        const __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), c8);
        _mm512_store_ps(v, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)));
        _mm512_store_ps(v + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)));
    }
}

typedef void (*RowFn)(const uint8_t *, int64_t, float *);

float * tile_buffer(size_t floats) {
    thread_local std::vector<Line64> buf;
    if (buf.size() < floats / 16) buf.resize(floats / 16);
    return reinterpret_cast<float *>(buf.data());
}

template <RowFn ROW>
void scores(const float * q, int64_t ldq, int64_t n_q, const uint8_t * Kc, size_t ldk, int64_t n_kv, int64_t hd,
            float scale, float * out, int64_t lds) {
    const int64_t hd16 = (hd + 15) / 16 * 16;
    float * tile = tile_buffer(size_t(16 * hd16));
    for (int64_t j0 = 0; j0 < n_kv; j0 += 16) {
        const int nj = int(std::min<int64_t>(16, n_kv - j0));
        for (int jj = 0; jj < 16; ++jj) {
            if (jj < nj)
                ROW(Kc + (j0 + jj) * ldk, hd, tile + jj * hd16);
            else
                std::fill(tile + jj * hd16, tile + (jj + 1) * hd16, 0.0f);
        }
        for (int64_t i = 0; i < n_q; ++i) {
            __m512 acc[16];
            for (int jj = 0; jj < 16; ++jj) acc[jj] = _mm512_setzero_ps();
            for (int64_t k = 0; k < hd16; k += 16) {
                const __mmask16 m = hd - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (hd - k)) - 1);
                const __m512 qv = _mm512_maskz_loadu_ps(m, q + i * ldq + k);
                for (int jj = 0; jj < 16; ++jj) acc[jj] = _mm512_fmadd_ps(qv, _mm512_load_ps(tile + jj * hd16 + k), acc[jj]);
            }
            const __m512 s = _mm512_mul_ps(hsum16(acc), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(out + i * lds + j0, __mmask16((1u << nj) - 1), s);
        }
    }
}

// G output rows, hd16 in chunks of 64 floats: out[i] += sum_j w[i][j] * tile[j].
template <int G>
void values_rows(const float * w, int64_t ldw, const float * tile, int nj, int64_t hd, int64_t hd16, float * out,
                 int64_t ldo) {
    for (int64_t hc = 0; hc < hd16; hc += 64) {
        const int nc = int(std::min<int64_t>(4, (hd16 - hc) / 16));
        __mmask16 m[4];
        __m512 acc[G][4];
        for (int c = 0; c < 4; ++c) {
            const int64_t k = hc + 16 * c;
            m[c] = c >= nc ? 0 : hd - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (hd - k)) - 1);
            for (int g = 0; g < G; ++g) acc[g][c] = _mm512_maskz_loadu_ps(m[c], out + g * ldo + k);
        }
        for (int j = 0; j < nj; ++j) {
            const float * v = tile + j * hd16 + hc;
            for (int g = 0; g < G; ++g) {
                const __m512 wv = _mm512_set1_ps(w[g * ldw + j]);
                for (int c = 0; c < 4; ++c)
                    if (c < nc) acc[g][c] = _mm512_fmadd_ps(wv, _mm512_load_ps(v + 16 * c), acc[g][c]);
            }
        }
        for (int c = 0; c < nc; ++c)
            for (int g = 0; g < G; ++g) _mm512_mask_storeu_ps(out + g * ldo + hc + 16 * c, m[c], acc[g][c]);
    }
}

template <RowFn ROW>
void values(const float * w, int64_t ldw, int64_t n_q, const uint8_t * Vc, size_t ldv, int64_t n_kv, int64_t hd,
            float * out, int64_t ldo) {
    const int64_t hd16 = (hd + 15) / 16 * 16;
    constexpr int kTile = 32;
    float * tile = tile_buffer(size_t(kTile * hd16));
    for (int64_t j0 = 0; j0 < n_kv; j0 += kTile) {
        const int nj = int(std::min<int64_t>(kTile, n_kv - j0));
        for (int jj = 0; jj < nj; ++jj) ROW(Vc + (j0 + jj) * ldv, hd, tile + jj * hd16);
        int64_t i = 0;
        for (; i + 4 <= n_q; i += 4) values_rows<4>(w + i * ldw + j0, ldw, tile, nj, hd, hd16, out + i * ldo, ldo);
        switch (n_q - i) {
            case 3: values_rows<3>(w + i * ldw + j0, ldw, tile, nj, hd, hd16, out + i * ldo, ldo); break;
            case 2: values_rows<2>(w + i * ldw + j0, ldw, tile, nj, hd, hd16, out + i * ldo, ldo); break;
            case 1: values_rows<1>(w + i * ldw + j0, ldw, tile, nj, hd, hd16, out + i * ldo, ldo); break;
            default: break;
        }
    }
}

}  // namespace

void fill_act_attn(KernelTable & t) {
    t.quantize_q8 = quantize_q8;
    t.store[KV_F16] = store_f16;
    t.store[KV_Q8_0] = store_q8_0;
    t.store[KV_Q4_0] = store_q4_0;
    t.scores[KV_F16] = scores<row_f16>;
    t.scores[KV_Q8_0] = scores<row_q8_0>;
    t.scores[KV_Q4_0] = scores<row_q4_0>;
    t.values[KV_F16] = values<row_f16>;
    t.values[KV_Q8_0] = values<row_q8_0>;
    t.values[KV_Q4_0] = values<row_q4_0>;
}

}  // namespace sl::cpu::impl::avx512
