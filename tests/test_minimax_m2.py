"""minimax-m2 (MiniMax-M2 / M2.1 GGUFs) on tiny random models: every block a mixture of experts
with sigmoid routing and the selection bias, the chosen weights renormalized; q/k RMS norms over the
whole projections (all heads together); the partial NEOX rotation; against the float64 reference
written from transformers' modeling_minimax_m2.py (tests/tiny_minimax.py) and llama.cpp."""

from __future__ import annotations

import dataclasses

import pytest
from routed_checks import (
    f32_against_llama_cpp,
    greedy_matches_llama_cpp,
    q8_against_llama_cpp,
    refused,
    rel_err,
    split_with_host_parts,
    write_files,
)
from tiny_minimax import MinimaxM2Config, make_weights, reference_logits, write_gguf
from tiny_model import F32_LOGITS_TOL, check_engine_passes

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions

CONFIGS = {
    "m2": MinimaxM2Config(),
    # whole heads rotated, one KV head, more experts chosen
    "full-rot": MinimaxM2Config(rotary_dim=32, n_head_kv=1, num_experts_per_tok=4, seed=1),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each config's F32 file and its weights (as held)."""
    return write_files(tmp_path_factory.mktemp("minimax"), CONFIGS, make_weights, write_gguf)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(files, name):
    """One pass, passes of 5, then token by token (the decode path): the reference's logits."""
    cfg, path, held = files[name]
    check_engine_passes(path, TOKENS, reference_logits(cfg, held, TOKENS))


def test_reference_sees_every_part(files):
    """What the tests rely on changes the reference's logits far past the bound: the selection
    bias, the q/k norms and that they span all heads (per-head norms give other logits), the
    partial rotation."""
    cfg, _, held = files["m2"]
    ref = reference_logits(cfg, held, TOKENS)
    for part in ("exp_probs_b.bias", "attn_q_norm", "attn_k_norm"):
        changed = {k: (v * 0.5 if part in k else v) for k, v in held.items()}
        assert rel_err(reference_logits(cfg, changed, TOKENS), ref) > 50 * F32_LOGITS_TOL, part
    assert rel_err(reference_logits(cfg, held, TOKENS, norm_per_head=True), ref) > 50 * F32_LOGITS_TOL
    rotated = dataclasses.replace(cfg, rotary_dim=cfg.head_dim)
    assert rel_err(reference_logits(rotated, held, TOKENS), ref) > 1e-2


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_llama_cpp(files, name):
    """F32 weights: llama.cpp's logits near the reference (its float16 attention), and ours
    within 1e-3 of its."""
    cfg, path, held = files[name]
    f32_against_llama_cpp(path, reference_logits(cfg, held, TOKENS), TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_q8_0_matches_llama_cpp(tmp_path, name):
    """Q8_0 weights (the router and vectors F32): per token, llama.cpp's logits on the same file
    and the reference's on the weights as the file holds them, within the engines' 8-bit
    activations (which may flip a near tie of the tiny random routers at a few tokens)."""
    cfg = CONFIGS[name]
    path = tmp_path / "q8.gguf"
    held = write_gguf(cfg, make_weights(cfg), path, weight_type="Q8_0")
    q8_against_llama_cpp(path, lambda w: reference_logits(cfg, w, TOKENS), held, TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_match_llama_cpp(files, name):
    """12 greedy tokens after a prompt of 6, F32 weights: llama.cpp's."""
    greedy_matches_llama_cpp(files[name][1], TOKENS[:6])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"minimax-m2.expert_feed_forward_length": None}, "expert_feed_forward_length' is missing"),
        ({"minimax-m2.expert_gating_func": 3}, "expert_gating_func' = 3 is not supported"),
        ({"minimax-m2.expert_shared_count": 1}, "no shared experts"),
        ({"minimax-m2.expert_count": None}, "expert_count"),
        ({"minimax-m2.rope.dimension_count": 48}, "rope.dimension_count = 48"),
    ],
)
def test_bad_metadata_is_named(tmp_path, changes, match):
    cfg = CONFIGS["m2"]
    refused(tmp_path, cfg, make_weights(cfg), write_gguf, match, metadata_changes=changes)


@pytest.mark.parametrize(
    "drop", ["blk.1.exp_probs_b.bias", "blk.0.attn_k_norm.weight", "blk.2.ffn_gate_inp.weight"]
)
def test_missing_tensor_is_named(tmp_path, drop):
    cfg = CONFIGS["m2"]
    w = make_weights(cfg)
    del w[drop]
    refused(tmp_path, cfg, w, write_gguf, f"tensor '{drop}' is missing")


def test_experts_stay_on_the_host(files, monkeypatch):
    """With a (fake) GPU: the blocks go to the GPU but for their routers, selection biases and
    experts, said once; the logits are the CPU's (routed_checks.split_with_host_parts)."""
    split_with_host_parts(files["m2"][1], monkeypatch)
