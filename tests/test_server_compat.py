"""llama-server's other endpoints on SmolLM2: its aliases, the native ``/embedding``, Anthropic's
``/v1/messages``, OpenAI's ``/v1/responses``, ``/slots``.

The cases are ported from llama-server's own tests (tools/server/tests/unit/test_embedding.py,
test_compat_anthropic.py, test_compat_oai_responses.py, test_slot_save.py of llama.cpp as vendored
in llama-cpp-python 0.3.36), with their expected shapes. Values are checked against references
outside the code under test: per-token embeddings against llama.cpp's (llama-cpp-python), their
token counts against llama.cpp's tokenizer, the normalizations against numpy float64; greedy
answers against ``Model.create_chat_completion`` called directly on the chat messages that
llama-server's translation of the request gives (written out by hand here); token counts of
translated requests against ``/v1/chat/completions/input_tokens`` of those hand-written messages;
a restored slot's answer against the answer computed from scratch.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.server import BackgroundServer

PARALLEL = 2
SLOT_CTX = 256
ALIAS = "smol"
KEY = "sekret"
N = 6
HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER = {"name": "get_weather", "description": "Get the current weather in a location",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}


@pytest.fixture(scope="module")
def ref(smollm2_path):
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def engine(smollm2_path):
    model = Model(smollm2_path, n_ctx=SLOT_CTX * PARALLEL, n_seq_max=PARALLEL, n_threads=2)
    eng = BatchEngine(model)
    yield eng
    eng.close()
    model.close()


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    app = create_app(engine, model_alias=ALIAS, slot_save_path=str(tmp_path_factory.mktemp("slots")))
    with BackgroundServer(app) as srv:
        yield srv


def post(srv: Any, path: str, body: Any, status: int = 200, **kw: Any) -> Any:
    r = httpx.post(f"{srv.url}{path}", json=body, timeout=300, **kw)
    assert r.status_code == status, r.text
    return r.json()


def sse(srv: Any, path: str, body: Any) -> list[dict[str, Any]]:
    """The events of a stream; each ``event:`` line must name its data's type."""
    with httpx.stream("POST", f"{srv.url}{path}", json=body, timeout=300) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def still_answers(srv: Any) -> None:
    assert post(srv, "/v1/messages", {"max_tokens": 1, "messages": HELLO})["type"] == "message"


def greedy(ref: Model, messages: list[dict[str, Any]], n: int = N, **kw: Any) -> dict[str, Any]:
    """The chat completion read from scratch (Model's own prefix reuse is not what is tested here)."""
    ref.reset()
    return ref.create_chat_completion(messages, max_tokens=n, temperature=0, **kw)


def n_chat_tokens(srv: Any, messages: list[dict[str, Any]], **kw: Any) -> int:
    return post(srv, "/v1/chat/completions/input_tokens", {"messages": messages, **kw})["input_tokens"]


# ---- aliases ----

def test_aliases(server, engine):
    """llama-server's prefix-less and /v1 aliases answer as the routes they stand for; /v1/health
    is public like /health."""
    assert httpx.get(f"{server.url}/models").json() == httpx.get(f"{server.url}/v1/models").json()
    assert httpx.get(f"{server.url}/v1/health").json()["status"] == "ok"
    body = {"messages": HELLO, "max_tokens": 3, "temperature": 0}
    a = post(server, "/chat/completions", body)
    assert a["choices"][0]["message"] == post(server, "/v1/chat/completions", body)["choices"][0]["message"]
    err = post(server, "/reranking", {"query": "q", "documents": ["d"]}, 400)  # (not a reranker)
    assert "reranker" in err["error"]["message"]
    with BackgroundServer(create_app(engine, api_key=KEY)) as keyed:
        assert httpx.get(f"{keyed.url}/v1/health").status_code == 200
        assert httpx.get(f"{keyed.url}/models").status_code == 401


# ---- /embedding (test_embedding.py) ----

@pytest.fixture(scope="module")
def llama_embed(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=SLOT_CTX, n_threads=2, embedding=True,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, verbose=False)
    yield llm
    llm.close()


