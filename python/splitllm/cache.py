"""Prompt caches for :meth:`splitllm.Model.set_cache` (llama-cpp-python's ``LlamaRAMCache`` and
``LlamaDiskCache``): saved model states (:class:`~splitllm.model_state.ModelState`) keyed by their
tokens. Looking up a prompt gives the state whose tokens share the longest prefix with it
(KeyError when none shares any); a completion then starts from that state when it holds more of
the prompt than the KV cache does, and stores its own state when it ends.

Both keep at most ``capacity_bytes`` of K/V data, dropping the least recently used states first.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from splitllm.model_state import ModelState

__all__ = ["BaseCache", "DiskCache", "RAMCache", "common_prefix"]

Key = tuple[int, ...]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share (llama-cpp-python's longest_token_prefix)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BaseCache:
    """The interface a model's prompt cache has (llama-cpp-python's ``BaseLlamaCache``)."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be a non-negative integer (got {capacity_bytes!r})")
        self.capacity_bytes = capacity_bytes

    def _keys(self) -> Sequence[Key]:
        raise NotImplementedError

    @property
    def cache_size(self) -> int:
        """Bytes of K/V held."""
        raise NotImplementedError

    def _find_longest_prefix_key(self, key: Key) -> Key | None:
        best, best_n = None, 0
        for k in self._keys():
            n = common_prefix(k, key)
            if n > best_n:
                best, best_n = k, n
        return best

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_longest_prefix_key(tuple(int(t) for t in key)) is not None

    def __len__(self) -> int:
        return len(self._keys())

    def __bool__(self) -> bool:  # (an empty cache is still a cache: Model checks ``if cache``)
        return True


class RAMCache(BaseCache):
    """States kept in memory."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_state: OrderedDict[Key, ModelState] = OrderedDict()

    def _keys(self) -> Sequence[Key]:
        return list(self.cache_state)

    @property
    def cache_size(self) -> int:
        return sum(s.llama_state_size for s in self.cache_state.values())

    def __getitem__(self, key: Sequence[int]) -> ModelState:
        k = self._find_longest_prefix_key(tuple(int(t) for t in key))
        if k is None:
            raise KeyError("no cached state shares a prefix with these tokens")
        self.cache_state.move_to_end(k)
        return self.cache_state[k]

    def __setitem__(self, key: Sequence[int], value: ModelState) -> None:
        k = tuple(int(t) for t in key)
        self.cache_state.pop(k, None)
        self.cache_state[k] = value
        while self.cache_state and self.cache_size > self.capacity_bytes:
            self.cache_state.popitem(last=False)


class DiskCache(BaseCache):
    """States kept as files in ``cache_dir`` (one ``.npz`` each, :meth:`ModelState.save`'s form,
    named by a hash of their tokens); the tokens of every file are read once when the cache opens.
    Recency is the files' modification time."""

    def __init__(self, cache_dir: str | os.PathLike[str] = ".cache/splitllm_cache",
                 capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[Key, Path] = {}
        for f in self.cache_dir.glob("*.npz"):
            try:
                with np.load(f, allow_pickle=False) as z:
                    self._index[tuple(int(t) for t in z["input_ids"])] = f
            except (OSError, KeyError, ValueError):
                continue  # (not one of ours, or half written)

    def _keys(self) -> Sequence[Key]:
        return list(self._index)

    def _path(self, key: Key) -> Path:
        digest = hashlib.sha256(np.asarray(key, dtype=np.int32).tobytes()).hexdigest()[:32]
        return self.cache_dir / f"{digest}.npz"

    @property
    def cache_size(self) -> int:
        return sum(p.stat().st_size for p in self._index.values() if p.exists())

    def __getitem__(self, key: Sequence[int]) -> ModelState:
        k = self._find_longest_prefix_key(tuple(int(t) for t in key))
        if k is None:
            raise KeyError("no cached state shares a prefix with these tokens")
        path = self._index[k]
        state = ModelState.load(path)
        os.utime(path)
        return state

    def __setitem__(self, key: Sequence[int], value: ModelState) -> None:
        k = tuple(int(t) for t in key)
        path = self._path(k)
        value.save(path)
        self._index[k] = path
        while len(self._index) > 1 and self.cache_size > self.capacity_bytes:
            oldest = min(self._index, key=lambda q: self._index[q].stat().st_mtime_ns)
            self._index.pop(oldest).unlink(missing_ok=True)
