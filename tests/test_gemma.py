"""Gemma, Gemma 2 and Gemma 3 in the engine, on tiny random models: against the numpy float64
re-implementation of transformers' Gemma models (tests/tiny_model.py) and against llama.cpp on
the same files.

What sets them apart from llama: embeddings times sqrt(n_embd), GeGLU (tanh gelu), NEOX rotation;
gemma2/3 RMS-norm the attention and feed-forward outputs before adding them, and interleave
sliding-window layers (a query sees the last n_swa positions) with global ones; gemma3 norms each
query/key head and rotates its sliding layers with a base of their own; gemma2 soft-caps the
attention scores and the logits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import GGUFError, Model
from splitllm.quants import quantize
from test_engine import wait_finished
from tiny_model import BF16_ENGINE_TOL, F32_LOGITS_TOL, TinyConfig, make_weights, reference_logits, write_gguf

# 24 tokens: past every window below, so the windows bite.
TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]

GEMMA = TinyConfig(arch="gemma", key_length=32, tied_output=True, seed=31)
GEMMA2 = TinyConfig(arch="gemma2", n_layer=4, sliding_window=5, attn_softcap=1.5, final_softcap=5.0,
                    tied_output=True, seed=32)
GEMMA3 = TinyConfig(arch="gemma3", n_layer=7, sliding_window=5, rope_base=1e6, key_length=32, seed=33)
GEMMA3_SCALED = TinyConfig(arch="gemma3", n_layer=7, sliding_window=6, rope_base=1e6, tied_output=True,
                           rope_scaling={"rope_type": "linear", "factor": 8.0}, n_head_kv=1, seed=34)
CONFIGS = [GEMMA, GEMMA2, GEMMA3, GEMMA3_SCALED]
RING = dict(n_ctx=64, n_batch=4, n_threads=2)  # GEMMA3's sliding layers: rings of 5 + 4 cells, global 64
IDS = ["gemma", "gemma2-softcap", "gemma3", "gemma3-linear-mqa-tied"]


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Relative L2 error of each row."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def tiny(tmp_path, cfg: TinyConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-{cfg.arch}.gguf"
    held = write_gguf(make_weights(cfg), path, **kw)
    return str(path), held


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, ref).max() < F32_LOGITS_TOL


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=IDS[1:])
def test_each_difference_is_visible(cfg):
    """The reference without the window, with gemma3's sliding layers at the global base, without
    the soft caps: each far from the real thing on TOKENS, so the tests above can fail."""
    held = make_weights(cfg).weights
    ref = reference_logits(cfg, held, TOKENS)
    variants = [replace(cfg, sliding_window=0)]
    if cfg.arch == "gemma3":
        variants.append(replace(cfg, rope_base_swa=cfg.rope_base))
    if cfg.attn_softcap:
        variants.append(replace(cfg, attn_softcap=0.0))
        variants.append(replace(cfg, final_softcap=0.0))
    for v in variants:
        assert rel_err(reference_logits(v, held, TOKENS), ref).max() > 1e-2


@pytest.mark.parametrize("cfg", [GEMMA2, GEMMA3], ids=["gemma2", "gemma3"])
@pytest.mark.parametrize("n_batch", [1, 4, 64])
def test_decode_paths_agree(tmp_path, cfg, n_batch):
    """Token by token through the KV cache (a window then slides over the cache) and prompts cut
    into small batches (a batch's queries see different windows; with n_batch 1 and 4 the sliding
    layers' caches are rings of 6 and 9 cells)."""
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_batch=n_batch, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4
        m.reset()
        steps = np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(len(TOKENS))])
    assert rel_err(steps, ref).max() < 1e-4