def test_embedding_pooling_none_equals_llama_cpp(server, llama_embed):
    """Pooling none (SmolLM2 has no pooling type): one vector per token, as the model leaves them
    (not normalized), equal to llama.cpp's within rounding; /embeddings is the same route."""
    text = "hello hello hello"
    want = np.asarray(llama_embed.embed(text, normalize=False), dtype=np.float64)
    got = post(server, "/embeddings", {"input": text})
    assert [d["index"] for d in got] == [0]
    vecs = np.asarray(got[0]["embedding"], dtype=np.float64)
    assert vecs.shape == want.shape == (len(llama_embed.tokenize(text.encode(), special=True)), 576)
    assert all(abs(np.linalg.norm(v) - 1) > 1e-3 for v in vecs)
    cos = (vecs * want).sum(1) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.999
    assert np.abs(vecs - want).max() < 0.02 * np.abs(want).max()
    assert post(server, "/embedding", {"content": text})[0]["embedding"] == got[0]["embedding"]
    assert post(server, "/v1/embeddings", {"input": text}, 400)["error"]  # (OpenAI's cannot carry them)


@pytest.mark.parametrize("value,n", [
    ("string", 1), ([12, 34, 56], 1), ([12, 34, "string", 56, 78], 1), (["string1", "string2"], 2),
    (["string1", [12, 34, 56]], 2), ([[12, 34, 56], [12, "string", 34, 56]], 2),
    ({"content": [{"type": "text", "text": "string"}]}, 1),
    (["string1", {"content": [{"type": "text", "text": "string3"}]}], 2)])
def test_embedding_mixed_input(server, llama_embed, value, n):
    """Prompts in llama-server's shapes; each result has one vector per token of its prompt (the
    strings tokenized by llama.cpp with special tokens parsed)."""
    got = post(server, "/embedding", {"content": value})
    assert [d["index"] for d in got] == list(range(n))
    prompts = value if n > 1 else [value]
    for d, p in zip(got, prompts, strict=True):
        if isinstance(p, dict):
            p = p["content"][0]["text"]
        items = p if isinstance(p, list) else [p]
        n_tok = sum(len(llama_embed.tokenize(x.encode(), add_bos=i == 0, special=True))
                    if isinstance(x, str) else 1 for i, x in enumerate(items))
        assert np.asarray(d["embedding"]).shape == (n_tok, 576)


def test_embedding_content_text_same_as_string(server):
    got = post(server, "/embedding", {"input": [
        "hello world", {"content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}]})
    assert got[0]["embedding"] == got[1]["embedding"]


@pytest.mark.parametrize("value", [
    [], "", {"content": "string"}, {"content": [{"type": "unknown"}]},
    {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
def test_embedding_invalid_input(server, value):
    """llama-server refuses these (an empty string too, for a model without BOS: no tokens)."""
    assert post(server, "/embedding", {"input": value}, 400)["error"]["message"]
    assert post(server, "/embedding", {"nothing": 1}, 400)["error"]["message"]
    still_answers(server)


def test_embedding_normalize(smollm2_path, llama_embed):
    """A pooled model: llama-server's embd_normalize (-1 none, 0 int16 range, 1 taxicab, 2
    Euclidean, p) against numpy float64 of the unnormalized vector, which is the mean of llama.cpp's
    token vectors."""
    text = "I believe the meaning of life is"
    model = Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2, pooling_type="mean")
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng)) as srv:
        raw = np.asarray(post(srv, "/embedding", {"content": text, "embd_normalize": -1})[0]["embedding"])
        assert raw.shape == (1, 576)
        want = np.asarray(llama_embed.embed(text, normalize=False)).mean(0)
        assert np.abs(raw[0] - want).max() < 0.02 * np.abs(want).max()
        v = raw[0].astype(np.float64)
        for p, norm in [(0, np.abs(v).max() / 32760), (1, np.abs(v).sum()), (2, np.linalg.norm(v)),
                        (3, (np.abs(v) ** 3).sum() ** (1 / 3))]:
            got = post(srv, "/embedding", {"content": text, "embd_normalize": p})[0]["embedding"][0]
            assert np.asarray(got) == pytest.approx(v / norm, rel=1e-5, abs=1e-6)
        oai = post(srv, "/v1/embeddings", {"input": text})["data"][0]["embedding"]
        assert np.asarray(oai) == pytest.approx(v / np.linalg.norm(v), abs=1e-6)
    model.close()


# ---- /v1/messages (test_compat_anthropic.py) ----

def test_anthropic_messages_basic(server, ref):
    """The shape of a message; the text and usage those of the chat completion of the same
    messages (Model called directly)."""
    want = greedy(ref, HELLO)
    res = post(server, "/v1/messages", {"model": "test", "max_tokens": N, "temperature": 0,
                                        "messages": HELLO})
    assert res["type"] == "message" and res["role"] == "assistant" and res["id"].startswith("msg_")
    assert res["content"] == [{"type": "text", "text": want["choices"][0]["message"]["content"]}]
    assert res["stop_reason"] in ("end_turn", "max_tokens")
    finish = want["choices"][0]["finish_reason"]
    assert res["stop_reason"] == {"length": "max_tokens", "stop": "end_turn"}[finish]
    u = res["usage"]
    assert all(isinstance(u[k], int) for k in ("cache_read_input_tokens", "input_tokens", "output_tokens"))
    assert u["input_tokens"] + u["cache_read_input_tokens"] == want["usage"]["prompt_tokens"]
    assert u["output_tokens"] == want["usage"]["completion_tokens"] > 0
    assert "timings" not in res and "choices" not in res


@pytest.mark.parametrize("body,messages", [
    ({"system": "You are a helpful assistant.", "messages": [{"role": "user", "content": "Hello"}]},
     [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}]),
    ({"system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
      "messages": [{"role": "user", "content": "Hello"}]},
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is"},
                                                {"type": "text", "text": " the answer?"}]}]},
     [{"role": "user", "content": "What is the answer?"}]),
    ({"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
                   {"role": "user", "content": "How are you?"}]},
     [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
      {"role": "user", "content": "How are you?"}]),
], ids=["system", "system-blocks", "multipart", "conversation"])
def test_anthropic_messages_as_chat(server, ref, body, messages):
    want = greedy(ref, messages, 3)["choices"][0]["message"]["content"]
    res = post(server, "/v1/messages", {"max_tokens": 3, "temperature": 0, **body})
    assert res["content"][0]["text"] == want
    assert post(server, "/v1/messages/count_tokens", body)["input_tokens"] == n_chat_tokens(server, messages)


