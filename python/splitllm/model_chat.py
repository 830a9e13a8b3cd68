"""Chat completions of a :class:`~splitllm.model.Model`: the chat template, tools, reasoning
and the OpenAI-shaped ``create_chat_completion``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from splitllm.chat import ChatTemplate, Continuation, template_variables
from splitllm.completions import chat_chunks, chat_head, chat_response, stop_list
from splitllm.dry import DEFAULT_BREAKERS
from splitllm.grammar import Grammar, response_grammar
from splitllm.harmony import split_harmony
from splitllm.logprobs import chat_n_top
from splitllm.reasoning import check_reasoning_format, prompt_opens_thinking, split_reasoning
from splitllm.sampling import LogitsHook, StopHook, sampling_params
from splitllm.tools import tool_chat_chunks, tool_chat_response, tool_plan


class ChatMethods:
    """The chat calls of :class:`~splitllm.model.Model` (which holds the state they use)."""

    def chat_template(self) -> ChatTemplate:
        self._engine()
        if self._chat is None:
            tok = self.tokenizer
            bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
            eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
            self._chat = ChatTemplate(self._chat_template_source, bos_token=bos, eos_token=eos)
        return self._chat

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        continuation: Continuation | None = None,
    ) -> list[int]:
        """Renders messages (and ``tools``) with the model's chat template and tokenizes the result;
        ``chat_template_kwargs``: more template variables (llama-server's name), e.g.
        ``{"enable_thinking": False}`` for Qwen3. ``continuation``: an assistant message after
        ``messages`` to go on with (see :meth:`ChatTemplate.render_continuation`)."""
        variables = template_variables(chat_template_kwargs)
        if continuation is not None:
            text = self.chat_template().render_continuation(messages, continuation, tools=tools, **variables)
        else:
            text = self.chat_template().render(messages, add_generation_prompt=add_generation_prompt,
                                               tools=tools, **variables)
        return self.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def create_chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        stream: bool = False,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        model: str | None = None,
        logit_bias: Mapping[Any, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: Grammar | str | None = None,
        logits_processor: LogitsHook | None = None,
        stopping_criteria: StopHook | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        functions: Sequence[Mapping[str, Any]] | None = None,
        function_call: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str = "none",
        typical_p: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        xtc_probability: float = 0.0,
        xtc_threshold: float = 0.1,
        top_n_sigma: float = -1.0,
        dynatemp_range: float = 0.0,
        dynatemp_exponent: float = 1.0,
        dry_multiplier: float = 0.0,
        dry_base: float = 1.75,
        dry_allowed_length: int = 2,
        dry_penalty_last_n: int = 64,
        dry_sequence_breakers: Sequence[str] = DEFAULT_BREAKERS,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Chat completion, shaped like OpenAI's ``chat.completions.create``; ``logprobs=True``
        gives each generated token's log-probability and ``top_logprobs`` (0..20) alternatives.
        ``response_format``: ``{"type": "json_object"}`` (any JSON object, or one following a
        ``"schema"`` given there, as llama-cpp-python takes it) or ``{"type": "json_schema",
        "json_schema": {"schema": ...}}`` (OpenAI's); ``grammar``: any grammar. ``tools`` /
        ``tool_choice`` (or the legacy ``functions`` / ``function_call``): tool calls in the answer's
        ``message.tool_calls`` (see :mod:`splitllm.tools`). ``chat_template_kwargs``: more variables
        for the chat template (see :meth:`apply_chat_template`). ``reasoning_format="deepseek"``:
        a ``<think>`` block opening the answer goes to ``message.reasoning_content`` (llama-server's
        option; see :mod:`splitllm.reasoning`); ``"none"`` (llama-cpp-python's behaviour) keeps it.
        A gpt-oss (harmony) template's answer is always parsed (:mod:`splitllm.harmony`): its final
        and commentary messages are the content, a function call is a tool call, and its analysis
        goes to ``reasoning_content`` ("deepseek") or stays in the content as written ("none").
        The sampler settings are those of :meth:`create_completion`."""
        check_reasoning_format(reasoning_format)
        params = sampling_params(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=logit_bias, xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
            top_n_sigma=top_n_sigma, dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exponent,
            dry_multiplier=dry_multiplier, dry_base=dry_base, dry_allowed_length=dry_allowed_length,
            dry_penalty_last_n=dry_penalty_last_n, dry_sequence_breakers=dry_sequence_breakers)
        n_top = chat_n_top(logprobs, top_logprobs)
        constraint = response_grammar(response_format, grammar)
        harmony = self.chat_template().harmony
        plan = tool_plan(tools=tools, tool_choice=tool_choice, functions=functions,
                         function_call=function_call, parallel_tool_calls=parallel_tool_calls,
                         constrained=constraint is not None, harmony=harmony)
        tokens, stops = self.chat_prompt(messages, stop, tools=plan.tools if plan else None,
                                         chat_template_kwargs=chat_template_kwargs)
        grammar = plan.grammar if plan and plan.grammar else constraint
        chunks = self._stream_from(tokens, None, params, max_tokens=max_tokens, stop=stops, seed=seed,
                                   logprobs=n_top, grammar=grammar, logits_processor=logits_processor,
                                   stopping_criteria=stopping_criteria)
        if harmony:
            names, most = (plan.names, plan.max_calls) if plan else (None, None)
            chunks = split_harmony(chunks, reasoning=reasoning_format == "deepseek", names=names,
                                   max_calls=most)
        elif reasoning_format == "deepseek":
            chunks = split_reasoning(chunks, inside=self.opens_thinking(tokens))
        head = chat_head(model if model is not None else self.model_path)
        if plan is not None:
            shape = tool_chat_chunks if stream else tool_chat_response
            return shape(plan, head, chunks, n_top is not None, parsed=harmony)
        if stream:
            return chat_chunks(head, chunks, n_top is not None)
        return chat_response(head, chunks, n_top is not None)

    def opens_thinking(self, prompt_tokens: Sequence[int]) -> bool:
        """Whether a chat prompt leaves a ``<think>`` block open for the answer."""
        tail = self.detokenize(list(prompt_tokens)[-8:], special=True)
        return prompt_opens_thinking(tail.decode("utf-8", errors="replace"))

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], stop: str | Sequence[str] | None = None, *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True,
        continuation: Continuation | None = None,
    ) -> tuple[list[int], list[str]]:
        """The prompt tokens of a chat completion and its stop strings (``stop`` and the
        template's end-of-sequence text); ``tools``: offered to the model (already checked);
        ``add_generation_prompt`` and ``continuation`` as :meth:`apply_chat_template`'s."""
        tokens = self.apply_chat_template(messages, tools=tools, chat_template_kwargs=chat_template_kwargs,
                                          add_generation_prompt=add_generation_prompt,
                                          continuation=continuation)
        stops = stop_list(stop)
        eos_text = self.chat_template().eos_token
        if eos_text and eos_text not in stops:
            stops.append(eos_text)
        return tokens, stops
