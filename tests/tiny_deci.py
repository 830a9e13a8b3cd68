"""Tiny random deci models (NVIDIA's Llama-3.1-Nemotron NAS models: Nemotron-51B, Super-49B,
Ultra-253B) written to GGUF as llama.cpp's DeciModel converter writes them, and a numpy float64
forward pass written from transformers' DeciLM modeling code (modeling_decilm.py shipped with
the checkpoints), independent of splitllm's engine.

A block's shape comes from its block_config, which the converter writes per layer as
``attention.head_count`` / ``attention.head_count_kv`` / ``feed_forward_length`` arrays:

- attention with ``n_heads_in_group``: llama's attention, n_head // n_heads_in_group key/value heads;
- ``replace_with_linear``: DeciLMLinearAttention, one n_embd x n_embd map of the normed input
  (head_count n_head, head_count_kv 0; the converter names it attn_output);
- ``no_op`` attention: nothing (head_count 0, head_count_kv 0);
- ``ffn_mult`` None (no_op): no feed-forward (feed_forward_length 0).

DeciLMDecoderLayer: ``if not attention.no_op: x = x + attn(input_layernorm(x))``, then ``if not
ffn.no_op: x = x + mlp(post_attention_layernorm(x))`` (SwiGLU). The rotation is llama's (the
converter permutes q / k for GGML's interleaved pairs), with llama3's frequency factors as
rope_freqs.weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tiny_model import llama3_rope_factors, rope, rope_inv_freq, write_byte_vocab, write_file

Weights = dict[str, np.ndarray]
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip


@dataclass(frozen=True)
class DeciConfig:
    # per layer: (query heads, key/value heads, feed-forward width); (H, 0, f): linear attention
    layers: tuple[tuple[int, int, int], ...]
    n_embd: int = 64
    n_head: int = 4
    n_vocab: int = 300
    rope_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default_factory=lambda: dict(LLAMA3))
    rms_eps: float = 1e-5
    tied: bool = False
    biases: bool = False  # q / k / v / o biases on the attention layers (llama.cpp reads them where present)
    seed: int = 0
    arch: str = "deci"
    n_ctx_train: int = 256

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rot(self) -> int:  # (tiny_model's rotary helpers read these names)
        return self.head_dim


def make_weights(cfg: DeciConfig) -> Weights:
    """Random float64 weights under llama.cpp's tensor names, each layer with its block's tensors."""
    rng = np.random.default_rng(cfg.seed)
    e, hd = cfg.n_embd, cfg.head_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0, 1 / np.sqrt(cols), size=(rows, cols))

    def norm() -> np.ndarray:
        return 1 + 0.1 * rng.normal(size=e)

    w: Weights = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e)), "output_norm.weight": norm()}
    if not cfg.tied:
        w["output.weight"] = mat(cfg.n_vocab, e)
    for i, (nh, nkv, ff) in enumerate(cfg.layers):
        b = f"blk.{i}."
        if nh > 0:
            w[b + "attn_norm.weight"] = norm()
        if nh > 0 and nkv > 0:
            w[b + "attn_q.weight"] = mat(nh * hd, e)
            w[b + "attn_k.weight"] = mat(nkv * hd, e)
            w[b + "attn_v.weight"] = mat(nkv * hd, e)
        if nh > 0:
            w[b + "attn_output.weight"] = mat(e, nh * hd if nkv > 0 else e)
        if nh > 0 and nkv > 0 and cfg.biases:
            for t, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd), ("output", e)):
                w[b + f"attn_{t}.bias"] = 0.3 * rng.normal(size=rows)
        if ff > 0:
            w[b + "ffn_norm.weight"] = norm()
            w[b + "ffn_gate.weight"] = mat(ff, e)
            w[b + "ffn_up.weight"] = mat(ff, e)
            w[b + "ffn_down.weight"] = mat(e, ff)
    return w


def write_deci_gguf(
    cfg: DeciConfig,
    path: Path,
    *,
    weight_type: str = "F32",
    weights: Weights | None = None,
    metadata: dict[str, Any] | None = None,
) -> Weights:
    """Writes the model with DeciModel.set_gguf_parameters' keys (the per-layer arrays, key and value
    lengths, rope_freqs from llama3 scaling); ``metadata`` replaces keys (None: removes one).
    Returns the weights as the file holds them (float64)."""
    w = make_weights(cfg) if weights is None else weights
    wr = gguf.GGUFWriter(str(path), cfg.arch)
    wr.add_name("tiny-deci")
    keys: dict[str, Any] = {
        "rope.freq_base": cfg.rope_base,
        "attention.head_count_kv": [kv for _, kv, _ in cfg.layers],
        "attention.head_count": [h for h, _, _ in cfg.layers],
        "feed_forward_length": [f for _, _, f in cfg.layers],
        "block_count": cfg.n_layer,
        "context_length": cfg.n_ctx_train,
        "embedding_length": cfg.n_embd,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "vocab_size": cfg.n_vocab,
        "rope.dimension_count": cfg.head_dim,
    }
    for key, value in {**keys, **(metadata or {})}.items():
        if value is None:
            continue
        name = f"{cfg.arch}.{key}"
        if isinstance(value, list):
            wr.add_array(name, value)
        elif isinstance(value, float):
            wr.add_float32(name, value)
        else:
            wr.add_uint32(name, value)
    write_byte_vocab(wr, cfg.n_vocab)
    if cfg.rope_scaling:
        wr.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))  # type: ignore[arg-type]
    return write_file(wr, w, weight_type)


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def attention(
    cfg: DeciConfig,
    w: Weights,
    b: str,
    h: np.ndarray,
    nh: int,
    nkv: int,
    *,
    kv_f16: bool = True,
    kv_of_head=None,
) -> np.ndarray:
    """LlamaAttention with the layer's head counts: causal softmax over q.k / sqrt(head_dim), query
    head j reading key/value head j // (nh / nkv) (``kv_of_head(j, nkv)`` overrides that map); keys and
    values rounded as an f16 cache holds them."""
    n, hd = h.shape[0], cfg.head_dim
    pos = np.arange(n)
    inv = rope_inv_freq(cfg)  # type: ignore[arg-type]

    def proj(t: str) -> np.ndarray:
        return h @ w[b + f"attn_{t}.weight"].T + w.get(b + f"attn_{t}.bias", 0)

    q = rope(proj("q").reshape(n, nh, hd), pos, inv, False)
    k = rope(proj("k").reshape(n, nkv, hd), pos, inv, False)
    v = proj("v").reshape(n, nkv, hd)
    if kv_f16:
        k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
    heads = np.array([kv_of_head(j, nkv) if kv_of_head else j // (nh // nkv) for j in range(nh)])
    k, v = k[:, heads], v[:, heads]
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + np.triu(np.full((n, n), -np.inf), 1)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    att = np.einsum("hqk,khd->qhd", s / s.sum(axis=-1, keepdims=True), v).reshape(n, nh * hd)
    return att @ w[b + "attn_output.weight"].T + w.get(b + "attn_output.bias", 0)


def reference_logits(
    cfg: DeciConfig,
    w: Weights,
    tokens: list[int],
    *,
    kv_f16: bool = True,
    skip_attention: tuple[int, ...] = (),
    kv_of_head=None,
) -> np.ndarray:
    """float64 DeciLMForCausalLM over tokens at positions 0..n-1. ``skip_attention``: layers whose
    attention output is dropped (llama.cpp's graph for a layer without a feed-forward);
    ``kv_of_head``: another query-to-key head map (to show the grouping matters)."""
    x = w["token_embd.weight"][tokens]
    for i, (nh, nkv, ff) in enumerate(cfg.layers):
        b = f"blk.{i}."
        if nh > 0 and i not in skip_attention:  # attention, or its linear replacement
            h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
            x = x + (
                attention(cfg, w, b, h, nh, nkv, kv_f16=kv_f16, kv_of_head=kv_of_head)
                if nkv > 0
                else h @ w[b + "attn_output.weight"].T
            )
        if ff > 0:  # DeciLMMLP: down(silu(gate(h)) * up(h))
            h = _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps)
            g = h @ w[b + "ffn_gate.weight"].T
            x = x + (g / (1 + np.exp(-g)) * (h @ w[b + "ffn_up.weight"].T)) @ w[b + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], cfg.rms_eps)
    return x @ w["output.weight" if "output.weight" in w else "token_embd.weight"].T
