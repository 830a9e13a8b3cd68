"""The OpenAI-compatible server, talked to with the official ``openai`` client over loopback.

Greedy results must equal ``Model`` called directly (a separate Model with one sequence slot of the
same size as the server's slots); concurrent requests must share forward passes; a chat's next
turn must reuse the previous turn's KV cache; bad input must get an OpenAI-style 4xx and leave
the server working; a client that goes away must free its sequence. One test runs the real
``splitllm serve`` command in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import splitllm
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.server import BackgroundServer

PARALLEL = 4
SLOT_CTX = 256
MAX = 6          # tokens per request: keeps the suite fast
LONG = SLOT_CTX - 16  # a request that would fill its slot
ALIAS = "smol"
KEY = "sekret"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def ref(smollm2_path):
    """The model called directly, with one slot as large as each of the server's."""
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
def server(engine):
    with BackgroundServer(create_app(engine, model_alias=ALIAS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server(engine):
    with BackgroundServer(create_app(engine, model_alias=ALIAS, api_key=KEY)) as srv:
        yield srv


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600) as c:
        yield c


@pytest.fixture(scope="module")
def still_answers(ref) -> Callable[..., None]:
    """``still_answers(url, headers=None)`` asserts that the server at ``url`` answers a normal
    request as Model does: each bad-input test calls it, so none depends on the order of tests."""
    body = {"model": ALIAS, "prompt": "The sky is", "max_tokens": 2, "temperature": 0}
    want = ref.create_completion(body["prompt"], max_tokens=2, temperature=0)["choices"][0]["text"]

    def check(url: str, headers: dict[str, str] | None = None) -> None:
        r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=600)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want

    return check


def no_eog(model: Model) -> dict[str, int]:
    """A logit_bias that bans the end-of-generation tokens (a request then runs to its limit)."""
    return {str(t): -100 for t in model.tokenizer.eog_ids}


def wait_idle(engine: BatchEngine, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.n_active or engine.n_pending:
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.05)


# ---- information ----

def test_health_and_models(server, client, engine):
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["slots_idle"] == PARALLEL
    models = client.models.list()
    assert [m.id for m in models.data] == [ALIAS]
    assert models.data[0].meta["n_ctx_per_seq"] == SLOT_CTX == engine.slot_ctx


