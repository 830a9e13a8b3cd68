"""A thinking budget, as llama-server's ``--reasoning-budget N`` and a request's
``reasoning_budget_tokens`` (``thinking_budget_tokens``; Anthropic's ``thinking.budget_tokens``):
once a thinking block has run for ``N`` tokens, the block's end (``</think>``, after an optional
``reasoning_budget_message``) is forced, one token at a time, and the answer follows.

:class:`ReasoningBudget` follows llama.cpp's reasoning-budget sampler (common/reasoning-budget.cpp)
state for state: idle until a start sequence is generated; counting down the budget (a natural end
sequence ends the block); when the budget is spent, waiting for the token that completes a UTF-8
character if the last one did not; forcing the end tokens (every other token's logit -inf); done,
until a new start sequence arms it again. Budget 0 forces the end as soon as the block starts.

One difference: a thinking block the prompt opens (templates ending in ``<think>``) counts the
prompt's tokens after the start sequence against the budget and, if that spends it, forces the end
from its first token. (llama.cpp feeds those tokens through the sampler, so with budget 0 a
newline after ``<think>`` in the prompt consumes the first forced token.)
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Sequence

import numpy as np

from splitllm.reasoning import CLOSE, OPEN


class BudgetState(enum.Enum):
    IDLE = "idle"
    COUNTING = "counting"
    WAITING_UTF8 = "waiting_utf8"
    FORCING = "forcing"
    DONE = "done"


def utf8_is_complete(b: bytes) -> bool:
    """Whether ``b`` does not end inside a UTF-8 character (an orphan continuation byte at the end
    counts as inside one): llama.cpp's common_utf8_is_complete."""
    if not b:
        return True
    for i in range(1, min(4, len(b)) + 1):
        c = b[-i]
        if c & 0xC0 != 0x80:
            return i >= (4 if c >= 0xF0 else 3 if c >= 0xE0 else 2 if c >= 0xC0 else 1)
    return False


class _Matcher:
    """Finds token sequences in a token stream; after a match it starts afresh (the next match
    does not overlap it). Where several sequences end at a token, the longest wins."""

    def __init__(self, seqs: Sequence[Sequence[int]]) -> None:
        self.seqs: list[tuple[int, ...]] = []
        for s in seqs:
            if s and tuple(s) not in self.seqs:
                self.seqs.append(tuple(s))
        self._longest = max((len(s) for s in self.seqs), default=0)
        self._tail: list[int] = []

    def advance(self, token: int) -> int:
        """The index of the sequence this token completes, else -1."""
        if not self.seqs:
            return -1
        self._tail.append(token)
        del self._tail[:-self._longest]
        best = -1
        for i, s in enumerate(self.seqs):
            if len(s) <= len(self._tail) and tuple(self._tail[-len(s):]) == s and \
                    (best < 0 or len(s) > len(self.seqs[best])):
                best = i
        if best >= 0:
            self._tail.clear()
        return best

    def reset(self) -> None:
        self._tail.clear()


