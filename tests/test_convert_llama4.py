"""convert-hf on tiny random Llama 4 checkpoints (Llama4ForConditionalGeneration's text model with a
vision tower left out, and Llama4ForCausalLM), checked against references we did not write:

- llama.cpp (llama-cpp-python) on our f32 GGUF gives the logits of the float64 reference
  (tests/tiny_llama4.py, transformers' Llama4TextModel) on the checkpoint's weights as
  transformers reads them (Llama4TextExperts: gate_up_proj (n_expert, hidden, 2 ff), x @ it chunked
  gate first; down_proj (n_expert, ff, hidden)), and so does splitllm's engine; each case shows that
  the split it checks (gate / up halves, the transposes) moves the logits well past the bound.
- The llama4.* keys and the tensors' names and shapes are those llama.cpp's Llama4Model writes.
- What llama.cpp would run differently from transformers is refused, nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
from gguf import GGUFReader
from lcpp import llama_cpp_logits
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from tiny_llama4 import LLAMA3, Llama4Config, reference_logits

IDS = [(7 * i + 3) % 300 for i in range(24)]


def text_config(**over: Any) -> dict[str, Any]:
    """Llama4TextConfig's keys as transformers saves them (Scout's pattern in small)."""
    n_layer = over.get("num_hidden_layers", 4)
    cfg = {
        "model_type": "llama4_text",
        "hidden_size": 64,
        "intermediate_size": 48,
        "intermediate_size_mlp": 96,
        "num_hidden_layers": n_layer,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_local_experts": 4,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 2,
        "moe_layers": None,
        "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(n_layer)],
        "attention_chunk_size": 8192,
        "attn_temperature_tuning": True,
        "floor_scale": 8192,
        "attn_scale": 0.1,
        "use_qk_norm": True,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA3,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 1024,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "layer_types": ["chunked_attention" if (i + 1) % 4 else "full_attention" for i in range(n_layer)],
    }
    cfg.update(over)
    return cfg


def weights(cfg: dict[str, Any], prefix: str, lm_head: str, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in transformers' names and shapes (``prefix``: the decoder's)."""
    rng = np.random.default_rng(seed)
    e, hd, ne, fx = (cfg[k] for k in ("hidden_size", "head_dim", "num_local_experts", "intermediate_size"))
    ff = cfg["intermediate_size_mlp"] or 96  # (a config without it: the converter refuses it)
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    mat, vec, _ = F._initializers(rng, e)
    w = {prefix + "embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], e)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        w[p + "input_layernorm.weight"] = vec(e, 1.0, 0.2)
        for n, rows in (("q", q), ("k", kv), ("v", kv)):
            w[p + f"self_attn.{n}_proj.weight"] = 2 * mat(rows, e)
        w[p + "self_attn.o_proj.weight"] = mat(e, q)
        w[p + "post_attention_layernorm.weight"] = vec(e, 1.0, 0.2)
        f = p + "feed_forward."
        if (i + 1) % cfg["interleave_moe_layer_step"] == 0:
            w[f + "router.weight"] = 2 * mat(ne, e)
            w[f + "experts.gate_up_proj"] = np.stack([mat(2 * fx, e).T for _ in range(ne)])  # (ne, e, 2 fx)
            w[f + "experts.down_proj"] = np.stack([mat(e, fx).T for _ in range(ne)])  # (ne, fx, e)
            for n, shape in (("gate", (fx, e)), ("up", (fx, e)), ("down", (e, fx))):
                w[f + f"shared_expert.{n}_proj.weight"] = mat(*shape)
        else:
            for n, shape in (("gate", (ff, e)), ("up", (ff, e)), ("down", (e, ff))):
                w[f + f"{n}_proj.weight"] = mat(*shape)
    w[prefix + "norm.weight"] = vec(e, 1.0, 0.2)
    if not cfg["tie_word_embeddings"]:
        w[lm_head] = mat(cfg["vocab_size"], e)
    return w


def tiny_dir(
    d: Path, *, multimodal: bool, dtype: str = "f32", layout: str = "old", **over: Any
) -> tuple[dict[str, Any], dict]:
    """A checkpoint in ``d``; returns (the text config, its stored weights by GGUF-reference names).
    ``layout`` of a multimodal one: "old" (language_model.model.), "new" (model.language_model.,
    as transformers >= 4.52 saves such models)."""
    d.mkdir(parents=True, exist_ok=True)
    text = text_config(vocab_size=F.write_bpe_tokenizer(d, pre="llama-bpe"), **over)
    if multimodal:
        cfg = {
            "architectures": ["Llama4ForConditionalGeneration"],
            "model_type": "llama4",
            "text_config": text,
            "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 32},
        }
        prefix, lm_head = (
            ("language_model.model.", "language_model.lm_head.weight")
            if layout == "old"
            else ("model.language_model.", "lm_head.weight")
        )
    else:
        cfg = {"architectures": ["Llama4ForCausalLM"], **text}
        prefix, lm_head = "model.", "lm_head.weight"
    F._write_json(d / "config.json", cfg)
    w = weights(text, prefix, lm_head)
    if multimodal:  # (left out by the converter)
        tower = "" if layout == "old" else "model."
        w[tower + "vision_model.patch_embedding.linear.weight"] = np.ones((32, 48), np.float32)
        w[tower + "multi_modal_projector.linear_1.weight"] = np.ones((64, 32), np.float32)
    stored = F.save_weights(d, w, dtype=dtype)
    return text, as_gguf(text, stored, prefix, lm_head)


def as_gguf(
    text: dict[str, Any], w: dict[str, np.ndarray], prefix: str, lm_head: str
) -> dict[str, np.ndarray]:
    """The weights under the reference's (GGUF) names, as transformers' modules read them."""
    fx = text["intermediate_size"]
    g = {
        "token_embd.weight": w[prefix + "embed_tokens.weight"],
        "output_norm.weight": w[prefix + "norm.weight"],
    }
    if lm_head in w:
        g["output.weight"] = w[lm_head]
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "feed_forward.router": "ffn_gate_inp",
        "feed_forward.gate_proj": "ffn_gate",
        "feed_forward.up_proj": "ffn_up",
        "feed_forward.down_proj": "ffn_down",
        "feed_forward.shared_expert.gate_proj": "ffn_gate_shexp",
        "feed_forward.shared_expert.up_proj": "ffn_up_shexp",
        "feed_forward.shared_expert.down_proj": "ffn_down_shexp",
    }
    for i in range(text["num_hidden_layers"]):
        p, b = f"{prefix}layers.{i}.", f"blk.{i}."
        for hf, name in names.items():
            if p + hf + ".weight" in w:
                g[b + name + ".weight"] = w[p + hf + ".weight"]
        if p + "feed_forward.experts.gate_up_proj" in w:  # x @ gate_up_proj[e], chunk(2, -1): gate, up
            gate_up = w[p + "feed_forward.experts.gate_up_proj"]
            g[b + "ffn_gate_exps.weight"] = gate_up[..., :fx].transpose(0, 2, 1)
            g[b + "ffn_up_exps.weight"] = gate_up[..., fx:].transpose(0, 2, 1)
            g[b + "ffn_down_exps.weight"] = w[p + "feed_forward.experts.down_proj"].transpose(0, 2, 1)
    return {n: x.astype(np.float64) for n, x in g.items()}


