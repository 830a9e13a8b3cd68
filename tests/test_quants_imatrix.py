"""Weighted (importance-matrix) quantizers against ggml's: quants.quantize(x, t, imatrix=qw) must
give the bytes of ggml_quantize_chunk(t, x, ..., imatrix=qw) of llama-cpp-python's libggml-base
(quantize_q4_0 .. quantize_iq4_xs with quant_weights), for every input and matrix kind, row
length and thread count. And the point of the matrix: the weighted quantizers' error, weighted by
the matrix, is below the plain quantizers' on average (gguf-py dequantizes, numpy float64 sums)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants
from test_quants import seed_of

WEIGHTED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
IGNORED = ["Q8_0", "MXFP4", "F16", "BF16"]  # ggml quantizes these the same with or without a matrix

INPUTS = ["gaussian", "heavy", "zero_const", "tiny", "huge", "single", "mixed_blocks"]
MATRICES = ["uniform", "random", "with_zeros", "one_huge", "all_zero"]


@pytest.fixture(scope="module")
def ggml_quantize():
    """ggml's quantizer: (rows of float32, type name, importance matrix or None) -> its bytes."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str, qw: np.ndarray | None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        block, size = GGML_QUANT_SIZES[GT[qtype]]
        out = np.zeros((rows, n // block * size), dtype=np.uint8)
        w = None if qw is None else np.ascontiguousarray(qw, dtype=np.float32)
        lib.ggml_quantize_init(int(GT[qtype]))
        written = lib.ggml_quantize_chunk(int(GT[qtype]), x.ctypes.data, out.ctypes.data, 0, rows, n,
                                          None if w is None else w.ctypes.data)  # fmt: skip
        assert written == out.size
        return out

    return run


def sample(kind: str, rows: int, n: int, seed: int) -> np.ndarray:
    """rows x n float32 values of input kind ``kind``."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((rows, n), dtype=np.float32)
    if kind == "heavy":  # Student's t (1.5 degrees of freedom) plus a few outliers a row
        x = rng.standard_t(1.5, (rows, n)).astype(np.float32)
        x[np.arange(rows), rng.integers(0, n, rows)] = rng.choice([-1e4, 1e4], rows)
        return x
    if kind == "zero_const":  # all-zero rows, constant rows of either sign
        x = np.zeros((rows, n), dtype=np.float32)
        x[1::4] = 0.375
        x[2::4] = -2.5
        x[3::4] = -0.0
        return x
    if kind == "tiny":
        return (rng.standard_normal((rows, n)) * 1e-30).astype(np.float32)
    if kind == "huge":  # squares overflow: ggml's sums go infinite; the bytes must still agree
        return (rng.standard_normal((rows, n)) * 1e30).astype(np.float32)
    if kind == "single":  # one non-zero value a row
        x = np.zeros((rows, n), dtype=np.float32)
        x[np.arange(rows), rng.integers(0, n, rows)] = rng.standard_normal(rows).astype(np.float32) * 3
        return x
    if kind == "mixed_blocks":  # every 32 values their own kind: scaled, constant, zero, lone value
        x = rng.standard_normal((rows, n // 32, 32)).astype(np.float32)
        x *= np.exp2(rng.integers(-20, 21, (rows, n // 32, 1))).astype(np.float32)
        kind_of = rng.integers(0, 5, (rows, n // 32))
        x[kind_of == 0] = 0.75
        x[kind_of == 1] = -3.0
        x[kind_of == 2] = 0.0
        lone = np.zeros(32, np.float32)
        lone[7] = -1.5
        x[kind_of == 3] = lone
        return x.reshape(rows, n)
    raise ValueError(kind)


def matrix(kind: str, n: int, seed: int) -> np.ndarray:
    """n importance weights of kind ``kind`` (llama-imatrix's are mean squared activations)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return np.ones(n, np.float32)
    if kind == "random":
        return rng.lognormal(0.0, 1.5, n).astype(np.float32)
    if kind == "with_zeros":
        qw = rng.lognormal(0.0, 1.0, n).astype(np.float32)
        qw[rng.random(n) < 0.3] = 0.0
        qw[: min(n, 16)] = 0.0  # a whole sub-block without weight
        return qw
    if kind == "one_huge":
        qw = rng.uniform(0.5, 2.0, n).astype(np.float32)
        qw[rng.integers(0, n)] = 1e6
        return qw
    if kind == "all_zero":
        return np.zeros(n, np.float32)
    raise ValueError(kind)


def lengths(qtype: str) -> list[int]:
    """One block, and several (9 for the 32-value types: more than one 8-block search batch)."""
    block = GGML_QUANT_SIZES[GT[qtype]][0]
    return [block, 9 * 32] if block == 32 else [256, 3 * 256]


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("qtype", WEIGHTED)
def test_weighted_bytes_match_ggml(ggml_quantize, qtype: str, kind: str) -> None:
    for n in lengths(qtype):
        x = sample(kind, 5, n, seed_of(qtype, kind, n))
        for mkind in MATRICES:
            qw = matrix(mkind, n, seed_of(mkind, n))
            ours = quants.quantize(x, qtype, imatrix=qw, n_threads=1)
            ref = ggml_quantize(x, qtype, qw)
            bad = np.flatnonzero((ours != ref).any(axis=1))
            assert bad.size == 0, f"{qtype} {kind} n={n} imatrix={mkind}: rows {bad.tolist()} differ"


@pytest.mark.parametrize("qtype", WEIGHTED)
def test_weighted_bytes_independent_of_threads(ggml_quantize, qtype: str) -> None:
    rows, n = 37, 2048
    x = sample("heavy", rows, n, seed_of("threads", qtype))
    qw = matrix("random", n, seed_of("threads", n))
    ref = ggml_quantize(x, qtype, qw)
    for n_threads in (1, 2, 3, 8):
        ours = quants.quantize(x, qtype, imatrix=qw, n_threads=n_threads)
        assert np.array_equal(ours, ref), f"{qtype} with {n_threads} threads differs from ggml"


@pytest.mark.parametrize("qtype", IGNORED)
def test_matrix_ignored_where_ggml_ignores_it(ggml_quantize, qtype: str) -> None:
    n = 512
    x = sample("gaussian", 4, n, seed_of("ignored", qtype))
    qw = matrix("random", n, seed_of("ignored", n))
    ref = ggml_quantize(x, qtype, qw)
    assert np.array_equal(ref, ggml_quantize(x, qtype, None))  # ggml's own claim, checked
    assert np.array_equal(quants.quantize(x, qtype, imatrix=qw), ref)


def test_takes_imatrix_lists_the_weighted_types() -> None:
    for name in WEIGHTED:
        assert quants.qtype_info(name).takes_imatrix, name
    for name in IGNORED:
        assert not quants.qtype_info(name).takes_imatrix, name


@pytest.mark.parametrize("qtype", WEIGHTED)
def test_weighted_error_below_unweighted(qtype: str) -> None:
    """Sum over columns of qw * (x - dequantized)^2, in float64 from gguf-py's dequantization:
    the weighted quantizer's is lower on average over rows and matrices (a property, not a figure)."""
    rows, n = 24, 1024
    ratios = []
    for trial in range(3):
        x = sample("gaussian", rows, n, seed_of("error", qtype, trial))
        # Importance that varies a lot between columns, as activations' mean squares do.
        qw = np.random.default_rng(seed_of("error-w", trial)).lognormal(0.0, 2.0, n).astype(np.float32)
        errs = []
        for w in (qw, None):
            q = quants.quantize(x, qtype, imatrix=w)
            y = gguf.quants.dequantize(q, GT[qtype]).astype(np.float64)
            errs.append(float(np.sum(qw.astype(np.float64) * (x.astype(np.float64) - y) ** 2)))
        ratios.append(errs[0] / errs[1])
    assert np.mean(ratios) < 1.0, f"{qtype}: weighted / unweighted error ratios {ratios}"
