"""convert-hf on tiny MiniMaxM2ForCausalLM and PhiMoEForCausalLM checkpoints, one suite over a table
of cases (CASES): the tensors and metadata llama.cpp's MiniMaxM2Model / PhiMoeModel write (phimoe's
LongRoPE factors as tensors); splitllm's logits on the converted file against the float64 reference
on the checkpoint's weights (tests/tiny_minimax.py, tests/tiny_phimoe.py), llama.cpp's too (F32 and
Q8_0); bad input named."""

from __future__ import annotations

import pytest
import routed_checks as RC
import test_convert as TC
import tiny_minimax
import tiny_phimoe
from hf_fixtures import write_bpe_tokenizer
from splitllm_convert import ConvertError, convert
from tiny_minimax import MinimaxM2Config
from tiny_phimoe import PhiMoeConfig

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2
MINIMAX, PHIMOE = MinimaxM2Config(), PhiMoeConfig()


def minimax_keys(c: MinimaxM2Config) -> tuple[dict, dict]:
    """The minimax-m2.* keys MiniMaxM2Model writes: (those compared exactly, those approximately)."""
    return {
        "block_count": c.n_layer, "rope.dimension_count": c.rotary_dim,
        "expert_count": c.num_local_experts, "expert_used_count": c.num_experts_per_tok,
        "expert_feed_forward_length": c.intermediate_size, "feed_forward_length": c.intermediate_size,
        "expert_gating_func": 2, "attention.key_length": c.head_dim, "attention.value_length": c.head_dim,
        "attention.head_count": c.n_head, "attention.head_count_kv": c.n_head_kv,
    }, {"rope.freq_base": c.rope_base, "attention.layer_norm_rms_epsilon": c.rms_eps}  # fmt: skip


def phimoe_keys(c: PhiMoeConfig) -> tuple[dict, dict]:
    """The phimoe.* keys PhiMoeModel writes: (those compared exactly, those approximately)."""
    return {
        "block_count": c.n_layer, "rope.dimension_count": c.head_dim, "context_length": c.n_ctx_train,
        "rope.scaling.original_context_length": c.original_ctx, "expert_count": c.num_local_experts,
        "expert_used_count": c.num_experts_per_tok, "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.n_head, "attention.head_count_kv": c.n_head_kv,
        "attention.sliding_window": 0,
    }, {"rope.scaling.attn_factor": c.attn_factor, "attention.layer_norm_rms_epsilon": c.rms_eps}  # fmt: skip


CASES = {  # the file's arch: (the tiny_* module, its config, the keys the file must hold)
    "minimax-m2": (tiny_minimax, MINIMAX, minimax_keys),
    "phimoe": (tiny_phimoe, PHIMOE, phimoe_keys),
}


def hf_checkpoint(tmp_path, cfg, tiny, config_changes=None, drop=()):
    """A checkpoint directory of cfg's random weights (float32) by the tiny_* module ``tiny``'s
    make_weights / hf_config / hf_weights, with a byte-level BPE tokenizer; returns (the directory,
    the GGUF-named weights as float64)."""
    d = tmp_path / "hf"
    d.mkdir()
    write_bpe_tokenizer(d, vocab_size=cfg.n_vocab)
    w = tiny.make_weights(cfg)
    RC.save_checkpoint(d, {**tiny.hf_config(cfg), **(config_changes or {})}, tiny.hf_weights(cfg, w), drop)
    return d, RC.as_held(w)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each case's checkpoint converted to f32: arch -> (the weights, the file, the checkpoint)."""
    out = {}
    for arch, (tiny, cfg, _) in CASES.items():
        tmp = tmp_path_factory.mktemp(f"{arch}_convert")
        d, w = hf_checkpoint(tmp, cfg, tiny)
        convert(d, tmp / "m.gguf", type="f32", quiet=True)
        out[arch] = (w, tmp / "m.gguf", d)
    return out


@pytest.mark.parametrize("arch", list(CASES))
def test_tensors_metadata_and_logits(converted, arch):
    """Every tensor as the checkpoint holds it (the experts stacked, phimoe's LongRoPE factors from
    config.json); llama.cpp's keys; splitllm's logits within F32_LOGITS_TOL of the reference's."""
    tiny, cfg, keys_of = CASES[arch]
    w, path, _ = converted[arch]
    TC.assert_holds(path, w)
    keys = TC.arch_keys(path, arch)
    want, near = keys_of(cfg)
    assert {k: keys.get(k) for k in want} == want
    for k, v in near.items():
        assert keys[k] == pytest.approx(v), k
    RC.ours_near(path, tiny.reference_logits(cfg, w, TOKENS), TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("arch", list(CASES))
def test_llama_cpp_loads_it(converted, tmp_path, arch):
    """llama.cpp on the converted f32 file within 1e-3 of the reference; on a q8_0 conversion, the
    routed models' Q8_0 bounds for both engines."""
    tiny, cfg, _ = CASES[arch]
    w, path, d = converted[arch]
    ref = tiny.reference_logits(cfg, w, TOKENS)
    RC.llama_cpp_near(path, ref, TOKENS)
    q8 = tmp_path / "q8.gguf"
    convert(d, q8, type="q8_0", quiet=True)
    RC.q8_against_llama_cpp(q8, lambda _: ref, w, TOKENS)  # (the reference on the checkpoint's weights)


@pytest.mark.parametrize(
    ("arch", "changes", "drop", "match"),
    [
        ("minimax-m2", {"scoring_func": "softmax"}, (), "'scoring_func' is 'softmax'"),
        ("minimax-m2", {"use_routing_bias": False}, (), "'use_routing_bias' is False"),
        ("minimax-m2", {"qk_norm_type": "per_head"}, (), "'qk_norm_type' is 'per_head'"),
        ("minimax-m2", {"rotary_dim": None}, (), "rotary_dim"),
        ("minimax-m2", {"rotary_dim": 48}, (), "'rotary_dim' 48 must be even and at most the head size 32"),
        ("minimax-m2", {}, ("model.layers.1.block_sparse_moe.e_score_correction_bias",),
         "correction_bias' .*missing"),
        ("minimax-m2", {}, ("model.layers.0.self_attn.k_norm.weight",), "k_norm.weight' .*missing"),
        ("minimax-m2", {}, ("model.layers.2.block_sparse_moe.experts.3.w3.weight",),
         "experts.3.w3.weight' .*missing"),
        ("phimoe", {"attention_bias": False}, (), "'attention_bias' is False"),
        ("phimoe", {"lm_head_bias": None}, (), "'lm_head_bias' is None"),
        ("phimoe", {"head_dim": 32, "rope_scaling": None}, (),
         "head_dim = hidden_size / num_attention_heads"),
        ("phimoe", {"rope_scaling": {**tiny_phimoe.hf_config(PHIMOE)["rope_scaling"], "long_factor": [1.0]}},
         (), "long_factor"),
        ("phimoe", {}, ("model.layers.1.post_attention_layernorm.bias",),
         "post_attention_layernorm.bias' .*missing"),
        ("phimoe", {}, ("lm_head.bias",), "lm_head.bias' .*missing"),
        ("phimoe", {}, ("model.layers.0.block_sparse_moe.experts.2.w1.weight",),
         "experts.2.w1.weight' .*missing"),
    ],
)  # fmt: skip
def test_bad_checkpoint_is_named(tmp_path, arch, changes, drop, match):
    tiny, cfg, _ = CASES[arch]
    d, _ = hf_checkpoint(tmp_path, cfg, tiny, changes, drop)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
