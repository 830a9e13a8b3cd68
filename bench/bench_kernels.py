"""CPU kernel benchmark: matrix x vector (decode) GB/s of weight bytes and matrix x matrix
(prefill) GFLOP/s, per weight type and instruction set, on the SmolLM2-135M shapes and a
4096 x 4096 one; KV-cache attention at several depths; and, in the same run, llama.cpp's own
kernels (ggml through the libraries that llama-cpp-python ships) on the same bytes.

Timing loops run in C++ (splitllm._core.cpu_time_gemm); single-threaded figures use the
thread's CPU clock, so they stay meaningful on a shared machine. Decode reads the weights from
memory (copies of the matrix totalling 64 MB are cycled); prefill runs from cache.

    PYTHONPATH=python python3 bench/bench_kernels.py [--quick] [--out bench/results/kernels.md]

--ggml-lib DIR (or SPLITLLM_GGML_LIB=DIR) compares against another ggml build instead, e.g. one
configured for AVX2 only (-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF ...); DIR holds its
libggml-base.so and libggml-cpu.so. One ggml per process: two would share one set of symbols.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchinfo import cpu_model
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize
from splitllm import _core, quants

REPO = Path(__file__).resolve().parent.parent
# Types gguf-py cannot quantize: random codes, and these f16 scale fields set to sane values.
RANDOM_SCALE_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
                       T.IQ4_NL: (0,), T.IQ4_XS: (0,)}
SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576), (4096, 4096)]
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
         T.IQ4_NL, T.IQ4_XS, T.MXFP4, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M,
         T.TQ1_0, T.TQ2_0]
# The grid i-quants: every bit random but the f16 super-block scale (random_grid_rows).
GRID_TYPES = {T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M}
COLD_BYTES = 64e6


def random_grid_rows(qtype: T, n_rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Grid i-quant rows (gguf-py cannot quantize them): every bit random (so every grid index,
    sign, delta and scale occurs) but a finite f16 super-block scale (IQ1_M spreads its scale
    over the top nibbles of its four scale words). As tests/test_cpu_kernels.py makes them."""
    blck, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_rows * k // blck, size), dtype=np.uint8)
    d = rng.uniform(0.002, 0.02, size=len(b)).astype(np.float16).view(np.uint16)
    if qtype == T.IQ1_M:
        words = b[:, 48:56].copy().view(np.uint16)
        nibbles = (d[:, None] >> np.array([0, 4, 8, 12], np.uint16)) & 0xF
        b[:, 48:56] = ((words & 0x0FFF) | (nibbles << 12).astype(np.uint16)).view(np.uint8)
    else:
        b[:, :2] = d.view(np.uint8).reshape(-1, 2)
    return b.reshape(n_rows, -1)