def test_two_sequences_in_one_batch(tmp_path):
    from splitllm import _core

    path, held = tiny(tmp_path, GEMMA3)
    other = TOKENS[::-1]
    m = _core.Model(path, n_ctx=128, n_seq_max=2, n_threads=2)
    n = len(TOKENS)
    tokens = np.array(TOKENS + other, np.int32)
    pos = np.concatenate([np.arange(n), np.arange(n)]).astype(np.int32)
    slot = np.array([0] * n + [1] * n, np.int32)
    out = m.decode(tokens, pos, slot)
    assert rel_err(out[:n], reference_logits(GEMMA3, held, TOKENS)).max() < 1e-4
    assert rel_err(out[n:], reference_logits(GEMMA3, held, other)).max() < 1e-4


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
@pytest.mark.parametrize("n_batch", [512, 4], ids=["full-cache", "ring-cache"])
def test_quantized_kv_cache(tmp_path, kv, n_batch):
    """Sliding windows over a quantized cache (rows read from the window's first cell; with n_batch
    4 from rings of 9 cells that the prompt wraps around)."""
    cfg = TinyConfig(arch="gemma3", n_layer=7, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, sliding_window=5,
                     rope_base=1e6, seed=35)
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_batch=n_batch, n_threads=2, type_k=kv, type_v=kv) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < {"q8_0": 2e-2, "q4_0": 1e-1}[kv]


# Budgets as tests/test_model_reference.py's: the engine's error on the weights the file holds.
BUDGETS = {"F16": 2e-3, "BF16": BF16_ENGINE_TOL, "Q8_0": 2e-2, "Q6_K": 2e-2, "Q5_K": 2e-2, "Q5_0": 2e-2,
           "Q4_K": 2e-2, "Q4_0": 2e-2, "Q3_K": 3e-2, "Q2_K": 3e-2}


@pytest.mark.parametrize("wtype", list(BUDGETS))
def test_quantized_weights_within_budget(tmp_path, wtype):
    cfg = TinyConfig(arch="gemma3", n_layer=7, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, sliding_window=6,
                     rope_base=1e6, seed=36)
    path, held = tiny(tmp_path, cfg, weight_type=wtype, quantize=quantize)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, reference_logits(cfg, held, TOKENS)).max() < BUDGETS[wtype]


def test_swa_pattern_from_metadata(tmp_path):
    """attention.sliding_window_pattern as one flag per layer (llama.cpp's array form) and as a
    period; the reference follows the same layers."""
    cfg = TinyConfig(arch="gemma3", n_layer=6, sliding_window=4, swa_pattern=3, write_swa_pattern=True,
                     rope_base=1e6, seed=37)
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    other = replace(cfg, swa_pattern=6)
    assert rel_err(reference_logits(other, held, TOKENS), ref).max() > 1e-2
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4
    period = str(tmp_path / "period.gguf")
    no_flags = replace(cfg, write_swa_pattern=False)
    write_gguf(make_weights(no_flags), period, metadata={"gemma3.attention.sliding_window_pattern": 3})
    with Model(period, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4


def test_config_reports_sliding_layers(tmp_path):
    from splitllm import _core

    path, _ = tiny(tmp_path, GEMMA3)
    c = _core.Model(path, n_ctx=64).config
    assert (c["arch"], c["n_swa"], c["swa_layers"]) == ("gemma3", 5, [0, 1, 2, 3, 4, 6])
    path, _ = tiny(tmp_path, GEMMA2)
    assert _core.Model(path, n_ctx=64).config["swa_layers"] == [0, 2]


def test_gemma3_without_window_is_global(tmp_path):
    """No attention.sliding_window (or 0): every layer global, at the global base (llama.cpp)."""
    cfg = TinyConfig(arch="gemma3", n_layer=7, rope_base=1e6, seed=38)
    path, held = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), reference_logits(cfg, held, TOKENS)).max() < 1e-4


def test_bad_metadata_and_tensors_are_named(tmp_path):
    path = tmp_path / "bad.gguf"
    cfg = TinyConfig(arch="gemma3", n_layer=6, sliding_window=4, swa_pattern=3, write_swa_pattern=True,
                     seed=39)
    model = make_weights(cfg)
    write_gguf(model, path, metadata={"gemma3.attention.sliding_window_pattern": [True, False]})
    with pytest.raises(GGUFError, match=r"sliding_window_pattern' has 2 flags for 6 layers"):
        Model(path, n_ctx=64)
    write_gguf(model, path, metadata={"gemma3.rope.freq_base_swa": -1.0})
    with pytest.raises(GGUFError, match=r"gemma3.rope.freq_base_swa' = -1 must be positive"):
        Model(path, n_ctx=64)
    del model.weights["blk.2.post_ffw_norm.weight"]
    write_gguf(model, path)
    with pytest.raises(GGUFError, match=r"tensor 'blk.2.post_ffw_norm.weight' is missing"):
        Model(path, n_ctx=64)
    untied = make_weights(TinyConfig(arch="gemma2", seed=40))
    write_gguf(untied, path)
    with pytest.raises(GGUFError, match=r"'output.weight' is not expected: gemma2 ties"):
        Model(path, n_ctx=64)


