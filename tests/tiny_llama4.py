"""A tiny random Llama 4 (text) written to GGUF with llama.cpp's names and keys (convert_hf_to_gguf.py's
Llama4Model), and a numpy float64 forward pass written from transformers' Llama4TextModel,
independent of splitllm:

- block l has experts when (l + 1) % interleave_moe_layer_step == 0 (Llama4TextMoe: the router's
  top k logits, sigmoid(logit) times the token's input to each chosen expert, and a shared expert
  on the same input), else a dense SwiGLU feed-forward (Llama4TextMLP, intermediate_size_mlp wide);
- layers with use_rope (no_rope_layers: all but every fourth) rotate q and k in interleaved pairs
  (apply_rotary_emb on complex pairs; llama3 frequency scaling where given), then L2-norm each head
  (Llama4TextL2Norm: x / sqrt(mean(x^2) + eps), when use_qk_norm), and attend causally within their
  chunk of attention_chunk_size positions (chunked_attention);
- the other layers (NoPE) attend to everything before them, their queries times
  log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1 (attn_temperature_tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, rope_inv_freq, write_gguf

Weights = dict[str, np.ndarray]
# transformers' llama3 rope scaling with a window that gives every kind of frequency a tiny head has
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip


@dataclass
class Llama4Config:
    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96  # intermediate_size_mlp: the dense blocks' width (feed_forward_length)
    n_ff_exp: int = 48  # intermediate_size: each expert's and the shared expert's
    n_expert: int = 4
    n_expert_used: int = 1
    moe_step: int = 2  # interleave_moe_layer_step
    n_vocab: int = 320
    rope_base: float = 500000.0
    rms_eps: float = 1e-5
    rope_scaling: dict[str, Any] | None = None  # transformers' rope_scaling (llama3 or None)
    # attention_chunk_size, floor_scale, attn_scale: llama.cpp's constants for llama4 files
    chunk: int = 8192
    floor_scale: int = 8192
    attn_scale: float = 0.1
    # False: every layer rotates and attends to everything (written as attention.sliding_window = 0)
    chunked: bool = True
    use_qk_norm: bool | None = None  # None: llama.cpp's choice (not with 128 experts)
    temperature_tuning: bool = True  # the reference only
    weight_input: bool = True  # the reference only: False weighs the experts' outputs instead
    tied_output: bool = False
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def qk_norm(self) -> bool:
        return self.n_expert != 128 if self.use_qk_norm is None else self.use_qk_norm

    def moe(self, layer: int) -> bool:
        return self.moe_step > 0 and (layer + 1) % self.moe_step == 0

    def rotates(self, layer: int) -> bool:  # no_rope_layers[layer]
        return not self.chunked or (layer + 1) % 4 != 0

    def tiny(self) -> TinyConfig:
        return TinyConfig(
            arch="llama4", n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
            n_head_kv=self.n_head_kv, n_ff=self.n_ff, n_vocab=self.n_vocab, rope_base=self.rope_base,
            rms_eps=self.rms_eps,
            n_expert=self.n_expert, n_expert_used=self.n_expert_used, n_ff_exp=self.n_ff_exp,
            rope_scaling=self.rope_scaling, n_ctx_train=16384,
        )  # fmt: skip


def make_weights(cfg: Llama4Config) -> Weights:
    """Random float64 weights under their GGUF names, (rows, cols) as numpy holds them (stacked
    experts: (n_expert, rows, cols))."""
    init = RandomInit(cfg.seed, norm_spread=0.2)
    rng, mat, norm = init.rng, init.mat, init.norm
    e, hd, ne, fx = cfg.n_embd, cfg.head_dim, cfg.n_expert, cfg.n_ff_exp

    w: Weights = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(e)
        w[b + "attn_q.weight"] = 2 * mat(cfg.n_head * hd, e)  # (sharper attention: the chunks matter)
        w[b + "attn_k.weight"] = 2 * mat(cfg.n_head_kv * hd, e)
        w[b + "attn_v.weight"] = mat(cfg.n_head_kv * hd, e)
        w[b + "attn_output.weight"] = mat(e, cfg.n_head * hd)
        w[b + "ffn_norm.weight"] = norm(e)
        if cfg.moe(i):
            w[b + "ffn_gate_inp.weight"] = 2 * mat(ne, e)  # (spread routes)
            w[b + "ffn_gate_exps.weight"] = np.stack([mat(fx, e) for _ in range(ne)])
            w[b + "ffn_up_exps.weight"] = np.stack([mat(fx, e) for _ in range(ne)])
            w[b + "ffn_down_exps.weight"] = np.stack([mat(e, fx) for _ in range(ne)])
            w[b + "ffn_gate_shexp.weight"] = mat(fx, e)
            w[b + "ffn_up_shexp.weight"] = mat(fx, e)
            w[b + "ffn_down_shexp.weight"] = mat(e, fx)
        else:
            w[b + "ffn_gate.weight"] = mat(cfg.n_ff, e)
            w[b + "ffn_up.weight"] = mat(cfg.n_ff, e)
            w[b + "ffn_down.weight"] = mat(e, cfg.n_ff)
    w["output_norm.weight"] = norm(e)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def metadata(cfg: Llama4Config) -> dict[str, Any]:
    """The keys beyond tiny_model's, as convert_hf_to_gguf.py's Llama4Model writes them."""
    keys: dict[str, Any] = {"llama4.interleave_moe_layer_step": cfg.moe_step}
    if not cfg.chunked:  # (MobileLLM: every layer full attention)
        keys["llama4.attention.sliding_window"] = 0
    return keys


def write_llama4_gguf(
    cfg: Llama4Config, w: Weights, path: Path, *, metadata_changes: dict[str, Any] | None = None, **kw: Any
) -> Weights:
    """Writes the model (tiny_model.write_gguf: its byte-level vocabulary, llama3's rope_freqs;
    ``kw``: weight_type, quantize); returns the weights as the file holds them (float64)."""
    own = metadata(cfg)  # (a key of its own removed by a change: never written)
    changes = {k: v for k, v in {**own, **(metadata_changes or {})}.items() if v is not None or k not in own}
    return write_gguf(TinyModel(cfg.tiny(), w), path, metadata=changes, **kw)


def _rms(x: np.ndarray, g: np.ndarray | float, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _swiglu(h: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    g = h @ gate.T
    return (g / (1 + np.exp(-g)) * (h @ up.T)) @ down.T


def _moe(cfg: Llama4Config, w: Weights, b: str, h: np.ndarray) -> np.ndarray:
    """Llama4TextMoe: the shared expert's output plus each chosen expert's on its scaled input."""
    z = h @ w[b + "ffn_gate_inp.weight"].T
    top = np.argsort(-z, axis=-1, kind="stable")[:, : cfg.n_expert_used]
    out = _swiglu(h, *(w[b + f"ffn_{n}_shexp.weight"] for n in ("gate", "up", "down")))
    for x in range(cfg.n_expert):
        rows = np.nonzero((top == x).any(axis=-1))[0]  # the tokens that chose expert x
        score = 1 / (1 + np.exp(-z[rows, x]))[:, None]  # (sigmoid of the chosen logit)
        experts = [w[b + f"ffn_{n}_exps.weight"][x] for n in ("gate", "up", "down")]
        if cfg.weight_input:
            out[rows] += _swiglu(score * h[rows], *experts)
        else:
            out[rows] += score * _swiglu(h[rows], *experts)
    return out


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, chunk: int | None, first: int = 0,
               block: int = 512) -> np.ndarray:  # fmt: skip
    """Causal attention of the queries q (n - first, nh, hd) at positions first.. over k, v (n, nh,
    hd), scale hd^-0.5; with a chunk each query sees the keys of its own chunk only. In blocks of
    queries (long sequences)."""
    hd = q.shape[-1]
    qh, kh, vh = (np.ascontiguousarray(t.transpose(1, 0, 2)) for t in (q, k, v))  # (nh, n, hd)
    out = np.empty_like(qh)
    for b0 in range(0, qh.shape[1], block):
        b1 = min(qh.shape[1], b0 + block)
        q0, q1 = first + b0, first + b1  # their positions
        k0 = (q0 // chunk) * chunk if chunk else 0  # (the first chunk the block's queries see)
        s = qh[:, b0:b1] @ kh[:, k0:q1].transpose(0, 2, 1) * hd**-0.5
        qpos, kpos = np.arange(q0, q1)[:, None], np.arange(k0, q1)[None, :]
        hidden = kpos > qpos
        if chunk:
            hidden |= kpos // chunk != qpos // chunk
        s += np.where(hidden, -np.inf, 0.0)
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        out[:, b0:b1] = (s @ vh[:, k0:q1]) / s.sum(axis=-1, keepdims=True)
    return out.transpose(1, 0, 2)


def reference_states(cfg: Llama4Config, w: Weights, tokens: list[int], *, kv_f16: bool = True,
                     prefix: tuple[list[np.ndarray], int] | None = None) -> list[np.ndarray]:  # fmt: skip
    """The float64 residual stream (n, n_embd) entering each layer, and after the last, of tokens
    at positions 0..n-1; with kv_f16 the keys (rotated and normed) and values rounded to float16,
    as the engines' caches store them. ``prefix`` (states, p): the rows before p are those states'
    (another model's that agrees on them), only the later ones are computed."""
    n, hd, nh, nkv = len(tokens), cfg.head_dim, cfg.n_head, cfg.n_head_kv
    p = prefix[1] if prefix else 0
    pos = np.arange(n)
    inv = rope_inv_freq(cfg.tiny())
    temp = np.log1p(np.floor((pos + 1.0) / cfg.floor_scale)) * cfg.attn_scale + 1.0
    x = w["token_embd.weight"][tokens]
    states = []
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        if prefix:
            x = np.concatenate([prefix[0][i][:p], x[p:]])
        states.append(x)
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        q = (h[p:] @ w[b + "attn_q.weight"].T).reshape(n - p, nh, hd)
        k = (h @ w[b + "attn_k.weight"].T).reshape(n, nkv, hd)
        v = (h @ w[b + "attn_v.weight"].T).reshape(n, nkv, hd)
        if cfg.rotates(i):
            q, k = rope(q, pos[p:], inv, False), rope(k, pos, inv, False)
            if cfg.qk_norm:
                q, k = _rms(q, 1.0, cfg.rms_eps), _rms(k, 1.0, cfg.rms_eps)
        elif cfg.temperature_tuning:
            q = q * temp[p:, None, None]
        if kv_f16:
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        chunk = cfg.chunk if cfg.chunked and cfg.rotates(i) else None
        a = _attention(q, k, v, chunk, p).reshape(n - p, nh * hd)
        x = x.copy()
        x[p:] += a @ w[b + "attn_output.weight"].T
        hf = _rms(x[p:], w[b + "ffn_norm.weight"], cfg.rms_eps)
        if cfg.moe(i):
            x[p:] += _moe(cfg, w, b, hf)
        else:
            x[p:] += _swiglu(hf, *(w[b + f"ffn_{part}.weight"] for part in ("gate", "up", "down")))
    if prefix:
        x = np.concatenate([prefix[0][-1][:p], x[p:]])
    return [*states, x]


def reference_logits(cfg: Llama4Config, w: Weights, tokens: list[int], *, kv_f16: bool = True,
                     prefix: tuple[list[np.ndarray], int] | None = None) -> np.ndarray:  # fmt: skip
    """float64 logits (n, n_vocab) of tokens at positions 0..n-1 (see :func:`reference_states`)."""
    x = reference_states(cfg, w, tokens, kv_f16=kv_f16, prefix=prefix)[-1]
    out = w.get("output.weight", w["token_embd.weight"])
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ out.T
