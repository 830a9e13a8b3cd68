"""Placement and the CPU/GPU split, checked without a GPU.

SPLITLLM_FAKE_GPU=1 makes the GPU backend FAKEGPU0: the CPU kernels behind the GPU interface,
with memory of their own that refuses pointers it did not allocate. A split run therefore
computes exactly what a CPU-only run computes, but only if every weight was uploaded, every
activation crossed the split boundaries, and every KV cache is where placement says: so
logits must match the CPU run bit for bit.
"""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import splitllm
from routed_checks import HOST_TENSOR
from splitllm import _core
from tiny_model import TinyConfig, make_weights, write_gguf

PROMPT = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
LONG = [(7 * i + 3) % 320 for i in range(40)]  # at least OpOffload::kMinBatch tokens


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    monkeypatch.delenv("SPLITLLM_FAKE_GPU_MEM", raising=False)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.delenv("SPLITLLM_FAKE_GPU", raising=False)
    if _core.gpu_info()["available"]:
        pytest.skip("a real GPU is visible: the no-GPU path cannot be exercised here")


def tiny(tmp_path, **kw) -> tuple[str, TinyConfig]:
    cfg = TinyConfig(**kw)
    path = tmp_path / f"tiny-{cfg.arch}-{cfg.seed}.gguf"
    write_gguf(make_weights(cfg), path)
    return str(path), cfg


def logits(m, tokens, start=0, slot=0) -> np.ndarray:
    n = len(tokens)
    return m.decode(np.asarray(tokens, np.int32), np.arange(start, start + n, dtype=np.int32),
                    np.full(n, slot, np.int32))


def cpu_model(path, **kw):
    return _core.Model(path, n_ctx=64, n_threads=1, op_offload=False, **kw)


def devices(m) -> list[tuple[str, str, str]]:
    return [(p["name"], p["device"], p["kv_device"]) for p in m.placement]


# ---- without a GPU ----


def test_no_gpu_warns_once_and_runs_on_cpu(tmp_path, no_gpu):
    path, _ = tiny(tmp_path)
    m = _core.Model(path, n_ctx=64, n_threads=1, n_gpu_layers=-1)
    assert len(m.warnings) == 1
    assert "n_gpu_layers=-1" in m.warnings[0] and "running on the CPU" in m.warnings[0]
    assert {p["device"] for p in m.placement} == {"CPU"}
    assert m.n_op_offload == 0
    ref = cpu_model(path)
    assert ref.warnings == []
    np.testing.assert_array_equal(logits(m, LONG), logits(ref, LONG))
    # n_gpu_layers=0 asks for no GPU: no warning, even with op offload on.
    assert _core.Model(path, n_ctx=64, n_threads=1).warnings == []


# ---- splits on the fake GPU ----

