"""convert-hf on tiny PhiMoEForCausalLM checkpoints: the tensors and metadata llama.cpp's PhiMoeModel
writes (the LongRoPE factors as tensors); splitllm's logits on the converted file against the
float64 reference (tests/tiny_phimoe.py), llama.cpp's too (F32 and Q8_0); bad input named."""

from __future__ import annotations

import pytest
import test_convert as TC
import tiny_phimoe
from splitllm_convert import ConvertError, convert
from test_convert_minimax import TOKENS, arch_keys, check_llama_cpp, check_logits, hf_checkpoint
from tiny_phimoe import PhiMoeConfig, hf_config, reference_logits

CFG = PhiMoeConfig()


def checkpoint(tmp_path, config_changes=None, drop=()):
    return hf_checkpoint(tmp_path, CFG, tiny_phimoe, config_changes, drop)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phimoe_convert")
    d, w = checkpoint(tmp)
    out = tmp / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    return w, out, d


def test_tensors_metadata_and_logits(converted):
    """Every tensor as the checkpoint holds it (the experts stacked, the LongRoPE factors from
    config.json); llama.cpp's keys; splitllm's logits the reference's."""
    w, path, _ = converted
    TC.assert_holds(path, w)
    keys = arch_keys(path, "phimoe")
    want = {
        "block_count": CFG.n_layer, "rope.dimension_count": CFG.head_dim, "context_length": CFG.n_ctx_train,
        "rope.scaling.original_context_length": CFG.original_ctx, "expert_count": CFG.num_local_experts,
        "expert_used_count": CFG.num_experts_per_tok, "feed_forward_length": CFG.intermediate_size,
        "attention.head_count": CFG.n_head, "attention.head_count_kv": CFG.n_head_kv,
        "attention.sliding_window": 0,
    }  # fmt: skip
    assert {k: keys.get(k) for k in want} == want
    assert keys["rope.scaling.attn_factor"] == pytest.approx(CFG.attn_factor)
    assert keys["attention.layer_norm_rms_epsilon"] == pytest.approx(CFG.rms_eps)
    check_logits(path, reference_logits(CFG, w, TOKENS))


@pytest.mark.reference
def test_llama_cpp_loads_it(converted, tmp_path):
    """llama.cpp on the converted f32 file within 1e-3 of the reference; on a q8_0 conversion, the
    routed models' Q8_0 bounds for both engines."""
    w, path, d = converted
    check_llama_cpp(path, d, tmp_path, reference_logits(CFG, w, TOKENS))


@pytest.mark.parametrize(
    ("changes", "drop", "match"),
    [
        ({"attention_bias": False}, (), "'attention_bias' is False"),
        ({"lm_head_bias": None}, (), "'lm_head_bias' is None"),
        ({"head_dim": 32, "rope_scaling": None}, (), "head_dim = hidden_size / num_attention_heads"),
        ({"rope_scaling": {**hf_config(CFG)["rope_scaling"], "long_factor": [1.0]}}, (), "long_factor"),
        ({}, ("model.layers.1.post_attention_layernorm.bias",), "post_attention_layernorm.bias' .*missing"),
        ({}, ("lm_head.bias",), "lm_head.bias' .*missing"),
        ({}, ("model.layers.0.block_sparse_moe.experts.2.w1.weight",), "experts.2.w1.weight' .*missing"),
    ],
)
def test_bad_checkpoint_is_named(tmp_path, changes, drop, match):
    d, _ = checkpoint(tmp_path, changes, drop)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
