"""gpt-oss's "harmony" answers, parsed as llama-server's GPT-OSS chat format parses them.

A harmony template (its source holds ``<|channel|>``, llama.cpp's test) ends the prompt with
``<|start|>assistant``; the model then writes one or more messages, each a header, ``<|message|>``
and a body, separated by ``<|end|><|start|>assistant``; ``<|return|>`` (a final answer) or
``<|call|>`` (a tool call) ends the generation. The marker tokens render as text (llama.cpp makes
``<|channel|>``, ``<|message|>``, ``<|start|>``, ``<|constrain|>`` and ``<|end|>`` user-defined
tokens), so the answer is parsed from its text:

* ``<|channel|>analysis<|message|>...``: reasoning (``reasoning_content``); with reasoning format
  "none", the message as written (header, body and ``<|end|>``) is content, as llama-server keeps it;
* ``<|channel|>final<|message|>...`` (an optional `` <|constrain|>json`` after the channel) and a
  ``<|channel|>commentary<|message|>`` preamble: content;
* a recipient ``to=functions.NAME``, in the role header (``<|start|>assistant to=functions.NAME
  <|channel|>commentary json<|message|>``) or the channel's (``<|channel|>commentary
  to=functions.NAME <|constrain|>json<|message|>``): a tool call whose arguments are the body (a
  JSON object), when NAME is one of the request's tools;
* any other recipient (a built-in tool such as ``to=python``, or a function that was not offered):
  dropped, as llama-server drops such unsolicited calls; a stray ``<|channel|>commentary
  to=assistant`` before a channel is skipped.

Text that does not begin with a header is content as it is.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from splitllm.completions import CompletionChunk
from splitllm.reasoning import held_back
from splitllm.tools import new_call

CHANNEL, MESSAGE, END, START = "<|channel|>", "<|message|>", "<|end|>", "<|start|>assistant"
_HEAD_STARTS = (CHANNEL, " to=")
_MAX_HEADER = 256  # a longer run of text without <|message|> is not a header
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL_NAME = re.compile(re.escape(CHANNEL) + r"([A-Za-z0-9_-]+)")


def is_harmony(template_source: str | None) -> bool:
    """Whether a chat template writes harmony messages (llama.cpp's test for its GPT-OSS format)."""
    return bool(template_source) and CHANNEL in template_source  # type: ignore[operator]


def harmony_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the gpt-oss template takes them (what llama-server does before rendering): an
    assistant's ``reasoning_content`` as ``thinking``; with tool calls, the content left out (the
    template refuses both), as is a ``None`` content beside tool calls."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls")
        if isinstance(m.get("reasoning_content"), str):
            m["thinking"] = m.pop("reasoning_content")
            if calls:
                m.pop("content", None)
        if calls and m.get("content") is None:
            m.pop("content", None)
        out.append(m)
    return out


def _may_be_header(text: str) -> bool:
    return any(text.startswith(h) or h.startswith(text) for h in _HEAD_STARTS)


