"""The thinking budget (splitllm.reasoning_budget; llama-server's --reasoning-budget and a request's
reasoning_budget_tokens).

The state machine against llama.cpp's own unit test of its reasoning-budget sampler
(tests/test-reasoning-budget.cpp of llama.cpp as vendored in llama-cpp-python 0.3.36: each
case's token sequence, budget, start state and the positions where it expects the forcing to
start and end, as written there; its UTF-8 boundary cases). On the server, SmolLM2 under a
ChatML template that opens a ``<think>`` block: the answer's tokens (from its log-probabilities)
run free for the budget, then are exactly the tokens of the message and ``</think>`` (from the
tokenizer, which tests/test_tokenizer.py holds to llama.cpp's); a budget never reached changes no
token.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.reasoning_budget import BudgetState, ReasoningBudget, utf8_is_complete
from splitllm.server import BackgroundServer

NEVER = None


def forcing_span(seq, starts, ends, forced, budget, state) -> tuple[int | None, int | None]:
    """test-reasoning-budget.cpp's test_reasoning_budget: feeds ``seq``, recording at each step
    (before accepting the token) whether the logits are forced to one token; the first and last
    forced steps of the first forced run."""
    rb = ReasoningBudget(starts, ends, forced, budget, state=state)
    n_vocab = max([*seq, *(t for s in starts for t in s), *(t for s in ends for t in s), *forced]) + 1
    first = last = None
    for i, tok in enumerate(seq):
        logits = np.log(np.arange(1, n_vocab + 1, dtype=np.float32))
        out = rb.apply(logits)
        rb.accept(tok)
        if np.isfinite(out).sum() == 1:
            first = i if first is None else first
            last = i
        elif first is not None:
            break
    return first, last


IDLE, COUNTING, FORCING, DONE = BudgetState.IDLE, BudgetState.COUNTING, BudgetState.FORCING, BudgetState.DONE


@pytest.mark.parametrize("seq,starts,ends,forced,budget,state,start,end", [
    # 1. natural end before the budget is spent
    ([100, 50, 51, 101, 52], [[100]], [[101]], [102], 5, IDLE, NEVER, NEVER),
    # 2. budget spent: forcing from i=3 through i=4
    ([100, 50, 51, 52, 53], [[100]], [[101]], [102, 101], 2, IDLE, 3, 4),
    # 3. counting from the start with budget 0: forcing at once
    ([100, 50, 51, 52], [[100]], [[101]], [102, 101], 0, COUNTING, 0, 1),
    # 4. no start / end sequences: never
    ([50, 51, 52, 53], [[]], [[]], [102], 2, IDLE, NEVER, NEVER),
    # 5. counting from the start with a budget
    ([50, 51, 52, 53], [[100]], [[101]], [102, 101], 2, COUNTING, 2, 3),
    # 6. a second block re-arms the budget after a natural end
    ([100, 50, 101, 100, 60, 61, 62, 63], [[100]], [[101]], [102, 101], 2, IDLE, 6, 7),
    # 7. several start sequences: the second activates
    ([110, 111, 50, 51, 52, 53], [[100], [110, 111]], [[101]], [102, 101], 2, IDLE, 4, 5),
    # 8. several end sequences: a natural end through the second
    ([100, 50, 103, 104, 52], [[100]], [[101], [103, 104]], [102, 101], 5, IDLE, NEVER, NEVER),
], ids=["natural-end", "exhausted", "budget0", "unconfigured", "counting", "multi-block", "starts", "ends"])
def test_llama_cpp_cases(seq, starts, ends, forced, budget, state, start, end):
    first, last = forcing_span(seq, starts, ends, forced, budget, state)
    assert first == start
    if end is not None:
        assert last >= end


def forced_token(rb: ReasoningBudget) -> int:
    out = rb.apply(np.log(np.arange(1, 200, dtype=np.float32)))
    assert np.isfinite(out).sum() == 1
    return int(np.flatnonzero(np.isfinite(out))[0])


def test_clone_mid_counting_and_forcing():
    rb = ReasoningBudget([[100]], [[101]], [102, 101], 2)
    rb.accept(100)
    rb.accept(50)
    clone = rb.clone()
    clone.accept(51)
    assert forced_token(clone) == 102
    assert rb.forced_token() is None  # (the original is still counting)
    rb = ReasoningBudget([[100]], [[101]], [102, 101], 0, state=FORCING)
    assert forced_token(rb) == 102
    rb.accept(102)
    assert forced_token(rb.clone()) == 101


def test_manual_force():
    rb = ReasoningBudget([[100]], [[101]], [102, 101], 5)
    assert not rb.force() and rb.state == IDLE
    rb.accept(100)
    rb.accept(50)
    assert rb.state == COUNTING and rb.force() and rb.state == FORCING
    assert forced_token(rb) == 102
    rb.accept(102)
    assert forced_token(rb) == 101
    rb.accept(101)
    assert rb.state == DONE and not rb.force() and rb.state == DONE
    rb = ReasoningBudget([[100]], [[101]], [102, 101], 0, state=FORCING)
    rb.accept(102)
    assert not rb.force() and forced_token(rb) == 101  # (no rewind)


def test_end_match():
    rb = ReasoningBudget([[100]], [[101], [103, 104]], [102, 101], 5)
    assert rb.end_match is None
    for t in (100, 50, 103, 104):
        rb.accept(t)
    assert rb.end_match == (103, 104) and rb.state == DONE
    rb.accept(100)
    assert rb.end_match is None and rb.state == COUNTING
    rb = ReasoningBudget([[100]], [[104], [103, 104]], [102, 104], 5)
    for t in (100, 103, 104):
        rb.accept(t)
    assert rb.end_match == (103, 104)  # the longest ending there
    rb = ReasoningBudget([[100]], [[101]], [102, 101], 1)
    for t in (100, 50, 102, 101):  # forced to the end
        rb.accept(t)
    assert rb.state == DONE and rb.end_match == (101,)


def test_waits_for_a_whole_character():
    pieces = {50: b"a", 51: b"\xe2\x80", 52: b"\x9c", 53: b"b"}
    rb = ReasoningBudget([[100]], [[101]], [102, 101], 2, piece=lambda t: pieces.get(t, b""))
    for t in (100, 50, 51):  # the budget runs out inside a character
        rb.accept(t)
    assert rb.state == BudgetState.WAITING_UTF8 and rb.forced_token() is None
    rb.accept(52)  # (each token's own bytes are checked, as llama.cpp does: a lone continuation byte)
    assert rb.state == BudgetState.WAITING_UTF8
    rb.accept(53)
    assert forced_token(rb) == 102


def test_utf8_boundaries():
    for b in (b"hello", b"", b"\xc2\xa0", b"\xe2\x80\x9c", b"\xf0\x9f\x98\x80", b"abc\xc3\xa9",
              b"hello\xc3\xa9"):
        assert utf8_is_complete(b), b
    for b in (b"\xc2", b"\xe2\x80", b"\xe2", b"\xf0\x9f\x98", b"\xf0\x9f", b"\xf0", b"\x80", b"hello\xc3"):
        assert not utf8_is_complete(b), b


def test_bad_budget():
    with pytest.raises(ValueError, match="budget"):
        ReasoningBudget([[1]], [[2]], [2], -1)


# ---- on the server ----

THINK_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
    "{# a model that closes its thinking with </think> #}"
)
ASK = [{"role": "user", "content": "What is 2 + 2? Think it through."}]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    model = Model(str(smollm2_path), n_ctx=1024, n_seq_max=2, n_threads=2, chat_template=THINK_TEMPLATE)
    with BatchEngine(model) as eng:
        yield eng
    model.close()


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(create_app(engine, reasoning_budget=-1, reasoning_budget_message="")) as srv:
        yield srv


def answer_tokens(srv: Any, body: dict[str, Any]) -> tuple[list[bytes], Any]:
    body = {"messages": ASK, "temperature": 0, "max_tokens": 40, "logprobs": True, **body}
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    return [bytes(e["bytes"]) for e in out["choices"][0]["logprobs"]["content"]], out


def pieces_of(engine: BatchEngine, text: str) -> list[bytes]:
    tok = engine.model.tokenizer
    ids = tok.tokenize(text.encode(), add_bos=False, special=True)
    return [tok.token_to_piece(t, special=True) for t in ids]


@pytest.mark.parametrize("budget,message", [(6, ""), (12, " Time is up."), (1, "")])
def test_budget_forces_the_end(server, engine, budget, message):
    """The prompt's newline after <think> counts: budget - 1 free tokens, then the message and
    </think>, token for token, then the answer."""
    free, _ = answer_tokens(server, {})
    assert b"</think>" not in b"".join(free[:budget + 8])  # (left alone, SmolLM2 thinks on)
    got, out = answer_tokens(server, {"reasoning_budget_tokens": budget, "reasoning_budget_message": message})
    n_free = budget - 1
    assert got[:n_free] == free[:n_free]
    forced = pieces_of(engine, message + "</think>")
    assert got[n_free:n_free + len(forced)] == forced
    msg = out["choices"][0]["message"]
    thought = b"".join(got[:n_free] + pieces_of(engine, message)).decode().strip()
    assert msg.get("reasoning_content", "") == thought


def test_server_default_and_request_override(engine):
    with BackgroundServer(create_app(engine, reasoning_budget=4, reasoning_budget_message=" Enough.")) as srv:
        got, _ = answer_tokens(srv, {})
        assert got[3:3 + len(pieces_of(engine, " Enough.</think>"))] == pieces_of(engine, " Enough.</think>")
        free, _ = answer_tokens(srv, {"reasoning_budget_tokens": -1, "thinking_budget_tokens": 9})
        assert free[8:8 + len(pieces_of(engine, " Enough.</think>"))] == pieces_of(engine, " Enough.</think>")


def test_budget_not_reached_changes_nothing(server):
    """A budget the block never reaches leaves every token as without one."""
    got, out = answer_tokens(server, {})
    again, _ = answer_tokens(server, {"reasoning_budget_tokens": 1000})
    assert got == again and len(got) > 8
    assert out["choices"][0]["message"]["reasoning_content"]


def test_budget_zero_ends_at_once(server, engine):
    got, out = answer_tokens(server, {"reasoning_budget_tokens": 0})
    forced = pieces_of(engine, "</think>")
    assert got[:len(forced)] == forced
    assert out["choices"][0]["message"].get("reasoning_content", "") == ""


def test_anthropic_thinking_budget(server, engine):
    body = {"model": "x", "max_tokens": 30, "temperature": 0, "messages": ASK,
            "thinking": {"type": "enabled", "budget_tokens": 5}}
    r = httpx.post(f"{server.url}/v1/messages", json=body, timeout=300)
    assert r.status_code == 200, r.text
    blocks = r.json()["content"]
    thinking = next(b["thinking"] for b in blocks if b["type"] == "thinking")
    free, _ = answer_tokens(server, {"reasoning_budget_tokens": 5})
    n = len(pieces_of(engine, "</think>"))
    assert thinking == b"".join(free[:4]).decode().strip() and b"".join(free[4:4 + n]) == b"</think>"


def test_bad_budget_requests(server):
    for bad in (-2, "ten", 1.5):
        r = httpx.post(f"{server.url}/v1/chat/completions",
                       json={"messages": ASK, "max_tokens": 2, "reasoning_budget_tokens": bad}, timeout=60)
        assert r.status_code == 400 and "reasoning_budget_tokens" in r.text
    assert math.isfinite(httpx.get(f"{server.url}/health").json()["slots_idle"])


def test_cli_rejects_a_bad_budget():
    from splitllm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "m.gguf", "--reasoning-budget", "-3"])
    args = build_parser().parse_args(["serve", "m.gguf", "--reasoning-budget", "7",
                                      "--reasoning-budget-message", "x"])
    assert (args.reasoning_budget, args.reasoning_budget_message) == (7, "x")
