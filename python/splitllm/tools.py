"""Tool (function) calling in chat completions, as OpenAI's API and llama-cpp-python take it.

* :func:`tool_plan` checks a request's ``tools`` / ``tool_choice`` (or the legacy ``functions`` /
  ``function_call``) and says what to do: which tools the prompt offers, and for ``"required"`` or a
  named ``tool_choice`` a grammar that forces ``<tool_call>`` blocks whose arguments follow the
  tool's ``parameters`` schema.
* :func:`prompt_messages` prepares messages for a chat template: a template that uses ``tools``
  gets them as the ``tools`` variable (as transformers' ``apply_chat_template`` gives them) and
  past calls with their arguments as objects; for one that does not, the tools are described in
  the system message and past calls and results written as text, in the Hermes / Qwen2.5 style.
* :class:`ToolCallStream` finds the ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks in generated text as it streams (a partial ``<tool_call>`` is held back, a block is
  buffered until it closes); the ``tool_chat_*`` functions and :class:`ToolChunks` shape the
  result into OpenAI's ``message.tool_calls`` and ``delta.tool_calls``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from splitllm import _core
from splitllm.completions import (
    CompletionChunk,
    chat_message,
    chat_role_chunk,
    last_chunk,
    reasoning_chunk,
    usage,
)
from splitllm.grammar import Grammar, gbnf_literal, json_schema_rules, json_schema_to_gbnf
from splitllm.logprobs import chat_logprobs
from splitllm.textstream import StrippedText

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class ToolError(ValueError):
    """A bad tools request; ``param`` is the request field it is about."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# ---- the request ----

@dataclass(frozen=True)
class ToolPlan:
    """What a request with tools asks for. ``tools``: offered in the prompt (OpenAI's shape);
    ``names``: the callable ones; ``max_calls``: 1 without parallel calls (None: any number);
    ``legacy``: answered as ``function_call``; ``grammar``: forces calls (``required`` or named)."""

    tools: tuple[Mapping[str, Any], ...]
    names: frozenset[str]
    max_calls: int | None = None
    legacy: bool = False
    grammar: Grammar | None = None


def tool_plan(*, tools: Any = None, tool_choice: Any = None, functions: Any = None, function_call: Any = None,
              parallel_tool_calls: bool = True, constrained: bool = False,
              harmony: bool = False) -> ToolPlan | None:
    """The plan of a request (None: no tools, or ``tool_choice`` "none"). ``constrained``: the
    request has its own grammar or response_format, which a forced ``tool_choice`` ("required" or
    a named tool) conflicts with; "auto" is the default and then follows that grammar.
    ``harmony``: the model answers in gpt-oss's harmony format (one call a generation, see
    :mod:`splitllm.harmony`), which a forced call's grammar follows.
    Raises :class:`ToolError` naming the field."""
    legacy = functions is not None or function_call is not None
    if legacy and (tools is not None or tool_choice is not None):
        raise ToolError("give tools / tool_choice or the legacy functions / function_call, not both",
                        "functions" if functions is not None else "function_call")
    if legacy:
        tools = _functions_as_tools(functions)
        tool_choice = _function_call_as_choice(function_call)
    list_param, choice_param = ("functions", "function_call") if legacy else ("tools", "tool_choice")
    if not isinstance(parallel_tool_calls, bool):
        raise ToolError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if tool_choice not in (None, "none", "auto") and constrained:
        raise ToolError(f"{choice_param} cannot be combined with grammar or response_format", choice_param)
    offered = check_tools(tools, list_param, legacy=legacy) if tools is not None else ()
    forced = _forced_name(tool_choice, offered, choice_param)
    if tool_choice == "none" or not offered:
        return None
    names = frozenset(_name(t) for t in offered)
    max_calls = 1 if legacy or not parallel_tool_calls else None
    grammar = None
    if forced is not None:  # a named tool is called once; "required": one call, or more if parallel
        grammar = calls_grammar(offered, only=forced or None, parallel=not forced and max_calls is None,
                                param=list_param, legacy=legacy, harmony=harmony)
    return ToolPlan(tuple(offered), names, max_calls, legacy, grammar)


