"""convert-hf on tiny random Nomic BERT (nomic-embed-text) and XLM-RoBERTa (bge-m3, multilingual-e5)
encoders, checked against references we did not write.

- llama.cpp (llama-cpp-python) on our f32 GGUF gives, per token and pooled as the file says, the
  last hidden states of numpy float64 forward passes written from Nomic's NomicBertModel
  (hf_fixtures.nomic_hidden_states) and transformers' XLMRobertaModel (xlmr_hidden_states), on
  token ids that llama.cpp's tokenizers give: for Nomic, as Hugging Face's ``tokenizers`` does
  (WordPiece); for XLM-R, as sentencepiece does on the sentencepiece.bpe.model trained here (with
  fairseq's ids) and as the tokenizer.json transformers would build from it does. splitllm's
  engine runs the same files, held to the same references.
- The per-tensor types and bytes of every ``--type`` equal those of llama.cpp's own quantizer run
  on our f32 file.
- Metadata keys are the ones llama.cpp's NomicBertModel and XLMRobertaModel write (read from
  convert_hf_to_gguf.py; the unigram vocabulary from the model proto as protobuf reads it; special
  ids and add_* flags from the gguf-py of llama.cpp's tree); bad input is refused, naming the file
  and key, and nothing is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
import test_convert as TC
import test_convert_bert as TB
from gguf import GGMLQuantizationType, GGUFReader
from splitllm_convert import FILE_TYPES, convert
from splitllm_convert.errors import ConvertError
from splitllm_convert.xlmr import read_spm_spec

TEXTS = TB.TEXTS + ["ｆｕｌｌｗｉｄｔｈ ① ﬁnal Ⅻ café", "  leading, trailing and   inner   spaces  "]
# Max |llama.cpp - float64 reference| over the hidden states (about +-4.5 at most after the
# LayerNorms), measured over these cases with three seeds each: Nomic (SiLU, rotary) 1.4e-6 for
# f32 files, 3.2e-3 for the f16 file; XLM-R 1.6e-3 at f32 (llama.cpp computes BERT's erf GELU as
# the tanh approximation from an f16 table; see test_convert_bert), 2.5e-3 for the f16 file.
# splitllm's engine (exact GELU): 1.4e-6 at f32 (4e-7 of the largest value), 2.1e-3 on the f16
# files. The bounds leave about 3x margin.
TOL_NOMIC = 5e-6
TOL_XLMR = TB.TOL_F32
TOL_F16 = TB.TOL_F16
TOL_ENGINE = 5e-6  # splitllm's engine on f32 files (f16 files: TOL_F16)


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def _convert(tmp_path: Path, make: Any, kw: dict[str, Any], qtype: str) -> tuple[Path, Path, Any, F.Weights]:
    """A random model made by ``make`` (tiny_nomic, tiny_xlmr) with ``kw`` in tmp_path/hf, converted
    to tmp_path/m.gguf as ``qtype``: (directory, GGUF, config, stored weights)."""
    d, out = tmp_path / "hf", tmp_path / "m.gguf"
    cfg, weights = make(d, **kw)
    convert(d, out, type=qtype, quiet=True)
    return d, out, cfg, weights


def _check_embeddings(llama_cpp: Any, out: Path, kw: dict[str, Any], qtype: str, tol: float, ids_of: Any,
                      ref_of: Any) -> None:  # fmt: skip
    """TB.check_embeddings on TEXTS; the engine held to TOL_ENGINE on f32 files, else to ``tol``."""
    TB.check_embeddings(llama_cpp, out, TEXTS, kw.get("pooling"), tol, TOL_ENGINE if qtype == "f32" else tol,
                        ids_of, ref_of)


# -- Nomic BERT: embeddings against the float64 reference ----------------------------------------

# id: (tiny_nomic options, output --type, tolerance)
NOMIC_CASES: dict[str, tuple[dict[str, Any], str, float]] = {
    "f32-3-layers": ({"n_layer": 3}, "f32", TOL_NOMIC),
    "bf16-sharded-mean": ({"dtype": "bf16", "shards": 3, "pooling": "mean", "seed": 1}, "f32", TOL_NOMIC),
    "f16-cls-2-heads-base-10000": ({"dtype": "f16", "pooling": "cls", "n_head": 2, "rotary_emb_base": 10000,
                                    "seed": 2}, "f32", TOL_NOMIC),
    "lasttoken-f16-file": ({"pooling": "lasttoken", "seed": 3, "layer_norm_epsilon": 1e-5}, "f16", TOL_F16),
}  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("case", list(NOMIC_CASES))
def test_nomic_embeddings_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    from tokenizers import Tokenizer

    kw, qtype, tol = NOMIC_CASES[case]
    d, out, cfg, weights = _convert(tmp_path, F.tiny_nomic, kw, qtype)
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))

    def ids_of(text: str, ids: list[int]) -> None:
        assert ids == hf.encode(text).ids, text  # [CLS] ... [SEP], lowercased

    _check_embeddings(llama_cpp, out, kw, qtype, tol, ids_of,
                      lambda ids: F.nomic_hidden_states(cfg, weights, ids))


def test_nomic_reference_tells_gate_rope_and_order_apart() -> None:
    """What the tolerance sees: fc11 as the gate instead of fc12, another rotary base, or q and k
    swapped in Wqkv move the states far beyond it."""
    cfg = F.nomic_config(vocab_size=64)
    w = F.nomic_weights(cfg)
    ids = [2, 7, 11, 30, 41, 9, 3]
    ref = F.nomic_hidden_states(cfg, w, ids)
    far = 1000 * TOL_NOMIC
    assert np.abs(F.nomic_hidden_states(cfg, w, ids, gate="fc11") - ref).max() > far
    assert np.abs(F.nomic_hidden_states({**cfg, "rotary_emb_base": 10000}, w, ids) - ref).max() > far
    name, e = "encoder.layers.1.attn.Wqkv.weight", cfg["n_embd"]
    swapped = {**w, name: np.concatenate([w[name][e : 2 * e], w[name][:e], w[name][2 * e :]])}
    assert np.abs(F.nomic_hidden_states(cfg, swapped, ids) - ref).max() > far


# -- XLM-RoBERTa: embeddings against the float64 reference ---------------------------------------

XLMR_CASES: dict[str, tuple[dict[str, Any], str, float]] = {
    "f32-cls": ({"pooling": "cls"}, "f32", TOL_XLMR),
    "bf16-sharded-mean-identity": ({"dtype": "bf16", "shards": 3, "pooling": "mean", "seed": 1,
                                    "normalization": "identity"}, "f32", TOL_XLMR),
    "roberta-prefix-f16-ctx-98": ({"prefix": "roberta.", "dtype": "f16", "max_position_embeddings": 100,
                                   "seed": 2}, "f32", TOL_XLMR),
    "f16-file-identity": ({"seed": 3, "num_attention_heads": 2, "normalization": "identity"}, "f16", TOL_F16),
}  # fmt: skip


def _fairseq_ids(sp: Any, text: str) -> list[int]:
    """transformers' XLMRobertaTokenizer: <s>, SentencePiece id + 1 (its <unk> 0 -> fairseq's 3), </s>."""
    return [0] + [3 if i == 0 else i + 1 for i in sp.encode(text)] + [2]


@pytest.mark.reference
@pytest.mark.parametrize("case", list(XLMR_CASES))
def test_xlmr_embeddings_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    import sentencepiece as spm
    from tokenizers import Tokenizer

    kw, qtype, tol = XLMR_CASES[case]
    d, out, cfg, weights = _convert(tmp_path, F.tiny_xlmr, kw, qtype)
    sp = spm.SentencePieceProcessor(model_file=str(d / "sentencepiece.bpe.model"))
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))

    def ids_of(text: str, ids: list[int]) -> None:
        assert ids == _fairseq_ids(sp, text), text
        if text == text.strip():  # transformers' converter strips no trailing space, sentencepiece does
            assert ids == hf.encode(text).ids, text

    _check_embeddings(llama_cpp, out, kw, qtype, tol, ids_of,
                      lambda ids: F.xlmr_hidden_states(cfg, weights, ids))


def test_xlmr_reference_tells_positions_apart() -> None:
    """Positions from 0 (BERT's) instead of padding_idx + 1 move the states far beyond the tolerance."""
    cfg = F.xlmr_config(vocab_size=64)
    w = F.bert_weights(cfg)
    ids = [0, 7, 11, 30, 41, 9, 2]
    assert np.abs(F.bert_hidden_states(cfg, w, ids) - F.xlmr_hidden_states(cfg, w, ids)).max() > 50 * TOL_XLMR


# -- tensors ------------------------------------------------------------------------------------

NOMIC_TO_HF = {
    "token_embd": "embeddings.word_embeddings", "token_types": "embeddings.token_type_embeddings",
    "token_embd_norm": "emb_ln", "attn_qkv": "attn.Wqkv", "attn_output": "attn.out_proj",
    "attn_output_norm": "norm1", "ffn_up": "mlp.fc11", "ffn_gate": "mlp.fc12", "ffn_down": "mlp.fc2",
    "layer_output_norm": "norm2",
}  # fmt: skip


_nomic_hf_name = TB.hf_namer(NOMIC_TO_HF, "encoder.layers")


def _check_values(got: dict[str, Any], weights: F.Weights, hf_name: Any, qtype: str, offset: int = 0) -> None:
    """Every tensor once, with its values: matrices in the float type, the rest (norms, biases,
    position and token type embeddings) in F32, as llama.cpp's converter writes them; the
    position embeddings without their first ``offset`` rows."""
    assert sorted(hf_name(n) for n in got) == sorted(n for n in weights if not n.startswith("pooler."))
    for name, t in got.items():
        src = weights[hf_name(name)]
        if name == "position_embd.weight":
            src = src[offset:]
        kept = src.ndim == 1 or name in ("position_embd.weight", "token_types.weight")
        want_type = "F32" if kept or qtype == "f32" else qtype.upper()
        assert t.tensor_type.name == want_type, name
        want = src if want_type == "F32" else F.as_dtype(np.ascontiguousarray(src), qtype)[2]
        np.testing.assert_array_equal(TC.as_f32(t), want, err_msg=name)


@pytest.mark.parametrize(("kw", "qtype"), [({}, "f32"), ({"dtype": "bf16", "shards": 2}, "f16"),
                                           ({"dtype": "f16", "prefix": "bert."}, "bf16")],
                         ids=["f32", "sharded-f16", "bert-prefix-bf16"])  # fmt: skip
def test_nomic_tensors(tmp_path: Path, kw: dict[str, Any], qtype: str) -> None:
    """Wqkv fused as attn_qkv, fc11 as ffn_up, fc12 as ffn_gate, no position embeddings (the
    weights at the top level or under ``bert.``)."""
    _, weights = F.tiny_nomic(tmp_path / "hf", **kw)
    convert(tmp_path / "hf", tmp_path / "m.gguf", type=qtype, quiet=True)
    _check_values(TC.tensors(tmp_path / "m.gguf"), weights, _nomic_hf_name, qtype)


@pytest.mark.parametrize(("kw", "qtype"),
                         [({}, "f32"), ({"prefix": "roberta.", "dtype": "bf16", "shards": 2}, "f16"),
                          ({"pad_token_id": 5, "dtype": "f16"}, "bf16")],
                         ids=["f32", "roberta-sharded-f16", "pad-5-bf16"])  # fmt: skip
def test_xlmr_tensors(tmp_path: Path, kw: dict[str, Any], qtype: str) -> None:
    """BERT's tensors; the position embeddings without their first pad_token_id + 1 rows."""
    cfg, weights = F.tiny_xlmr(tmp_path / "hf", normalization="identity", **kw)
    convert(tmp_path / "hf", tmp_path / "m.gguf", type=qtype, quiet=True)
    got = TC.tensors(tmp_path / "m.gguf")
    n_pos = cfg["max_position_embeddings"] - cfg["pad_token_id"] - 1
    assert list(got["position_embd.weight"].shape) == [64, n_pos]
    _check_values(got, weights, TB._hf_name, qtype, offset=cfg["pad_token_id"] + 1)


# -- metadata -----------------------------------------------------------------------------------


def _wordpiece_tokens(d: Path, n_vocab: int) -> list[str]:
    """llama.cpp's BERT tokens: phantom-space form, [PADn] (as UNUSED tokens, phantom too) up to n_vocab."""
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    by_id = sorted(vocab, key=vocab.__getitem__) + [f"[PAD{i}]" for i in range(len(vocab), n_vocab)]
    return [t if t in F.BERT_SPECIALS else t[2:] if t.startswith("##") else "\u2581" + t for t in by_id]


@pytest.mark.parametrize(
    ("over", "pooling", "want"),
    [({}, None, {"nomic-bert.context_length": 2048}),
     ({"max_trained_positions": None, "n_positions": 2048, "layer_norm_epsilon": 1e-5}, "mean",
      {"nomic-bert.context_length": 512, "nomic-bert.pooling_type": 1}),
     ({"n_ctx": 4096, "rotary_emb_base": 10000, "rotary_scaling_factor": 2.0}, "cls",
      {"nomic-bert.context_length": 4096, "nomic-bert.pooling_type": 2,
       "nomic-bert.rope.freq_base": 10000.0})],
    ids=["v1.5", "v2-context-mean", "n_ctx-wins-cls"],
)  # fmt: skip
def test_nomic_metadata(
    tmp_path: Path, over: dict[str, Any], pooling: str | None, want: dict[str, Any]
) -> None:
    """nomic-bert.* as llama.cpp's NomicBertModel writes it: TextModel's keys found in Nomic's
    config.json (n_layer, n_embd, n_inner, n_head; context from n_positions as rewritten, unless a
    key before it in find_hparam's list is set; rope.freq_base from rotary_emb_base), then BERT's
    causal and pooling keys; the WordPiece vocabulary padded to vocab_size."""
    d = tmp_path / "hf"
    cfg, _ = F.tiny_nomic(d, pooling=pooling)
    cfg.update(over)
    if cfg["max_trained_positions"] is None:
        del cfg["max_trained_positions"]  # left out: llama.cpp takes 2048
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m.gguf"
    convert(d, out, type="q8_0", quiet=True)
    keys = TB._fields(out, "nomic-bert.")
    eps = keys.pop("nomic-bert.attention.layer_norm_epsilon")
    assert eps == pytest.approx(cfg["layer_norm_epsilon"])
    assert keys == {"nomic-bert.block_count": 2, "nomic-bert.embedding_length": 64,
                    "nomic-bert.feed_forward_length": 128, "nomic-bert.attention.head_count": 4,
                    "nomic-bert.rope.freq_base": 1000.0, "nomic-bert.attention.causal": False,
                    **want}  # fmt: skip
    tok = TB._fields(out, "tokenizer.")
    assert tok.pop("tokenizer.ggml.tokens") == _wordpiece_tokens(d, cfg["vocab_size"])
    n_words = len(json.loads((d / "tokenizer.json").read_text())["model"]["vocab"])
    n_pads = cfg["vocab_size"] - n_words
    assert tok.pop("tokenizer.ggml.token_type") == [3] * 5 + [1] * (n_words - 5) + [5] * n_pads
    assert tok == TB.WORDPIECE_KEYS


def _ugm_vocab(proto: bytes, n_vocab: int) -> dict[str, Any]:
    """tokens, scores and token types as llama.cpp's _xlmroberta_set_vocab writes them, from the
    model proto as protobuf reads it (SentencePiece's piece types are gguf's, but for
    USER_DEFINED, which llama.cpp writes as NORMAL): fairseq's four specials, pieces 3.., [PADn]
    placeholders, n_vocab in all."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(proto)
    pieces, pads = m.pieces[3:], range(len(m.pieces), n_vocab - 1)
    scores = [float(np.float32(p.score)) for p in pieces]
    return {
        "tokenizer.ggml.tokens": F.XLMR_SPECIALS + [p.piece for p in pieces] + [f"[PAD{i}]" for i in pads],
        "tokenizer.ggml.scores": [0.0] * 4 + scores + [-10000.0] * len(pads),
        "tokenizer.ggml.token_type": [3, 3, 3, 2] + [1 if p.type == 4 else p.type for p in pieces]
                                     + [5] * len(pads),
        "tokenizer.ggml.add_space_prefix": m.normalizer_spec.add_dummy_prefix,
        "tokenizer.ggml.remove_extra_whitespaces": m.normalizer_spec.remove_extra_whitespaces,
        **({"tokenizer.ggml.precompiled_charsmap": list(m.normalizer_spec.precompiled_charsmap)}
           if m.normalizer_spec.precompiled_charsmap else {}),
    }  # fmt: skip


XLMR_META: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # bge-m3's files: tokenizer.json (template <s> $A </s>, pair <s> $A </s> </s> $B </s>), nmt_nfkc
    "bge-m3-cls": ({"pooling": "cls"},
                   {"tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2,
                    "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.seperator_token_id": 2,
                    "tokenizer.ggml.padding_token_id": 1, "tokenizer.ggml.mask_token_id": 401,
                    "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True,
                    "tokenizer.ggml.add_sep_token": True}),
    # sentencepiece.bpe.model and config.json alone: the ids config.json names, no add_* flags
    "spm-only-mean": ({"pooling": "mean", "normalization": "identity",
                       "tokenizer_files": ("sentencepiece.bpe.model",)},
                      {"tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2,
                       "tokenizer.ggml.padding_token_id": 1}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(XLMR_META))
def test_xlmr_metadata(tmp_path: Path, case: str) -> None:
    """bert.* as llama.cpp's XLMRobertaModel writes it (context_length without the pad_token_id + 1
    positions XLM-R never uses); tokenizer.* as its _xlmroberta_set_vocab writes it."""
    kw, special = XLMR_META[case]
    d = tmp_path / "hf"
    cfg, _ = F.tiny_xlmr(d, **kw)
    out = tmp_path / "m.gguf"
    convert(d, out, type="q8_0", quiet=True)
    fields = TB._fields(out, "")
    keys = {k: v for k, v in fields.items() if k.startswith("bert.")}
    assert keys.pop("bert.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert keys == {"bert.block_count": 2, "bert.context_length": 128, "bert.embedding_length": 64,
                    "bert.feed_forward_length": 128, "bert.attention.head_count": 4,
                    "bert.attention.causal": False,
                    "bert.pooling_type": {"mean": 1, "cls": 2}[kw["pooling"]]}  # fmt: skip
    tok = {k: v for k, v in fields.items() if k.startswith("tokenizer.")}
    want = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.token_type_count": 1,
            **_ugm_vocab((d / "sentencepiece.bpe.model").read_bytes(), cfg["vocab_size"]),
            **special}  # fmt: skip
    assert sorted(tok) == sorted(want)
    for key, value in want.items():
        assert tok[key] == value, key


def _special_vocab(d: Path, n_vocab: int) -> dict[str, Any]:
    """The special ids and add_* flags gguf-py's SpecialVocab (of llama.cpp's tree) gives for ``d``."""
    env = {**os.environ, "PYTHONPATH": str(TB.LLAMA_CPP_SRC / "gguf-py")}
    run = subprocess.run([sys.executable, "-c", TB._SPECIAL_VOCAB, str(d), str(n_vocab)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    ref = json.loads(run.stdout)
    want = {f"tokenizer.ggml.{TB._GGUF_KEY[k]}": v for k, v in ref["ids"].items() if k in TB._GGUF_KEY}
    want.update((f"tokenizer.ggml.add_{k}_token", v) for k, v in ref["add"].items())
    return want


ROBERTA_PROCESSING = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                      "trim_offsets": True, "add_prefix_space": True}  # fmt: skip


@pytest.mark.parametrize(
    ("files", "tok_over", "tc_over"),
    [(None, {}, {}), (None, {"post_processor": ROBERTA_PROCESSING}, {}),
     (None, {}, {"add_eos_token": False, "sep_token": None}),
     (("sentencepiece.bpe.model", "tokenizer_config.json"), {}, {})],
    ids=["template", "roberta-processing", "config-flags", "no-tokenizer-json"],
)  # fmt: skip
def test_xlmr_special_tokens_match_llama_cpp_gguf_py(
    tmp_path: Path, files: tuple[str, ...] | None, tok_over: dict[str, Any], tc_over: dict[str, Any]
) -> None:
    if not (TB.LLAMA_CPP_SRC / "gguf-py" / "gguf" / "vocab.py").is_file():
        pytest.skip(f"llama.cpp's source tree not found at {TB.LLAMA_CPP_SRC} (set LLAMA_CPP_SRC)")
    d = tmp_path / "hf"
    kw = {"tokenizer_files": files} if files else {}
    cfg, _ = F.tiny_xlmr(d, normalization="identity", **kw)
    for name, over in (("tokenizer_config.json", tc_over), ("tokenizer.json", tok_over)):
        if over:
            data = {**json.loads((d / name).read_text()), **over}
            (d / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    ours = {k: v for k, v in TB._fields(out, "tokenizer.ggml.").items()
            if k.endswith(("_token_id", "_token")) and "add_space" not in k}  # fmt: skip
    assert ours == _special_vocab(d, cfg["vocab_size"])


def test_spm_spec_reads_as_protobuf() -> None:
    """The converter's model proto reader gives what protobuf gives, for set and defaulted fields."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    for kw in ({}, {"normalization_rule_name": "identity", "add_dummy_prefix": False,
                    "remove_extra_whitespaces": False}, {"model_type": "bpe"}):  # fmt: skip
        proto = F.train_xlmr_spm(**kw)
        m = pb.ModelProto()
        m.ParseFromString(proto)
        spec = read_spm_spec(proto, Path("x.model"))
        n = m.normalizer_spec
        assert spec.model_type == m.trainer_spec.model_type, kw
        assert spec.add_dummy_prefix == n.add_dummy_prefix, kw
        assert spec.remove_extra_whitespaces == n.remove_extra_whitespaces, kw
        assert spec.precompiled_charsmap == n.precompiled_charsmap, kw


