"""ggml's quantizer as a test reference: ggml_quantize_chunk of llama-cpp-python's libggml-base,
called through ctypes."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest


def ggml_quantizer() -> Callable[..., np.ndarray]:
    """(rows of float32, type name, importance matrix or None) -> ggml's bytes, (rows, row bytes)
    uint8 as splitllm.quants.quantize lays them out. Skips the test without llama-cpp-python."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
        t = gguf.GGMLQuantizationType[qtype]
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        block, size = gguf.GGML_QUANT_SIZES[t]
        out = np.zeros((rows, n // block * size), dtype=np.uint8)
        qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        # (ggml_quantize_chunk calls ggml_quantize_init itself: grid maps, neighbour lists)
        written = lib.ggml_quantize_chunk(
            int(t), x.ctypes.data, out.ctypes.data, 0, rows, n, None if qw is None else qw.ctypes.data
        )
        assert written == out.size
        return out

    return run


class _TypeTraits(ctypes.Structure):
    """ggml.h's struct ggml_type_traits (the fields up to to_float)."""

    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p)]  # fmt: skip


def ggml_dequantizer() -> Callable[[np.ndarray, str], np.ndarray]:
    """(rows of packed blocks as uint8, type name) -> ggml's floats (its type traits' to_float,
    dequantize_row_<type>), (rows, values) float32. Skips the test without llama-cpp-python."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

    def run(q: np.ndarray, qtype: str) -> np.ndarray:
        t = gguf.GGMLQuantizationType[qtype]
        q = np.ascontiguousarray(q, dtype=np.uint8)
        block, size = gguf.GGML_QUANT_SIZES[t]
        rows, nbytes = q.shape
        out = np.zeros((rows, nbytes // size * block), dtype=np.float32)
        to_float = to_float_t(lib.ggml_get_type_traits(int(t)).contents.to_float)
        to_float(q.ctypes.data, out.ctypes.data, out.size)
        return out

    return run
