"""Tiny random Hugging Face checkpoints of Ministral 3 / Mistral 3, GLM-4, EXAONE 4.0, ERNIE 4.5,
Command R7B, Command-R / R+ and EXAONE 3.x (config.json as transformers saves them, safetensors, a tokenizer),
and their float64 logits: tiny_dense's forward pass on the weights under llama.cpp's names,
rotating the pairs of values each model's modeling code pairs (rotate-half for Ministral 3 and
EXAONE 3.x / 4.0, interleaved for GLM-4, ERNIE 4.5 and Cohere 1 / 2), with the settings read from
config.json as transformers reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
from tiny_dense import DenseConfig, reference_logits

Weights = dict[str, np.ndarray]
HF_ARCHS = {"mistral3": "Ministral3ForCausalLM", "mistral3-vl": "Mistral3ForConditionalGeneration",
            "glm4": "Glm4ForCausalLM", "exaone4": "Exaone4ForCausalLM", "ernie4_5": "Ernie4_5ForCausalLM",
            "cohere2": "Cohere2ForCausalLM", "qwen3vl": "Qwen3VLForConditionalGeneration",
            "command-r": "CohereForCausalLM", "exaone": "ExaoneForCausalLM"}  # fmt: skip
# EXAONE 3.x's GPT-2-style names (modeling_exaone.py) for the llama names the checkpoint is made with
_EXAONE_OUTER = {"model.embed_tokens.weight": "transformer.wte.weight",
                 "model.norm.weight": "transformer.ln_f.weight"}  # fmt: skip
_EXAONE_BLOCK = {
    "input_layernorm": "ln_1", "self_attn.q_proj": "attn.attention.q_proj",
    "self_attn.k_proj": "attn.attention.k_proj", "self_attn.v_proj": "attn.attention.v_proj",
    "self_attn.o_proj": "attn.attention.out_proj",
    "post_attention_layernorm": "ln_2", "mlp.gate_proj": "mlp.c_fc_0", "mlp.up_proj": "mlp.c_fc_1",
    "mlp.down_proj": "mlp.c_proj",
}  # fmt: skip


def exaone_name(name: str) -> str:
    """The EXAONE 3.x checkpoint's name of a llama-named tensor."""
    if name in _EXAONE_OUTER:
        return _EXAONE_OUTER[name]
    if not name.startswith("model.layers."):
        return name  # (lm_head.weight)
    _, _, bid, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"transformer.h.{bid}.{_EXAONE_BLOCK[module]}.{kind}"
# HF name (after model.layers.{bid}.) -> llama.cpp's (after blk.{bid}.), per architecture
_BLOCK = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}  # fmt: skip
_ARCH_BLOCK = {
    "glm4": {"post_self_attn_layernorm": "post_attention_norm", "mlp.gate_up_proj": "ffn_up",
             "post_mlp_layernorm": "post_ffw_norm"},
    "exaone4": {"post_attention_layernorm": "post_attention_norm",
                "post_feedforward_layernorm": "post_ffw_norm"},
}  # fmt: skip


def dense_config(arch: str, **over: Any) -> dict[str, Any]:
    """config.json of a small model (``arch``: a key of HF_ARCHS)."""
    cfg = F.dense_base_config(HF_ARCHS[arch])
    if arch == "mistral3":  # Ministral 3's YaRN and attention temperature, fitted to 24 tokens
        cfg.update(model_type="ministral3", head_dim=16, sliding_window=None, rope_parameters={
            "rope_type": "yarn", "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
            "beta_fast": 2.0, "beta_slow": 0.05, "mscale": 1.0, "mscale_all_dim": 0.5,
            "llama_4_scaling_beta": 0.5, "rope_theta": 10000.0})  # fmt: skip
        del cfg["rope_theta"]
    if arch == "glm4":
        cfg.update(model_type="glm4", attention_bias=True, partial_rotary_factor=0.5, head_dim=16)
    if arch == "exaone4":
        cfg.update(model_type="exaone4", sliding_window=None, tie_word_embeddings=True)
    if arch == "ernie4_5":
        cfg.update(model_type="ernie4_5", use_bias=False, tie_word_embeddings=True, head_dim=16)
    if arch == "qwen3vl":  # Qwen3-VL's text_config (its M-RoPE sections: of the 8 rotated pairs)
        cfg.update(model_type="qwen3_vl_text", head_dim=16, tie_word_embeddings=True, rope_scaling={
            "rope_type": "default", "mrope_section": [3, 3, 2], "mrope_interleaved": True})  # fmt: skip
    if arch == "cohere2":
        cfg.update(model_type="cohere2", num_hidden_layers=4, layer_norm_eps=1e-5, logit_scale=0.5,
                   sliding_window=5, sliding_window_pattern=4, attention_bias=False, tie_word_embeddings=True,
                   layer_types=["sliding_attention"] * 3 + ["full_attention"])  # fmt: skip
        del cfg["rms_norm_eps"]
    if arch == "command-r":  # (use_qk_norm: Command R+, 64 layers or more in llama.cpp)
        cfg.update(model_type="cohere", layer_norm_eps=1e-5, logit_scale=0.25, use_qk_norm=False,
                   attention_bias=False, tie_word_embeddings=True, model_max_length=1024)  # fmt: skip
        del cfg["rms_norm_eps"]
    if arch == "exaone":  # (ExaoneConfig's names: num_layers, layer_norm_epsilon)
        cfg.update(model_type="exaone", layer_norm_epsilon=1e-5, activation_function="silu")
        del cfg["rms_norm_eps"]
    cfg.update(over)
    if arch == "exaone":
        cfg["num_layers"] = cfg.pop("num_hidden_layers")
    return cfg


