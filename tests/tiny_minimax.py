"""Tiny random MiniMax-M2-style models (gguf arch minimax-m2) written as llama.cpp's MiniMaxM2Model
converter writes them, and a numpy float64 forward pass written from transformers'
modeling_minimax_m2.py (MiniMaxM2Attention, MiniMaxM2SparseMoeBlock), independent of splitllm's
engine: q_norm / k_norm are RMSNorms over the whole q and k projections (all heads together,
before the heads are split), the rotation is NEOX over each head's first rotary_dim dims, and every
block's feed-forward is a mixture of experts whose router takes the sigmoid of its logits, adds
e_score_correction_bias for choosing only and renormalizes the chosen scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tiny_deepseek import moe_block
from tiny_glm4moe import (
    _rms,
    causal_attention,
    hf_base_config,
    hf_outer_weights,
    text_model_keys,
    write_arch_gguf,
)
from tiny_model import RandomInit, rope


@dataclass
class MinimaxM2Config:
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32  # (n_head * head_dim != n_embd, as M2's 48 x 128 vs 3072)
    rotary_dim: int = 16  # (M2: 64 of 128)
    n_vocab: int = 320
    num_local_experts: int = 8
    num_experts_per_tok: int = 3
    intermediate_size: int = 32  # (each expert's)
    rope_base: float = 5e6
    rms_eps: float = 1e-6
    n_ctx_train: int = 4096
    seed: int = 0

    # (the router as tiny_deepseek.moe_block reads it: sigmoid, the bias for choosing, no groups,
    # the chosen renormalized and not scaled, no shared experts)
    scoring_func: ClassVar[str] = "sigmoid"
    score_bias: ClassVar[bool] = True
    n_group: ClassVar[int] = 1
    topk_group: ClassVar[int] = 1
    norm_topk_prob: ClassVar[bool] = True
    routed_scaling_factor: ClassVar[float] = 1.0

    @property
    def n_routed_experts(self) -> int:
        return self.num_local_experts


def make_weights(cfg: MinimaxM2Config) -> dict[str, np.ndarray]:
    """Random weights under their GGUF names, float64."""
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    E, qd, kd = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    n_exp, ff = cfg.num_local_experts, cfg.intermediate_size

    w = {
        "token_embd.weight": rng.normal(0.0, 1.0, (cfg.n_vocab, E)),
        "output_norm.weight": norm(E),
        "output.weight": mat(cfg.n_vocab, E),
    }
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(E)
        w[b + "attn_q.weight"] = mat(qd, E)
        w[b + "attn_k.weight"] = mat(kd, E)
        w[b + "attn_v.weight"] = mat(kd, E)
        # (a norm per channel of the whole projection: some heads' channels scaled apart)
        w[b + "attn_q_norm.weight"] = norm(qd) * np.repeat(rng.uniform(0.5, 1.5, cfg.n_head), cfg.head_dim)
        w[b + "attn_k_norm.weight"] = norm(kd) * np.repeat(rng.uniform(0.5, 1.5, cfg.n_head_kv), cfg.head_dim)
        w[b + "attn_output.weight"] = mat(E, qd)
        w[b + "ffn_norm.weight"] = norm(E)
        w |= init.routed_ffn(b, E, n_exp, ff, bias=0.2)
    return w


def write_gguf(
    cfg: MinimaxM2Config,
    weights: dict[str, np.ndarray],
    path: Path,
    *,
    weight_type: str = "F32",
    metadata_changes: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The metadata of llama.cpp's MiniMaxM2Model (TextModel's keys with the sigmoid scoring_func,
    then expert_feed_forward_length and rope.dimension_count); changes: key -> value (None drops
    it). Returns the weights as the file holds them (float64)."""
    meta: dict[str, Any] = {
        **text_model_keys(cfg, cfg.n_layer, cfg.intermediate_size),
        "expert_count": cfg.num_local_experts,
        "expert_used_count": cfg.num_experts_per_tok,
        "expert_gating_func": 2,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "expert_feed_forward_length": cfg.intermediate_size,
        "rope.dimension_count": cfg.rotary_dim,
    }
    return write_arch_gguf("minimax-m2", meta, cfg.n_vocab, weights, path, weight_type, metadata_changes)


