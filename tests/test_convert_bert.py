"""convert-hf on tiny random BERT encoders (BertModel, BertForMaskedLM, sentence-transformers
layouts), checked against references we did not write.

- llama.cpp (llama-cpp-python) on our f32 GGUF gives, per token and pooled as the file says,
  the last hidden states of a numpy float64 forward pass written from transformers' BertModel
  (hf_fixtures.bert_hidden_states), on token ids that llama.cpp's WordPiece tokenizer and Hugging
  Face's ``tokenizers`` give alike for the same text.
- The per-tensor types and bytes of every ``--type`` equal those of llama.cpp's own quantizer run
  on our f32 file (the test of test_convert, on BERT models).
- Special token ids, add_* flags and normalizer keys equal what the gguf-py of llama.cpp's own
  tree (SpecialVocab, which its converter writes them with) gives for the same directory.
- Metadata keys are the ones llama.cpp's BertModel writes; bad input is refused, naming the file
  and key, and nothing is written.

splitllm's engine runs the files of the first test too, held to the float64 reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
import splitllm._core as core
import test_convert as TC
from gguf import GGMLQuantizationType, GGUFReader
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError

TEXTS = [
    "Hello World, the model's über café 12345!",
    "quantize THE block: 東京 naïve? it'll   scale\tthe\nrow/column [key]",
    "Memory, thread -- fast small LARGE matrix; attention 7 rope.",
]
# Max |llama.cpp - float64 reference| over the hidden states (about +-5 at most after the
# LayerNorms). Measured over these cases (three seeds each, with fresh vocabularies): at most
# 1.8e-3 for f32 files, 3.2e-3 for the f16 file. The GELU is most of it: BERT's is the exact erf
# one, llama.cpp computes the tanh approximation through an f16 table (input and output rounded
# to f16). erf vs tanh alone moves the reference by up to 1e-3; with the tanh GELU the reference
# is still up to 1.6e-3 away; emulating the f16 table as well brings it to 3e-5 - 4e-4. The
# bounds leave about 3x margin.
TOL_F32 = 5e-3
TOL_F16 = 1e-2

# The tokenizer keys (beside tokens and types) of a lowercase WordPiece vocabulary of the fixtures,
# as llama.cpp's converter writes them.
WORDPIECE_KEYS = {
    "tokenizer.ggml.token_type_count": 2, "tokenizer.ggml.model": "bert",
    "tokenizer.ggml.pre": "default", "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 3,
    "tokenizer.ggml.unknown_token_id": 1, "tokenizer.ggml.seperator_token_id": 3,
    "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.mask_token_id": 4,
    "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True,
    "tokenizer.ggml.add_sep_token": False, "tokenizer.ggml.normalizer.lowercase": True,
}  # fmt: skip


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def _lcpp(llama_cpp: Any, path: Path, pooling: int) -> Any:
    return llama_cpp.Llama(str(path), embedding=True, pooling_type=pooling, n_ctx=128, n_batch=128,
                           n_ubatch=128, n_threads=2, verbose=False)  # fmt: skip


def _pool(rows: np.ndarray, mode: str | None) -> np.ndarray:
    return {"mean": rows.mean(0), "cls": rows[0], "lasttoken": rows[-1]}[mode or "mean"]


# id: (tiny_bert options, output --type, tolerance)
CASES: dict[str, tuple[dict[str, Any], str, float]] = {
    "bertmodel-3-layers": ({"num_hidden_layers": 3}, "f32", TOL_F32),
    "bertmodel-f16": ({"dtype": "f16", "seed": 1}, "f32", TOL_F32),
    "bertmodel-bf16-sharded": ({"dtype": "bf16", "shards": 3, "seed": 2}, "f32", TOL_F32),
    "st-mean-position-ids": ({"pooling": "mean", "position_ids": True, "seed": 3}, "f32", TOL_F32),
    "st-cls-cased": ({"pooling": "cls", "lowercase": False, "seed": 4, "num_attention_heads": 2}, "f32",
                     TOL_F32),
    "st-lasttoken-vocab-txt": ({"pooling": "lasttoken", "tokenizer_files": ("vocab.txt",), "seed": 5,
                                "layer_norm_eps": 1e-5}, "f32", TOL_F32),
    "mlm-bf16": ({"arch": "BertForMaskedLM", "dtype": "bf16", "seed": 6}, "f32", TOL_F32),
    "mlm-f16-file": ({"arch": "BertForMaskedLM", "seed": 7}, "f16", TOL_F16),
}  # fmt: skip


def engine_rows(engine: Any, ids: list[int]) -> np.ndarray:
    """splitllm's engine: the last hidden states of ``ids`` (one sequence, every row out)."""
    n = len(ids)
    rows = engine.decode(np.array(ids, np.int32), np.arange(n, dtype=np.int32), np.zeros(n, np.int32), None,
                         None, True)  # fmt: skip
    return np.asarray(rows, dtype=np.float64)


