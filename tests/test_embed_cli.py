"""``splitllm embed`` (llama-embedding's options and output formats) on a BERT file from
convert-hf: the vectors are llama-cpp-python's embeddings of the same texts (within the GELU
difference of tests/test_bert.py), normalized as llama.cpp's common_embd_normalize says."""

from __future__ import annotations

import json

import hf_fixtures as F
import numpy as np
import pytest
from splitllm.cli import main
from splitllm_convert import convert

TEXTS = ["Hello World, the model's café", "a short one", "Memory, thread -- fast small LARGE matrix"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("embed-cli")
    F.tiny_bert(d / "hf", pooling="mean", max_position_embeddings=64, seed=21)
    convert(d / "hf", d / "bert.gguf", type="f32", quiet=True)
    return str(d / "bert.gguf")


@pytest.fixture(scope="module")
def reference(bert) -> list[np.ndarray]:
    """llama.cpp's mean-pooled embeddings of TEXTS, not normalized."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(bert, embedding=True, n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2, verbose=False)
    try:
        return [np.array(v, dtype=np.float64) for v in llm.embed(TEXTS)]
    finally:
        llm.close()


def run(capsys, bert: str, *args: str) -> str:
    assert main(["embed", bert, "-p", "\n".join(TEXTS), "-c", "64", "-t", "2", *args]) == 0
    return capsys.readouterr().out


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.linalg.norm(a - b) <= 3e-3 * np.linalg.norm(b))


@pytest.mark.parametrize("mode", [-1, 0, 1, 2, 3])
def test_json_and_normalizations(capsys, bert, reference, mode):
    out = json.loads(run(capsys, bert, "--embd-output-format", "json", "--embd-normalize", str(mode)))
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1, 2]
    for d, ref in zip(out["data"], reference, strict=True):
        v = np.array(d["embedding"])
        if mode == -1:
            assert close(v, ref)
        elif mode == 0:  # max |x| scaled to the int16 range, printed as integers
            assert np.abs(v).max() == 32760 and np.all(v == np.round(v))
            assert close(v, ref / np.abs(ref).max() * 32760)
        else:
            assert abs(np.sum(np.abs(v) ** mode) - 1) < 1e-5
            assert close(v, ref / np.sum(np.abs(ref) ** mode) ** (1 / mode))


def test_other_formats(capsys, bert, reference):
    unit = [r / np.linalg.norm(r) for r in reference]
    arr = json.loads(run(capsys, bert, "--embd-output-format", "array"))
    assert all(close(np.array(a), u) for a, u in zip(arr, unit, strict=True))
    plus = json.loads(run(capsys, bert, "--embd-output-format", "json+"))
    sims = np.array(plus["cosineSimilarity"])
    want = np.array([[a @ b for b in unit] for a in unit])
    assert sims.shape == (3, 3) and np.abs(sims - want).max() <= 0.011  # printed with 2 decimals
    raw = run(capsys, bert, "--embd-output-format", "raw").splitlines()
    assert all(close(np.array(line.split(), dtype=float), u) for line, u in zip(raw, unit, strict=True))
    text = run(capsys, bert)
    assert text.count("embedding ") == 3 and "cosine similarity matrix:" in text
    first = np.array(text.splitlines()[0].split(":")[1].split(), dtype=float)
    assert len(first) == 16 and close(first, unit[0][:16])


def test_per_token_and_separator(capsys, bert):
    out = json.loads(run(capsys, bert, "--pooling", "none", "--embd-output-format", "json",
                         "--embd-separator", "<#sep#>"))
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(bert, vocab_only=True, verbose=False)
    n_tok = len(llm.tokenize("\n".join(TEXTS).encode()))  # one text: the separator is not in it
    llm.close()
    assert len(out["data"]) == n_tok
    text = run(capsys, bert, "--pooling", "none")
    assert " ... " in text.splitlines()[0]


def test_bad_normalization(capsys, bert):
    assert main(["embed", bert, "-p", "x", "--embd-normalize", "-2"]) == 2
    assert "--embd-normalize -2" in capsys.readouterr().err


def test_reranker_scores_and_file_input(capsys, tmp_path):
    """A reranker: "rerank score j" per query<TAB>document line, llama-embedding's pair input
    ([CLS] query [SEP] document [SEP] here: its parts joined by the SEP token's text, tokenized with
    the specials), not normalized; -f drops one trailing newline, as llama.cpp's -f."""
    from splitllm import Model
    from tiny_bert import BertConfig, make_weights, reference_scores, write_gguf

    cfg = BertConfig(n_cls_out=1, pooling=4, seed=7)
    path = tmp_path / "rr.gguf"
    held = write_gguf(cfg, make_weights(cfg), path)
    (tmp_path / "pairs.txt").write_text("the cat\ton the mat\nhello world\ta dog ran\n")
    assert main(["embed", str(path), "-f", str(tmp_path / "pairs.txt"), "-c", "64", "-t", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"rerank score {j}: ") for j, ln in enumerate(lines))
    pairs = [("the cat", "on the mat"), ("hello world", "a dog ran")]
    with Model(str(path), embedding=True, n_ctx=64, n_threads=2) as m:
        for line, (q, d) in zip(lines, pairs, strict=True):
            ids = [2, *m.tokenize(q.encode(), add_bos=False), 3, *m.tokenize(d.encode(), add_bos=False), 3]
            assert float(line.split(":")[1]) == pytest.approx(reference_scores(cfg, held, ids)[0], abs=1e-3)
    (tmp_path / "texts.txt").write_text("a short one\nthe model's café\n")
    assert main(["embed", str(path), "-f", str(tmp_path / "texts.txt"), "--pooling", "mean", "-c", "64",
                 "--embd-output-format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["data"]) == 2
