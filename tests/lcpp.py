"""llama.cpp (through llama-cpp-python) as the reference of many tests, and llama.cpp's own
vocabulary files (fetched from the llama-cpp-python source release)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


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


def llama_cpp_greedy(
    path: str | os.PathLike[str], prompt: list[int], n: int, *, n_ctx: int = 64
) -> list[int]:
    """llama.cpp's first n greedy tokens after prompt (skips the test without llama-cpp-python)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(os.fspath(path), n_ctx=n_ctx, verbose=False, n_threads=2)
    try:
        out: list[int] = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            out.append(int(tok))
            if len(out) == n:
                return out
        return out
    finally:
        llm.close()


def check_routed_q8(ours: np.ndarray, ref: np.ndarray, theirs: np.ndarray) -> None:
    """Q8_0 logits of a tiny random mixture of experts, per token, against the reference's and
    llama.cpp's: both medians within 2.5e-2 of the largest reference logit, and at least 80% of
    the tokens within 3e-2 of llama.cpp's (the engines' 8-bit activations flip near ties of the
    routers at a few tokens)."""
    scale = np.abs(ref).max()
    vs_ref = np.abs(ours - ref).max(axis=-1) / scale
    vs_theirs = np.abs(ours - theirs).max(axis=-1) / scale
    assert np.median(vs_ref) < 2.5e-2 and np.median(vs_theirs) < 2.5e-2
    assert np.mean(vs_theirs < 3e-2) >= 0.8


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


def fetch_llama_cpp_vocab(target: Path, names: Sequence[str]) -> None:
    """Extracts ``names`` from the models folder of the llama-cpp-python source release into
    ``target``, in that order (the last one's presence means complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--quiet", "-d", tmp, LLAMA_CPP_SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
            raise RuntimeError(f"pip download failed: {' '.join(errors) or proc.stderr.strip()[-300:]}")
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            raise RuntimeError(f"pip download {LLAMA_CPP_SDIST} gave no source archive")
        wanted = {f"vendor/llama.cpp/models/{name}": name for name in names}
        found: set[str] = set()
        with tarfile.open(sdists[0]) as tar:
            for member in tar:
                rel = member.name.split("/", 1)[-1]
                if rel in wanted and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    (Path(tmp) / wanted[rel]).write_bytes(src.read())
                    found.add(rel)
        if found != set(wanted):
            raise RuntimeError(f"{sdists[0].name} lacks {sorted(set(wanted) - found)}")
        target.mkdir(exist_ok=True)
        for name in names:
            (Path(tmp) / name).replace(target / name)


def llama_cpp_vocab(name: str, extras: Sequence[str] = ()) -> Path:
    """llama.cpp's models/``name`` (and ``extras`` beside it) in splitllm's cache, fetched (those
    missing, in one download) from the llama-cpp-python source release; the test skips when they
    cannot be fetched."""
    from splitllm.assets import cache_dir

    target = cache_dir() / "llama.cpp-vocab"
    missing = [n for n in [*extras, name] if not (target / n).exists()]
    if missing:
        try:
            fetch_llama_cpp_vocab(target, missing)
        except (RuntimeError, OSError, subprocess.SubprocessError, tarfile.TarError) as e:
            detail = " ".join(str(e).split())[:300]
            pytest.skip(f"{name} not cached in {target} and {LLAMA_CPP_SDIST} could not be fetched: {detail}")
    return target / name
