"""The memory planner: exact numbers on synthetic GGUFs, n_gpu_layers="auto", cache_fraction, the
CLI, and the plan against what the engine allocates and what the process really holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gguf
import pytest
from splitllm import Model
from splitllm.cli import main as cli_main
from splitllm.plan import DEFAULT_MARGIN, MiB, parse_size, plan
from tiny_model import TinyConfig, make_weights, write_gguf

KV_ROW = {"f16": 64 * 2, "q8_0": 2 * 34, "q4_0": 2 * 18}  # bytes of one head (64 values) at one token


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 4-layer model with 256-wide rows (k-quant blocks), Q4_K/Q6_K weights, head_dim 64."""
    cfg = TinyConfig(
        arch="llama", n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=320, seed=3
    )
    path = tmp_path_factory.mktemp("plan") / "synthetic.gguf"
    from splitllm.quants import quantize

    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    return cfg, path


def tensor_bytes(path) -> dict[str, int]:
    r = gguf.GGUFReader(str(path))
    return {t.name: int(t.n_bytes) for t in r.tensors}


@pytest.fixture()
def fake_gpu(monkeypatch):
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    yield
    monkeypatch.delenv("SPLITLLM_FAKE_GPU", raising=False)


@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
def test_cpu_plan_is_exact(synthetic, kv):
    cfg, path = synthetic
    sizes = tensor_bytes(path)
    n_ctx = 256
    p = plan(path, n_ctx=n_ctx, n_batch=64, n_threads=2, type_k=kv, type_v=kv, cpu_memory="256MiB")
    cpu = p.device("CPU")
    # Weights: every tensor resident in the mapping (from gguf-py's sizes).
    assert cpu.weights == sum(sizes.values())
    per_layer = {
        f"blk.{i}": sum(v for k, v in sizes.items() if k.startswith(f"blk.{i}.")) for i in range(cfg.n_layer)
    }
    for lp in p.layers:
        if lp.name.startswith("blk."):
            assert lp.weight_bytes == per_layer[lp.name] and lp.device == "CPU"
    # KV cache: 2 x layers x kv_heads x head_dim x bytes per token.
    per_token = 2 * cfg.n_layer * cfg.n_head_kv * KV_ROW[kv]
    assert p.kv_bytes_per_token == per_token
    assert cpu.kv_cache == per_token * n_ctx
    # Buffers: what the engine allocates for the same settings.
    with Model(path, n_ctx=n_ctx, n_batch=64, n_threads=2, type_k=kv, type_v=kv) as m:
        mem = {d["name"]: d for d in m._engine().memory}
    assert cpu.buffers == mem["CPU"]["buffers"]
    assert cpu.kv_cache == mem["CPU"]["kv"] and cpu.weights == mem["CPU"]["weights"]
    assert p.fits and p.max_ctx is not None and p.max_ctx > n_ctx


def test_experts_plan_matches_engine(tmp_path):
    """A mixture of experts: the stacked experts' bytes, and the buffers of the expert passes."""
    from splitllm.quants import quantize

    cfg = TinyConfig(arch="qwen3moe", n_layer=3, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_expert=8,
                     n_expert_used=2, n_ff_exp=256, seed=4)
    path = tmp_path / "moe.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    p = plan(path, n_ctx=128, n_batch=64, n_threads=2, cpu_memory="256MiB")
    cpu = p.device("CPU")
    assert cpu.weights == sum(tensor_bytes(path).values())
    with Model(path, n_ctx=128, n_batch=64, n_threads=2) as m:
        mem = {d["name"]: d for d in m._engine().memory}
    engine = mem["CPU"]
    assert (cpu.buffers, cpu.weights, cpu.kv_cache) == (engine["buffers"], engine["weights"], engine["kv"])


