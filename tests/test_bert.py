"""BERT encoders (GGUF architectures ``bert``: all-MiniLM, bge, e5, ...; ``nomic-bert``:
nomic-embed-text) in the engine: embeddings of tiny random models against the numpy float64
re-implementations of transformers' BertModel and Nomic's NomicBertModel (tests/tiny_bert.py) and
against llama.cpp on the same files.

What sets an encoder apart: every token attends to every token of its text (no causal mask, no
KV cache), token type 0's embedding added, LayerNorm with bias after each residual sum, and no
output layer: the embeddings are the last layer's output. bert: learned position embeddings, a
GELU feed-forward, biases on every matrix; nomic-bert: rotary positions, SwiGLU, no biases."""

from __future__ import annotations

from dataclasses import replace

import hf_fixtures as F
import httpx
import numpy as np
import pytest
import splitllm._core as core
from lcpp import llama_cpp_embeddings
from splitllm import GGUFError, Model
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.plan import plan
from splitllm.server import BackgroundServer
from splitllm_convert import convert
from tiny_bert import BertConfig, make_weights, reference_hidden, write_gguf
from tiny_model import interleaved_batch

CFG = BertConfig()
NOMIC = BertConfig(arch="nomic-bert", fused_qkv=True, n_ctx_train=64, seed=5)
WIDE = BertConfig(n_embd=256, n_ff=512, n_head=4, n_vocab=160, n_ctx_train=64, seed=3)  # for k-quant blocks
TEXTS = [[2, 10, 11, 12, 5, 6, 30, 40, 3], [2, 7, 8, 9, 3],
         [2, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 99, 3]]
NONE, MEAN, CLS = 0, 1, 2  # llama.cpp's pooling types


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tiny(tmp_path, cfg: BertConfig = CFG, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-bert-{cfg.seed}.gguf"
    held = write_gguf(cfg, make_weights(cfg), path, **kw)
    return str(path), held


def ours(path: str, texts: list[list[int]], **kw) -> list[np.ndarray]:
    """Our engine's per-token embeddings of the texts, read in one batch, text i in slot i."""
    kw = {"n_ctx": 64 * len(texts), "n_batch": 64, "n_threads": 2, "n_seq_max": len(texts), **kw}
    m = core.Model(path, **kw)
    toks = np.concatenate([np.asarray(t, np.int32) for t in texts])
    pos = np.concatenate([np.arange(len(t), dtype=np.int32) for t in texts])
    slot = np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(texts)])
    out = m.decode(toks, pos, slot, None, None, True)
    return np.split(out.astype(np.float64), np.cumsum([len(t) for t in texts])[:-1])


@pytest.mark.parametrize("cfg", [CFG, replace(CFG, fused_qkv=True, n_layer=3, seed=1), NOMIC],
                         ids=["bert", "fused-qkv", "nomic-bert"])
def test_f32_embeddings_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    for text, got in zip(TEXTS, ours(path, TEXTS), strict=True):
        assert rel_err(got, reference_hidden(cfg, held, text)) < 1e-5  # measured 2.8e-7 / 3.2e-7


def test_nomic_rotary_positions_matter(tmp_path):
    """nomic-bert has no position embeddings: without the rotation the reference is far off."""
    path, held = tiny(tmp_path, NOMIC)
    got = ours(path, [TEXTS[2]])[0]
    assert rel_err(got, reference_hidden(NOMIC, held, TEXTS[2], rotate=False)) > 1e-2


