"""Tiny random Qwen3.5 models (gguf arch qwen35: gated delta-net layers between gated attention
layers): weights under Hugging Face's names (Qwen3_5ForCausalLM), a numpy float64 forward pass
written from transformers' modeling_qwen3_5.py (Qwen3_5GatedDeltaNet with its recurrent
torch_recurrent_gated_delta_rule, Qwen3_5Attention, the zero-centred RMSNorms), and the same
weights written to GGUF as llama.cpp's convert_hf_to_gguf.py (Qwen3_5TextModel) lays them out.

Qwen3-Next (gguf arch qwen3next, ``Qwen35Config(qwen3next=True)``, always with experts) is the same
model with another layout, from transformers' modeling_qwen3_next.py: a delta net's q, k, v and z in
one in_proj_qkvz and beta and alpha in one in_proj_ba, both laid out per key head (its
fix_query_key_value_ordering), value heads in that grouped order (llama.cpp's Qwen3NextModel keeps
it, writes attn_qkv and attn_gate, or older files ssm_in, and ssm_ba), positions without M-RoPE's
sections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tiny_model import gguf_writer, write_byte_vocab, write_tensors


@dataclass
class Qwen35Config:
    """transformers' Qwen3_5TextConfig in small: ``layer_types`` from full_attention_interval
    (every interval-th layer attends), the linear attention's heads (linear_num_key_heads /
    linear_num_value_heads of linear_key_head_dim = linear_value_head_dim), partial rotary
    (partial_rotary_factor) with M-RoPE sections (mrope_section, text positions in all)."""

    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32
    n_ff: int = 96
    n_vocab: int = 320
    rope_base: float = 10000000.0
    partial_rotary: float = 0.25
    mrope_section: tuple[int, ...] = (2, 1, 1)
    rms_eps: float = 1e-6
    full_attention_interval: int = 2
    k_heads: int = 2
    v_heads: int = 4
    dn_head_dim: int = 16
    conv_kernel: int = 4
    tied_output: bool = False
    n_ctx_train: int = 256
    seed: int = 0
    # Qwen3.5-MoE (qwen35moe): every feed-forward a softmax-routed mixture of n_expert experts of
    # n_ff_exp (top n_expert_used, weights renormalised), plus a shared expert of n_ff_shexp gated
    # by sigmoid(shared_expert_gate . h)
    n_expert: int = 0
    n_expert_used: int = 2
    n_ff_exp: int = 32
    n_ff_shexp: int = 64
    # Qwen3-Next's layout (and, with ssm_in, the older files' fused q, k, v, z as llama.cpp reads them)
    qwen3next: bool = False
    ssm_in: bool = False

    @property
    def arch(self) -> str:
        return "qwen3next" if self.qwen3next else "qwen35moe" if self.n_expert else "qwen35"

    @property
    def n_rot(self) -> int:
        return int(self.head_dim * self.partial_rotary)

    def is_linear(self, layer: int) -> bool:
        return (layer + 1) % self.full_attention_interval != 0

    @property
    def conv_dim(self) -> int:
        return (2 * self.k_heads + self.v_heads) * self.dn_head_dim

    def qkvz_sizes(self) -> tuple[int, ...]:
        """Rows per key head of Qwen3-Next's in_proj_qkvz: q, k, its value heads' v, their z."""
        rd = self.v_heads // self.k_heads * self.dn_head_dim
        return (self.dn_head_dim, self.dn_head_dim, rd, rd)

    def ba_sizes(self) -> tuple[int, ...]:
        """Rows per key head of in_proj_ba: its value heads' beta, then their alpha."""
        r = self.v_heads // self.k_heads
        return (r, r)


def per_key_head(cfg: Qwen35Config, parts: list[np.ndarray], sizes: tuple[int, ...]) -> np.ndarray:
    """Projections (each k_heads x its size rows) interleaved per key head, as in_proj_qkvz /
    in_proj_ba hold them."""
    return np.concatenate(
        [x.reshape(cfg.k_heads, n, -1) for x, n in zip(parts, sizes, strict=True)], axis=1
    ).reshape(-1, parts[0].shape[-1])


