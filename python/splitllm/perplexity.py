"""Perplexity and KL divergence, computed as llama.cpp's llama-perplexity computes them.

The text is tokenized once (with BOS when the vocabulary adds one) and cut into chunks of
``n_ctx`` tokens; each chunk is evaluated in a fresh context (its first token replaced by BOS)
and only the second half is scored: position j predicts token j + 1 for
``n_ctx // 2 <= j < n_ctx - 1``. Perplexity is exp of the mean negative log-likelihood, with the
standard error of the mean carried through.

``save_logits`` keeps the scored log-probabilities (float16) of a base model in an .npz file;
``kl_base`` compares a model against it: KL(base || model) statistics, the change in perplexity,
and how often both put the same token on top — what llama-perplexity's KL-divergence mode prints.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from splitllm.model import Model


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def chunk_tokens(model: Model, text: str, n_ctx: int, n_chunks: int | None) -> list[list[int]]:
    """The chunks llama-perplexity evaluates: n_ctx tokens each, the first set to BOS."""
    if n_ctx < 4:
        raise ValueError(f"n_ctx must be at least 4 (got {n_ctx})")
    if n_ctx > model.n_ctx():
        raise ValueError(f"n_ctx {n_ctx} is larger than the model's context {model.n_ctx()}")
    tokens = model.tokenize(text.encode("utf-8"), add_bos=True)
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of n_ctx = {n_ctx}")
    n = available if n_chunks is None or n_chunks <= 0 else min(n_chunks, available)
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    chunks = []
    for i in range(n):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
        if bos is not None:
            chunk[0] = bos
        chunks.append(chunk)
    return chunks


def scored_logprobs(model: Model, chunks: list[list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each chunk: log-probabilities (n_scored, n_vocab) of the scored positions and the
    tokens they predict."""
    for chunk in chunks:
        n_ctx = len(chunk)
        first = n_ctx // 2
        logits = model.logits(chunk)
        yield log_softmax(logits[first : n_ctx - 1]), np.asarray(chunk[first + 1 :], dtype=np.int64)


@dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float  # standard error, as llama-perplexity's "±"
    n_chunks: int
    n_ctx: int
    n_tokens_scored: int
    chunk_ppl: list[float]  # running estimate after each chunk, as llama-perplexity prints


def _ppl_stats(nll: np.ndarray) -> tuple[float, float]:
    n = len(nll)
    mean = float(nll.mean())
    ppl = math.exp(mean)
    if n < 2:
        return ppl, float("nan")
    var = float((nll * nll).mean() - mean * mean)
    return ppl, ppl * math.sqrt(max(var, 0.0) / (n - 1))


