// A loaded model: Config (from metadata), Weights (views into the mmapped file, or copies on the
// GPU for offloaded layers), State (KV cache and scratch, allocated once), and the placement of
// each layer on a backend.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "model/backend.h"
#include "model/config.h"

namespace sl {

class GGUFFile;
struct GGUFTensor;
class CpuBackend;
struct CpuBackendOptions;
class OpOffload;
class ImatrixCollector;

// A metadata value given in place of the file's (llama.cpp's llama_model_kv_override).
using KVOverride = std::variant<bool, int64_t, double, std::string>;

struct ModelParams {
    int n_ctx = 4096;          // KV cells in all (split evenly between the sequence slots)
    int n_batch = 512;         // most tokens per forward pass
    int n_threads = 0;         // 0: all hardware threads
    int n_seq_max = 1;         // sequence slots (parallel sequences)
    int n_gpu_layers = 0;      // -1: all; N: output layer + last N-1 blocks on the GPU
    bool offload_kqv = true;   // KV cache of a GPU layer on the GPU
    bool op_offload = true;    // large CPU-layer batches may run their matmuls on the GPU
    QType type_k = QType::F16;
    QType type_v = QType::F16;
    bool kv_rotate = true;     // Hadamard-rotate q, k (and v) for a quantized K (V) cache
    // Sliding-window layers keep a cache of their own of n_swa + n_batch cells (a ring) unless
    // swa_full (then n_ctx cells, like the global layers; llama.cpp's swa_full).
    bool swa_full = false;
    // LoRA adapters (GGUF files of llama.cpp's convert_lora_to_gguf.py) and their scales, applied at
    // run time: W x + scale * alpha / rank * B (A x) for every matrix an adapter updates.
    std::vector<std::pair<std::string, float>> loras;
    RopeParams rope;           // rotary overrides (rope_freq_base, YaRN, ...; none by default)
    // Metadata values that replace (or add to) the file's before anything is read from it.
    std::vector<std::pair<std::string, KVOverride>> kv_overrides;
};

// One adapter's update of a matrix: y += b . (a . x), b already multiplied by the scale.
struct LoraTerm {
    WeightRef a;  // (rank, K), in the adapter file's type
    WeightRef b;  // (rows, rank) F32
    bool off = false;  // its adapter's scale is 0: the forward pass skips it
};

struct LayerWeights {
    const float * attn_norm = nullptr;  // (n_embd)
    WeightRef wq, wk, wv, wo;           // (q_dim, n_embd) (kv_dim, n_embd) (kv_dim, n_embd) (n_embd, q_dim)
    const float * attn_q_norm = nullptr;  // (head_dim) per-head query RMSNorm (qwen3), or null
    const float * attn_k_norm = nullptr;  // (head_dim) per-head key RMSNorm (qwen3), or null
    const float * ffn_norm = nullptr;   // (n_embd) (gpt-oss, seed_oss: post_attention_norm)
    const float * attn_norm_b = nullptr, * ffn_norm_b = nullptr;  // (n_embd) starcoder2's LayerNorm biases
    const float * attn_sinks = nullptr;  // (n_head) gpt-oss's sink logits, or null
    // gemma2/3: RMSNorm of the attention output and of the feed-forward output before each is
    // added to the residual stream; null otherwise.
    const float * attn_post_norm = nullptr;  // (n_embd)
    const float * ffn_post_norm = nullptr;   // (n_embd)
    // bitnet: RMSNorm of the attention output before W_o, of the gated activation before W_down;
    // and the scalars each matmul's output is multiplied by (the tensors <name>.scale, else 1).
    const float * attn_sub_norm = nullptr;  // (n_embd)
    const float * ffn_sub_norm = nullptr;   // (n_ff)
    float q_scale = 1.0f, k_scale = 1.0f, v_scale = 1.0f, o_scale = 1.0f;
    float gate_scale = 1.0f, up_scale = 1.0f, down_scale = 1.0f;
    // An encoder's LayerNorms (weight, bias) of the residual stream after the attention's sum and
    // after the feed-forward's (attn_output_norm, layer_output_norm); null otherwise.
    const float * attn_ln = nullptr, * attn_ln_b = nullptr;  // (n_embd) each
    const float * ffn_ln = nullptr, * ffn_ln_b = nullptr;    // (n_embd) each
    // (n_ff, n_embd) (n_ff, n_embd) (n_embd, n_ff); in a MoE block its shared expert's (n_ff_shexp
    // rows / columns), or empty without one; an encoder has no gate
    WeightRef w_gate, w_up, w_down;
    const float * ffn_gate_inp_shexp = nullptr;  // (n_embd) qwen2moe: the shared expert's gate, or null
    // Mixture-of-experts block (gate_inp.rows > 0): the router and the experts stacked, expert e's
    // rows at e * rows-per-expert (see expert_slice).
    WeightRef gate_inp;                 // (n_expert, n_embd)
    WeightRef gate_exps, up_exps;       // (n_expert * n_ff_exp, n_embd)
    WeightRef down_exps;                // (n_expert * n_embd, n_ff_exp)
    const float * exp_probs_b = nullptr;  // (n_expert) deepseek2's selection bias, or null
    // deepseek2's shared experts, every token's (ff_sh = n_ff_exp * n_expert_shared); empty: none
    // deepseek2's latent attention (mla.cpp; Config::mla), qk = head_dim_k_mla, vd = head_dim_v_mla,
    // nope = qk - n_rot: the queries by wq (n_head * qk, n_embd), or by wq_a (q_lora_rank, n_embd),
    // q_a_norm (q_lora_rank) and wq_b (n_head * qk, q_lora_rank); the latent and the rotary key
    // part by wkv_a (kv_lora_rank + n_rot, n_embd), the latent normed by kv_a_norm (kv_lora_rank);
    // per head h rows h * kv_lora_rank.. of wk_b (n_head * kv_lora_rank, nope), rows h * vd.. of
    // wv_b (n_head * vd, kv_lora_rank); older files: wkv_b (n_head * (nope + vd), kv_lora_rank).
    WeightRef wq_a, wq_b, wkv_a, wk_b, wv_b, wkv_b;
    const float * q_a_norm = nullptr;
    const float * kv_a_norm = nullptr;
    bool moe() const { return gate_inp.rows > 0; }
    // lfm2's convolution layer (in place of wq .. wo): in_proj's rows give B, C and x, the depthwise
    // kernel mixes the last conv_l_cache values of B * x per channel (oldest first), out_proj.
    WeightRef conv_in;                  // (3 n_embd, n_embd)
    const float * conv_kernel = nullptr;  // (n_embd, conv_l_cache)
    WeightRef conv_out;                 // (n_embd, n_embd)
    // qwen35's gated delta net (qwen35.cpp; cd = dn_conv_dim, vd = dn_v_dim, hv = dn_v_heads): q, k, v
    // before their convolution, the output gate z, beta's and the decay's inputs, the output; the
    // convolution kernel (oldest input first), dt_bias, -exp(A_log), the gated norm's weight.
    WeightRef dn_qkv, dn_z, dn_beta, dn_alpha, dn_out;  // (cd, n_embd) (vd, n_embd) (hv, n_embd) x2 (n_embd, vd)
    const float * dn_kernel = nullptr;  // (cd, conv_l_cache)
    const float * dn_dt = nullptr;      // (hv)
    const float * dn_a = nullptr;       // (hv)
    const float * dn_norm = nullptr;    // (dn_head_dim)
    // A Mamba-2 layer (mamba2.cpp; Config::mamba2): in_proj's rows z, xBC, dt; the convolution's
    // kernel (oldest tap first) and bias; dt's bias, A (-exp(A_log)), D; the gated norm; out_proj.
    WeightRef ssm_in;                   // (ssm_in_dim, n_embd)
    WeightRef ssm_out;                  // (n_embd, d_inner)
    const float * ssm_conv = nullptr;   // (conv_dim, d_conv)
    const float * ssm_conv_b = nullptr;  // (conv_dim), or null
    const float * ssm_dt_b = nullptr, * ssm_a = nullptr, * ssm_d = nullptr;  // (n_head) each
    const float * ssm_norm = nullptr;   // (d_inner) per group of d_inner / n_group
    // gemma4: the layer's output (residual stream included) times out_scale (layer_output_scale);
    // without wv the values are the keys' projection (wv.rows 0).
    float out_scale = 1.0f;
    // gemma4 E2B / E4B per-layer embedding: x += post_norm(proj(gelu(inp_gate x) * e_l)), e_l the
    // layer's slice of the per-layer inputs (Model::ple_).
    WeightRef ple_gate;                 // (n_embd_per_layer, n_embd) inp_gate
    WeightRef ple_proj;                 // (n_embd, n_embd_per_layer) proj
    const float * ple_post_norm = nullptr;  // (n_embd) post_norm
    // gemma4 26B-A4B mixture-of-experts block (gemma4.cpp): the router reads rmsnorm(x) times
    // router_w (ffn_gate_inp.scale / sqrt(n_embd)); expert e's output times down_exps_scale[e];
    // ffn_pre_norm_2 normalizes the experts' input, ffn_post_norm_1 / _2 the dense (shared) and
    // the experts' outputs. With ffn_gate_up_exps, gate_exps holds both (up_exps.rows 0).
    const float * router_w = nullptr;         // (n_embd)
    const float * down_exps_scale = nullptr;  // (n_expert), or null
    const float * ffn_pre_norm_2 = nullptr, * ffn_post_norm_1 = nullptr, * ffn_post_norm_2 = nullptr;  // (n_embd)
};

// Rows [r0, r0 + n) of a matrix (a part of a fused tensor); expert e of a stacked expert matrix.
WeightRef row_slice(const WeightRef & w, int64_t r0, int64_t n);
WeightRef expert_slice(const WeightRef & w, int e, int n_expert);

struct Weights {
    WeightRef tok_embd;                 // (n_vocab, n_embd), always on the CPU
    std::vector<LayerWeights> layers;   // (n_layer)
    const float * output_norm = nullptr;  // (n_embd)
    const float * output_norm_b = nullptr;  // (n_embd) starcoder2's LayerNorm bias, or null
    WeightRef output;                   // (n_vocab, n_embd); the embedding when tied
    const float * rope_freqs = nullptr; // (n_rot / 2) llama3 frequency factors, or null
    // gemma4 E2B / E4B: per-layer token embeddings, the projection of the embedding to per-layer
    // inputs, and its norm (model/gemma4.cpp).
    WeightRef ple_tok_embd;             // (n_vocab, n_layer * n_embd_per_layer)
    WeightRef ple_model_proj;           // (n_layer * n_embd_per_layer, n_embd)
    const float * ple_proj_norm = nullptr;  // (n_embd_per_layer)
    // An encoder's input: position embeddings, token type 0's row, the LayerNorm after their sum
    // (no output layer or output norm).
    WeightRef pos_embd;                 // (n_ctx_train, n_embd)
    std::vector<float> type_row;        // (n_embd), or empty without token types
    const float * embd_norm = nullptr, * embd_norm_b = nullptr;  // (n_embd) each
    // A reranker's classification head (llama.cpp's rank pooling): scores = cls_out(tanh(cls(x)))
    // of a text's first token, with their biases; cls may be absent (cls_out alone).
    WeightRef cls;                      // (n_embd, n_embd)
    WeightRef cls_out;                  // (n_cls_out, n_embd)
    // gemma-embedding: sentence-transformers' projections of a pooled embedding, applied by the
    // Python side (splitllm.model_embed) after pooling; either may be absent (rows 0).
    WeightRef dense_2;                  // (dense_2_out, n_embd), with an optional bias
    WeightRef dense_3;                  // (n_embd, dense_3_in)
    // An encoder's weights outside its blocks, beside the token embedding: its input's, a
    // reranker's head, gemma-embedding's output norm and projections.
    size_t input_bytes() const;
};

// Where one part of the model lives, for users to print.
struct Placement {
    std::string name;        // "token_embd", "blk.3", "output"
    std::string device;      // "CPU", "CUDA0"
    size_t weight_bytes = 0;
    size_t kv_bytes = 0;
    std::string kv_device;   // where the KV cache is ("" if the part has none)
};

// Bytes on one device, by kind.
struct DeviceMemory {
    std::string device;      // "CPU", "CUDA0"
    size_t weights = 0;      // weight bytes resident there (mapped file pages on the CPU)
    size_t kv = 0;           // KV cache
    size_t buffers = 0;      // activations, scratch, staging
    size_t overhead = 0;     // fixed costs (the GGUF header pages on the CPU)
    size_t total() const { return weights + kv + buffers + overhead; }
};

// What a Model with given parameters holds, per device and per part, worked out from the GGUF
// header alone by the same placement code that loads it (the memory planner uses this).
struct MemoryEstimate {
    int n_layer = 0;
    int n_gpu_layers = 0;             // parts on the GPU as placed (0 without a usable GPU)
    size_t kv_bytes_per_token = 0;    // keys and values of the layers whose cache grows with the context
    int swa_cells = 0;                // cells of the sliding-window layers' rings (0: none)
    std::vector<DeviceMemory> devices;  // CPU first
    std::vector<Placement> parts;
    std::string gpu_warning;          // why a requested GPU placement falls back to the CPU
    size_t tokenizer_entries = 0;     // tokens + merges of the vocabulary (the Python tokenizer's size)
};

// Floats of one thread's encoder attention buffers for texts of up to n_batch tokens (encoder.cpp);
// windowed: some layers attend within a window.
size_t encoder_attention_floats(int64_t n_batch, int head_dim, bool windowed);

class Model {
public:
    Model(const std::string & path, const ModelParams & params);

