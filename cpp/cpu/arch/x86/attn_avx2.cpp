// AVX2 activation quantizer, KV-cache writers and attention (as attn_avx512.cpp, 8 lanes).
#include "cpu/arch/x86/kernels_x86.h"
#include "cpu/arch/x86/blocks_avx2.h"
#include "quant/legacy.h"

namespace sl::cpu::impl::avx2 {

namespace {

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// 16 int32 (two ymm) to 16 int8, in order.
inline __m128i pack16(__m256i a, __m256i b) {
    const __m256i w = _mm256_packs_epi32(a, b);  // a0-3 b0-3 | a4-7 b4-7 (int16)
    const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
    const __m128i bytes = _mm_packs_epi16(lo, hi);  // a0-3 b0-3 a4-7 b4-7
    return _mm_shuffle_epi8(bytes, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
}

// Rounded codes of a block of 32 (nearest even), its scale and the two half sums.
struct Q8Block {
    __m256i q[4];
    float d;
    int s0, s1;
};

inline Q8Block quantize_block(const float * x) {
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(m, abs_ps(v[i]));
    }
    Q8Block b;
    b.d = hmax(m) / 127.0f;
    const __m256 id = _mm256_set1_ps(b.d != 0.0f ? 1.0f / b.d : 0.0f);
    for (int i = 0; i < 4; ++i) b.q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));
    b.s0 = hsum_i32(_mm256_add_epi32(b.q[0], b.q[1]));
    b.s1 = hsum_i32(_mm256_add_epi32(b.q[2], b.q[3]));
    return b;
}

void quantize_q8(const float * x, int64_t K, uint8_t * row) {
    const int64_t Kp = ActQ8::padded(K), nbp = Kp / 32, nb = K / 32;
    int8_t * qs = reinterpret_cast<int8_t *>(row);
    float * d = reinterpret_cast<float *>(row + Kp);
    for (int64_t b = 0; b < nbp; ++b) {
        if (b < nb) {
            const Q8Block q = quantize_block(x + 32 * b);
            _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 0)), pack16(q.q[0], q.q[1]));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 16)), pack16(q.q[2], q.q[3]));
            d[b] = q.d;
            d[nbp + b] = q.d * float(q.s0 + q.s1);
            d[2 * nbp + 2 * b] = q.d * float(q.s0);
            d[2 * nbp + 2 * b + 1] = q.d * float(q.s1);
        } else {
            _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 0)), _mm_setzero_si128());
            _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + ActQ8::pos(b, 16)), _mm_setzero_si128());
            d[b] = d[nbp + b] = d[2 * nbp + 2 * b] = d[2 * nbp + 2 * b + 1] = 0.0f;
        }
    }
}

void store_f16(const float * x, int64_t n, uint8_t * dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) reinterpret_cast<uint16_t *>(dst)[i] = f2h(x[i]);
}

void store_q8_0(const float * x, int64_t n, uint8_t * dst) {
    block_q8_0 * b = reinterpret_cast<block_q8_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i) {
        const Q8Block q = quantize_block(x + 32 * i);
        b[i].d = f2h(q.d);
        _mm_storeu_si128(reinterpret_cast<__m128i *>(b[i].qs), pack16(q.q[0], q.q[1]));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(b[i].qs + 16), pack16(q.q[2], q.q[3]));
    }
}

void store_q4_0(const float * x, int64_t n, uint8_t * dst) {
    block_q4_0 * b = reinterpret_cast<block_q4_0 *>(dst);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            v[j] = _mm256_loadu_ps(x + 8 * j);
            m = _mm256_max_ps(m, abs_ps(v[j]));
        }
        const float amax = hmax(m);
        // The first value of largest magnitude, with its sign.
        uint32_t hit = 0;
        for (int j = 0; j < 4; ++j)
            hit |= uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(abs_ps(v[j]), _mm256_set1_ps(amax), _CMP_EQ_OQ))) << (8 * j);
        const float vmax = amax > 0.0f ? x[__builtin_ctz(hit)] : 0.0f;
        const float d = vmax / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = f2h(d);
        __m256i q[4];
        for (int j = 0; j < 4; ++j)
            q[j] = _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v[j], _mm256_set1_ps(id)),
                                                                      _mm256_set1_ps(8.5f))),
                                    _mm256_set1_epi32(15));
        const __m128i lo = pack16(q[0], q[1]), hi = pack16(q[2], q[3]);
        _mm_storeu_si128(reinterpret_cast<__m128i *>(b[i].qs), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
    }
}

// ---- cache rows to floats (a tile row of hd8 floats, zero past head_dim) ----

void row_f16(const uint8_t * row, int64_t hd, float * v) {
    const int64_t h8 = hd / 8 * 8;
    for (int64_t i = 0; i < h8; i += 8)
        _mm256_store_ps(v + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(row + 2 * i))));
    for (int64_t i = h8; i < (hd + 7) / 8 * 8; ++i) v[i] = i < hd ? h2f(reinterpret_cast<const uint16_t *>(row)[i]) : 0.0f;
}

