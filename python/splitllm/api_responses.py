"""OpenAI's Responses API, as llama-server answers it: ``POST /v1/responses`` (also ``/responses``)
and ``POST /v1/responses/input_tokens`` (also ``/responses/input_tokens``).

A request is translated into a chat completion request and run on the chat path
(:meth:`splitllm.api._Service.start_chat`), as llama-server does
(server_chat_convert_responses_to_chatcmpl): ``instructions`` becomes a system message; ``input``
is a string (one user message) or a list of items: messages (``role`` user / system / developer
with a string or ``input_text`` parts; assistant ``message`` items with ``output_text`` parts),
``function_call`` items (the calls of an assistant turn, merged into the assistant message before
them), ``function_call_output`` items (tool messages) and ``reasoning`` items (the next assistant
message's ``reasoning_content``); ``tools`` of type ``function`` (``name``, ``description``,
``parameters``; other types are skipped, as llama-server does); ``tool_choice`` (``auto``,
``none``, ``required``, or ``{"type": "function", "name"}``); ``max_output_tokens`` (a cap);
``text.format`` (``json_object``, ``json_schema``) as the chat's ``response_format``; the sampler
fields of the chat API. ``previous_response_id`` is refused (nothing is stored), and so are images
and files (the models served here read text only).

The answer is a ``response`` whose ``output`` holds a ``reasoning`` item (when the model reasons),
a ``message`` item with one ``output_text`` part, and a ``function_call`` item per tool call, with
``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``, cached input tokens); its status
is ``completed``, as llama-server's. With ``stream: true`` it comes as OpenAI's server-sent events
(``event:`` the type, ``data:`` the object with a ``sequence_number``): ``response.created``,
``response.in_progress``, per item ``response.output_item.added``, its deltas
(``response.reasoning_text.delta``; ``response.content_part.added``,
``response.output_text.delta``, ``response.output_text.done``, ``response.content_part.done``;
``response.function_call_arguments.delta`` / ``.done``) and ``response.output_item.done``, then
``response.completed``; a failure mid-stream is an ``error`` event.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from splitllm.api import CLIENT_CLOSED, ChatRun
from splitllm.api_anthropic import LooseChatRequest
from splitllm.api_items import Item, ItemStream, message_items, new_id
from splitllm.api_native import _json_body, _validated
from splitllm.api_schema import APIError

if TYPE_CHECKING:
    from splitllm.api import _Service

# The Responses fields that have no chat counterpart, or one under another name (translated here);
# "model" is ignored, as llama-server does (clients name the model they were written for).
RESPONSES_ONLY = {"input", "instructions", "tools", "tool_choice", "max_output_tokens", "reasoning", "text",
                  "store", "metadata", "previous_response_id", "truncation", "include", "stream",
                  "stream_options", "background", "prompt", "service_tier", "messages", "max_tokens",
                  "top_logprobs", "model"}


def add_responses_routes(app: FastAPI, svc: _Service) -> None:
    @app.post("/v1/responses")
    @app.post("/responses")
    async def responses(request: Request) -> Response:
        return await create_response(svc, await _json_body(request), request)

    @app.post("/v1/responses/input_tokens")
    @app.post("/responses/input_tokens")
    async def input_tokens(request: Request) -> dict[str, Any]:
        body = chat_request(await _json_body(request), stream=False)
        return {"object": "response.input_tokens", "input_tokens": len(svc.chat_prompt(body).tokens)}


async def create_response(svc: _Service, data: Any, request: Request) -> Response:
    body = chat_request(data, stream=True)
    run = svc.start_chat(body)
    resp = _Response(new_id("resp_"), svc.alias, int(time.time()))
    if body.stream:
        return StreamingResponse(_sse(run, resp.events(run)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    result = await run.result(request)
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    items = message_items(result["choices"][0]["message"])
    return JSONResponse(resp.body([_output(item, resp.item_id(item)) for item in items], result["usage"]))


# ---- the request ----

def chat_request(data: Any, *, stream: bool) -> LooseChatRequest:
    """The chat completion request of a Responses request (400 if it is malformed)."""
    if not isinstance(data, dict):
        raise APIError(400, "request body: a JSON object is expected")
    if "input" not in data:
        raise APIError(400, "'input' is required", param="input")
    if data.get("previous_response_id"):
        raise APIError(400, "previous_response_id is not supported (this server stores no responses: send "
                       "the whole conversation as input)", param="previous_response_id")
    oai = {k: v for k, v in data.items() if k not in RESPONSES_ONLY}
    messages = []
    if data.get("instructions") is not None:
        messages.append({"role": "system", "content": data["instructions"]})
    messages += _input_messages(data["input"])
    oai["messages"] = messages
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise APIError(400, "'tools' must be a list of objects", param="tools")
        fns = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
               for t in tools if isinstance(t, dict) and t.get("type") == "function"]
        if fns:
            oai["tools"] = fns
    if data.get("tool_choice") is not None:
        oai["tool_choice"] = _tool_choice(data["tool_choice"])
    if data.get("max_output_tokens") is not None:
        oai["max_tokens"] = data["max_output_tokens"]
    fmt = (data.get("text") or {}).get("format") if isinstance(data.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        oai["response_format"] = fmt if fmt["type"] == "json_object" else {
            "type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    if stream and data.get("stream"):
        oai["stream"] = True
        oai["stream_options"] = {"include_usage": True}
    return _validated(LooseChatRequest, oai)


def _tool_choice(tc: Any) -> Any:
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("name"), str):
        return {"type": "function", "function": {"name": tc["name"]}}
    return tc  # ("auto", "none", "required": the chat API's own, checked there)


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise APIError(400, "'input' must be a string or array of objects", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise APIError(400, f"input[{i}] must be an object", param="input")
        after_assistant = bool(out) and out[-1]["role"] == "assistant"
        kind, role = item.get("type"), item.get("role")
        if role in ("user", "system", "developer") and kind in (None, "message"):
            out.append({"role": role, "content": _text(item.get("content"), i, ("input_text",))})
        elif role == "assistant" and kind in (None, "message"):
            text = _text(item.get("content"), i, ("output_text", "input_text"))
            if after_assistant and not out[-1].get("tool_calls"):
                out[-1]["content"] = (out[-1].get("content") or "") + text
            else:
                out.append({"role": "assistant", "content": text})
        elif kind == "function_call":
            call = {"id": _str(item, "call_id", i), "type": "function",
                    "function": {"name": _str(item, "name", i), "arguments": _str(item, "arguments", i)}}
            if after_assistant:
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text(output, i, ("input_text",))
            out.append({"role": "tool", "tool_call_id": _str(item, "call_id", i), "content": content})
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
            if after_assistant:
                out[-1]["reasoning_content"] = text
            else:
                out.append({"role": "assistant", "content": "", "reasoning_content": text})
        else:
            raise APIError(400, f"input[{i}]: cannot determine the type of this item", param="input")
    return out


def _str(item: dict[str, Any], key: str, i: int) -> str:
    if not isinstance(item.get(key), str):
        raise APIError(400, f"input[{i}].{key} must be a string", param="input")
    return item[key]


def _text(content: Any, i: int, kinds: tuple[str, ...]) -> str:
    """A message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"input[{i}].content must be a string or a list of parts", param="input")
    text = ""
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in kinds and isinstance(part.get("text"), str):
            text += part["text"]
        elif kind in ("input_image", "input_file", "input_audio"):
            raise APIError(400, f"input[{i}]: {kind} is not supported (this server's models read text only)",
                           param="input", code="not_supported")
        else:
            raise APIError(400, f"input[{i}]: a content part's type must be one of {list(kinds)} (got "
                           f"{kind!r})", param="input")
    return text


