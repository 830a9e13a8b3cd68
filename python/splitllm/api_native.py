"""llama-server's native endpoints, over the same engine and jobs as the OpenAI API
(:mod:`splitllm.api`):

* ``POST /completion`` (also ``/completions``): llama-server's request names
  (:mod:`splitllm.native_schema`) and its answer: ``content``, ``tokens`` (with ``return_tokens``),
  ``stop``, ``stop_type`` ("eos", "word", "limit"), ``stopping_word``, ``tokens_predicted``
  (an end-of-generation token counted, as llama-server counts it), ``tokens_evaluated``,
  ``tokens_cached``, ``truncated``, ``prompt``, ``generation_settings``, ``timings``, and with
  ``n_probs`` the ``completion_probabilities`` (``id``, ``token``, ``bytes``, ``logprob``,
  ``top_logprobs``). ``prompt`` is a string, token ids, a mix of both, or a list of such prompts
  (several prompts, or ``n_cmpl`` > 1: a list of results). ``stream: true`` answers server-sent
  events, one ``data:`` object per piece of text (``stop: false``), then the final one
  (``stop: true``, the fields above, empty ``content``), without OpenAI's ``[DONE]``.
* ``POST /infill``: the same, for a fill-in-the-middle prompt built from ``input_prefix``,
  ``input_suffix``, ``input_extra`` and ``prompt`` as llama-server builds it
  (:func:`splitllm.infill.infill_prompt`; the extra context's budget uses llama-server's default
  ``--n-predict`` of -1). A model without FIM tokens answers 400.
* ``GET /props``: the server's defaults and model: ``default_generation_settings``,
  ``total_slots``, ``model_alias``, ``model_path``, ``chat_template``, ``bos_token``,
  ``eos_token``, ``build_info`` (splitllm's version).
* ``POST /apply-template``: ``{"messages": [...]}`` (and ``tools``, ``chat_template_kwargs``,
  ``add_generation_prompt``, ``continue_final_message``) rendered by the chat template to
  ``{"prompt": text}``: the text ``/v1/chat/completions`` reads (a last assistant message
  continued, as there).

Errors have the OpenAI shape of the other endpoints (see :mod:`splitllm.api`). As llama-server's,
these endpoints ignore a request's ``model``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from splitllm import _core
from splitllm.api import (
    CLIENT_CLOSED,
    _close,
    _collect_all,
    _merged,
    _parse,
    _Run,
    _tools_of,
)
from splitllm.api_errors import validation_message
from splitllm.api_schema import MAX_PROMPTS, APIError, sampling_error
from splitllm.chat import template_variables
from splitllm.completions import CompletionChunk
from splitllm.infill import infill_prompt, missing_fim, tokenize_mixed
from splitllm.logprobs import TokenLogprob
from splitllm.native_schema import (
    ApplyTemplateRequest,
    InfillRequest,
    NativeRequest,
    check_infill_body,
    prompt_items,
)
from splitllm.sampling import SamplingParams
from splitllm.textstream import utf8_complete_prefix

if TYPE_CHECKING:
    from splitllm.api import _Service

LLAMA_SERVER_N_PREDICT = -1  # llama-server's default --n-predict, which its /infill budget reads


def add_native_routes(app: FastAPI, svc: _Service) -> None:
    native = NativeAPI(svc)

    @app.post("/completion")
    @app.post("/completions")
    async def completion(request: Request) -> Response:
        return await native.completion(request)

    @app.post("/infill")
    async def infill(request: Request) -> Response:
        return await native.infill(request)

    @app.get("/props")
    async def props() -> dict[str, Any]:
        return native.props()

    @app.post("/apply-template")
    async def apply_template(request: Request) -> dict[str, Any]:
        return native.apply_template(await _parse(request, ApplyTemplateRequest))  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What ``_Service._submit`` reads of a request: the sampler settings and log-probabilities."""

    params: SamplingParams
    n_logprobs: int | None
    lora: Any = None  # the request's "lora" field
    id_slot: int = -1  # the request's "id_slot" field
    speculative: Any = None  # its draft settings (engine_draft.SpecParams)

    def sampling_params(self) -> SamplingParams:
        return self.params


