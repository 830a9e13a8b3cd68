"""Tiny random dots1, bailingmoe2, hunyuan-moe and smallthinker models written to GGUF (the tensor
names and keys of llama.cpp's convert_hf_to_gguf.py), and a numpy float64 forward pass written from
transformers' modeling code (Dots1ForCausalLM, HunYuanMoEV1ForCausalLM; inclusionAI's
BailingMoeV2ForCausalLM; PowerInfer's SmallThinkerForCausalLM, as vLLM's smallthinker.py has it),
independent of splitllm:

- dots1: q and k RMS-normed per head before the rotate-half rope; the first ``n_lead`` blocks a
  dense SwiGLU; the others route by sigmoid scores (Dots1TopkRouter): the experts chosen by the
  scores plus e_score_correction_bias within the best ``topk_group`` of ``n_group`` groups (a
  group's score: the sum of its two best), weighed by their scores (renormalized with
  norm_topk_prob) times routed_scaling_factor; ``n_shared`` shared experts (one SwiGLU of their
  stacked rows) added.
- bailingmoe2: dots1's blocks but for q, k and v from one projection (attn_qkv) and the rotation
  of the first ``n_rot`` dimensions of each head only (partial_rotary_factor); the router
  (BailingMoeV2Gate) likewise, the shared experts ``n_ff_shexp`` wide each where given; the file's
  last ``n_nextn`` blocks NextN (multi-token prediction) layers, which the forward pass does not run.
- hunyuan-moe: q and k RMS-normed per head after the rotate-half rope (HunYuanMoEV1Attention);
  experts in every block, routed by the softmax of the router's logits (HunYuanTopKGate's
  topkgating: the top k renormalized to sum 1; its capacity limit, a training device, left out as
  llama.cpp leaves it out); one shared MLP (shared_mlp) added, as wide as the experts unless
  ``n_ff_shexp``.
- smallthinker: no q/k norms; the router (primary_router) reads the block's input, before the
  attention; the top k of its logits weighed by their softmax, or by their sigmoids renormalized
  (topk-sigmoid-normalize); ReGLU experts, relu(gate) * up; no shared expert. With ``window`` (a
  sliding window in the file) the layers 0, 4, 8, ... are global and not rotated (NoPE), the others
  slide and rotate with base ``rope_base_swa``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, write_gguf

Weights = dict[str, np.ndarray]


@dataclass
class VarConfig:
    arch: str  # dots1, bailingmoe2, hunyuan-moe, smallthinker
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96  # the leading dense blocks' width
    n_ff_exp: int = 32
    n_expert: int = 8
    n_expert_used: int = 2
    n_shared: int = 2  # shared experts, each n_ff_exp wide
    n_lead: int = 1  # leading dense blocks
    sigmoid: bool = True  # sigmoid scores (else the softmax)
    norm_topk: bool = True
    scale: float = 2.5  # routed_scaling_factor
    n_group: int = 4
    topk_group: int = 2
    expert_bias: bool = True  # e_score_correction_bias
    n_vocab: int = 320
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0
    tied_output: bool = False
    n_rot: int | None = None  # rotated dimensions of a head (None: all)
    n_ff_shexp: int | None = None  # bailingmoe2: each shared expert's width (None: n_ff_exp)
    n_nextn: int = 0  # bailingmoe2: NextN blocks in the file past n_layer
    window: bool = False  # smallthinker: sliding-window layers (and NoPE ones)
    rope_base_swa: float = 1000.0  # smallthinker: the sliding layers' rotary base

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rot(self) -> int:
        return self.n_rot or self.head_dim

    @property
    def shared_width(self) -> int:
        return (self.n_ff_shexp or self.n_ff_exp) * self.n_shared

    def is_moe(self, layer: int) -> bool:
        return layer >= self.n_lead


def make_weights(cfg: VarConfig) -> Weights:
    """Random float64 weights under their GGUF names, (rows, cols) as numpy holds them (stacked
    experts: (n_expert, rows, cols))."""
    init = RandomInit(cfg.seed, norm_spread=0.2)
    rng, mat, norm = init.rng, init.mat, init.norm
    e, hd, ne, fx = cfg.n_embd, cfg.head_dim, cfg.n_expert, cfg.n_ff_exp
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_head_kv * hd

    w: Weights = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer + cfg.n_nextn):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(e)
        if cfg.arch == "bailingmoe2":
            w[b + "attn_qkv.weight"] = mat(q_dim + 2 * kv_dim, e)
        else:
            for t, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                w[b + f"attn_{t}.weight"] = mat(rows, e)
        if i >= cfg.n_layer:  # a NextN layer's own tensors (llama.cpp's bailingmoe2 needs them)
            w[b + "nextn.eh_proj.weight"] = mat(e, 2 * e)
            for n in ("nextn.enorm", "nextn.hnorm", "layer_output_norm"):
                w[b + n + ".weight"] = norm(e)
        if cfg.arch != "smallthinker":
            w[b + "attn_q_norm.weight"] = norm(hd)
            w[b + "attn_k_norm.weight"] = norm(hd)
        w[b + "attn_output.weight"] = mat(e, q_dim)
        w[b + "ffn_norm.weight"] = norm(e)
        if not cfg.is_moe(i):
            w |= init.dense_ffn(b, e, cfg.n_ff)
        else:
            w |= init.routed_ffn(b, e, ne, fx, bias=0.3 * cfg.expert_bias,
                                 ff_shared=cfg.shared_width if cfg.n_shared else None)  # fmt: skip
    w["output_norm.weight"] = norm(e)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def metadata(cfg: VarConfig) -> dict[str, Any]:
    """The keys beyond tiny_model's, as llama.cpp's converter writes them (Dots1Model)."""
    a = cfg.arch + "."
    keys = {a + "leading_dense_block_count": cfg.n_lead, a + "expert_shared_count": cfg.n_shared,
            a + "expert_weights_scale": cfg.scale, a + "expert_weights_norm": cfg.norm_topk,
            a + "expert_gating_func": 2 if cfg.sigmoid else 1, a + "expert_group_count": cfg.n_group,
            a + "expert_group_used_count": cfg.topk_group}  # fmt: skip
    if cfg.arch == "smallthinker":  # (SmallThinkerModel's: the expert width is feed_forward_length too)
        keys = {a + "expert_gating_func": 2 if cfg.sigmoid else 1, a + "feed_forward_length": cfg.n_ff_exp}
        if cfg.window:
            keys |= {a + "attention.sliding_window": 4096, a + "rope.freq_base_swa": cfg.rope_base_swa}
        return keys
    if cfg.arch == "hunyuan-moe":  # (HunYuanMoEModel's: no router settings)
        return {a + "expert_shared_feed_forward_length": cfg.n_ff_shexp or cfg.n_ff,
                a + "expert_shared_count": cfg.n_shared}  # fmt: skip
    if cfg.arch == "bailingmoe2":  # (BailingMoeV2Model: block_count counts the NextN layers)
        keys[a + "block_count"] = cfg.n_layer + cfg.n_nextn
        keys[a + "nextn_predict_layers"] = cfg.n_nextn
        keys[a + "expert_shared_feed_forward_length"] = cfg.n_ff_shexp or cfg.n_ff_exp
    return keys


def write_var_gguf(
    cfg: VarConfig, w: Weights, path: Path, *, metadata_changes: dict[str, Any] | None = None, **kw: Any
) -> Weights:
    """Writes the model (tiny_model.write_gguf: its byte-level vocabulary; ``kw``: weight_type,
    quantize); returns the weights as the file holds them (float64)."""
    tiny = TinyConfig(arch=cfg.arch, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                      n_head_kv=cfg.n_head_kv, n_ff=cfg.n_ff, n_vocab=cfg.n_vocab, rope_base=cfg.rope_base,
                      rms_eps=cfg.rms_eps, n_expert=cfg.n_expert, n_expert_used=cfg.n_expert_used,
                      n_ff_exp=cfg.n_ff_exp, n_rot=cfg.n_rot)  # fmt: skip
    own = metadata(cfg)  # (a key of its own removed by a change: never written)
    changes = {k: v for k, v in {**own, **(metadata_changes or {})}.items() if v is not None or k not in own}
    return write_gguf(TinyModel(tiny, w), path, metadata=changes, **kw)


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _swiglu(
    h: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray, relu: bool = False
) -> np.ndarray:
    g = h @ gate.T
    return ((np.maximum(g, 0.0) if relu else g / (1 + np.exp(-g))) * (h @ up.T)) @ down.T


def _route(cfg: VarConfig, z: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The chosen experts and their weights for one token's router logits z (Dots1TopkRouter)."""
    if cfg.sigmoid:
        scores = 1 / (1 + np.exp(-z))
    else:
        scores = np.exp(z - z.max())
        scores /= scores.sum()
    choice = scores + (bias if bias is not None else 0.0)
    if cfg.n_group > 1:  # the best topk_group groups by the sum of their two best choice scores
        groups = choice.reshape(cfg.n_group, -1)
        best2 = np.sort(groups, axis=-1)[:, -2:].sum(axis=-1)
        keep = np.argsort(-best2, kind="stable")[: cfg.topk_group]
        mask = np.zeros_like(groups, dtype=bool)
        mask[keep] = True
        # (transformers fills 0.0, llama.cpp -inf: the same choice while the chosen scores are positive)
        choice = np.where(mask.reshape(-1), choice, -np.inf)
    top = np.argsort(-choice, kind="stable")[: cfg.n_expert_used]
    weights = scores[top]
    if cfg.norm_topk:
        weights = weights / (weights.sum() + 1e-20)
    return top, weights * cfg.scale


