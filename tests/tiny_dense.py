"""Tiny random mistral3, glm4, exaone4, ernie4_5, cohere2, qwen3vl, command-r, exaone and internlm2
models written to GGUF (with tiny_model's writer), and a numpy float64 forward pass of each written
from its published definition (transformers' Ministral3, Glm4, Exaone4, Ernie4_5, Cohere2, Qwen3VL
and Cohere modeling code, LG AI's modeling_exaone.py, InternLM's modeling_internlm2.py),
independent of splitllm's engine.

What sets them apart from llama:

- mistral3 (Ministral 3): YaRN rotation whose magnitude is mscale(1) / mscale(mscale_all_dim),
  and Llama 4's attention temperature: queries times 1 + beta ln(1 + floor(pos / original context)).
- glm4 (GLM-4-0414): RMS norms after the attention and the feed-forward too, gate and up in one
  matrix, q/k/v biases, the interleaved rotation of the first half of each head only.
- exaone4 (EXAONE 4.0): no input norms, RMS norms after each branch, each query and key head
  RMS-normed; with a window (the 32B's 64 layers) three of four layers slide and only they rotate.
- ernie4_5 (ERNIE-4.5 dense): llama with the interleaved rotation of Hugging Face's weights.
- cohere2 (Command R7B): one LayerNorm (no bias) feeding attention and feed-forward in parallel,
  three of four layers sliding and rotated, the others global and unrotated, logits times a scale.
- qwen3vl (Qwen3-VL's text model): qwen3's layers; for text tokens its M-RoPE (every section at the
  token's position) is the plain NEOX rotation and the deepstack inputs are zero.
- command-r (Command-R, Command R+, Aya 23; transformers' Cohere): cohere2's parallel block with
  its LayerNorm and logit scale, every layer global and rotated (interleaved pairs); Command R+
  (use_qk_norm, which llama.cpp reads from 64 layers on) LayerNorms each query and key head with a
  weight row per head (CohereLayerNorm((num_heads, head_dim))) before the rotation.
- exaone (EXAONE 3.0 / 3.5): llama with the NEOX rotation (rotate_half on its own q/k rows; 3.5's
  llama3 rotary scaling), untied or tied.
- internlm2 (InternLM2 / 2.5): llama; its fused wqkv split and its q/k rows permuted by llama.cpp's
  converter, so that the interleaved rotation of the file's rows is rotate_half of the checkpoint's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, rope_inv_freq, write_gguf

NEOX = {"exaone4", "qwen3vl", "exaone"}  # the others rotate interleaved pairs (GGML's "normal" rope)
QK_NORM = {"exaone4", "qwen3vl"}  # each query and key head RMS-normed
PARALLEL = {"cohere2", "command-r"}  # one LayerNorm (no bias) feeding attention and feed-forward


@dataclass(frozen=True)
class DenseConfig:
    arch: str
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    n_vocab: int = 320
    rope_base: float = 10000.0
    eps: float = 1e-5
    n_ctx_train: int = 256
    tied: bool = False
    qkv_bias: bool = False
    out_bias: bool = False  # mistral3's optional attention output bias
    seed: int = 0
    partial_rotary: float = 1.0  # glm4: 0.5
    # Hugging Face's rope_parameters: None, {"rope_type": "yarn", "factor", "beta_fast", "beta_slow",
    # "original_max_position_embeddings", "mscale_all_dim"} (mistral3) or llama3's (exaone4)
    rope_scaling: dict[str, Any] | None = None
    temp_beta: float = 0.0  # mistral3's llama_4_scaling_beta
    sliding_window: int = 0  # exaone4 (64 layers), cohere2: layers l % 4 != 3 slide
    logit_scale: float = 1.0  # cohere2
    extra: dict[str, Any] = field(default_factory=dict)  # metadata changes for bad-file tests

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_rot(self) -> int:
        return int(self.head_dim * self.partial_rotary)

    @property
    def windowed(self) -> bool:  # (exaone4: llama.cpp windows the 32B alone, by its 64 layers)
        return self.arch == "cohere2" or (self.arch == "exaone4" and self.n_layer == 64)

    @property
    def window(self) -> int:  # exaone4's default: 4096
        return self.sliding_window or (4096 if self.arch == "exaone4" else 0)

    def is_swa(self, layer: int) -> bool:
        return self.windowed and layer % 4 != 3

    def rotates(self, layer: int) -> bool:
        return not self.windowed or self.is_swa(layer)

    @property
    def head_norms(self) -> bool:  # command-r's per-head q/k LayerNorms (llama.cpp: 64 layers or more)
        return self.arch == "command-r" and self.n_layer >= 64

    def tiny(self) -> TinyConfig:
        """The TinyConfig tiny_model's writer and rotary helpers read."""
        return TinyConfig(arch=self.arch, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                          n_head_kv=self.n_head_kv, n_ff=self.n_ff, n_vocab=self.n_vocab,
                          rope_base=self.rope_base, rms_eps=self.eps, n_ctx_train=self.n_ctx_train,
                          tied_output=self.tied, seed=self.seed, rope_scaling=self.rope_scaling,
                          n_rot=self.n_rot, sliding_window=self.sliding_window)

    def metadata(self) -> dict[str, Any]:
        """Keys beside tiny_model's, as llama.cpp's converter writes them for the architecture."""
        a = self.arch + "."
        m: dict[str, Any] = {}
        rs = self.rope_scaling or {}
        if self.arch == "mistral3" and rs.get("rope_type") == "yarn":
            m[a + "rope.scaling.yarn_beta_fast"] = float(rs.get("beta_fast", 32.0))
            m[a + "rope.scaling.yarn_beta_slow"] = float(rs.get("beta_slow", 1.0))
            m[a + "rope.scaling.yarn_log_multiplier"] = float(rs.get("mscale_all_dim", 0.0))
        if self.temp_beta:
            m[a + "attention.temperature_scale"] = self.temp_beta
        if self.arch == "qwen3vl":  # as Qwen3VLTextModel writes them (sections of the rotated half)
            half = self.n_rot // 2
            m[a + "rope.dimension_sections"] = [half - 2 * (half // 3), half // 3, half // 3, 0]
            m[a + "n_deepstack_layers"] = 2
        if self.arch in PARALLEL:  # (as CommandR2Model / Cohere2Model write them)
            m[a + "attention.layer_norm_epsilon"] = self.eps
            m[a + "attention.layer_norm_rms_epsilon"] = None
            m[a + "logit_scale"] = self.logit_scale
            m[a + "rope.scaling.type"] = "none"
        for key, value in self.extra.items():  # (a key of these that extra removes is not written at all)
            if value is None and key in m:
                del m[key]
            else:
                m[key] = value
        return m


def make_weights(cfg: DenseConfig) -> dict[str, np.ndarray]:
    """Random float64 weights under llama.cpp's tensor names."""
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    e, hd, ff = cfg.n_embd, cfg.head_dim, cfg.n_ff
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_head_kv * hd

    w: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    post = cfg.arch in ("glm4", "exaone4")
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        if cfg.arch != "exaone4":
            w[b + "attn_norm.weight"] = norm(e)
        w[b + "attn_q.weight"] = mat(q_dim, e)
        w[b + "attn_k.weight"] = mat(kv_dim, e)
        w[b + "attn_v.weight"] = mat(kv_dim, e)
        if cfg.qkv_bias:
            for t, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                w[b + f"attn_{t}.bias"] = 0.3 * rng.normal(size=n)
        if cfg.arch in QK_NORM:
            w[b + "attn_q_norm.weight"] = norm(hd)
            w[b + "attn_k_norm.weight"] = norm(hd)
        if cfg.head_norms:  # a row per head (the file's [head_dim, heads])
            w[b + "attn_q_norm.weight"] = norm(cfg.n_head * hd).reshape(cfg.n_head, hd)
            w[b + "attn_k_norm.weight"] = norm(cfg.n_head_kv * hd).reshape(cfg.n_head_kv, hd)
        w[b + "attn_output.weight"] = mat(e, q_dim)
        if cfg.out_bias:
            w[b + "attn_output.bias"] = 0.3 * rng.normal(size=e)
        if post:
            w[b + "post_attention_norm.weight"] = norm(e)
        if cfg.arch != "exaone4" and cfg.arch not in PARALLEL:
            w[b + "ffn_norm.weight"] = norm(e)
        if cfg.arch == "glm4":  # gate rows, then up rows
            w[b + "ffn_up.weight"] = mat(2 * ff, e)
        else:
            w[b + "ffn_gate.weight"] = mat(ff, e)
            w[b + "ffn_up.weight"] = mat(ff, e)
        w[b + "ffn_down.weight"] = mat(e, ff)
        if post:
            w[b + "post_ffw_norm.weight"] = norm(e)
    w["output_norm.weight"] = norm(e)
    if not cfg.tied:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def write_dense(cfg: DenseConfig, path: Path, *, weight_type: str = "F32",
                weights: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Writes the model; returns the weights as the file holds them (float64)."""
    w = make_weights(cfg) if weights is None else weights
    return write_gguf(TinyModel(cfg.tiny(), w), path, weight_type=weight_type, metadata=cfg.metadata())


def _yarn_mscale(rs: dict[str, Any]) -> float:
    """transformers' _compute_yarn_parameters attention factor with mscale 1 and mscale_all_dim m:
    get_mscale(factor, 1) / get_mscale(factor, m), or get_mscale(factor) without m."""
    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m = rs.get("mscale_all_dim", 0.0)
    return get_mscale(rs["factor"]) / (get_mscale(rs["factor"], m) if m else 1.0)


def reference_logits(cfg: DenseConfig, w: dict[str, np.ndarray], tokens: list[int], *,
                     kv_f16: bool = True, neox: bool | None = None) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab). With kv_f16 the
    keys (rotated) and values are rounded to float16, as the KV cache stores them. ``neox``: rotate
    (i, i + n_rot / 2) pairs (Hugging Face's rotate_half on its own q/k rows) or (2i, 2i + 1) ones;
    by default as llama.cpp's architecture does."""
    n, hd, ff = len(tokens), cfg.head_dim, cfg.n_ff
    gqa = cfg.n_head // cfg.n_head_kv
    pos = np.arange(n)
    inv = rope_inv_freq(cfg.tiny())
    rs = cfg.rope_scaling or {}
    mscale = _yarn_mscale(rs) if rs.get("rope_type") == "yarn" else 1.0
    neox = cfg.arch in NEOX if neox is None else neox

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.eps) * g

    def layer_norm(x: np.ndarray, g: np.ndarray) -> np.ndarray:  # CohereLayerNorm: no bias
        c = x - x.mean(axis=-1, keepdims=True)
        return c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + cfg.eps) * g

    norm = layer_norm if cfg.arch in PARALLEL else rms
    dist = pos[:, None] - pos[None, :]
    causal = np.where(dist >= 0, 0.0, -np.inf)
    windowed = np.where((dist >= 0) & (dist < cfg.window), 0.0, -np.inf)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = x if cfg.arch == "exaone4" else norm(x, w[b + "attn_norm.weight"])
        q, k, v = (h @ w[b + f"attn_{t}.weight"].T + w.get(b + f"attn_{t}.bias", 0) for t in "qkv")
        q, k = q.reshape(n, cfg.n_head, hd), k.reshape(n, cfg.n_head_kv, hd)
        v = v.reshape(n, cfg.n_head_kv, hd)
        if cfg.arch in QK_NORM:  # each head RMS-normed
            q, k = rms(q, w[b + "attn_q_norm.weight"]), rms(k, w[b + "attn_k_norm.weight"])
        if cfg.arch == "command-r":  # each head LayerNormed by a row of its own (where the weights are given)
            q = layer_norm(q, w[b + "attn_q_norm.weight"]) if b + "attn_q_norm.weight" in w else q
            k = layer_norm(k, w[b + "attn_k_norm.weight"]) if b + "attn_k_norm.weight" in w else k
        if cfg.rotates(i):
            q, k = rope(q, pos, inv, neox, mscale), rope(k, pos, inv, neox, mscale)
        if cfg.temp_beta:  # Ministral3's _get_llama_4_attn_scale
            orig = rs.get("original_max_position_embeddings", cfg.n_ctx_train)
            q = q * (1 + cfg.temp_beta * np.log(1 + np.floor(pos / orig)))[:, None, None]
        if kv_f16:
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        att = np.empty((n, cfg.n_head, hd))
        mask = windowed if cfg.is_swa(i) else causal
        for hh in range(cfg.n_head):
            s = q[:, hh] @ k[:, hh // gqa].T / np.sqrt(hd) + mask
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, hh] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, hh // gqa]
        a = att.reshape(n, -1) @ w[b + "attn_output.weight"].T + w.get(b + "attn_output.bias", 0)
        if cfg.arch in ("glm4", "exaone4"):
            a = rms(a, w[b + "post_attention_norm.weight"])
        if cfg.arch not in PARALLEL:  # (cohere2, command-r: the feed-forward reads h too; both added below)
            x = x + a
            h = x if cfg.arch == "exaone4" else rms(x, w[b + "ffn_norm.weight"])
        if cfg.arch == "glm4":
            g, u = np.split(h @ w[b + "ffn_up.weight"].T, [ff], axis=-1)
        else:
            g, u = h @ w[b + "ffn_gate.weight"].T, h @ w[b + "ffn_up.weight"].T
        f = (g / (1 + np.exp(-g)) * u) @ w[b + "ffn_down.weight"].T
        if cfg.arch in ("glm4", "exaone4"):
            f = rms(f, w[b + "post_ffw_norm.weight"])
        x = x + f + (a if cfg.arch in PARALLEL else 0)
    x = norm(x, w["output_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T * cfg.logit_scale
