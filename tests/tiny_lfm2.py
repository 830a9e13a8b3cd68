"""Tiny random LFM2 models (gguf arch lfm2: LiquidAI's hybrid of gated short-convolution and
attention layers) written to GGUF as llama.cpp's converter lays them out, and a numpy float64
forward pass written from transformers' Lfm2ForCausalLM (modeling_lfm2.py), independent of
splitllm's engine."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, rope_inv_freq, write_gguf


@dataclass
class Lfm2Config(TinyConfig):
    """transformers' Lfm2Config in TinyConfig's terms: ``layer_types`` ("conv" or
    "full_attention" per layer), ``conv_L_cache`` as ``l_cache``; n_head_kv is the attention
    layers' (the file writes 0 for the convolution layers, as convert_hf_to_gguf.py's LFM2Model)."""

    arch: str = "lfm2"
    n_layer: int = 4
    layer_types: tuple[str, ...] = ("conv", "conv", "full_attention", "conv")
    l_cache: int = 3
    rope_base: float = 1000000.0
    tied_output: bool = True  # (LFM2's lm_head is tied to its embeddings)

    # lfm2moe (transformers' Lfm2MoeConfig): experts from layer n_dense on (num_dense_layers), each
    # n_ff_exp wide (moe_intermediate_size), n_expert_used of n_expert chosen by sigmoid(router
    # logits) + expert_bias, weighed by those sigmoids renormalized (norm_topk_prob); softmax
    # gating, no renormalization: the reference only (models to tell apart)
    n_dense: int = 0
    softmax_gating: bool = False
    renorm: bool = True

    def is_conv(self, layer: int) -> bool:
        return self.layer_types[layer] == "conv"

    def moe(self, layer: int) -> bool:
        return self.n_expert > 0 and layer >= self.n_dense


def make_lfm2_weights(cfg: Lfm2Config) -> TinyModel:
    """Random weights under llama.cpp's GGUF names (shortconv.conv.weight as (n_embd, l_cache): the
    Conv1d kernel with its middle axis squeezed, as the converter writes it)."""
    assert len(cfg.layer_types) == cfg.n_layer
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    e, hd = cfg.n_embd, cfg.head_dim

    w: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(e)  # (operator_norm)
        if cfg.is_conv(i):
            w[b + "shortconv.in_proj.weight"] = mat(3 * e, e)
            w[b + "shortconv.conv.weight"] = rng.normal(0, 0.6, size=(e, cfg.l_cache))
            w[b + "shortconv.out_proj.weight"] = mat(e, e)
        else:
            w[b + "attn_q.weight"] = mat(cfg.n_head * hd, e)
            w[b + "attn_k.weight"] = mat(cfg.n_head_kv * hd, e)
            w[b + "attn_v.weight"] = mat(cfg.n_head_kv * hd, e)
            w[b + "attn_q_norm.weight"] = norm(hd)
            w[b + "attn_k_norm.weight"] = norm(hd)
            w[b + "attn_output.weight"] = mat(e, cfg.n_head * hd)
        w[b + "ffn_norm.weight"] = norm(e)
        if cfg.moe(i):  # (lfm2moe) the router, its selection bias (expert_bias), the experts' w1, w3, w2
            fx = cfg.ff_exp
            w[b + "ffn_gate_inp.weight"] = 2 * mat(cfg.n_expert, e)
            w[b + "exp_probs_b.bias"] = 0.3 * rng.normal(size=cfg.n_expert)
            w[b + "ffn_gate_exps.weight"] = np.stack([mat(fx, e) for _ in range(cfg.n_expert)])
            w[b + "ffn_up_exps.weight"] = np.stack([mat(fx, e) for _ in range(cfg.n_expert)])
            w[b + "ffn_down_exps.weight"] = np.stack([mat(e, fx) for _ in range(cfg.n_expert)])
            continue
        w[b + "ffn_gate.weight"] = mat(cfg.n_ff, e)  # (w1)
        w[b + "ffn_up.weight"] = mat(cfg.n_ff, e)  # (w3)
        w[b + "ffn_down.weight"] = mat(e, cfg.n_ff)  # (w2)
    w["token_embd_norm.weight"] = norm(e)  # (embedding_norm, applied after the last layer)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return TinyModel(cfg, w)


def write_lfm2_gguf(cfg: Lfm2Config, path: Path, *, metadata: dict[str, Any] | None = None,
                    **kw: Any) -> dict[str, np.ndarray]:
    """Writes a tiny LFM2 model (see tiny_model.write_gguf for ``weight_type`` and the result):
    head_count_kv per layer and shortconv.l_cache, as convert_hf_to_gguf.py's LFM2Model writes them."""
    per_layer = [0 if cfg.is_conv(i) else cfg.n_head_kv for i in range(cfg.n_layer)]
    model = make_lfm2_weights(cfg)
    model.cfg = replace(cfg, n_head_kv=per_layer)  # type: ignore[arg-type]  (the writer's add_head_count_kv)
    a = cfg.arch + "."
    own = {a + "shortconv.l_cache": cfg.l_cache}
    if cfg.arch == "lfm2moe":  # (LFM2MoeModel's keys; sigmoid gating)
        own.update({a + "leading_dense_block_count": cfg.n_dense, a + "expert_gating_func": 2})
    meta = {**own, **(metadata or {})}
    for key in [k for k in own if meta[k] is None]:  # (a file without it: never written)
        del meta[key]
    return write_gguf(model, path, metadata=meta, **kw)