def test_attention_sees_the_whole_text_and_only_it(tmp_path):
    """Changing a text's last token moves its first token's embedding (no causal mask); texts
    read together in one batch give what each gives alone (no attention across them)."""
    path, held = tiny(tmp_path)
    a = ours(path, [TEXTS[0]])[0]
    b = ours(path, [TEXTS[0][:-2] + [77, 3]])[0]
    assert rel_err(b[0], a[0]) > 1e-2
    together = ours(path, TEXTS)
    for text, got in zip(TEXTS, together, strict=True):
        np.testing.assert_allclose(got, ours(path, [text])[0], rtol=0, atol=1e-5)
    # the reference with a causal mask is far from the real thing: the comparison above can fail
    causal = [reference_hidden(CFG, held, TEXTS[0][: i + 1])[-1] for i in range(len(TEXTS[0]))]
    assert rel_err(np.array(causal), reference_hidden(CFG, held, TEXTS[0])) > 1e-1


@pytest.mark.parametrize("cfg", [replace(CFG, n_ctx_train=320, seed=7), replace(NOMIC, seed=8)],
                         ids=["bert", "nomic-bert"])
def test_long_interleaved_texts_match_float64_reference(tmp_path, cfg):
    """Texts longer than the attention's tile of 128 queries (300 and 150 tokens), their tokens
    interleaved in one batch: each as the float64 reference has it alone."""
    path, held = tiny(tmp_path, cfg)
    rng = np.random.default_rng(3)
    texts = [[2, *rng.integers(4, cfg.n_vocab, n - 2).tolist(), 3] for n in (300, 150)]
    toks, pos, slot = interleaved_batch(texts)
    m = core.Model(path, n_ctx=512, n_batch=512, n_threads=2, n_seq_max=2)
    out = m.decode(toks, pos, slot, None, None, True)
    for k, text in enumerate(texts):
        got = np.float64(out[slot == k])  # in position order: each text's rows keep their order
        assert rel_err(got, reference_hidden(cfg, held, text)) < 1e-5
    # More threads than (heads x texts): each text's tiles of queries are split between tasks
    many = core.Model(path, n_ctx=512, n_batch=512, n_threads=8, n_seq_max=2)
    np.testing.assert_array_equal(many.decode(toks, pos, slot, None, None, True), out)


@pytest.mark.parametrize(("cfg", "wtype", "bound"), [
    (CFG, "F32", 1e-3), (CFG, "F16", 2e-3), (CFG, "Q8_0", 3e-2), (WIDE, "Q4_K", 5e-2), (WIDE, "Q6_K", 3e-2),
    (NOMIC, "F32", 1e-5), (replace(WIDE, arch="nomic-bert"), "Q4_K", 5e-2),
], ids=["f32", "f16", "q8_0", "q4_k", "q6_k", "nomic-f32", "nomic-q4_k"])
def test_matches_llama_cpp(tmp_path, cfg, wtype, bound):
    """Per-token embeddings of three texts in one batch against llama.cpp on the same file. Both
    engines quantize the activations of quantized matmuls (8-bit blocks), which the LayerNorms of
    a random model amplify; ours is held to llama.cpp's own distance from the float64 reference on
    the weights the file holds. (At f32, llama.cpp's GELU reads a float16 table: 3e-4 from it.)"""
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    theirs = llama_cpp_embeddings(path, TEXTS, pooling=NONE)
    got = ours(path, TEXTS)
    for text, g, t in zip(TEXTS, got, theirs, strict=True):
        exact = reference_hidden(cfg, held, text)
        assert rel_err(g, t) < bound
        assert rel_err(g, exact) < max(1.5 * rel_err(t, exact), 1e-5)


@pytest.mark.parametrize("pooling", [MEAN, CLS], ids=["mean", "cls"])
def test_pooled_like_llama_cpp(tmp_path, pooling):
    path, _ = tiny(tmp_path)
    ref = llama_cpp_embeddings(path, TEXTS, pooling=pooling)
    got = [g.mean(axis=0) if pooling == MEAN else g[0] for g in ours(path, TEXTS)]
    for g, r in zip(got, ref, strict=True):
        assert rel_err(g, r) < 1e-3