CONFIGS = {
    "llama-gqa": dict(arch="llama", n_layer=4, seed=1),
    "qwen2-bias-tied": dict(arch="qwen2", n_layer=4, n_head=4, n_head_kv=1, tied_output=True, seed=2),
    "qwen3-headnorm": dict(arch="qwen3", n_layer=4, n_head=4, n_head_kv=2, key_length=32, seed=3),
    "phi3-fused": dict(arch="phi3", n_layer=4, n_rot=8, seed=4),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("ngl", [1, 3, 5, -1])
@pytest.mark.parametrize("offload_kqv", [True, False])
def test_split_logits_equal_cpu(tmp_path, fake_gpu, config, ngl, offload_kqv):
    path, cfg = tiny(tmp_path, **CONFIGS[config])
    ref = logits(cpu_model(path), PROMPT)
    m = _core.Model(path, n_ctx=64, n_threads=1, n_gpu_layers=ngl, offload_kqv=offload_kqv)
    assert m.warnings == []
    n_gpu_blocks = cfg.n_layer if ngl == -1 else min(ngl, cfg.n_layer + 1) - 1
    want = [("token_embd", "CPU", "")]
    for i in range(cfg.n_layer):
        dev = "FAKEGPU0" if i >= cfg.n_layer - n_gpu_blocks else "CPU"
        want.append((f"blk.{i}", dev, dev if offload_kqv else "CPU"))
    want.append(("output", "FAKEGPU0", ""))
    assert devices(m) == want
    np.testing.assert_array_equal(logits(m, PROMPT), ref)


@pytest.mark.parametrize("ngl", [1, -1])
def test_split_embeddings_equal_cpu(tmp_path, fake_gpu, ngl):
    """The hidden states come back from the output layer's device."""
    path, _ = tiny(tmp_path, **CONFIGS["llama-gqa"])
    n = len(PROMPT)
    args = (np.asarray(PROMPT, np.int32), np.arange(n, dtype=np.int32), np.zeros(n, np.int32))
    ref = cpu_model(path).decode(*args, embeddings=True)
    got = _core.Model(path, n_ctx=64, n_threads=1, n_gpu_layers=ngl).decode(*args, embeddings=True)
    np.testing.assert_array_equal(got, ref)


def test_state_moves_between_gpu_and_cpu_caches(tmp_path, fake_gpu):
    """A state saved from caches on the (fake) GPU goes back into CPU caches, and back."""
    from splitllm import Model

    path, _ = tiny(tmp_path, **CONFIGS["llama-gqa"])
    with (Model(path, n_ctx=64, n_threads=1, n_gpu_layers=-1) as gpu,
          Model(path, n_ctx=64, n_threads=1) as cpu):
        cpu.eval_prompt(PROMPT)
        want = cpu.eval_prompt(PROMPT + [7])  # token 7 read alone, as below
        gpu.eval_prompt(PROMPT)
        cpu.reset()
        cpu.eval_prompt([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # other contents
        cpu.load_state(gpu.save_state())
        np.testing.assert_array_equal(cpu.eval_prompt(PROMPT + [7]), want)  # reads only token 7
        gpu.reset()
        gpu.eval_prompt([3, 2, 1])
        gpu.load_state(cpu.save_state())
        np.testing.assert_array_equal(gpu.eval_prompt(PROMPT + [7]), want)


@pytest.mark.parametrize("ngl", [2, -1])
def test_experts_stay_on_the_host(tmp_path, fake_gpu, ngl):
    """Mixture-of-experts blocks have no GPU expert kernels yet: n_gpu_layers puts the blocks on
    the GPU with their KV caches, but their routers and experts stay on the CPU (a part
    blk.N.experts each), said once; the logits are the CPU's."""
    path, cfg = tiny(tmp_path, arch="qwen3moe", n_layer=3, n_expert=4, n_expert_used=2, seed=9)
    m = _core.Model(path, n_ctx=64, n_threads=1, n_gpu_layers=ngl)
    assert len(m.warnings) == 1 and "experts" in m.warnings[0] and "--cpu-moe" in m.warnings[0]
    first = 0 if ngl < 0 else 3 - (ngl - 1)
    want = [("token_embd", "CPU", "")]
    for i in range(3):
        want += [(f"blk.{i}", "FAKEGPU0", "FAKEGPU0"), (f"blk.{i}.experts", "CPU", "")] if i >= first else [
            (f"blk.{i}", "CPU", "CPU")]
    assert devices(m) == [*want, ("output", "FAKEGPU0", "")]
    ref = logits(cpu_model(path), PROMPT)
    np.testing.assert_allclose(logits(m, PROMPT), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3moe"])
def test_placement_bytes(tmp_path, fake_gpu, arch):
    moe = dict(n_expert=4, n_expert_used=2) if arch == "qwen3moe" else {}
    cfg = TinyConfig(arch=arch, n_layer=4, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, seed=3, **moe)
    path = tmp_path / "tiny.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q8_0")
    tensor_bytes: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        part = ".".join(t.name.split(".")[:2]) if t.name.startswith("blk.") else t.name.split(".")[0]
        part = "output" if part == "output_norm" else part
        if part == "blk.3" and HOST_TENSOR.search(t.name):  # (its router and experts stay on the CPU)
            part += ".experts"
        tensor_bytes[part] = tensor_bytes.get(part, 0) + int(t.n_bytes)
    n_ctx, hd = 64, cfg.head_dim
    for type_k, k_row in (("f16", 2 * hd), ("q8_0", hd // 32 * 34)):
        m = _core.Model(str(path), n_ctx=n_ctx, n_threads=1, n_gpu_layers=2, type_k=type_k, offload_kqv=False)
        kv = n_ctx * cfg.n_head_kv * (k_row + 2 * hd)
        for p in m.placement:
            assert p["weight_bytes"] == tensor_bytes[p["name"]], p["name"]
            assert p["kv_bytes"] == (kv if re.fullmatch(r"blk\.\d+", p["name"]) else 0), p["name"]
        experts = [("blk.3.experts", "CPU", "")] if moe else []
        want = [("blk.3", "FAKEGPU0", "CPU"), *experts, ("output", "FAKEGPU0", "")]
        assert devices(m)[-len(want):] == want


def test_tied_output_on_gpu_counts_its_copy(tmp_path, fake_gpu):
    path, cfg = tiny(tmp_path, **CONFIGS["qwen2-bias-tied"])
    embd = next(p["weight_bytes"] for p in cpu_model(path).placement if p["name"] == "token_embd")
    on_cpu = next(p for p in cpu_model(path).placement if p["name"] == "output")
    on_gpu = next(p for p in _core.Model(path, n_ctx=64, n_gpu_layers=1).placement if p["name"] == "output")
    assert on_cpu["weight_bytes"] == 4 * cfg.n_embd  # the norm; the matrix is the embedding's
    assert on_gpu["weight_bytes"] == 4 * cfg.n_embd + embd


@pytest.mark.parametrize("offload_kqv", [True, False])
def test_incremental_decode_across_the_split(tmp_path, fake_gpu, offload_kqv):
    """Token by token and in small batches, the KV caches on both sides carry the sequence."""
    path, _ = tiny(tmp_path, **CONFIGS["llama-gqa"])
    c = cpu_model(path, n_batch=3)  # the same batches on the CPU alone (the kernels depend on the batch size)
    ref = logits(c, PROMPT)
    m = _core.Model(path, n_ctx=64, n_batch=3, n_threads=1, n_gpu_layers=3, offload_kqv=offload_kqv)
    np.testing.assert_array_equal(logits(m, PROMPT), ref)
    steps = np.concatenate([logits(m, [t], start=i) for i, t in enumerate(PROMPT)])
    np.testing.assert_allclose(steps, ref, rtol=1e-5, atol=1e-5)
    cpu_steps = np.concatenate([logits(c, [t], start=i) for i, t in enumerate(PROMPT)])
    np.testing.assert_array_equal(steps, cpu_steps)


def test_two_sequences_across_the_split(tmp_path, fake_gpu):
    path, _ = tiny(tmp_path, **CONFIGS["llama-gqa"])
    a, b = PROMPT[:10], PROMPT[10:]
    tokens = np.array([t for pair in zip(a, b, strict=True) for t in pair], np.int32)
    pos = np.repeat(np.arange(10, dtype=np.int32), 2)
    slot = np.tile(np.array([0, 1], np.int32), 10)
    runs = []
    for kw in (dict(), dict(n_gpu_layers=3), dict(n_gpu_layers=3, offload_kqv=False)):
        m = _core.Model(path, n_ctx=64, n_seq_max=2, n_threads=1, op_offload=False, **kw)
        runs.append(m.decode(tokens, pos, slot))
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_array_equal(runs[2], runs[0])
    # Each sequence alone gives its own logits: the slots do not see each other.
    alone = logits(cpu_model(path), a)
    np.testing.assert_allclose(runs[1][0::2], alone, rtol=1e-5, atol=1e-5)


# ---- op offload ----


@pytest.mark.parametrize("ngl", [0, 1, 3])
def test_op_offload_large_batches(tmp_path, fake_gpu, ngl):
    path, cfg = tiny(tmp_path, **CONFIGS["qwen2-bias-tied"])
    ref = logits(cpu_model(path), LONG)
    m = _core.Model(path, n_ctx=64, n_threads=1, n_gpu_layers=ngl)
    n_cpu_blocks = cfg.n_layer - max(ngl - 1, 0)
    np.testing.assert_array_equal(logits(m, LONG), ref)
    assert m.n_op_offload == n_cpu_blocks  # each CPU block once, for the one batch of 40
    logits(m, [5], start=len(LONG))  # a single token: below the threshold
    logits(m, LONG[:31], start=0)
    assert m.n_op_offload == n_cpu_blocks
    off = _core.Model(path, n_ctx=64, n_threads=1, n_gpu_layers=ngl, op_offload=False)
    np.testing.assert_array_equal(logits(off, LONG), ref)
    assert off.n_op_offload == 0
    if ngl == 0:
        assert {p["device"] for p in off.placement} == {"CPU"}


# ---- memory ----


def test_not_enough_gpu_memory(tmp_path, fake_gpu, monkeypatch):
    path, _ = tiny(tmp_path, **CONFIGS["llama-gqa"])
    monkeypatch.setenv("SPLITLLM_FAKE_GPU_MEM", "0")
    with pytest.raises(splitllm.CudaError, match=r"needs .* MiB .* MiB is free; lower n_gpu_layers"):
        _core.Model(path, n_ctx=64, n_gpu_layers=-1)
    m = _core.Model(path, n_ctx=64, n_threads=1)  # op offload only: it gives up with a warning
    assert len(m.warnings) == 1 and m.warnings[0].startswith("op offload disabled: not enough memory")
    assert {p["device"] for p in m.placement} == {"CPU"}
    np.testing.assert_array_equal(logits(m, LONG), logits(cpu_model(path), LONG))


# ---- a real model ----


@pytest.mark.slow
def test_smollm2_split(smollm2_path, fake_gpu):
    path = str(smollm2_path)
    prompt = [1, 504, 3458, 282, 4103, 314, 253, 1345, 30, 378, 3714, 436, 34, 2] * 3  # 42 tokens

    def run(m) -> tuple[np.ndarray, list[int]]:
        """Prompt logits and the greedy 32-token completion."""
        first = logits(m, prompt)
        out, last = [], first[-1]
        for i in range(32):
            out.append(int(np.argmax(last)))
            last = logits(m, [out[-1]], start=len(prompt) + i)[0]
        return first, out

    ref_logits, ref_text = run(_core.Model(path, n_ctx=128, n_threads=1, op_offload=False))
    for kw in (dict(n_gpu_layers=0), dict(n_gpu_layers=16), dict(n_gpu_layers=16, offload_kqv=False),
               dict(n_gpu_layers=-1)):
        m = _core.Model(path, n_ctx=128, n_threads=1, **kw)
        got_logits, got_text = run(m)
        np.testing.assert_array_equal(got_logits, ref_logits, err_msg=str(kw))
        assert got_text == ref_text, kw
        assert m.n_op_offload == (30 - max(kw["n_gpu_layers"] - 1, 0) if kw["n_gpu_layers"] >= 0 else 0), kw


# ---- the Python API ----


def test_model_placement_and_verbose(tmp_path, fake_gpu, capsys):
    from splitllm import Model

    path, cfg = tiny(tmp_path, **CONFIGS["llama-gqa"])
    with Model(path, n_ctx=64, n_threads=1, n_gpu_layers=2, offload_kqv=False, verbose=True) as m:
        assert [p["device"] for p in m.placement] == ["CPU"] * 4 + ["FAKEGPU0"] * 2
        assert [p["kv_device"] for p in m.placement] == [""] + ["CPU"] * 4 + [""]
        np.testing.assert_array_equal(m.logits(PROMPT), logits(cpu_model(path), PROMPT))
    err = capsys.readouterr().err
    assert "blk.3        FAKEGPU0" in err and "on CPU" in err


def test_model_warns_once_without_gpu(tmp_path, no_gpu):
    from splitllm import Model

    path, _ = tiny(tmp_path)
    with pytest.warns(RuntimeWarning, match="n_gpu_layers=5 requested") as rec:
        with Model(path, n_ctx=64, n_threads=1, n_gpu_layers=5) as m:
            assert {p["device"] for p in m.placement} == {"CPU"}
    assert len(rec) == 1
