"""This process's memory from /proc/self/smaps (Linux): resident pages of one file's mappings and
anonymous memory, to check that weights are used in place in the mapped file."""

from __future__ import annotations

import os
from pathlib import Path


def _smaps() -> list[tuple[str, dict[str, int]]]:
    """Each mapping of this process: (its first line, its kB fields)."""
    out: list[tuple[str, dict[str, int]]] = []
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
            out.append((line, {}))
        elif out and len(head) == 3 and head[0].endswith(":") and head[2] == "kB":
            out[-1][1][head[0][:-1]] = int(head[1])
    return out


def file_mappings(path: str | os.PathLike[str]) -> dict[str, int]:
    """Resident kB of each of this process's mappings of ``path``, by address range."""
    name = os.path.realpath(path)
    return {line.split()[0]: f.get("Rss", 0) for line, f in _smaps() if line.endswith(name)}


def mapped_rss_kb(path: str | os.PathLike[str]) -> int:
    """Resident kB of this process's mappings of ``path``."""
    return sum(file_mappings(path).values())


def anonymous_kb() -> int:
    """Resident kB of anonymous memory (heap, malloc'd blocks, private copies) in this process."""
    return sum(f.get("Anonymous", 0) for _, f in _smaps())
