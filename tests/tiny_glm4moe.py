"""Tiny random GLM-4.5-style models (gguf arch glm4moe) written as llama.cpp's converter writes them
(its Glm4MoeModel: the multi-token-prediction layers after the trunk's, counted in block_count and
announced by nextn_predict_layers), and a numpy float64 forward pass written from transformers'
modeling_glm4_moe.py (Glm4MoeAttention, Glm4MoeMoE / Glm4MoeTopkRouter, Glm4MoeMLP), independent
of splitllm's engine. The MTP layers take no part in it: transformers' Glm4MoeModel builds
num_hidden_layers decoder layers and ignores the checkpoint's extra ones."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gguf
import numpy as np
from tiny_deepseek import moe_block
from tiny_model import RandomInit, rope, write_byte_vocab, write_tensors


@dataclass
class Glm4MoeConfig:
    n_layer: int = 3  # num_hidden_layers (the trunk)
    n_nextn: int = 1  # num_nextn_predict_layers (MTP layers in the file, never run)
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32  # (n_head * head_dim != n_embd, as GLM-4.5's 96 x 128 vs 4096)
    partial_rotary_factor: float = 0.5
    n_vocab: int = 320
    n_ff: int = 96  # intermediate_size (the dense blocks)
    first_k_dense_replace: int = 1
    n_routed_experts: int = 8
    num_experts_per_tok: int = 3
    moe_intermediate_size: int = 32
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    attention_bias: bool = True
    use_qk_norm: bool = True
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 4096
    seed: int = 0

    @property
    def n_rot(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    # (the router as tiny_deepseek.moe_block reads it: DeepSeek-V3's)
    scoring_func: ClassVar[str] = "sigmoid"
    score_bias: ClassVar[bool] = True


def glm45(**kw: Any) -> Glm4MoeConfig:
    """GLM-4.5 (355B-A32B)-like: q/k norms, q/k/v biases, routed_scaling_factor 2.5, no groups."""
    return Glm4MoeConfig(**kw)


def air(**kw: Any) -> Glm4MoeConfig:
    """GLM-4.5-Air-like (no q/k norms, scale 1), here with group-limited routing and two shared
    experts."""
    base = dict(
        use_qk_norm=False, routed_scaling_factor=1.0, n_group=4, topk_group=2, n_shared_experts=2, seed=1
    )
    return Glm4MoeConfig(**{**base, **kw})


def make_weights(cfg: Glm4MoeConfig) -> dict[str, np.ndarray]:
    """Random weights under their GGUF names, float64; the MTP layers' blocks (MoE blocks with the
    nextn tensors) after the trunk's."""
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    E, H, KV, hd = cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim

    w = {
        "token_embd.weight": rng.normal(0.0, 1.0, (cfg.n_vocab, E)),
        "output_norm.weight": norm(E),
        "output.weight": mat(cfg.n_vocab, E),
    }
    for i in range(cfg.n_layer + cfg.n_nextn):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(E)
        w[b + "attn_q.weight"] = mat(H * hd, E)
        w[b + "attn_k.weight"] = mat(KV * hd, E)
        w[b + "attn_v.weight"] = mat(KV * hd, E)
        if cfg.attention_bias:
            w[b + "attn_q.bias"] = 0.3 * rng.normal(size=H * hd)
            w[b + "attn_k.bias"] = 0.3 * rng.normal(size=KV * hd)
            w[b + "attn_v.bias"] = 0.3 * rng.normal(size=KV * hd)
        if cfg.use_qk_norm:
            w[b + "attn_q_norm.weight"] = norm(hd)
            w[b + "attn_k_norm.weight"] = norm(hd)
        w[b + "attn_output.weight"] = mat(E, H * hd)
        w[b + "post_attention_norm.weight"] = norm(E)
        if i < cfg.first_k_dense_replace:
            w |= init.dense_ffn(b, E, cfg.n_ff)
            continue
        ff = cfg.moe_intermediate_size
        w |= init.routed_ffn(b, E, cfg.n_routed_experts, ff, bias=0.2,
                                ff_shared=ff * cfg.n_shared_experts)  # fmt: skip
        if i >= cfg.n_layer:  # an MTP layer's own tensors
            w[b + "nextn.eh_proj.weight"] = mat(E, 2 * E)
            w[b + "nextn.enorm.weight"] = norm(E)
            w[b + "nextn.hnorm.weight"] = norm(E)
            w[b + "nextn.shared_head_norm.weight"] = norm(E)
    return w


