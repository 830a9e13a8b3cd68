"""splitllm against llama.cpp on the same GGUF files: prompt processing (pp) and generation (tg)
tokens/s, measured in one run, with the ratio per test.

    PYTHONPATH=python:convert python3 bench/compare.py -m MODEL.gguf [-m MODEL2.gguf] \\
        [-p 512] [-n 128] [-t 2] [-ngl 0] [-d 0] [-r 5] [--bandwidth 38] \\
        [--out bench/results/compare.md] [--plot tokens_per_s.png] [--json]

splitllm runs as its C++ benchmark binary, splitllm-bench (no Python in the timed loop);
llama.cpp runs through llama-cpp-python's low-level API (llama_decode on llama_batch_get_one
batches, no Python per token beyond one call). Both get random tokens, the same context size,
n_batch = n_ubatch = -b, the same thread count for prompt and generation, one warm-up (a batch of
the prompt for pp, one token for tg, as llama-bench does) and then -r timed repetitions, the KV
cache cleared before each. The engines take turns per model x threads x n_gpu_layers: never two
at once. Flash attention is off in llama.cpp unless --flash-attn.

tg is also reported as a fraction of the memory bandwidth: model bytes (the GGUF's tensor bytes,
all read once per token) x tokens/s / --bandwidth. The default, 38 GB/s, is the nominal figure
for the development machine with 2 threads, not a measurement of this run.

Lists are comma-separated (-t 1,2); -m may be repeated. --plot draws tokens/s against threads, or
against n_gpu_layers when -ngl has several values (needs matplotlib: pip install matplotlib).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from benchinfo import commit, cpu_model, machine

REPO = Path(__file__).resolve().parent.parent
NOMINAL_BANDWIDTH_GBS = 38.0  # the development machine with 2 threads (issue 4)
ENGINES = ("splitllm", "llama.cpp")


@dataclass
class Row:
    """One engine on one test: tokens/s over the repetitions."""

    engine: str
    model_filename: str
    model_size: int  # bytes of tensor data
    n_params: int
    n_threads: int
    n_gpu_layers: int
    n_batch: int
    test: str  # pp512, tg128, pp512 @ d1024
    n_prompt: int
    n_gen: int
    n_depth: int
    samples_ts: list[float] = field(default_factory=list)
    model_type: str = ""  # splitllm-bench's description, e.g. "llama 135M Q4_1"

    @property
    def model(self) -> str:
        return Path(self.model_filename).name

    @property
    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0

    def bandwidth_fraction(self, model_bytes: int, bandwidth_gbs: float) -> float | None:
        """Bytes read per second as a fraction of ``bandwidth_gbs`` (tg only)."""
        return model_bytes * self.avg_ts / (bandwidth_gbs * 1e9) if self.n_gen > 0 else None

    def as_dict(self, bandwidth_gbs: float | None = None) -> dict[str, object]:
        d = asdict(self) | {"model": self.model, "avg_ts": self.avg_ts, "stddev_ts": self.stddev_ts}
        if bandwidth_gbs is not None and self.n_gen > 0:
            d["bandwidth_fraction"] = self.bandwidth_fraction(self.model_size, bandwidth_gbs)
        return d


@dataclass(frozen=True)
class Test:
    n_prompt: int
    n_gen: int
    n_depth: int

    @property
    def name(self) -> str:
        base = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return base + (f" @ d{self.n_depth}" if self.n_depth else "")


def make_tests(n_prompt: Iterable[int], n_gen: Iterable[int], depths: Iterable[int]) -> list[Test]:
    """The tests splitllm-bench runs, in its order: per depth, pp then tg (0 skips a test)."""
    out = []
    for d in depths:
        out += [Test(p, 0, d) for p in n_prompt if p > 0]
        out += [Test(0, n, d) for n in n_gen if n > 0]
    return out


def context_size(tests: list[Test]) -> int:
    """splitllm-bench's n_ctx: the longest test, at least 256, rounded up to 256."""
    n = max([256] + [t.n_depth + t.n_prompt + t.n_gen for t in tests])
    return (n + 255) // 256 * 256


# ---- splitllm ----


