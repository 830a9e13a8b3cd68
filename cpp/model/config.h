// Hyperparameters of a decoder-only transformer, read from GGUF metadata.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sl {

class GGUFFile;

// llama.cpp's rotary scaling types (llama_rope_scaling_type).
enum RopeScaling : int { kRopeUnspecified = -1, kRopeNone = 0, kRopeLinear = 1, kRopeYarn = 2, kRopeLongRope = 3 };

// Rotary settings a user may override at load time, llama-cpp-python's names (llama_context_params):
// a negative (or zero, for the base, scale and original context) value keeps the model's.
struct RopeParams {
    int scaling_type = kRopeUnspecified;
    float freq_base = 0.0f;     // rope_freq_base
    float freq_scale = 0.0f;    // rope_freq_scale (1 / the context extension factor)
    float ext_factor = -1.0f;   // yarn_ext_factor: YaRN's extrapolation mix (-1: 1 with YaRN, else 0)
    float attn_factor = -1.0f;  // yarn_attn_factor
    float beta_fast = -1.0f;    // yarn_beta_fast (model: 32)
    float beta_slow = -1.0f;    // yarn_beta_slow (model: 1)
    int orig_ctx = 0;           // yarn_orig_ctx: the context the model was trained at
};

enum class Arch {
    Llama, Qwen2, Qwen3, Qwen3Moe, Phi3, Gemma, Gemma2, Gemma3, GemmaEmbedding, Bert, NomicBert, SmolLM3, Granite, Olmo2,
    GptOss, Mistral3, Glm4, Exaone4, Ernie4_5, Cohere2, Qwen3VL, Qwen2Moe, Olmoe, GraniteMoe, DeepSeek2, Lfm2,
    Bitnet, Gemma4, SeedOss, Apertus, HunyuanDense, Arcee, Starcoder2, Glm4Moe, Ernie4_5Moe, Qwen3VLMoe,
    GraniteHybrid, NemotronH, Qwen35, Qwen35Moe, Llama4, Lfm2Moe, Dots1, BailingMoe2, HunyuanMoe, SmallThinker,
    Qwen3Next, MinimaxM2, PhiMoe, NemotronHMoe, FalconH1, CommandR, Exaone, InternLM2, Deci
};

// The feed-forward: gated (SwiGLU / GeGLU, Config::ffn_gelu), or W_down act(W_up h) with xIELU
// (apertus), ReLU squared (arcee) or tanh-approximated GELU (starcoder2) (config_densevar.cpp).
enum class FfnAct { Glu, Xielu, ReluSqr, Gelu };

// apertus's xIELU of one layer as llama.cpp's ggml_xielu holds it (softplus already applied):
// x > 0: alpha_p x^2 + beta x; else (expm1(min(x, eps)) - x) alpha_n + beta x.
struct XieluParams {
    float alpha_n = 0.0f, alpha_p = 0.0f, beta = 0.0f, eps = 0.0f;
};

// mistral3's query multiplier at position pos (llama.cpp's llm_graph_input_attn_temp):
// 1 + scale * ln(floor(pos / floor_scale) + 1).
inline float attn_temperature(int pos, float scale, int floor_scale) {
    return float(std::log(std::floor(double(pos) / floor_scale) + 1.0) * scale + 1.0);
}

// What sets an architecture apart, from config.cpp's table of them: bits of Config::traits.
enum ArchTrait : unsigned {
    kNeox = 1u << 0,          // NeoX rotation pairs (i, i + n_rot/2); else (2i, 2i + 1)
    kQkvBias = 1u << 1,       // q / k / v biases
    kQkNorm = 1u << 2,        // an RMSNorm of each query and key head before the rotation
    kFusedQkv = 1u << 3,      // attn_qkv (q; k; v rows) and ffn_up (gate; up rows)
    kExperts = 1u << 4,       // expert_count required
    kFfOptional = 1u << 5,    // feed_forward_length may be absent (no dense block then)
    kRoutedBlocks = 1u << 6,  // every block a mixture of experts: its router required
    kDenseLead = 1u << 7,     // leading_dense_block_count dense blocks, then routed ones
    kSelBias = 1u << 8,       // the router's selection bias (exp_probs_b) required
    kNoWoBias = 1u << 9,      // no attn_output.bias read (llama.cpp's graph has none)
    kFfnNormPost = 1u << 10,  // the feed-forward's norm named post_attention_norm
    kNextN = 1u << 11,        // block_count counts MTP / NextN layers, neither loaded nor run
    kAllRouted = kExperts | kFfOptional | kRoutedBlocks,  // experts in every block, no dense one
};