def split_per_key_head(cfg: Qwen35Config, x: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """transformers' Qwen3NextGatedDeltaNet.fix_query_key_value_ordering: the inverse of
    :func:`per_key_head`."""
    y = x.reshape(cfg.k_heads, sum(sizes), -1)
    ends = np.cumsum(sizes)
    return [y[:, e - n : e].reshape(cfg.k_heads * n, -1) for e, n in zip(ends, sizes, strict=True)]


def make_hf_weights(cfg: Qwen35Config) -> dict[str, np.ndarray]:
    """Random float64 weights under transformers' names (norm weights zero-centred: the scale is
    1 + w, but the gated norm's plain)."""
    rng = np.random.default_rng(cfg.seed)
    e, hd, d = cfg.n_embd, cfg.head_dim, cfg.dn_head_dim
    kd, vd = cfg.k_heads * d, cfg.v_heads * d

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0, 1 / np.sqrt(cols), size=(rows, cols))

    def norm(n: int) -> np.ndarray:
        return 0.1 * rng.normal(size=n)

    w = {"model.embed_tokens.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    for i in range(cfg.n_layer):
        b = f"model.layers.{i}."
        w[b + "input_layernorm.weight"] = norm(e)
        w[b + "post_attention_layernorm.weight"] = norm(e)
        if cfg.is_linear(i):
            a = b + "linear_attn."
            w[a + "in_proj_qkv.weight"] = mat(2 * kd + vd, e)
            w[a + "in_proj_z.weight"] = mat(vd, e)
            w[a + "in_proj_b.weight"] = mat(cfg.v_heads, e)
            w[a + "in_proj_a.weight"] = mat(cfg.v_heads, e)
            w[a + "conv1d.weight"] = rng.normal(0, 0.5, size=(2 * kd + vd, 1, cfg.conv_kernel))
            w[a + "dt_bias"] = rng.normal(0, 0.5, size=cfg.v_heads)
            w[a + "A_log"] = np.log(rng.uniform(0.5, 4, size=cfg.v_heads))
            w[a + "norm.weight"] = 1 + 0.1 * rng.normal(size=d)
            w[a + "out_proj.weight"] = mat(e, vd)
            if cfg.qwen3next:  # (q, k, v, z and beta, alpha as Qwen3NextGatedDeltaNet holds them)
                qkv, z = w.pop(a + "in_proj_qkv.weight"), w.pop(a + "in_proj_z.weight")
                w[a + "in_proj_qkvz.weight"] = per_key_head(
                    cfg, [qkv[:kd], qkv[kd : 2 * kd], qkv[2 * kd :], z], cfg.qkvz_sizes()
                )
                ba = [w.pop(a + "in_proj_b.weight"), w.pop(a + "in_proj_a.weight")]
                w[a + "in_proj_ba.weight"] = per_key_head(cfg, ba, cfg.ba_sizes())
        else:
            a = b + "self_attn."
            w[a + "q_proj.weight"] = mat(2 * cfg.n_head * hd, e)
            w[a + "k_proj.weight"] = mat(cfg.n_head_kv * hd, e)
            w[a + "v_proj.weight"] = mat(cfg.n_head_kv * hd, e)
            w[a + "q_norm.weight"] = norm(hd)
            w[a + "k_norm.weight"] = norm(hd)
            w[a + "o_proj.weight"] = mat(e, cfg.n_head * hd)
        if cfg.n_expert:
            w[b + "mlp.gate.weight"] = mat(cfg.n_expert, e)
            for x in range(cfg.n_expert):
                w[b + f"mlp.experts.{x}.gate_proj.weight"] = mat(cfg.n_ff_exp, e)
                w[b + f"mlp.experts.{x}.up_proj.weight"] = mat(cfg.n_ff_exp, e)
                w[b + f"mlp.experts.{x}.down_proj.weight"] = mat(e, cfg.n_ff_exp)
            w[b + "mlp.shared_expert.gate_proj.weight"] = mat(cfg.n_ff_shexp, e)
            w[b + "mlp.shared_expert.up_proj.weight"] = mat(cfg.n_ff_shexp, e)
            w[b + "mlp.shared_expert.down_proj.weight"] = mat(e, cfg.n_ff_shexp)
            w[b + "mlp.shared_expert_gate.weight"] = mat(1, e)
            continue
        w[b + "mlp.gate_proj.weight"] = mat(cfg.n_ff, e)
        w[b + "mlp.up_proj.weight"] = mat(cfg.n_ff, e)
        w[b + "mlp.down_proj.weight"] = mat(e, cfg.n_ff)
    w["model.norm.weight"] = norm(e)
    if not cfg.tied_output:
        w["lm_head.weight"] = mat(cfg.n_vocab, e)
    return w


def tiled_v_heads(
    x: np.ndarray, cfg: Qwen35Config, head: int, axis: int = 0, inverse: bool = False
) -> np.ndarray:
    """convert_hf_to_gguf.py's _reorder_v_heads: value heads grouped by key head (HF's order) to
    tiled (head j reads key head j % k_heads); ``inverse``: back. (qwen3next: kept grouped.)"""
    if cfg.qwen3next:
        return x
    x = np.moveaxis(x, axis, 0)
    r, k = cfg.v_heads // cfg.k_heads, cfg.k_heads
    shape = (r, k) if inverse else (k, r)
    y = x.reshape(*shape, head, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
    return np.moveaxis(y, 0, axis)


def to_gguf(cfg: Qwen35Config, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The GGUF tensors convert_hf_to_gguf.py's Qwen3_5TextModel writes: norms + 1 (not the gated
    norm), A_log -> -exp(A_log) as ssm_a, the conv kernel squeezed to (channels, kernel), value heads
    tiled, post_attention_layernorm as post_attention_norm."""
    d, kd = cfg.dn_head_dim, cfg.k_heads * cfg.dn_head_dim
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "linear_attn.in_proj_qkv": "attn_qkv",
        "linear_attn.in_proj_z": "attn_gate",
        "linear_attn.in_proj_b": "ssm_beta",
        "linear_attn.in_proj_a": "ssm_alpha",
        "linear_attn.conv1d": "ssm_conv1d",
        "linear_attn.norm": "ssm_norm",
        "linear_attn.out_proj": "ssm_out",
    }
    out = {
        "token_embd.weight": hf["model.embed_tokens.weight"],
        "output_norm.weight": 1 + hf["model.norm.weight"],
    }
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    for i in range(cfg.n_layer):
        b, g = f"model.layers.{i}.", f"blk.{i}."
        for src, dst in names.items():
            x = hf.get(b + src + ".weight")
            if x is None:
                continue
            if src.endswith("norm") and src != "linear_attn.norm":
                x = 1 + x
            if src == "linear_attn.in_proj_qkv" or src == "linear_attn.conv1d":
                x = x.reshape(x.shape[0], -1)
                x = np.concatenate([x[: 2 * kd], tiled_v_heads(x[2 * kd :], cfg, d)])
            elif src in ("linear_attn.in_proj_z", "linear_attn.norm") and x.ndim == 2:
                x = tiled_v_heads(x, cfg, d)
            elif src in ("linear_attn.in_proj_b", "linear_attn.in_proj_a"):
                x = tiled_v_heads(x, cfg, 1)
            elif src == "linear_attn.out_proj":
                x = tiled_v_heads(x, cfg, d, axis=1)
            out[g + dst + ".weight"] = x
        if (qkvz := hf.get(b + "linear_attn.in_proj_qkvz.weight")) is not None:  # (Qwen3NextModel's)
            if cfg.ssm_in:
                out[g + "ssm_in.weight"] = qkvz
            else:
                *qkv, z = split_per_key_head(cfg, qkvz, cfg.qkvz_sizes())
                out[g + "attn_qkv.weight"], out[g + "attn_gate.weight"] = np.concatenate(qkv), z
            out[g + "ssm_ba.weight"] = hf[b + "linear_attn.in_proj_ba.weight"]
        if cfg.n_expert:
            out[g + "ffn_gate_inp.weight"] = hf[b + "mlp.gate.weight"]
            for t in ("gate", "up", "down"):
                out[g + f"ffn_{t}_exps.weight"] = np.stack(
                    [hf[b + f"mlp.experts.{x}.{t}_proj.weight"] for x in range(cfg.n_expert)]
                )
                out[g + f"ffn_{t}_shexp.weight"] = hf[b + f"mlp.shared_expert.{t}_proj.weight"]
            out[g + "ffn_gate_inp_shexp.weight"] = hf[b + "mlp.shared_expert_gate.weight"][0]
        if cfg.is_linear(i):
            out[g + "ssm_dt.bias"] = tiled_v_heads(hf[b + "linear_attn.dt_bias"], cfg, 1)
            out[g + "ssm_a"] = tiled_v_heads(-np.exp(hf[b + "linear_attn.A_log"]), cfg, 1)
    return out


def from_gguf(cfg: Qwen35Config, held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_gguf` (for the reference to run on what a file holds)."""
    d, kd = cfg.dn_head_dim, cfg.k_heads * cfg.dn_head_dim
    hf = {
        "model.embed_tokens.weight": held["token_embd.weight"],
        "model.norm.weight": held["output_norm.weight"] - 1,
    }
    if "output.weight" in held:
        hf["lm_head.weight"] = held["output.weight"]
    for i in range(cfg.n_layer):
        b, g = f"model.layers.{i}.", f"blk.{i}."
        hf[b + "input_layernorm.weight"] = held[g + "attn_norm.weight"] - 1
        hf[b + "post_attention_layernorm.weight"] = held[g + "post_attention_norm.weight"] - 1
        for t in ("gate", "up", "down"):
            if not cfg.n_expert:
                hf[b + f"mlp.{t}_proj.weight"] = held[g + f"ffn_{t}.weight"]
                continue
            for x in range(cfg.n_expert):
                hf[b + f"mlp.experts.{x}.{t}_proj.weight"] = held[g + f"ffn_{t}_exps.weight"][x]
            hf[b + f"mlp.shared_expert.{t}_proj.weight"] = held[g + f"ffn_{t}_shexp.weight"]
        if cfg.n_expert:
            hf[b + "mlp.gate.weight"] = held[g + "ffn_gate_inp.weight"]
            hf[b + "mlp.shared_expert_gate.weight"] = held[g + "ffn_gate_inp_shexp.weight"][None, :]
        if not cfg.is_linear(i):
            for t in "qkvo":
                hf[b + f"self_attn.{t}_proj.weight"] = held[
                    g + ("attn_output" if t == "o" else f"attn_{t}") + ".weight"
                ]
            for t in "qk":
                hf[b + f"self_attn.{t}_norm.weight"] = held[g + f"attn_{t}_norm.weight"] - 1
            continue
        a = b + "linear_attn."

        def untile(x: np.ndarray, head: int, axis: int = 0) -> np.ndarray:
            return tiled_v_heads(x, cfg, head, axis, inverse=True)

        if cfg.qwen3next:
            if cfg.ssm_in:
                q, k, v, z = split_per_key_head(cfg, held[g + "ssm_in.weight"], cfg.qkvz_sizes())
                hf[a + "in_proj_qkvz.weight"] = held[g + "ssm_in.weight"]
            else:
                q, k, v = np.split(held[g + "attn_qkv.weight"], [kd, 2 * kd])
                z = held[g + "attn_gate.weight"]
                hf[a + "in_proj_qkvz.weight"] = per_key_head(cfg, [q, k, v, z], cfg.qkvz_sizes())
            hf[a + "in_proj_ba.weight"] = held[g + "ssm_ba.weight"]
        else:
            hf[a + "in_proj_qkv.weight"] = np.concatenate(
                [held[g + "attn_qkv.weight"][: 2 * kd], untile(held[g + "attn_qkv.weight"][2 * kd :], d)]
            )
            hf[a + "in_proj_z.weight"] = untile(held[g + "attn_gate.weight"], d)
            hf[a + "in_proj_b.weight"] = untile(held[g + "ssm_beta.weight"], 1)
            hf[a + "in_proj_a.weight"] = untile(held[g + "ssm_alpha.weight"], 1)
        x = held[g + "ssm_conv1d.weight"]
        hf[a + "conv1d.weight"] = np.concatenate([x[: 2 * kd], untile(x[2 * kd :], d)])[:, None, :]
        hf[a + "out_proj.weight"] = untile(held[g + "ssm_out.weight"], d, axis=1)
        hf[a + "dt_bias"] = untile(held[g + "ssm_dt.bias"], 1)
        hf[a + "A_log"] = np.log(-untile(held[g + "ssm_a"], 1))
        hf[a + "norm.weight"] = held[g + "ssm_norm.weight"]
    return hf


def write_qwen35_gguf(
    cfg: Qwen35Config,
    path: Path,
    *,
    weight_type: str = "F32",
    hf: dict[str, np.ndarray] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Writes the model (random unless ``hf`` is given) with the metadata Qwen3_5TextModel writes;
    returns the weights as the file holds them, under Hugging Face's names (float64)."""
    hf = make_hf_weights(cfg) if hf is None else hf
    wr = gguf_writer(path, cfg)
    wr.add_key_length(cfg.head_dim)
    wr.add_value_length(cfg.head_dim)
    wr.add_rope_dimension_count(cfg.n_rot)
    if not cfg.qwen3next:
        wr.add_rope_dimension_sections([*cfg.mrope_section, 0][:4])
    wr.add_ssm_conv_kernel(cfg.conv_kernel)
    wr.add_ssm_state_size(cfg.dn_head_dim)
    wr.add_ssm_group_count(cfg.k_heads)
    wr.add_ssm_time_step_rank(cfg.v_heads)
    wr.add_ssm_inner_size(cfg.v_heads * cfg.dn_head_dim)
    wr.add_full_attention_interval(cfg.full_attention_interval)
    if cfg.n_expert:
        wr.add_expert_count(cfg.n_expert)
        wr.add_expert_used_count(cfg.n_expert_used)
        wr.add_expert_feed_forward_length(cfg.n_ff_exp)
        wr.add_expert_shared_feed_forward_length(cfg.n_ff_shexp)
    wr.add_vocab_size(cfg.n_vocab)
    write_byte_vocab(wr, cfg.n_vocab)
    kv = wr.kv_data[0]
    for key, value in (metadata or {}).items():  # (None: removed)
        if value is None:
            del kv[key]
        else:
            kv[key] = gguf.GGUFValue(value, gguf.GGUFValueType.UINT32)
    held = write_tensors(wr, to_gguf(cfg, hf), weight_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return from_gguf(cfg, held)


def _rmsnorm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def delta_net(cfg: Qwen35Config, w: dict[str, np.ndarray], a: str, h: np.ndarray) -> np.ndarray:
    """Qwen3_5GatedDeltaNet.forward (Qwen3NextGatedDeltaNet's) without a cache, the recurrent rule
    token by token."""
    n, d, kd = h.shape[0], cfg.dn_head_dim, cfg.k_heads * cfg.dn_head_dim
    if a + "in_proj_qkvz.weight" in w:  # Qwen3NextGatedDeltaNet: q, k, v, z and b, a per key head
        q, k, v, wz = split_per_key_head(cfg, w[a + "in_proj_qkvz.weight"], cfg.qkvz_sizes())
        wqkv = np.concatenate([q, k, v])
        wb, wa = split_per_key_head(cfg, w[a + "in_proj_ba.weight"], cfg.ba_sizes())
    else:
        wqkv, wz, wb, wa = (w[a + f"in_proj_{t}.weight"] for t in ("qkv", "z", "b", "a"))
    qkv = h @ wqkv.T
    z = (h @ wz.T).reshape(n, cfg.v_heads, d)
    beta = 1 / (1 + np.exp(-(h @ wb.T)))
    x = h @ wa.T + w[a + "dt_bias"]
    g = -np.exp(w[a + "A_log"]) * np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))
    kernel = w[a + "conv1d.weight"][:, 0, :]  # (channels, K): tap K - 1 meets the current input
    padded = np.concatenate([np.zeros((cfg.conv_kernel - 1, qkv.shape[1])), qkv])
    conv = _silu(np.stack([(kernel.T * padded[t : t + cfg.conv_kernel]).sum(axis=0) for t in range(n)]))
    r = cfg.v_heads // cfg.k_heads
    q = np.repeat(conv[:, :kd].reshape(n, cfg.k_heads, d), r, axis=1)
    k = np.repeat(conv[:, kd : 2 * kd].reshape(n, cfg.k_heads, d), r, axis=1)
    v = conv[:, 2 * kd :].reshape(n, cfg.v_heads, d)
    q = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6) / np.sqrt(d)
    k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6)
    state = np.zeros((cfg.v_heads, d, d))
    out = np.empty((n, cfg.v_heads, d))
    for t in range(n):
        state *= np.exp(g[t])[:, None, None]
        mem = np.einsum("hkv,hk->hv", state, k[t])
        state += np.einsum("hk,hv->hkv", k[t], (v[t] - mem) * beta[t][:, None])
        out[t] = np.einsum("hkv,hk->hv", state, q[t])
    out = _rmsnorm(out, w[a + "norm.weight"], cfg.rms_eps) * _silu(z)
    return out.reshape(n, -1) @ w[a + "out_proj.weight"].T