def bench_binary(explicit: Path | None = None) -> Path:
    """splitllm-bench: next to the package (in-place build), in the scripts folder, or on PATH."""
    if explicit:
        return explicit
    import splitllm

    name = "splitllm-bench"
    for c in (Path(splitllm.__file__).parent / name, Path(sys.executable).parent / name):
        if c.is_file():
            return c
    found = shutil.which(name)
    if found:
        return Path(found)
    raise SystemExit(f"compare: {name} is not next to {splitllm.__file__} nor on PATH: build the C++ core")


def run_splitllm(
    model: Path, tests: list[Test], *, threads: int, n_gpu_layers: int, reps: int, n_batch: int,
    binary: Path | None = None,
) -> tuple[list[Row], dict[str, str]]:  # fmt: skip
    """Runs splitllm-bench once for these tests; returns the rows and its build info (commit, cpu_info)."""
    pp = sorted({t.n_prompt for t in tests if t.n_prompt}) or [0]
    tg = sorted({t.n_gen for t in tests if t.n_gen}) or [0]
    depths = sorted({t.n_depth for t in tests})
    cmd = [str(bench_binary(binary)), "-m", str(model), "-t", str(threads), "-ngl", str(n_gpu_layers),
           "-b", str(n_batch), "-r", str(reps), "-o", "json", "-p", ",".join(map(str, pp)),
           "-n", ",".join(map(str, tg)), "-d", ",".join(map(str, depths))]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"splitllm-bench failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    for line in proc.stderr.splitlines():
        print(f"  {line}", file=sys.stderr)  # warnings, e.g. no GPU for -ngl
    rows, build = [], {}
    for r in json.loads(proc.stdout):
        build = {"commit": r["commit"], "cpu_info": r["cpu_info"]}
        rows.append(Row(
            engine="splitllm", model_filename=str(model), model_size=int(r["model_size"]),
            n_params=int(r["model_n_params"]), n_threads=int(r["n_threads"]),
            n_gpu_layers=int(r["n_gpu_layers"]), n_batch=int(r["n_batch"]), test=r["test"],
            n_prompt=int(r["n_prompt"]), n_gen=int(r["n_gen"]), n_depth=int(r["n_depth"]),
            samples_ts=[float(x) for x in r["samples_ts"]], model_type=r["model"],
        ))  # fmt: skip
    return rows, build