def _ffn(cfg: VarConfig, w: Weights, b: str, layer: int, h: np.ndarray, router_in: np.ndarray) -> np.ndarray:
    """The block's feed-forward of h; the router reads router_in (h but for smallthinker's)."""
    if not cfg.is_moe(layer):
        return _swiglu(h, *(w[b + f"ffn_{n}.weight"] for n in ("gate", "up", "down")))
    z = router_in @ w[b + "ffn_gate_inp.weight"].T
    out = np.zeros_like(h)
    relu = cfg.arch == "smallthinker"
    for t in range(h.shape[0]):
        top, weights = _route(cfg, z[t], w.get(b + "exp_probs_b.bias"))
        for x, wt in zip(top, weights, strict=True):
            out[t] += wt * _swiglu(
                h[t], *(w[b + f"ffn_{n}_exps.weight"][x] for n in ("gate", "up", "down")), relu
            )
    if cfg.n_shared:
        out = out + _swiglu(h, *(w[b + f"ffn_{n}_shexp.weight"] for n in ("gate", "up", "down")))
    return out


def reference_logits(cfg: VarConfig, w: Weights, tokens: list[int], *, kv_f16: bool = True) -> np.ndarray:
    """float64 logits (n, n_vocab) of tokens at positions 0..n-1; with kv_f16 the keys (rotated) and
    values rounded to float16, as the engines' caches store them."""
    n, hd, nh, nkv = len(tokens), cfg.head_dim, cfg.n_head, cfg.n_head_kv
    pos = np.arange(n)
    dims = np.arange(0, cfg.rot, 2, dtype=np.float64) / cfg.rot  # (partial rotation: the first dims)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        block_in = x
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        if cfg.arch == "bailingmoe2":  # query_key_value: the q heads, then k's, then v's
            q, k, v = np.split(h @ w[b + "attn_qkv.weight"].T, [nh * hd, (nh + nkv) * hd], axis=-1)
            q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        else:
            q, k, v = ((h @ w[b + f"attn_{t}.weight"].T).reshape(n, -1, hd) for t in "qkv")
        after = cfg.arch == "hunyuan-moe"  # (the norms after the rotation)
        if not after and b + "attn_q_norm.weight" in w:
            q = _rms(q, w[b + "attn_q_norm.weight"], cfg.rms_eps)
            k = _rms(k, w[b + "attn_k_norm.weight"], cfg.rms_eps)
        sliding = cfg.window and i % 4 != 0
        if not (cfg.window and i % 4 == 0):  # (smallthinker's NoPE layers)
            inv = 1.0 / (cfg.rope_base_swa if sliding else cfg.rope_base) ** dims
            q, k = rope(q, pos, inv, True), rope(k, pos, inv, True)
        if after:
            q = _rms(q, w[b + "attn_q_norm.weight"], cfg.rms_eps)
            k = _rms(k, w[b + "attn_k_norm.weight"], cfg.rms_eps)
        if kv_f16:
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) * hd**-0.5 + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = np.einsum("hqk,khd->qhd", s / s.sum(axis=-1, keepdims=True), v).reshape(n, nh * hd)
        x = x + a @ w[b + "attn_output.weight"].T
        h = _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps)
        x = x + _ffn(cfg, w, b, i, h, block_in if cfg.arch == "smallthinker" else h)
    out = w.get("output.weight", w["token_embd.weight"])
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ out.T
