"""The OpenAI-compatible HTTP API over a :class:`~splitllm.engine.BatchEngine` (FastAPI).

Endpoints: ``GET /health`` (also ``/v1/health``; public), ``GET /metrics`` (Prometheus),
``GET /v1/models`` (also ``/models``), ``POST /tokenize`` / ``/detokenize`` (llama-server's;
``/extras/tokenize``, ``/extras/tokenize/count``, ``/extras/detokenize`` as llama-cpp-python's
server has them), llama-server's native ``POST
/completion``, ``/infill``, ``GET /props`` and ``POST /apply-template`` (:mod:`splitllm.api_native`),
``POST /v1/completions`` (``suffix``: fill-in-the-middle, :mod:`splitllm.infill`),
``POST /v1/chat/completions`` (also ``/chat/completions``; ``stream: true`` answers server-sent
events ending with ``data: [DONE]``; ``/v1/chat/completions/input_tokens`` counts a request's
prompt tokens), ``POST /v1/embeddings`` (the final hidden states, pooled as the model says or
``--pooling``, unit length as llama-server and OpenAI give them; a 400 for a model without
pooling, as llama-server answers). Built on these: Anthropic's ``/v1/messages``
(:mod:`splitllm.api_anthropic`), OpenAI's ``/v1/responses`` (:mod:`splitllm.api_responses`),
llama-server's ``/embedding`` (:mod:`splitllm.api_embedding`) and ``/slots``
(:mod:`splitllm.api_slots`). Requests are tokenized and checked here, then run by the
engine, which batches them with every other request in flight. A completions request may hold
several prompts (a list of strings or of token lists, up to 64) and both endpoints take ``n`` (up
to 16 choices per prompt, choice k seeded with ``seed + k``): each choice is a job of its own,
run together, and the choices come back in order (streamed: interleaved, each chunk with its
choice's ``index``).
Log-probabilities: ``logprobs`` (0..20 alternatives) on completions, the prompt's tokens too with
``echo`` (``max_tokens: 0`` with ``echo`` scores the prompt and generates nothing);
``logprobs`` / ``top_logprobs`` on chat. Constrained output: ``grammar`` (GBNF) on both, chat's
``response_format`` (``json_object``, optionally with a ``schema``, or ``json_schema``). Chat's
``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (and the legacy ``functions`` /
``function_call``) answer tool calls as OpenAI does (:mod:`splitllm.tools`).

The body is read as JSON whatever its Content-Type (``curl -d`` sends a form type). Errors never
stop the server and always have OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``: 400 for a malformed body, a wrong type or value (validation errors are answered as
400, as OpenAI does, not FastAPI's 422), a prompt that does not fit the context, or an explicit
``max_tokens`` that does not fit after the prompt (code ``context_length_exceeded``, OpenAI's
rule; without ``max_tokens`` a request generates until its context is full, finish reason
``length``); 401 for a missing or wrong API key (``Authorization: Bearer KEY``, on every
path but ``/health``); 404 for an unknown model or path; 500 for an internal failure. A client that
disconnects, mid-stream or while waiting for a whole response, cancels its job and frees its
sequence slot.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from splitllm import _core
from splitllm.api_errors import APIKeyCheck, add_error_handlers, validation_message
from splitllm.api_lora import lora_scales_of
from splitllm.api_schema import (
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    RerankRequest,
    TokenizeRequest,
    error_body,
)
from splitllm.chat import CONTINUE_MODES, Continuation, template_variables
from splitllm.completions import (
    CompletionChunk,
    Echo,
    chat_choice,
    chat_chunk_dicts,
    chat_head,
    chat_role_chunk,
    completion_choice,
    completion_head,
    echo_chunk,
    generated_chunk,
    stop_list,
)
from splitllm.engine import BatchEngine, ChunkStream
from splitllm.grammar import Grammar, response_grammar
from splitllm.harmony import HarmonySplitter
from splitllm.infill import check_echo, completion_prompt, with_tail
from splitllm.model import LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_RANK
from splitllm.reasoning import CLOSE, OPEN, ReasoningSplitter, check_reasoning_format
from splitllm.reasoning_budget import ReasoningBudget, check_budget, thinking_budget
from splitllm.tools import ToolChunks, ToolError, ToolPlan, tool_chat_choice, tool_plan

_Body = TypeVar("_Body", CompletionRequest, ChatRequest)
DISCONNECT_POLL_S = 0.5  # how often a request waiting for a whole response checks its client
CLIENT_CLOSED = 499      # status logged for a request whose client went away (nginx's convention)


def create_app(engine: BatchEngine, *, model_alias: str | None = None, api_key: str | None = None,
               chat_template_kwargs: dict[str, Any] | None = None,
               reasoning_format: str = "deepseek", slots_endpoint: bool = True,
               slot_save_path: str | None = None, reasoning_budget: int = -1,
               reasoning_budget_message: str = "", prefill_assistant: bool = True) -> FastAPI:
    """The FastAPI application serving ``engine``'s model under ``model_alias`` (default: the file
    name without ``.gguf``). With ``api_key``, requests (but ``/health``) must carry it as a bearer
    token. ``chat_template_kwargs``: chat template variables for every chat request (a request's
    own ``chat_template_kwargs`` take precedence), as llama-server's option. ``reasoning_format``:
    the default of chat requests' ``reasoning_format`` ("deepseek": a thinking block opening the
    answer goes to ``reasoning_content``, as llama-server does by default; "none").
    ``slots_endpoint``: answer ``GET /slots``; ``slot_save_path``: the folder ``POST /slots/{id}``
    saves slots to and restores them from (without one, that endpoint answers 501).
    ``reasoning_budget`` (-1: none) and ``reasoning_budget_message``: llama-server's thinking budget
    for chat answers of ``<think>`` models, which a request's ``reasoning_budget_tokens`` overrides
    (see :mod:`splitllm.reasoning_budget`). ``prefill_assistant``: a chat request ending with an
    assistant message continues it (llama-server's default; see :meth:`_Service.continuation`)."""
    svc = _Service(engine, model_alias, template_variables(chat_template_kwargs),
                   check_reasoning_format(reasoning_format))
    svc.reasoning_budget = check_budget(reasoning_budget, "reasoning_budget")
    svc.reasoning_budget_message = reasoning_budget_message
    svc.prefill_assistant = prefill_assistant
    app = FastAPI(title="splitllm", summary="OpenAI-compatible API", docs_url=None, redoc_url=None)
    app.state.service = svc
    svc.slots_endpoint = slots_endpoint
    if api_key:
        app.add_middleware(APIKeyCheck, key=api_key)
    add_error_handlers(app)

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return svc.health()

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> dict[str, Any]:
        return svc.models()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(svc.metrics(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await svc.completion(await _parse(request, CompletionRequest), request)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await svc.chat(await _parse(request, ChatRequest), request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await svc.embeddings(await _parse(request, EmbeddingRequest), request)

    @app.post("/v1/rerank")
    @app.post("/rerank")
    @app.post("/v1/reranking")
    @app.post("/reranking")
    async def rerank(request: Request) -> Response:
        return await svc.rerank(await _parse(request, RerankRequest), request)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        return svc.tokenize(await _parse(request, TokenizeRequest))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        return {"content": svc.detokenize(await _parse(request, DetokenizeRequest))}

    @app.post("/extras/tokenize")
    async def extras_tokenize(request: Request) -> dict[str, Any]:
        return {"tokens": svc.tokenize(_with_bos(await _parse(request, TokenizeRequest)))["tokens"]}

    @app.post("/extras/tokenize/count")
    async def extras_count(request: Request) -> dict[str, Any]:
        return {"count": len(svc.tokenize(_with_bos(await _parse(request, TokenizeRequest)))["tokens"])}

    @app.post("/extras/detokenize")
    async def extras_detokenize(request: Request) -> dict[str, Any]:
        return {"text": svc.detokenize(await _parse(request, DetokenizeRequest))}

    @app.post("/v1/chat/completions/input_tokens")
    @app.post("/chat/completions/input_tokens")
    async def chat_input_tokens(request: Request) -> dict[str, Any]:
        body = await _parse(request, ChatRequest)
        return {"object": "response.input_tokens", "input_tokens": len(svc.chat_prompt(body).tokens)}

    # (these modules build on this one)
    from splitllm.api_anthropic import add_anthropic_routes
    from splitllm.api_embedding import add_embedding_routes
    from splitllm.api_lora import add_lora_routes
    from splitllm.api_native import add_native_routes
    from splitllm.api_responses import add_responses_routes
    from splitllm.api_slots import add_slot_routes

    add_native_routes(app, svc)
    add_embedding_routes(app, svc)
    add_lora_routes(app, svc)
    add_anthropic_routes(app, svc)
    add_responses_routes(app, svc)
    add_slot_routes(app, svc, endpoint=slots_endpoint, save_path=slot_save_path)
    return app


class _Service:
    def __init__(self, engine: BatchEngine, model_alias: str | None, template_kwargs: dict[str, Any],
                 reasoning_format: str) -> None:
        self.engine = engine
        self.template_kwargs = template_kwargs
        self.reasoning_format = reasoning_format
        self.model = engine.model
        path = self.model.model_path
        base = os.path.basename(path)
        self.alias = model_alias or (base[:-5] if base.endswith(".gguf") else base)
        self.names = {self.alias, path, base}
        self.created = int(time.time())
        self.slots_endpoint = True  # (GET /slots answers)
        self.reasoning_budget, self.reasoning_budget_message = -1, ""  # (--reasoning-budget, its message)
        self.prefill_assistant = True  # a last assistant message is continued (--no-prefill-assistant)

    # ---- information ----

    def health(self) -> dict[str, Any]:
        e = self.engine
        return {"status": "ok", "slots_idle": e.n_parallel - e.n_active, "slots_processing": e.n_active,
                "requests_pending": e.n_pending, "stats": dataclasses.asdict(e.stats)}

    def metrics(self) -> str:
        """The engine's counters in Prometheus' text format, under llama-server's metric names
        where it has them."""
        e = self.engine
        st = e.stats
        rows = [
            ("counter", "prompt_tokens_total", "Prompt tokens evaluated.", st.prompt_evaluated),
            ("counter", "prompt_tokens_cached_total", "Prompt tokens from slot caches.", st.prompt_cached),
            ("counter", "tokens_predicted_total", "Generated tokens evaluated.", st.generated_evaluated),
            ("counter", "n_decode_total", "Forward passes.", st.steps),
            ("counter", "decode_seconds_total", "Time in forward passes.", st.decode_seconds),
            ("counter", "requests_submitted_total", "Jobs submitted.", st.submitted),
            ("counter", "requests_finished_total", "Jobs ended (finished, cancelled or failed).",
             st.finished),
            ("counter", "requests_cancelled_total", "Jobs cancelled.", st.cancelled),
            ("counter", "spec_decode_num_draft_tokens_total", "Speculative: guesses checked.",
             st.draft_tokens),
            ("counter", "spec_decode_num_accepted_tokens_total", "Speculative: guesses accepted.",
             st.draft_accepted),
            ("counter", "spec_decode_num_drafts_total", "Speculative: passes checking a job's guesses.",
             st.draft_checks),
            ("gauge", "requests_processing", "Jobs in a slot.", e.n_active),
            ("gauge", "requests_deferred", "Jobs waiting for a slot.", e.n_pending),
            ("gauge", "n_busy_slots_per_decode", "Most sequences decoded in one pass.", st.max_batch_seqs),
        ]
        out = []
        for kind, name, help_, value in rows:
            out += [f"# HELP llamacpp:{name} {help_}", f"# TYPE llamacpp:{name} {kind}",
                    f"llamacpp:{name} {value}"]
        return "\n".join(out) + "\n"

    def models(self) -> dict[str, Any]:
        meta = {"n_ctx": self.model.n_ctx(), "n_parallel": self.engine.n_parallel,
                "n_ctx_per_seq": self.engine.slot_ctx, "n_vocab": self.model.n_vocab()}
        return {"object": "list", "data": [{"id": self.alias, "object": "model", "created": self.created,
                                            "owned_by": "splitllm", "meta": meta}]}

    def _model_name(self, name: str | None) -> str:
        if name is None or name in self.names:
            return self.alias
        raise APIError(404, f"The model `{name}` does not exist (this server has `{self.alias}`)",
                       param="model", code="model_not_found")

    def _generative_model(self, name: str | None) -> str:
        """The model's name, for a request that generates text: not an encoder's (an embedding model)."""
        alias = self._model_name(name)
        if self.model.config["encoder"]:
            raise APIError(400, f"`{alias}` is an embedding model ({self.model.config['arch']}): it serves "
                           "/v1/embeddings only", param="model")
        return alias

    # ---- tokens ----

    def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        """The text's token ids (``add_special``: with BOS/EOS where the model adds them; special
        tokens written in the text are parsed as such); ``with_pieces``: each with its text."""
        self._model_name(body.model)
        tok = self.model.tokenizer
        ids = tok.tokenize(body.text().encode("utf-8"), add_bos=body.add_special, special=True)
        if not body.with_pieces:
            return {"tokens": ids}
        pieces = []
        for t in ids:
            b = tok.token_to_piece(t, special=True)
            try:
                piece: str | list[int] = b.decode("utf-8")
            except UnicodeDecodeError:  # part of a character: its bytes, as llama-server gives them
                piece = list(b)
            pieces.append({"id": t, "piece": piece})
        return {"tokens": pieces}

    def detokenize(self, body: DetokenizeRequest) -> str:
        self._model_name(body.model)
        n = self.model.n_vocab()
        bad = [t for t in body.tokens if not 0 <= t < n]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {n})", param="tokens")
        return self.model.tokenizer.detokenize(body.tokens, special=True).decode("utf-8", errors="replace")

    # ---- requests ----

    def _thinking_budget(self, body: ChatRequest, p: _ChatPrompt) -> ReasoningBudget | None:
        """A chat answer's thinking budget: the request's (-1 or absent: the server's), for a model
        whose chat template writes ``<think>`` blocks (as llama-server sets one up only for
        templates with thinking tags)."""
        n = body.reasoning_budget_tokens
        if n is None or n == -1:
            n = body.thinking_budget_tokens
        if n is None or n == -1:
            n = self.reasoning_budget
        source = self.model._chat_template_source
        if n < 0 or OPEN not in source or CLOSE not in source:
            return None
        tok = self.model.tokenizer
        message = body.reasoning_budget_message
        return thinking_budget(lambda text: tok.tokenize(text.encode(), add_bos=False, special=True),
                               lambda t: tok.token_to_piece(t, special=False), p.tokens, n,
                               self.reasoning_budget_message if message is None else message,
                               prompt_opens=p.opens_thinking(self.model))

    def _submit(self, tokens: list[int], body: CompletionRequest | ChatRequest, max_tokens: int | None,
                stop: list[str], param: str, *, explicit: bool, limit_param: str = "max_tokens",
                prompt_logprobs: bool = False, seed: int | None = None, generate: bool = True,
                grammar: Grammar | None = None, pin: bool = True,
                budget: ReasoningBudget | None = None) -> ChunkStream:
        """Checks the request against a sequence's context and queues it. An ``explicit``
        ``max_tokens`` must fit after the prompt (OpenAI's rule); the default is only a cap. With
        ``pin`` (a prompt's first choice; llama-server gives the others free slots), the request's
        ``id_slot`` picks the slot."""
        ctx = self.engine.slot_ctx
        if len(tokens) >= ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the {param} has "
                           f"{len(tokens)} tokens (at least one must be left to generate)", param=param,
                           code="context_length_exceeded")
        if max_tokens is not None and max_tokens > ctx:
            raise APIError(400, f"{limit_param} is too large: {max_tokens}. This model's maximum context "
                           f"length is {ctx} tokens", param=limit_param, code="invalid_value")
        n = len(tokens)
        if explicit and max_tokens is not None and n + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                           f"requested {n + max_tokens} tokens ({n} in the {param}, {max_tokens} in the "
                           f"completion). Please reduce the length of the {param} or completion.",
                           param=param, code="context_length_exceeded")
        try:
            tokens = self.model.check_prompt(tokens)
        except ValueError as e:
            raise APIError(400, str(e), param=param) from None
        lora = getattr(body, "lora", None)
        # (an empty list: the server's scales, as llama-server reads it)
        scales = None if lora is None or lora == [] else lora_scales_of(self.model, lora)
        try:
            params = body.sampling_params()
            return self.engine.astream(tokens, params=params, seed=seed, max_tokens=max_tokens, stop=stop,
                                       logprobs=body.n_logprobs, prompt_logprobs=prompt_logprobs,
                                       generate=generate, grammar=grammar, lora=scales,
                                       slot=getattr(body, "id_slot", -1) if pin else -1,
                                       reasoning_budget=budget,
                                       speculative=getattr(body, "speculative", None))
        except ValueError as e:
            raise APIError(400, str(e), param="logit_bias" if "logit_bias" in str(e) else None) from None

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        name = self._generative_model(body.model)
        want_lps = body.n_logprobs is not None
        prompts = []
        for prompt in body.prompts():
            try:
                prompts.append((prompt, *completion_prompt(self.model, prompt, body.suffix)))
                check_echo(body.suffix, body.echo, body.n_logprobs)
            except ValueError as e:
                raise APIError(400, str(e), param="suffix" if "suffix" in str(e) else "prompt") from None
        grammar = _grammar_of(body)
        runs: list[_Run] = []
        try:
            for prompt, tokens, tail in prompts:
                shown = tokens if body.suffix is None else prompt  # (not the fill-in-the-middle prompt)
                text = self.model.echo_text(prompt, shown) if body.echo or want_lps else ""
                for k in range(body.n):
                    stream = self._submit(tokens, body, body.max_tokens, stop_list(body.stop), "prompt",
                                          explicit="max_tokens" in body.model_fields_set,
                                          prompt_logprobs=body.echo and want_lps,
                                          seed=_choice_seed(body.seed, k), generate=body.generate,
                                          grammar=grammar, pin=k == 0)
                    runs.append(_Run(len(runs), stream, k == 0, Echo(text, body.echo), tail))
        except BaseException:
            _close(runs)
            raise
        head = completion_head(name)
        if body.stream:
            return _sse(runs, _completion_events(runs, head, want_lps, body.include_usage))
        results = await _collect_all(runs, request, body)
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
        choices, lasts = [], []
        for r, chunks in zip(runs, results, strict=True):
            chunks = [with_tail(c, r.tail) for c in chunks]
            choice, last = completion_choice(chunks, r.with_prompt_entries(), want_lps, r.index)
            choices.append(choice)
            lasts.append(last)
        return JSONResponse({**head, "choices": choices, "usage": _total_usage(runs, lasts)})

    def chat_prompt(self, body: ChatRequest) -> _ChatPrompt:
        """A chat request's prompt tokens, stop strings, tool plan and grammar (400 if bad): what
        /v1/chat/completions runs and the ``input_tokens`` endpoints count."""
        self._generative_model(body.model)
        messages = [m.as_dict() for m in body.messages]
        cont = self.continuation(body)
        if cont is not None:
            messages.pop()
        grammar = _grammar_of(body)
        try:
            harmony = self.model.chat_template().harmony
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        plan = _tools_of(body, grammar is not None, harmony)
        try:
            variables = {**self.template_kwargs, **template_variables(body.chat_template_kwargs)}
            tokens, stops = self.model.chat_prompt(messages, body.stop, tools=plan.tools if plan else None,
                                                   chat_template_kwargs=variables,
                                                   add_generation_prompt=body.add_generation_prompt,
                                                   continuation=cont)
        except ValueError as e:
            raise APIError(400, str(e), param=getattr(e, "param", "messages")) from None
        if plan is not None and plan.grammar is not None:
            grammar = plan.grammar
        return _ChatPrompt(tokens, stops, plan, grammar, harmony, None if cont is None else cont[0])

    def continuation(self, body: ChatRequest) -> Continuation | None:
        """The assistant message a chat request continues, as llama-server decides: its
        ``continue_final_message`` (true: by the message, "content" or "reasoning_content"; with
        ``add_generation_prompt`` false), or (unless --no-prefill-assistant) a last message from
        the assistant. 400 for two assistant messages at the end, both options, or tool calls."""
        v = body.continue_final_message
        mode = "auto" if v is True else v if v in CONTINUE_MODES else None
        msgs = body.messages
        if not msgs:  # (the template's own check refuses an empty list)
            return None
        if mode is None and self.prefill_assistant and msgs[-1].role == "assistant":
            if len(msgs) >= 2 and msgs[-2].role == "assistant":
                raise APIError(400, "Cannot have 2 or more assistant messages at the end of the list.",
                               param="messages")
            mode = "auto"
        elif mode is not None and body.add_generation_prompt:
            raise APIError(400, "Cannot set both add_generation_prompt and continue_final_message to true.",
                           param="continue_final_message")
        if mode is None:
            return None
        last = msgs[-1].as_dict()
        if last.get("role") == "assistant" and last.get("tool_calls"):
            raise APIError(400, "Cannot continue an assistant message that contains tool calls.",
                           param="messages")
        reasoning = last.get("reasoning_content")
        reasoning = reasoning if isinstance(reasoning, str) else ""
        parts = msgs[-1].content
        content = "\n\n".join(p.text for p in parts) if isinstance(parts, list) else parts or ""
        if mode == "auto":
            mode = "reasoning_content" if reasoning and not content else "content"
        return mode, reasoning, content

    def start_chat(self, body: ChatRequest) -> ChatRun:
        """Queues a chat request's choices; the caller reads them through the returned run (which
        the other chat-shaped APIs, Anthropic's and Responses, translate)."""
        name = self._generative_model(body.model)
        p = self.chat_prompt(body)
        thinking = (body.reasoning_format or self.reasoning_format) == "deepseek"
        inside = thinking and not p.harmony and p.opens_thinking(self.model)
        limit = body.token_limit
        if limit is not None and body.limit_is_cap:
            limit = min(limit, self.engine.slot_ctx)
        runs: list[_Run] = []
        try:
            for k in range(body.n):
                stream = self._submit(p.tokens, body, limit, p.stops, "messages",
                                      explicit=limit is not None and not body.limit_is_cap,
                                      limit_param=body.token_limit_param, seed=_choice_seed(body.seed, k),
                                      grammar=p.grammar, pin=k == 0,
                                      budget=None if p.harmony else self._thinking_budget(body, p))
                runs.append(_Run(k, stream, k == 0))
        except BaseException:
            _close(runs)
            raise
        splitters: dict[int, ReasoningSplitter | HarmonySplitter] = {}
        if p.harmony:  # (always parsed: its analysis stays in the content as written with "none")
            plan = p.plan
            inside = {None: "", "content": "content", "reasoning_content": "reasoning"}[p.continued]
            splitters = {r.index: HarmonySplitter(reasoning=thinking, names=plan.names if plan else None,
                                                  max_calls=plan.max_calls if plan else None, inside=inside)
                         for r in runs}
        elif thinking:
            splitters = {r.index: ReasoningSplitter(inside=inside) for r in runs}
        return ChatRun(runs, chat_head(name), body, p.plan, splitters, p.harmony)

    async def chat(self, body: ChatRequest, request: Request) -> Response:
        run = self.start_chat(body)
        if body.stream:
            return _sse(run.runs, run.events())
        result = await run.result(request)
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(result)

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Response:
        name = self._model_name(body.model)
        token_lists = self.embedding_tokens(
            [self.model.tokenize(x.encode("utf-8")) if isinstance(x, str) else x for x in body.inputs()])
        pooling = self.embedding_pooling()
        if pooling == LLAMA_POOLING_TYPE_NONE:  # as llama-server answers
            raise APIError(400, "this model's embeddings are per token (pooling none), which OpenAI's API "
                           "cannot carry: serve it with --pooling mean (or last, cls)", param="model")
        pooled = await self.pooled_embeddings(token_lists, "input", request, pooling, normalize=True)
        if pooled is None:
            return Response(status_code=CLIENT_CLOSED)
        data = []
        for index, vecs in pooled:
            if body.encoding_format == "base64":
                emb = base64.b64encode(vecs[0].astype("<f4").tobytes()).decode("ascii")
            else:
                emb: Any = vecs[0].tolist()
            data.append({"object": "embedding", "embedding": emb, "index": index})
        n = sum(len(t) for t in token_lists)
        return JSONResponse({"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    def pooling(self) -> int:
        """The model's pooling type; a 400 when it cannot serve one."""
        try:
            return self.model.pooling_type()
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def embedding_pooling(self) -> int:
        """The pooling type of an embedding request: a reranker's is refused (it has /v1/rerank)."""
        pooling = self.pooling()
        if pooling == LLAMA_POOLING_TYPE_RANK:
            raise APIError(400, "this model is a reranker (pooling rank): use /v1/rerank", param="model")
        return pooling

    async def pooled_embeddings(
        self, token_lists: list[list[int]], param: str, request: Request, pooling: int, *, normalize: bool
    ) -> list[tuple[int, np.ndarray]] | None:
        """(input index, its vectors pooled by ``pooling``) of each text, evaluated as the engine's
        embedding jobs; None when the client left."""
        runs = self._embedding_runs(token_lists, param)
        if await _collect_all(runs, request) is None:
            return None
        out = []
        for r in runs:
            rows = np.concatenate(r.stream.job.embeddings)  # type: ignore[arg-type]
            out.append((r.index, self.model.pool(rows, pooling, normalize=normalize)))
        return out

    def embedding_tokens(self, token_lists: Sequence[Sequence[int]], param: str = "input") -> list[list[int]]:
        """Texts' tokens checked against what the model reads in one text (400 naming param)."""
        out = []
        for toks in token_lists:
            if not toks:
                raise APIError(400, "an input is empty", param=param)
            ctx = self.engine.slot_ctx
            if len(toks) >= ctx and not self.model.config["encoder"]:  # (an encoder has no cache)
                raise APIError(400, f"This model's maximum context length is {ctx} tokens, but an input has "
                               f"{len(toks)} tokens (too large)", param=param, code="context_length_exceeded")
            limit = self.model.embed_limit()  # an encoder reads a text in one batch
            if len(toks) > limit:
                raise APIError(400, f"This model reads at most {limit} tokens of a text (n_batch and its "
                               f"positions), but an input has {len(toks)} tokens (too large)", param=param,
                               code="context_length_exceeded")
            try:
                out.append(self.model.check_prompt(toks))
            except ValueError as e:
                raise APIError(400, str(e), param=param) from None
        return out

    def _embedding_runs(self, token_lists: Sequence[Sequence[int]], param: str, *,
                        classify: bool = False) -> list[_Run]:
        """One embedding job per token list (a bad one: 400 naming param, the queued ones closed)."""
        runs: list[_Run] = []
        try:
            for i, toks in enumerate(token_lists):
                try:
                    runs.append(_Run(i, self.engine.aembedding(toks, classify=classify), True))
                except ValueError as e:
                    raise APIError(400, str(e), param=param) from None
        except BaseException:
            _close(runs)
            raise
        return runs

    async def rerank(self, body: RerankRequest, request: Request) -> Response:
        """Each document's relevance score for the query (the reranker's first output on the pair
        as llama-server joins it), best first, the first top_n."""
        name = self._model_name(body.model)
        docs = body.docs()
        if self.pooling() != LLAMA_POOLING_TYPE_RANK:
            raise APIError(400, "this model is not a reranker (pooling rank, a classification head): serve a "
                           "reranker, or pass --pooling rank", param="model")
        limit = self.model.embed_limit()
        pairs = [self.model.rerank_tokens(body.query, d) for d in docs]
        for toks in pairs:
            if len(toks) > limit:
                raise APIError(400, f"This model reads at most {limit} tokens of a text, but a query and "
                               f"document make {len(toks)}", param="documents",
                               code="context_length_exceeded")
        runs = self._embedding_runs(pairs, "documents", classify=True)
        if await _collect_all(runs, request) is None:
            return Response(status_code=CLIENT_CLOSED)
        tei = body.texts is not None  # a request with TEI's "texts" gets TEI's answer (as llama-server)
        label = "score" if tei else "relevance_score"
        results = []
        for r in runs:
            item: dict[str, Any] = {"index": r.index, label: float(r.stream.job.embeddings[0][0, 0])}  # type: ignore[index]
            if tei and body.return_text:
                item["text"] = docs[r.index]
            results.append(item)
        results.sort(key=lambda x: -x[label])
        top_n = len(results) if body.top_n is None else max(body.top_n, 0)
        results = results[:top_n]
        if tei:
            return JSONResponse(results)
        n = sum(len(t) for t in pairs)
        return JSONResponse({"model": body.model or name, "object": "list",
                             "usage": {"prompt_tokens": n, "total_tokens": n}, "results": results})


@dataclasses.dataclass(eq=False)
class _Run:
    """One choice of a request: its job's stream; ``first`` for the first choice of its prompt
    (which counts the prompt's tokens in the usage)."""

    index: int
    stream: ChunkStream
    first: bool
    echo: Echo = Echo()
    tail: str = ""  # appended to the text (a suffix the model cannot fill in the middle of)

    def with_prompt_entries(self) -> Echo:
        """The echo with the prompt's log-probability entries (set before the job's first event)."""
        lps = self.stream.job.prompt_logprobs
        return self.echo if lps is None else dataclasses.replace(self.echo, logprobs=lps.entries)


@dataclasses.dataclass(frozen=True)
class _ChatPrompt:
    tokens: list[int]
    stops: list[str]
    plan: ToolPlan | None
    grammar: Grammar | None
    harmony: bool
    continued: str | None = None  # the mode of the assistant message it continues (CONTINUE_MODES)

    def opens_thinking(self, model: Any) -> bool:
        """Whether the answer starts inside a thinking block (or harmony's analysis message)."""
        if self.continued is not None:
            return self.continued == "reasoning_content"
        return not self.harmony and model.opens_thinking(self.tokens)


@dataclasses.dataclass(eq=False)
class ChatRun:
    """A chat request's queued choices: ``events()`` gives its stream's chunks (OpenAI's
    ``chat.completion.chunk`` dicts), ``result()`` its whole ``chat.completion``."""

    runs: list[_Run]
    head: dict[str, Any]
    body: ChatRequest
    plan: ToolPlan | None
    splitters: dict[int, ReasoningSplitter | HarmonySplitter]
    harmony: bool

    def events(self) -> AsyncIterator[dict[str, Any]]:
        b = self.body
        return _chat_events(self.runs, self.head, b.n_logprobs is not None, b.include_usage, self.plan,
                            self.splitters, self.harmony)

    async def result(self, request: Request) -> dict[str, Any] | None:
        """The whole answer, or None if the client went away (the jobs are cancelled)."""
        results = await _collect_all(self.runs, request, self.body)
        if results is None:
            return None
        want_lps = self.body.n_logprobs is not None
        choices, lasts = [], []
        for r, chunks in zip(self.runs, results, strict=True):
            if self.splitters:
                chunks = [self.splitters[r.index].chunk(c) for c in chunks]
            if self.plan is not None:
                choice, last = tool_chat_choice(self.plan, chunks, want_lps, r.index, parsed=self.harmony)
            else:
                choice, last = chat_choice(chunks, want_lps, r.index)
            choices.append(choice)
            lasts.append(last)
        return {**self.head, "object": "chat.completion", "choices": choices,
                "usage": _total_usage(self.runs, lasts)}

    def close(self) -> None:
        _close(self.runs)


def _with_bos(body: TokenizeRequest) -> TokenizeRequest:
    """llama-cpp-python's /extras routes add BOS (where the model does) unless told otherwise."""
    if "add_special" in body.model_fields_set:
        return body
    return body.model_copy(update={"add_special": True})


def _grammar_of(body: CompletionRequest | ChatRequest) -> Grammar | None:
    """The grammar a request asks for (``grammar``, or chat's ``response_format``); 400 if bad."""
    fmt = getattr(body, "response_format", None)
    try:
        return response_grammar(fmt, body.grammar)
    except (ValueError, _core.Error) as e:
        raise APIError(400, str(e), param="response_format" if fmt is not None else "grammar") from None


def _constraint_param(body: CompletionRequest | ChatRequest | None) -> str:
    """The field whose grammar a request's output follows (named when the grammar finds no way on)."""
    for name in ("tool_choice", "function_call"):  # forced calls
        if getattr(body, name, None) not in (None, "none", "auto"):
            return name
    return "response_format" if getattr(body, "response_format", None) is not None else "grammar"


def _tools_of(body: ChatRequest, constrained: bool, harmony: bool = False) -> ToolPlan | None:
    """What a chat request's tools ask for; 400 naming the field if they are bad."""
    try:
        return tool_plan(tools=body.tools, tool_choice=body.tool_choice, functions=body.functions,
                         function_call=body.function_call, parallel_tool_calls=body.parallel_tool_calls,
                         constrained=constrained, harmony=harmony)
    except ToolError as e:
        raise APIError(400, str(e), param=e.param) from None


def _choice_seed(seed: int | None, k: int) -> int | None:
    """Choice k's seed: the request's plus k, so that the choices differ and each can be repeated."""
    return None if seed is None else seed + k


def _close(runs: Sequence[_Run]) -> None:
    for r in runs:
        r.stream.close()


def _total_usage(runs: Sequence[_Run], lasts: Sequence[CompletionChunk]) -> dict[str, Any]:
    """A request's usage: each prompt once, every choice's completion, and the prompt tokens that
    came from the cache (OpenAI's ``prompt_tokens_details.cached_tokens``)."""
    prompt = sum(c.prompt_tokens for r, c in zip(runs, lasts, strict=True) if r.first)
    completion = sum(c.completion_tokens for c in lasts)
    cached = sum(r.stream.job.n_cached for r in runs if r.first)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _usage_chunk(head: dict[str, Any], runs: Sequence[_Run], lasts: Sequence[CompletionChunk],
                 obj: str) -> dict[str, Any]:
    """The extra last chunk of ``stream_options: {"include_usage": true}``: no choices, the usage."""
    return {**head, "object": obj, "choices": [], "usage": _total_usage(runs, lasts)}


async def _merged(runs: Sequence[_Run]) -> AsyncIterator[tuple[_Run, CompletionChunk]]:
    """The chunks of several jobs as they come (a job's in order); a failed job raises."""
    waiting = {asyncio.ensure_future(r.stream.next_chunk()): r for r in runs}
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: waiting[f].index):
                r = waiting.pop(fut)
                yield r, fut.result()
                if not r.stream.done:
                    waiting[asyncio.ensure_future(r.stream.next_chunk())] = r
    finally:
        for fut in waiting:
            fut.cancel()


async def _completion_events(runs: Sequence[_Run], head: dict[str, Any], want_logprobs: bool,
                             include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    started: set[int] = set()
    lasts: dict[int, CompletionChunk] = {}
    for r in runs:
        if r.stream.job.prompt_logprobs is None:
            first = echo_chunk(head, r.echo, r.index)
            if first is not None:
                yield first
    async for r, c in _merged(runs):
        if r.index not in started and r.stream.job.prompt_logprobs is not None:  # known once it is read
            yield echo_chunk(head, r.with_prompt_entries(), r.index)  # type: ignore[misc]
        started.add(r.index)
        c = with_tail(c, r.tail)
        yield generated_chunk(head, c, want_logprobs, r.echo, r.index)
        if c.finish_reason is not None:
            lasts[r.index] = c
    if include_usage:
        yield _usage_chunk(head, runs, [lasts[r.index] for r in runs], "text_completion")


async def _chat_events(runs: Sequence[_Run], head: dict[str, Any], want_logprobs: bool,
                       include_usage: bool, plan: ToolPlan | None = None,
                       splitters: dict[int, ReasoningSplitter | HarmonySplitter] | None = None,
                       parsed: bool = False) -> AsyncIterator[dict[str, Any]]:
    lasts: dict[int, CompletionChunk] = {}
    shapers = ({r.index: ToolChunks(plan, head, want_logprobs, r.index, parsed=parsed) for r in runs}
               if plan else {})
    for r in runs:
        yield chat_role_chunk(head, r.index)
    async for r, c in _merged(runs):
        if splitters:
            c = splitters[r.index].chunk(c)
        dicts = shapers[r.index].dicts(c) if plan else chat_chunk_dicts(head, c, want_logprobs, r.index)
        for d in dicts:
            yield d
        if c.finish_reason is not None:
            lasts[r.index] = c
    if include_usage:
        yield _usage_chunk(head, runs, [lasts[r.index] for r in runs], "chat.completion.chunk")


def _sse(runs: Sequence[_Run], events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: one ``data:`` line a chunk, then ``data: [DONE]``. The jobs are cancelled
    when the stream ends early (the client went away: Starlette cancels the stream)."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for d in events:
                yield f"data: {json.dumps(d, ensure_ascii=False)}\n\n"
        except Exception as e:  # a job failed mid-stream: tell the client in-band
            body = error_body(f"generation failed: {e}", type="server_error")
            yield f"data: {json.dumps(body)}\n\n"
        finally:
            _close(runs)
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


_Chunks = list[list[CompletionChunk]]


async def _collect_all(runs: Sequence[_Run], request: Request,
                       body: CompletionRequest | ChatRequest | None = None) -> _Chunks | None:
    """Every chunk of every job, or None if the client disconnects first (the jobs are cancelled).
    A job that ended on its request's grammar (no token could continue) is a 400."""
    chunks: list[list[CompletionChunk]] = [[] for _ in runs]
    checked = time.monotonic()
    try:
        for i, r in enumerate(runs):
            while not r.stream.done:
                try:
                    chunks[i].append(await r.stream.next_chunk(DISCONNECT_POLL_S))
                except asyncio.TimeoutError:  # noqa: UP041 - not the builtin before Python 3.11
                    pass
                except ValueError as e:
                    raise APIError(400, str(e), param=_constraint_param(body)) from None
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return None
    finally:
        _close(runs)
    return chunks


async def _parse(request: Request, cls: type[_Body]) -> _Body:
    """The JSON body as ``cls``, whatever the Content-Type (``curl -d`` sends a form type)."""
    try:
        return cls.model_validate_json(await request.body())
    except ValidationError as e:
        message, param = validation_message(e.errors())
        raise APIError(400, message, param=param, code="invalid_value") from None