def write_gguf(
    cfg: Glm4MoeConfig,
    weights: dict[str, np.ndarray],
    path: Path,
    *,
    weight_type: str = "F32",
    metadata_changes: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The metadata of llama.cpp's Glm4MoeModel (TextModel's keys, then rope.dimension_count, the
    experts', the sigmoid gating, the scale and normalization, nextn_predict_layers); changes:
    key -> value (None drops it). Returns the weights as the file holds them (float64)."""
    meta: dict[str, Any] = {
        **text_model_keys(cfg, cfg.n_layer + cfg.n_nextn, cfg.n_ff),
        "expert_used_count": cfg.num_experts_per_tok,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "rope.dimension_count": cfg.n_rot,
        "expert_count": cfg.n_routed_experts,
        "expert_feed_forward_length": cfg.moe_intermediate_size,
        "expert_shared_count": cfg.n_shared_experts,
        "leading_dense_block_count": cfg.first_k_dense_replace,
        "expert_gating_func": 2,
        "expert_weights_scale": cfg.routed_scaling_factor,
        "expert_weights_norm": cfg.norm_topk_prob,
        "nextn_predict_layers": cfg.n_nextn,
    }
    if cfg.n_group > 1:
        meta["expert_group_count"] = cfg.n_group
        meta["expert_group_used_count"] = cfg.topk_group
    return write_arch_gguf("glm4moe", meta, cfg.n_vocab, weights, path, weight_type, metadata_changes)


def text_model_keys(cfg: Any, n_layer: int, n_ff: int) -> dict[str, Any]:
    """The {arch}.* keys llama.cpp's TextModel writes first, in its order (of the tiny MoE models'
    configs: glm4moe's, ernie4_5-moe's, minimax-m2's)."""
    return {
        "block_count": n_layer,
        "context_length": cfg.n_ctx_train,
        "embedding_length": cfg.n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_head_kv,
        "rope.freq_base": cfg.rope_base,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps,
    }


def write_arch_gguf(
    arch: str,
    meta: dict[str, Any],
    n_vocab: int,
    weights: dict[str, np.ndarray],
    path: Path,
    weight_type: str = "F32",
    changes: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """A GGUF of the {arch}.* keys meta (with changes: key -> value, None drops it; bools, floats,
    lists as they are, other values uint32), tiny_model's byte vocabulary and the weights; returns
    the weights as the file holds them (float64)."""
    a = arch + "."
    meta = dict(meta)
    for key, value in (changes or {}).items():
        if value is None:
            meta.pop(key.removeprefix(a), None)
        else:
            meta[key.removeprefix(a)] = value
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_name("tiny-" + arch)
    for key, value in meta.items():
        if isinstance(value, bool):
            wr.add_bool(a + key, value)
        elif isinstance(value, float):
            wr.add_float32(a + key, value)
        elif isinstance(value, list):
            wr.add_array(a + key, value)
        else:
            wr.add_uint32(a + key, value)
    write_byte_vocab(wr, n_vocab)
    held = write_tensors(wr, weights, weight_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def file_block_bytes(path: Path, n_layer: int) -> tuple[dict[str, int], int]:
    """The bytes of each block's tensors in the file (gguf-py's reader), "blk.0" .. of the first
    n_layer blocks, and of all tensors but those of the blocks past them (an MTP layer's)."""
    per_block: dict[str, int] = {}
    total = 0
    for t in gguf.GGUFReader(path).tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n_layer:
            continue
        total += int(t.n_bytes)
        if m:
            per_block[f"blk.{m.group(1)}"] = per_block.get(f"blk.{m.group(1)}", 0) + int(t.n_bytes)
    return per_block, total


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def _mlp(h: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    g, u = h @ gate.T, h @ up.T
    return (g / (1 + np.exp(-g)) * u) @ down.T


def _moe(cfg: Glm4MoeConfig, w: dict[str, np.ndarray], b: str, h: np.ndarray) -> np.ndarray:
    """Glm4MoeMoE, which is DeepSeek-V3's DeepseekV3MoE (noaux_tc; tiny_deepseek.moe_block):
    Glm4MoeTopkRouter's sigmoid scores, the correction bias added for choosing only, the choice
    limited to the topk_group groups with the highest sum of their two best, the chosen scores
    normalized (norm_topk_prob) and times routed_scaling_factor; then the shared experts (one MLP
    of their stacked width). (transformers sets the other groups' choice scores to 0.0, the
    reference to -inf: the same choice wherever k of the kept experts score above 0, as in every
    model of these tests: sigmoid scores plus a bias of 0.2 sd.)"""
    return moe_block(cfg, w, b, h)  # (its fields by the same names)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal attention of rotated queries (n, H, hd) over keys and values (n, KV, hd) (grouped:
    H / KV query heads per key head; scores scaled by 1 / sqrt(hd)), the keys and values rounded to
    float16 as both engines' caches hold them: (n, H * hd)."""
    n, H, hd = q.shape
    k, v = (np.repeat(x.astype(np.float16).astype(np.float64), H // x.shape[1], axis=1) for x in (k, v))
    s = np.einsum("thd,uhd->htu", q, k) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((n, n), dtype=bool))[None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htu,uhd->thd", p, v).reshape(n, H * hd)


def hf_block_weights(w: dict[str, np.ndarray], names: dict[str, str], n_expert: int) -> dict[str, np.ndarray]:
    """The checkpoint's tensors of the blocks' GGUF weights w (block names by ``names``; stacked
    experts one by one as mlp.experts.{e}.{gate,up,down}_proj)."""
    out = {}
    for name, x in w.items():
        if not name.startswith("blk."):
            continue
        _, bid, rest = name.split(".", 2)
        p = f"model.layers.{bid}."
        if rest in names:
            out[p + names[rest]] = x
        elif rest.endswith("_exps.weight"):
            kind = rest.split("_")[1]  # gate, up, down
            for e in range(n_expert):
                out[p + f"mlp.experts.{e}.{kind}_proj.weight"] = x[e]
        else:
            raise ValueError(f"no checkpoint name for {name}")
    return out


def reference_logits(cfg: Glm4MoeConfig, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab). Per head the
    query and key RMS-normed (use_qk_norm) before the rotation of their first n_rot dims (rotate
    half within them); keys and values rounded to float16 as both engines' caches hold them."""
    H, KV, hd = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    inv = 1.0 / cfg.rope_base ** (np.arange(0, cfg.n_rot, 2, dtype=np.float64) / cfg.n_rot)
    n = len(tokens)
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = _rms(x, w[b + "attn_norm.weight"], cfg.rms_eps)

        def proj(name: str, heads: int, h: np.ndarray = h, b: str = b) -> np.ndarray:
            y = h @ w[b + name + ".weight"].T
            if cfg.attention_bias:
                y = y + w[b + name + ".bias"]
            return y.reshape(n, heads, hd)

        q, k, v = proj("attn_q", H), proj("attn_k", KV), proj("attn_v", KV)
        if cfg.use_qk_norm:
            q = _rms(q, w[b + "attn_q_norm.weight"], cfg.rms_eps)
            k = _rms(k, w[b + "attn_k_norm.weight"], cfg.rms_eps)
        x = (
            x
            + causal_attention(rope(q, pos, inv, True), rope(k, pos, inv, True), v)
            @ w[b + "attn_output.weight"].T
        )
        h = _rms(x, w[b + "post_attention_norm.weight"], cfg.rms_eps)
        if i < cfg.first_k_dense_replace:
            x = x + _mlp(h, w[b + "ffn_gate.weight"], w[b + "ffn_up.weight"], w[b + "ffn_down.weight"])
        else:
            x = x + _moe(cfg, w, b, h)
    return _rms(x, w["output_norm.weight"], cfg.rms_eps) @ w["output.weight"].T


# GGUF name in a block -> the checkpoint's (llama.cpp's tensor maps, inverted): the attention's and
# the feed-forward's of GLM-4.5 and ERNIE-4.5 (tiny_ernie_moe), then GLM's own.
HF_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    **{f"attn_{p}.{kind}": f"self_attn.{p}_proj.{kind}" for p in "qkv" for kind in ("weight", "bias")},
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    **{f"ffn_{p}_shexp.weight": f"mlp.shared_experts.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_HF_NAMES = {
    **HF_BLOCK_NAMES,
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
    "nextn.eh_proj.weight": "eh_proj.weight",
    "nextn.enorm.weight": "enorm.weight",
    "nextn.hnorm.weight": "hnorm.weight",
    "nextn.shared_head_norm.weight": "shared_head.norm.weight",
}


def hf_base_config(cfg: Any, architecture: str, model_type: str, **rest: Any) -> dict[str, Any]:
    """The config.json keys the tiny mixture-of-experts checkpoints share (glm4moe's, ernie4_5-moe's,
    minimax-m2's, phimoe's: the trunk's sizes, the rotation's base, the norms' epsilon, the
    embeddings tied where cfg.tied, SiLU), then rest."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head_kv,
        "vocab_size": cfg.n_vocab,
        "rope_theta": cfg.rope_base,
        "rms_norm_eps": cfg.rms_eps,
        "max_position_embeddings": cfg.n_ctx_train,
        "tie_word_embeddings": getattr(cfg, "tied", False),
        "hidden_act": "silu",
        **rest,
    }


_HF_OUTER_NAMES = {  # GGUF name outside the blocks -> the checkpoint's
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output_norm.bias": "model.norm.bias",
    "output.weight": "lm_head.weight",
    "output.bias": "lm_head.bias",
}


def hf_outer_weights(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's embedding, final norm and output head (those of them the GGUF weights w hold)."""
    return {hf: w[name] for name, hf in _HF_OUTER_NAMES.items() if name in w}


def hf_config(cfg: Glm4MoeConfig) -> dict[str, Any]:
    """The config.json of a Glm4MoeForCausalLM checkpoint of cfg."""
    return hf_base_config(
        cfg,
        "Glm4MoeForCausalLM",
        "glm4_moe",
        num_nextn_predict_layers=cfg.n_nextn,
        head_dim=cfg.head_dim,
        partial_rotary_factor=cfg.partial_rotary_factor,
        intermediate_size=cfg.n_ff,
        moe_intermediate_size=cfg.moe_intermediate_size,
        n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=cfg.n_shared_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        first_k_dense_replace=cfg.first_k_dense_replace,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        norm_topk_prob=cfg.norm_topk_prob,
        routed_scaling_factor=cfg.routed_scaling_factor,
        attention_bias=cfg.attention_bias,
        use_qk_norm=cfg.use_qk_norm,
    )


def hf_weights(cfg: Glm4MoeConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors holding the GGUF weights w (the experts one by one; an MTP layer's
    embedding and output head as the checkpoint has them)."""
    out = {**hf_outer_weights(w), **hf_block_weights(w, _HF_NAMES, cfg.n_routed_experts)}
    for i in range(cfg.n_layer, cfg.n_layer + cfg.n_nextn):
        out[f"model.layers.{i}.embed_tokens.weight"] = w["token_embd.weight"]
        out[f"model.layers.{i}.shared_head.head.weight"] = w["output.weight"]
    return out