# ---- llama.cpp ----


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level bindings, timed like splitllm-bench."""

    def __init__(self, *, flash_attn: bool = False, seed: int = 0, no_repack: bool = False) -> None:
        try:
            import llama_cpp
        except ImportError as e:
            raise SystemExit(f"compare: llama-cpp-python is needed for the comparison ({e})") from e
        import logging

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback: errors only
        llama_cpp.llama_backend_init()
        self.lib = llama_cpp
        self.version = getattr(llama_cpp, "__version__", "?")
        self.flash_attn = flash_attn
        self.seed = seed
        self.no_repack = no_repack

    def run(
        self, model_path: Path, tests: list[Test], *, threads: int, n_gpu_layers: int, reps: int, n_batch: int
    ) -> list[Row]:
        ll = self.lib
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = 999 if n_gpu_layers < 0 or n_gpu_layers >= 99 else n_gpu_layers
        mp.use_extra_bufts = not self.no_repack
        model = ll.llama_model_load_from_file(str(model_path).encode(), mp)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        try:
            cp = ll.llama_context_default_params()
            cp.n_ctx = context_size(tests)
            cp.n_batch = cp.n_ubatch = n_batch
            cp.n_threads = cp.n_threads_batch = threads
            cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else (
                ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)  # fmt: skip
            ctx = ll.llama_init_from_model(model, cp)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context for {model_path}")
            try:
                n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
                size, n_params = int(ll.llama_model_size(model)), int(ll.llama_model_n_params(model))
                rows = []
                for t in tests:
                    samples = self._time_test(ctx, t, n_vocab, reps, n_batch)
                    rows.append(Row(
                        engine="llama.cpp", model_filename=str(model_path), model_size=size,
                        n_params=n_params, n_threads=threads, n_gpu_layers=n_gpu_layers, n_batch=n_batch,
                        test=t.name, n_prompt=t.n_prompt, n_gen=t.n_gen, n_depth=t.n_depth,
                        samples_ts=samples,
                    ))  # fmt: skip
                return rows
            finally:
                ll.llama_free(ctx)
        finally:
            ll.llama_model_free(model)

    def _batches(self, rng: np.random.Generator, n: int, n_vocab: int, size: int) -> list:
        """n random tokens as ctypes arrays of at most ``size`` tokens, made before any timing."""
        toks = rng.integers(0, n_vocab, size=n).tolist()
        return [(self.lib.llama_token * len(p))(*p) for p in (toks[i : i + size] for i in range(0, n, size))]

    def _decode(self, ctx: object, batches: list) -> None:
        for arr in batches:
            rc = self.lib.llama_decode(ctx, self.lib.llama_batch_get_one(arr, len(arr)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        self.lib.llama_synchronize(ctx)

    def _time_test(self, ctx: object, t: Test, n_vocab: int, reps: int, n_batch: int) -> list[float]:
        ll, rng = self.lib, np.random.default_rng(self.seed)
        mem = ll.llama_get_memory(ctx)

        def once(warmup: bool) -> float:
            ll.llama_memory_clear(mem, True)
            if t.n_depth:
                self._decode(ctx, self._batches(rng, t.n_depth, n_vocab, n_batch))
            if t.n_prompt:
                work = self._batches(
                    rng, min(t.n_prompt, n_batch) if warmup else t.n_prompt, n_vocab, n_batch
                )
            else:
                work = self._batches(rng, 1 if warmup else t.n_gen, n_vocab, 1)
            t0 = time.perf_counter()
            self._decode(ctx, work)
            return time.perf_counter() - t0

        once(True)
        n = t.n_prompt or t.n_gen
        return [n / once(False) for _ in range(reps)]


# ---- one run of both engines ----


def measure(
    models: list[Path], tests: list[Test], *, threads: list[int], n_gpu_layers: list[int], reps: int,
    n_batch: int, llama: LlamaCpp, binary: Path | None = None, log: Callable[[str], None] | None = None,
) -> tuple[list[Row], dict[str, str]]:  # fmt: skip
    """Both engines on every model x threads x n_gpu_layers, one after the other; rows and
    splitllm-bench's build info."""
    rows, build = [], {}
    for model in models:
        for t in threads:
            for ngl in n_gpu_layers:
                if log:
                    log(f"{model.name}: threads {t}, n_gpu_layers {ngl}: splitllm")
                ours, build = run_splitllm(model, tests, threads=t, n_gpu_layers=ngl, reps=reps,
                                           n_batch=n_batch, binary=binary)  # fmt: skip
                if log:
                    log(f"{model.name}: threads {t}, n_gpu_layers {ngl}: llama.cpp")
                ref = llama.run(model, tests, threads=t, n_gpu_layers=ngl, reps=reps, n_batch=n_batch)
                size = {r.test: r.model_size for r in ours}
                for r in ref:  # one figure of model bytes for both engines: splitllm-bench's
                    r.model_size = size.get(r.test, r.model_size)
                    r.model_type = ours[0].model_type if ours else ""
                rows += ours + ref
    return rows, build


def pairs(rows: list[Row]) -> list[dict[str, Row]]:
    """Rows grouped by test setting, in measuring order: {engine: row}."""
    groups: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        key = (r.model_filename, r.n_threads, r.n_gpu_layers, r.n_batch, r.test)
        groups.setdefault(key, {})[r.engine] = r
    return list(groups.values())


def fmt_ts(r: Row | None) -> str:
    return f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}" if r else "–"


def ratio(group: dict[str, Row]) -> float | None:
    ours, ref = group.get("splitllm"), group.get("llama.cpp")
    return ours.avg_ts / ref.avg_ts if ours and ref and ref.avg_ts > 0 else None


def fmt_bw(r: Row | None, bandwidth_gbs: float) -> str:
    f = r.bandwidth_fraction(r.model_size, bandwidth_gbs) if r else None
    return "–" if f is None else f"{100 * f:.0f}%"


