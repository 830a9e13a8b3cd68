"""Embeddings (``Model(embedding=True).embed`` / ``create_embedding``): the final hidden states
after the output norm, as llama.cpp returns them, pooled as the model (or ``pooling_type``) says.

Checked against the float64 reference forward pass on tiny models, and on SmolLM2 against
llama-cpp-python's ``Llama(embedding=True).embed`` for every pooling type.
"""

from __future__ import annotations

import numpy as np
import pytest
from splitllm import Model
from tiny_model import TinyConfig, make_weights, reference_hidden, write_gguf

TOKENS = [3, 17, 42, 99, 5, 64, 23, 8, 77, 1]


@pytest.mark.parametrize(
    "cfg",
    [
        TinyConfig(arch="llama", seed=4),
        TinyConfig(arch="qwen2", seed=5),
        TinyConfig(arch="qwen3", key_length=32, seed=6),
    ],
    ids=["llama", "qwen2", "qwen3"],
)
def test_token_embeddings_match_float64_reference(tmp_path, cfg):
    path = tmp_path / "tiny.gguf"
    held = write_gguf(make_weights(cfg), path)
    ref = reference_hidden(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2, embedding=True) as m:
        got = m.token_embeddings(TOKENS)
        assert got.shape == (len(TOKENS), cfg.n_embd) == ref.shape
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
        # Several passes (n_batch smaller than the text) give the same.
    with Model(path, n_ctx=64, n_batch=3, n_threads=2, embedding=True) as m:
        assert np.abs(m.token_embeddings(TOKENS) - ref).max() / np.abs(ref).max() < 1e-4


def test_pooling_and_normalize(tmp_path):
    cfg = TinyConfig(arch="llama", seed=6)
    path = tmp_path / "tiny.gguf"
    write_gguf(make_weights(cfg), path)
    text = "the answer is in there"
    with Model(path, n_ctx=64, n_threads=2, embedding=True, pooling_type="none") as m:
        toks = m.tokenize(text.encode())
        rows = m.token_embeddings(toks).astype(np.float64)
        per_token = m.embed(text)
        assert np.asarray(per_token) == pytest.approx(rows)
        unit = np.asarray(m.embed(text, normalize=True))
        assert np.linalg.norm(unit, axis=1) == pytest.approx(np.ones(len(toks)))
        assert m.embed([text, "in"], return_count=True)[1] == len(toks) + len(m.tokenize(b"in"))
    for name, want in (("mean", rows.mean(axis=0)), ("cls", rows[0]), ("last", rows[-1])):
        with Model(path, n_ctx=64, n_threads=2, embedding=True, pooling_type=name) as m:
            assert np.asarray(m.embed(text)) == pytest.approx(want, rel=1e-6, abs=1e-6)
            out = m.create_embedding([text, text], model="x")
            assert out["object"] == "list" and out["model"] == "x"
            assert [d["index"] for d in out["data"]] == [0, 1]
            assert out["usage"] == {"prompt_tokens": 2 * len(toks), "total_tokens": 2 * len(toks)}
            assert np.asarray(out["data"][1]["embedding"]) == pytest.approx(want, rel=1e-6, abs=1e-6)
    # The model's own pooling type (GGUF {arch}.pooling_type) when none is given.
    write_gguf(make_weights(cfg), tmp_path / "mean.gguf", metadata={"llama.pooling_type": 1})
    with Model(tmp_path / "mean.gguf", n_ctx=64, n_threads=2, embedding=True) as m:
        assert m.pooling_type() == 1
        assert np.asarray(m.embed(text)) == pytest.approx(rows.mean(axis=0), rel=1e-6, abs=1e-6)


def test_embedding_errors(tmp_path):
    cfg = TinyConfig(arch="llama", seed=7)
    path = tmp_path / "tiny.gguf"
    write_gguf(make_weights(cfg), path)
    with Model(path, n_ctx=64, n_threads=2) as m:
        with pytest.raises(RuntimeError, match="embedding=True"):
            m.embed("hi")
    for bad in ("median", 7, -2):
        with pytest.raises(ValueError, match="pooling_type"):
            Model(path, n_ctx=64, embedding=True, pooling_type=bad)
    with pytest.raises(ValueError, match="rank"):
        Model(path, n_ctx=64, embedding=True, pooling_type="rank")
    # A reranker's GGUF still loads and generates; only its embeddings are refused.
    write_gguf(make_weights(cfg), tmp_path / "rank.gguf", metadata={"llama.pooling_type": 4})
    with Model(tmp_path / "rank.gguf", n_ctx=64, n_threads=2, embedding=True) as m:
        assert m.create_completion([1, 2, 3], max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2
        with pytest.raises(ValueError, match="rank"):
            m.embed("hi")
    with Model(path, n_ctx=16, n_threads=2, embedding=True, pooling_type="last") as m:
        long = "the " * 40
        assert len(m.embed(long)) == cfg.n_embd  # cut to the context
        with pytest.raises(ValueError, match="exceed context window"):
            m.embed(long, truncate=False)
        with pytest.raises(ValueError, match="string"):
            m.embed([b"bytes"])  # type: ignore[list-item]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")


TEXTS = ["The capital of France is Paris.", "def fibonacci(n):\n    return n", "Water boils at 100 degrees."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.reference
@pytest.mark.parametrize("pooling", [0, 1, 2, 3], ids=["none", "mean", "cls", "last"])
def test_embeddings_match_llama_cpp(smollm2_path, llama_cpp, pooling):
    ref = llama_cpp.Llama(str(smollm2_path), n_ctx=256, n_threads=2, embedding=True, pooling_type=pooling,
                          verbose=False)
    try:
        # One text a call: with a list, llama-cpp-python 0.3.36 reads every text's per-token
        # vectors (pooling none) from the first text's offsets.
        want = [ref.embed(t) for t in TEXTS]
    finally:
        ref.close()
    with Model(smollm2_path, n_ctx=256, n_threads=2, embedding=True, pooling_type=pooling) as m:
        got = m.embed(TEXTS)
    worst = 1.0
    for w, g in zip(want, got, strict=True):
        w, g = np.asarray(w, dtype=np.float64), np.asarray(g, dtype=np.float64)
        assert w.shape == g.shape
        worst = min(worst, cosines(w, g).min())
        assert np.abs(g - w).max() / np.abs(w).max() < 0.1
    print(f"\npooling {pooling}: worst cosine similarity to llama.cpp {worst:.5f}")
    assert worst > 0.995
