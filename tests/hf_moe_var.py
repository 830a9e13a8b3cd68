"""Tiny random Dots1, BailingMoeV2, HunYuanMoEV1 and SmallThinker Hugging Face directories:
config.json with the keys transformers' Dots1Config / HunYuanMoEV1Config (inclusionAI's
BailingMoeV2Config, PowerInfer's SmallThinkerConfig) saves,
safetensors in their names and shapes, a byte-level BPE tokenizer.json; and their float64 logits:
tests/tiny_moe_var.py's reference on the weights as transformers' modules read them (q/k rows in
Hugging Face's rotate-half order, which is NEOX's; BailingMoeV2's query_key_value rows: the q
heads, then k's, then v's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
from tiny_moe_var import VarConfig, reference_logits

Weights = dict[str, np.ndarray]
HF_ARCHS = {"dots1": "Dots1ForCausalLM", "bailingmoe2": "BailingMoeV2ForCausalLM",
            "hunyuan-moe": "HunYuanMoEV1ForCausalLM", "smallthinker": "SmallThinkerForCausalLM"}  # fmt: skip


def config(arch: str, **over: Any) -> dict[str, Any]:
    """config.json of a small model (``arch``: a key of HF_ARCHS): 3 blocks, the first dense."""
    cfg = F.tiny_config("llama", architectures=[HF_ARCHS[arch]], model_type=arch, num_hidden_layers=3,
                        num_key_value_heads=4, intermediate_size=96)  # fmt: skip
    if arch == "dots1":
        cfg.update(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=2,
                   first_k_dense_replace=1, n_group=4, topk_group=2, norm_topk_prob=True,
                   routed_scaling_factor=2.5, attention_bias=False)  # fmt: skip
    if arch == "bailingmoe2":  # (one multi-token-prediction layer past the 3 blocks)
        cfg.update(model_type="bailing_moe_v2", num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                   moe_intermediate_size=32, num_shared_experts=1, first_k_dense_replace=1, n_group=4,
                   topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, use_qk_norm=True,
                   use_qkv_bias=False, use_bias=False, partial_rotary_factor=0.5, head_dim=16,
                   num_nextn_predict_layers=1, score_function="sigmoid")  # fmt: skip
    if arch == "hunyuan-moe":  # (every block has experts, each as wide as intermediate_size; lists per layer)
        cfg.update(model_type="hunyuan_v1_moe", num_key_value_heads=2, num_experts=8, moe_topk=[2, 2, 2],
                   num_shared_expert=[1, 1, 1], moe_intermediate_size=[96, 96, 96], use_qk_norm=True,
                   attention_bias=False, mlp_bias=False)  # fmt: skip
    if arch == "smallthinker":  # (5 blocks: 1-3 sliding, 0 and 4 global and unrotated; no intermediate_size)
        del cfg["intermediate_size"]
        cfg.update(model_type="smallthinker", num_hidden_layers=5, num_key_value_heads=2, head_dim=16,
                   moe_num_primary_experts=8, moe_num_active_primary_experts=2, moe_ffn_hidden_size=32,
                   moe_primary_router_apply_softmax=False, sliding_window_layout=[0, 1, 1, 1, 0],
                   rope_layout=[0, 1, 1, 1, 0], sliding_window_size=4096, use_qk_norm=False)  # fmt: skip
    cfg.update(over)
    return cfg


def _smallthinker_weights(cfg: dict[str, Any], rng: np.random.Generator) -> Weights:
    """SmallThinker's: no q/k norms; block_sparse_moe's router and experts (gate, up, down)."""
    e, nh, nkv, hd = (
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
    )
    ne, fx = cfg["moe_num_primary_experts"], cfg["moe_ffn_hidden_size"]
    mat, vec, _ = F._initializers(rng, e)
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], e)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(e, 1.0, 0.2)
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{n}_proj.weight"] = mat(rows, e)
        w[p + "self_attn.o_proj.weight"] = mat(e, nh * hd)
        w[p + "post_attention_layernorm.weight"] = vec(e, 1.0, 0.2)
        w[p + "block_sparse_moe.primary_router.weight"] = 2 * mat(ne, e)
        for x in range(ne):
            for n, shape in (("gate", (fx, e)), ("up", (fx, e)), ("down", (e, fx))):
                w[p + f"block_sparse_moe.experts.{x}.{n}.weight"] = mat(*shape)
    w["model.norm.weight"] = vec(e, 1.0, 0.2)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(cfg["vocab_size"], e)
    return w


def _hunyuan_names(name: str) -> str:
    """transformers' Dots1 name -> HunYuanMoEV1's."""
    for a, b in (
        ("self_attn.q_norm", "self_attn.query_layernorm"),
        ("self_attn.k_norm", "self_attn.key_layernorm"),
        ("mlp.gate.weight", "mlp.gate.wg.weight"),
        ("mlp.shared_experts.", "mlp.shared_mlp."),
    ):
        name = name.replace(a, b)
    return name


def _bailing_names(name: str) -> str:
    """transformers' Dots1 name -> BailingMoeV2's."""
    for a, b in (("model.embed_tokens", "model.word_embeddings"), ("self_attn.o_proj", "attention.dense"),
                 ("self_attn.q_norm", "attention.query_layernorm"),
                 ("self_attn.k_norm", "attention.key_layernorm"), ("mlp.gate.e_score_correction_bias",
                 "mlp.gate.expert_bias")):  # fmt: skip
        name = name.replace(a, b)
    return name


def weights(cfg: dict[str, Any], *, seed: int = 0) -> Weights:
    """Random float32 weights in transformers' names and shapes."""
    rng = np.random.default_rng(seed)
    if cfg["architectures"][0] == "SmallThinkerForCausalLM":
        return _smallthinker_weights(cfg, rng)
    e, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = e // nh
    bailing = cfg["architectures"][0] == "BailingMoeV2ForCausalLM"
    hunyuan = cfg["architectures"][0] == "HunYuanMoEV1ForCausalLM"
    ne = cfg["n_routed_experts"] if "n_routed_experts" in cfg else cfg["num_experts"]
    fx = cfg["intermediate_size"] if hunyuan else cfg["moe_intermediate_size"]
    n_shared = 1 if hunyuan else cfg["num_shared_experts" if bailing else "n_shared_experts"]
    mat, vec, _ = F._initializers(rng, e)
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], e)).astype(np.float32)}

    def mlp(p: str, ff: int) -> None:
        for n, shape in (("gate", (ff, e)), ("up", (ff, e)), ("down", (e, ff))):
            w[p + f"{n}_proj.weight"] = mat(*shape)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(e, 1.0, 0.2)
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{n}_proj.weight"] = mat(rows, e)
        w[p + "self_attn.o_proj.weight"] = mat(e, nh * hd)
        w[p + "self_attn.q_norm.weight"] = vec(hd, 1.0, 0.3)
        w[p + "self_attn.k_norm.weight"] = vec(hd, 1.0, 0.3)
        w[p + "post_attention_layernorm.weight"] = vec(e, 1.0, 0.2)
        if i < cfg.get("first_k_dense_replace", 0):
            mlp(p + "mlp.", cfg["intermediate_size"])
            continue
        w[p + "mlp.gate.weight"] = 2 * mat(ne, e)
        if not hunyuan:
            w[p + "mlp.gate.e_score_correction_bias"] = vec(ne, 0.0, 0.1)
        for x in range(ne):
            mlp(p + f"mlp.experts.{x}.", fx)
        mlp(p + "mlp.shared_experts.", fx * n_shared)
    w["model.norm.weight"] = vec(e, 1.0, 0.2)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(cfg["vocab_size"], e)
    if hunyuan:
        return {_hunyuan_names(n): x for n, x in w.items()}
    if not bailing:
        return w
    w = {_bailing_names(n): x for n, x in w.items()}
    for i in range(cfg["num_hidden_layers"]):  # q, k, v in one projection
        p = f"model.layers.{i}.self_attn."
        qkv = [w.pop(p + f"{n}_proj.weight") for n in "qkv"]
        w[f"model.layers.{i}.attention.query_key_value.weight"] = np.concatenate(qkv)
    for j in range(cfg.get("num_nextn_predict_layers", 0)):  # (left out by the converter)
        p = f"model.layers.{cfg['num_hidden_layers'] + j}."
        w[p + "eh_proj.weight"], w[p + "enorm.weight"] = mat(e, 2 * e), vec(e, 1.0, 0.2)
    return w