struct Config {
    Arch arch = Arch::Llama;
    unsigned traits = 0;        // ArchTrait bits
    bool has(unsigned trait) const { return (traits & trait) != 0; }
    std::string arch_name;      // "llama", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma", "gemma2", "gemma3",
                                // "gemma-embedding", "bert", "nomic-bert", "smollm3", "granite", "olmo2", "gpt-oss",
                                // "mistral3", "glm4", "exaone4", "ernie4_5", "cohere2", "qwen3vl", "lfm2"
                                // (config_dense.cpp)
                                // "qwen2moe", "olmoe", "granitemoe", "deepseek2", "bitnet", "gemma4",
                                // "seed_oss", "apertus", "hunyuan-dense", "arcee", "starcoder2", "glm4moe",
                                // "ernie4_5-moe", "qwen3vlmoe", "granitehybrid" (mamba2.cpp),
                                // "nemotron_h", "nemotron_h_moe" (nemotron_h.cpp), "falcon-h1" (falcon_h1.cpp)
                                // "qwen35", "qwen35moe", "qwen3next" (qwen35.cpp)
                                // "llama4" (llama4.cpp), "lfm2moe"
                                // "dots1", "bailingmoe2", "hunyuan-moe", "smallthinker" (config_moevar.cpp)
                                // "minimax-m2", "phimoe" (config_minimax.cpp)
                                // "command-r", "exaone", "internlm2" (command_r.cpp), "deci" (deci.cpp)
    int n_layer = 0;            // transformer blocks
    int n_embd = 0;             // model width
    int n_head = 0;             // query heads
    int n_head_kv = 0;          // key/value heads (GQA: n_head is a multiple of it)
    int head_dim = 0;           // n_embd / n_head unless attention.key_length says otherwise
    int head_dim_v = 0;         // of the values: head_dim unless attention.value_length says otherwise
    int n_ff = 0;               // feed-forward width (of a dense block)
    // Mixture of experts (0 experts: a dense model): a router picks n_expert_used of n_expert
    // feed-forward experts per token, each n_ff_exp wide, and mixes their outputs.
    int n_expert = 0;
    int n_expert_used = 0;
    int n_ff_exp = 0;
    bool expert_weights_norm = true;  // the chosen experts' weights rescaled to sum to 1
    // A shared expert beside the routed ones (qwen2moe, granitemoe with one; deepseek2: its
    // n_expert_shared experts as one of their stacked rows): a feed-forward of
    // this width every token goes through, its output added to theirs (0: none); with shexp_gate
    // (qwen2moe) times sigmoid(ffn_gate_inp_shexp . h).
    int n_ff_shexp = 0;
    bool shexp_gate = false;
    // gpt-oss (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT): the n_expert_used
    // largest router logits are chosen and their softmax weighs them; else (softmax) the softmax
    // over all experts.
    bool moe_softmax_weight = false;
    bool swiglu_oai = false;    // gpt-oss's clamped SwiGLU in the experts (vec::swiglu_oai_mul)
    bool experts_relu = false;  // smallthinker: ReGLU experts, relu(gate) * up
    bool router_on_input = false;  // smallthinker: the router reads the block's input x, before the attention
    bool attn_sinks = false;    // gpt-oss: a learned sink logit per query head (attn_sinks.weight)
    // deepseek2's router (llama.cpp's build_moe_ffn): sigmoid scores instead of the softmax, a
    // selection bias (exp_probs_b) added for choosing only, the choice restricted to the
    // n_group_used groups (of n_expert_groups) whose two best scores sum highest, the weights
    // times expert_weights_scale; n_expert_shared experts (ffn_*_shexp) that every token runs.
    bool moe_sigmoid = false;
    float expert_weights_scale = 1.0f;
    int n_expert_groups = 0;    // 0: no groups
    int n_group_used = 0;
    int n_expert_shared = 0;
    int n_layer_dense_lead = 0; // the first blocks have a dense feed-forward (deepseek2, glm4moe, ernie4_5-moe,
                                // dots1, bailingmoe2)
    // deepseek2's multi-head latent attention (llama.cpp's MLA form, mla.cpp): queries from h
    // (attn_q) or through a rank-q_lora_rank bottleneck (attn_q_a, its norm, attn_q_b); keys and
    // values from a normed kv_lora_rank latent and one rotary key part of n_rot shared by every
    // head. Per head the model's keys have head_dim_k_mla (no-rope dims + n_rot) dims, its values
    // head_dim_v_mla. The cache holds the latent and the rotary part of each token, one KV head of
    // head_dim = n_rot + kv_lora_rank, the value its last kv_lora_rank (head_dim_v); the queries
    // absorb attn_k_b and the output attn_v_b. Older files (mla false, attn_kv_b) cache each
    // head's decompressed key (head_dim) and value (head_dim_v).
    bool mla = false;
    bool deepseek_kv_b = false;  // the older attn_kv_b form (decompressed keys and values)
    int q_lora_rank = 0;        // 0: attn_q
    int kv_lora_rank = 0;
    int head_dim_k_mla = 0;
    int head_dim_v_mla = 0;
    int n_vocab = 0;
    int n_ctx_train = 0;        // context length the model was trained with
    float rms_eps = 1e-5f;      // the norms' epsilon (an encoder's LayerNorm's too)
    // An encoder (bert, nomic-bert, gemma-embedding): embeddings only, every token of a text
    // attending to all of it (no causal mask, no KV cache). bert and nomic-bert: token type 0's
    // embedding added, LayerNorm (with bias) after each residual sum; bert: learned position
    // embeddings (learned_pos), GELU feed-forward, biases; nomic-bert: rotary positions, SwiGLU
    // feed-forward, no biases. gemma-embedding (EmbeddingGemma): gemma3's layers (the settings below)
    // attending both ways, the sliding-window layers within |i - j| <= n_swa / 2 (llama.cpp's
    // LLAMA_SWA_TYPE_SYMMETRIC), then the output norm.
    bool encoder = false;
    bool learned_pos = false;
    // gemma-embedding: the widths of sentence-transformers' dense projections applied to a pooled
    // embedding (dense_2: n_embd -> dense_2_out, dense_3: dense_3_in -> n_embd); 0: not given.
    int dense_2_out = 0;
    int dense_3_in = 0;
    // Rotary embedding: theta_i = pos * freq_scale * base^(-2i / n_rot) / freq_factor_i
    int n_rot = 0;              // rotated dimensions of each head
    float rope_base = 10000.0f;
    float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
    float rope_attn_factor = 1.0f;  // rope.scaling.attn_factor (LongRoPE's magnitude correction)
    // Rotary scaling as llama.cpp's context computes it (apply_rope): the type, YaRN's ramp between
    // interpolated and extrapolated frequencies (ext_factor 0: plain linear scaling) over the
    // dimensions between its correction dims, and the magnitude cos and sin are scaled by.
    int rope_scaling = kRopeLinear;
    float yarn_ext_factor = 0.0f;
    float yarn_beta_fast = 32.0f;
    float yarn_beta_slow = 1.0f;
    int n_ctx_orig_yarn = 0;
    float rope_mscale = 1.0f;       // of the global layers
    float rope_mscale_swa = 1.0f;   // of the sliding-window layers
    int n_ctx_orig = 0;         // context of the short rotary factors (LongRoPE; rope_factors_short/long)
    int n_swa = 0;              // sliding attention window (0: none)
    // Layers that attend within the last n_swa positions only (gemma2/3: interleaved with global
    // ones); empty: none (phi3's window is in its metadata but not applied, as in llama.cpp).
    std::vector<uint8_t> swa_layers;
    float rope_base_swa = 10000.0f;     // rotary base and scale of the sliding-window layers
    float rope_freq_scale_swa = 1.0f;
    bool swa_rope_global = false;       // they rotate as the global layers (exaone4, cohere2)
    float yarn_beta_fast_train = 32.0f;  // the model's YaRN correction turns (rope.scaling.yarn_beta_*)
    float yarn_beta_slow_train = 1.0f;
    float rope_base_train = 10000.0f;   // the model's, before overrides
    float rope_freq_scale_train = 1.0f;
    int rope_scaling_train = kRopeLinear;
    bool rope_neox = false;     // NeoX layout pairs (i, i + n_rot/2); else (2i, 2i + 1)
    bool has_qkv_bias = false;
    bool has_qk_norm = false;   // RMSNorm of each query and key head before the rotation (qwen3)
    bool qk_norm_full = false;  // olmo2: of the whole query and key projections instead
    bool pre_norms = true;      // RMSNorm of the attention's and feed-forward's inputs (olmo2: none)
    // bitnet: RMSNorm of the attention output before W_o and of the gated activation before W_down
    // (attn_sub_norm, ffn_sub_norm), and optional scalar scales of each matmul's output.
    bool sub_norms = false;
    // Layers whose queries and keys are not rotated (smollm3: every fourth, "NoPE"); empty: none.
    std::vector<uint8_t> nope_layers;
    // granite: the attention and feed-forward outputs times residual_scale before they are added,
    // the logits divided by logit_scale (with embd_scale and attn_scale below).
    float residual_scale = 1.0f;
    float logit_scale = 1.0f;
    bool fused_qkv = false;     // attn_qkv (q; k; v rows) and ffn_up (gate; up rows) tensors (phi3)
    bool fused_gate_up = false; // ffn_up alone holds the gate rows, then the up rows (glm4)
    bool attn_qkv = false;      // attn_qkv alone holds q, k and v (bailingmoe2)
    // mistral3 (Llama 4's attention temperature): queries times 1 + attn_temp_scale *
    // ln(floor(pos / attn_temp_floor) + 1); 0: none.
    float attn_temp_scale = 0.0f;
    int attn_temp_floor = 1;
    // llama.cpp's rope_yarn_log_mul: rope.scaling.yarn_log_multiplier (deepseek2's over 0.1, its
    // converter's factor cancelled): YaRN's magnitude is mscale(1) / mscale(it)
    float yarn_log_mul = 0.0f;
    // cohere2: LayerNorm (mean removed, weight only) wherever the others RMS-norm, and the attention
    // and the feed-forward both read the one normed input (x += attn(h) + ffn(h)).
    bool layer_norm = false;
    bool parallel_ffn = false;
    // command-r (Command R+): a LayerNorm of each query and key head before the rotation, with a
    // weight vector per head (attn_q_norm: head_dim x n_head; model/command_r.cpp).
    bool qk_norm_heads = false;
    // Gemma: token embeddings times sqrt(n_embd), GeGLU feed-forward; gemma2/3 also RMS-norm the
    // attention and feed-forward outputs (post_attention_norm, post_ffw_norm) before adding them.
    float embd_scale = 1.0f;
    bool ffn_gelu = false;
    bool post_norms = false;
    float attn_scale = 0.0f;    // query-key scale; 0: 1 / sqrt(head_dim)
    float attn_softcap = 0.0f;  // attention scores s -> cap * tanh(s / cap) (gemma2); 0: none
    float final_softcap = 0.0f; // the same on the logits
    // lfm2 (LiquidAI LFM2): the layers whose attention.head_count_kv entry is 0 mix tokens by a gated
    // short convolution instead of attention (in_proj -> B, C, x; a depthwise causal convolution of
    // length conv_l_cache over B * x; C * conv; out_proj), keeping per sequence the last
    // conv_l_cache - 1 inputs of the convolution. Empty: no such layers.
    // (nemotron_h: the layers with neither key/value heads nor a feed-forward width; its other
    // layers are attention (n_ff_of 0) or a squared-ReLU MLP alone (n_head_kv_of 0))
    std::vector<uint8_t> conv_layers;
    int conv_l_cache = 0;       // shortconv.l_cache (qwen35: ssm.conv_kernel)
    // qwen35 (Qwen3.5, model/qwen35.cpp): the layers conv_layers flags are gated delta nets (linear
    // attention: a short convolution over q, k, v, then the gated delta rule with one state matrix
    // per value head); the attention layers' queries carry an output gate half.
    bool delta_net = false;
    int dn_k_heads = 0;         // ssm.group_count: query / key heads
    int dn_v_heads = 0;         // ssm.time_step_rank: value heads (a multiple of dn_k_heads)
    int dn_head_dim = 0;        // ssm.state_size: the head size of all three
    // qwen3next: value head j reads key head j / (dn_v_heads / dn_k_heads) (the value heads grouped by
    // key head, as Hugging Face's); qwen35's converter tiles them (key head j % dn_k_heads)
    bool dn_grouped = false;
    int dn_conv_dim() const { return (2 * dn_k_heads + dn_v_heads) * dn_head_dim; }  // q, k, v channels
    int dn_v_dim() const { return dn_v_heads * dn_head_dim; }
    // granitehybrid (model/mamba2.cpp): its layers of conv_layers (head_count_kv 0) are Mamba-2
    // mixers instead: in_proj to z (d_inner), xBC (x: d_inner, B and C: n_group * d_state each) and
    // dt (n_head); a depthwise causal convolution of ssm_d_conv taps over xBC with a bias, SiLU; the
    // selective scan per head (state (head_dim, d_state), decay exp(softplus(dt + dt_bias) A)), D skip;
    // y * silu(z) RMS-normed per group; out_proj. Per sequence: the last ssm_d_conv - 1 xBC inputs and
    // the scan's state. ssm_d_state 0: none.
    int ssm_d_conv = 0;         // ssm.conv_kernel
    int ssm_d_inner = 0;        // ssm.inner_size
    int ssm_d_state = 0;        // ssm.state_size
    int ssm_n_head = 0;         // ssm.time_step_rank
    int ssm_n_group = 0;        // ssm.group_count
    bool mamba2() const { return ssm_d_state > 0; }
    // falcon-h1 (model/falcon_h1.cpp): every layer of conv_layers attends too (a KV cache beside its
    // state), x += attn(h) + mamba2(h) of the same normed h
    bool parallel_ssm = false;
    // nemotron_h or nemotron_h_moe (its MLP layers mixtures of experts; model/nemotron_h.cpp)
    bool nemotron() const { return arch == Arch::NemotronH || arch == Arch::NemotronHMoe; }
    int ssm_head_dim() const { return ssm_d_inner / ssm_n_head; }
    int ssm_conv_dim() const { return ssm_d_inner + 2 * ssm_n_group * ssm_d_state; }  // xBC
    int ssm_in_dim() const { return ssm_d_inner + ssm_conv_dim() + ssm_n_head; }     // z, xBC, dt
    // Floats of one recurrent layer's state per sequence: lfm2's last conv_l_cache - 1 inputs, or a
    // Mamba-2 layer's convolution inputs (d_conv - 1, conv_dim) then its scan state (d_inner, d_state).
    // A delta net's (qwen35): its convolution inputs, then its state matrices (Config::delta_net).
    size_t state_floats() const {
        if (delta_net)
            return size_t(conv_l_cache - 1) * size_t(dn_conv_dim()) + size_t(dn_v_dim()) * size_t(dn_head_dim);
        if (mamba2())
            return size_t(ssm_d_conv - 1) * size_t(ssm_conv_dim()) + size_t(ssm_d_inner) * size_t(ssm_d_state);
        return size_t(conv_l_cache - 1) * size_t(n_embd);
    }
    // Gemma 4 (model/gemma4.cpp): attention geometry per layer. n_head, n_head_kv, n_ff are then the
    // largest of any layer (buffers are sized by them) and head_dim, n_rot the global layers'.
    int head_dim_swa = 0;       // the sliding-window layers' head size (0: head_dim)
    int n_rot_swa = 0;          // their rotated dimensions (0: n_rot)
    std::vector<int> n_head_arr, n_head_kv_arr, n_ff_arr;  // (n_layer) per layer; empty: the same for all
    // Layers [n_layer_kv, n_layer) keep no KV cache of their own: each reads that of the last
    // earlier layer of its kind (sliding or global; gemma4's shared_kv_layers). 0: every layer has one.
    int n_layer_kv = 0;
    int n_embd_per_layer = 0;   // gemma4 E2B / E4B: width of each layer's token embedding (0: none)
    // seed_oss, apertus, hunyuan-dense, arcee, starcoder2 (config_densevar.cpp): the feed-forward's
    // kind, apertus's xIELU per layer, hunyuan-dense's (and hunyuan-moe's) q/k norms after the
    // rotation instead of before, starcoder2's LayerNorms with a bias (attn_norm, ffn_norm,
    // output_norm .bias).
    FfnAct ffn_act = FfnAct::Glu;
    std::vector<XieluParams> xielu;  // (n_layer) apertus
    bool qk_norm_after_rope = false;
    bool norm_bias = false;
    // Llama 4 (model/llama4.cpp): block l has experts when (l + 1) % moe_layer_step == 0 (0: none),
    // a dense feed-forward otherwise; the chosen experts' router weights scale their input instead
    // of their output (moe_weight_input); the sliding layers attend within their chunk of n_swa
    // positions (swa_chunked: pos - pos % n_swa on); the rotated query and key heads are RMS-normed
    // without a weight (qk_l2_norm); the queries of the NoPE layers are multiplied by
    // 1 + nope_temp_scale * ln(floor((pos + 1) / attn_temp_floor) + 1) (0: not).
    int moe_layer_step = 0;
    bool moe_weight_input = false;
    bool swa_chunked = false;
    bool qk_l2_norm = false;
    float nope_temp_scale = 0.0f;

