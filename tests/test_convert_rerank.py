"""convert-hf on tiny random cross-encoder rerankers (BertForSequenceClassification as
cross-encoder/ms-marco-MiniLM-L-6-v2, XLMRobertaForSequenceClassification as bge-reranker-v2-m3),
checked against references we did not write.

- llama.cpp (llama-cpp-python, rank pooling) on our GGUF scores query / document pairs, built as
  llama-server's format_prompt_rerank builds them from the file's add_bos / add_eos / add_sep flags,
  as the numpy float64 forward passes written from transformers' classification models do
  (hf_fixtures.bert_rerank_scores / xlmr_rerank_scores) on the same token ids, with token type 0
  for every token: llama.cpp feeds no other (transformers gives a BERT pair's document type 1).
  The pair's ids are those of the tokenizer.json pair template, and llama.cpp reads back the
  number of outputs and the labels.
- The per-tensor types and bytes of ``--type`` files equal llama.cpp's quantizer run on our f32 file.
- Metadata: the encoder's keys, exactly as a BertModel / XLMRobertaModel conversion of the same
  directory writes them, then pooling_type 4 (rank) and the classifier's labels.
- Bad input is refused, naming the file and the tensor or key, and nothing is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
import test_convert as TC
import test_convert_bert as TB
import test_convert_nomic_xlmr as TX
from gguf import GGMLQuantizationType, GGUFReader
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError

PAIRS = [(TB.TEXTS[0], TB.TEXTS[1]), (TB.TEXTS[1], TB.TEXTS[2]), (TB.TEXTS[2], TB.TEXTS[0])]
# Max |llama.cpp - float64 reference| over the scores (up to about +-2), measured over these cases
# with three seeds each: 3.5e-4 for f32 files, 1.3e-3 for the f16 files. As for the hidden states
# (test_convert_bert), most of it is llama.cpp's GELU (the tanh approximation from an f16 table,
# where BERT's is erf). The bounds leave about 3x margin.
TOL_F32 = 1e-3
TOL_F16 = 4e-3

# id: (family, fixture options, labels (None: LABEL_0), output --type)
CASES: dict[str, tuple[str, dict[str, Any], list[str] | None, str]] = {
    "bert-1-label": ("bert", {}, None, "f32"),
    "bert-2-named-labels-bf16": ("bert", {"dtype": "bf16", "seed": 1}, ["irrelevant", "relevant"], "f32"),
    "bert-top-level-cased-f16-file": ("bert", {"prefix": "", "lowercase": False, "seed": 2}, None, "f16"),
    "xlmr-1-label-nmt-nfkc": ("xlmr", {}, None, "f32"),
    "xlmr-3-labels-top-level": ("xlmr", {"prefix": "", "normalization": "identity", "seed": 1},
                                ["a", "b", "c"], "f32"),
    "xlmr-f16-weights-f16-file": ("xlmr", {"dtype": "f16", "normalization": "identity", "seed": 2}, None,
                                  "f16"),
}  # fmt: skip


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def _reranker(family: str, d: Path, labels: list[str] | None = None, **kw: Any) -> tuple[dict[str, Any], Any]:
    make = F.tiny_bert_reranker if family == "bert" else F.tiny_xlmr_reranker
    return make(d, labels, **kw)


def _rank_model(llama_cpp: Any, path: Path) -> Any:
    return llama_cpp.Llama(str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK,
                           n_ctx=256, n_batch=256, n_ubatch=256, n_threads=2, verbose=False)  # fmt: skip


def rerank_tokens(llama_cpp: Any, llm: Any, query: str, doc: str) -> list[int]:
    """llama-server's format_prompt_rerank (tools/server/server-common.cpp) for a model without a
    rerank chat template: [BOS] query [EOS] [SEP] doc [EOS], each special as the vocabulary's
    add_bos / add_eos / add_sep flags say, EOS falling back to SEP; the texts tokenized without
    special tokens and without parsing them."""
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    eos = llama_cpp.llama_vocab_eos(vocab)
    if eos == llama_cpp.LLAMA_TOKEN_NULL:
        eos = llama_cpp.llama_vocab_sep(vocab)
    add_eos = llama_cpp.llama_vocab_get_add_eos(vocab)
    out = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
    out += llm.tokenize(query.encode(), add_bos=False, special=False)
    out += [eos] if add_eos else []
    out += [llama_cpp.llama_vocab_sep(vocab)] if llama_cpp.llama_vocab_get_add_sep(vocab) else []
    out += llm.tokenize(doc.encode(), add_bos=False, special=False)
    return out + ([eos] if add_eos else [])


def rank_scores(llama_cpp: Any, llm: Any, seqs: list[list[int]]) -> list[np.ndarray]:
    """llama.cpp's rank pooling of token lists decoded in one batch, each its own sequence: n_cls_out
    floats per sequence (llama_get_embeddings_seq), as llama-server reads them."""
    n_out = llama_cpp.llama_model_n_cls_out(llm._model.model)
    llm._batch.reset()
    for i, toks in enumerate(seqs):
        llm._batch.add_sequence(toks, i, True)
    llm._ctx.kv_cache_clear()
    llm._ctx.decode(llm._batch)
    return [np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, i), shape=(n_out,))
            .astype(np.float64) for i in range(len(seqs))]  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_scores_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    from tokenizers import Tokenizer

    family, kw, labels, qtype = CASES[case]
    d = tmp_path / "hf"
    cfg, weights = _reranker(family, d, labels, **kw)
    labels = labels or ["LABEL_0"]
    out = tmp_path / "m.gguf"
    convert(d, out, type=qtype, quiet=True)
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    ref_of = F.bert_rerank_scores if family == "bert" else F.xlmr_rerank_scores
    tol = TOL_F32 if qtype == "f32" else TOL_F16
    llm = _rank_model(llama_cpp, out)
    try:
        model = llm._model.model
        assert llama_cpp.llama_model_n_cls_out(model) == len(labels)
        assert [llama_cpp.llama_model_cls_label(model, i).decode() for i in range(len(labels))] == labels
        seqs = [rerank_tokens(llama_cpp, llm, q, doc) for q, doc in PAIRS]
        for (q, doc), ids in zip(PAIRS, seqs, strict=True):
            # BERT: [CLS] q [SEP] doc [SEP]; XLM-R: <s> q </s> </s> doc </s>
            assert ids == hf.encode(q, doc).ids, (q, doc)
        for (q, doc), ids, got in zip(PAIRS, seqs, rank_scores(llama_cpp, llm, seqs), strict=True):
            want = ref_of(cfg, weights, ids)
            assert got.shape == want.shape == (len(labels),)
            assert np.abs(got - want).max() < tol, (q, doc, got, want)
    finally:
        llm.close()


def test_reference_tells_heads_apart() -> None:
    """What the tolerance can see: llama.cpp's own converter mapping for BERT (the pooler dropped:
    ``classifier(h)``), the head without its tanh, or the first text's hidden state at the last
    token instead of the first are all far beyond it."""
    cfg = F.bert_config(vocab_size=60)
    w = {**F.bert_weights(cfg), **F.classifier_head(cfg, 2, "bert")}
    ids = [2, 7, 11, 30, 3, 41, 9, 3]
    ref = F.bert_rerank_scores(cfg, w, ids)
    h = F.bert_hidden_states(cfg, w, ids)
    g = {k: v.astype(np.float64) for k, v in w.items()}

    def linear(name: str, x: np.ndarray) -> np.ndarray:
        return g[name + ".weight"] @ x + g[name + ".bias"]

    no_pooler = linear("classifier", h[0])
    no_tanh = linear("classifier", linear("pooler.dense", h[0]))
    last = linear("classifier", np.tanh(linear("pooler.dense", h[-1])))
    for other in (no_pooler, no_tanh, last):
        assert np.abs(other - ref).max() > 50 * TOL_F32


# -- tensors and metadata -------------------------------------------------------------------------

HEAD_TO_HF = {
    "bert": {"cls": "pooler.dense", "cls.output": "classifier"},
    "xlmr": {"cls": "classifier.dense", "cls.output": "classifier.out_proj"},
}


@pytest.mark.parametrize(
    ("family", "kw", "qtype"),
    [("bert", {}, "f32"), ("bert", {"dtype": "bf16", "prefix": ""}, "f16"),
     ("xlmr", {"dtype": "f16", "normalization": "identity"}, "bf16"),
     ("xlmr", {"prefix": "", "normalization": "identity"}, "f16")],
    ids=["bert-f32", "bert-top-level-f16", "xlmr-bf16", "xlmr-top-level-f16"],
)  # fmt: skip
def test_tensors(tmp_path: Path, family: str, kw: dict[str, Any], qtype: str) -> None:
    """The encoder's tensors as BertModel / XLMRobertaModel conversions write them, and the head:
    BERT's pooler as ``cls``, its classifier as ``cls.output``; XLM-R's classifier.dense as ``cls``,
    classifier.out_proj as ``cls.output``. Matrices (the one-row ``cls.output.weight`` too, as
    llama.cpp's converter, which counts numpy's dimensions) in the float type, biases in F32."""
    cfg, weights = _reranker(family, tmp_path / "hf", **kw)
    convert(tmp_path / "hf", tmp_path / "m.gguf", type=qtype, quiet=True)
    got = TC.tensors(tmp_path / "m.gguf")
    head = {n: t for n, t in got.items() if n.startswith("cls")}
    assert sorted(head) == ["cls.bias", "cls.output.bias", "cls.output.weight", "cls.weight"]
    e = cfg["hidden_size"]
    for name, t in head.items():
        base, part = name.rsplit(".", 1)
        src = weights[f"{HEAD_TO_HF[family][base]}.{part}"]
        shape = [1, e] if name == "cls.output.weight" else list(src.shape)
        assert [int(n) for n in reversed(t.shape)] == shape, name
        want_type = "F32" if src.ndim == 1 or qtype == "f32" else qtype.upper()
        assert t.tensor_type.name == want_type, name
        want = src if want_type == "F32" else F.as_dtype(np.ascontiguousarray(src), qtype)[2]
        np.testing.assert_array_equal(TC.as_f32(t), want, err_msg=name)
    encoder = {n: t for n, t in got.items() if n not in head}
    encoder_weights = {n: x for n, x in weights.items() if not n.startswith(("classifier.", "pooler."))}
    offset = cfg["pad_token_id"] + 1 if family == "xlmr" else 0
    TX._check_values(encoder, encoder_weights, TB._hf_name, qtype, offset=offset)


def _fields(path: Path) -> dict[str, Any]:
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _as_encoder(src: Path, dst: Path, family: str) -> None:
    """``src`` as the encoder alone (BertModel / XLMRobertaModel, no labels, no head), in ``dst``."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("id2label", "label2id")}
    cfg["architectures"] = ["BertModel" if family == "bert" else "XLMRobertaModel"]
    (dst / "config.json").write_text(json.dumps(cfg))
    from safetensors.numpy import load_file

    prefix = "bert." if family == "bert" else "roberta."
    w = load_file(str(dst / "model.safetensors"))
    F.save_weights(dst, {n.removeprefix(prefix): x for n, x in w.items() if not n.startswith("classifier.")})


