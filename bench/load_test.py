"""Load test of ``splitllm serve`` over loopback (bounded: a fixed number of requests).

1. Throughput: generated tokens/s of one stream alone, then the aggregate of 8 concurrent streams
   (end-of-generation tokens banned so every request runs to ``max_tokens``).
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
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")])
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
    """Greedy results of Model called directly (one slot as large as each of the server's)."""
    from splitllm.model import Model

    with Model(args.model, n_ctx=args.n_ctx // args.parallel, n_threads=args.threads) as m:
        t0, n = time.perf_counter(), 0
        comp, chat = {}, {}
        for p in COMPLETION_PROMPTS:
            r = m.create_completion(p, max_tokens=args.max_tokens, temperature=0)
            comp[p], n = r["choices"][0]["text"], n + r["usage"]["completion_tokens"]
        for q in CHAT_QUESTIONS:
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

def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
    ap.add_argument("--tput-requests", type=int, default=3, help="requests per stream in the throughput runs")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "server_load.md"))
    args = ap.parse_args()
    if args.model is None:
        from splitllm.assets import smollm2_path

        args.model = str(smollm2_path())

    load_before = os.getloadavg()
    print("references (Model called directly) ...", flush=True)
    comp, chat = references(args)
    from splitllm.model import Model

    with Model(args.model, n_ctx=64) as m:
        ban = {str(t): -100 for t in m.tokenizer.eog_ids}
    port = free_port()
    proc = start_server(args, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        print("throughput: 1 stream ...", flush=True)
        one, n1 = throughput(url, 1, args.tput_requests, args.tput_tokens, ban)
        print(f"  {one:.2f} tok/s ({n1} tokens)\nthroughput: {args.parallel} streams ...", flush=True)
        many, n8 = throughput(url, args.parallel, args.tput_requests, args.tput_tokens, ban)
        print(f"  {many:.2f} tok/s ({n8} tokens)", flush=True)
        print(f"completeness: {args.clients} x {args.requests} ...", flush=True)
        tally, wall = completeness(url, args.clients, args.requests, args.max_tokens, comp, chat)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        load_after = os.getloadavg()
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    total = args.clients * args.requests
    ratio = many / one
    passed = tally.ok == total and ratio >= 2.5
    stats = health.get("stats", {})
    lines = [
        "# Server load test",
        "",
        f"- machine: {machine()}",
        f"- commit: {commit()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- model: {Path(args.model).name}; server: --parallel {args.parallel} -c {args.n_ctx} "
        f"(slot context {args.n_ctx // args.parallel}), threads {args.threads or 'all'}; "
        "clients over loopback",
        f"- load average (1/5/15 min) before: {' '.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{' '.join(f'{x:.1f}' for x in load_after)} (a shared machine: other work competes for the cores)",
        "",
        "## Throughput (greedy, end-of-generation banned, "
        f"{args.tput_requests} requests x {args.tput_tokens} tokens per stream)",
        "",
        "| streams | generated tokens | aggregate tok/s |",
        "| ---: | ---: | ---: |",
        f"| 1 | {n1} | {one:.2f} |",
        f"| {args.parallel} | {n8} | {many:.2f} |",
        "",
        f"{args.parallel} streams / 1 stream: **{ratio:.2f}x** (target >= 2.5x)",
        "",
        f"For comparison, Model called directly in the client process (the reference runs, greedy, "
        f"{args.max_tokens} tokens each, prompt included): {args.direct_rate:.2f} tok/s.",
        "",
        f"## Completeness ({args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens})",
        "",
        "Completions and chat, streamed and not, compared with Model's greedy output.",
        "",
        f"- complete and correct: **{tally.ok} / {total}**",
        f"- incomplete: {tally.incomplete}, wrong text: {tally.wrong}, failed or lost: {tally.failed}",
        f"- wall time {wall:.1f} s, {tally.tokens / wall:.2f} generated tok/s",
        f"- engine: {stats.get('steps', '?')} forward passes, at most "
        f"{stats.get('max_batch_seqs', '?')} sequences in one; prompt tokens "
        f"{stats.get('prompt_tokens', '?')} of which evaluated "
        f"{stats.get('prompt_evaluated', '?')} (the rest reused from slot caches)",
        f"- engine time over the whole run: {stats.get('busy_seconds', 0):.1f} s in steps, of which "
        f"{stats.get('decode_seconds', 0):.1f} s in forward passes (the rest: sampling, text, scheduling)",
        "",
        f"Result: **{'PASS' if passed else 'FAIL'}**",
    ]
    if tally.problems:
        lines += ["", "Problems:", "", *[f"- {p}" for p in tally.problems]]
    report = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report, encoding="utf-8")
    print(report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
