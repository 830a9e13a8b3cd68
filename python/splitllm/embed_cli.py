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
from typing import TYPE_CHECKING

import numpy as np

from splitllm.model_embed import LLAMA_POOLING_TYPE_RANK

if TYPE_CHECKING:
    from splitllm.model import Model

FORMATS = ("", "array", "json", "json+", "raw")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from splitllm.cli import add_model_options

    p = sub.add_parser("embed", help="print the embeddings of texts (llama-embedding)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="GGUF model file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="the texts, cut at --embd-separator")
    src.add_argument("-f", "--file", help="a file holding the texts")
    p.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"], default=None,
                   help="how a text's token vectors are pooled (default: the model's); rank: a reranker's "
                   "scores of each 'query<--cls-separator>document' line")
    p.add_argument("--embd-normalize", type=int, default=2, metavar="N",
                   help="-1 none, 0 max absolute int16, 1 taxicab, 2 euclidean (default), >2 p-norm")
    p.add_argument("--embd-output-format", default="", choices=FORMATS, metavar="FORMAT",
                   help='"" (default), "array", "json" (OpenAI style), "json+" (json and the cosine '
                   'similarity matrix), "raw" (one vector per line)')
    p.add_argument("--embd-separator", default="\n", metavar="STRING",
                   help="separator of the texts (default \\n)")
    p.add_argument("--cls-separator", default="\t", metavar="STRING",
                   help="separator of a reranker's query and document in a text (default \\t)")
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
    if args.prompt is not None:
        text = args.prompt
    else:  # as llama.cpp's -f: one trailing newline dropped
        text = Path(args.file).read_text(encoding="utf-8")
        text = text[:-1] if text.endswith("\n") else text
    texts = text.split(args.embd_separator) if args.embd_separator else [text]
    with load_model(args, embedding=True, pooling_type=args.pooling or -1) as m:
        if m.pooling_type() == LLAMA_POOLING_TYPE_RANK:
            print(rerank_scores(m, texts, args.cls_separator), end="")
            return 0
        pooled = m.pooling_type() != 0
        rows = [np.atleast_2d(np.asarray(v, dtype=np.float64)) for v in m.embed(texts)]
    # every printed vector, in order: one per text, or one per token with pooling none
    flat = [normalize(r, args.embd_normalize) for v in rows for r in v]
    print(render(flat, texts, pooled, args.embd_output_format, args.embd_normalize), end="")
    return 0


def rerank_tokens(model: Model, text: str, sep: str) -> list[int]:
    """A reranker's input from a text, as llama-embedding builds it: a "query<sep>document" pair
    through the model's rerank template, else its parts joined by the EOS and SEP tokens' texts
    (where the vocabulary adds them) and tokenized with the specials; a text without sep as it is."""
    if sep not in text:
        return model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    parts = text.split(sep)
    template = model.gguf_metadata.get("tokenizer.chat_template.rerank")
    if template:
        joined = template.replace("{query}", parts[0]).replace("{document}", parts[1])
    else:
        tok = model.tokenizer
        specials = ((tok.eos_id, tok.add_eos), (tok.sep_id, tok.add_sep))
        added = [t for t, add in specials if add and t is not None]
        glue = "".join(model.detokenize([t], special=True).decode("utf-8", "replace") for t in added)
        joined = glue.join(parts)
    return model.tokenize(joined.encode("utf-8"), add_bos=True, special=True)


def rerank_scores(model: Model, texts: list[str], sep: str) -> str:
    """llama-embedding's output for a reranker: "rerank score j: s" per text (with the label when
    the head has several outputs); scores are not normalized."""
    rows = model.rank_scores([rerank_tokens(model, t, sep) for t in texts])
    labels = list(model.gguf_metadata.get(f"{model.config['arch']}.classifier.output_labels", []))
    lines = []
    for j, scores in enumerate(rows):
        if len(scores) == 1:
            lines.append(f"rerank score {j}: {scores[0]:8.3f}")
        else:
            lines += [f"rerank score {j}: {s:8.3f} [{labels[i] if i < len(labels) else i}]"
                      for i, s in enumerate(scores)]
    return "\n".join(lines) + "\n"


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
        cells = [" ... " if x is None else (f"{x:6.0f}" if int16 else f"{x:9.6f}") + " " for x in shown]
        lines.append(f"embedding {j}: " + "".join(cells))
    if pooled and len(texts) > 1:
        lines += ["", "cosine similarity matrix:", "", "".join(f"{t[:6]:>6} " for t in texts)]
        for i, a in enumerate(flat):
            lines.append("".join(f"{cosine(a, b):6.2f} " for b in flat) + texts[i][:10])
    return "\n".join(lines) + "\n"

