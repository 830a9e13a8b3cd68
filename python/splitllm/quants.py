"""Block formats: quantize and dequantize arrays, byte-identical to ggml's layouts.

The shape conventions are gguf-py's (``gguf.quants.quantize`` / ``dequantize``): the last
axis of a quantized array counts bytes, ``n // block_size * type_size`` for ``n`` values.
Unlike gguf-py, which returns F32 and F16 as float arrays, ``quantize`` always returns uint8
bytes (the same bytes); ``dequantize`` takes any array and reads its bytes.

Types (``SUPPORTED``, quantize and dequantize): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS, MXFP4, the ternary TQ1_0 and TQ2_0 and
the grid i-quants IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, named in any case (``"q4_k"``), by
``gguf.GGMLQuantizationType`` or by type id. Of these, ``NEEDS_IMATRIX`` (IQ2_XXS, IQ2_XS,
IQ1_S) quantize only given an importance matrix (``imatrix=``), as ggml's quantizers do;
quantizing them without one raises ``ValueError``. ``DEQUANTIZE_ONLY`` is empty (kept for
callers that read it).

The quantizers give ``ggml_quantize_chunk``'s bytes. Without ``imatrix``: its reference path
(for IQ4_NL and IQ4_XS the scale search of ``quantize_iq4_nl`` / ``quantize_iq4_xs``, which
llama-quantize uses; for MXFP4 ``quantize_row_mxfp4_ref``, a power-of-two scale from the block's
largest magnitude and the nearest E2M1 level; for TQ1_0 / TQ2_0 ``quantize_row_tq*_0_ref``, the
block's largest magnitude as the scale and each value rounded to -1, 0 or 1; IQ2_S, IQ3_XXS,
IQ3_S and IQ1_M search their lattices with ggml's x^2 weights, IQ2_S sigma^2 / 4 + x^2).

Importance matrix (``quantize(..., imatrix=qw)``, one weight per column, what llama-quantize
--imatrix passes): Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS and the
grid i-quants take it (``QTypeInfo.takes_imatrix``) and give the bytes of ggml's weighted
quantizers (each value's error weighed by ``qw * sqrt(sigma2 + x^2)``, ``sigma2`` a mean square
of its row or super-block; Q6_K by ``qw``; the grid i-quants search their lattices,
``quantize_iq2_xxs`` ... ``quantize_iq1_m``); F32, F16, BF16, Q8_0, Q8_1, Q8_K, MXFP4, TQ1_0 and
TQ2_0 ignore it, as ggml does.

The work runs in C++ over ``n_threads`` threads (default: all hardware threads) with the GIL
released, and the bytes do not depend on the thread count.

Non-finite input: F32, F16 and BF16 store it as it is (F16 overflows to infinity, BF16 keeps
NaN quiet), as gguf-py does. The block types raise ``ValueError`` naming the first NaN or
infinity (gguf-py would write meaningless codes there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from splitllm import _core

__all__ = [
    "DEQUANTIZE_ONLY",
    "NEEDS_IMATRIX",
    "QTypeInfo",
    "SUPPORTED",
    "dequantize",
    "qtype_info",
    "quantize",
]

QTypeLike = str | int | IntEnum

SUPPORTED = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS", "MXFP4", "TQ1_0", "TQ2_0",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
)  # fmt: skip
NEEDS_IMATRIX = ("IQ2_XXS", "IQ2_XS", "IQ1_S")
DEQUANTIZE_ONLY: tuple[str, ...] = ()


@dataclass(frozen=True)
class QTypeInfo:
    """Geometry of a ggml type: ``block_size`` values take ``type_size`` bytes."""

    type_id: int
    name: str
    block_size: int
    type_size: int
    is_quantized: bool
    can_quantize: bool
    can_dequantize: bool
    takes_imatrix: bool = False


def qtype_info(qtype: QTypeLike) -> QTypeInfo:
    """The type named by ``qtype`` (a name in any case, a GGMLQuantizationType or an id)."""
    if isinstance(qtype, str):
        type_id = _core.quant_type_from_name(qtype)
        if type_id is None:
            raise ValueError(f"unknown quantization type {qtype!r}; supported: {', '.join(SUPPORTED)}")
    elif isinstance(qtype, int) and not isinstance(qtype, bool):
        type_id = int(qtype)
    else:
        raise TypeError(f"qtype must be a type name or a GGMLQuantizationType, not {type(qtype).__name__}")
    info = _core.quant_type_info(type_id) if 0 <= type_id < 2**32 else None
    if info is None:
        raise ValueError(f"unknown quantization type id {type_id}")
    return QTypeInfo(type_id, *info)


def _supported(qtype: QTypeLike, *, for_quantize: bool, with_imatrix: bool = False) -> QTypeInfo:
    info = qtype_info(qtype)
    if for_quantize and not info.can_quantize and info.takes_imatrix and not with_imatrix:
        raise ValueError(f"quantizing to {info.name} needs an importance matrix (imatrix=)")
    can_quantize = info.can_quantize or (with_imatrix and info.takes_imatrix)
    if not (can_quantize if for_quantize else info.can_dequantize):
        verb = "quantize to" if for_quantize else "dequantize"
        names = SUPPORTED if for_quantize else SUPPORTED + DEQUANTIZE_ONLY
        raise NotImplementedError(f"splitllm cannot {verb} {info.name}; supported: {', '.join(names)}")
    return info


def _threads(n_threads: int | None) -> int:
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive int or None (all threads), got {n_threads!r}")
    return n_threads


def quantize(
    data: np.ndarray, qtype: QTypeLike, *, n_threads: int | None = None, imatrix: np.ndarray | None = None
) -> np.ndarray:
    """Quantizes ``data`` (any real dtype, converted to float32) along its last axis.

    Returns a uint8 array of ``data.shape[:-1] + (n // block_size * type_size,)``. The last
    axis must be a multiple of the type's block size (ValueError otherwise).

    ``imatrix``: ``n`` importance weights, one per column (an importance matrix's entry for
    this tensor, as ``ggml_quantize_chunk`` takes it); types whose ggml quantizer uses one
    (``QTypeInfo.takes_imatrix``) weigh each value's error by it, the others ignore it.
    """
    info = _supported(qtype, for_quantize=True, with_imatrix=imatrix is not None)
    x = np.asarray(data)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"quantize: data must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("quantize: data must have at least one axis")
    n = x.shape[-1]
    if n % info.block_size != 0:
        raise ValueError(
            f"quantize: last axis ({n}) is not a multiple of the {info.name} block size ({info.block_size})"
        )
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(math.prod(x.shape[:-1]), n)
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        if qw.shape != (n,):
            raise ValueError(f"quantize: imatrix must hold {n} weights (one per column), not {qw.shape}")
        if not np.all(np.isfinite(qw)) or np.any(qw < 0):
            raise ValueError("quantize: imatrix weights must be finite and >= 0")
    try:
        out = _core.quantize_rows(rows, info.type_id, _threads(n_threads), qw)
    except _core.Error as e:  # non-finite input to a block type
        raise ValueError(str(e)) from None
    return out.reshape(*x.shape[:-1], n // info.block_size * info.type_size)


def dequantize(data: np.ndarray, qtype: QTypeLike, *, n_threads: int | None = None) -> np.ndarray:
    """Dequantizes ``data`` (its bytes; the last axis counts bytes) to float32.

    Returns an array of ``data.shape[:-1] + (nbytes // type_size * block_size,)``. The last
    axis, in bytes, must be a multiple of the type's block bytes (ValueError otherwise).
    """
    info = _supported(qtype, for_quantize=False)
    x = np.asarray(data)
    if x.ndim == 0:
        raise ValueError("dequantize: data must have at least one axis")
    raw = np.ascontiguousarray(x)
    if raw.ctypes.data % 4 != 0:  # block structs hold f16 / f32 fields
        raw = raw.copy()
    raw = raw.view(np.uint8)
    nbytes = raw.shape[-1]
    if nbytes % info.type_size != 0:
        raise ValueError(
            f"dequantize: last axis ({nbytes} bytes) is not a multiple of the {info.name} block"
            f" ({info.type_size} bytes)"
        )
    rows = raw.reshape(math.prod(raw.shape[:-1]), nbytes)
    out = _core.dequantize_rows(rows, info.type_id, _threads(n_threads))
    return out.reshape(*raw.shape[:-1], nbytes // info.type_size * info.block_size)
