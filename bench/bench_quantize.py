"""Quantizer benchmark: throughput of splitllm's K-quant quantizers, and their error against
llama.cpp's quantizer (llama-cpp-python's llama_model_quantize) on the same matrices.

    PYTHONPATH=python python3 bench/bench_quantize.py [--size 4096] [--tensors 4]

Throughput: Q4_K and Q6_K on one size x size Gaussian float32 matrix at 1 and 2 threads, best
of --repeats; MB/s counts float32 input bytes; "CPU s" is the process CPU time of that call
(all threads): with two free cores, 2-thread wall time is about half of it, and "MB per CPU s"
is the throughput per busy core, which other load on the machine disturbs less than wall time.
llama.cpp's figures are those of llama_model_quantize on a one-tensor F32 GGUF, so they
include reading and writing the file (from the page cache).

Error: --tensors Gaussian size x size matrices in an F32 GGUF, quantized by llama.cpp ("pure":
every tensor to the base type) and by splitllm to Q2_K..Q6_K; both dequantized with gguf-py
(a neutral dequantizer); RMSE = sqrt(mean((dequantized - original)^2)). Exits non-zero if any
splitllm RMSE is above 1.02x llama.cpp's.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import resource
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
from benchinfo import commit, loadavg, machine
from splitllm import quants

KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LLAMA_FTYPE = {
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K", "Q3_K": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q5_K": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
}  # fmt: skip
MAX_RATIO = 1.02
_LOG_SINK: list = []  # keeps the ctypes log callback alive


def write_f32_gguf(path: Path, mats: list[np.ndarray]) -> None:
    """An F32 GGUF with just enough llama metadata for llama_model_quantize; the tensors are
    named like FFN weights so that nothing special-cases them."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(mats[0].shape[1])
    w.add_block_count(len(mats))
    w.add_feed_forward_length(mats[0].shape[0])
    w.add_head_count(8)
    w.add_layer_norm_rms_eps(1e-5)
    for i, m in enumerate(mats):
        w.add_tensor(f"blk.{i}.ffn_up.weight", m)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_quantize(llama_cpp, src: Path, dst: Path, qtype: str, n_threads: int) -> tuple[float, float]:
    """llama.cpp quantizes src to dst (every tensor to qtype); returns wall and CPU time."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPE[qtype])
    params.pure = True
    params.nthread = n_threads
    t0, c0 = time.perf_counter(), cpu_seconds()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({qtype}) failed with {rc}")
    return dt, cpu


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Best wall time of repeats calls, and the CPU time (all threads) of that call."""
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        fn()
        best = min(best, (time.perf_counter() - t0, cpu_seconds() - c0))
    return best


def throughput(x: np.ndarray, llama_cpp, tmp: Path, repeats: int) -> list[str]:
    rows = [
        "| type | threads | splitllm wall s | CPU s | MB/s (wall) | rows/s (wall) | MB per CPU s |"
        " llama.cpp wall s | llama.cpp CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    src = tmp / "one.gguf"
    if llama_cpp is not None:
        write_f32_gguf(src, [x])
    for qtype in ("Q4_K", "Q6_K"):
        for n in (1, 2):
            dt, cpu = best_time(lambda q=qtype, n=n: quants.quantize(x, q, n_threads=n), repeats)
            theirs = ["n/a", "n/a"]
            if llama_cpp is not None:
                dst = tmp / "one_q.gguf"
                best = min(llama_quantize(llama_cpp, src, dst, qtype, n) for _ in range(repeats))
                theirs = [f"{best[0]:.3f}", f"{best[1]:.3f}"]
            mbs, rps = x.nbytes / dt / 1e6, x.shape[0] / dt
            per_cpu = x.nbytes / cpu / 1e6 if cpu > 0 else float("nan")
            cells = [qtype, n, f"{dt:.3f}", f"{cpu:.3f}", f"{mbs:.1f}", f"{rps:.0f}", f"{per_cpu:.1f}"]
            cells += theirs
            rows.append("| " + " | ".join(map(str, cells)) + " |")
            print(rows[-1], flush=True)
    return rows


def squared_error(data: np.ndarray, qtype: str, original: np.ndarray) -> float:
    """Sum of squared differences between gguf-py's dequantization of data and original."""
    d = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype]).astype(np.float64) - original
    return float(np.sum(d * d))