class ReasoningBudget:
    """The budget's state for one generation: :meth:`apply` to the logits before sampling,
    :meth:`accept` every token generated. ``starts`` / ``ends``: the token sequences that open and
    close a thinking block; ``forced``: what is forced when the budget is spent (the message's
    tokens, then the first end sequence's); ``piece``: a token's bytes (for the UTF-8 wait; None:
    every token completes its characters)."""

    def __init__(self, starts: Sequence[Sequence[int]], ends: Sequence[Sequence[int]], forced: Sequence[int],
                 budget: int, *, state: BudgetState = BudgetState.IDLE,
                 piece: Callable[[int], bytes] | None = None) -> None:
        if budget < 0:
            raise ValueError(f"the reasoning budget must be 0 or more tokens (got {budget})")
        self._start = _Matcher(starts)
        self._end = _Matcher(ends)
        self.forced = list(forced)
        self.budget = budget
        self.remaining = budget
        self._piece = piece
        self.force_pos = 0
        self.end_match: tuple[int, ...] | None = None
        self.state = state
        if state == BudgetState.COUNTING and budget <= 0:
            self.state = BudgetState.FORCING

    def forced_token(self) -> int | None:
        """The token the next draw must give, if any."""
        if self.state != BudgetState.FORCING or self.force_pos >= len(self.forced):
            return None
        return self.forced[self.force_pos]

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with every token but the forced one at -inf (a copy), or ``logits`` itself."""
        t = self.forced_token()
        if t is None:
            return logits
        out = np.full_like(logits, -np.inf)
        out[t] = logits[t]
        return out

    def accept(self, token: int) -> None:
        s = self.state
        if s == BudgetState.IDLE:
            if self._start.advance(token) >= 0:
                self._arm()
        elif s in (BudgetState.COUNTING, BudgetState.WAITING_UTF8):
            match = self._end.advance(token)
            if match >= 0:
                self.state, self.end_match = BudgetState.DONE, self._end.seqs[match]
                return
            complete = self._piece is None or utf8_is_complete(self._piece(token))
            if s == BudgetState.WAITING_UTF8:
                if complete:
                    self._start_forcing()
            else:
                self.remaining -= 1
                if self.remaining <= 0:
                    if complete:
                        self._start_forcing()
                    else:
                        self.state = BudgetState.WAITING_UTF8
                        self._end.reset()
        elif s == BudgetState.FORCING:
            match = self._end.advance(token)
            self.force_pos += 1
            if self.force_pos >= len(self.forced):
                self.state = BudgetState.DONE
                self.end_match = self._end.seqs[match] if match >= 0 else None
        elif self._start.advance(token) >= 0:  # DONE: a new block arms it again
            self._end.reset()
            self.end_match = None
            self._arm()

    def force(self) -> bool:
        """Ends a counting block now (llama.cpp's common_reasoning_budget_force); False in any
        other state, which it leaves as it is."""
        if self.state != BudgetState.COUNTING:
            return False
        self._start_forcing()
        return True

    def clone(self) -> ReasoningBudget:
        return copy.deepcopy(self)

    def _arm(self) -> None:
        self.state, self.remaining = BudgetState.COUNTING, self.budget
        if self.remaining <= 0:
            self.state, self.force_pos = BudgetState.FORCING, 0

    def _start_forcing(self) -> None:
        self.state, self.force_pos = BudgetState.FORCING, 0
        self._end.reset()


def check_budget(n: object, name: str) -> int:
    """A budget as llama-server reads one: an integer >= -1 (-1: none)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < -1:
        raise ValueError(f"{name} must be an integer >= -1 (-1: no budget), got {n!r}")
    return n


def thinking_budget(tokenize: Callable[[str], list[int]], piece: Callable[[int], bytes],
                    prompt: Sequence[int], budget: int, message: str = "", *,
                    prompt_opens: bool) -> ReasoningBudget | None:
    """The budget of a chat answer of a ``<think>`` model (None when ``budget`` is -1): its start
    and end the tokens of ``<think>`` / ``</think>`` (``tokenize``: text to tokens, special tokens
    parsed, no BOS), the forced tokens ``message`` then ``</think>``. With ``prompt_opens`` (the
    prompt ends inside a block), the prompt's tokens after its last ``<think>`` already count."""
    if budget < 0:
        return None
    start, end = tokenize(OPEN), tokenize(CLOSE)
    forced = (tokenize(message) if message else []) + end
    rb = ReasoningBudget([start], [end], forced, budget, piece=piece)
    if prompt_opens:
        p = list(prompt)
        at = next((i for i in range(len(p) - len(start), -1, -1) if p[i:i + len(start)] == start), None)
        used = 0 if at is None else len(p) - at - len(start)
        rb.state, rb.remaining = BudgetState.COUNTING, budget - used
        if rb.remaining <= 0:
            rb.state = BudgetState.FORCING
    return rb
