"""Anthropic's Messages API, as llama-server answers it: ``POST /v1/messages`` and ``POST
/v1/messages/count_tokens``.

A request is translated into a chat completion request and run on the chat path
(:meth:`splitllm.api._Service.start_chat`: the same template, tool-call parsing and reasoning
split), then its answer translated back. The translation of the request is llama-server's
(server_chat_convert_anthropic_to_oai): ``system`` (a string or text blocks) becomes a system
message; in ``messages``, ``text`` blocks stay text, ``thinking`` blocks become the message's
``reasoning_content``, ``tool_use`` blocks its ``tool_calls`` (``input`` as JSON arguments), and
each ``tool_result`` block a ``tool`` message after it (its text joined); ``tools`` (``name``,
``description``, ``input_schema``) become functions; ``tool_choice`` ``auto`` / ``any`` / ``tool``
(with its ``name``: that function) / ``none``, and its ``disable_parallel_tool_use``;
``stop_sequences`` the stop strings; ``max_tokens`` (optional, as llama-server is permissive) caps
the answer at the context's end rather than being refused; ``temperature``, ``top_p``,
``top_k`` (and llama.cpp's ``min_p``, ``seed``, ``grammar``, ``chat_template_kwargs``);
``thinking: {"type": "disabled"}`` sets the template's ``enable_thinking`` to false, ``{"type":
"enabled", "budget_tokens": N}`` the thinking budget (10000 when left out, as llama-server reads
it; see :mod:`splitllm.reasoning_budget`). Images are refused (400): the models served here read text only.

The answer is a ``message``: ``content`` blocks ``thinking`` (with an empty ``signature``: a local
model signs nothing), ``text``, ``tool_use``; ``stop_reason`` ``end_turn``, ``stop_sequence``
(with ``stop_sequence``, one of the request's), ``max_tokens`` or ``tool_use``; ``usage``
(``input_tokens`` not read from the cache, ``cache_read_input_tokens``, ``output_tokens``). With
``stream: true``: the server-sent events ``message_start``, then per block ``content_block_start``
/ ``content_block_delta`` (``text_delta``, ``thinking_delta`` then a ``signature_delta``,
``input_json_delta``) / ``content_block_stop``, then ``message_delta`` (the stop reason and
usage) and ``message_stop``; a failure mid-stream is an ``error`` event. Errors before the answer
have the server's usual shape (see :mod:`splitllm.api`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from splitllm.api import CLIENT_CLOSED, ChatRun
from splitllm.api_items import Item, ItemStream, message_items, new_id
from splitllm.api_native import _json_body, _validated
from splitllm.api_schema import APIError, ChatRequest, Message

if TYPE_CHECKING:
    from splitllm.api import _Service

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}


class LooseChatRequest(ChatRequest):
    """A chat request translated from another API: no message is required (llama-server answers
    an empty list), and ``max_tokens`` caps the answer (at the context's end) instead of being
    refused when it does not fit."""

    messages: list[Message] = Field(default_factory=list)
    limit_is_cap: ClassVar[bool] = True


def add_anthropic_routes(app: FastAPI, svc: _Service) -> None:
    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await anthropic_messages(svc, await _json_body(request), request)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> dict[str, Any]:
        body = chat_request(await _json_body(request), stream=False)
        return {"input_tokens": len(svc.chat_prompt(body).tokens)}


async def anthropic_messages(svc: _Service, data: Any, request: Request) -> Response:
    body = chat_request(data, stream=True)
    run = svc.start_chat(body)
    stops = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
    msg_id = new_id("msg_")
    if body.stream:
        events = _events(run, msg_id, svc.alias, stops)
        return StreamingResponse(_sse(run, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    result = await run.result(request)
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    choice = result["choices"][0]
    blocks = [_block(item, full=True) for item in message_items(choice["message"])]
    reason, word = _stop(run, choice["finish_reason"], stops)
    return JSONResponse({"id": msg_id, "type": "message", "role": "assistant", "content": blocks,
                         "model": svc.alias, "stop_reason": reason, "stop_sequence": word,
                         "usage": _usage(result["usage"])})


# ---- the request ----

def chat_request(data: Any, *, stream: bool) -> LooseChatRequest:
    """The chat completion request of an Anthropic Messages request (400 if it is malformed)."""
    if not isinstance(data, dict):
        raise APIError(400, "request body: a JSON object is expected")
    if not isinstance(data.get("messages"), list):
        raise APIError(400, "'messages' is required (a list of messages)", param="messages")
    messages = _system(data.get("system"))
    for i, m in enumerate(data["messages"]):
        messages += _messages(m, i)
    oai: dict[str, Any] = {"messages": messages}
    if data.get("tools") is not None:
        oai["tools"] = [_tool(t, i) for i, t in enumerate(_list(data["tools"], "tools"))]
    if data.get("tool_choice") is not None:
        oai["tool_choice"] = _tool_choice(data["tool_choice"])
        if data["tool_choice"].get("disable_parallel_tool_use"):
            oai["parallel_tool_calls"] = False
    if data.get("stop_sequences") is not None:
        oai["stop"] = data["stop_sequences"]
    if data.get("max_tokens") is not None:
        oai["max_tokens"] = data["max_tokens"]
    for key in ("temperature", "top_p", "top_k", "min_p", "seed", "chat_template_kwargs", "grammar"):
        if data.get(key) is not None:
            oai[key] = data[key]
    thinking = data.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "disabled":
        oai["chat_template_kwargs"] = {**oai.get("chat_template_kwargs", {}), "enable_thinking": False}
    elif isinstance(thinking, dict) and thinking.get("type") == "enabled":  # (llama-server's default)
        oai["thinking_budget_tokens"] = thinking.get("budget_tokens", 10000)
    if stream and data.get("stream"):
        oai["stream"] = True
        oai["stream_options"] = {"include_usage": True}
    return _validated(LooseChatRequest, oai)


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise APIError(400, f"'{param}' must be a list", param=param)
    return value


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    text = "".join(b.get("text", "") for b in _list(system, "system")
                   if isinstance(b, dict) and b.get("type") == "text")
    return [{"role": "system", "content": text}]


def _messages(m: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: itself, then a tool message per tool result."""
    where = f"messages[{i}]"
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise APIError(400, f"{where} must be an object with a 'role'", param="messages")
    content = m.get("content")
    if not isinstance(content, list):
        return [] if content is None and m["role"] == "assistant" else [m]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    reasoning = ""
    for j, b in enumerate(content):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": b.get("text", "")})
        elif kind == "thinking":
            reasoning += b.get("thinking", "")
        elif kind == "tool_use":
            calls.append({"id": b.get("id", ""), "type": "function",
                          "function": {"name": b.get("name", ""),
                                       "arguments": json.dumps(b.get("input", {}), ensure_ascii=False)}})
        elif kind == "tool_result":
            results.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""),
                            "content": _result_text(b.get("content"), f"{where}.content[{j}]")})
        elif kind == "image":
            raise _no_images(f"{where}.content[{j}]")
        elif kind != "redacted_thinking":  # (encrypted: nothing a local template can show)
            raise APIError(400, f"{where}.content[{j}]: unsupported content block type {kind!r}",
                           param="messages")
    out: list[dict[str, Any]] = []
    if parts or calls or reasoning:
        msg: dict[str, Any] = {"role": m["role"], "content": parts or ""}
        if calls:
            msg["tool_calls"] = calls
        if reasoning:
            msg["reasoning_content"] = reasoning
        out.append(msg)
    return out + results


