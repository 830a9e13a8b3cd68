"""Tiny random Phi-3.5-MoE-style models (gguf arch phimoe) written as llama.cpp's PhiMoeModel converter
writes them (Phi3MiniModel's keys and LongRoPE factor tensors, then the expert counts), and a numpy
float64 forward pass of what such a file means.

The definition is transformers' modeling_phimoe.py (PhimoeAttention with q/k/v/o biases, the NEOX
rotation with LongRoPE's short factors within original_max_position_embeddings and long ones past
it, cos / sin times the LongRoPE attention factor; experts w1 / w3 / w2 with SiLU; an output layer
with a bias) except where llama.cpp's graph (llama_model_phi3's, which runs phimoe) computes another
thing from the same tensors, which the GGUF format then means: the checkpoint's LayerNorms run as
RMS norms times the weight plus the bias (no mean subtracted), and the router is the plain softmax's
top k, renormalized (not sparsemixer's masked, jittered choice)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tiny_deepseek import moe_block
from tiny_glm4moe import causal_attention, hf_base_config, hf_outer_weights, write_arch_gguf
from tiny_minimax import hf_sparse_moe_blocks
from tiny_model import RandomInit, rope


@dataclass
class PhiMoeConfig:
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_vocab: int = 320
    num_local_experts: int = 6
    num_experts_per_tok: int = 2
    intermediate_size: int = 64  # (each expert's)
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 4096  # max_position_embeddings
    original_ctx: int = 1024  # rope_scaling's original_max_position_embeddings
    longrope: bool = True  # rope_scaling longrope with short / long factors (else none)
    attention_bias: bool = True  # q/k/v biases (the output projection's is always there)
    seed: int = 0
    factors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    # (the router as tiny_deepseek.moe_block reads it: llama.cpp's build_moe_ffn with softmax gating,
    # the top k renormalized, no bias, groups, scale or shared experts; each expert transformers'
    # PhimoeBlockSparseTop2MLP, w2 (silu(w1 h) * w3 h))
    scoring_func: ClassVar[str] = "softmax"
    score_bias: ClassVar[bool] = False
    n_group: ClassVar[int] = 1
    topk_group: ClassVar[int] = 1
    norm_topk_prob: ClassVar[bool] = True
    routed_scaling_factor: ClassVar[float] = 1.0

    @property
    def n_routed_experts(self) -> int:
        return self.num_local_experts

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def __post_init__(self) -> None:
        if self.longrope and not self.factors:
            rng = np.random.default_rng(1000 + self.seed)
            half = self.head_dim // 2
            self.factors = {"short": 1.0 + rng.uniform(0, 1, half), "long": 1.0 + rng.uniform(1, 8, half)}

    @property
    def attn_factor(self) -> float:
        """LongRoPE's attention factor (transformers' and llama.cpp's converter's)."""
        scale = self.n_ctx_train / self.original_ctx
        return (
            math.sqrt(1 + math.log(scale) / math.log(self.original_ctx))
            if self.longrope and scale > 1
            else 1.0
        )


def make_weights(cfg: PhiMoeConfig) -> dict[str, np.ndarray]:
    """Random weights under their GGUF names, float64 (the biases and norm biases well away from 0)."""
    init = RandomInit(cfg.seed)
    rng, mat, norm, bias = init.rng, init.mat, init.norm, init.vec
    E, kd = cfg.n_embd, cfg.n_head_kv * cfg.head_dim
    n_exp, ff = cfg.num_local_experts, cfg.intermediate_size

    w = {
        "token_embd.weight": rng.normal(0.0, 1.0, (cfg.n_vocab, E)),
        "output_norm.weight": norm(E),
        "output_norm.bias": bias(E),
        "output.weight": mat(cfg.n_vocab, E),
        "output.bias": bias(cfg.n_vocab),
    }
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"], w[b + "attn_norm.bias"] = norm(E), bias(E)
        w[b + "attn_q.weight"] = mat(E, E)
        w[b + "attn_k.weight"] = mat(kd, E)
        w[b + "attn_v.weight"] = mat(kd, E)
        if cfg.attention_bias:
            w[b + "attn_q.bias"], w[b + "attn_k.bias"], w[b + "attn_v.bias"] = bias(E), bias(kd), bias(kd)
        w[b + "attn_output.weight"], w[b + "attn_output.bias"] = mat(E, E), bias(E)
        w[b + "ffn_norm.weight"], w[b + "ffn_norm.bias"] = norm(E), bias(E)
        w |= init.routed_ffn(b, E, n_exp, ff)
    if cfg.longrope:
        w["rope_factors_long.weight"] = cfg.factors["long"]
        w["rope_factors_short.weight"] = cfg.factors["short"]
    return w


def write_gguf(
    cfg: PhiMoeConfig,
    weights: dict[str, np.ndarray],
    path: Path,
    *,
    weight_type: str = "F32",
    metadata_changes: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The metadata of llama.cpp's PhiMoeModel (Phi3MiniModel's keys, LongRoPE's attention factor,
    then the expert counts); changes: key -> value (None drops it). Returns the weights as the file
    holds them (float64; the LongRoPE factors as float32)."""
    meta: dict[str, Any] = {
        "context_length": cfg.n_ctx_train,
        "rope.scaling.original_context_length": cfg.original_ctx,
        "embedding_length": cfg.n_embd,
        "feed_forward_length": cfg.intermediate_size,
        "block_count": cfg.n_layer,
        "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_head_kv,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps,
        "rope.dimension_count": cfg.head_dim,
        "rope.freq_base": cfg.rope_base,
        "attention.sliding_window": 0,
        "expert_used_count": cfg.num_experts_per_tok,
        "expert_count": cfg.num_local_experts,
    }
    if cfg.longrope:
        meta["rope.scaling.attn_factor"] = cfg.attn_factor
    return write_arch_gguf("phimoe", meta, cfg.n_vocab, weights, path, weight_type, metadata_changes)


