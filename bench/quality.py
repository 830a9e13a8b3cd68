"""What a quantization costs: SmolLM2-135M-Instruct converted by our converter to F16, Q8_0,
Q6_K, Q5_K_M, Q4_K_M and Q4_0; per type the file size, perplexity, the change in perplexity and
the mean KL divergence against F16, and pp/tg speed of splitllm and llama.cpp with the ratio.

    PYTHONPATH=python:convert python3 bench/quality.py [--chunks 16] [-r 5] [-t 2] \\
        [--types q8_0,q4_k_m] [--imatrix] [--out bench/results/quality.md]

Source: the Hugging Face directory that tests/hf_fixtures.py rebuilds from the Q4_1 GGUF (the
only SmolLM2 weights available offline), so F16 holds the Q4_1 model's weights (rounded to f16)
and every other type re-quantizes them. Conversions are cached in ~/.cache/splitllm/quality/
(--reconvert redoes them).

With --imatrix, an importance matrix of the F16 model is computed (splitllm.imatrix.compute, as
llama-imatrix does: chunks of 512 tokens) over calibration text that the scored chunks do not
see (the last --calib-chunks chunks of the text), and every type is converted a second time with
it (convert-hf --imatrix); the types that need a matrix (IQ2_XXS, IQ1_S, ...) only with it.

Perplexity: splitllm.perplexity, as llama-perplexity computes it: chunks of 512 tokens of
tinyshakespeare.txt, second half of each scored. F16's log-probabilities are the base for
ΔPPL, KL(F16 || type) and the same-top-token rate. F16 is always measured (it is the base).
Speed: the timing code of bench/compare.py (splitllm-bench, then llama.cpp through
llama-cpp-python, one after the other), pp512 and tg128 at 2 threads by default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests")]

import compare as C  # noqa: E402
import hf_fixtures as F  # noqa: E402

TYPES = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
IMATRIX = " + imatrix"  # the label of a type converted with the importance matrix
N_CTX = 512


@dataclass
class Quality:
    type: str
    path: Path
    ppl: float
    ppl_error: float
    delta_ppl: float = 0.0
    kl_mean: float = 0.0
    kl_mean_error: float = 0.0
    same_top: float = 1.0


def default_text() -> Path:
    shared = Path(os.environ.get("SPLITLLM_SHARED", REPO.parent / "shared"))
    return shared / "data" / "text" / "tinyshakespeare.txt"


def quality_dir() -> Path:
    from splitllm.assets import cache_dir

    d = cache_dir() / "quality"
    d.mkdir(parents=True, exist_ok=True)
    return d


def converted(qtype: str, *, reconvert: bool, threads: int, imatrix: Path | None = None) -> Path:
    """SmolLM2 converted by convert-hf to ``qtype`` (with ``imatrix``), cached (stamped with the
    rebuild's version and the matrix file's size and time)."""
    from splitllm_convert import convert

    tag = ".imatrix" if imatrix else ""
    out = quality_dir() / f"SmolLM2-135M-Instruct.{qtype.upper()}{tag}.gguf"
    stamp = out.with_suffix(".stamp")
    version = F.REBUILD_VERSION
    if imatrix:
        st = imatrix.stat()
        version += f" imatrix {st.st_size} {st.st_mtime_ns}"
    if reconvert or not (out.is_file() and stamp.is_file() and stamp.read_text() == version):
        log(f"converting to {qtype}{' with the importance matrix' if imatrix else ''}")
        convert(
            F.smollm2_hf_dir(), out, type=qtype, force=True, quiet=True, n_threads=threads, imatrix=imatrix
        )
        stamp.write_text(version)
    return out


def calibration_imatrix(base: Path, tokens: list[int], *, threads: int) -> Path:
    """The importance matrix of ``base`` over ``tokens`` (llama-imatrix's chunks of N_CTX)."""
    from splitllm import Model
    from splitllm.imatrix import compute

    out = quality_dir() / "SmolLM2-135M-Instruct.imatrix.gguf"
    t0 = time.perf_counter()
    with Model(base, n_ctx=N_CTX, n_batch=N_CTX, n_threads=threads) as model:
        r = compute(model, tokens, n_ctx=N_CTX, dataset="tinyshakespeare (calibration part)")
    r.imatrix.save(out)
    log(f"importance matrix over {len(tokens)} tokens: {out} ({time.perf_counter() - t0:.0f} s)")
    return out


def log(msg: str) -> None:
    print(f"quality: {msg}", file=sys.stderr, flush=True)


def measure_quality(paths: dict[str, Path], text: str, *, chunks: int, threads: int) -> list[Quality]:
    """Perplexity of each file; F16 first, its log-probabilities the base for the others."""
    from splitllm import Model
    from splitllm.perplexity import kl_divergence, perplexity

    out = []
    with tempfile.TemporaryDirectory(dir=quality_dir(), prefix=".base-") as tmp:
        base = Path(tmp) / "f16.npz"
        for qtype, path in paths.items():
            t0 = time.perf_counter()
            with Model(path, n_ctx=N_CTX, n_batch=N_CTX, n_threads=threads) as model:
                if qtype == "f16":
                    p = perplexity(model, text, n_ctx=N_CTX, n_chunks=chunks, save_logits=base)
                    q = Quality(qtype, path, p.ppl, p.ppl_error)
                else:
                    k = kl_divergence(model, text, base)
                    q = Quality(qtype, path, k.ppl, k.ppl_error, k.delta_ppl, k.kl_mean, k.kl_mean_error,
                                k.same_top)  # fmt: skip
            log(f"{qtype}: PPL {q.ppl:.4f}, ΔPPL {q.delta_ppl:+.4f}, KL {q.kl_mean:.5f} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
            out.append(q)
    return out


def speed_cell(g: dict[str, C.Row] | None) -> tuple[str, str, str]:
    if not g:
        return "–", "–", "–"
    return C.fmt_ts(g.get("splitllm")), C.fmt_ts(g.get("llama.cpp")), C.fmt_ratio(C.ratio(g))


def table(qs: list[Quality], rows: list[C.Row], tests: list[C.Test]) -> str:
    groups = {(g[e].model_filename, g[e].test): g for g in C.pairs(rows) for e in g}
    names = [t.name for t in tests]
    head = "| type | file size | PPL | ΔPPL | mean KL | same top |"
    rule = "|---|---:|---:|---:|---:|---:|"
    for n in names:
        head += f" splitllm {n} | llama.cpp {n} | ratio |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for q in qs:
        cells = [
            q.type.removesuffix(IMATRIX).upper() + (IMATRIX if q.type.endswith(IMATRIX) else ""),
            f"{q.path.stat().st_size / 2**20:.1f} MiB",
            f"{q.ppl:.4f} ± {q.ppl_error:.4f}",
        ]
        if q.type == "f16":
            cells += ["(base)", "(base)", "(base)"]
        else:
            cells += [
                f"{q.delta_ppl:+.4f}",
                f"{q.kl_mean:.5f} ± {q.kl_mean_error:.5f}",
                f"{100 * q.same_top:.2f}%",
            ]
        for n in names:
            cells += speed_cell(groups.get((str(q.path), n)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def needs_imatrix(t: str) -> bool:
    from splitllm_convert.mix import FILE_TYPES

    return FILE_TYPES[t].needs_imatrix


def parse_types(s: str) -> list[str]:
    from splitllm_convert.mix import FILE_TYPES

    types = [t.strip().lower() for t in s.split(",") if t.strip()]
    bad = [t for t in types if t not in FILE_TYPES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown type {', '.join(bad)}; choose from {', '.join(FILE_TYPES)}"
        )
    return ["f16"] + [t for t in types if t != "f16"]  # F16 is the base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=16, help="chunks of 512 tokens scored (default 16)")
    ap.add_argument("--types", type=parse_types, default=TYPES, help="comma-separated (default: all six)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads, for everything (default 2)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="pp test tokens (default 512; 0 skips)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="tg test tokens (default 128; 0 skips)")
    C.add_bench_options(ap)
    ap.add_argument("--text", type=Path, default=default_text(), help="text to score (tinyshakespeare.txt)")
    ap.add_argument("--reconvert", action="store_true", help="convert again even when cached")
    ap.add_argument("--imatrix", action="store_true",
                    help="also convert every type with an importance matrix of the F16 model")  # fmt: skip
    ap.add_argument("--calib-chunks", type=int, default=32,
                    help="chunks of 512 tokens at the text's end for the matrix (default 32)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quality.md", help="report file")
    args = ap.parse_args(argv)
    if not args.text.is_file():
        ap.error(f"{args.text}: no such file (set SPLITLLM_SHARED or give --text)")
    if args.chunks < 1 or args.repetitions < 1 or args.calib_chunks < 1:
        ap.error("--chunks, --calib-chunks and -r must be at least 1")
    needs = [t for t in args.types if needs_imatrix(t)]
    if needs and not args.imatrix:
        ap.error(f"{', '.join(needs)} need an importance matrix: add --imatrix")
    # (fails early when llama-cpp-python is missing)
    llama = C.LlamaCpp(flash_attn=args.flash_attn, no_repack=C.no_repack(args.no_repack))

    load_before = C.loadavg()
    text = args.text.read_text(encoding="utf-8", errors="replace")
    paths = {}
    for t in args.types:
        if not needs_imatrix(t):
            paths[t] = converted(t, reconvert=args.reconvert, threads=args.threads)
    if args.imatrix:
        from splitllm import Model

        with Model(paths["f16"], n_ctx=N_CTX) as m:
            tokens = m.tokenize(text.encode("utf-8"), add_bos=False)
        n_calib = args.calib_chunks * N_CTX
        if len(tokens) < (args.chunks + args.calib_chunks) * N_CTX:
            ap.error(f"{args.text}: {len(tokens)} tokens, too few for {args.chunks} scored and "
                     f"{args.calib_chunks} calibration chunks")  # fmt: skip
        matrix = calibration_imatrix(paths["f16"], tokens[-n_calib:], threads=args.threads)
        for t in args.types[1:]:
            paths[t + IMATRIX] = converted(t, reconvert=args.reconvert, threads=args.threads, imatrix=matrix)
    qs = measure_quality(paths, text, chunks=args.chunks, threads=args.threads)
    tests = C.make_tests([args.n_prompt], [args.n_gen], [0])
    rows, build = C.measure(list(paths.values()), tests, threads=[args.threads], n_gpu_layers=[0],
                            reps=args.repetitions, n_batch=args.batch_size, llama=llama, binary=args.bench,
                            log=log) if tests else ([], {})  # fmt: skip
    load = (load_before, C.loadavg())

    body = table(qs, rows, tests)
    fa = "on" if args.flash_attn else "off"
    notes = [
        "model: SmolLM2-135M-Instruct, Hugging Face directory rebuilt from its Q4_1 GGUF "
        "(tests/hf_fixtures.py), converted by convert-hf; F16 therefore holds the Q4_1 weights "
        "(rounded to f16)",
        f"quality: {qs[0].path.parent}; perplexity over the first {args.chunks} chunk(s) of {N_CTX} tokens "
        f"of {args.text.name} (second half of each scored), ± standard error; ΔPPL, mean KL(F16 || type) "
        "and same top token against F16's log-probabilities",
        *(
            [
                f"imatrix: an importance matrix of F16 over the last {args.calib_chunks} chunks of {N_CTX} "
                f"tokens of {args.text.name} (not among the scored ones), "
                "splitllm.imatrix.compute (llama-imatrix's method); '+ imatrix' types converted with it"
            ]
            if args.imatrix
            else []
        ),
        f"speed: tokens/s, mean ± std over {args.repetitions} repetition(s) after one warm-up, "
        f"{args.threads} threads, random tokens, n_batch = n_ubatch = {args.batch_size}; "
        f"ratio: splitllm / llama.cpp; engines one after the other; llama.cpp flash attention {fa}",
        C.repack_note(llama.no_repack),
    ]
    report = C.header("Quantization quality and speed: SmolLM2-135M", load=load, build=build,
                      llama_version=llama.version, extra=notes)  # fmt: skip
    print(body)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n" + body + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
