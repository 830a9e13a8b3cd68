"""Quantizers of the grid i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) against
ggml's own (ggml_quantize_chunk of llama-cpp-python's libggml-base, which builds its grid maps
itself), byte for byte, with importance matrices of several kinds and without one where ggml
allows it; the round trip through our dequantizer against gguf-py's and against float64."""

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
from test_quants import bits, golden_input, seed_of

GRID = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
# ggml_quantize_chunk asserts a matrix for these (ggml_quantize_requires_imatrix) ...
NEEDS_MATRIX = ["IQ2_XXS", "IQ2_XS", "IQ1_S"]
# ... and quantizes these without one (x^2 weights; IQ2_S sigma^2 / 4 + x^2).
NO_MATRIX = ["IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_M"]

# SHA-256 of ggml's quantization of golden_input(16, 1024) with golden_imatrix() (llama-cpp-python
# 0.3.36), recorded from ggml's bytes so that this check runs without llama-cpp-python.
GGML_SHA256 = {
    "IQ2_XXS": "f01e108f7b14d769066679015e278939ec6edd193aba054661020abab3a0dcbb",
    "IQ2_XS": "fd17c9be5a2328fd5201dc77d1075dc7b51846f38bb31ecceb96fe4c067f0b42",
    "IQ2_S": "887b384315854be1fb83d844bbe13b64afd6c7ef637cb3ba54b7d5410060e8e3",
    "IQ3_XXS": "1e1d8d89d015d5c764ff9322980333eb4e9a0ed471172d5c80b458489b25bf68",
    "IQ3_S": "4e2d1b0b4fdf0916951388439b7d5e5b196e2a73c347f3bed8e552e5a39b313a",
    "IQ1_S": "5950eb244db3c42a5a2525454f06ac9ed8cccd489879594c9cab1baf24049734",
    "IQ1_M": "8cb38e060e97f536d549f75e16ac2d2deb6874c5053f248d78ec52a797d894b7",
}


@pytest.fixture(scope="module")
def ggml_quantize():
    """ggml's quantizer: (rows of float32, type name, imatrix or None) -> its bytes."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str, imatrix: np.ndarray | None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        block, size = GGML_QUANT_SIZES[GT[qtype]]
        out = np.zeros((rows, n // block * size), dtype=np.uint8)
        qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        # ggml_quantize_chunk calls ggml_quantize_init (grid maps, neighbour lists) itself.
        written = lib.ggml_quantize_chunk(
            int(GT[qtype]), x.ctypes.data, out.ctypes.data, 0, rows, n, None if qw is None else qw.ctypes.data
        )
        assert written == out.size
        return out

    return run


def sample(kind: str, rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """rows x n float32 values of kind ``kind``."""
    if kind == "gaussian":
        return rng.standard_normal((rows, n), dtype=np.float32)
    if kind == "heavy":  # Student's t, 1.5 degrees of freedom: rare values far out
        return rng.standard_t(1.5, (rows, n)).astype(np.float32)
    if kind == "zero_rows":  # +0 and -0 rows
        x = np.zeros((rows, n), dtype=np.float32)
        x[1::2] = -0.0
        return x
    if kind == "constant":  # every value of a row equal: all ties in the IQ1 sorts
        return np.repeat(rng.choice([0.75, -3.0, 2.0, -1e-3], rows)[:, None], n, axis=1).astype(np.float32)
    if kind == "one_nonzero":  # one value a row; the other groups all zero
        x = np.zeros((rows, n), dtype=np.float32)
        x[np.arange(rows), rng.integers(0, n, rows)] = rng.choice([1.5, -2.0, 1e-5], rows)
        return x
    if kind == "tiny":  # ~1e-30: squares underflow to zero (zero weights)
        return (rng.standard_normal((rows, n)) * 1e-30).astype(np.float32)
    if kind == "large":  # ~1e6 (ggml aborts where the weighted errors overflow, from ~1e12)
        return (rng.standard_normal((rows, n)) * 1e6).astype(np.float32)
    if kind == "mixed":  # every 16 values their own power of two; some groups zero, some sparse
        e = rng.integers(-24, 25, (rows, n // 16, 1))
        x = rng.standard_normal((rows, n // 16, 16)) * np.exp2(e)
        x[rng.random((rows, n // 16)) < 0.15] = 0.0
        x[rng.random((rows, n // 16, 16)) < 0.2] = 0.0
        return x.astype(np.float32).reshape(rows, n)
    if kind == "integers":  # small integers: exact ties between levels
        return rng.integers(-4, 5, (rows, n)).astype(np.float32)
    raise AssertionError(kind)


def imatrix(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n importance weights of kind ``kind``."""
    if kind == "random":  # mean squared activations: positive, spread over decades
        return rng.lognormal(0.0, 1.5, n).astype(np.float32)
    if kind == "with_zeros":
        w = rng.uniform(0.1, 4.0, n).astype(np.float32)
        w[rng.random(n) < 0.4] = 0.0
        return w
    if kind == "uniform":
        return np.ones(n, dtype=np.float32)
    raise AssertionError(kind)


