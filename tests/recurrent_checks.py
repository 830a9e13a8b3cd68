"""Checks shared by the models that keep a recurrent state per sequence beside their KV cache
(lfm2's short convolutions, granitehybrid's and nemotron_h's Mamba-2 layers): each takes the
model file and ``ref(tokens) -> logits (n, n_vocab)``, the float64 reference of that model."""

from __future__ import annotations

import os
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
