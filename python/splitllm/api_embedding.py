"""llama-server's native embeddings, ``POST /embedding`` (also ``/embeddings``, as llama-server
registers both for this form; OpenAI's is ``/v1/embeddings`` in :mod:`splitllm.api`).

The text is ``content`` (or ``input``), in the shapes llama-server's prompts take: a string, token
ids, a mix of both, a list of such prompts, or ``{"content": [{"type": "text", "text": ...}]}``
objects (text parts joined). Strings are tokenized with BOS and special tokens parsed. The answer
is llama-server's: a list with one ``{"index", "embedding"}`` per prompt, where ``embedding`` is a
list of vectors: one per token, as the model leaves them, with pooling none (the only embeddings
the OpenAI route cannot carry); else the one pooled vector, normalized by ``embd_normalize``
(llama-server's: -1 none, 0 largest magnitude to 32760 (the int16 range), 1 taxicab, 2 Euclidean
(default), p > 2 the p-norm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from splitllm.api import CLIENT_CLOSED
from splitllm.api_native import _json_body
from splitllm.api_schema import MAX_EMBED_INPUTS, APIError
from splitllm.infill import tokenize_mixed
from splitllm.model import LLAMA_POOLING_TYPE_NONE

if TYPE_CHECKING:
    from splitllm.api import _Service

EMBD_NORMALIZE = 2  # llama-server's default --embd-normalize (Euclidean)


def add_embedding_routes(app: FastAPI, svc: _Service) -> None:
    @app.post("/embedding")
    @app.post("/embeddings")
    async def embedding(request: Request) -> Response:
        return await native_embedding(svc, await _json_body(request), request)


async def native_embedding(svc: _Service, body: Any, request: Request) -> Response:
    if not isinstance(body, dict):
        raise APIError(400, "request body: a JSON object is expected")
    key = "input" if "input" in body else "content"
    if key not in body:
        raise APIError(400, '"input" or "content" must be provided', param="content")
    norm = body.get("embd_normalize", EMBD_NORMALIZE)
    if not isinstance(norm, int) or isinstance(norm, bool) or norm < -1:
        raise APIError(400, f"embd_normalize must be an integer, -1 or more (got {norm!r})",
                       param="embd_normalize")
    pooling = svc.embedding_pooling()
    tok = svc.model.tokenizer
    try:
        tokens = [tokenize_mixed(tok, p, add_special=True, special=True) for p in _prompts(body[key], key)]
    except ValueError as e:
        raise APIError(400, str(e), param=key) from None
    token_lists = svc.embedding_tokens(tokens, key)
    pooled = await svc.pooled_embeddings(token_lists, key, request, pooling, normalize=False)
    if pooled is None:
        return Response(status_code=CLIENT_CLOSED)
    out = []
    for index, vecs in pooled:
        if pooling != LLAMA_POOLING_TYPE_NONE:  # (llama-server normalizes pooled vectors only)
            vecs = normalized(vecs, norm)
        out.append({"index": index, "embedding": vecs.astype(np.float32).tolist()})
    return JSONResponse(out)


def normalized(x: np.ndarray, p: int) -> np.ndarray:
    """Each row divided by its norm: -1 none, 0 the largest magnitude over 32760, else the p-norm
    (a zero vector stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    if p == -1:
        return x
    if p == 0:
        scale = np.abs(x).max(axis=1, keepdims=True) / 32760.0
    else:
        scale = (np.abs(x) ** p).sum(axis=1, keepdims=True) ** (1.0 / p)
    return np.divide(x, scale, out=np.zeros_like(x), where=scale > 0)


def _prompts(value: Any, key: str) -> list[str | list[int | str]]:
    """The prompts of the request, as llama-server's tokenize_input_prompts reads them, with its
    ``{"content": [parts]}`` objects of text parts."""

    def one(p: Any) -> str | list[int | str]:
        if isinstance(p, str):
            return p
        if isinstance(p, list) and all(isinstance(x, str) or _is_token(x) for x in p):
            return p
        if isinstance(p, dict) and isinstance(p.get("content"), list):
            parts = p["content"]
            for part in parts:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"{key}: only text content parts are supported (got {kind!r}: this "
                                   "model takes no images or audio)", param=key)
            return "".join(part["text"] for part in parts)
        raise APIError(400, f'"{key}" elements must be a string, a list of tokens, a list of mixed strings '
                       "& tokens, or an object with a list of text parts as content", param=key)

    if isinstance(value, list) and not any(_is_token(x) for x in value):
        if not value:
            raise APIError(400, f'"{key}" must not be empty', param=key)
        if len(value) > MAX_EMBED_INPUTS:
            raise APIError(400, f"at most {MAX_EMBED_INPUTS} inputs per request (got {len(value)})",
                           param=key)
        return [one(p) for p in value]
    return [one(value)]


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
