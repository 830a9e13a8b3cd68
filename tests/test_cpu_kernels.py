"""CPU kernels against numpy float64 references built on gguf-py's dequantizers, and every SIMD
instruction set against the scalar path."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from splitllm import _core

FLOAT_TYPES = [T.F32, T.F16, T.BF16]
LEGACY_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
I_TYPES = [T.IQ4_NL, T.IQ4_XS, T.MXFP4]
GRID_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M]
TERNARY_TYPES = [T.TQ1_0, T.TQ2_0]
QUANT_TYPES = LEGACY_TYPES + K_TYPES + I_TYPES + GRID_TYPES + TERNARY_TYPES
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES
KV_TYPES = [T.F16, T.Q8_0, T.Q4_0]

# SIMD sets this CPU runs (a set the CPU lacks would silently fall back: not worth testing twice).
SIMD_ISAS = [isa for isa in ("avx2", "avx512", "amx") if _core.cpu_usable_isa(isa) == isa]
# AMX (the AVX-512 table with AMX-INT8 tiles for the quantized types' prefill): Sapphire Rapids on.
HAS_AMX = "amx" in SIMD_ISAS

# With AVX512_BF16, the AVX-512 kernels take BF16 weights times activations rounded to bf16 (any
# token count), as llama.cpp does; from this many tokens on with vdpbf16ps.
BF16_DOT = "AVX512_BF16" in _core.cpu_features().split()

# Byte offsets of the f16 block scales (d, and dmin where there is one) of the types gguf-py
# cannot quantize: the tests fill their blocks with random bits and finite small scales.
RANDOM_SCALE_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
                       T.IQ4_NL: (0,), T.IQ4_XS: (0,), T.TQ1_0: (52,), T.TQ2_0: (64,)}
# (TQ1_0's random bytes include 243..255, which no quantizer writes; TQ2_0's the code 3.)
# Byte offsets of the E8M0 block scales (2^(e - 128) for MXFP4's doubled levels) of the types with
# one: random bits elsewhere, exponents 118..130 (scales 2^-10 .. 2^2).
E8M0_SCALE_FIELDS = {T.MXFP4: 0}


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.float64(a) - ref) / max(np.linalg.norm(ref), 1e-30))


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def bf16_acts(qtype: T, isa: str) -> bool:
    """Whether the kernel rounds the activations to bf16 (above)."""
    return qtype == T.BF16 and isa in ("avx512", "amx") and BF16_DOT


def random_grid_rows(qtype: T, n_rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Grid i-quant rows (gguf-py cannot quantize them): every bit random (so every grid index,
    sign, delta and scale occurs) but a finite f16 super-block scale of either sign (IQ1_M spreads
    its scale over the top nibbles of its four scale words)."""
    blck, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_rows * k // blck, size), dtype=np.uint8)
    d = rng.choice([-1.0, 1.0], size=len(b)) * rng.uniform(0.002, 0.02, size=len(b))
    d = d.astype(np.float16).view(np.uint16)
    if qtype == T.IQ1_M:
        words = b[:, 48:56].copy().view(np.uint16)
        nibbles = (d[:, None] >> np.array([0, 4, 8, 12], np.uint16)) & 0xF
        b[:, 48:56] = ((words & 0x0FFF) | (nibbles << 12).astype(np.uint16)).view(np.uint8)
    else:
        b[:, :2] = d.view(np.uint8).reshape(-1, 2)
    return b.reshape(n_rows, -1)