def attention(cfg: Qwen35Config, w: dict[str, np.ndarray], a: str, h: np.ndarray, kv_f16: bool) -> np.ndarray:
    """Qwen3_5Attention: queries with a gate half per head, (1 + w) RMS norms of q and k heads, the
    rotation of their first n_rot dims (rotate_half), causal GQA softmax, output times sigmoid(gate)."""
    n, hd, rot = h.shape[0], cfg.head_dim, cfg.n_rot
    qg = (h @ w[a + "q_proj.weight"].T).reshape(n, cfg.n_head, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(n, -1)
    k = (h @ w[a + "k_proj.weight"].T).reshape(n, cfg.n_head_kv, hd)
    v = (h @ w[a + "v_proj.weight"].T).reshape(n, cfg.n_head_kv, hd)
    q = _rmsnorm(q, 1 + w[a + "q_norm.weight"], cfg.rms_eps)
    k = _rmsnorm(k, 1 + w[a + "k_norm.weight"], cfg.rms_eps)
    inv = 1.0 / cfg.rope_base ** (np.arange(0, rot, 2) / rot)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x0, x1 = x[..., : rot // 2].copy(), x[..., rot // 2 : rot].copy()
        x[..., : rot // 2], x[..., rot // 2 : rot] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return x

    q, k = rope(q), rope(k)
    if kv_f16:  # as an f16 KV cache stores them
        k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
    mask = np.where(np.arange(n)[:, None] >= np.arange(n)[None, :], 0.0, -np.inf)
    att = np.empty((n, cfg.n_head, hd))
    gqa = cfg.n_head // cfg.n_head_kv
    for hh in range(cfg.n_head):
        s = q[:, hh] @ k[:, hh // gqa].T / np.sqrt(hd) + mask
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        att[:, hh] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, hh // gqa]
    return (att.reshape(n, -1) / (1 + np.exp(-gate))) @ w[a + "o_proj.weight"].T


def _mlp(w: dict[str, np.ndarray], p: str, h: np.ndarray) -> np.ndarray:
    gg, u = h @ w[p + "gate_proj.weight"].T, h @ w[p + "up_proj.weight"].T
    return (_silu(gg) * u) @ w[p + "down_proj.weight"].T


def _moe(cfg: Qwen35Config, w: dict[str, np.ndarray], p: str, h: np.ndarray) -> np.ndarray:
    """Qwen3_5MoeSparseMoeBlock: softmax router, top n_expert_used renormalised, plus the shared
    expert times sigmoid(shared_expert_gate . h)."""
    logits = h @ w[p + "gate.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[: cfg.n_expert_used]
        for x in top:
            out[t] += probs[t, x] / probs[t, top].sum() * _mlp(w, p + f"experts.{x}.", h[t : t + 1])[0]
    gate = 1 / (1 + np.exp(-(h @ w[p + "shared_expert_gate.weight"].T)))
    return out + gate * _mlp(w, p + "shared_expert.", h)


def qwen35_reference_logits(
    cfg: Qwen35Config, w: dict[str, np.ndarray], tokens: list[int], *, kv_f16: bool = True
) -> np.ndarray:
    """float64 Qwen3_5ForCausalLM over tokens at positions 0..n-1: logits (n, n_vocab)."""
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"model.layers.{i}."
        h = _rmsnorm(x, 1 + w[b + "input_layernorm.weight"], cfg.rms_eps)
        if cfg.is_linear(i):
            x = x + delta_net(cfg, w, b + "linear_attn.", h)
        else:
            x = x + attention(cfg, w, b + "self_attn.", h, kv_f16)
        h = _rmsnorm(x, 1 + w[b + "post_attention_layernorm.weight"], cfg.rms_eps)
        x = x + (_moe(cfg, w, b + "mlp.", h) if cfg.n_expert else _mlp(w, b + "mlp.", h))
    x = _rmsnorm(x, 1 + w["model.norm.weight"], cfg.rms_eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T