def _norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """llama.cpp's build_norm(LLM_NORM_RMS) with a bias: x / rms(x) * w + b."""
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w + b


def reference_logits(
    cfg: PhiMoeConfig, w: dict[str, np.ndarray], tokens: list[int], *, n_ctx: int = 64
) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1 in a context of n_ctx: logits
    (n, n_vocab). LongRoPE's long factors where n_ctx is past the original context (llama.cpp's
    choice, by the context of a sequence), else the short ones; keys and values rounded to float16
    as both engines' caches hold them."""
    H, KV, hd = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    inv = 1.0 / cfg.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if cfg.longrope:
        inv = inv / np.float64(np.float32(cfg.factors["long" if n_ctx > cfg.original_ctx else "short"]))
    mscale = np.float64(np.float32(cfg.attn_factor))
    n = len(tokens)
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _norm(x, w[b + "attn_norm.weight"], w[b + "attn_norm.bias"], cfg.rms_eps)

        def proj(name: str, heads: int, h: np.ndarray = h, b: str = b) -> np.ndarray:
            y = h @ w[b + name + ".weight"].T + w.get(b + name + ".bias", 0.0)
            return y.reshape(n, heads, hd)

        q, k, v = proj("attn_q", H), proj("attn_k", KV), proj("attn_v", KV)
        att = causal_attention(rope(q, pos, inv, True, mscale), rope(k, pos, inv, True, mscale), v)
        x = x + att @ w[b + "attn_output.weight"].T + w[b + "attn_output.bias"]
        x = x + moe_block(cfg, w, b, _norm(x, w[b + "ffn_norm.weight"], w[b + "ffn_norm.bias"], cfg.rms_eps))
    h = _norm(x, w["output_norm.weight"], w["output_norm.bias"], cfg.rms_eps)
    return h @ w["output.weight"].T + w["output.bias"]


# GGUF name in a block -> the checkpoint's (llama.cpp's tensor map, inverted)
_HF_NAMES = {
    **{f"attn_norm.{k}": f"input_layernorm.{k}" for k in ("weight", "bias")},
    **{f"attn_{p}.{k}": f"self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")},
    **{f"attn_output.{k}": f"self_attn.o_proj.{k}" for k in ("weight", "bias")},
    **{f"ffn_norm.{k}": f"post_attention_layernorm.{k}" for k in ("weight", "bias")},
    "ffn_gate_inp.weight": "block_sparse_moe.gate.weight",
}


def hf_config(cfg: PhiMoeConfig) -> dict[str, Any]:
    """The config.json of a PhiMoEForCausalLM checkpoint of cfg (as Phi-3.5-MoE-instruct's)."""
    out = hf_base_config(
        cfg,
        "PhiMoEForCausalLM",
        "phimoe",
        intermediate_size=cfg.intermediate_size,
        num_local_experts=cfg.num_local_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        attention_bias=True,
        lm_head_bias=True,
        original_max_position_embeddings=cfg.original_ctx,
        sliding_window=None,
    )
    if cfg.longrope:
        out["rope_scaling"] = {
            "type": "longrope",
            "short_factor": [float(v) for v in cfg.factors["short"]],
            "long_factor": [float(v) for v in cfg.factors["long"]],
            "short_mscale": cfg.attn_factor,
            "long_mscale": cfg.attn_factor,
            "original_max_position_embeddings": cfg.original_ctx,
        }
    return out


def hf_weights(cfg: PhiMoeConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors holding the GGUF weights w (no LongRoPE factor tensors: config.json
    holds them; the final norm's and the output head's biases)."""
    return {**hf_outer_weights(w), **hf_sparse_moe_blocks(w, _HF_NAMES, cfg.num_local_experts)}