def make_weights(qtype: T, n_rows: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw weight rows (uint8, n_rows x row bytes) and their float64 values per gguf-py."""
    w = rng.standard_normal((n_rows, k)).astype(np.float32)
    if qtype == T.F32:
        raw = w.view(np.uint8)
    elif qtype == T.F16:
        raw = w.astype(np.float16).view(np.uint8)
    elif qtype in RANDOM_SCALE_FIELDS:
        # gguf-py cannot quantize k-quants and i-quants: random codes and scales, finite small f16 maxima.
        blck, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(n_rows, k // blck, size), dtype=np.uint8)
        for off in RANDOM_SCALE_FIELDS[qtype]:  # (either sign: blocks hold negative scales too)
            sign = rng.choice([-1, 1], size=(n_rows, k // blck))
            d = (sign * rng.uniform(0.002, 0.02, size=(n_rows, k // blck))).astype(np.float16)
            raw[:, :, off : off + 2] = d.view(np.uint8).reshape(n_rows, k // blck, 2)
        raw = raw.reshape(n_rows, -1)
    elif qtype in E8M0_SCALE_FIELDS:
        blck, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(n_rows, k // blck, size), dtype=np.uint8)
        raw[:, :, E8M0_SCALE_FIELDS[qtype]] = rng.integers(118, 131, size=(n_rows, k // blck), dtype=np.uint8)
        raw = raw.reshape(n_rows, -1)
    elif qtype in GRID_TYPES:
        raw = random_grid_rows(qtype, n_rows, k, rng)
    else:
        raw = quantize(w, qtype)
    raw = np.ascontiguousarray(raw).reshape(n_rows, -1)
    if qtype == T.F32:
        values = w
    elif qtype == T.F16:
        values = w.astype(np.float16)
    else:
        values = dequantize(raw, qtype)
    return raw, np.float64(values)


def act_codes(acts: np.ndarray, k: int) -> np.ndarray:
    """int8 codes of Q8 activation rows, (n, k // 32, 32), from their stored order: per 4 blocks
    of 32, the 4 blocks' values 0..15, then their values 16..31; k is padded to 128."""
    kp = (k + 127) // 128 * 128
    qs = acts[:, :kp].view(np.int8).astype(np.int64).reshape(len(acts), kp // 128, 2, 4, 16)
    return qs.transpose(0, 1, 3, 2, 4).reshape(len(acts), kp // 32, 32)[:, : k // 32]


def act_floats(acts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, block sum and half-block sum arrays of Q8 activation rows."""
    kp = (k + 127) // 128 * 128
    f = acts[:, kp : kp + kp // 32 * 16].copy().view(np.float32)
    return f[:, : k // 32], f[:, kp // 32 : kp // 32 + k // 32], f[:, kp // 16 : kp // 16 + k // 16]


def decode_acts(acts: np.ndarray, k: int) -> np.ndarray:
    """Float values of Q8 activation rows."""
    d = act_floats(acts, k)[0]
    return (act_codes(acts, k) * np.float64(d)[:, :, None]).reshape(len(acts), k)


def test_features() -> None:
    assert _core.cpu_detect_isa() in ("scalar", "avx2", "avx512", "amx")
    assert _core.cpu_isa() in ("scalar", "avx2", "avx512", "amx")
    assert HAS_AMX == ("AMX_INT8" in _core.cpu_features().split())
    assert _core.cpu_usable_isa("scalar") == "scalar"
    assert isinstance(_core.cpu_features(), str) and _core.cpu_features()
    with pytest.raises(ValueError, match="unknown isa"):
        _core.cpu_usable_isa("sse9")
    for t in ALL_TYPES:
        assert _core.cpu_supports_weight_type(int(t))
    assert not _core.cpu_supports_weight_type(int(T.Q8_K))


def test_act_formats() -> None:
    for t in FLOAT_TYPES:
        assert _core.cpu_act_type(int(t)) == int(T.F32)
    for t in QUANT_TYPES:
        assert _core.cpu_act_type(int(t)) == int(T.Q8_0)
        assert _core.cpu_act_row_bytes(int(t), 256) % 64 == 0


@pytest.mark.parametrize("isa", ["scalar", *SIMD_ISAS])
def test_quantize_acts(isa: str) -> None:
    rng = np.random.default_rng(1)
    k = 32 * 21
    x = rng.standard_normal((5, k)).astype(np.float32) * np.float32(3.0)
    x[1, :32] = 0.0  # an all-zero block
    x[2, 40] = 1e4  # an outlier block
    acts = _core.cpu_quantize_acts(int(T.Q4_0), x, isa=isa)
    assert acts.shape[1] == _core.cpu_act_row_bytes(int(T.Q4_0), k)
    qs = act_codes(acts, k)
    d, s, s16 = act_floats(acts, k)
    xb = np.float64(x).reshape(5, -1, 32)
    np.testing.assert_allclose(d, np.abs(xb).max(axis=2) / 127, rtol=1e-6)
    assert np.all(np.abs(xb - qs * np.float64(d)[:, :, None]) <= np.float64(d)[:, :, None] * 0.5 * (1 + 1e-5))
    np.testing.assert_allclose(s, d * qs.sum(axis=2), rtol=1e-6)
    half_sums = qs.reshape(5, -1, 2, 16).sum(axis=3)
    np.testing.assert_allclose(s16, (d[:, :, None] * half_sums).reshape(5, -1), rtol=1e-6)
    # Padding to 128 values: zero codes and scales.
    kp = (k + 127) // 128 * 128
    assert kp > k
    assert not act_codes(acts, kp)[:, k // 32 :].any()
    assert not acts[:, kp + k // 32 * 4 : kp + kp // 32 * 4].any()
    if isa != "scalar":
        np.testing.assert_array_equal(acts, _core.cpu_quantize_acts(int(T.Q4_0), x, isa="scalar"))


def shapes_for(qtype: T) -> list[tuple[int, int]]:
    """(n_rows, K) pairs: K a multiple of 256 for k-quants, 32 x odd numbers for the legacy types,
    any K for float types. The largest K takes the many-token kernels through several blocks of
    tokens."""
    if GGML_QUANT_SIZES[qtype][0] == 256:
        return [(37, 256), (19, 768), (3, 4096)]
    if qtype in FLOAT_TYPES:
        return [(37, 100), (19, 32 * 19), (3, 4099)]
    return [(37, 32 * 7), (19, 32 * 19), (3, 32 * 129)]


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_gemm_against_reference(qtype: T) -> None:
    rng = np.random.default_rng(int(qtype))
    for n_rows, k in shapes_for(qtype):
        raw, w = make_weights(qtype, n_rows, k, rng)
        x = rng.standard_normal((17, k)).astype(np.float32)
        exact = np.float64(x) @ w.T
        if qtype in FLOAT_TYPES:
            y = _core.cpu_matmul(int(qtype), raw, x, isa="scalar")
            assert y.shape == (17, n_rows)
            assert rel_err(y, exact) < 2e-6, (qtype.name, k)
            continue
        acts = _core.cpu_quantize_acts(int(qtype), x, isa="scalar")
        quantized = decode_acts(acts, k) @ w.T
        # Every set (17 tokens: AVX-512's and AMX's repacking prefill kernels) ...
        for isa in ["scalar", *SIMD_ISAS]:
            y = _core.cpu_matmul(int(qtype), raw, x, isa=isa)
            assert y.shape == (17, n_rows)
            # ... is exact with the activations as quantized, up to float32 rounding ...
            assert rel_err(y, quantized) < 2e-6, (qtype.name, isa, k)
            # ... and the 8-bit activations cost about 0.5% (max|x| / 127 steps on Gaussian data).
            assert rel_err(y, exact) < 1e-2, (qtype.name, isa, k)


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU has no AVX2")
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_gemm_simd_matches_scalar(qtype: T) -> None:
    rng = np.random.default_rng(100 + int(qtype))
    for n_rows, k in shapes_for(qtype):
        raw, _ = make_weights(qtype, n_rows, k, rng)
        for n_tok in (1, 2, 3, 8, 17, 64):
            x = rng.standard_normal((n_tok, k)).astype(np.float32)
            acts = _core.cpu_quantize_acts(int(qtype), x, isa="scalar")
            for isa in SIMD_ISAS:
                xr = to_bf16(x) if bf16_acts(qtype, isa) else x
                ref = np.float64(_core.cpu_matmul(int(qtype), raw, xr, isa="scalar"))
                y = _core.cpu_gemm(int(qtype), raw, acts, isa=isa)
                assert rel_err(y, ref) < 1e-5, (qtype.name, isa, n_rows, k, n_tok)
                np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU has no AVX2")
@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_quant_prefill_tiles(qtype: T) -> None:
    """The repacking (prefill) kernels (from 10 tokens on; AVX2's for Q8_0 from 16)
    against the scalar ones: token counts that leave 1 and 2 tokens past the micro-kernels' groups
    (AVX2: 3 tokens; AVX-512: 16, 8, 4, 2, 1), 29 rows (a panel of 16 and one of 13, whose 8-row
    halves are both partly empty), and at K = 4096 a prompt longer than one block of tokens (80)."""
    rng = np.random.default_rng(300 + int(qtype))
    k_short = 512 if GGML_QUANT_SIZES[qtype][0] == 256 else 32 * 7
    for n_rows, k, counts in ((29, k_short, (16, 17, 19)), (21, 4096, (97,))):
        raw, _ = make_weights(qtype, n_rows, k, rng)
        for n_tok in counts:
            x = rng.standard_normal((n_tok, k)).astype(np.float32)
            acts = _core.cpu_quantize_acts(int(qtype), x, isa="scalar")
            ref = np.float64(_core.cpu_gemm(int(qtype), raw, acts, isa="scalar"))
            for isa in SIMD_ISAS:
                y = _core.cpu_gemm(int(qtype), raw, acts, isa=isa)
                assert rel_err(y, ref) < 1e-5, (qtype.name, isa, n_rows, k, n_tok)
                np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.skipif(not HAS_AMX, reason="this CPU (or OS) has no AMX-INT8")
@pytest.mark.parametrize("qtype", LEGACY_TYPES + K_TYPES + I_TYPES + GRID_TYPES, ids=lambda t: t.name)
def test_amx_prefill_equals_avx512(qtype: T) -> None:
    """AMX tiles compute the AVX-512 kernels' int32 block sums and the same float steps follow,
    so prefill results are equal bit for bit: token counts around the 16-token tiles and the
    switches at 16 and 64 tokens (below them, the AVX-512 kernels themselves), 29 and 16 rows, and
    at K = 4096 a prompt longer than one block of tokens (256)."""
    rng = np.random.default_rng(400 + int(qtype))
    k_short = 512 if GGML_QUANT_SIZES[qtype][0] == 256 else 32 * 7
    for n_rows, k, counts in ((29, k_short, (15, 16, 33, 63, 64, 79)), (16, 4096, (300,))):
        raw, _ = make_weights(qtype, n_rows, k, rng)
        for n_tok in counts:
            acts = _core.cpu_quantize_acts(int(qtype), rng.standard_normal((n_tok, k)).astype(np.float32))
            ref = _core.cpu_gemm(int(qtype), raw, acts, isa="avx512")
            np.testing.assert_array_equal(_core.cpu_gemm(int(qtype), raw, acts, isa="amx"), ref,
                                          err_msg=f"{qtype.name} {n_rows}x{k} {n_tok} tokens")


def test_isa_environment_switch() -> None:
    """SPLITLLM_CPU_ISA caps the default set: avx512 turns AMX off, amx is the most a CPU gets."""
    code = "from splitllm import _core; print(_core.cpu_isa())"
    for name in ("avx512", "amx", "scalar"):
        env = {**os.environ, "SPLITLLM_CPU_ISA": name}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == _core.cpu_usable_isa(name), name


@pytest.mark.parametrize("isa", ["scalar", *SIMD_ISAS])
@pytest.mark.parametrize(
    "qtype", [T.F16, T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K, T.IQ2_XS, T.IQ1_M], ids=lambda t: t.name
)
def test_gemm_row_split_is_bitwise_stable(qtype: T, isa: str) -> None:
    rng = np.random.default_rng(7)
    k = 512
    raw, _ = make_weights(qtype, 45, k, rng)
    for n_tok in (1, 5, 40):
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        acts = _core.cpu_quantize_acts(int(qtype), x, isa=isa)
        full = _core.cpu_gemm(int(qtype), raw, acts, isa=isa)
        splits = ((0, 3), (3, 20), (20, 45))
        parts = sum(_core.cpu_gemm(int(qtype), raw, acts, isa=isa, r0=a, r1=b) for a, b in splits)
        np.testing.assert_array_equal(full, parts)


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU has no AVX2")
@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
def test_float_prefill_token_blocks(qtype: T) -> None:
    """Float weights at a long K: a prompt longer than one block of packed tokens (4 MiB of
    activations) takes the panels through several blocks, the last one partly filled."""
    rng = np.random.default_rng(9)
    raw, _ = make_weights(qtype, 19, 4099, rng)
    x = rng.standard_normal((600, 4099)).astype(np.float32)
    for isa in SIMD_ISAS:
        xr = to_bf16(x) if bf16_acts(qtype, isa) else x
        ref = np.float64(_core.cpu_matmul(int(qtype), raw, xr, isa="scalar"))
        assert rel_err(_core.cpu_matmul(int(qtype), raw, x, isa=isa), ref) < 1e-5, (qtype.name, isa)


@pytest.mark.skipif(not BF16_DOT, reason="this CPU has no AVX512_BF16")
def test_bf16_against_reference() -> None:
    """BF16 weights on AVX512_BF16, decode and prefill: exactly the float64 product of the weights
    with the activations rounded to bf16 (up to float32 sums), and so about 2^-9 from the exact
    one, as llama.cpp's BF16 matmul; every K tail and token tail of the packed layout."""
    rng = np.random.default_rng(5)
    for n_rows, k in ((37, 100), (16, 32), (19, 33), (3, 4099), (40, 1536)):
        raw, w = make_weights(T.BF16, n_rows, k, rng)
        for n_tok in (1, 3, 9, 10, 16, 17, 31, 64):
            x = rng.standard_normal((n_tok, k)).astype(np.float32)
            y = _core.cpu_matmul(int(T.BF16), raw, x, isa="avx512")
            assert rel_err(y, np.float64(to_bf16(x)) @ w.T) < 1e-6, (n_rows, k, n_tok)
            assert rel_err(y, np.float64(x) @ w.T) < 5e-3, (n_rows, k, n_tok)


def test_gemm_errors() -> None:
    x = np.zeros((1, 40), np.float32)
    with pytest.raises(_core.Error, match="multiple"):
        _core.cpu_quantize_acts(int(T.Q4_0), x)
    with pytest.raises(_core.Error, match="unsupported"):
        _core.cpu_matmul(int(T.Q8_K), np.zeros((1, 292), np.uint8), np.zeros((1, 256), np.float32))
    with pytest.raises(ValueError, match="whole number"):
        _core.cpu_matmul(int(T.Q4_0), np.zeros((1, 17), np.uint8), np.zeros((1, 32), np.float32))


def make_cache(qtype: T, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cache rows as llama.cpp stores them, and their float64 values per gguf-py."""
    if qtype == T.F16:
        raw = values.astype(np.float16).view(np.uint8)
        return raw, np.float64(values.astype(np.float16))
    raw = quantize(values, qtype)
    return raw, np.float64(dequantize(raw, qtype))


@pytest.mark.parametrize(
    ("qtype", "head_dim"),
    [(t, hd) for t in KV_TYPES for hd in (64, 96, 128)] + [(T.F16, 40), (T.F16, 80)],
    ids=lambda v: v.name if isinstance(v, T) else str(v),
)
def test_attention_against_reference(qtype: T, head_dim: int) -> None:
    rng = np.random.default_rng(head_dim + int(qtype))
    n_q, n_kv = 7, 45
    q = rng.standard_normal((n_q, head_dim)).astype(np.float32)
    kc, kv = make_cache(qtype, rng.standard_normal((n_kv, head_dim)).astype(np.float32))
    vc, vv = make_cache(qtype, rng.standard_normal((n_kv, head_dim)).astype(np.float32))
    scale = 1.0 / np.sqrt(head_dim)
    ref_s = np.float64(q) @ kv.T * scale
    ref_p = np.exp(ref_s - ref_s.max(axis=1, keepdims=True))
    ref_p /= ref_p.sum(axis=1, keepdims=True)
    out0 = rng.standard_normal((n_q, head_dim)).astype(np.float32)
    ref_o = np.float64(out0) + ref_p @ vv
    p32 = ref_p.astype(np.float32)
    for isa in ["scalar", *SIMD_ISAS]:
        s = _core.cpu_attn_scores(int(qtype), q, kc, head_dim, scale=scale, isa=isa)
        assert rel_err(s, ref_s) < 2e-6, isa
        o = _core.cpu_attn_values(int(qtype), p32, vc, head_dim, out0, isa=isa)
        assert rel_err(o, ref_o) < 2e-6, isa


@pytest.mark.parametrize("qtype", KV_TYPES, ids=lambda t: t.name)
def test_store_kv_matches_gguf(qtype: T) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((33, 128)).astype(np.float32)
    x[3, :32] = 0.0
    ref, _ = make_cache(qtype, x)
    for isa in ["scalar", *SIMD_ISAS]:
        raw = _core.cpu_store_kv(int(qtype), x, isa=isa)
        if qtype == T.Q4_0:
            # ggml/gguf-py compute x / d + 8.5 in different precisions; codes may differ by one
            # in rare near-halfway cases, the scales never.
            got, want = dequantize(raw, qtype), dequantize(ref, qtype)
            step = np.abs(x.reshape(33, -1, 32)).max(axis=2) / 8
            assert np.all(np.abs(got - want).reshape(33, -1, 32) <= step[:, :, None] * 1.001)
            assert np.mean(raw == ref) > 0.999
        else:
            np.testing.assert_array_equal(raw, ref)


def test_attention_errors() -> None:
    q = np.zeros((1, 48), np.float32)
    with pytest.raises(_core.Error, match="multiple of 32"):
        _core.cpu_attn_scores(int(T.Q8_0), q, np.zeros((2, 68), np.uint8), 48)
    with pytest.raises(_core.Error, match="unsupported KV cache type"):
        _core.cpu_attn_scores(int(T.Q4_1), np.zeros((1, 64), np.float32), np.zeros((2, 40), np.uint8), 64)


def sylvester(n: int) -> np.ndarray:
    """The orthonormal Sylvester Hadamard matrix H_n / sqrt(n), float64."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


@pytest.mark.parametrize("row,block", [(64, 64), (128, 128), (96, 32), (80, 16), (2, 2), (1024, 1024)])
def test_hadamard_rotation(row: int, block: int) -> None:
    """Backend::hadamard on the CPU: each block of the largest power of two dividing the row,
    times the orthonormal Hadamard matrix; applying it twice gives the input back."""
    x = np.random.default_rng(row).standard_normal((37, row)).astype(np.float32)
    got = _core.gpu_op_hadamard("cpu", x)
    ref = (x.astype(np.float64).reshape(37, row // block, block) @ sylvester(block)).reshape(37, row)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.sqrt(block))
    np.testing.assert_allclose(_core.gpu_op_hadamard("cpu", got), x, rtol=0, atol=4e-6 * np.sqrt(block))


@pytest.mark.parametrize("isa", ["scalar", *SIMD_ISAS])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_decode_rows_do_not_depend_on_the_batch(qtype: T, isa: str) -> None:
    """Below the packed kernels' threshold (passes of at most 9 tokens: decode), each token's row
    of results is bitwise what a single-token pass gives, so a server can batch the decode steps
    of concurrent requests without changing any of them."""
    rng = np.random.default_rng(11 + int(qtype))
    for k in (256, 576, 1536):
        if k % GGML_QUANT_SIZES[qtype][0]:
            continue
        raw, _ = make_weights(qtype, 70, k, rng)
        x = rng.standard_normal((9, k)).astype(np.float32)
        acts = _core.cpu_quantize_acts(int(qtype), x, isa=isa)
        single = np.concatenate([_core.cpu_gemm(int(qtype), raw, acts[t : t + 1], isa=isa) for t in range(9)])
        for n_tok in range(2, 10):
            batch = _core.cpu_gemm(int(qtype), raw, acts[:n_tok], isa=isa)
            np.testing.assert_array_equal(batch, single[:n_tok], err_msg=f"{qtype.name} {isa} K={k} {n_tok}")


@pytest.mark.parametrize("isa", ["scalar", *SIMD_ISAS])
def test_mxfp4_scale_edges(isa: str) -> None:
    """E8M0 bytes 0 and 1 (the denormal scales 2^-128, 2^-127 of ggml's e8m0_to_fp32_half) and 2
    among ordinary and large ones, every ISA (decode, packed prefill) against the float64 product
    on the quantized activations: a wrong edge (e - 1 = -1 is -inf as float bits) shows as inf."""
    rng = np.random.default_rng(13)
    for n_rows, k in ((37, 32 * 7), (19, 32 * 19)):
        raw = rng.integers(0, 256, size=(n_rows, k // 32, 17), dtype=np.uint8)
        exps = np.array([0, 1, 2, 3, 120, 127, 128, 160], np.uint8)
        raw[:, :, 0] = rng.choice(exps, size=(n_rows, k // 32))
        raw = raw.reshape(n_rows, -1)
        w = np.float64(dequantize(raw, T.MXFP4))
        for n_tok in (1, 3, 17, 64):
            x = rng.standard_normal((n_tok, k)).astype(np.float32)
            acts = _core.cpu_quantize_acts(int(T.MXFP4), x, isa="scalar")
            y = _core.cpu_gemm(int(T.MXFP4), raw, acts, isa=isa)
            assert np.isfinite(y).all()
            assert rel_err(y, decode_acts(acts, k) @ w.T) < 2e-6, (isa, k, n_tok)
