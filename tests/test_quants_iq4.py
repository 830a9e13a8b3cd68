"""IQ4_NL and IQ4_XS quantizers against ggml's own (quantize_iq4_nl / quantize_iq4_xs, called
through ggml_quantize_chunk of llama-cpp-python's libggml-base with no importance matrix: the
path llama-quantize takes), byte for byte; their dequantization against gguf-py's."""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants
from test_quants import bits, golden_input, llama_test_vector, seed_of

IQ4 = ["IQ4_NL", "IQ4_XS"]

# Row lengths (values): IQ4_NL from one 32-value block, IQ4_XS from one 256-value super-block.
ROW_LENGTHS = {
    "IQ4_NL": [32, 64, 96, 160, 256, 992, 4096],
    "IQ4_XS": [256, 512, 768, 1280, 2816, 4096],
}

# SHA-256 of ggml's quantization of golden_input() (ggml_quantize_chunk, llama-cpp-python
# 0.3.36), recorded from ggml's bytes so that this check runs without llama-cpp-python.
GGML_SHA256 = {
    "IQ4_NL": "209df6feaec9c10bc7641abac5d6336997c6734bdb8db416bb9ffca101152871",
    "IQ4_XS": "e1be827d3a6e393b3781203c1073493747c16802e061d200c5ee37f64f740c7d",
}


@pytest.fixture(scope="module")
def ggml_quantize():
    """ggml's quantizer: (rows of float32, type name) -> its bytes, laid out as quants.quantize's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        block, size = GGML_QUANT_SIZES[GT[qtype]]
        out = np.zeros((rows, n // block * size), dtype=np.uint8)
        lib.ggml_quantize_init(int(GT[qtype]))
        written = lib.ggml_quantize_chunk(int(GT[qtype]), x.ctypes.data, out.ctypes.data, 0, rows, n, None)
        assert written == out.size
        return out

    return run


def sample(dist: str, rows: int, n: int, seed: int) -> np.ndarray:
    """rows x n float32 values of distribution ``dist``."""
    rng = np.random.default_rng(seed)
    if dist == "normal":
        return rng.standard_normal((rows, n), dtype=np.float32)
    if dist == "heavy":  # Student's t with 1.5 degrees of freedom: rare huge values
        return rng.standard_t(1.5, (rows, n)).astype(np.float32)
    if dist == "zeros":
        x = np.zeros((rows, n), dtype=np.float32)
        x[rows // 2 :] = -0.0
        return x
    if dist == "tiny":  # one magnitude a row, 1e-38 .. 1e-10: around ggml's 1e-15 cut to zero
        scale = 10.0 ** rng.uniform(-38, -10, (rows, 1))
        return (rng.standard_normal((rows, n)) * scale).astype(np.float32)
    if dist == "block_scales":  # every 32-value block its own power of two, 2^-30 .. 2^30
        e = rng.integers(-30, 31, (rows, n // 32, 1))
        return (rng.standard_normal((rows, n // 32, 32)) * np.exp2(e)).astype(np.float32).reshape(rows, n)
    if dist == "const_blocks":  # some blocks constant (+, -), some zero, some a lone non-zero value
        x = rng.standard_normal((rows, n // 32, 32)).astype(np.float32)
        kind = rng.integers(0, 5, (rows, n // 32))
        x[kind == 0] = 0.75
        x[kind == 1] = -3.0
        x[kind == 2] = 0.0
        lone = kind == 3
        x[lone] = 0.0
        x[lone, 7] = rng.standard_normal(int(lone.sum())).astype(np.float32)
        return x.reshape(rows, n)
    if dist == "integers":  # the levels and small integers: many exact ties between two levels
        return rng.integers(-127, 128, (rows, n)).astype(np.float32)
    if dist == "huge":  # x^2 overflows to infinity (ggml's weights): NaN scales, as ggml's
        return (rng.standard_normal((rows, n)) * 1e25).astype(np.float32)
    raise AssertionError(dist)


DISTS = ["normal", "heavy", "zeros", "tiny", "block_scales", "const_blocks", "integers", "huge"]


@pytest.mark.reference
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("qtype", IQ4)
def test_quantize_matches_ggml(ggml_quantize, qtype: str, dist: str) -> None:
    for n in ROW_LENGTHS[qtype]:
        rows = max(1, 16384 // n)
        x = sample(dist, rows, n, seed_of(qtype, dist, n))
        ours = quants.quantize(x, qtype)
        theirs = ggml_quantize(x, qtype)
        assert ours.shape == theirs.shape
        bad = np.flatnonzero((ours != theirs).any(axis=1))
        assert bad.size == 0, f"n={n}: rows {bad[:8].tolist()} differ"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", IQ4)
def test_golden_input_matches_ggml(ggml_quantize, qtype: str) -> None:
    x = golden_input()
    assert np.array_equal(quants.quantize(x, qtype), ggml_quantize(x, qtype))


@pytest.mark.parametrize("qtype", IQ4)
def test_quantize_matches_recorded_ggml_output(qtype: str) -> None:
    ours = quants.quantize(golden_input(), qtype)
    assert hashlib.sha256(ours.tobytes()).hexdigest() == GGML_SHA256[qtype]


@pytest.mark.parametrize("dist", ["normal", "heavy", "const_blocks", "tiny"])
@pytest.mark.parametrize("qtype", IQ4)
def test_dequantize_of_quantize_matches_gguf(qtype: str, dist: str) -> None:
    x = sample(dist, 24, 1024, seed_of("rt", qtype, dist))
    q = quants.quantize(x, qtype)
    ours = quants.dequantize(q, qtype)
    ref = gguf.quants.dequantize(q, GT[qtype])
    assert ours.shape == x.shape
    assert np.array_equal(bits(ours), bits(ref))


@pytest.mark.parametrize("qtype", IQ4)
def test_round_trip_error_within_llama_cpp_limit(qtype: str) -> None:
    """llama.cpp's test-quantize-fns: total error below MAX_QUANTIZATION_TOTAL_ERROR."""
    x = llama_test_vector()
    y = quants.dequantize(quants.quantize(x, qtype), qtype)
    err = np.sqrt(np.sum((y.astype(np.float64) - x) ** 2)) / x.size
    assert err < 0.002, err


