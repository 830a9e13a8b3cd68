"""minimax-m2 and phimoe on tiny random models, one suite over a table of cases (CASES), each case
against its float64 reference and llama.cpp:

- minimax-m2 (MiniMax-M2 / M2.1 GGUFs): every block a mixture of experts with sigmoid routing and the
  selection bias, the chosen weights renormalized; q/k RMS norms over the whole projections (all
  heads together); the partial NEOX rotation; the reference written from transformers'
  modeling_minimax_m2.py (tests/tiny_minimax.py).
- phimoe (Phi-3.5-MoE GGUFs): norms with biases (run as llama.cpp runs them: RMS norms plus the
  bias), softmax top-2 routing renormalized, q/k/v, attention-output and output biases, the NEOX
  rotation with LongRoPE's short or long factors and attention factor; the reference of
  tests/tiny_phimoe.py."""

from __future__ import annotations

import dataclasses

import pytest
import tiny_minimax
import tiny_phimoe
from routed_checks import (
    f32_against_llama_cpp,
    greedy_matches_llama_cpp,
    q8_against_llama_cpp,
    refused,
    rel_err,
    split_with_host_parts,
    with_fake_gpu,
    write_files,
)
from tiny_minimax import MinimaxM2Config
from tiny_model import F32_LOGITS_TOL, check_engine_passes
from tiny_phimoe import PhiMoeConfig

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions

CASES = {  # name: (the tiny_* module: make_weights, write_gguf, reference_logits; its config)
    "m2": (tiny_minimax, MinimaxM2Config()),
    # whole heads rotated, one KV head, more experts chosen
    "full-rot": (tiny_minimax, MinimaxM2Config(rotary_dim=32, n_head_kv=1, num_experts_per_tok=4, seed=1)),
    "phi35": (tiny_phimoe, PhiMoeConfig()),  # a context of 64 within the original 1024: the short factors
    # past the original context (32 < 64): the long factors; no q/k/v biases, 8 experts choose 3
    "long": (tiny_phimoe, PhiMoeConfig(original_ctx=32, attention_bias=False, num_local_experts=8,
                                       num_experts_per_tok=3, seed=1)),
}  # fmt: skip


def reference(name, held, cfg=None, **kw):
    """The case's reference logits on TOKENS with these weights (and cfg in place of its own)."""
    tiny, own = CASES[name]
    return tiny.reference_logits(cfg or own, held, TOKENS, **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each case's F32 file and its weights (as held)."""
    return write_files(tmp_path_factory.mktemp("minimax_phimoe"), CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(files, name):
    """One pass, passes of 5, then token by token (the decode path): the reference's logits."""
    _, path, held = files[name]
    check_engine_passes(path, TOKENS, reference(name, held))


def test_minimax_reference_sees_every_part(files):
    """What the tests rely on changes the reference's logits far past the bound: the selection
    bias, the q/k norms and that they span all heads (per-head norms give other logits), the
    partial rotation."""
    cfg, _, held = files["m2"]
    ref = reference("m2", held)
    for part in ("exp_probs_b.bias", "attn_q_norm", "attn_k_norm"):
        changed = {k: (v * 0.5 if part in k else v) for k, v in held.items()}
        assert rel_err(reference("m2", changed), ref) > 50 * F32_LOGITS_TOL, part
    assert rel_err(reference("m2", held, norm_per_head=True), ref) > 50 * F32_LOGITS_TOL
    rotated = dataclasses.replace(cfg, rotary_dim=cfg.head_dim)
    assert rel_err(reference("m2", held, cfg=rotated), ref) > 1e-2


def test_phimoe_reference_sees_every_part(files):
    """What the tests rely on changes the reference's logits far past the bound: each kind of bias,
    the LongRoPE factors (short against long) and attention factor."""
    cfg, _, held = files["phi35"]
    ref = reference("phi35", held)
    for part in ("attn_norm.bias", "ffn_norm.bias", "output_norm.bias", "attn_output.bias", "attn_k.bias",
                 "output.bias"):  # fmt: skip
        changed = {k: (v * 0.5 if k.endswith(part) else v) for k, v in held.items()}
        assert rel_err(reference("phi35", changed), ref) > 50 * F32_LOGITS_TOL, part
    assert rel_err(reference("phi35", held, n_ctx=2048), ref) > 50 * F32_LOGITS_TOL
    flat = dataclasses.replace(cfg, n_ctx_train=cfg.original_ctx)  # (an attention factor of 1)
    assert rel_err(reference("phi35", held, cfg=flat), ref) > 50 * F32_LOGITS_TOL


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CASES))
def test_matches_llama_cpp(files, name):
    """F32 weights: llama.cpp's logits near the reference (its float16 attention), and ours
    within 1e-3 of its."""
    _, path, held = files[name]
    f32_against_llama_cpp(path, reference(name, held), TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CASES))