def test_split_across_devices_is_bitwise(tmp_path, monkeypatch):
    """Through the fake GPU (the CPU kernels behind the GPU interface): post-norms, adds, both
    rotary tables and the windows on the device side give the CPU's logits exactly."""
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    path, _ = tiny(tmp_path, GEMMA3)
    with Model(path, **RING) as m:
        cpu = m.logits(TOKENS)
    for ngl in (3, -1):
        with Model(path, n_gpu_layers=ngl, **RING) as m:  # rings on the device side too
            assert {p["device"] for p in m.placement} == {"CPU", "FAKEGPU0"}
            np.testing.assert_array_equal(m.logits(TOKENS), cpu)


@pytest.mark.reference
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_llama_cpp(tmp_path, cfg):
    """llama.cpp reads the same file: its logits agree with ours and with the float64 reference
    (so the reference's windows, rotary bases and caps are llama.cpp's)."""
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(theirs, ref).max() < 1e-3  # llama.cpp's f16 KV cache and f16 gelu table
    assert rel_err(ours, theirs).max() < 1e-3


@pytest.mark.reference
def test_27b_query_scale(tmp_path):
    """Gemma 2 27B (46 layers) scales queries by 1 / sqrt(n_embd / n_head), not by the head size:
    llama.cpp recognises the model by its depth, and so does splitllm (a 46-layer tiny model whose
    head size is not n_embd / n_head)."""
    cfg = TinyConfig(arch="gemma2", n_layer=46, n_embd=64, n_head=2, n_head_kv=1, key_length=16, n_ff=64,
                     sliding_window=5, attn_softcap=20.0, final_softcap=10.0, tied_output=True,
                     query_scale=1 / np.sqrt(32), seed=41)
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    assert rel_err(reference_logits(replace(cfg, query_scale=None), held, TOKENS),
                   ref).max() > 1e-2
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(theirs, ref).max() < 1e-3
    assert rel_err(ours, ref).max() < F32_LOGITS_TOL


# ---- the sliding-window layers' own small cache (a ring of n_swa + n_batch cells) ----



def test_ring_cache_sizes_and_plan(tmp_path):
    """The sliding-window layers hold n_swa + n_batch cells, the global ones n_ctx, in the model
    and in the plan made from the header; swa_full gives every layer n_ctx; the plan's largest
    context grows accordingly."""
    from splitllm.plan import plan

    path, _ = tiny(tmp_path, GEMMA3)
    row = 2 * GEMMA3.head_dim * GEMMA3.n_head_kv * 2  # K and V rows of every KV head, f16
    for swa_full, ring in ((False, 9), (True, 64)):
        with Model(path, swa_full=swa_full, **RING) as m:
            kv = {p["name"]: p["kv_bytes"] for p in m.placement if p["kv_bytes"]}
            p = plan(path, n_ctx=64, n_batch=4, swa_full=swa_full, cpu_memory="1GiB")
        want = {f"blk.{i}": row * (ring if GEMMA3.is_swa(i) else 64) for i in range(GEMMA3.n_layer)}
        assert kv == want
        assert {lp.name: lp.kv_bytes for lp in p.layers if lp.kv_bytes} == want
        assert p.kv_bytes == sum(want.values())
        assert p.swa_cells == (0 if swa_full else 9)
        assert p.kv_bytes_per_token == row * (1 if not swa_full else GEMMA3.n_layer)
    small = plan(path, n_ctx=64, n_batch=4, cpu_memory="40MiB").max_ctx
    full = plan(path, n_ctx=64, n_batch=4, cpu_memory="40MiB", swa_full=True).max_ctx
    assert small is not None and full is not None and small > 4 * full


