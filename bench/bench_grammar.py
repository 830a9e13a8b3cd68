"""What a grammar costs: the time to find every allowed token in a few states of the JSON grammar
(the whole vocabulary checked, as when the model's pick is not allowed), and generation speed in
JSON mode and with a JSON schema against free generation (greedy, the same prompt).

    PYTHONPATH=python python3 bench/bench_grammar.py [--threads 2] [-n 128] [-r 3]

Writes bench/results/grammar.md (or --out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchinfo import REPO, header_lines

SCHEMA = {"type": "object", "required": ["name", "age", "skills"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "skills": {"type": "array", "items": {"type": "string", "maxLength": 16},
                                    "maxItems": 4}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct Q4_1, fetched)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "grammar.md")
    args = ap.parse_args()
    from splitllm import Model
    from splitllm.assets import smollm2_path
    from splitllm.grammar import Grammar

    path = args.model or str(smollm2_path())
    m = Model(path, n_ctx=1024, n_threads=args.threads)
    vocab = m.grammar_vocab()
    json_g = Grammar.json()

    # Full filtering in a few states of the JSON grammar.
    states = {'start (nothing yet)': "", 'after `{`': "{", 'inside a string': '{"na',
              'after a number': '{"a": 12', 'after `"a": [1, `': '{"a": [1, '}
    filter_rows = []
    for label, prefix in states.items():
        s = json_g.state()
        for t in m.tokenize(prefix.encode(), add_bos=False):
            s.accept(vocab, t)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            mask = s.allowed(vocab)
            best = min(best, time.perf_counter() - t0)
        filter_rows.append((label, int(mask.sum()), best * 1e3))
        print(filter_rows[-1], flush=True)

    messages = [{"role": "user", "content": "Describe a software engineer as a JSON object."}]
    modes = {"free": None, "JSON mode": {"type": "json_object"},
             "JSON schema": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}
    best: dict[str, float] = {}
    counts: dict[str, tuple[int, str]] = {}
    for _ in range(args.repetitions):
        for name, fmt in modes.items():
            m.reset()
            m.eval_prompt(m.apply_chat_template(messages))  # the prompt is not what is timed
            t0 = time.perf_counter()
            out = m.create_chat_completion(messages, max_tokens=args.n_gen, temperature=0,
                                           response_format=fmt)
            dt = time.perf_counter() - t0
            n = out["usage"]["completion_tokens"]
            best[name] = max(best.get(name, 0.0), n / dt)
            counts[name] = (n, out["choices"][0]["finish_reason"])
    print(best, counts, flush=True)
    m.close()

    lines = ["# Grammar-constrained generation", "", *header_lines({
        "model": Path(path).name,
        "settings": (f"{args.threads} threads; filtering: best of 5; generation: greedy, up to "
                     f"{args.n_gen} tokens after the prompt (already in the cache), best of "
                     f"{args.repetitions}"),
        "command": "PYTHONPATH=python python3 bench/bench_grammar.py",
    }), "", "## Every allowed token, JSON grammar (the slow path: the model's pick was not allowed)", "",
        f"Vocabulary: {vocab.n_vocab} tokens.", "",
        "| state | allowed tokens | time (ms) |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {n} | {ms:.2f} |" for label, n, ms in filter_rows]
    lines += ["", "## Generation", "", "| output | tokens | finish | tok/s |", "| --- | ---: | --- | ---: |"]
    lines += [f"| {name} | {counts[name][0]} | {counts[name][1]} | {best[name]:.1f} |" for name in modes]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