def test_encoder_errors(tmp_path):
    path, _ = tiny(tmp_path)
    m = core.Model(path, n_ctx=128, n_batch=16, n_threads=2)

    def run(n: int, start: int = 0, embeddings: bool = True) -> None:
        pos = np.arange(start, start + n, dtype=np.int32)
        m.decode(np.full(n, 5, np.int32), pos, np.zeros(n, np.int32), None, None, embeddings)

    with pytest.raises(core.Error, match="encoder: it computes embeddings"):
        run(1, embeddings=False)
    with pytest.raises(core.Error, match="exceed n_batch = 16"):
        run(17)
    with pytest.raises(core.Error, match="positions 0, 1"):  # a text continued in a second call
        run(2, start=4)
    m = core.Model(path, n_ctx=128, n_batch=128, n_threads=2)
    with pytest.raises(core.Error, match="past the 48 positions"):
        run(CFG.n_ctx_train + 1)


@pytest.mark.parametrize(("change", "match"), [
    ({"bert.attention.causal": True}, "attention.causal"),
    ({"bert.attention.layer_norm_epsilon": None}, "layer_norm_epsilon"),
])
def test_bad_metadata_is_an_error(tmp_path, change, match):
    path, _ = tiny(tmp_path, metadata=change)
    with pytest.raises(GGUFError, match=match):
        core.Model(path, n_ctx=64, n_threads=2)


def test_missing_tensor_is_named(tmp_path):
    cfg = CFG
    w = make_weights(cfg)
    del w["blk.1.layer_output_norm.bias"]
    path = tmp_path / "broken.gguf"
    write_gguf(cfg, w, path)
    with pytest.raises(GGUFError, match="blk.1.layer_output_norm.bias' is missing"):
        core.Model(str(path), n_ctx=64, n_threads=2)


def test_odd_encoder_files_and_options(tmp_path):
    """A token type table without rows is refused (not read past); a nomic-bert with feed-forward
    biases is refused (llama.cpp loads them and never adds them); cache types that would not fit
    the head size are no matter for a model with no cache; slots up to n_seq_max tell texts apart
    even past n_batch (a server's parallel sequences)."""
    w = make_weights(CFG)
    w["token_types.weight"] = np.zeros((0, CFG.n_embd), np.float32)
    write_gguf(CFG, w, tmp_path / "no-types.gguf")
    with pytest.raises(GGUFError, match="token_types.weight' has no rows"):
        core.Model(str(tmp_path / "no-types.gguf"), n_ctx=64, n_threads=2)
    w = make_weights(NOMIC)
    w["blk.0.ffn_down.bias"] = np.ones(NOMIC.n_embd, np.float32)
    write_gguf(NOMIC, w, tmp_path / "nomic-bias.gguf")
    with pytest.raises(GGUFError, match="blk.0.ffn_down.bias': biases in a gated feed-forward"):
        core.Model(str(tmp_path / "nomic-bias.gguf"), n_ctx=64, n_threads=2)
    path, held = tiny(tmp_path)
    core.Model(path, n_ctx=64, n_threads=2, type_k="q4_0", type_v="q4_0")  # head size 16
    m = core.Model(path, n_ctx=64, n_batch=8, n_seq_max=16, n_threads=2)
    text = TEXTS[1]
    n = len(text)
    slot = np.full(n, 12, np.int32)  # past n_batch = 8
    got = m.decode(np.array(text, np.int32), np.arange(n, dtype=np.int32), slot, None, None, True)
    assert rel_err(got, reference_hidden(CFG, held, text)) < 1e-5


def test_embed_limits(tmp_path):
    """An encoder's text may fill n_ctx whatever n_seq_max (no cache), within n_batch and the
    model's positions; errors say which limit."""
    path, _ = tiny(tmp_path)  # 48 positions
    long = " ".join(["hello"] * 60)
    with Model(path, embedding=True, n_ctx=64, n_batch=64, n_seq_max=4, n_threads=2) as m:
        assert m.embed_limit() == 48
        with pytest.raises(ValueError, match="position embeddings of 48"):
            m.embed(long, truncate=False)
    with Model(path, embedding=True, n_ctx=64, n_batch=16, n_threads=2) as m:
        assert m.embed_limit() == 16
        with pytest.raises(ValueError, match="batch size of 16"):
            m.embed(long, truncate=False)
        assert len(m.embed(long)) == CFG.n_embd  # cut to 16 tokens


