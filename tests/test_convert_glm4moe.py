"""convert-hf on tiny Glm4MoeForCausalLM checkpoints (with an MTP layer past num_hidden_layers): the
tensors and metadata llama.cpp's Glm4MoeModel writes (the MTP layer left out), GLM's special
tokens; splitllm's logits on the converted file against the float64 reference on the checkpoint's
weights, llama.cpp's too; config.json's defaults as transformers reads them; bad input named."""

from __future__ import annotations

import dataclasses

import gguf
import pytest
import routed_checks as RC
import test_convert as TC
from hf_dense import add_special_tokens
from hf_fixtures import write_bpe_tokenizer
from splitllm_convert import ConvertError, convert
from tiny_glm4moe import air, glm45, hf_config, hf_weights, make_weights, reference_logits

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2
GLM_TOKENS = ("[gMASK]", "<|user|>", "<|observation|>")  # (ids 320, 321, 322)
CONFIGS = {"glm45": glm45(n_vocab=323), "air-groups": air(n_vocab=323)}


def checkpoint(tmp_path, cfg, config_changes=None, drop=()):
    """A Glm4MoeForCausalLM directory of cfg's random weights (float32); returns (the directory,
    the GGUF-named trunk weights as float64)."""
    d = tmp_path / "hf"
    d.mkdir()
    write_bpe_tokenizer(d, vocab_size=320)
    assert add_special_tokens(d, GLM_TOKENS) == cfg.n_vocab
    w = make_weights(cfg)
    RC.save_checkpoint(d, {**hf_config(cfg), **(config_changes or {})}, hf_weights(cfg, w), drop)
    trunk = {k: v for k, v in w.items() if not (k.startswith("blk.") and int(k.split(".")[1]) >= cfg.n_layer)}
    return d, RC.as_held(trunk)


def converted(tmp_path, name):
    cfg = CONFIGS[name]
    d, w = checkpoint(tmp_path, cfg)
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    return cfg, w, out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tensors_metadata_and_logits(tmp_path, name):
    """Every trunk tensor as the checkpoint holds it, none of the MTP layer's; llama.cpp's keys;
    splitllm's logits the reference's."""
    cfg, w, path = converted(tmp_path, name)
    TC.assert_holds(path, w)
    r = gguf.GGUFReader(path)
    keys = {
        f.name.removeprefix("glm4moe."): f.contents()
        for f in r.fields.values()
        if f.name.startswith("glm4moe.")
    }
    want = {
        "block_count": cfg.n_layer, "rope.dimension_count": cfg.n_rot, "expert_count": cfg.n_routed_experts,
        "expert_used_count": cfg.num_experts_per_tok, "expert_shared_count": cfg.n_shared_experts,
        "expert_feed_forward_length": cfg.moe_intermediate_size, "feed_forward_length": cfg.n_ff,
        "leading_dense_block_count": cfg.first_k_dense_replace, "expert_gating_func": 2,
        "expert_weights_norm": True, "attention.key_length": cfg.head_dim,
        "attention.head_count_kv": cfg.n_head_kv,
    }  # fmt: skip
    assert {k: keys.get(k) for k in want} == want
    assert keys["expert_weights_scale"] == pytest.approx(cfg.routed_scaling_factor)
    assert "nextn_predict_layers" not in keys
    assert ("expert_group_count" in keys) is (cfg.n_group > 1)
    specials = {t: int(r.fields[f"tokenizer.ggml.{t}_token_id"].contents()) for t in ("bos", "eot", "eom")}
    assert specials == {"bos": 320, "eot": 321, "eom": 322}
    RC.ours_near(path, reference_logits(cfg, w, TOKENS), TOKENS)


@pytest.mark.reference
def test_llama_cpp_loads_it(tmp_path):
    cfg, w, path = converted(tmp_path, "air-groups")
    RC.llama_cpp_near(path, reference_logits(cfg, w, TOKENS), TOKENS)


def test_transformers_defaults(tmp_path):
    """config.json without first_k_dense_replace, norm_topk_prob, routed_scaling_factor, n_group,
    topk_group: transformers' Glm4MoeConfig defaults (1 dense block, weights normalized, scale 1,
    no groups), which the file then carries (llama.cpp's converter would write no norm and no
    dense block)."""
    cfg = glm45(n_vocab=323, routed_scaling_factor=1.0)
    absent = dict.fromkeys(("first_k_dense_replace", "norm_topk_prob", "routed_scaling_factor", "n_group",
                            "topk_group"))  # fmt: skip
    d, w = checkpoint(tmp_path, cfg, absent)
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    keys = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    assert keys["glm4moe.leading_dense_block_count"] == 1 and keys["glm4moe.expert_weights_norm"] is True
    RC.ours_near(out, reference_logits(dataclasses.replace(cfg, n_group=1, topk_group=1), w, TOKENS), TOKENS)


@pytest.mark.parametrize(
    ("changes", "drop", "match"),
    [
        ({"attention_bias": False}, (), "'attention_bias' is false"),
        ({"use_qk_norm": False}, (), "'use_qk_norm' is false"),
        ({}, ("model.layers.1.mlp.gate.e_score_correction_bias",), "e_score_correction_bias' is missing"),
        ({}, ("model.layers.2.mlp.experts.3.up_proj.weight",), "experts.3.up_proj.weight' is missing"),
        ({"partial_rotary_factor": 0.3}, (), "9 rotated dimensions per head"),
        ({"n_group": 3}, (), "n_group 3 / topk_group 1 do not fit 8 experts"),
        ({"routed_scaling_factor": 0}, (), "'routed_scaling_factor' must be a positive number"),
        ({"first_k_dense_replace": 5}, (), "first_k_dense_replace 5 is more than num_hidden_layers 3"),
    ],
)  # fmt: skip
def test_bad_checkpoints_are_named(tmp_path, changes, drop, match):
    d, _ = checkpoint(tmp_path, CONFIGS["glm45"], changes, drop)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
