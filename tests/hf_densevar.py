"""Tiny random Hugging Face checkpoints of Seed-OSS, Apertus, Hunyuan dense, AFM (Arcee) and
StarCoder2 (config.json as transformers saves them, safetensors, a byte-level BPE tokenizer), and
their float64 logits: tiny_densevar's forward pass on the weights under llama.cpp's names, rotating
halves (rotate_half, as every one of these modeling files does on its own q/k rows), with the settings
read from config.json as transformers reads them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hf_dense
import hf_fixtures as F
import numpy as np
from tiny_densevar import VarConfig, reference_logits

Weights = dict[str, np.ndarray]
HF_ARCHS = {"seed_oss": "SeedOssForCausalLM", "apertus": "ApertusForCausalLM",
            "hunyuan-dense": "HunYuanDenseV1ForCausalLM", "arcee": "ArceeForCausalLM",
            "starcoder2": "Starcoder2ForCausalLM"}  # fmt: skip
# HF name (after model.layers.{bid}.) -> llama.cpp's (after blk.{bid}.): hf_dense's and these models' own
_BLOCK = {
    **hf_dense._BLOCK, "attention_layernorm": "attn_norm", "feedforward_layernorm": "ffn_norm",
    "self_attn.query_layernorm": "attn_q_norm", "self_attn.key_layernorm": "attn_k_norm",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}  # fmt: skip
ARCH_BLOCK = {"seed_oss": {"post_attention_layernorm": "post_attention_norm"}}


def block_names(arch: str) -> dict[str, str]:
    return {**_BLOCK, **ARCH_BLOCK.get(arch, {})}


def var_config(arch: str, **over: Any) -> dict[str, Any]:
    """config.json of a small model (``arch``: a key of HF_ARCHS)."""
    cfg = F.dense_base_config(HF_ARCHS[arch])
    if arch == "seed_oss":
        cfg.update(model_type="seed_oss", head_dim=16, attention_bias=True, attention_out_bias=False,
                   mlp_bias=False, hidden_act="silu")  # fmt: skip
    if arch == "apertus":  # Apertus's Llama 3 rope scaling
        cfg.update(model_type="apertus", hidden_act="xielu", qk_norm=True, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16})  # fmt: skip
    if arch == "hunyuan-dense":  # NTK alpha, as the 0.5B-7B models' configs ("dynamic" with alpha)
        cfg.update(model_type="hunyuan_v1_dense", head_dim=16, use_qk_norm=True, attention_bias=False,
                   mlp_bias=False, tie_word_embeddings=True, max_position_embeddings=32768,
                   rope_scaling={"type": "dynamic", "alpha": 50.0, "factor": 1.0})  # fmt: skip
    if arch == "arcee":
        cfg.update(model_type="arcee", hidden_act="relu2", attention_bias=False, mlp_bias=False)
    if arch == "starcoder2":
        cfg.update(model_type="starcoder2", hidden_act="gelu_pytorch_tanh", norm_epsilon=1e-5, use_bias=True,
                   tie_word_embeddings=True)  # fmt: skip
        del cfg["rms_norm_eps"]
    cfg.update(over)
    return cfg


def var_weights(cfg: dict[str, Any], arch: str, *, seed: int = 0) -> Weights:
    """Random float32 weights in the HF names of ``arch``'s model (apertus: its raw xIELU
    parameters too, mlp.act_fn.alpha_p / alpha_n of shape (1,), beta / eps scalars)."""
    rng = np.random.default_rng(seed)
    e, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or e // nh
    mat, vec, _ = F._initializers(rng, e)
    bias = arch == "starcoder2"
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((v, e)).astype(np.float32)}
    norm1, norm2 = (
        ("attention_layernorm", "feedforward_layernorm")
        if arch == "apertus"
        else ("input_layernorm", "post_attention_layernorm")
    )
    up, down = ("mlp.c_fc", "mlp.c_proj") if bias else ("mlp.up_proj", "mlp.down_proj")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + norm1 + ".weight"] = vec(e, 1.0, 0.1)
        if bias:
            w[p + norm1 + ".bias"] = vec(e, 0.0, 0.3)
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{n}_proj.weight"] = mat(rows, e)
            if bias or cfg.get("attention_bias"):
                w[p + f"self_attn.{n}_proj.bias"] = vec(rows, 0.0, 0.3)
        w[p + "self_attn.o_proj.weight"] = mat(e, nh * hd)
        if bias:
            w[p + "self_attn.o_proj.bias"] = vec(e, 0.0, 0.3)
        qn, kn = ("query_layernorm", "key_layernorm") if arch == "hunyuan-dense" else ("q_norm", "k_norm")
        if arch in ("apertus", "hunyuan-dense"):
            w[p + f"self_attn.{qn}.weight"] = vec(hd, 1.0, 0.3)
            w[p + f"self_attn.{kn}.weight"] = vec(hd, 1.0, 0.3)
        w[p + norm2 + ".weight"] = vec(e, 1.0, 0.2)
        if bias:
            w[p + norm2 + ".bias"] = vec(e, 0.0, 0.3)
        if arch in ("seed_oss", "hunyuan-dense"):
            w[p + "mlp.gate_proj.weight"] = mat(ff, e)
        w[p + up + ".weight"] = mat(ff, e)
        w[p + down + ".weight"] = mat(e, ff)
        if bias:
            w[p + up + ".bias"] = vec(ff, 0.0, 0.3)
            w[p + down + ".bias"] = vec(e, 0.0, 0.3)
        if arch == "apertus":  # XIELUActivation's raw parameters, near its initial ones
            w[p + "mlp.act_fn.alpha_p"] = np.float32(
                [math.log(math.expm1(0.8)) + 0.5 * rng.standard_normal()]
            )
            w[p + "mlp.act_fn.alpha_n"] = np.float32(
                [math.log(math.expm1(0.3)) + 0.5 * rng.standard_normal()]
            )
            w[p + "mlp.act_fn.beta"] = np.array(0.5 + 0.2 * rng.standard_normal(), np.float32)
            w[p + "mlp.act_fn.eps"] = np.array(-1e-6, np.float32)
    w["model.norm.weight"] = vec(e, 1.0, 0.1)
    if bias:
        w["model.norm.bias"] = vec(e, 0.0, 0.3)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(v, e)
    return w


def tiny_var_hf(
    d: Path, arch: str, *, dtype: str = "f32", seed: int = 0, **over: Any
) -> tuple[dict[str, Any], Weights]:
    """A random model directory in ``d`` with a byte-level BPE tokenizer.json; returns (config.json as
    written, the stored weights as float32)."""

    def config_of(n_tok: int) -> dict[str, Any]:
        return var_config(arch, vocab_size=n_tok, **over)

    def weights_of(cfg: dict[str, Any], seed: int) -> Weights:
        return var_weights(cfg, arch, seed=seed)

    return F.bpe_model_dir(d, config_of, weights_of, dtype=dtype, seed=seed)


def to_gguf_names(arch: str, w: Weights) -> tuple[Weights, dict[str, list[float]]]:
    """The weights under llama.cpp's names (float64), and apertus's raw xIELU parameters per layer."""
    names = block_names(arch)
    g: Weights = {"token_embd.weight": w["model.embed_tokens.weight"].astype(np.float64),
                  "output_norm.weight": w["model.norm.weight"].astype(np.float64)}  # fmt: skip
    if "model.norm.bias" in w:
        g["output_norm.bias"] = w["model.norm.bias"].astype(np.float64)
    if "lm_head.weight" in w:
        g["output.weight"] = w["lm_head.weight"].astype(np.float64)
    xielu: dict[str, list[float]] = {"alpha_p": [], "alpha_n": [], "beta": [], "eps": []}
    for name in sorted(w, key=lambda n: [int(t) if t.isdigit() else 0 for t in n.split(".")]):
        if not name.startswith("model.layers."):
            continue
        _, _, bid, rest = name.split(".", 3)
        module, kind = rest.rsplit(".", 1)
        if module == "mlp.act_fn":
            xielu[kind].append(float(np.asarray(w[name]).reshape(-1)[0]))
            continue
        g[f"blk.{bid}.{names[module]}.{kind}"] = w[name].astype(np.float64)
    return g, xielu


def hf_logits(cfg: dict[str, Any], w: Weights, ids: list[int], *, halves: bool = True) -> np.ndarray:
    """Logits (T, vocab) of the HF model ``cfg`` with weights ``w``, float64 (no cache rounding);
    ``halves`` False rotates interleaved pairs instead (to show that it matters)."""
    arch = next(a for a, n in HF_ARCHS.items() if n == cfg["architectures"][0])
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert hd == cfg["hidden_size"] // cfg["num_attention_heads"]  # (tiny_densevar's head size)
    vc = VarConfig(
        arch, n_layer=cfg["num_hidden_layers"], n_embd=cfg["hidden_size"], n_head=cfg["num_attention_heads"],
        n_head_kv=cfg["num_key_value_heads"], n_ff=cfg["intermediate_size"], n_vocab=cfg["vocab_size"],
        rope_base=float(cfg.get("rope_theta", 10000.0)),
        eps=cfg.get("norm_epsilon", cfg.get("rms_norm_eps", 1e-5)),
        tied=cfg.get("tie_word_embeddings", False),
        ntk_alpha=float(rope.get("alpha", 0.0)) if kind == "dynamic" else 0.0,
        rope_scaling={**rope, "rope_type": kind} if kind == "llama3" else None,
    )  # fmt: skip
    g, xielu = to_gguf_names(arch, w)
    return reference_logits(
        vc, g, ids, kv_f16=False, neox=halves, xielu_params=xielu if xielu["beta"] else None
    )
