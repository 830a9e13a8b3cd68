"""Tiny random Qwen2-MoE, OLMoE and Granite MoE (shared or not) Hugging Face directories: config.json
with the keys transformers' Qwen2MoeConfig / OlmoeConfig / GraniteMoe(Shared)Config save,
safetensors in transformers' names and shapes, a byte-level BPE tokenizer.json; and their float64
logits: tests/tiny_moe.py's reference on the weights as transformers' modules read them (q/k rows in
Hugging Face's rotate-half order, GraniteMoe's fused input_linear chunked gate first, as
GraniteMoeParallelExperts' output is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
from tiny_moe import MoeConfig, reference_logits

Weights = dict[str, np.ndarray]
HF_ARCHS = {"qwen2moe": "Qwen2MoeForCausalLM", "olmoe": "OlmoeForCausalLM",
            "granitemoe": "GraniteMoeForCausalLM", "granitemoeshared": "GraniteMoeSharedForCausalLM"}
PRE = {"qwen2moe": "qwen2", "olmoe": "gpt-2", "granitemoe": "smollm", "granitemoeshared": "smollm"}


def config(arch: str, **over: Any) -> dict[str, Any]:
    """config.json of a small model (``arch``: a key of HF_ARCHS)."""
    model_type = arch.replace("qwen2moe", "qwen2_moe")
    cfg = F.tiny_config("llama", architectures=[HF_ARCHS[arch]], model_type=model_type)
    if arch == "qwen2moe":
        cfg.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                   shared_expert_intermediate_size=96, norm_topk_prob=False, decoder_sparse_step=1,
                   mlp_only_layers=[], use_sliding_window=False)
    if arch == "olmoe":  # (no GQA, as OLMoE)
        cfg.update(num_key_value_heads=4, num_experts=4, num_experts_per_tok=2, intermediate_size=48,
                   norm_topk_prob=False, clip_qkv=None, attention_bias=False)
    if arch.startswith("granitemoe"):  # multipliers under which every branch counts with random weights
        cfg.update(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48, attention_bias=False,
                   embedding_multiplier=0.5, residual_multiplier=0.6, attention_multiplier=0.0625,
                   logits_scaling=4.0)
    if arch == "granitemoeshared":
        cfg.update(shared_intermediate_size=80)
    cfg.update(over)
    return cfg


def weights(cfg: dict[str, Any], *, seed: int = 0) -> Weights:
    """Random float32 weights in transformers' names and shapes."""
    rng = np.random.default_rng(seed)
    e, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    q, kv = nh * (e // nh), nkv * (e // nh)
    arch = cfg["architectures"][0]
    granite = arch.startswith("GraniteMoe")
    ne = cfg["num_local_experts"] if granite else cfg["num_experts"]
    ff = cfg["moe_intermediate_size"] if arch == "Qwen2MoeForCausalLM" else cfg["intermediate_size"]
    mat, vec, _ = F._initializers(rng, e)
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], e)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(e, 1.0, 0.2)
        for n, rows in (("q", q), ("k", kv), ("v", kv)):
            w[p + f"self_attn.{n}_proj.weight"] = mat(rows, e)
            if arch == "Qwen2MoeForCausalLM" or cfg.get("attention_bias"):
                w[p + f"self_attn.{n}_proj.bias"] = vec(rows, 0.0, 0.3)
        w[p + "self_attn.o_proj.weight"] = mat(e, q)
        if cfg.get("attention_bias"):
            w[p + "self_attn.o_proj.bias"] = vec(e, 0.0, 0.3)
        if arch == "OlmoeForCausalLM":
            w[p + "self_attn.q_norm.weight"] = vec(q, 1.0, 0.3)
            w[p + "self_attn.k_norm.weight"] = vec(kv, 1.0, 0.3)
        w[p + "post_attention_layernorm.weight"] = vec(e, 1.0, 0.2)
        if granite:
            w[p + "block_sparse_moe.router.layer.weight"] = 2 * mat(ne, e)
            w[p + "block_sparse_moe.input_linear.weight"] = np.stack([mat(2 * ff, e) for _ in range(ne)])
            w[p + "block_sparse_moe.output_linear.weight"] = np.stack([mat(e, ff) for _ in range(ne)])
            if sh := cfg.get("shared_intermediate_size"):
                w[p + "shared_mlp.input_linear.weight"] = mat(2 * sh, e)
                w[p + "shared_mlp.output_linear.weight"] = mat(e, sh)
            continue
        w[p + "mlp.gate.weight"] = 2 * mat(ne, e)
        for x in range(ne):
            for n, shape in (("gate", (ff, e)), ("up", (ff, e)), ("down", (e, ff))):
                w[p + f"mlp.experts.{x}.{n}_proj.weight"] = mat(*shape)
        if arch == "Qwen2MoeForCausalLM":
            sh = cfg["shared_expert_intermediate_size"]
            for n, shape in (("gate", (sh, e)), ("up", (sh, e)), ("down", (e, sh))):
                w[p + f"mlp.shared_expert.{n}_proj.weight"] = mat(*shape)
            w[p + "mlp.shared_expert_gate.weight"] = 2 * mat(1, e)
    w["model.norm.weight"] = vec(e, 1.0, 0.2)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(cfg["vocab_size"], e)
    return w