@pytest.mark.reference
def test_nomic_with_unigram_tokenizer(tmp_path: Path, llama_cpp: Any) -> None:
    """A NomicBertModel whose tokenizer.json is a Unigram one takes XLM-R's vocabulary, as llama.cpp's
    NomicBertModel does; llama.cpp tokenizes with it as sentencepiece does."""
    import sentencepiece as spm

    d = tmp_path / "hf"
    d.mkdir()
    n_vocab = F.write_xlmr_tokenizer(d, normalization_rule_name="identity")
    cfg = F.nomic_config(vocab_size=n_vocab)
    (d / "config.json").write_text(json.dumps(cfg))
    F.save_weights(d, F.nomic_weights(cfg))
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    tok = TB._fields(out, "tokenizer.ggml.")
    assert tok["tokenizer.ggml.model"] == "t5"
    want = _ugm_vocab((d / "sentencepiece.bpe.model").read_bytes(), n_vocab)
    assert tok["tokenizer.ggml.tokens"] == want["tokenizer.ggml.tokens"]
    sp = spm.SentencePieceProcessor(model_file=str(d / "sentencepiece.bpe.model"))
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=True) == _fairseq_ids(sp, text), text
    finally:
        llm.close()


# -- quantization mixes against llama.cpp's quantizer ------------------------------------------

