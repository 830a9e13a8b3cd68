"""What every results file in bench/results/ says about where and when it was measured: the
machine, the commit (with "-dirty" when the tree has changes outside bench/results), the date
and the load average (other work on a shared machine shows in the figures)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """CPU model, hardware threads, RAM and OS."""
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu_model()}, {os.cpu_count()} hardware threads{mem}, {platform.system()} {platform.release()}"


def commit(repo: Path = REPO) -> str:
    """HEAD's short hash, with "-dirty" when files outside bench/results (untracked ones included)
    differ from it: the numbers then come from code that no commit holds; "unknown" without git."""
    git = ["git", "-C", str(repo)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        status = [*git, "status", "--porcelain", "--", ".", ":!bench/results"]
        dirty = subprocess.run(status, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def loadavg() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def header_lines(extra: dict[str, str] | None = None) -> list[str]:
    """Markdown bullet lines: machine, commit, date, load average (1/5/15 min), then extra."""
    lines = [f"- machine: {machine()}", f"- commit: {commit()}", f"- date: {now()}",
             f"- load average (1/5/15 min) at the start: {loadavg()}"]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items()]
    return lines
