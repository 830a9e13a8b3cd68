"""Token sampling: frozen settings (:class:`SamplingParams`) and the stateful :class:`Sampler`.

The chain and its defaults follow llama-cpp-python 0.3.36's ``create_completion``::

    logit_bias -> penalties (repeat / frequency / presence over the last ``repeat_last_n``
    accepted tokens) -> dry -> top_n_sigma -> top_k -> typical_p -> top_p -> min_p -> xtc
    -> temperature (dynamic with dynatemp_range) -> seeded draw

or, with ``mirostat_mode`` 1 or 2, ``logit_bias -> penalties -> mirostat`` (mirostat's own draw,
no temperature and no filters, as llama-cpp-python builds it). ``temperature == 0`` is greedy
(argmax after logit_bias, penalties and DRY) and ``temperature < 0`` draws from the softmax of all
logits (after logit_bias, penalties and DRY), with no other sampler, as llama-cpp-python does.
DRY, top_n_sigma, XTC and the dynamic temperature are llama-server's samplers, in its default
order (llama-cpp-python has none of them). ``chain="llama-server"`` follows llama-server's chain
(common/sampling.cpp) instead: mirostat is ``logit_bias -> temperature -> mirostat`` (no
penalties, no DRY), and a temperature of 0 keeps the highest logit left after the filters
(typical_p and XTC may drop the most likely token) rather than skipping them.

DRY ("Don't Repeat Yourself", ``dry_multiplier`` not 0, ``dry_base`` >= 1, ``dry_penalty_last_n``
not 0) lowers the logit of each token that would extend a sequence repeated within the last
``dry_penalty_last_n`` tokens of the prompt and the accepted tokens (-1: all of them) by
``dry_multiplier * dry_base ** (length - dry_allowed_length)``, for lengths of at least
``dry_allowed_length``; ``dry_sequence_breakers`` (strings) end repeats (see
:mod:`splitllm.dry`). It is llama.cpp's ``llama_sampler_dry``, and sits where llama-server puts
it, after the penalties (with mirostat it is off, as in llama-server). Its history takes the
prompt (:meth:`Sampler.accept_prompt`), as llama-server's sampler does; the penalty window does
not, as llama-cpp-python's does not.

Given the same logits and a seed below 2**32, the tokens are llama.cpp's: typical_p, mirostat,
XTC, top_n_sigma and the dynamic temperature replay llama.cpp's own array operations (see
cpp/sample/replay.h), a slower path taken only when one of them is on. llama.cpp's tail-free
sampling (``tfs_z``) is gone: llama-cpp-python ignores the setting, here only its off value
1.0 is accepted (:func:`check_tfs_z`).

The settings never change; the penalty and DRY histories, mirostat's ``mu`` and the random state
belong to a :class:`Sampler`, one per generation.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from splitllm import _core
from splitllm.dry import DEFAULT_BREAKERS, sequence_breakers
from splitllm.tokenizer import Tokenizer

LogitsHook = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, scores) -> scores
StopHook = Callable[[np.ndarray, np.ndarray], bool]  # (input_ids, logits) -> stop

__all__ = ["CHAINS", "LogitsProcessorList", "Sampler", "SamplingParams", "StoppingCriteriaList",
           "check_tfs_z", "random_seed", "sampling_params"]

_U64 = 1 << 64
CHAINS = ("llama-cpp-python", "llama-server")  # SamplingParams.chain


def _finite(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return x


def _integer(name: str, value: Any) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _bias_items(logit_bias: Any) -> tuple[tuple[int, float], ...]:
    if logit_bias is None:
        return ()
    items: Iterable[Any] = logit_bias.items() if isinstance(logit_bias, Mapping) else logit_bias
    out: dict[int, float] = {}
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias entries must be (token, bias) pairs, got {item!r}") from None
        try:
            token = int(key)  # JSON clients send the token ids as strings
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias key {key!r} is not a token id") from None
        if token < 0:
            raise ValueError(f"logit_bias key {token} is negative")
        try:
            bias = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias[{token}] must be a number, got {value!r}") from None
        if math.isnan(bias) or bias == math.inf:
            raise ValueError(f"logit_bias[{token}] must be a number or -inf, got {value!r}")
        out[token] = out.get(token, 0.0) + bias
    return tuple(sorted(out.items()))


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """Sampler settings, with llama-cpp-python's names and ``create_completion`` defaults.

    ``repeat_last_n`` is llama-cpp-python's ``last_n_tokens_size`` (a ``Llama`` option there).
    ``top_k`` of 0 or -1 means the whole vocabulary; ``top_p`` of 1 and ``min_p`` of 0 turn those
    filters off. ``logit_bias`` accepts a mapping (or pairs) from token id (int or numeric
    string) to a bias added to that logit (-inf bans the token); it is stored as a sorted tuple of
    ``(token, bias)`` pairs so that the settings stay hashable.

    ``typical_p`` (1: off), ``mirostat_mode`` (0: off, 1: Mirostat with m = 100, 2: Mirostat 2.0),
    ``mirostat_tau`` (target surprise; mu starts at twice it) and ``mirostat_eta`` (learning rate)
    are llama-cpp-python's; ``xtc_probability`` (0: off) and ``xtc_threshold`` (above 0.5: off),
    ``top_n_sigma`` (0 or less: off), ``dynatemp_range`` (0: off; the temperature then moves within
    ``temperature`` +- range with the entropy) and ``dynatemp_exponent`` are llama-server's.
    ``dry_multiplier`` (0: off), ``dry_base`` (below 1: off), ``dry_allowed_length``,
    ``dry_penalty_last_n`` (0: off, -1: the whole prompt and generation) and
    ``dry_sequence_breakers`` (strings, stored as a tuple) are llama-server's DRY settings, with its
    defaults. ``chain`` picks whose sampler chain runs (see the module's text).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] | Iterable[tuple[int, float]] | None = None
    typical_p: float = 1.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: Iterable[str] = DEFAULT_BREAKERS
    chain: str = "llama-cpp-python"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty",
                     "presence_penalty", "typical_p", "mirostat_tau", "mirostat_eta", "xtc_probability",
                     "xtc_threshold", "top_n_sigma", "dynatemp_range", "dynatemp_exponent", "dry_multiplier",
                     "dry_base"):
            put(name, _finite(name, getattr(self, name)))
        for name in ("top_k", "repeat_last_n", "mirostat_mode", "dry_allowed_length", "dry_penalty_last_n"):
            put(name, _integer(name, getattr(self, name)))
        if self.top_k < -1:
            raise ValueError(f"top_k must be >= -1 (0 or -1: whole vocabulary), got {self.top_k}")
        for name in ("top_p", "min_p", "typical_p", "xtc_probability", "xtc_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0 (1 is off), got {self.repeat_penalty}")
        if not 0 <= self.repeat_last_n < 1 << 31:
            raise ValueError(f"repeat_last_n must be >= 0 (0 is off), got {self.repeat_last_n}")
        if self.mirostat_mode not in (0, 1, 2):
            raise ValueError(f"mirostat_mode must be 0 (off), 1 or 2, got {self.mirostat_mode}")
        if self.dynatemp_range < 0.0:
            raise ValueError(f"dynatemp_range must be >= 0 (0 is off), got {self.dynatemp_range}")
        if not 0 <= self.dry_allowed_length < 1 << 31:
            raise ValueError(f"dry_allowed_length must be >= 0, got {self.dry_allowed_length}")
        if not -1 <= self.dry_penalty_last_n < 1 << 31:
            raise ValueError(f"dry_penalty_last_n must be >= -1 (0: off, -1: all), "
                             f"got {self.dry_penalty_last_n}")
        put("dry_sequence_breakers", _breakers(self.dry_sequence_breakers))
        if self.chain not in CHAINS:
            raise ValueError(f"chain must be one of {', '.join(CHAINS)}, got {self.chain!r}")
        put("logit_bias", _bias_items(self.logit_bias))

    @property
    def replayed(self) -> bool:
        """True when a sampler of the general path is on (typical_p, mirostat, XTC, top_n_sigma,
        dynamic temperature): llama.cpp's array operations then run step by step."""
        return (self.typical_p < 1.0 or self.mirostat_mode != 0 or self.top_n_sigma > 0.0
                or (self.xtc_probability > 0.0 and self.xtc_threshold <= 0.5) or self.dynatemp_range > 0.0)

    @property
    def dry(self) -> bool:
        """True when DRY's settings turn it on (it still does not run with mirostat)."""
        return self.dry_multiplier != 0.0 and self.dry_base >= 1.0 and self.dry_penalty_last_n != 0

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax of the logits after logit_bias and penalties
        (``temperature == 0``, unless llama-server's chain runs samplers of the general path)."""
        return self.temperature == 0.0 and (self.chain == "llama-cpp-python" or not self.replayed)

    def _to_core(self, breakers: Iterable[tuple[int, Iterable[int]]] = ()) -> Any:
        p = _core.SamplerParams()
        for name in _CORE_FIELDS:  # the same names on both sides
            setattr(p, name, getattr(self, name))
        p.dry_breakers = [(h, list(tail)) for h, tail in breakers]
        p.logit_bias = list(self.logit_bias)  # type: ignore[arg-type]  # normalised to pairs
        p.mirostat = self.mirostat_mode
        p.server_chain = self.chain == "llama-server"
        return p


_CORE_FIELDS = (
    "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "frequency_penalty",
    "presence_penalty", "typical_p", "mirostat_tau", "mirostat_eta", "xtc_probability", "xtc_threshold",
    "top_n_sigma", "dynatemp_range", "dynatemp_exponent", "dry_multiplier", "dry_base", "dry_allowed_length",
    "dry_penalty_last_n",
)


def _breakers(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"dry_sequence_breakers must be a list of strings, got {value!r}")
    out = tuple(value)
    for b in out:
        if not isinstance(b, str):
            raise ValueError(f"dry_sequence_breakers must be a list of strings, got {b!r} in it")
    return out


def check_tfs_z(tfs_z: Any) -> None:
    """llama-cpp-python's ``tfs_z``: tail-free sampling, which llama.cpp removed (llama-cpp-python
    takes the argument and ignores it). 1.0 (off) is accepted; any other value is refused rather
    than ignored, since it asks for sampling that does not happen."""
    if _finite("tfs_z", tfs_z) != 1.0:
        raise ValueError(f"tfs_z={tfs_z!r}: tail-free sampling is not available (llama.cpp removed it; "
                         "llama-cpp-python ignores the setting): only 1.0, off, is accepted")


def sampling_params(*, tfs_z: Any = 1.0, logit_bias: Mapping[Any, float] | None = None,
                    **fields: Any) -> SamplingParams:
    """The settings of a generation call (``Model.create_completion`` and the others): ``fields``
    are :class:`SamplingParams` fields, ``tfs_z`` is checked (:func:`check_tfs_z`) and
    ``logit_bias`` must map token ids to numbers, as llama-cpp-python takes it."""
    check_tfs_z(tfs_z)
    bias = None
    if logit_bias:
        try:
            bias = {int(k): float(v) for k, v in logit_bias.items()}
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError("logit_bias must map token ids to numbers") from e
    return SamplingParams(logit_bias=bias, **fields)


def random_seed() -> int:
    """A fresh 32-bit seed from ``os.urandom`` (llama.cpp's seeds are 32-bit)."""
    return int.from_bytes(os.urandom(4), "little")


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return random_seed()
    s = _integer("seed", seed)
    if s == -1:
        return random_seed()
    if not 0 <= s < _U64:
        raise ValueError(f"seed must be in [0, 2**64) or -1/None for a random one, got {s}")
    return s


class Sampler:
    """Picks tokens from logits under fixed :class:`SamplingParams`.

    Holds what changes during a generation: the penalty history (fed by :meth:`accept`; the
    sampler does not accept its own picks), mirostat's ``mu`` (moved by every :meth:`sample`,
    as llama.cpp's mirostat moves it on every draw) and the random generators (seeded with
    ``seed``; ``None`` or -1 draws one from ``os.urandom``, readable afterwards as :attr:`seed`).
    The same seed, settings and sequence of logits and accepted tokens give the same tokens; with
    a seed below 2**32 the draws are those of llama.cpp's sampler chain with that seed.

    With DRY on, ``tokenizer`` (the model's) turns ``dry_sequence_breakers`` into tokens; it may be
    left out only when there are no breakers. Feed the prompt to :meth:`accept_prompt` before the
    first :meth:`sample`.
    """

    __slots__ = ("_core", "_seed", "params")

    def __init__(self, params: SamplingParams, n_vocab: int, seed: int | None = None, *,
                 tokenizer: Tokenizer | None = None) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        n = _integer("n_vocab", n_vocab)
        if not 0 < n < 1 << 31:
            raise ValueError(f"n_vocab must be positive, got {n}")
        for token, _ in params.logit_bias:  # type: ignore[union-attr]
            if token >= n:
                raise ValueError(f"logit_bias token {token} is outside the vocabulary [0, {n})")
        breakers: Iterable[tuple[int, Iterable[int]]] = ()
        if params.dry and params.mirostat_mode == 0 and params.dry_sequence_breakers:
            if tokenizer is None:
                raise ValueError("dry_sequence_breakers need the model's tokenizer (Sampler(tokenizer=...))")
            breakers = sequence_breakers(tokenizer, params.dry_sequence_breakers)
        self.params = params
        self._seed = _check_seed(seed)
        self._core = _core.Sampler(params._to_core(breakers), n, self._seed)

    @property
    def n_vocab(self) -> int:
        return int(self._core.n_vocab)

    @property
    def seed(self) -> int:
        """The seed in use (the random one drawn when none was given)."""
        return self._seed

    @property
    def mirostat_mu(self) -> float:
        """Mirostat's state: ``2 * mirostat_tau`` at the start, updated by each draw."""
        return float(self._core.mirostat_mu)

    def reset(self, seed: int | None = None) -> None:
        """Clears the penalty and DRY histories, restarts mirostat (mu = 2 * tau) and reseeds (``None`` or
        -1: a new random seed)."""
        self._seed = _check_seed(seed)
        self._core.reset(self._seed)

    def accept(self, token: int) -> None:
        """Adds ``token`` to the penalty history (the window keeps the last ``repeat_last_n``)."""
        self._core.accept(_integer("token", token))

    def accept_many(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.accept(token)

    def accept_prompt(self, tokens: Iterable[int]) -> None:
        """The prompt's tokens, before the first :meth:`sample`: DRY's history starts with them, as
        llama-server's sampler takes the prompt (the penalty window does not, as in
        llama-cpp-python). A no-op when DRY is off."""
        if self._core.dry:
            self._core.accept_prompt([_integer("token", t) for t in tokens])

    @property
    def dry(self) -> bool:
        """True when DRY runs (its settings turn it on and mirostat is off)."""
        return bool(self._core.dry)

    def _logits(self, logits: npt.ArrayLike) -> np.ndarray:
        a = np.asarray(logits)
        if a.ndim != 1 or a.shape[0] != self.n_vocab:
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {a.shape}")
        return a

    def sample(self, logits: npt.ArrayLike) -> int:
        """The next token for a ``(n_vocab,)`` array of logits (float32 is used without a copy).

        Does not add the token to the penalty history: call :meth:`accept` for that.
        """
        return int(self._core.sample(self._logits(logits)))

    def adjusted(self, logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The logits after logit_bias, the penalties and DRY (NaN as -inf), for inspection and
        tests: neither history changes."""
        return self._core.adjusted(self._logits(logits))

    def probs(self, logits: npt.ArrayLike) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """The final candidates and the probabilities the draw would use, most likely first.

        For inspection and tests: neither the history, mu nor the random state changes (XTC's
        removal, a random event, is shown as the next :meth:`sample` would see it).
        """
        ids, p = self._core.probs(self._logits(logits))
        return ids, p


class LogitsProcessorList(list):  # type: ignore[type-arg]
    """llama-cpp-python's list of logits processors: each ``f(input_ids, scores) -> scores`` in
    turn (``input_ids``: the tokens so far, int32; ``scores``: the next token's logits, float32)."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for f in self:
            scores = f(input_ids, scores)
        return scores


class StoppingCriteriaList(list):  # type: ignore[type-arg]
    """llama-cpp-python's list of stopping criteria: ``f(input_ids, logits) -> bool``; any true
    stops the generation."""

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        return any(f(input_ids, logits) for f in self)
