"""falcon-h1 (TII Falcon-H1) on tiny random models: attention and a Mamba-2 mixer side by side in
every layer, its multipliers folded into the weights, against the float64 re-implementation of
transformers' FalconH1ForCausalLM (tests/tiny_falcon_h1.py) and against llama.cpp on the same files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from recurrent_checks import against_llama_cpp, chunked_prefill_then_decode, rel_err
from routed_checks import split_with_host_parts
from splitllm import Error, Model
from tiny_falcon_h1 import FalconConfig, falcon_reference_logits, write_falcon_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
FALCON = FalconConfig()


@pytest.fixture(scope="module")
def falcon(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("falcon_h1") / "tiny-falcon-h1.gguf"
    return str(path), write_falcon_gguf(FALCON, path)


@pytest.mark.parametrize("rms_norm", [True, False])
def test_f32_logits_match_float64_reference_and_decode(tmp_path, rms_norm):
    """One pass, passes of 5 tokens, then token by token: the reference's logits (measured 6.1e-6
    with the Mamba-2 gated norm, 9.7e-6 without: mamba_rms_norm false; llama.cpp 3.2e-4, 3.0e-4)."""
    fc = dataclasses.replace(FALCON, rms_norm=rms_norm)
    path = str(tmp_path / "f.gguf")
    held = write_falcon_gguf(fc, tmp_path / "f.gguf")
    ref = falcon_reference_logits(fc, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert m.config["conv_layers"] == [0, 1, 2]
        assert rel_err(m.logits(TOKENS), ref).max() < 3e-5
    chunked_prefill_then_decode(path, lambda t: falcon_reference_logits(fc, held, t), TOKENS, 5, 3e-5)


@pytest.mark.parametrize("wtype, apart", [("F32", 1e-3), ("Q8_0", 5e-2)])
def test_matches_llama_cpp(tmp_path, wtype, apart):
    """llama.cpp on the same file (f32: 3.2e-4 apart, ours 6.1e-6 from float64; q8_0: 3.7e-2 apart,
    ours 4.4e-2 from float64, llama.cpp 4.6e-2): ours no farther from float64 than 1.5x llama.cpp,
    and at f32 the same greedy continuation."""
    path = tmp_path / f"falcon-h1-{wtype}.gguf"
    held = write_falcon_gguf(FALCON, path, weight_type=wtype)
    ref = lambda t: falcon_reference_logits(FALCON, held, t)  # noqa: E731
    against_llama_cpp(str(path), ref, TOKENS, apart=apart, greedy=wtype == "F32")


def test_every_layer_keeps_a_kv_cache_and_a_state(falcon):
    """K/V in every layer's plan beside its Mamba-2 state; importance matrices refused."""
    path, _ = falcon
    c = FALCON.ssm
    with Model(path, n_ctx=64, n_threads=2) as m:
        kv = {p["name"]: p["kv_bytes"] for p in m._engine().placement}
    assert [kv[f"blk.{i}"] for i in range(c.n_layer)] == [64 * c.n_head_kv * c.head_dim * 2 * 2] * c.n_layer
    with Model(path, n_ctx=64, n_threads=2) as m, pytest.raises(Error, match="falcon-h1"):
        m.imatrix_start()


@pytest.mark.parametrize("ngl", [2, -1])
def test_gpu_split_keeps_the_mixers_on_the_host(falcon, monkeypatch, ngl):
    """With a (fake) GPU: each layer's attention and Mamba-2 (side by side) stay on the host, the
    feed-forwards go to the GPU; the placement splits the file's tensors so, and the logits are the
    CPU's exactly (routed_checks.split_with_host_parts)."""
    split_with_host_parts(falcon[0], monkeypatch, ngl=ngl)