def test_anthropic_messages_streaming(server):
    """The event sequence of a stream; its text that of the same request unstreamed."""
    body = {"model": "test", "max_tokens": N, "temperature": 0, "messages": HELLO}
    whole = post(server, "/v1/messages", body)
    events = sse(server, "/v1/messages", {**body, "stream": True})
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert types[1:-2] == ["content_block_start"] + ["content_block_delta"] * (len(types) - 5) + \
        ["content_block_stop"]
    start = events[0]["message"]
    assert start["type"] == "message" and start["role"] == "assistant" and start["content"] == []
    assert start["usage"]["input_tokens"] > 0
    assert events[1]["index"] == 0 and events[1]["content_block"] == {"type": "text", "text": ""}
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == whole["content"][0]["text"]
    assert events[-3] == {"type": "content_block_stop", "index": 0}
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == whole["stop_reason"]
    assert delta["usage"]["output_tokens"] == whole["usage"]["output_tokens"] > 0
    assert "timings" not in events[-1]


def test_anthropic_count_tokens(server):
    res = post(server, "/v1/messages/count_tokens", {"model": "test", "messages": [
        {"role": "user", "content": "Hello world"}]})
    assert res == {"input_tokens": n_chat_tokens(server, [{"role": "user", "content": "Hello world"}])}
    assert res["input_tokens"] > 0
    with_system = post(server, "/v1/messages/count_tokens", {
        "system": "Be brief.", "messages": [{"role": "user", "content": "Hello world"}]})
    assert with_system["input_tokens"] == n_chat_tokens(server, [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}])
    assert with_system["input_tokens"] != res["input_tokens"]


def test_anthropic_tool_use(server):
    """A forced tool call: a tool_use block (an object as input), stop_reason tool_use; streamed,
    the same call as a tool_use block whose input_json_delta pieces make its input."""
    body = {"max_tokens": 60, "tools": [WEATHER], "messages": [
        {"role": "user", "content": "What's the weather in Paris?"}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}}
    res = post(server, "/v1/messages", body)
    assert res["stop_reason"] == "tool_use"
    block = next(b for b in res["content"] if b["type"] == "tool_use")
    assert block["name"] == "get_weather" and block["id"] and isinstance(block["input"], dict)
    events = sse(server, "/v1/messages", {**body, "stream": True})
    starts = [e for e in events if e["type"] == "content_block_start"]
    stops = [e for e in events if e["type"] == "content_block_stop"]
    assert [e["index"] for e in starts] == list(range(len(starts))) == [e["index"] for e in stops]
    tool = next(e for e in starts if e["content_block"]["type"] == "tool_use")
    assert tool["content_block"]["name"] == "get_weather"
    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
              and e["index"] == tool["index"]]
    assert json.loads("".join(pieces)) == block["input"]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