def fmt_ratio(q: float | None) -> str:
    return "–" if q is None else f"{q:.2f}"


def table(rows: list[Row], bandwidth_gbs: float) -> str:
    head = ("| model | size | threads | ngl | test | splitllm t/s | llama.cpp t/s | ratio "
            "| splitllm BW | llama.cpp BW |")  # fmt: skip
    lines = [head, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for g in pairs(rows):
        r = g.get("splitllm") or g["llama.cpp"]
        q = ratio(g)
        lines.append(
            f"| {r.model} | {r.model_size / 2**20:.1f} MiB | {r.n_threads} | {r.n_gpu_layers} | {r.test} "
            f"| {fmt_ts(g.get('splitllm'))} | {fmt_ts(g.get('llama.cpp'))} | {fmt_ratio(q)} "
            f"| {fmt_bw(g.get('splitllm'), bandwidth_gbs)} | {fmt_bw(g.get('llama.cpp'), bandwidth_gbs)} |"
        )
    return "\n".join(lines)


def table_notes(bandwidth_gbs: float, reps: int) -> str:
    return (
        f"tokens/s: mean ± standard deviation over {reps} repetition{'s' if reps > 1 else ''} after one "
        "warm-up; ratio: splitllm / llama.cpp.\n"
        f"BW (tg only): model bytes × tokens/s ÷ {bandwidth_gbs:g} GB/s, the nominal memory bandwidth "
        "given with --bandwidth (not measured in this run)."
    )


# ---- report ----


def loadavg() -> float:
    return os.getloadavg()[0]


def header(title: str, *, load: tuple[float, float], build: dict[str, str], llama_version: str,
           extra: Iterable[str] = ()) -> str:  # fmt: skip
    """The Markdown head of a results file: machine, commit, date, load, llama.cpp version."""
    head = commit()
    built = build.get("commit", "?")
    same = built == "?" or built.split("-")[0] == head.split("-")[0]
    stale = "" if same else " (differs from HEAD: rebuild?)"
    today = datetime.date.today().isoformat()
    lines = [
        f"# {title}",
        "",
        f"- machine: {machine()}; CPU features used by splitllm: {build.get('cpu_info', '?')}",
        f"- commit: {head} (splitllm-bench built from {built}{stale}), date: {today}",
        f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}",
        f"- llama.cpp: llama-cpp-python {llama_version} (low-level API, built from source), same GGUF files",
        *(f"- {x}" for x in extra),
        f"- command: `{' '.join(['python3', *sys.argv])}`",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, x: str) -> None:
    """tokens/s against ``x`` (n_threads or n_gpu_layers), one panel per test, both engines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"compare: --plot needs matplotlib ({e}); pip install matplotlib") from e
    tests = list(dict.fromkeys(r.test for r in rows))
    ncols = min(2, len(tests))
    nrows = (len(tests) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(tests) :]:
        ax.set_visible(False)
    for ax, test in zip(axes.flat, tests, strict=False):
        series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        for r in rows:
            if r.test == test:
                series.setdefault((r.engine, r.model), []).append((getattr(r, x), r.avg_ts, r.stddev_ts))
        for (engine, model), pts in series.items():
            xs, ys, es = zip(*sorted(pts), strict=True)
            fmt = "-o" if engine == "splitllm" else "--s"
            ax.errorbar(xs, ys, yerr=es, fmt=fmt, capsize=3, label=f"{engine}: {model}")
        ax.set_xlabel("threads" if x == "n_threads" else "n_gpu_layers")
        ax.set_ylabel("tokens/s")
        ax.set_xticks(sorted({getattr(r, x) for r in rows}))
        ax.set_title(test)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"splitllm vs llama.cpp ({cpu_model()}, {commit()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line ----


def int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a comma-separated list of integers") from None


def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_int8" in flags or " amx_tile" in flags


def no_repack(choice: str) -> bool:
    """--no-repack: "auto" is on where the CPU has AMX, where llama-cpp-python 0.3.36's AMX buffer
    type (a repacked weight layout) crashes in ggml_backend_amx_mul_mat on the first quantized
    matmul; its plain AVX-512 kernels then run, as llama-bench's -nr 1 runs them."""
    return cpu_has_amx() if choice == "auto" else choice == "1"


