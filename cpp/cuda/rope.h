// Rotary embedding on the GPU. rope_tables fills cos/sin (n_tok, n_rot / 2) for the batch's
// positions (theta = pos * inv_freq[i], evaluated in double as the CPU backend does; both times
// mscale); rope rotates q (n_tok, n_head * head_dim) and k (n_tok, n_head_kv * head_dim) in
// place: NEOX pairs (i, i + n_rot / 2), NORM pairs (2i, 2i + 1); dimensions past n_rot are left
// alone; with temp_scale, then each query row times 1 + temp_scale * ln(floor(pos / temp_floor) + 1)
// (mistral3's attention temperature, pos the batch's positions).
#pragma once

#include <cuda_runtime_api.h>

namespace sl::cuda {

void rope_tables(const int * pos, const float * inv_freq, int n_tok, int n_rot, float mscale, float * cos_t,
                 float * sin_t, cudaStream_t stream);

struct RopeShape {
    int n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
    bool neox = false;
    float temp_scale = 0.0f;
    int temp_floor = 1;
};

void rope(float * q, float * k, const float * cos_t, const float * sin_t, const int * pos, int n_tok,
          const RopeShape & s, cudaStream_t stream);

}  // namespace sl::cuda