class HarmonyParser:
    """Parses one generation's text as it streams. ``push(text)`` and ``finish()`` return events:
    ``("reasoning", str)``, ``("content", str)``, ``("call", dict)`` (OpenAI's shape). However the
    text is cut into pieces, the events carry the same reasoning, content and calls.

    ``reasoning``: analysis messages go to reasoning (False: kept in the content as written);
    ``names``: the tools a call may name (None: no tools, every call is dropped); ``max_calls``:
    the most calls kept (None: any number); ``inside``: the kind of the message the prompt left
    open ("reasoning": an analysis message, "content": a final one), whose body the text goes on."""

    def __init__(self, *, reasoning: bool = True, names: frozenset[str] | None = None,
                 max_calls: int | None = None, inside: str = "") -> None:
        self.reasoning = reasoning
        self.names = names
        self.max_calls = max_calls
        self.n_calls = 0
        self._mode = "header"  # header | body | between | raw
        self._kind = ""  # of the body: reasoning | content | call | drop
        self._call = ""  # the name a call's body is for
        self._raw = False  # the body is an analysis message kept as content
        self._buf = ""
        self._events: list[tuple[str, Any]] = []
        if inside:  # the prompt left a message open (a continued answer): "reasoning" or "content"
            self._mode, self._kind = "body", inside
            self._raw = inside == "reasoning" and not reasoning
            if self._raw:
                self._kind = "content"

    def push(self, text: str) -> list[tuple[str, Any]]:
        self._buf += text
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[tuple[str, Any]]:
        """The rest: an unfinished body ends the message, an unfinished header is content."""
        if self._mode == "body":
            self._end_body(self._buf)
        elif self._mode in ("header", "raw"):
            self._emit("content", self._buf)
        self._buf = ""
        return self._take()

    def _step(self) -> bool:
        """Moves on as far as the buffer allows; whether to go on."""
        if self._mode == "raw":
            self._emit("content", self._buf)
            self._buf = ""
            return False
        if self._mode == "between":
            if self._buf.startswith(START):
                self._buf, self._mode = self._buf[len(START):], "header"
                return True
            if START.startswith(self._buf):
                return False
            self._mode = "raw"
            return True
        if self._mode == "header":
            return self._header()
        return self._body()

    def _header(self) -> bool:
        i = self._buf.find(MESSAGE)
        if i < 0:
            if self._buf and (not _may_be_header(self._buf) or len(self._buf) > _MAX_HEADER):
                self._mode = "raw"
                return True
            return False
        if not _may_be_header(self._buf[:i]):
            self._mode = "raw"
            return True
        header, self._buf = self._buf[: i + len(MESSAGE)], self._buf[i + len(MESSAGE):]
        self._kind, self._call = self._classify(header[:i])
        self._mode = "body"
        self._raw = self._kind == "reasoning" and not self.reasoning
        if self._raw:  # an analysis message kept as written
            self._kind = "content"
            self._emit("content", header)
        return True

    def _classify(self, header: str) -> tuple[str, str]:
        """What a message's body is: (kind, the function a call names)."""
        recipients = [r for r in _RECIPIENT.findall(header) if r != "assistant"]
        channels = _CHANNEL_NAME.findall(header)
        if recipients:
            to = recipients[0]
            name = to[len("functions."):] if to.startswith("functions.") else None
            if name is not None and self.names is not None and name in self.names:
                return "call", name
            return "drop", ""
        if channels and channels[-1] == "analysis":
            return "reasoning", ""
        return "content", ""

    def _body(self) -> bool:
        end = self._buf.find(END)
        if end < 0:
            if self._kind in ("reasoning", "content"):
                keep = held_back(self._buf, END)
                self._emit(self._kind, self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
            return False
        body, self._buf = self._buf[:end], self._buf[end + len(END):]
        self._end_body(body + (END if self._raw else ""))
        self._mode = "between"
        return True

    def _end_body(self, body: str) -> None:
        if self._kind in ("reasoning", "content"):
            self._emit(self._kind, body)
        elif self._kind == "call":
            self._end_call(body)

    def _end_call(self, body: str) -> None:
        try:
            args = json.loads(body)
        except ValueError:
            return
        if not isinstance(args, dict) or (self.max_calls is not None and self.n_calls >= self.max_calls):
            return
        self.n_calls += 1
        self._events.append(("call", new_call(self._call, args)))

    def _emit(self, kind: str, text: str) -> None:
        if not text:
            return
        if self._events and self._events[-1][0] == kind:
            self._events[-1] = (kind, self._events[-1][1] + text)
        else:
            self._events.append((kind, text))

    def _take(self) -> list[tuple[str, Any]]:
        out, self._events = self._events, []
        return out


class HarmonySplitter:
    """A generation's chunks with their harmony text parsed: ``text`` the content, ``reasoning``
    the analysis, ``calls`` the tool calls (held text is released with the last chunk)."""

    def __init__(self, *, reasoning: bool = True, names: frozenset[str] | None = None,
                 max_calls: int | None = None, inside: str = "") -> None:
        self.parser = HarmonyParser(reasoning=reasoning, names=names, max_calls=max_calls, inside=inside)

    def chunk(self, c: CompletionChunk) -> CompletionChunk:
        events = self.parser.push(c.text)
        if c.finish_reason is not None:
            events += self.parser.finish()
        parts: dict[str, str] = {"reasoning": "", "content": ""}
        calls = []
        for kind, x in events:
            if kind == "call":
                calls.append(x)
            else:
                parts[kind] += x
        return dataclasses.replace(c, text=parts["content"], reasoning=parts["reasoning"], calls=tuple(calls))


def split_harmony(chunks: Iterable[CompletionChunk], **kw: Any) -> Iterator[CompletionChunk]:
    """:class:`HarmonySplitter` over a stream (``kw``: its options)."""
    splitter = HarmonySplitter(**kw)
    for c in chunks:
        yield splitter.chunk(c)