def check_tools(tools: Any, param: str = "tools", *, legacy: bool = False) -> list[Mapping[str, Any]]:
    """The tools of a request, checked: a list of ``{"type": "function", "function": {"name": ...,
    "parameters": {...}}}`` with distinct names (``legacy``: the ``functions`` of a request, wrapped
    so, whose errors name the function itself)."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ToolError(f"{param} must be a list of tools", param)
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or tool.get("type") != "function":
            shape = "{'name': ..., 'parameters': ...}"
            raise ToolError(f"{param}[{i}] must be " + (shape if legacy else f"{{'type': 'function', "
                                                         f"'function': {shape}}}"), param)
        where = f"{param}[{i}]" if legacy else f"{param}[{i}].function"
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise ToolError(f"{where}.name must be 1 to 64 letters, digits, underscores or dashes "
                            f"(got {name!r})", param)
        if name in seen:
            raise ToolError(f"{where}.name {name!r} is given twice", param)
        seen.add(name)
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], Mapping):
            raise ToolError(f"{where}.parameters must be a JSON schema (an object)", param)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise ToolError(f"{where}.description must be a string", param)
    return list(tools)


def _functions_as_tools(functions: Any) -> list[dict[str, Any]] | None:
    if functions is None:
        return None
    if isinstance(functions, (str, bytes, Mapping)) or not isinstance(functions, Sequence):
        raise ToolError("functions must be a list of functions", "functions")
    return [{"type": "function", "function": f} for f in functions]


def _function_call_as_choice(function_call: Any) -> Any:
    if isinstance(function_call, Mapping):
        return {"type": "function", "function": {"name": function_call.get("name")}}
    return function_call


def _name(tool: Mapping[str, Any]) -> str:
    return tool["function"]["name"]


def _forced_name(choice: Any, tools: Sequence[Mapping[str, Any]], param: str) -> str | None:
    """The name a ``tool_choice`` forces ("" for "required": any tool), None when nothing is forced."""
    if choice is None or choice in ("none", "auto"):
        return None
    if choice == "required":
        if not tools:
            raise ToolError(f"{param} 'required' needs tools", param)
        return ""
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    if not isinstance(fn, Mapping) or choice.get("type") != "function":
        raise ToolError(f"{param} must be 'none', 'auto', 'required' or {{'type': 'function', 'function': "
                        f"{{'name': ...}}}} (got {choice!r})", param)
    name = fn.get("name")
    if not isinstance(name, str) or name not in {_name(t) for t in tools}:
        raise ToolError(f"{param} names the function {name!r}, which is not among the tools", param)
    return name


def calls_grammar(tools: Sequence[Mapping[str, Any]], *, only: str | None = None, parallel: bool = True,
                  param: str = "tools", legacy: bool = False, harmony: bool = False) -> Grammar:
    """A grammar for one (``parallel``: one or more) ``<tool_call>`` blocks, each calling one of the
    tools (``only``: that one) with arguments that follow its ``parameters`` schema. ``harmony``:
    one gpt-oss call message instead (``<|channel|>commentary to=functions.NAME <|constrain|>json
    <|message|>`` and the arguments), after an optional analysis message, as llama-server forces it."""
    chosen = [(i, t) for i, t in enumerate(tools) if only is None or _name(t) == only]
    schemas = {}
    for i, t in chosen:
        schema = t["function"].get("parameters") or {"type": "object"}
        try:
            json_schema_to_gbnf(schema)  # each on its own first, so that an error names its tool
        except ValueError as e:
            where = f"{param}[{i}]" if legacy else f"{param}[{i}].function"
            raise ToolError(f"{where}.parameters: {e}", param) from None
        schemas[f"args-{i}"] = schema
    exprs, support = json_schema_rules(schemas)
    calls = []
    for i, t in chosen:
        if harmony:
            head = gbnf_literal(f"<|channel|>commentary to=functions.{_name(t)} <|constrain|>json<|message|>")
            calls.append(f"call-{i} ::= {head} {exprs[f'args-{i}']}")
            continue
        head = gbnf_literal(f'{OPEN}\n{{"name": {json.dumps(_name(t))}, "arguments": ')
        calls.append(f"call-{i} ::= {head} {exprs[f'args-{i}']} {gbnf_literal('}' + chr(10) + CLOSE)}")
    alts = " | ".join(f"call-{i}" for i, _ in chosen)
    root = f'root ::= ({alts}) ("\\n" ({alts}))*' if parallel else f"root ::= {alts}"
    if harmony:
        analysis = " ".join((gbnf_literal("<|channel|>analysis<|message|>"), "[^<]*",
                             gbnf_literal("<|end|><|start|>assistant")))
        root = f"root ::= ({analysis})? ({alts})"
    try:
        return Grammar("\n".join([root, *calls, support]))
    except _core.Error as e:  # beyond the grammar engine's limits
        raise ToolError(f"{param}: the schemas make a grammar that cannot be used ({e})", param) from None


# ---- the prompt ----

def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools described for a model whose template does not take them (Qwen2.5's words)."""
    return TOOLS_PROMPT.format(tools="".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools))