def check_embeddings(llama_cpp: Any, out: Path, texts: list[str], pooling: str | None, tol: float,
                     engine_tol: float, ids_of: Any, ref_of: Any) -> None:  # fmt: skip
    """llama.cpp per token (and pooled by ``pooling`` where the file says how) and splitllm's engine
    against the float64 reference ``ref_of(ids)`` on ``texts``, with llama.cpp's token ids (checked
    by ``ids_of(text, ids)``)."""
    per_token = _lcpp(llama_cpp, out, llama_cpp.LLAMA_POOLING_TYPE_NONE)
    pooled = _lcpp(llama_cpp, out, llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED) if pooling else None
    engine = core.Model(str(out), n_ctx=128, n_batch=128, n_threads=2)
    try:
        for text in texts:
            ids = per_token.tokenize(text.encode(), add_bos=True)
            ids_of(text, ids)
            ref = ref_of(ids)
            got = np.array(per_token.embed(text), dtype=np.float64)
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() < tol, (text, np.abs(got - ref).max())
            ours = engine_rows(engine, ids)
            assert np.abs(ours - ref).max() < engine_tol, (text, np.abs(ours - ref).max())
            if pooled is not None:
                want = _pool(ref, pooling)
                assert np.abs(np.array(pooled.embed(text)) - want).max() < tol, text
    finally:
        per_token.close()
        if pooled is not None:
            pooled.close()


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_embeddings_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    from tokenizers import Tokenizer

    kw, qtype, tol = CASES[case]
    d = tmp_path / "hf"
    cfg, weights = F.tiny_bert(d, **kw)
    out = tmp_path / "m.gguf"
    convert(d, out, type=qtype, quiet=True)
    tok_dir = d if (d / "tokenizer.json").is_file() else tmp_path  # else the same vocabulary in tmp_path
    if tok_dir == tmp_path:
        F.write_wordpiece_tokenizer(tmp_path, lowercase=kw.get("lowercase", True), files=("tokenizer.json",))
    hf = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

    def ids_of(text: str, ids: list[int]) -> None:
        assert ids == hf.encode(text).ids, text  # [CLS] ... [SEP], lowercased (or not) alike
        assert kw.get("lowercase", True) == (ids == hf.encode(text.lower()).ids)

    # splitllm's engine computes BERT's exact GELU
    check_embeddings(llama_cpp, out, TEXTS, kw.get("pooling"), tol, 1e-4 if qtype == "f32" else tol, ids_of,
                     lambda ids: F.bert_hidden_states(cfg, weights, ids))


def test_reference_tells_gelu_and_layers_apart() -> None:
    """What the tolerance can and cannot see: dropping a layer's feed-forward bias or swapping
    token types moves the states far beyond it; erf vs tanh GELU stays well inside it."""
    cfg = F.bert_config(vocab_size=50)
    w = F.bert_weights(cfg)
    ids = [2, 7, 11, 30, 41, 9, 3]
    ref = F.bert_hidden_states(cfg, w, ids)
    assert np.abs(F.bert_hidden_states(cfg, w, ids, gelu="tanh") - ref).max() < TOL_F32 / 4
    no_bias = {**w, "encoder.layer.1.output.dense.bias": 0 * w["encoder.layer.1.output.dense.bias"]}
    assert np.abs(F.bert_hidden_states(cfg, no_bias, ids) - ref).max() > 50 * TOL_F32
    types = w["embeddings.token_type_embeddings.weight"]
    swapped = {**w, "embeddings.token_type_embeddings.weight": types[::-1].copy()}
    assert np.abs(F.bert_hidden_states(cfg, swapped, ids) - ref).max() > 50 * TOL_F32


# -- tensors and metadata ---------------------------------------------------------------------------

GGUF_TO_HF = {
    "attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
    "attn_output": "attention.output.dense", "attn_output_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense", "ffn_down": "output.dense", "layer_output_norm": "output.LayerNorm",
    "token_embd": "embeddings.word_embeddings", "token_types": "embeddings.token_type_embeddings",
    "position_embd": "embeddings.position_embeddings", "token_embd_norm": "embeddings.LayerNorm",
}  # fmt: skip