def test_experts_gpu_split_plan_matches_engine(tmp_path, fake_gpu):
    """A mixture of experts with two blocks on the (fake) GPU: their routers and experts stay in
    host memory, and the plan's bytes per device are those the loaded model holds; host and
    device weights add up to the file's tensors (each device tensor 256-byte aligned)."""
    from splitllm.quants import quantize

    cfg = TinyConfig(arch="qwen3moe", n_layer=3, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_expert=8,
                     n_expert_used=2, n_ff_exp=256, seed=4)
    path = tmp_path / "moe.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    p = plan(path, n_ctx=128, n_batch=64, n_threads=2, n_gpu_layers=3, gpu_memory="1GiB")
    sizes = tensor_bytes(path)
    gpu_blocks = ("blk.1.", "blk.2.")
    host = [k for k in sizes if k.startswith(gpu_blocks) and ("_exps." in k or "ffn_gate_inp." in k)]
    device = [k for k in sizes if k.startswith(("blk.1.", "blk.2.", "output")) and k not in host]
    assert p.device("CPU").weights == sum(sizes.values()) - sum(sizes[k] for k in device)
    raw = sum(sizes[k] for k in device)
    assert raw <= p.device("FAKEGPU0").weights <= raw + 256 * len(device)
    assert [lp.name for lp in p.layers if lp.device == "CPU"] == [
        "token_embd", "blk.0", "blk.1.experts", "blk.2.experts"]
    with pytest.warns(RuntimeWarning, match="host memory"):
        m = Model(path, n_ctx=128, n_batch=64, n_threads=2, n_gpu_layers=3)
    with m:
        mem = {d["name"]: d for d in m._engine().memory}
    for d in p.devices:
        got = mem[d.name]
        assert (d.weights, d.kv_cache, d.buffers) == (got["weights"], got["kv"], got["buffers"]), d.name


@pytest.mark.parametrize("kind", ["encoder", "gpt-oss"])
def test_encoder_and_gpt_oss_plans_match_engine(tmp_path, kind):
    """An encoder (EmbeddingGemma: its attention buffers, one set per thread) and gpt-oss (sinks,
    biased experts, sliding-window rings): the plan's bytes are the engine's."""
    if kind == "encoder":
        cfg = TinyConfig(arch="gemma-embedding", n_layer=2, n_embd=64, n_head=4, n_head_kv=1, key_length=32,
                         sliding_window=8, seed=3)
    else:
        cfg = TinyConfig(arch="gpt-oss", n_layer=3, n_embd=64, n_head=4, n_head_kv=2, n_expert=4,
                         n_expert_used=2, n_ff_exp=64, sliding_window=8, seed=3)
    path = tmp_path / f"{kind}.gguf"
    write_gguf(make_weights(cfg), path)
    p = plan(path, n_ctx=128, n_batch=64, n_threads=2)
    cpu = p.device("CPU")
    with Model(path, n_ctx=128, n_batch=64, n_threads=2, embedding=kind == "encoder") as m:
        engine = {d["name"]: d for d in m._engine().memory}["CPU"]
    assert (cpu.buffers, cpu.weights, cpu.kv_cache) == (engine["buffers"], engine["weights"], engine["kv"])
    assert cpu.weights == sum(tensor_bytes(path).values())


def test_gpu_split_plan_matches_engine(synthetic, fake_gpu):
    cfg, path = synthetic
    sizes = tensor_bytes(path)
    p = plan(path, n_ctx=128, n_batch=32, n_threads=2, n_gpu_layers=3, gpu_memory="1GiB")
    assert p.n_gpu_layers == 3
    gpu = p.device("FAKEGPU0")
    assert [lp.device for lp in p.layers] == ["CPU", "CPU", "CPU", "FAKEGPU0", "FAKEGPU0", "FAKEGPU0"]
    # The GPU holds the output layer and the last two blocks (and their KV cache).
    on_gpu = [f"blk.{i}." for i in (2, 3)]
    gpu_tensors = [k for k in sizes if any(k.startswith(b) for b in on_gpu)] + [
        "output.weight",
        "output_norm.weight",
    ]
    raw = sum(sizes[k] for k in gpu_tensors)
    assert raw <= gpu.weights <= raw + 256 * len(gpu_tensors)  # each tensor 256-byte aligned
    assert gpu.kv_cache == 2 * p.kv_bytes_per_token // cfg.n_layer * 128
    with Model(path, n_ctx=128, n_batch=32, n_threads=2, n_gpu_layers=3) as m:
        mem = {d["name"]: d for d in m._engine().memory}
    for d in p.devices:
        got = mem[d.name]
        assert (d.weights, d.kv_cache, d.buffers) == (got["weights"], got["kv"], got["buffers"]), d.name


