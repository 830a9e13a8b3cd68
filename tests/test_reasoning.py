"""A thinking block split from the answer (llama-server's --reasoning-format deepseek): the
splitter on its own (every cut of a text gives the same result), then through Model and the
server with the model's output pinned by a grammar."""

from __future__ import annotations

import itertools

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.reasoning import ReasoningSplitter
from splitllm.server import BackgroundServer

CASES = [
    # (text, prompt opened the block, reasoning, content)
    ("<think>\nI should greet.\n</think>\n\nHello!", False, "I should greet.", "Hello!"),
    ("  <think>a</think>b", False, "a", "b"),
    ("Hello <think>x</think>", False, "", "Hello <think>x</think>"),  # not at the start: content
    ("<thinking>x</thinking>", False, "", "<thinking>x</thinking>"),
    ("<think>\n\n</think>\n\nHi", False, "", "Hi"),  # an empty block (Qwen3 with thinking off)
    ("<think>cut short by max_tok", False, "cut short by max_tok", ""),  # never closed
    ("<thi", False, "", "<thi"),
    ("Plan: a, b.\n</think>\nDone.", True, "Plan: a, b.", "Done."),  # the prompt opened the block
    ("still thinking  ", True, "still thinking", ""),
    ("", False, "", ""),
]


def split(text: str, inside: bool, cuts: tuple[int, ...]) -> tuple[str, str]:
    s = ReasoningSplitter(inside=inside)
    pieces = [text[a:b] for a, b in itertools.pairwise((0, *cuts, len(text)))]
    out = [s.push(p) for p in pieces] + [s.finish()]
    return "".join(r for r, _ in out), "".join(c for _, c in out)


@pytest.mark.parametrize(("text", "inside", "reasoning", "content"), CASES)
def test_every_cut_gives_the_same_split(text, inside, reasoning, content):
    assert split(text, inside, ()) == (reasoning, content)
    for i in range(1, len(text)):  # two pieces, and one character at a time
        assert split(text, inside, (i,)) == (reasoning, content), i
    assert split(text, inside, tuple(range(1, len(text)))) == (reasoning, content)


ANSWER = "<think>\nThe user greets me.\n</think>\n\nHello there!"
PINNED = 'root ::= "' + ANSWER.replace("\n", "\\n") + '"'
# DeepSeek-R1's habit: the template opens the block at the end of the prompt.
OPENING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
MESSAGES = [{"role": "user", "content": "Hi!"}]


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=256, n_threads=2) as m:
        yield m


def test_model_splits_reasoning(model):
    kw = dict(max_tokens=40, temperature=0, grammar=PINNED)
    whole = model.create_chat_completion(MESSAGES, reasoning_format="deepseek", **kw)
    ChatCompletion.model_validate(whole)
    msg = whole["choices"][0]["message"]
    assert (msg["reasoning_content"], msg["content"]) == ("The user greets me.", "Hello there!")
    chunks = list(model.create_chat_completion(MESSAGES, reasoning_format="deepseek", stream=True, **kw))
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets me."
    assert "".join(d.get("content", "") for d in deltas) == "Hello there!"
    raw = model.create_chat_completion(MESSAGES, **kw)["choices"][0]["message"]  # "none", the default
    assert raw["content"] == ANSWER and "reasoning_content" not in raw
    with pytest.raises(ValueError, match="reasoning_format must be one of"):
        model.create_chat_completion(MESSAGES, reasoning_format="auto", **kw)


def test_prompt_that_opens_the_block(smollm2_path):
    with Model(smollm2_path, n_ctx=256, n_threads=2, chat_template=OPENING_TEMPLATE) as m:
        assert m.opens_thinking(m.apply_chat_template(MESSAGES))
        out = m.create_chat_completion(MESSAGES, max_tokens=20, temperature=0, reasoning_format="deepseek",
                                       grammar='root ::= "Plan.\\n</think>\\n\\nDone."')
        msg = out["choices"][0]["message"]
        assert (msg["reasoning_content"], msg["content"]) == ("Plan.", "Done.")


def test_server_splits_by_default(smollm2_path):
    with Model(smollm2_path, n_ctx=256, n_seq_max=2, n_threads=2) as model:
        eng = BatchEngine(model)
        try:
            with BackgroundServer(create_app(eng, model_alias="m")) as srv:
                client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=600)
                body = dict(model="m", messages=MESSAGES, max_tokens=40, temperature=0,
                            extra_body={"grammar": PINNED})
                msg = client.chat.completions.create(**body).choices[0].message
                assert (msg.reasoning_content, msg.content) == ("The user greets me.", "Hello there!")
                chunks = list(client.chat.completions.create(stream=True, **body))
                deltas = [c.choices[0].delta for c in chunks if c.choices]
                thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
                assert thought == "The user greets me."
                assert "".join(d.content or "" for d in deltas) == "Hello there!"
                raw = client.chat.completions.create(**{**body, "extra_body": {"grammar": PINNED,
                                                                              "reasoning_format": "none"}})
                assert raw.choices[0].message.content == ANSWER
                r = httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": MESSAGES,
                                                                        "reasoning_format": "auto"})
                assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_format"
        finally:
            eng.close()
