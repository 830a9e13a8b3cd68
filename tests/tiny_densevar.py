"""Tiny random seed_oss, apertus, hunyuan-dense, arcee and starcoder2 models written to GGUF (with
tiny_model's writer) under llama.cpp's tensor names and keys, and a numpy float64 forward pass of
each written from its published definition (transformers' SeedOss, Apertus, HunYuanDenseV1, Arcee
and Starcoder2 modeling code), independent of splitllm's engine.

What sets them apart from llama:

- seed_oss (Seed-OSS): q/k/v biases, the NEOX rotation (rotate_half), its pre-feed-forward norm
  stored as post_attention_norm.
- apertus (Apertus): each query and key head RMS-normed before the rotation; an ungated
  feed-forward W_down xielu(W_up h) with per-layer xIELU parameters (XIELUActivation:
  alpha_p = softplus(a_p), alpha_n = beta + softplus(a_n); x > 0: alpha_p x^2 + beta x, else
  (expm1(min(x, eps)) - x) alpha_n + beta x), stored raw as xielu.alpha_p / alpha_n / beta / eps.
- hunyuan-dense (Hunyuan dense): each query and key head RMS-normed after the rotation; NTK-alpha
  rotary scaling, base' = base alpha^(d / (d - 2)) (the converter writes base'; llama.cpp also
  applies rope.scaling.alpha itself).
- arcee (AFM): an ungated W_down relu(W_up h)^2 feed-forward; GGML's interleaved rotation.
- starcoder2 (StarCoder2): LayerNorm with a bias, biases on every projection, an ungated
  W_down gelu_tanh(W_up h + b) + b feed-forward, the NEOX rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tiny_dense import DenseConfig
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, rope_inv_freq, write_gguf

UNGATED = {"apertus", "arcee", "starcoder2"}
QK_NORM = {"apertus", "hunyuan-dense"}


@dataclass(frozen=True)
class VarConfig(DenseConfig):
    """tiny_dense's settings (whole-head rotation, no window) and these architectures' own."""

    ntk_alpha: float = 0.0  # hunyuan-dense: the rotary base times alpha^(d / (d - 2)) (0: none)
    alpha_key: bool = False  # written as rope.scaling.alpha (llama.cpp scales) instead of a scaled base
    xielu_scalar: bool = False  # apertus: one xIELU value per key instead of a per-layer array

    @property
    def base(self) -> float:
        """The rotary base the model rotates with (Hunyuan's NTK alpha applied)."""
        if not self.ntk_alpha:
            return self.rope_base
        d = self.head_dim
        return self.rope_base * self.ntk_alpha ** (d / (d - 2))

    def tiny(self) -> TinyConfig:
        return replace(super().tiny(), rope_base=self.rope_base if self.alpha_key else self.base)

    def inv_freq(self) -> np.ndarray:
        return rope_inv_freq(replace(super().tiny(), rope_base=self.base))

    def metadata(self) -> dict[str, Any]:
        """Keys beside tiny_model's, as llama.cpp's converter writes them for the architecture."""
        a = self.arch + "."
        m: dict[str, Any] = {}
        if self.arch == "apertus":
            for k, v in xielu_raw(self).items():
                m["xielu." + k] = v[0] if self.xielu_scalar else v
        if self.arch == "hunyuan-dense":
            m[a + "rope.scaling.type"] = "none"
            if self.alpha_key:
                m[a + "rope.scaling.alpha"] = float(self.ntk_alpha)
        if self.arch == "starcoder2":
            m[a + "attention.layer_norm_epsilon"] = self.eps
            m[a + "attention.layer_norm_rms_epsilon"] = None
        for key, value in self.extra.items():  # (a key of these that extra removes is not written at all)
            if value is None and key in m:
                del m[key]
            else:
                m[key] = value
        return m


def xielu_raw(cfg: VarConfig) -> dict[str, list[float]]:
    """Per-layer raw xIELU parameters near XIELUActivation's initial ones (alpha_p 0.8, alpha_n 0.8,
    beta 0.5, eps -1e-6), rounded to float32 as the file holds them."""
    rng = np.random.default_rng(cfg.seed + 100)
    n = 1 if cfg.xielu_scalar else cfg.n_layer

    def f32(x: np.ndarray) -> list[float]:
        return [float(v) for v in x.astype(np.float32)]

    beta = 0.5 + 0.2 * rng.normal(size=n)
    return {"alpha_p": f32(math.log(math.expm1(0.8)) + 0.5 * rng.normal(size=n)),
            "alpha_n": f32(math.log(math.expm1(0.3)) + 0.5 * rng.normal(size=n)),
            "beta": f32(beta), "eps": f32(np.full(n, -1e-6))}  # fmt: skip


def make_weights(cfg: VarConfig) -> dict[str, np.ndarray]:
    """Random float64 weights under llama.cpp's tensor names."""
    init = RandomInit(cfg.seed)
    rng, mat, norm, vec = init.rng, init.mat, init.norm, init.vec
    e, hd, ff = cfg.n_embd, cfg.head_dim, cfg.n_ff
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_head_kv * hd
    bias = cfg.arch == "starcoder2"

    w: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(e)
        if bias:
            w[b + "attn_norm.bias"] = vec(e)
        w[b + "attn_q.weight"] = mat(q_dim, e)
        w[b + "attn_k.weight"] = mat(kv_dim, e)
        w[b + "attn_v.weight"] = mat(kv_dim, e)
        if cfg.qkv_bias or bias:
            for t, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                w[b + f"attn_{t}.bias"] = vec(n)
        if cfg.arch in QK_NORM:
            w[b + "attn_q_norm.weight"] = norm(hd)
            w[b + "attn_k_norm.weight"] = norm(hd)
        w[b + "attn_output.weight"] = mat(e, q_dim)
        if bias:
            w[b + "attn_output.bias"] = vec(e)
        w[b + ("post_attention_norm.weight" if cfg.arch == "seed_oss" else "ffn_norm.weight")] = norm(e)
        if bias:
            w[b + "ffn_norm.bias"] = vec(e)
        if cfg.arch not in UNGATED:
            w[b + "ffn_gate.weight"] = mat(ff, e)
        w[b + "ffn_up.weight"] = mat(ff, e)
        if bias:
            w[b + "ffn_up.bias"] = vec(ff)
        w[b + "ffn_down.weight"] = mat(e, ff)
        if bias:
            w[b + "ffn_down.bias"] = vec(e)
    w["output_norm.weight"] = norm(e)
    if bias:
        w["output_norm.bias"] = vec(e)
    if not cfg.tied:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def write_var(
    cfg: VarConfig, path: Path, *, weight_type: str = "F32", weights: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Writes the model; returns the weights as the file holds them (float64)."""
    w = make_weights(cfg) if weights is None else weights
    return write_gguf(TinyModel(cfg.tiny(), w), path, weight_type=weight_type, metadata=cfg.metadata())


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 30 else x


def xielu(x: np.ndarray, a_p: float, a_n: float, beta: float, eps: float) -> np.ndarray:
    """transformers' XIELUActivation._xielu_python on raw parameters."""
    alpha_p, alpha_n = _softplus(a_p), beta + _softplus(a_n)
    return np.where(
        x > 0, alpha_p * x * x + beta * x, (np.expm1(np.minimum(x, eps)) - x) * alpha_n + beta * x
    )


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """gelu_pytorch_tanh."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def reference_logits(
    cfg: VarConfig,
    w: dict[str, np.ndarray],
    tokens: list[int],
    *,
    kv_f16: bool = True,
    neox: bool | None = None,
    qk_norm_first: bool | None = None,
    act: str | None = None,
    xielu_params: dict[str, list[float]] | None = None,
) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab). With kv_f16 the
    keys (rotated, normed) and values are rounded to float16, as the KV cache stores them. ``neox``
    (rotate-half pairs, else interleaved), ``qk_norm_first`` (q/k norms before the rotation) and
    ``act`` (the ungated activation: xielu, relu2, gelu) default to the architecture's; tests
    change them to show each one matters. ``xielu_params``: apertus's raw per-layer values (default
    :func:`xielu_raw`'s)."""
    n, hd = len(tokens), cfg.head_dim
    gqa = cfg.n_head // cfg.n_head_kv
    pos = np.arange(n)
    inv = cfg.inv_freq()
    neox = cfg.arch != "arcee" if neox is None else neox
    qk_norm_first = cfg.arch != "hunyuan-dense" if qk_norm_first is None else qk_norm_first
    act = act or {"apertus": "xielu", "arcee": "relu2", "starcoder2": "gelu"}.get(cfg.arch, "swiglu")
    raw = xielu_params or (xielu_raw(cfg) if cfg.arch == "apertus" else {})

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.eps) * g

    def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:  # nn.LayerNorm
        c = x - x.mean(axis=-1, keepdims=True)
        return c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + cfg.eps) * g + b

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        if cfg.arch == "starcoder2":
            return layer_norm(x, w[name + ".weight"], w[name + ".bias"])
        return rms(x, w[name + ".weight"])

    causal = np.where(pos[:, None] >= pos[None, :], 0.0, -np.inf)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = norm(x, b + "attn_norm")
        q, k, v = (h @ w[b + f"attn_{t}.weight"].T + w.get(b + f"attn_{t}.bias", 0) for t in "qkv")
        q, k = q.reshape(n, cfg.n_head, hd), k.reshape(n, cfg.n_head_kv, hd)
        v = v.reshape(n, cfg.n_head_kv, hd)
        qk_norm = cfg.arch in QK_NORM
        if qk_norm and qk_norm_first:
            q, k = rms(q, w[b + "attn_q_norm.weight"]), rms(k, w[b + "attn_k_norm.weight"])
        q, k = rope(q, pos, inv, neox), rope(k, pos, inv, neox)
        if qk_norm and not qk_norm_first:  # HunYuanDenseV1Attention: query_layernorm after the rotation
            q, k = rms(q, w[b + "attn_q_norm.weight"]), rms(k, w[b + "attn_k_norm.weight"])
        if kv_f16:
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        att = np.empty((n, cfg.n_head, hd))
        for hh in range(cfg.n_head):
            s = q[:, hh] @ k[:, hh // gqa].T / np.sqrt(hd) + causal
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, hh] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, hh // gqa]
        x = x + att.reshape(n, -1) @ w[b + "attn_output.weight"].T + w.get(b + "attn_output.bias", 0)
        h = norm(x, b + ("post_attention_norm" if cfg.arch == "seed_oss" else "ffn_norm"))
        u = h @ w[b + "ffn_up.weight"].T + w.get(b + "ffn_up.bias", 0)
        if act == "swiglu":
            g = h @ w[b + "ffn_gate.weight"].T
            a = g / (1 + np.exp(-g)) * u
        elif act == "xielu":
            j = 0 if cfg.xielu_scalar else i
            a = xielu(u, raw["alpha_p"][j], raw["alpha_n"][j], raw["beta"][j], raw["eps"][j])
        elif act == "relu2":
            a = np.maximum(u, 0) ** 2
        else:
            a = gelu_tanh(u)
        x = x + a @ w[b + "ffn_down.weight"].T + w.get(b + "ffn_down.bias", 0)
    x = norm(x, "output_norm")
    return x @ w.get("output.weight", w["token_embd.weight"]).T