def tiny_var_dir(
    d: Path, arch: str, *, dtype: str = "f32", seed: int = 0, **over: Any
) -> tuple[dict[str, Any], Weights]:
    """A random model directory in ``d``; returns (config.json, the stored weights as float32)."""

    def config_of(n_tok: int) -> dict[str, Any]:
        return config(arch, vocab_size=n_tok, **over)

    return F.bpe_model_dir(d, config_of, weights, pre="qwen2", dtype=dtype, seed=seed)


_NAMES = {  # transformers' modules -> the reference's (GGUF) names
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate": "ffn_gate_inp",
    "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
    "attention.query_layernorm": "attn_q_norm", "attention.key_layernorm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
    "mlp.shared_experts.down_proj": "ffn_down_shexp", "self_attn.query_layernorm": "attn_q_norm",
    "self_attn.key_layernorm": "attn_k_norm", "mlp.gate.wg": "ffn_gate_inp",
    "mlp.shared_mlp.gate_proj": "ffn_gate_shexp",
    "mlp.shared_mlp.up_proj": "ffn_up_shexp",
    "block_sparse_moe.primary_router": "ffn_gate_inp", "mlp.shared_mlp.down_proj": "ffn_down_shexp",
}  # fmt: skip


def reference(
    cfg: dict[str, Any], w: Weights, ids: list[int], *, zero: str | None = None, **kw: Any
) -> np.ndarray:
    """Logits (T, vocab), float64, of ``cfg``'s model; another model to tell apart: the weights whose
    names hold ``zero`` set to 0, ``kw`` VarConfig fields changed."""
    if zero is not None:
        w = {n: (np.zeros_like(x) if zero in n else x) for n, x in w.items()}
    vcfg = VarConfig(**{**_var_config(cfg, w).__dict__, **kw})
    return reference_logits(vcfg, _gguf_weights(vcfg, w), ids)