# ---- results equal Model's ----

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_completion_equals_model(client, ref, stream):
    prompt = "The capital of France is"
    want = ref.create_completion(prompt, max_tokens=MAX, temperature=0)
    if stream:
        chunks = list(client.completions.create(model=ALIAS, prompt=prompt, max_tokens=MAX, temperature=0,
                                                stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        last = chunks[-1]
    else:
        last = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=MAX, temperature=0)
        text = last.choices[0].text
    assert text == want["choices"][0]["text"]
    assert last.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert last.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert last.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert last.usage.total_tokens == want["usage"]["total_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_completion_equals_model(client, ref, stream):
    messages = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
    want = ref.create_chat_completion(messages, max_tokens=MAX, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=MAX,
                                                     temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish, usage = chunks[-1].choices[0].finish_reason, chunks[-1].usage
    else:
        r = client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=MAX, temperature=0)
        assert r.choices[0].message.role == "assistant"
        text, finish, usage = r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    assert text == want["choices"][0]["message"]["content"]
    assert finish == want["choices"][0]["finish_reason"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (want["usage"]["prompt_tokens"],
                                                              want["usage"]["completion_tokens"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("echo", [False, True], ids=["generated", "echo"])
def test_completion_logprobs_equal_model(client, ref, stream, echo):
    prompt = "The capital of France is"
    ref.reset()  # from scratch, as the engine's rows are
    want = ref.create_completion(prompt, max_tokens=MAX, temperature=0, logprobs=3, echo=echo)["choices"][0]
    kw = dict(model=ALIAS, prompt=prompt, max_tokens=MAX, temperature=0, logprobs=3, echo=echo)
    if stream:
        chunks = list(client.completions.create(**kw, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        got: dict[str, list] = {k: [] for k in want["logprobs"]}
        for c in chunks:
            if c.choices[0].logprobs is not None:
                for k, v in c.choices[0].logprobs.model_dump().items():
                    got[k] += v
    else:
        r = client.completions.create(**kw)
        text, got = r.choices[0].text, r.choices[0].logprobs.model_dump()
    assert text == want["text"]
    assert got == want["logprobs"]
    assert len(got["tokens"]) >= MAX


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_logprobs_equal_model(client, ref, stream):
    messages = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
    ref.reset()
    want = ref.create_chat_completion(messages, max_tokens=MAX, temperature=0, logprobs=True,
                                      top_logprobs=2)["choices"][0]["logprobs"]
    kw = dict(model=ALIAS, messages=messages, max_tokens=MAX, temperature=0, logprobs=True, top_logprobs=2)
    if stream:
        content = [x.model_dump() for c in client.chat.completions.create(**kw, stream=True)
                   if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    else:
        content = [x.model_dump() for x in client.chat.completions.create(**kw).choices[0].logprobs.content]
    assert content == want["content"]
    assert len(content) == MAX and all(len(c["top_logprobs"]) == 2 for c in content)


def sse_lines(url: str, body: dict) -> list[str]:
    """The non-empty lines of a streamed answer: server-sent events ending with ``data: [DONE]``."""
    with httpx.stream("POST", url, json=body, timeout=600) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return lines


def test_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": ALIAS, "prompt": "Hello", "max_tokens": 2, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    lines = sse_lines(f"{server.url}/v1/completions", body)
    assert '"choices": []' in lines[-2] and '"usage"' in lines[-2]  # include_usage: a last chunk with usage


def test_chat_stream_is_server_sent_events_ending_with_done(server, ref):
    messages = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
    want = ref.create_chat_completion(messages, max_tokens=MAX, temperature=0)["choices"][0]
    body = {"model": ALIAS, "messages": messages, "max_tokens": MAX, "temperature": 0, "stream": True}
    lines = sse_lines(f"{server.url}/v1/chat/completions", body)
    assert lines.count("data: [DONE]") == 1
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == want["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == want["finish_reason"]


def test_chat_stop_string(client, ref):
    messages = [SYSTEM, {"role": "user", "content": "List the days of the week."}]
    full = ref.create_chat_completion(messages, max_tokens=MAX, temperature=0)
    full = full["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    want = ref.create_chat_completion(messages, max_tokens=MAX, temperature=0, stop=[stop])["choices"][0]
    r = client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=MAX, temperature=0,
                                       stop=[stop])
    assert r.choices[0].message.content == want["message"]["content"] == full[: full.index(stop)]
    assert r.choices[0].finish_reason == want["finish_reason"] == "stop"


# Each field varied alone, the other settings fixed: (field, values, other settings, prompt). The
# values are chosen so that they give different tokens on SmolLM2 (for the penalties, a prompt the
# model repeats; a frequency penalty of 1.0 differs from a presence penalty of 1.0 there).
SAMPLING_FIELDS = [
    ("temperature", [0.0, 1.5], {"seed": 7}, "My favourite food is"),
    ("top_p", [0.01, 1.0], {"temperature": 1.5, "seed": 7}, "My favourite food is"),
    ("seed", [1, 2], {"temperature": 1.5}, "My favourite food is"),
    ("presence_penalty", [0.0, 1.5], {"temperature": 0}, "1 1 1 1 1 1"),
    ("frequency_penalty", [0.0, 1.0], {"temperature": 0}, "1 1 1 1 1 1"),
]


@pytest.mark.parametrize(("field", "values", "base", "prompt"), SAMPLING_FIELDS,
                         ids=[f[0] for f in SAMPLING_FIELDS])
def test_each_sampling_field_acts_as_in_model(client, ref, field, values, base, prompt):
    greedy = ref.create_completion(prompt, max_tokens=MAX, temperature=0)["choices"][0]["text"]
    got = []
    for value in values:
        opts = {**base, field: value}
        want = ref.create_completion(prompt, max_tokens=MAX, **opts)["choices"][0]["text"]
        r = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=MAX, **opts)
        got.append(r.choices[0].text)
        assert got[-1] == want, opts
    assert got[0] != got[1], f"{field} made no difference"
    assert any(g != greedy for g in got)


def test_sampling_options_equal_model(client, ref):
    """Seeded sampling with penalties gives Model's tokens: the options reach the same sampler."""
    prompt = "My favourite food is"
    opts = {"temperature": 0.9, "top_p": 0.8, "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": 0.4}
    want = ref.create_completion(prompt, max_tokens=MAX, **opts)["choices"][0]["text"]
    got = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=MAX, **opts).choices[0].text
    assert got == want


def test_logit_bias_and_max_tokens(client, ref):
    banana = ref.tokenize(b" banana", add_bos=False)
    assert len(banana) == 1
    r = client.completions.create(model=ALIAS, prompt="I like", max_tokens=3, temperature=0,
                                  logit_bias={str(banana[0]): 100})
    assert r.choices[0].text == " banana" * 3
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_stop_string(client, ref):
    prompt = "List the days of the week: Monday,"
    full = ref.create_completion(prompt, max_tokens=MAX, temperature=0)["choices"][0]["text"]
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    r = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=MAX, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


NULLS = {k: None for k in ("top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                           "frequency_penalty", "seed", "stop", "logit_bias", "n", "stream", "stream_options",
                           "logprobs", "user", "model")}


def test_null_means_default(server, ref):
    """JSON null for an optional field is its default, as with OpenAI (LangChain sends nulls)."""
    url = f"{server.url}/v1"
    prompt = "The capital of France is"
    # Greedy; everything else, max_tokens included, null: Model's defaults.
    body = {**NULLS, "prompt": prompt, "temperature": 0, "max_tokens": None, "echo": None, "suffix": None}
    r = httpx.post(f"{url}/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    want = ref.create_completion(prompt, temperature=0)
    assert r.json()["choices"][0]["text"] == want["choices"][0]["text"]
    assert r.json()["usage"]["completion_tokens"] == want["usage"]["completion_tokens"] == 16
    # temperature null: the default temperature, seeded.
    body = {**NULLS, "prompt": prompt, "temperature": None, "seed": 11, "max_tokens": MAX}
    r = httpx.post(f"{url}/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == ref.create_completion(prompt, max_tokens=MAX,
                                                                   seed=11)["choices"][0]["text"]
    # Chat: the same, with max_tokens null beside max_completion_tokens.
    messages = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
    body = {**NULLS, "messages": messages, "temperature": None, "seed": 11, "max_tokens": None,
            "max_completion_tokens": MAX}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    want = ref.create_chat_completion(messages, max_tokens=MAX, seed=11)["choices"][0]["message"]["content"]
    assert r.json()["choices"][0]["message"]["content"] == want


# ---- several prompts and choices per request ----

def stream_by_index(chunks) -> dict[int, str]:
    text: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            piece = ch.text if hasattr(ch, "text") else ch.delta.content or ""
            text[ch.index] = text.get(ch.index, "") + piece
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_several_prompts_in_one_request(client, ref, stream):
    """A list of prompts (strings, or token lists) gets one choice each, in order, run together."""
    texts = ["Once upon a time", "The best way to learn Python is", "Water boils at", "def fibonacci(n):"]
    prompts: list = texts if not stream else [ref.tokenize(t.encode(), add_bos=False) for t in texts]
    want = [ref.create_completion(p, max_tokens=MAX, temperature=0) for p in prompts]
    kw = dict(model=ALIAS, prompt=prompts, max_tokens=MAX, temperature=0)
    if stream:
        chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        got = stream_by_index(chunks)
        usage_ = chunks[-1].usage
        assert chunks[-1].choices == []
    else:
        r = client.completions.create(**kw)
        assert [c.index for c in r.choices] == list(range(len(prompts)))
        got = {c.index: c.text for c in r.choices}
        usage_ = r.usage
    assert got == {i: w["choices"][0]["text"] for i, w in enumerate(want)}
    assert usage_.prompt_tokens == sum(w["usage"]["prompt_tokens"] for w in want)
    assert usage_.completion_tokens == sum(w["usage"]["completion_tokens"] for w in want)


def test_scoring_prompts_with_echo_and_no_tokens(client, ref):
    """Scoring texts: several prompts, echo, logprobs, max_tokens 0 (nothing generated)."""
    prompts = ["The capital of France is Paris", "The capital of France is Rome"]
    r = client.completions.create(model=ALIAS, prompt=prompts, max_tokens=0, echo=True, logprobs=1,
                                  temperature=0)
    assert r.usage.completion_tokens == 0
    for i, p in enumerate(prompts):
        ref.reset()
        want = ref.create_completion(p, max_tokens=1, temperature=0, echo=True, logprobs=1)["choices"][0]
        n = len(ref.tokenize(p.encode(), add_bos=False))
        lp = r.choices[i].logprobs.model_dump()
        assert r.choices[i].text == p and r.choices[i].finish_reason == "length"
        assert lp == {k: v[:n] for k, v in want["logprobs"].items()}
    # The model prefers the true statement.
    score = [sum(x for x in c.logprobs.token_logprobs if x is not None) for c in r.choices]
    assert score[0] > score[1]


def test_n_choices(client, ref):
    """n choices per prompt, choice k seeded with seed + k (so each can be repeated alone)."""
    prompt = "Once upon a time"
    r = client.completions.create(model=ALIAS, prompt=[prompt, "Water boils at"], n=3, max_tokens=MAX,
                                  seed=40)
    assert [c.index for c in r.choices] == list(range(6))
    for k in range(3):
        want = ref.create_completion(prompt, max_tokens=MAX, seed=40 + k)["choices"][0]["text"]
        assert r.choices[k].text == want
    assert len({c.text for c in r.choices[:3]}) > 1
    messages = [SYSTEM, {"role": "user", "content": "Tell me a joke."}]
    chunks = list(client.chat.completions.create(model=ALIAS, messages=messages, n=2, max_tokens=MAX, seed=7,
                                                 stream=True))
    got = stream_by_index(chunks)
    for k in range(2):
        want = ref.create_chat_completion(messages, max_tokens=MAX, seed=7 + k)["choices"][0]["message"]
        assert got[k] == want["content"]
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
    assert sorted(roles) == [0, 1]


def test_metrics(server, engine, client):
    """Prometheus' text format, llama-server's names; the counters follow the engine's."""
    client.completions.create(model=ALIAS, prompt="Hello", max_tokens=2, temperature=0)
    r = httpx.get(f"{server.url}/metrics", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for line in r.text.splitlines():
        if not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    st = engine.stats
    assert values["llamacpp:tokens_predicted_total"] >= 1
    assert values["llamacpp:n_decode_total"] <= st.steps
    assert values["llamacpp:requests_processing"] == 0
    assert {"llamacpp:prompt_tokens_total", "llamacpp:requests_deferred"} <= set(values)


# ---- tokens ----

def test_tokenize_and_detokenize(server, ref):
    """llama-server's /tokenize and /detokenize, and llama-cpp-python's /extras/* forms."""
    text = "<|im_start|>user Héllo wörld"
    want = ref.tokenize(text.encode(), add_bos=False, special=True)
    r = httpx.post(f"{server.url}/tokenize", json={"content": text}, timeout=60)
    assert r.status_code == 200 and r.json() == {"tokens": want}
    r = httpx.post(f"{server.url}/tokenize", json={"content": text, "with_pieces": True}, timeout=60)
    pieces = r.json()["tokens"]
    assert [p["id"] for p in pieces] == want
    assert "".join(p["piece"] for p in pieces if isinstance(p["piece"], str)) == text
    r = httpx.post(f"{server.url}/detokenize", json={"tokens": want}, timeout=60)
    assert r.json() == {"content": text}
    assert httpx.post(f"{server.url}/extras/tokenize", json={"input": text}).json() == {"tokens": want}
    count = httpx.post(f"{server.url}/extras/tokenize/count", json={"input": text}).json()
    assert count == {"count": len(want)}
    assert httpx.post(f"{server.url}/extras/detokenize", json={"tokens": want}).json() == {"text": text}
    bad = (("/tokenize", {}, "content"), ("/detokenize", {"tokens": [-1]}, "tokens"),
           ("/detokenize", {"tokens": "x"}, "tokens"), ("/tokenize", {"content": 5}, "content"))
    for path, body, param in bad:
        r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, body, r.text)


# ---- grammars ----

def test_grammar_and_json_schema(client, ref):
    """The grammar field (completions) and response_format (chat) give what Model gives."""
    g = 'root ::= " " ("yes" | "no") "."'
    r = client.completions.create(model=ALIAS, prompt="Is the sky blue? Answer:", max_tokens=8, temperature=0,
                                  extra_body={"grammar": g})
    want = ref.create_completion("Is the sky blue? Answer:", max_tokens=8, temperature=0, grammar=g)
    assert r.choices[0].text == want["choices"][0]["text"] in (" yes.", " no.")
    assert r.choices[0].finish_reason == "stop"
    schema = {"type": "object", "required": ["city", "population"],
              "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}}}
    messages = [SYSTEM, {"role": "user", "content": "Give the largest city of France as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    r = client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=60, temperature=0,
                                       response_format=fmt)
    doc = json.loads(r.choices[0].message.content)
    assert isinstance(doc["city"], str) and isinstance(doc["population"], int)
    want = ref.create_chat_completion(messages, max_tokens=60, temperature=0, response_format=fmt)
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]


# ---- embeddings ----

def test_embeddings_need_pooling(server, still_answers):
    """SmolLM2 has no pooling type: per-token vectors, which OpenAI's shape cannot carry; a 400
    naming --pooling, as llama-server answers."""
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": "Hello", "model": ALIAS}, timeout=600)
    assert r.status_code == 400, r.text
    assert "--pooling" in r.json()["error"]["message"]
    still_answers(server.url)


def test_a_grammar_with_no_way_on_fails_its_request_only(server, engine, still_answers):
    """A grammar whose next character no token can give (NUL) ends its own request with a 400;
    another request running at the same time is not touched."""
    body = {"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
            "logit_bias": {str(t): -100 for t in engine.model.tokenizer.eog_ids}}
    with ThreadPoolExecutor(2) as ex:
        other = ex.submit(httpx.post, f"{server.url}/v1/completions", json=body, timeout=600)
        time.sleep(0.2)
        dead_end = {"prompt": "x", "grammar": 'root ::= "a" "\\x00"'}
        r = httpx.post(f"{server.url}/v1/completions", json=dead_end, timeout=600)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "grammar"
        assert other.result().status_code == 200
        assert other.result().json()["usage"]["completion_tokens"] == 40
    still_answers(server.url)


@pytest.fixture(scope="module")
def mean_server(smollm2_path):
    model = Model(smollm2_path, n_ctx=SLOT_CTX * 2, n_seq_max=2, n_threads=2, pooling_type="mean")
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias=ALIAS)) as srv:
        yield srv, eng
    model.close()


def test_pooled_embeddings_with_the_openai_client(mean_server, smollm2_path):
    """Mean pooling: one unit vector per input, equal to Model.embed; the openai client asks for
    base64 by default, and token lists are inputs too. They share the engine with completions."""
    srv, eng = mean_server
    texts = ["The capital of France is Paris.", "def fibonacci(n):", "Water boils at 100 degrees."]
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2, embedding=True, pooling_type="mean") as m:
        want = np.asarray(m.embed(texts, normalize=True))
        toks = [m.tokenize(t.encode()) for t in texts]
    with openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=600) as c:
        with ThreadPoolExecutor(2) as ex:  # a completion runs alongside
            gen = ex.submit(c.completions.create, model=ALIAS, prompt="Once upon a time", max_tokens=MAX)
            r = c.embeddings.create(model=ALIAS, input=texts)
            assert gen.result().choices[0].text
        got = np.asarray([d.embedding for d in r.data])
        assert got == pytest.approx(want, abs=1e-6)
        assert np.linalg.norm(got, axis=1) == pytest.approx(np.ones(3))
        assert r.usage.prompt_tokens == sum(map(len, toks))
        r2 = c.embeddings.create(model=ALIAS, input=toks, encoding_format="float")
        assert np.asarray([d.embedding for d in r2.data]) == pytest.approx(want, abs=1e-6)
        # Related texts are closer than unrelated ones.
        r3 = c.embeddings.create(model=ALIAS, input=["I love cats.", "I adore kittens.",
                                                     "Quarterly tax filing deadlines."])
        cat, kitten, tax = (np.asarray(d.embedding) for d in r3.data)
        assert cat @ kitten > cat @ tax


# ---- batching and prefix reuse ----

def test_concurrent_requests_share_forward_passes(server, engine, ref):
    prompts = ["Once upon a time", "The best way to learn Python is", "def fibonacci(n):", "Water boils at"]
    want = {p: ref.create_completion(p, max_tokens=MAX, temperature=0)["choices"][0]["text"] for p in prompts}
    wait_idle(engine)
    before = engine.stats
    start = threading.Barrier(len(prompts))

    def run(prompt: str) -> str:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600) as c:
            start.wait()
            stream = c.completions.create(model=ALIAS, prompt=prompt, max_tokens=MAX, temperature=0,
                                          stream=True)
            return "".join(ch.choices[0].text for ch in stream)

    with ThreadPoolExecutor(len(prompts)) as ex:
        got = dict(zip(prompts, ex.map(run, prompts), strict=True))
    after = engine.stats
    assert got == want
    steps = after.steps - before.steps
    evaluated = after.generated_evaluated - before.generated_evaluated
    # Alone, each generated token would need its own pass; sharing passes needs far fewer.
    assert evaluated >= len(prompts) * (MAX - 1)
    assert steps < evaluated
    assert after.max_batch_seqs >= 2


def test_chat_next_turn_reuses_the_cache(client, engine, ref):
    first = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    r1 = client.chat.completions.create(model=ALIAS, messages=first, max_tokens=MAX, temperature=0)
    second = [*first, {"role": "assistant", "content": r1.choices[0].message.content},
              {"role": "user", "content": "And another one?"}]
    p1, p2 = ref.apply_chat_template(first), ref.apply_chat_template(second)
    assert p2[: len(p1)] == p1
    wait_idle(engine)
    before = engine.stats
    r2 = client.chat.completions.create(model=ALIAS, messages=second, max_tokens=MAX, temperature=0)
    evaluated = engine.stats.prompt_evaluated - before.prompt_evaluated
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r2.usage.prompt_tokens == len(p2)
    assert cached >= len(p1)                   # the whole first turn came from the cache
    assert evaluated == len(p2) - cached       # and only the rest was evaluated
    ref.reset()
    fresh = ref.create_chat_completion(second, max_tokens=MAX, temperature=0)
    assert r2.choices[0].message.content == fresh["choices"][0]["message"]["content"]


# ---- bad input ----

BAD_REQUESTS = [
    # (path, raw body, status, param)
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b"", 400, None),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "top_p": 1.5}', 400, "top_p"),
    ("/v1/completions", b'{"prompt": "x", "n": 0}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "n": 17}', 400, "n"),
    ("/v1/completions", b'{"prompt": ["x", 5]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": []}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": [' + b'"a", ' * 64 + b'"a"]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": ["a", [1, 99999999]]}', 400, "prompt"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 17}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"banana": 1}}', 400, "logit_bias"),
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"99999999": 1}}', 400, "logit_bias"),
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"5": 100.5}}', 400, "logit_bias"),
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"5": -101}}', 400, "logit_bias"),
    ("/v1/completions", b'{"prompt": null}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": [1, 99999999]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "model": "gpt-4"}', 404, "model"),
    ("/v1/completions", b'{"prompt": "x", "logprobs": 21}', 400, "logprobs"),
    ("/v1/completions", b'{"prompt": "x", "logprobs": -1}', 400, "logprobs"),
    ("/v1/completions", b'{"prompt": "x", "logprobs": true}', 400, "logprobs"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', 400,
     "top_logprobs"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "logprobs": true, '
     b'"top_logprobs": 21}', 400, "top_logprobs"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "logprobs": 3}', 400,
     "logprobs"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 7}]}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": null}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400,
     "max_tokens"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400,
     "max_tokens"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}', 400,
     "max_tokens"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e30}', 400,
     "max_tokens"),
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 100000}', 400,
     "max_completion_tokens"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 1000}}',
     400, "logit_bias"),
    ("/v1/chat/completions", b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model"),
    ("/v1/embeddings", b'{"input": []}', 400, "input"),
    ("/v1/embeddings", b'{"input": ""}', 400, "input"),
    ("/v1/embeddings", b'{"input": 5}', 400, "input"),
    ("/v1/embeddings", b'{"input": [1, 99999999]}', 400, "input"),
    ("/v1/embeddings", b'{"input": "x", "dimensions": 64}', 400, "dimensions"),
    ("/v1/embeddings", b'{"input": "x"}', 400, "model"),  # SmolLM2 has no pooling type
    ("/v1/embeddings", b'{"input": "x", "encoding_format": "hex"}', 400, "encoding_format"),
    ("/v1/embeddings", b'{"input": "' + b"hi " * 300 + b'"}', 400, "input"),
    ("/v1/embeddings", b'{"input": "x", "model": "gpt-4"}', 404, "model"),
    ("/v1/completions", b'{"prompt": "x", "grammar": "root ::= nothing"}', 400, "grammar"),
    ("/v1/completions", b'{"prompt": "x", "grammar": 5}', 400, "grammar"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "response_format": '
     b'{"type": "xml"}}', 400, "response_format"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "response_format": '
     b'{"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}}}', 400,
     "response_format"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "tools": 5}', 400, "tools"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": '
     b'"function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": '
     b'{"name": "g"}}}', 400, "tool_choice"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": 5}',
     400, "chat_template_kwargs"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": '
     b'{"messages": []}}', 400, "chat_template_kwargs"),
    ("/v1/nowhere", b"{}", 404, None),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS,
                         ids=[f"{i}-{b[:30]!r}" for i, (_, b, _, _) in enumerate(BAD_REQUESTS)])
