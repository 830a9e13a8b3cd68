"""llama-server's slot endpoints over the engine's sequence slots (:class:`splitllm.engine.BatchEngine`):

* ``GET /slots`` (unless the server runs with ``--no-slots``: 501): each slot's ``id``, ``n_ctx``,
  ``speculative`` (false), ``is_processing``, and for the job in it ``id_task``,
  ``n_prompt_tokens``, ``n_prompt_tokens_cache``, ``prompt`` (its text), ``next_token``
  (``has_next_token``, ``n_decoded``, ``n_remain``); and ``n_cached`` (the tokens whose K/V the
  slot holds; splitllm's). ``?fail_on_no_slot=1`` answers 503 when every slot is busy.
* ``POST /slots/{id}?action=save|restore|erase`` (with ``--slot-save-path DIR``; without, 501):
  ``save`` writes the tokens a slot holds and their K/V to ``DIR/filename``
  (:class:`splitllm.model_state.ModelState`'s file, not llama.cpp's), ``restore`` puts such a file
  back into a slot (any slot: a prompt that starts with its tokens then reuses them), ``erase``
  forgets a slot's cache. Each waits for the job running in that slot, if any, to end (as
  llama-server defers them), and answers llama-server's ``{id_slot, filename, n_saved, n_written,
  timings: {save_ms}}``, ``{..., n_restored, n_read, timings: {restore_ms}}``, ``{id_slot,
  n_erased}``. The file name must be a plain name (no folders). A slot keeps what its last job
  evaluated: the prompt and the generated tokens but the last.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from splitllm.api_native import _json_body
from splitllm.api_schema import APIError
from splitllm.engine import Job
from splitllm.model_state import ModelState

if TYPE_CHECKING:
    from splitllm.api import _Service

_FILENAME = re.compile(r"[A-Za-z0-9_.\-]{1,255}")


def add_slot_routes(app: FastAPI, svc: _Service, *, endpoint: bool, save_path: str | None) -> None:
    @app.get("/slots")
    async def slots(request: Request) -> list[dict[str, Any]]:
        if not endpoint:
            raise APIError(501, "This server does not support slots endpoint. Start it without --no-slots",
                           type="not_supported_error")
        out = [_slot_json(svc, s) for s in svc.engine.slots()]
        if request.query_params.get("fail_on_no_slot") and all(s["is_processing"] for s in out):
            raise APIError(503, "no slot available", type="unavailable_error")
        return out

    @app.post("/slots/{id_slot}")
    async def slot_action(id_slot: str, request: Request) -> dict[str, Any]:
        if save_path is None:
            raise APIError(501, "This server does not support slots action. Start it with `--slot-save-path`",
                           type="not_supported_error")
        index = _slot_index(svc, id_slot)
        action = request.query_params.get("action")
        if action not in ("save", "restore", "erase"):
            raise APIError(400, "Invalid action: expected save, restore or erase", param="action")
        if action == "erase":
            return {"id_slot": index, "n_erased": await asyncio.wrap_future(svc.engine.slot_erase(index))}
        body = await _json_body(request)
        name = body.get("filename") if isinstance(body, dict) else None
        if not isinstance(name, str) or not _FILENAME.fullmatch(name) or name in (".", ".."):
            raise APIError(400, "Invalid filename (a plain file name is expected)", param="filename")
        path = os.path.join(save_path, name)
        t0 = time.perf_counter()
        if action == "restore":
            return await _restore(svc, index, name, path, t0)
        tokens, data = await asyncio.wrap_future(svc.engine.slot_save(index))
        await asyncio.to_thread(svc.model.state_of(tokens, data).save, path)
        return {"id_slot": index, "filename": name, "n_saved": len(tokens), "n_written": len(data),
                "timings": {"save_ms": (time.perf_counter() - t0) * 1e3}}


def _slot_index(svc: _Service, id_slot: str) -> int:
    try:
        index = int(id_slot)
    except ValueError:
        raise APIError(400, "Invalid slot ID", param="id_slot") from None
    if not 0 <= index < svc.engine.n_parallel:
        last = svc.engine.n_parallel - 1
        raise APIError(400, f"Invalid slot ID: {index} (this server has slots 0..{last})", param="id_slot")
    return index


async def _restore(svc: _Service, index: int, name: str, path: str, t0: float) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise APIError(404, f"no saved slot named {name!r}", param="filename", code="not_found")
    try:
        state = await asyncio.to_thread(ModelState.load, path)
        svc.model.check_state(state)
        n = await asyncio.wrap_future(svc.engine.slot_restore(index, state.input_ids, state.llama_state))
    except (ValueError, RuntimeError) as e:  # (the core's errors are RuntimeErrors)
        raise APIError(400, f"cannot restore {name!r}: {e}", param="filename") from None
    return {"id_slot": index, "filename": name, "n_restored": n, "n_read": state.llama_state_size,
            "timings": {"restore_ms": (time.perf_counter() - t0) * 1e3}}


def _slot_json(svc: _Service, s: dict[str, Any]) -> dict[str, Any]:
    job: Job | None = s["job"]
    out: dict[str, Any] = {"id": s["id"], "n_ctx": svc.engine.slot_ctx, "speculative": False,
                           "is_processing": job is not None, "n_cached": len(s["cached"])}
    if job is not None:
        t = job.text
        remain = t.limit - t.n_done if isinstance(t.limit, int) else -1
        out.update({
            "id_task": id(job), "n_prompt_tokens": len(job.prompt), "n_prompt_tokens_cache": job.n_cached,
            "prompt": svc.model.tokenizer.detokenize(job.prompt, special=True).decode("utf-8", "replace"),
            "next_token": [{"has_next_token": not job.finished, "n_decoded": t.n_done, "n_remain": remain}]})
    return out