@pytest.mark.parametrize(
    ("family", "labels", "pooling"),
    [("bert", None, None), ("bert", ["irrelevant", "relevant"], "cls"), ("xlmr", ["a", "b", "c"], None)],
    ids=["bert-1-label", "bert-2-labels-modules-json", "xlmr-3-labels"],
)  # fmt: skip
def test_metadata(tmp_path: Path, family: str, labels: list[str] | None, pooling: str | None) -> None:
    """Every key of the encoder's conversion of the same directory, in the same order, and
    bert.pooling_type 4 (rank, over what a sentence-transformers Pooling module says) and
    bert.classifier.output_labels after bert.attention.causal, where llama.cpp's BertModel writes
    its pooling and labels."""
    kw = {"normalization": "identity"} if family == "xlmr" else {}
    _reranker(family, tmp_path / "r" / "hf", labels, pooling=pooling, **kw)
    _as_encoder(tmp_path / "r" / "hf", tmp_path / "e" / "hf", family)
    (tmp_path / "e" / "hf" / "modules.json").unlink(missing_ok=True)
    convert(tmp_path / "r" / "hf", tmp_path / "r.gguf", type="q8_0", quiet=True)
    convert(tmp_path / "e" / "hf", tmp_path / "e.gguf", type="q8_0", quiet=True)
    ours, encoder = _fields(tmp_path / "r.gguf"), _fields(tmp_path / "e.gguf")
    ours.pop("general.size_label"), encoder.pop("general.size_label")  # the head's parameters count too
    head = {"bert.pooling_type": 4, "bert.classifier.output_labels": labels or ["LABEL_0"]}
    assert {k: v for k, v in ours.items() if k not in head} == encoder
    assert [k for k in ours if k not in head] == list(encoder)
    keys = list(ours)
    at = keys.index("bert.attention.causal")
    assert keys[at + 1 : at + 3] == list(head)
    assert {k: ours[k] for k in head} == head


