// Rotary embedding on the GPU. rope_tables fills cos/sin (n_tok, n_rot / 2) for the batch's
// positions (theta = pos * inv_freq[i], evaluated in double as the CPU backend does; both times
// mscale); rope rotates q (n_tok, n_head * head_dim) and k (n_tok, n_head_kv * head_dim) in
// place: NEOX pairs (i, i + n_rot / 2), NORM pairs (2i, 2i + 1); dimensions past n_rot are left
// alone.
#pragma once

#include <cuda_runtime_api.h>

namespace sl::cuda {

void rope_tables(const int * pos, const float * inv_freq, int n_tok, int n_rot, float mscale, float * cos_t,
                 float * sin_t, cudaStream_t stream);

struct RopeShape {
    int n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
    bool neox = false;
};

void rope(float * q, float * k, const float * cos_t, const float * sin_t, int n_tok, const RopeShape & s,
          cudaStream_t stream);

}  // namespace sl::cuda
