"""Log-probabilities of tokens, as OpenAI's (and llama-cpp-python's) ``logprobs`` report them.

A token's log-probability is taken from the model's raw logits at its position (the log-softmax,
before logit_bias, penalties, temperature or the top-k / top-p / min-p filters), as
llama-cpp-python does; the sums are done in float64. ``n_top`` alternatives are the most likely
tokens, ties by lower id.

Two shapes: legacy completions (``{"tokens", "text_offset", "token_logprobs", "top_logprobs"}``,
the top entries a dict from token text to log-probability that also holds the sampled token)
and chat completions (``{"content": [{"token", "logprob", "bytes", "top_logprobs"}], "refusal"}``,
the top entries a list, as OpenAI answers them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on alternatives per token


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token of a text, with its log-probability and the most likely alternatives.

    ``offset`` is the number of characters of the text before this token's own (a token that
    completes a character split between tokens starts where that character starts).
    ``logprob`` and ``top`` are None for a first prompt token, which no position predicts.
    """

    token: int
    piece: bytes
    logprob: float | None
    top: tuple[tuple[int, bytes, float], ...] | None
    offset: int = 0

    def at(self, offset: int) -> TokenLogprob:
        return dataclasses.replace(self, offset=offset)


def check_n_top(n_top: int | None, name: str = "logprobs") -> int | None:
    """``n_top`` checked: None (no log-probabilities) or an integer in [0, 20]."""
    if n_top is None:
        return None
    if not isinstance(n_top, int) or isinstance(n_top, bool) or not 0 <= n_top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}] or None (got {n_top!r})")
    return n_top


def chat_n_top(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """Chat's pair of options as the number of alternatives (None: no log-probabilities)."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ValueError(f"logprobs must be a boolean (got {logprobs!r})")
    if top_logprobs is not None and not logprobs:
        raise ValueError("top_logprobs needs logprobs to be true")
    if not logprobs:
        return None
    return check_n_top(0 if top_logprobs is None else top_logprobs, "top_logprobs")


def token_logprob(logits: np.ndarray, token: int, n_top: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """``token``'s entry from one row of logits (``(n_vocab,)``); ``piece`` gives a token's bytes."""
    x = np.asarray(logits)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - np.float32(m)).sum(dtype=np.float64)))
    top: tuple[tuple[int, bytes, float], ...] = ()
    if n_top > 0:
        k = min(n_top, x.shape[0])
        kth = x[np.argpartition(x, x.shape[0] - k)[x.shape[0] - k:]].min()
        # Most likely first, ties by lower id (every token equal to the k-th value is a
        # candidate: argpartition leaves equal values in any order).
        cand = np.flatnonzero(x >= kth)
        order = np.lexsort((cand, -x[cand].astype(np.float64)))[:k]
        top = tuple((int(i), piece(int(i)), float(x[i]) - lse) for i in cand[order])
    return TokenLogprob(int(token), piece(int(token)), float(x[token]) - lse, top)


class PromptLogprobs:
    """Entries of a prompt's tokens, fed the logits of its positions in order (``feed(rows)``:
    the row of position p follows token p and predicts token p + 1).

    Leading tokens in ``skip`` (the BOS token) are left out, as their text is not part of the
    prompt; a first token that no position precedes has no log-probability. Offsets count the
    characters of the prompt's text before each token.
    """

    def __init__(self, tokens: Sequence[int], n_top: int, piece: Callable[[int], bytes],
                 skip: frozenset[int] = frozenset()) -> None:
        self.tokens = [int(t) for t in tokens]
        self.n_top = n_top
        self.entries: list[TokenLogprob] = []
        self._piece = piece
        self._chars = _CharCounter()
        self._n_rows = 0
        self._start = 0
        if self.tokens and self.tokens[0] in skip:  # the one BOS the model adds, not a typed one after it
            self._start = 1
        if self._start == 0 and self.tokens:
            t = self.tokens[0]
            self._add(TokenLogprob(t, piece(t), None, None))

    @classmethod
    def of_prompt(cls, tokens: Sequence[int], n_top: int, tokenizer: Any) -> PromptLogprobs:
        """For a prompt as the model reads it: control tokens shown as their text (as a prompt
        string holds them); a BOS the model adds itself is left out."""
        bos = tokenizer.bos_id
        skip = frozenset([bos]) if tokenizer.add_bos and bos is not None else frozenset()
        return cls(tokens, n_top, lambda t: tokenizer.token_to_piece(t, special=True), skip)

    def _add(self, e: TokenLogprob) -> None:
        self.entries.append(e.at(self._chars.chars))
        self._chars.feed(e.piece)

    def feed(self, rows: np.ndarray) -> None:
        for row in rows:
            nxt = self._n_rows + 1
            self._n_rows += 1
            if self._start <= nxt < len(self.tokens):
                self._add(token_logprob(row, self.tokens[nxt], self.n_top, self._piece))


class _CharCounter:
    """Characters of a UTF-8 byte stream so far (a character split between pieces counts once
    whole; invalid bytes count as one replacement character each, as ``errors="replace"``)."""

    def __init__(self) -> None:
        import codecs

        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self.chars = 0

    def feed(self, data: bytes) -> None:
        self.chars += len(self._dec.decode(data))


class LogprobTracker:
    """Offsets of generated tokens, and which of them belong to the text shown so far.

    ``add(entry)`` records a token before its bytes are pushed to the text; ``release(n_bytes)``
    returns the recorded entries whose text starts before byte ``n_bytes`` of the generated text
    (a token cut off by a stop string or the end is left out; one whose text is empty goes with
    the text up to it)."""

    def __init__(self) -> None:
        self._chars = _CharCounter()
        self._n_bytes = 0
        self._pending: list[tuple[int, TokenLogprob]] = []

    def add(self, entry: TokenLogprob) -> None:
        self._pending.append((self._n_bytes, entry.at(self._chars.chars)))
        self._n_bytes += len(entry.piece)
        self._chars.feed(entry.piece)

    def release(self, n_bytes: int) -> tuple[TokenLogprob, ...]:
        n = 0
        for start, e in self._pending:
            if not (start < n_bytes or (not e.piece and start <= n_bytes)):
                break
            n += 1
        out = tuple(e for _, e in self._pending[:n])
        del self._pending[:n]
        return out


# ---- OpenAI shapes ----

def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="ignore")  # llama-cpp-python's token text


def completion_logprobs(entries: Sequence[TokenLogprob], base: int = 0) -> dict[str, Any]:
    """Legacy completions' ``logprobs`` object; offsets are shifted by ``base`` characters (the
    echoed prompt before the generated text)."""
    tops: list[dict[str, float] | None] = []
    for e in entries:
        if e.top is None:
            tops.append(None)
            continue
        d = {_text(p): lp for _, p, lp in e.top}
        d[_text(e.piece)] = e.logprob  # type: ignore[assignment]  # the sampled token, as OpenAI adds it
        tops.append(d)
    return {"tokens": [_text(e.piece) for e in entries],
            "text_offset": [base + e.offset for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops}


def merge_completion_logprobs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {k: [x for p in parts for x in p[k]] for k in ("tokens", "text_offset", "token_logprobs",
                                                           "top_logprobs")}


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Chat completions' ``logprobs`` object."""

    def item(piece: bytes, lp: float | None) -> dict[str, Any]:
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(piece)}

    content = [{**item(e.piece, e.logprob), "top_logprobs": [item(p, lp) for _, p, lp in e.top or ()]}
               for e in entries]
    return {"content": content, "refusal": None}
