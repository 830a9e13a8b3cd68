"""llama-server's native endpoints (``/completion``, ``/props``, ``/apply-template``, ``/infill`` on a
model without FIM tokens) on SmolLM2, over loopback with httpx.

References: the answers' shapes are llama-server's (tools/server/README.md and server-task.cpp of
llama.cpp as vendored in llama-cpp-python 0.3.36); greedy text must equal ``Model`` called
directly (one slot of the server's slot size, as tests/test_server.py checks the OpenAI API);
``completion_probabilities`` must equal llama.cpp's log-softmax of the same positions (through
llama-cpp-python, where its top tokens are decided); ``/props``' tokens and template those
llama.cpp reads from the file; ``/apply-template``'s text llama-cpp-python's Jinja2 formatting of
the same messages.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.gguf_file import GGUFFile
from splitllm.model import Model
from splitllm.server import BackgroundServer

PARALLEL = 2
SLOT_CTX = 128
ALIAS = "smol"
PROMPT = "The capital of France is"
N = 5
NOISE = 0.5  # logit gaps this small come from rounding alone in this model (see test_vs_llamacpp)
LOGPROB_TOL = 0.3  # (rounding alone moves this model's log-probabilities by up to ~0.2 from llama.cpp's)
FINAL_FIELDS = {"index", "content", "tokens", "id_slot", "stop", "model", "tokens_predicted",
                "tokens_evaluated", "generation_settings", "prompt", "has_new_line", "truncated", "stop_type",
                "stopping_word", "tokens_cached", "timings"}
PARTIAL_FIELDS = {"index", "content", "tokens", "stop", "id_slot", "tokens_predicted", "tokens_evaluated"}
GREEDY = {"prompt": PROMPT, "n_predict": N, "temperature": 0}
TIMINGS = {"cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n",
           "predicted_ms", "predicted_per_token_ms", "predicted_per_second"}


@pytest.fixture(scope="module")
def ref(smollm2_path):
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def server(smollm2_path):
    model = Model(smollm2_path, n_ctx=SLOT_CTX * PARALLEL, n_seq_max=PARALLEL, n_threads=2)
    engine = BatchEngine(model)
    with BackgroundServer(create_app(engine, model_alias=ALIAS)) as srv:
        yield srv
    engine.close()
    model.close()


def post(server: Any, path: str, body: Any, status: int = 200) -> Any:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def greedy(ref: Model, prompt: str, n: int = N, **kw: Any) -> dict[str, Any]:
    return ref.create_completion(prompt, max_tokens=n, temperature=0.0, **kw)["choices"][0]


def events(server: Any, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = httpx.post(f"{server.url}{path}", json={**body, "stream": True}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert "[DONE]" not in r.text  # (llama-server's native stream has none)
    return [json.loads(line[6:]) for line in lines]


# ---- /completion ----

def test_completion_answer(server, ref) -> None:
    res = post(server, "/completion", {**GREEDY, "return_tokens": True})
    want = greedy(ref, PROMPT)
    n_prompt = len(ref.tokenize(PROMPT.encode(), special=True))
    assert set(res) == FINAL_FIELDS
    assert res["content"] == want["text"]
    assert ref.detokenize(res["tokens"]).decode() == res["content"] and len(res["tokens"]) == N
    assert (res["stop"], res["stop_type"], res["stopping_word"], res["truncated"]) == \
        (True, "limit", "", False)
    assert (res["tokens_predicted"], res["tokens_evaluated"], res["tokens_cached"]) == \
        (N, n_prompt, n_prompt + N - 1)
    assert res["model"] == ALIAS and res["prompt"] == PROMPT and res["has_new_line"] == ("\n" in want["text"])
    t = res["timings"]
    assert set(t) == TIMINGS
    assert t["prompt_n"] + t["cache_n"] == n_prompt and t["predicted_n"] == N
    assert t["prompt_ms"] > 0 and t["predicted_ms"] > 0 and t["predicted_per_second"] > 0
    s = res["generation_settings"]
    assert (s["n_predict"], s["temperature"], s["top_k"], s["seed"], s["stop"]) == \
        (N, 0.0, 40, 4294967295, [])
    # the other names of n_predict, and the /completions path
    again = post(server, "/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0})
    assert again["content"] == want["text"] and again["tokens"] == []  # (no return_tokens)


def test_stream(server) -> None:
    body = {"prompt": PROMPT, "n_predict": N, "temperature": 0, "return_tokens": True}
    whole = post(server, "/completion", body)
    evs = events(server, "/completion", body)
    *parts, final = evs
    assert not any(e["stop"] for e in parts) and final["stop"] is True
    assert all(set(e) == PARTIAL_FIELDS for e in parts)
    assert "".join(e["content"] for e in parts) == whole["content"]
    assert [t for e in parts for t in e["tokens"]] == whole["tokens"]
    assert [e["tokens_predicted"] for e in parts] == list(range(1, N + 1))
    assert set(final) == FINAL_FIELDS and final["content"] == "" and final["tokens"] == []
    assert final["stop_type"] == "limit" and final["timings"]["predicted_n"] == N


def test_stop_types(server, ref) -> None:
    # eos: the end-of-generation token made certain (a [token, bias] pair); it counts as predicted
    eos = ref.token_eos()
    res = post(server, "/completion", {**GREEDY, "return_tokens": True, "logit_bias": [[eos, 100]]})
    assert (res["stop_type"], res["content"], res["tokens"], res["tokens_predicted"]) == ("eos", "", [eos], 1)
    # ignore_eos bans it again
    res = post(server, "/completion", {"prompt": PROMPT, "n_predict": 2, "temperature": 0, "ignore_eos": True,
                                       "logit_bias": {str(eos): 100}})
    assert res["stop_type"] == "limit" and res["tokens_predicted"] == 2
    # word: the text before the stop string, which is named
    want = greedy(ref, PROMPT, stop=["."])
    res = post(server, "/completion", {**GREEDY, "stop": [".", "zzz"]})
    assert (res["stop_type"], res["stopping_word"], res["content"]) == ("word", ".", want["text"])
    assert want["finish_reason"] == "stop"
    # limit at the end of the context: truncated
    long = " ".join(["word"] * (SLOT_CTX - 3))
    n_long = len(ref.tokenize(long.encode(), special=True))
    res = post(server, "/completion", {"prompt": long, "temperature": 0, "ignore_eos": True})
    assert (res["stop_type"], res["truncated"], res["tokens_predicted"]) == ("limit", True, SLOT_CTX - n_long)


def test_n_probs_equal_llama_cpp(server, ref, smollm2_path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    res = post(server, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": 0, "n_probs": 3,
                                       "return_tokens": True})
    probs = res["completion_probabilities"]
    prompt = ref.tokenize(PROMPT.encode(), special=True)
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=SLOT_CTX, n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(prompt + res["tokens"][:-1])
        rows = np.array(llm.scores[len(prompt) - 1: len(prompt) - 1 + len(probs)], dtype=np.float64)
        ids = {t for e in probs for t in [e["id"]] + [x["id"] for x in e["top_logprobs"]]}
        pieces = {t: llm.detokenize([t]) for t in ids}
    finally:
        llm.close()
    assert [e["id"] for e in probs] == res["tokens"]
    rows -= rows.max(-1, keepdims=True)
    lsm = rows - np.log(np.exp(rows).sum(-1, keepdims=True))
    for e, row in zip(probs, lsm, strict=True):
        assert set(e) == {"id", "token", "bytes", "logprob", "top_logprobs"}
        assert e["bytes"] == list(pieces[e["id"]]) and e["token"] == pieces[e["id"]].decode()
        assert e["logprob"] == pytest.approx(row[e["id"]], abs=LOGPROB_TOL)
        order = np.argsort(-row)
        decided = [i for i in range(3) if row[order[i]] - row[order[i + 1]] > NOISE]
        for i in decided:
            assert e["top_logprobs"][i]["id"] == order[i]
        for x in e["top_logprobs"]:
            assert x["logprob"] == pytest.approx(row[x["id"]], abs=LOGPROB_TOL)
            assert x["bytes"] == list(pieces[x["id"]])


def test_prompt_shapes(server, ref) -> None:
    """A string, its token ids, ids and text mixed, several prompts, several completions."""
    want = greedy(ref, PROMPT, 3)["text"]
    ids = ref.tokenize(PROMPT.encode(), special=True)
    head = ref.tokenize(b"The capital", special=True)
    for prompt in (ids, [*head, " of France is"]):
        res = post(server, "/completion", {"prompt": prompt, "n_predict": 3, "temperature": 0})
        assert res["content"] == want
    many = post(server, "/completion", {"prompt": [PROMPT, ids], "n_predict": 3, "temperature": 0})
    assert [(r["index"], r["content"]) for r in many] == [(0, want), (1, want)]
    two = post(server, "/completion", {"prompt": PROMPT, "n_predict": 3, "temperature": 0, "n": 2})
    assert [r["content"] for r in two] == [want, want]


def test_repeat_last_n_minus_one_is_the_context(server) -> None:
    """llama-server's repeat_last_n -1: the penalty window is the whole context (here: the same
    text as a window longer than the prompt and the answer)."""
    body = {**GREEDY, "n_predict": 12, "repeat_penalty": 1.8}
    whole = post(server, "/completion", {**body, "repeat_last_n": -1})["content"]
    assert whole == post(server, "/completion", {**body, "repeat_last_n": 1000})["content"]
    assert whole != post(server, "/completion", {**body, "repeat_last_n": 0})["content"]


def test_samplers_and_fields(server, ref) -> None:
    """samplers picks which run: top_k alone with k = 1 is greedy whatever the temperature;
    response_fields keeps the fields named (a path for a nested one)."""
    want = greedy(ref, PROMPT, 3)["text"]
    res = post(server, "/completion", {"prompt": PROMPT, "n_predict": 3, "temperature": 5.0, "top_k": 1,
                                       "samplers": ["top_k"], "seed": 7})
    assert res["content"] == want and res["generation_settings"]["samplers"] == ["top_k"]
    fields = ["content", "timings/predicted_n", "nope"]
    res = post(server, "/completion", {"prompt": PROMPT, "n_predict": 3, "temperature": 5.0, "top_k": 1,
                                       "samplers": "kp", "response_fields": fields})
    assert res == {"content": want, "timings/predicted_n": 3}


def test_v1_suffix_without_fim_tokens(server, ref) -> None:
    """SmolLM2 has no FIM tokens: the completion of the prompt, then the suffix (llama-cpp-python's
    fallback), streamed or not."""
    want = ref.create_completion(PROMPT, suffix=" [end]", max_tokens=3, temperature=0.0)["choices"][0]["text"]
    assert want.endswith(" [end]")
    body = {"prompt": PROMPT, "suffix": " [end]", "max_tokens": 3, "temperature": 0}
    assert post(server, "/v1/completions", body)["choices"][0]["text"] == want
    r = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=300)
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    err = post(server, "/v1/completions", {**body, "echo": True, "logprobs": 1}, 400)["error"]
    assert err["param"] == "suffix"


# ---- /props, /apply-template ----

def test_props(server, smollm2_path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    props = httpx.get(f"{server.url}/props").json()
    llm = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    try:
        bos = llm.detokenize([llm.token_bos()], special=True).decode()
        eos = llm.detokenize([llm.token_eos()], special=True).decode()
        template = llm.metadata["tokenizer.chat_template"]
    finally:
        llm.close()
    assert (props["bos_token"], props["eos_token"], props["chat_template"]) == (bos, eos, template)
    assert props["total_slots"] == PARALLEL and props["default_generation_settings"]["n_ctx"] == SLOT_CTX
    assert props["model_path"] == str(smollm2_path) and props["model_alias"] == ALIAS
    params = props["default_generation_settings"]["params"]
    assert [params[k] for k in ("temperature", "top_k", "top_p", "min_p", "n_predict")] == \
        [0.8, 40, 0.95, 0.05, -1]
    assert props["build_info"].startswith("splitllm ")


def test_apply_template(server, ref, smollm2_path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    got = post(server, "/apply-template", {"messages": messages})["prompt"]
    with GGUFFile(smollm2_path) as gf:
        template = gf.metadata["tokenizer.chat_template"]
    fmt = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template, eos_token="<|im_end|>",
                                                          bos_token="<|im_start|>")
    assert got == fmt(messages=messages).prompt == ref.chat_template().render(messages)
    assert ref.tokenize(got.encode(), add_bos=False, special=True) == ref.chat_prompt(messages)[0]
    bare = post(server, "/apply-template", {"messages": messages, "add_generation_prompt": False})["prompt"]
    assert got.startswith(bare) and got != bare
    post(server, "/apply-template", {"messages": messages, "chat_template_kwargs": {"messages": []}}, 400)


# ---- bad input ----

@pytest.mark.parametrize(("path", "body", "message"), [
    ("/completion", {"n_predict": 1}, '"prompt" is required'),
    ("/completion", {"prompt": {"text": "hi"}}, '"prompt" elements must be'),
    ("/completion", {"prompt": [1.5]}, '"prompt" elements must be'),
    ("/completion", {"prompt": []}, '"prompt" must not be empty'),
    ("/completion", {"prompt": "a", "n_predict": -2}, "n_predict"),
    ("/completion", {"prompt": "a", "dry_allowed_length": -1}, "dry_allowed_length"),
    ("/completion", {"prompt": "a", "dry_sequence_breakers": []}, "dry_sequence_breakers"),
    ("/completion", {"prompt": "a", "mirostat": "2"}, "mirostat"),
    ("/completion", {"prompt": "a", "post_sampling_probs": True}, "post_sampling_probs is not supported"),
    ("/completion", {"prompt": "a", "samplers": ["temperature", "top_k"]}, "samplers"),
    ("/completion", {"prompt": "a", "samplers": ["top_k", "adaptive_p"]}, "adaptive_p is not supported"),
    ("/completion", {"prompt": "a", "n_probs": 21}, "at most 20"),
    ("/completion", {"prompt": "a", "n_cmpl": PARALLEL + 1}, "n_cmpl"),
    ("/completion", {"prompt": "a", "grammar": "root ::= oops"}, ""),
    ("/completion", {"prompt": "a", "temperature": "hot"}, "temperature"),
    ("/completion", {"prompt": [10**9]}, "vocabulary"),
    ("/infill", {"input_prefix": "def f(", "input_suffix": ")"},
     "Infill is not supported by this model: prefix token is missing. suffix token is missing. middle token"),
    ("/apply-template", {"messages": []}, "messages"),
])
def test_bad_input_is_400(server, ref, path, body, message) -> None:
    err = post(server, path, body, 400)["error"]
    assert message in err["message"]
    r = httpx.post(f"{server.url}/completion", content=b"{not json", timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    ok = post(server, "/completion", {"prompt": PROMPT, "n_predict": 2, "temperature": 0})
    assert ok["content"] == greedy(ref, PROMPT, 2)["text"]
