"""A chat completion's stream as a sequence of output items, for the APIs that answer in items
or content blocks rather than deltas of one message (Anthropic's Messages, OpenAI's Responses).

:class:`ItemStream` reads the ``chat.completion.chunk`` dicts of one choice (as
:meth:`splitllm.api.ChatRun.events` yields them) and reports, in order, the start of an item
(reasoning, text, or a tool call), pieces of it, and its end: one item is open at a time, and a
new kind of delta (or a new tool call) ends the open one. It also keeps the finish reason and the
usage of the last chunk.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any, Literal

Kind = Literal["reasoning", "text", "tool_call"]


@dataclasses.dataclass(eq=False)
class Item:
    kind: Kind
    index: int            # its place among the answer's items (0, 1, ...)
    text: str = ""        # the reasoning, the text, or a tool call's arguments (JSON) so far
    call_id: str = ""     # a tool call's id and function name
    name: str = ""

    def arguments(self) -> dict[str, Any]:
        """A tool call's arguments as an object (an empty one if they are not a JSON object)."""
        try:
            value = json.loads(self.text or "{}")
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


# ("start", item, "") / ("delta", item, piece) / ("stop", item, "")
Op = tuple[Literal["start", "delta", "stop"], Item, str]


class ItemStream:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._open: Item | None = None

    def feed(self, chunk: dict[str, Any]) -> list[Op]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        ops: list[Op] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                ops += self._piece("reasoning", delta["reasoning_content"])
            if delta.get("content"):
                ops += self._piece("text", delta["content"])
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                if call.get("id") or self._open is None or self._open.kind != "tool_call":
                    ops += self._start("tool_call", call_id=call.get("id") or new_id("call_"),
                                       name=fn.get("name") or "")
                if fn.get("arguments"):
                    ops += self._add(fn["arguments"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return ops

    def close(self) -> list[Op]:
        """Ends the open item (at the end of the stream)."""
        if self._open is None:
            return []
        item, self._open = self._open, None
        return [("stop", item, "")]

    def _piece(self, kind: Kind, text: str) -> list[Op]:
        ops = self._start(kind) if self._open is None or self._open.kind != kind else []
        return ops + self._add(text)

    def _start(self, kind: Kind, **fields: str) -> list[Op]:
        ops = self.close()
        item = Item(kind, len(self.items), **fields)
        self.items.append(item)
        self._open = item
        return ops + [("start", item, "")]

    def _add(self, text: str) -> list[Op]:
        assert self._open is not None
        self._open.text += text
        return [("delta", self._open, text)]


def message_items(message: dict[str, Any]) -> list[Item]:
    """A whole ``chat.completion`` message as items: its reasoning, its text, its tool calls."""
    items: list[Item] = []
    if message.get("reasoning_content"):
        items.append(Item("reasoning", len(items), message["reasoning_content"]))
    if message.get("content"):
        items.append(Item("text", len(items), message["content"]))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        items.append(Item("tool_call", len(items), fn.get("arguments") or "",
                          call.get("id") or new_id("call_"), fn.get("name") or ""))
    return items


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]
