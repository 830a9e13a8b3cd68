"""Load test of ``splitllm serve`` over loopback (bounded: a fixed number of requests).

1. Throughput: generated tokens/s of one stream alone and the aggregate of 8 concurrent streams
   (end-of-generation tokens banned so every request runs to ``max_tokens``), alternately over a
   few rounds, best of each (the machine may be shared); and, below the server, the fastest
   forward pass decoding 1 and 8 sequences (what batching can gain at best).
2. Completeness: 16 concurrent clients x 10 requests each (completions and chat, streamed and
   not, greedy); every response must arrive, be complete (a finish reason, usage) and equal the
   greedy result of ``Model`` called directly in this process (computed before the load).

The server runs as a subprocess (``python -m splitllm.cli serve``) so that the clients do not
share its interpreter. Writes a Markdown report (``bench/results/server_load.md`` by default).

    PYTHONPATH=python python3 bench/load_test.py [--model PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
from benchinfo import commit, machine

REPO = Path(__file__).resolve().parent.parent
ALIAS = "smol"

COMPLETION_PROMPTS = [
    "Once upon a time", "The capital of France is", "def fibonacci(n):", "Water boils at",
    "The three primary colours are", "My favourite season is", "import numpy as np\n", "The sun is a",
]
CHAT_QUESTIONS = [
    "What is 2 + 2?", "Name a colour.", "What is the capital of Italy?", "Say hello.",
    "Give me a fruit.", "What day comes after Monday?", "Name an animal.", "What is water made of?",
]
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@dataclass
class Tally:
    ok: int = 0
    incomplete: int = 0
    wrong: int = 0
    failed: int = 0
    tokens: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, tokens: int = 0, note: str = "") -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            self.tokens += tokens
            if note and len(self.problems) < 20:
                self.problems.append(note)


def package_root() -> str:
    """The folder holding the splitllm this script imports (installed, or the source tree with an
    in-place build), for the server process to import the same one."""
    import splitllm

    return str(Path(splitllm.__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    path = os.pathsep.join([package_root(), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "splitllm.cli", "serve", args.model, "--port", str(port), "--parallel",
           str(args.parallel), "-c", str(args.n_ctx), "--model-alias", ALIAS, "--log-level", "warning"]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


# ---- throughput ----

def stream_tokens(client: openai.OpenAI, prompt: str, max_tokens: int, ban: dict[str, int]) -> int:
    stream = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       logit_bias=ban, stream=True)
    n = 0
    for chunk in stream:
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    return n


def throughput(url: str, n_streams: int, per_stream: int, max_tokens: int,
               ban: dict[str, int]) -> tuple[float, int]:
    """Aggregate generated tokens/s of ``n_streams`` clients each running ``per_stream`` requests."""
    start = threading.Barrier(n_streams + 1)

    def client_run(i: int) -> int:
        with openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600) as c:
            start.wait()
            prompts = [COMPLETION_PROMPTS[(i + k) % len(COMPLETION_PROMPTS)] for k in range(per_stream)]
            return sum(stream_tokens(c, p, max_tokens, ban) for p in prompts)

    with ThreadPoolExecutor(n_streams) as ex:
        futures = [ex.submit(client_run, i) for i in range(n_streams)]
        start.wait()
        t0 = time.perf_counter()
        total = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - t0
    return total / elapsed, total


# ---- completeness ----

def references(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """Greedy results of Model called directly (one slot as large as each of the server's), each
    read from scratch: the server's answer to a request is the one it gets alone, whatever other
    requests left in the cache (Model itself would reuse the previous call's prefix, and a pass
    over the rest of a prompt may round differently from reading the prompt whole)."""
    from splitllm.model import Model

    with Model(args.model, n_ctx=args.n_ctx // args.parallel, n_threads=args.threads) as m:
        t0, n = time.perf_counter(), 0
        comp, chat = {}, {}
        for p in COMPLETION_PROMPTS:
            m.reset()
            r = m.create_completion(p, max_tokens=args.max_tokens, temperature=0)
            comp[p], n = r["choices"][0]["text"], n + r["usage"]["completion_tokens"]
        for q in CHAT_QUESTIONS:
            m.reset()
            r = m.create_chat_completion([SYSTEM, {"role": "user", "content": q}], max_tokens=args.max_tokens,
                                         temperature=0)
            chat[q], n = r["choices"][0]["message"]["content"], n + r["usage"]["completion_tokens"]
        args.direct_rate = n / (time.perf_counter() - t0)
    return comp, chat


def one_request(c: openai.OpenAI, k: int, max_tokens: int, comp: dict[str, str], chat: dict[str, str],
                tally: Tally) -> None:
    stream = k % 2 == 1
    try:
        if k % 4 < 2:
            prompt = COMPLETION_PROMPTS[k // 4 % len(COMPLETION_PROMPTS)]
            want = comp[prompt]
            r = c.completions.create(model=ALIAS, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     stream=stream)
            parts = list(r) if stream else [r]
            text = "".join(p.choices[0].text for p in parts if p.choices)
            finish = [p.choices[0].finish_reason for p in parts if p.choices][-1]
        else:
            question = CHAT_QUESTIONS[k // 4 % len(CHAT_QUESTIONS)]
            want = chat[question]
            messages = [SYSTEM, {"role": "user", "content": question}]
            r = c.chat.completions.create(model=ALIAS, messages=messages, max_tokens=max_tokens,
                                          temperature=0, stream=stream)
            parts = list(r) if stream else [r]
            if stream:
                text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
            else:
                text = parts[0].choices[0].message.content or ""
            finish = [p.choices[0].finish_reason for p in parts if p.choices][-1]
        usage = parts[-1].usage
    except Exception as e:  # noqa: BLE001 - a lost request is a result to count
        tally.add("failed", note=f"request {k}: {type(e).__name__}: {e}")
        return
    if finish not in ("stop", "length") or usage is None:
        tally.add("incomplete", note=f"request {k}: finish={finish!r} usage={usage!r}")
    elif text != want:
        tally.add("wrong", note=f"request {k}: got {text!r}, want {want!r}")
    else:
        tally.add("ok", usage.completion_tokens)


def completeness(url: str, clients: int, requests: int, max_tokens: int, comp: dict[str, str],
                 chat: dict[str, str]) -> tuple[Tally, float]:
    tally = Tally()

    def client_run(i: int) -> None:
        with openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600) as c:
            for j in range(requests):
                one_request(c, i * requests + j, max_tokens, comp, chat, tally)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(client_run, range(clients)))
    return tally, time.perf_counter() - t0


# ---- report ----

def pass_times(args: argparse.Namespace, reps: int = 40) -> tuple[float, float]:
    """Fastest of ``reps`` forward passes decoding 1 and ``parallel`` sequences (seconds): what
    batching can gain at best, measured below the server (the fastest run is the least disturbed
    by other work on a shared machine)."""
    from splitllm.model import Model

    n = args.parallel
    with Model(args.model, n_ctx=args.n_ctx, n_seq_max=n, n_threads=args.threads) as m:
        core = m._engine()
        for s in range(n):
            prompt = np.arange(100 + s, 130 + s, dtype=np.int32)
            core.decode(prompt, np.arange(30, dtype=np.int32), np.full(30, s, dtype=np.int32))

        def fastest(k: int) -> float:
            toks, pos = np.arange(500, 500 + k, dtype=np.int32), np.full(k, 30, dtype=np.int32)
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                core.decode(toks, pos, np.arange(k, dtype=np.int32))
                best = min(best, time.perf_counter() - t0)
            return best

        return fastest(1), fastest(n)


def throughput_rounds(url: str, args: argparse.Namespace, ban: dict[str, int]) -> dict[int, list[float]]:
    """tok/s of 1 stream and of ``parallel`` streams, measured alternately ``rounds`` times."""
    rates: dict[int, list[float]] = {1: [], args.parallel: []}
    for r in range(args.rounds):
        for n in rates:
            rate, _ = throughput(url, n, args.tput_requests, args.tput_tokens, ban)
            rates[n].append(rate)
            print(f"  round {r + 1}: {n} stream(s) {rate:.2f} tok/s", flush=True)
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1, fetched)")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the server (default: all)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=24, help="tokens per request in the completeness run")
    ap.add_argument("--tput-tokens", type=int, default=64, help="tokens per request in the throughput runs")
    ap.add_argument("--tput-requests", type=int, default=2, help="requests per stream in the throughput runs")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (1 stream, then N, alternately)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "server_load.md"))
    args = ap.parse_args()
    if args.model is None:
        from splitllm.assets import smollm2_path

        args.model = str(smollm2_path())

    load = [os.getloadavg()]
    print("forward passes ...", flush=True)
    passes = pass_times(args)
    print("references (Model called directly) ...", flush=True)
    comp, chat = references(args)
    from splitllm.model import Model

    with Model(args.model, n_ctx=64) as m:
        ban = {str(t): -100 for t in m.tokenizer.eog_ids}
    port = free_port()
    proc = start_server(args, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        print("throughput ...", flush=True)
        rates = throughput_rounds(url, args, ban)
        print(f"completeness: {args.clients} x {args.requests} ...", flush=True)
        tally, wall = completeness(url, args.clients, args.requests, args.max_tokens, comp, chat)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        load.append(os.getloadavg())
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    report, passed = render(args, load, passes, rates, tally, wall, health.get("stats", {}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report, encoding="utf-8")
    print(report)
    return 0 if passed else 1


def render(args: argparse.Namespace, load: list[tuple[float, float, float]], passes: tuple[float, float],
           rates: dict[int, list[float]], tally: Tally, wall: float,
           stats: dict[str, Any]) -> tuple[str, bool]:
    n = args.parallel
    one, many = max(rates[1]), max(rates[n])
    ratio = many / one
    total = args.clients * args.requests
    passed = tally.ok == total and ratio >= 2.5
    t1, tn = passes
    loads = [" ".join(f"{x:.1f}" for x in la) for la in load]
    lines = [
        "# Server load test",
        "",
        f"- machine: {machine()}",
        f"- commit: {commit()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- model: {Path(args.model).name}; server: --parallel {n} -c {args.n_ctx} "
        f"(slot context {args.n_ctx // n}), threads {args.threads or 'all'}; clients over loopback",
        f"- load average (1/5/15 min) before: {loads[0]}, after: {loads[-1]} (a shared machine: other work "
        "competes for the cores, so each figure is the best of several runs)",
        "",
        f"## Throughput (greedy, end-of-generation banned, {args.tput_requests} requests x "
        f"{args.tput_tokens} tokens per stream, best of {args.rounds} alternating rounds)",
        "",
        "| streams | aggregate tok/s (best) | all rounds |",
        "| ---: | ---: | --- |",
        f"| 1 | {one:.2f} | {', '.join(f'{r:.1f}' for r in rates[1])} |",
        f"| {n} | {many:.2f} | {', '.join(f'{r:.1f}' for r in rates[n])} |",
        "",
        f"{n} streams / 1 stream: **{ratio:.2f}x** (target >= 2.5x)",
        "",
        f"Below the server, the fastest of 40 forward passes: 1 sequence {t1 * 1e3:.1f} ms "
        f"({1 / t1:.1f} tok/s), {n} sequences {tn * 1e3:.1f} ms ({n / tn:.1f} tok/s): "
        f"{n * t1 / tn:.2f}x from batching in the kernels. Model called directly (the reference runs, "
        f"greedy, {args.max_tokens} tokens each, prompt included): {args.direct_rate:.2f} tok/s.",
        "",
        f"## Completeness ({args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens})",
        "",
        "Completions and chat, streamed and not, compared with Model's greedy output.",
        "",
        f"- complete and correct: **{tally.ok} / {total}**",
        f"- incomplete: {tally.incomplete}, wrong text: {tally.wrong}, failed or lost: {tally.failed}",
        f"- wall time {wall:.1f} s, {tally.tokens / wall:.2f} generated tok/s",
        f"- engine: {stats.get('steps', '?')} forward passes, at most {stats.get('max_batch_seqs', '?')} "
        f"sequences decoded together; prompt tokens {stats.get('prompt_tokens', '?')}, of which evaluated "
        f"{stats.get('prompt_evaluated', '?')} (the rest reused from slot caches)",
        f"- engine time over the whole run: {stats.get('busy_seconds', 0):.1f} s in steps, of which "
        f"{stats.get('decode_seconds', 0):.1f} s in forward passes (the rest: sampling, text, scheduling)",
        "",
        f"Result: **{'PASS' if passed else 'FAIL'}**",
    ]
    if tally.problems:
        lines += ["", "Problems:", "", *[f"- {p}" for p in tally.problems]]
    return "\n".join(lines) + "\n", passed


if __name__ == "__main__":
    sys.exit(main())
