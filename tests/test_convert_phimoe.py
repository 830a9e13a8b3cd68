"""convert-hf on tiny PhiMoEForCausalLM checkpoints: the tensors and metadata llama.cpp's PhiMoeModel
writes (the LongRoPE factors as tensors); splitllm's logits on the converted file against the
float64 reference (tests/tiny_phimoe.py), llama.cpp's too (F32 and Q8_0); bad input named."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import test_convert as TC
from hf_fixtures import save_weights, write_bpe_tokenizer
from lcpp import check_routed_q8, llama_cpp_logits
from splitllm import Model
from splitllm_convert import ConvertError, convert
from tiny_model import F32_LOGITS_TOL
from tiny_phimoe import PhiMoeConfig, hf_config, hf_weights, make_weights, reference_logits

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2
CFG = PhiMoeConfig()


def checkpoint(tmp_path, config_changes=None, drop=()):
    """A PhiMoEForCausalLM directory of CFG's random weights (float32); returns (the directory, the
    GGUF-named weights as float64)."""
    d = tmp_path / "hf"
    d.mkdir()
    write_bpe_tokenizer(d, vocab_size=CFG.n_vocab)
    config = {**hf_config(CFG), **(config_changes or {})}
    (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    w = make_weights(CFG)
    save_weights(d, {k: v.astype(np.float32) for k, v in hf_weights(CFG, w).items() if k not in drop})
    return d, {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}


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
    r = gguf.GGUFReader(path)
    a = "phimoe."
    keys = {f.name.removeprefix(a): f.contents() for f in r.fields.values() if f.name.startswith(a)}
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
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    ref = reference_logits(CFG, w, TOKENS)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < F32_LOGITS_TOL


@pytest.mark.reference
def test_llama_cpp_loads_it(converted, tmp_path):
    """llama.cpp on the converted f32 file within 1e-3 of the reference; on a q8_0 conversion, the
    routed models' Q8_0 bounds for both engines."""
    w, path, d = converted
    ref = reference_logits(CFG, w, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    assert np.abs(theirs - ref).max() / np.abs(ref).max() < 1e-3
    q8 = tmp_path / "q8.gguf"
    convert(d, q8, type="q8_0", quiet=True)
    with Model(q8, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    check_routed_q8(ours, ref, llama_cpp_logits(q8, TOKENS))


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