def hf_namer(table: dict[str, str], layers: str) -> Callable[[str], str]:
    """GGUF tensor name -> Hugging Face name: ``blk.N.x.w`` -> ``{layers}.N.{table[x]}.w``, ``x.w`` ->
    ``{table[x]}.w``."""

    def hf_name(gguf_name: str) -> str:
        parts = gguf_name.split(".")
        if parts[0] == "blk":
            return f"{layers}.{parts[1]}.{table[parts[2]]}.{parts[3]}"
        return f"{table[parts[0]]}.{parts[1]}"

    return hf_name


_hf_name = hf_namer(GGUF_TO_HF, "encoder.layer")


@pytest.mark.parametrize(
    ("kw", "qtype"),
    [({}, "f32"), ({"arch": "BertForMaskedLM", "dtype": "bf16", "shards": 2}, "f16"),
     ({"position_ids": True, "dtype": "f16"}, "bf16")],
    ids=["bertmodel-f32", "mlm-sharded-f16", "position-ids-bf16"],
)  # fmt: skip
def test_tensors(tmp_path: Path, kw: dict[str, Any], qtype: str) -> None:
    """Every tensor of the encoder, once, under llama.cpp's names, with its values; the pooler, the
    position_ids buffer and the masked-LM head are left out. Matrices in the chosen float type,
    the rest (norms, biases, position and token type embeddings) in F32, as llama.cpp's converter."""
    _, weights = F.tiny_bert(tmp_path / "hf", **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type=qtype, quiet=True)
    got = TC.tensors(out)
    assert sorted(_hf_name(n) for n in got) == sorted(n for n in weights if not n.startswith("pooler."))
    as_f32 = qtype == "f32"
    for name, t in got.items():
        src = weights[_hf_name(name)]
        kept = src.ndim == 1 or name in ("position_embd.weight", "token_types.weight")
        want_type = "F32" if kept or as_f32 else qtype.upper()
        assert t.tensor_type.name == want_type, name
        want = src if want_type == "F32" else F.as_dtype(src, qtype)[2]
        np.testing.assert_array_equal(TC.as_f32(t), want, err_msg=name)


def _fields(path: Path, prefix: str) -> dict[str, Any]:
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if k.startswith(prefix)}


@pytest.mark.parametrize(("pooling", "want"), [(None, None), ("mean", 1), ("cls", 2), ("lasttoken", 3)])
def test_metadata(tmp_path: Path, pooling: str | None, want: int | None) -> None:
    """bert.* as llama.cpp's BertModel writes it (layer_norm_eps left out of config.json takes
    BertConfig's 1e-12, as through AutoConfig); pooling_type from sentence-transformers' modules."""
    d = tmp_path / "hf"
    cfg, _ = F.tiny_bert(d, pooling=pooling, num_hidden_layers=3, max_position_embeddings=96)
    if pooling == "cls":
        cfg.pop("layer_norm_eps")
        (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m.gguf"
    convert(d, out, type="q8_0", quiet=True)
    keys = _fields(out, "bert.")
    assert keys.pop("bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    expect = {"bert.block_count": 3, "bert.context_length": 96, "bert.embedding_length": 64,
              "bert.feed_forward_length": 128, "bert.attention.head_count": 4,
              "bert.attention.causal": False}  # fmt: skip
    if want is not None:
        expect["bert.pooling_type"] = want
    assert keys == expect
    tok = _fields(out, "tokenizer.")
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    by_id = sorted(vocab, key=vocab.__getitem__)
    assert tok.pop("tokenizer.ggml.tokens") == [
        t if t in F.BERT_SPECIALS else t[2:] if t.startswith("##") else "\u2581" + t for t in by_id
    ]
    assert tok.pop("tokenizer.ggml.token_type") == [3] * 5 + [1] * (len(by_id) - 5)
    assert tok == WORDPIECE_KEYS


def test_vocab_txt_reads_as_tokenizer_json(tmp_path: Path) -> None:
    """A directory with vocab.txt alone converts to the file its tokenizer.json would give (the
    fast tokenizer transformers builds from it), for a cased vocabulary that strips accents too."""
    files = {}
    for name, tok_files in (("json", ("tokenizer.json",)), ("txt", ("vocab.txt",))):
        d = tmp_path / name / "hf"
        F.tiny_bert(d, lowercase=False, tokenizer_files=tok_files)
        tc = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**tc, "strip_accents": True}))
        if name == "json":
            tok = json.loads((d / "tokenizer.json").read_text())
            tok["normalizer"]["strip_accents"] = True
            (d / "tokenizer.json").write_text(json.dumps(tok))
        convert(d, tmp_path / name / "m.gguf", type="f16", quiet=True)
        files[name] = _fields(tmp_path / name / "m.gguf", "")
    assert files["txt"] == files["json"]
    assert files["txt"]["tokenizer.ggml.normalizer.lowercase"] is False
    assert files["txt"]["tokenizer.ggml.normalizer.strip_accents"] is True