    // The memory a Model(path, params) would hold after running full batches; allocates nothing
    // and reads no tensor data. Throws CudaError where loading would (not enough GPU memory).
    static MemoryEstimate estimate(const std::string & path, const ModelParams & params);
    // What this model holds now, by the same accounting.
    std::vector<DeviceMemory> memory() const;
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const Config & config() const { return cfg_; }
    const GGUFFile & file() const { return *file_; }
    const ModelParams & params() const { return params_; }
    int n_vocab() const { return cfg_.n_vocab; }
    int n_embd() const { return cfg_.n_embd; }
    int slot_ctx() const { return kv_.slot_ctx; }
    // The cache geometry of layer l (a sliding-window layer's may be a ring).
    const KVLayout & layer_kv(int l) const { return kv_layer_[size_t(l)]; }
    // Bytes of layer l's own KV cache (0 for a layer reading another's).
    size_t layer_kv_bytes(int l) const;
    // Cells of the sliding-window layers' rings (0: no ring).
    int swa_cells() const { return kv_swa_.ring ? kv_swa_.slot_ctx : 0; }
    const std::vector<Placement> & placement() const { return placement_; }
    const std::vector<std::string> & warnings() const { return warnings_; }
    // The LoRA adapters' scales (one per ModelParams::loras entry), changeable between decodes
    // (llama_set_adapter_lora): B is filled again from the adapter file, re-uploaded where a GPU
    // holds it; scale 0 skips the adapter. K/V computed under other scales stay in the cache: the
    // caller decides what is still valid.
    const std::vector<float> & lora_scales() const { return lora_scales_; }
    void set_lora_scales(const std::vector<float> & scales);

