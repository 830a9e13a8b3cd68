"""llama-cpp-python's low-level ``Llama`` calls on a :class:`~splitllm.model.Model`: ``eval`` /
``sample`` over the tokens in the cache (``input_ids``, ``n_tokens``, ``scores`` with
``logits_all``), ``set_seed``, ``token_nl``, the static ``logits_to_logprobs`` /
``longest_token_prefix``, the prompt cache (``set_cache``), pickling and
``create_chat_completion_openai_v1``.

The model's ``_history`` is llama-cpp-python's ``input_ids[:n_tokens]``: the tokens whose K/V are in
the cache. ``eval`` appends to it; the high-level calls bring it to their prompt (reusing the
longest cached prefix), so ``eval`` / ``sample`` and ``create_completion`` can be mixed as there.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from splitllm.cache import common_prefix
from splitllm.grammar import Grammar, as_grammar, sample_with_grammar
from splitllm.model_state import ModelState
from splitllm.sampling import LogitsHook, Sampler, sampling_params

LLAMA_DEFAULT_SEED = 0xFFFFFFFF


class LowLevelMethods:
    """Mixed into :class:`~splitllm.model.Model` (which holds the state these use)."""

    _history: list[int]
    _logits_all: bool
    _scores: np.ndarray | None  # (n_ctx, n_vocab) with logits_all, allocated when first written
    _last: tuple[int, list[int], np.ndarray] | None  # (start, tokens, logits after them) of the last pass
    _n_ctx: int
    _n_batch: int
    _seed: int
    _rng: random.Random
    _init_args: dict[str, Any]
    cache: Any
    last_n_tokens_size: int

    # (Model's)
    def _engine(self) -> Any:
        raise NotImplementedError

    def _decode(self, tokens: Sequence[int], start: int, **kw: Any) -> np.ndarray:
        raise NotImplementedError

    def n_vocab(self) -> int:
        raise NotImplementedError

    def _check_tokens(self, tokens: Sequence[int], limit: tuple[int, str] | None = None) -> list[int]:
        raise NotImplementedError

    def eval_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def _processed(self, hook: LogitsHook, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def grammar_vocab(self) -> Any:
        raise NotImplementedError

    def save_state(self) -> ModelState:
        raise NotImplementedError

    def load_state(self, state: ModelState) -> None:
        raise NotImplementedError

    def check_state(self, state: ModelState) -> None:
        raise NotImplementedError

    # ---- the tokens in the cache ----

    @property
    def n_tokens(self) -> int:
        """How many tokens the cache holds (llama-cpp-python's ``n_tokens``); setting a smaller
        number forgets the tokens past it (the next ``eval`` continues from there)."""
        return len(self._history)

    @n_tokens.setter
    def n_tokens(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= len(self._history):
            raise ValueError(f"n_tokens can only be lowered to 0..{len(self._history)} (got {n!r})")
        self._history = self._history[: int(n)]

    @property
    def input_ids(self) -> npt.NDArray[np.intc]:
        """(n_ctx,) int32: the cached tokens in ``[:n_tokens]``, zeros after (a copy)."""
        out = np.zeros(self._n_ctx, dtype=np.intc)
        out[: len(self._history)] = self._history
        return out

    @property
    def scores(self) -> npt.NDArray[np.single]:
        """(n_ctx, n_vocab) float32: in row i the logits after ``input_ids[i]``, for ``i < n_tokens``
        (the rows after are stale). Needs ``logits_all=True``, as in llama-cpp-python, where the
        array is otherwise left unwritten."""
        if not self._logits_all:
            raise RuntimeError("scores holds every position's logits only with logits_all=True (Model(..., "
                               "logits_all=True)); the last position's are eval_logits[-1]")
        return self._score_rows()

    def _score_rows(self) -> np.ndarray:
        if self._scores is None:  # (pages are committed as rows are written)
            self._scores = np.empty((self._n_ctx, self.n_vocab()), dtype=np.single)
        return self._scores

    def _keep_logits(self, tokens: Sequence[int], start: int, rows: np.ndarray, all_rows: bool) -> None:
        """Records a pass's logits: the last row (for ``sample``) and, with logits_all, every row."""
        if all_rows and self._logits_all:
            self._score_rows()[start: start + len(rows)] = rows
        self._last = (start, list(tokens), rows[-1].copy())

    @property
    def eval_tokens(self) -> deque[int]:
        return deque(self._history, maxlen=self._n_ctx)

    @property
    def eval_logits(self) -> deque[list[float]]:
        """The logits of every cached position with logits_all, else of the last one."""
        n = len(self._history)
        if not n:
            return deque(maxlen=self._n_ctx if self._logits_all else 1)
        if self._logits_all:
            return deque(self.scores[:n].tolist(), maxlen=self._n_ctx)
        return deque([self._last_logits().tolist()], maxlen=1)

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluates ``tokens`` after the cached ones, ``n_batch`` at a time: they are appended to
        ``input_ids`` and the logits after the last one are kept for :meth:`sample` (every
        position's in ``scores`` with logits_all)."""
        n0 = len(self._history)
        toks = self._check_tokens([*self._history, *(int(t) for t in tokens)])
        # (a sliding-window cache lowered by n_tokens may no longer hold what the new tokens see)
        start = int(self._engine().kv_reusable(0, n0))
        for i in range(start, len(toks), self._n_batch):
            part = toks[i: i + self._n_batch]
            self._history = toks[:i]
            self._decode(part, i, all_logits=self._logits_all)
            self._history = toks[: i + len(part)]

    def _last_logits(self) -> np.ndarray:
        """The logits after the last cached token (evaluated again when the last pass's are not
        those: after ``load_state`` or a lowered ``n_tokens``)."""
        if not self._history:
            raise ValueError("no tokens evaluated: call eval(tokens) first")
        row = self._valid_last()
        return row if row is not None else self.eval_prompt(list(self._history))

    def _valid_last(self) -> np.ndarray | None:
        """The last pass's logits if they follow the last cached token, else None."""
        if self._last is None:
            return None
        start, toks, row = self._last
        n = len(self._history)
        return row if start + len(toks) == n and self._history[start:] == toks else None

    def sample(
        self,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_eta: float = 0.1,
        mirostat_tau: float = 5.0,
        penalize_nl: bool = True,
        logits_processor: LogitsHook | None = None,
        grammar: Grammar | str | None = None,
        idx: int | None = None,
    ) -> int:
        """A token from the logits after the last evaluated one (``idx``: after ``input_ids[idx]``,
        which needs logits_all unless it is the last), through llama-cpp-python's sampler chain with
        a fresh sampler, as its ``sample`` builds one: ``logits_processor`` first, then the penalties
        (whose history is empty in a fresh sampler, so they change nothing here, as there), the
        grammar from its start, and top-k, typical, top-p, min-p, temperature and the seeded draw
        (``temp`` 0: greedy; mirostat instead with ``mirostat_mode``). ``penalize_nl`` is accepted
        and, as in llama-cpp-python, has no effect. The token is not evaluated: pass it to
        :meth:`eval`."""
        del penalize_nl  # (llama-cpp-python no longer applies it either)
        n = len(self._history)
        if n == 0:
            raise ValueError("sample needs evaluated tokens: call eval(tokens) first")
        if idx is None or idx == n - 1:
            logits = self._last_logits()
        elif not 0 <= idx < n:
            raise ValueError(f"idx {idx} is outside the evaluated tokens [0, {n})")
        elif self._logits_all:
            logits = self._score_rows()[idx].copy()
        else:
            raise ValueError(f"sample(idx={idx}) of a position before the last needs logits_all=True")
        params = sampling_params(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            tfs_z=tfs_z, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            repeat_last_n=self.last_n_tokens_size)
        seed = self._seed & 0xFFFFFFFF
        sampler = Sampler(params, self.n_vocab(), None if seed == LLAMA_DEFAULT_SEED else seed)
        if logits_processor is not None:
            logits = self._processed(logits_processor, logits)
        g = as_grammar(grammar)
        if g is None:
            return sampler.sample(logits)
        return sample_with_grammar(sampler, logits, g.state(), self.grammar_vocab())

    def set_seed(self, seed: int) -> None:
        """The seed of later sampling: :meth:`sample`'s draws and the seeds of calls given none
        (reseeded, so the calls after ``set_seed(s)`` repeat)."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer (got {seed!r})")
        self._seed = seed
        self._rng = random.Random(None if seed & 0xFFFFFFFF == LLAMA_DEFAULT_SEED else seed)

    def token_nl(self) -> int:
        """The newline token as llama.cpp picks it: SentencePiece's <0x0A> byte token, WordPiece's
        padding token, otherwise the first token of "\\n" (-1 when there is none)."""
        self._open()  # type: ignore[attr-defined]
        tok = self.tokenizer  # type: ignore[attr-defined]
        if tok.vocab_type == "spm":
            found = tok.vocab.token_to_id.get("<0x0A>", tok.vocab.token_to_id.get("\n"))
        elif tok.vocab_type == "wpm":
            found = None
        else:
            found = next(iter(tok.tokenize(b"\n", add_bos=False)), None)
        if found is None:
            found = tok.pad_id
        return -1 if found is None else found

    # ---- llama-cpp-python's static helpers ----

    @staticmethod
    def logits_to_logprobs(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.single]:
        """log-softmax along ``axis`` in float32, as llama-cpp-python's (a row that is all -inf, or
        holds +inf, gives NaN)."""
        x = np.asarray(logits)
        top = np.amax(x, axis=axis, keepdims=True)
        top = np.where(np.isfinite(top), top, 0)
        shifted = np.subtract(x, top, dtype=np.single)
        with np.errstate(divide="ignore", invalid="ignore"):
            return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        """How many leading tokens ``a`` and ``b`` share."""
        return common_prefix(a, b)

    # ---- prompt cache ----

    def set_cache(self, cache: Any) -> None:
        """A prompt cache (:class:`splitllm.cache.RAMCache` / :class:`~splitllm.cache.DiskCache`, or
        llama-cpp-python's LlamaRAMCache / LlamaDiskCache): completions look up the saved state
        sharing the longest prefix with their prompt and start from it when it is longer than what
        the KV cache holds, and save their state when they end. None turns it off."""
        self.cache = cache

    def _cache_lookup(self, prompt: list[int]) -> None:
        if not self.cache:
            return
        try:
            state = self.cache[prompt]
        except KeyError:
            return
        held = self.longest_token_prefix(self._history, prompt)
        if not isinstance(state, ModelState) or \
                self.longest_token_prefix(list(state.input_ids), prompt) <= held:
            return
        try:
            self.check_state(state)
        except ValueError:  # (another model's or another context's state)
            return
        self.load_state(state)

    def _cache_save(self) -> None:
        if self.cache is not None and self._history:
            self.cache[list(self._history)] = self.save_state()

    # ---- pickling, OpenAI types ----

    def __getstate__(self) -> dict[str, Any]:
        """The constructor's arguments (the current seed among them): unpickling loads the model
        again, as llama-cpp-python's ``Llama`` does."""
        return {**self._init_args, "seed": self._seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        args = dict(state)
        self.__init__(args.pop("model_path"), **args)  # type: ignore[misc]

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """``create_chat_completion`` with the result as the openai package's ``ChatCompletion`` (or
        an iterator of ``ChatCompletionChunk`` with ``stream=True``); ImportError without it."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package "
                              "(pip install openai)") from None
        result = self.create_chat_completion(*args, **kwargs)  # type: ignore[attr-defined]
        if kwargs.get("stream", False):
            return _chunks(ChatCompletionChunk, result)
        return ChatCompletion(**result)


def _chunks(kind: Any, chunks: Iterator[dict[str, Any]]) -> Iterator[Any]:
    for chunk in chunks:
        yield kind(**chunk)
