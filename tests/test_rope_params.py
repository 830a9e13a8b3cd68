"""llama-cpp-python's rotary settings (rope_scaling_type, rope_freq_base, rope_freq_scale, yarn_*)
against llama.cpp given the same ones, on tiny models (F32: the engines agree to 1e-3), and
YaRN from the file's own metadata; bad values are refused with the argument's name."""

from __future__ import annotations

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import Model
from tiny_model import F32_LOGITS_TOL, TinyConfig, make_weights, reference_logits, write_gguf

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8] * 4  # 48 positions: the scaling shows


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.float64(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("rope") / "tiny.gguf"
    write_gguf(make_weights(TinyConfig(seed=31, n_ctx_train=64)), path)
    return path


SETTINGS = {
    "yarn x4": dict(rope_scaling_type=2, rope_freq_scale=0.25, yarn_orig_ctx=32),
    "yarn x2, betas": dict(rope_scaling_type=2, rope_freq_scale=0.5, yarn_beta_fast=8.0, yarn_beta_slow=2.0),
    "yarn ext 0.5": dict(rope_scaling_type=2, rope_freq_scale=0.25, yarn_ext_factor=0.5),
    "linear x2": dict(rope_scaling_type=1, rope_freq_scale=0.5),
    "base 5e5": dict(rope_freq_base=500000.0),
    "none": dict(rope_scaling_type=0, rope_freq_scale=0.25),
}


@pytest.mark.reference
@pytest.mark.parametrize("name", list(SETTINGS))
def test_settings_match_llama_cpp(plain, name):
    kw = SETTINGS[name]
    theirs = llama_cpp_logits(plain, TOKENS, **kw)
    with Model(plain, n_ctx=64, n_threads=2, **kw) as m:
        ours = m.logits(TOKENS)
    with Model(plain, n_ctx=64, n_threads=2) as m:
        default = m.logits(TOKENS)
    if name != "none":  # (type none ignores the scale: the default rotation)
        assert rel_err(default, theirs) > 1e-2, name  # the setting changes the logits
    assert rel_err(ours, theirs) < 1e-3, name


@pytest.mark.reference
def test_yarn_from_the_file(tmp_path):
    """A file asking for YaRN (rope.scaling.type yarn, factor, original context) gets it by default,
    as llama.cpp reads it, and matches the float64 reference (Hugging Face's YaRN)."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    cfg = TinyConfig(seed=32, rope_scaling=yarn)
    path = tmp_path / "yarn.gguf"
    held = write_gguf(make_weights(cfg), path)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    ref = reference_logits(cfg, held, TOKENS)
    assert rel_err(ours, ref) < F32_LOGITS_TOL
    assert rel_err(ours, llama_cpp_logits(path, TOKENS)) < 1e-3
    with Model(path, n_ctx=64, n_threads=2, rope_scaling_type=0) as m:  # turned off by the caller
        assert rel_err(m.logits(TOKENS), ref) > 1e-2


@pytest.mark.parametrize(("kw", "match"), [
    (dict(rope_scaling_type=7), "rope_scaling_type must be -1"),
    (dict(rope_freq_base=-1.0), "rope_freq_base must be >= 0"),
    (dict(rope_freq_scale=float("nan")), "rope_freq_scale must be a finite number"),
    (dict(yarn_orig_ctx=-5), "yarn_orig_ctx must be a non-negative integer"),
    (dict(rope_scaling_type=2, rope_freq_scale=1e-45), "rope_freq_scale .* is too small"),
    (dict(yarn_beta_fast="32"), "yarn_beta_fast must be a finite number"),
])
def test_bad_settings(plain, kw, match):
    with pytest.raises(ValueError, match=match):
        Model(plain, n_ctx=64, **kw)


def test_cli_options_reach_the_model(plain, capsys):
    """`splitllm run --rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 32`: the greedy tokens of
    the Model with the same settings (and not those without)."""
    from splitllm.cli import main

    args = [str(plain), "-p", "the other", "-n", "12", "--temp", "0", "-c", "64", "-t", "2"]
    rope = ["--rope-scaling", "yarn", "--rope-scale", "4", "--yarn-orig-ctx", "32"]
    assert main(["run", *args, *rope]) == 0
    with_rope = capsys.readouterr().out
    assert main(["run", *args]) == 0
    without = capsys.readouterr().out
    with Model(plain, n_ctx=64, n_threads=2, **SETTINGS["yarn x4"]) as m:
        text = m("the other", max_tokens=12, temperature=0)["choices"][0]["text"]
    assert text in with_rope and with_rope != without