@pytest.mark.parametrize("cfg", [CFG, NOMIC], ids=["bert", "nomic-bert"])
def test_placement_and_memory(tmp_path, cfg):
    """No KV cache; the weights counted are the file's tensors; GPU layers requested: the CPU,
    with a warning."""
    path, _ = tiny(tmp_path, cfg)
    m = core.Model(path, n_ctx=64, n_threads=2, n_gpu_layers=-1)
    assert any("encoder" in w and "CPU" in w for w in m.warnings)
    parts = m.placement
    assert [p["name"] for p in parts] == ["token_embd", "blk.0", "blk.1"]
    assert all(p["device"] == "CPU" and p["kv_bytes"] == 0 and p["kv_device"] == "" for p in parts)
    planned = plan(path, n_ctx=64)  # the planner reads the header alone: the same parts
    assert [(x.name, x.weight_bytes, x.kv_bytes) for x in planned.layers] == [
        (p["name"], p["weight_bytes"], p["kv_bytes"]) for p in parts]
    assert planned.kv_bytes_per_token == 0 and planned.devices[0].kv_cache == 0
    sizes = {info[0]: info[4] for info in core.GGUFFile(path).tensor_infos()}
    # the token type table is read once, at load, for a copy of type 0's row
    expected = sum(sizes.values()) - sizes["token_types.weight"] + 4 * cfg.n_embd
    assert sum(p["weight_bytes"] for p in parts) == expected


# -- through Model and the server, on files from convert-hf ---------------------------------------