def dense_weights(cfg: dict[str, Any], arch: str, *, seed: int = 0) -> Weights:
    """Random float32 weights in the HF names of ``arch``'s model."""
    rng = np.random.default_rng(seed)
    e, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or e // nh
    mat, vec, _ = F._initializers(rng, e)
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((v, e)).astype(np.float32)}
    for i in range(cfg.get("num_hidden_layers", cfg.get("num_layers", 0))):
        p = f"model.layers.{i}."
        if arch != "exaone4":
            w[p + "input_layernorm.weight"] = vec(e, 1.0, 0.1)
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{n}_proj.weight"] = mat(rows, e)
            if arch == "glm4":
                w[p + f"self_attn.{n}_proj.bias"] = vec(rows, 0.0, 0.3)
        w[p + "self_attn.o_proj.weight"] = mat(e, nh * hd)
        if arch in ("exaone4", "qwen3vl"):
            w[p + "self_attn.q_norm.weight"] = vec(hd, 1.0, 0.3)
            w[p + "self_attn.k_norm.weight"] = vec(hd, 1.0, 0.3)
        if cfg.get("use_qk_norm"):  # CohereLayerNorm((heads, head_dim)): a row per head
            w[p + "self_attn.q_norm.weight"] = vec(nh * hd, 1.0, 0.3).reshape(nh, hd)
            w[p + "self_attn.k_norm.weight"] = vec(nkv * hd, 1.0, 0.3).reshape(nkv, hd)
        if arch == "glm4":
            w[p + "post_self_attn_layernorm.weight"] = vec(e, 1.0, 0.2)
        if arch not in ("cohere2", "command-r"):
            w[p + "post_attention_layernorm.weight"] = vec(e, 1.0, 0.2)
        if arch == "glm4":  # gate rows, then up rows
            w[p + "mlp.gate_up_proj.weight"] = mat(2 * ff, e)
            w[p + "post_mlp_layernorm.weight"] = vec(e, 1.0, 0.2)
        else:
            w[p + "mlp.gate_proj.weight"] = mat(ff, e)
            w[p + "mlp.up_proj.weight"] = mat(ff, e)
        w[p + "mlp.down_proj.weight"] = mat(e, ff)
        if arch == "exaone4":
            w[p + "post_feedforward_layernorm.weight"] = vec(e, 1.0, 0.2)
    w["model.norm.weight"] = vec(e, 1.0, 0.1)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(v, e)
    return w


def add_special_tokens(d: Path, tokens: tuple[str, ...] = ("<|user|>",)) -> int:
    """Adds special tokens (by default GLM-4's <|user|>, its eot) to tokenizer.json's vocabulary;
    returns the new size."""
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    n = len(tj["model"]["vocab"])
    for i, token in enumerate(tokens):
        tj["model"]["vocab"][token] = n + i
        tj["added_tokens"].append({"id": n + i, "content": token, "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": True})  # fmt: skip
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return n + len(tokens)


