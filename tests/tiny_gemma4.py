"""Tiny random Gemma 4 text models (gguf arch gemma4) written with gguf-py as llama.cpp's
convert_hf_to_gguf.py (Gemma4Model) writes them, and a numpy float64 forward pass written from
transformers' Gemma4 text model (Gemma4TextModel / Gemma4TextDecoderLayer / Gemma4TextAttention),
independent of splitllm's engine.

The definition, per decoder layer (x the residual stream):
  h = RMSNorm(x) input_layernorm
  q = rope(RMSNorm_head(q_proj h) q_norm)
  k = rope(RMSNorm_head(k_proj h) k_norm);  v = RMSNorm_head(v_proj h)  (no scale; with
      attention_k_eq_v a full-attention layer has no v_proj and takes k_proj h)
  attention with scaling 1.0; sliding layers see the last sliding_window positions
  x = x + RMSNorm(o_proj attn) post_attention_layernorm
  x = x + RMSNorm(mlp(RMSNorm(x) pre_feedforward_layernorm)) post_feedforward_layernorm,
      mlp = down(gelu_tanh(gate h) * up h)
  E2B / E4B: x = x + RMSNorm(per_layer_projection(gelu_tanh(per_layer_input_gate x) * e_l))
      post_per_layer_input_norm, e_l the layer's per-layer input (see _per_layer_inputs)
  x = x * layer_scalar
Embeddings times sqrt(hidden_size); logits soft-capped by final_logit_softcapping. Sliding layers
rotate all their head_dim dimensions with rope_local_base_freq; full-attention layers use
"proportional" rope: base^(-2i / global_head_dim) for the first partial_rotary_factor of the pairs
(i, i + head_dim / 2), the rest unrotated. KV-shared layers (num_kv_shared_layers, the last ones)
compute no keys or values and attend to those of the last earlier layer of their type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tiny_model import RandomInit, write_byte_vocab, write_tensors


@dataclass(frozen=True)
class Gemma4Config:
    swa: tuple[bool, ...] = (True, True, False, True, True, False)  # layer_types: sliding or full
    n_embd: int = 64
    n_vocab: int = 320
    n_head: int = 4
    n_head_full: int | None = None   # the full-attention layers' query heads, if not n_head (an array)
    n_head_kv: int = 2                # of the sliding layers
    n_head_kv_full: int = 1           # num_global_key_value_heads
    head_dim: int = 16                # of the sliding layers
    head_dim_full: int = 32           # global_head_dim
    n_ff: int = 128
    double_wide_shared: bool = False  # use_double_wide_mlp: the KV-shared layers' MLPs twice as wide
    sliding_window: int = 5
    rope_base: float = 1e6            # full attention
    rope_base_swa: float = 1e4
    partial_rotary_full: float = 0.25
    k_eq_v: bool = True               # attention_k_eq_v: full-attention layers without v_proj
    layer_scalar: bool = True
    final_softcap: float = 10.0       # 0: none (written as 0); the key's absence means 30
    write_softcap: bool = True
    rms_eps: float = 1e-6
    n_embd_per_layer: int = 0         # hidden_size_per_layer_input (E2B / E4B)
    n_kv_shared: int = 0              # num_kv_shared_layers
    # 26B-A4B (enable_moe_block): every layer's MLP becomes the shared expert beside n_expert
    # experts of width n_ff_exp, n_expert_used per token; fused: ffn_gate_up_exps as the converter
    # writes the experts' gate_up_proj (else ffn_gate_exps / ffn_up_exps).
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 64
    fused_experts: bool = True
    tied_output: bool = True
    seed: int = 0

    @property
    def n_layer(self) -> int:
        return len(self.swa)

    def head_dim_of(self, i: int) -> int:
        return self.head_dim if self.swa[i] else self.head_dim_full

    def n_head_of(self, i: int) -> int:
        return self.n_head if self.swa[i] or self.n_head_full is None else self.n_head_full

    def n_kv_of(self, i: int) -> int:
        return self.n_head_kv if self.swa[i] else self.n_head_kv_full

    def n_ff_of(self, i: int) -> int:
        return self.n_ff * (2 if self.double_wide_shared and self.shared(i) else 1)

    def shared(self, i: int) -> bool:
        return i >= self.n_layer - self.n_kv_shared

    def kv_source(self, i: int) -> int:
        """transformers' kv_shared_layer_index: the last non-shared layer of the same type."""
        if not self.shared(i):
            return i
        first = self.n_layer - self.n_kv_shared
        return max(j for j in range(first) if self.swa[j] == self.swa[i])

    def has_v(self, i: int) -> bool:
        return self.swa[i] or not self.k_eq_v


