"""Tiny random Falcon-H1 models (gguf arch falcon-h1) and a numpy float64 forward pass written from
transformers' FalconH1ForCausalLM (modeling_falcon_h1.py), independent of splitllm's engine.

Every decoder layer runs the attention and the Mamba-2 mixer (tests/tiny_mamba2.py's) side by side
on the same input_layernorm output, h = rmsnorm(x): x += attn(h * attention_in_multiplier) *
attention_out_multiplier (keys times key_multiplier, NEOX rotation) + mamba(h * ssm_in_multiplier,
in_proj's output times the mup_vector of ssm_multipliers over z / x / B / C / dt) *
ssm_out_multiplier; then x += down(silu(gate(h2) * mlp_multipliers[0]) * up(h2)) *
mlp_multipliers[1] with h2 = rmsnorm(x) (pre_ff_layernorm). Embeddings times
embedding_multiplier, logits times lm_head_multiplier. The GGUF file holds the weights with every
multiplier folded in, as llama.cpp's FalconH1Model.modify_tensors writes them, and the
feed-forward's norm as ``blk.N.ffn_norm`` (no ``.weight``: gguf-py maps pre_ff_layernorm.weight,
suffix and all, to FFN_PRE_NORM), the name llama.cpp's falcon-h1 loader reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tiny_mamba2 import MAMBA, HybridConfig, Weights, _rms, _silu, make_weights, mamba2_mixer
from tiny_model import TinyConfig, TinyModel, rope, write_gguf


@dataclass
class FalconConfig:
    """FalconH1Config in small: the Mamba-2 sizes of ``ssm`` (HybridConfig, all layers Mamba-2), its
    multipliers, mamba_rms_norm (the gated norm's weight ``ssm_norm`` or none)."""

    ssm: HybridConfig = field(
        default_factory=lambda: HybridConfig(
            arch="granitehybrid", n_layer=3, layer_types=(MAMBA,) * 3, key_length=32, n_group=2,
            tied_output=False, seed=5,
        )
    )  # fmt: skip
    rms_norm: bool = True
    embedding: float = 5.0
    lm_head: float = 0.3
    attention_in: float = 0.8
    attention_out: float = 1.3
    key: float = 0.6
    ssm_in: float = 1.2
    ssm_out: float = 0.7
    ssm_mup: tuple[float, float, float, float, float] = (0.9, 1.1, 0.5, 1.6, 0.8)  # z, x, B, C, dt
    mlp: tuple[float, float] = (0.7, 1.4)  # gate, down

    def mup_vector(self) -> np.ndarray:
        c = self.ssm
        sizes = (c.d_inner, c.d_inner, c.n_group * c.d_state, c.n_group * c.d_state, c.ssm_heads)
        return np.concatenate([np.full(n, m) for n, m in zip(sizes, self.ssm_mup, strict=True)])


def make_falcon_weights(fc: FalconConfig) -> Weights:
    """Random float64 weights as transformers holds them (no multiplier folded), under GGUF names:
    tiny_mamba2's Mamba-2 layers with a dense SwiGLU feed-forward, and attention in every layer."""
    c = fc.ssm
    w = make_weights(c)
    rng = np.random.default_rng(c.seed + 1)
    e, hd = c.n_embd, c.head_dim
    for i in range(c.n_layer):
        b = f"blk.{i}."
        for name, rows, cols in (
            ("attn_q", c.n_head * hd, e),
            ("attn_k", c.n_head_kv * hd, e),
            ("attn_v", c.n_head_kv * hd, e),
            ("attn_output", e, c.n_head * hd),
        ):
            w[b + name + ".weight"] = rng.normal(0, 1 / np.sqrt(cols), size=(rows, cols))
        if not fc.rms_norm:
            del w[b + "ssm_norm.weight"]
    return w


def folded(fc: FalconConfig, w: Weights) -> Weights:
    """The weights with the multipliers folded in (FalconH1Model.modify_tensors)."""
    out = dict(w)
    scale = {"token_embd.weight": fc.embedding, "output.weight": fc.lm_head}
    for i in range(fc.ssm.n_layer):
        b = f"blk.{i}."
        scale |= {b + "attn_q.weight": fc.attention_in, b + "attn_k.weight": fc.attention_in * fc.key,
                  b + "attn_v.weight": fc.attention_in, b + "attn_output.weight": fc.attention_out,
                  b + "ssm_out.weight": fc.ssm_out, b + "ffn_gate.weight": fc.mlp[0],
                  b + "ffn_down.weight": fc.mlp[1]}  # fmt: skip
        out[b + "ssm_in.weight"] = w[b + "ssm_in.weight"] * fc.ssm_in * fc.mup_vector()[:, None]
    for name, s in scale.items():
        out[name] = w[name] * s
    return out


def write_falcon_gguf(fc: FalconConfig, path: Path, **kw: Any) -> Weights:
    """Writes the folded weights with FalconH1Model's keys (the ssm.* sizes); returns the weights
    as transformers holds them, each rounded as the file holds its folded form (float64)."""
    c = fc.ssm
    w = make_falcon_weights(fc)
    tiny = TinyConfig(arch="falcon-h1", n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head,
                      n_head_kv=c.n_head_kv, n_ff=c.n_ff, n_vocab=c.n_vocab, key_length=c.key_length,
                      rope_base=c.rope_base, rms_eps=c.rms_eps)  # fmt: skip
    a = "falcon-h1."
    sizes = {"conv_kernel": c.d_conv, "state_size": c.d_state, "group_count": c.n_group,
             "inner_size": c.d_inner, "time_step_rank": c.ssm_heads}  # fmt: skip
    meta = {f"{a}ssm.{k}": v for k, v in sizes.items()}
    ff_norm = {f"blk.{i}.ffn_norm.weight": f"blk.{i}.ffn_norm" for i in range(c.n_layer)}
    file_w = {ff_norm.get(n, n): x for n, x in folded(fc, w).items()}
    held = write_gguf(TinyModel(tiny, file_w), path, metadata=meta, **kw)
    held = {n: held[ff_norm.get(n, n)] for n in w}
    unfold = folded(fc, {n: np.ones_like(x) for n, x in w.items()})
    return {n: x / unfold[n] for n, x in held.items()}


def _attention(fc: FalconConfig, w: Weights, b: str, h: np.ndarray) -> np.ndarray:
    """FalconH1Attention: keys times key_multiplier, NEOX rotation, causal GQA softmax over
    sqrt(head_dim); keys and values rounded as an f16 KV cache stores them."""
    c = fc.ssm
    n, hd, nh, nkv = h.shape[0], c.head_dim, c.n_head, c.n_head_kv
    pos = np.arange(n)
    q = (h @ w[b + "attn_q.weight"].T).reshape(n, nh, hd)
    k = (h @ w[b + "attn_k.weight"].T * fc.key).reshape(n, nkv, hd)
    v = (h @ w[b + "attn_v.weight"].T).reshape(n, nkv, hd)
    inv = 1.0 / c.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    q, k = rope(q, pos, inv, True), rope(k, pos, inv, True)
    k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
    k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + np.triu(np.full((n, n), -np.inf), 1)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    att = np.einsum("hqk,khd->qhd", s / s.sum(axis=-1, keepdims=True), v).reshape(n, nh * hd)
    return att @ w[b + "attn_output.weight"].T


def falcon_reference_logits(fc: FalconConfig, w: Weights, tokens: list[int]) -> np.ndarray:
    """float64 FalconH1ForCausalLM over tokens at positions 0..n-1 (see the module's docstring)."""
    c = fc.ssm
    x = w["token_embd.weight"][tokens] * fc.embedding
    for i in range(c.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], c.rms_eps)
        attn = _attention(fc, w, b, h * fc.attention_in) * fc.attention_out
        ssm = mamba2_mixer(c, w, b, h * fc.ssm_in, fc.mup_vector()) * fc.ssm_out
        x = x + attn + ssm
        h2 = _rms(x, w[b + "ffn_norm.weight"], c.rms_eps)
        act = _silu(h2 @ w[b + "ffn_gate.weight"].T * fc.mlp[0]) * (h2 @ w[b + "ffn_up.weight"].T)
        x = x + act @ w[b + "ffn_down.weight"].T * fc.mlp[1]
    x = _rms(x, w["output_norm.weight"], c.rms_eps)
    return x @ w["output.weight"].T * fc.lm_head
