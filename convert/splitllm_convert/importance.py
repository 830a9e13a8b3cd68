"""Importance matrices for the quantizer, as llama-quantize uses them.

llama-quantize (tools/quantize/quantize.cpp) loads the file (``splitllm.imatrix``: GGUF or legacy
``.dat``, each entry the mean of the squared activations of one matrix's input columns, one row per
expert), drops the entries ``--exclude-weights`` names and keeps those ``--include-weights`` names
(substrings of the entry names; the two together are refused), and, if any entry is left, passes
them to llama_model_quantize and records the file in four metadata keys. The quantizer
(src/llama-quant.cpp) then refuses non-finite values, looks each quantized tensor's entry up under
its name before ``--prune-layers`` renamed it, and uses row ``e`` of it for expert ``e`` of a 3-D
tensor. An entry whose size is not the tensor's (columns times experts) is an error, except for
the token embeddings (whose entry llama-imatrix never fills: the matrix is skipped for them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# the metadata keys llama-quantize writes (its LLM_KV_QUANTIZE_IMATRIX_*)
KEY_FILE = "quantize.imatrix.file"
KEY_DATASET = "quantize.imatrix.dataset"
KEY_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_N_CHUNKS = "quantize.imatrix.chunks_count"
_STR_MAX = 127  # llama_model_kv_override.val_str holds 127 bytes and a NUL


class ImatrixError(ValueError):
    """An importance matrix, or an option selecting its entries, that cannot be used."""


@dataclass(frozen=True)
class Importance:
    """The entries passed to the quantizer: name -> float32 values (experts' rows one after the
    other), with what the metadata records."""

    entries: Mapping[str, np.ndarray]
    file: str | None = None  # as given on the command line
    dataset: str | None = None  # the first dataset the file names
    chunk_count: int = 0  # chunks the matrix was computed on (0: not known)

    def check_finite(self) -> None:
        """llama.cpp refuses a matrix with a NaN or an infinity; splitllm's quantizers also refuse
        negative weights (llama-imatrix never writes any: they are means of squares)."""
        for name, values in self.entries.items():
            bad = values[~np.isfinite(values)]
            if bad.size:
                raise ImatrixError(f"{self._where()}: entry {name!r} contains non-finite value {bad[0]}")
            if (values < 0).any():
                raise ImatrixError(f"{self._where()}: entry {name!r} has negative weights (means of squared "
                                   "activations are never negative)")  # fmt: skip

    def _where(self) -> str:
        return f"importance matrix {self.file}" if self.file else "importance matrix"

    def override_kvs(self) -> list[tuple[str, int | str]]:
        """The key-values llama-quantize adds after the user's --override-kv ones, in its order."""
        kvs: list[tuple[str, int | str]] = []
        if self.file is not None:
            kvs.append((KEY_FILE, _truncate(self.file)))
        if self.dataset is not None:
            kvs.append((KEY_DATASET, _truncate(self.dataset)))
        kvs.append((KEY_N_ENTRIES, len(self.entries)))
        if self.chunk_count > 0:
            kvs.append((KEY_N_CHUNKS, self.chunk_count))
        return kvs

    def rows_for(self, name: str, ne: Sequence[int], lookup_name: str | None = None) -> np.ndarray | None:
        """Tensor ``name``'s (ggml shape ``ne``) weights as (experts, columns), or None when the
        matrix has no entry for it (``lookup_name``: the entry's name, if it differs)."""
        values = self.entries.get(lookup_name or name)
        if values is None:
            return None
        n_mat = ne[2] if len(ne) > 2 else 1
        if values.size != ne[0] * n_mat:
            if name in ("token_embd.weight", "per_layer_token_embd.weight"):
                return None
            raise ImatrixError(f"{self._where()}: entry {lookup_name or name!r} has {values.size} values, "
                               f"tensor {name!r} needs {ne[0] * n_mat} ({ne[0]} columns x {n_mat} "
                               "matrices): the matrix was computed for another model")  # fmt: skip
        return values.reshape(n_mat, ne[0])


def _truncate(text: str) -> str:
    raw = text.encode("utf-8", "surrogateescape")[:_STR_MAX]
    return raw.decode("utf-8", "surrogateescape")


def select(entries: Mapping[str, np.ndarray], include: Sequence[str] = (),
           exclude: Sequence[str] = ()) -> dict[str, np.ndarray]:  # fmt: skip
    """llama-quantize's prepare_imatrix: drop the entries whose name contains an ``exclude``
    string, or keep only those containing an ``include`` string."""
    if include and exclude:
        raise ImatrixError("--include-weights and --exclude-weights cannot be used together")
    if exclude:
        return {k: v for k, v in entries.items() if not any(x in k for x in exclude)}
    if include:
        return {k: v for k, v in entries.items() if any(x in k for x in include)}
    return dict(entries)


def load(path: str | os.PathLike[str], include: Sequence[str] = (),
         exclude: Sequence[str] = ()) -> Importance | None:  # fmt: skip
    """The file's entries, selected; None when none is left (llama-quantize then passes none)."""
    from splitllm.imatrix import Imatrix

    if include and exclude:
        raise ImatrixError("--include-weights and --exclude-weights cannot be used together")
    where = os.fspath(path)
    try:
        im = Imatrix.load(path)
    except (OSError, ValueError) as e:
        raise ImatrixError(f"{where}: cannot load the importance matrix ({e})") from None
    if not im.legacy and not im.has_metadata:  # llama-quantize refuses these too
        raise ImatrixError(f"{where}: missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, "
                           "imatrix.chunk_size)")  # fmt: skip
    entries = {name: im.weights(name).reshape(-1) for name in im.entries}
    chosen = select(entries, include, exclude)
    if not chosen:
        return None
    return Importance(chosen, where, im.datasets[0] if im.datasets else None, im.chunk_count)


def from_mapping(entries: Mapping[str, np.ndarray] | None) -> Importance | None:
    """A matrix given as name -> values (no file; the metadata gets only the entry count)."""
    if not entries:
        return None
    flat = {k: np.ascontiguousarray(v, dtype=np.float32).reshape(-1) for k, v in entries.items()}
    return Importance(flat)


def expert_slices(n_rows: int, rows_per_expert: int, step: int) -> list[tuple[int, int, int]]:
    """(first row, end row, expert) for slabs of at most ``step`` rows that never cross an expert's
    rows, as llama.cpp's quantizer cuts them so each slab takes one expert's weights."""
    out = []
    for e in range(math.ceil(n_rows / rows_per_expert) if rows_per_expert else 0):
        lo, hi = e * rows_per_expert, min(n_rows, (e + 1) * rows_per_expert)
        out += [(r, min(hi, r + step), e) for r in range(lo, hi, step)]
    return out