class NativeAPI:
    def __init__(self, svc: _Service) -> None:
        self.svc = svc
        self.model = svc.model
        self.tok = svc.model.tokenizer

    # ---- requests ----

    async def completion(self, request: Request) -> Response:
        body = _validated(NativeRequest, await _json_body(request))
        self.svc._generative_model(None)  # (llama-server's native endpoints ignore "model")
        prompts = []
        for p in prompt_items(body.prompt):
            try:
                prompts.append(tokenize_mixed(self.tok, p, add_special=True, special=True))
            except ValueError as e:
                raise APIError(400, str(e), param="prompt") from None
        return await self._run(body, prompts, request)

    async def infill(self, request: Request) -> Response:
        self.svc._generative_model(None)
        missing = missing_fim(self.tok)
        if missing:
            raise APIError(400, missing.strip(), param="model", code="not_supported")
        data = await _json_body(request)
        check_infill_body(data)
        body = _validated(InfillRequest, data)
        try:
            prompt = self.tok.tokenize(body.prompt, add_bos=False, special=True)
            extra = [(c.get("filename"), c["text"]) for c in body.input_extra]
            tokens = infill_prompt(self.tok, body.input_prefix, body.input_suffix, extra, prompt=prompt,
                                   n_batch=self.model._n_batch, n_ctx=self.svc.engine.slot_ctx,
                                   n_predict=LLAMA_SERVER_N_PREDICT, spm=self.model.spm_infill)
        except ValueError as e:
            raise APIError(400, str(e), param="input_prefix") from None
        return await self._run(body, [tokens], request)

    async def _run(self, body: NativeRequest, prompts: list[list[int]], request: Request) -> Response:
        engine = self.svc.engine
        if len(prompts) > MAX_PROMPTS:
            raise APIError(400, f"at most {MAX_PROMPTS} prompts per request (got {len(prompts)})",
                           param="prompt")
        if body.n_cmpl > engine.n_parallel:  # (llama-server's limit)
            raise APIError(400, f"n_cmpl must be at most the number of slots, {engine.n_parallel} (got "
                           f"{body.n_cmpl})", param="n_cmpl")
        n_vocab = self.model.n_vocab()
        try:
            settings = _Settings(body.sampling_params(self.tok, n_vocab, self.model.n_ctx()), body.n_logprobs,
                                 body.lora, body.id_slot, body.speculative(engine.spec))
        except ValueError as e:
            raise sampling_error(e) from None
        try:
            grammar = body.grammar_of()
        except (ValueError, _core.Error) as e:
            raise APIError(400, str(e), param="grammar" if body.grammar else "json_schema") from None
        limit = None if body.max_tokens is None else min(body.max_tokens, engine.slot_ctx)
        runs: list[_Run] = []
        try:
            for tokens in prompts:
                for k in range(body.n_cmpl):
                    seed = None if body.sampling_seed is None else body.sampling_seed + k
                    stream = self.svc._submit(tokens, settings, limit, body.stops(), "prompt",  # type: ignore[arg-type]
                                              explicit=False, seed=seed, generate=body.n_predict != 0,
                                              grammar=grammar, pin=k == 0)
                    runs.append(_Run(len(runs), stream, k == 0))
        except BaseException:
            _close(runs)
            raise
        if body.stream:
            return _native_sse(runs, self._events(runs, body))
        results = await _collect_all(runs, request, body)  # type: ignore[arg-type]
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
        finals = [self._final(r, chunks, body) for r, chunks in zip(runs, results, strict=True)]
        return JSONResponse(finals[0] if len(finals) == 1 else finals)

    # ---- answers ----

    async def _events(self, runs: Sequence[_Run], body: NativeRequest) -> AsyncIterator[dict[str, Any]]:
        chunks: dict[int, list[CompletionChunk]] = {r.index: [] for r in runs}
        async for r, c in _merged(runs):
            seen = chunks[r.index]
            seen.append(c)
            if c.text or c.tokens or c.logprobs:
                job = r.stream.job
                d: dict[str, Any] = {
                    "index": r.index, "content": c.text, "tokens": list(c.tokens), "stop": False,
                    "id_slot": job.slot, "tokens_predicted": sum(len(x.tokens) for x in seen),
                    "tokens_evaluated": len(job.prompt)}
                if body.n_probs and c.logprobs:
                    d["completion_probabilities"] = completion_probabilities(c.logprobs)
                yield d
            if c.finish_reason is not None:
                yield self._final(r, seen, body, stream=True)

    def _final(self, r: _Run, chunks: list[CompletionChunk], body: NativeRequest,
               stream: bool = False) -> dict[str, Any]:
        """llama-server's final result (in a stream: without the text and tokens already sent)."""
        job = r.stream.job
        text = job.text
        generated = [t for c in chunks for t in c.tokens]
        content = "".join(c.text for c in chunks)
        n_gen = len(generated)
        limited = text.stop_type == "limit" and body.n_predict != 0
        out: dict[str, Any] = {
            "index": r.index, "content": "" if stream else content,
            "tokens": generated if body.return_tokens and not stream else [], "id_slot": job.slot,
            "stop": True, "model": self.svc.alias, "tokens_predicted": n_gen,
            "tokens_evaluated": len(job.prompt),
            "generation_settings": body.settings(self.tok, self.model.n_vocab()),
            "prompt": self.tok.llama_detokenize(job.prompt, unparse_special=True).decode("utf-8", "replace"),
            "has_new_line": "\n" in content,
            "truncated": limited and (body.n_predict < 0 or n_gen < body.n_predict),
            "stop_type": text.stop_type, "stopping_word": text.stop_word, "tokens_cached": len(job.tokens),
            "timings": _timings(job, n_gen),
        }
        spec = job.spec or self.svc.engine.spec
        out["generation_settings"].update({"speculative.n_max": spec.n_max, "speculative.n_min": spec.n_min,
                                           "speculative.p_min": spec.p_min})
        if body.n_probs and not stream:
            entries = [e for c in chunks for e in c.logprobs]
            out["completion_probabilities"] = completion_probabilities(entries)
        return _only(out, body.response_fields)

    def props(self) -> dict[str, Any]:
        from splitllm import __version__

        params = NativeRequest().settings()
        for key in ("stop", "logit_bias", "grammar"):  # (llama-server's /props leaves these out)
            params.pop(key)
        tok = self.tok
        engine = self.svc.engine

        def text(t: int | None) -> str:
            return "" if t is None else tok.token_to_piece(t, special=True).decode("utf-8", errors="replace")

        return {
            "default_generation_settings": {"params": params, "n_ctx": engine.slot_ctx},
            "total_slots": engine.n_parallel, "model_alias": self.svc.alias,
            "model_path": self.model.model_path,
            "modalities": {"vision": False, "video": False, "audio": False},
            "endpoint_slots": self.svc.slots_endpoint, "endpoint_props": False, "endpoint_metrics": True,
            "chat_template": self.model._chat_template_source, "bos_token": text(tok.bos_id),
            "eos_token": text(tok.eos_id), "build_info": f"splitllm {__version__}", "is_sleeping": False,
        }

    def apply_template(self, body: ApplyTemplateRequest) -> dict[str, Any]:
        self.svc._generative_model(None)
        plan = _tools_of(body, False)
        try:
            variables = {**self.svc.template_kwargs, **template_variables(body.chat_template_kwargs)}
            messages = [m.as_dict() for m in body.messages]
            cont = self.svc.continuation(body)
            tools = plan.tools if plan else None
            tmpl = self.model.chat_template()
            if cont is not None:
                text = tmpl.render_continuation(messages[:-1], cont, tools=tools, **variables)
            else:
                text = tmpl.render(messages, add_generation_prompt=body.add_generation_prompt, tools=tools,
                                   **variables)
        except ValueError as e:
            raise APIError(400, str(e), param=getattr(e, "param", "messages")) from None
        return {"prompt": text}


