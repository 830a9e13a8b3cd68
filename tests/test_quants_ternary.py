"""Ternary TQ1_0 / TQ2_0 block formats against ggml's own quantizer and dequantizer (through
ctypes: ggml_quantize_chunk, which calls quantize_row_tq*_0_ref, and the type traits' to_float)
and against gguf-py's numpy versions: the bytes of quantization equal, dequantization bit for bit."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from ggml_quant import ggml_dequantizer, ggml_quantizer
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants
from test_quants import bits, llama_test_vector, seed_of
from test_quants_iq4 import sample

TYPES = ["TQ1_0", "TQ2_0"]
ROW_LENGTHS = [256, 512, 1280, 4096]


def kind(name: str, rows: int, n: int, seed: int) -> np.ndarray:
    """rows x n float32 inputs of one kind."""
    rng = np.random.default_rng(seed)
    if name == "ternary":  # what a ternary model holds: {-a, 0, a}, a per block (some blocks all zero)
        a = np.exp2(rng.integers(-12, 4, (rows, n // 256, 1))).astype(np.float32)
        a[rng.random(a.shape) < 0.1] = 0.0
        return (rng.integers(-1, 2, (rows, n // 256, 256)).astype(np.float32) * a).reshape(rows, n)
    if name == "halves":  # x / max exactly +-0.5: lroundf's ties, away from zero
        x = rng.choice(np.array([-1, -0.5, 0, 0.5, 1], np.float32), (rows, n))
        x[:, ::256] = 1.0
        return x * np.float32(3.0)
    if name == "large":  # beyond f16's range: the stored scale is infinity, as ggml's
        return (rng.standard_normal((rows, n)) * 1e5).astype(np.float32)
    return sample(name, rows, n, seed)


KINDS = ["ternary", "halves", "normal", "heavy", "zeros", "tiny", "integers", "large", "huge"]


@pytest.fixture(scope="module")
def ggml_quantize():
    return ggml_quantizer()


@pytest.fixture(scope="module")
def ggml_dequantize():
    return ggml_dequantizer()


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("name", KINDS)
def test_matches_ggml(ggml_quantize, ggml_dequantize, qtype: str, name: str) -> None:
    for n in ROW_LENGTHS:
        x = kind(name, max(1, 8192 // n), n, seed_of(qtype, name, n))
        ours = quants.quantize(x, qtype)
        theirs = ggml_quantize(x, qtype)
        assert ours.shape == theirs.shape
        bad = np.flatnonzero((ours != theirs).any(axis=1))
        assert bad.size == 0, f"n={n}: rows {bad[:8].tolist()} differ"
        with np.errstate(invalid="ignore"):
            assert np.array_equal(bits(quants.dequantize(ours, qtype)), bits(ggml_dequantize(ours, qtype)))


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("name", KINDS)
def test_matches_gguf_py(qtype: str, name: str) -> None:
    x = kind(name, 16, 1024, seed_of("gguf", qtype, name))
    ours = quants.quantize(x, qtype)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ref = gguf.quants.quantize(x, GT[qtype])
        assert np.array_equal(ours, ref)
        deq = gguf.quants.dequantize(ours, GT[qtype])
        assert np.array_equal(bits(quants.dequantize(ours, qtype)), bits(deq))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_random_bytes(qtype: str) -> None:
    """Every byte pattern, TQ1_0's bytes past 242 (no quantizer writes them) and TQ2_0's code 3."""
    size = GGML_QUANT_SIZES[GT[qtype]][1]
    rng = np.random.default_rng(seed_of("deq", qtype))
    raw = rng.integers(0, 256, (64, 8 * size), dtype=np.uint8)
    d = rng.standard_normal((64, 8)).astype(np.float16).view(np.uint8).reshape(64, 8, 2)
    raw.reshape(64, 8, size)[:, :, size - 2 :] = d
    ours = quants.dequantize(raw, qtype)
    assert np.array_equal(bits(ours), bits(gguf.quants.dequantize(raw, GT[qtype])))


@pytest.mark.parametrize("qtype", TYPES)
def test_ternary_input_is_exact(qtype: str) -> None:
    """Ternary weights whose scale is an f16 survive the round trip exactly."""
    x = kind("ternary", 8, 2048, seed_of("exact", qtype))
    assert np.array_equal(quants.dequantize(quants.quantize(x, qtype), qtype), x)


@pytest.mark.parametrize("qtype", TYPES)
def test_geometry_errors_and_threads(qtype: str) -> None:
    info = quants.qtype_info(qtype.lower())
    assert (info.block_size, info.type_size) == GGML_QUANT_SIZES[GT[qtype]]
    assert info.can_quantize and info.can_dequantize and not info.takes_imatrix
    assert qtype in quants.SUPPORTED
    with pytest.raises(ValueError, match=rf"not a multiple of the {qtype} block size \(256\)"):
        quants.quantize(np.ones((2, 384), np.float32), qtype)
    x = np.ones((3, 512), dtype=np.float32)
    x[2, 7] = np.inf
    with pytest.raises(ValueError, match=r"value inf at row 2, column 7"):
        quants.quantize(x, qtype)
    x = llama_test_vector(4096).reshape(4, 1024)
    one = quants.quantize(x, qtype, n_threads=1)
    assert np.array_equal(quants.quantize(x, qtype, n_threads=3), one)
    # an importance matrix is ignored, as ggml ignores it
    assert np.array_equal(quants.quantize(x, qtype, imatrix=np.ones(1024, np.float32)), one)
