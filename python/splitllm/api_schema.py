"""Request bodies of the OpenAI-compatible server, and its error type.

Types are checked strictly (a string where a number belongs is an error, as with OpenAI);
fields this server does not know are ignored, so clients may send the full OpenAI set. JSON
``null`` for an optional field means its default, as with OpenAI (clients such as LangChain send
every field, unset ones as null); only ``prompt`` and ``messages`` are required.
Defaults are those of ``Model.create_completion`` and ``Model.create_chat_completion``, so a
request and a direct call with the same arguments give the same result, but for the sampler
chain: these endpoints run llama-server's (as llama-server does on its OpenAI endpoints, see
:mod:`splitllm.sampling`), which differs from the Model's (llama-cpp-python's) only with mirostat
(the temperature applies before it, the penalties do not) and with a temperature of 0 together
with typical_p, XTC, top_n_sigma or dynatemp_range. llama-server's DRY fields (``dry_multiplier``,
``dry_base``, ``dry_allowed_length``, ``dry_penalty_last_n``, ``dry_sequence_breakers``) are taken
with its defaults, ranges and rules (``dry_base`` below 1 means 1.75; an empty list of breakers is
refused); DRY's history starts with the prompt, as llama-server's.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from splitllm.dry import DEFAULT_BREAKERS
from splitllm.logprobs import MAX_TOP_LOGPROBS
from splitllm.sampling import SamplingParams, check_tfs_z


class APIError(Exception):
    """An error answered with an OpenAI-style body: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


_SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams)) | {"tfs_z"}


