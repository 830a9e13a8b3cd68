"""Tiny random pure state-space models (gguf arch mamba: Mamba-1 and Falcon-Mamba; mamba2: Mamba-2)
written to GGUF as llama.cpp's converter (conversion/mamba.py's MambaModel and Mamba2Model) lays
them out: context_length 2**20, head_count and feed_forward_length 0, the ssm.* keys, A as
-exp(A_log), the kernels squeezed, the output tied unless given. A float64 forward pass written from
transformers' MambaForCausalLM / FalconMambaForCausalLM (modeling_mamba.py's MambaMixer.slow_forward,
modeling_falcon_mamba.py's rms_forward of B, C and the time step) and, for Mamba-2, tiny_mamba2's
mixer (Mamba2Mixer.torch_forward as the recurrence, its gated norm per group as mamba_ssm's and
llama.cpp's), independent of splitllm's engine.

Falcon-Mamba normalizes B, C and dt with ``mixer_rms_eps``; llama.cpp uses the file's
layer_norm_rms_epsilon for them: the tiny models set one epsilon for both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tiny_mamba2 import MAMBA, HybridConfig, hybrid_reference_logits, make_weights
from tiny_model import _override_metadata, write_byte_vocab, write_tensors

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class MambaConfig:
    """MambaConfig / FalconMambaConfig / Mamba2Config in small (expand 2). ``version`` 1 or 2;
    ``dt_b_c_rms``: Falcon-Mamba's norms (Mamba-1 only); Mamba-2's heads and groups as in
    tiny_mamba2.HybridConfig."""

    version: int = 1
    n_layer: int = 3
    n_embd: int = 64
    n_vocab: int = 320
    rms_eps: float = 1e-5
    d_conv: int = 4
    d_state: int = 16
    dt_rank: int = 8
    dt_b_c_rms: bool = False
    ssm_heads: int = 8  # (Mamba-2)
    n_group: int = 1  # (Mamba-2)
    tied_output: bool = True
    seed: int = 0

    @property
    def arch(self) -> str:
        return "mamba" if self.version == 1 else "mamba2"

    @property
    def d_inner(self) -> int:
        return 2 * self.n_embd

    def hybrid(self) -> HybridConfig:
        """The Mamba-2 stack as tiny_mamba2 holds it: nemotron_h's x += mixer(rmsnorm(x)) with
        Mamba-2 layers only, no multipliers."""
        same = ("n_layer", "n_embd", "n_vocab", "rms_eps", "d_conv", "d_state", "ssm_heads", "n_group",
                "tied_output", "seed")  # fmt: skip
        layers = (MAMBA,) * self.n_layer
        return HybridConfig(arch="nemotron_h", layer_types=layers, **{k: getattr(self, k) for k in same})


def make_weights_v1(cfg: MambaConfig) -> Weights:
    """Random Mamba-1 weights under llama.cpp's names and shapes (numpy order)."""
    rng = np.random.default_rng(cfg.seed)
    e, di, ds, dr = cfg.n_embd, cfg.d_inner, cfg.d_state, cfg.dt_rank

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return rng.normal(0, scale / np.sqrt(cols), size=(rows, cols))

    w: Weights = {"token_embd.weight": rng.normal(0, 1.0, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = 1 + 0.1 * rng.normal(size=e)
        w[b + "ssm_in.weight"] = mat(2 * di, e)
        w[b + "ssm_conv1d.weight"] = rng.normal(0, 0.5, size=(di, cfg.d_conv))
        w[b + "ssm_conv1d.bias"] = 0.1 * rng.normal(size=di)
        w[b + "ssm_x.weight"] = mat(dr + 2 * ds, di, 2.0)
        w[b + "ssm_dt.weight"] = mat(di, dr)
        w[b + "ssm_dt.bias"] = rng.uniform(-3.0, 0.5, size=di)
        w[b + "ssm_a"] = -np.exp(rng.uniform(-1.0, 1.5, size=(di, ds)))  # (-exp(A_log))
        w[b + "ssm_d"] = rng.uniform(0.5, 1.5, size=di)
        w[b + "ssm_out.weight"] = mat(e, di)
    w["output_norm.weight"] = 1 + 0.1 * rng.normal(size=e)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return w


def write_mamba_gguf(
    cfg: MambaConfig,
    path: Path,
    *,
    weight_type: str = "F32",
    metadata_changes: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> Weights:
    """Writes the model with MambaModel's (Mamba2Model's) keys and the byte-level vocabulary of
    tiny_model; ``metadata_changes`` (None removes a key) and ``drop`` (tensor names) make bad
    files. Returns the weights as the file holds them (float64)."""
    wr = gguf.GGUFWriter(str(path), cfg.arch)
    wr.add_name(f"tiny-{cfg.arch}")
    wr.add_context_length(2**20)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_feed_forward_length(0)
    wr.add_head_count(0)
    wr.add_block_count(cfg.n_layer)
    wr.add_ssm_conv_kernel(cfg.d_conv)
    wr.add_ssm_inner_size(cfg.d_inner)
    wr.add_ssm_state_size(cfg.d_state)
    if cfg.version == 1:
        wr.add_ssm_time_step_rank(cfg.dt_rank)
        wr.add_layer_norm_rms_eps(cfg.rms_eps)
        wr.add_ssm_dt_b_c_rms(cfg.dt_b_c_rms)
        weights = make_weights_v1(cfg)
    else:
        wr.add_ssm_time_step_rank(cfg.ssm_heads)
        wr.add_ssm_group_count(cfg.n_group)
        wr.add_layer_norm_rms_eps(cfg.rms_eps)
        weights = make_weights(cfg.hybrid())
    write_byte_vocab(wr, cfg.n_vocab)
    _override_metadata(wr, metadata_changes or {})
    held = write_tensors(wr, {k: v for k, v in weights.items() if k not in drop}, weight_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:  # (torch's, threshold 20)
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def mamba1_mixer(cfg: MambaConfig, w: Weights, b: str, h: np.ndarray) -> np.ndarray:
    """MambaMixer.slow_forward without a cache (FalconMambaMixer's with dt_b_c_rms): in_proj ->
    (x, gate); the causal depthwise Conv1d with bias, SiLU; x_proj -> (time_step, B, C), each
    rms_forward-ed for Falcon-Mamba; dt = softplus(dt_proj(time_step)); per token
    S = exp(dt A) S + dt B x, y = S C + D x; y * silu(gate); out_proj."""
    n, di, ds, dr = h.shape[0], cfg.d_inner, cfg.d_state, cfg.dt_rank
    proj = h @ w[b + "ssm_in.weight"].T
    x, gate = proj[:, :di], proj[:, di:]
    padded = np.concatenate([np.zeros((cfg.d_conv - 1, di)), x])
    kernel = w[b + "ssm_conv1d.weight"]  # (d_inner, d_conv): tap 0 meets the oldest input
    x = _silu(np.stack([(kernel.T * padded[t : t + cfg.d_conv]).sum(axis=0) for t in range(n)])
              + w[b + "ssm_conv1d.bias"])  # fmt: skip
    ssm = x @ w[b + "ssm_x.weight"].T
    step, bb, cc = ssm[:, :dr], ssm[:, dr : dr + ds], ssm[:, dr + ds :]
    if cfg.dt_b_c_rms:
        step, bb, cc = _rms(step, cfg.rms_eps), _rms(bb, cfg.rms_eps), _rms(cc, cfg.rms_eps)
    dt = _softplus(step @ w[b + "ssm_dt.weight"].T + w[b + "ssm_dt.bias"])
    a = w[b + "ssm_a"]  # (d_inner, d_state)
    state = np.zeros((di, ds))
    y = np.empty((n, di))
    for t in range(n):
        state = np.exp(dt[t][:, None] * a) * state + (dt[t] * x[t])[:, None] * bb[t][None, :]
        y[t] = state @ cc[t] + w[b + "ssm_d"] * x[t]
    return (y * _silu(gate)) @ w[b + "ssm_out.weight"].T


def mamba_reference_logits(cfg: MambaConfig, w: Weights, tokens: list[int]) -> np.ndarray:
    """float64 MambaForCausalLM (FalconMamba, Mamba2) over tokens: logits (n, n_vocab). Each block
    x += mixer(rmsnorm(x)); norm_f, lm_head (the embedding when tied)."""
    if cfg.version == 2:
        return hybrid_reference_logits(cfg.hybrid(), w, tokens)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        x = x + mamba1_mixer(cfg, w, b, _rms(x, cfg.rms_eps) * w[b + "attn_norm.weight"])
    x = _rms(x, cfg.rms_eps) * w["output_norm.weight"]
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def falcon(cfg: MambaConfig, **kw: Any) -> MambaConfig:
    """Falcon-Mamba's variant of a Mamba-1 config (B, C and dt RMS-normed)."""
    return replace(cfg, dt_b_c_rms=True, **kw)