def tiny_moe_dir(d: Path, arch: str, *, dtype: str = "f32", shards: int = 1, seed: int = 0,
                 **over: Any) -> tuple[dict[str, Any], Weights]:  # fmt: skip
    """A random model directory in ``d``; returns (config.json, the stored weights as float32)."""

    def config_of(n_tok: int) -> dict[str, Any]:
        return config(arch, vocab_size=n_tok, **over)

    return F.bpe_model_dir(d, config_of, weights, pre=PRE[arch], dtype=dtype, shards=shards, seed=seed)


_NAMES = {  # transformers' modules -> the reference's (GGUF) names
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate": "ffn_gate_inp",
    "block_sparse_moe.router.layer": "ffn_gate_inp", "block_sparse_moe.output_linear": "ffn_down_exps",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp", "shared_mlp.output_linear": "ffn_down_shexp",
}  # fmt: skip


def reference(cfg: dict[str, Any], w: Weights, ids: list[int], *, zero: str | None = None,
              **kw: Any) -> np.ndarray:  # fmt: skip
    """Logits (T, vocab), float64, of ``cfg``'s model; another model to tell apart: the weights whose
    names hold ``zero`` set to 0, ``kw`` MoeConfig fields changed."""
    if zero is not None:
        w = {n: (np.zeros_like(x) if zero in n else x) for n, x in w.items()}
    arch = cfg["architectures"][0]
    gguf_arch = {"Qwen2MoeForCausalLM": "qwen2moe", "OlmoeForCausalLM": "olmoe"}.get(arch, "granitemoe")
    n_layer, ne = cfg["num_hidden_layers"], cfg.get("num_experts") or cfg["num_local_experts"]
    g: Weights = {"token_embd.weight": w["model.embed_tokens.weight"],
                  "output_norm.weight": w["model.norm.weight"]}
    if "lm_head.weight" in w:
        g["output.weight"] = w["lm_head.weight"]
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, name in _NAMES.items():
            for kind in ("weight", "bias"):
                if f"{p}{hf}.{kind}" in w:
                    g[f"{b}{name}.{kind}"] = w[f"{p}{hf}.{kind}"]
        if gguf_arch == "qwen2moe":
            g[b + "ffn_gate_inp_shexp.weight"] = w[p + "mlp.shared_expert_gate.weight"][0]
        if gguf_arch != "granitemoe":
            for n in ("gate", "up", "down"):
                g[f"{b}ffn_{n}_exps.weight"] = np.stack([w[f"{p}mlp.experts.{x}.{n}_proj.weight"]
                                                         for x in range(ne)])
            continue
        # GraniteMoeParallelExperts -> chunk(2, dim=-1): activation(first half) * second half
        gate, up = np.split(w[p + "block_sparse_moe.input_linear.weight"], 2, axis=-2)
        g[b + "ffn_gate_exps.weight"], g[b + "ffn_up_exps.weight"] = gate, up
        if p + "shared_mlp.input_linear.weight" in w:
            g[b + "ffn_gate_shexp.weight"], g[b + "ffn_up_shexp.weight"] = np.split(
                w[p + "shared_mlp.input_linear.weight"], 2, axis=-2)
    shared = cfg.get("shared_expert_intermediate_size") or cfg.get("shared_intermediate_size")
    mcfg = MoeConfig(
        gguf_arch, n_layer=n_layer, n_embd=cfg["hidden_size"], n_head=cfg["num_attention_heads"],
        n_head_kv=cfg["num_key_value_heads"], n_ff=cfg["intermediate_size"], n_expert=ne,
        n_expert_used=cfg["num_experts_per_tok"], n_ff_exp=cfg.get("moe_intermediate_size"),
        n_ff_shexp=shared,
        n_vocab=cfg["vocab_size"], rope_base=cfg["rope_theta"], rms_eps=cfg["rms_norm_eps"],
        granite_scales=tuple(cfg.get(k, 1.0) for k in ("embedding_multiplier", "residual_multiplier",
                                                       "attention_multiplier", "logits_scaling")),
    )  # fmt: skip
    mcfg = MoeConfig(**{**mcfg.__dict__, **kw})
    g = {k: np.asarray(v, np.float64) for k, v in g.items()}
    return reference_logits(mcfg, g, ids, rotate_half=True)