CALL = {"type": "tool_use", "id": "test123", "name": "get_weather", "input": {"location": "Paris"}}
OAI_CALL = {"role": "assistant", "content": "", "tool_calls": [{
    "id": "test123", "type": "function",
    "function": {"name": "get_weather", "arguments": json.dumps({"location": "Paris"})}}]}


@pytest.mark.parametrize("results,oai", [
    ([{"type": "tool_result", "tool_use_id": "test123", "content": "The weather is sunny, 25°C"}],
     [{"role": "tool", "tool_call_id": "test123", "content": "The weather is sunny, 25°C"}]),
    ([{"type": "text", "text": "Here are the results:"},
      {"type": "tool_result", "tool_use_id": "test123", "content": [{"type": "text", "text": "Sunny, "},
                                                                    {"type": "text", "text": "25°C"}]}],
     [{"role": "user", "content": "Here are the results:"},
      {"role": "tool", "tool_call_id": "test123", "content": "Sunny, 25°C"}]),
    ([{"type": "tool_result", "tool_use_id": "test123", "is_error": True, "content": "City not found"}],
     [{"role": "tool", "tool_call_id": "test123", "content": "City not found"}]),
], ids=["result", "result-with-text", "error"])
def test_anthropic_tool_result(server, results, oai):
    """tool_use / tool_result blocks become the assistant's tool call and tool messages (after
    the user's text), as llama-server translates them."""
    messages = [{"role": "user", "content": "What's the weather?"},
                {"role": "assistant", "content": [CALL]}, {"role": "user", "content": results}]
    res = post(server, "/v1/messages", {"max_tokens": 2, "messages": messages})
    assert res["type"] == "message" and res["content"][0]["type"] == "text"
    want = n_chat_tokens(server, [{"role": "user", "content": "What's the weather?"}, OAI_CALL, *oai])
    assert post(server, "/v1/messages/count_tokens", {"messages": messages})["input_tokens"] == want


def test_anthropic_stop_sequences(server, ref):
    """A stop sequence ends the text before it: stop_reason stop_sequence, naming it (Anthropic's
    answer; llama-server says end_turn)."""
    text = greedy(ref, HELLO, 8)["choices"][0]["message"]["content"]
    word = text.split()[1]
    res = post(server, "/v1/messages", {"max_tokens": 8, "temperature": 0, "messages": HELLO,
                                        "stop_sequences": ["\n\n\n", word]})
    assert res["stop_reason"] == "stop_sequence" and res["stop_sequence"] == word
    assert res["content"][0]["text"] == text[:text.index(word)]


@pytest.mark.parametrize("extra", [{"temperature": 0.5}, {"top_p": 0.9}, {"top_k": 40},
                                   {"metadata": {"user_id": "test_user_123"}},
                                   {"thinking": {"type": "enabled", "budget_tokens": 50}}],
                         ids=["temperature", "top_p", "top_k", "metadata", "thinking"])
def test_anthropic_parameters(server, extra):
    assert post(server, "/v1/messages", {"max_tokens": 2, "messages": HELLO, **extra})["type"] == "message"


@pytest.mark.parametrize("body,word", [
    ({"max_tokens": 50}, "messages"),
    ({"max_tokens": 50, "messages": []}, "messages"),  # (llama-server answers an empty conversation)
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AAAA"}}, {"type": "text", "text": "What?"}]}]},
     "image input is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "unsupported content block"),
    ({"messages": HELLO, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"messages": HELLO, "temperature": "hot"}, "temperature"),
    ({"messages": HELLO, "max_tokens": 10**6}, None),  # a cap, not refused (llama-server's)
], ids=["missing", "empty", "image", "unknown-block", "tool_choice", "temperature", "huge-max"])
def test_anthropic_bad_requests(server, body, word):
    if word is None:
        body["max_tokens"] = 10**6
        assert post(server, "/v1/messages/count_tokens", body)["input_tokens"] > 0
        return
    err = post(server, "/v1/messages", body, 400)["error"]
    assert word in err["message"]
    still_answers(server)


# ---- /v1/responses (test_compat_oai_responses.py) ----

BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]


@pytest.fixture
def oai(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="dummy", max_retries=0, timeout=300) as c:
        yield c