@pytest.mark.parametrize("qtype", IQ4)
def test_threads_give_identical_bytes(qtype: str) -> None:
    x = sample("heavy", 37, 768, seed_of("threads", qtype))
    one = quants.quantize(x, qtype, n_threads=1)
    for n in (2, 3, 8):
        assert np.array_equal(quants.quantize(x, qtype, n_threads=n), one)
    assert np.array_equal(quants.quantize(x, qtype), one)


@pytest.mark.parametrize("qtype", IQ4)
def test_geometry_and_errors(qtype: str) -> None:
    block, size = GGML_QUANT_SIZES[GT[qtype]]
    info = quants.qtype_info(qtype.lower())
    assert (info.block_size, info.type_size) == (block, size)
    assert info.can_quantize and info.can_dequantize
    assert qtype in quants.SUPPORTED
    assert quants.quantize(np.zeros((0, block), np.float32), qtype).shape == (0, size)
    with pytest.raises(ValueError, match=rf"not a multiple of the {qtype} block size \({block}\)"):
        quants.quantize(np.ones((2, block + 16), np.float32), qtype)
    x = np.ones((3, 512), dtype=np.float32)
    x[1, 300] = -np.inf
    with pytest.raises(ValueError, match=r"value -inf at row 1, column 300 is not finite"):
        quants.quantize(x, qtype, n_threads=2)
    x[1, 300] = np.nan
    with pytest.raises(ValueError, match=r"value nan at row 1, column 300"):
        quants.quantize(x, qtype)
