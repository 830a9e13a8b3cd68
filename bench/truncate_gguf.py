"""Copies a llama-architecture GGUF keeping only its first N transformer blocks.

A real model cut short still has real weights (their scales, outliers and mixes), at a size
that can travel to a GPU machine: SmolLM2-135M (98 MB) with 12 of its 30 blocks is 57 MB.

    python3 bench/truncate_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf smollm2-12l.gguf --layers 12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np


def _value(field: gguf.ReaderField):
    """A metadata value as GGUFWriter.add_key_value takes it."""
    kind = field.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8"), kind, None
    if kind == gguf.GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data], kind, sub
        return [field.parts[i].tolist()[0] for i in field.data], kind, sub
    return field.parts[field.data[0]].tolist()[0], kind, None


def truncate(src: Path, dst: Path, n_layers: int) -> None:
    r = gguf.GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(str(dst), arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value, kind, sub = _value(field)
        if name == f"{arch}.block_count":
            value = n_layers
        w.add_key_value(name, value, kind, sub_type=sub)
    kept = [t for t in r.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < n_layers]
    for t in kept:
        data = np.asarray(t.data)
        w.add_tensor_info(t.name, data.shape, data.dtype, int(t.n_bytes), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in kept:
        w.write_tensor_data(np.asarray(t.data))
    w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--layers", type=int, required=True)
    a = p.parse_args(argv)
    truncate(a.src, a.dst, a.layers)
    print(f"wrote {a.dst} ({a.dst.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
