"""EmbeddingGemma (GGUF architecture ``gemma-embedding``) end to end: the engine's hidden states and
Model's pooled embeddings of tiny random models against a numpy float64 re-implementation of
transformers' Gemma3TextModel with bidirectional attention (tests/tiny_model.py's gemma reference,
non-causal; tests/hf_fixtures.py's on Hugging Face weights) and against llama.cpp on the same files;
convert-hf on a sentence-transformers directory, read by both engines.

What sets the model apart from gemma3: every token attends to every token of its text (no causal
mask, no cache), the sliding-window layers to those within sliding_window / 2 positions either
side (llama.cpp's LLAMA_SWA_TYPE_SYMMETRIC; transformers' window of sliding_window // 2 + 1), the
output norm's result pooled (mean by default) and then, where the file has them, sentence-
transformers' Dense projections dense_2 and dense_3 (llama.cpp applies them to the pooled vector,
and with pooling none to every token's row)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import hf_fixtures as F
import httpx
import numpy as np
import pytest
import splitllm._core as core
import test_convert as TC
from gguf import GGUFReader
from lcpp import llama_cpp_embeddings
from splitllm import GGUFError, Model
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.plan import plan
from splitllm.server import BackgroundServer
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from splitllm_convert.mix import FILE_TYPES
from tiny_model import (
    TinyConfig,
    interleaved_batch,
    make_weights,
    reference_embedding,
    reference_hidden,
    write_gguf,
)

# 7 layers: 0-4 local, 5 global, 6 local (EmbeddingGemma's pattern); heads wider than n_embd / n_head
CFG = TinyConfig(arch="gemma-embedding", n_layer=7, n_embd=64, n_head=4, n_head_kv=2, key_length=32, n_ff=96,
                 sliding_window=8, rope_base=1e6, rope_base_swa=1e4, rms_eps=1e-6, tied_output=True,
                 dense_out=96, pooling_type=1, seed=3)
NONE, MEAN, CLS, LAST = 0, 1, 2, 3  # llama.cpp's pooling types
RNG = np.random.default_rng(0)
# longer than the window (8: four tokens either side), in one batch
TEXTS = [RNG.integers(3, 256, n).tolist() for n in (40, 6, 23)]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def tiny(tmp_path: Path, cfg: TinyConfig = CFG, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-gemma-embedding-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    held = write_gguf(make_weights(cfg), path, **kw)
    return str(path), held


def ours(path: str, texts: list[list[int]], **kw) -> list[np.ndarray]:
    """Our engine's per-token hidden states (after the output norm) of the texts, read in one
    batch, text i in slot i."""
    kw = {"n_ctx": 64 * len(texts), "n_batch": 64 * len(texts), "n_threads": 2, **kw}
    m = core.Model(path, **kw)
    toks = np.concatenate([np.asarray(t, np.int32) for t in texts])
    pos = np.concatenate([np.arange(len(t), dtype=np.int32) for t in texts])
    slot = np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(texts)])
    out = m.decode(toks, pos, slot, None, None, True)
    return np.split(out.astype(np.float64), np.cumsum([len(t) for t in texts])[:-1])


def project(rows: np.ndarray, held: dict[str, np.ndarray]) -> np.ndarray:
    return rows @ held["dense_2.weight"].T @ held["dense_3.weight"].T


@pytest.fixture(scope="module")
def f32(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    return tiny(tmp_path_factory.mktemp("gemma-embedding"))


def test_hidden_states_match_float64_and_llama_cpp(f32):
    """Per-token hidden states of three texts in one batch: ours against the float64 reference and
    against llama.cpp's (whose rows with pooling none have passed through the dense projections:
    compared with ours projected the same way)."""
    path, held = f32
    got = ours(path, TEXTS)
    theirs = llama_cpp_embeddings(path, TEXTS, pooling=NONE, n_ctx=128)
    for text, g, t in zip(TEXTS, got, theirs, strict=True):
        exact = reference_hidden(CFG, held, text, kv_f16=False)
        assert rel_err(g, exact) < 1e-5  # measured 1.4e-7 - 1.9e-7
        assert rel_err(t, project(exact, held)) < 1e-3  # llama.cpp: ~1e-4 (its GELU's float16 table)
        assert rel_err(project(g, held), t) < 1e-3


def test_bidirectional_window_matters(f32):
    """The comparisons above can fail: the reference with a causal mask, or without the window,
    or with a one-sided window, is far from ours."""
    path, held = f32
    text = TEXTS[0]
    got = ours(path, [text])[0]
    assert rel_err(got, reference_hidden(replace(CFG, sliding_window=1000), held, text, kv_f16=False)) > 1e-2
    gemma3 = replace(CFG, arch="gemma3")  # causal, the window looking back only
    assert rel_err(got, reference_hidden(gemma3, held, text, kv_f16=False)) > 1e-2
    # and the first token sees the last through the global layer
    b = ours(path, [text[:-1] + [77]])[0]
    assert rel_err(b[0], got[0]) > 1e-3


def test_long_interleaved_texts_match_float64_reference(tmp_path):
    """Texts longer than the attention's tile of 128 queries (300 and 150 tokens; a window of 16,
    so each tile reads a slice of the keys), their tokens interleaved in one batch: each as the
    float64 reference has it alone."""
    cfg = replace(CFG, sliding_window=16, n_layer=6, dense_out=0, seed=7)
    path, held = tiny(tmp_path, cfg)
    rng = np.random.default_rng(3)
    texts = [rng.integers(3, 256, n).tolist() for n in (300, 150)]
    toks, pos, slot = interleaved_batch(texts)
    m = core.Model(path, n_ctx=512, n_batch=512, n_threads=2, n_seq_max=2)
    out = m.decode(toks, pos, slot, None, None, True)
    for k, text in enumerate(texts):
        assert rel_err(np.float64(out[slot == k]), reference_hidden(cfg, held, text, kv_f16=False)) < 1e-5


def test_model_embed_pooled_and_projected_like_llama_cpp(f32):
    """Model.embed: the pooled vector through dense_2 and dense_3 (mean, the file's; last, asked
    for), and with pooling none each token's row through them, as llama.cpp gives them."""
    path, held = f32
    for pooling in (MEAN, LAST):
        theirs = llama_cpp_embeddings(path, TEXTS, pooling=pooling, n_ctx=128)
        with Model(path, embedding=True, n_ctx=128, n_batch=128, n_threads=2,
                   pooling_type=-1 if pooling == MEAN else "last") as m:
            assert m.pooling_type() == pooling
            got = [m.token_embeddings(t) for t in TEXTS]
            for text, g, t in zip(TEXTS, got, theirs, strict=True):
                vec = m.pool(g, pooling, normalize=False)[0]
                exact = reference_embedding(CFG, held, text, pooling)
                assert vec.shape == (CFG.n_embd,)
                assert rel_err(vec, exact) < 1e-5  # measured 1.6e-7
                assert rel_err(t, exact) < 1e-3  # llama.cpp's: ~1e-4
                unit = m.pool(g, pooling, normalize=True)[0]
                assert abs(np.linalg.norm(unit) - 1) < 1e-12
                assert rel_err(unit, exact / np.linalg.norm(exact)) < 1e-5
    theirs = llama_cpp_embeddings(path, TEXTS, pooling=NONE, n_ctx=128)
    with Model(path, embedding=True, n_ctx=128, n_threads=2, pooling_type="none") as m:
        rows = m.pool(m.token_embeddings(TEXTS[2]), NONE, normalize=False)
        assert rows.shape == (len(TEXTS[2]), CFG.n_embd)
        assert rel_err(rows, project(reference_hidden(CFG, held, TEXTS[2], kv_f16=False), held)) < 1e-5
        assert rel_err(rows, theirs[2]) < 1e-3