KINDS = ["gaussian", "heavy", "zero_rows", "constant", "one_nonzero", "tiny", "large", "mixed", "integers"]
MATRICES = ["random", "with_zeros", "uniform"]


def golden_imatrix(n: int = 1024) -> np.ndarray:
    return (1.0 + (np.arange(n) % 7) * 0.25).astype(np.float32)


def assert_same(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape
    bad = np.flatnonzero((ours != theirs).any(axis=1))
    assert bad.size == 0, f"{what}: rows {bad[:8].tolist()} differ"


@pytest.mark.reference
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", GRID)
def test_quantize_with_imatrix_matches_ggml(ggml_quantize, qtype: str, kind: str) -> None:
    rng = np.random.default_rng(seed_of(qtype, kind))
    for i, mkind in enumerate(MATRICES):
        n = 256 if i == 0 else 768 if i == 1 else 1024  # 1, 3 and 4 super-blocks a row
        x = sample(kind, 3, n, rng)
        w = imatrix(mkind, n, rng)
        ours = quants.quantize(x, qtype, imatrix=w, n_threads=2)
        assert_same(ours, ggml_quantize(x, qtype, w), f"{mkind} imatrix, n={n}")


@pytest.mark.reference
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("zero_rows", "large")])
@pytest.mark.parametrize("qtype", NO_MATRIX)
def test_quantize_without_imatrix_matches_ggml(ggml_quantize, qtype: str, kind: str) -> None:
    rng = np.random.default_rng(seed_of("none", qtype, kind))
    for n in (256, 1024):
        x = sample(kind, 3, n, rng)
        assert_same(quants.quantize(x, qtype, n_threads=2), ggml_quantize(x, qtype, None), f"n={n}")


@pytest.mark.reference
@pytest.mark.parametrize("qtype", GRID)
def test_golden_input_matches_ggml(ggml_quantize, qtype: str) -> None:
    x, w = golden_input(16, 1024), golden_imatrix()
    ours = quants.quantize(x, qtype, imatrix=w)
    assert_same(ours, ggml_quantize(x, qtype, w), "golden input")
    assert hashlib.sha256(ours.tobytes()).hexdigest() == GGML_SHA256[qtype]


@pytest.mark.parametrize("qtype", GRID)
def test_quantize_matches_recorded_ggml_output(qtype: str) -> None:
    ours = quants.quantize(golden_input(16, 1024), qtype, imatrix=golden_imatrix())
    assert hashlib.sha256(ours.tobytes()).hexdigest() == GGML_SHA256[qtype]


@pytest.mark.parametrize("qtype", GRID)
def test_threads_give_identical_bytes(qtype: str) -> None:
    """Runs of blocks split over threads at any super-block, the weights following the column
    (test_quantize_with_imatrix_matches_ggml compares 2 threads with ggml)."""
    rng = np.random.default_rng(seed_of("threads", qtype))
    x = sample("heavy", 7, 1280, rng)
    w = imatrix("random", 1280, rng)
    one = quants.quantize(x, qtype, imatrix=w, n_threads=1)
    for n in (2, 3, 8):
        assert np.array_equal(quants.quantize(x, qtype, imatrix=w, n_threads=n), one)


