"""What one generation looks like from the outside, shared by ``Model`` and the batching engine.

* :class:`TokenText` turns the sampled tokens of one generation into :class:`CompletionChunk` s:
  an end-of-generation token ends it, stop strings are held back and never emitted (not even in
  part), ``max_tokens`` ends it with ``"length"``. ``Model.stream`` drives it token by token; the
  engine drives one per active sequence, so both produce the same text for the same tokens.
* The ``completion_*`` / ``chat_*`` functions shape chunks into OpenAI's (and llama-cpp-python's)
  dicts: whole responses and server-sent-event chunks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from splitllm.logprobs import LogprobTracker, TokenLogprob, chat_logprobs, completion_logprobs
from splitllm.textstream import StopStream


@dataclass(frozen=True, slots=True)
class CompletionChunk:
    """One step of a generation stream. ``finish_reason`` is set on the last chunk only.
    ``logprobs``: the entries of the tokens whose text this chunk brings (when asked for);
    ``reasoning``: text of a thinking block, split from ``text`` (see :mod:`splitllm.reasoning`);
    ``tokens``: the tokens sampled since the previous chunk (an end-of-generation token included);
    ``calls``: tool calls already parsed out of the text (OpenAI's shape; see :mod:`splitllm.harmony`)."""

    text: str
    token: int | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    reasoning: str = ""
    tokens: tuple[int, ...] = ()
    calls: tuple[dict[str, Any], ...] = ()


class _PieceSource(Protocol):
    eog_ids: frozenset[int]

    def token_to_piece(self, token: int) -> bytes: ...


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list of strings (None: none; a string: that one)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (bytes, bytearray)) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    return list(stop)


def check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
        raise ValueError(f"max_tokens must be an integer or None (got {max_tokens!r})")


def completion_limit(max_tokens: int | None, n_prompt: int, n_ctx: int) -> int:
    """Most tokens a generation may add: ``max_tokens`` (None or <= 0: no limit), capped by the
    room left in a context of ``n_ctx`` cells after ``n_prompt`` prompt tokens."""
    room = n_ctx - n_prompt
    return room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)


class TokenText:
    """The text state of one generation; feed it every sampled token until ``done``.

    ``push(token)`` returns a chunk with the text that became safe to show (None when there is
    none yet); ``finish()`` returns the last chunk, with what was held back and the finish reason.
    With ``logprobs``, each token comes with its entry (``push(token, entry)``), and each chunk
    carries the entries of the tokens whose text it brings: tokens cut off by a stop string are
    left out, as is an end-of-generation token. ``stop_type`` says what ended the text, in
    llama-server's words: "eos" (an end-of-generation token), "word" (the stop string
    ``stop_word``), "limit" (``max_tokens`` or the context), "none" (a stopping criterion).
    """

    def __init__(self, tokenizer: _PieceSource, *, n_prompt: int, limit: int,
                 stop: Sequence[str] = (), logprobs: int | None = None) -> None:
        self._tokenizer = tokenizer
        self._eog = tokenizer.eog_ids
        self._text = StopStream(list(stop))
        self.n_logprobs = logprobs
        self._lp = LogprobTracker() if logprobs is not None else None
        self.n_prompt = n_prompt
        self.limit = limit
        self.n_done = 0
        self.finish_reason = "length"
        self.stop_type = "limit"
        self.done = limit <= 0
        self._unsent: list[int] = []  # tokens pushed since the last chunk

    @property
    def stop_word(self) -> str:
        return self._text.word

    def push(self, token: int, entry: TokenLogprob | None = None) -> CompletionChunk | None:
        if self.done:
            raise ValueError("the generation is already finished")
        self._unsent.append(token)
        if token in self._eog:
            self.finish_reason, self.stop_type = "stop", "eos"
            self.done = True
            return None
        if (entry is None) != (self._lp is None):
            raise ValueError("a token's log-probability entry is given exactly when logprobs are asked for")
        self.n_done += 1
        data = self._tokenizer.token_to_piece(token)
        if self._lp is not None:
            self._lp.add(entry)  # type: ignore[arg-type]
        piece, stopped = self._text.push(data)
        if stopped:
            self.finish_reason, self.stop_type = "stop", "word"
            self.done = True
        elif self.n_done >= self.limit:
            self.done = True
        lps = self._released()
        if not piece and not lps:
            return None
        return CompletionChunk(piece, token, self.n_prompt, self.n_done, logprobs=lps, tokens=self._take())

    def _take(self) -> tuple[int, ...]:
        out = tuple(self._unsent)
        self._unsent.clear()
        return out

    def stop(self) -> None:
        """Ends the generation here, finish reason "stop" (a stopping criterion said so)."""
        self.finish_reason, self.stop_type = "stop", "none"
        self.done = True

    def _released(self) -> tuple[TokenLogprob, ...]:
        return self._lp.release(self._text.emitted) if self._lp is not None else ()

    def finish(self) -> CompletionChunk:
        text = self._text.flush()
        return CompletionChunk(text, None, self.n_prompt, self.n_done, self.finish_reason, self._released(),
                               tokens=self._take())