def test_responses_with_openai_library(oai, ref):
    want = greedy(ref, BOOK, 8)
    res = oai.responses.create(model="gpt-4.1", input=BOOK, max_output_tokens=8, temperature=0)
    assert res.id.startswith("resp_")
    assert res.output[0].id.startswith("msg_")
    assert res.output_text == want["choices"][0]["message"]["content"]
    assert res.usage.input_tokens == want["usage"]["prompt_tokens"]
    assert res.usage.output_tokens == want["usage"]["completion_tokens"]


def test_responses_stream_with_openai_library(oai, ref):
    want = greedy(ref, BOOK, 8)["choices"][0]["message"]["content"]
    stream = oai.responses.create(model="gpt-4.1", input=BOOK, max_output_tokens=8, temperature=0,
                                  stream=True)
    gathered, resp_id, msg_id, types = "", "", "", []
    for r in stream:
        types.append(r.type)
        if r.type == "response.created":
            assert r.response.id.startswith("resp_")
            resp_id = r.response.id
        if r.type == "response.in_progress":
            assert r.response.id == resp_id
        if r.type == "response.output_item.added":
            assert r.item.id.startswith("msg_")
            msg_id = r.item.id
        if r.type in ("response.content_part.added", "response.output_text.delta",
                      "response.output_text.done", "response.content_part.done"):
            assert r.item_id == msg_id
        if r.type == "response.output_item.done":
            assert r.item.id == msg_id
        if r.type == "response.output_text.delta":
            gathered += r.delta
        if r.type == "response.completed":
            assert r.response.id == resp_id
            assert r.response.output[0].id == msg_id
            assert gathered == r.response.output_text == want
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]


def test_responses_function_calls(server):
    """function tools and a forced call: a function_call item whose arguments are JSON; its
    streamed arguments deltas make the same arguments."""
    tool = {"type": "function", "name": "get_weather", "description": WEATHER["description"],
            "parameters": WEATHER["input_schema"]}
    body = {"input": "What's the weather in Paris?", "tools": [tool], "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": 60}
    res = post(server, "/responses", body)
    call = next(o for o in res["output"] if o["type"] == "function_call")
    assert call["name"] == "get_weather" and call["call_id"] and call["id"].startswith("fc_")
    args = json.loads(call["arguments"])
    events = sse(server, "/v1/responses", {**body, "stream": True})
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert json.loads(deltas) == args
    done = events[-1]["response"]["output"]
    assert [o["type"] for o in done] == [o["type"] for o in res["output"]]


def test_responses_input_items(server):
    """Input items become the chat messages llama-server makes of them: instructions a system
    message, a function_call merged into the assistant message before it, function_call_output a
    tool message."""
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                          {"type": "input_text", "text": "Paris?"}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "Let me see."}]},
             {"type": "function_call", "call_id": "c1", "name": "get_weather",
              "arguments": '{"location": "Paris"}'},
             {"type": "function_call_output", "call_id": "c1", "output": "Sunny"}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Let me see.", "tool_calls": [{
                    "id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Sunny"}]
    body = {"instructions": "Be brief.", "input": items}
    res = post(server, "/v1/responses/input_tokens", body)
    assert res == {"object": "response.input_tokens", "input_tokens": n_chat_tokens(server, messages)}
    assert post(server, "/responses/input_tokens", {"input": "Hi"})["input_tokens"] == \
        n_chat_tokens(server, [{"role": "user", "content": "Hi"}])
    assert post(server, "/v1/responses", {**body, "max_output_tokens": 2})["status"] == "completed"


@pytest.mark.parametrize("body,word", [
    ({}, "'input' is required"), ({"input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": [{"type": "mystery"}]}, "cannot determine"), ({"input": 5}, "'input' must be"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "not supported"),
])
def test_responses_bad_requests(server, body, word):
    assert word in post(server, "/v1/responses", body, 400)["error"]["message"]
    still_answers(server)


# ---- /slots (test_slot_save.py) ----

