"""The server's error answers (OpenAI's shape, see :mod:`splitllm.api`) and its API key check."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from splitllm.api_schema import APIError, error_body

PUBLIC_PATHS = ("/health", "/v1/health")  # answered without the API key (as llama-server)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(error_body(str(e.detail), type=kind, code=code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {e}", type="server_error"), status_code=500)


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """The first validation error as a sentence, and the top-level field it is about."""
    if not errors:
        return "invalid request", None
    err = errors[0]
    if err.get("type") == "json_invalid":
        detail = err.get("ctx", {}).get("error", "")
        return "the request body is not valid JSON" + (f" ({detail})" if detail else ""), None
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if not loc:
        return f"request body: {err.get('msg', 'invalid')} (a JSON object is expected)", None
    # The path to the value, without pydantic's names of union members ('str', 'list[int]', ...).
    where = loc[0] + "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc[1:]
                             if x.isdigit() or (x.isidentifier() and x not in _TYPE_TAGS))
    return f"invalid value for '{where}': {err.get('msg', 'invalid')}", loc[0]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "ContentPart", "StreamOptions"}


class APIKeyCheck:
    """ASGI middleware: requests but ``/health`` must carry ``Authorization: Bearer KEY`` (before the body
    is read, so a request without the key gets 401 whatever its body)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            auth = dict(scope["headers"]).get(b"authorization", b"")
            token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                message = "Incorrect API key provided" if token else "Missing API key (Bearer token)"
                resp = JSONResponse(error_body(message, code="invalid_api_key"), status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)

