"""Perplexity and KL divergence tools, checked against llama.cpp's method and logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from splitllm import Model
from splitllm.cli import main as cli_main
from splitllm.perplexity import kl_divergence, log_softmax, perplexity


def reference_perplexity(all_logits: list[np.ndarray], chunks: list[list[int]]) -> float:
    """llama-perplexity's estimate from per-chunk logits: score the second half of each chunk."""
    nll = []
    for logits, chunk in zip(all_logits, chunks, strict=False):
        n = len(chunk)
        lp = log_softmax(np.asarray(logits, dtype=np.float64))
        for j in range(n // 2, n - 1):
            nll.append(-lp[j, chunk[j + 1]])
    return math.exp(float(np.mean(nll)))


@pytest.mark.reference
def test_perplexity_agrees_with_llamacpp(smollm2_path, tinyshakespeare):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    n_ctx, n_chunks = 512, 16
    with Model(smollm2_path, n_ctx=n_ctx, n_threads=2) as m:
        ours = perplexity(m, tinyshakespeare, n_ctx=n_ctx, n_chunks=n_chunks)
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False)
    tokens = llm.tokenize(tinyshakespeare.encode(), add_bos=True)
    chunks = [tokens[i * n_ctx : (i + 1) * n_ctx] for i in range(n_chunks)]
    logits = []
    for c in chunks:
        llm.reset()
        llm.eval(c)
        logits.append(np.array(llm.scores[:n_ctx]))
    llm.close()
    theirs = reference_perplexity(logits, chunks)
    print(
        f"\nPPL over {n_chunks} chunks of {n_ctx}: splitllm {ours.ppl:.4f} +/- {ours.ppl_error:.4f}, "
        f"llama.cpp {theirs:.4f}, ratio {ours.ppl / theirs:.5f}"
    )
    assert ours.n_chunks == n_chunks and ours.n_tokens_scored == n_chunks * (n_ctx // 2 - 1)
    assert abs(ours.ppl / theirs - 1) < 0.005


def test_perplexity_matches_its_definition(smollm2_path, tinyshakespeare):
    """Our chunking and scoring equal the numpy definition on our own logits."""
    n_ctx = 64
    with Model(smollm2_path, n_ctx=n_ctx, n_threads=2) as m:
        res = perplexity(m, tinyshakespeare[:5000], n_ctx=n_ctx, n_chunks=3)
        toks = m.tokenize(tinyshakespeare[:5000].encode(), add_bos=True)
        chunks = [toks[i * n_ctx : (i + 1) * n_ctx] for i in range(3)]
        expected = reference_perplexity([m.logits(c) for c in chunks], chunks)
    assert res.ppl == pytest.approx(expected, rel=1e-6)
    assert len(res.chunk_ppl) == 3 and res.chunk_ppl[-1] == pytest.approx(res.ppl)


def test_kl_against_itself_is_zero_and_cli(smollm2_path, tinyshakespeare, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(tinyshakespeare[:6000])
    base = tmp_path / "base.npz"
    assert cli_main(["perplexity", str(smollm2_path), "-f", str(text), "-c", "64", "--chunks", "2",
                     "--save-logits", str(base), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    # The context comes from the base file (no -c here: the default would be 512).
    assert cli_main(["perplexity", str(smollm2_path), "-f", str(text), "--chunks", "2",
                     "--kl-base", str(base), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kl_mean"] < 1e-5 and res["same_top"] == 1.0
    assert res["base_ppl"] == pytest.approx(saved["ppl"], rel=1e-3)
    # A different KV cache type is a different model: nonzero KL, reported against the same base.
    with Model(smollm2_path, n_ctx=64, n_threads=2, type_k="q4_0", type_v="q4_0") as m:
        other = kl_divergence(m, text.read_text(), base)
    assert other.kl_mean > 1e-4 and other.n_tokens_scored == res["n_tokens_scored"]


def test_quantized_kv_cache_perplexity(smollm2_path, tinyshakespeare):
    """A quantized KV cache against f16 over 8 chunks of 512: q8_0 within 0.5%, q4_0 within 5%.
    Both rotate keys and values (Hadamard) before quantizing them; without the rotation q4_0's
    keys lose far more (about +12% here), so the rotation is checked to be what keeps it close."""
    ppl = {}
    for kv, rotate in (("f16", True), ("q8_0", True), ("q4_0", True), ("q4_0", False)):
        with Model(smollm2_path, n_ctx=512, n_threads=2, type_k=kv, type_v=kv, kv_rotate=rotate) as m:
            ppl[kv, rotate] = perplexity(m, tinyshakespeare, n_ctx=512, n_chunks=8).ppl
    base = ppl["f16", True]
    print("\nKV cache perplexity: " + ", ".join(f"{k}{'' if r else ' (no rotation)'} {v:.4f}"
                                              for (k, r), v in ppl.items()))
    assert abs(ppl["q8_0", True] / base - 1) < 0.005
    assert abs(ppl["q4_0", True] / base - 1) < 0.05
    assert ppl["q4_0", False] / base - 1 > 2 * (ppl["q4_0", True] / base - 1)
