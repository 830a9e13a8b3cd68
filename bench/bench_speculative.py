"""Speculative decoding by prompt lookup (``Model(draft_model=PromptLookupDecoding(...))``):
generation speed with and without it, on prompts that repeat their input (the case it is for)
and on one that does not (what wrong guesses cost). Greedy, the same tokens either way (checked).

    PYTHONPATH=python python3 bench/bench_speculative.py [--threads 2] [-n 128] [-r 3]

Writes bench/results/speculative.md (or --out). Runs alternate between the two settings; each
figure is the best of the repetitions (this machine is shared).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchinfo import REPO, header_lines

CODE = '''def moving_average(values, window):
    """Average of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out
'''


def prompts(shared: Path) -> dict[str, str]:
    text = (shared / "data" / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    passage = text[2000:3200]
    return {
        "copy a passage": f"Copy the following text exactly.\n\n{passage}\n\nCopy:\n{passage[:40]}",
        "edit code": ("Rename the function moving_average to rolling_mean and keep everything else.\n\n"
                      f"{CODE}\nRenamed:\ndef rolling_mean(values, window):\n"),
        "free story": "Once upon a time, in a village at the edge of a great forest, there lived",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", action="append", help="GGUF model (repeatable; default: SmolLM2 Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--lookup", type=int, default=10, help="num_pred_tokens (default 10)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speculative.md")
    args = ap.parse_args()
    from splitllm import Model
    from splitllm.assets import smollm2_path
    from splitllm.speculative import PromptLookupDecoding

    models = args.model or [str(smollm2_path())]
    rows = []
    for path in models:
        loaded = {}
        for name, draft in (("off", None), ("lookup", PromptLookupDecoding(num_pred_tokens=args.lookup))):
            m = Model(path, n_ctx=2048, n_threads=args.threads, draft_model=draft)
            passes = [0]
            decode = m._decode

            def counted(*a, _d=decode, _p=passes, **k):
                _p[0] += 1
                return _d(*a, **k)

            m._decode = counted  # type: ignore[method-assign]
            loaded[name] = (m, passes)
        for label, prompt in prompts(args.shared).items():
            best = {}
            out = {}
            n_passes = {}
            for _ in range(args.repetitions):
                for name, (m, passes) in loaded.items():
                    toks = m.tokenize(prompt.encode(), add_bos=True, special=True)
                    m.reset()
                    m.eval_prompt(toks)  # the prompt is not what is timed
                    passes[0] = 0
                    gen = []
                    t0 = time.perf_counter()
                    for t in m.generate(toks, temp=0.0):
                        gen.append(t)
                        if len(gen) == args.n_gen:
                            break
                    dt = time.perf_counter() - t0
                    best[name] = max(best.get(name, 0.0), len(gen) / dt)
                    out[name] = gen
                    n_passes[name] = passes[0]
            assert out["off"] == out["lookup"], f"{label}: prompt lookup changed the output"
            rows.append((Path(path).name, label, len(out["off"]), best["off"], best["lookup"],
                         len(out["off"]) / max(n_passes["lookup"], 1)))
            print(rows[-1], flush=True)
        for m, _ in loaded.values():
            m.close()

    lines = ["# Speculative decoding by prompt lookup", "", *header_lines({
        "settings": (f"greedy, {args.n_gen} tokens after the prompt (already in the cache), "
                     f"{args.threads} threads, PromptLookupDecoding(max_ngram_size=2, "
                     f"num_pred_tokens={args.lookup}), best of {args.repetitions} alternating runs; the "
                     "generated tokens are the same with and without (checked)"),
        "command": "PYTHONPATH=python python3 bench/bench_speculative.py",
    }), "", "| model | prompt | tokens | tok/s off | tok/s lookup | speedup | tokens per pass |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, label, n, off, on, per in rows:
        lines.append(f"| {model} | {label} | {n} | {off:.1f} | {on:.1f} | {on / off:.2f}x | {per:.2f} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
