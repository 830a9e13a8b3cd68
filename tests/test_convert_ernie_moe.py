"""convert-hf on tiny Ernie4_5_MoeForCausalLM checkpoints (SentencePiece vocabulary, tied or untied,
shared experts or none, MTP tensors that are left out): the tensors and metadata llama.cpp's
Ernie4_5MoeModel writes; splitllm's logits on the converted file against the float64 reference on
the checkpoint's weights, llama.cpp's too; bad input named."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import routed_checks as RC
import test_convert as TC
from hf_fixtures import write_spm_tokenizer
from splitllm_convert import ConvertError, convert
from tiny_ernie_moe import ErnieMoeConfig, hf_config, hf_weights, make_weights, reference_logits

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2
CONFIGS = {
    "a3b": ErnieMoeConfig(n_vocab=400),
    "untied-plain": ErnieMoeConfig(n_vocab=400, tied=False, moe_num_shared_experts=0, seed=1),
}


def checkpoint(tmp_path, cfg, config_changes=None, drop=()):
    """An Ernie4_5_MoeForCausalLM directory of cfg's random weights (float32, with an MTP block's
    tensor beside them); returns (the directory, the GGUF-named weights as float64)."""
    d = tmp_path / "hf"
    d.mkdir()
    assert write_spm_tokenizer(d) == cfg.n_vocab
    w = make_weights(cfg)
    mtp = {"model.mtp_block.0.input_layernorm.weight": np.ones(cfg.n_embd, np.float32)}
    RC.save_checkpoint(d, {**hf_config(cfg), **(config_changes or {})}, {**hf_weights(cfg, w), **mtp}, drop)
    return d, RC.as_held(w)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tensors_metadata_and_logits(tmp_path, name):
    cfg = CONFIGS[name]
    d, w = checkpoint(tmp_path, cfg)
    path = tmp_path / "m.gguf"
    convert(d, path, type="f32", quiet=True)
    TC.assert_holds(path, w)
    r = gguf.GGUFReader(path)
    a = "ernie4_5-moe."
    keys = {f.name.removeprefix(a): f.contents() for f in r.fields.values() if f.name.startswith(a)}
    want = {
        "block_count": cfg.n_layer, "expert_count": cfg.moe_num_experts, "expert_used_count": cfg.moe_k,
        "interleave_moe_layer_step": 1, "leading_dense_block_count": cfg.moe_layer_start_index,
        "expert_feed_forward_length": cfg.moe_intermediate_size,
        "expert_shared_count": cfg.moe_num_shared_experts, "feed_forward_length": cfg.n_ff,
    }  # fmt: skip
    assert {k: keys.get(k) for k in want} == want
    shared = cfg.moe_intermediate_size * cfg.moe_num_shared_experts
    assert keys.get("expert_shared_feed_forward_length") == (shared or None)
    RC.ours_near(path, reference_logits(cfg, w, TOKENS), TOKENS)


@pytest.mark.reference
def test_llama_cpp_loads_it(tmp_path):
    cfg = CONFIGS["a3b"]
    d, w = checkpoint(tmp_path, cfg)
    path = tmp_path / "m.gguf"
    convert(d, path, type="f32", quiet=True)
    RC.llama_cpp_near(path, reference_logits(cfg, w, TOKENS), TOKENS)


@pytest.mark.parametrize(
    ("changes", "drop", "match"),
    [
        ({"moe_layer_interval": 2}, (), "moe_layer_end_index 2: only experts in every"),
        ({"moe_layer_end_index": 1}, (), "moe_layer_end_index 1"),
        ({"moe_layer_start_index": None}, (), "'moe_layer_start_index' must be an integer"),
        ({"moe_k": 9}, (), "moe_k 9 is more than moe_num_experts 8"),
        ({"use_bias": True}, (), "'use_bias' is true"),
        ({}, ("model.layers.1.mlp.moe_statics.e_score_correction_bias",), "correction_bias' is missing"),
        ({}, ("model.layers.2.mlp.experts.5.gate_proj.weight",), "experts.5.gate_proj.weight' is missing"),
        ({}, ("model.layers.0.mlp.up_proj.weight",), "layers.0.mlp.up_proj.weight' is missing"),
    ],
)  # fmt: skip
def test_bad_checkpoints_are_named(tmp_path, changes, drop, match):
    d, _ = checkpoint(tmp_path, CONFIGS["a3b"], changes, drop)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