def test_q8_0_matches_llama_cpp(tmp_path, name):
    """Q8_0 weights (the router, vectors and biases F32): per token, llama.cpp's logits on the same
    file and the reference's on the weights as the file holds them, within the engines' 8-bit
    activations (which may flip a near tie of the tiny random routers at a few tokens)."""
    tiny, cfg = CASES[name]
    path = tmp_path / "q8.gguf"
    held = tiny.write_gguf(cfg, tiny.make_weights(cfg), path, weight_type="Q8_0")
    q8_against_llama_cpp(path, lambda w: reference(name, w), held, TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CASES))
def test_greedy_tokens_match_llama_cpp(files, name):
    """12 greedy tokens after a prompt of 6, F32 weights: llama.cpp's."""
    greedy_matches_llama_cpp(files[name][1], TOKENS[:6])


@pytest.mark.parametrize(
    ("name", "changes", "match"),
    [
        ("m2", {"minimax-m2.expert_feed_forward_length": None}, "expert_feed_forward_length' is missing"),
        ("m2", {"minimax-m2.expert_gating_func": 3}, "expert_gating_func' = 3 is not supported"),
        ("m2", {"minimax-m2.expert_shared_count": 1}, "no shared experts"),
        ("m2", {"minimax-m2.expert_count": None}, "expert_count"),
        ("m2", {"minimax-m2.rope.dimension_count": 48}, "rope.dimension_count = 48"),
        ("phi35", {"phimoe.attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon' is missing"),
        ("phi35", {"phimoe.expert_count": None}, "expert_count"),
        ("phi35", {"phimoe.attention.key_length": 32}, "head_count x key_length = embedding_length"),
    ],
)
def test_bad_metadata_is_named(tmp_path, name, changes, match):
    tiny, cfg = CASES[name]
    refused(tmp_path, cfg, tiny.make_weights(cfg), tiny.write_gguf, match, metadata_changes=changes)


@pytest.mark.parametrize(
    ("name", "drop"),
    [
        ("m2", "blk.1.exp_probs_b.bias"),
        ("m2", "blk.0.attn_k_norm.weight"),
        ("m2", "blk.2.ffn_gate_inp.weight"),
        ("phi35", "blk.1.attn_norm.bias"),
        ("phi35", "blk.0.ffn_norm.bias"),
        ("phi35", "blk.0.attn_output.bias"),
        ("phi35", "output.bias"),
        ("phi35", "output_norm.bias"),
    ],
)
def test_missing_tensor_is_named(tmp_path, name, drop):
    tiny, cfg = CASES[name]
    w = tiny.make_weights(cfg)
    del w[drop]
    refused(tmp_path, cfg, w, tiny.write_gguf, f"tensor '{drop}' is missing")


def test_minimax_experts_stay_on_the_host(files, monkeypatch):
    """With a (fake) GPU: the blocks go to the GPU but for their routers, selection biases and
    experts, said once; the logits are the CPU's (routed_checks.split_with_host_parts)."""
    split_with_host_parts(files["m2"][1], monkeypatch)


def test_phimoe_runs_on_the_cpu_with_a_gpu(files, monkeypatch):
    """With a (fake) GPU: the whole model stays on the CPU with a warning (no GPU norm biases yet),
    its logits the CPU's."""
    m = with_fake_gpu(files["phi35"][1], TOKENS, monkeypatch, op_offload=False)
    assert len(m.warnings) == 1 and "norms with biases" in m.warnings[0]
    assert {p["device"] for p in m.placement} == {"CPU"}
