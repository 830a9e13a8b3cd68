"""Merges the n_gpu_layers sweep of splitllm-bench and llama.cpp's llama-bench into one table
and a plot of tokens/s against n_gpu_layers (bench/gpu_run.sh calls it after every run).

    python3 bench/gpu_compare.py RAW_DIR OUT_DIR --n-layer 32 [--machine TEXT]

RAW_DIR holds ``<engine>__<model>__<variant>.json[l]`` (variant ``main*`` for the plain runs):
llama-bench ``-o jsonl`` output or
splitllm-bench ``-o json`` output (its format follows llama-bench's). OUT_DIR gets
``bench.jsonl`` (one row per engine, model, n_gpu_layers and test), ``summary.md`` and, when
matplotlib is there, ``tokens_per_s.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    """Rows of a llama-bench/splitllm-bench JSON array or JSON-lines file (partial files too)."""
    text = path.read_text(errors="replace").strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        rows = []
        for line in text.splitlines():
            line = line.strip().rstrip(",")
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return rows


def test_name(row: dict) -> str:
    if row.get("n_prompt", 0) > 0:
        return f"pp{row['n_prompt']}"
    return f"tg{row.get('n_gen', 0)}"


def collect(raw: Path, n_layer: int) -> list[dict]:
    out = []
    for path in sorted(raw.glob("*__*__*.json*")):
        engine, model, variant = path.name.split("__", 2)
        variant = variant.split(".")[0]
        for r in read_rows(path):
            ngl = int(r.get("n_gpu_layers", 0))
            out.append({
                "engine": engine if variant.startswith("main") else f"{engine} ({variant})",
                "model": model,
                "n_gpu_layers": n_layer + 1 if ngl < 0 or ngl > n_layer + 1 else ngl,
                "test": test_name(r),
                "avg_ts": float(r.get("avg_ts", 0.0)),
                "stddev_ts": float(r.get("stddev_ts", 0.0)),
                "n_threads": r.get("n_threads"),
                "backend": r.get("backend") or r.get("backends"),
                "commit": r.get("commit") or r.get("build_commit"),
            })  # fmt: skip
    return out


def summary(rows: list[dict], n_layer: int, machine: str) -> str:
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["test"])][(r["engine"], r["n_gpu_layers"])] = r
    engines = sorted({r["engine"] for r in rows})
    lines = [f"# n_gpu_layers sweep ({machine})", "",
             f"tokens/s (mean ± stddev); n_gpu_layers {n_layer + 1} = all ({n_layer} blocks + output)", ""]
    commits = sorted({f"{r['engine']}: {r['commit']}" for r in rows if r["commit"]})
    if commits:
        lines += ["builds: " + "; ".join(commits), ""]
    for (model, test), cells in sorted(by.items()):
        ngls = sorted({k[1] for k in cells})
        lines.append(f"## {model} {test}")
        lines.append("")
        lines.append("| n_gpu_layers | " + " | ".join(engines) + " | ratio |")
        lines.append("|---:|" + "---:|" * len(engines) + "---:|")
        for ngl in ngls:
            vals = [cells.get((e, ngl)) for e in engines]
            text = [f"{v['avg_ts']:.2f} ± {v['stddev_ts']:.2f}" if v else "-" for v in vals]
            ours = cells.get(("splitllm", ngl))
            ref = cells.get(("llama.cpp", ngl))
            ratio = f"{ours['avg_ts'] / ref['avg_ts']:.2f}" if ours and ref and ref["avg_ts"] > 0 else "-"
            lines.append(f"| {ngl} | " + " | ".join(text) + f" | {ratio} |")
        lines.append("")
    lines.append("ratio: splitllm / llama.cpp")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, n_layer: int, machine: str, shape: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tests = sorted({r["test"] for r in rows}, key=lambda t: (not t.startswith("pp"), t))
    fig, axes = plt.subplots(1, len(tests), figsize=(6 * len(tests), 4.5), squeeze=False)
    for ax, test in zip(axes[0], tests, strict=True):
        series = defaultdict(list)
        for r in rows:
            if r["test"] == test:
                series[(r["engine"], r["model"])].append((r["n_gpu_layers"], r["avg_ts"], r["stddev_ts"]))
        for (engine, model), pts in sorted(series.items()):
            pts.sort()
            xs, ys, es = zip(*pts, strict=True)
            style = "-" if engine.startswith("splitllm") else "--"
            ax.errorbar(xs, ys, yerr=es, fmt=style + "o", capsize=3, label=f"{engine} {model}")
        ax.set_xlabel(f"n_gpu_layers ({n_layer + 1} = all)")
        ax.set_ylabel("tokens/s")
        ax.set_yscale("log")
        ax.set_title(test)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{shape}-shaped random model: tokens/s against n_gpu_layers ({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--n-layer", type=int, default=32)
    p.add_argument("--machine", default="")
    p.add_argument("--shape", default="llama2-7b", help="model shape, for the plot's title")
    a = p.parse_args(argv)
    rows = collect(a.raw, a.n_layer)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "bench.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (a.out / "summary.md").write_text(summary(rows, a.n_layer, a.machine))
    if rows and not plot(rows, a.out / "tokens_per_s.png", a.n_layer, a.machine, a.shape):
        print("gpu_compare: matplotlib is missing: no plot", file=sys.stderr)
    print(f"gpu_compare: {len(rows)} rows -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
