"""llama.cpp (through llama-cpp-python) as the reference of many tests."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest


def llama_cpp_logits(
    path: str | os.PathLike[str], tokens: list[int], *, n_ctx: int = 64, **kw: Any
) -> np.ndarray:
    """llama.cpp's logits (float64, one row per token) for tokens at positions 0.., read through
    llama-cpp-python (skips the test without it); kw go to its Llama (lora_path, ...)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(os.fspath(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, **kw)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def llama_cpp_embeddings(
    path: str | os.PathLike[str], texts: list[list[int]], *, pooling: int, n_ctx: int = 64, **kw: Any
) -> list[np.ndarray]:
    """llama.cpp's embeddings (float64) of token lists read in one batch, each its own sequence:
    per text a (len, n_embd) array with pooling none, else the pooled (n_embd,) vector. (Read
    through llama-cpp-python's context directly: its ``embed`` tokenizes text and, with pooling
    none, reads every text after the first from the wrong offset.)"""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(os.fspath(path), embedding=True, pooling_type=pooling, n_ctx=n_ctx, n_batch=n_ctx,
                          n_ubatch=n_ctx, verbose=False, n_threads=2, **kw)
    try:
        n_embd = llm.n_embd()
        llm._batch.reset()
        for i, toks in enumerate(texts):
            llm._batch.add_sequence(toks, i, True)
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(llm._batch)
        if pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            total = sum(len(t) for t in texts)
            ptr = llama_cpp.llama_get_embeddings(llm._ctx.ctx)
            rows = np.ctypeslib.as_array(ptr, shape=(total * n_embd,)).reshape(total, n_embd)
            rows = rows.astype(np.float64)
            return np.split(rows, np.cumsum([len(t) for t in texts])[:-1])
        # a sequence's row: n_embd values, or a reranker's n_cls_out scores (rank pooling)
        width = llama_cpp.llama_model_n_cls_out(llm._model.model) if pooling == 4 else n_embd
        return [np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, i), shape=(width,))
                .astype(np.float64) for i in range(len(texts))]
    finally:
        llm.close()
