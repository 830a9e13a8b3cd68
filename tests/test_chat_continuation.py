"""Continuing an assistant message (llama-server's assistant prefill and ``continue_final_message``).

The cases are llama-server's own (tools/server/tests/unit/test_chat_completion.py of llama.cpp as
vendored in llama-cpp-python 0.3.36: test_chat_template_assistant_prefill,
test_chat_template_continue_final_message_vllm_compat, ..._mutual_exclusion; its Llama 3.1
template from llama.cpp's models/templates), with the prompt text it expects, and its checks in
server-common.cpp (two assistant messages at the end, tool calls: 400). Templates that write
thinking blocks or harmony messages get the prompt llama.cpp builds for them (common/chat-auto-
parser-generator.cpp, common/parsers/gpt-oss.cpp: the generation prompt cut before ``<think>``,
the reasoning, ``</think>``, the content; harmony's analysis then final message). The answer to a
continued prompt is the one SmolLM2 gives for that prompt text read as a plain completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.server import BackgroundServer

TEMPLATES = Path(__file__).parent / "templates"
LLAMA31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]
BOOK_TAIL = ("<|start_header_id|>user<|end_header_id|>\n\nWhat is the best book<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n")


def serve(smollm2_path: Path, template: str, **kw: Any):
    model = Model(str(smollm2_path), n_ctx=1024, n_threads=2, chat_template=template)
    engine = BatchEngine(model)
    return model, engine, BackgroundServer(create_app(engine, **kw))


@pytest.fixture(scope="module")
def llama31(smollm2_path):
    model, engine, srv = serve(smollm2_path, LLAMA31)
    with engine, srv:
        yield srv, model
    model.close()


def post(srv: Any, path: str, body: Any, status: int = 200) -> Any:
    r = httpx.post(f"{srv.url}{path}", json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def prompt_of(srv: Any, messages: list[dict[str, Any]], **kw: Any) -> str:
    return post(srv, "/apply-template", {"messages": messages, **kw})["prompt"]


@pytest.mark.parametrize("prefill,re_prefill", [
    ("Whill", "Whill"),
    ([{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}], "Wh\n\nill"),
])
def test_assistant_prefill(llama31, prefill, re_prefill):
    srv, model = llama31
    messages = [*BOOK, {"role": "assistant", "content": prefill}]
    prompt = prompt_of(srv, messages)
    assert prompt.endswith(BOOK_TAIL + re_prefill)
    # the chat answer goes on from that text, as a plain completion of it does
    tokens = model.tokenize(prompt.encode(), add_bos=False, special=True)
    counted = post(srv, "/v1/chat/completions/input_tokens", {"messages": messages})["input_tokens"]
    assert counted == len(tokens)
    chat = post(srv, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0})
    plain = post(srv, "/completion", {"prompt": tokens, "n_predict": 8, "temperature": 0})
    assert chat["choices"][0]["message"]["content"] == plain["content"]
    assert chat["usage"]["prompt_tokens"] == len(tokens)


def test_continue_final_message_vllm_compat(llama31):
    srv, _ = llama31
    messages = [*BOOK, {"role": "assistant", "content": "Whill"}]
    explicit = prompt_of(srv, messages, add_generation_prompt=False, continue_final_message=True)
    assert explicit.endswith(BOOK_TAIL + "Whill") and explicit == prompt_of(srv, messages)


@pytest.mark.parametrize("body,word", [
    ({"add_generation_prompt": True, "continue_final_message": True,
      "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     "Cannot set both"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                   {"role": "assistant", "content": "there"}]}, "2 or more assistant messages"),
    ({"messages": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "", "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "tool calls"),
])
def test_refusals(llama31, body, word):
    srv, _ = llama31
    for path in ("/v1/chat/completions", "/apply-template"):
        assert word in post(srv, path, {**body, "max_tokens": 2}, 400)["error"]["message"]
    post(srv, "/v1/chat/completions", {"messages": BOOK, "max_tokens": 1})  # still serving


def test_generation_prompt_switched_off(llama31):
    srv, _ = llama31
    assert prompt_of(srv, BOOK, add_generation_prompt=False).endswith("What is the best book<|eot_id|>")
    assert prompt_of(srv, BOOK).endswith(BOOK_TAIL)


def test_no_prefill_assistant(smollm2_path):
    """--no-prefill-assistant: the assistant message is a finished turn and a new one starts."""
    model, engine, srv = serve(smollm2_path, LLAMA31, prefill_assistant=False)
    with engine, srv:
        messages = [*BOOK, {"role": "assistant", "content": "Whill"}]
        assert prompt_of(srv, messages).endswith(
            BOOK_TAIL + "Whill<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    model.close()


THINK = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
    "{# the answer closes its reasoning with </think> #}"
)
ASK = [{"role": "user", "content": "What is 2 + 2?"}]
ASK_TEXT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"


@pytest.fixture(scope="module")
def thinking(smollm2_path):
    model, engine, srv = serve(smollm2_path, THINK)
    with engine, srv:
        yield srv, model
    model.close()


def test_thinking_template_continuation(thinking):
    """llama.cpp's construction: the generation prompt cut before its <think>, then <think>, the
    reasoning, and for a continued content </think> and the content."""
    srv, model = thinking
    content_msg = [*ASK, {"role": "assistant", "reasoning_content": "I'm thinking", "content": "Hello, "}]
    assert prompt_of(srv, content_msg) == \
        ASK_TEXT + "<|im_start|>assistant\n<think>I'm thinking</think>Hello, "
    reasoning_msg = [*ASK, {"role": "assistant", "reasoning_content": "I'm", "content": ""}]
    assert prompt_of(srv, reasoning_msg) == ASK_TEXT + "<|im_start|>assistant\n<think>I'm"
    forced = [*ASK, {"role": "assistant", "reasoning_content": "I'm", "content": ""}]
    assert prompt_of(srv, forced, add_generation_prompt=False, continue_final_message="content") == \
        ASK_TEXT + "<|im_start|>assistant\n<think>I'm</think>"
    # a continued reasoning block: the answer's text goes on as reasoning until </think>
    answer = post(srv, "/v1/chat/completions", {"messages": reasoning_msg, "max_tokens": 12, "temperature": 0,
                                                "logprobs": True})
    text = b"".join(bytes(e["bytes"]) for e in answer["choices"][0]["logprobs"]["content"]).decode()
    msg = answer["choices"][0]["message"]
    if "</think>" in text:
        before, after = text.split("</think>", 1)
        assert msg["reasoning_content"] == before.strip() and msg["content"] == after.lstrip()
    else:
        assert msg["reasoning_content"] == text.strip() and not msg.get("content")


def test_harmony_continuation(smollm2_path):
    """gpt-oss: an analysis message with the reasoning, then (continuing content) a final one."""
    model, engine, srv = serve(smollm2_path, (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text())
    with engine, srv:
        head = prompt_of(srv, ASK, add_generation_prompt=False)
        msg = [*ASK, {"role": "assistant", "reasoning_content": "Think.", "content": "Four"}]
        assert prompt_of(srv, msg) == head + (
            "<|start|>assistant<|channel|>analysis<|message|>Think.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Four")
        msg = [*ASK, {"role": "assistant", "reasoning_content": "Think", "content": ""}]
        assert prompt_of(srv, msg) == head + "<|start|>assistant<|channel|>analysis<|message|>Think"
        answer = post(srv, "/v1/chat/completions", {"messages": msg, "max_tokens": 6, "temperature": 0,
                                                    "logprobs": True})
        text = b"".join(bytes(e["bytes"]) for e in answer["choices"][0]["logprobs"]["content"]).decode()
        if "<|end|>" not in text:  # still inside the analysis message: all of it is reasoning
            assert answer["choices"][0]["message"]["reasoning_content"] == text
    model.close()