def test_auto_picks_most_layers_that_fit(synthetic, fake_gpu):
    cfg, path = synthetic
    n_parts = cfg.n_layer + 1
    totals = [
        plan(path, n_ctx=128, n_threads=2, n_gpu_layers=n, gpu_memory="1GiB") for n in range(n_parts + 1)
    ]
    gpu_totals = [sum(d.total for d in t.devices if d.name != "CPU") for t in totals]
    # With no layer on the GPU it still holds the op-offload buffers for large CPU batches, and
    # with every block there it no longer does: the totals are not monotonic.

    def expected(budget: int) -> int:
        return max((n for n in range(1, n_parts + 1) if gpu_totals[n] + DEFAULT_MARGIN <= budget), default=0)

    for n in range(1, n_parts + 1):
        for budget in (gpu_totals[n] + DEFAULT_MARGIN, gpu_totals[n] + DEFAULT_MARGIN - 1):
            got = plan(path, n_ctx=128, n_threads=2, n_gpu_layers="auto", gpu_memory=budget).n_gpu_layers
            assert got == expected(budget), budget
    assert expected(gpu_totals[n_parts] + DEFAULT_MARGIN) == n_parts
    low = min(gpu_totals[1:]) + DEFAULT_MARGIN - 1
    nothing = plan(path, n_ctx=128, n_threads=2, n_gpu_layers="auto", gpu_memory=low)
    assert nothing.n_gpu_layers == 0 and any("not even the output layer" in n for n in nothing.notes)
    # Model accepts "auto" too, the budget then being the free memory the GPU reports (whole MiB
    # for the fake GPU: a longer context makes each layer's KV cache about a MiB).
    ctx = 8192
    big = [
        sum(
            d.total
            for d in plan(path, n_ctx=ctx, n_threads=2, n_gpu_layers=n, gpu_memory="1GiB").devices
            if d.name != "CPU"
        )
        for n in range(n_parts + 1)
    ]
    mem_mib = (big[2] + DEFAULT_MARGIN) // MiB + 1
    want = max(n for n in range(n_parts + 1) if big[n] + DEFAULT_MARGIN <= mem_mib * MiB)
    assert 2 <= want < n_parts
    os.environ["SPLITLLM_FAKE_GPU_MEM"] = str(mem_mib)
    try:
        with Model(path, n_ctx=ctx, n_threads=2, n_gpu_layers="auto") as m:
            devices = [p["device"] for p in m.placement]
    finally:
        del os.environ["SPLITLLM_FAKE_GPU_MEM"]
    assert devices == ["CPU"] * (n_parts + 1 - want) + ["FAKEGPU0"] * want


def test_auto_without_gpu_is_zero(synthetic):
    _, path = synthetic
    p = plan(path, n_ctx=128, n_threads=2, n_gpu_layers="auto")
    assert p.n_gpu_layers == 0 and [d.name for d in p.devices] == ["CPU"]
    assert any("no GPU" in n for n in p.notes)


