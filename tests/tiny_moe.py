"""Tiny random qwen2moe / olmoe / granitemoe models written to GGUF (the tensor names and keys of
llama.cpp's convert_hf_to_gguf.py), and a numpy float64 forward pass written from transformers'
Qwen2MoeForCausalLM, OlmoeForCausalLM and GraniteMoe(Shared)ForCausalLM, independent of splitllm:

- qwen2moe: q/k/v biases, rotate-half (NEOX) rope; the router's softmax, the top k experts weighed
  by their probabilities as they are (norm_topk_prob False); a shared expert whose output is
  multiplied by sigmoid(shared_expert_gate . h) and added.
- olmoe: q and k RMS-normed over the whole projections before the rotate-half rope; the router's
  softmax, top k, not renormalized.
- granitemoe: Granite's multipliers (embeddings, attention scores, branch outputs, logits) with
  interleaved rope; the softmax of the top k router logits (the renormalized softmax); with a
  shared expert (GraniteMoeShared) its output added to the experts' before the residual scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, write_gguf

Weights = dict[str, np.ndarray]


@dataclass
class MoeConfig:
    arch: str  # qwen2moe, olmoe, granitemoe
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    # feed_forward_length: olmoe's and granitemoe's expert width; qwen2moe's dense width (its
    # experts' is n_ff_exp, its shared expert's n_ff_shexp, each this one where left None)
    n_ff: int = 96
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_exp: int | None = None
    n_ff_shexp: int | None = None  # granitemoe: the shared expert's width (None: no shared expert)
    n_vocab: int = 320
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0
    tied_output: bool = False
    # transformers' embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling
    granite_scales: tuple[float, float, float, float] = (12.0, 0.22, 0.03125, 8.0)
    renorm: bool | None = None  # the reference only: another choice of weighting (None: the model's)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def expert_width(self) -> int:
        if self.arch == "qwen2moe":
            return self.n_ff_exp or self.n_ff // self.n_expert_used
        return self.n_ff

    @property
    def shared_width(self) -> int:
        if self.arch == "qwen2moe":
            return self.n_ff_shexp or self.n_ff
        return (self.n_ff_shexp or 0) if self.arch == "granitemoe" else 0


def make_weights(cfg: MoeConfig) -> Weights:
    """Random float64 weights under their GGUF names, (rows, cols) as numpy holds them (stacked
    experts: (n_expert, rows, cols))."""
    init = RandomInit(cfg.seed, norm_spread=0.2)
    rng, mat, norm = init.rng, init.mat, init.norm
    e, q_dim, kv_dim = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    fx, fs, ne = cfg.expert_width, cfg.shared_width, cfg.n_expert

    w: Weights = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(e)
        for t, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
            w[b + f"attn_{t}.weight"] = mat(rows, e)
            if cfg.arch == "qwen2moe":
                w[b + f"attn_{t}.bias"] = 0.2 * rng.normal(size=rows)
        if cfg.arch == "olmoe":
            w[b + "attn_q_norm.weight"] = norm(q_dim)
            w[b + "attn_k_norm.weight"] = norm(kv_dim)
        w[b + "attn_output.weight"] = mat(e, q_dim)
        w[b + "ffn_norm.weight"] = norm(e)
        w |= init.routed_ffn(b, e, ne, fx)
        if fs:
            if cfg.arch == "qwen2moe":
                w[b + "ffn_gate_inp_shexp.weight"] = mat(1, e)[0] * 2
            w[b + "ffn_gate_shexp.weight"] = mat(fs, e)
            w[b + "ffn_up_shexp.weight"] = mat(fs, e)
            w[b + "ffn_down_shexp.weight"] = mat(e, fs)
    w["output_norm.weight"] = norm(e)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def metadata(cfg: MoeConfig) -> dict[str, Any]:
    """The keys beyond tiny_model's, as convert_hf_to_gguf.py's Qwen2MoeModel / GraniteMoeModel
    write them."""
    a = cfg.arch + "."
    keys: dict[str, Any] = {}
    if cfg.arch == "qwen2moe" and cfg.n_ff_shexp:
        keys[a + "expert_shared_feed_forward_length"] = cfg.n_ff_shexp
    if cfg.arch == "granitemoe":
        emb, res, att, logit = cfg.granite_scales
        keys.update({a + "embedding_scale": emb, a + "residual_scale": res, a + "attention.scale": att,
                     a + "logit_scale": logit})
        if cfg.n_ff_shexp:
            keys[a + "expert_shared_feed_forward_length"] = cfg.n_ff_shexp
    return keys


def write_moe_gguf(cfg: MoeConfig, w: Weights, path: Path, *, metadata_changes: dict[str, Any] | None = None,
                   **kw: Any) -> Weights:
    """Writes the model (tiny_model.write_gguf: its byte-level vocabulary; ``kw``: weight_type,
    quantize); returns the weights as the file holds them (float64)."""
    tiny = TinyConfig(arch=cfg.arch, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                      n_head_kv=cfg.n_head_kv, n_ff=cfg.n_ff, n_vocab=cfg.n_vocab, rope_base=cfg.rope_base,
                      rms_eps=cfg.rms_eps, n_expert=cfg.n_expert, n_expert_used=cfg.n_expert_used,
                      n_ff_exp=cfg.n_ff_exp if cfg.arch == "qwen2moe" else None)  # fmt: skip
    own = metadata(cfg)  # (a key of its own removed by a change: never written)
    changes = {k: v for k, v in {**own, **(metadata_changes or {})}.items() if v is not None or k not in own}
    return write_gguf(TinyModel(tiny, w), path, metadata=changes, **kw)


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _swiglu(h: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    g = h @ gate.T
    return (g / (1 + np.exp(-g)) * (h @ up.T)) @ down.T


def _moe(cfg: MoeConfig, w: Weights, b: str, h: np.ndarray) -> np.ndarray:
    """The block's sparse feed-forward (Qwen2MoeSparseMoeBlock, OlmoeSparseMoeBlock, GraniteMoeMoE
    plus GraniteMoeSharedMLP)."""
    z = h @ w[b + "ffn_gate_inp.weight"].T
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    renorm = cfg.arch == "granitemoe" if cfg.renorm is None else cfg.renorm
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-z[t], kind="stable")[: cfg.n_expert_used]
        weights = p[t, top] / p[t, top].sum() if renorm else p[t, top]  # (granite: softmax of the top logits)
        for x, wt in zip(top, weights, strict=True):
            out[t] += wt * _swiglu(h[t], *(w[b + f"ffn_{n}_exps.weight"][x] for n in ("gate", "up", "down")))
    if cfg.shared_width:
        shared = _swiglu(h, *(w[b + f"ffn_{n}_shexp.weight"] for n in ("gate", "up", "down")))
        if cfg.arch == "qwen2moe":  # F.sigmoid(shared_expert_gate(h)) * shared_expert(h)
            shared = shared / (1 + np.exp(-(h @ w[b + "ffn_gate_inp_shexp.weight"])))[:, None]
        out = out + shared
    return out


def reference_logits(cfg: MoeConfig, w: Weights, tokens: list[int], *, kv_f16: bool = True,
                     rotate_half: bool = False) -> np.ndarray:  # fmt: skip
    """float64 logits (n, n_vocab) of tokens at positions 0..n-1; with kv_f16 the keys (rotated) and
    values rounded to float16, as the engines' caches store them. ``rotate_half``: q/k rows in
    Hugging Face's order, rotated as transformers does (else granitemoe's are GGUF's pairs)."""
    n, hd, nh, nkv = len(tokens), cfg.head_dim, cfg.n_head, cfg.n_head_kv
    pos = np.arange(n)
    inv = 1.0 / cfg.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    granite = cfg.arch == "granitemoe"
    emb, res, scale, logit_scale = cfg.granite_scales if granite else (1.0, 1.0, hd**-0.5, 1.0)
    neox = rotate_half or not granite  # (granite in GGUF: llama's interleaved pairs, q/k rows permuted)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["token_embd.weight"][tokens] * emb
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        q, k, v = (h @ w[b + f"attn_{t}.weight"].T + w.get(b + f"attn_{t}.bias", 0.0) for t in "qkv")
        if cfg.arch == "olmoe":
            q = _rms(q, w[b + "attn_q_norm.weight"], cfg.rms_eps)
            k = _rms(k, w[b + "attn_k_norm.weight"], cfg.rms_eps)
        q = rope(q.reshape(n, nh, hd), pos, inv, neox)
        k = rope(k.reshape(n, nkv, hd), pos, inv, neox)
        v = v.reshape(n, nkv, hd)
        if kv_f16:
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) * scale + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = np.einsum("hqk,khd->qhd", s / s.sum(axis=-1, keepdims=True), v).reshape(n, nh * hd)
        x = x + res * (a @ w[b + "attn_output.weight"].T + w.get(b + "attn_output.bias", 0.0))
        x = x + res * _moe(cfg, w, b, _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps))
    out = w.get("output.weight", w["token_embd.weight"])
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ out.T / logit_scale
