"""convert-hf benchmark: peak memory and throughput, with llama.cpp's quantizer in the same run.

    PYTHONPATH=python:convert python3 bench/bench_convert.py [--threads 2] [--out bench/results/convert.md]

Peak RSS: a synthetic Llama (hidden 1024, 20 layers, vocab 32000, untied; bf16 safetensors in 2
shards) whose largest tensor, the token embedding, is about 1/10 of the model. Each conversion
runs in a fresh Python process; its peak RSS is that process's VmHWM (/proc/self/status; imports
included; ru_maxrss would carry over the parent's peak across fork and exec).
The target is peak < 0.4 x the model's f32 size; the script exits non-zero when it is missed.

Throughput: MB of input safetensors read per second of wall time for the whole conversion
(read, permute, quantize, write), q4_k_m on --threads threads, on the synthetic model (bf16
input) and on SmolLM2-135M rebuilt as f32 safetensors. llama.cpp's llama_model_quantize turns
our f32 GGUF of SmolLM2 into q4_k_m on the same threads for comparison (f32 GGUF in, same bytes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import hf_fixtures as F  # noqa: E402
from benchinfo import commit, loadavg, machine  # noqa: E402

BIG = {
    "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 20, "num_attention_heads": 16,
    "num_key_value_heads": 16, "max_position_embeddings": 4096, "vocab_size": 32000,
}  # fmt: skip
BUDGET = 0.4

# Runs in a child process: one conversion (ours or llama.cpp's), prints wall time and peak RSS.
CHILD = r"""
import json, resource, sys, time
job = json.loads(sys.argv[1])
t0 = time.perf_counter()
if job["tool"] == "convert-hf":
    from splitllm_convert import convert
    convert(job["src"], job["dst"], type=job["type"], force=True, quiet=True, n_threads=job["threads"])
else:
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = job["ftype"], job["threads"]
    assert llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), p) == 0
