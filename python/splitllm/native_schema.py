"""Request bodies of llama-server's native endpoints (``/completion``, ``/infill``,
``/apply-template``), with llama-server's names and defaults (``server-schema.cpp``).

As llama-server does, ``null`` means the default, ``n_predict`` may be given as ``max_tokens`` or
``max_completion_tokens``, ``n_probs`` as ``logprobs`` and ``n_cmpl`` as ``n``, and
``temperature``, ``top_k``, ``top_p``, ``min_p``, ``xtc_probability``, ``xtc_threshold`` and ``mirostat``
are clamped to their ranges (``dry_base`` below 1 means 1.75). The sampler chain is llama-server's
(``chain="llama-server"``, see :mod:`splitllm.sampling`) in its default order: penalties, dry,
top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature (dynamic with ``dynatemp_range``), then
the draw; ``samplers`` picks which of them run, in that order. With ``mirostat`` 1 or 2 the chain is
temperature then mirostat, as in llama-server. DRY's history starts with the prompt, as
llama-server's; ``dry_sequence_breakers`` must be a non-empty list of strings. llama-server's
``infill`` sampler is skipped when listed in ``samplers``; ``adaptive_p`` (which would replace the
draw) is refused.
Fields splitllm does not act on are ignored, as llama-server ignores unknown ones: among them
``t_max_predict_ms``, ``t_max_prompt_ms`` and ``n_indent`` (code completion clients' time and
indentation limits: the text then runs to ``n_predict``), ``n_keep`` (no context
shift: a full context ends the text, ``truncated``), ``timings_per_token`` and ``return_progress``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from splitllm.api_schema import APIError, ChatRequest, _NullIsDefault
from splitllm.dry import DEFAULT_BREAKERS
from splitllm.engine_draft import SpecParams
from splitllm.grammar import Grammar, as_grammar
from splitllm.logprobs import MAX_TOP_LOGPROBS
from splitllm.sampling import SamplingParams
from splitllm.tokenizer import Tokenizer

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "random seed"

# llama.cpp's sampler names (and its aliases: kebab-case, no dash, misc.) and one-letter codes.
_CANONICAL = ("dry", "top_k", "top_p", "top_n_sigma", "typ_p", "min_p", "temperature", "xtc", "infill",
              "penalties", "adaptive_p")
SAMPLER_NAMES = {**{n: n for n in _CANONICAL}, **{n.replace("_", "-"): n for n in _CANONICAL if "_" in n},
                 **{n.replace("_", ""): n for n in _CANONICAL if "_" in n},
                 "nucleus": "top_p", "temp": "temperature", "typ": "typ_p"}
SAMPLER_CHARS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "s": "top_n_sigma", "m": "min_p",
                 "t": "temperature", "x": "xtc", "i": "infill", "e": "penalties", "a": "adaptive_p"}
# splitllm's samplers, in llama-server's default order (which is the only order splitllm runs)
CHAIN = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")

# Settings splitllm lacks: accepted only with the value that leaves them off.
_OFF = {"post_sampling_probs": False}


class NativeRequest(_NullIsDefault):
    """``POST /completion`` (and the sampling fields of ``/infill``)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: Any = None  # checked by prompt_items()
    n_predict: int = Field(-1, ge=-1)
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_last_n: int = Field(64, ge=-1)  # -1: the whole context (llama-server's)
    repeat_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    stop: str | list[str] | None = None
    stream: bool = False
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    n_probs: int = Field(0, ge=0)
    min_keep: int = Field(0, ge=0, le=1)  # splitllm's top_p and min_p keep one token (0 and 1 alike)
    ignore_eos: bool = False
    logit_bias: list[Any] | dict[str, Any] | None = None
    samplers: list[str] | str | None = None
    return_tokens: bool = False
    n_cmpl: int = Field(1, ge=1)
    response_fields: list[str] | None = None
    lora: Any = None  # the adapters' scales for this request (api_lora.lora_scales_of)
    id_slot: int = -1  # the slot to run in (modulo the slots; negative: any): its first choice
    cache_prompt: bool = True  # (the slots' caches are always reused: results do not depend on it)
    model: str | None = None
    top_n_sigma: float = -1.0
    typical_p: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = Field(2, ge=0)
    dry_penalty_last_n: int = Field(64, ge=-1)  # -1: the whole context (as repeat_last_n)
    dry_sequence_breakers: list[str] = Field(default_factory=lambda: list(DEFAULT_BREAKERS), min_length=1)
    # speculative decoding (a server with a drafter): this request's settings, the server's where absent
    spec_n_max: int | None = Field(None, alias="speculative.n_max", ge=0)
    spec_n_min: int | None = Field(None, alias="speculative.n_min", ge=0)
    spec_p_min: float | None = Field(None, alias="speculative.p_min", ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """llama-server's other names, used when the main one is absent (or null)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, aliases in (("n_predict", ("max_completion_tokens", "max_tokens")),
                              ("n_probs", ("logprobs",)), ("n_cmpl", ("n",))):
            if data.get(name) is None:
                for a in aliases:
                    if data.get(a) is not None:
                        data[name] = data[a]
                        break
        for name, off in _OFF.items():
            v = data.get(name)
            if v is not None and v != off:
                raise APIError(400, f"{name} is not supported by splitllm (only {str(off).lower()}, "
                               "which turns it off)", param=name)
        return data

    @field_validator("temperature", "top_k")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        return max(v, 0)

    @field_validator("top_p", "min_p", "xtc_probability", "xtc_threshold")
    @classmethod
    def _unit(cls, v: float) -> float:
        return min(max(v, 0.0), 1.0)

    @field_validator("dry_base")
    @classmethod
    def _dry_base(cls, v: float) -> float:
        return v if v >= 1.0 else 1.75

    @field_validator("mirostat")
    @classmethod
    def _mirostat(cls, v: int) -> int:
        return min(max(v, 0), 2)

    @field_validator("n_probs")
    @classmethod
    def _n_probs(cls, v: int) -> int:
        if v > MAX_TOP_LOGPROBS:
            raise ValueError(f"splitllm gives at most {MAX_TOP_LOGPROBS} alternatives per token (got {v})")
        return v

    @property
    def n_logprobs(self) -> int | None:
        return self.n_probs if self.n_probs > 0 else None

    @property
    def seed_value(self) -> int:
        """The seed as llama-server keeps it (a uint32; 4294967295: random)."""
        return self.seed % 2**32

    @property
    def sampling_seed(self) -> int | None:
        return None if self.seed_value == LLAMA_DEFAULT_SEED else self.seed_value

    @property
    def max_tokens(self) -> int | None:
        return None if self.n_predict < 0 else self.n_predict

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def chain(self) -> tuple[str, ...]:
        """The samplers that run, in splitllm's order (400 for an order it cannot follow)."""
        if self.samplers is None:
            return CHAIN
        given = self.samplers
        names = [SAMPLER_CHARS.get(c) for c in given] if isinstance(given, str) else \
            [SAMPLER_NAMES.get(n) for n in given]
        if "adaptive_p" in names:
            raise APIError(400, "samplers: adaptive_p is not supported by splitllm", param="samplers")
        used = [n for n in names if n in CHAIN]
        if used != sorted(used, key=CHAIN.index) or len(set(used)) != len(used):
            raise APIError(400, f"samplers: splitllm runs {', '.join(CHAIN)} in this order, each at most "
                           f"once (got {', '.join(used)})", param="samplers")
        return tuple(used)

    def sampling_params(self, tok: Tokenizer | None = None, n_vocab: int = 0,
                        n_ctx: int = 0) -> SamplingParams:
        """The sampler settings: samplers left out of ``samplers`` are off (mirostat ignores
        ``samplers``: temperature, then mirostat); ``logit_bias`` and ``ignore_eos`` need the
        tokenizer. ValueError (naming the field) for a value the sampler cannot take."""
        on = set(self.chain())
        bias = native_logit_bias(self.logit_bias, tok, n_vocab) if tok is not None else {}
        if self.ignore_eos and tok is not None:
            for t in tok.eog_ids:
                bias[t] = -math.inf
        temp = "temperature" in on
        return SamplingParams(
            temperature=self.temperature if temp or self.mirostat else 1.0,
            top_k=self.top_k if "top_k" in on else 0,
            top_p=self.top_p if "top_p" in on else 1.0, min_p=self.min_p if "min_p" in on else 0.0,
            repeat_penalty=self.repeat_penalty if "penalties" in on else 1.0,
            repeat_last_n=self.repeat_last_n if self.repeat_last_n >= 0 else n_ctx,
            presence_penalty=self.presence_penalty if "penalties" in on else 0.0,
            frequency_penalty=self.frequency_penalty if "penalties" in on else 0.0, logit_bias=bias,
            top_n_sigma=self.top_n_sigma if "top_n_sigma" in on else -1.0,
            typical_p=min(max(self.typical_p, 0.0), 1.0) if "typ_p" in on else 1.0,
            xtc_probability=self.xtc_probability if "xtc" in on else 0.0, xtc_threshold=self.xtc_threshold,
            dynatemp_range=max(self.dynatemp_range, 0.0) if temp else 0.0,
            dynatemp_exponent=self.dynatemp_exponent, mirostat_mode=self.mirostat,
            mirostat_tau=self.mirostat_tau, mirostat_eta=self.mirostat_eta,
            dry_multiplier=self.dry_multiplier if "dry" in on else 0.0, dry_base=self.dry_base,
            dry_allowed_length=self.dry_allowed_length, dry_penalty_last_n=self.dry_penalty_last_n,
            dry_sequence_breakers=self.dry_sequence_breakers, chain="llama-server")

    def grammar_of(self) -> Grammar | None:
        """``grammar`` (GBNF), else ``json_schema`` (an empty schema: any object)."""
        if self.grammar:
            return as_grammar(self.grammar)
        if self.json_schema is not None:
            return Grammar.from_json_schema(self.json_schema or {"type": "object"})
        return None

    def speculative(self, default: SpecParams) -> SpecParams:
        """The draft settings: the request's ``speculative.*``, else the server's (``n_min`` at most
        ``n_max``, as llama-server clamps it)."""
        n_max = default.n_max if self.spec_n_max is None else self.spec_n_max
        n_min = default.n_min if self.spec_n_min is None else self.spec_n_min
        p_min = default.p_min if self.spec_p_min is None else self.spec_p_min
        return SpecParams(n_max=n_max, n_min=min(n_min, n_max), p_min=float(p_min))

    def settings(self, tok: Tokenizer | None = None, n_vocab: int = 0) -> dict[str, Any]:
        """``generation_settings``: the request's settings that splitllm uses."""
        bias = native_logit_bias(self.logit_bias, tok, n_vocab) if tok is not None else {}
        return {
            "seed": self.seed_value, "temperature": self.temperature, "dynatemp_range": self.dynatemp_range,
            "dynatemp_exponent": self.dynatemp_exponent, "top_k": self.top_k, "top_p": self.top_p,
            "min_p": self.min_p, "top_n_sigma": self.top_n_sigma, "xtc_probability": self.xtc_probability,
            "xtc_threshold": self.xtc_threshold, "typical_p": self.typical_p,
            "repeat_last_n": self.repeat_last_n, "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "mirostat": self.mirostat, "mirostat_tau": self.mirostat_tau, "mirostat_eta": self.mirostat_eta,
            "dry_multiplier": self.dry_multiplier, "dry_base": self.dry_base,
            "dry_allowed_length": self.dry_allowed_length, "dry_penalty_last_n": self.dry_penalty_last_n,
            "dry_sequence_breakers": list(self.dry_sequence_breakers), "stop": self.stops(),
            "max_tokens": self.n_predict, "n_predict": self.n_predict, "ignore_eos": self.ignore_eos,
            "stream": self.stream, "logit_bias": [{"bias": b, "token": t} for t, b in bias.items()],
            "n_probs": self.n_probs, "min_keep": self.min_keep, "grammar": self.grammar or "",
            "samplers": list(self.chain()), "post_sampling_probs": False,
        }


class InfillRequest(NativeRequest):
    """``POST /infill``: the code before and after the cursor, other files' text as context."""

    input_prefix: str | list[int | str]
    input_suffix: str | list[int | str]
    input_extra: list[dict[str, Any]] = []
    prompt: str = ""


class ApplyTemplateRequest(ChatRequest):
    """``POST /apply-template``: messages (and tools, chat_template_kwargs) rendered to text."""


def check_infill_body(data: Any) -> None:
    """llama-server's checks of an /infill body, with its messages (400)."""
    if not isinstance(data, dict):
        raise APIError(400, "request body: a JSON object is expected")
    if data.get("prompt") is not None and not isinstance(data["prompt"], str):
        raise APIError(400, '"prompt" must be a string', param="prompt")
    for name in ("input_prefix", "input_suffix"):
        if name not in data:
            raise APIError(400, f'"{name}" is required', param=name)
    extra = data.get("input_extra")
    if extra is not None and not isinstance(extra, list):
        raise APIError(400, '"input_extra" must be an array of {"filename": string, "text": string}',
                       param="input_extra")
    for chunk in extra or ():
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise APIError(400, 'extra_context chunk must contain a "text" field with a string value',
                           param="input_extra")
        if "filename" in chunk and not isinstance(chunk["filename"], str):
            raise APIError(400, "extra_context chunk's \"filename\" field must be a string",
                           param="input_extra")


def prompt_items(prompt: Any) -> list[str | list[int | str]]:
    """The prompts of a /completion request, as llama-server's tokenize_input_prompts reads
    ``prompt``: a string, a list of token ids (and strings) is one prompt; any other list holds
    several, each a string or such a list."""

    def one(p: Any) -> str | list[int | str]:
        if isinstance(p, str):
            return p
        if isinstance(p, list) and all(isinstance(x, str) or _is_token(x) for x in p):
            return p
        raise APIError(400, '"prompt" elements must be a string, a list of tokens, or a list of mixed '
                       "strings & tokens", param="prompt")

    if prompt is None:
        raise APIError(400, '"prompt" is required', param="prompt")
    if isinstance(prompt, list) and not any(_is_token(x) for x in prompt):
        if not prompt:
            raise APIError(400, '"prompt" must not be empty', param="prompt")
        return [one(p) for p in prompt]
    return [one(prompt)]


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def native_logit_bias(value: Any, tok: Tokenizer, n_vocab: int) -> dict[int, float]:
    """llama-server's ``logit_bias``: ``[[token, bias], ...]`` or ``{"token": bias}``, a token
    given as an id or as text (each of its tokens biased), ``false`` for a bias that bans it.
    Entries it would skip (bad shapes, ids outside the vocabulary) are skipped; biases add up."""
    out: dict[int, float] = {}
    if value is None:
        return out
    pairs = value.items() if isinstance(value, dict) else \
        [tuple(el) for el in value if isinstance(el, list) and len(el) == 2]
    for key, raw in pairs:
        if raw is False:
            bias = -math.inf
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool) and not math.isnan(raw):
            bias = float(raw)
        else:
            continue
        numeric = isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key) is not None  # (ASCII digits)
        if _is_token(key) or (numeric and isinstance(value, dict)):
            ids = [int(key)] if 0 <= int(key) < n_vocab else []
        elif isinstance(key, str):
            ids = tok.tokenize(key, add_bos=False, special=False)
        else:
            continue
        for t in ids:
            out[t] = out.get(t, 0.0) + bias
    return out