def perplexity(
    model: Model,
    text: str,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    save_logits: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``text`` under ``model``; optionally saves the scored log-probabilities."""
    chunks = chunk_tokens(model, text, n_ctx, n_chunks)
    nll_parts, running, saved, targets = [], [], [], []
    for i, (lp, tgt) in enumerate(scored_logprobs(model, chunks)):
        nll_parts.append(-lp[np.arange(len(tgt)), tgt])
        running.append(math.exp(float(np.concatenate(nll_parts).mean())))
        if save_logits is not None:
            saved.append(lp.astype(np.float16))
            targets.append(tgt)
        if progress:
            progress(i + 1, len(chunks), running[-1])
    nll = np.concatenate(nll_parts)
    ppl, err = _ppl_stats(nll)
    if save_logits is not None:
        np.savez(
            save_logits,
            logprobs=np.concatenate(saved),
            targets=np.concatenate(targets),
            n_ctx=np.int64(n_ctx),
            n_chunks=np.int64(len(chunks)),
        )
    return PerplexityResult(ppl, err, len(chunks), n_ctx, len(nll), running)


@dataclass
class KLResult:
    ppl: float
    ppl_error: float
    base_ppl: float
    delta_ppl: float
    kl_mean: float
    kl_mean_error: float
    kl_median: float
    kl_max: float
    kl_p99: float
    same_top: float  # fraction of positions where both models rank the same token first
    n_tokens_scored: int


def kl_divergence(
    model: Model, text: str, base: str | Path, *, progress: Callable[[int, int, float], None] | None = None
) -> KLResult:
    """Compares ``model`` with the base log-probabilities saved by ``perplexity(save_logits=...)``."""
    with np.load(base) as f:
        base_lp = f["logprobs"]
        base_targets = f["targets"]
        n_ctx = int(f["n_ctx"])
        n_chunks = int(f["n_chunks"])
    chunks = chunk_tokens(model, text, n_ctx, n_chunks)
    if len(chunks) != n_chunks:
        raise ValueError(f"{base}: saved for {n_chunks} chunks but the text gives {len(chunks)}")
    kls, nll, base_nll, same = [], [], [], []
    row = 0
    for i, (lp, tgt) in enumerate(scored_logprobs(model, chunks)):
        b = base_lp[row : row + len(tgt)].astype(np.float64)
        if b.shape != lp.shape or not np.array_equal(base_targets[row : row + len(tgt)], tgt):
            raise ValueError(f"{base}: the saved logits do not match this text or vocabulary")
        row += len(tgt)
        kls.append((np.exp(b) * (b - lp)).sum(axis=-1))
        idx = np.arange(len(tgt))
        nll.append(-lp[idx, tgt])
        base_nll.append(-b[idx, tgt])
        same.append(lp.argmax(-1) == b.argmax(-1))
        if progress:
            progress(i + 1, len(chunks), float(np.concatenate(kls).mean()))
    kl = np.concatenate(kls)
    ppl, err = _ppl_stats(np.concatenate(nll))
    base_ppl, _ = _ppl_stats(np.concatenate(base_nll))
    return KLResult(
        ppl=ppl,
        ppl_error=err,
        base_ppl=base_ppl,
        delta_ppl=ppl - base_ppl,
        kl_mean=float(kl.mean()),
        kl_mean_error=float(kl.std(ddof=1) / math.sqrt(len(kl))) if len(kl) > 1 else 0.0,
        kl_median=float(np.median(kl)),
        kl_max=float(kl.max()),
        kl_p99=float(np.percentile(kl, 99)),
        same_top=float(np.concatenate(same).mean()),
        n_tokens_scored=len(kl),
    )


# ---- command line ----


def add_parser(sub: argparse._SubParsersAction) -> None:
    from splitllm.cli import add_model_options

    p = sub.add_parser(
        "perplexity",
        help="perplexity of a text, and KL divergence against a base model",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("model", help="GGUF model file")
    p.add_argument("-f", "--file", required=True, help="text file to score")
    p.add_argument("--chunks", type=int, default=None, help="score only the first N chunks")
    p.add_argument(
        "--save-logits", metavar="BASE.npz", help="save the scored log-probabilities for --kl-base"
    )
    p.add_argument(
        "--kl-base", metavar="BASE.npz", help="compare with log-probabilities saved by --save-logits"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(p)
    p.set_defaults(func=_cmd, n_ctx=512)


def _cmd(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from splitllm.cli import load_model

    text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    bar = tqdm(total=None, unit="chunk", disable=args.json, file=sys.stderr)

    def progress(done: int, total: int, value: float) -> None:
        bar.total = total
        bar.set_postfix_str(f"{'KL' if args.kl_base else 'PPL'} {value:.4f}")
        bar.update(done - bar.n)

    if args.kl_base:  # the context the base was scored with
        with np.load(args.kl_base) as saved:
            args.n_ctx = int(saved["n_ctx"])
    with load_model(args) as model:
        if args.kl_base:
            res = kl_divergence(model, text, args.kl_base, progress=progress)
            bar.close()
            if args.json:
                print(json.dumps(asdict(res)))
            else:
                print(
                    f"PPL = {res.ppl:.4f} +/- {res.ppl_error:.4f}   base PPL = {res.base_ppl:.4f}   "
                    f"dPPL = {res.delta_ppl:+.4f}"
                )
                print(
                    f"KL divergence: mean {res.kl_mean:.6f} +/- {res.kl_mean_error:.6f}, median "
                    f"{res.kl_median:.6f}, 99% {res.kl_p99:.6f}, max {res.kl_max:.6f}"
                )
                print(f"Same top token: {100 * res.same_top:.3f}% of {res.n_tokens_scored} positions")
        else:
            res = perplexity(
                model,
                text,
                n_ctx=args.n_ctx,
                n_chunks=args.chunks,
                save_logits=args.save_logits,
                progress=progress,
            )
            bar.close()
            if args.json:
                print(json.dumps(asdict(res)))
            else:
                print(
                    f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f} "
                    f"({res.n_chunks} chunks of {res.n_ctx}, {res.n_tokens_scored} tokens scored)"
                )
    return 0