    int n_gqa() const { return n_head / n_head_kv; }
    // Widths of the queries, keys, values and attention outputs (the widest layer's with per-layer
    // geometry: gemma4).
    int q_dim() const { return n_head * max_head_dim(); }
    int kv_dim() const { return n_head_kv * max_head_dim(); }
    int v_dim() const { return n_head_kv * std::max(head_dim_v, head_dim_swa); }
    int att_dim() const { return n_head * std::max(head_dim_v, head_dim_swa); }  // attention output
    int max_head_dim() const { return std::max(head_dim, head_dim_swa); }
    // Layer l's head size, head counts, widths, rotated dimensions and feed-forward width.
    int head_dim_of(int l) const { return is_swa(l) && head_dim_swa > 0 ? head_dim_swa : head_dim; }
    int n_head_of(int l) const { return n_head_arr.empty() ? n_head : n_head_arr[size_t(l)]; }
    int n_head_kv_of(int l) const { return n_head_kv_arr.empty() ? n_head_kv : n_head_kv_arr[size_t(l)]; }
    int q_dim_of(int l) const { return n_head_of(l) * head_dim_of(l); }
    int kv_dim_of(int l) const { return n_head_kv_of(l) * head_dim_of(l); }
    int n_rot_of(bool swa) const { return swa && n_rot_swa > 0 ? n_rot_swa : n_rot; }
    int n_ff_of(int l) const { return n_ff_arr.empty() ? n_ff : n_ff_arr[size_t(l)]; }
    int max_gqa() const;        // the most query heads per key/value head of any layer
    // The layer whose KV cache layer l reads (itself unless it shares an earlier layer's).
    int kv_source(int l) const;
    // Lengths of the query and key norm vectors: a head's, or (olmo2) the whole projection's.
    int q_norm_len() const { return qk_norm_full || qk_norm_heads ? q_dim() : head_dim; }
    int k_norm_len() const { return qk_norm_full || qk_norm_heads ? kv_dim() : head_dim; }
    bool is_swa(int l) const { return !swa_layers.empty() && swa_layers[size_t(l)] != 0; }
    bool rotates(int l) const { return nope_layers.empty() || nope_layers[size_t(l)] == 0; }
    bool is_conv(int l) const { return !conv_layers.empty() && conv_layers[size_t(l)] != 0; }
    bool recurrent() const { return !conv_layers.empty(); }  // a per-sequence state beside the KV cache
    // llama4: whether block l has experts (every moe_layer_step-th)
    bool moe_step_layer(int l) const { return moe_layer_step > 0 && (l + 1) % moe_layer_step == 0; }
    // Inverse frequency i of the rotation (of the sliding-window layers with swa), before any
    // frequency factors: freq_scale * base^(-2i / n_rot), or with YaRN base^(-2i / n_rot) times
    // freq_scale (1 - r) + r, r = ext_factor * ramp_i.
    double inv_freq(int i, bool swa) const;
    float rope_magnitude(bool swa) const { return swa ? rope_mscale_swa : rope_mscale; }
    // Applies the user's overrides and derives the YaRN terms and magnitudes (llama_context's
    // cparams); from_gguf calls it with none. Throws sl::Error for a bad value.
    void apply_rope(const RopeParams & p);
    // Widest feed-forward activation (lfm2's in_proj output, 3 n_embd, or a Mamba-2 layer's, which
    // share its buffer; gemma4's per-layer input gate).
    int ff_max() const {
        const int conv = recurrent() ? (mamba2() ? ssm_in_dim() : 3 * n_embd) : 0;
        return std::max({n_ff, n_ff_exp, n_ff_shexp, conv, n_embd_per_layer});
    }
    // The widest matmul input among those: a Mamba-2 layer's out_proj reads d_inner (its wider in_proj
    // output, ssm_in_dim, need not be a multiple of any block size, and no matmul reads it).
    int ff_k_max() const {
        return mamba2() ? std::max({n_ff, n_ff_exp, n_ff_shexp, ssm_d_inner, n_embd_per_layer}) : ff_max();
    }