def test_cache_fraction_and_max_ctx(synthetic):
    _, path = synthetic
    base = plan(path, n_ctx=1024, n_threads=2, cpu_memory="64MiB")
    cpu = base.device("CPU")
    per_token = base.kv_bytes_per_token
    # The largest context: the plan at max_ctx fits, one more token does not.
    assert plan(path, n_ctx=base.max_ctx, n_threads=2, cpu_memory="64MiB").fits
    assert not plan(path, n_ctx=base.max_ctx + 1, n_threads=2, cpu_memory="64MiB").fits
    # cache_fraction: the KV cache takes that fraction of what is left after everything else.
    half = plan(path, n_ctx=1024, n_threads=2, cpu_memory="64MiB", cache_fraction=0.5)
    left = 64 * MiB - cpu.weights - cpu.buffers - cpu.overhead
    assert abs(half.cache_tokens - int(0.5 * left // per_token)) <= 64  # buffers shift a little with n_ctx
    assert half.n_ctx == half.cache_tokens and half.device("CPU").kv_cache == per_token * half.cache_tokens
    with pytest.raises(ValueError):
        plan(path, cache_fraction=1.5)


def test_parse_size():
    assert parse_size("24GiB") == 24 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError):
        parse_size("lots")


def test_cli_table_and_json(synthetic, capsys):
    _, path = synthetic
    assert cli_main(["plan", str(path), "-c", "512", "-ctk", "q8_0", "--cpu-memory", "1GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["type_k"] == "q8_0" and out["devices"][0]["name"] == "CPU" and out["fits"]
    assert out["total"] == sum(d["total"] for d in out["devices"])
    assert cli_main(["plan", str(path), "-c", "512", "--cpu-memory", "1GiB"]) == 0
    table = capsys.readouterr().out
    assert "weights" in table and "KV cache" in table and "CPU" in table
    assert cli_main(["plan", str(path), "-c", "512", "--cpu-memory", "1MiB"]) == 1  # does not fit


MEASURE = r"""
import gc, sys, json, numpy as np, psutil
import splitllm, splitllm.tokenizer, jinja2, tokenizers, sentencepiece
from splitllm import Model
from splitllm.plan import plan
path, n_ctx, kv = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = plan(path, n_ctx=n_ctx, n_threads=2, type_k=kv, type_v=kv)
gc.collect()
before = psutil.Process().memory_info().rss
m = Model(path, n_ctx=n_ctx, n_threads=2, type_k=kv, type_v=kv)
m.eval_prompt(np.random.default_rng(0).integers(0, m.n_vocab(), n_ctx).tolist())
print(json.dumps({"plan": p.total, "rss": psutil.Process().memory_info().rss - before}))
"""


@pytest.mark.parametrize("n_ctx", [2048, 8192])
@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
def test_plan_predicts_resident_memory(smollm2_path, n_ctx, kv):
    """SmolLM2 after a prompt has filled the context: the plan's total within 5% of the RSS the
    model added to a fresh process (mapped file pages counted)."""
    env = dict(os.environ)
    env.pop("SPLITLLM_FAKE_GPU", None)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(smollm2_path), str(n_ctx), kv],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    r = json.loads(out.stdout)
    print(f"\nn_ctx {n_ctx} KV {kv}: plan {r['plan'] / MiB:.1f} MiB, measured {r['rss'] / MiB:.1f} MiB")
    assert abs(r["rss"] / r["plan"] - 1) < 0.05


def test_kv_memory_halves_and_quarters(smollm2_path):
    plans = {kv: plan(smollm2_path, n_ctx=4096, type_k=kv, type_v=kv) for kv in ("f16", "q8_0", "q4_0")}
    f16 = plans["f16"].kv_bytes_per_token
    assert f16 == 2 * 30 * 3 * 64 * 2
    assert plans["q8_0"].kv_bytes_per_token / f16 == pytest.approx(34 / 64)
    assert plans["q4_0"].kv_bytes_per_token / f16 == pytest.approx(18 / 64)


def test_parallel_slots(synthetic, capsys):
    """--parallel N: N sequence slots share n_ctx; the largest context is searched from N cells
    up, and a context smaller than the slot count is a clear error (exit code 2)."""
    _, path = synthetic
    args = ["plan", str(path), "-c", "512", "--parallel", "4", "--cpu-memory", "1GiB", "--json"]
    assert cli_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["max_ctx"] > 512
    assert cli_main(["plan", str(path), "-c", "2", "--parallel", "4"]) == 2
    assert "n_seq_max" in capsys.readouterr().err
