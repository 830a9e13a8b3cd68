"""Each CUDA op against the CPU backend's on random inputs (normalized MSE <= 5e-4 for the
matmuls of every weight type, <= 1e-6 for the rest), through _core.gpu_op_*."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from conftest import nmse
from make_random_model import random_blocks
from splitllm import _core

Q = gguf.GGMLQuantizationType
WEIGHT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
                "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "MXFP4",
                "TQ1_0", "TQ2_0"]
MATMUL_NMSE = 5e-4
OTHER_NMSE = 1e-6


def weights(name: str, rows: int, K: int, seed: int) -> np.ndarray:
    return random_blocks(Q[name], rows, K, 1.0 / np.sqrt(K), np.random.default_rng(seed))


def acts(n: int, K: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, K)).astype(np.float32)


# ---- matmul ----


@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
@pytest.mark.parametrize("n_tok", [1, 3, 8, 9, 70])
def test_matmul(wtype, n_tok):
    # 300 rows: not a multiple of the 64-row GEMM tile nor of the 4 rows of a mat-vec block;
    # float types also get a K that is not a multiple of 8 or 32 (scalar paths, padding).
    K = 512 if wtype not in ("F32", "F16", "BF16") else 200
    w = weights(wtype, 300, K, 1)
    x = acts(n_tok, K, 2)
    cpu = _core.gpu_op_matmul("cpu", int(Q[wtype]), w, x)
    gpu = _core.gpu_op_matmul("gpu", int(Q[wtype]), w, x)
    assert gpu.shape == cpu.shape == (n_tok, 300)
    assert nmse(gpu, cpu) <= MATMUL_NMSE


@pytest.mark.parametrize("wtype", ["F16", "Q4_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("n_tok,vec_tokens", [(2, 8), (40, 8), (40, 64), (20, 0)])
def test_matmul_bias_accumulate_and_kernel_choice(wtype, n_tok, vec_tokens):
    """Bias and accumulation in both kernel families; vec_tokens forces the mat-vec kernels to
    run many tokens (in passes) or the GEMM to run a few."""
    K = 256
    w = weights(wtype, 131, K, 3)
    x = acts(n_tok, K, 4)
    rng = np.random.default_rng(5)
    bias = rng.normal(size=131).astype(np.float32)
    y0 = rng.normal(size=(n_tok, 131)).astype(np.float32)
    cpu = _core.gpu_op_matmul("cpu", int(Q[wtype]), w, x, bias=bias, y0=y0)
    gpu = _core.gpu_op_matmul("gpu", int(Q[wtype]), w, x, bias=bias, y0=y0, vec_tokens=vec_tokens)
    assert nmse(gpu, cpu) <= MATMUL_NMSE
    plain = _core.gpu_op_matmul("cpu", int(Q[wtype]), w, x)
    assert nmse(cpu, plain + bias + y0) <= OTHER_NMSE  # the CPU reference itself adds them


def test_matmul_large_shape():
    """A Llama-7B-sized projection (4096 x 4096, prompt of 128) in Q4_K."""
    w = weights("Q4_K", 4096, 4096, 6)
    x = acts(128, 4096, 7)
    for n in (1, 128):
        cpu = _core.gpu_op_matmul("cpu", int(Q.Q4_K), w, x[:n])
        gpu = _core.gpu_op_matmul("gpu", int(Q.Q4_K), w, x[:n])
        assert nmse(gpu, cpu) <= MATMUL_NMSE


@pytest.mark.parametrize("wtype", ["F32", "BF16", "Q5_1", "Q3_K", "Q5_K"])
@pytest.mark.parametrize("n_tok", [1, 33])
@pytest.mark.parametrize("gelu", [False, True], ids=["swiglu", "geglu"])
def test_glu(wtype, n_tok, gelu):
    K = 256
    gate, up = weights(wtype, 200, K, 8), weights("Q8_0", 200, K, 9)
    x = acts(n_tok, K, 10)
    cpu = _core.gpu_op_glu("cpu", int(Q[wtype]), gate, int(Q.Q8_0), up, x, gelu=gelu)
    gpu = _core.gpu_op_glu("gpu", int(Q[wtype]), gate, int(Q.Q8_0), up, x, gelu=gelu)
    assert nmse(gpu, cpu) <= MATMUL_NMSE
    if gelu:  # not silu's result
        assert nmse(_core.gpu_op_glu("cpu", int(Q[wtype]), gate, int(Q.Q8_0), up, x), cpu) > 1e-3


def test_add():
    rng = np.random.default_rng(14)
    y, x = (rng.normal(size=(37, 300)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(_core.gpu_op_add("gpu", y, x), y + x)
    np.testing.assert_array_equal(_core.gpu_op_add("cpu", y, x), y + x)
    # granite's residual scale: y + 0.22 x
    want = y + np.float32(0.22) * x
    np.testing.assert_allclose(_core.gpu_op_add("gpu", y, x, 0.22), want, rtol=1e-6, atol=1e-6)


# ---- elementwise and small ops ----


@pytest.mark.parametrize("n", [64, 576, 4096, 5000])
def test_rms_norm(n):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(7, n)) * 30).astype(np.float32)
    w = rng.normal(size=n).astype(np.float32)
    cpu = _core.gpu_op_rms_norm("cpu", x, w, 1e-5)
    gpu = _core.gpu_op_rms_norm("gpu", x, w, 1e-5)
    assert nmse(gpu, cpu) <= OTHER_NMSE


@pytest.mark.parametrize("n", [64, 4096, 5000])
def test_layer_norm(n):
    """cohere2's bias-free LayerNorm: GPU against CPU, and the CPU against numpy in float64."""
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(7, n)) * 30 + 5).astype(np.float32)
    w = rng.normal(size=n).astype(np.float32)
    cpu = _core.gpu_op_rms_norm("cpu", x, w, 1e-5, layer=True)
    gpu = _core.gpu_op_rms_norm("gpu", x, w, 1e-5, layer=True)
    c = x.astype(np.float64) - x.mean(axis=1, keepdims=True, dtype=np.float64)
    want = c / np.sqrt((c * c).mean(axis=1, keepdims=True) + 1e-5) * w
    assert nmse(cpu, want) <= 1e-12
    assert nmse(gpu, cpu) <= OTHER_NMSE


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("head_dim,n_rot,factors", [(64, 64, False), (128, 96, False), (128, 128, True)])
def test_rope(neox, head_dim, n_rot, factors):
    rng = np.random.default_rng(11)
    n, nh, nkv = 9, 8, 2
    q = rng.normal(size=(n, nh * head_dim)).astype(np.float32)
    k = rng.normal(size=(n, nkv * head_dim)).astype(np.float32)
    pos = np.array([0, 1, 2, 17, 100, 511, 1000, 4000, 32000], np.int32)
    ff = (1 + rng.random(n_rot // 2) * 8).astype(np.float32) if factors else None
    kw = dict(n_head=nh, n_head_kv=nkv, head_dim=head_dim, n_rot=n_rot, base=500000.0, freq_scale=0.5,
              neox=neox, freq_factors=ff)
    cq, ck = _core.gpu_op_rope("cpu", q, k, pos, **kw)
    gq, gk = _core.gpu_op_rope("gpu", q, k, pos, **kw)
    assert nmse(gq, cq) <= OTHER_NMSE and nmse(gk, ck) <= OTHER_NMSE
    # Dimensions past n_rot are left alone.
    heads = (n, nh, head_dim)
    np.testing.assert_array_equal(gq.reshape(heads)[..., n_rot:], q.reshape(heads)[..., n_rot:])


def test_rope_sliding_window_tables():
    """A model with sliding-window layers keeps a second set of rotary tables (gemma3: base 10000,
    unscaled, beside the global layers' 1e6 scaled by 1/8)."""
    rng = np.random.default_rng(15)
    n, nh, nkv, hd = 9, 4, 2, 64
    q = rng.normal(size=(n, nh * hd)).astype(np.float32)
    k = rng.normal(size=(n, nkv * hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 17, 100, 511, 1000, 4000, 32000], np.int32)
    kw = dict(n_head=nh, n_head_kv=nkv, head_dim=hd, n_rot=hd, base=1e6, freq_scale=0.125, neox=True)
    for swa in (False, True):
        cq, ck = _core.gpu_op_rope("cpu", q, k, pos, swa=swa, base_swa=10000.0, **kw)
        gq, gk = _core.gpu_op_rope("gpu", q, k, pos, swa=swa, base_swa=10000.0, **kw)
        assert nmse(gq, cq) <= OTHER_NMSE and nmse(gk, ck) <= OTHER_NMSE
    plain = dict(kw, base=10000.0, freq_scale=1.0)
    lq, lk = _core.gpu_op_rope("cpu", q, k, pos, **plain)  # what the sliding layers' tables are
    np.testing.assert_array_equal(cq, lq)
    np.testing.assert_array_equal(ck, lk)


@pytest.mark.parametrize("row", [64, 96, 128, 256])
def test_hadamard(row):
    x = np.random.default_rng(row).normal(size=(300, row)).astype(np.float32)
    cpu = _core.gpu_op_hadamard("cpu", x)
    gpu = _core.gpu_op_hadamard("gpu", x)
    assert nmse(gpu, cpu) <= OTHER_NMSE


@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
def test_get_rows(wtype):
    K = 512 if wtype not in ("F32", "F16", "BF16") else 72
    table = weights(wtype, 100, K, 12)
    tokens = np.array([0, 99, 5, 5, 42, 77, 1], np.int32)
    cpu = _core.gpu_op_get_rows("cpu", int(Q[wtype]), table, tokens)
    gpu = _core.gpu_op_get_rows("gpu", int(Q[wtype]), table, tokens)
    assert nmse(gpu, cpu) <= OTHER_NMSE
    ref = gguf.quants.dequantize(table[tokens], Q[wtype]).reshape(len(tokens), K)
    np.testing.assert_array_equal(gpu, ref)  # dequantization is exact on both sides


# ---- attention ----


def kv_row_bytes(t: str, head_dim: int) -> int:
    return {"f16": 2 * head_dim, "q8_0": head_dim // 32 * 34, "q4_0": head_dim // 32 * 18}[t]


def dequant_cache(raw: np.ndarray, t: str, head_dim: int) -> np.ndarray:
    rows = raw.reshape(-1, kv_row_bytes(t, head_dim))
    return gguf.quants.dequantize(rows, Q[t.upper()]).reshape(-1, head_dim)


def run_attention(device, *, types, head_dim, n_head, n_head_kv, n_slots, slot_ctx, batches,
                  attn_vec_tokens=8, graphs=False, **score):
    """Feeds the batches (pos, slot) one after another through the same caches; returns the
    last batch's output and the caches."""
    tk, tv = types
    kc = np.zeros(n_slots * n_head_kv * slot_ctx * kv_row_bytes(tk, head_dim), np.uint8)
    vc = np.zeros(n_slots * n_head_kv * slot_ctx * kv_row_bytes(tv, head_dim), np.uint8)
    rng = np.random.default_rng(13)
    out = None
    for pos, slot in batches:
        n = len(pos)
        q = rng.normal(size=(n, n_head * head_dim)).astype(np.float32)
        k = rng.normal(size=(n, n_head_kv * head_dim)).astype(np.float32)
        v = rng.normal(size=(n, n_head_kv * head_dim)).astype(np.float32)
        out, kc, vc = _core.gpu_op_attention(
            device, q, k, v, np.asarray(pos, np.int32), np.asarray(slot, np.int32), kc, vc, n_head=n_head,
            n_head_kv=n_head_kv, head_dim=head_dim, n_slots=n_slots, slot_ctx=slot_ctx, type_k=tk, type_v=tv,
            attn_vec_tokens=attn_vec_tokens, graphs=graphs, **score)
    return out, kc, vc


SCENARIOS = {
    # a prompt of 37 after 60 cached cells, then one decode token
    "prompt-then-decode": dict(
        n_slots=1, slot_ctx=128,
        batches=[(list(range(60)), [0] * 60), (list(range(60, 97)), [0] * 37), ([97], [0])]),
    "prompt": dict(n_slots=1, slot_ctx=128, batches=[(list(range(70)), [0] * 70)]),
    # two sequences interleaved, then a batch holding one token of each
    "two-slots": dict(n_slots=2, slot_ctx=64,
                      batches=[(list(range(20)) * 2, [0] * 20 + [1] * 20), ([20, 31], [0, 1])]),
}  # fmt: skip


# (types, (head_dim, n_head, n_head_kv)): quantized caches need head_dim a multiple of 32.
KV_TYPES = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16")]
HEADS = [(64, 8, 8), (128, 8, 2), (128, 32, 1), (256, 4, 4)]
CACHES = [(t, h) for t in KV_TYPES for h in HEADS]
CACHES += [(("f16", "f16"), (16, 4, 2)), (("f16", "f16"), (8, 8, 2))]


CACHE_IDS = [f"{k}-{v}-hd{h[0]}-q{h[1]}-kv{h[2]}" for (k, v), h in CACHES]


@pytest.mark.parametrize("types,heads", CACHES, ids=CACHE_IDS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kernel", ["auto", "decode", "prefill"])
def test_attention(types, heads, scenario, kernel):
    head_dim, n_head, n_head_kv = heads
    sc = SCENARIOS[scenario]
    kw = dict(types=types, head_dim=head_dim, n_head=n_head, n_head_kv=n_head_kv, **sc)
    vec = {"auto": 8, "decode": 1 << 20, "prefill": 0}[kernel]
    cpu_out, cpu_k, cpu_v = run_attention("cpu", **kw)
    gpu_out, gpu_k, gpu_v = run_attention("gpu", attn_vec_tokens=vec, **kw)
    assert nmse(gpu_out, cpu_out) <= OTHER_NMSE
    # The caches hold the same values (quantized the same way, up to rare rounding ties).
    for ours, ref, t in ((gpu_k, cpu_k, types[0]), (gpu_v, cpu_v, types[1])):
        assert nmse(dequant_cache(ours, t, head_dim), dequant_cache(ref, t, head_dim)) <= OTHER_NMSE
    assert np.mean(gpu_k == cpu_k) > 0.99 and np.mean(gpu_v == cpu_v) > 0.99


@pytest.mark.parametrize("window", [1, 5, 40, 200])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kernel", ["decode", "prefill"])
@pytest.mark.parametrize("types", [("f16", "f16"), ("q8_0", "q4_0")])
def test_attention_window_and_softcap(window, scenario, kernel, types):
    """Sliding-window layers (gemma2/3) and soft-capped scores (gemma2) with a query scale of
    their own, in both kernels: windows of one cell, shorter and longer than a prefill tile, and
    longer than the context."""
    score = dict(scale=0.3, softcap=5.0, window=window)
    kw = dict(types=types, head_dim=128, n_head=8, n_head_kv=2, **SCENARIOS[scenario])
    vec = {"decode": 1 << 20, "prefill": 0}[kernel]
    cpu_out, _, _ = run_attention("cpu", **kw, **score)
    gpu_out, _, _ = run_attention("gpu", attn_vec_tokens=vec, **kw, **score)
    assert nmse(gpu_out, cpu_out) <= OTHER_NMSE
    full, _, _ = run_attention("cpu", **kw, scale=0.3, softcap=5.0)
    last_pos = max(SCENARIOS[scenario]["batches"][-1][0])
    assert (nmse(cpu_out, full) > 1e-3) == (window <= last_pos)  # the window is applied where it bites


@pytest.mark.parametrize("kernel", ["decode", "prefill"])
@pytest.mark.parametrize("types", [("f16", "f16"), ("q8_0", "q4_0")])
def test_attention_ring(kernel, types):
    """A sliding-window layer's ring cache (position p at cell p % slot_ctx) of window + batch
    cells, wrapped around by the prompt: the result of a full-size cache."""
    sc = SCENARIOS["prompt-then-decode"]  # batches of 60, 37 and 1 tokens up to position 97
    score = dict(scale=0.2, window=5)
    kw = dict(types=types, head_dim=64, n_head=4, n_head_kv=2, n_slots=1, batches=sc["batches"])
    vec = {"decode": 1 << 20, "prefill": 0}[kernel]
    full, _, _ = run_attention("cpu", slot_ctx=128, **kw, **score)
    for device in ("cpu", "gpu"):
        out, _, _ = run_attention(device, slot_ctx=65, ring=True, attn_vec_tokens=vec, **kw, **score)
        assert nmse(out, full) <= OTHER_NMSE


@pytest.mark.parametrize("kernel", ["decode", "prefill"])
@pytest.mark.parametrize("types", [("f16", "f16"), ("q8_0", "q4_0")])
@pytest.mark.parametrize("window", [0, 5])
def test_attention_sinks(kernel, types, window):
    """gpt-oss's attention sinks (a logit per query head in each row's softmax, no value), alone
    and with a sliding window, in both kernels: the CPU's result; the sinks bite (some logits
    above the scores, some below)."""
    n_head = 8
    sinks = np.linspace(-3.0, 4.0, n_head).astype(np.float32)
    kw = dict(types=types, head_dim=64, n_head=n_head, n_head_kv=2, scale=0.125, window=window,
              **SCENARIOS["prompt-then-decode"])
    vec = {"decode": 1 << 20, "prefill": 0}[kernel]
    cpu_out, _, _ = run_attention("cpu", sinks=sinks, **kw)
    gpu_out, _, _ = run_attention("gpu", attn_vec_tokens=vec, sinks=sinks, **kw)
    assert nmse(gpu_out, cpu_out) <= OTHER_NMSE
    plain, _, _ = run_attention("cpu", **kw)
    assert nmse(cpu_out, plain) > 1e-3


def test_attention_graphs():
    """A single-token batch runs through a CUDA graph: the same result as without."""
    kw = dict(types=("f16", "f16"), head_dim=128, n_head=8, n_head_kv=2, **SCENARIOS["prompt-then-decode"])
    a = run_attention("gpu", graphs=False, **kw)
    b = run_attention("gpu", graphs=True, **kw)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
