"""gpt-oss's harmony answers (llama-server's GPT-OSS chat format): the parser on the cases of
llama.cpp's tests/test-chat.cpp (every cut of a text gives the same result), the prompt's
messages, then create_chat_completion and the server on a tiny gpt-oss model whose vocabulary has
the harmony tokens and whose template is gpt-oss's, its answer pinned by a grammar."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import gguf
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from splitllm import _core
from splitllm.api import create_app
from splitllm.chat_cli import ChatSession
from splitllm.engine import BatchEngine
from splitllm.harmony import HarmonyParser, harmony_messages, is_harmony
from splitllm.model import Model
from splitllm.server import BackgroundServer
from splitllm.tools import tool_plan
from tiny_model import TinyConfig, gpt2_byte_tokens, make_weights, write_gguf

NAMES = frozenset({"special_function", "edit"})
THOUGHTS = "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>"
HELLO = "Hello, world!\nWhat's up?"
CALL = ("special_function", {"arg1": 1})
EDIT = {"oldString": "if (part < railCount - 1) {", "newString": "if (part < 4) {", "replaceAll": False}

CASES = [
    # (text, reasoning format "deepseek" (else "none"), tools offered, reasoning, content, calls)
    ("<|channel|>final<|message|>" + HELLO, True, False, "", HELLO, []),
    ("<|channel|>commentary<|message|>" + HELLO, True, False, "", HELLO, []),
    (THOUGHTS + HELLO, True, False, "I'm\nthinking", HELLO, []),
    (THOUGHTS + HELLO, False, False, "", "<|channel|>analysis<|message|>I'm\nthinking<|end|>" + HELLO, []),
    ("<|channel|>analysis<|message|>I'm\nthinking", True, False, "I'm\nthinking", "", []),  # cut short
    (' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}', True, True, "", "", [CALL]),
    ('<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}', True, True, "", "", [CALL]),
    (' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}', True, True,
     "", "", [CALL]),
    ('<|channel|>commentary to=functions.special_function<|message|>{"arg1": 1}', True, True, "", "", [CALL]),
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant to=functions.special_function"
     '<|channel|>analysis<|message|>{"arg1": 1}', True, True, "I'm\nthinking", "", [CALL]),
    ("<|channel|>analysis<|message|>Thinking about edit...<|end|><|start|>assistant<|channel|>commentary "
     "to=functions.edit <|constrain|>json<|message|>" + json.dumps(EDIT), True, True,
     "Thinking about edit...", "", [("edit", EDIT)]),
    ("<|channel|>analysis<|message|>I need to output the invoice details in JSON<|end|><|start|>assistant"
     '<|channel|>final <|constrain|>json<|message|>{"amount": 123.45, "date": "2025-12-03"}', True, False,
     "I need to output the invoice details in JSON", '{"amount": 123.45, "date": "2025-12-03"}', []),
    # unsolicited calls (built-in tools) are dropped
    ("<|channel|>analysis<|message|>I will execute python to say hello<|end|><|start|>assistant "
     "to=container.exec<|channel|>commentary<|message|>python3 -c 'print(\"hello\")'", True, False,
     "I will execute python to say hello", "", []),
    ("<|channel|>analysis<|message|>I will execute python to say hello<|end|><|start|>assistant"
     '<|channel|>commentary to=python <|constrain|>code<|message|>print("hello")', True, False,
     "I will execute python to say hello", "", []),
    # a stray "<|channel|>commentary to=assistant" before a channel
    ("<|channel|>commentary to=assistant" + THOUGHTS + HELLO, True, False, "I'm\nthinking", HELLO, []),
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>commentary to=assistant"
     "<|channel|>final<|message|>" + HELLO, True, False, "I'm\nthinking", HELLO, []),
    # beyond llama.cpp's cases: without tools a call is dropped; a function not offered too
    ('<|channel|>commentary to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}', True,
     False, "", "", []),
    ('<|channel|>commentary to=functions.other <|constrain|>json<|message|>{"arg1": 1}', True, True,
     "", "", []),
    ('<|channel|>commentary to=functions.special_function<|message|>{"arg1": ', True, True, "", "", []),
    ("Hello <|channel|>final", True, False, "", "Hello <|channel|>final", []),  # no header: content
    ("<|chan", True, False, "", "<|chan", []),
    ("", True, False, "", "", []),
]


def parse(text: str, reasoning: bool, tools: bool, cuts: tuple[int, ...]) -> tuple[str, str, list]:
    p = HarmonyParser(reasoning=reasoning, names=NAMES if tools else None)
    pieces = [text[a:b] for a, b in itertools.pairwise((0, *cuts, len(text)))]
    events = [e for piece in pieces for e in p.push(piece)] + p.finish()
    calls = [(x["function"]["name"], json.loads(x["function"]["arguments"])) for k, x in events
             if k == "call"]
    text = {k: "".join(x for kind, x in events if kind == k) for k in ("reasoning", "content")}
    return text["reasoning"], text["content"], calls


@pytest.mark.parametrize(("text", "reasoning", "tools", "thought", "content", "calls"), CASES)
def test_every_cut_gives_the_same_parse(text, reasoning, tools, thought, content, calls):
    want = (thought, content, calls)
    assert parse(text, reasoning, tools, ()) == want
    for i in range(1, len(text)):
        assert parse(text, reasoning, tools, (i,)) == want, i
    assert parse(text, reasoning, tools, tuple(range(1, len(text)))) == want


def test_one_call_kept_without_parallel_calls():
    p = HarmonyParser(names=NAMES, max_calls=1)
    one = '<|channel|>commentary to=functions.special_function<|message|>{"arg1": 1}<|end|><|start|>assistant'
    events = p.push(one + one[: -len("<|start|>assistant")]) + p.finish()
    assert [k for k, _ in events] == ["call"] and p.n_calls == 1
    assert events[0][1]["type"] == "function" and events[0][1]["id"].startswith("call_")


def test_detection_and_prompt_messages():
    assert is_harmony("{{ '<|start|>assistant<|channel|>final<|message|>' }}")
    assert not is_harmony("{{ '<|im_start|>assistant' }}") and not is_harmony(None)
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = harmony_messages([
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "a", "reasoning_content": "r"},
        {"role": "assistant", "content": "ignored", "reasoning_content": "r2", "tool_calls": [call]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ])
    assert msgs[0] == {"role": "user", "content": "x"}
    assert msgs[1] == {"role": "assistant", "content": "a", "thinking": "r"}
    assert msgs[2] == {"role": "assistant", "thinking": "r2", "tool_calls": [call]}
    assert msgs[3] == {"role": "assistant", "tool_calls": [call]}


# ---- a tiny gpt-oss model that speaks harmony ----

TEMPLATE = (Path(__file__).parent / "templates" / "openai-gpt-oss-120b.jinja").read_text()
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
            "<|end|>", "<|message|>", "<|call|>"]
MESSAGES = [{"role": "user", "content": "Hi!"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]
THOUGHT = ("<|channel|>analysis<|message|>The user greets me.<|end|><|start|>assistant<|channel|>final"
           "<|message|>Hello there!")
TOOL_CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
             'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')


def pinned(text: str) -> str:
    return "root ::= " + json.dumps(text)  # (a JSON string is a GBNF literal here)


@pytest.fixture(scope="module")
def harmony_path(tmp_path_factory):
    """A tiny gpt-oss model with the harmony tokens (control tokens, as in gpt-oss's files; the
    vocabulary makes <|channel|>, <|message|>, <|start|>, <|constrain|>, <|end|> rendered text,
    <|return|> and <|call|> ends of generation) and gpt-oss's chat template."""
    cfg = TinyConfig(arch="gpt-oss", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_expert=4,
                     n_expert_used=2, n_ff_exp=64, sliding_window=6, n_ctx_train=2048, seed=5)
    merges = ["t h", "h e", "i n", "e r", "a n"]
    tokens = gpt2_byte_tokens() + [m.replace(" ", "") for m in merges]
    n_normal = len(tokens)
    tokens += SPECIALS + [f"<|reserved_{i}|>" for i in range(cfg.n_vocab - n_normal - len(SPECIALS))]
    tokenizer = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(gguf.TokenType.NORMAL)] * n_normal
        + [int(gguf.TokenType.CONTROL)] * (len(tokens) - n_normal),
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": tokens.index("<|startoftext|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|return|>"), "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": TEMPLATE,
    }
    path = tmp_path_factory.mktemp("harmony") / "gpt-oss-harmony.gguf"
    write_gguf(make_weights(cfg), path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def model(harmony_path):
    with Model(harmony_path, n_ctx=1024, n_threads=2) as m:
        yield m


def test_vocabulary_and_prompt(model):
    tok = model.tokenizer
    ids = {t: tok.vocab.token_to_id[t] for t in SPECIALS}  # the markers render, the ends end
    assert {ids["<|return|>"], ids["<|call|>"]} <= tok.eog_ids and ids["<|end|>"] not in tok.eog_ids
    assert model.detokenize([ids["<|channel|>"], ids["<|end|>"]]) == b"<|channel|><|end|>"
    assert model.chat_template().harmony
    prompt = model.apply_chat_template(MESSAGES)
    assert model.detokenize(prompt, special=True).endswith(b"<|start|>assistant")
    assert prompt.count(ids["<|start|>"]) == 3  # (system, user, the answer: special tokens)
    # a past turn: its reasoning as "thinking", its call, the result
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    past = [*MESSAGES, {"role": "assistant", "content": None, "reasoning_content": "Need the weather.",
                        "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    text = model.chat_template().render(past, tools=TOOLS)
    assert text.endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
        '{"city": "Paris"}<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary'
        '<|message|>"sunny"<|end|><|start|>assistant')


def test_model_parses_harmony(model):
    kw = dict(max_tokens=80, temperature=0, grammar=pinned(THOUGHT))
    whole = model.create_chat_completion(MESSAGES, reasoning_format="deepseek", **kw)
    ChatCompletion.model_validate(whole)
    choice = whole["choices"][0]
    assert (choice["message"]["reasoning_content"], choice["message"]["content"]) == (
        "The user greets me.", "Hello there!")
    assert choice["finish_reason"] == "stop"
    chunks = list(model.create_chat_completion(MESSAGES, reasoning_format="deepseek", stream=True, **kw))
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets me."
    assert "".join(d.get("content", "") for d in deltas) == "Hello there!"
    raw = model.create_chat_completion(MESSAGES, **kw)["choices"][0]["message"]  # "none", the default
    assert raw["content"] == "<|channel|>analysis<|message|>The user greets me.<|end|>Hello there!"
    assert "reasoning_content" not in raw


def test_model_tool_call(model):
    kw = dict(max_tokens=200, temperature=0, grammar=pinned(TOOL_CALL), tools=TOOLS,
              reasoning_format="deepseek")
    choice = model.create_chat_completion(MESSAGES, **kw)["choices"][0]
    msg = choice["message"]
    assert choice["finish_reason"] == "tool_calls"
    assert msg["content"] is None and msg["reasoning_content"] == "Need the weather."
    [call] = msg["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    chunks = list(model.create_chat_completion(MESSAGES, stream=True, **kw))
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [t for d in deltas for t in d.get("tool_calls") or []]
    assert [(t["index"], t["function"]["name"], t["function"]["arguments"]) for t in calls] == [
        (0, "get_weather", '{"city": "Paris"}')]
    assert not "".join(d.get("content") or "" for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # without tools, the call is dropped (llama-server's unsolicited calls)
    bare = model.create_chat_completion(MESSAGES, max_tokens=200, temperature=0, grammar=pinned(TOOL_CALL))
    content = bare["choices"][0]["message"]["content"]
    assert content == "<|channel|>analysis<|message|>Need the weather.<|end|>"


def matches(grammar, text: str) -> bool:
    """Whether the grammar takes the whole text, fed byte by byte (token 256 ends it)."""
    vocab = _core.GrammarVocab([bytes([b]) for b in range(256)] + [b""], [256])
    state = grammar.state()
    for b in text.encode("utf-8"):
        if not state.allows(vocab, b):
            return False
        state.accept(vocab, b)
    return state.allows(vocab, 256)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_call_grammar(choice):
    """A forced call in harmony: an optional analysis message, then the call header and arguments."""
    grammar = tool_plan(tools=TOOLS, tool_choice=choice, harmony=True).grammar
    assert matches(grammar, TOOL_CALL)
    assert matches(grammar, TOOL_CALL[TOOL_CALL.index("<|start|>assistant") + len("<|start|>assistant"):])
    assert not matches(grammar, THOUGHT)
    assert not matches(grammar, TOOL_CALL.replace('"Paris"', "7"))  # the schema's string


def test_server(harmony_path):
    with Model(harmony_path, n_ctx=2048, n_seq_max=2, n_threads=2) as m:
        eng = BatchEngine(m)
        try:
            with BackgroundServer(create_app(eng, model_alias="m")) as srv:
                client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=600)
                body = dict(model="m", messages=MESSAGES, max_tokens=200, temperature=0)
                msg = client.chat.completions.create(**body, extra_body={"grammar": pinned(THOUGHT)}
                                                     ).choices[0].message
                assert (msg.reasoning_content, msg.content) == ("The user greets me.", "Hello there!")
                chunks = list(client.chat.completions.create(stream=True, **body,
                                                             extra_body={"grammar": pinned(THOUGHT)}))
                deltas = [c.choices[0].delta for c in chunks if c.choices]
                thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
                assert thought == "The user greets me."
                assert "".join(d.content or "" for d in deltas) == "Hello there!"
                tools = dict(tools=TOOLS, extra_body={"grammar": pinned(TOOL_CALL)})
                choice = client.chat.completions.create(**body, **tools).choices[0]
                assert choice.finish_reason == "tool_calls" and choice.message.content is None
                assert choice.message.reasoning_content == "Need the weather."
                [call] = choice.message.tool_calls
                assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
                chunks = list(client.chat.completions.create(stream=True, **body, **tools))
                calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
                assert [(t.function.name, t.function.arguments) for t in calls] == [
                    ("get_weather", '{"city": "Paris"}')]
                assert chunks[-1].choices[0].finish_reason == "tool_calls"
        finally:
            eng.close()


def test_chat_cli_shows_the_final_answer(model):
    """The chat CLI shows (and keeps in the history) the final message: the gpt-oss template
    refuses an assistant content that holds harmony headers, so a second turn works."""
    session = ChatSession(model, max_tokens=80, sampling={"temperature": 0, "grammar": pinned(THOUGHT)})
    shown: list[str] = []
    session.turn("Hi!", shown.append)
    assert "".join(shown) == "Hello there!" and session.messages[-1]["content"] == "Hello there!"
    session.turn("Again!", shown.append)
    assert session.messages[-1]["content"] == "Hello there!"