# the reference's settings from Llama4TextConfig's keys
_REF_KEYS = {"n_layer": "num_hidden_layers", "n_embd": "hidden_size", "n_head": "num_attention_heads",
             "n_head_kv": "num_key_value_heads", "n_ff": "intermediate_size_mlp",
             "n_ff_exp": "intermediate_size",
             "n_expert": "num_local_experts", "n_expert_used": "num_experts_per_tok",
             "moe_step": "interleave_moe_layer_step", "n_vocab": "vocab_size", "rope_base": "rope_theta",
             "rms_eps": "rms_norm_eps", "rope_scaling": "rope_scaling"}  # fmt: skip


def ref_config(text: dict[str, Any]) -> Llama4Config:
    return Llama4Config(**{field: text[key] for field, key in _REF_KEYS.items()})


CASES: dict[str, dict[str, Any]] = {
    "conditional-generation": {"multimodal": True},
    "conditional-generation-new-layout": {"multimodal": True, "layout": "new"},
    "causal-lm-all-moe-4x2-tied-bf16": {
        "multimodal": False,
        "dtype": "bf16",
        "interleave_moe_layer_step": 1,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": True,
        "rope_scaling": None,
    },
}


def converted(tmp_path: Path, case: str) -> tuple[dict[str, Any], dict[str, np.ndarray], Path]:
    text, g = tiny_dir(tmp_path / "hf", **CASES[case])
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    return text, g, out