def prompt_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, *,
                    uses_tools: bool, knows_tool_calls: bool) -> list[dict[str, Any]]:
    """Messages ready for a template: legacy ``function_call`` / ``function`` messages as tool
    calls / tool messages; tool calls given to a template that knows them with their arguments as
    objects, or else written as text (and tool results as ``<tool_response>`` in a user turn); the
    tools described in the system message when the template does not use ``tools``."""
    out = [_from_legacy(m) for m in messages]
    if not any("tool_calls" in m or m.get("role") == "tool" for m in out) and (uses_tools or not tools):
        return out
    _check_tool_calls(out)
    out = [_object_arguments(m) for m in out] if knows_tool_calls else _as_text(out)
    if tools and not uses_tools:
        text = tools_system_prompt(tools)
        if out and out[0].get("role") == "system":
            first = out[0].get("content") or ""
            out[0] = {**out[0], "content": f"{first}\n\n{text}" if first else text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _from_legacy(m: Mapping[str, Any]) -> dict[str, Any]:
    m = dict(m)
    if m.get("role") == "assistant" and isinstance(m.get("function_call"), Mapping) and "tool_calls" not in m:
        m["tool_calls"] = [{"type": "function", "function": dict(m.pop("function_call"))}]
    elif m.get("role") == "function":
        m["role"] = "tool"
    if m.get("tool_calls") is None:
        m.pop("tool_calls", None)
    return m


def _check_tool_calls(messages: Sequence[Mapping[str, Any]]) -> None:
    for i, m in enumerate(messages):
        calls = m.get("tool_calls", [])
        if isinstance(calls, (str, Mapping)) or not isinstance(calls, Sequence):
            raise ToolError(f"messages[{i}].tool_calls must be a list", "messages")
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, Mapping) else None
            if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                raise ToolError(f"messages[{i}].tool_calls[{j}] must be {{'function': {{'name': ..., "
                                "'arguments': ...}}}}", "messages")
            if not isinstance(fn.get("arguments", {}), (str, Mapping)):
                raise ToolError(f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON string",
                                "messages")


def _arguments_object(fn: Mapping[str, Any]) -> Any:
    """A call's arguments as an object when they are the JSON text of one (OpenAI sends text)."""
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return args
        return parsed if isinstance(parsed, dict) else args
    return dict(args)


def _object_arguments(m: dict[str, Any]) -> dict[str, Any]:
    if "tool_calls" not in m:
        return m
    calls = [{**c, "function": {**c["function"], "arguments": _arguments_object(c["function"])}}
             for c in m["tool_calls"]]
    return {**m, "tool_calls": calls}


