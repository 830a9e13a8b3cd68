"""Checks shared by the models that keep a recurrent state per sequence beside their KV cache
(lfm2's short convolutions, granitehybrid's and nemotron_h's Mamba-2 layers): each takes the
model file and ``ref(tokens) -> logits (n, n_vocab)``, the float64 reference of that model."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from itertools import islice

import numpy as np
import pytest
from splitllm import Error, Model
from tiny_model import interleaved_batch

Reference = Callable[[list[int]], np.ndarray]
I32 = np.int32


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def same_greedy_as_llama_cpp(path: str | os.PathLike[str], prompt: list[int], n: int) -> None:
    """Our n greedy tokens after prompt are llama.cpp's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    with Model(os.fspath(path), n_ctx=64, n_threads=2) as m:
        ours = list(islice(m.generate(prompt, temp=0.0), n))
    llm = llama_cpp.Llama(os.fspath(path), n_ctx=64, verbose=False, n_threads=2)
    try:
        theirs = list(islice(llm.generate(prompt, temp=0.0, top_k=1, reset=True), n))
    finally:
        llm.close()
    assert ours == theirs


def chunked_prefill_then_decode(
    path: str, ref: Reference, tokens: list[int], n_batch: int, tol: float
) -> None:
    """A prompt in passes of n_batch tokens, then one token at a time: the logits of one pass over
    everything (the state carried from pass to pass)."""
    want = ref(tokens)
    with Model(path, n_ctx=64, n_batch=n_batch, n_threads=2) as m:
        assert rel_err(m.logits(tokens), want).max() < tol
        m.eval_prompt(tokens[:12])
        steps = [m.eval_prompt(tokens[: i + 1]) for i in range(12, len(tokens))]
        assert m.n_eval == 2 * len(tokens)  # each step read one token
    assert rel_err(np.array(steps), want[12:]).max() < tol


def against_llama_cpp(path: str, ref: Reference, tokens: list[int], *, apart: float, greedy: bool) -> None:
    """llama.cpp on the same file: its logits within ``apart`` of ours, ours no farther from the
    float64 reference than 1.5x llama.cpp's distance (or 1e-4); with ``greedy`` the same 24 greedy
    tokens after the first 8."""
    from lcpp import llama_cpp_logits  # noqa: PLC0415 - (lcpp imports llama-cpp-python lazily too)

    theirs = llama_cpp_logits(path, tokens)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(tokens)
    assert rel_err(ours, theirs).max() < apart
    exact = ref(tokens)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 1e-4)
    if greedy:
        same_greedy_as_llama_cpp(path, tokens[:8], 24)


def two_sequences_equal_each_alone(path: str, ref: Reference, tokens: list[int], tol: float) -> None:
    """Two texts interleaved in one batch, then decoded together a token each: each slot's rows
    are those of the text alone."""
    texts = [tokens[:15], tokens[::-1][:11]]
    with Model(path, n_ctx=128, n_seq_max=2, n_threads=2) as m:
        core = m._engine()
        toks, pos, slot = interleaved_batch(texts)
        rows = core.decode(toks, pos, slot)
        nxt = core.decode(np.array([5, 9], I32), np.array([15, 11], I32), np.array([0, 1], I32))
    for k, t in enumerate(texts):
        want = ref(t + [[5, 9][k]])
        assert rel_err(rows[slot == k], want[:-1]).max() < tol
        assert rel_err(nxt[k], want[-1]) < tol


def slot_continues_only_where_it_stopped(path: str, ref: Reference, tokens: list[int], tol: float) -> None:
    """A state cannot be cut back: a pass that does not continue a slot's last position (or skips
    one within a batch) is refused; position 0 starts the slot over."""
    with Model(path, n_ctx=64, n_seq_max=2, n_threads=2) as m:
        core = m._engine()
        core.decode(np.array(tokens[:6], I32), np.arange(6, dtype=I32), np.zeros(6, I32))
        assert core.kv_reusable(0, 6) == 6 and core.kv_reusable(0, 5) == 0 and core.kv_reusable(1, 3) == 0
        for p in (3, 7):
            with pytest.raises(Error, match="recurrent state"):
                core.decode(np.array([1], I32), np.array([p], I32), np.zeros(1, I32))
        with pytest.raises(Error, match="consecutive"):
            core.decode(np.array([1, 2], I32), np.array([6, 8], I32), np.zeros(2, I32))
        row = core.decode(np.array(tokens[:3], I32), np.arange(3, dtype=I32), np.zeros(3, I32))
    assert rel_err(row, ref(tokens[:3])).max() < tol