    // Evaluates n tokens (any number; run in batches of n_batch). Token i of sequence slot
    // slot[i] is at position pos[i]; its K/V go to that cell and it attends to cells [0, pos[i]]
    // of its slot. For each i with want_logits[i] (all if null), a row of n_vocab logits is written
    // to out, in order; with embeddings, a row of n_embd values instead: the final hidden state
    // after the output norm (what the output layer would multiply; llama.cpp's embeddings).
    // An encoder (Config::encoder) gives embeddings only (the last layer's output), reads at most
    // n_batch tokens per call, and each slot's tokens in a call are one whole text at positions
    // 0, 1, ..., every token attending to all of them; slots [0, n_batch) tell texts apart (no
    // cache: n_seq_max does not limit them) and positions stop at n_ctx.
    // With classify (an encoder with a classification head, embeddings on), each wanted row is
    // that token's scores (n_cls_out: the head applied to it) instead: ask for each text's first.
    void decode(const int32_t * tokens, const int32_t * pos, const int32_t * slot, const uint8_t * want_logits,
                int n, float * out, bool embeddings = false, bool classify = false);
    int n_cls_out() const { return int(w_.cls_out.rows); }  // 0: no classification head
    // (a decoder's head, cls.output: a causal reranker scoring its last token, as Qwen3-Reranker)

