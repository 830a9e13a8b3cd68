"""convert-hf on tiny MiniMaxM2ForCausalLM checkpoints: the tensors and metadata llama.cpp's
MiniMaxM2Model writes; splitllm's logits on the converted file against the float64 reference on the
checkpoint's weights (tests/tiny_minimax.py), llama.cpp's too (F32 and Q8_0); bad input named."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import test_convert as TC
import tiny_minimax
from hf_fixtures import save_weights, write_bpe_tokenizer
from lcpp import check_routed_q8, llama_cpp_logits
from splitllm import Model
from splitllm_convert import ConvertError, convert
from tiny_minimax import MinimaxM2Config, reference_logits
from tiny_model import F32_LOGITS_TOL

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2
CFG = MinimaxM2Config()


def hf_checkpoint(tmp_path, cfg, tiny, config_changes=None, drop=()):
    """A checkpoint directory of cfg's random weights (float32) by the tiny_* module ``tiny``'s
    make_weights / hf_config / hf_weights, with a byte-level BPE tokenizer; returns (the directory,
    the GGUF-named weights as float64)."""
    d = tmp_path / "hf"
    d.mkdir()
    write_bpe_tokenizer(d, vocab_size=cfg.n_vocab)
    config = {**tiny.hf_config(cfg), **(config_changes or {})}
    (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    w = tiny.make_weights(cfg)
    save_weights(d, {k: v.astype(np.float32) for k, v in tiny.hf_weights(cfg, w).items() if k not in drop})
    return d, {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}


def checkpoint(tmp_path, config_changes=None, drop=()):
    return hf_checkpoint(tmp_path, CFG, tiny_minimax, config_changes, drop)


def arch_keys(path, arch):
    """The file's {arch}.* keys, by the rest of their names."""
    a = arch + "."
    return {f.name.removeprefix(a): f.contents() for f in gguf.GGUFReader(path).fields.values()
            if f.name.startswith(a)}  # fmt: skip


def check_logits(path, ref):
    """splitllm's logits on the file within F32_LOGITS_TOL of the reference's."""
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < F32_LOGITS_TOL


def check_llama_cpp(path, d, tmp_path, ref):
    """llama.cpp on the converted f32 file within 1e-3 of the reference; on a q8_0 conversion of the
    checkpoint d, the routed models' Q8_0 bounds for both engines."""
    theirs = llama_cpp_logits(path, TOKENS)
    assert np.abs(theirs - ref).max() / np.abs(ref).max() < 1e-3
    q8 = tmp_path / "q8.gguf"
    convert(d, q8, type="q8_0", quiet=True)
    with Model(q8, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    check_routed_q8(ours, ref, llama_cpp_logits(q8, TOKENS))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("minimax_convert")
    d, w = checkpoint(tmp)
    out = tmp / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    return w, out, d


def test_tensors_metadata_and_logits(converted):
    """Every tensor as the checkpoint holds it (the experts stacked); llama.cpp's keys; splitllm's
    logits the reference's."""
    w, path, _ = converted
    TC.assert_holds(path, w)
    keys = arch_keys(path, "minimax-m2")
    want = {
        "block_count": CFG.n_layer, "rope.dimension_count": CFG.rotary_dim,
        "expert_count": CFG.num_local_experts, "expert_used_count": CFG.num_experts_per_tok,
        "expert_feed_forward_length": CFG.intermediate_size, "feed_forward_length": CFG.intermediate_size,
        "expert_gating_func": 2, "attention.key_length": CFG.head_dim, "attention.value_length": CFG.head_dim,
        "attention.head_count": CFG.n_head, "attention.head_count_kv": CFG.n_head_kv,
    }  # fmt: skip
    assert {k: keys.get(k) for k in want} == want
    assert keys["rope.freq_base"] == pytest.approx(CFG.rope_base)
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
        ({"scoring_func": "softmax"}, (), "'scoring_func' is 'softmax'"),
        ({"use_routing_bias": False}, (), "'use_routing_bias' is False"),
        ({"qk_norm_type": "per_head"}, (), "'qk_norm_type' is 'per_head'"),
        ({"rotary_dim": None}, (), "rotary_dim"),
        ({"rotary_dim": 48}, (), "'rotary_dim' 48 must be even and at most the head size 32"),
        ({}, ("model.layers.1.block_sparse_moe.e_score_correction_bias",), "correction_bias' .*missing"),
        ({}, ("model.layers.0.self_attn.k_norm.weight",), "k_norm.weight' .*missing"),
        ({}, ("model.layers.2.block_sparse_moe.experts.3.w3.weight",), "experts.3.w3.weight' .*missing"),
    ],
)
def test_bad_checkpoint_is_named(tmp_path, changes, drop, match):
    d, _ = checkpoint(tmp_path, changes, drop)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