MIX_MODELS: dict[str, tuple[Any, dict[str, Any]]] = {
    # rows of 64: every K-quant falls back (the token embedding, as the tied output, to Q8_0)
    "nomic-rows64": (F.tiny_nomic, {"n_layer": 3}),
    # rows of 256: K-quants as they are; 8 layers so use_more_bits picks a pattern (attn_qkv as attn_v)
    "nomic-rows256-8-layers": (F.tiny_nomic, {"n_embd": 256, "n_inner": 512, "n_layer": 8}),
    "xlmr-rows256-4-layers": (F.tiny_xlmr, {"hidden_size": 256, "intermediate_size": 512,
                                            "num_hidden_layers": 4, "normalization": "identity"}),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(MIX_MODELS))
def mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp(request.param)
    make, kw = MIX_MODELS[request.param]
    make(d / "hf", pooling="mean", **kw)
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


def _ggml_shape(t: Any) -> list[int]:
    """A tensor's shape without trailing 1s: llama.cpp's quantizer writes ggml_n_dims dimensions, so
    XLM-R's single token type, {n_embd, 1} in the converter's files (ours and llama.cpp's), comes out
    of it as {n_embd}."""
    shape = [int(n) for n in t.shape]
    while len(shape) > 1 and shape[-1] == 1:
        shape.pop()
    return shape


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TC.QUANT_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, mix_model: tuple[Path, Path], qtype: str
) -> None:
    """test_convert's test, on encoders: our --type file against llama.cpp's quantizer run on our f32 file."""
    hf_dir, f32 = mix_model
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    TC.lcpp_quantize(llama_cpp, f32, ref, int(FILE_TYPES[qtype].ftype))
    want = TC.tensors(ref)
    plan = convert(hf_dir, ours, type=qtype, dry_run=True)
    assert {t.name: t.type.name for t in plan.tensors} == {n: t.tensor_type.name for n, t in want.items()}
    convert(hf_dir, ours, type=qtype, quiet=True, n_threads=2)
    got = TC.tensors(ours)
    assert TC.field(GGUFReader(ours), "general.file_type") == TC.field(GGUFReader(ref), "general.file_type")
    for name, t in got.items():
        assert (t.tensor_type, _ggml_shape(t)) == (want[name].tensor_type, _ggml_shape(want[name])), name
        assert np.asarray(t.data).tobytes() == np.asarray(want[name].data).tobytes(), name  # byte for byte
    for name in ("position_embd.weight", "token_types.weight", "token_embd_norm.weight",
                 "blk.0.attn_output_norm.bias"):  # fmt: skip
        if name in got:
            assert got[name].tensor_type == GGMLQuantizationType.F32, name


