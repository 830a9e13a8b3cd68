"""Tiny random Granite 4.0 H models (gguf arch granitehybrid: Mamba-2 layers between attention
layers, a dense or mixture-of-experts feed-forward) written to GGUF as llama.cpp's converter
(conversion/granite.py's GraniteHybridModel, mamba.py's Mamba2Model) lays them out, and a numpy
float64 forward pass written from transformers' GraniteMoeHybridForCausalLM
(modeling_granitemoehybrid.py: the Mamba-2 mixer's torch_forward as the plain recurrence over the
tokens), independent of splitllm's engine.

The gated norm is RMS-normed per group of d_inner / n_groups (mamba_ssm's RMSNormGated with its
group size, as llama.cpp's build_mamba2_layer); every Granite 4.0 H model has one group, where
this is transformers' norm over the whole d_inner.

nemotron_h (transformers' NemotronHForCausalLM, Nemotron-H / Nemotron Nano 2) in the same terms:
``arch="nemotron_h"``, layer types "mamba", "attention" (not rotated, scores over sqrt(head_dim))
and "mlp" (x += down(relu(up(h))^2)), each layer one mixer x += mixer(rmsnorm(x)), no multipliers.
nemotron_h_moe (Nemotron 3 Nano, transformers' NemotronHForCausalLM with experts): ``arch=
"nemotron_h_moe"``, its "moe" layers NemotronHMoE: NemotronHTopkRouter's sigmoid scores, the top k
of scores + e_score_correction_bias, weighted by their scores (over their sum with norm_topk_prob)
times routed_scaling_factor, experts and a shared expert all down(relu(up(h))^2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import RandomInit, TinyConfig, TinyModel, rope, write_gguf

Weights = dict[str, np.ndarray]
MAMBA, ATTN, MLP, MOE = "mamba", "attention", "mlp", "moe"


@dataclass
class HybridConfig:
    """transformers' GraniteMoeHybridConfig in small: ``layer_types``, the Mamba-2 mixer's sizes
    (mamba_d_conv, mamba_d_state, mamba_n_heads, mamba_n_groups, mamba_expand 2), Granite's
    multipliers; n_expert 0: the dense feed-forward (shared_mlp alone, written as ffn_*), else the
    experts of width n_ff and a shared expert of n_ff_shexp (0: none)."""

    arch: str = "granitehybrid"
    n_layer: int = 4
    layer_types: tuple[str, ...] = (MAMBA, MAMBA, ATTN, MAMBA)
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    n_vocab: int = 320
    rms_eps: float = 1e-5
    d_conv: int = 4
    d_state: int = 16
    ssm_heads: int = 8
    n_group: int = 1
    conv_bias: bool = True
    n_expert: int = 0
    n_expert_used: int = 2
    n_ff_shexp: int = 0
    rope: bool = False  # Granite 4.0 H: no rotary (position_embedding_type "nope")
    rope_base: float = 10000.0
    tied_output: bool = True
    seed: int = 0
    # embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling
    granite_scales: tuple[float, float, float, float] = (12.0, 0.22, 0.0078125, 6.0)
    norm_groups: int | None = None  # the reference only: the gated norm's groups (None: n_group)
    key_length: int | None = None  # head size, if not n_embd / n_head (written as attention.key_length)
    # nemotron_h_moe's router: norm_topk_prob (expert_weights_norm), routed_scaling_factor
    norm_topk: bool = True
    routed_scale: float = 2.5

    @property
    def nemotron(self) -> bool:
        return self.arch in ("nemotron_h", "nemotron_h_moe")

    @property
    def scales(self) -> tuple[float, float, float, float]:
        """Granite's multipliers, or nemotron_h's none (its scores over sqrt(head_dim))."""
        return (1.0, 1.0, self.head_dim**-0.5, 1.0) if self.nemotron else self.granite_scales

    def ff_of(self, layer: int) -> int:
        """nemotron_h's feed_forward_length of a layer: its MLP's width, 0 for the others."""
        return self.n_ff if self.layer_types[layer] in (MLP, MOE) else 0

    @property
    def d_inner(self) -> int:
        return 2 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_group * self.d_state

    def is_mamba(self, layer: int) -> bool:
        return self.layer_types[layer] == MAMBA


def make_weights(cfg: HybridConfig) -> Weights:
    """Random float64 weights under llama.cpp's GGUF names and shapes (numpy order): ssm_a as
    -exp(A_log) and ssm_d as (n_head, 1), ssm_conv1d as (conv_dim, d_conv), ssm_norm as (n_group,
    d_inner / n_group), as the converter writes them."""
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    e, hd, di, nh = cfg.n_embd, cfg.head_dim, cfg.d_inner, cfg.ssm_heads

    w: Weights = {"token_embd.weight": rng.normal(0, 1.0 if cfg.nemotron else 0.1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(e)  # (input_layernorm)
        if cfg.is_mamba(i):
            w[b + "ssm_in.weight"] = mat(di + cfg.conv_dim + nh, e)
            w[b + "ssm_conv1d.weight"] = rng.normal(0, 0.5, size=(cfg.conv_dim, cfg.d_conv))
            if cfg.conv_bias:
                w[b + "ssm_conv1d.bias"] = 0.1 * rng.normal(size=cfg.conv_dim)
            w[b + "ssm_dt.bias"] = rng.uniform(-3.0, 0.5, size=nh)  # (dt_bias)
            w[b + "ssm_a"] = -np.exp(rng.uniform(-1.0, 1.5, size=(nh, 1)))  # (-exp(A_log))
            w[b + "ssm_d"] = rng.uniform(0.5, 1.5, size=(nh, 1))
            w[b + "ssm_norm.weight"] = norm(di).reshape(cfg.n_group, di // cfg.n_group)
            w[b + "ssm_out.weight"] = mat(e, di)
        elif cfg.layer_types[i] == MLP:
            w[b + "ffn_up.weight"] = mat(cfg.n_ff, e)
            w[b + "ffn_down.weight"] = mat(e, cfg.n_ff)
        elif cfg.layer_types[i] == MOE:  # (nemotron_h_moe)
            w[b + "ffn_gate_inp.weight"] = 2 * mat(cfg.n_expert, e)
            w[b + "exp_probs_b.bias"] = rng.uniform(-0.3, 0.3, size=cfg.n_expert)  # (e_score_correction_bias)
            w[b + "ffn_up_exps.weight"] = np.stack([mat(cfg.n_ff, e) for _ in range(cfg.n_expert)])
            w[b + "ffn_down_exps.weight"] = np.stack([mat(e, cfg.n_ff) for _ in range(cfg.n_expert)])
            w[b + "ffn_up_shexp.weight"] = mat(cfg.n_ff_shexp, e)
            w[b + "ffn_down_shexp.weight"] = mat(e, cfg.n_ff_shexp)
        else:
            w[b + "attn_q.weight"] = mat(cfg.n_head * hd, e)
            w[b + "attn_k.weight"] = mat(cfg.n_head_kv * hd, e)
            w[b + "attn_v.weight"] = mat(cfg.n_head_kv * hd, e)
            w[b + "attn_output.weight"] = mat(e, cfg.n_head * hd)
        if cfg.nemotron:
            continue  # (one mixer a layer)
        w[b + "ffn_norm.weight"] = norm(e)  # (post_attention_layernorm)
        if cfg.n_expert:
            w[b + "ffn_gate_inp.weight"] = 2 * mat(cfg.n_expert, e)
            for p, (rows, cols) in {
                "gate": (cfg.n_ff, e),
                "up": (cfg.n_ff, e),
                "down": (e, cfg.n_ff),
            }.items():
                w[b + f"ffn_{p}_exps.weight"] = np.stack([mat(rows, cols) for _ in range(cfg.n_expert)])
        names = ("_shexp" if cfg.n_expert else "", cfg.n_ff_shexp if cfg.n_expert else cfg.n_ff)
        if names[1]:
            sh, fs = names
            w[b + f"ffn_gate{sh}.weight"] = mat(fs, e)
            w[b + f"ffn_up{sh}.weight"] = mat(fs, e)
            w[b + f"ffn_down{sh}.weight"] = mat(e, fs)
    w["output_norm.weight"] = norm(e)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def metadata(cfg: HybridConfig) -> dict[str, Any]:
    """The keys GraniteHybridModel.set_gguf_parameters (NemotronHModel's) writes beyond tiny_model's."""
    a = cfg.arch + "."
    emb, res, att, logit = cfg.granite_scales
    granite = {
        a + "embedding_scale": emb,
        a + "residual_scale": res,
        a + "attention.scale": att,
        a + "logit_scale": logit,
        a + "rope.scaling.finetuned": cfg.rope,
    }
    keys: dict[str, Any] = {
        **({a + "attention.layer_norm_epsilon": cfg.rms_eps} if cfg.nemotron else granite),
        a + "ssm.conv_kernel": cfg.d_conv,
        a + "ssm.state_size": cfg.d_state,
        a + "ssm.group_count": cfg.n_group,
        a + "ssm.inner_size": cfg.d_inner,
        a + "ssm.time_step_rank": cfg.ssm_heads,
    }
    if cfg.n_expert and cfg.n_ff_shexp:
        keys[a + "expert_shared_feed_forward_length"] = cfg.n_ff_shexp
    if cfg.nemotron and cfg.n_expert:  # (NemotronHModel's MoE keys beyond the counts)
        keys |= {
            a + "expert_feed_forward_length": cfg.n_ff,
            a + "expert_shared_count": 1,
            a + "expert_weights_norm": cfg.norm_topk,
            a + "expert_weights_scale": cfg.routed_scale,
            a + "expert_group_count": 1,
        }
    return keys


def write_hybrid_gguf(cfg: HybridConfig, path: Path, *, metadata_changes: dict[str, Any] | None = None,
                      **kw: Any) -> Weights:  # fmt: skip
    """Writes the model (tiny_model.write_gguf: its byte-level vocabulary; ``kw``: weight_type,
    quantize); head_count_kv per layer, 0 for a Mamba-2 layer (nemotron_h: for its MLP layers too,
    and feed_forward_length per layer). Returns the weights as the file holds them (float64). A
    None in ``metadata_changes`` removes that key."""
    per_layer = [cfg.n_head_kv if cfg.layer_types[i] == ATTN else 0 for i in range(cfg.n_layer)]
    ff = [cfg.ff_of(i) for i in range(cfg.n_layer)] if cfg.nemotron else cfg.n_ff
    tiny = TinyConfig(
        arch=cfg.arch,
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
        n_head_kv=per_layer,  # type: ignore[arg-type]  (the writer's add_head_count_kv)
        n_ff=ff,  # type: ignore[arg-type]  (the writer's add_feed_forward_length)
        n_vocab=cfg.n_vocab,
        key_length=cfg.key_length,
        rope_base=cfg.rope_base,
        rms_eps=cfg.rms_eps,
        n_expert=cfg.n_expert,
        n_expert_used=cfg.n_expert_used if cfg.n_expert else 0,
    )
    own = metadata(cfg)
    changes = {k: v for k, v in {**own, **(metadata_changes or {})}.items() if v is not None or k not in own}
    return write_gguf(TinyModel(tiny, make_weights(cfg)), path, metadata=changes, **kw)


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:  # (torch's, threshold 20)
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def mamba2_mixer(
    cfg: HybridConfig, w: Weights, b: str, h: np.ndarray, mup: np.ndarray | None = None
) -> np.ndarray:
    """GraniteMoeHybridMambaLayer.torch_forward without a cache, its scan as the recurrence:
    in_proj -> (gate, xBC, dt); causal depthwise Conv1d (+ bias) over xBC, SiLU; split x, B, C
    (B and C repeated over the heads of a group); dt = softplus(dt + dt_bias); per token
    S = S exp(dt A) + dt x B^T, y = S C + D x; the gated RMSNorm of y with the gate (without
    ssm_norm, falcon-h1's mamba_rms_norm false: y times silu of the gate alone); out_proj. ``mup``:
    falcon-h1's mup_vector, times in_proj's output."""
    n, di, cd, nh, ds, ng = h.shape[0], cfg.d_inner, cfg.conv_dim, cfg.ssm_heads, cfg.d_state, cfg.n_group
    hd = di // nh
    proj = h @ w[b + "ssm_in.weight"].T * (1.0 if mup is None else mup)
    gate, xbc, dt = proj[:, :di], proj[:, di : di + cd], proj[:, di + cd :]
    padded = np.concatenate([np.zeros((cfg.d_conv - 1, cd)), xbc])
    kernel = w[b + "ssm_conv1d.weight"]  # (conv_dim, d_conv): tap 0 meets the oldest input
    conv = np.stack([(kernel.T * padded[t : t + cfg.d_conv]).sum(axis=0) for t in range(n)])
    xbc = _silu(conv + w.get(b + "ssm_conv1d.bias", 0.0))
    x = xbc[:, :di].reshape(n, nh, hd)
    bb = np.repeat(xbc[:, di : di + ng * ds].reshape(n, ng, ds), nh // ng, axis=1)  # (repeat_interleave)
    cc = np.repeat(xbc[:, di + ng * ds :].reshape(n, ng, ds), nh // ng, axis=1)
    dt = _softplus(dt + w[b + "ssm_dt.bias"])
    a, d = w[b + "ssm_a"][:, 0], w[b + "ssm_d"][:, 0]
    state = np.zeros((nh, hd, ds))
    y = np.empty((n, nh, hd))
    for t in range(n):
        state = (
            state * np.exp(dt[t] * a)[:, None, None] + (dt[t][:, None] * x[t])[:, :, None] * bb[t][:, None, :]
        )
        y[t] = (state * cc[t][:, None, :]).sum(axis=-1) + d[:, None] * x[t]
    groups = cfg.norm_groups or ng
    y = (y.reshape(n, di) * _silu(gate)).reshape(n, groups, di // groups)
    if b + "ssm_norm.weight" not in w:
        return y.reshape(n, di) @ w[b + "ssm_out.weight"].T
    y = _rms(y, w[b + "ssm_norm.weight"].reshape(groups, -1), cfg.rms_eps).reshape(n, di)
    return y @ w[b + "ssm_out.weight"].T


def _attention(cfg: HybridConfig, w: Weights, b: str, h: np.ndarray, kv_f16: bool) -> np.ndarray:
    """GraniteMoeHybridAttention: scores times attention_multiplier, causal GQA softmax; rotary
    (llama's interleaved pairs of GGUF's permuted rows) only with cfg.rope."""
    n, hd, nh, nkv = h.shape[0], cfg.head_dim, cfg.n_head, cfg.n_head_kv
    pos = np.arange(n)
    q = (h @ w[b + "attn_q.weight"].T).reshape(n, nh, hd)
    k = (h @ w[b + "attn_k.weight"].T).reshape(n, nkv, hd)
    v = (h @ w[b + "attn_v.weight"].T).reshape(n, nkv, hd)
    if cfg.rope:
        inv = 1.0 / cfg.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        q, k = rope(q, pos, inv, False), rope(k, pos, inv, False)
    if kv_f16:  # as an f16 KV cache stores them
        k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
    k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) * cfg.scales[2] + np.triu(np.full((n, n), -np.inf), 1)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    att = np.einsum("hqk,khd->qhd", s / s.sum(axis=-1, keepdims=True), v).reshape(n, nh * hd)
    return att @ w[b + "attn_output.weight"].T


def _swiglu(h: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    return (_silu(h @ gate.T) * (h @ up.T)) @ down.T


def _ffn(cfg: HybridConfig, w: Weights, b: str, h: np.ndarray) -> np.ndarray:
    """GraniteMoeHybridMoE (softmax of the top k router logits) plus the shared_mlp, or the
    shared_mlp alone (a dense model)."""
    if not cfg.n_expert:
        return _swiglu(h, *(w[b + f"ffn_{p}.weight"] for p in ("gate", "up", "down")))
    z = h @ w[b + "ffn_gate_inp.weight"].T
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-z[t], kind="stable")[: cfg.n_expert_used]
        p = np.exp(z[t, top] - z[t, top].max())
        for e, wt in zip(top, p / p.sum(), strict=True):
            out[t] += wt * _swiglu(
                h[t], *(w[b + f"ffn_{p_}_exps.weight"][e] for p_ in ("gate", "up", "down"))
            )
    if cfg.n_ff_shexp:
        out = out + _swiglu(h, *(w[b + f"ffn_{p}_shexp.weight"] for p in ("gate", "up", "down")))
    return out


def _relu2_mlp(h: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    return (np.maximum(h @ up.T, 0) ** 2) @ down.T


def _nemotron_moe(cfg: HybridConfig, w: Weights, b: str, h: np.ndarray) -> np.ndarray:
    """NemotronHMoE: the routed experts' weighted sum (NemotronHTopkRouter, one group) plus the
    shared expert, all squared-ReLU MLPs without a gate."""
    scores = 1 / (1 + np.exp(-(h @ w[b + "ffn_gate_inp.weight"].T)))
    choice = scores + w[b + "exp_probs_b.bias"]
    out = _relu2_mlp(h, w[b + "ffn_up_shexp.weight"], w[b + "ffn_down_shexp.weight"])
    for t in range(h.shape[0]):
        top = np.argsort(-choice[t], kind="stable")[: cfg.n_expert_used]
        wt = scores[t, top]
        if cfg.norm_topk:
            wt = wt / (wt.sum() + 1e-20)
        for e, we in zip(top, wt * cfg.routed_scale, strict=True):
            out[t] += we * _relu2_mlp(h[t], w[b + "ffn_up_exps.weight"][e], w[b + "ffn_down_exps.weight"][e])
    return out


def hybrid_reference_logits(
    cfg: HybridConfig, w: Weights, tokens: list[int], *, kv_f16: bool = True
) -> np.ndarray:
    """float64 GraniteMoeHybridForCausalLM over tokens at positions 0..n-1: logits (n, n_vocab).
    Embeddings times embedding_multiplier; each layer x += res * mixer(rmsnorm(x)) (Mamba-2 or
    attention), x += res * ffn(rmsnorm(x)); the final norm, lm_head, over logits_scaling.
    (nemotron_h, NemotronHForCausalLM: x += mixer(rmsnorm(x)) alone, the MLP's squared ReLU a mixer.)"""
    emb, res, _, logit = cfg.scales
    x = w["token_embd.weight"][tokens] * emb
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)
        if cfg.layer_types[i] == MLP:  # (nemotron_h)
            x = x + _relu2_mlp(h, w[b + "ffn_up.weight"], w[b + "ffn_down.weight"])
            continue
        if cfg.layer_types[i] == MOE:  # (nemotron_h_moe)
            x = x + _nemotron_moe(cfg, w, b, h)
            continue
        x = x + res * (mamba2_mixer(cfg, w, b, h) if cfg.is_mamba(i) else _attention(cfg, w, b, h, kv_f16))
        if not cfg.nemotron:
            x = x + res * _ffn(cfg, w, b, _rms(x, w[b + "ffn_norm.weight"], cfg.rms_eps))
    x = _rms(x, w["output_norm.weight"], cfg.rms_eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T / logit


# A Mamba-2 mixer's GGUF names (after "blk.N.") -> transformers' (after the mixer's prefix), as they are
_HF_MIXER = {"ssm_in.weight": "in_proj.weight", "ssm_conv1d.bias": "conv1d.bias", "ssm_dt.bias": "dt_bias",
             "ssm_out.weight": "out_proj.weight"}  # fmt: skip


def hf_weights(
    held: Weights,
    names: dict[str, str],
    layer: str,
    mixer: str,
    other: Callable[[Weights, str, str, np.ndarray], None] | None = None,
) -> Weights:
    """transformers' tensors holding the GGUF weights ``held`` (for the converter tests): ``names``
    maps whole names, and a layer's after "blk.N." (to after "``layer``.N."); the Mamba-2 mixer's
    (after ``mixer``) as the converter undoes them: A_log = log(-A), D and the norm flat, the
    kernels (conv_dim, 1, d_conv). ``other(hf, prefix, rest, x)`` places the rest of a layer's."""
    hf: Weights = {names[n]: x for n, x in held.items() if n in names}
    for name, x in held.items():
        if not name.startswith("blk."):
            continue
        _, bid, rest = name.split(".", 2)
        p = f"{layer}.{bid}."
        if rest in names:
            hf[p + names[rest]] = x
        elif rest in _HF_MIXER:
            hf[p + mixer + _HF_MIXER[rest]] = x
        elif rest == "ssm_conv1d.weight":
            hf[p + mixer + "conv1d.weight"] = x[:, None, :]
        elif rest == "ssm_a":
            hf[p + mixer + "A_log"] = np.log(-x[:, 0])
        elif rest in ("ssm_d", "ssm_norm.weight"):
            hf[p + mixer + ("D" if rest == "ssm_d" else "norm.weight")] = x.reshape(-1)
        else:
            assert other is not None, rest
            other(hf, p, rest, x)
    return hf