def test_plan_cli_swa_full(tmp_path, capsys):
    import json

    from splitllm.cli import main

    path, _ = tiny(tmp_path, GEMMA3)
    for extra, cells in (([], 9), (["--swa-full"], 0)):
        assert main(["plan", path, "-c", "64", "-b", "4", "--cpu-memory", "1GiB", "--json", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["swa_cells"] == cells
    assert main(["plan", path, "-c", "64", "-b", "4", "--cpu-memory", "1GiB"]) == 0
    assert "the sliding-window layers hold 9 cells each" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("swa_full", [False, True])
def test_prefix_reuse_with_a_ring(tmp_path, swa_full):
    """A prompt sharing a prefix with the cached one: with swa_full the prefix is reused; with the
    ring, positions past the prefix have taken the cells the next token attends to, so the prompt is
    read again from the start. Either way the logits are the reference's."""
    path, held = tiny(tmp_path, GEMMA3)
    other = TOKENS[:16] + [5, 6, 7, 8]
    with Model(path, swa_full=swa_full, **RING) as m:
        m.eval_prompt(TOKENS)
        n0 = m.n_eval
        got = m.eval_prompt(other)
        assert m.n_eval - n0 == (4 if swa_full else len(other))
        # appending to the cached prompt always continues it
        n1 = m.n_eval
        longer = other + [9, 10, 11]
        got_longer = m.eval_prompt(longer)
        assert m.n_eval - n1 == 3
    assert rel_err(got, reference_logits(GEMMA3, held, other)[-1]).max() < 1e-4
    assert rel_err(got_longer, reference_logits(GEMMA3, held, longer)[-1]).max() < 1e-4


def test_ring_refuses_what_it_no_longer_holds(tmp_path):
    """The engine itself refuses a batch attending to positions its rings have lost (a caller that
    does not ask kv_reusable first), and continuing a sequence is allowed."""
    from splitllm import Error, _core

    path, _ = tiny(tmp_path, GEMMA3)
    m = _core.Model(path, **RING)
    assert m.swa_cells == 9
    toks = np.array(TOKENS, np.int32)
    m.decode(toks[:20], np.arange(20, dtype=np.int32), np.zeros(20, np.int32))
    assert m.kv_reusable(0, 20) == 20 and m.kv_reusable(0, 12) == 0
    with pytest.raises(Error, match=r"no longer holds"):
        m.decode(toks[12:13], np.array([12], np.int32), np.zeros(1, np.int32))
    with pytest.raises(Error, match=r"must be consecutive"):
        m.decode(toks[20:22], np.array([20, 22], np.int32), np.zeros(2, np.int32))
    m.decode(toks[20:21], np.array([20], np.int32), np.zeros(1, np.int32))


def test_state_with_a_ring(tmp_path):
    """A saved state holds the last positions its rings still hold (here 5 of the 9 cells: the
    cache went 4 positions further before coming back); loaded into another model it continues the
    text as the reference does, and its bytes are fewer than swa_full's."""
    path, held = tiny(tmp_path, GEMMA3)
    with Model(path, **RING) as m:
        m.eval_prompt(TOKENS[:20])
        m.eval_prompt(TOKENS[:24])
        m.eval_prompt(TOKENS[:20])  # continued from position 19: the rings now hold 15..19 of the 20
        state = m.save_state()
    with Model(path, swa_full=True, **RING) as m:
        m.eval_prompt(TOKENS[:20])
        assert len(m.save_state().llama_state) > len(state.llama_state)
    with Model(path, **RING) as m:
        m.load_state(state)
        n0 = m.n_eval
        got = m.eval_prompt(TOKENS)
        assert m.n_eval - n0 == 4
    assert rel_err(got, reference_logits(GEMMA3, held, TOKENS)[-1]).max() < 1e-4


def test_batch_engine_with_rings(tmp_path):
    """Two sequences at once in the batching engine, each slot with its own rings, then a prompt
    that shares a prefix with a slot's (read again from the start where the ring lost it): the
    first logits of each are the reference's."""
    from splitllm.engine import BatchEngine
    from splitllm.sampling import SamplingParams

    path, held = tiny(tmp_path, GEMMA3)
    prompts = [TOKENS, TOKENS[::-1][:18], TOKENS[:14] + [3, 4]]
    with Model(path, n_ctx=128, n_batch=4, n_seq_max=2, n_threads=2) as m:
        eng = BatchEngine(m)
        try:
            greedy = SamplingParams(temperature=0)
            jobs = [eng.submit(p, on_event=lambda ev: None, params=greedy, max_tokens=1) for p in prompts[:2]]
            firsts = []
            for job in jobs:
                wait_finished(job)
                firsts.append(eng._slots[job.slot].logits.copy())
            job = eng.submit(prompts[2], on_event=lambda ev: None, params=greedy, max_tokens=1)
            wait_finished(job)
            firsts.append(eng._slots[job.slot].logits.copy())
        finally:
            eng.close()
    for p, got in zip(prompts, firsts, strict=True):
        assert rel_err(got, reference_logits(GEMMA3, held, p)[-1]).max() < 1e-4


def test_repeated_prompt_after_generating_past_the_ring(tmp_path):
    """The same prompt asked again after a completion longer than the ring: its first logits are
    not taken from the cache when the rings have lost what the next token attends to (the prompt is
    read again), in Model and in the batching engine; the second completion equals the first."""
    from itertools import islice

    from splitllm.engine import BatchEngine
    from splitllm.sampling import SamplingParams

    path, held = tiny(tmp_path, GEMMA3)
    prompt = TOKENS[:8]
    with Model(path, **RING) as m:
        runs = []
        for _ in range(2):  # 12 tokens: positions 8..19 take every cell of the 9-cell rings
            assert rel_err(m.eval_prompt(prompt), reference_logits(GEMMA3, held, prompt)[-1]) < 1e-4
            runs.append(list(islice(m.generate(prompt, temp=0.0), 12)))
        assert runs[0] == runs[1] and len(runs[0]) == 12
    with Model(path, n_ctx=128, n_batch=4, n_threads=2) as m:
        eng = BatchEngine(m)
        try:
            texts = []
            for _ in range(2):
                events: list = []
                job = eng.submit(prompt, on_event=events.append, params=SamplingParams(temperature=0),
                                 max_tokens=12)
                wait_finished(job)
                assert not any(isinstance(e, BaseException) for e in events), events
                texts.append(("".join(e.text for e in events), job.n_past))
        finally:
            eng.close()
    assert texts[0] == texts[1] and texts[0][1] >= len(prompt) + 11


def test_plan_with_rings_matches_the_model(tmp_path):
    """Buffers (the second rotary tables), KV caches and weights of a Gemma 3 plan equal what the
    model holds; cache_fraction with several sequence slots sizes the context."""
    from splitllm.plan import plan

    path, _ = tiny(tmp_path, GEMMA3)
    p = plan(path, n_ctx=64, n_batch=4, n_threads=2, cpu_memory="1GiB")
    with Model(path, **RING) as m:
        mem = {d["name"]: d for d in m._engine().memory}
    cpu = p.device("CPU")
    got = mem["CPU"]
    assert (cpu.buffers, cpu.weights, cpu.kv_cache) == (got["buffers"], got["weights"], got["kv"])
    q = plan(path, n_ctx=64, n_batch=4, n_threads=2, n_seq_max=2, cpu_memory="64MiB", cache_fraction=0.5)
    assert q.cache_tokens is not None and q.cache_tokens >= 2 and q.n_ctx == q.cache_tokens


@pytest.mark.parametrize("metadata,swa_layers", [
    ({"gemma3.attention.sliding_window_pattern": 1}, []),   # a period of 1: no layer slides
    ({"gemma3.final_logit_softcapping": 0.0}, [0, 1, 2, 3, 4]),  # 0: no capping, as llama.cpp
])
def test_metadata_edge_cases(tmp_path, metadata, swa_layers):
    from splitllm import _core

    cfg = TinyConfig(arch="gemma3", n_layer=6, sliding_window=4, rope_base=1e6, seed=42)
    path = tmp_path / "edge.gguf"
    held = write_gguf(make_weights(cfg), path, metadata=metadata)
    m = _core.Model(str(path), n_ctx=64, n_batch=4)
    assert m.config["swa_layers"] == swa_layers
    assert m.swa_cells == (4 + 4 if swa_layers else 0)
    ref_cfg = cfg if swa_layers else replace(cfg, sliding_window=0)
    with Model(path, **RING) as mm:
        assert rel_err(mm.logits(TOKENS), reference_logits(ref_cfg, held, TOKENS)).max() < 1e-4