def test_dense_bias_and_a_file_without_projections(tmp_path):
    """dense_2's bias (allowed by the engine; llama.cpp's gemma-embedding does not load one) is
    added; a file without dense tensors gives the pooled hidden states (as llama.cpp)."""
    cfg = replace(CFG, n_layer=6, dense_bias=True, seed=4)
    path, held = tiny(tmp_path, cfg)
    with Model(path, embedding=True, n_ctx=64, n_threads=2) as m:
        vec = m.pool(m.token_embeddings(TEXTS[0]), MEAN, normalize=False)[0]
    assert rel_err(vec, reference_embedding(cfg, held, TEXTS[0], MEAN)) < 1e-5
    cfg = replace(CFG, n_layer=6, dense_out=0, seed=5)
    path, held = tiny(tmp_path, cfg)
    theirs = llama_cpp_embeddings(path, TEXTS[:1], pooling=MEAN)[0]
    with Model(path, embedding=True, n_ctx=64, n_threads=2) as m:
        vec = m.pool(m.token_embeddings(TEXTS[0]), MEAN, normalize=False)[0]
    assert rel_err(vec, reference_embedding(cfg, held, TEXTS[0], MEAN)) < 1e-5
    assert rel_err(vec, theirs) < 1e-3


def test_texts_packed_into_batches_give_what_each_gives_alone(f32):
    path, _ = f32
    texts = ["the cat sat on the mat " * k for k in (1, 3, 2, 5, 1, 4)]
    with Model(path, embedding=True, n_ctx=128, n_batch=96, n_threads=2) as m:
        assert sum(len(m.tokenize(t.encode())) for t in texts) > 2 * 96  # three batches or more
        packed = np.array(m.embed(texts, normalize=True))
        alone = np.array([m.embed(t, normalize=True) for t in texts])
        np.testing.assert_allclose(packed, alone, rtol=0, atol=1e-6)
        res = m.create_embedding(texts[:2])
        assert [d["index"] for d in res["data"]] == [0, 1] and len(res["data"][0]["embedding"]) == CFG.n_embd
        with pytest.raises(Exception, match="encoder: it computes embeddings"):
            m.create_completion("Hello", max_tokens=2)