def _var_config(cfg: dict[str, Any], w: Weights) -> VarConfig:
    """The reference's settings of a config.json (transformers' meaning of each key)."""
    arch = next(k for k, v in HF_ARCHS.items() if v == cfg["architectures"][0])
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if arch == "smallthinker":  # the router on the block's input, ReGLU, renormalized top k
        return VarConfig(arch, n_layer=cfg["num_hidden_layers"], n_embd=cfg["hidden_size"],
                         n_head=cfg["num_attention_heads"], n_head_kv=cfg["num_key_value_heads"],
                         n_ff=cfg["moe_ffn_hidden_size"], n_ff_exp=cfg["moe_ffn_hidden_size"],
                         n_expert=cfg["moe_num_primary_experts"],
                         n_expert_used=cfg["moe_num_active_primary_experts"], n_shared=0, n_lead=0,
                         sigmoid=not cfg["moe_primary_router_apply_softmax"], norm_topk=True,
                         scale=1.0, n_group=1, topk_group=1, expert_bias=False, n_vocab=cfg["vocab_size"],
                         rope_base=cfg["rope_theta"], rms_eps=cfg["rms_norm_eps"],
                         tied_output="lm_head.weight" not in w, window=any(cfg["sliding_window_layout"]),
                         rope_base_swa=cfg["rope_theta"])  # fmt: skip
    common = {
        "n_layer": cfg["num_hidden_layers"],
        "n_embd": cfg["hidden_size"],
        "n_head": cfg["num_attention_heads"],
        "n_head_kv": cfg["num_key_value_heads"],
        "n_ff": cfg["intermediate_size"],
        "n_vocab": cfg["vocab_size"],
        "rope_base": cfg["rope_theta"],
        "rms_eps": cfg["rms_norm_eps"],
        "tied_output": "lm_head.weight" not in w,
        "n_lead": cfg.get("first_k_dense_replace", 0),
    }
    if arch == "hunyuan-moe":  # softmax, renormalized; experts and shared MLP intermediate_size wide
        topk = cfg["moe_topk"][0] if isinstance(cfg["moe_topk"], list) else cfg["moe_topk"]
        return VarConfig(
            arch,
            **common,
            n_ff_exp=cfg["intermediate_size"],
            n_expert=cfg["num_experts"],
            n_expert_used=topk,
            n_shared=1,
            sigmoid=False,
            norm_topk=True,
            scale=1.0,
            n_group=1,
            topk_group=1,
            expert_bias=False,
        )
    bailing = arch == "bailingmoe2"
    used = cfg["num_experts_per_tok"]
    return VarConfig(
        arch,
        **common,
        n_ff_exp=cfg["moe_intermediate_size"],
        n_expert=cfg["num_experts" if bailing else "n_routed_experts"],
        n_expert_used=used,
        n_shared=cfg["num_shared_experts" if bailing else "n_shared_experts"],
        sigmoid=True,
        norm_topk=used > 1 if bailing else cfg["norm_topk_prob"],
        scale=cfg["routed_scaling_factor"],
        n_group=cfg["n_group"],
        topk_group=cfg["topk_group"],
        n_rot=int(hd * cfg.get("partial_rotary_factor", 1.0)),
    )


def _gguf_weights(vcfg: VarConfig, w: Weights) -> Weights:
    """transformers' weights under the reference's (GGUF) names, float64."""
    embd = w.get("model.embed_tokens.weight", w.get("model.word_embeddings.weight"))
    g: Weights = {"token_embd.weight": embd, "output_norm.weight": w["model.norm.weight"]}
    if "lm_head.weight" in w:
        g["output.weight"] = w["lm_head.weight"]
    for i in range(vcfg.n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, name in _NAMES.items():
            if f"{p}{hf}.weight" in w:
                g[f"{b}{name}.weight"] = w[f"{p}{hf}.weight"]
        for bias in ("mlp.gate.e_score_correction_bias", "mlp.gate.expert_bias"):
            if p + bias in w:
                g[b + "exp_probs_b.bias"] = w[p + bias]
        for experts in ("mlp.experts.{x}.{n}_proj", "block_sparse_moe.experts.{x}.{n}"):
            if p + experts.format(x=0, n="gate") + ".weight" in w:
                for n in ("gate", "up", "down"):
                    stack = [w[p + experts.format(x=x, n=n) + ".weight"] for x in range(vcfg.n_expert)]
                    g[f"{b}ffn_{n}_exps.weight"] = np.stack(stack)
    return {k: np.asarray(v, np.float64) for k, v in g.items()}