@pytest.mark.reference
@pytest.mark.parametrize(
    ("over", "want"),
    [({"id2label": None, "label2id": None, "num_labels": 1}, ["LABEL_0"]),
     ({"id2label": None, "label2id": None}, ["LABEL_0", "LABEL_1"]),
     ({"id2label": {"1": "yes", "0": "no"}, "problem_type": "regression"}, ["no", "yes"]),
     ({}, ["LABEL_0", "LABEL_1"])],
    ids=["num-labels-1", "no-labels-2-placeholders", "ids-sorted-regression", "2-placeholders"],
)  # fmt: skip
def test_labels(tmp_path: Path, llama_cpp: Any, over: dict[str, Any], want: list[str]) -> None:
    """id2label as transformers' config reads it (LABEL_i for num_labels, 2 by default, without
    one), in id order; llama.cpp leaves out two LABEL_0 / LABEL_1 placeholders, which makes its
    n_cls_out 1 and the two-row head unloadable: they are written here. problem_type (the training
    loss) changes nothing."""
    d = tmp_path / "hf"
    cfg, _ = F.tiny_bert_reranker(d, n_labels=len(want))
    cfg.update(over)
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
    assert TC.field(GGUFReader(tmp_path / "m.gguf"), "bert.classifier.output_labels") == want
    llm = _rank_model(llama_cpp, tmp_path / "m.gguf")
    try:
        assert llama_cpp.llama_model_n_cls_out(llm._model.model) == len(want)
        ids = rerank_tokens(llama_cpp, llm, *PAIRS[0])
        assert np.isfinite(rank_scores(llama_cpp, llm, [ids])[0]).all()
    finally:
        llm.close()