def _result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    text = ""
    for b in _list(content, "messages"):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "image":
            raise _no_images(where)
        if kind == "text":
            text += b.get("text", "")
    return text


def _no_images(where: str) -> APIError:
    return APIError(400, f"{where}: image input is not supported (this server's models read text only)",
                    param="messages", code="not_supported")


def _tool(t: Any, i: int) -> dict[str, Any]:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise APIError(400, f"tools[{i}] must be an object with a 'name'", param="tools")
    fn = {"name": t["name"], "description": t.get("description", ""),
          "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}
    return {"type": "function", "function": fn}


def _tool_choice(tc: Any) -> str | dict[str, Any]:
    kind = tc.get("type") if isinstance(tc, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(tc.get("name"), str):
        return {"type": "function", "function": {"name": tc["name"]}}
    raise APIError(400, "tool_choice must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', "
                   "'name': ...}", param="tool_choice")


# ---- the answer ----

def _stop(run: ChatRun, finish: str | None, stops: list[str]) -> tuple[str, str | None]:
    """The stop reason and the stop sequence that ended the answer (one of the request's)."""
    text = run.runs[0].stream.job.text
    if finish == "stop" and text.stop_type == "word" and text.stop_word in stops:
        return "stop_sequence", text.stop_word
    return STOP_REASONS.get(finish or "", "end_turn"), None


def _usage(u: dict[str, Any] | None) -> dict[str, Any]:
    u = u or {}
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": u.get("prompt_tokens", 0) - cached, "cache_read_input_tokens": cached,
            "output_tokens": u.get("completion_tokens", 0)}


def _block(item: Item, *, full: bool) -> dict[str, Any]:
    """An item as a content block: whole, or empty as content_block_start opens it."""
    if item.kind == "reasoning":
        return {"type": "thinking", "thinking": item.text if full else "", "signature": ""}
    if item.kind == "text":
        return {"type": "text", "text": item.text if full else ""}
    return {"type": "tool_use", "id": item.call_id, "name": item.name,
            "input": item.arguments() if full else {}}


def _delta(item: Item, piece: str) -> dict[str, Any]:
    if item.kind == "reasoning":
        return {"type": "thinking_delta", "thinking": piece}
    if item.kind == "text":
        return {"type": "text_delta", "text": piece}
    return {"type": "input_json_delta", "partial_json": piece}


async def _events(run: ChatRun, msg_id: str, model: str, stops: list[str]) -> AsyncIterator[dict[str, Any]]:
    n_prompt = len(run.runs[0].stream.job.prompt)
    yield {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": n_prompt, "cache_read_input_tokens": 0, "output_tokens": 0}}}
    items = ItemStream()
    async for chunk in run.events():
        for op in items.feed(chunk):
            for ev in _block_events(*op):
                yield ev
    for op in items.close():
        for ev in _block_events(*op):
            yield ev
    reason, word = _stop(run, items.finish_reason, stops)
    yield {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": word},
           "usage": _usage(items.usage)}
    yield {"type": "message_stop"}


def _block_events(op: str, item: Item, piece: str) -> list[dict[str, Any]]:
    i = item.index
    if op == "start":
        return [{"type": "content_block_start", "index": i, "content_block": _block(item, full=False)}]
    if op == "delta":
        return [{"type": "content_block_delta", "index": i, "delta": _delta(item, piece)}]
    # Anthropic's clients expect a thinking block's signature before it closes
    sign = [{"type": "content_block_delta", "index": i,
             "delta": {"type": "signature_delta", "signature": ""}}]
    return (sign if item.kind == "reasoning" else []) + [{"type": "content_block_stop", "index": i}]


async def _sse(run: ChatRun, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Anthropic's server-sent events (``event:`` the type, ``data:`` the object); the jobs are
    cancelled when the stream ends early (the client went away)."""
    try:
        async for ev in events:
            yield f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n"
    except Exception as e:  # a job failed mid-stream: tell the client in-band
        err = {"type": "error", "error": {"type": "api_error", "message": f"generation failed: {e}"}}
        yield f"event: error\ndata: {json.dumps(err)}\n\n"
    finally:
        run.close()
