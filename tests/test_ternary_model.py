"""Tiny random llama models whose 2-D weights are TQ1_0 / TQ2_0 (gguf-py's quantizer: ggml's bytes,
tests/test_quants_ternary.py): our logits against the float64 reference on the weights the file
holds, and against llama.cpp's on the same file."""

from __future__ import annotations

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import Model
from tiny_model import TinyConfig, make_weights, reference_logits, write_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def ternary_model(tmp_path, wtype: str):
    cfg = TinyConfig(arch="llama", n_embd=256, n_head=4, n_head_kv=2, n_ff=512, seed=13)
    path = tmp_path / f"{wtype}.gguf"
    held = write_gguf(make_weights(cfg), path, weight_type=wtype)
    return cfg, path, held


@pytest.mark.parametrize("wtype", ["TQ1_0", "TQ2_0"])
def test_ternary_model_matches_reference(tmp_path, wtype):
    cfg, path, held = ternary_model(tmp_path, wtype)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)  # one pass: the packed prefill kernels
        m.reset()
        step = np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(6)])  # token by token: decode
    # int8 activations per 32 values: about 1% from the float64 reference
    assert rel_err(ours, ref).max() < 3e-2
    assert rel_err(step, ref[:6]).max() < 3e-2


@pytest.mark.reference
@pytest.mark.parametrize("wtype", ["TQ1_0", "TQ2_0"])
def test_ternary_model_matches_llama_cpp(tmp_path, wtype):
    cfg, path, held = ternary_model(tmp_path, wtype)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    # as the i-quant models (test_iquant_model.py): our int8 activations and llama.cpp's Q8_K ones
    assert rel_err(ours, theirs).max() < 5e-2
    assert rel_err(theirs, reference_logits(cfg, held, TOKENS)).max() < 3e-2