def _rmsnorm(cfg: Lfm2Config, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.rms_eps) * g


def short_conv(cfg: Lfm2Config, w: dict[str, np.ndarray], b: str, h: np.ndarray) -> np.ndarray:
    """Lfm2ShortConv.slow_forward without a cache: (B, C, x) = in_proj(h) in thirds, a depthwise
    Conv1d of B * x padded by l_cache - 1 on both sides and cut to the sequence (causal), C times
    it, out_proj."""
    e, n = cfg.n_embd, h.shape[0]
    bcx = h @ w[b + "shortconv.in_proj.weight"].T
    bb, cc, xx = bcx[:, :e], bcx[:, e: 2 * e], bcx[:, 2 * e:]
    bx = np.concatenate([np.zeros((cfg.l_cache - 1, e)), bb * xx])
    kernel = w[b + "shortconv.conv.weight"]  # (n_embd, l_cache): k = 0 meets the oldest input
    conv = np.stack([(kernel.T * bx[t: t + cfg.l_cache]).sum(axis=0) for t in range(n)])
    return (cc * conv) @ w[b + "shortconv.out_proj.weight"].T


def _attention(cfg: Lfm2Config, w: dict[str, np.ndarray], b: str, h: np.ndarray, kv_f16: bool) -> np.ndarray:
    """Lfm2Attention: per-head RMS norms of q and k, NEOX rotation, causal GQA softmax."""
    n, hd = h.shape[0], cfg.head_dim
    pos = np.arange(n)
    q = (h @ w[b + "attn_q.weight"].T).reshape(n, cfg.n_head, hd)
    k = (h @ w[b + "attn_k.weight"].T).reshape(n, cfg.n_head_kv, hd)
    v = (h @ w[b + "attn_v.weight"].T).reshape(n, cfg.n_head_kv, hd)
    q, k = _rmsnorm(cfg, q, w[b + "attn_q_norm.weight"]), _rmsnorm(cfg, k, w[b + "attn_k_norm.weight"])
    inv = rope_inv_freq(cfg)
    q, k = rope(q, pos, inv, True), rope(k, pos, inv, True)
    if kv_f16:  # as an f16 KV cache stores them
        k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
    mask = np.where(pos[:, None] >= pos[None, :], 0.0, -np.inf)
    att = np.empty((n, cfg.n_head, hd))
    gqa = cfg.n_head // cfg.n_head_kv
    for hh in range(cfg.n_head):
        s = q[:, hh] @ k[:, hh // gqa].T / np.sqrt(hd) + mask
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        att[:, hh] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, hh // gqa]
    return att.reshape(n, -1) @ w[b + "attn_output.weight"].T


def _experts(cfg: Lfm2Config, w: dict[str, np.ndarray], b: str, h: np.ndarray) -> np.ndarray:
    """Lfm2MoeSparseMoeBlock: scores sigmoid(gate h) (route_tokens_to_experts), the top k of scores
    + expert_bias chosen, their scores / (sum + 1e-6) (norm_topk_prob) times routed_scaling_factor
    (1) weighing the experts' w2(silu(w1 h) * w3 h)."""
    z = h @ w[b + "ffn_gate_inp.weight"].T
    if cfg.softmax_gating:
        p = np.exp(z - z.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
    else:
        p = 1 / (1 + np.exp(-z))
    top = np.argsort(-(p + w[b + "exp_probs_b.bias"]), axis=-1, kind="stable")[:, : cfg.n_expert_used]
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        weights = p[t, top[t]] / (p[t, top[t]].sum() + 1e-6) if cfg.renorm else p[t, top[t]]
        for x, wt in zip(top[t], weights, strict=True):
            g = h[t] @ w[b + "ffn_gate_exps.weight"][x].T
            u = h[t] @ w[b + "ffn_up_exps.weight"][x].T
            out[t] += wt * ((g / (1 + np.exp(-g)) * u) @ w[b + "ffn_down_exps.weight"][x].T)
    return out


def lfm2_reference_logits(cfg: Lfm2Config, w: dict[str, np.ndarray], tokens: list[int], *,
                          kv_f16: bool = True) -> np.ndarray:
    """float64 Lfm2ForCausalLM over tokens at positions 0..n-1: logits (n, n_vocab). Each layer:
    x += operator(operator_norm(x)) (short convolution or attention), x += w2(silu(w1 h) * w3 h)
    with h = ffn_norm(x); then embedding_norm and the (tied) lm_head."""
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rmsnorm(cfg, x, w[b + "attn_norm.weight"])
        x = x + (short_conv(cfg, w, b, h) if cfg.is_conv(i) else _attention(cfg, w, b, h, kv_f16))
        h = _rmsnorm(cfg, x, w[b + "ffn_norm.weight"])
        if cfg.moe(i):
            x = x + _experts(cfg, w, b, h)
            continue
        g, u = h @ w[b + "ffn_gate.weight"].T, h @ w[b + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[b + "ffn_down.weight"].T
    x = _rmsnorm(cfg, x, w["token_embd_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T