def make_weights(qtype: T, n_rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Raw weight rows: gguf-py's quantizer where it has one, else random codes with sane scales."""
    w = rng.standard_normal((n_rows, k)).astype(np.float32)
    if qtype == T.F32:
        return w.view(np.uint8)
    if qtype == T.F16:
        return w.astype(np.float16).view(np.uint8)
    if qtype in RANDOM_SCALE_FIELDS:
        blck, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(n_rows, k // blck, size), dtype=np.uint8)
        for off in RANDOM_SCALE_FIELDS[qtype]:
            d = rng.uniform(0.002, 0.02, size=(n_rows, k // blck)).astype(np.float16)
            raw[:, :, off : off + 2] = d.view(np.uint8).reshape(n_rows, k // blck, 2)
        return raw.reshape(n_rows, -1)
    if qtype in GRID_TYPES:
        return random_grid_rows(qtype, n_rows, k, rng)
    if qtype == T.MXFP4:  # gguf-py's quantizer holds 16 errors per value: ours
        return quants.quantize(w, "MXFP4")
    return np.ascontiguousarray(quantize(w, qtype))


class Ggml:
    """llama.cpp's CPU matmul (ggml_mul_mat through a one-node graph), for comparison.

    Plain ggml tensors: no repacking into interleaved layouts, which llama.cpp also does at
    load time for some types (Q4_0, Q8_0, Q4_K, ...), so for those these are lower bounds."""

    def __init__(self, lib: Path | None = None) -> None:
        if lib is None:
            import llama_cpp

            lib = Path(llama_cpp.__file__).parent / "lib"
        self.base = ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        vp = ctypes.c_void_p
        self.base.ggml_init.restype = vp
        self.base.ggml_init.argtypes = [_InitParams]
        self.base.ggml_new_tensor_2d.restype = vp
        self.base.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        self.base.ggml_mul_mat.restype = vp
        self.base.ggml_mul_mat.argtypes = [vp, vp, vp]
        self.base.ggml_new_graph.restype = vp
        self.base.ggml_new_graph.argtypes = [vp]
        self.base.ggml_build_forward_expand.argtypes = [vp, vp]
        self.base.ggml_get_data.restype = vp
        self.base.ggml_get_data.argtypes = [vp]
        self.base.ggml_free.argtypes = [vp]
        self.cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
        self.cpu.ggml_cpu_init()

    def time(self, qtype: T, w: np.ndarray, k: int, n_tok: int, *, copies: int, threads: int) -> float:
        """Best seconds of one (n_rows x K) x (K x n_tok) product, `copies` matrices per graph."""
        n_rows = w.shape[0]
        mem = int(w.nbytes * copies + 4 * k * n_tok * (copies + 1) + 4 * n_rows * n_tok * copies + (1 << 28))
        ctx = self.base.ggml_init(_InitParams(mem, None, False))
        try:
            x = self.base.ggml_new_tensor_2d(ctx, 0, k, n_tok)
            xs = np.random.default_rng(0).standard_normal(k * n_tok).astype(np.float32)
            ctypes.memmove(self.base.ggml_get_data(x), xs.ctypes.data, xs.nbytes)
            graph = self.base.ggml_new_graph(ctx)
            for _ in range(copies):
                wt = self.base.ggml_new_tensor_2d(ctx, int(qtype), k, n_rows)
                ctypes.memmove(self.base.ggml_get_data(wt), w.ctypes.data, w.nbytes)
                self.base.ggml_build_forward_expand(graph, self.base.ggml_mul_mat(ctx, wt, x))
            run = lambda: self.cpu.ggml_graph_compute_with_ctx(ctx, graph, threads)  # noqa: E731
            return _best(run, cpu_clock=threads == 1) / copies
        finally:
            self.base.ggml_free(ctx)


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _best(fn: Callable[[], object], *, cpu_clock: bool, min_seconds: float = 0.1, reps: int = 3) -> float:
    clock = time.thread_time if cpu_clock else time.perf_counter
    fn()
    best = float("inf")
    for _ in range(reps):
        n, t0 = 0, clock()
        while True:
            fn()
            n += 1
            if clock() - t0 >= min_seconds:
                break
        best = min(best, (clock() - t0) / n)
    return best


@dataclass
class Row:
    qtype: str
    shape: str
    figures: dict[str, float]


def bench_matmul(types: list[T], isas: list[str], ggml: Ggml | None, *, n_tok: int, threads: int,
                 quick: bool, shapes: list[tuple[int, int]] = SHAPES) -> list[Row]:
    rng = np.random.default_rng(0)
    rows = []
    for qtype in types:
        for n_rows, k in shapes:
            if k % GGML_QUANT_SIZES[qtype][0]:
                continue
            if quick and n_rows * k > 1536 * 576:
                continue
            w = make_weights(qtype, n_rows, k, rng)
            copies = max(1, int(COLD_BYTES // w.nbytes)) if n_tok == 1 else 1
            figures = {}
            for isa in isas:
                if isa == "scalar" and n_rows * k * n_tok > 1536 * 576 * 4:
                    continue  # minutes per figure
                s, _ = _core.cpu_time_gemm(int(qtype), w, n_tok, isa=isa, threads=threads, copies=copies,
                                           min_seconds=0.1, reps=3)
                figures[isa] = s
            if ggml is not None:
                figures["llama.cpp"] = ggml.time(qtype, w, k, n_tok, copies=min(copies, 1024),
                                                 threads=threads)
            scale = (w.nbytes / 1e9) if n_tok == 1 else (2.0 * n_rows * k * n_tok / 1e9)
            rows.append(Row(qtype.name, f"{n_rows}x{k}", {c: scale / s for c, s in figures.items()}))
            print(f"{qtype.name:5s} {n_rows}x{k} n_tok={n_tok} threads={threads}: "
                  + "  ".join(f"{c} {v:.1f}" for c, v in rows[-1].figures.items()), flush=True)
    return rows


def bench_attention(isas: list[str]) -> list[Row]:
    rows = []
    for qtype in (T.F16, T.Q8_0, T.Q4_0):
        for depth in (256, 1024, 4096):
            figures = {
                isa: 1e6 * _core.cpu_time_attention(int(qtype), 3, depth, 64, isa=isa, min_seconds=0.05)
                for isa in isas
            }
            rows.append(Row(qtype.name, str(depth), figures))
            print(f"attention {qtype.name} depth {depth}: "
                  + "  ".join(f"{c} {v:.1f} us" for c, v in figures.items()), flush=True)
    return rows


# SmolLM2-135M: per layer q, o (576x576), k, v (192x576), gate, up (1536x576), down (576x1536);
# 30 layers; the tied output matrix (49152x576, Q8_0 in the published GGUF) once per token.
SMOLLM2_LAYER = [(576, 576), (576, 576), (192, 576), (192, 576), (1536, 576), (1536, 576), (576, 1536)]


def bench_smollm2(isa: str, ggml: Ggml | None) -> list[Row]:
    """Milliseconds of all the matmuls of one decode step (cold weights) and of a 512-token
    prefill (output for the last token only), 1 thread, from per-shape timings."""
    rng = np.random.default_rng(1)
    rows = []
    for name, qtype in (("Q4_1", T.Q4_1), ("Q8_0", T.Q8_0)):
        figures: dict[str, float] = {}
        for who in [isa] + (["llama.cpp"] if ggml else []):
            def timed(n_rows: int, k: int, n_tok: int, t: T, who: str = who) -> float:
                w = make_weights(t, n_rows, k, rng)
                copies = max(1, int(COLD_BYTES // w.nbytes)) if n_tok == 1 else 1
                if who == "llama.cpp" and ggml is not None:
                    return ggml.time(t, w, k, n_tok, copies=min(copies, 1024), threads=1)
                return _core.cpu_time_gemm(int(t), w, n_tok, isa=who, copies=copies, min_seconds=0.1)[0]

            out1 = timed(49152, 576, 1, T.Q8_0)
            for label, n_tok in (("decode", 1), ("pp512", 512)):
                layer = sum(timed(n, k, n_tok, qtype) for n, k in SMOLLM2_LAYER)
                figures[f"{who} {label}"] = 1e3 * (30 * layer + out1)
        rows.append(Row(name, "+ Q8_0 output", figures))
        print(f"SmolLM2 {name}: " + "  ".join(f"{c} {v:.2f} ms" for c, v in figures.items()), flush=True)
    return rows


def table(rows: list[Row], columns: list[str], first: str, fmt: str) -> str:
    head = f"| type | {first} | " + " | ".join(columns) + " |"
    sep = "|---|---|" + "---:|" * len(columns)
    body = [f"| {r.qtype} | {r.shape} | " + " | ".join(fmt.format(r.figures[c]) if c in r.figures else "–"
                                                        for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} hardware threads; kernels use: {_core.cpu_features()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="SmolLM2 576x576 / 1536x576 shapes and a few types")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp comparison")
    ap.add_argument("--types", help="comma-separated weight types: only their decode and prefill tables")
    ap.add_argument("--ggml-lib", type=Path, default=os.environ.get("SPLITLLM_GGML_LIB") or None,
                    help="directory of another ggml build's libggml-base.so / libggml-cpu.so to compare "
                    "against (default: llama-cpp-python's; env SPLITLLM_GGML_LIB)")
    ap.add_argument("--shapes", help="comma-separated ROWSxK shapes for the matmul tables (default: all)")
    ap.add_argument("--isas", help="comma-separated instruction sets to time (default: all this CPU runs)")
    ap.add_argument("--prefill-only", action="store_true", help="only the 512-token matmul table")
    args = ap.parse_args()
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]

    isas = [i for i in ("scalar", "avx2", "avx512", "amx") if _core.cpu_usable_isa(i) == i]
    if args.isas:
        isas = [i for i in isas if i in args.isas.split(",")]
    simd = [i for i in isas if i != "scalar"]
    try:
        ggml = None if args.no_llama else Ggml(args.ggml_lib)
    except (ImportError, OSError) as e:
        print(f"llama.cpp comparison skipped: {e}")
        ggml = None
    types = [T[t.strip().upper()] for t in args.types.split(",")] if args.types else (
        [T.Q4_1, T.Q8_0, T.Q4_K] if args.quick else TYPES)
    only_matmul = bool(args.types)
    cols = isas + (["llama.cpp"] if ggml else [])

    load = os.getloadavg()
    only_matmul = only_matmul or args.prefill_only
    decode = [] if args.prefill_only else bench_matmul(
        types, isas, ggml, n_tok=1, threads=1, quick=args.quick, shapes=shapes)
    prefill = bench_matmul(types, isas, ggml, n_tok=512, threads=1, quick=args.quick, shapes=shapes)
    decode2 = [] if only_matmul else bench_matmul([T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_0, T.Q6_K], simd[-1:], ggml,
                                                  n_tok=1, threads=2, quick=args.quick)
    attn = [] if only_matmul else bench_attention(simd)
    smol = bench_smollm2(simd[-1], ggml) if simd and not only_matmul else []
    smol_cols = [f"{w} {p}" for p in ("decode", "pp512") for w in simd[-1:] + (["llama.cpp"] if ggml else [])]
    load_after = os.getloadavg()

    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=REPO, capture_output=True, text=True).stdout
    head = f"""# CPU kernel benchmark

- machine: {machine()}
- commit: {commit.strip() or _core.commit}, date: {datetime.date.today().isoformat()}
- load average before / after: {load[0]:.1f} / {load_after[0]:.1f} (other jobs share this machine:
  single-thread figures are timed on the thread's CPU clock, two-thread ones on the wall clock, noisier)
- llama.cpp: ggml from {args.ggml_lib or "llama-cpp-python"}, plain `ggml_mul_mat` (no load-time repacking,
  which llama.cpp applies to Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, Q2_K, IQ4_NL in a model: lower bounds for those)
"""
    cols2 = simd[-1:] + (["llama.cpp"] if ggml else [])
    sections = [  # (empty ones left out: --types times the matmuls only)
        ("Decode: matrix x vector, GB/s of weight bytes read from memory (1 thread)",
         table(decode, cols, "rows x K", "{:.1f}") if decode else ""),
        ("Decode, 2 threads (rows split evenly), GB/s",
         table(decode2, cols2, "rows x K", "{:.1f}") if decode2 else ""),
        ("Prefill: 512 tokens, GFLOP/s (1 thread, weights in cache)",
         table(prefill, cols, "rows x K", "{:.0f}")),
        ("Attention over one KV head: 3 query rows (a GQA group), head_dim 64, scores then values, "
         "µs (1 thread)", table(attn, simd, "depth", "{:.1f}") if attn else ""),
        ("SmolLM2-135M matmuls: one decode step (weights from memory), a 512-token prefill; ms, 1 thread",
         "Sums of per-shape timings (30 layers of q, k, v, o, gate, up, down; the 49152 x 576 Q8_0 output\n"
         "once). Not a model run: norms, rope, attention and threading are left out.\n\n"
         + table(smol, smol_cols, "output", "{:.2f}") if smol else ""),
    ]
    report = head + "".join(f"\n## {title}\n\n{body}\n" for title, body in sections if body)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