def reference_logits(
    cfg: MinimaxM2Config, w: dict[str, np.ndarray], tokens: list[int], *, norm_per_head: bool = False
) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab). The q and k
    projections RMS-normed whole, then split into heads and their first rotary_dim dims rotated
    (rotate half within them); keys and values rounded to float16 as both engines' caches hold
    them. norm_per_head: each head's own mean square instead (not the model: the tests' control)."""
    H, KV, hd = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    inv = 1.0 / cfg.rope_base ** (np.arange(0, cfg.rotary_dim, 2, dtype=np.float64) / cfg.rotary_dim)
    n = len(tokens)
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        q, k = (
            _qk_norm(h @ w[f"{b}attn_{p}.weight"].T, w[f"{b}attn_{p}_norm.weight"], heads, cfg, norm_per_head)
            for p, heads in (("q", H), ("k", KV))
        )
        v = (h @ w[b + "attn_v.weight"].T).reshape(n, KV, hd)
        att = causal_attention(rope(q, pos, inv, True), rope(k, pos, inv, True), v)
        x = x + att @ w[b + "attn_output.weight"].T
        x = x + moe_block(cfg, w, b, _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps))
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ w["output.weight"].T


def _qk_norm(x: np.ndarray, w: np.ndarray, heads: int, cfg: MinimaxM2Config, per_head: bool) -> np.ndarray:
    """MiniMaxM2RMSNorm of the whole projection x (n, heads * head_dim), split into heads."""
    n = x.shape[0]
    if per_head:
        return _rms(x.reshape(n, heads, cfg.head_dim), 1.0, cfg.rms_eps) * w.reshape(heads, cfg.head_dim)
    return _rms(x, w, cfg.rms_eps).reshape(n, heads, cfg.head_dim)


# GGUF name in a block -> the checkpoint's (llama.cpp's tensor map, inverted)
_HF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    **{f"attn_{p}.weight": f"self_attn.{p}_proj.weight" for p in "qkv"},
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate_inp.weight": "block_sparse_moe.gate.weight",
    "exp_probs_b.bias": "block_sparse_moe.e_score_correction_bias",
}


def hf_config(cfg: MinimaxM2Config) -> dict[str, Any]:
    """The config.json of a MiniMaxM2ForCausalLM checkpoint of cfg (as MiniMax-M2's)."""
    return hf_base_config(
        cfg,
        "MiniMaxM2ForCausalLM",
        "minimax_m2",
        head_dim=cfg.head_dim,
        rotary_dim=cfg.rotary_dim,
        intermediate_size=cfg.intermediate_size,
        num_local_experts=cfg.num_local_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        scoring_func="sigmoid",
        use_routing_bias=True,
        use_qk_norm=True,
        qk_norm_type="per_layer",
    )


def hf_weights(cfg: MinimaxM2Config, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors holding the GGUF weights w."""
    return {**hf_outer_weights(w), **hf_sparse_moe_blocks(w, _HF_NAMES, cfg.num_local_experts)}


def hf_sparse_moe_blocks(
    w: dict[str, np.ndarray], names: dict[str, str], n_expert: int
) -> dict[str, np.ndarray]:
    """The checkpoint's tensors of the blocks' GGUF weights w (by ``names``; stacked experts one by
    one as block_sparse_moe.experts.{e}.w1 (gate) / w3 (up) / w2 (down), Mixtral's names)."""
    out = {}
    for name, x in w.items():
        if not name.startswith("blk."):
            continue
        _, bid, rest = name.split(".", 2)
        p = f"model.layers.{bid}."
        if rest in names:
            out[p + names[rest]] = x
            continue
        wid = {"gate": "w1", "down": "w2", "up": "w3"}[rest.split("_")[1]]
        for e in range(n_expert):
            out[p + f"block_sparse_moe.experts.{e}.{wid}.weight"] = x[e]
    return out
