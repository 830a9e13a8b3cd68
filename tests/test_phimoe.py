"""phimoe (Phi-3.5-MoE GGUFs) on tiny random models: norms with biases (run as llama.cpp runs them:
RMS norms plus the bias), softmax top-2 routing renormalized, q/k/v, attention-output and output
biases, the NEOX rotation with LongRoPE's short or long factors and attention factor; against the
float64 reference (tests/tiny_phimoe.py) and llama.cpp."""

from __future__ import annotations

import dataclasses

import pytest
from routed_checks import (
    f32_against_llama_cpp,
    greedy_matches_llama_cpp,
    q8_against_llama_cpp,
    refused,
    rel_err,
    with_fake_gpu,
    write_files,
)
from tiny_model import F32_LOGITS_TOL, check_engine_passes
from tiny_phimoe import PhiMoeConfig, make_weights, reference_logits, write_gguf

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions

CONFIGS = {
    "phi35": PhiMoeConfig(),  # a context of 64 within the original 1024: the short factors
    # past the original context (32 < 64): the long factors; no q/k/v biases, 8 experts choose 3
    "long": PhiMoeConfig(
        original_ctx=32, attention_bias=False, num_local_experts=8, num_experts_per_tok=3, seed=1
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each config's F32 file and its weights (as held)."""
    return write_files(tmp_path_factory.mktemp("phimoe"), CONFIGS, make_weights, write_gguf)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(files, name):
    """One pass, passes of 5, then token by token (the decode path): the reference's logits."""
    cfg, path, held = files[name]
    check_engine_passes(path, TOKENS, reference_logits(cfg, held, TOKENS))


def test_reference_sees_every_part(files):
    """What the tests rely on changes the reference's logits far past the bound: each kind of bias,
    the LongRoPE factors (short against long) and attention factor."""
    cfg, _, held = files["phi35"]
    ref = reference_logits(cfg, held, TOKENS)
    for part in ("attn_norm.bias", "ffn_norm.bias", "output_norm.bias", "attn_output.bias", "attn_k.bias",
                 "output.bias"):  # fmt: skip
        changed = {k: (v * 0.5 if k.endswith(part) else v) for k, v in held.items()}
        assert rel_err(reference_logits(cfg, changed, TOKENS), ref) > 50 * F32_LOGITS_TOL, part
    assert rel_err(reference_logits(cfg, held, TOKENS, n_ctx=2048), ref) > 50 * F32_LOGITS_TOL
    flat = dataclasses.replace(cfg, n_ctx_train=cfg.original_ctx)  # (an attention factor of 1)
    assert rel_err(reference_logits(flat, held, TOKENS), ref) > 50 * F32_LOGITS_TOL


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_llama_cpp(files, name):
    """F32 weights: llama.cpp's logits near the reference (its float16 attention), ours within 1e-3
    of its."""
    cfg, path, held = files[name]
    f32_against_llama_cpp(path, reference_logits(cfg, held, TOKENS), TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_q8_0_matches_llama_cpp(tmp_path, name):
    """Q8_0 weights (the router, vectors and biases F32): per token, llama.cpp's logits on the same
    file and the reference's on the weights as the file holds them."""
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
        ({"phimoe.attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon' is missing"),
        ({"phimoe.expert_count": None}, "expert_count"),
        ({"phimoe.attention.key_length": 32}, "head_count x key_length = embedding_length"),
    ],
)
def test_bad_metadata_is_named(tmp_path, changes, match):
    cfg = CONFIGS["phi35"]
    refused(tmp_path, cfg, make_weights(cfg), write_gguf, match, metadata_changes=changes)


@pytest.mark.parametrize(
    "drop",
    [
        "blk.1.attn_norm.bias",
        "blk.0.ffn_norm.bias",
        "blk.0.attn_output.bias",
        "output.bias",
        "output_norm.bias",
    ],
)
def test_missing_tensor_is_named(tmp_path, drop):
    cfg = CONFIGS["phi35"]
    w = make_weights(cfg)
    del w[drop]
    refused(tmp_path, cfg, w, write_gguf, f"tensor '{drop}' is missing")


def test_runs_on_the_cpu_with_a_gpu(files, monkeypatch):
    """With a (fake) GPU: the whole model stays on the CPU with a warning (no GPU norm biases yet),
    its logits the CPU's."""
    m = with_fake_gpu(files["phi35"][1], TOKENS, monkeypatch, op_offload=False)
    assert len(m.warnings) == 1 and "norms with biases" in m.warnings[0]
    assert {p["device"] for p in m.placement} == {"CPU"}
