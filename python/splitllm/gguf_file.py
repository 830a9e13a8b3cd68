"""Read GGUF files (versions 2 and 3) through the native, memory-mapped reader.

``GGUFFile(path)`` checks the whole file when it opens it: a bad file raises
:class:`splitllm.GGUFError` (a ``ValueError``) whose message names the file and what is wrong.
Tensor data is never copied: :meth:`GGUFFile.tensor` returns a read-only numpy view of the
mapping.

Conventions, chosen so that code written for ``gguf.GGUFReader`` carries over:

* ``GGUFFile.tensor(name)`` has the dtype and shape of ``GGUFReader``'s ``ReaderTensor.data``:
  F32, F16, F64, I8, I16, I32 and I64 tensors are typed arrays whose shape is ggml's ``ne``
  reversed (numpy row-major, the row is the last axis); every other type, BF16 included, is a
  ``uint8`` array of the same shape except that the last axis counts bytes.
* ``GGUFTensorInfo.shape`` is the element shape in that numpy order, e.g. ``(49152, 576)``
  for a token embedding with ``ne = [576, 49152]``. (``ReaderTensor.shape`` holds ggml's
  order, i.e. this tuple reversed.)
* ``GGUFTensorInfo.offset`` is the absolute byte offset in the file, like
  ``ReaderTensor.data_offset`` (for a split, in the file of its ``part``).
* A split (llama.cpp's ``NAME-00001-of-0000N.gguf`` ...) opens from its first part, which reads
  the others beside it: ``part_paths`` lists them, ``tensors`` holds the tensors of all of
  them, ``metadata`` is the first part's (where llama.cpp's gguf-split writes the model's).
* Metadata values are Python ``int``, ``float``, ``bool``, ``str`` and ``list`` (arrays of
  arrays as nested lists). Strings are decoded as UTF-8 with ``errors="surrogateescape"``, so
  ``s.encode("utf-8", "surrogateescape")`` gives back the exact bytes of the file.

Lifetime: each array returned by :meth:`GGUFFile.tensor` holds a reference to the mapping, so
arrays stay valid after :meth:`GGUFFile.close` or after the ``GGUFFile`` is garbage-collected;
the file is unmapped when the ``GGUFFile`` is closed and no array refers to it any more.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import numpy as np

from splitllm import _core

__all__ = ["GGUFFile", "GGUFTensorInfo"]


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where a tensor lies in the file and what it holds."""

    name: str
    type: str  # ggml type name as gguf-py spells it: "F32", "Q4_K", ...
    shape: tuple[int, ...]  # element shape, numpy order (ggml's ne reversed)
    offset: int  # absolute byte offset of the data in the file (of its part)
    nbytes: int
    part: int = 0  # the file of a split holding it (an index into GGUFFile.part_paths)


class GGUFFile:
    """A memory-mapped GGUF file: ``.metadata``, ``.tensors`` and ``.tensor(name)``.

    Usable as a context manager; ``close()`` drops this object's reference to the mapping
    (arrays from ``tensor()`` keep their own).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
        core = _core.GGUFFile(os.fsencode(self.path))
        self._core: _core.GGUFFile | None = core
        self.version: int = core.version
        self.alignment: int = core.alignment
        self.data_offset: int = core.data_offset
        self.part_paths: list[str] = [os.fsdecode(p) for p in core.part_paths]
        self.metadata: dict[str, Any] = core.metadata()
        self.tensors: Mapping[str, GGUFTensorInfo] = MappingProxyType(
            {info[0]: GGUFTensorInfo(*info) for info in core.tensor_infos()}
        )

    def tensor(self, name: str) -> np.ndarray:
        """Read-only numpy view of the tensor's data (see the module docstring for dtype/shape)."""
        if self._core is None:
            raise ValueError(f"{self.path}: GGUFFile is closed")
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        return self._core.tensor(name.encode("utf-8", "surrogateescape"))

    @property
    def closed(self) -> bool:
        return self._core is None

    def close(self) -> None:
        """Drops this object's reference to the mapping; ``metadata`` and ``tensors`` stay."""
        self._core = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._core is None else f"{len(self.tensors)} tensors"
        return f"GGUFFile({self.path!r}, version={self.version}, {state})"
