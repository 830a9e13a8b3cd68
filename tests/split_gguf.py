"""Writes a GGUF file as a split in several files, laid out as llama.cpp's gguf-split writes one:
NAME-00001-of-0000N.gguf ..., each with split.no (UINT16), split.count (UINT16) and
split.tensors.count (INT32); the first part also holds the model's metadata. (The tests check
that llama.cpp loads what this writes.)"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

T = gguf.GGUFValueType
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def split_name(prefix: Path, no: int, count: int) -> Path:
    """llama.cpp's name of part ``no`` (0-based) of ``count``."""
    return prefix.parent / f"{prefix.name}-{no + 1:05d}-of-{count:05d}.gguf"


def write_split(src: Path, prefix: Path, n_parts: int, *, tensors_per_part: list[int] | None = None,
                extra: dict[int, dict[str, tuple[object, T]]] | None = None) -> list[Path]:
    """The parts of ``src`` as ``prefix``-0000i-of-0000N.gguf; the tensors in file order, spread
    evenly (or ``tensors_per_part``); ``extra[i]`` adds or overrides keys of part i (the split
    keys too). Returns the paths."""
    r = gguf.GGUFReader(src)
    tensors = list(r.tensors)
    if tensors_per_part is None:
        base, rest = divmod(len(tensors), n_parts)
        tensors_per_part = [base + (i < rest) for i in range(n_parts)]
    assert sum(tensors_per_part) == len(tensors)
    arch = str(r.fields["general.architecture"].contents())
    paths, start = [], 0
    for i in range(n_parts):
        path = split_name(prefix, i, n_parts)
        w = gguf.GGUFWriter(path, arch=arch)
        w.kv_data[0].clear()  # general.architecture comes back with the copied metadata (part 0)
        keys: dict[str, tuple[object, T, T | None]] = {}
        if i == 0:
            for field in r.fields.values():
                if field.name.startswith("GGUF.") or field.name in SPLIT_KEYS:
                    continue
                sub = field.types[-1] if field.types[0] == T.ARRAY else None
                keys[field.name] = (field.contents(), field.types[0], sub)
        keys["split.no"] = (i, T.UINT16, None)
        keys["split.count"] = (n_parts, T.UINT16, None)
        keys["split.tensors.count"] = (len(tensors), T.INT32, None)
        for k, (v, t) in (extra or {}).get(i, {}).items():
            keys[k] = (v, t, None)
        for k, (v, t, sub) in keys.items():
            w.add_key_value(k, v, t, sub_type=sub)
        part = tensors[start:start + tensors_per_part[i]]
        start += tensors_per_part[i]
        for t in part:
            data = np.ascontiguousarray(t.data)
            w.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in part:
            w.write_tensor_data(np.ascontiguousarray(t.data))
        w.close()
        paths.append(path)
    return paths
