"""``splitllm chat MODEL``: an interactive multi-turn chat in the terminal.

Each turn renders the whole conversation with the model's chat template; ``Model.eval_prompt``
keeps the longest cached prefix, so only the new turn is evaluated (the history stays in the KV
cache). The answer is streamed as it is generated. ``/reset`` starts over (keeping the system
prompt), ``/exit`` (or Ctrl-D) leaves, Ctrl-C stops the current answer and returns to the prompt.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from splitllm.cli import (
    add_draft_option,
    add_grammar_options,
    add_model_options,
    add_sampling_options,
    grammar_of,
    json_object,
    load_model,
    sampling_kwargs,
)
from splitllm.harmony import split_harmony

HELP = "commands: /reset (new conversation), /exit (or Ctrl-D); Ctrl-C stops an answer"


@dataclass(frozen=True, slots=True)
class TurnStats:
    """What one turn cost."""

    prompt_tokens: int      # the whole rendered conversation
    evaluated: int          # tokens the model evaluated this turn (new prompt tokens + generated)
    completion_tokens: int  # tokens of the answer
    seconds: float
    interrupted: bool       # stopped by Ctrl-C
    dropped_turns: int      # oldest turns left out because the context was full


class ChatSession:
    """A conversation with a model, kept in its KV cache between turns."""

    def __init__(self, model: Any, *, system: str | None = None, max_tokens: int | None = None,
                 sampling: dict[str, Any] | None = None,
                 template_kwargs: dict[str, Any] | None = None) -> None:
        self.model = model
        self.system = system
        self.template_kwargs = template_kwargs
        self.max_tokens = max_tokens
        self.sampling = dict(sampling or {})
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Starts a new conversation (the system prompt stays, and so does its cache)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt(self) -> tuple[list[int], list[str], int]:
        """The conversation's tokens and stop strings; drops the oldest turns while it does not fit."""
        first = 1 if self.system else 0
        dropped = 0
        while True:
            tokens, stops = self.model.chat_prompt(self.messages, chat_template_kwargs=self.template_kwargs)
            if len(tokens) < self.model._seq_ctx or len(self.messages) - first <= 1:
                return tokens, stops, dropped
            del self.messages[first: first + 2]  # one user message and its answer
            dropped += 1

    def turn(self, text: str, write: Callable[[str], Any]) -> TurnStats:
        """Adds a user message, streams the answer through ``write`` and keeps it in the history.

        A KeyboardInterrupt (Ctrl-C) while answering stops the answer; what was shown so far is
        kept as the assistant's message."""
        self.messages.append({"role": "user", "content": text})
        try:
            tokens, stops, dropped = self._prompt()
            start, n0 = time.perf_counter(), self.model.n_eval
            chunks = self.model.stream(tokens, max_tokens=self.max_tokens, stop=stops, **self.sampling)
        except (ValueError, KeyboardInterrupt):
            self.messages.pop()
            raise
        parts: list[str] = []
        n_done = 0
        interrupted = False
        shown = split_harmony(chunks) if self.model.chat_template().harmony else chunks  # the final answer
        try:
            for c in shown:
                n_done = c.completion_tokens
                if c.text:
                    parts.append(c.text)
                    write(c.text)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            chunks.close()
        self.messages.append({"role": "assistant", "content": "".join(parts)})
        return TurnStats(len(tokens), self.model.n_eval - n0, n_done, time.perf_counter() - start,
                         interrupted, dropped)


def repl(session: ChatSession, *, read: Callable[[str], str] = input, out: TextIO = sys.stdout,
         show_stats: bool = False) -> int:
    """The interactive loop: reads lines with ``read(prompt)`` until /exit or end of input."""

    def write(s: str) -> None:
        out.write(s)
        out.flush()

    write(f"{HELP}\n")
    while True:
        try:
            line = read("> ")
        except EOFError:
            write("\n")
            return 0
        except KeyboardInterrupt:
            write(f"\n{HELP}\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            write("(new conversation)\n")
            continue
        if text.startswith("/") and " " not in text:
            write(f"unknown command {text}; {HELP}\n")
            continue
        try:
            stats = session.turn(text, write)
        except ValueError as e:
            write(f"error: {e}\n")
            continue
        except KeyboardInterrupt:
            write("\n(stopped)\n")
            continue
        write("\n" + ("(stopped)\n" if stats.interrupted else ""))
        if stats.dropped_turns:
            write(f"(context full: the oldest {stats.dropped_turns} turn(s) were left out)\n")
        if show_stats:
            rate = stats.completion_tokens / stats.seconds if stats.seconds > 0 else 0.0
            write(f"[{stats.prompt_tokens} prompt tokens, {stats.evaluated} evaluated, "
                  f"{stats.completion_tokens} generated, {rate:.1f} tok/s]\n")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat in the terminal",
                       description=f"Chat with a model; the conversation stays in the KV cache. {HELP}.")
    p.add_argument("model", help="GGUF model file")
    p.add_argument("-s", "--system", default=None, help="system prompt")
    p.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="most tokens per answer (default -1: until the context is full)")
    p.add_argument("--stats", action="store_true", help="print token counts and speed after each answer")
    p.add_argument("--chat-template-kwargs", type=json_object, default=None, metavar="JSON",
                   help='chat template variables, e.g. \'{"enable_thinking": false}\' for Qwen3')
    add_model_options(p)
    add_draft_option(p)
    add_grammar_options(p)
    add_sampling_options(p, temperature=0.2)
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    with load_model(args) as model:
        limit = args.n_predict if args.n_predict > 0 else None
        sampling = sampling_kwargs(args)
        grammar = grammar_of(args)
        if grammar is not None:
            sampling["grammar"] = grammar
        session = ChatSession(model, system=args.system, max_tokens=limit, sampling=sampling,
                              template_kwargs=args.chat_template_kwargs)
        return repl(session, show_stats=args.stats)