def test_slot_save_erase_restore(server, engine):
    """A slot saved, erased, restored into the other slot: the same prompt then reuses the restored
    cache and gives the answer computed from scratch; erased, it is read in full again."""
    body = {"prompt": "What is the capital of Italy? The capital of Italy is", "n_predict": 4,
            "temperature": 0}
    first = post(server, "/completion", body)
    n_prompt = first["tokens_evaluated"]
    assert first["timings"]["prompt_n"] == n_prompt  # all tokens are processed
    s = first["id_slot"]
    saved = post(server, f"/slots/{s}?action=save", {"filename": "slot1.bin"})
    assert saved["id_slot"] == s and saved["filename"] == "slot1.bin"
    assert saved["n_saved"] == first["tokens_cached"] > n_prompt
    assert saved["n_written"] > 0 and saved["timings"]["save_ms"] >= 0
    assert post(server, f"/slots/{s}?action=erase", {}) == {"id_slot": s, "n_erased": saved["n_saved"]}
    t = 1 - s
    post(server, f"/slots/{t}?action=erase", {})
    restored = post(server, f"/slots/{t}?action=restore", {"filename": "slot1.bin"})
    assert restored["n_restored"] == saved["n_saved"] and restored["n_read"] == saved["n_written"]
    slots = httpx.get(f"{server.url}/slots").json()
    assert [(x["id"], x["n_ctx"], x["is_processing"], x["n_cached"]) for x in slots] == \
        [(i, SLOT_CTX, False, saved["n_saved"] if i == t else 0) for i in range(PARALLEL)]
    again = post(server, "/completion", body)
    assert again["id_slot"] == t and again["content"] == first["content"]
    # (the engine reads a few cached tokens again where the rest would be a shorter pass than reading
    # from scratch takes; see splitllm.engine)
    assert again["timings"]["cache_n"] > 0
    assert again["timings"]["cache_n"] + again["timings"]["prompt_n"] == n_prompt
    post(server, f"/slots/{t}?action=erase", {})
    assert post(server, "/completion", body)["timings"]["prompt_n"] == n_prompt  # erased: read again


@pytest.mark.parametrize("path,body,status", [
    ("/slots/abc?action=save", {"filename": "x.bin"}, 400),
    ("/slots/9?action=save", {"filename": "x.bin"}, 400),
    ("/slots/0?action=dance", {"filename": "x.bin"}, 400),
    ("/slots/0?action=save", {"filename": "../x"}, 400),
    ("/slots/0?action=save", {}, 400), ("/slots/0?action=restore", {"filename": "absent.bin"}, 404),
])
def test_slot_bad_requests(server, path, body, status):
    assert post(server, path, body, status)["error"]["message"]
    still_answers(server)


def test_slots_switched_off(engine):
    """Without --slot-save-path the actions answer 501 (llama-server's not-supported error); with
    --no-slots so does GET /slots."""
    with BackgroundServer(create_app(engine, slots_endpoint=False)) as srv:
        assert post(srv, "/slots/0?action=erase", {}, 501)["error"]["message"]
        assert httpx.get(f"{srv.url}/slots").status_code == 501
        assert httpx.get(f"{srv.url}/props").json()["endpoint_slots"] is False


# ---- thinking (test_anthropic_thinking_with_reasoning_model, on an answer pinned by a grammar) ----

THOUGHT, ANSWER = "I should greet.", "Hello there!"
PINNED = f'root ::= "<think>{THOUGHT}</think>{ANSWER}"'


def test_anthropic_thinking_blocks(server):
    """A reasoning answer: a thinking block (with a signature) first, then the text; streamed, the
    thinking block at index 0 with thinking_delta pieces and a signature_delta before it stops,
    the text block at index 1."""
    body = {"max_tokens": 60, "messages": HELLO, "grammar": PINNED,
            "thinking": {"type": "enabled", "budget_tokens": 50}}
    res = post(server, "/v1/messages", body)
    assert res["content"] == [{"type": "thinking", "thinking": THOUGHT, "signature": ""},
                              {"type": "text", "text": ANSWER}]
    assert res["stop_reason"] == "end_turn"
    events = sse(server, "/v1/messages", {**body, "stream": True})
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["type"]) for e in starts] == [(0, "thinking"), (1, "text")]
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert "".join(d["delta"].get("thinking", "") for d in deltas if d["index"] == 0) == THOUGHT
    assert "".join(d["delta"].get("text", "") for d in deltas if d["index"] == 1) == ANSWER
    kinds = [(e["type"], e.get("index"), e.get("delta", {}).get("type")) for e in events]
    sign = kinds.index(("content_block_delta", 0, "signature_delta"))
    assert kinds[sign + 1] == ("content_block_stop", 0, None)
    assert all(k[2] == "thinking_delta" for k in kinds[2:sign])


