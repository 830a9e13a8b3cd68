// AVX-512 activation quantizer, KV-cache writers and attention. Attention reads the cache in
// its stored format: tiles of 16 (scores) or 32 (values) rows are converted into a small float
// buffer that stays in L1, never the whole cache. Quantizers give the scalar code's exact bytes.
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx512.h"
#include "quant/legacy.h"

namespace sl::cpu::impl::avx512 {

namespace {

inline __m512 abs_ps(__m512 v) { return _mm512_abs_ps(v); }

// Lane i = max over the lanes of a[i] (the reduction tree of hsum16).
__m512 hmax16(const __m512 a[16]) {
    __m512 x[8], y[4], z[2];
    for (int i = 0; i < 8; ++i)
        x[i] = _mm512_max_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {
        const __m512d p = _mm512_castps_pd(x[2 * i]), q = _mm512_castps_pd(x[2 * i + 1]);
        y[i] = _mm512_max_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
    }
    for (int i = 0; i < 2; ++i)
        z[i] = _mm512_max_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
    return _mm512_max_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
}

// 16 blocks of 32 (n valid) to ActQ8 codes, scales and sums: the block maxima and code sums
// are transposing reductions over the 16 blocks at once.
void quantize_q8_16(const float * x, int64_t b0, int n, int64_t nbp, int8_t * qs, float * d) {
    __m512 m[16];
    for (int j = 0; j < 16; ++j)
        m[j] = j < n ? _mm512_max_ps(abs_ps(_mm512_loadu_ps(x + 32 * j)), abs_ps(_mm512_loadu_ps(x + 32 * j + 16)))
                     : _mm512_setzero_ps();
    const __m512 dd = _mm512_div_ps(hmax16(m), _mm512_set1_ps(127.0f));
    const __m512 id = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(dd, _mm512_setzero_ps(), _CMP_NEQ_OQ),
                                          _mm512_set1_ps(1.0f), dd);
    alignas(64) float ids[16];
    _mm512_store_ps(ids, id);
    __m512 s0[16], s1[16];
    for (int j = 0; j < 16; ++j) {
        if (j >= n) {
            s0[j] = s1[j] = _mm512_setzero_ps();
            continue;
        }
        const __m512 v = _mm512_set1_ps(ids[j]);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 32 * j), v));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 32 * j + 16), v));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b0 + j, 0)), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b0 + j, 16)), _mm512_cvtepi32_epi8(q1));
        // Code sums are small integers: exact in float, in any order.
        s0[j] = _mm512_cvtepi32_ps(q0);
        s1[j] = _mm512_cvtepi32_ps(q1);
    }
    const __m512 h0 = hsum16(s0), h1 = hsum16(s1);
    const __mmask16 k = __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(d + b0, k, dd);
    _mm512_mask_storeu_ps(d + nbp + b0, k, _mm512_mul_ps(dd, _mm512_add_ps(h0, h1)));
    const __m512 a = _mm512_mul_ps(dd, h0), b = _mm512_mul_ps(dd, h1);
    const __m512 lo = _mm512_unpacklo_ps(a, b), hi = _mm512_unpackhi_ps(a, b);
    const __m512 o0 = _mm512_permutex2var_ps(lo, _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23), hi);
    const __m512 o1 = _mm512_permutex2var_ps(lo, _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31), hi);
    const uint32_t k2 = n >= 16 ? 0xFFFFFFFFu : (1u << (2 * n)) - 1;
    _mm512_mask_storeu_ps(d + 2 * nbp + 2 * b0, __mmask16(k2), o0);
    _mm512_mask_storeu_ps(d + 2 * nbp + 2 * b0 + 16, __mmask16(k2 >> 16), o1);
}

// The Q8 activation format (cpu/kernels.h), one row, padding included.
void quantize_q8(const float * x, int64_t K, uint8_t * row) {
    const int64_t Kp = ActQ8::padded(K), nbp = Kp / 32, nb = K / 32;
    int8_t * qs = reinterpret_cast<int8_t *>(row);
    float * d = reinterpret_cast<float *>(row + Kp);
    for (int64_t b0 = 0; b0 < nb; b0 += 16) quantize_q8_16(x + 32 * b0, b0, int(imin<int64_t>(16, nb - b0)), nbp, qs, d);
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
    for (; i < n; ++i) reinterpret_cast<uint16_t *>(dst)[i] = f2h(x[i]);
}

void store_q8_0(const float * x, int64_t n, uint8_t * dst) {
    block_q8_0 * b = reinterpret_cast<block_q8_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_ps(v0), abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = f2h(d);
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
        b[i].d = f2h(d);
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

float * tile_buffer(size_t floats) { return reinterpret_cast<float *>(scratch(1, floats * sizeof(float))); }

template <RowFn ROW>
void scores(const float * q, int64_t ldq, int64_t n_q, const uint8_t * Kc, size_t ldk, int64_t n_kv, int64_t hd,
            float scale, float * out, int64_t lds) {
    const int64_t hd16 = (hd + 15) / 16 * 16;
    float * tile = tile_buffer(size_t(16 * hd16));
    for (int64_t j0 = 0; j0 < n_kv; j0 += 16) {
        const int nj = int(imin<int64_t>(16, n_kv - j0));
        for (int jj = 0; jj < 16; ++jj) {
            if (jj < nj)
                ROW(Kc + (j0 + jj) * ldk, hd, tile + jj * hd16);
            else
                for (int64_t i = 0; i < hd16; ++i) tile[jj * hd16 + i] = 0.0f;
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
        const int nc = int(imin<int64_t>(4, (hd16 - hc) / 16));
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
        const int nj = int(imin<int64_t>(kTile, n_kv - j0));
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
