"""Tiny random ERNIE-4.5-MoE models (gguf arch ernie4_5-moe, ERNIE-4.5-21B-A3B-like) written as
llama.cpp's Ernie4_5MoeModel writes them, and a numpy float64 forward pass written from
transformers' modeling_ernie4_5_moe.py (Ernie4_5_MoeAttention with its interleaved rotation,
Ernie4_5_MoeSparseMoeBlock), independent of splitllm's engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tiny_deepseek import moe_block
from tiny_glm4moe import (
    HF_BLOCK_NAMES,
    causal_attention,
    hf_base_config,
    hf_block_weights,
    hf_outer_weights,
    text_model_keys,
    write_arch_gguf,
)
from tiny_model import RandomInit, rope


@dataclass
class ErnieMoeConfig:
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_vocab: int = 320
    n_ff: int = 96  # intermediate_size (the dense blocks)
    moe_layer_start_index: int = 1
    moe_num_experts: int = 8
    moe_k: int = 3
    moe_intermediate_size: int = 32
    moe_num_shared_experts: int = 2
    score_bias: bool = True  # moe_statics.e_score_correction_bias (the 21B-A3B has it)
    tied: bool = True
    rope_base: float = 500000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 4096
    seed: int = 0
    # (the router as tiny_deepseek.moe_block reads it: the softmax, the chosen renormalized, unscaled)
    scoring_func: ClassVar[str] = "softmax"
    n_group: ClassVar[int] = 1
    topk_group: ClassVar[int] = 1
    norm_topk_prob: ClassVar[bool] = True
    routed_scaling_factor: ClassVar[float] = 1.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_experts_per_tok(self) -> int:
        return self.moe_k

    @property
    def n_routed_experts(self) -> int:
        return self.moe_num_experts


def make_weights(cfg: ErnieMoeConfig) -> dict[str, np.ndarray]:
    """Random weights under their GGUF names, float64 (the correction bias (1, n_experts) as the
    checkpoint holds it)."""
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    E, H, KV, hd = cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim

    w = {"token_embd.weight": rng.normal(0.0, 1.0, (cfg.n_vocab, E)), "output_norm.weight": norm(E)}
    if not cfg.tied:
        w["output.weight"] = mat(cfg.n_vocab, E)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(E)
        w[b + "attn_q.weight"] = mat(H * hd, E)
        w[b + "attn_k.weight"] = mat(KV * hd, E)
        w[b + "attn_v.weight"] = mat(KV * hd, E)
        w[b + "attn_output.weight"] = mat(E, H * hd)
        w[b + "ffn_norm.weight"] = norm(E)
        if i < cfg.moe_layer_start_index:
            w |= init.dense_ffn(b, E, cfg.n_ff)
            continue
        n_exp, ff, n_sh = cfg.moe_num_experts, cfg.moe_intermediate_size, cfg.moe_num_shared_experts
        w |= init.routed_ffn(b, E, n_exp, ff, bias=0.1 * cfg.score_bias, bias_shape=(1, n_exp),
                                ff_shared=ff * n_sh if n_sh else None)  # fmt: skip
    return w


def write_gguf(
    cfg: ErnieMoeConfig,
    weights: dict[str, np.ndarray],
    path: Path,
    *,
    weight_type: str = "F32",
    metadata_changes: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The metadata of llama.cpp's Ernie4_5MoeModel (TextModel's keys, then the experts', the
    interleave step, the leading dense blocks, the shared experts' count and width); returns the
    weights as the file holds them (float64)."""
    meta: dict[str, Any] = {
        **text_model_keys(cfg, cfg.n_layer, cfg.n_ff),
        "expert_count": cfg.moe_num_experts,
        "expert_used_count": cfg.moe_k,
        "interleave_moe_layer_step": 1,
        "leading_dense_block_count": cfg.moe_layer_start_index,
        "expert_feed_forward_length": cfg.moe_intermediate_size,
        "expert_shared_count": cfg.moe_num_shared_experts,
    }
    if cfg.moe_num_shared_experts:
        meta["expert_shared_feed_forward_length"] = cfg.moe_intermediate_size * cfg.moe_num_shared_experts
    return write_arch_gguf("ernie4_5-moe", meta, cfg.n_vocab, weights, path, weight_type, metadata_changes)


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def reference_logits(cfg: ErnieMoeConfig, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab). The rotation of
    whole heads by interleaved pairs (rotate_half of x[0::2], x[1::2]); keys and values rounded to
    float16 as both engines' caches hold them; from moe_layer_start_index on, Ernie4_5_MoeSparseMoeBlock:
    softmax probabilities, the moe_k best of them plus the correction bias, their probabilities
    renormalized, plus the shared experts (one MLP of their stacked width)."""
    H, KV, hd = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    inv = 1.0 / cfg.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    n = len(tokens)
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens]
    flat = {k: (v.reshape(-1) if k.endswith("exp_probs_b.bias") else v) for k, v in w.items()}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        q = rope((h @ w[b + "attn_q.weight"].T).reshape(n, H, hd), pos, inv, False)
        k = rope((h @ w[b + "attn_k.weight"].T).reshape(n, KV, hd), pos, inv, False)
        v = (h @ w[b + "attn_v.weight"].T).reshape(n, KV, hd)
        x = x + causal_attention(q, k, v) @ w[b + "attn_output.weight"].T
        h = _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps)
        if i < cfg.moe_layer_start_index:
            g, u = h @ w[b + "ffn_gate.weight"].T, h @ w[b + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ w[b + "ffn_down.weight"].T
        else:
            x = x + moe_block(cfg, flat, b, h)  # type: ignore[arg-type]  # (its fields by the same names)
    out = w["token_embd.weight"] if cfg.tied else w["output.weight"]
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ out.T


_HF_NAMES = {  # GGUF name in a block -> the checkpoint's (llama.cpp's tensor map, inverted)
    **HF_BLOCK_NAMES,
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "exp_probs_b.bias": "mlp.moe_statics.e_score_correction_bias",
}


def hf_config(cfg: ErnieMoeConfig) -> dict[str, Any]:
    """The config.json of an Ernie4_5_MoeForCausalLM checkpoint of cfg."""
    return hf_base_config(
        cfg,
        "Ernie4_5_MoeForCausalLM",
        "ernie4_5_moe",
        intermediate_size=cfg.n_ff,
        use_bias=False,
        moe_num_experts=cfg.moe_num_experts,
        moe_k=cfg.moe_k,
        moe_intermediate_size=cfg.moe_intermediate_size,
        moe_num_shared_experts=cfg.moe_num_shared_experts,
        moe_layer_start_index=cfg.moe_layer_start_index,
        moe_layer_end_index=cfg.n_layer - 1,
        moe_layer_interval=1,
        moe_norm_min=1e-12,
    )


def hf_weights(cfg: ErnieMoeConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors holding the GGUF weights w (the experts one by one)."""
    out = hf_outer_weights(w)
    out.update(hf_block_weights(w, _HF_NAMES, cfg.moe_num_experts))
    return out
