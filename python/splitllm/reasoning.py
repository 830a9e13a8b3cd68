"""A thinking model's reasoning split from its answer, as llama-server's ``--reasoning-format
deepseek`` does it: what the model writes between ``<think>`` and ``</think>`` at the start of its
answer (Qwen3, DeepSeek-R1 distills) goes to ``message.reasoning_content`` (``delta.reasoning_content``
when streamed), the rest to ``content``. When the prompt itself ends with ``<think>`` (templates
that open the block for the model), the answer starts inside it. A block still open when the
generation ends is all reasoning. As in llama-server, the reasoning is stripped of whitespace at
both ends and whitespace right after ``</think>`` is dropped. Format ``"none"`` leaves the text as
it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from splitllm.completions import CompletionChunk
from splitllm.textstream import StrippedText

REASONING_FORMATS = ("none", "deepseek")
OPEN, CLOSE = "<think>", "</think>"


def check_reasoning_format(fmt: Any) -> str:
    """``fmt`` if it is a reasoning format (ValueError otherwise)."""
    if fmt not in REASONING_FORMATS:
        raise ValueError(f"reasoning_format must be one of {', '.join(REASONING_FORMATS)} (got {fmt!r})")
    return fmt


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether a rendered prompt leaves a ``<think>`` block open for the answer."""
    return prompt_text.rstrip().endswith(OPEN)


def held_back(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (kept back until more text comes)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningSplitter:
    """Splits one generation's text, as it streams, into (reasoning, content) pieces; however the
    text is cut into pieces, the joined results are the same."""

    def __init__(self, *, inside: bool = False) -> None:
        self._mode = "reasoning" if inside else "start"
        self._buf = ""
        self._reasoning = StrippedText().push  # the reasoning is given out stripped

    def push(self, text: str) -> tuple[str, str]:
        """The (reasoning, content) that ``text`` makes safe to give out (some may be held back)."""
        self._buf += text
        reasoning = content = ""
        if self._mode == "start":
            lead = self._buf.lstrip()
            if lead.startswith(OPEN):
                self._mode, self._buf = "reasoning", lead[len(OPEN):]
            elif OPEN.startswith(lead):
                return "", ""  # may still become <think> (nothing but whitespace yet, or a part of it)
            else:
                self._mode = "content"
        if self._mode == "reasoning":
            end = self._buf.find(CLOSE)
            if end < 0:
                keep = held_back(self._buf, CLOSE)
                reasoning, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                return self._reasoning(reasoning), ""
            reasoning, self._buf = self._reasoning(self._buf[:end]), self._buf[end + len(CLOSE):].lstrip()
            self._mode = "after" if not self._buf else "content"
        if self._mode == "after":  # whitespace right after </think> is dropped, as llama-server does
            self._buf = self._buf.lstrip()
            if not self._buf:
                return reasoning, ""
            self._mode = "content"
        content, self._buf = self._buf, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is held at the end: an open block's tail is reasoning, anything else content."""
        rest, self._buf = self._buf, ""
        if self._mode == "reasoning":
            return self._reasoning(rest), ""
        return "", rest if self._mode != "after" else ""

    def chunk(self, c: CompletionChunk) -> CompletionChunk:
        """``c`` with its text split (held text is released with the last chunk)."""
        reasoning, content = self.push(c.text)
        if c.finish_reason is not None:
            r, t = self.finish()
            reasoning, content = reasoning + r, content + t
        return dataclasses.replace(c, text=content, reasoning=reasoning)


def split_reasoning(chunks: Iterable[CompletionChunk], *, inside: bool = False) -> Iterator[CompletionChunk]:
    splitter = ReasoningSplitter(inside=inside)
    for c in chunks:
        yield splitter.chunk(c)
