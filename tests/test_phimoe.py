"""phimoe (Phi-3.5-MoE GGUFs) on tiny random models: norms with biases (run as llama.cpp runs them:
RMS norms plus the bias), softmax top-2 routing renormalized, q/k/v, attention-output and output
biases, the NEOX rotation with LongRoPE's short or long factors and attention factor; against the
float64 reference (tests/tiny_phimoe.py) and llama.cpp."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from lcpp import check_routed_q8, llama_cpp_greedy, llama_cpp_logits
from splitllm import GGUFError, Model
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


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.float64(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each config's F32 file and its weights (as held)."""
    root = tmp_path_factory.mktemp("phimoe")
    out = {}
    for name, cfg in CONFIGS.items():
        path = root / f"{name}.gguf"
        out[name] = (cfg, path, write_gguf(cfg, make_weights(cfg), path))
    return out


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
    theirs = llama_cpp_logits(path, TOKENS)
    assert rel_err(theirs, reference_logits(cfg, held, TOKENS)) < 1e-3
    with Model(path, n_ctx=64, n_batch=8, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), theirs) < 1e-3


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_q8_0_matches_llama_cpp(tmp_path, name):
    """Q8_0 weights (the router, vectors and biases F32): per token, llama.cpp's logits on the same
    file and the reference's on the weights as the file holds them."""
    cfg = CONFIGS[name]
    path = tmp_path / "q8.gguf"
    held = write_gguf(cfg, make_weights(cfg), path, weight_type="Q8_0")
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    check_routed_q8(ours, reference_logits(cfg, held, TOKENS), theirs)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_match_llama_cpp(files, name):
    """12 greedy tokens after a prompt of 6, F32 weights: llama.cpp's."""
    _, path, _ = files[name]
    want = llama_cpp_greedy(path, TOKENS[:6], 12)
    with Model(path, n_ctx=64, n_threads=2) as m:
        got = list(itertools.islice(m.generate(TOKENS[:6], temp=0.0), 12))
    assert got == want


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
    path = tmp_path / "m.gguf"
    write_gguf(cfg, make_weights(cfg), path, metadata_changes=changes)
    with pytest.raises(GGUFError, match=f"m.gguf: .*{match}"):
        Model(path, n_ctx=32)


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
    path = tmp_path / "m.gguf"
    write_gguf(cfg, w, path)
    with pytest.raises(GGUFError, match=f"tensor '{drop}' is missing"):
        Model(path, n_ctx=32)


def test_runs_on_the_cpu_with_a_gpu(files, monkeypatch):
    """With a (fake) GPU: the whole model stays on the CPU with a warning (no GPU norm biases yet),
    its logits the CPU's."""
    from splitllm import _core

    _, path, _ = files["phi35"]
    toks = np.asarray(TOKENS, np.int32)
    args = (toks, np.arange(len(toks), dtype=np.int32), np.zeros(len(toks), np.int32))
    want = _core.Model(str(path), n_ctx=64, n_threads=1, op_offload=False).decode(*args)
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    m = _core.Model(str(path), n_ctx=64, n_threads=1, n_gpu_layers=-1, op_offload=False)
    assert len(m.warnings) == 1 and "norms with biases" in m.warnings[0]
    assert {p["device"] for p in m.placement} == {"CPU"}
    np.testing.assert_allclose(m.decode(*args), want, rtol=0, atol=1e-4 * np.abs(want).max())