def test_q8_0_within_llama_cpp_budget(tmp_path):
    """Q8_0 weights (the dense projections too): both engines quantize the activations of the
    matmuls; ours is held to llama.cpp's own distance from the float64 reference on the weights the
    file holds, and close to llama.cpp."""
    path, held = tiny(tmp_path, weight_type="Q8_0")
    theirs = llama_cpp_embeddings(path, TEXTS, pooling=MEAN, n_ctx=128)
    with Model(path, embedding=True, n_ctx=128, n_batch=128, n_threads=2) as m:
        got = [m.token_embeddings(t) for t in TEXTS]
        for text, rows, t in zip(TEXTS, got, theirs, strict=True):
            vec = m.pool(rows, MEAN, normalize=False)[0]
            exact = reference_embedding(CFG, held, text, MEAN)
            assert rel_err(vec, t) < 2e-2
            assert rel_err(vec, exact) < max(1.5 * rel_err(t, exact), 1e-5)


@pytest.mark.parametrize(("change", "match"), [
    ({"gemma-embedding.attention.sliding_window": None}, "sliding_window"),
    ({"gemma-embedding.attention.sliding_window": 0}, "window of no tokens"),
    ({"gemma-embedding.attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon"),
    ({"gemma-embedding.dense_2_feat_out": None}, "dense_2.weight' without metadata"),
    ({"gemma-embedding.dense_2_feat_in": 32}, "dense_2_feat_in' = 32 must equal"),
    ({"gemma-embedding.dense_2_feat_out": 32}, "dense_2.weight' has shape"),
])
def test_bad_metadata_is_an_error(tmp_path, change, match):
    path, _ = tiny(tmp_path, replace(CFG, n_layer=6), metadata=change)
    with pytest.raises(GGUFError, match=match):
        core.Model(path, n_ctx=64, n_threads=2)


def test_dense_chains_are_checked(tmp_path):
    """dense_2 alone must give n_embd values (llama.cpp reads that many); dense_3 must read what
    dense_2 gives."""
    cfg = replace(CFG, n_layer=6)
    w = make_weights(cfg)
    del w.weights["dense_3.weight"]
    write_gguf(w, tmp_path / "d2.gguf", metadata={"gemma-embedding.dense_3_feat_in": None,
                                                  "gemma-embedding.dense_3_feat_out": None})
    with pytest.raises(GGUFError, match="no 'dense_3.weight' maps them back"):
        core.Model(str(tmp_path / "d2.gguf"), n_ctx=64, n_threads=2)
    w = make_weights(cfg)
    w.weights["dense_3.weight"] = w.weights["dense_3.weight"][:, :64]
    write_gguf(w, tmp_path / "d3.gguf", metadata={"gemma-embedding.dense_3_feat_in": 64})
    with pytest.raises(GGUFError, match="dense_3.weight' reads 64 values, but dense_2.weight gives 96"):
        core.Model(str(tmp_path / "d3.gguf"), n_ctx=64, n_threads=2)


def test_placement_memory_and_limits(f32):
    """No KV cache and no ring; the weights counted are the file's tensors (the output norm and the
    projections with the token embedding); GPU layers requested: the CPU, with a warning; a text
    may fill n_batch (no position embeddings) and no more."""
    path, _ = f32
    m = core.Model(path, n_ctx=64, n_threads=2, n_gpu_layers=-1)
    assert any("encoder" in w and "CPU" in w for w in m.warnings)
    assert m.config["encoder"] and m.config["swa_layers"] == [0, 1, 2, 3, 4, 6] and m.config["n_swa"] == 8
    parts = m.placement
    assert [p["name"] for p in parts] == ["token_embd"] + [f"blk.{i}" for i in range(CFG.n_layer)]
    assert all(p["device"] == "CPU" and p["kv_bytes"] == 0 and p["kv_device"] == "" for p in parts)
    planned = plan(path, n_ctx=64)
    assert [(x.name, x.weight_bytes, x.kv_bytes) for x in planned.layers] == [
        (p["name"], p["weight_bytes"], p["kv_bytes"]) for p in parts]
    assert planned.kv_bytes_per_token == 0 and planned.devices[0].kv_cache == 0
    sizes = {info[0]: info[4] for info in core.GGUFFile(path).tensor_infos()}
    assert sum(p["weight_bytes"] for p in parts) == sum(sizes.values())
    with Model(path, embedding=True, n_ctx=64, n_batch=16, n_threads=2) as model:
        assert model.embed_limit() == 16
        with pytest.raises(ValueError, match="batch size of 16"):
            model.embed("word " * 40, truncate=False)
        assert len(model.embed("word " * 40)) == CFG.n_embd  # cut to 16 tokens


# -- convert-hf on a sentence-transformers directory -------------------------------------------------

SENTENCES = ["Hello World, the model's über café 12345! A sentence longer than the window of eight.",
             "a short one", "Memory, thread -- fast small LARGE matrix; attention 7 rope. quantize THE block"]


DENSE = {"sentence_transformers_dense_modules": True}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict, dict, list]:
    """A random EmbeddingGemma directory (mean pooling, Dense 64 -> 96 -> 64) converted to f32 with
    its Dense modules."""
    d = tmp_path_factory.mktemp("embeddinggemma-hf")
    cfg, weights, denses = F.tiny_embedding_gemma(d / "hf", seed=11)
    out = d / "embeddinggemma.gguf"
    convert(d / "hf", out, type="f32", quiet=True, **DENSE)
    return out, cfg, weights, denses