def test_bad_input_gets_openai_error(server, still_answers, path, body, status, param):
    r = httpx.post(f"{server.url}{path}", content=body, headers={"Content-Type": "application/json"},
                   timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param
    still_answers(server.url)


def chat_filling(ref: Model, room: int) -> tuple[list[dict[str, str]], int]:
    """Chat messages whose prompt leaves between 2 and ``room`` cells of a slot, and that number."""
    for k in range(SLOT_CTX, 0, -1):
        messages = [{"role": "user", "content": "hi " * k}]
        left = SLOT_CTX - len(ref.apply_chat_template(messages))
        if 2 <= left <= room:
            return messages, left
    raise AssertionError("no chat prompt of the wanted length")


def test_explicit_max_tokens_must_fit_after_the_prompt(server, ref, still_answers):
    """OpenAI's rule: prompt + max_tokens beyond the context is a 400 (context_length_exceeded);
    without max_tokens (or with null) the request generates until the context is full."""
    url = f"{server.url}/v1"
    left = 4
    prompt = ref.tokenize(b" the", add_bos=False) * (SLOT_CTX - left)
    ban = no_eog(ref)
    r = httpx.post(f"{url}/completions", json={"prompt": prompt, "max_tokens": left + 1, "logit_bias": ban},
                   timeout=600)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "prompt"
    # max_tokens that just fits, then the default (16, more than fits: only a cap), then null.
    for extra in ({"max_tokens": left}, {}, {"max_tokens": None}):
        r = httpx.post(f"{url}/completions", json={"prompt": prompt, "temperature": 0, "logit_bias": ban,
                                                   **extra}, timeout=600)
        assert r.status_code == 200, (extra, r.text)
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == left, extra

    messages, left = chat_filling(ref, 8)
    for limit in ("max_tokens", "max_completion_tokens"):
        r = httpx.post(f"{url}/chat/completions", json={"messages": messages, limit: left + 1}, timeout=600)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "messages"
    for extra in ({}, {"max_tokens": None}, {"max_tokens": left}):
        r = httpx.post(f"{url}/chat/completions", json={"messages": messages, "temperature": 0,
                                                        "logit_bias": ban, **extra}, timeout=600)
        assert r.status_code == 200, (extra, r.text)
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == left, extra
    still_answers(server.url)


def test_prompt_longer_than_context(client, engine, server, still_answers):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=ALIAS, prompt="hello " * SLOT_CTX, max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "hi " * SLOT_CTX}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
    assert engine.n_active == 0 and engine.n_pending == 0
    still_answers(server.url)