def _call_text(fn: Mapping[str, Any]) -> str:
    body = json.dumps({"name": fn["name"], "arguments": _arguments_object(fn)}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def _as_text(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls written into the assistant's text; each run of tool messages as one user turn."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") == "tool":
            part = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + part
            else:
                out.append({"role": "user", "content": part, "_tool_results": True})
        elif "tool_calls" in m:
            texts = ([m["content"]] if m.get("content") else []) + [_call_text(c["function"])
                                                                    for c in m["tool_calls"]]
            rest = {k: v for k, v in m.items() if k != "tool_calls"}
            out.append({**rest, "content": "\n".join(texts)})
        else:
            out.append(m)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


# ---- the answer ----

def new_call(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A tool call as OpenAI gives it (the arguments as JSON text)."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def parse_block(inner: str, names: frozenset[str]) -> list[dict[str, Any]] | None:
    """The calls of one block's text: ``{"name", "arguments"}`` or a list of them; None if it does
    not parse, or calls a tool that was not offered."""
    try:
        value = json.loads(inner)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item["name"] not in names:
            return None
        # Llama 3.1's prompts ask for "parameters"
        args = item["arguments"] if "arguments" in item else item.get("parameters", {})
        if isinstance(args, str):  # some models write the arguments as JSON text
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append(new_call(item["name"], args))
    return calls or None


def _partial_open(text: str) -> int:
    """Length of the longest end of ``text`` that begins ``<tool_call>``."""
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:k]):
            return k
    return 0


class ToolCallStream:
    """Finds tool calls in text as it streams. ``push(text)`` and ``finish()`` return events:
    ``("text", str)`` for content that is safe to show, ``("call", dict)`` for a parsed call.

    Text that may begin ``<tool_call>`` is held back; a block is kept until ``</tool_call>``, then
    becomes calls, or text if it does not parse (as does a block still open at the end, or one past
    ``max_calls``). The content has no leading whitespace, and no trailing whitespace when there are
    calls (whitespace is held until more text follows), so however the text is cut into pieces the
    events carry the same content and calls."""

    def __init__(self, names: frozenset[str], max_calls: int | None = None) -> None:
        self.names = names
        self.max_calls = max_calls
        self.n_calls = 0
        self._buf = ""
        self._content = StrippedText()  # no leading whitespace; trailing held until text follows
        self._events: list[tuple[str, Any]] = []

    def push(self, text: str) -> list[tuple[str, Any]]:
        self._buf += text
        while self._buf:
            start = self._buf.find(OPEN)
            if start < 0:
                keep = _partial_open(self._buf)
                self._text(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
            end = self._buf.find(CLOSE, start + len(OPEN))
            if end < 0:
                self._text(self._buf[:start])
                self._buf = self._buf[start:]
                break
            self._text(self._buf[:start])
            self._block(self._buf[start: end + len(CLOSE)])
            self._buf = self._buf[end + len(CLOSE):]
        return self._take()

    def finish(self) -> list[tuple[str, Any]]:
        """The rest: held text (and an unfinished block) as text; trailing whitespace without calls."""
        self._text(self._buf)
        self._buf = ""
        if not self.n_calls and self._content.held:
            self._emit_text(self._content.held)
        self._content.held = ""
        return self._take()

    def _block(self, block: str) -> None:
        calls = parse_block(block[len(OPEN): -len(CLOSE)], self.names)
        room = None if self.max_calls is None else self.max_calls - self.n_calls
        if calls is None or (room is not None and len(calls) > room):
            self._text(block)
            return
        self.n_calls += len(calls)
        self._events += [("call", c) for c in calls]

    def _text(self, text: str) -> None:
        body = self._content.push(text)
        if body:
            self._emit_text(body)

    def _emit_text(self, text: str) -> None:
        if self._events and self._events[-1][0] == "text":
            self._events[-1] = ("text", self._events[-1][1] + text)
        else:
            self._events.append(("text", text))

    def _take(self) -> list[tuple[str, Any]]:
        out, self._events = self._events, []
        return out


def parse_tool_calls(text: str, names: frozenset[str], max_calls: int | None = None
                     ) -> tuple[str | None, list[dict[str, Any]]]:
    """A whole answer's content (None when there are calls and no other text) and tool calls."""
    s = ToolCallStream(names, max_calls)
    events = s.push(text) + s.finish()
    content = "".join(x for kind, x in events if kind == "text")
    calls = [x for kind, x in events if kind == "call"]
    return (content or None) if calls else content, calls


def _finish_reason(reason: str | None, n_calls: int, legacy: bool) -> str | None:
    if reason == "stop" and n_calls:
        return "function_call" if legacy else "tool_calls"
    return reason


def tool_chat_choice(plan: ToolPlan, chunks: Iterable[CompletionChunk], want_logprobs: bool = False,
                     index: int = 0, *, parsed: bool = False) -> tuple[dict[str, Any], CompletionChunk]:
    """One choice of a ``chat.completion`` with its tool calls parsed, and the stream's last chunk
    (``parsed``: the chunks carry their calls already, as :mod:`splitllm.harmony` gives them)."""
    chunks = list(chunks)
    last = last_chunk(chunks)
    if parsed:
        text, calls = "".join(c.text for c in chunks), [x for c in chunks for x in c.calls]
        content = (text or None) if calls else text
    else:
        content, calls = parse_tool_calls("".join(c.text for c in chunks), plan.names, plan.max_calls)
    message = chat_message(content, chunks)
    if calls and plan.legacy:
        message["function_call"] = calls[0]["function"]
    elif calls:
        message["tool_calls"] = calls
    lps = chat_logprobs([e for c in chunks for e in c.logprobs]) if want_logprobs else None
    return ({"index": index, "message": message, "logprobs": lps,
             "finish_reason": _finish_reason(last.finish_reason, len(calls), plan.legacy)}, last)


def tool_chat_response(plan: ToolPlan, head: dict[str, Any], chunks: Iterable[CompletionChunk],
                       want_logprobs: bool = False, *, parsed: bool = False) -> dict[str, Any]:
    choice, last = tool_chat_choice(plan, chunks, want_logprobs, parsed=parsed)
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(last)}


class ToolChunks:
    """One choice's ``chat.completion.chunk`` objects with tool calls parsed out of its stream:
    content as it is safe to show, then each call as a ``delta.tool_calls`` entry (legacy:
    ``delta.function_call``), and the finish. ``parsed``: the chunks carry their calls already
    (:mod:`splitllm.harmony`), their text is content."""

    def __init__(self, plan: ToolPlan, head: dict[str, Any], want_logprobs: bool = False,
                 index: int = 0, *, parsed: bool = False) -> None:
        self.plan = plan
        self.base = {**head, "object": "chat.completion.chunk"}
        self.want_logprobs = want_logprobs
        self.index = index
        self.calls = ToolCallStream(plan.names, plan.max_calls)
        self.parsed = parsed

    def _events(self, c: CompletionChunk) -> list[tuple[str, Any]]:
        if self.parsed:
            self.calls.n_calls += len(c.calls)
            return ([("text", c.text)] if c.text else []) + [("call", x) for x in c.calls]
        events = self.calls.push(c.text)
        if c.finish_reason is not None:
            events += self.calls.finish()
        return events

    def _chunk(self, delta: dict[str, Any], logprobs: Any = None,
               finish: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": self.index, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish}]}

    def dicts(self, c: CompletionChunk) -> list[dict[str, Any]]:
        events = self._events(c)
        out = []
        lps = chat_logprobs(c.logprobs) if self.want_logprobs and c.logprobs else None
        if c.reasoning:
            out.append(reasoning_chunk(self.base, c.reasoning, self.index, lps))
            lps = None
        if lps is not None and not any(kind == "text" for kind, _ in events):
            out.append(self._chunk({"content": ""}, lps))
        n = self.calls.n_calls - sum(kind == "call" for kind, _ in events)
        for kind, x in events:
            if kind == "text":
                out.append(self._chunk({"content": x}, lps))
                lps = None
            elif self.plan.legacy:
                out.append(self._chunk({"function_call": x["function"]}))
            else:
                out.append(self._chunk({"tool_calls": [{"index": n, **x}]}))
                n += 1
        if c.finish_reason is not None:
            reason = _finish_reason(c.finish_reason, self.calls.n_calls, self.plan.legacy)
            out.append({**self._chunk({}, finish=reason), "usage": usage(c)})
        return out


def tool_chat_chunks(plan: ToolPlan, head: dict[str, Any], chunks: Iterable[CompletionChunk],
                     want_logprobs: bool = False, *, parsed: bool = False) -> Iterator[dict[str, Any]]:
    """OpenAI ``chat.completion.chunk`` objects of a generation with tools."""
    yield chat_role_chunk(head)
    shaper = ToolChunks(plan, head, want_logprobs, parsed=parsed)
    for c in chunks:
        yield from shaper.dicts(c)