def prefix_reused_only_where_the_state_is(path: str, ref: Reference, tokens: list[int], tol: float) -> None:
    """A prompt extending the cached one reads only the rest; one that shares only part of it is
    read again from the start (llama.cpp's recurrent cache: a full match or nothing)."""
    with Model(path, n_ctx=64, n_threads=2) as m:
        m.eval_prompt(tokens[:10])
        before = m.n_eval
        got = m.eval_prompt(tokens[:16])
        assert m.n_eval - before == 6
        assert rel_err(got, ref(tokens[:16])[-1]) < tol
        other = tokens[:8] + [4, 5, 6]
        before = m.n_eval
        got = m.eval_prompt(other)
        assert m.n_eval - before == len(other)
        assert rel_err(got, ref(other)[-1]) < tol
        # the same prompt after generating past it: its logits again, then the same continuation
        runs = [list(islice(m.generate(tokens[:8], temp=0.0), 6)) for _ in range(2)]
        assert runs[0] == runs[1]
        assert rel_err(m.eval_prompt(tokens[:8]), ref(tokens[:8])[-1]) < tol


def state_saved_and_loaded(path: str, ref: Reference, tokens: list[int], tol: float) -> None:
    """save_state keeps the recurrent states with the K/V; load_state puts them back, and a prompt
    continuing the saved one reads only its new tokens. A state of other positions than the saved
    tokens' is not reused."""
    with Model(path, n_ctx=64, n_threads=2) as m:
        m.eval_prompt(tokens[:12])
        state = m.save_state()
        m.eval_prompt(tokens[::-1][:9])  # another sequence in the cache
        m.load_state(state)
        before = m.n_eval
        got = m.eval_prompt(tokens[:20])
        assert m.n_eval - before == 8
        assert rel_err(got, ref(tokens[:20])[-1]) < tol
        data = m._engine().kv_read(0, 5)  # 5 of the 20 positions: the states are not those of 5
        m._engine().kv_write(0, 5, data)
        assert m._engine().kv_reusable(0, 5) == 0


def plan_equals_model(path: str) -> object:
    """The memory plan (from the header) and the loaded model agree on the CPU's buffers, weights and
    cache (the states counted with the K/V); returns the plan's CPU entry."""
    from splitllm.plan import plan

    opts = dict(n_ctx=64, n_batch=4, n_seq_max=2, n_threads=2)
    p = plan(path, cpu_memory="1GiB", **opts)
    with Model(path, **opts) as m:
        got = {d["name"]: d for d in m._engine().memory}["CPU"]
    cpu = p.device("CPU")
    assert (cpu.buffers, cpu.weights, cpu.kv_cache) == (got["buffers"], got["weights"], got["kv"])
    return cpu


def scan_parts_matter(
    ref: Callable[[dict[str, np.ndarray]], np.ndarray], held: dict[str, np.ndarray]
) -> None:
    """A state-space reference ``ref(weights) -> logits`` moves materially (past the first token)
    when the scan forgets its state (A -> -inf), the convolution's taps are reversed, the D skip is
    dropped or dt's bias moves: the comparisons against it see each of them."""
    want = ref(held)

    def changed(suffix: str, f: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (f(v) if k.endswith(suffix) else v) for k, v in held.items()}

    for weights in (
        changed("ssm_a", lambda a: a * 1e6),
        changed("ssm_conv1d.weight", lambda k: k[:, ::-1]),
        changed("ssm_d", np.zeros_like),
        changed("ssm_dt.bias", lambda b: b + 2.0),
    ):
        assert rel_err(ref(weights), want)[1:].min() > 1e-3


def batching_engine_slots(path: str, ref: Reference, tokens: list[int], n_ctx: int = 128) -> None:
    """Two prompts at once in the batching engine (the server's) over two slots, then a next turn
    continuing a slot's text (only its new tokens read) and a prompt sharing only part of one (read
    again): each first row is the reference's."""
    from splitllm.engine import BatchEngine  # noqa: PLC0415
    from splitllm.sampling import SamplingParams  # noqa: PLC0415

    greedy = SamplingParams(temperature=0)
    firsts, cached = [], []
    with Model(path, n_ctx=n_ctx, n_batch=4, n_seq_max=2, n_threads=2) as m:
        eng = BatchEngine(m)
        try:

            def run(prompts: list[list[int]]) -> list:
                jobs = [eng.submit(p, on_event=lambda ev: None, params=greedy, max_tokens=3) for p in prompts]
                for job in jobs:
                    deadline = time.monotonic() + 60
                    while not job.finished:
                        assert time.monotonic() < deadline
                        time.sleep(0.01)
                    firsts.append((job.prompt, eng._slots[job.slot].logits.copy()))
                    cached.append(job.n_cached)
                return jobs

            a, _ = run([tokens[:10], tokens[::-1][:7]])
            turn = list(a.tokens) + [9, 8, 7]  # the slot's whole text, then more
            run([turn])
            run([tokens[:6] + [1, 2, 3]])
        finally:
            eng.close()
    assert cached[2] == len(turn) - 3 and cached[3] == 0
    for prompt, got in firsts:
        assert rel_err(got, ref(list(prompt))[-1]) < 1e-4