def swapped(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The experts' gate and up halves taken the other way round."""
    out = dict(g)
    for n in g:
        if n.endswith("ffn_gate_exps.weight"):
            up = n.replace("gate_exps", "up_exps")
            out[n], out[up] = g[up], g[n]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_engine_logits_match_float64_reference(tmp_path: Path, case: str) -> None:
    text, g, out = converted(tmp_path, case)
    cfg = ref_config(text)
    ref = reference_logits(cfg, g, IDS)
    tol = 2e-3 * np.abs(ref).max()
    assert np.abs(reference_logits(cfg, swapped(g), IDS) - ref).max() > 5 * tol
    with Model(out, n_ctx=64, n_threads=2) as m:
        assert np.abs(m.logits(IDS) - ref).max() < tol


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_logits_match_float64_reference(tmp_path: Path, case: str) -> None:
    text, g, out = converted(tmp_path, case)
    ref = reference_logits(ref_config(text), g, IDS)
    assert np.abs(llama_cpp_logits(out, IDS) - ref).max() < 2e-3 * np.abs(ref).max()


def test_keys_and_tensors_are_llama_cpp_s(tmp_path: Path) -> None:
    """Llama4Model's keys (feed_forward_length the dense width, the experts' their own) and
    llama.cpp's tensor shapes; no vision tensor."""
    text, _, out = converted(tmp_path, "conditional-generation")
    r = GGUFReader(out)

    def field(key: str) -> Any:
        return r.fields[key].contents()

    assert field("general.architecture") == "llama4"
    want = {
        "block_count": 4,
        "embedding_length": 64,
        "feed_forward_length": 96,
        "expert_feed_forward_length": 48,
        "interleave_moe_layer_step": 2,
        "expert_count": 4,
        "expert_used_count": 1,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "attention.key_length": 16,
        "rope.dimension_count": 16,
        "vocab_size": text["vocab_size"],
        "context_length": 1024,
    }
    assert {k: field("llama4." + k) for k in want} == want
    assert "llama4.attention.sliding_window" not in r.fields
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"] == shapes["blk.1.ffn_up_exps.weight"] == (4, 48, 64)
    assert shapes["blk.1.ffn_down_exps.weight"] == (4, 64, 48)
    assert shapes["blk.1.ffn_gate_shexp.weight"] == (48, 64) and shapes["blk.0.ffn_gate.weight"] == (96, 64)
    assert shapes["rope_freqs.weight"] == (8,)
    assert not any(n.startswith(("v.", "mm.")) or "vision" in n for n in shapes)
    assert "blk.0.ffn_gate_inp.weight" not in shapes and "blk.1.ffn_gate.weight" not in shapes


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"attention_chunk_size": 4096}, "'attention_chunk_size' is 4096: llama.cpp's llama4 takes 8192"),
        ({"attn_temperature_tuning": False}, "'attn_temperature_tuning' is False"),
        ({"use_qk_norm": False}, "'use_qk_norm' is False: llama.cpp L2-norms q and k with 4 experts"),
        ({"moe_layers": [0, 1]}, "'moe_layers' is \\[0, 1\\]"),
        ({"no_rope_layers": [1, 0, 1, 0]}, "'no_rope_layers'"),
        ({"intermediate_size_mlp": None}, "'intermediate_size_mlp' must be a positive integer"),
    ],
)
def test_what_llama_cpp_runs_otherwise_is_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    tiny_dir(tmp_path / "hf", multimodal=True, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
