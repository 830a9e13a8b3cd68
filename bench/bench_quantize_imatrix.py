"""Weighted (importance-matrix) quantizer speed: splitllm's quants.quantize(x, t, imatrix=qw)
against ggml's ggml_quantize_chunk(t, ..., imatrix) (llama-cpp-python's libggml-base, one
thread: ggml_quantize_chunk is single-threaded), on one size x size Gaussian float32 matrix with
a log-normal matrix; best of --repeats; M values/s. Also checks that the bytes are equal.

    PYTHONPATH=python python3 bench/bench_quantize_imatrix.py [--size 4096] [--types Q4_K IQ4_XS]
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np
from benchinfo import commit, loadavg, machine
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants


def ggml_quantizer():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
        rows, n = x.shape
        block, size = GGML_QUANT_SIZES[GT[qtype]]
        out = np.zeros((rows, n // block * size), dtype=np.uint8)
        lib.ggml_quantize_init(int(GT[qtype]))
        lib.ggml_quantize_chunk(int(GT[qtype]), x.ctypes.data, out.ctypes.data, 0, rows, n, qw.ctypes.data)
        return out

    return run


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--types", nargs="+", default=["Q4_K", "IQ4_XS"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.size, args.size), dtype=np.float32)
    qw = rng.lognormal(0.0, 1.5, args.size).astype(np.float32)
    ggml = ggml_quantizer()
    nvals = x.size / 1e6
    print(f"{machine()}, commit {commit()}, load {loadavg()}; {args.size}x{args.size}, M values/s")
    print("| type | splitllm 1 thread | splitllm 2 threads | ggml 1 thread | bytes equal |")
    print("|---|---|---|---|---|")
    for t in args.types:
        t_ggml, ref = best_time(lambda t=t: ggml(x, t, qw), args.repeats)
        t1, ours = best_time(lambda t=t: quants.quantize(x, t, imatrix=qw, n_threads=1), args.repeats)
        t2, _ = best_time(lambda t=t: quants.quantize(x, t, imatrix=qw, n_threads=2), args.repeats)
        same = np.array_equal(ours, ref)
        print(f"| {t} | {nvals / t1:.1f} | {nvals / t2:.1f} | {nvals / t_ggml:.1f} | {same} |")


if __name__ == "__main__":
    main()