# ---- OpenAI shapes ----

def usage(c: CompletionChunk) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def completion_head(model: str) -> dict[str, Any]:
    return {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
            "model": model}


def chat_head(model: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": model}


@dataclass(frozen=True, slots=True)
class Echo:
    """The prompt as a completion shows it: its ``text``, put before the generated text when
    ``shown`` (``echo=True``) and counted in the generated tokens' ``text_offset`` either way (as
    llama-cpp-python and OpenAI count offsets from the start of the prompt); ``logprobs``: the
    prompt tokens' entries when echoed with log-probabilities (None: not asked for)."""

    text: str = ""
    shown: bool = False
    logprobs: Sequence[TokenLogprob] | None = None


def completion_chunk(head: dict[str, Any], text: str, c: CompletionChunk | None = None,
                     logprobs: dict[str, Any] | None = None, index: int = 0) -> dict[str, Any]:
    """A ``text_completion`` stream chunk; with the last CompletionChunk ``c``: its finish and usage."""
    out = {**head, "choices": [{"text": text, "index": index, "logprobs": logprobs,
                                "finish_reason": None if c is None else c.finish_reason}]}
    if c is not None and c.finish_reason is not None:
        out["usage"] = usage(c)
    return out


def echo_chunk(head: dict[str, Any], echo: Echo, index: int = 0) -> dict[str, Any] | None:
    """The stream chunk of the echoed prompt (None when there is nothing to echo)."""
    if not echo.shown or (not echo.text and echo.logprobs is None):
        return None
    return completion_chunk(head, echo.text, logprobs=None if echo.logprobs is None
                            else completion_logprobs(echo.logprobs), index=index)


def generated_chunk(head: dict[str, Any], c: CompletionChunk, want_logprobs: bool,
                    echo: Echo = Echo(), index: int = 0) -> dict[str, Any]:
    """The stream chunk of a CompletionChunk (offsets after the echoed text)."""
    lps = None
    if want_logprobs and (c.text or c.logprobs):
        lps = completion_logprobs(c.logprobs, len(echo.text))
    return completion_chunk(head, c.text, c if c.finish_reason is not None else None, lps, index)


def completion_chunks(head: dict[str, Any], chunks: Iterable[CompletionChunk], echo: Echo = Echo(),
                      want_logprobs: bool = False) -> Iterator[dict[str, Any]]:
    first = echo_chunk(head, echo)
    if first is not None:
        yield first
    for c in chunks:
        yield generated_chunk(head, c, want_logprobs, echo)


def last_chunk(chunks: Sequence[CompletionChunk]) -> CompletionChunk:
    """The final chunk of a finished stream (ValueError if the stream did not finish)."""
    if not chunks or chunks[-1].finish_reason is None:
        raise ValueError("the generation stream ended without a finish reason")
    return chunks[-1]


def completion_choice(chunks: Iterable[CompletionChunk], echo: Echo = Echo(), want_logprobs: bool = False,
                      index: int = 0) -> tuple[dict[str, Any], CompletionChunk]:
    """One choice of a ``text_completion`` from its whole stream, and the stream's last chunk."""
    chunks = list(chunks)
    last = last_chunk(chunks)
    entries = list(echo.logprobs or ()) if echo.shown else []
    for c in chunks:
        entries += [e.at(e.offset + len(echo.text)) for e in c.logprobs]
    text = (echo.text if echo.shown else "") + "".join(c.text for c in chunks)
    lps = completion_logprobs(entries) if want_logprobs else None
    return {"text": text, "index": index, "logprobs": lps, "finish_reason": last.finish_reason}, last


def completion_response(head: dict[str, Any], chunks: Iterable[CompletionChunk], echo: Echo = Echo(),
                        want_logprobs: bool = False) -> dict:
    choice, last = completion_choice(chunks, echo, want_logprobs)
    return {**head, "choices": [choice], "usage": usage(last)}


def chat_role_chunk(head: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """The first ``chat.completion.chunk`` of a stream: the assistant role, no text."""
    return {**head, "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": {"role": "assistant"}, "logprobs": None,
                         "finish_reason": None}]}