def error_vs_llama(mats: list[np.ndarray], llama_cpp, tmp: Path) -> tuple[list[str], bool]:
    src = tmp / "f32.gguf"
    write_f32_gguf(src, mats)
    rows = [
        "| type | splitllm RMSE | llama.cpp RMSE | ratio | identical bytes |",
        "| --- | --- | --- | --- | --- |",
    ]
    ok = True
    for qtype in KQUANTS:
        dst = tmp / f"{qtype}.gguf"
        llama_quantize(llama_cpp, src, dst, qtype, 2)
        reader = gguf.GGUFReader(str(dst))
        se_ours = se_theirs = 0.0
        same = total = 0
        for m, t in zip(mats, reader.tensors, strict=True):
            if t.tensor_type.name != qtype:
                raise RuntimeError(f"llama.cpp wrote {t.name} as {t.tensor_type.name}, expected {qtype}")
            theirs = np.asarray(t.data).reshape(m.shape[0], -1)
            ours = quants.quantize(m, qtype)
            se_ours += squared_error(ours, qtype, m)
            se_theirs += squared_error(theirs, qtype, m)
            same += int(np.count_nonzero(ours == theirs))
            total += ours.size
        n = sum(m.size for m in mats)
        r_ours, r_theirs = np.sqrt(se_ours / n), np.sqrt(se_theirs / n)
        ratio = r_ours / r_theirs
        ok &= bool(ratio <= MAX_RATIO)
        rows.append(f"| {qtype} | {r_ours:.6f} | {r_theirs:.6f} | {ratio:.4f} | {same / total:.2%} |")
        print(rows[-1], flush=True)
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="matrix rows and columns (multiple of 256)")
    ap.add_argument("--tensors", type=int, default=4, help="Gaussian matrices for the error comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quantize.md")
    args = ap.parse_args()
    try:
        import llama_cpp

        _LOG_SINK.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
        llama_cpp.llama_log_set(_LOG_SINK[-1], ctypes.c_void_p(0))
    except ImportError:
        llama_cpp = None
        print("llama-cpp-python not installed: no llama.cpp comparison", file=sys.stderr)

    rng = np.random.default_rng(2024)
    mats = [rng.standard_normal((args.size, args.size), dtype=np.float32) for _ in range(args.tensors)]
    header = [
        "# Quantizer benchmark",
        "",
        f"- machine: {machine()}, load average {loadavg()}",
        f"- splitllm commit {commit()}, {datetime.date.today().isoformat()}",
        f"- llama.cpp: llama-cpp-python {getattr(llama_cpp, '__version__', 'not installed')}",
        f"- command: `python3 bench/bench_quantize.py --size {args.size} --tensors {args.tensors}"
        f" --repeats {args.repeats}`",
        "",
        "CPU s is process CPU time (all threads); MB per CPU s is the throughput per busy core,",
        "which other load on a shared machine disturbs less than wall time. llama.cpp's times",
        "include reading the F32 GGUF (page cache) and writing the output file.",
        "",
    ]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("throughput", flush=True)
        tp = throughput(mats[0], llama_cpp, tmp, args.repeats)
        ok = True
        err: list[str] = []
        if llama_cpp is not None:
            print("error vs llama.cpp", flush=True)
            err, ok = error_vs_llama(mats, llama_cpp, tmp)
    text = header + [
        f"## Quantize throughput ({args.size}x{args.size} float32, Gaussian; best of {args.repeats})",
        "",
        *tp,
        "",
        f"## RMSE against llama.cpp ({args.tensors} Gaussian {args.size}x{args.size} matrices, "
        "no importance matrix; both dequantized by gguf-py)",
        "",
        *(err or ["llama-cpp-python not installed"]),
        "",
        f"Pass criterion: splitllm RMSE <= {MAX_RATIO}x llama.cpp's: {'PASS' if ok else 'FAIL'}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
