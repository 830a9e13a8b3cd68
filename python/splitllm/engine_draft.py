"""Speculative decoding in the batch engine (llama-server's ``--spec-type``, ``-md``, ``--spec-draft-*``).

Each step, a drafter guesses the next tokens of every decoding sequence; the engine puts each
sequence's last token and its guesses in the shared pass, and the sequence's own sampler picks
each next token from its position's rows, taking the next guess's row as long as the pick equals
the guess (llama.cpp's ``common_sampler_sample_and_accept_n``). The picks are the tokens the
sampler would have drawn without guesses (any settings and seed, grammars included): guesses only
decide how many positions one pass holds.

The caches need no explicit removal of rejected guesses: a slot's K/V cells are its positions, a
pass attends only to positions up to its own, and the next pass writes over the positions after
the last accepted token (the draft model's slots likewise: each keeps the list of tokens it holds
and reads only what differs from it).

Two drafters, as llama-server's types of the same names:

* :class:`ModelSlotDrafter` (``draft-simple``): a draft model of the same vocabulary loaded with
  one sequence slot per engine slot. Its greedy continuation of each sequence, all drafting
  sequences in one draft pass a token; it stops where its top token's probability is below
  ``p_min`` and gives nothing when it has fewer than ``n_min`` guesses. Each slot's draft cache
  follows that slot's text: only what changed since its last draft is read again.
* :class:`NgramSlotDrafter` (``ngram-simple``): no second model; the last ``size_n`` tokens
  looked up earlier in the sequence, and up to ``size_m`` tokens that followed them.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from splitllm.cache import common_prefix

SPEC_TYPES = ("none", "draft-simple", "ngram-simple")  # the --spec-type values splitllm serves


@dataclasses.dataclass(frozen=True, slots=True)
class SpecParams:
    """How many guesses a step may hold (llama-server's ``--spec-draft-n-max`` / ``-n-min`` /
    ``-p-min``, and a request's ``speculative.n_max`` / ``n_min`` / ``p_min``)."""

    n_max: int = 3
    n_min: int = 0
    p_min: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_max", "n_min"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"speculative {name} must be a non-negative integer (got {v!r})")
        if not 0.0 <= self.p_min <= 1.0:
            raise ValueError(f"speculative p_min must be in [0, 1] (got {self.p_min!r})")


@dataclasses.dataclass(slots=True)
class DraftRequest:
    """One sequence to guess for: its slot, its tokens (the last one not yet evaluated by the
    target) and how many guesses it may take."""

    slot: int
    tokens: list[int]
    n_max: int
    params: SpecParams
    result: list[int] = dataclasses.field(default_factory=list)


def pass_groups(sizes: Sequence[int], width: int, rows_max: int) -> list[list[int]]:
    """Jobs of ``sizes[i]`` rows each (a token and its guesses), in order, grouped in passes whose
    rows equal single-token passes: at most ``width`` jobs, and where any has guesses at most
    ``rows_max`` rows."""
    groups: list[list[int]] = []
    rows, guessed = 0, False
    for i, n in enumerate(sizes):
        if groups and len(groups[-1]) < width and (not (guessed or n > 1) or rows + n <= rows_max):
            groups[-1].append(i)
            rows, guessed = rows + n, guessed or n > 1
        else:
            groups.append([i])
            rows, guessed = n, n > 1
    return groups


class SlotDrafter(abc.ABC):
    """Guesses for several sequences at once; fills each request's ``result``."""

    name = "none"

    @abc.abstractmethod
    def draft(self, requests: Sequence[DraftRequest]) -> None:
        raise NotImplementedError

    def reset(self) -> None:  # noqa: B027 - a drafter without caches has nothing to forget
        """Forgets what it cached (after a failed pass)."""

    def close(self) -> None:  # noqa: B027 - a drafter without resources has nothing to free
        """Frees its resources."""


class NgramSlotDrafter(SlotDrafter):
    """llama-server's ``ngram-simple``: the latest earlier occurrence of the last ``size_n``
    tokens, and what followed it (at most ``size_m`` tokens, none when fewer than ``size_n``
    follow)."""

    name = "ngram-simple"

    def __init__(self, size_n: int = 12, size_m: int = 48) -> None:
        for what, v in (("--spec-ngram-simple-size-n", size_n), ("--spec-ngram-simple-size-m", size_m)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1024:
                raise ValueError(f"{what} must be between 1 and 1024 (got {v!r})")
        self.size_n, self.size_m = size_n, size_m

    def draft(self, requests: Sequence[DraftRequest]) -> None:
        for r in requests:
            r.result = self.lookup(r.tokens)[: min(r.n_max, r.params.n_max)]
            if len(r.result) < r.params.n_min:
                r.result = []

    def lookup(self, tokens: Sequence[int]) -> list[int]:
        n, m = self.size_n, self.size_m
        ids = np.asarray(tokens, dtype=np.int64)
        cur = ids.shape[0] - 1  # the tokens before the last (llama.cpp's history; the last is "sampled")
        if cur <= n + m + 1:
            return []
        pattern = ids[cur - n + 1 : cur + 1]
        # Windows starting at 1 .. cur - n - 1 (the latest first; 0 means "no match" there too).
        hits = np.ones(cur - n - 1, dtype=bool)
        for k in range(n):
            hits &= ids[1 + k : cur - n + k] == pattern[k]
        found = np.flatnonzero(hits)
        if not found.size:
            return []
        start = int(found[-1]) + 1
        count = min(m, cur - (start + n))
        if count < n:
            return []
        return [int(t) for t in ids[start + n : start + n + count]]


class ModelSlotDrafter(SlotDrafter):
    """llama-server's ``draft-simple``: a draft model (a path, loaded with one slot per engine
    slot and ``model_kwargs``, or a loaded :class:`~splitllm.Model` with ``n_seq_max`` slots)."""

    name = "draft-simple"

    def __init__(self, model: str | os.PathLike[str] | Any, n_slots: int, **model_kwargs: Any) -> None:
        from splitllm.model import Model

        if isinstance(model, (str, os.PathLike)):
            model = Model(model, n_seq_max=n_slots, **model_kwargs)
        self.model = model
        if model.config["encoder"] or model.config["recurrent"]:
            raise ValueError(
                f"{model.model_path}: a draft model must be a decoder without a recurrent state "
                f"({model.config['arch']} is not)"
            )
        if int(model._n_seq_max) < n_slots:
            raise ValueError(
                f"{model.model_path}: the draft model has {model._n_seq_max} sequence slots, "
                f"the server {n_slots}"
            )
        self._core = model._engine()
        self.slot_ctx = int(self._core.slot_ctx)
        self._n_batch = int(model._n_batch)
        self._cached: list[list[int]] = [[] for _ in range(n_slots)]  # tokens each draft slot holds

    def check_vocab(self, target: Any) -> None:
        """Refuses a draft whose vocabulary is not the target's (llama.cpp's rules, naming both files)."""
        from splitllm.speculative import check_same_vocab

        check_same_vocab(self.model, target)

    def draft(self, requests: Sequence[DraftRequest]) -> None:
        todo = []
        for r in requests:
            # (the guesses must fit in the draft's slot too)
            r.n_max = min(r.n_max, r.params.n_max, self.slot_ctx - len(r.tokens))
            r.result = []
            if r.n_max > 0:
                todo.append(r)
        if not todo:
            return
        rows = self._read(todo)
        active = list(range(len(todo)))
        while active:
            nxt = []
            for i in active:
                r = todo[i]
                row = rows[i].astype(np.float64)
                best = int(np.argmax(row))
                if 1.0 / np.exp(row - row[best]).sum() < r.params.p_min:
                    continue
                r.result.append(best)
                if len(r.result) < r.n_max:
                    nxt.append(i)
            if not nxt:
                break
            out = self._decode(
                [todo[i].result[-1] for i in nxt],
                [len(todo[i].tokens) + len(todo[i].result) - 1 for i in nxt],
                [todo[i].slot for i in nxt],
                [1] * len(nxt),
            )
            for i, row in zip(nxt, out, strict=True):
                self._cached[todo[i].slot].append(todo[i].result[-1])
                rows[i] = row
            active = nxt
        for r in todo:
            if len(r.result) < r.params.n_min:
                r.result = []

    def _read(self, todo: list[DraftRequest]) -> list[np.ndarray]:
        """Brings each slot's draft cache to its request's tokens (what it already holds is kept);
        the logits after each request's last token. The slots' new tokens share passes of at most
        ``n_batch`` tokens."""
        rows: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(todo)
        pending: list[tuple[int, int, int]] = []  # (request, slot, position) of each token to read
        for i, r in enumerate(todo):
            keep = min(common_prefix(self._cached[r.slot], r.tokens), len(r.tokens) - 1)
            keep = int(self._core.kv_reusable(r.slot, keep))
            self._cached[r.slot] = r.tokens[:keep]
            pending += [(i, r.slot, p) for p in range(keep, len(r.tokens))]
        for start in range(0, len(pending), self._n_batch):
            part = pending[start : start + self._n_batch]
            want = [
                int(k + 1 == len(part) or part[k + 1][0] != i) and p == len(todo[i].tokens) - 1
                for k, (i, _, p) in enumerate(part)
            ]
            out = self._decode(
                [todo[i].tokens[p] for i, _, p in part],
                [p for _, _, p in part],
                [s for _, s, _ in part],
                [int(w) for w in want],
            )
            for row, (i, _, _) in zip(out, [x for x, w in zip(part, want, strict=True) if w], strict=True):
                rows[i] = row.copy()
            for i, s, p in part:
                self._cached[s].append(todo[i].tokens[p])
        return rows

    def reset(self) -> None:
        self._cached = [[] for _ in self._cached]

    def _decode(self, tokens: list[int], pos: list[int], slots: list[int], want: list[int]) -> np.ndarray:
        return self._core.decode(
            np.asarray(tokens, dtype=np.int32),
            np.asarray(pos, dtype=np.int32),
            np.asarray(slots, dtype=np.int32),
            np.asarray(want, dtype=np.uint8),
        )

    def close(self) -> None:
        self.model.close()
