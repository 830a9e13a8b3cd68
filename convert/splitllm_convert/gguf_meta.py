"""GGUF metadata as records of bytes: read from a file as they are, written back as ggml writes them.

The quantizer copies every key-value pair of its input. Keeping each pair as the bytes that encode
it (key, value type, value) copies any type, array or string exactly, without decoding 150,000
token strings into Python and encoding them again. Booleans are the one exception: ggml reads any
non-zero byte as true and writes 1, so they are normalised the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# GGUF value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR_SIZE = {UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, UINT32: 4, INT32: 4, FLOAT32: 4, BOOL: 1,
                UINT64: 8, INT64: 8, FLOAT64: 8}  # fmt: skip

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # what ggml writes, whatever the input's version


@dataclass(frozen=True)
class KV:
    """One key-value pair: its key and the bytes that encode the whole pair."""

    key: str
    record: bytes


class MetaError(ValueError):
    """Metadata that ggml's reader refuses (the message names the file and the key)."""


def _bool_bytes(raw: bytes) -> bytes:
    return (np.frombuffer(raw, dtype=np.uint8) != 0).astype(np.uint8).tobytes()


def read_kvs(header: bytes, where: str) -> list[KV]:
    """The key-value pairs of a GGUF file whose first bytes (at least up to the tensor infos) are
    ``header``, in file order. ``where`` names the file in errors."""
    try:
        n_kv = struct.unpack_from("<Q", header, 16)[0]
        pos = 24
        out: list[KV] = []
        for _ in range(n_kv):
            start = pos
            (klen,) = struct.unpack_from("<Q", header, pos)
            key = header[pos + 8 : pos + 8 + klen].decode("utf-8", "surrogateescape")
            pos += 8 + klen
            (vtype,) = struct.unpack_from("<I", header, pos)
            pos += 4
            parts = [header[start:pos]]
            if vtype == ARRAY:
                etype, n = struct.unpack_from("<IQ", header, pos)
                pos += 12
                if etype == STRING:
                    body = pos
                    for _ in range(n):
                        pos += 8 + struct.unpack_from("<Q", header, pos)[0]
                    if pos > len(header):
                        raise struct.error
                    parts.append(header[body - 12 : pos])
                elif etype in _SCALAR_SIZE:
                    size = n * _SCALAR_SIZE[etype]
                    if pos + size > len(header):
                        raise struct.error
                    raw = header[pos : pos + size]
                    parts.append(header[pos - 12 : pos] + (_bool_bytes(raw) if etype == BOOL else raw))
                    pos += size
                else:  # ggml has no arrays of arrays
                    raise MetaError(f"{where}: metadata key {key!r}: arrays of type {etype} are not "
                                    "supported")
            elif vtype == STRING:
                (slen,) = struct.unpack_from("<Q", header, pos)
                if pos + 8 + slen > len(header):
                    raise struct.error
                parts.append(header[pos : pos + 8 + slen])
                pos += 8 + slen
            elif vtype in _SCALAR_SIZE:
                raw = header[pos : pos + _SCALAR_SIZE[vtype]]
                if len(raw) < _SCALAR_SIZE[vtype]:
                    raise struct.error
                parts.append(_bool_bytes(raw) if vtype == BOOL else raw)
                pos += len(raw)
            else:
                raise MetaError(f"{where}: metadata key {key!r} has invalid GGUF type {vtype}")
            out.append(KV(key, b"".join(parts)))
        return out
    except struct.error:
        raise MetaError(f"{where}: the metadata runs past the end of the header") from None


def _gstr(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def kv_u32(key: str, value: int) -> KV:
    return KV(key, _gstr(key) + struct.pack("<II", UINT32, value & 0xFFFFFFFF))


def kv_f32(key: str, value: float) -> KV:
    # As llama.cpp's (float) cast: out-of-range values become +-inf (struct.pack would raise)
    with np.errstate(over="ignore"):
        f = np.float32(value)
    return KV(key, _gstr(key) + struct.pack("<I", FLOAT32) + f.tobytes())


def kv_bool(key: str, value: bool) -> KV:
    return KV(key, _gstr(key) + struct.pack("<IB", BOOL, 1 if value else 0))


def kv_str(key: str, value: str) -> KV:
    return KV(key, _gstr(key) + struct.pack("<I", STRING) + _gstr(value))


def set_kv(kvs: list[KV], kv: KV) -> None:
    """gguf_set_val_*: the key is removed where it is and appended at the end."""
    remove_kv(kvs, kv.key)
    kvs.append(kv)


def remove_kv(kvs: list[KV], key: str) -> None:
    kvs[:] = [kv for kv in kvs if kv.key != key]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor info record: name, shape in ggml order (``ne``), ggml type id, offset in the data."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int


def pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def header_bytes(
    kvs: Sequence[KV], infos: Sequence[TensorInfo], n_dims: Sequence[int], alignment: int
) -> bytes:
    """Header, key-value pairs and tensor infos, padded with zeros to ``alignment`` (gguf_write_out
    with only_meta); ``n_dims[i]`` dimensions of tensor i are written (ggml_n_dims)."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(infos), len(kvs))]
    parts += [kv.record for kv in kvs]
    for info, nd in zip(infos, n_dims, strict=True):
        parts.append(_gstr(info.name) + struct.pack(f"<I{nd}q", nd, *info.ne[:nd]))
        parts.append(struct.pack("<iQ", info.type_id, info.offset))
    meta = b"".join(parts)
    return meta + bytes(pad(len(meta), alignment) - len(meta))