def test_responses_reasoning_item(server):
    """A reasoning answer: a reasoning item (reasoning_text) before the message; streamed, its
    deltas under its own item id."""
    body = {"input": "Say hello", "max_output_tokens": 60, "grammar": PINNED}
    res = post(server, "/v1/responses", body)
    assert [o["type"] for o in res["output"]] == ["reasoning", "message"]
    assert res["output"][0]["id"].startswith("rs_")
    assert res["output"][0]["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    assert res["output"][1]["content"][0]["text"] == ANSWER
    events = sse(server, "/v1/responses", {**body, "stream": True})
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["type"], e) for i, e in zip(added, [0, 1], strict=True)] == [("reasoning", 0), ("message", 1)]
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert thought == THOUGHT and all(e["item_id"] == added[0]["id"] for e in events
                                      if e["type"] == "response.reasoning_text.delta")
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["reasoning", "message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize("path,body", [
    ("/v1/messages", {"max_tokens": 200, "messages": HELLO}),
    ("/v1/responses", {"max_output_tokens": 200, "input": "Say hello"}),
], ids=["anthropic", "responses"])
def test_stream_client_gone(server, engine, path, body):
    """A client that leaves mid-stream cancels its job and frees its slot."""
    before = engine.stats.cancelled
    long = {**body, "stream": True, "grammar": "root ::= [a-z]{150}"}  # (no early end)
    with httpx.stream("POST", f"{server.url}{path}", json=long, timeout=300) as r:
        for line in r.iter_lines():
            if "delta" in line:  # (the first piece of text)
                break
    deadline = time.monotonic() + 60
    while engine.n_active or engine.stats.cancelled == before:
        assert time.monotonic() < deadline, "the job was not cancelled"
        time.sleep(0.05)


def test_anthropic_with_anthropic_library(server, ref):
    """Anthropic's own client reads the answers: whole, streamed (its stream helper builds the
    message from the events: text, thinking with its signature, a tool call's input from the JSON
    pieces) and counted."""
    anthropic = pytest.importorskip("anthropic")
    want = greedy(ref, HELLO)["choices"][0]["message"]["content"]
    with anthropic.Anthropic(base_url=server.url, api_key="dummy", max_retries=0, timeout=300) as client:
        greedy_ = {"extra_body": {"temperature": 0}}  # (this client no longer sends temperature itself)
        msg = client.messages.create(model="test", max_tokens=N, messages=HELLO, **greedy_)
        assert msg.content[0].text == want and msg.stop_reason in ("end_turn", "max_tokens")
        with client.messages.stream(model="test", max_tokens=N, messages=HELLO, **greedy_) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == final.content[0].text == want
        assert final.usage.output_tokens == msg.usage.output_tokens
        with client.messages.stream(model="test", max_tokens=60, messages=HELLO,
                                    extra_body={"grammar": PINNED}) as stream:
            final = stream.get_final_message()
        blocks = [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in final.content]
        assert blocks == [("thinking", THOUGHT), ("text", ANSWER)]
        assert final.content[0].signature == ""
        choice = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
        ask = [{"role": "user", "content": "What's the weather in Paris?"}]
        with client.messages.stream(model="test", max_tokens=60, tools=[WEATHER], tool_choice=choice,
                                    messages=ask) as stream:
            final = stream.get_final_message()
        call = next(b for b in final.content if b.type == "tool_use")
        assert call.name == "get_weather" and isinstance(call.input, dict) and final.stop_reason == "tool_use"
        count = client.messages.count_tokens(model="test", messages=HELLO)
        assert count.input_tokens == n_chat_tokens(server, HELLO)


