"""Speculative decoding: guessed tokens checked by the model in one pass.

A draft model (llama-cpp-python's ``draft_model`` interface: called with the token ids so far,
returns the guessed next ids) proposes tokens; the model evaluates the last token and the
guesses in one forward pass, and the sampler then picks each next token from its position's
logits exactly as it would have without guesses, taking the next guess's logits as long as the
pick equals the guess. The output is the same tokens as without a draft model (any sampling
settings and seed): the guesses only decide how many positions one pass holds, and a pass is
never longer than the longest whose logits equal single-token passes (measured when the model
loads, see :func:`single_pass_limit`).

:class:`PromptLookupDecoding` guesses by looking the last few tokens up earlier in the context
and proposing what followed them there: no second model, and a large gain on text that repeats
its input (summaries, code edits, extraction). :class:`ModelDraft` guesses with a small model of
the same vocabulary (llama.cpp's ``--model-draft``): its greedy continuation, as long as it is
sure enough of each token.
"""

from __future__ import annotations

import abc
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from splitllm.model import Model

SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128  # llama.cpp's limits on how far a draft's vocabulary may differ
SPEC_VOCAB_CHECK_START_TOKEN_ID = 5


class DraftModel(abc.ABC):
    """Proposes the next tokens: ``draft(input_ids) -> ids`` (both 1-D integer arrays)."""

    @abc.abstractmethod
    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        raise NotImplementedError


class ModelDraft(DraftModel):
    """A draft model: a small GGUF model with the target's vocabulary (llama.cpp's
    ``--model-draft``), drafting its greedy continuation of the tokens so far, up to
    ``num_pred_tokens`` (``--draft-max``) and only while its top token's probability is at least
    ``p_min`` (``--draft-p-min``). Its KV cache follows the text: each call evaluates only what is
    new since the last (the longest common prefix is kept). ``model``: a path (loaded with
    ``model_kwargs``, e.g. ``n_ctx``, ``n_gpu_layers``) or a loaded :class:`~splitllm.Model`.
    The target checks the vocabularies when it takes the draft (:meth:`attach`)."""

    def __init__(self, model: str | os.PathLike[str] | Model, num_pred_tokens: int = 16, p_min: float = 0.75,
                 **model_kwargs: Any) -> None:
        if not isinstance(num_pred_tokens, int) or isinstance(num_pred_tokens, bool) or num_pred_tokens < 1:
            raise ValueError(f"num_pred_tokens must be a positive integer (got {num_pred_tokens!r})")
        if not 0.0 <= p_min <= 1.0:
            raise ValueError(f"p_min must be in [0, 1] (got {p_min!r})")
        if isinstance(model, (str, os.PathLike)):
            from splitllm.model import Model

            model = Model(model, **model_kwargs)
        elif model_kwargs:
            raise ValueError("model_kwargs apply only when the draft model is given as a path")
        self.model = model
        self.num_pred_tokens = num_pred_tokens
        self.p_min = float(p_min)

    def attach(self, target: Model) -> None:
        """Refuses a draft whose vocabulary is not the target's (:func:`check_same_vocab`)."""
        check_same_vocab(self.model, target)

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        ids = [int(t) for t in np.asarray(input_ids).ravel()]
        m = self.model
        room = m.n_ctx() - len(ids)
        out: list[int] = []
        while len(out) < min(self.num_pred_tokens, room):
            logits = m.eval_prompt(ids + out).astype(np.float64)
            best = int(np.argmax(logits))
            if self.p_min > 0:
                p = 1.0 / np.exp(logits - logits[best]).sum()
                if p < self.p_min:
                    break
            out.append(best)
        return np.asarray(out, dtype=np.intc)

    def close(self) -> None:
        self.model.close()


def check_same_vocab(draft: Model, target: Model) -> None:
    """ValueError naming both files unless the draft's vocabulary is the target's, as llama.cpp
    checks it: the same kind of vocabulary, BOS / EOS and their adding, sizes within 128 and the
    same text for every token from id 5 on that both have."""
    d, t = draft.tokenizer, target.tokenizer
    names = f"draft model {draft.model_path} and target model {target.model_path}"
    for what in ("vocab_type", "bos_id", "eos_id", "add_bos", "add_eos"):
        if getattr(d, what, None) != getattr(t, what, None):
            raise ValueError(f"{names}: the draft model's {what} ({getattr(d, what, None)}) differs from "
                             f"the target's ({getattr(t, what, None)})")
    nd, nt = draft.n_vocab(), target.n_vocab()
    if abs(nd - nt) > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
        raise ValueError(f"{names}: the draft model's vocabulary has {nd} tokens, the target's {nt} "
                         f"(at most {SPEC_VOCAB_MAX_SIZE_DIFFERENCE} apart)")
    for i in range(SPEC_VOCAB_CHECK_START_TOKEN_ID, min(nd, nt)):
        if d.token_text(i) != t.token_text(i):
            raise ValueError(f"{names}: the draft model's token {i} is {d.token_text(i)!r}, the target's "
                             f"{t.token_text(i)!r}")