SENTENCES = ["Hello World, the model's über café 12345!", "a short one", "Memory, thread -- fast small LARGE "
             "matrix; attention 7 rope. quantize THE block: 東京 naïve? it'll   scale\tthe\nrow/column [key]"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[str, dict, dict]:
    """A BertModel directory with sentence-transformers' mean pooling, converted to f32."""
    d = tmp_path_factory.mktemp("bert-hf")
    cfg, weights = F.tiny_bert(d / "hf", pooling="mean", max_position_embeddings=96, seed=11)
    out = d / "bert.gguf"
    convert(d / "hf", out, type="f32", quiet=True)
    return str(out), cfg, weights


def test_model_embed_like_llama_cpp(converted):
    """Model.embed (texts packed into one batch) against llama-cpp-python's Llama.embed on the same
    file and against the float64 BertModel on llama.cpp's token ids."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path, cfg, weights = converted
    theirs = llama_cpp.Llama(path, embedding=True, n_ctx=96, n_batch=96, n_ubatch=96, n_threads=2,
                             verbose=False)
    try:
        want, want_count = theirs.embed(SENTENCES, return_count=True)
        ids = [theirs.tokenize(s.encode()) for s in SENTENCES]
        want_none = theirs.embed(SENTENCES[0], normalize=True)  # one text: its reading is right
    finally:
        theirs.close()
    with Model(path, embedding=True, n_ctx=96, n_batch=96, n_threads=2) as m:
        assert m.pooling_type() == MEAN and m.token_bos() == ids[0][0]
        assert [m.tokenize(s.encode()) for s in SENTENCES] == ids
        got, count = m.embed(SENTENCES, return_count=True)
        assert count == want_count == sum(map(len, ids))
        for g, w, toks in zip(got, want, ids, strict=True):
            exact = F.bert_hidden_states(cfg, weights, toks).mean(axis=0)
            assert rel_err(np.array(g), exact) < 1e-5
            assert rel_err(np.array(w), exact) < 2e-3  # llama.cpp's GELU table (see test_convert_bert)
        unit = np.array(m.embed(SENTENCES[0], normalize=True))
        assert abs(np.linalg.norm(unit) - 1) < 1e-6 and rel_err(unit, np.array(want_none)) < 2e-3
        res = m.create_embedding(SENTENCES[:2])
        assert [d["index"] for d in res["data"]] == [0, 1]
        assert res["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])
    with Model(path, embedding=True, n_ctx=96, n_batch=96, n_threads=2, pooling_type="none") as m:
        rows = np.array(m.embed(SENTENCES[1]))
        assert rows.shape == (len(ids[1]), cfg["hidden_size"])
        assert rel_err(rows, F.bert_hidden_states(cfg, weights, ids[1])) < 1e-5


def test_texts_packed_into_batches_give_what_each_gives_alone(converted):
    path, _, _ = converted
    texts = SENTENCES * 4  # ~ 130 tokens: three batches of at most 48
    with Model(path, embedding=True, n_ctx=96, n_batch=48, n_threads=2) as m:
        packed = np.array(m.embed(texts))
        alone = np.array([m.embed(t) for t in texts])
        np.testing.assert_allclose(packed, alone, rtol=0, atol=1e-6)
        long = " ".join(["word"] * 60)
        assert len(m.tokenize(long.encode())) > 48
        assert np.array(m.embed(long)).shape == (m.n_embd(),)  # cut to n_batch, as llama-cpp-python
        with pytest.raises(ValueError, match="exceed"):
            m.embed(long, truncate=False)
        with pytest.raises(Exception, match="encoder: it computes embeddings"):
            m.create_completion("Hello", max_tokens=2)


def test_server_embeddings_and_refusals(converted):
    path, _, _ = converted
    with Model(path, embedding=True, n_ctx=96, n_batch=96, n_threads=2) as m:
        want = np.array(m.embed(SENTENCES, normalize=True))
    model = Model(path, n_ctx=400, n_batch=96, n_seq_max=2, n_threads=2)
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias="bert")) as srv:
        r = httpx.post(f"{srv.url}/v1/embeddings", json={"input": SENTENCES, "encoding_format": "float"},
                       timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=chat, timeout=60)
        assert r.status_code == 400 and "embedding model" in r.text
        r = httpx.post(f"{srv.url}/v1/embeddings", json={"input": " ".join(["word"] * 60)}, timeout=60)
        assert r.status_code == 400 and "at most 96 tokens" in r.text  # (within the slot's 200)
        r = httpx.post(f"{srv.url}/v1/embeddings", json={"input": SENTENCES[1]}, timeout=60)
        assert r.status_code == 200  # still serving
    model.close()


@pytest.mark.parametrize("family", ["xlm-roberta", "nomic-bert"])
def test_model_embed_of_other_families(tmp_path, family):
    """Files from convert-hf of XLM-R (bge-m3 style: the t5/UGM vocabulary) and Nomic BERT through
    Model.embed, texts and all, against llama-cpp-python's Llama.embed on the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if family == "xlm-roberta":
        F.tiny_xlmr(tmp_path / "hf", pooling="mean", seed=3)
    else:
        F.tiny_nomic(tmp_path / "hf", pooling="mean", seed=4)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    theirs = llama_cpp.Llama(str(out), embedding=True, n_ctx=96, n_batch=96, n_ubatch=96, n_threads=2,
                             verbose=False)
    try:
        want = np.array(theirs.embed(SENTENCES, normalize=True))
        ids = [theirs.tokenize(s.encode()) for s in SENTENCES]
    finally:
        theirs.close()
    with Model(str(out), embedding=True, n_ctx=96, n_batch=96, n_threads=2) as m:
        assert [m.tokenize(s.encode()) for s in SENTENCES] == ids
        got = np.array(m.embed(SENTENCES, normalize=True))
    assert np.abs(got - want).max() < 3e-3  # (XLM-R: llama.cpp's GELU table)
