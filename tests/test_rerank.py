"""Rerankers (cross-encoders: BERT / XLM-R with a classification head, GGUF pooling type rank):
the engine's scores against a float64 re-implementation of transformers' classification head and
against llama.cpp on the same files; Model.rerank's pair input as llama-server's
format_prompt_rerank builds it; the server's /v1/rerank (llama-server's and TEI's shapes)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import hf_fixtures as F
import httpx
import numpy as np
import pytest
import splitllm._core as core
from lcpp import llama_cpp_embeddings
from splitllm import Model
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.server import BackgroundServer
from splitllm_convert import convert
from tiny_bert import BertConfig, make_weights, reference_scores, write_gguf

RANK = 4
HEAD = BertConfig(n_cls_out=1, pooling=RANK, seed=7)  # dense + tanh, then one output
WIDE_HEAD = BertConfig(n_cls_out=3, cls_dense=False, pooling=RANK, seed=8)  # one projection, 3 labels
PAIRS = [[2, 10, 11, 12, 3, 5, 6, 30, 40], [2, 7, 8, 3, 9], [2, 44, 45, 46, 3, 47, 48, 49, 50, 51, 99]]


def tiny(tmp_path, cfg: BertConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"rerank-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    return str(path), write_gguf(cfg, make_weights(cfg), path, **kw)


def scores(path: str, texts: list[list[int]]) -> np.ndarray:
    """Our engine's scores of the texts read in one batch (each text's first token classified)."""
    m = core.Model(path, n_ctx=256, n_batch=64, n_threads=2)
    toks = np.concatenate([np.asarray(t, np.int32) for t in texts])
    pos = np.concatenate([np.arange(len(t), dtype=np.int32) for t in texts])
    slot = np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(texts)])
    return m.decode(toks, pos, slot, (pos == 0).astype(np.uint8), None, True, True).astype(np.float64)


@pytest.mark.parametrize("cfg", [HEAD, WIDE_HEAD], ids=["dense-tanh-1", "projection-3"])
def test_scores_match_float64_and_llama_cpp(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    ours = scores(path, PAIRS)
    assert ours.shape == (len(PAIRS), cfg.n_cls_out)
    theirs = llama_cpp_embeddings(path, PAIRS, pooling=RANK)
    for o, t, text in zip(ours, theirs, PAIRS, strict=True):
        exact = reference_scores(cfg, held, text)
        assert np.abs(o - exact).max() < 1e-5 * max(1.0, np.abs(exact).max())  # measured ~2e-7
        assert np.abs(o - t[: cfg.n_cls_out]).max() < 3e-3  # llama.cpp's GELU table (measured 1.1e-3)


def test_quantized_head_like_llama_cpp(tmp_path):
    cfg = replace(HEAD, n_embd=256, n_ff=512, seed=9)
    path, held = tiny(tmp_path, cfg, weight_type="Q8_0")
    ours = scores(path, PAIRS)[:, 0]
    theirs = np.array([t[0] for t in llama_cpp_embeddings(path, PAIRS, pooling=RANK)])
    exact = np.array([reference_scores(cfg, held, t)[0] for t in PAIRS])
    assert np.abs(ours - theirs).max() < 5e-2
    assert np.abs(ours - exact).max() <= max(1.5 * np.abs(theirs - exact).max(), 1e-4)


def test_model_rerank_and_embed(tmp_path):
    """Model.embed with the file's pooling (rank) gives each text's scores; Model.rerank joins the
    query and each document as llama-server does for a vocabulary adding [CLS] and [SEP] (no EOS):
    [CLS] query [SEP] document."""
    path, held = tiny(tmp_path, HEAD)
    with Model(path, embedding=True, n_ctx=64, n_batch=64, n_threads=2) as m:
        assert m.pooling_type() == RANK
        q, docs = "the cat sat", ["on the mat", "hello world", "a dog ran to it"]
        ids_q = m.tokenize(q.encode(), add_bos=False)
        pairs = [[2, *ids_q, 3, *m.tokenize(d.encode(), add_bos=False)] for d in docs]
        assert [m.rerank_tokens(q, d) for d in docs] == pairs
        got = m.rerank(q, docs)
        want = [reference_scores(HEAD, held, p)[0] for p in pairs]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        emb = m.embed(["the cat", "a dog"])
        assert len(emb) == 2 and len(emb[0]) == 1
        assert abs(emb[0][0] - reference_scores(HEAD, held, m.tokenize(b"the cat"))[0]) < 1e-5
    with Model(path, embedding=True, n_ctx=64, n_threads=2, pooling_type="mean") as m:
        with pytest.raises(ValueError, match="pooling_type rank"):
            m.rerank(q, docs)


def test_rerank_template(tmp_path):
    """A "rerank" chat template (Qwen3-Reranker style) is filled in and tokenized with specials."""
    template = "[CLS]{query}[SEP]{document}"
    path, _ = tiny(tmp_path, HEAD, metadata={"tokenizer.chat_template.rerank": template})
    with Model(path, embedding=True, n_ctx=64, n_threads=2) as m:
        want = m.tokenize(b"[CLS]the cat[SEP]on it", add_bos=False, special=True)
        assert m.rerank_tokens("the cat", "on it") == want and want[0] == 2


def test_server_rerank(tmp_path):
    path, held = tiny(tmp_path, HEAD)
    q, docs = "the cat sat", ["on the mat", "hello world", "a dog ran to it", "it is"]
    with Model(path, embedding=True, n_ctx=64, n_threads=2) as m:
        want = m.rerank(q, docs)
    model = Model(path, n_ctx=256, n_batch=64, n_seq_max=4, n_threads=2)
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias="rr")) as srv:
        r = httpx.post(f"{srv.url}/v1/rerank", json={"query": q, "documents": docs, "top_n": 3}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "rr" and len(body["results"]) == 3
        order = sorted(range(len(docs)), key=lambda i: -want[i])[:3]
        assert [x["index"] for x in body["results"]] == order
        for x in body["results"]:
            assert abs(x["relevance_score"] - want[x["index"]]) < 1e-5
        assert body["usage"]["prompt_tokens"] == sum(len(model.rerank_tokens(q, d)) for d in docs)
        tei_body = {"query": q, "texts": docs, "return_text": True}
        tei = httpx.post(f"{srv.url}/rerank", json=tei_body, timeout=60).json()  # every text, no top_n
        everything = sorted(range(len(docs)), key=lambda i: -want[i])
        assert [(x["index"], x["text"]) for x in tei] == [(i, docs[i]) for i in everything]
        for bad in ({"query": q, "documents": []}, {"documents": docs}, {"query": 3, "documents": docs}):
            assert httpx.post(f"{srv.url}/v1/rerank", json=bad, timeout=60).status_code == 400
        r = httpx.post(f"{srv.url}/v1/embeddings", json={"input": "hi"}, timeout=60)
        assert r.status_code == 400 and "/v1/rerank" in r.text
    model.close()


def test_not_a_reranker(tmp_path):
    path, _ = tiny(tmp_path, replace(HEAD, n_cls_out=0, pooling=1))
    with pytest.raises(ValueError, match="no classification head"):
        Model(path, embedding=True, n_ctx=64, n_threads=2, pooling_type="rank")
    m = core.Model(path, n_ctx=64, n_threads=2)
    one = np.zeros(1, np.int32)
    with pytest.raises(core.Error, match="not a reranker"):
        m.decode(np.array([2], np.int32), one, one, None, None, True, True)
    model = Model(path, n_ctx=128, n_seq_max=2, n_threads=2)
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias="emb")) as srv:
        r = httpx.post(f"{srv.url}/v1/rerank", json={"query": "a", "documents": ["b"]}, timeout=60)
        assert r.status_code == 400 and "not a reranker" in r.text
    model.close()


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_converted_rerankers(tmp_path, family):
    """BertForSequenceClassification / XLMRobertaForSequenceClassification from convert-hf:
    Model.rerank's pairs equal the Hugging Face tokenizer's pair encoding, and its scores the float64
    transformers head on them (token type 0 throughout, as llama.cpp feeds them)."""
    from tokenizers import Tokenizer

    d = tmp_path / "hf"
    if family == "bert":
        cfg, w = F.tiny_bert_reranker(d, seed=5)
        ref = F.bert_rerank_scores
    else:
        cfg, w = F.tiny_xlmr_reranker(d, seed=6)
        ref = F.xlmr_rerank_scores
    out = tmp_path / "rr.gguf"
    convert(d, out, type="f32", quiet=True)
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    q, docs = "the memory of a thread", ["fast small matrix", "attention rope", "a LARGE block"]
    with Model(str(out), embedding=True, n_ctx=64, n_batch=64, n_threads=2) as m:
        assert m.pooling_type() == RANK
        pairs = [m.rerank_tokens(q, doc) for doc in docs]
        assert pairs == [hf.encode(q, doc).ids for doc in docs]
        got = m.rerank(q, docs)
    want = [ref(cfg, w, p)[0] for p in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_head_with_narrow_attention(tmp_path):
    """Heads narrower than the model (q_dim 8 < n_embd 64): the head's hidden layer does not fit the
    query buffer; a full batch of one-token texts is scored as the reference scores them."""
    cfg = replace(HEAD, n_head=2, key_length=4, seed=12)
    path, held = tiny(tmp_path, cfg)
    texts = [[t] for t in range(5, 69)]
    m = core.Model(path, n_ctx=64, n_batch=64, n_threads=2)
    n = len(texts)
    got = m.decode(np.arange(5, 69, dtype=np.int32), np.zeros(n, np.int32), np.arange(n, dtype=np.int32),
                   None, None, True, True)
    want = np.array([reference_scores(cfg, held, t) for t in texts])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_odd_requests(tmp_path):
    """A body with TEI's "texts" gets TEI's answer even beside "documents" (as llama-server reads
    it); rerank() wants a list of strings."""
    path, _ = tiny(tmp_path, HEAD)
    with Model(path, embedding=True, n_ctx=64, n_threads=2) as m:
        with pytest.raises(ValueError, match="list of strings"):
            m.rerank("q", "abc")
    model = Model(path, n_ctx=128, n_seq_max=2, n_threads=2)
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias="rr")) as srv:
        r = httpx.post(f"{srv.url}/v1/rerank", json={"query": "a", "texts": ["b", "c"], "documents": ["d"]},
                       timeout=60)
        assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == 2
    model.close()


QWEN3_RERANK = ("<|im_start|>system\nJudge whether the Document meets the requirements.<|im_end|>\n"
                "<|im_start|>user\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
                "<|im_start|>assistant\n")


def qwen3_reranker(tmp_path) -> tuple[str, Any, dict[str, np.ndarray]]:
    """A tiny Qwen3-Reranker as llama.cpp's converter writes one: qwen3 with cls.output.weight (the
    output rows of "yes" and "no"), pooling rank, labels yes / no, a rerank chat template."""
    from tiny_model import TinyConfig, write_gguf as write_decoder  # noqa: I001
    from tiny_model import make_weights as decoder_weights

    cfg = TinyConfig(arch="qwen3", n_layer=2, seed=21)
    tm = decoder_weights(cfg)
    tm.weights["cls.output.weight"] = tm.weights["output.weight"][[100, 101]]
    meta = {"qwen3.pooling_type": 4, "qwen3.classifier.output_labels": ["yes", "no"],
            "tokenizer.chat_template.rerank": QWEN3_RERANK}
    path = tmp_path / "qwen3-rr.gguf"
    held = write_decoder(tm, path, metadata=meta)
    return str(path), cfg, held


def test_causal_reranker_like_llama_cpp(tmp_path):
    """Qwen3-Reranker (a decoder): its last token's normed hidden state through cls.output, then a
    softmax over (yes, no), as llama.cpp's rank pooling for qwen3: against float64 and llama.cpp."""
    from tiny_model import reference_hidden

    path, cfg, held = qwen3_reranker(tmp_path)
    texts = [[3, 77, 200, 15, 260, 1, 99], [42, 42, 131, 7], [300, 255, 18, 64, 5, 250, 33, 120, 11]]
    theirs = llama_cpp_embeddings(path, texts, pooling=RANK)
    with Model(path, embedding=True, n_ctx=64, n_threads=2) as m:
        assert m.pooling_type() == RANK
        ours = m.rank_scores(texts)
    for o, t, toks in zip(ours, theirs, texts, strict=True):
        z = reference_hidden(cfg, held, toks)[-1] @ held["cls.output.weight"].T
        exact = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert np.abs(np.array(o) - exact).max() < 1e-4
        assert np.abs(np.array(o) - t).max() < 1e-3


def test_causal_reranker_through_rerank_and_server(tmp_path):
    path, _, _ = qwen3_reranker(tmp_path)
    q, docs = "the cat", ["on the mat", "hello world", "a dog"]
    with Model(path, embedding=True, n_ctx=256, n_threads=2) as m:
        pairs = [m.rerank_tokens(q, d) for d in docs]
        want_ids = m.tokenize(QWEN3_RERANK.replace("{query}", q).replace("{document}", docs[0]).encode(),
                              add_bos=False, special=True)
        assert pairs[0] == want_ids
        want = m.rerank(q, docs)
        assert want == [s[0] for s in m.rank_scores(pairs)] and all(0 < s < 1 for s in want)
    model = Model(path, n_ctx=512, n_batch=16, n_seq_max=2, n_threads=2)  # pairs longer than a batch
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias="qrr")) as srv:
        r = httpx.post(f"{srv.url}/v1/rerank", json={"query": q, "documents": docs}, timeout=60)
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert all(abs(got[i] - want[i]) < 1e-4 for i in range(len(docs)))
    model.close()
