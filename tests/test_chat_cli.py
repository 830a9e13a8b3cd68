"""``splitllm chat``: the conversation stays in the KV cache, so a second turn evaluates only the
new tokens (counted by the engine's own ``n_eval``); Ctrl-C stops an answer without leaving;
/reset and /exit work, in-process and in a real terminal (pexpect)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pexpect
import pytest
import splitllm
from splitllm.chat_cli import ChatSession, repl
from splitllm.model import Model

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=512, n_threads=2) as m:
        yield m


def test_second_turn_evaluates_only_the_new_tokens(model):
    model.reset()
    session = ChatSession(model, system=SYSTEM, max_tokens=6, sampling={"temperature": 0})
    shown: list[str] = []
    first = session.turn("Name a colour.", shown.append)
    p1 = model.apply_chat_template(session.messages[:2])
    assert first.prompt_tokens == len(p1)
    assert first.evaluated >= len(p1)  # a fresh model evaluates the whole first prompt
    assert session.messages[-1] == {"role": "assistant", "content": "".join(shown)}

    session.max_tokens = 1  # one sampled token, never evaluated: the count is the prompt's alone
    second = session.turn("And another one?", lambda s: None)
    p2 = model.apply_chat_template(session.messages[:-1])
    assert p2[: len(p1)] == p1
    assert second.prompt_tokens == len(p2)
    # The first prompt and the answer's tokens (all but the last, which was sampled and never fed
    # back when the answer ended on max_tokens) are reused; only the rest is evaluated.
    answer_fed = first.completion_tokens - 1 if first.completion_tokens == 6 else first.completion_tokens
    new = len(p2) - len(p1) - answer_fed
    assert new < len(p2) - len(p1)
    assert second.evaluated == new

    # The cached continuation answers as a fresh evaluation of the whole conversation does.
    model.reset()
    fresh = model.create_chat_completion(session.messages[:-1], max_tokens=1, temperature=0)
    assert session.messages[-1]["content"] == fresh["choices"][0]["message"]["content"]


def test_ctrl_c_stops_the_answer_and_keeps_the_session(model):
    session = ChatSession(model, system=SYSTEM, max_tokens=8, sampling={"temperature": 0})
    shown: list[str] = []

    def write(s: str) -> None:
        shown.append(s)
        if len(shown) == 2:
            raise KeyboardInterrupt

    stats = session.turn("Tell me a story.", write)
    assert stats.interrupted
    assert session.messages[-1] == {"role": "assistant", "content": "".join(shown)}
    after = session.turn("Thanks!", lambda s: None)
    assert not after.interrupted and after.completion_tokens > 0
    assert len(session.messages) == 5


def test_repl_commands(model):
    session = ChatSession(model, system=SYSTEM, max_tokens=3, sampling={"temperature": 0})
    lines = iter(["Hello!", "", "/bogus", "/reset", "Hi again", "/exit", "never read"])
    out = io.StringIO()
    assert repl(session, read=lambda prompt: next(lines), out=out) == 0
    assert next(lines) == "never read"
    text = out.getvalue()
    assert "(new conversation)" in text and "unknown command /bogus" in text
    # /reset dropped the first exchange: the system prompt, then only the second one
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[1]["content"] == "Hi again"


def test_repl_ends_on_end_of_input(model):
    session = ChatSession(model, max_tokens=2, sampling={"temperature": 0})

    def read(prompt: str) -> str:
        raise EOFError

    assert repl(session, read=read, out=io.StringIO()) == 0


def test_chat_command_in_a_terminal(smollm2_path):
    """The real command in a pseudo-terminal: a turn, Ctrl-C during a long answer, then /exit."""
    # The child imports the splitllm this process imported (the installed one in CI, the source
    # tree with an in-place build in development).
    src = Path(splitllm.__file__).resolve().parents[1]
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    args = ["-m", "splitllm.cli", "chat", str(smollm2_path), "-c", "512", "-t", "2", "--temp", "0",
            "-n", "400",
            "--system", SYSTEM]
    child = pexpect.spawn(sys.executable, args, env={**os.environ, "PYTHONPATH": path}, encoding="utf-8",
                          timeout=300)
    try:
        child.expect_exact("> ")
        child.sendline("Write a very long story about a dragon.")
        child.expect_exact("dragon.\r\n")  # the terminal's echo of the line
        child.expect(r"\w+ \w+ \w+")  # the answer is streaming
        child.sendintr()
        child.expect_exact("(stopped)")
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_template_kwargs_option(smollm2_path):
    from splitllm.cli import build_parser
    from test_model_api import THINKING_TEMPLATE

    option = ["--chat-template-kwargs", '{"enable_thinking": false}']
    args = build_parser().parse_args(["chat", str(smollm2_path), *option])
    assert args.chat_template_kwargs == {"enable_thinking": False}
    for bad in ("[1]", "{nope"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["chat", str(smollm2_path), "--chat-template-kwargs", bad])
    with Model(smollm2_path, n_ctx=256, n_threads=2, chat_template=THINKING_TEMPLATE) as m:
        session = ChatSession(m, max_tokens=1, template_kwargs=args.chat_template_kwargs)
        session.messages.append({"role": "user", "content": "Hi!"})
        tokens, _, _ = session._prompt()
        assert m.detokenize(tokens, special=True).endswith(b"<think>\n\n</think>\n\n")