def test_converted_file_has_llama_cpps_keys_and_tensors(converted):
    out, cfg, _, _ = converted
    r = GGUFReader(str(out))
    keys = {k: f.contents() for k, f in r.fields.items()}
    a = "gemma-embedding."
    assert keys["general.architecture"] == "gemma-embedding"
    assert keys[a + "attention.sliding_window"] == 8  # config.json's, not transformers' halved one
    assert keys[a + "pooling_type"] == MEAN
    assert [keys[a + f"dense_{k}_feat_{d}"] for k in (2, 3) for d in ("in", "out")] == [64, 96, 96, 64]
    assert keys[a + "rope.freq_base"] == 1e6 and keys[a + "rope.freq_base_swa"] == 1e4
    assert a + "attention.sliding_window_pattern" not in keys  # llama.cpp's default pattern of 6
    assert keys["tokenizer.ggml.model"] == "llama" and keys["tokenizer.ggml.add_space_prefix"] is False
    assert keys["tokenizer.ggml.add_eos_token"] is True
    names = {t.name: t for t in r.tensors}
    assert "output.weight" not in names and names["dense_2.weight"].shape.tolist() == [64, 96]
    assert names["dense_3.weight"].shape.tolist() == [96, 64]
    assert len(names) == 2 + 13 * cfg["num_hidden_layers"] + 2


