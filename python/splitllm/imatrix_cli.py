"""``splitllm imatrix``: an importance matrix over a calibration text, as llama.cpp's llama-imatrix.

    splitllm imatrix -m MODEL.gguf -f TEXT [-o imatrix.gguf] [-c 512] [--chunks N] [--process-output]
                     [--no-ppl] [--in-file F ...] [--output-format gguf|dat] [-t N] [-b N] [-ngl N]
                     [--parse-special]
    splitllm imatrix --in-file A --in-file B [-o imatrix.gguf]     (combine files only)
    splitllm imatrix --in-file A --show-statistics                  (llama-imatrix's statistics table)

The text is cut into chunks of -c tokens (at least two chunks' worth needed), each evaluated from
an empty cache with BOS first; the file takes the squared activations entering every weight
matrix of the blocks (and output.weight with --process-output). Files given with --in-file are
added (a legacy .dat is scaled by -c, as llama-imatrix does). llama-imatrix's other options
(--save-frequency, --output-frequency, --chunk, ...) are not accepted.
"""

from __future__ import annotations

import argparse
import math
import sys

from splitllm.imatrix import ComputeResult, Imatrix, combine, compute, statistics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "imatrix",
        help="compute an importance matrix for quantization (llama-imatrix)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("-m", "--model", help="model GGUF file")
    p.add_argument("-f", "--file", help="calibration text file")
    p.add_argument("-o", "--output-file", default="imatrix.gguf", help="output file (default imatrix.gguf)")
    p.add_argument("-c", "--ctx-size", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=-1, help="most chunks to process (default all)")
    p.add_argument("--process-output", action="store_true", help="collect output.weight too")
    p.add_argument("--no-ppl", action="store_true", help="do not compute the perplexity")
    p.add_argument(
        "--in-file",
        action="append",
        default=[],
        metavar="FILE",
        help="an imatrix to add to (repeatable); without -f the files are only combined",
    )
    p.add_argument(
        "--output-format",
        choices=("gguf", "dat"),
        default="gguf",
        help="gguf (default) or llama.cpp's legacy dat",
    )
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default all)")
    p.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=2048,
        help="tokens per pass (default 2048; at most 512 and -c: llama.cpp's micro-batches)",
    )
    p.add_argument(
        "-ngl",
        "--n-gpu-layers",
        type=int,
        default=0,
        help="layers on the GPU (their activations are copied back to be summed)",
    )
    p.add_argument("--parse-special", action="store_true", help="parse special tokens in the text")
    p.add_argument(
        "--show-statistics", action="store_true", help="print the statistics of the one --in-file and exit"
    )
    p.set_defaults(func=_cmd)  # fmt: skip


def _cmd(args: argparse.Namespace) -> int:
    if args.ctx_size <= 0:
        raise ValueError("imatrix requires -c (--ctx-size) > 0")
    if args.show_statistics:
        if len(args.in_file) != 1:
            raise ValueError("--show-statistics needs exactly one --in-file")
        print_statistics(Imatrix.load(args.in_file[0]), args.in_file[0], chunk_size=args.ctx_size)
        return 0
    loaded = []
    for f in args.in_file:
        print(f"splitllm imatrix: loading imatrix from '{f}'", file=sys.stderr)
        loaded.append(Imatrix.load(f))
    if not args.file:
        if not loaded:
            raise ValueError("no text (-f) and no imatrix files (--in-file) to combine")
        _save(combine(loaded, chunk_size=args.ctx_size), args)
        return 0
    if not args.model:
        raise ValueError("-m MODEL is required with -f")
    with open(args.file, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read()
    res = _run(args, text)
    if res.ppl is not None:
        print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}")
    _save(combine([*loaded, res.imatrix], chunk_size=args.ctx_size), args)
    return 0