    // The K/V of cells [0, n) of a sequence slot, every layer (K of each head, then V of each
    // head, layer by layer), as bytes in the cache types: to save a prompt's state and put it
    // back (in this or another slot of a model with the same cache geometry) without reading it
    // again. Caches on the GPU are copied through the host.
    //
    // With rings, a state holds the rings' cells of the last min(n, swa_cells) positions (after
    // an 8-byte count of those still held, which kv_write puts back as all a ring holds).
    // A recurrent model's (lfm2) ends with its convolution states (after an 8-byte count of the
    // positions they follow: n, or -1 when the slot's states are not those of its first n).
    size_t kv_state_bytes(int n) const;
    void kv_read(int slot, int n, uint8_t * dst) const;
    void kv_write(int slot, int n, const uint8_t * src);

    // The longest prefix of the n cached positions of a slot that evaluation may continue from:
    // n, or 0 when the rings no longer hold the last positions the next token would attend to
    // (written over by positions past n since). Without rings, n. A recurrent model (lfm2) can
    // continue only where its convolution states are: n if they follow exactly n positions, else 0
    // (llama.cpp's recurrent cache, which cannot be cut back either).
    int kv_reusable(int slot, int n) const;

    // Tokens evaluated since load (for tests of prefix reuse) and forward passes run.
    int64_t n_eval() const { return n_eval_; }
    int64_t n_forward() const { return n_forward_; }
    // Layer evaluations whose matmuls ran on the GPU by op offload.
    int64_t n_op_offload() const { return n_op_offload_; }

    // Importance-matrix collection (imatrix.cpp; llama-imatrix's statistics): after start, every
    // decode adds the squared inputs of the blocks' matmuls (and of output.weight with
    // process_output) to a collector keyed by the weights' GGUF names; stop hands it over and
    // turns collection off. Off, the forward pass only tests a null pointer.
    void imatrix_start(bool process_output);
    std::unique_ptr<ImatrixCollector> imatrix_stop();
    bool imatrix_active() const { return imx_ != nullptr; }

private:
    struct DryRun {};
    Model(const std::string & path, const ModelParams & params, DryRun);

    // Where each part goes and what the GPU will hold, decided before anything is allocated.
    struct PlacementPlan {
        bool use_gpu = false;
        int n_gpu = 0;            // parts on the GPU: the output layer, then blocks from the last
        int first_gpu = 0;        // first block on the GPU (n_layer: none)
        bool output_gpu = false;
        bool offload = false;     // op offload of the CPU blocks' large batches
        size_t gpu_weights = 0, gpu_kv = 0, gpu_buffers = 0;
        std::string warning;
    };
    PlacementPlan plan_placement() const;
    void setup_kv();
    CpuBackendOptions cpu_options() const;
    size_t activation_bytes(bool cpu) const;  // one backend's Scratch (the CPU's holds the experts' too)

