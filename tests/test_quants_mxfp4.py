"""MXFP4 quantizer against ggml's own (quantize_row_mxfp4_ref, called through ggml_quantize_chunk
of llama-cpp-python's libggml-base), byte for byte; its dequantization against gguf-py's,
bit for bit, over every E8M0 exponent (0 and 1 give denormal scales, 255 is 2^127)."""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants
from test_quants import bits, golden_input, llama_test_vector, seed_of
from test_quants_iq4 import ggml_quantize, sample  # noqa: F401 (fixture)

ROW_LENGTHS = [32, 64, 96, 160, 256, 992, 4096]
DISTS = ["normal", "heavy", "zeros", "tiny", "block_scales", "const_blocks", "integers", "huge"]

# SHA-256 of ggml's quantization of golden_input() (ggml_quantize_chunk, llama-cpp-python
# 0.3.36), recorded from ggml's bytes so that this check runs without llama-cpp-python.
GGML_SHA256 = "31ef2ffe9d1969d307abaddbe8c4b8e12996d7aec44486b95c173f7ee7e49655"


def levels_and_midpoints(rows: int, n: int, seed: int) -> np.ndarray:
    """Values on the levels of a power-of-two scale and halfway between two: every tie of the
    nearest-level search, and maxima exactly at powers of two."""
    rng = np.random.default_rng(seed)
    lv = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    mids = np.concatenate([lv, (lv[1:] + lv[:-1]) / 2, [5.0, 7.0, 6.5]]).astype(np.float32)
    x = rng.choice(mids, (rows, n)) * rng.choice([-1, 1], (rows, n)).astype(np.float32)
    e = rng.integers(-20, 21, (rows, n // 32, 1))
    return (x.reshape(rows, n // 32, 32) * np.exp2(e).astype(np.float32)).reshape(rows, n)


@pytest.mark.reference
@pytest.mark.parametrize("dist", [*DISTS, "levels"])
def test_quantize_matches_ggml(ggml_quantize, dist: str) -> None:  # noqa: F811
    for n in ROW_LENGTHS:
        rows = max(1, 16384 // n)
        seed = seed_of("MXFP4", dist, n)
        x = levels_and_midpoints(rows, n, seed) if dist == "levels" else sample(dist, rows, n, seed)
        ours = quants.quantize(x, "MXFP4")
        theirs = ggml_quantize(x, "MXFP4")
        assert ours.shape == theirs.shape
        bad = np.flatnonzero((ours != theirs).any(axis=1))
        assert bad.size == 0, f"n={n}: rows {bad[:8].tolist()} differ"


@pytest.mark.reference
def test_golden_input_matches_ggml(ggml_quantize) -> None:  # noqa: F811
    x = golden_input()
    assert np.array_equal(quants.quantize(x, "MXFP4"), ggml_quantize(x, "MXFP4"))


def test_quantize_matches_recorded_ggml_output() -> None:
    ours = quants.quantize(golden_input(), "MXFP4")
    assert hashlib.sha256(ours.tobytes()).hexdigest() == GGML_SHA256


def test_dequantize_matches_gguf_on_every_exponent() -> None:
    """Random codes with every E8M0 byte 0..255 (the denormal scales of 0 and 1 included)."""
    rng = np.random.default_rng(seed_of("mxfp4-deq"))
    raw = rng.integers(0, 256, (256, 64, 17), dtype=np.uint8)
    raw[:, :, 0] = np.arange(256, dtype=np.uint8)[:, None]
    raw = raw.reshape(256, -1)
    ours = quants.dequantize(raw, "MXFP4", n_threads=2)
    with np.errstate(over="ignore"):  # 12 * 2^127 (e = 254, 255) is inf, in ours as in gguf-py's
        ref = gguf.quants.dequantize(raw, GT.MXFP4)
    assert ours.shape == ref.shape == (256, 64 * 32)
    assert np.array_equal(bits(ours), bits(ref))


@pytest.mark.parametrize("dist", ["normal", "heavy", "const_blocks", "tiny"])
def test_dequantize_of_quantize_matches_gguf(dist: str) -> None:
    x = sample(dist, 24, 1024, seed_of("rt", "MXFP4", dist))
    q = quants.quantize(x, "MXFP4")
    ours = quants.dequantize(q, "MXFP4")
    ref = gguf.quants.dequantize(q, GT.MXFP4)
    assert ours.shape == x.shape
    assert np.array_equal(bits(ours), bits(ref))


def test_round_trip_error() -> None:
    """E2M1 has 3 bits of magnitude: on llama.cpp's test vector the total error is about Q3_K's
    (llama.cpp's test-quantize-fns bound for 3-bit types, 0.004)."""
    x = llama_test_vector()
    y = quants.dequantize(quants.quantize(x, "MXFP4"), "MXFP4")
    err = np.sqrt(np.sum((y.astype(np.float64) - x) ** 2)) / x.size
    assert err < 0.004, err


def test_geometry_errors_and_threads() -> None:
    block, size = GGML_QUANT_SIZES[GT.MXFP4]
    info = quants.qtype_info("mxfp4")
    assert (info.block_size, info.type_size) == (block, size) == (32, 17)
    assert info.can_quantize and info.can_dequantize
    assert "MXFP4" in quants.SUPPORTED
    with pytest.raises(ValueError, match=r"not a multiple of the MXFP4 block size \(32\)"):
        quants.quantize(np.ones((2, 48), np.float32), "MXFP4")
    x = np.ones((3, 512), dtype=np.float32)
    x[1, 300] = np.nan
    with pytest.raises(ValueError, match=r"value nan at row 1, column 300"):
        quants.quantize(x, "MXFP4")
    x = sample("heavy", 37, 768, seed_of("threads", "MXFP4"))
    one = quants.quantize(x, "MXFP4", n_threads=1)
    for n in (2, 3, 8):
        assert np.array_equal(quants.quantize(x, "MXFP4", n_threads=n), one)
    with pytest.raises(ValueError, match=r"not a multiple of the MXFP4 block \(17 bytes\)"):
        quants.dequantize(one[:, :20], "MXFP4")
