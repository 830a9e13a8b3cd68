"""ernie4_5-moe (ERNIE-4.5-21B-A3B / 300B-A47B GGUFs) on tiny random models: leading dense blocks, the
softmax router whose choice adds the correction bias, the chosen probabilities renormalized, shared
experts or none, the interleaved rotation of whole heads, tied or untied output; against the float64
reference written from transformers' modeling_ernie4_5_moe.py (tests/tiny_ernie_moe.py) and
llama.cpp."""

from __future__ import annotations

import dataclasses

import pytest
import routed_checks as RC
import tiny_ernie_moe
from routed_checks import rel_err
from splitllm import Model
from tiny_ernie_moe import ErnieMoeConfig, make_weights, reference_logits, write_gguf
from tiny_glm4moe import file_block_bytes
from tiny_model import F32_LOGITS_TOL, check_engine_passes

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions

CONFIGS = {
    "a3b": ErnieMoeConfig(),  # 21B-A3B-like: one dense block, two shared experts, the bias, tied
    "untied-plain": ErnieMoeConfig(
        tied=False, moe_num_shared_experts=0, score_bias=False, moe_layer_start_index=0, seed=1
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return RC.write_files(
        tmp_path_factory.mktemp("ernie_moe"), {n: (tiny_ernie_moe, c) for n, c in CONFIGS.items()}
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(files, name):
    """One pass, passes of 5, then token by token: the reference's logits; what the case relies
    on (the correction bias, the shared experts, the renormalization) moves them far past that."""
    cfg, path, held = files[name]
    ref = reference_logits(cfg, held, TOKENS)
    check_engine_passes(path, TOKENS, ref)
    if name == "a3b":
        for part in ("exp_probs_b", "ffn_down_shexp"):
            changed = {k: (v * 0.5 if part in k else v) for k, v in held.items()}
            assert rel_err(reference_logits(cfg, changed, TOKENS), ref) > 50 * F32_LOGITS_TOL, part
        plain = dataclasses.replace(cfg)
        plain.norm_topk_prob = False  # type: ignore[misc]  # (an instance attribute over the class's)
        assert rel_err(reference_logits(plain, held, TOKENS), ref) > 1e-2


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_llama_cpp(files, name):
    """F32 weights: llama.cpp's logits within its own distance to the reference (measured 1.6e-4
    and 3.8e-4: its float16 attention; ours 5.2e-5 and 1.1e-5), and ours within as much of its;
    12 greedy tokens after a prompt of 6 equal its."""
    cfg, path, held = files[name]
    RC.f32_against_llama_cpp(path, reference_logits(cfg, held, TOKENS), TOKENS)
    RC.greedy_matches_llama_cpp(path, TOKENS[:6])


@pytest.mark.reference
def test_q8_0_matches_llama_cpp(tmp_path):
    """Q8_0 weights: per token, llama.cpp's logits and the reference's on the weights as held
    (measured: medians 7.0e-3 and 7.6e-3, at most 4.0e-2, a near tie of a router flipped)."""
    cfg = CONFIGS["a3b"]
    path = tmp_path / "q8.gguf"
    held = write_gguf(cfg, make_weights(cfg), path, weight_type="Q8_0")
    RC.q8_against_llama_cpp(path, lambda w: reference_logits(cfg, w, TOKENS), held, TOKENS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_placement_counts_every_weight(files, name):
    """model.placement's bytes of each block are the file's bytes of its tensors (the correction
    bias and the shared experts too)."""
    cfg, path, _ = files[name]
    with Model(path, n_ctx=64, n_threads=2) as model:
        got = {p["name"]: p["weight_bytes"] for p in model.placement if p["name"].startswith("blk.")}
    assert got == file_block_bytes(path, cfg.n_layer)[0]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_experts_stay_on_the_host(files, name, monkeypatch):
    """With a (fake) GPU: the blocks go there but for their routers, correction biases and
    experts; the logits are the CPU's (routed_checks.split_with_host_parts)."""
    RC.split_with_host_parts(files[name][1], monkeypatch)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"interleave_moe_layer_step": 2}, "interleave_moe_layer_step' = 2: only experts in every block"),
        ({"interleave_moe_layer_step": None}, "interleave_moe_layer_step"),
        ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
        ({"expert_count": None}, "expert_count' is missing"),
        ({"attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon' is missing"),
        ({"rope.dimension_count": 8}, "rotates whole heads"),
    ],
)
def test_bad_metadata_is_named(tmp_path, changes, match):
    cfg = CONFIGS["a3b"]
    RC.refused(tmp_path, cfg, make_weights(cfg), write_gguf, match, metadata_changes=changes)
