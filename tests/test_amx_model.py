"""AMX prefill on whole models: tiny random llamas whose 2-D weights are Q8_0, Q4_0, Q4_K or Q6_K,
an 80-token prompt (the prefill kernels). Logits with AMX on equal those with it off (the AMX
kernels compute the AVX-512 kernels' int32 block sums, then the same float steps), and both are
within the engine's budget of the float64 reference on the weights the file holds and close to
llama.cpp's logits (ggml's AVX-512 kernels: conftest keeps llama.cpp off its AMX path)."""

from __future__ import annotations

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import Model, _core
from splitllm.quants import quantize
from tiny_model import TinyConfig, make_weights, reference_logits, write_gguf

# 80 tokens: AMX runs from 16 tokens on, from 64 for Q6_K (16-value groups).
TOKENS = [int(t) for t in np.random.default_rng(3).integers(1, 300, size=80)]
WTYPES = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"]

pytestmark = pytest.mark.skipif(_core.cpu_usable_isa("amx") != "amx",
                                reason="this CPU (or OS) has no AMX-INT8")


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def logits_with(isa: str, path) -> np.ndarray:
    before = _core.cpu_isa()
    try:
        assert _core.cpu_set_isa(isa) == isa
        with Model(path, n_ctx=128, n_threads=2) as m:
            return m.logits(TOKENS)
    finally:
        _core.cpu_set_isa(before)


@pytest.fixture(scope="module", params=WTYPES)
def model(request, tmp_path_factory):
    """(weight type, path, float64 reference logits, logits with AMX off, with AMX on)."""
    cfg = TinyConfig(arch="llama", n_embd=256, n_head=4, n_head_kv=2, n_ff=512, seed=21)
    path = tmp_path_factory.mktemp("amx") / f"{request.param}.gguf"
    held = write_gguf(make_weights(cfg), path, weight_type=request.param, quantize=quantize)
    ref = reference_logits(cfg, held, TOKENS)
    return request.param, path, ref, logits_with("avx512", path), logits_with("amx", path)


def test_amx_logits_equal_avx512_and_match_reference(model):
    wtype, _, ref, off, on = model
    np.testing.assert_array_equal(on, off, err_msg=wtype)
    # int8 activations, f16 KV cache: the budget of test_model_reference's quantized models.
    assert rel_err(on, ref).max() < 2e-2, wtype


@pytest.mark.reference
def test_amx_logits_match_llama_cpp(model):
    wtype, path, ref, _, on = model
    theirs = llama_cpp_logits(path, TOKENS, n_ctx=128)
    assert rel_err(theirs, ref).max() < 3e-2, wtype  # llama.cpp's own Q8 activations
    assert rel_err(on, theirs).max() < 3e-2, wtype
