"""bench/benchinfo.py, the header of every results file: the commit measured, marked when the tree
is dirty."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "benchinfo.py"

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not BENCH.is_file(), reason="needs git and the source tree's bench/"
)


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchinfo", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    out = subprocess.run(["git", "-C", str(repo), *ident, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_commit_marks_changes_outside_bench_results(tmp_path: Path) -> None:
    commit = _bench().commit
    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "bench" / "results" / "convert.md").write_text("old\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert commit(repo) == head
    # results being written (changed or new) are not a change to the code measured
    (repo / "bench" / "results" / "convert.md").write_text("new\n")
    (repo / "bench" / "results" / "more.md").write_text("new\n")
    assert commit(repo) == head
    (repo / "code.py").write_text("x = 2\n")
    assert commit(repo) == f"{head}-dirty"
    (repo / "code.py").write_text("x = 1\n")
    (repo / "new.py").write_text("y = 1\n")  # untracked code counts too
    assert commit(repo) == f"{head}-dirty"
    assert commit(tmp_path / "not-a-repo") == "unknown"
