"""Fuzz the native GGUF reader (sl::GGUFFile through splitllm._core) with atheris.

Each input is written to a file on tmpfs and opened. The reader must either raise GGUFError
whose message starts with the path, or accept the file; an accepted file must satisfy what
the reader promises: every tensor is aligned, inside the file and apart from the others, and
its numpy view holds exactly the input's bytes at that offset. Anything else (another
exception, a failed check, a crash, a sanitizer report) is a finding.

Native feedback without clang: build _core with GCC's comparison tracing, ASan and UBSan

    sh bench/fuzz/build_instrumented.sh          # -> build/fuzz/_core*.so

and run with the ASan runtime preloaded (libstdc++ too, so that ASan can intercept C++ throws),
sanitizer reports turned into SIGABRT (so that libFuzzer saves the input), and libFuzzer's
value profiling on, which turns the traced comparisons into coverage:

    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \\
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=abort_on_error=1:print_stacktrace=1 \\
    python3 bench/fuzz/fuzz_gguf.py --core build/fuzz -- \\
      -use_value_profile=1 -max_len=8192 -max_total_time=150 -print_final_stats=1

Without --core the in-place build (python/splitllm/_core*.so, `make dev`) is fuzzed, blind
to the C++ code's branches. Arguments after ``--`` go to libFuzzer. The seed corpus (small
files written by gguf.GGUFWriter) is created in build/fuzz/corpus on each run.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import itertools
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import atheris
import numpy as np

REPO = Path(__file__).resolve().parents[2]
# Rewritten for every input (libFuzzer exits the process without Python's clean-up).
INPUT = os.path.join(
    "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(), "fuzz_gguf_input.gguf"
)

core: ModuleType
attach_pending = False


def load_core(build_dir: str | None) -> ModuleType:
    if build_dir is None:
        sys.path.insert(0, str(REPO / "python"))
        from splitllm import _core

        return _core
    (path,) = glob.glob(os.path.join(build_dir, "_core*.so"))
    spec = importlib.util.spec_from_file_location("_core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attach_comparison_hooks(module: ModuleType) -> bool:
    """Points an instrumented _core's comparison hooks at the libFuzzer atheris loaded."""
    lib = ctypes.CDLL(module.__file__)
    if not hasattr(lib, "sl_fuzz_attach"):
        return False
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "core_with_libfuzzer" in line}
    return len(paths) == 1 and bool(lib.sl_fuzz_attach(paths.pop().encode()))


def check_accepted(f: Any, data: bytes) -> None:
    assert f.file_size == len(data)
    assert f.version in (2, 3)
    a = f.alignment
    assert a > 0 and a & (a - 1) == 0
    assert f.data_offset % a == 0
    f.metadata()
    regions = []
    for name, _type, shape, offset, nbytes in f.tensor_infos():
        assert offset % a == 0 and offset >= f.data_offset, (name, offset)
        assert offset + nbytes <= len(data), (name, offset, nbytes)
        view = f.tensor(name.encode("utf-8", "surrogateescape"))
        assert view.nbytes == nbytes and not view.flags.writeable
        assert view.tobytes() == data[offset : offset + nbytes], name
        assert int(np.prod(shape)) == 0 or nbytes > 0
        if nbytes:
            regions.append((offset, offset + nbytes))
    regions.sort()
    for (_, end), (start, _) in itertools.pairwise(regions):
        assert end <= start, regions


def test_one_input(data: bytes) -> None:
    global attach_pending
    if attach_pending:  # atheris loads its libFuzzer only once fuzzing starts
        attach_pending = False
        print(f"fuzz_gguf: comparison hooks attached: {attach_comparison_hooks(core)}", flush=True)
    with open(INPUT, "wb") as out:
        out.write(data)
    try:
        f = core.GGUFFile(INPUT)
    except core.GGUFError as e:
        assert str(e).startswith(INPUT + ": "), str(e)
        return
    check_accepted(f, data)


def write_seeds(corpus: Path) -> None:
    """Small valid files covering every value type, nested arrays and several tensor types."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT

    corpus.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    variants = [
        ("plain", None, [("a", np.arange(8, dtype=np.float32).reshape(2, 4), None)]),
        (
            "quant",
            64,
            [
                ("q", rng.integers(0, 256, (2, 34), dtype=np.uint8), QT.Q8_0),
                ("k", rng.integers(0, 256, (1, 144), dtype=np.uint8), QT.Q4_K),
            ],
        ),
        (
            "mixed",
            16,
            [
                ("h", np.ones(4, np.float16), None),
                ("i", np.arange(3, dtype=np.int32), None),
                ("b", rng.integers(0, 256, (1, 1, 4), dtype=np.uint8), QT.BF16),
            ],
        ),
        ("empty", None, []),
    ]
    for name, alignment, tensors in variants:
        path = corpus / f"{name}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        if alignment:
            w.add_custom_alignment(alignment)
        w.add_uint8("u8", 1)
        w.add_int16("i16", -2)
        w.add_uint64("u64", 3)
        w.add_float64("f64", 0.5)
        w.add_bool("flag", True)
        w.add_string("s", "text")
        w.add_key_value("tok", ["a", "b"], VT.ARRAY, sub_type=VT.STRING)
        w.add_key_value("f", [1.0, 2.0], VT.ARRAY, sub_type=VT.FLOAT32)
        w.add_key_value("nest", [[1, 2], [3]], VT.ARRAY)
        for tname, arr, raw in tensors:
            w.add_tensor(tname, arr, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        raw_bytes = bytearray(path.read_bytes())
        raw_bytes[4:8] = (2).to_bytes(4, "little")  # the same file as version 2
        (corpus / f"{name}_v2.gguf").write_bytes(bytes(raw_bytes))


def main() -> None:
    global core, attach_pending
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", help="folder holding an instrumented _core*.so (build/fuzz)")
    parser.add_argument("--corpus", default=str(REPO / "build" / "fuzz" / "corpus"))
    args, libfuzzer_args = parser.parse_known_args()
    libfuzzer_args = [a for a in libfuzzer_args if a != "--"]
    core = load_core(args.core)
    write_seeds(Path(args.corpus))
    atheris.Setup([sys.argv[0], *libfuzzer_args, args.corpus], test_one_input)
    attach_pending = args.core is not None
    print(f"fuzz_gguf: _core = {core.__file__}", flush=True)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
