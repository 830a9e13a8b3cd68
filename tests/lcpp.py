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