# -- bad input ------------------------------------------------------------------------------------

BAD_NOMIC: list[tuple[dict[str, Any], str]] = [
    ({"moe_every_n_layers": 2}, "'moe_every_n_layers' is 2: a mixture of experts"),
    ({"activation_function": "gelu"}, "'activation_function' is 'gelu', not 'swiglu'"),
    ({"causal": True}, "'causal' is True, not False: nomic-bert attends both ways"),
    ({"qkv_proj_bias": True}, "'qkv_proj_bias' is True, not False: nomic-bert has no biases"),
    ({"mlp_fc2_bias": True}, "'mlp_fc2_bias' is True, not False"),
    ({"prenorm": True}, "'prenorm' is True, not False"),
    ({"rotary_emb_fraction": 0.5}, "'rotary_emb_fraction' is 0.5, not 1.0"),
    ({"rotary_emb_interleaved": True}, "'rotary_emb_interleaved' is True, not False"),
    ({"rotary_emb_scale_base": 512}, "'rotary_emb_scale_base' is 512, not None"),
    ({"causal": None}, "'causal' is missing; llama.cpp requires False"),
    ({"use_rms_norm": True}, "'use_rms_norm' is True; splitllm's nomic-bert needs False"),
    ({"n_positions": 4096},
     "'n_positions' 4096 with 'max_trained_positions' 2048 is not a context llama.cpp knows"),
    ({"n_head": 5}, "hidden size 64 is not 5 heads of an even width"),
    ({"rotary_emb_base": None}, "'rotary_emb_base' must be a positive number, got None"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}},
     "'rope_scaling' is set; nomic-bert has no rope scaling"),
]  # fmt: skip