def test_api_key(keyed_server, ref, still_answers):
    url = f"{keyed_server.url}/v1/completions"
    body = {"model": ALIAS, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(url, json=body, headers=headers, timeout=60)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(url, content=b"{broken", headers={"Authorization": "Bearer nope"}, timeout=60)
    assert r.status_code == 401  # the key is checked before the body
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200  # health needs no key
    r = httpx.post(f"{keyed_server.url}/tokenize", json={"content": "Hi"}, timeout=60)
    assert r.status_code == 401  # every other path does
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0, timeout=600) as c:
        got = c.completions.create(**body).choices[0].text
    assert got == ref.create_completion("Hi", max_tokens=1, temperature=0)["choices"][0]["text"]
    still_answers(keyed_server.url, {"Authorization": f"Bearer {KEY}"})


def test_body_is_json_whatever_the_content_type(server, ref):
    """``curl -d`` sends application/x-www-form-urlencoded; the body is still read as JSON."""
    body = b'{"prompt": "Hi", "max_tokens": 1, "temperature": 0}'
    r = httpx.post(f"{server.url}/v1/completions", content=body,
                   headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=600)
    assert r.status_code == 200, r.text
    want = ref.create_completion("Hi", max_tokens=1, temperature=0)["choices"][0]["text"]
    assert r.json()["choices"][0]["text"] == want