def repack_note(on: bool) -> str:
    amx = " (this CPU has AMX, where llama.cpp's AMX buffer type crashes)" if on and cpu_has_amx() else ""
    return f"llama.cpp weight repacking (extra buffer types) {'off' if on else 'on'}{amx}"


def add_bench_options(ap: argparse.ArgumentParser) -> None:
    """Options shared with quality.py: repetitions, batch, flash attention, repacking, the binary."""
    ap.add_argument("-r", "--repetitions", type=int, default=5, help="timed runs per test (default 5)")
    ap.add_argument("-b", "--batch-size", type=int, default=512, help="n_batch = n_ubatch (default 512)")
    ap.add_argument("--flash-attn", action="store_true", help="flash attention on in llama.cpp")
    ap.add_argument(
        "-nr", "--no-repack", choices=("auto", "0", "1"), default="auto",
        help="llama.cpp without its repacked weight layouts (llama-bench's -nr); auto: on where the "
        "CPU has AMX, whose llama.cpp path crashes (default auto)",
    )  # fmt: skip
    ap.add_argument("--bench", type=Path, default=None, help="the splitllm-bench binary (default: found)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, action="append", required=True, help="GGUF file (repeatable)")
    ap.add_argument("-p", "--n-prompt", type=int_list, default=[512], help="prompt tokens (default 512)")
    ap.add_argument("-n", "--n-gen", type=int_list, default=[128], help="generated tokens (default 128)")
    ap.add_argument("-t", "--threads", type=int_list, default=[2], help="threads (default 2)")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int_list, default=[0], help="GPU layers (default 0)")
    ap.add_argument(
        "-d", "--n-depth", type=int_list, default=[0], help="tokens in the cache before (default 0)"
    )
    add_bench_options(ap)
    ap.add_argument(
        "--bandwidth",
        type=float,
        default=NOMINAL_BANDWIDTH_GBS,
        help=f"memory bandwidth in GB/s for tg (default {NOMINAL_BANDWIDTH_GBS:g}: nominal)",
    )
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--plot", type=Path, help="draw tokens/s to this PNG (matplotlib)")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    args = ap.parse_args(argv)

    for m in args.model:
        if not m.is_file():
            ap.error(f"{m}: no such file")
    if args.repetitions < 1:
        ap.error("-r must be at least 1")
    tests = make_tests(args.n_prompt, args.n_gen, args.n_depth)
    if not tests:
        ap.error("nothing to run: -p and -n are both 0")
    llama = LlamaCpp(flash_attn=args.flash_attn, no_repack=no_repack(args.no_repack))
    if args.plot:  # fail before the measurements, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            ap.error(f"--plot needs matplotlib ({e}); pip install matplotlib")

    load_before = loadavg()
    rows, build = measure(args.model, tests, threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                          reps=args.repetitions, n_batch=args.batch_size, llama=llama, binary=args.bench,
                          log=lambda s: print(f"compare: {s}", file=sys.stderr))  # fmt: skip
    load = (load_before, loadavg())

    body = table(rows, args.bandwidth) + "\n\n" + table_notes(args.bandwidth, args.repetitions) + "\n"
    if args.json:
        print(json.dumps([r.as_dict(args.bandwidth) for r in rows], indent=1))
    else:
        print(body)
    if args.out:
        fa = "on" if args.flash_attn else "off"
        notes = [
            f"method: random tokens, n_batch = n_ubatch = {args.batch_size}, one warm-up then "
            f"{args.repetitions} repetitions; the engines run one after the other, never at once; "
            f"llama.cpp flash attention {fa}",
            repack_note(llama.no_repack),
        ]
        text = header("splitllm vs llama.cpp: tokens/s", load=load, build=build, llama_version=llama.version,
                      extra=notes)  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n" + body)
        print(f"compare: wrote {args.out}", file=sys.stderr)
    if args.plot:
        x = "n_gpu_layers" if len(args.n_gpu_layers) > 1 else "n_threads"
        plot(rows, args.plot, x)
        print(f"compare: wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
