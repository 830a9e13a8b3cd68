"""Checks shared by the models with a per-sequence recurrent state beside the KV cache (lfm2's
short convolutions, qwen35's delta nets), each against a float64 reference ``ref(tokens)`` that
returns the logits of tokens at positions 0..n-1."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np
import pytest
from lcpp import llama_cpp_greedy, llama_cpp_logits
from splitllm import Error, Model
from tiny_model import interleaved_batch

Reference = Callable[[list[int]], np.ndarray]
OPTS = dict(n_ctx=64, n_threads=2)


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def against_llama_cpp(path: str, ref: Reference, tokens: list[int], *, apart: float, greedy: bool) -> None:
    """llama.cpp on the same file: its logits within ``apart`` of ours, ours no farther from the
    float64 reference than 1.5x llama.cpp's distance (or 1e-4); with ``greedy`` the same 24 greedy
    tokens after the first 8."""
    theirs = llama_cpp_logits(path, tokens)
    with Model(path, **OPTS) as m:
        ours = m.logits(tokens)
        mine = list(islice(m.generate(tokens[:8], temp=0.0), 24))
    assert rel_err(ours, theirs).max() < apart
    exact = ref(tokens)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 1e-4)
    if greedy:
        assert mine == llama_cpp_greedy(path, tokens[:8], 24)


def chunked_prefill_then_decode(path: str, ref: Reference, tokens: list[int], n_batch: int) -> None:
    """A prompt in passes of n_batch tokens, then one token at a time: the logits of one pass over
    everything (the state carried from pass to pass)."""
    want = ref(tokens)
    with Model(path, n_batch=n_batch, **OPTS) as m:
        assert rel_err(m.logits(tokens), want).max() < 1e-4
        m.eval_prompt(tokens[:12])
        steps = [m.eval_prompt(tokens[: i + 1]) for i in range(12, len(tokens))]
        assert m.n_eval == 2 * len(tokens)  # each step read one token
    assert rel_err(np.array(steps), want[12:]).max() < 1e-4


def two_sequences_at_once(path: str, ref: Reference, tokens: list[int]) -> None:
    """Two texts interleaved in one batch (and then decoded together a token each): each slot's
    rows are those of the text alone."""
    texts = [tokens[:15], tokens[::-1][:11]]
    with Model(path, n_ctx=128, n_seq_max=2, n_threads=2) as m:
        core = m._engine()
        toks, pos, slot = interleaved_batch(texts)
        rows = core.decode(toks, pos, slot)
        i32 = np.int32
        nxt = core.decode(np.array([5, 9], i32), np.array([15, 11], i32), np.array([0, 1], i32))
    for k, t in enumerate(texts):
        want = ref(t + [[5, 9][k]])
        assert rel_err(rows[slot == k], want[:-1]).max() < 1e-4
        assert rel_err(nxt[k], want[-1]) < 1e-4


def continues_only_where_it_stopped(path: str, ref: Reference, tokens: list[int]) -> None:
    """A recurrent state cannot be cut back: a pass that does not continue a slot's last position
    (or skips one within a batch) is refused; position 0 starts the slot over."""
    with Model(path, n_ctx=64, n_seq_max=2, n_threads=2) as m:
        core = m._engine()
        core.decode(np.array(tokens[:6], np.int32), np.arange(6, dtype=np.int32), np.zeros(6, np.int32))
        assert core.kv_reusable(0, 6) == 6 and core.kv_reusable(0, 5) == 0 and core.kv_reusable(1, 3) == 0
        for p in (3, 7):
            with pytest.raises(Error, match="recurrent state"):
                core.decode(np.array([1], np.int32), np.array([p], np.int32), np.zeros(1, np.int32))
        with pytest.raises(Error, match="consecutive"):
            core.decode(np.array([1, 2], np.int32), np.array([6, 8], np.int32), np.zeros(2, np.int32))
        row = core.decode(np.array(tokens[:3], np.int32), np.arange(3, dtype=np.int32), np.zeros(3, np.int32))
    assert rel_err(row, ref(tokens[:3])).max() < 1e-4


def prefix_reuse(m: Model, ref: Reference, tokens: list[int]) -> None:
    """A prompt extending the cached one reads only the rest; one that shares only part of it is
    read again from the start (llama.cpp's recurrent cache: a full match or nothing)."""
    m.eval_prompt(tokens[:10])
    before = m.n_eval
    got = m.eval_prompt(tokens[:16])
    assert m.n_eval - before == 6
    assert rel_err(got, ref(tokens[:16])[-1]) < 1e-4
    other = tokens[:8] + [4, 5, 6]
    before = m.n_eval
    got = m.eval_prompt(other)
    assert m.n_eval - before == len(other)
    assert rel_err(got, ref(other)[-1]) < 1e-4