def test_converted_file_in_both_engines_matches_float64_on_hf_weights(converted):
    """Model.embed and llama-cpp-python's Llama.embed on our file, texts and all, against the
    float64 Gemma3TextModel (bidirectional) + mean pooling + Dense modules on the HF weights."""
    llama_cpp = pytest.importorskip("llama_cpp")
    out, cfg, weights, denses = converted
    theirs = llama_cpp.Llama(str(out), embedding=True, n_ctx=96, n_batch=96, n_ubatch=96, n_threads=2,
                             verbose=False)
    try:
        want = theirs.embed(SENTENCES)
        ids = [theirs.tokenize(s.encode()) for s in SENTENCES]
    finally:
        theirs.close()
    assert max(map(len, ids)) > 2 * cfg["sliding_window"]
    with Model(str(out), embedding=True, n_ctx=96, n_batch=96, n_threads=2) as m:
        assert [m.tokenize(s.encode()) for s in SENTENCES] == ids
        got = m.embed(SENTENCES)
    for g, w, toks in zip(got, want, ids, strict=True):
        exact = F.embedding_gemma_vectors(cfg, weights, denses, toks)
        assert rel_err(g, exact) < 1e-5  # measured 1.5e-7 - 2.4e-7
        assert rel_err(w, exact) < 1e-3  # llama.cpp's: ~1e-4
        assert rel_err(g, np.array(w)) < 1e-3
    # the window and the projections matter here: the comparisons above can fail
    no_window = {**cfg, "sliding_window": 1000}
    assert rel_err(got[0], F.embedding_gemma_vectors(no_window, weights, denses, ids[0])) > 1e-2
    assert rel_err(got[0], F.embedding_gemma_vectors(cfg, weights, [], ids[0])) > 1e-1


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
def test_quantized_types_and_bytes_match_llama_quantize(converted, tmp_path, qtype):
    """Each tensor's type (the dense projections', the tied token embedding's) and bytes of our
    quantized file equal those llama.cpp's quantizer makes from our f32 file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    out, _, _, _ = converted
    ref, ours_q = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    TC.lcpp_quantize(llama_cpp, out, ref, int(FILE_TYPES[qtype].ftype))
    convert(out.parent / "hf", ours_q, type=qtype, quiet=True, n_threads=2, **DENSE)
    want, got = TC.tensors(ref), TC.tensors(ours_q)
    assert set(got) == set(want)
    for name, t in got.items():
        assert (t.tensor_type, list(t.shape)) == (want[name].tensor_type, list(want[name].shape)), name
        assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name


def test_server_embeddings(converted):
    out, _, _, _ = converted
    with Model(str(out), embedding=True, n_ctx=96, n_batch=96, n_threads=2) as m:
        want = np.array(m.embed(SENTENCES, normalize=True))
    model = Model(str(out), n_ctx=192, n_batch=96, n_seq_max=2, n_threads=2)
    with BatchEngine(model) as eng, BackgroundServer(create_app(eng, model_alias="eg")) as srv:
        r = httpx.post(f"{srv.url}/v1/embeddings", json={"input": SENTENCES, "encoding_format": "float"},
                       timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    model.close()


def test_converter_options_and_refusals(tmp_path, caplog):
    """Without --sentence-transformers-dense-modules the Dense modules are left out (llama.cpp's
    default), with a warning; weights saved under ``model.`` convert to the same tensors; a Dense
    module with a bias or an activation llama.cpp does not apply is refused."""
    cfg, _, _ = F.tiny_embedding_gemma(tmp_path / "hf", prefix="model.", seed=2)
    with caplog.at_level(logging.WARNING, logger="convert-hf"):
        bare = convert(tmp_path / "hf", tmp_path / "bare.gguf", dry_run=True)
    assert "Dense modules (2_Dense, 3_Dense) are left out" in caplog.text
    names = [t.name for t in bare.tensors]
    assert "dense_2.weight" not in names and "token_embd.weight" in names and bare.arch == "gemma-embedding"
    full = convert(tmp_path / "hf", tmp_path / "x.gguf", dry_run=True, **DENSE)
    assert [t.name for t in full.tensors] == names + ["dense_2.weight", "dense_3.weight"]
    source = {t.name: t.source for t in full.tensors}["dense_3.weight"]
    assert source == "3_Dense/model.safetensors:linear.weight"
    dense_cfg = tmp_path / "hf" / "2_Dense" / "config.json"
    base = json.loads(dense_cfg.read_text())
    refused = ({"bias": True}, "with a bias"), ({"activation_function": "torch.nn.Tanh"}, "Identity")
    for change, match in refused:
        dense_cfg.write_text(json.dumps({**base, **change}))
        with pytest.raises(ConvertError, match=match):
            convert(tmp_path / "hf", tmp_path / "x.gguf", dry_run=True, **DENSE)
    assert cfg["use_bidirectional_attention"] is True
