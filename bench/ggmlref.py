"""ggml's quantizer for the quantizer benchmarks (ggml_quantize_chunk of llama-cpp-python's
libggml-base, through ctypes), and the best-of-n timer they share."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES


def ggml_quantizer() -> Callable[[np.ndarray, str, np.ndarray], np.ndarray]:
    """(rows of float32, type name, importance matrix) -> ggml's bytes, (rows, row bytes) uint8."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
        block, size = GGML_QUANT_SIZES[GT[qtype]]
        out = np.zeros((x.shape[0], x.shape[1] // block * size), dtype=np.uint8)
        # (ggml_quantize_chunk calls ggml_quantize_init itself: its first call per type pays for it)
        lib.ggml_quantize_chunk(int(GT[qtype]), x.ctypes.data, out.ctypes.data, 0, *x.shape, qw.ctypes.data)
        return out

    return run


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """The shortest wall time of ``repeats`` calls, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