def _nothing_written(d: Path) -> bool:
    return not list(d.glob("*.gguf")) and not list(d.glob(".*.part"))


@pytest.mark.parametrize(("over", "match"), BAD_NOMIC)
def test_bad_nomic_config(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    d = tmp_path / "hf"
    cfg, _ = F.tiny_nomic(d)
    cfg.update(over)
    cfg = {k: v for k, v in cfg.items() if k != "causal" or v is not None}  # None: left out
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=f"{d / 'config.json'}: {match}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


def _add_tensor(d: Path, weights: F.Weights, name: str, shape: tuple[int, ...]) -> None:
    F.save_weights(d, {**weights, name: np.zeros(shape, np.float32)})


BAD_NOMIC_FILES: list[tuple[Any, str]] = [
    (lambda d, w: _add_tensor(d, w, "encoder.layers.1.attn.Wqkv.bias", (192,)),
     r"tensor 'encoder.layers.1.attn.Wqkv.bias' in .*model.safetensors is not part of a NomicBertModel"),
    (lambda d, w: F.save_weights(d, {n: x for n, x in w.items() if n != "encoder.layers.0.mlp.fc12.weight"}),
     r"tensor 'encoder.layers.0.mlp.fc12.weight' \(blk.0.ffn_gate.weight\) is missing from"),
    (lambda d, w: (d / "tokenizer.json").unlink(),
     "no tokenizer.json \\(llama.cpp reads NomicBert's tokenizer"),
    (lambda d, w: TB._edit(d / "tokenizer.json", lambda t: {**t, "model": {**t["model"], "type": "BPE"}}),
     "tokenizer.json: a BPE tokenizer; llama.cpp's NomicBert reads WordPiece or Unigram"),
    (lambda d, w: TB._edit(d / "tokenizer.json", lambda t: {**t, "model": {**t["model"], "type": "Unigram"}}),
     r"no sentencepiece.bpe.model \(XLM-R's SentencePiece model\) \(llama.cpp reads a tokenizer.json"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "match"), BAD_NOMIC_FILES,
                         ids=["qkv-bias", "missing-gate", "no-tokenizer-json", "bpe", "unigram-without-spm"])
def test_bad_nomic_files(tmp_path: Path, change: Any, match: str) -> None:
    d = tmp_path / "hf"
    _, weights = F.tiny_nomic(d)
    change(d, weights)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


def _write_spm(d: Path, **kw: Any) -> None:
    (d / "sentencepiece.bpe.model").write_bytes(F.train_xlmr_spm(**kw))


BAD_XLMR: list[tuple[Any, str]] = [
    (lambda d, w, c: TB._edit(d / "config.json", lambda c: {**c, "lora_adaptations": ["retrieval.query"]}),
     "config.json: 'lora_adaptations' is set: a jina-embeddings-v3 model"),
    (lambda d, w, c: TB._edit(d / "config.json", lambda c: {**c, "pad_token_id": None}),
     r"config.json: 'pad_token_id' must be a non-negative integer \(XLM-R's positions start at"),
    (lambda d, w, c: TB._edit(d / "config.json", lambda c: {**c, "max_position_embeddings": 2}),
     "config.json: 'max_position_embeddings' 2 leaves no positions after pad_token_id \\+ 1 = 2"),
    (lambda d, w, c: _write_spm(d, model_type="bpe"),
     "sentencepiece.bpe.model: a BPE SentencePiece model; llama.cpp's XLM-R vocabulary \\(t5, its UGM"),
    (lambda d, w, c: _write_spm(d, normalization_rule_name="identity", bos_id=-1, eos_id=-1),
     "sentencepiece.bpe.model: pieces 0-2 must be <unk>, <s> and </s>"),
    (lambda d, w, c: (d / "sentencepiece.bpe.model").write_bytes(b"\x0a\xff\xff"),
     "sentencepiece.bpe.model: not a SentencePiece model \\(a truncated or malformed protobuf\\)"),
    (lambda d, w, c: (d / "sentencepiece.bpe.model").write_bytes(b"\x12\x05ab"),
     "sentencepiece.bpe.model: not a SentencePiece model \\(a field runs past the end\\)"),
    (lambda d, w, c: (d / "sentencepiece.bpe.model").unlink(),
     r"no sentencepiece.bpe.model \(XLM-R's SentencePiece model\) \(llama.cpp reads a tokenizer.json"),
    (lambda d, w, c: (TB._edit(d / "config.json", lambda c: {**c, "vocab_size": 300}),
                      F.save_weights(d, {**w, "embeddings.word_embeddings.weight":
                                         w["embeddings.word_embeddings.weight"][:300]})),
     "sentencepiece.bpe.model: 400 pieces, more than config.json's vocab_size 300"),
    (lambda d, w, c: _add_tensor(d, w, "lm_head.bias", (c["vocab_size"],)),
     r"tensor 'lm_head.bias' in .*model.safetensors is not part of a XLMRobertaModel model"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "match"), BAD_XLMR,
                         ids=["lora", "pad-null", "no-positions", "bpe-spm", "spm-layout", "not-spm",
                              "truncated-spm", "no-spm", "vocab-size", "lm-head"])  # fmt: skip
def test_bad_xlmr(tmp_path: Path, change: Any, match: str) -> None:
    d = tmp_path / "hf"
    cfg, weights = F.tiny_xlmr(d, normalization="identity")
    change(d, weights, cfg)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)
