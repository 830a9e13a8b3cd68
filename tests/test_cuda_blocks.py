"""The CUDA kernels' block readers (cpp/cuda/blocks.h), compiled for the host: checked on every
machine, GPU or not, against gguf-py's dequantizers and a float64 mat-vec."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from splitllm import _core
from splitllm.quants import quantize

Q = gguf.GGMLQuantizationType
QUANTIZED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# splitllm does not quantize these: random blocks throughout.
IQUANTS = ["IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "MXFP4",
           "TQ1_0", "TQ2_0"]  # (and the ternary types: random bytes, TQ1_0's past 242 and TQ2_0's code 3 too)


def random_rows(name: str, rows: int, K: int, seed: int) -> np.ndarray:
    """Blocks with every bit random except finite f16 scales (every code pattern occurs)."""
    blck, size = gguf.GGML_QUANT_SIZES[Q[name]]
    rng = np.random.default_rng(seed)
    b = np.frombuffer(rng.bytes(rows * K // blck * size), np.uint8).reshape(-1, size).copy()
    if name == "IQ1_M":  # the f16 scale in the top nibbles of the four scale words
        h = rng.uniform(-0.1, 0.1, size=len(b)).astype(np.float16).view(np.uint16)
        words = b[:, 48:56].copy().view(np.uint16)
        nibbles = (h[:, None] >> np.array([0, 4, 8, 12], np.uint16)) & 0xF
        b[:, 48:56] = ((words & 0x0FFF) | (nibbles << 12).astype(np.uint16)).view(np.uint8)
        return b.reshape(rows, -1)
    if name == "MXFP4":  # E8M0 scale byte: 2^(e - 128), e = 118..130
        b[:, 0] = rng.integers(118, 131, size=len(b), dtype=np.uint8)
        return b.reshape(rows, -1)
    scales = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
              "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "TQ1_0": [52],
              "TQ2_0": [64]}.get(name, [0])
    for off in scales:
        h = rng.uniform(-0.1, 0.1, size=len(b)).astype(np.float16)
        b[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return b.reshape(rows, -1)


@pytest.mark.parametrize("name", QUANTIZED + IQUANTS + ["F32", "F16", "BF16"])
def test_dequantize_matches_gguf(name):
    K = 512 if name in QUANTIZED + IQUANTS else 40
    if name in QUANTIZED + IQUANTS:
        rows = random_rows(name, 9, K, 1)
    else:
        x = np.random.default_rng(2).normal(size=(9, K)).astype(np.float32)
        rows = gguf.quants.quantize(x, Q[name]).view(np.uint8).reshape(9, -1)
    ours = _core.gpu_blocks_dequantize(int(Q[name]), rows)
    ref = gguf.quants.dequantize(rows, Q[name]).reshape(9, K)
    np.testing.assert_array_equal(ours, ref)


def test_mxfp4_every_exponent_matches_gguf():
    """Every E8M0 byte 0..255: the denormal scales of 0 and 1, 2^127 at 255 (times 12: inf)."""
    rows = random_rows("MXFP4", 256, 64, 5)
    rows.reshape(256, 2, 17)[:, :, 0] = np.arange(256, dtype=np.uint8)[:, None]
    ours = _core.gpu_blocks_dequantize(int(Q.MXFP4), rows)
    with np.errstate(over="ignore"):
        ref = gguf.quants.dequantize(rows, Q.MXFP4).reshape(256, 64)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", QUANTIZED + IQUANTS)
def test_matvec_arithmetic(name):
    """int8 activations, dp4a per 16 values, then d * (d_a * sum) + m * s16: within the error
    of 8-bit activations of the exact float64 product (normalized MSE)."""
    K = 768
    x = np.random.default_rng(3).normal(size=(5, K)).astype(np.float32)
    if name in IQUANTS:
        w = random_rows(name, 33, K, 4)
    else:
        w = quantize(np.random.default_rng(4).normal(size=(33, K)).astype(np.float32), name)
        w = np.asarray(w).view(np.uint8).reshape(33, -1)
    ours = _core.gpu_blocks_matvec(int(Q[name]), w, x)
    exact = x.astype(np.float64) @ gguf.quants.dequantize(w, Q[name]).reshape(33, K).astype(np.float64).T
    assert np.mean((ours - exact) ** 2) / np.mean(exact**2) < 1e-4
    # and the same codes as the CPU kernels: the two agree far more closely than either does
    # with the exact product (where the CPU kernels read the type)
    if not _core.cpu_supports_weight_type(int(Q[name])):
        return
    cpu = _core.cpu_matmul(int(Q[name]), w, x)
    assert np.mean((ours - cpu) ** 2) / np.mean(cpu**2) < 1e-9