def tiny_dense_hf(d: Path, arch: str, *, dtype: str = "f32", shards: int = 1, seed: int = 0,
                  **over: Any) -> tuple[dict[str, Any], Weights]:
    """A random model directory in ``d``: a SentencePiece tokenizer.model (ERNIE 4.5) or a byte-level
    BPE tokenizer.json; returns (config.json as written, the stored weights as float32)."""
    d.mkdir(parents=True, exist_ok=True)
    if arch == "ernie4_5":
        n_tok = F.write_spm_tokenizer(d)
    else:
        n_tok = F.write_bpe_tokenizer(d)
        if arch == "glm4":
            n_tok = add_special_tokens(d)
    if arch in ("mistral3-vl", "qwen3vl"):  # the text model in text_config, under model.language_model.
        text_arch = "mistral3" if arch == "mistral3-vl" else arch
        text = dense_config(text_arch, vocab_size=n_tok, **over)
        vision: dict[str, Any] = {"hidden_size": 8}
        if arch == "qwen3vl":
            vision["deepstack_visual_indexes"] = [1, 2]
        cfg = {"architectures": [HF_ARCHS[arch]], "model_type": text_arch, "text_config": text,
               "vision_config": vision, "torch_dtype": "float32"}  # fmt: skip
        F._write_json(d / "config.json", cfg)
        w = {n.replace("model.", "model.language_model.", 1): x for n, x in dense_weights(text, text_arch,
                                                                                         seed=seed).items()}
        tower = "model.visual.patch_embed.proj" if arch == "qwen3vl" else "model.vision_tower.patch_conv"
        w[tower + ".weight"] = np.ones((8, 3, 2, 2), np.float32)
        if arch == "mistral3-vl":
            w["model.multi_modal_projector.linear_1.weight"] = np.ones((8, 8), np.float32)
        stored = F.save_weights(d, w, dtype=dtype, shards=shards)
        return text, {n.replace("model.language_model.", "model.", 1): x for n, x in stored.items()
                      if n.startswith(("model.language_model.", "lm_head."))}
    cfg = dense_config(arch, vocab_size=n_tok, **over)
    F._write_json(d / "config.json", cfg)
    w = dense_weights(cfg, arch, seed=seed)
    if arch == "exaone":  # saved under EXAONE's names, returned under llama's (as the others)
        back = {exaone_name(n): n for n in w}
        stored = F.save_weights(d, {exaone_name(n): x for n, x in w.items()}, dtype=dtype, shards=shards)
        return cfg, {back[n]: x for n, x in stored.items()}
    return cfg, F.save_weights(d, w, dtype=dtype, shards=shards)


def hf_logits(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) of the HF model ``cfg`` with weights ``w``, float64 (no cache rounding)."""
    arch = cfg.get("model_type", "")
    renamed = {"ministral3": "mistral3", "mistral": "mistral3", "qwen3_vl_text": "qwen3vl",
               "cohere": "command-r"}  # fmt: skip
    arch = renamed.get(arch, arch)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert hd == cfg["hidden_size"] // cfg["num_attention_heads"]  # (tiny_dense's head size)
    n_layer = cfg.get("num_hidden_layers", cfg.get("num_layers", 0))  # (EXAONE 3.x: num_layers)
    eps = cfg.get("layer_norm_eps", cfg.get("rms_norm_eps", cfg.get("layer_norm_epsilon", 1e-5)))
    dc = DenseConfig(
        arch, n_layer=n_layer, n_embd=cfg["hidden_size"], n_head=cfg["num_attention_heads"],
        n_head_kv=cfg["num_key_value_heads"], n_ff=cfg["intermediate_size"], n_vocab=cfg["vocab_size"],
        rope_base=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))), eps=eps,
        tied=cfg.get("tie_word_embeddings", False),
        partial_rotary=cfg.get("partial_rotary_factor", 1.0),
        rope_scaling=rope if rope.get("rope_type", "default") != "default" else None,
        temp_beta=rope.get("llama_4_scaling_beta", 0.0) if arch == "mistral3" else 0.0,
        sliding_window=cfg.get("sliding_window") or 0, logit_scale=cfg.get("logit_scale", 1.0),
    )  # fmt: skip
    names = {**_BLOCK, **_ARCH_BLOCK.get(arch, {})}
    g: Weights = {"token_embd.weight": w["model.embed_tokens.weight"],
                  "output_norm.weight": w["model.norm.weight"]}  # fmt: skip
    if "lm_head.weight" in w:
        g["output.weight"] = w["lm_head.weight"]
    for name, x in w.items():
        if name.startswith("model.layers."):
            _, _, bid, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            g[f"blk.{bid}.{names[module]}.{kind}"] = x.astype(np.float64)
    # Ministral 3, EXAONE 4.0 and Qwen3-VL rotate halves (rotate_half; Qwen3-VL's M-RoPE at text
    # positions), the others interleaved pairs (a test may ask for the other layout with
    # cfg["_halves"], to show that it matters)
    halves = cfg.get("_halves", arch in ("mistral3", "exaone4", "qwen3vl", "exaone"))
    return reference_logits(dc, g, ids, kv_f16=False, neox=halves)
