"""``splitllm embed``: embeddings of texts, as llama.cpp's llama-embedding prints them.

    splitllm embed MODEL -p "first text<newline>second text" [--pooling mean] [--embd-normalize 2]
        [--embd-output-format ""|array|json|json+|raw] [--embd-separator "\\n"]

The prompt (or the file of -f) is cut at each separator into texts; each is embedded (pooled as
the model says unless --pooling), normalized as llama.cpp's common_embd_normalize (-1 none, 0 max
absolute scaled to int16, 1 taxicab, 2 euclidean, p > 2 p-norm), and printed: by default each
vector (the first 16 values when there are several texts, each per-token vector's first and last
three with pooling none) and the texts' cosine similarity matrix; ``array`` / ``json`` / ``json+``
/ ``raw`` as llama-embedding writes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

FORMATS = ("", "array", "json", "json+", "raw")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from splitllm.cli import add_model_options

    p = sub.add_parser("embed", help="print the embeddings of texts (llama-embedding)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="GGUF model file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="the texts, cut at --embd-separator")
    src.add_argument("-f", "--file", help="a file holding the texts")
    p.add_argument("--pooling", choices=["none", "mean", "cls", "last"], default=None,
                   help="how a text's token vectors are pooled (default: the model's)")
    p.add_argument("--embd-normalize", type=int, default=2, metavar="N",
                   help="-1 none, 0 max absolute int16, 1 taxicab, 2 euclidean (default), >2 p-norm")
    p.add_argument("--embd-output-format", default="", choices=FORMATS, metavar="FORMAT",
                   help='"" (default), "array", "json" (OpenAI style), "json+" (json and the cosine '
                   'similarity matrix), "raw" (one vector per line)')
    p.add_argument("--embd-separator", default="\n", metavar="STRING",
                   help="separator of the texts (default \\n)")
    add_model_options(p)
    p.set_defaults(func=run)


def normalize(x: np.ndarray, mode: int) -> np.ndarray:
    """llama.cpp's common_embd_normalize of one vector (float64 sums)."""
    x = np.asarray(x, dtype=np.float64)
    if mode == -1:
        total = 1.0
    elif mode == 0:
        total = float(np.abs(x).max(initial=0.0)) / 32760.0
    elif mode == 2:
        total = float(np.sqrt((x * x).sum()))
    else:
        total = float((np.abs(x) ** mode).sum() ** (1.0 / mode))
    return x * (1.0 / total if total > 0 else 0.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0  # as common_embd_similarity_cos
    return float(np.dot(a, b) / (na * nb))


def run(args: argparse.Namespace) -> int:
    from splitllm.cli import load_model

    if args.embd_normalize < -1:
        print(f"splitllm embed: --embd-normalize {args.embd_normalize}: -1, 0, 1, 2 or p > 2",
              file=sys.stderr)
        return 2
    text = args.prompt if args.prompt is not None else Path(args.file).read_text(encoding="utf-8")
    texts = text.split(args.embd_separator) if args.embd_separator else [text]
    with load_model(args, embedding=True, pooling_type=args.pooling or -1) as m:
        pooled = m.pooling_type() != 0
        rows = [np.atleast_2d(np.asarray(v, dtype=np.float64)) for v in m.embed(texts)]
    # every printed vector, in order: one per text, or one per token with pooling none
    flat = [normalize(r, args.embd_normalize) for v in rows for r in v]
    print(render(flat, texts, pooled, args.embd_output_format, args.embd_normalize), end="")
    return 0


def _num(x: float, int16: bool, fmt: str) -> str:
    return f"{x:1.0f}" if int16 else format(x, fmt)


def render(flat: list[np.ndarray], texts: list[str], pooled: bool, fmt: str, mode: int) -> str:
    """The output of llama-embedding for these vectors."""
    int16 = mode == 0
    if fmt in ("array", "json", "json+"):
        vecs = ["[" + ",".join(_num(x, int16, "1.7f") for x in v) + "]" for v in flat]
        if fmt == "array":
            return "[" + ",".join(vecs) + "]\n"
        items = [f'    {{\n      "object": "embedding",\n      "index": {j},\n      "embedding": {v}\n    }}'
                 for j, v in enumerate(vecs)]
        out = '{\n  "object": "list",\n  "data": [\n' + ",\n".join(items) + "\n  ]"
        if fmt == "json+" and len(texts) > 1:
            sims = ["    [" + ", ".join(f"{cosine(a, b):6.2f}" for b in flat) + " ]" for a in flat]
            out += ',\n  "cosineSimilarity": [\n' + ",\n".join(sims) + "\n  ]"
        return out + "\n}\n"
    if fmt == "raw":
        return "".join(" ".join(_num(x, int16, "1.7f") for x in v) + "\n" for v in flat)
    lines = []
    for j, v in enumerate(flat):
        if not pooled:  # the first and last three values of each token's vector
            shown = [*v[:3], None, *v[-3:]]
        else:
            shown = list(v[:16] if len(texts) > 1 else v)
        lines.append(f"embedding {j}: " + "".join(" ... " if x is None else _num(x, int16, "9.6f") + " "
                                                     for x in shown))
    if pooled and len(texts) > 1:
        lines += ["", "cosine similarity matrix:", "", "".join(f"{t[:6]:>6} " for t in texts)]
        for i, a in enumerate(flat):
            lines.append("".join(f"{cosine(a, b):6.2f} " for b in flat) + texts[i][:10])
    return "\n".join(lines) + "\n"