void row_q8_0(const uint8_t * row, int64_t hd, float * v) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row);
    for (int64_t i = 0; i < hd / 32; ++i, v += 32) {
        const __m256 d = _mm256_set1_ps(h2f(b[i].d));
        for (int j = 0; j < 4; ++j) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(b[i].qs + 8 * j)));
            _mm256_store_ps(v + 8 * j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

void row_q4_0(const uint8_t * row, int64_t hd, float * v) {
    const block_q4_0 * b = reinterpret_cast<const block_q4_0 *>(row);
    const __m256i c15 = _mm256_set1_epi32(15), c8 = _mm256_set1_epi32(8);
    for (int64_t i = 0; i < hd / 32; ++i, v += 32) {
        const __m256 d = _mm256_set1_ps(h2f(b[i].d));
        for (int j = 0; j < 2; ++j) {
            const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(b[i].qs + 8 * j)));
            const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(q, c15), c8);
            const __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(q, 4), c8);
            _mm256_store_ps(v + 8 * j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(lo)));
            _mm256_store_ps(v + 16 + 8 * j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(hi)));
        }
    }
}

typedef void (*RowFn)(const uint8_t *, int64_t, float *);

float * tile_buffer(size_t floats) { return reinterpret_cast<float *>(scratch(1, floats * sizeof(float))); }

// q rows' tail past head_dim reads as zero.
inline __m256 load_q(const float * q, int64_t k, int64_t hd) {
    if (hd - k >= 8) return _mm256_loadu_ps(q + k);
    alignas(32) float t[8] = {};
    for (int64_t i = k; i < hd; ++i) t[i - k] = q[i];
    return _mm256_load_ps(t);
}

template <RowFn ROW>
void scores(const float * q, int64_t ldq, int64_t n_q, const uint8_t * Kc, size_t ldk, int64_t n_kv, int64_t hd,
            float scale, float * out, int64_t lds) {
    const int64_t hd8 = (hd + 7) / 8 * 8;
    float * tile = tile_buffer(size_t(8 * hd8));
    for (int64_t j0 = 0; j0 < n_kv; j0 += 8) {
        const int nj = int(imin<int64_t>(8, n_kv - j0));
        for (int jj = 0; jj < 8; ++jj) {
            if (jj < nj)
                ROW(Kc + (j0 + jj) * ldk, hd, tile + jj * hd8);
            else
                for (int64_t i = 0; i < hd8; ++i) tile[jj * hd8 + i] = 0.0f;
        }
        for (int64_t i = 0; i < n_q; ++i) {
            __m256 acc[8];
            for (int jj = 0; jj < 8; ++jj) acc[jj] = _mm256_setzero_ps();
            for (int64_t k = 0; k < hd8; k += 8) {
                const __m256 qv = load_q(q + i * ldq, k, hd);
                for (int jj = 0; jj < 8; ++jj) acc[jj] = _mm256_fmadd_ps(qv, _mm256_load_ps(tile + jj * hd8 + k), acc[jj]);
            }
            alignas(32) float s[8];
            _mm256_store_ps(s, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale)));
            for (int jj = 0; jj < nj; ++jj) out[i * lds + j0 + jj] = s[jj];
        }
    }
}

// G output rows, hd in chunks of 32 floats: out[i] += sum_j w[i][j] * tile[j].
template <int G>
void values_rows(const float * w, int64_t ldw, const float * tile, int nj, int64_t hd, int64_t hd8, float * out,
                 int64_t ldo) {
    for (int64_t hc = 0; hc < hd8; hc += 32) {
        const int nc = int(imin<int64_t>(4, (hd8 - hc) / 8));
        alignas(32) float buf[G][32];
        __m256 acc[G][4];
        for (int g = 0; g < G; ++g) {
            for (int i = 0; i < 32; ++i) buf[g][i] = hc + i < hd ? out[g * ldo + hc + i] : 0.0f;
            for (int c = 0; c < 4; ++c) acc[g][c] = _mm256_load_ps(buf[g] + 8 * c);
        }
        for (int j = 0; j < nj; ++j) {
            const float * v = tile + j * hd8 + hc;
            for (int g = 0; g < G; ++g) {
                const __m256 wv = _mm256_set1_ps(w[g * ldw + j]);
                for (int c = 0; c < 4; ++c)
                    if (c < nc) acc[g][c] = _mm256_fmadd_ps(wv, _mm256_load_ps(v + 8 * c), acc[g][c]);
            }
        }
        for (int g = 0; g < G; ++g) {
            for (int c = 0; c < 4; ++c) _mm256_store_ps(buf[g] + 8 * c, acc[g][c]);
            for (int i = 0; i < 32 && hc + i < hd; ++i) out[g * ldo + hc + i] = buf[g][i];
        }
    }
}

template <RowFn ROW>
void values(const float * w, int64_t ldw, int64_t n_q, const uint8_t * Vc, size_t ldv, int64_t n_kv, int64_t hd,
            float * out, int64_t ldo) {
    const int64_t hd8 = (hd + 7) / 8 * 8;
    constexpr int kTile = 32;
    float * tile = tile_buffer(size_t(kTile * hd8));
    for (int64_t j0 = 0; j0 < n_kv; j0 += kTile) {
        const int nj = int(imin<int64_t>(kTile, n_kv - j0));
        for (int jj = 0; jj < nj; ++jj) ROW(Vc + (j0 + jj) * ldv, hd, tile + jj * hd8);
        int64_t i = 0;
        for (; i + 3 <= n_q; i += 3) values_rows<3>(w + i * ldw + j0, ldw, tile, nj, hd, hd8, out + i * ldo, ldo);
        switch (n_q - i) {
            case 2: values_rows<2>(w + i * ldw + j0, ldw, tile, nj, hd, hd8, out + i * ldo, ldo); break;
            case 1: values_rows<1>(w + i * ldw + j0, ldw, tile, nj, hd, hd8, out + i * ldo, ldo); break;
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

}  // namespace sl::cpu::impl::avx2