@pytest.mark.parametrize("qtype", NEEDS_MATRIX)
def test_types_that_need_an_imatrix_say_so(qtype: str) -> None:
    info = quants.qtype_info(qtype)
    assert qtype in quants.NEEDS_IMATRIX and info.takes_imatrix and not info.can_quantize
    with pytest.raises(ValueError, match=f"{qtype} needs an importance matrix"):
        quants.quantize(np.ones((2, 256), np.float32), qtype.lower())
    with pytest.raises(ValueError, match="imatrix must hold 256 weights"):
        quants.quantize(np.ones((2, 256), np.float32), qtype, imatrix=np.ones(255, np.float32))


@pytest.mark.parametrize("qtype", GRID)
def test_geometry_and_errors(qtype: str) -> None:
    block, size = GGML_QUANT_SIZES[GT[qtype]]
    w = np.ones(512, np.float32)
    assert quants.quantize(np.zeros((0, 256), np.float32), qtype, imatrix=w[:256]).shape == (0, size)
    with pytest.raises(ValueError, match=rf"not a multiple of the {qtype} block size \({block}\)"):
        quants.quantize(np.ones((2, 384), np.float32), qtype, imatrix=np.ones(384, np.float32))
    x = np.ones((3, 512), dtype=np.float32)
    x[1, 300] = np.nan
    with pytest.raises(ValueError, match=r"value nan at row 1, column 300 is not finite"):
        quants.quantize(x, qtype, imatrix=w, n_threads=2)


# Relative RMSE of the round trip on test_round_trip's data: bounds ~20-30 % above what ggml's
# own bytes give there (IQ2_XXS 0.386, IQ2_XS 0.343, IQ2_S 0.274, IQ3_XXS 0.213, IQ3_S 0.152,
# IQ1_S 0.544, IQ1_M 0.514), which a search that misses the grid or the scale does not meet.
RMSE_BOUND = {"IQ2_XXS": 0.5, "IQ2_XS": 0.45, "IQ2_S": 0.35, "IQ3_XXS": 0.27, "IQ3_S": 0.2}
RMSE_BOUND |= {"IQ1_S": 0.65, "IQ1_M": 0.62}


@pytest.mark.parametrize("qtype", GRID)
def test_round_trip(qtype: str) -> None:
    """Our dequantizer of our bytes: gguf-py's floats exactly, and an error (float64) that a
    search ignoring the grid or the weights would not reach."""
    rng = np.random.default_rng(seed_of("rt", qtype))
    x = sample("gaussian", 8, 1024, rng)
    w = imatrix("random", 1024, rng)
    q = quants.quantize(x, qtype, imatrix=w)
    y = quants.dequantize(q, qtype)
    assert np.array_equal(bits(y), bits(gguf.quants.dequantize(q, GT[qtype])))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    rel = np.sqrt(np.sum((y64 - x64) ** 2) / np.sum(x64**2))
    assert rel < RMSE_BOUND[qtype], rel
    # The matrix steers the error: weighted by it, ours beats the quantization without it
    # (uniform weights, which these quantizers treat as no information).
    q_flat = quants.quantize(x, qtype, imatrix=np.ones(1024, np.float32))
    y_flat = quants.dequantize(q_flat, qtype).astype(np.float64)
    assert np.sum(w * (y64 - x64) ** 2) < np.sum(w * (y_flat - x64) ** 2)


@pytest.mark.parametrize("qtype", GRID)
def test_overflowing_input_returns(qtype: str) -> None:
    """Where the weighted errors overflow float (|x| ~1e12 and up) ggml's neighbour searches find
    no entry and abort the process (GGML_ASSERT); ours keep the first neighbour and return. The
    f16 super-block scale cannot hold such values anyway."""
    rng = np.random.default_rng(seed_of("overflow", qtype))
    for scale in (1e12, 1e20, 1e38):
        x = (rng.standard_normal((2, 512)) * scale).clip(-3e38, 3e38).astype(np.float32)
        q = quants.quantize(x, qtype, imatrix=imatrix("random", 512, rng), n_threads=2)
        assert q.shape == (2, 2 * GGML_QUANT_SIZES[GT[qtype]][1])