# -- quantization against llama.cpp's quantizer ---------------------------------------------------

RERANK_MIX_MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {
    # rows of 64: every K-quant falls back; one label: cls.output.weight is {64, 1}, ggml_n_dims 1
    "bert-rows64-1-label": ("bert", 1, {}),
    # rows of 256: K-quants as they are; two labels: cls.output.weight is quantized
    "xlmr-rows256-2-labels": ("xlmr", 2, {"hidden_size": 256, "intermediate_size": 512,
                                          "normalization": "identity"}),
}  # fmt: skip
RERANK_QUANT_TYPES = ["q8_0", "q5_1", "q4_k_m", "q2_k"]


@pytest.fixture(scope="module", params=list(RERANK_MIX_MODELS))
def rerank_mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path, int]:
    family, n_labels, kw = RERANK_MIX_MODELS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    _reranker(family, d / "hf", n_labels=n_labels, **kw)
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf", n_labels


@pytest.mark.reference
@pytest.mark.parametrize("qtype", RERANK_QUANT_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, rerank_mix_model: tuple[Path, Path, int], qtype: str
) -> None:
    hf_dir, f32, n_labels = rerank_mix_model
    TX.test_mix_and_bytes_match_llama_quantize(tmp_path, llama_cpp, (hf_dir, f32), qtype)
    got = TC.tensors(tmp_path / "ours.gguf")
    assert got["cls.bias"].tensor_type == got["cls.output.bias"].tensor_type == GGMLQuantizationType.F32
    if n_labels == 1:  # llama.cpp's quantizer leaves a one-row matrix as it is
        assert got["cls.output.weight"].tensor_type == GGMLQuantizationType.F32
    else:
        assert got["cls.output.weight"].tensor_type not in (GGMLQuantizationType.F32,
                                                            GGMLQuantizationType.F16)  # fmt: skip