@dataclass
class Gemma4Model:
    cfg: Gemma4Config
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def make_weights(cfg: Gemma4Config) -> Gemma4Model:
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm

    e = cfg.n_embd
    w: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, e))}
    per = cfg.n_embd_per_layer
    if per:
        w["per_layer_token_embd.weight"] = rng.normal(0, 1, size=(cfg.n_vocab, cfg.n_layer * per))
        w["per_layer_model_proj.weight"] = mat(cfg.n_layer * per, e)
        w["per_layer_proj_norm.weight"] = norm(per)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        hd = cfg.head_dim_of(i)
        q_dim, kv_dim = cfg.n_head_of(i) * hd, cfg.n_kv_of(i) * hd
        w[b + "attn_norm.weight"] = norm(e)
        w[b + "attn_q.weight"] = mat(q_dim, e)
        w[b + "attn_q_norm.weight"] = norm(hd)
        if not cfg.shared(i):  # (a KV-shared layer's k_proj / v_proj are not used; the converter keeps none)
            w[b + "attn_k.weight"] = mat(kv_dim, e)
            w[b + "attn_k_norm.weight"] = norm(hd)
            if cfg.has_v(i):
                w[b + "attn_v.weight"] = mat(kv_dim, e)
        w[b + "attn_output.weight"] = mat(e, q_dim)
        w[b + "post_attention_norm.weight"] = norm(e)
        w[b + "ffn_norm.weight"] = norm(e)
        w[b + "ffn_gate.weight"] = mat(cfg.n_ff_of(i), e)
        w[b + "ffn_up.weight"] = mat(cfg.n_ff_of(i), e)
        w[b + "ffn_down.weight"] = mat(e, cfg.n_ff_of(i))
        w[b + "post_ffw_norm.weight"] = norm(e)
        if cfg.n_expert:
            ne, ff = cfg.n_expert, cfg.n_ff_exp
            w[b + "ffn_gate_inp.weight"] = mat(ne, e)
            w[b + "ffn_gate_inp.scale"] = norm(e)
            gate_up = np.stack([np.concatenate([mat(ff, e), mat(ff, e)]) for _ in range(ne)])
            if cfg.fused_experts:
                w[b + "ffn_gate_up_exps.weight"] = gate_up
            else:
                w[b + "ffn_gate_exps.weight"], w[b + "ffn_up_exps.weight"] = gate_up[:, :ff], gate_up[:, ff:]
            w[b + "ffn_down_exps.weight"] = np.stack([mat(e, ff) for _ in range(ne)])
            w[b + "ffn_down_exps.scale"] = rng.uniform(0.5, 1.5, size=ne)
            w[b + "pre_ffw_norm_2.weight"] = norm(e)
            w[b + "post_ffw_norm_1.weight"] = norm(e)
            w[b + "post_ffw_norm_2.weight"] = norm(e)
        if per:
            w[b + "inp_gate.weight"] = mat(per, e)
            w[b + "proj.weight"] = mat(e, per)
            w[b + "post_norm.weight"] = norm(e)
        if cfg.layer_scalar:
            w[b + "layer_output_scale.weight"] = rng.uniform(0.5, 1.5, size=1)
    w["output_norm.weight"] = norm(e)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, e)
    return Gemma4Model(cfg, w)