wall = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss": int(hwm.split()[1]) * 1024}))
"""


def run_child(job: dict[str, object]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO / "convert")])}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{job}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rss() -> int:
    """Peak RSS of a process that only imports what a conversion imports."""
    code = (
        "import splitllm_convert, splitllm.quants, tokenizers, gguf, tqdm;"
        "print(int([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]) * 1024)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO / "convert")])}
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout)


def big_model(cache: Path) -> Path:
    """The synthetic model, built once: random weights, bf16, two shards."""
    d = cache / "bench-convert-llama-1024x20"
    stamp = d / ".stamp"
    if stamp.is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    F.write_bpe_tokenizer(d, pre="llama-bpe")
    cfg = F.tiny_config("llama", **BIG)
    (d / "config.json").write_text(json.dumps(cfg))
    F.save_weights(d, F.random_weights(cfg, seed=1), dtype="bf16", shards=2)
    stamp.write_text("1")
    return d


def input_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def params_and_largest(d: Path) -> tuple[int, int]:
    from splitllm_convert.hfdir import index_tensors

    sizes = [e.n_elements for e in index_tensors(d).values()]
    return sum(sizes), max(sizes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "convert.md")
    args = ap.parse_args()
    from splitllm.assets import cache_dir
    from splitllm_convert import FILE_TYPES

    cache = cache_dir()
    work = cache / "bench-convert-out"
    work.mkdir(exist_ok=True)
    big = big_model(cache)
    n_params, largest = params_and_largest(big)
    f32_size = 4 * n_params
    base = baseline_rss()
    lines = [
        "# convert-hf benchmark",
        "",
        f"{datetime.date.today()}, commit {commit()}, {machine()}, load average {loadavg()}, "
        f"Python {platform.python_version()}.",
        "Produced by `bench/bench_convert.py`; every run is a fresh process.",
        "",
        "## Peak memory",
        "",
        f"Synthetic Llama: {n_params / 1e6:.1f} M parameters, f32 size {f32_size / 2**20:.0f} MiB, "
        f"largest tensor {largest / n_params:.1%} of the model; bf16 safetensors in 2 shards "
        f"({input_bytes(big) / 2**20:.0f} MiB). Budget: peak RSS < {BUDGET} x f32 size = "
        f"{BUDGET * f32_size / 2**20:.0f} MiB. A process that only imports the converter peaks at "
        f"{base / 2**20:.0f} MiB.",
        "",
        "| --type | threads | peak RSS (MiB) | / f32 size | wall (s) | input MB/s | within budget |",
        "|---|---|---|---|---|---|---|",
    ]
    ok = True
    big_in = input_bytes(big)
    runs = {}
    for qtype in ("f16", "q8_0", "q4_k_m"):
        job = {"tool": "convert-hf", "src": str(big), "dst": str(work / "big.gguf"), "type": qtype}
        r = runs[qtype] = run_child({**job, "threads": args.threads})
        ratio = r["maxrss"] / f32_size
        ok &= ratio < BUDGET
        lines.append(
            f"| {qtype} | {args.threads} | {r['maxrss'] / 2**20:.0f} | {ratio:.3f} | {r['wall']:.1f} | "
            f"{big_in / 1e6 / r['wall']:.1f} | {'yes' if ratio < BUDGET else 'NO'} |"
        )
    lcpp_job = {"tool": "llama.cpp", "ftype": int(FILE_TYPES["q4_k_m"].ftype), "threads": args.threads}
    big_f32 = work / "big.f32.gguf"
    run_child({"tool": "convert-hf", "src": str(big), "dst": str(big_f32), "type": "f32", "threads": 2})
    big_lcpp = run_child({**lcpp_job, "src": str(big_f32), "dst": str(work / "big.lcpp.gguf")})
    big_gguf_in = big_f32.stat().st_size
    for p in work.glob("big*.gguf"):
        p.unlink()

    smol = F.smollm2_hf_dir(cache)
    smol_f32 = work / "smollm2.f32.gguf"
    job = {"tool": "convert-hf", "src": str(smol), "threads": args.threads}
    run_child({**job, "dst": str(smol_f32), "type": "f32"})
    ours = run_child({**job, "dst": str(work / "smol.q4_k_m.gguf"), "type": "q4_k_m"})
    theirs = run_child({**lcpp_job, "src": str(smol_f32), "dst": str(work / "smol.lcpp.q4_k_m.gguf")})
    smol_in, gguf_in = input_bytes(smol), smol_f32.stat().st_size
    lcpp, synth = "llama.cpp llama_model_quantize", "synthetic Llama 1024x20"
    rows = [
        (synth, "convert-hf", f"bf16 safetensors, {big_in / 1e6:.0f} MB", big_in, runs["q4_k_m"]),
        (synth, lcpp, f"f32 GGUF, {big_gguf_in / 1e6:.0f} MB", big_gguf_in, big_lcpp),
        ("SmolLM2-135M", "convert-hf", f"f32 safetensors, {smol_in / 1e6:.0f} MB", smol_in, ours),
        ("SmolLM2-135M", lcpp, f"f32 GGUF, {gguf_in / 1e6:.0f} MB", gguf_in, theirs),
    ]  # fmt: skip
    lines += [
        "",
        "## Throughput, q4_k_m",
        "",
        "MB (10^6 bytes) of input per second of wall time, whole conversion including reading and writing",
        "(imports excluded). CPU s: the process's user + system time, all threads (imports included); it",
        "is the steadier figure when other work shares the cores (see the load average above).",
        "",
        "| model | tool | input | threads | wall (s) | input MB/s | CPU s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {model} | {tool} | {what} | {args.threads} | {r['wall']:.1f} | {n / 1e6 / r['wall']:.1f} | "
            f"{r['cpu']:.1f} | {r['maxrss'] / 2**20:.0f} |"
            for model, tool, what, n, r in rows
        ),
        "",
        "SmolLM2's rows of 576 values are not a multiple of 256, so its q4_k_m is mostly Q5_0 (llama.cpp's",
        "fallback) with Q4_K/Q6_K only in ffn_down; the synthetic model is Q4_K/Q6_K throughout.",
        "llama.cpp's peak RSS counts the pages of its memory-mapped input file.",
        "",
    ]
    for p in work.glob("*.gguf"):
        p.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
