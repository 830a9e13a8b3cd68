"""llama-cpp-python's named chat formats (``Llama(chat_format="chatml")`` and the others registered
in its ``llama_chat_format.py``): each turns a message list into the prompt text and stop strings
that llama-cpp-python's formatter of that name builds, quirks included (they are what users of
those names get today), so that ``Model(chat_format=...)`` prompts the model identically.

A format is data: how the system text is made, a label per role, separators and a layout
(:data:`LAYOUTS`). Messages whose role has no label are left out, and a message whose content is
not a string (a list of parts) counts as empty, as llama-cpp-python maps them. The prompt is
tokenized with the vocabulary's BOS rule (``add_bos=True``) and control tokens parsed, as
llama-cpp-python's chat handlers tokenize it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, Any]
Turns = list[tuple[str, str | None]]  # (role label, content or None)


def system_text(messages: Sequence[Message]) -> Any:
    """The first system message's content ("" when there is none or it is empty)."""
    for m in messages:
        if m["role"] == "system":
            return m["content"] or ""
    return ""


def turns(messages: Sequence[Message], labels: Mapping[str, str]) -> Turns:
    """The messages whose role has a label, as (label, text); non-string content is None."""
    return [(labels[m["role"]], m["content"] if isinstance(m["content"], str) else None)
            for m in messages if m["role"] in labels]


# Layouts: (system text, turns, separators) -> prompt. A turn without text is the opening of the
# turn the model writes.
def _llama2(system: str, ts: Turns, seps: tuple[str, ...]) -> str:
    out = system + seps[0]
    for i, (label, text) in enumerate(ts):
        if system and i == 0:  # the system block already opened the first user turn
            out += (text or "") + seps[i % 2]
        elif text:
            out += f"{label}{text} {seps[i % 2]}"
        else:
            out += label + " "
    return out


def _colon(head: str, gap: str, opening: str) -> Callable[[str, Turns, tuple[str, ...]], str]:
    """``label: text`` turns after the system text, separators alternating over ``seps``; an open
    turn is ``label`` + ``opening``; ``head``: "sep" puts the first separator after the system text."""

    def layout(system: str, ts: Turns, seps: tuple[str, ...]) -> str:
        out = system + (seps[0] if head == "sep" else "")
        for i, (label, text) in enumerate(ts):
            out += f"{label}{gap}{text}{seps[i % len(seps)]}" if text else label + opening
        return out

    return layout


def _chatml(system: str, ts: Turns, seps: tuple[str, ...]) -> str:
    out = system + seps[0] + "\n" if system else ""
    for label, text in ts:
        out += f"{label}\n{text}{seps[0]}\n" if text else label + "\n"
    return out


def _chatglm3(system: str, ts: Turns, seps: tuple[str, ...]) -> str:
    return system + "".join(f"{label}\n {text}" if text else label for label, text in ts)


LAYOUTS: dict[str, Callable[[str, Turns, tuple[str, ...]], str]] = {
    "llama-2": _llama2,
    "colon": _colon("sep", ": ", ":"),  # llama-cpp-python's add-colon-single / add-colon-two
    "colon-space": _colon("sep", ": ", ": "),
    "plain": _colon("none", "", ""),  # no-colon-single
    "chatml": _chatml,
    "chatglm3": _chatglm3,
}


@dataclass(frozen=True)
class ChatFormat:
    """One named format. ``system``: the system text, a template over the first system message
    (``{system}``) or a fixed text (``fixed=True``); ``default``: the system message when there is
    none; ``labels``: role -> label; ``open``: the label of the model's turn, appended open (None:
    no open turn); ``tail``: appended to the prompt; ``stop``: the stop strings."""

    layout: str
    labels: Mapping[str, str]
    seps: tuple[str, ...]
    system: str = "{system}"
    fixed: bool = False
    default: str = ""
    only_if_given: bool = False  # the system template only when a system message exists
    open: str | None = None
    tail: str = ""
    stop: tuple[str, ...] = ()

    def prompt(self, messages: Sequence[Message]) -> str:
        given = system_text(messages)
        if self.fixed:
            system = self.system
        elif self.only_if_given and not given:
            system = ""
        else:
            system = self.system.format(system=given or self.default)
        ts = turns(messages, self.labels)
        if self.open is not None:
            ts.append((self.open, None))
        return LAYOUTS[self.layout](system, ts, self.seps) + self.tail


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                 "assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
OPENBUDDY_SYSTEM = (
    "You are a helpful, respectful and honest INTP-T AI Assistant named Buddy. You are talking to a "
    "human User.\n"
    "Always answer as helpfully and logically as possible, while being safe. Your answers should not "
    "include any "
    "harmful, political, religious, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure "
    "that your responses are socially unbiased and positive in nature.\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false "
    "information.\n"
    "You can speak fluently in many languages, for example: English, Chinese.\n"
    "You cannot access the internet, but you have vast knowledge, cutoff: 2021-09.\n"
    "You are trained by OpenBuddy team, (https://openbuddy.ai, "
    "https://github.com/OpenBuddy/OpenBuddy), you are "
    "based on LLaMA and Falcon transformers model, not related to GPT or OpenAI.\n\n")