    void load_weights();
    void load_loras();  // lora.cpp
    void place_layers();
    // placement.cpp: the GPU side of place_layers (devices per layer, memory check, uploads).
    void place_on_devices();
    void describe_placement();
    size_t output_bytes(bool shared) const;  // the output layer's (its matrix unless shared with the embedding)
    template <class Move>
    void move_gpu_tensors(int first_gpu, bool output_gpu, Move && mv);
    void allocate_state();
    void forward(const int32_t * tokens, const int32_t * pos, const int32_t * slot, const uint8_t * want, int n,
                 float * out, bool embeddings, bool classify);
    // out (n, n_cls_out) = the classification head on rows (n, n_embd) in host memory (encoder.cpp)
    void classify_rows(const float * rows, int n, float * out);
    // encoder.cpp: an encoder's weights and forward pass (on the CPU; each slot's tokens in the
    // batch are one whole text, attending to each other).
    void load_encoder_weights();
    void load_cls_out();  // a reranker's classification head (cls.output, cls), if the file has one
    void load_dense();    // gemma-embedding's dense projections, if the file has them
    int encoder_slots() const { return std::max(params_.n_batch, params_.n_seq_max); }
    // A batch's texts: the tokens of slot s are enc_order_[enc_start_[s] .. enc_start_[s + 1]).
    std::vector<int32_t> enc_start_;  // (encoder_slots + 1)
    std::vector<int32_t> enc_order_;  // (n_batch)
    std::vector<int32_t> enc_texts_;  // the slots with tokens in the batch (<= n_batch)
    struct EncTask {
        int32_t text;  // index in enc_texts_
        int tile0, tile1;  // the tiles of queries of the task (encoder.cpp)
    };
    std::vector<EncTask> enc_tasks_;  // (<= the tiles of a batch: n_batch)
    std::vector<float> enc_work_;     // (threads, enc_work_floats_) attention buffers (encoder.cpp)
    size_t enc_work_floats_ = 0;
    void check_encoder_batch(const int32_t * pos, const int32_t * slot, int n, bool embeddings, bool classify) const;
    void forward_encoder(const int32_t * tokens, const int32_t * pos, const int32_t * slot, const uint8_t * want,
                         int n, float * out, bool classify);

    struct Scratch {  // activations of one backend, (n_batch, width) each
        float * x = nullptr;    // residual stream (n_embd)
        float * h = nullptr;    // normed input (n_embd)
        float * q = nullptr;    // (q_dim)
        float * k = nullptr;    // (kv_dim)
        float * v = nullptr;    // (kv_dim)
        float * att = nullptr;  // attention output (q_dim)
        float * ff = nullptr;   // swiglu output (ff_max)
        float * moe_in = nullptr;   // MoE: the tokens routed to one expert, gathered (n_embd)
        float * moe_out = nullptr;  // MoE: that expert's output for them (n_embd)
        float * router = nullptr;   // MoE: router logits (n_expert)
        float * lora = nullptr;     // LoRA: a . x of one matrix (lora_rank_)
        float * up = nullptr;       // LoRA on gate/up: the up projection beside the gate's (ff_max)
        float * mla = nullptr;      // deepseek2's latent attention's work (mla_floats)
    };
    // Which experts each token of a batch goes to, grouped by expert (sized once, at load).
    struct Routes {
        std::vector<float> probs;      // (n_expert) one token's router probabilities
        std::vector<int32_t> pick;     // (n_batch, n_expert_used) chosen experts
        std::vector<float> weight;     // (n_batch, n_expert_used) their mixing weights
        std::vector<int32_t> start;    // (n_expert + 1) offsets of each expert's list in order
        std::vector<int32_t> order;    // (n_batch * n_expert_used) entries t * n_expert_used + k, by expert
        std::vector<int32_t> idx;      // (n_expert) order: experts by probability
        std::vector<float> sel;        // (n_expert) one token's selection scores (biased, groups masked)
        std::vector<float> group;      // (n_expert) one token's group scores
        void reserve(size_t n_batch, int n_expert, int n_used);
    };

    ModelParams params_;
    std::unique_ptr<GGUFFile> file_;
    Config cfg_;
    Weights w_;
    KVLayout kv_;       // the global layers' cache
    KVLayout kv_swa_;   // the sliding-window layers' (kv_, or a ring)
    KVLayout kv_conv_;  // lfm2's convolution layers': none (no heads)
    // lfm2's convolution states: per convolution layer and slot the last conv_l_cache - 1 inputs
    // B * x of the convolution, oldest first (a Mamba-2 layer's: Config::state_floats); per slot the
    // positions they follow (-1: unknown).
    std::vector<float> conv_state_;  // (n_conv_layers, n_slots, conv_slot_floats)
    std::vector<int> conv_index_;    // (n_layer) a layer's index among the convolution layers, or -1
    std::vector<int> conv_pos_;      // (n_slots)
    size_t conv_slot_floats() const { return cfg_.state_floats(); }  // (a Mamba-2 layer's too)
    size_t conv_state_bytes() const {  // every slot's, on the CPU (counted with the KV cache)
        if (!cfg_.recurrent()) return 0;
        const auto n_conv = size_t(std::count(cfg_.conv_layers.begin(), cfg_.conv_layers.end(), 1));
        return sizeof(float) * n_conv * size_t(kv_.n_slots) * conv_slot_floats();
    }
    float * conv_state(int l, int slot) {
        return conv_state_.data() + (size_t(conv_index_[size_t(l)]) * kv_.n_slots + size_t(slot)) * conv_slot_floats();
    }
    std::vector<KVLayout> kv_layer_;  // (n_layer) each layer's: kv_ or kv_swa_ in its own head shape
    // Per slot, for rings: the highest position written since the slot restarted at position 0
    // (or was loaded), and the lowest one written since; a ring holds position p (<= high) if
    // p >= low and p > high - swa_cells (nothing written since took its cell).
    std::vector<int> ring_high_, ring_low_;
    // Checks that the rings hold what the tokens of a batch attend to; then records the positions.
    void check_rings(const int32_t * pos, const int32_t * slot, int n);
    void note_rings(const int32_t * pos, const int32_t * slot, int n);
    bool ring_holds(int slot, int pos) const;
    template <class F>
    void kv_runs(int slot, int n, int held, F && f) const;

