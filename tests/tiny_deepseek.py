"""Tiny random DeepSeek-V2 / V3 models (gguf arch deepseek2) written as llama.cpp's converter writes
them, and a numpy float64 forward pass written from DeepSeek's published modeling code
(modeling_deepseek.py: DeepseekV2Attention in its plain, decompressed form, DeepseekV2MoE / MoEGate,
DeepseekV2YarnRotaryEmbedding), independent of splitllm's engine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tiny_model import RandomInit, rope, write_byte_vocab, write_tensors


@dataclass
class DeepSeekConfig:
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_vocab: int = 320
    q_lora_rank: int = 0           # 0: q_proj (V2-Lite)
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    n_ff: int = 96                 # intermediate_size (the dense blocks)
    first_k_dense_replace: int = 1
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 32
    n_shared_experts: int = 2
    scoring_func: str = "softmax"  # or "sigmoid" (V3, with e_score_correction_bias)
    score_bias: bool = False
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    rope_base: float = 10000.0
    rms_eps: float = 1e-6
    n_ctx_train: int = 4096
    # DeepSeek's yarn settings: factor, original_max_position_embeddings, mscale, mscale_all_dim
    rope_scaling: dict[str, Any] | None = None
    mla: bool = True               # attn_k_b / attn_v_b (the current converter); else attn_kv_b
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


def v2(**kw: Any) -> DeepSeekConfig:
    """DeepSeek-V2(-Lite)-style: softmax router, no groups, shared experts."""
    return DeepSeekConfig(**kw)


def v3(**kw: Any) -> DeepSeekConfig:
    """DeepSeek-V3-style: q lora, sigmoid scores with a selection bias, group-limited routing,
    normalized and scaled weights, one shared expert."""
    base = dict(q_lora_rank=32, scoring_func="sigmoid", score_bias=True, n_group=4, topk_group=2,
                norm_topk_prob=True, routed_scaling_factor=2.5, n_shared_experts=1, num_experts_per_tok=3,
                seed=1)
    return DeepSeekConfig(**{**base, **kw})


def make_weights(cfg: DeepSeekConfig) -> dict[str, np.ndarray]:
    """Random weights under their GGUF names, float64 (kv_b_proj split as the converter does)."""
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    E, H, r, rot = cfg.n_embd, cfg.n_head, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    nope, vd, qk = cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.qk_head_dim

    w = {"token_embd.weight": rng.normal(0.0, 1.0, (cfg.n_vocab, E)), "output_norm.weight": norm(E),
         "output.weight": mat(cfg.n_vocab, E)}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(E)
        if cfg.q_lora_rank:
            w[b + "attn_q_a.weight"] = mat(cfg.q_lora_rank, E)
            w[b + "attn_q_a_norm.weight"] = norm(cfg.q_lora_rank)
            w[b + "attn_q_b.weight"] = mat(H * qk, cfg.q_lora_rank)
        else:
            w[b + "attn_q.weight"] = mat(H * qk, E)
        w[b + "attn_kv_a_mqa.weight"] = mat(r + rot, E)
        w[b + "attn_kv_a_norm.weight"] = norm(r)
        kv_b = mat(H * (nope + vd), r).reshape(H, nope + vd, r)  # kv_b_proj: per head [k_nope; v] rows
        if cfg.mla:  # k_b transposed (H, r, nope), v_b (H, vd, r)
            w[b + "attn_k_b.weight"] = kv_b[:, :nope].transpose(0, 2, 1).copy()
            w[b + "attn_v_b.weight"] = kv_b[:, nope:].copy()
        else:
            w[b + "attn_kv_b.weight"] = kv_b.reshape(H * (nope + vd), r)
        w[b + "attn_output.weight"] = mat(E, H * vd)
        w[b + "ffn_norm.weight"] = norm(E)
        if i < cfg.first_k_dense_replace:
            w |= init.dense_ffn(b, E, cfg.n_ff)
        else:
            ff = cfg.moe_intermediate_size
            w |= init.routed_ffn(b, E, cfg.n_routed_experts, ff, bias=0.2 * cfg.score_bias,
                                    ff_shared=ff * cfg.n_shared_experts)  # fmt: skip
    return w


def write_gguf(
    cfg: DeepSeekConfig, weights: dict[str, np.ndarray], path: Path, *, weight_type: str = "F32"
) -> dict[str, np.ndarray]:
    """The metadata of convert_hf_to_gguf.py's DeepseekV2Model (num_key_value_heads 1, key / value
    lengths of the latent, the MLA lengths), or an older file's (attn_kv_b, per-head lengths);
    returns the weights as the file holds them (float64)."""
    wr = gguf.GGUFWriter(str(path), "deepseek2")
    wr.add_name("tiny-deepseek2")
    wr.add_block_count(cfg.n_layer)
    wr.add_context_length(cfg.n_ctx_train)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_rope_freq_base(cfg.rope_base)
    wr.add_layer_norm_rms_eps(cfg.rms_eps)
    wr.add_expert_used_count(cfg.num_experts_per_tok)
    if cfg.n_group > 1:
        wr.add_expert_group_count(cfg.n_group)
        wr.add_expert_group_used_count(cfg.topk_group)
    wr.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if cfg.scoring_func == "sigmoid"
                              else gguf.ExpertGatingFuncType.SOFTMAX)
    wr.add_leading_dense_block_count(cfg.first_k_dense_replace)
    wr.add_vocab_size(cfg.n_vocab)
    wr.add_q_lora_rank(cfg.q_lora_rank)  # (0 written: llama.cpp needs the key unless a "lite" depth)
    wr.add_kv_lora_rank(cfg.kv_lora_rank)
    if cfg.mla:
        wr.add_head_count_kv(1)
        wr.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        wr.add_value_length(cfg.kv_lora_rank)
        wr.add_key_length_mla(cfg.qk_head_dim)
        wr.add_value_length_mla(cfg.v_head_dim)
    else:
        wr.add_head_count_kv(cfg.n_head)
        wr.add_key_length(cfg.qk_head_dim)
        wr.add_value_length(cfg.v_head_dim)
    wr.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    wr.add_expert_count(cfg.n_routed_experts)
    wr.add_expert_shared_count(cfg.n_shared_experts)
    wr.add_expert_weights_scale(cfg.routed_scaling_factor)
    if cfg.norm_topk_prob:
        wr.add_expert_weights_norm(True)
    wr.add_rope_dimension_count(cfg.qk_rope_head_dim)
    if cfg.rope_scaling:
        rs = cfg.rope_scaling
        wr.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        wr.add_rope_scaling_factor(rs["factor"])
        wr.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        wr.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])
    for key, value in cfg.extra.items():
        wr.add_key_value(key, value, gguf.GGUFValueType.FLOAT32)
    write_byte_vocab(wr, cfg.n_vocab)
    held = write_tensors(wr, weights, weight_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def _yarn_get_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_params(cfg: DeepSeekConfig) -> tuple[np.ndarray, float, float]:
    """(inverse frequencies, cos/sin magnitude, softmax scale) as DeepseekV2RotaryEmbedding /
    DeepseekV2YarnRotaryEmbedding and DeepseekV2Attention set them (mscale taken equal to
    mscale_all_dim, as in DeepSeek's configs)."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_base
    freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    scale = cfg.qk_head_dim ** -0.5
    rs = cfg.rope_scaling
    if not rs:
        return freq, 1.0, scale
    factor, orig = rs["factor"], rs["original_max_position_embeddings"]

    def corr_dim(n_rot: float) -> float:  # yarn_find_correction_dim
        return dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr_dim(rs.get("beta_fast", 32))), 0)
    high = min(math.ceil(corr_dim(rs.get("beta_slow", 1))), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    mask = 1.0 - ramp  # inv_freq_mask
    inv = freq / factor * (1 - mask) + freq * mask
    m = _yarn_get_mscale(factor, rs["mscale_all_dim"])
    mag = _yarn_get_mscale(factor, rs.get("mscale", rs["mscale_all_dim"])) / m
    return inv, mag, scale * m * m


def moe_block(cfg: DeepSeekConfig, w: dict[str, np.ndarray], b: str, h: np.ndarray) -> np.ndarray:
    """DeepseekV2MoE with MoEGate (V2's greedy top-k over softmax scores, or V3's noaux_tc: sigmoid
    scores, the correction bias for choosing, group-limited by each group's two best scores), then
    the shared experts. The weights are scaled by routed_scaling_factor after any normalization, as
    V3's gate does (V2's scales only weights it does not normalize; its configs never do both)."""
    z = h @ w[b + "ffn_gate_inp.weight"].T
    if cfg.scoring_func == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-z))
    else:
        scores = np.exp(z - z.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
    choice = scores + w[b + "exp_probs_b.bias"] if cfg.score_bias else scores.copy()
    k, n_exp = cfg.num_experts_per_tok, cfg.n_routed_experts

    def expert(t: int, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
        g, u = gate @ h[t], up @ h[t]
        return down @ (g / (1 + np.exp(-g)) * u)

    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        c = choice[t].copy()
        if cfg.n_group > 1:
            groups = c.reshape(cfg.n_group, -1)
            group_scores = np.sort(groups, axis=-1)[:, -2:].sum(axis=-1)
            keep = np.argsort(-group_scores, kind="stable")[: cfg.topk_group]
            mask = np.full(cfg.n_group, True)
            mask[keep] = False
            groups[mask] = -np.inf
            c = groups.reshape(n_exp)
        top = np.argsort(-c, kind="stable")[:k]
        weight = scores[t, top]
        if cfg.norm_topk_prob:
            weight = weight / weight.sum()
        weight = weight * cfg.routed_scaling_factor
        for e, wt in zip(top, weight, strict=True):
            out[t] += wt * expert(t, w[b + "ffn_gate_exps.weight"][e], w[b + "ffn_up_exps.weight"][e],
                                  w[b + "ffn_down_exps.weight"][e])
        if b + "ffn_gate_shexp.weight" in w:  # (ERNIE-4.5 may have none: tiny_ernie_moe)
            out[t] += expert(t, w[b + "ffn_gate_shexp.weight"], w[b + "ffn_up_shexp.weight"],
                             w[b + "ffn_down_shexp.weight"])
    return out


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def reference_logits(cfg: DeepSeekConfig, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab). Attention in
    DeepseekV2Attention's decompressed form: per head the key [W_kb,h c; rope(k_pe)] and value
    W_vb,h c of the normed latent c. A float16 cache is modelled as the engines keep it: the latent
    and the rotated key part rounded (MLA files; llama.cpp caches those), or each head's key and
    value (attn_kv_b files)."""
    H, r, rot = cfg.n_head, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    nope, vd, qk = cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.qk_head_dim
    inv, mag, scale = rope_params(cfg)
    n = len(tokens)
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        if cfg.q_lora_rank:
            q = _rms(h @ w[b + "attn_q_a.weight"].T, w[b + "attn_q_a_norm.weight"], cfg.rms_eps)
            q = q @ w[b + "attn_q_b.weight"].T
        else:
            q = h @ w[b + "attn_q.weight"].T
        q = q.reshape(n, H, qk)
        ckv = h @ w[b + "attn_kv_a_mqa.weight"].T
        c = _rms(ckv[:, :r], w[b + "attn_kv_a_norm.weight"], cfg.rms_eps)
        k_pe = rope(ckv[:, None, r:], pos, inv, False, mag)  # (n, 1, rot)
        q_pe = rope(q[:, :, nope:], pos, inv, False, mag)
        if cfg.mla:
            c, k_pe = _f16(c), _f16(k_pe)
            k_nope = np.einsum("hrn,tr->thn", w[b + "attn_k_b.weight"], c)
            v = np.einsum("hvr,tr->thv", w[b + "attn_v_b.weight"], c)
        else:
            kv = (c @ w[b + "attn_kv_b.weight"].T).reshape(n, H, nope + vd)
            k_nope, v = _f16(kv[:, :, :nope]), _f16(kv[:, :, nope:])
            k_pe = _f16(k_pe)
        k = np.concatenate([k_nope, np.broadcast_to(k_pe, (n, H, rot))], axis=-1)
        qf = np.concatenate([q[:, :, :nope], q_pe], axis=-1)
        s = np.einsum("thd,uhd->htu", qf, k) * scale
        s = np.where(causal[None], s, -np.inf)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        att = np.einsum("htu,uhv->thv", p, v).reshape(n, H * vd)
        x = x + att @ w[b + "attn_output.weight"].T
        h = _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps)
        if i < cfg.first_k_dense_replace:
            g, u = h @ w[b + "ffn_gate.weight"].T, h @ w[b + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ w[b + "ffn_down.weight"].T
        else:
            x = x + moe_block(cfg, w, b, h)
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ w["output.weight"].T


_HF_NAMES = {  # GGUF name in a block -> the checkpoint's (llama.cpp's tensor map, inverted)
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q_a.weight": "self_attn.q_a_proj.weight", "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn_q_b.weight": "self_attn.q_b_proj.weight",
    "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight", "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
    "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
}


def hf_config(cfg: DeepSeekConfig) -> dict[str, Any]:
    """The config.json of a DeepseekV2ForCausalLM (V3: DeepseekV3ForCausalLM) checkpoint of cfg."""
    out = {
        "architectures": [f"DeepseekV{3 if cfg.scoring_func == 'sigmoid' else 2}ForCausalLM"],
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head, "intermediate_size": cfg.n_ff, "vocab_size": cfg.n_vocab,
        "moe_intermediate_size": cfg.moe_intermediate_size, "q_lora_rank": cfg.q_lora_rank or None,
        "kv_lora_rank": cfg.kv_lora_rank, "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "qk_rope_head_dim": cfg.qk_rope_head_dim, "v_head_dim": cfg.v_head_dim,
        "n_routed_experts": cfg.n_routed_experts, "n_shared_experts": cfg.n_shared_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok, "first_k_dense_replace": cfg.first_k_dense_replace,
        "scoring_func": cfg.scoring_func, "n_group": cfg.n_group, "topk_group": cfg.topk_group,
        "topk_method": "noaux_tc" if cfg.score_bias else "greedy", "norm_topk_prob": cfg.norm_topk_prob,
        "routed_scaling_factor": cfg.routed_scaling_factor, "rope_theta": cfg.rope_base,
        "rms_norm_eps": cfg.rms_eps, "max_position_embeddings": cfg.n_ctx_train, "tie_word_embeddings": False,
    }
    if cfg.rope_scaling:
        out["rope_scaling"] = {"type": "yarn", "beta_fast": 32, "beta_slow": 1, **cfg.rope_scaling}
    return out


def hf_weights(cfg: DeepSeekConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors holding the GGUF weights w (an MLA file's): kv_b_proj rebuilt from
    attn_k_b / attn_v_b, the experts one by one."""
    out = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"],
           "lm_head.weight": w["output.weight"]}
    for name, x in w.items():
        if not name.startswith("blk."):
            continue
        _, bid, rest = name.split(".", 2)
        p = f"model.layers.{bid}."
        if rest in _HF_NAMES:
            out[p + _HF_NAMES[rest]] = x
        elif rest == "attn_k_b.weight":
            k_b, v_b = x.transpose(0, 2, 1), w[f"blk.{bid}.attn_v_b.weight"]
            kv_b = np.concatenate([k_b, v_b], axis=1)  # per head [k_nope; v] rows
            out[p + "self_attn.kv_b_proj.weight"] = kv_b.reshape(-1, cfg.kv_lora_rank)
        elif rest.endswith("_exps.weight"):
            kind = rest.split("_")[1]  # gate, up, down
            for e in range(cfg.n_routed_experts):
                out[p + f"mlp.experts.{e}.{kind}_proj.weight"] = x[e]
        elif rest != "attn_v_b.weight":
            raise ValueError(f"no checkpoint name for {name}")
    return out
