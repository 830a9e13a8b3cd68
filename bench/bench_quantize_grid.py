"""Grid i-quant quantizer benchmark: splitllm's quantizers of IQ2_XXS ... IQ1_M against ggml's
(ggml_quantize_chunk of llama-cpp-python's libggml-base), on the same Gaussian matrix with a
random importance matrix; the bytes are checked equal.

    PYTHONPATH=python python3 bench/bench_quantize_grid.py [--rows 256] [--cols 4096] [--out FILE]

M values/s is wall time, best of --repeats. ggml's quantize_chunk runs on one thread; splitllm
at 1 and 2 threads. "init" is the first call on one super-block: ggml builds its grid maps and
neighbour lists there (ggml_quantize_init), splitllm on first use too.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np
from benchinfo import header_lines
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants

GRID = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]


def ggml_quantizer():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str, w: np.ndarray) -> np.ndarray:
        block, size = GGML_QUANT_SIZES[GT[qtype]]
        out = np.zeros((x.shape[0], x.shape[1] // block * size), dtype=np.uint8)
        lib.ggml_quantize_chunk(int(GT[qtype]), x.ctypes.data, out.ctypes.data, 0, *x.shape, w.ctypes.data)
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
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the markdown table here too")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols), dtype=np.float32)
    w = rng.lognormal(0.0, 1.5, args.cols).astype(np.float32)
    ggml = ggml_quantizer()
    header = header_lines({"matrix": f"{args.rows}x{args.cols} Gaussian, lognormal imatrix"})
    lines = ["# Grid i-quant quantizers", "", *header, ""]
    lines += ["| type | ggml M val/s | splitllm 1 thread | 2 threads | ggml init s | splitllm init s |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for qtype in GRID:
        t_gi, _ = best_time(lambda q=qtype: ggml(x[:1, :256], q, w[:256]), 1)
        t_oi, _ = best_time(lambda q=qtype: quants.quantize(x[:1, :256], q, imatrix=w[:256], n_threads=1), 1)
        t_g, theirs = best_time(lambda q=qtype: ggml(x, q, w), args.repeats)
        t_1, ours = best_time(lambda q=qtype: quants.quantize(x, q, imatrix=w, n_threads=1), args.repeats)
        t_2, _ = best_time(lambda q=qtype: quants.quantize(x, q, imatrix=w, n_threads=2), args.repeats)
        assert np.array_equal(ours, theirs), f"{qtype}: bytes differ from ggml's"
        mv = x.size / 1e6
        rates = f"{mv / t_g:.2f} | {mv / t_1:.2f} | {mv / t_2:.2f}"
        lines.append(f"| {qtype} | {rates} | {t_gi:.2f} | {t_oi:.3f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