    std::unique_ptr<CpuBackend> cpu_;
    std::vector<Backend *> layer_backend_;   // (n_layer)
    Backend * output_backend_ = nullptr;
    std::vector<std::pair<Backend *, Scratch>> scratch_;  // one per backend in use
    std::vector<void *> k_cache_, v_cache_;  // (n_layer) on the layer's backend
    enum class Kind { Weights, KV, Buffers };
    struct Owned {
        Backend * be;
        void * p;
        size_t bytes;
        Kind kind;
    };
    std::vector<Owned> owned_;  // allocations to free, and the memory accounting
    // Importance-matrix collection (null: off). The matmuls of a layer, and per layer and matmul the
    // weight it reads: its name, its K, its stacked matrices, its collector entry (-1: not yet).
    // (kImxShexpGate: qwen2moe's shared-expert gate; the experts' sites last: see imx_observe)
    enum ImxSite { kImxQ, kImxK, kImxV, kImxO, kImxGate, kImxUp, kImxDown, kImxRouter, kImxShexpGate, kImxGateExps,
                   kImxUpExps, kImxDownExps, kImxSites };
    struct ImxTarget {
        std::string name;  // "" when the matmul reads no weight of its own (a slice of a fused one)
        int64_t k = 0;
        int n_mat = 1;
        int entry = -1;
    };
    std::unique_ptr<ImatrixCollector> imx_;
    std::vector<std::array<ImxTarget, kImxSites>> imx_sites_;  // (n_layer)
    ImxTarget imx_output_;
    ImxTarget imx_target(const std::string & name, const WeightRef & w, int n_mat = 1) const;
    // Adds n rows of x (on backend be) entering a matmul of site (layer l) or the output layer
    // (l < 0); matrix mat of a stack of experts.
    void imx_observe(int l, int site, const float * x, int n, Backend * be, int mat = 0);
    std::unique_ptr<Backend> gpu_;           // CUDA0 / FAKEGPU0 when layers or op offload use one
    std::unique_ptr<OpOffload> offload_;     // large-batch matmuls of CPU layers on the GPU
    std::vector<Backend *> kv_backend_;      // (n_layer) where each layer's KV cache lives
    float * dev_logits_ = nullptr;           // (n_batch, n_vocab) on a non-CPU output backend
    int64_t n_op_offload_ = 0;
    float * host_x_ = nullptr;               // staging for transfers between backends

    std::vector<Placement> placement_;
    std::vector<std::string> warnings_;
    std::vector<uint8_t> want_all_;
    int64_t n_eval_ = 0;
    int64_t n_forward_ = 0;