def sampling_error(e: ValueError) -> APIError:
    """The 400 for a sampler setting :class:`SamplingParams` refused, naming the field its message
    starts with (``logit_bias`` when it mentions that)."""
    message = str(e)
    m = re.match(r"[a-z_]+", message)
    param = m.group(0) if m and m.group(0) in _SAMPLING_FIELDS else \
        "logit_bias" if "logit_bias" in message else None
    return APIError(400, message, param=param)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _NullIsDefault(BaseModel):
    """A request body in which ``null`` for a field that has a default means that default (the
    field then counts as unset, as if it were absent)."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}


MAX_CHOICES = 16    # choices per prompt (n)
MAX_PROMPTS = 64    # prompts in one completions request
MAX_EMBED_INPUTS = 2048  # inputs in one embeddings request (OpenAI's limit)
LogitBias = dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]]  # OpenAI's range of a bias


class StreamOptions(_NullIsDefault):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _Sampling(_NullIsDefault):
    """Fields shared by both endpoints (llama-cpp-python's extensions included)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=-1)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per prompt")
    user: str | None = None
    grammar: str | None = None  # GBNF (llama.cpp's and llama-cpp-python's servers take it)
    lora: Any = None  # llama-server's per-request adapter scales (checked by api_lora.lora_scales_of)
    id_slot: int = -1  # llama-server's: the slot to run in (modulo the slots; negative: any)
    # llama-cpp-python's server's samplers (its ranges), typical_p, and llama-server's (``mirostat``
    # is its name of mirostat_mode; both may be given when they agree)
    typical_p: float = Field(1.0, ge=0.0, le=1.0)
    mirostat_mode: int = Field(0, ge=0, le=2)
    mirostat: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float = Field(5.0, ge=0.0, le=10.0)
    mirostat_eta: float = Field(0.1, ge=0.001, le=1.0)
    tfs_z: float = 1.0  # tail-free sampling: gone from llama.cpp, only 1.0 (off)
    xtc_probability: float = Field(0.0, ge=0.0, le=1.0)
    xtc_threshold: float = Field(0.1, ge=0.0, le=1.0)
    top_n_sigma: float = -1.0
    dynatemp_range: float = Field(0.0, ge=0.0)
    dynatemp_exponent: float = 1.0
    # llama-server's DRY (dry_base below 1 means its default, as llama-server reads it)
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = Field(2, ge=0)
    dry_penalty_last_n: int = Field(64, ge=-1)  # -1: the whole context
    dry_sequence_breakers: list[str] = Field(default_factory=lambda: list(DEFAULT_BREAKERS), min_length=1)

    @field_validator("tfs_z")
    @classmethod
    def _tfs_z(cls, v: float) -> float:
        check_tfs_z(v)
        return v

    @field_validator("dry_base")
    @classmethod
    def _dry_base(cls, v: float) -> float:
        return v if v >= 1.0 else 1.75

    @model_validator(mode="after")
    def _one_mirostat(self) -> _Sampling:
        if self.mirostat is not None and "mirostat_mode" in self.model_fields_set and \
                self.mirostat != self.mirostat_mode:
            raise APIError(400, f"mirostat ({self.mirostat}) and mirostat_mode ({self.mirostat_mode}) are "
                           "two names of one setting: give one, or the same value", param="mirostat")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self) -> SamplingParams:
        """The sampler settings, llama-server's chain (APIError 400 naming the field for a value
        the sampler refuses)."""
        mirostat = self.mirostat if self.mirostat is not None else self.mirostat_mode
        try:
            return SamplingParams(
                temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                repeat_penalty=self.repeat_penalty, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias,
                typical_p=self.typical_p, mirostat_mode=mirostat,
                mirostat_tau=self.mirostat_tau, mirostat_eta=self.mirostat_eta,
                xtc_probability=self.xtc_probability, xtc_threshold=self.xtc_threshold,
                top_n_sigma=self.top_n_sigma, dynatemp_range=self.dynatemp_range,
                dynatemp_exponent=self.dynatemp_exponent, dry_multiplier=self.dry_multiplier,
                dry_base=self.dry_base, dry_allowed_length=self.dry_allowed_length,
                dry_penalty_last_n=self.dry_penalty_last_n, dry_sequence_breakers=self.dry_sequence_breakers,
                chain="llama-server")
        except ValueError as e:
            raise sampling_error(e) from None


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False  # before max_tokens, whose check reads it
    max_tokens: int = Field(16, ge=0)
    suffix: str | None = None  # fill-in-the-middle (see splitllm.infill)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def n_logprobs(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return self.logprobs

    @field_validator("max_tokens")
    @classmethod
    def _zero_needs_echo(cls, v: int, info: ValidationInfo) -> int:
        if v == 0 and not info.data.get("echo"):
            raise ValueError("max_tokens may be 0 only with echo (the prompt scored, nothing generated)")
        return v

    @property
    def generate(self) -> bool:
        """False for ``max_tokens: 0`` with ``echo``: the prompt is read (and scored), nothing added."""
        return self.max_tokens > 0

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request: a string or a list of token ids is one prompt; a list of
        strings or of token lists is several."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) > MAX_PROMPTS:
                raise APIError(400, f"at most {MAX_PROMPTS} prompts per request (got {len(p)})",
                               param="prompt")
            return list(p)  # type: ignore[arg-type]
        return [p]  # type: ignore[list-item]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: str
    content: str | list[ContentPart] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message for the chat template: text parts joined into one string."""
        d = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            d["content"] = "".join(p.text for p in self.content)
        return d


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: dict[str, Any] | None = None
    # Checked by splitllm.tools.tool_plan (a 400 that names the field):
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    functions: list[Any] | None = None  # the legacy names of tools and tool_choice
    function_call: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # more chat template variables (llama-server's)
    reasoning_format: Literal["none", "deepseek"] | None = None  # None: the server's --reasoning-format
    # llama-server's thinking budget (-1: the server's --reasoning-budget); see splitllm.reasoning_budget
    reasoning_budget_tokens: int | None = Field(None, ge=-1)
    thinking_budget_tokens: int | None = Field(None, ge=-1)
    reasoning_budget_message: str | None = None
    # llama-server's assistant prefill (splitllm.api._Service.continuation): true, "content" or
    # "reasoning_content" (other values: none); add_generation_prompt false renders no header
    continue_final_message: Any = None
    add_generation_prompt: bool = True
    # max_tokens caps the answer (at the context's end) rather than having to fit: for the APIs
    # translated into chat requests, whose clients send large limits (as llama-server reads them)
    limit_is_cap: ClassVar[bool] = False

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs to be true")
        return v

    @property
    def n_logprobs(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def token_limit_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


class EmbeddingRequest(_NullIsDefault):
    """``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, v: int | None) -> int | None:
        if v is not None:
            raise ValueError("dimensions is not supported (the model's embeddings have a fixed size)")
        return v

    def inputs(self) -> list[str | list[int]]:
        """The texts (or token lists) to embed, one or several."""
        x = self.input
        items: list = list(x) if isinstance(x, list) and x and isinstance(x[0], (str, list)) else [x]
        if len(items) > MAX_EMBED_INPUTS:
            raise APIError(400, f"at most {MAX_EMBED_INPUTS} inputs per request (got {len(items)})",
                           param="input")
        return items


class RerankRequest(_NullIsDefault):
    """``POST /v1/rerank`` (also ``/rerank``, ``/v1/reranking``): llama-server's reranking, a query
    and documents (or TEI's ``texts``, answered in TEI's shape)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: str
    documents: list[str] | None = None
    texts: list[str] | None = None
    top_n: int | None = None
    return_text: bool = False
    model: str | None = None

    def docs(self) -> list[str]:
        docs = self.texts if self.texts is not None else self.documents  # (llama-server's order)
        if not docs:
            raise APIError(400, '"documents" must be a non-empty string array', param="documents")
        if len(docs) > MAX_EMBED_INPUTS:
            raise APIError(400, f"at most {MAX_EMBED_INPUTS} documents per request (got {len(docs)})",
                           param="documents")
        return docs


class TokenizeRequest(_NullIsDefault):
    """``POST /tokenize`` (llama-server's) and ``POST /extras/tokenize`` (llama-cpp-python's,
    ``input``)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    content: str | None = None
    input: str | None = None
    add_special: bool = False
    with_pieces: bool = False
    model: str | None = None

    def text(self) -> str:
        t = self.content if self.content is not None else self.input
        if t is None:
            raise APIError(400, "give the text as 'content' (or 'input')", param="content")
        return t


class DetokenizeRequest(_NullIsDefault):
    """``POST /detokenize`` and ``POST /extras/detokenize``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    tokens: list[int]
    model: str | None = None