# -- bad input ------------------------------------------------------------------------------------


def _drop(name: str) -> Any:
    return lambda w: {n: x for n, x in w.items() if n != name}


def _resize(name: str, rows: int) -> Any:
    return lambda w: {**w, name: np.resize(w[name], (rows, *w[name].shape[1:]))}


BAD_TENSORS: list[tuple[str, Any, str]] = [
    ("bert", _resize("classifier.weight", 3),
     r"tensor 'classifier.weight' in .*model.safetensors has shape \[3, 64\], config.json implies \[1, 64\]"),
    ("bert", _drop("bert.pooler.dense.weight"),
     r"tensor 'bert.pooler.dense.weight' \(cls.weight\) is missing from .*model.safetensors"),
    ("bert", lambda w: {**w, "classifier.extra.weight": w["classifier.weight"]},
     r"tensor 'classifier.extra.weight' in .*model.safetensors is not part of a "
     r"BertForSequenceClassification"),
    ("xlmr", _resize("classifier.dense.weight", 32),
     r"tensor 'classifier.dense.weight' in .*model.safetensors has shape \[32, 64\], config.json implies "
     r"\[64, 64\]"),
    ("xlmr", _drop("classifier.out_proj.bias"),
     r"tensor 'classifier.out_proj.bias' \(cls.output.bias\) is missing from .*model.safetensors"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "change", "match"), BAD_TENSORS,
                         ids=["bert-head-rows", "bert-no-pooler", "bert-extra", "xlmr-dense-rows",
                              "xlmr-no-out-proj-bias"])  # fmt: skip
def test_bad_tensors(tmp_path: Path, family: str, change: Any, match: str) -> None:
    from safetensors.numpy import load_file

    d = tmp_path / "hf"
    _reranker(family, d, **({"normalization": "identity"} if family == "xlmr" else {}))
    F.save_weights(d, change(load_file(str(d / "model.safetensors"))))
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert TB._nothing_written(tmp_path)


BAD_CONFIG: list[tuple[dict[str, Any], str]] = [
    ({"id2label": {"0": "no", "2": "yes"}},
     r"'id2label' has ids \[0, 2\]; a classifier's outputs are numbered"),
    ({"id2label": ["no", "yes"]}, "'id2label' must map ids to labels"),
    ({"id2label": None, "num_labels": 0}, "'num_labels' must be a positive integer, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("over", "match"), BAD_CONFIG, ids=["id-gap", "list", "num-labels-0"])
def test_bad_config(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    d = tmp_path / "hf"
    cfg, _ = F.tiny_bert_reranker(d, n_labels=2)
    cfg.update(over)
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    with pytest.raises(ConvertError, match=f"{d / 'config.json'}: {match}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert TB._nothing_written(tmp_path)
