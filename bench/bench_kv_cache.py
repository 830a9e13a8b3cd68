"""What a quantized KV cache costs and saves on SmolLM2-135M: bytes per token (the planner's
figure, equal to what the engine allocates), perplexity against f16 (tinyshakespeare, chunks
of 512), and decode speed at several depths (splitllm-bench, tg after d tokens in the cache).

    PYTHONPATH=python python3 bench/bench_kv_cache.py [--threads 2] [--chunks 16] [-r 5]

Writes bench/results/kv_cache.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchinfo import REPO, header_lines
from compare import bench_binary

KV_TYPES = ("f16", "q8_0", "q4_0")


def decode_speed(model: str, kv: str, depths: list[int], n_gen: int, threads: int, reps: int) -> dict:
    """tg n_gen tokens/s (mean, std) at each depth, from splitllm-bench -o json."""
    cmd = [str(bench_binary()), "-m", model, "-p", "0", "-n", str(n_gen), "-d", ",".join(map(str, depths)),
           "-t", str(threads), "-r", str(reps), "-ctk", kv, "-ctv", kv, "-o", "json"]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {r["n_depth"]: (r["avg_ts"], r["stddev_ts"]) for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF model (default: SmolLM2-135M-Instruct Q4_1, fetched)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=16, help="perplexity chunks of 512 tokens")
    ap.add_argument("--depths", default="0,1024,4096")
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kv_cache.md")
    args = ap.parse_args()
    from splitllm import Model
    from splitllm.assets import smollm2_path
    from splitllm.perplexity import perplexity
    from splitllm.plan import plan

    model = args.model or str(smollm2_path())
    text = (args.shared / "data" / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    depths = [int(d) for d in args.depths.split(",")]
    head = header_lines({"model": Path(model).name, "threads": str(args.threads)})

    rows = {}
    for kv in KV_TYPES:
        per_token = plan(model, n_ctx=4096, type_k=kv, type_v=kv).kv_bytes_per_token
        with Model(model, n_ctx=512, n_threads=args.threads, type_k=kv, type_v=kv) as m:
            ppl = perplexity(m, text, n_ctx=512, n_chunks=args.chunks)
        speed = decode_speed(model, kv, depths, args.n_gen, args.threads, args.repetitions)
        rows[kv] = (per_token, ppl, speed)
        print(kv, per_token, f"{ppl.ppl:.4f}", speed, file=sys.stderr, flush=True)

    f16_bytes, f16_ppl, f16_speed = rows["f16"]
    lines = ["# Quantized KV cache", "", *head, ""]
    lines += [f"Perplexity: {args.chunks} chunks of 512 tokens of tinyshakespeare (llama-perplexity's "
              f"method); decode: splitllm-bench `-p 0 -n {args.n_gen} -d {args.depths} -t {args.threads} "
              f"-r {args.repetitions} -ctk T -ctv T`, tokens/s mean ± std.", ""]
    cols = "".join(f" tg{args.n_gen} @ d{d} |" for d in depths)
    lines += [f"| KV type | bytes/token | vs f16 | PPL | ΔPPL vs f16 |{cols}", "|---|---:|---:|---:|---:|"
              + "---:|" * len(depths)]
    for kv, (per_token, ppl, speed) in rows.items():
        cells = [kv, f"{per_token:,}", f"{per_token / f16_bytes:.3f}", f"{ppl.ppl:.4f} ± {ppl.ppl_error:.4f}",
                 f"{100 * (ppl.ppl / f16_ppl.ppl - 1):+.2f}%"]
        for d in depths:
            ts, sd = speed[d]
            cells.append(f"{ts:.1f} ± {sd:.1f} ({ts / f16_speed[d][0]:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The ratio in each decode cell is against f16 at the same depth. A quantized cache "
              "rotates queries, keys and values by an orthonormal Hadamard matrix before storing them "
              "(as llama.cpp does since its PR 21038), which is what keeps q4_0 close to f16.",
              ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
