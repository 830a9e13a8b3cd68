"""Chat templates: the Jinja2 template stored in the GGUF (``tokenizer.chat_template``), rendered
the way transformers and llama-cpp-python render it (sandboxed, trim_blocks, lstrip_blocks)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from splitllm.harmony import CHANNEL, END, MESSAGE, START, harmony_messages, is_harmony
from splitllm.reasoning import CLOSE as THINK_CLOSE
from splitllm.reasoning import OPEN as THINK_OPEN
from splitllm.tools import prompt_messages

CONTINUE_MODES = ("content", "reasoning_content")
Continuation = tuple[str, str, str]
"""An assistant message to continue: (mode, its reasoning, its content); mode in CONTINUE_MODES."""

# llama.cpp uses ChatML when a model carries no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ROLES = ("system", "user", "assistant", "tool", "function", "developer")
class TemplateVariableError(ValueError):
    """Bad extra template variables (``chat_template_kwargs``, the request field it is about)."""

    param = "chat_template_kwargs"


# Variables render() sets itself; extra template variables may not take these names.
RESERVED_VARIABLES = frozenset({"messages", "tools", "bos_token", "eos_token", "add_generation_prompt",
                                "raise_exception", "strftime_now"})


class _GenerationTag(jinja2.ext.Extension):
    """Pass-through for the ``{% generation %}`` tag some Hugging Face templates use."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


class ChatTemplate:
    """A compiled chat template. ``render(messages)`` returns the prompt text. ``uses_tools``:
    the template reads the ``tools`` variable; ``knows_tool_calls``: it renders assistant messages'
    ``tool_calls`` (for a template without them, :func:`splitllm.tools.prompt_messages` writes
    tools, calls and results into the messages' text); ``harmony``: it writes gpt-oss's harmony
    messages (see :mod:`splitllm.harmony`), and takes an assistant's reasoning as ``thinking``."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
            self.uses_tools = "tools" in jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template does not compile: {e}") from e
        self.knows_tool_calls = "tool_calls" in source
        self.harmony = is_harmony(source)
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any
    ) -> str:
        """The prompt text; ``tools`` (OpenAI's shape, already checked) are offered to the model;
        ``kwargs`` are more variables for the template (e.g. Qwen3's ``enable_thinking``)."""
        check_messages(messages)
        template_variables(kwargs)
        messages = prompt_messages(messages, tools, uses_tools=self.uses_tools,
                                   knows_tool_calls=self.knows_tool_calls)
        if self.harmony:
            messages = harmony_messages(messages)
        try:
            return self._template.render(
                messages=messages,
                tools=list(tools) if tools else None,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=_raise,
                strftime_now=lambda f: datetime.now().strftime(f),
                **kwargs,
            )
        except (jinja2.TemplateError, TypeError) as e:  # TypeError: e.g. a message's content left out
            raise ValueError(f"chat template failed to render: {e}") from e

    def render_continuation(
        self, messages: Sequence[Mapping[str, Any]], continuation: Continuation, *,
        tools: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any
    ) -> str:
        """The prompt text that continues an assistant message (llama-server's assistant prefill,
        ``continue_final_message``): ``messages`` (those before it) without a generation prompt,
        then the assistant's header and the message so far, left open. Mode "content": its
        reasoning (in a closed thinking block, for templates that write one) and its content;
        "reasoning_content": an open thinking block with its reasoning. As llama.cpp builds it:
        the header is what the generation prompt adds (cut before a ``<think>`` it opens); harmony
        writes an analysis message, then for "content" a final one."""
        if not messages:
            raise ValueError("an assistant message to continue needs a message before it")
        text = self.render(messages, add_generation_prompt=False, tools=tools, **kwargs)
        mode, reasoning, content = continuation
        if self.harmony:
            if (i := text.rfind("<|return|>")) >= 0:  # (a finished answer ends its turn with <|end|>)
                text = text[:i] + END + text[i + len("<|return|>"):]
            head = f"{START}{CHANNEL}analysis{MESSAGE}{reasoning}"
            if mode == "content":
                head += f"{END}{START}{CHANNEL}final{MESSAGE}{content}"
            return text + head
        full = self.render(messages, add_generation_prompt=True, tools=tools, **kwargs)
        n = next((i for i, (a, b) in enumerate(zip(text, full, strict=False)) if a != b),
                 min(len(text), len(full)))
        head = full[n:]
        if THINK_OPEN in self.source and THINK_CLOSE in self.source:
            if (i := head.find(THINK_OPEN)) >= 0:
                head = head[:i]
            head += THINK_OPEN + reasoning + (THINK_CLOSE if mode == "content" else "")
        return text + head + (content if mode == "content" else "")


def template_variables(variables: Any) -> dict[str, Any]:
    """Extra template variables (``chat_template_kwargs``) checked: an object with string keys
    other than the variables render() sets (TemplateVariableError otherwise). None: none."""
    if variables is None:
        return {}
    if not isinstance(variables, Mapping) or not all(isinstance(k, str) for k in variables):
        raise TemplateVariableError("chat_template_kwargs must be an object with string keys")
    taken = RESERVED_VARIABLES.intersection(variables)
    if taken:
        name = sorted(taken)[0]
        raise TemplateVariableError(f"chat template variable {name!r} is set by splitllm itself")
    return dict(variables)


def check_messages(messages: Any) -> None:
    """Raises ValueError unless messages is a non-empty list of {role, content} mappings."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(_ROLES)} (got {role!r})")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
