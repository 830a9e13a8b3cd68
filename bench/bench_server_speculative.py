"""Speculative decoding in the server (``splitllm serve -md`` / ``--spec-type``): the speed of one
stream through ``POST /completion`` with and without guesses, on a prompt that repeats its input
and on one that does not. Greedy; the tokens are the same in every setting (checked).

    PYTHONPATH=python python3 bench/bench_server_speculative.py [--threads 2] [-n 128] [-r 3]

Settings: no draft; ``ngram-simple`` (prompt lookup, llama-server's defaults 12 / 48); a draft
model that is the target's Q4_K re-quantization (``splitllm quantize``); the target file itself
as its own draft (every guess right: what checking guesses costs at best). The only model here is
SmolLM2-135M, so a draft model is as large as the target and cannot pay: the figures show the
cost of drafting and checking, not the gain a small draft of a large model brings.

Writes bench/results/server_speculative.md (or --out); each figure is the best of the repetitions
(this machine is shared), as llama-server's ``timings.predicted_per_second``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from bench_speculative import prompts
from benchinfo import REPO, header_lines


def run(url: str, prompt: str, n_gen: int) -> dict:
    """One request; its answer, with the process's CPU seconds it took (less sensitive than the
    wall clock to other processes on a shared machine)."""
    body = {"prompt": prompt, "n_predict": n_gen, "temperature": 0, "return_tokens": True}
    t0 = time.process_time()
    r = httpx.post(f"{url}/completion", json=body, timeout=600)
    r.raise_for_status()
    return {**r.json(), "cpu_s": time.process_time() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF model (default: SmolLM2 Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--draft-max", type=int, default=8, help="guesses per pass at most (default 8)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "server_speculative.md")
    args = ap.parse_args()
    from splitllm import Model
    from splitllm.api import create_app
    from splitllm.assets import smollm2_path
    from splitllm.cli import main as cli
    from splitllm.engine import BatchEngine
    from splitllm.engine_draft import ModelSlotDrafter, NgramSlotDrafter, SpecParams
    from splitllm.server import BackgroundServer

    path = args.model or str(smollm2_path())
    header = header_lines()  # (the load average at the start)
    tmp = tempfile.TemporaryDirectory()
    requant = Path(tmp.name) / "draft-q4k.gguf"
    assert cli(["quantize", "--quiet", "--allow-requantize", path, str(requant), "Q4_K"]) == 0
    n_ctx = 2048
    model = Model(path, n_ctx=n_ctx, n_threads=args.threads)
    settings = {
        "off": lambda: None,
        "ngram-simple": lambda: NgramSlotDrafter(),
        "draft Q4_K": lambda: ModelSlotDrafter(requant, 1, n_ctx=n_ctx, n_threads=args.threads),
        "draft = target": lambda: ModelSlotDrafter(path, 1, n_ctx=n_ctx, n_threads=args.threads),
    }
    texts = prompts(args.shared)
    del texts["edit code"]
    rows, want, pass_rows = [], {}, 0
    for name, make in settings.items():
        engine = BatchEngine(model, drafter=make(), speculative=SpecParams(n_max=args.draft_max))
        pass_rows = engine.pass_rows
        with engine, BackgroundServer(create_app(engine)) as srv:
            for label, prompt in texts.items():
                run(srv.url, prompt, 4)  # the prompt is cached from here on: not what is timed
                outs = [run(srv.url, prompt, args.n_gen) for _ in range(args.repetitions)]
                best = max(outs, key=lambda o: o["timings"]["predicted_per_second"])
                cpu = min(o["cpu_s"] for o in outs)
                assert want.setdefault(label, best["tokens"]) == best["tokens"], f"{name} changed {label}"
                t = best["timings"]
                rows.append(
                    (
                        label,
                        name,
                        len(best["tokens"]),
                        t["predicted_per_second"],
                        t.get("draft_n", 0),
                        t.get("draft_n_accepted", 0),
                        cpu * 1e3 / len(best["tokens"]),
                    )
                )
                print(rows[-1], flush=True)
    model.close()
    tmp.cleanup()

    base = {r[0]: r[3] for r in rows if r[1] == "off"}
    lines = [
        "# Speculative decoding in the server: one stream",
        "",
        *header,
        *(
            f"- {k}: {v}"
            for k, v in {
                "model": Path(path).name,
                "settings": (
                    f"POST /completion, greedy, {args.n_gen} tokens after the prompt (cached), 1 slot, "
                    f"{args.threads} threads, at most {args.draft_max} guesses a pass (and {pass_rows} "
                    f"rows, the passes whose rows equal single-token passes here), best of "
                    f"{args.repetitions} (tok/s: timings.predicted_per_second; CPU ms / token: the server "
                    "process's CPU time, less sensitive to the machine's load); the tokens are the same "
                    "in every setting (checked)"
                ),
                "command": "PYTHONPATH=python python3 bench/bench_server_speculative.py",
            }.items()
        ),
        "",
        "| prompt | drafting | tokens | tok/s | vs off | CPU ms / token | vs off | guesses | accepted "
        "| tokens / pass |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cpu_base = {r[0]: r[6] for r in rows if r[1] == "off"}
    for label, name, n, tps, dn, da, cpu in rows:
        per_pass = (n - 1) / max(n - 1 - da, 1)  # the first token comes from the prompt's pass
        lines.append(
            f"| {label} | {name} | {n} | {tps:.1f} | {tps / base[label]:.2f}x | {cpu:.1f} | "
            f"{cpu_base[label] / cpu:.2f}x | {dn} | {da} | {per_pass:.2f} |"
        )
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
