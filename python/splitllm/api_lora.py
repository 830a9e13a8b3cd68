"""llama-server's LoRA endpoints and request field, over the engine's adapter scales:

* ``GET /lora-adapters``: ``[{"id", "path", "scale"}]``, the scales a request without its own
  runs under (``--lora-init-without-apply``: all 0 at start).
* ``POST /lora-adapters``: ``[{"id", "scale"}, ...]`` sets those scales (adapters left out: 0)
  for the requests that start from then on; answers ``{"success": true}``.
* ``"lora": [{"id", "scale"}, ...]`` on ``/completion``, ``/v1/completions`` and
  ``/v1/chat/completions``: the scales of that request only (adapters left out: 0).

A bad id or scale is a 400 naming it (llama-server ignores an unknown id; a typo would silently
turn an adapter off).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from splitllm.api_schema import APIError

if TYPE_CHECKING:
    from splitllm.api import _Service
    from splitllm.model import Model


def lora_scales_of(model: Model, entries: Any, param: str = "lora") -> list[float]:
    """Every adapter's scale from llama-server's list of ``{"id", "scale"}`` (missing: 0)."""
    n = len(model.lora_adapters)
    if not isinstance(entries, list):
        raise APIError(
            400, f"'{param}' must be an array of objects with 'id' and 'scale' fields", param=param
        )
    scales = [0.0] * n
    for k, e in enumerate(entries):
        where = f"{param}[{k}]"
        if not isinstance(e, dict) or "id" not in e:
            raise APIError(400, f"{where} must be an object with 'id' and 'scale' fields", param=param)
        i, s = e["id"], e.get("scale", 0.0)  # (llama-server's default scale)
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            ids = f"ids 0..{n - 1}" if n else "no adapter is loaded"
            raise APIError(400, f"{where}: no LoRA adapter with id {i!r} ({ids})", param=param)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise APIError(400, f"{where}: scale must be a finite number (got {s!r})", param=param)
        scales[i] = float(s)
    return scales


def add_lora_routes(app: FastAPI, svc: _Service) -> None:
    engine, model = svc.engine, svc.model

    @app.get("/lora-adapters")
    async def get_lora_adapters() -> list[dict[str, Any]]:
        paths = [p for p, _ in model.lora_adapters]
        return [
            {"id": i, "path": p, "scale": s}
            for i, (p, s) in enumerate(zip(paths, engine.lora_scales, strict=True))
        ]

    @app.post("/lora-adapters")
    async def post_lora_adapters(request: Request) -> dict[str, Any]:
        from splitllm.api_native import _json_body

        body = await _json_body(request)
        if not isinstance(body, list):
            raise APIError(400, "Request body must be an array")
        engine.set_lora_scales(lora_scales_of(model, body, param="body"))
        return {"success": True}