def test_slot_action_waits_for_its_job(server):
    """An action on a busy slot waits for the job in it to end (as llama-server defers it): the
    state saved then holds everything the job evaluated."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"prompt": "Count: one two", "n_predict": 40, "stream": True, "grammar": 'root ::= " a"{30}'}
    with ThreadPoolExecutor(1) as pool, httpx.stream("POST", f"{server.url}/completion", json=body,
                                                     timeout=300) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        first = json.loads(next(lines)[6:])
        saving = pool.submit(post, server, f"/slots/{first['id_slot']}?action=save", {"filename": "busy.bin"})
        last = [json.loads(line[6:]) for line in lines][-1]
        saved = saving.result()
    assert last["stop"] and last["tokens_predicted"] >= 30
    assert saved["n_saved"] == last["tokens_cached"] >= first["tokens_evaluated"] + 29


# ---- id_slot (test_slot_save.py, test_kv_keep_only_active.py) ----

def erase_slots(server: Any) -> None:
    for i in range(PARALLEL):
        post(server, f"/slots/{i}?action=erase", {})


def test_completion_id_slot_save_restore(server):
    """llama-server's test_slot_save_restore: requests pinned with ``id_slot``; the second prompt
    reuses the first one's cache in its slot, a state restored into the other slot serves the same
    prompt there, and slot 1 is untouched by it. Answers against the same prompt read from scratch."""
    erase_slots(server)
    france = {"prompt": "What is the capital of France?", "n_predict": 8, "temperature": 0, "id_slot": 1}
    germany = {**france, "prompt": "What is the capital of Germany?"}
    first = post(server, "/completion", france)
    assert first["id_slot"] == 1 and first["timings"]["prompt_n"] == first["tokens_evaluated"]
    saved = post(server, "/slots/1?action=save", {"filename": "pinned.bin"})
    assert saved["n_saved"] == first["tokens_cached"]
    tok, ref_tok = (httpx.post(f"{server.url}/tokenize", json={"content": b["prompt"]}).json()["tokens"]
                    for b in (germany, france))
    n_common = next(i for i, (a, b) in enumerate(zip(tok, ref_tok, strict=False)) if a != b)
    assert n_common >= 4  # "What is the capital of"
    second = post(server, "/completion", germany)
    assert second["id_slot"] == 1
    assert 0 < second["timings"]["cache_n"] <= n_common
    timings = second["timings"]
    assert timings["cache_n"] + timings["prompt_n"] == second["tokens_evaluated"] == len(tok)
    restored = post(server, "/slots/0?action=restore", {"filename": "pinned.bin"})
    assert restored["n_restored"] == first["tokens_cached"]
    in_zero = post(server, "/completion", {**germany, "id_slot": 0})
    assert in_zero["id_slot"] == 0 and in_zero["content"] == second["content"]
    assert 0 < in_zero["timings"]["cache_n"] <= n_common
    again = post(server, "/completion", germany)  # slot 1 still holds the Germany prompt
    assert again["id_slot"] == 1 and again["content"] == second["content"]
    assert again["timings"]["prompt_n"] <= 1
    erase_slots(server)
    scratch = post(server, "/completion", {**germany, "id_slot": -1})
    assert scratch["timings"]["cache_n"] == 0 and scratch["content"] == second["content"]


def test_id_slot_wraps_and_pins_every_endpoint(server):
    """As llama-server's get_slot_by_id, an id past the last slot wraps around; the OpenAI
    endpoints take the field too (their answers do not name the slot: GET /slots shows where the
    prompt went)."""
    erase_slots(server)
    wrapped = post(server, "/completion", {"prompt": "Hello", "n_predict": 2, "id_slot": PARALLEL + 1})
    assert wrapped["id_slot"] == 1
    for path, body in [("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 2}),
                       ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 2})]:
        for pin in range(PARALLEL):
            erase_slots(server)
            post(server, path, {**body, "id_slot": pin, "temperature": 0})
            cached = [s["n_cached"] for s in httpx.get(f"{server.url}/slots").json()]
            assert [c > 0 for c in cached] == [i == pin for i in range(PARALLEL)], (path, pin, cached)
    bad = post(server, "/completion", {"prompt": "x", "id_slot": "one"}, 400)
    assert "id_slot" in bad["error"]["message"]
    still_answers(server)


def test_job_waits_for_its_slot_while_others_go_ahead(engine):
    """A job pinned to a busy slot waits for it (llama-server defers the task); a job queued after
    it takes the free slot meanwhile and ends first."""
    import threading

    done: dict[str, float] = {}
    ended = threading.Event()

    def on_event(name: str):
        def f(ev: Any) -> None:
            if isinstance(ev, BaseException) or ev.finish_reason is not None:
                done[name] = time.monotonic()
                if len(done) == 3:
                    ended.set()
        return f

    from splitllm.sampling import SamplingParams

    prompt = [1, 504, 3458, 282, 4457]
    no_eos = SamplingParams(temperature=0, logit_bias={engine.model.tokenizer.eos_id: float("-inf")})
    long = engine.submit(prompt, on_event=on_event("long"), max_tokens=48, slot=0, params=no_eos)
    pinned = engine.submit(prompt[:3], on_event=on_event("pinned"), max_tokens=1, slot=0)
    free = engine.submit(prompt[:4], on_event=on_event("free"), max_tokens=1)
    assert ended.wait(300)
    assert long.slot == pinned.slot == 0 and free.slot == 1
    assert done["free"] < done["long"] < done["pinned"]
