"""A Hugging Face model directory: config.json and lazily read safetensors weights.

The safetensors header is parsed here rather than through ``safetensors.safe_open``: numpy has no
bfloat16, and reading each tensor's bytes straight from its offsets keeps memory at one tensor.
Every length and offset is checked against the file; errors name the file and the tensor.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitllm_convert.errors import ConvertError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER = 100 << 20  # a header larger than this is a corrupt file, not a model

# safetensors dtype -> (numpy dtype of the stored bytes, bytes per value)
_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened to float32 on read
}
# dtypes read as they are stored (MXFP4 experts' packed codes and exponents), never as floats
_RAW_DTYPES: dict[str, np.dtype[Any]] = {"U8": np.dtype("u1")}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie: file, dtype name, shape (row-major, as in PyTorch), byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a clear error when it is missing or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise ConvertError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_header(path: Path) -> list[TensorEntry]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConvertError(f"{path}: too short for a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n == 0 or n > MAX_HEADER or 8 + n > size:
                raise ConvertError(f"{path}: header length {n} does not fit the file ({size} bytes)")
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: safetensors header is not a JSON object")
    data_start = 8 + n
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries.append(_entry(path, name, info, data_start, size))
    return entries


def _entry(path: Path, name: str, info: Any, data_start: int, size: int) -> TensorEntry:
    try:
        dtype = str(info["dtype"])
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ConvertError(f"{path}: tensor {name!r} has a malformed header entry: {info!r}") from None
    if any(d < 0 for d in shape) or not 0 <= begin <= end or data_start + end > size:
        raise ConvertError(
            f"{path}: tensor {name!r} has byte range [{begin}, {end}) outside the file's data "
            f"({size - data_start} bytes) or a negative dimension {shape}"
        )
    entry = TensorEntry(name, path, dtype, shape, data_start + begin, end - begin)
    known = _DTYPES.get(dtype, _RAW_DTYPES.get(dtype))
    if known is not None and entry.n_elements * known.itemsize != entry.nbytes:
        raise ConvertError(
            f"{path}: tensor {name!r} holds {entry.nbytes} bytes, but shape {list(shape)} of {dtype} "
            f"needs {entry.n_elements * known.itemsize}"
        )
    return entry


def file_tensors(path: Path) -> list[TensorEntry]:
    """The tensors of one safetensors file, in its header's order (a sentence-transformers module's)."""
    return _read_header(path)


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of the model: the shards the index lists, or model.safetensors."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConvertError(f"{index}: missing or empty 'weight_map'")
        files = sorted({str(v) for v in weight_map.values()})
        missing = [f for f in files if not (model_dir / f).is_file()]
        if missing:
            raise ConvertError(f"{index}: lists weight files that are missing from {model_dir}: {missing}")
        return [model_dir / f for f in files]
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    shards = sorted(model_dir.glob("model-*-of-*.safetensors"))
    if shards:
        raise ConvertError(f"{model_dir}: sharded weights {shards[0].name}... but no {INDEX_FILE}")
    raise ConvertError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors weights are read)")


def index_tensors(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of the model by Hugging Face name, checked against the shard index if there is one."""
    files = weight_files(model_dir)
    tensors: dict[str, TensorEntry] = {}
    for path in files:
        for entry in _read_header(path):
            if entry.name in tensors:
                raise ConvertError(
                    f"tensor {entry.name!r} appears in both {tensors[entry.name].file} and {path}"
                )
            tensors[entry.name] = entry
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = read_json(index)["weight_map"]
        for name, fname in weight_map.items():
            if name not in tensors:
                raise ConvertError(f"{index}: tensor {name!r} should be in {fname}, but that file lacks it")
            if tensors[name].file.name != fname:
                raise ConvertError(
                    f"{index}: tensor {name!r} should be in {fname}, found in {tensors[name].file}"
                )
    return tensors


def read_f32(entry: TensorEntry, *, chunk: int = 1 << 22) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The tensor as float32 in its own shape.

    F16 and BF16 are read ``chunk`` values at a time and widened into the float32 array, so memory
    holds the float32 tensor and one chunk, never a second full copy.
    """
    stored = _DTYPES.get(entry.dtype)
    if stored is None:
        raise ConvertError(
            f"{entry.file}: tensor {entry.name!r} has dtype {entry.dtype}; "
            "the converter reads F32, F16 and BF16"
        )
    n = entry.n_elements
    out = np.empty(n, dtype=np.float32)
    with open(entry.file, "rb") as f:
        f.seek(entry.begin)
        if entry.dtype == "F32":
            _read_exact(f, out, entry)
            return out.reshape(entry.shape)
        buf = np.empty(min(chunk, n), dtype=stored)
        for start in range(0, n, chunk):
            part = buf[: min(chunk, n - start)]
            _read_exact(f, part, entry)
            if entry.dtype == "F16":
                out[start : start + part.size] = part
            else:  # BF16: the top half of a float32
                bits = out[start : start + part.size].view(np.uint32)
                bits[:] = part
                bits <<= 16
    return out.reshape(entry.shape)


def read_raw(entry: TensorEntry) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A U8 tensor as stored, in its own shape (the blocks and scales of MXFP4 experts)."""
    if entry.dtype not in _RAW_DTYPES:
        raise ConvertError(
            f"{entry.file}: tensor {entry.name!r} has dtype {entry.dtype}; packed MXFP4 blocks and "
            "scales are U8"
        )
    out = np.empty(entry.shape, dtype=_RAW_DTYPES[entry.dtype])
    with open(entry.file, "rb") as f:
        f.seek(entry.begin)
        _read_exact(f, out, entry)
    return out


def _read_exact(f: Any, arr: np.ndarray[Any, Any], entry: TensorEntry) -> None:
    want = arr.nbytes
    if f.readinto(memoryview(arr).cast("B")) != want:
        raise ConvertError(f"{entry.file}: tensor {entry.name!r} is truncated")


def check_finite(x: np.ndarray[Any, Any], entry: TensorEntry, *, chunk: int = 1 << 22) -> None:
    """Raise naming the tensor, file and first position of a NaN or infinity, scanning in chunks."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        ok = np.isfinite(part)
        if not ok.all():
            i = start + int(np.argmin(ok))
            pos = np.unravel_index(i, entry.shape) if entry.shape else ()
            raise ConvertError(
                f"{entry.file}: tensor {entry.name!r} has a non-finite value ({flat[i]}) at index "
                f"{tuple(int(p) for p in pos)}"
            )