# -- special tokens against the gguf-py of llama.cpp's tree ----------------------------------------

LLAMA_CPP_SRC = Path(os.environ.get("LLAMA_CPP_SRC", "/tmp/lcpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))
_SPECIAL_VOCAB = """
import json, sys
from gguf.vocab import SpecialVocab
s = SpecialVocab(sys.argv[1], n_vocab=int(sys.argv[2]))
print(json.dumps({"ids": s.special_token_ids, "add": s.add_special_token,
                  "lowercase": s.normalizer_lowercase, "strip_accents": s.normalizer_strip_accents}))
"""
_GGUF_KEY = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
             "sep": "seperator_token_id", "pad": "padding_token_id", "mask": "mask_token_id"}  # fmt: skip


@pytest.mark.parametrize(
    ("tc_over", "tok_over"),
    [({}, {}), ({"add_bos_token": False, "add_eos_token": False}, {}),
     ({"cls_token": None, "bos_token": "[CLS]", "eos_token": "[SEP]"},
      {"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"},
                                                          {"type": "StripAccents"}]}})],
    ids=["bert", "config-add-flags", "bos-eos-sequence-normalizer"],
)  # fmt: skip
def test_special_tokens_match_llama_cpp_gguf_py(
    tmp_path: Path, tc_over: dict[str, Any], tok_over: dict[str, Any]
) -> None:
    if not (LLAMA_CPP_SRC / "gguf-py" / "gguf" / "vocab.py").is_file():
        pytest.skip(f"llama.cpp's source tree not found at {LLAMA_CPP_SRC} (set LLAMA_CPP_SRC)")
    d = tmp_path / "hf"
    cfg, _ = F.tiny_bert(d)
    for name, over in (("tokenizer_config.json", tc_over), ("tokenizer.json", tok_over)):
        data = {**json.loads((d / name).read_text()), **over}
        (d / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP_SRC / "gguf-py")}
    run = subprocess.run([sys.executable, "-c", _SPECIAL_VOCAB, str(d), str(cfg["vocab_size"])], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    ref = json.loads(run.stdout)
    want = {f"tokenizer.ggml.{_GGUF_KEY[k]}": v for k, v in ref["ids"].items() if k in _GGUF_KEY}
    want.update((f"tokenizer.ggml.add_{k}_token", v) for k, v in ref["add"].items())
    for key in ("lowercase", "strip_accents"):
        if ref[key] is not None:
            want[f"tokenizer.ggml.normalizer.{key}"] = ref[key]
    ours = _fields(out, "tokenizer.ggml.")
    for key in ("tokens", "token_type", "token_type_count", "model", "pre"):
        ours.pop(f"tokenizer.ggml.{key}")
    assert ours == want


# -- quantization mixes against llama.cpp's quantizer ------------------------------------------

BERT_MIX_MODELS: dict[str, dict[str, Any]] = {
    # rows of 64: every K-quant falls back (the token embedding, as the tied output, to Q8_0)
    "rows64": {"num_hidden_layers": 3},
    # rows of 256: K-quants as they are; 8 layers so use_more_bits picks a pattern
    "rows256-8-layers": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 8},
}


@pytest.fixture(scope="module", params=list(BERT_MIX_MODELS))
def bert_mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp(request.param)
    F.tiny_bert(d / "hf", pooling="mean", **BERT_MIX_MODELS[request.param])
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TC.QUANT_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, bert_mix_model: tuple[Path, Path], qtype: str
) -> None:
    TC.test_mix_and_bytes_match_llama_quantize(tmp_path, llama_cpp, bert_mix_model, qtype)
    got = TC.tensors(tmp_path / "ours.gguf")
    for name in ("position_embd.weight", "token_types.weight", "token_embd_norm.weight", "blk.0.attn_q.bias"):
        assert got[name].tensor_type == GGMLQuantizationType.F32, name


