"""Tool calling (splitllm.tools): the prompt, the parsing of ``<tool_call>`` blocks, forced calls
and the OpenAI shapes, checked against references we did not write.

* Prompts: for Qwen2.5's chat template (which takes ``tools``) ours equal llama-cpp-python's
  ``Jinja2ChatFormatter`` for the same messages and tools; for SmolLM2's (which does not), the
  tools, calls and results we write into the messages give the text Qwen2.5's template gives.
* Answers validate as the ``openai`` package's pydantic types; forced calls (SmolLM2) validate
  against their tool's JSON schema with ``jsonschema``; streamed calls equal whole ones.
* The parser gives the same content and calls however the text is cut into pieces, and never
  shows a part of a block.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from splitllm.api import create_app
from splitllm.chat import ChatTemplate
from splitllm.completions import CompletionChunk
from splitllm.engine import BatchEngine
from splitllm.gguf_file import GGUFFile
from splitllm.model import Model
from splitllm.server import BackgroundServer
from splitllm.tools import ToolCallStream, parse_tool_calls, tool_chat_chunks, tool_chat_response, tool_plan

# Qwen2.5-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2.5-7B-Instruct).
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501


def tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


# One tool per kind of schema, with a request SmolLM2 answers by calling it.
CASES = {
    "required": (tool("book_table", "Book a table at a restaurant", {
        "restaurant": {"type": "string"}, "people": {"type": "integer"}}, ["restaurant", "people"]),
        "Book a table for 4 at Luigi's."),
    "enum": (tool("get_weather", "Get the weather in a city", {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city", "unit"]), "How warm is it in Oslo?"),
    "numbers": (tool("convert", "Convert an amount of money", {
        "amount": {"type": "number"}, "rate": {"type": "number"}}, ["amount", "rate"]),
        "Convert 12.5 dollars at a rate of 0.9."),
    "array": (tool("shopping_list", "Make a shopping list", {
        "items": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}}, ["items"]),
        "I need milk, eggs and bread."),
    "nested": (tool("add_contact", "Add a contact", {"person": {
        "type": "object", "required": ["name", "age"], "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["friend", "work"]},
                     "maxItems": 2}}}},
        ["person"]), "Add my friend Ann, who is 31."),
}
TOOLS = [t for t, _ in CASES.values()]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
NAMES = frozenset(SCHEMAS)
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def conversation(arguments_as_text: bool) -> list[dict]:
    """A conversation with two parallel calls and their results (arguments as OpenAI's JSON text,
    or as objects the way transformers' examples give them)."""
    def call(i: int, args: dict) -> dict:
        a = json.dumps(args) if arguments_as_text else args
        return {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": a}}

    return [
        SYSTEM,
        {"role": "user", "content": "What's the weather in Paris and in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call(1, {"city": "Paris", "unit": "celsius"}),
                                                              call(2, {"city": "Oslo", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temperature": 9}'},
        {"role": "assistant", "content": "Paris: 21°C, Oslo: 9°C."},
        {"role": "user", "content": "And in Rome? Say it first."},
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [call(3, {"city": "Rome", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": "call_3", "content": '{"temperature": 25}'},
    ]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")


def reference_prompt(llama_cpp, template: str, messages: list[dict], tools: list[dict] | None) -> str:
    fmt = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template, eos_token="<|im_end|>",
                                                          bos_token="<|endoftext|>")
    return fmt(messages=messages, tools=tools).prompt


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path) -> str:
    with GGUFFile(smollm2_path) as gf:
        return gf.metadata["tokenizer.chat_template"]


# ---- the prompt ----

@pytest.mark.reference
@pytest.mark.parametrize("with_tools", [True, False], ids=["tools", "no-tools"])
@pytest.mark.parametrize("messages", [
    conversation(False),
    conversation(False)[1:],  # no system message: the template's own
    [{"role": "user", "content": "Hi"}],
], ids=["calls", "no-system", "plain"])
def test_template_with_tools_renders_as_llama_cpp_python(llama_cpp, messages, with_tools):
    tools = TOOLS if with_tools else None
    want = reference_prompt(llama_cpp, QWEN25_TEMPLATE, messages, tools)
    got = ChatTemplate(QWEN25_TEMPLATE, eos_token="<|im_end|>").render(messages, tools=tools)
    assert got == want
    assert ChatTemplate(QWEN25_TEMPLATE).uses_tools and ChatTemplate(QWEN25_TEMPLATE).knows_tool_calls


@pytest.mark.reference
def test_arguments_as_json_text_reach_the_template_as_objects(llama_cpp):
    """OpenAI sends a call's arguments as JSON text; templates (as transformers gives them) read
    an object: ``arguments | tojson`` writes the object, not a quoted string."""
    want = reference_prompt(llama_cpp, QWEN25_TEMPLATE, conversation(False), TOOLS)
    got = ChatTemplate(QWEN25_TEMPLATE).render(conversation(True), tools=TOOLS)
    assert got == want
    assert '"arguments": {"city": "Paris", "unit": "celsius"}' in got


@pytest.mark.reference
@pytest.mark.parametrize("with_tools", [True, False], ids=["tools", "no-tools"])
def test_template_without_tools_gets_them_in_qwen25_style(llama_cpp, smollm2_template, with_tools):
    """SmolLM2's template knows neither tools nor calls: the tools go into the system message and
    calls / results into the text, which then reads as Qwen2.5's template writes them."""
    tools = TOOLS if with_tools else None
    template = ChatTemplate(smollm2_template)
    assert not template.uses_tools and not template.knows_tool_calls
    for arguments_as_text in (False, True):
        got = template.render(conversation(arguments_as_text), tools=tools)
        assert got == reference_prompt(llama_cpp, QWEN25_TEMPLATE, conversation(False), tools)


def test_tools_without_a_system_message_get_one(smollm2_template):
    got = ChatTemplate(smollm2_template).render([{"role": "user", "content": "Hi"}], tools=TOOLS[:1])
    head = "<|im_start|>system\n# Tools\n\nYou may call one or more functions"
    assert got.startswith(head) and json.dumps(TOOLS[0]) in got
    assert got.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "SmolLM" not in got  # the template's default system message gave way


def test_template_sees_calls_and_results_as_transformers_gives_them():
    """Messages reach the template as transformers' apply_chat_template passes them: calls under
    ``message.tool_calls`` (id, type, function name and arguments object), results as ``tool``
    messages with their ``tool_call_id``; ``tools`` as given; legacy function messages mapped."""
    probe = ChatTemplate(
        "{% for m in messages %}{{ m.role }}|{{ m.content }}|{{ m.tool_call_id }}|"
        "{% for c in m.tool_calls or [] %}{{ c.id }}:{{ c.type }}:{{ c.function.name }}:"
        "{{ c.function.arguments.city }};{% endfor %}{{ '\\n' }}{% endfor %}"
        "{% for t in tools or [] %}{{ t.function.name }},{% endfor %}")
    got = probe.render(conversation(True)[1:5], tools=TOOLS[:2])
    assert got.splitlines() == [
        "user|What's the weather in Paris and in Oslo?||",
        "assistant|None||call_1:function:get_weather:Paris;call_2:function:get_weather:Oslo;",
        'tool|{"temperature": 21}|call_1|', 'tool|{"temperature": 9}|call_2|', "book_table,get_weather,"]
    legacy = [{"role": "assistant", "content": None,
               "function_call": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
              {"role": "function", "name": "get_weather", "content": "25"}]
    assert probe.render(legacy).splitlines() == ["assistant|None||:function:get_weather:Rome;", "tool|25||"]


def test_bad_tool_calls_in_messages():
    messages = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}]
    with pytest.raises(ValueError, match=r"messages\[0\]\.tool_calls\[0\]"):
        ChatTemplate(QWEN25_TEMPLATE).render(messages)


# ---- parsing ----

def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


PARIS = block('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}')
MILK = block('{"name": "shopping_list", "arguments": {"items": ["milk"]}}')
P, M = ("get_weather", {"city": "Paris", "unit": "celsius"}), ("shopping_list", {"items": ["milk"]})
BAD_JSON = block('{"name": "get_weather", "arguments": {"city": }}')
UNKNOWN = block('{"name": "launch_rocket", "arguments": {}}')
PARSE_CASES = [
    # (text, max_calls, content, calls)
    (PARIS, None, None, [P]),
    ("Let me check.\n" + PARIS, None, "Let me check.", [P]),
    (PARIS + "\n" + MILK + "\n", None, None, [P, M]),
    (block('[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
           '{"name": "shopping_list", "arguments": {"items": ["milk"]}}]'), None, None, [P, M]),
    ("A " + PARIS + " B\n" + MILK + "\nC", None, "A  B\n\nC", [P, M]),
    (block('{"name": "shopping_list", "arguments": "{\\"items\\": [\\"milk\\"]}"}'), None, None, [M]),
    (block('{"name": "book_table"}'), None, None, [("book_table", {})]),
    (BAD_JSON, None, BAD_JSON, []),
    (UNKNOWN + PARIS, None, UNKNOWN, [P]),
    (block('[{"name": "get_weather", "arguments": {}}, {"name": "launch_rocket", "arguments": {}}]'), None,
     block('[{"name": "get_weather", "arguments": {}}, {"name": "launch_rocket", "arguments": {}}]'), []),
    (block('{"name": "get_weather", "arguments": [1]}'), None,
     block('{"name": "get_weather", "arguments": [1]}'), []),
    (PARIS + "\n" + MILK, 1, MILK, [P]),  # no parallel calls: the second stays text
    ("Sure.\n" + PARIS[:40], None, "Sure.\n" + PARIS[:40], []),  # cut by max_tokens
    ("Sure. <tool_", None, "Sure. <tool_", []),
    ("  Hello, <b>world</b> \n", None, "Hello, <b>world</b> \n", []),
    ("<tool_call> </tool_call> x", None, "<tool_call> </tool_call> x", []),
    ("", None, "", []),
    (block('{"name": ["get_weather"]}'), None, block('{"name": ["get_weather"]}'), []),
    (block('{"name": "shopping_list", "parameters": {"items": ["milk"]}}'), None, None, [M]),
]


def calls_of(calls: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("call_")
        out.append((c["function"]["name"], json.loads(c["function"]["arguments"])))
    return out


PARSE_IDS = ["one", "text-before", "two", "list", "text-around", "arguments-text", "no-arguments", "bad-json",
             "unknown-name", "unknown-in-list", "arguments-not-object", "not-parallel", "cut", "partial-open",
             "no-call", "empty-block", "empty", "name-not-a-string", "parameters-key"]


@pytest.mark.parametrize(("text", "max_calls", "content", "calls"), PARSE_CASES, ids=PARSE_IDS)
def test_parse_tool_calls(text, max_calls, content, calls):
    got_content, got_calls = parse_tool_calls(text, NAMES, max_calls)
    assert got_content == content
    assert calls_of(got_calls) == calls
    assert len({c["id"] for c in got_calls}) == len(got_calls)


def stream_pieces(pieces: list[str], max_calls: int | None) -> Iterator[tuple[str, list, bool]]:
    """Content and calls from a stream of pieces; each push shows only text that stays content."""
    s = ToolCallStream(NAMES, max_calls)
    shown, calls = [], []
    for i, p in enumerate([*pieces, None]):
        events = s.push(p) if p is not None else s.finish()
        shown += [x for kind, x in events if kind == "text"]
        calls += [x for kind, x in events if kind == "call"]
        yield "".join(shown), calls, i == len(pieces)


@pytest.mark.parametrize(("text", "max_calls", "content", "calls"), PARSE_CASES, ids=PARSE_IDS)
def test_every_split_of_the_text_gives_the_same_result(text, max_calls, content, calls):
    """Cut anywhere (two cuts, and one character a piece), the stream shows a growing prefix of
    the final content, never a part of a block, and ends with the same content and calls."""
    final = content or ""
    cuts = [(i, j) for i in range(len(text) + 1) for j in range(i, len(text) + 1)]
    splits = [[text[:i], text[i:j], text[j:]] for i, j in cuts] + [list(text)]
    for pieces in splits:
        steps = list(stream_pieces(pieces, max_calls))
        for shown, _, _ in steps:
            assert final.startswith(shown), (pieces, shown)
        shown, got_calls, _ = steps[-1]
        assert shown == final and calls_of(got_calls) == calls, pieces


def test_answer_shapes_validate_as_openai_types():
    """Whole answers and chunks (from a made-up generation) validate as the openai package's
    types; legacy functions answer with function_call; a cut generation keeps "length"."""
    text = "Let me check.\n" + PARIS + "\n" + MILK
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    gen = [CompletionChunk(p, 1, 10, k + 1) for k, p in enumerate(pieces)] + [
        CompletionChunk("", None, 10, len(pieces), "stop")]
    head = {"id": "chatcmpl-x", "created": 0, "model": "m"}
    for legacy in (False, True):
        plan = tool_plan(functions=[t["function"] for t in TOOLS]) if legacy else tool_plan(tools=TOOLS)
        whole = ChatCompletion.model_validate(tool_chat_response(plan, head, gen))
        chunks = [ChatCompletionChunk.model_validate(d) for d in tool_chat_chunks(plan, head, gen)]
        msg = whole.choices[0].message
        assert msg.content == "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        if legacy:  # one call at most: the second block stays text
            assert msg.content == "Let me check.\n\n" + MILK
            assert whole.choices[0].finish_reason == "function_call" and msg.tool_calls is None
            assert json.loads(msg.function_call.arguments) == P[1]
            assert [c.choices[0].delta.function_call.name for c in chunks
                    if c.choices[0].delta.function_call] == ["get_weather"]
            continue
        assert whole.choices[0].finish_reason == "tool_calls" and msg.content == "Let me check."
        assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [P, M]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
        assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
            (0, *P), (1, *M)]
    cut = [*gen[:-1], CompletionChunk("", None, 10, len(pieces), "length")]
    assert tool_chat_response(tool_plan(tools=TOOLS), head, cut)["choices"][0]["finish_reason"] == "length"


# ---- requests ----

def forced(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tools": {"type": "function"}}, r"tools must be a list"),
    ({"tools": [{"type": "function"}]}, r"tools\[0\] must be"),
    ({"tools": [{"type": "code", "function": {"name": "f"}}]}, r"tools\[0\] must be"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, r"tools\[0\]\.function\.name"),
    ({"functions": [{"name": "f", "description": 5}]}, r"functions\[0\]\.description must be"),
    ({"functions": [5]}, r"functions\[0\] must be \{'name'"),
    ({"functions": [tool("f", "", {"s": {"type": "string", "format": "uri"}}, [])["function"]],
      "function_call": {"name": "f"}}, r"functions\[0\]\.parameters: JSON schema: format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     r"tools\[0\]\.function\.parameters"),
    ({"tools": TOOLS + TOOLS[:1]}, r"tools\[5\]\.function\.name 'book_table' is given twice"),
    ({"tools": TOOLS, "tool_choice": forced("nope")}, r"tool_choice names"),
    ({"tools": TOOLS, "tool_choice": "always"}, r"tool_choice must be"),
    ({"tool_choice": "required"}, r"tool_choice 'required' needs tools"),
    ({"tools": [tool("f", "", {"s": {"type": "string", "pattern": "a+"}}, [])], "tool_choice": "required"},
     r"tools\[0\]\.function\.parameters: JSON schema: pattern"),
    ({"tools": TOOLS, "tool_choice": "required", "constrained": True}, r"tool_choice cannot be combined"),
    ({"tools": TOOLS, "tool_choice": forced("book_table"), "constrained": True}, r"tool_choice cannot be"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": ["f"]}}}, r"tool_choice name"),
    ({"functions": [{"name": "f"}], "function_call": {"name": {"x": 1}}}, r"function_call names"),
    ({"tools": TOOLS, "functions": [TOOLS[0]["function"]]}, r"not both"),
    ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, r"function_call names"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, r"parallel_tool_calls must be a boolean"),
])
def test_bad_tool_requests_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tool_plan(**kwargs)


def test_tool_choice_none_offers_nothing():
    assert tool_plan(tools=TOOLS, tool_choice="none") is None
    assert tool_plan(tools=TOOLS, tool_choice="none", constrained=True) is None
    # "auto" is what no tool_choice means, with a grammar too (OpenAI takes it with response_format)
    auto = tool_plan(tools=TOOLS, tool_choice="auto", constrained=True)
    assert auto == tool_plan(tools=TOOLS, constrained=True) and auto is not None and auto.grammar is None
    plan = tool_plan(tools=TOOLS)
    assert plan is not None and plan.grammar is None and plan.names == NAMES and plan.max_calls is None


# ---- SmolLM2 ----

@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=1024, n_threads=2) as m:
        yield m


def streamed_calls(chunks: list[dict]) -> tuple[list[ChatCompletionChunk], list[tuple[str, dict]]]:
    typed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    deltas = [d for c in typed for d in c.choices[0].delta.tool_calls or ()]
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert all(d.id.startswith("call_") and d.type == "function" for d in deltas)
    return typed, [(d.function.name, json.loads(d.function.arguments)) for d in deltas]


def check_calls(calls: list[tuple[str, dict]]) -> None:
    assert calls
    for name, args in calls:
        jsonschema.validate(args, SCHEMAS[name])


@pytest.mark.parametrize("case", list(CASES))
def test_named_tool_choice_forces_a_valid_call(model, case):
    t, question = CASES[case]
    name = t["function"]["name"]
    kw = dict(tools=[t], tool_choice=forced(name), max_tokens=120, temperature=0.8, seed=7)
    messages = [{"role": "user", "content": question}]
    model.reset()  # each read from scratch: the same logits, so the same tokens for the same seed
    whole = ChatCompletion.model_validate(model.create_chat_completion(messages, **kw))
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert [n for n, _ in calls] == [name]
    check_calls(calls)
    model.reset()
    typed, streamed = streamed_calls(list(model.create_chat_completion(messages, stream=True, **kw)))
    assert streamed == calls
    assert typed[-1].choices[0].finish_reason == "tool_calls"
    assert typed[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("parallel", [False, True], ids=["single", "parallel"])
def test_required_tool_choice_calls_the_tools(model, parallel):
    messages = [{"role": "user", "content": "Book a table for 4 at Luigi's, then the weather in Rome."}]
    kw = dict(tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel, max_tokens=200,
              temperature=0)
    whole = ChatCompletion.model_validate(model.create_chat_completion(messages, **kw))
    choice = whole.choices[0]
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or ()]
    check_calls(calls)
    assert calls[0][0] == "book_table" and (len(calls) == 1 or parallel)
    if choice.finish_reason != "length":  # a parallel answer may run on until it is cut
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
    _, streamed = streamed_calls(list(model.create_chat_completion(messages, stream=True, **kw)))
    assert streamed == calls


def test_legacy_functions(model):
    t, question = CASES["enum"]
    kw = dict(functions=[t["function"]], function_call={"name": "get_weather"}, max_tokens=120, temperature=0)
    messages = [{"role": "user", "content": question}]
    whole = ChatCompletion.model_validate(model.create_chat_completion(messages, **kw))
    choice = whole.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    args = json.loads(choice.message.function_call.arguments)
    jsonschema.validate(args, SCHEMAS["get_weather"])
    chunks = model.create_chat_completion(messages, stream=True, **kw)
    typed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    fcs = [c.choices[0].delta.function_call for c in typed if c.choices[0].delta.function_call]
    assert [(f.name, json.loads(f.arguments)) for f in fcs] == [("get_weather", args)]
    assert typed[-1].choices[0].finish_reason == "function_call"


GRAMMAR_ANSWER = "Sure, let me check.\n" + PARIS


def test_auto_parses_the_answer_and_streams_text_before_the_call(model):
    """tool_choice auto: the answer is generated freely (here steered by a grammar) and parsed;
    the text before the call streams as content, no part of the block is ever shown."""
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    grammar = "root ::= " + json.dumps(GRAMMAR_ANSWER)
    kw = dict(tools=TOOLS, grammar=grammar, max_tokens=200, temperature=0)
    whole = ChatCompletion.model_validate(model.create_chat_completion(messages, **kw))
    assert whole.choices[0].message.content == "Sure, let me check."
    assert calls_of([c.model_dump() for c in whole.choices[0].message.tool_calls]) == [P]
    assert whole.choices[0].finish_reason == "tool_calls"
    typed, streamed = streamed_calls(list(model.create_chat_completion(messages, stream=True, **kw)))
    contents = [c.choices[0].delta.content for c in typed if c.choices[0].delta.content]
    assert len(contents) > 1 and "".join(contents) == "Sure, let me check."
    assert streamed == [P]
    # tool_choice none: nothing is parsed
    plain = model.create_chat_completion(messages, **{**kw, "tools": TOOLS, "tool_choice": "none"})
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": GRAMMAR_ANSWER}
    assert plain["choices"][0]["finish_reason"] == "stop"


def test_prompt_holds_the_tools(model, smollm2_template):
    messages = conversation(True)
    out = model.create_chat_completion(messages, tools=TOOLS, max_tokens=1, temperature=0)
    want = ChatTemplate(smollm2_template).render(messages, tools=TOOLS)
    assert out["usage"]["prompt_tokens"] == len(model.tokenize(want.encode(), add_bos=False, special=True))
    assert model.apply_chat_template(messages, tools=TOOLS) == model.tokenize(want.encode(), add_bos=False,
                                                                              special=True)
    with pytest.raises(ValueError, match="tool_choice cannot be combined"):
        model.create_chat_completion(messages, tools=TOOLS, tool_choice="required",
                                     response_format={"type": "json_object"})


# ---- the server ----

ALIAS = "smol"


@pytest.fixture(scope="module")
def server(smollm2_path):
    model = Model(smollm2_path, n_ctx=2048, n_seq_max=2, n_threads=2)
    engine = BatchEngine(model)
    try:
        with BackgroundServer(create_app(engine, model_alias=ALIAS)) as srv:
            yield srv
    finally:
        engine.close()
        model.close()


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_server_tool_calls_equal_model(client, model, stream):
    t, question = CASES["nested"]
    messages = [SYSTEM, {"role": "user", "content": question}]
    kw = dict(tools=[t], tool_choice=forced("add_contact"), max_tokens=120, temperature=0)
    want = model.create_chat_completion(messages, **kw)["choices"][0]["message"]["tool_calls"]
    want = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want]
    if stream:
        chunks = list(client.chat.completions.create(model=ALIAS, messages=messages, stream=True, **kw))
        _, got = streamed_calls([c.model_dump(exclude_unset=True) for c in chunks])
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        r = client.chat.completions.create(model=ALIAS, messages=messages, **kw)
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
        got = [(c.function.name, json.loads(c.function.arguments)) for c in r.choices[0].message.tool_calls]
    assert got == want
    check_calls(got)


def test_server_reads_past_calls_and_results(client, model):
    """A conversation with calls (OpenAI's JSON text arguments) and results: the prompt is the
    one Model renders."""
    messages = conversation(True)
    r = client.chat.completions.create(model=ALIAS, messages=messages, tools=TOOLS, max_tokens=2,
                                       temperature=0)
    assert r.usage.prompt_tokens == len(model.apply_chat_template(messages, tools=TOOLS))
    want = model.create_chat_completion(messages, tools=TOOLS, max_tokens=2, temperature=0)
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]


USER = [{"role": "user", "content": "x"}]
BAD_TOOL_REQUESTS = [
    ({"tools": "get_weather"}, "tools"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": forced("nope")}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": forced("get_weather"), "response_format": {"type": "json_object"}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": ["get_weather"]}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "grammar": 'root ::= "x"'}, "tool_choice"),
    ({"tools": [tool("f", "", {"s": {"type": "string", "format": "date"}}, [])], "tool_choice": "required"},
     "tools"),
    ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "messages"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_TOOL_REQUESTS)
def test_bad_tools_get_a_400_and_the_server_keeps_serving(server, client, extra, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, **extra}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=ALIAS, messages=USER, extra_body=extra)
    assert e.value.param == param
    ok = client.chat.completions.create(model=ALIAS, messages=USER, max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length") and ok.choices[0].message.content is not None