SNOOZY_SYSTEM = ("The prompt below is a question to answer, a task to complete, or a conversation to "
                 "respond to; "
                 "decide which and write an appropriate response.")
OPEN_ORCA_SYSTEM = (
    "You are a helpful assistant. Please answer truthfully and write out your thinking step by step "
    "to be sure "
    "you get the right answer. If you make a mistake or encounter an error in your thinking, say so "
    "out loud and "
    "attempt to correct it. If you don't know or aren't sure about something, say so clearly. You "
    "will act as a "
    "professional logician, mathematician, and physicist. You will also act as the most appropriate type of "
    "expert to answer any particular question or solve the relevant problem; state which expert type "
    "your are, "
    "if so. Also think of any particular named expert that would be ideal to answer the relevant question or "
    "solve the relevant problem; name and act as them, if appropriate.")


def _ua(user: str, assistant: str) -> dict[str, str]:
    return {"user": user, "assistant": assistant}


FORMATS: dict[str, ChatFormat] = {
    "llama-2": ChatFormat(
        "llama-2", _ua("<s>[INST]", "[/INST]"), (" ", "</s>"), system="[INST] <<SYS>>\n{system}\n<</SYS>>",
        only_if_given=True, tail="[/INST]"),
    "llama-3": ChatFormat(
        "plain", {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ("system", "user", "assistant")},
        ("<|eot_id|>",), system="", fixed=True, open="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stop=("<|eot_id|>",)),
    "alpaca": ChatFormat("colon", _ua("### Instruction", "### Response"), ("\n\n", "</s>")),
    "qwen": ChatFormat(
        "chatml", _ua("<|im_start|>user", "<|im_start|>assistant"), ("<|im_end|>",),
        system="<|im_start|>system\n{system}", default="You are a helpful assistant.",
        open="<|im_start|>assistant", stop=("<|endoftext|>",)),
    "vicuna": ChatFormat(
        "colon", _ua("USER", "ASSISTANT"), (" ", "</s>"), system=VICUNA_SYSTEM, fixed=True, open="ASSISTANT"),
    "oasst_llama": ChatFormat(
        "plain", _ua("<|prompter|>", "<|assistant|>"), ("</s>",),
        system="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", open="<|assistant|>"),
    "baichuan-2": ChatFormat("plain", _ua("<reserved_106>", "<reserved_107>"), ("",), open="<reserved_107>"),
    "baichuan": ChatFormat("plain", _ua("<reserved_102>", "<reserved_103>"), ("",), open="<reserved_103>"),
    "openbuddy": ChatFormat(
        "colon", _ua("User", "Assistant"), ("\n",), system=OPENBUDDY_SYSTEM, fixed=True, open="Assistant"),
    "redpajama-incite": ChatFormat(
        "colon", _ua("<human>", "<bot>"), ("\n",), open="<bot>", stop=("<human>",)),
    "snoozy": ChatFormat(
        "colon", _ua("### Prompt", "### Response"), ("\n",), default=SNOOZY_SYSTEM, open="### Response",
        stop=("###",)),
    "phind": ChatFormat(
        "colon", _ua("### User Message", "### Assistant"), ("\n\n",),
        system="### System Prompt\nYou are an intelligent programming assistant.", fixed=True,
        open="### Assistant"),
    # (llama-cpp-python writes its system template unfilled)
    "intel": ChatFormat(
        "colon", _ua("### User:", "### Assistant:"), ("\n",), system="### System:\n{system_message}",
        fixed=True, open="### Assistant:"),
    # (llama-cpp-python maps only the roles "User" and "Assistant", capitalized)
    "open-orca": ChatFormat(
        "colon-space", {"User": "User", "Assistant": "Assistant"}, ("<|end_of_turn|>\n",),
        system=OPEN_ORCA_SYSTEM, fixed=True, open="Assistant", stop=("User",)),
    "mistrallite": ChatFormat(
        "plain", _ua("<|prompter|>", "</s>\n<|assistant|>"), (" ",), system="<|system|>{system}</s>",
        open="</s>\n<|assistant|>"),
    "zephyr": ChatFormat(
        "chatml", _ua("<|user|>\n", "<|assistant|>\n"), ("</s>",), system="<|system|>\n{system}",
        open="<|assistant|>\n", stop=("</s>",)),
    "pygmalion": ChatFormat(
        "chatml", _ua("<|user|>", "<|model|>"), ("\n",), system="<|system|>{system}", open="<|model|>",
        stop=("\n",)),
    "chatml": ChatFormat(
        "chatml", _ua("<|im_start|>user", "<|im_start|>assistant"), ("<|im_end|>",),
        system="<|im_start|>system\n{system}", open="<|im_start|>assistant", stop=("<|im_end|>",)),
    "chatglm3": ChatFormat(
        "chatglm3", _ua("<|user|>", "<|assistant|>"), ("</s>",), system="<|system|>\n{system}",
        open="<|assistant|>", stop=("</s>",)),
    "openchat": ChatFormat(
        "chatml", _ua("GPT4 Correct User: ", "<|end_of_turn|>GPT4 Correct Assistant: "), ("<|end_of_turn|>",),
        system="{system}<|end_of_turn|>", open="<|end_of_turn|>GPT4 Correct Assistant: ",
        stop=("<|end_of_turn|>",)),
    "gemma": ChatFormat(
        "plain", _ua("<start_of_turn>user\n", "<start_of_turn>model\n"), ("<end_of_turn>\n",), system="",
        fixed=True, open="<start_of_turn>model\n", stop=("<end_of_turn>\n",)),
}


def _mistral_instruct(messages: Sequence[Message]) -> str:
    out = ""
    for m in messages:
        if m["role"] == "user" and isinstance(m["content"], str):
            out += "[INST] " + m["content"]
        elif m["role"] == "assistant" and m["content"] is not None:
            out += f" [/INST]{m['content']}</s>"
    return out + " [/INST]"


def _saiga(messages: Sequence[Message]) -> str:
    out = "".join(f"<s>{label}\n{text}</s>" if text else f"<s>{label}\n"
                  for label, text in turns(messages, {"user": "user", "bot": "bot", "system": "system"}))
    return (out + "<s>bot").strip()


# Formats that are not a layout of turns: name -> (prompt builder, stop strings).
SPECIAL: dict[str, tuple[Callable[[Sequence[Message]], str], tuple[str, ...]]] = {
    "mistral-instruct": (_mistral_instruct, ("</s>",)),
    "saiga": (_saiga, ()),
}

# llama-cpp-python's other registered chat handlers: not prompt formats, so not offered here.
HANDLERS = ("functionary", "functionary-v1", "functionary-v2", "chatml-function-calling", "llava-1-5",
            "llava-1-6", "moondream2", "nanollava", "llama-3-vision-alpha", "minicpm-v-2.6", "qwen2.5-vl",
            "obsidian")


def format_names() -> list[str]:
    return sorted([*FORMATS, *SPECIAL])


def check_chat_format(name: str) -> None:
    """ValueError unless ``name`` is a format of :func:`chat_prompt` (or a GGUF template's name,
    ``chat_template.default`` / ``chat_template.NAME``, checked when the model is loaded)."""
    if not isinstance(name, str):
        raise ValueError(f"chat_format must be a string (got {type(name).__name__})")
    if name in FORMATS or name in SPECIAL or name.startswith("chat_template."):
        return
    if name in HANDLERS:
        raise ValueError(f"chat_format {name!r} is one of llama-cpp-python's chat handlers (function "
                         "calling or images), not a prompt format: splitllm does not run it; use tools= with "
                         f"the model's template, or one of {', '.join(format_names())}")
    raise ValueError(f"unknown chat_format {name!r} (known: {', '.join(format_names())}, or "
                     "chat_template.NAME for a template in the GGUF file)")


def chat_prompt(name: str, messages: Sequence[Message]) -> tuple[str, list[str]]:
    """The prompt text and stop strings of format ``name`` for ``messages``."""
    check_chat_format(name)
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
    if name in SPECIAL:
        build, stop = SPECIAL[name]
        return build(messages), list(stop)
    fmt = FORMATS[name]
    return fmt.prompt(messages), list(fmt.stop)
