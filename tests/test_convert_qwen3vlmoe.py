"""convert-hf on a tiny Qwen3VLMoeForConditionalGeneration checkpoint: its text model under
model.language_model., the experts packed and transposed as transformers holds them (gate_up_proj
split, down_proj transposed), the vision tower left out; the keys llama.cpp's Qwen3VLMoeTextModel
writes; splitllm's and llama.cpp's logits on the converted file against the float64 reference."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import test_convert as TC
from hf_fixtures import save_weights, write_bpe_tokenizer
from lcpp import llama_cpp_logits
from splitllm import Model
from splitllm_convert import ConvertError, convert
from test_qwen3vlmoe import CFG, TOKENS
from tiny_model import F32_LOGITS_TOL, make_weights, reference_logits

_HF = {  # GGUF name in a block -> the text model's
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
}  # fmt: skip


def checkpoint(tmp_path, config_changes=None):
    """The checkpoint directory and the GGUF-named weights it holds (float64 of float32)."""
    d = tmp_path / "hf"
    d.mkdir()
    assert write_bpe_tokenizer(d, vocab_size=CFG.n_vocab) == CFG.n_vocab
    half = CFG.rot // 2
    sections = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "hidden_size": CFG.n_embd, "intermediate_size": CFG.n_ff, "num_hidden_layers": CFG.n_layer,
        "num_attention_heads": CFG.n_head, "num_key_value_heads": CFG.n_head_kv, "head_dim": CFG.head_dim,
        "vocab_size": CFG.n_vocab, "rms_norm_eps": CFG.rms_eps, "rope_theta": CFG.rope_base,
        "max_position_embeddings": CFG.n_ctx_train, "tie_word_embeddings": False,
        "num_experts": CFG.n_expert, "num_experts_per_tok": CFG.n_expert_used,
        "moe_intermediate_size": CFG.ff_exp, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "model_type": "qwen3_vl_moe_text",
        "rope_scaling": {"rope_type": "default", "mrope_section": sections, "mrope_interleaved": True},
        **(config_changes or {}),
    }  # fmt: skip
    vision = {"hidden_size": 8, "deepstack_visual_indexes": [1, 2]}
    config = {"architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe",
              "text_config": text, "vision_config": vision}  # fmt: skip
    (d / "config.json").write_text(json.dumps(config))
    w = {k: v.astype(np.float32).astype(np.float64) for k, v in make_weights(CFG).weights.items()}
    t = "model.language_model."
    hf = {t + "embed_tokens.weight": w["token_embd.weight"], t + "norm.weight": w["output_norm.weight"],
          "lm_head.weight": w["output.weight"],
          "model.visual.patch_embed.proj.weight": np.ones((8, 3, 2, 2))}  # (the vision tower's)  # fmt: skip
    for i in range(CFG.n_layer):
        b, p = f"blk.{i}.", f"{t}layers.{i}."
        hf.update({p + name: w[b + g] for g, name in _HF.items()})
        gate, up = w[b + "ffn_gate_exps.weight"], w[b + "ffn_up_exps.weight"]  # (E, ff, embd)
        hf[p + "mlp.experts.gate_up_proj"] = np.concatenate([gate, up], axis=1).transpose(0, 2, 1)
        hf[p + "mlp.experts.down_proj"] = w[b + "ffn_down_exps.weight"].transpose(0, 2, 1)  # (E, ff, embd)
    save_weights(d, {k: np.ascontiguousarray(v, np.float32) for k, v in hf.items()})
    return d, w


def test_tensors_metadata_and_logits(tmp_path):
    d, w = checkpoint(tmp_path)
    path = tmp_path / "m.gguf"
    convert(d, path, type="f32", quiet=True)
    TC.assert_holds(path, w)
    r = gguf.GGUFReader(path)
    keys = {f.name: f.contents() for f in r.fields.values()}
    assert keys["qwen3vlmoe.rope.dimension_sections"] == [6, 5, 5, 0]  # (of 16 rotated pairs)
    assert keys["qwen3vlmoe.n_deepstack_layers"] == 2
    assert keys["qwen3vlmoe.expert_feed_forward_length"] == CFG.ff_exp
    assert "qwen3vlmoe.expert_weights_norm" not in keys  # (always renormalized)
    ref = reference_logits(CFG, w, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert np.abs(m.logits(TOKENS) - ref).max() / np.abs(ref).max() < F32_LOGITS_TOL


@pytest.mark.reference
def test_llama_cpp_loads_it(tmp_path):
    d, w = checkpoint(tmp_path)
    path = tmp_path / "m.gguf"
    convert(d, path, type="f32", quiet=True)
    ref = reference_logits(CFG, w, TOKENS)
    assert np.abs(llama_cpp_logits(path, TOKENS) - ref).max() / np.abs(ref).max() < 1e-3


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"rope_scaling": {"rope_type": "default"}}, "'mrope_section' must list"),
        ({"mlp_only_layers": [1]}, "dense blocks among the experts"),
        ({"moe_intermediate_size": 16}, r"experts\.(down|gate_up)_proj' .* implies \[8, (16, 64|64, 32)\]"),
    ],
)  # fmt: skip
def test_bad_checkpoints_are_named(tmp_path, changes, match):
    d, _ = checkpoint(tmp_path, changes)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