# -- bad input ------------------------------------------------------------------------------------


def _nothing_written(d: Path) -> bool:
    return not list(d.glob("*.gguf")) and not list(d.glob(".*.part"))


BAD_CONFIG: list[tuple[dict[str, Any], str]] = [
    ({"position_embedding_type": "relative_key"},
     "'position_embedding_type' is 'relative_key'; llama.cpp's bert has absolute position embeddings only"),
    ({"hidden_act": "relu"}, "'hidden_act' is 'relu'; llama.cpp's bert computes GELU"),
    ({"is_decoder": True}, "'is_decoder' is true"),
    ({"layer_norm_eps": None}, "'layer_norm_eps' must be a positive number, got None"),
    ({"type_vocab_size": 0}, "'type_vocab_size' must be a positive integer, got 0"),
    ({"num_attention_heads": 5}, "hidden_size 64 is not a multiple of num_attention_heads 5"),
    ({"id2label": ["a", "b", "c"]}, "'id2label' must map ids to labels"),
]  # fmt: skip


@pytest.mark.parametrize(("over", "match"), BAD_CONFIG)
def test_bad_config(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    d = tmp_path / "hf"
    cfg, _ = F.tiny_bert(d)
    (d / "config.json").write_text(json.dumps({**cfg, **over}))
    with pytest.raises(ConvertError, match=f"{d / 'config.json'}: {match}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


def test_config_without_hidden_size_names_the_tensor(tmp_path: Path) -> None:
    """A key left out takes BertConfig's default (as llama.cpp reads config.json through AutoConfig):
    hidden_size 768, which the checkpoint's tensors contradict."""
    d = tmp_path / "hf"
    cfg, _ = F.tiny_bert(d)
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=r"tensor 'embeddings.LayerNorm.bias' in .*model.safetensors has "
                                           r"shape \[64\], config.json implies \[768\]"):  # fmt: skip
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


def _edit(path: Path, change: Any) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


BAD_FILES: list[tuple[str, Any, str]] = [
    ("1_Pooling/config.json",
     lambda c: {**c, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True},
     "1_Pooling/config.json: pooling pooling_mode_max_tokens=True is not supported; llama.cpp pools by mean"),
    ("1_Pooling/config.json", None, "1_Pooling/config.json: file not found"),
    ("modules.json", lambda m: {"modules": m}, "modules.json: expected a list of modules"),
    ("tokenizer.json", lambda t: {**t, "model": {**t["model"], "type": "BPE"}},
     "tokenizer.json: a BPE tokenizer .*llama.cpp's bert reads WordPiece"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "change", "match"), BAD_FILES,
                         ids=["max-pooling", "no-pooling-config", "modules-not-list", "bpe"])  # fmt: skip
def test_bad_files(tmp_path: Path, name: str, change: Any, match: str) -> None:
    d = tmp_path / "hf"
    F.tiny_bert(d, pooling="mean", max_position_embeddings=64, hidden_size=32, num_attention_heads=2)
    if change is None:
        (d / name).unlink()
    else:
        _edit(d / name, change)
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


def test_vocabulary_larger_than_vocab_size(tmp_path: Path) -> None:
    d = tmp_path / "hf"
    cfg, weights = F.tiny_bert(d)
    (d / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))
    name = "embeddings.word_embeddings.weight"
    F.save_weights(d, {**weights, name: weights[name][:100]})
    with pytest.raises(ConvertError, match=f"{d / 'tokenizer.json'}: token id 499 is beyond config.json's "
                                           "vocab_size 100"):  # fmt: skip
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


def test_missing_tensor_and_tokenizer_are_named(tmp_path: Path) -> None:
    d = tmp_path / "hf"
    _, weights = F.tiny_bert(d, arch="BertForMaskedLM")
    saved = {("bert." + n): w for n, w in weights.items() if n != "encoder.layer.1.attention.self.key.bias"}
    F.save_weights(d, saved)
    gone = "bert.encoder.layer.1.attention.self.key.bias"
    with pytest.raises(ConvertError, match=f"tensor '{gone}' \\(blk.1.attn_k.bias\\) is missing from {d}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    F.save_weights(d, {"bert." + n: w for n, w in weights.items()})
    for name in ("tokenizer.json", "vocab.txt"):
        (d / name).unlink()
    with pytest.raises(ConvertError, match=f"{d}: no tokenizer.json or vocab.txt"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)