    Scratch & scratch(Backend * be);
    void * alloc_on(Backend * be, size_t bytes, Kind kind = Kind::Buffers);
    // Attention of layer l on kvb (its KV cache's backend) when the layer runs elsewhere.
    void attention_via(Backend * kvb, int l, Scratch & s, int n, const AttnParams & ap);
    // y (n, n_embd) = the residual stream's norm of x with weight w: RMSNorm, or LayerNorm (cohere2;
    // starcoder2 plus its bias b, on the CPU).
    void norm(Backend * be, const float * x, const float * w, float * y, int n, const float * b = nullptr);
    // Layer l's mixer: x += attention(norm(x)) (or the layer's recurrent mixer: a gated delta net,
    // a Mamba-2 or short-convolution block; falcon-h1: both side by side); matmuls on mm.
    void mixer(Backend * be, Backend * mm, int l, Scratch & s, int n, const int32_t * pos, const int32_t * slot);
    // A GPU layer's mixer that has no GPU path (host_mixer): the stream down, mixer() on the CPU
    // (its weights and KV cache in host memory), the stream up.
    void mixer_on_host(Backend * be, int l, Scratch & s, int n, const int32_t * pos, const int32_t * slot);
    // Whether layer l's mixer runs on the CPU wherever the layer is: a recurrent mixer, and the
    // gated attention of qwen35 / qwen3next and falcon-h1's attention beside its Mamba-2.
    bool host_mixer(int l) const { return cfg_.delta_net || cfg_.parallel_ssm || cfg_.is_conv(l); }
    // The dense feed-forward of layer l (or a MoE block's shared expert): x += W_down . (f(W_gate hf) *
    // W_up hf), or an ungated act(W_up hf) (densevar.cpp); matmuls on mm (op offload), the rest on be.
    void ffn(Backend * be, Backend * mm, int l, const float * hf, Scratch & s, int n);
    // densevar.cpp: starcoder2's LayerNorm biases and feed-forward biases (required); s.ff (n,
    // n_ff) = act(W_up h + b) of an ungated feed-forward (apertus, arcee, starcoder2), on the CPU.
    void load_densevar_layer(const std::string & b, LayerWeights & L);
    void ungated_ffn(Backend * be, Backend * mm, int l, const float * h, Scratch & s, int n);
    // x += w . in, or with a post-norm x += rmsnorm(w . in) * post_norm (gemma2/3; through s.h);
    // with row_scale (n, host memory; a CPU layer) row t of w . in times row_scale[t]; w's output
    // times out_scale (bitnet's matmul scales).
    void add_output(Backend * be, Backend * mm, const WeightRef * w, const float * post_norm, const float * in,
                    Scratch & s, int n, const float * row_scale = nullptr, float out_scale = 1.0f);
    // encoder.cpp: s.att = attention of s.q over s.k, s.v within each text of the batch (within
    // half_window positions either side of a query if >= 0); one bert / nomic-bert layer, one
    // gemma-embedding layer, on s.x.
    void encoder_attention(Scratch & s, int half_window);
    void encoder_bert_layer(int l, Scratch & s, int n);
    void encoder_gemma_layer(int l, Scratch & s, int n);
    // conv.cpp: the checks of a batch against the states (a slot continues where its states are,
    // or starts over at position 0, which clears them), the positions recorded after it, and the
    // convolution block on s.h (x += out_proj(C * conv(B * x))), on the CPU.
    void check_conv(const int32_t * pos, const int32_t * slot, int n);
    void note_conv(const int32_t * pos, const int32_t * slot, int n);
    void conv_block(int l, Scratch & s, int n, const int32_t * slot);
    void load_conv_layer(const std::string & b, LayerWeights & L);
    // qwen35.cpp: a Qwen3.5 layer's attention or delta-net weights, and its token mixing on s.x
    // (x += gated attention or delta net of rmsnorm(x)), on the CPU; dn_work_'s floats per token.
    void load_qwen35_layer(int l, const std::string & b, LayerWeights & L);
    void qwen35_mixer(Backend * be, int l, Scratch & s, int n, const int32_t * slot);
    void qwen35_attention(Backend * be, int l, Scratch & s, int n);
    void delta_net(Backend * be, int l, Scratch & s, int n, const int32_t * slot);
    size_t qwen35_floats() const;
    std::vector<float> dn_work_;  // (n_batch, qwen35_floats())
    // mamba2.cpp: a Mamba-2 layer's weights, and the layer on s.h (x += out_proj(norm(y * silu(z))),
    // y the scan of conv(xBC)), on the CPU; its output before out_proj in ssm_y_ (n_batch, d_inner).
    void load_mamba2_layer(const std::string & b, LayerWeights & L);
    void mamba2_block(int l, Scratch & s, int n, const int32_t * slot);
    float * ssm_y_ = nullptr;  // (n_batch, d_inner) on the CPU
    // gemma4.cpp: a Gemma 4 model's block weights, its per-layer inputs of a batch (into ple_) and
    // one block on s.x (on the CPU).
    void load_gemma4_layers();
    void load_gemma4_experts(int l);
    void gemma4_inputs(const int32_t * tokens, const float * x, int n);
    void gemma4_layer(Backend * be, Backend * mm, int l, Scratch & s, int n);
    // x += post_norm(post_norm_1(W_down s.ff) + post_norm_2(experts(pre_norm_2(x)))) of a MoE block
    void gemma4_moe(Backend * be, Backend * mm, int l, Scratch & s, int n);
    // nemotron_h.cpp: its blocks' weights; an MLP layer, x += W_down relu(W_up rmsnorm(x))^2 (on the CPU;
    // nemotron_h_moe: the experts' mix first). relu_squared: v = relu(v)^2 for n values.
    void load_nemotron_h_layers();
    // deci.cpp: its blocks' weights (shapes per layer) and a block's pass (on the CPU).
    void load_deci_layers();
    void deci_layer(Backend * be, Backend * mm, int l, Scratch & s, int n);
    void nemotron_h_mlp(Backend * mm, int l, Scratch & s, int n);
    void relu_squared(float * v, int64_t n);
    // falcon_h1.cpp: the layer's normed input kept (in ssm_y_) while the attention runs, then its
    // Mamba-2 mixer on it, x += out_proj y.
    void falcon_h1_save_h(Scratch & s, int n);
    void falcon_h1_mamba2(int l, Scratch & s, int n, const int32_t * slot);
    std::vector<float> g4_router_w_;  // (n_layer, n_embd) each MoE block's router_w
    std::vector<float> g4_moe_;       // (3, n_batch, n_embd) a MoE block's dense output, input, experts' sum
    std::vector<float> ones_;  // (max head size) the weight of gemma4's value norm
    std::vector<float> ple_;   // (2, n_batch, n_layer * n_embd_per_layer) per-layer inputs of a batch, work
    // llama4.cpp: after the rotation, the L2 norms of a rotating layer's q / k heads, or the
    // temperature of a NoPE layer's queries (on the CPU).
    void llama4_qk(Backend * be, int l, Scratch & s, int n, const int32_t * pos);
    // moe.cpp: x += the mixture of the experts the router picks for each token of h (on the CPU),
    // and the shared experts' output if any. route: the picks and weights of n tokens' logits
    // (bias: deepseek2's selection bias, or null).
    // (mm: the experts' matmuls, op offload's for large batches)
    void moe_ffn(Backend * be, Backend * mm, const LayerWeights & L, Scratch & s, int n);
    // A GPU block's mixture of experts: its router, experts and a gated shared expert run on the
    // CPU (their weights stay in host memory: llama.cpp's --cpu-moe), adding to the stream s.x.
    void moe_ffn_host(Backend * be, const LayerWeights & L, Scratch & s, int n);
    // The CPU's s.router = the layer's router logits of x (n rows, on be: copied to the host first).
    void router_logits(Backend * be, int l, const float * x, int n);
    // x += the experts' mixture for the tokens of h as routes_ holds them (after route), f their activation.
    void run_experts(Backend * be, Backend * mm, const LayerWeights & L, Scratch & s, int n, Glu act);
    void route(const float * logits, int n, const float * bias);
    // qwen2moe: sigmoid(ffn_gate_inp_shexp . h) of each of the n tokens of s.h, in s.router.
    const float * shared_expert_gates(const LayerWeights & L, Scratch & s, int n);
    // mla.cpp: x += deepseek2's latent attention of layer l over h = rmsnorm(x) (on the CPU), and the
    // floats of its work buffer per token.
    void mla_attention(Backend * be, int l, Scratch & s, int n);
    void load_mla_layer(const std::string & b, LayerWeights & L);  // its weights (query path, latent, k_b / v_b)
    size_t mla_floats() const;
    Routes routes_;