    // The metadata keys (with their values) that tensor shapes are checked against, for errors.
    std::string shape_keys() const;

    // Reads and checks the hyperparameters; throws GGUFError naming the file and key.
    static Config from_gguf(const GGUFFile & f);
    // The settings of mistral3, glm4, exaone4, ernie4_5, cohere2, qwen3vl (config_dense.cpp).
    void read_dense(const GGUFFile & f);
    // Those of command-r, exaone, internlm2 (model/command_r.cpp).
    void read_llamalike(const GGUFFile & f);
    // Those of seed_oss, apertus, hunyuan-dense, arcee, starcoder2 (config_densevar.cpp).
    void read_dense_variant(const GGUFFile & f);
    // The Mamba-2 layers' sizes (granitehybrid; model/mamba2.cpp).
    void read_mamba2(const GGUFFile & f);
    // nemotron_h's layer kinds and widths (model/nemotron_h.cpp).
    void read_nemotron_h(const GGUFFile & f);
    // The settings of the MoE variants dots1, bailingmoe2, hunyuan-moe, smallthinker (config_moevar.cpp).
    void read_moe_variants(const GGUFFile & f);
    void read_nemotron_h_experts(const GGUFFile & f);  // (nemotron_h_moe's)
    // falcon-h1's: every layer recurrent and attending (model/falcon_h1.cpp).
    void read_falcon_h1(const GGUFFile & f);
    // deci's head counts and feed-forward widths per layer, 0 where a layer has none (model/deci.cpp);
    // check_deci: its head sizes, once read.
    void read_deci(const GGUFFile & f);
    void check_deci(const GGUFFile & f) const;
};

}  // namespace sl