class PromptLookupDecoding(DraftModel):
    """Prompt lookup: the most recent earlier occurrence of the last ``n`` tokens (``n`` from
    ``max_ngram_size`` down to 1), and up to ``num_pred_tokens`` tokens that followed it."""

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10) -> None:
        for name, v in (("max_ngram_size", max_ngram_size), ("num_pred_tokens", num_pred_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer (got {v!r})")
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        ids = np.asarray(input_ids).ravel()
        n = ids.shape[0]
        for size in range(min(self.max_ngram_size, n - 1), 0, -1):
            tail = ids[n - size:]
            # Windows starting at 0..n-size-1 (not the tail itself) that equal the tail.
            hits = np.ones(n - size, dtype=bool)
            for j in range(size):
                hits &= ids[j: n - size + j] == tail[j]
            starts = np.flatnonzero(hits)
            if starts.size:
                begin = int(starts[-1]) + size  # the most recent occurrence
                return ids[begin: begin + self.num_pred_tokens].astype(np.intc)
        return np.zeros(0, dtype=np.intc)


class DraftPolicy:
    """How many of the draft's guesses the next pass should hold.

    A pass of n tokens costs ``c(n)`` seconds (measured as passes run; a pass not yet seen is
    guessed from the single-token pass as ``c(1) * (1 + 0.25 (n - 1))``, so each length is
    tried) and a guess is right with probability ``p`` (counted, older outcomes fading), so L
    guesses bring ``1 + p + ... + p^L`` tokens on average. The policy takes the L that brings the
    most tokens per second, 0 (a plain single-token pass) when guessing does not pay: wrong guesses
    cost little. While it does not guess, the draft's first guess is still compared with the
    token that comes next, so a stretch of text worth guessing is noticed.
    """

    DECAY = 0.9  # weight of the previous counts at each new outcome

    def __init__(self, max_draft: int) -> None:
        self.max_draft = max_draft
        self.right = 1.0  # counts of right and wrong guesses (a start of one each: p = 0.5)
        self.wrong = 1.0
        self._cost: dict[int, float] = {}

    @property
    def p(self) -> float:
        return self.right / (self.right + self.wrong)

    def cost(self, n: int) -> float:
        if n in self._cost:
            return self._cost[n]
        base = self._cost.get(1, 1.0)
        return base * (1.0 + 0.25 * (n - 1))

    def length(self, available: int) -> int:
        p = self.p
        best, best_rate, gain, weight = 0, 1.0 / self.cost(1), 1.0, 1.0
        for n in range(1, min(available, self.max_draft) + 1):
            weight *= p
            gain += weight
            rate = gain / self.cost(n + 1)
            if rate > best_rate:
                best, best_rate = n, rate
        return best

    def timed(self, n_tokens: int, seconds: float) -> None:
        old = self._cost.get(n_tokens)
        self._cost[n_tokens] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def outcome(self, n_right: int, wrong: bool) -> None:
        """``n_right`` guesses were right, then (``wrong``) one was wrong."""
        for _ in range(n_right):
            self.right = self.right * self.DECAY + 1.0
            self.wrong *= self.DECAY
        if wrong:
            self.right *= self.DECAY
            self.wrong = self.wrong * self.DECAY + 1.0


def single_pass_limit(core: Any, n_vocab: int, cap: int) -> int | None:
    """The fewest tokens of one pass of one sequence whose logits differ from those of single-token
    passes, or None if every pass of up to ``cap`` tokens gives the same logits (the CPU kernels
    take another path, with other rounding, for passes of many tokens). Measured on slot 0 from
    position 0, whose cache it overwrites: ``cap`` single passes, then a binary search."""
    if cap < 2:
        return None
    toks = np.asarray([(1000 + 7919 * i) % n_vocab for i in range(cap)], dtype=np.int32)
    slot0 = np.zeros(cap, dtype=np.int32)
    pos = np.arange(cap, dtype=np.int32)
    single = np.concatenate([core.decode(toks[i: i + 1], pos[i: i + 1], slot0[:1]) for i in range(cap)])

    def same(n: int) -> bool:
        return bool(np.array_equal(core.decode(toks[:n], pos[:n], slot0[:n]), single[:n]))

    if same(cap):
        return None
    lo, hi = 1, cap  # a pass of lo tokens equals single passes, one of hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if same(mid) else (lo, mid)
    return hi