    // LoRA adapters: the files (mapped), per updated matrix its terms (WeightRef::lora), the
    // scaled B matrices (host copies), the widest rank.
    std::vector<std::unique_ptr<GGUFFile>> lora_files_;
    std::vector<std::vector<LoraTerm>> lora_;
    struct LoraPair {  // one .lora_a / .lora_b pair of an adapter
        const GGUFTensor * b = nullptr;
        int adapter = 0;     // its index in ModelParams::loras
        double alpha = 0.0;  // adapter.lora.alpha (0: none)
        float scale = 1.0f;  // scale * alpha / rank (alpha 0: scale)
        int64_t rows = 0, rank = 0;
        int layer = -1;                                   // its block (-1: the output layer)
        bool attention = false;                           // of an attention matrix (else the feed-forward's)
        std::vector<std::tuple<int, int, int64_t>> uses;  // (lora_ index, term, first row of B)
        std::vector<float> host;                          // B times the scale, while the CPU needs it
    };
    std::vector<LoraPair> lora_pairs_;
    void build_lora_b();                                  // the scaled B copies (not for a plan)
    void fill_lora_b(LoraPair & pair, float adapter_scale, float * dst) const;  // B times the scale
    std::vector<float> lora_scales_;                      // per adapter, as set last
    void drop_uploaded_lora_b(int first_gpu, bool output_gpu);  // frees those uploaded to the GPU
    int lora_rank_ = 0;
    bool lora_ffn_ = false;  // some gate or up projection has an update (glu runs in two steps)
    // glu runs in two steps (gate and up into s.ff and s.up): LoRA updates of them, bitnet's sub-norms
    bool split_glu() const { return lora_ffn_ || cfg_.sub_norms; }
    int gpu_ff() const;
    // Appends block l's placement rows: on a GPU (dev), its device part, then what of its mixer
    // (blk.N.mixer) and its experts (blk.N.experts) stays in host memory (placement.cpp).
    void layer_parts(int l, const std::string & dev, const std::string & kv_dev, std::vector<Placement> & out) const;  // the widest feed-forward of any block a GPU could run (placement.cpp)
    // y_i += the LoRA updates of matrix w_i for input x (lora.cpp), on be with s.lora (rank-sized
    // work: on the layer's own backend even when its big matmuls go to the GPU by op offload).
    void apply_lora(Backend * be, const WeightRef * const * w, float * const * y, int n_w, const float * x,
                    Scratch & s, int n);
    // Whether some update of w is applied (an adapter of scale 0 is not: w runs as without it).
    bool lora_on(const WeightRef & w) const;
    // Bytes of the updates of a matrix (the adapter's A and the scaled B).
    size_t lora_bytes(const WeightRef & w) const;
};

}  // namespace sl