# ---- the answer ----

def _output(item: Item, item_id: str, status: str = "completed") -> dict[str, Any]:
    """An item of the response's ``output``."""
    if item.kind == "reasoning":
        return {"id": item_id, "type": "reasoning", "summary": [], "status": status,
                "content": [{"type": "reasoning_text", "text": item.text}], "encrypted_content": ""}
    if item.kind == "text":
        return {"id": item_id, "type": "message", "role": "assistant", "status": status,
                "content": [_part(item.text)] if status == "completed" else []}
    return {"id": item_id, "type": "function_call", "status": status, "call_id": item.call_id,
            "name": item.name, "arguments": item.text}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Response:
    def __init__(self, resp_id: str, model: str, created: int) -> None:
        self.id = resp_id
        self.model = model
        self.created = created
        self._ids: dict[int, str] = {}
        self._seq = 0

    def item_id(self, item: Item) -> str:
        prefix = {"reasoning": "rs_", "text": "msg_", "tool_call": "fc_"}[item.kind]
        return self._ids.setdefault(item.index, new_id(prefix))

    def body(self, output: list[dict[str, Any]], usage: dict[str, Any] | None,
             status: str = "completed") -> dict[str, Any]:
        u = usage or {}
        n_in, n_out = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.model, "output": output, "error": None, "incomplete_details": None,
                "usage": None if usage is None else {
                    "input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out,
                    "input_tokens_details": {"cached_tokens": cached},
                    "output_tokens_details": {"reasoning_tokens": 0}}}

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        return {"type": kind, "sequence_number": self._seq - 1, **fields}

    async def events(self, run: ChatRun) -> AsyncIterator[dict[str, Any]]:
        yield self._event("response.created", response=self.body([], None, "in_progress"))
        yield self._event("response.in_progress", response=self.body([], None, "in_progress"))
        items = ItemStream()
        async for chunk in run.events():
            for op in items.feed(chunk):
                for ev in self._item_events(*op):
                    yield ev
        for op in items.close():
            for ev in self._item_events(*op):
                yield ev
        output = [_output(item, self.item_id(item)) for item in items.items]
        yield self._event("response.completed", response=self.body(output, items.usage))

    def _item_events(self, op: str, item: Item, piece: str) -> list[dict[str, Any]]:
        where = {"item_id": self.item_id(item), "output_index": item.index}
        if op == "start":
            evs = [self._event("response.output_item.added", output_index=item.index,
                               item=_output(item, where["item_id"], "in_progress"))]
            if item.kind == "text":
                evs.append(self._event("response.content_part.added", **where, content_index=0,
                                       part=_part("")))
            return evs
        if op == "delta":
            kind = {"reasoning": "response.reasoning_text.delta", "text": "response.output_text.delta",
                    "tool_call": "response.function_call_arguments.delta"}[item.kind]
            extra = {"logprobs": []} if item.kind == "text" else {}
            content = {} if item.kind == "tool_call" else {"content_index": 0}
            return [self._event(kind, **where, **content, delta=piece, **extra)]
        if item.kind == "reasoning":
            evs = [self._event("response.reasoning_text.done", **where, content_index=0, text=item.text)]
        elif item.kind == "text":
            evs = [self._event("response.output_text.done", **where, content_index=0, text=item.text,
                               logprobs=[]),
                   self._event("response.content_part.done", **where, content_index=0, part=_part(item.text))]
        else:
            evs = [self._event("response.function_call_arguments.done", **where, arguments=item.text)]
        return evs + [self._event("response.output_item.done", output_index=item.index,
                                  item=_output(item, where["item_id"]))]


async def _sse(run: ChatRun, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """The Responses API's server-sent events; the jobs are cancelled when the stream ends early."""
    try:
        async for ev in events:
            yield f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n"
    except Exception as e:  # a job failed mid-stream: tell the client in-band
        err = {"type": "error", "code": "server_error", "message": f"generation failed: {e}", "param": None}
        yield f"event: error\ndata: {json.dumps(err)}\n\n"
    finally:
        run.close()