def rope_freqs(cfg: Gemma4Config) -> np.ndarray:
    """convert_hf_to_gguf.py's rope_freqs for the full-attention layers' proportional rope: 1 for
    the rotated pairs, 1e30 (no rotation) for the rest."""
    n_rot = int(cfg.head_dim_full * cfg.partial_rotary_full / 2)
    return np.array([1.0] * n_rot + [1e30] * (cfg.head_dim_full // 2 - n_rot), np.float32)


def write_gguf(model: Gemma4Model, path: Path | str, *, weight_type: str = "F32",
               metadata: dict[str, Any] | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Writes the model with the keys Gemma4Model (convert_hf_to_gguf.py) writes; returns the
    weights as the file holds them (float64). ``metadata``: keys to change (None: remove);
    ``skip``: tensors to leave out (for bad files)."""
    cfg = model.cfg
    wr = gguf.GGUFWriter(str(path), "gemma4")
    wr.add_name("tiny-gemma4")
    wr.add_block_count(cfg.n_layer)
    wr.add_context_length(256)
    wr.add_embedding_length(cfg.n_embd)
    ff = [cfg.n_ff_of(i) for i in range(cfg.n_layer)]
    wr.add_feed_forward_length(ff if len(set(ff)) > 1 else cfg.n_ff)
    heads = [cfg.n_head_of(i) for i in range(cfg.n_layer)]
    wr.add_head_count(heads if len(set(heads)) > 1 else cfg.n_head)
    wr.add_head_count_kv([cfg.n_kv_of(i) for i in range(cfg.n_layer)])
    wr.add_layer_norm_rms_eps(cfg.rms_eps)
    wr.add_key_length(cfg.head_dim_full)
    wr.add_value_length(cfg.head_dim_full)
    wr.add_key_length_swa(cfg.head_dim)
    wr.add_value_length_swa(cfg.head_dim)
    wr.add_rope_freq_base(cfg.rope_base)
    wr.add_rope_freq_base_swa(cfg.rope_base_swa)
    wr.add_rope_dimension_count(cfg.head_dim_full)
    wr.add_rope_dimension_count_swa(cfg.head_dim)
    wr.add_sliding_window(cfg.sliding_window)
    wr.add_sliding_window_pattern(list(cfg.swa))
    wr.add_shared_kv_layers(cfg.n_kv_shared)
    wr.add_embedding_length_per_layer_input(cfg.n_embd_per_layer)
    if cfg.write_softcap:
        wr.add_final_logit_softcapping(cfg.final_softcap)
    if cfg.n_expert:
        wr.add_expert_count(cfg.n_expert)
        wr.add_expert_used_count(cfg.n_expert_used)
        wr.add_expert_feed_forward_length(cfg.n_ff_exp)
    wr.add_vocab_size(cfg.n_vocab)
    write_byte_vocab(wr, cfg.n_vocab)
    kv = wr.kv_data[0]
    for key, value in (metadata or {}).items():
        if value is None:
            del kv[key]
        else:
            kv[key] = gguf.GGUFValue(value, kv[key].type if key in kv else gguf.GGUFValueType.UINT32)
    if "rope_freqs.weight" not in skip:
        wr.add_tensor("rope_freqs.weight", rope_freqs(cfg))
    held = write_tensors(wr, {k: x for k, x in model.weights.items() if k not in skip}, weight_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def _rmsnorm(x: np.ndarray, eps: float, g: np.ndarray | None = None) -> np.ndarray:
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if g is None else y * g


def _gelu(g: np.ndarray) -> np.ndarray:  # gelu_pytorch_tanh
    return 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))


def _rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Rotates pairs (i, i + head_dim / 2) of x (n, heads, head_dim) for i < len(inv)."""
    half = x.shape[-1] // 2
    n_rot = len(inv)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    a, b = x[..., :n_rot], x[..., half: half + n_rot]
    out[..., :n_rot] = a * cos - b * sin
    out[..., half: half + n_rot] = a * sin + b * cos
    return out


def _inv_freq(cfg: Gemma4Config, swa: bool) -> np.ndarray:
    if swa:  # default rope over the whole (sliding) head
        return 1.0 / cfg.rope_base_swa ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    # proportional: exponents over the full head size, only the first partial_rotary_factor rotated
    n_rot = int(cfg.head_dim_full * cfg.partial_rotary_full / 2)
    return 1.0 / cfg.rope_base ** (np.arange(0, 2 * n_rot, 2, dtype=np.float64) / cfg.head_dim_full)


def _per_layer_inputs(
    cfg: Gemma4Config, w: dict[str, np.ndarray], tokens: list[int], x: np.ndarray
) -> np.ndarray:
    """Gemma4TextModel.get_per_layer_inputs / project_per_layer_inputs: (n_layer, n, per)."""
    n, per = len(tokens), cfg.n_embd_per_layer
    emb = w["per_layer_token_embd.weight"][tokens].reshape(n, cfg.n_layer, per) * np.sqrt(per)
    proj = (x @ w["per_layer_model_proj.weight"].T) * cfg.n_embd**-0.5
    proj = _rmsnorm(proj.reshape(n, cfg.n_layer, per), cfg.rms_eps, w["per_layer_proj_norm.weight"])
    return ((proj + emb) * 2**-0.5).transpose(1, 0, 2)


def _experts(cfg: Gemma4Config, w: dict[str, np.ndarray], b: str, x: np.ndarray) -> np.ndarray:
    """Gemma4TextRouter and Gemma4TextExperts: the router reads RMSNorm(x) (no weight) times
    scale / sqrt(hidden_size); softmax, the top n_expert_used renormalized to sum 1, times their
    per_expert_scale; each expert down(gelu_tanh(gate h) * up h) of h = RMSNorm(x)
    pre_feedforward_layernorm_2."""
    router_in = _rmsnorm(x, cfg.rms_eps) * w[b + "ffn_gate_inp.scale"] * cfg.n_embd**-0.5
    z = router_in @ w[b + "ffn_gate_inp.weight"].T
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    h = _rmsnorm(x, cfg.rms_eps, w[b + "pre_ffw_norm_2.weight"])
    ff = cfg.n_ff_exp
    if b + "ffn_gate_up_exps.weight" in w:
        gate, up = w[b + "ffn_gate_up_exps.weight"][:, :ff], w[b + "ffn_gate_up_exps.weight"][:, ff:]
    else:
        gate, up = w[b + "ffn_gate_exps.weight"], w[b + "ffn_up_exps.weight"]
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        top = np.argsort(-p[t], kind="stable")[: cfg.n_expert_used]
        weights = p[t, top] / p[t, top].sum() * w[b + "ffn_down_exps.scale"][top]
        for e, weight in zip(top, weights, strict=True):
            out[t] += weight * (w[b + "ffn_down_exps.weight"][e] @ (_gelu(gate[e] @ h[t]) * (up[e] @ h[t])))
    return out


def reference_logits(cfg: Gemma4Config, w: dict[str, np.ndarray], tokens: list[int], *,
                     kv_f16: bool = True) -> np.ndarray:
    """float64 logits (n, n_vocab) of tokens at positions 0..n-1; with kv_f16 keys (after the
    rotation) and values are rounded to float16 as an F16 KV cache holds them."""
    n = len(tokens)
    pos = np.arange(n)
    dist = pos[:, None] - pos[None, :]
    causal = np.where(dist >= 0, 0.0, -np.inf)
    windowed = np.where((dist >= 0) & (dist < cfg.sliding_window), 0.0, -np.inf)
    x = w["token_embd.weight"][tokens] * np.sqrt(cfg.n_embd)
    ple = _per_layer_inputs(cfg, w, tokens, x) if cfg.n_embd_per_layer else None
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        swa, hd, nh = cfg.swa[i], cfg.head_dim_of(i), cfg.n_head_of(i)
        inv = _inv_freq(cfg, swa)
        h = _rmsnorm(x, cfg.rms_eps, w[b + "attn_norm.weight"])
        q = (h @ w[b + "attn_q.weight"].T).reshape(n, nh, hd)
        q = _rmsnorm(q, cfg.rms_eps, w[b + "attn_q_norm.weight"])
        q = _rope(q, pos, inv)
        if cfg.shared(i):
            k, v = cache[cfg.kv_source(i)]
        else:
            kp = (h @ w[b + "attn_k.weight"].T).reshape(n, cfg.n_kv_of(i), hd)
            vp = (h @ w[b + "attn_v.weight"].T).reshape(n, cfg.n_kv_of(i), hd) if cfg.has_v(i) else kp
            k = _rope(_rmsnorm(kp, cfg.rms_eps, w[b + "attn_k_norm.weight"]), pos, inv)
            v = _rmsnorm(vp, cfg.rms_eps)
            if kv_f16:
                k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
            cache[i] = k, v
        gqa = nh // k.shape[1]
        att = np.empty((n, nh, hd))
        for hh in range(nh):
            s = q[:, hh] @ k[:, hh // gqa].T + (windowed if swa else causal)  # scaling 1.0
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, hh] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, hh // gqa]
        x = x + _rmsnorm(att.reshape(n, -1) @ w[b + "attn_output.weight"].T, cfg.rms_eps,
                         w[b + "post_attention_norm.weight"])
        h = _rmsnorm(x, cfg.rms_eps, w[b + "ffn_norm.weight"])
        act = _gelu(h @ w[b + "ffn_gate.weight"].T) * (h @ w[b + "ffn_up.weight"].T)
        f = act @ w[b + "ffn_down.weight"].T
        if cfg.n_expert:  # the MLP as the shared expert beside the routed ones, each post-normed
            f = _rmsnorm(f, cfg.rms_eps, w[b + "post_ffw_norm_1.weight"]) + _rmsnorm(
                _experts(cfg, w, b, x), cfg.rms_eps, w[b + "post_ffw_norm_2.weight"])
        x = x + _rmsnorm(f, cfg.rms_eps, w[b + "post_ffw_norm.weight"])
        if ple is not None:
            g = _gelu(x @ w[b + "inp_gate.weight"].T) * ple[i]
            x = x + _rmsnorm(g @ w[b + "proj.weight"].T, cfg.rms_eps, w[b + "post_norm.weight"])
        if b + "layer_output_scale.weight" in w:
            x = x * w[b + "layer_output_scale.weight"][0]
    out = w.get("output.weight", w["token_embd.weight"])
    logits = _rmsnorm(x, cfg.rms_eps, w["output_norm.weight"]) @ out.T
    cap = cfg.final_softcap if cfg.write_softcap else 30.0  # (Gemma4TextConfig's default)
    if cap:
        logits = cap * np.tanh(logits / cap)
    return logits