def chat_chunk_dicts(head: dict[str, Any], c: CompletionChunk, want_logprobs: bool = False,
                     index: int = 0) -> list[dict[str, Any]]:
    """``chat.completion.chunk`` objects for one CompletionChunk: its text, then (last) the finish."""
    base = {**head, "object": "chat.completion.chunk"}
    out = []
    lps = chat_logprobs(c.logprobs) if want_logprobs else None
    if c.reasoning:  # the tokens' entries go with the first piece of text they brought
        out.append(reasoning_chunk(base, c.reasoning, index, lps))
        lps = None
    if c.text or (c.logprobs and not c.reasoning):
        out.append({**base, "choices": [{"index": index, "delta": {"content": c.text}, "logprobs": lps,
                                         "finish_reason": None}]})
    if c.finish_reason is not None:
        out.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                         "finish_reason": c.finish_reason}], "usage": usage(c)})
    return out


def reasoning_chunk(base: dict[str, Any], text: str, index: int = 0,
                    logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` carrying reasoning text (``delta.reasoning_content``)."""
    return {**base, "choices": [{"index": index, "delta": {"reasoning_content": text}, "logprobs": logprobs,
                                 "finish_reason": None}]}


def chat_message(content: str | None, chunks: Sequence[CompletionChunk]) -> dict[str, Any]:
    """The assistant message of a whole answer: its content and, when there is any, the reasoning."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    reasoning = "".join(c.reasoning for c in chunks)
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def chat_chunks(head: dict[str, Any], chunks: Iterable[CompletionChunk],
                want_logprobs: bool = False) -> Iterator[dict[str, Any]]:
    """OpenAI ``chat.completion.chunk`` objects from a generation stream."""
    yield chat_role_chunk(head)
    for c in chunks:
        yield from chat_chunk_dicts(head, c, want_logprobs)


def chat_choice(chunks: Iterable[CompletionChunk], want_logprobs: bool = False,
                index: int = 0) -> tuple[dict[str, Any], CompletionChunk]:
    """One choice of a ``chat.completion`` from its whole stream, and the stream's last chunk."""
    chunks = list(chunks)
    last = last_chunk(chunks)
    entries = [e for c in chunks for e in c.logprobs]
    return ({"index": index, "message": chat_message("".join(c.text for c in chunks), chunks),
             "logprobs": chat_logprobs(entries) if want_logprobs else None,
             "finish_reason": last.finish_reason}, last)


def chat_response(head: dict[str, Any], chunks: Iterable[CompletionChunk],
                  want_logprobs: bool = False) -> dict[str, Any]:
    choice, last = chat_choice(chunks, want_logprobs)
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(last)}
