"""Embedding throughput of BERT encoders: splitllm against llama.cpp on the same GGUF files.

    PYTHONPATH=python:convert python3 bench/bench_embed.py [--shape bge-small] [--types f16,q8_0] \\
        [--texts 64] [--tokens 128] [-t 2] [-r 3] [--out bench/results/embed.md]

A Hugging Face BertModel directory of the shape's size (random weights, a WordPiece vocabulary of
made-up words) is written to a temporary folder and converted by ``convert-hf`` to each type. Both
engines embed the same texts (each about --tokens tokens), mean-pooled, through their Python APIs
(splitllm's Model.embed, llama-cpp-python's Llama.embed; both pack the texts into batches of
n_batch tokens, one sequence per text), the same thread count, one warm-up call, then -r timed
calls; the engines take turns. Reported: tokens/s (texts x tokens per text / seconds, median of
the repetitions) and the agreement of the two engines' embeddings (cosine similarity, worst text).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchinfo import header_lines

REPO = Path(__file__).resolve().parent.parent
# layers, hidden, heads, intermediate, vocabulary, positions
SHAPES = {
    "bge-small": (12, 384, 12, 1536, 30522, 512),  # also all-MiniLM-L12, e5-small
    "minilm-l6": (6, 384, 12, 1536, 30522, 512),   # all-MiniLM-L6-v2
    "bge-base": (12, 768, 12, 3072, 30522, 512),
}


def write_hf_bert(d: Path, shape: tuple[int, ...], seed: int = 0) -> list[str]:
    """A random BertModel directory (safetensors, config.json, vocab.txt, mean pooling as
    sentence-transformers saves it); returns the vocabulary's words."""
    from safetensors.numpy import save_file

    n_layer, E, n_head, F, V, P = shape
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = list(dict.fromkeys("".join(rng.choice(letters, int(rng.integers(3, 9)))) for _ in range(V)))
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += words[: V - len(vocab)]
    vocab += [f"##x{i}" for i in range(V - len(vocab))]
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok_cfg = {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": E, "num_hidden_layers": n_layer,
        "num_attention_heads": n_head, "intermediate_size": F, "vocab_size": V, "max_position_embeddings": P,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir(exist_ok=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": E,
                                                             "pooling_mode_mean_tokens": True}))

    def mat(r: int, c: int) -> np.ndarray:
        return (rng.standard_normal((r, c), dtype=np.float32) / np.float32(np.sqrt(c)))

    def vec(n: int, mean: float = 0.0) -> np.ndarray:
        return (mean + 0.05 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": 0.05 * rng.standard_normal((V, E), dtype=np.float32),
         "embeddings.position_embeddings.weight": 0.05 * rng.standard_normal((P, E), dtype=np.float32),
         "embeddings.token_type_embeddings.weight": 0.05 * rng.standard_normal((2, E), dtype=np.float32),
         "embeddings.LayerNorm.weight": vec(E, 1.0), "embeddings.LayerNorm.bias": vec(E)}
    for i in range(n_layer):
        p = f"encoder.layer.{i}."
        for name, r, c in (("attention.self.query", E, E), ("attention.self.key", E, E),
                           ("attention.self.value", E, E), ("attention.output.dense", E, E),
                           ("intermediate.dense", F, E), ("output.dense", E, F)):
            t[p + name + ".weight"], t[p + name + ".bias"] = mat(r, c), vec(r)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + name + ".weight"], t[p + name + ".bias"] = vec(E, 1.0), vec(E)
    save_file(t, str(d / "model.safetensors"))
    return [w for w in words if w in set(vocab)]


def make_texts(words: list[str], n: int, n_tokens: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, n_tokens - 2)) for _ in range(n)]  # + [CLS], [SEP]


def timed(fn, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="bge-small", choices=sorted(SHAPES))
    ap.add_argument("--types", default="f16,q8_0")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-b", "--batch", type=int, default=512)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import llama_cpp
    from splitllm import Model
    from splitllm_convert import convert

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        words = write_hf_bert(hf, SHAPES[args.shape])
        texts = make_texts(words, args.texts, args.tokens)
        for qtype in args.types.split(","):
            path = Path(tmp) / f"{args.shape}-{qtype}.gguf"
            convert(hf, path, type=qtype, quiet=True)
            size = path.stat().st_size
            ours_m = Model(str(path), embedding=True, n_ctx=args.batch, n_batch=args.batch,
                           n_threads=args.threads, verbose=False)
            n_tok = sum(len(ours_m.tokenize(t.encode())) for t in texts)
            theirs_m = llama_cpp.Llama(str(path), embedding=True, n_ctx=args.batch, n_batch=args.batch,
                                       n_ubatch=args.batch, n_threads=args.threads,
                                       n_threads_batch=args.threads, verbose=False)
            t_ours, e_ours = timed(lambda m=ours_m: m.embed(texts), args.reps)
            t_theirs, e_theirs = timed(lambda m=theirs_m: m.embed(texts), args.reps)
            a, b = np.array(e_ours), np.array(e_theirs)
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            rows.append((qtype, size, n_tok, n_tok / t_ours, n_tok / t_theirs, float(cos.min())))
            ours_m.close()
            theirs_m.close()
            print(f"{qtype}: splitllm {n_tok / t_ours:.0f} tok/s, llama.cpp {n_tok / t_theirs:.0f} tok/s, "
                  f"ratio {t_theirs / t_ours:.2f}, worst cosine {cos.min():.6f}", file=sys.stderr)

    lines = [f"# Embedding throughput: {args.shape}-shaped BERT (random weights), splitllm vs llama.cpp", ""]
    lines += header_lines({"shape": f"{args.shape} {SHAPES[args.shape]}",
                           "texts": f"{args.texts} x ~{args.tokens} tokens, mean pooling, "
                                    f"n_batch {args.batch}",
                           "threads": str(args.threads), "repetitions": f"{args.reps} (median), one warm-up"})
    lines += ["", "| type | file MiB | tokens | splitllm tok/s | llama.cpp tok/s | ratio | worst cosine |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for qtype, size, n_tok, ours, theirs, cos in rows:
        lines.append(f"| {qtype} | {size / 2**20:.1f} | {n_tok} | {ours:.0f} | {theirs:.0f} "
                     f"| {ours / theirs:.2f}x | {cos:.6f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