# ---- clients that go away ----

def long_request(engine: BatchEngine, **extra: object) -> dict:
    """A request that runs until its slot is full (end-of-generation tokens banned)."""
    return {"model": ALIAS, "prompt": "Once upon a time", "max_tokens": LONG, "temperature": 0,
            "logit_bias": no_eog(engine.model), **extra}


def test_disconnect_mid_stream_frees_the_sequence(server, engine):
    wait_idle(engine)
    before = engine.stats
    body = long_request(engine, stream=True)
    with httpx.Client(timeout=600) as h, h.stream("POST", f"{server.url}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # the first chunk: now hang up
    wait_idle(engine)
    after = engine.stats
    assert after.cancelled - before.cancelled == 1
    assert after.generated_evaluated - before.generated_evaluated < LONG - 1  # it did not run to the end
    assert httpx.get(f"{server.url}/health").json()["slots_processing"] == 0


def test_disconnect_while_waiting_for_whole_response(server, engine):
    wait_idle(engine)
    before = engine.stats
    body = long_request(engine)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
    wait_idle(engine)
    after = engine.stats
    assert after.cancelled - before.cancelled == 1
    assert after.generated_evaluated - before.generated_evaluated < LONG - 1


# ---- the real command ----

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"splitllm serve exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"splitllm serve did not become healthy:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def test_serve_command(smollm2_path, tmp_path):
    """``splitllm serve`` in a child process, with its options, talked to with the openai client."""
    # The child imports the splitllm this process imported (the installed one in CI, the source
    # tree with an in-place build in development).
    src = Path(splitllm.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    port, name, key = free_port(), "served-smol", "k3y-for-test"
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "splitllm.cli", "serve", str(smollm2_path), "--host", "127.0.0.1",
            "--port", str(port), "--parallel", "2", "-c", "1024", "-ctk", "q8_0", "-ctv", "q8_0",
            "--api-key", key, "--model-alias", name, "-t", "2", "--log-level", "warning"]
    log = tmp_path / "serve.log"
    messages = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(proc, url, log)
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120) as c:
                models = c.models.list().data
                assert [m.id for m in models] == [name]
                assert models[0].meta["n_parallel"] == 2 and models[0].meta["n_ctx_per_seq"] == 512
                r = c.chat.completions.create(model=name, messages=messages, max_tokens=4, temperature=0)
            assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
            assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
            r = httpx.post(f"{url}/v1/chat/completions", json={"model": name, "messages": messages},
                           timeout=60)  # no key
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (so the exit status says
    # how the process ended); a process that had to be killed fails here.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()


def test_chat_template_kwargs_defaults_and_request(smollm2_path):
    """--chat-template-kwargs sets variables for every chat request; a request's own win."""
    from test_model_api import THINKING_TEMPLATE

    messages = [{"role": "user", "content": "Hi!"}]
    with Model(smollm2_path, n_ctx=256, n_threads=2, chat_template=THINKING_TEMPLATE) as model:
        n_plain = len(model.apply_chat_template(messages))
        n_off = len(model.apply_chat_template(messages, chat_template_kwargs={"enable_thinking": False}))
        assert n_off > n_plain
        eng = BatchEngine(model)
        try:
            app = create_app(eng, model_alias=ALIAS, chat_template_kwargs={"enable_thinking": False})
            with BackgroundServer(app) as srv:
                def prompt_tokens(**extra: object) -> int:
                    body = {"messages": messages, "max_tokens": 1, "temperature": 0, **extra}
                    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=600)
                    assert r.status_code == 200, r.text
                    return r.json()["usage"]["prompt_tokens"]

                assert prompt_tokens() == n_off
                assert prompt_tokens(chat_template_kwargs={"enable_thinking": True}) == n_plain
        finally:
            eng.close()