def _run(args: argparse.Namespace, text: str) -> ComputeResult:
    from splitllm.model import Model

    # passes as llama.cpp's micro-batches (512 at most by default): a chunk's last pass of fewer
    # than 16 tokens is left out alike (see compute)
    n_batch = max(1, min(args.batch_size, args.ctx_size, 512))
    with Model(args.model, n_ctx=args.ctx_size, n_batch=n_batch, n_threads=args.threads,
               n_gpu_layers=args.n_gpu_layers) as model:  # fmt: skip

        def progress(i: int, n: int, ppl: float | None) -> None:
            print(f"[{i}]{ppl:.4f}," if ppl is not None else f"[{i}/{n}]", end="", flush=True)

        res = compute(
            model, text, n_ctx=args.ctx_size, n_chunks=args.chunks, process_output=args.process_output,
            ppl=not args.no_ppl, parse_special=args.parse_special, dataset=args.file, progress=progress,
        )  # fmt: skip
    print()
    print(
        f"splitllm imatrix: {res.n_chunks} chunks of {res.n_ctx} tokens in {res.seconds:.2f} s "
        f"({res.n_chunks * res.n_ctx / max(res.seconds, 1e-9):.1f} tokens/s)",
        file=sys.stderr,
    )
    return res


def _save(m: Imatrix, args: argparse.Namespace) -> None:
    if args.output_format == "gguf" and not args.output_file.endswith(".gguf"):
        print("splitllm imatrix: warning: GGUF output without a .gguf suffix (--output-format dat for the "
              "legacy format)", file=sys.stderr)  # fmt: skip
    partial = [n for n, e in m.entries.items() if e.counts.size and not e.counts.all()]
    for name in sorted(partial):
        e = m.entries[name]
        share = 100.0 * (e.counts > 0).sum() / e.counts.size
        print(f"splitllm imatrix: entry '{name}' has partial data ({share:.2f}%)", file=sys.stderr)
    m.save(args.output_file, format=args.output_format)
    what = f"{len(m.entries)} entries ({m.chunk_count} chunks)"
    print(f"splitllm imatrix: saved {what} to '{args.output_file}'", file=sys.stderr)


def print_statistics(m: Imatrix, path: str, *, chunk_size: int = 512) -> None:
    """llama-imatrix --show-statistics: the per-tensor table, then per-layer weighted averages."""
    raw = m.to_raw(chunk_size) if m.legacy else m
    rows = statistics(raw)
    if not rows:
        raise ValueError(f"{path}: no statistics to compute (every count is zero)")
    print(f"\nComputing statistics for {path} ({len(rows)} tensors)\n")
    print(" Layer\t       Tensor\t          Σ(Act²)\t  Min\t            Max\t           μ\t   σ\t % Active\tN"
          "\t   Entropy\tE (norm)\tZD\t  CosSim")  # fmt: skip
    print("=" * 171)
    layers: dict[int, list[float]] = {}
    for r in rows:
        e_norm = 100.0 * r.entropy / math.log2(r.elements) if r.elements > 1 else 0.0
        print(f"{r.layer:>5}\t{r.tensor:<20}\t{r.total:10.2f}\t{r.min:8.4f}\t{r.max:11.4f}\t{r.mean:6.2f}\t"
              f"{r.stddev:6.2f}\t{100 * r.active:8.2f}%\t{r.elements:6d}\t{r.entropy:10.4f}\t{e_norm:6.2f}%\t"
              f"{100 * r.zd:10.2f}%\t{r.cossim:8.4f}")  # fmt: skip
        blk = int(r.layer) if r.layer.isdigit() else -1
        acc = layers.setdefault(blk, [0.0, 0.0, 0.0, 0.0])
        acc[0] += r.elements * r.total
        acc[1] += r.elements * r.zd
        acc[2] += r.elements * r.cossim
        acc[3] += r.elements
    blocks = sorted(k for k in layers if k >= 0)
    print(f"\nComputing weighted average statistics per layer ({len(blocks)} layers)\n")
    print("  Layer\t     μΣ(Act²)\t      μZD\tμCosSim")
    print("=" * 48)
    for blk in blocks:
        bias, zd, cs, n = layers[blk]
        print(f"{blk:5d}\t{bias / n:14.2f}\t{100 * zd / n:10.4f}%\t{cs / n:6.4f}")
    print()