def completion_probabilities(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """llama-server's ``completion_probabilities``: each generated token's id, text, bytes and
    log-probability, and its most likely alternatives (from the raw logits, as llama-server's
    default ``post_sampling_probs: false``)."""

    def item(token: int, piece: bytes, logprob: float | None) -> dict[str, Any]:
        text = piece[: utf8_complete_prefix(piece)].decode("utf-8", errors="replace")
        return {"id": token, "token": text, "bytes": list(piece), "logprob": logprob}

    return [{**item(e.token, e.piece, e.logprob), "top_logprobs": [item(*t) for t in e.top or ()]}
            for e in entries]


def _timings(job: Any, n_gen: int) -> dict[str, Any]:
    """llama-server's ``timings``: the prompt's tokens evaluated (cached ones apart) and the time
    until the first token was sampled; the generated tokens and the time from that first token to
    the last (per token and per second over the n - 1 passes it took, as llama-server counts)."""
    prompt_ms = (job.t_prompt - job.t_start) * 1e3 if job.t_prompt else 0.0
    gen_ms = (job.t_last - job.t_prompt) * 1e3 if n_gen and job.t_prompt else 0.0
    n_prompt, steps = job.n_prompt_evaluated, max(n_gen - 1, 0)
    return {"cache_n": job.n_cached, "prompt_n": n_prompt, "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / n_prompt if n_prompt else 0.0,
            "prompt_per_second": 1e3 / prompt_ms * n_prompt if prompt_ms > 0 else 0.0,
            "predicted_n": n_gen, "predicted_ms": gen_ms,
            "predicted_per_token_ms": gen_ms / steps if steps else 0.0,
            "predicted_per_second": 1e3 / gen_ms * steps if gen_ms > 0 else 0.0,
            # guesses checked and accepted (speculative decoding), where there were any
            **({"draft_n": job.n_draft, "draft_n_accepted": job.n_draft_accepted} if job.n_draft else {})}


def _only(out: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """``response_fields``: only these (a path "a/b" names a nested value, kept under that path)."""
    if not fields:
        return out
    picked: dict[str, Any] = {}
    for path in fields:
        cur: Any = out
        for key in path.split("/"):
            if not isinstance(cur, dict) or key not in cur:
                break
            cur = cur[key]
        else:
            picked[path] = cur
    return picked


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None


def _validated(cls: type[BaseModel], data: Any) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        message, param = validation_message(e.errors())
        raise APIError(400, message, param=param, code="invalid_value") from None


def _native_sse(runs: Sequence[_Run], events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """llama-server's stream: one ``data:`` line an event, no ``[DONE]``; a failure mid-stream is
    an ``error`` event. The jobs are cancelled when the stream ends early."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for d in events:
                yield f"data: {json.dumps(d, ensure_ascii=False)}\n\n"
        except Exception as e:
            status = 400 if isinstance(e, ValueError) else 500
            err = {"code": status, "message": f"generation failed: {e}",
                   "type": "invalid_request_error" if status == 400 else "server_error"}
            yield f"data: {json.dumps({'error': err})}\n\n"
        finally:
            _close(runs)

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
