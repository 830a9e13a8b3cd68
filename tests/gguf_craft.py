"""Byte-level GGUF builder for tests: valid files with exact control over every field, and the
corrupt variants the reader must refuse. Independent of splitllm and of gguf-py's writer."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

# Value types (GGUF spec numbering).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
# Tensor types (ggml numbering).
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8

_SCALAR_FMT = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<?",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}


def u32(x: int) -> bytes:
    return struct.pack("<I", x)


def u64(x: int) -> bytes:
    return struct.pack("<Q", x)


def gstr(s: str | bytes) -> bytes:
    """A GGUF string: u64 length then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def scalar(vtype: int, value: object) -> bytes:
    return struct.pack(_SCALAR_FMT[vtype], value)


def array(etype: int, payloads: Sequence[bytes]) -> bytes:
    """An array value body (without the leading ARRAY type): element type, count, elements."""
    return u32(etype) + u64(len(payloads)) + b"".join(payloads)


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_scalar(key: str, vtype: int, value: object) -> bytes:
    return kv(key, vtype, scalar(vtype, value))


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, STRING, gstr(value))


def tensor_info(
    name: str | bytes, ne: Sequence[int], ttype: int, offset: int, *, n_dims: int | None = None
) -> bytes:
    """Tensor info with dims in ggml order (ne[0] is the row length)."""
    nd = len(ne) if n_dims is None else n_dims
    return gstr(name) + u32(nd) + b"".join(u64(d) for d in ne) + u32(ttype) + u64(offset)


@dataclass
class Gguf:
    """The parts of a GGUF file; ``build()`` lays them out and records the section offsets."""

    kvs: list[bytes] = field(default_factory=list)
    infos: list[bytes] = field(default_factory=list)
    data: bytes = b""
    magic: bytes = b"GGUF"
    version: int = 3
    n_tensors: int | None = None
    n_kv: int | None = None
    alignment: int = 32
    boundaries: dict[str, int] = field(default_factory=dict)

    def build(self) -> bytes:
        n_t = len(self.infos) if self.n_tensors is None else self.n_tensors
        n_kv = len(self.kvs) if self.n_kv is None else self.n_kv
        out = bytearray(self.magic)
        b = self.boundaries
        b["magic"] = len(out)
        out += u32(self.version)
        b["version"] = len(out)
        out += u64(n_t)
        b["tensor_count"] = len(out)
        out += u64(n_kv)
        b["kv_count"] = len(out)
        for i, item in enumerate(self.kvs):
            out += item
            b[f"kv{i}"] = len(out)
        for i, item in enumerate(self.infos):
            out += item
            b[f"info{i}"] = len(out)
        out += bytes(-len(out) % self.alignment)
        b["data"] = len(out)
        out += self.data
        return bytes(out)


def base_file() -> Gguf:
    """A small valid file: four kinds of metadata and two tensors (F32 2x4 and Q8_0 2x32)."""
    f32 = struct.pack("<8f", *range(8))
    q8 = bytes(range(68))
    return Gguf(
        kvs=[
            kv_str("general.architecture", "llama"),
            kv_scalar("general.alignment", UINT32, 32),
            kv("tokenizer.ggml.tokens", ARRAY, array(STRING, [gstr("a"), gstr("bc")])),
            kv("nested", ARRAY, array(ARRAY, [array(INT32, [scalar(INT32, 1)]), array(UINT8, [])])),
        ],
        infos=[
            tensor_info("a.weight", [4, 2], F32, 0),
            tensor_info("b.weight", [32, 2], Q8_0, 32),
        ],
        data=f32 + q8,
    )
