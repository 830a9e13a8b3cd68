"""convert-hf on tiny random Hugging Face models, checked against references we did not write.

- llama.cpp (llama-cpp-python) loading our GGUF gives the logits of a numpy float64 forward pass
  with Hugging Face semantics (so names, q/k permutation, biases, rope scaling are right), and
  tokenizes text exactly as the Hugging Face ``tokenizers`` / ``sentencepiece`` libraries do.
- The per-tensor types of every ``--type`` equal those llama.cpp's own quantizer picks from
  our f32 file, and the quantized tensors are byte for byte the ones it writes.
- gguf-py's GGUFReader reads back what we wrote; values are compared to the stored weights.
- Special token ids, add_* flags and general.sampling.* equal what gguf-py's SpecialVocab and
  Metadata (the code llama.cpp's converter writes them with) write for the same directory.
- splitllm's own engine on our files gives the float64 reference's logits.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import gguf
import hf_fixtures as F
import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from lcpp import llama_cpp_logits
from splitllm_convert import FILE_TYPES, convert
from splitllm_convert.errors import ConvertError

IDS = [5, 17, 200, 33, 150, 77, 9, 250, 3, 64]
TEXT = "hello world it's 12345 the model über 東京! \n  quantize  the   block?"


def field(r: GGUFReader, key: str) -> Any:
    f = r.fields.get(key)
    return None if f is None else f.contents()


def tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in GGUFReader(path).tensors}


def as_f32(t: Any) -> np.ndarray:
    """A GGUF tensor decoded by gguf-py, in numpy (row-major) shape."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))


def assert_same_keys(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Metadata equal key by key, numbers (and arrays of them) to pytest.approx's tolerance (which
    takes no dictionary holding lists since pytest 9.2)."""
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k


def assert_holds(path: Path, weights: dict[str, np.ndarray]) -> None:
    """The file holds exactly these tensors (GGUF name -> array), each value for value."""
    got = {name: as_f32(t) for name, t in tensors(path).items()}
    assert sorted(got) == sorted(weights)
    for name, x in weights.items():
        np.testing.assert_array_equal(got[name], x, err_msg=name)


def arch_keys(path: Path, arch: str, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """The file's {arch}.* keys by the rest of their names, and those starting with one of also
    (whole)."""
    a = arch + "."
    fields = GGUFReader(path).fields
    return {k.removeprefix(a): f.contents() for k, f in fields.items() if k.startswith((a, *also))}


def refused_config(tmp_path: Path, base: Path, over: dict[str, Any], match: str, **kw: Any) -> None:
    """A copy of the checkpoint directory base with config.json's keys over changed is refused by a
    ConvertError naming its config.json and matching match (kw to convert), nothing written."""
    d = tmp_path / "hf"
    shutil.copytree(base, d)
    cfg = {**json.loads((d / "config.json").read_text()), **over}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=f"{d / 'config.json'}: {match}"):
        convert(d, tmp_path / "m.gguf", quiet=True, **kw)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.part"))


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def lcpp_model(llama_cpp: Any, path: Path) -> Any:
    return llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)


def lcpp_logits(llama_cpp: Any, path: Path, ids: list[int]) -> np.ndarray:
    return llama_cpp_logits(path, ids)


def lcpp_quantize(llama_cpp: Any, src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0


def same_as_llama_quantize(hf: Path, ours: Path, tmp_path: Path, qtype: str) -> None:
    """Our file converted from ``hf`` with ``--type qtype``, and splitllm quantize's of our f32 file,
    hold the tensors, types and bytes of llama.cpp's quantizer run on that f32 file."""
    from splitllm_convert.requantize import quantize

    llama_cpp = pytest.importorskip("llama_cpp")
    f32, ref = tmp_path / "f32.gguf", tmp_path / "ref.gguf"
    convert(hf, f32, type="f32", quiet=True)
    lcpp_quantize(llama_cpp, f32, ref, int(FILE_TYPES[qtype].ftype))
    want = tensors(ref)
    requantized = tmp_path / "requantized.gguf"
    quantize(f32, requantized, qtype.upper(), nthreads=2)
    for got in (tensors(ours), tensors(requantized)):
        assert sorted(got) == sorted(want)
        for name, t in got.items():
            assert (t.tensor_type, list(t.shape)) == (want[name].tensor_type, list(want[name].shape)), name
            assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name


# -- against llama.cpp and a float64 reference --------------------------------------------------

# LongRoPE factors of a head of 16 (the tiny models' size) rotated dimensions. With an original
# context of 8 both transformers (by the text's length) and the engines (by n_ctx) take the long ones.
PHI3_LONGROPE = {"rope_type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(8)],
                 "long_factor": [1.0 + 1.5 * i for i in range(8)]}


@pytest.mark.reference
@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        ("llama", {"dtype": "bf16", "shards": 2, "extra_vocab": 6}),
        ("llama", {"tokenizer": "spm", "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        ("mistral", {"dtype": "f16", "tokenizer": "both", "tie_word_embeddings": True}),
        ("qwen2", {"num_key_value_heads": 1, "rope_theta": 1e6}),
        (
            "llama",
            {"attention_bias": True, "head_dim": 32, "num_attention_heads": 3, "num_key_value_heads": 1},
        ),
        ("mistral", {"dtype": "bf16", "shards": 3}),
        ("qwen2", {"dtype": "f16", "shards": 2, "tie_word_embeddings": True}),
        ("qwen2", {"dtype": "bf16"}),
        ("qwen3", {"head_dim": 32, "num_key_value_heads": 1, "rope_theta": 1e6}),
        ("qwen3", {"dtype": "bf16", "shards": 2, "tie_word_embeddings": True}),
        ("qwen3_moe", {"head_dim": 32}),
        ("mixtral", {"dtype": "bf16", "shards": 2}),
        ("phi3", {"partial_rotary_factor": 0.5, "dtype": "bf16"}),
        ("phi3", {"tie_word_embeddings": True, "sliding_window": 2047}),
        ("phi3", {"rope_scaling": PHI3_LONGROPE, "original_max_position_embeddings": 8,
                  "max_position_embeddings": 256}),
    ],
    ids=[
        "llama-bf16-sharded", "llama-spm-linear-rope", "mistral-f16-tied", "qwen2-biases", "llama-headdim",
        "mistral-bf16-sharded", "qwen2-f16-sharded-tied", "qwen2-bf16", "qwen3-headdim-mqa",
        "qwen3-bf16-tied", "qwen3moe-8x2", "mixtral-bf16-sharded", "phi3-partial-rope-bf16", "phi3-tied",
        "phi3-longrope",
    ],
)  # fmt: skip
def test_logits_match_float64_reference(
    tmp_path: Path, llama_cpp: Any, arch: str, kw: dict[str, Any]
) -> None:
    cfg, weights = F.tiny_model(tmp_path / "hf", arch, **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ids = [i % cfg["vocab_size"] for i in IDS]
    ref = F.reference_logits(cfg, weights, ids)
    got = lcpp_logits(llama_cpp, out, ids)
    assert np.abs(got - ref).max() < 2e-3 * np.abs(ref).max()


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


@pytest.mark.reference
def test_llama3_rope_scaling_logits_match_float64_reference(tmp_path: Path, llama_cpp: Any) -> None:
    """Llama 3 rope scaling through a whole model: llama.cpp on our file (rope_freqs.weight)
    against transformers' scaled inverse frequencies in the float64 reference."""
    cfg, weights = F.tiny_model(
        tmp_path / "hf", "llama", head_dim=32, num_attention_heads=2, rope_scaling=LLAMA3_SCALING
    )
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ids = [(7 * i + 3) % cfg["vocab_size"] for i in range(40)]  # past the scaled wavelengths' reach
    ref = F.reference_logits(cfg, weights, ids)
    tol = 2e-3 * np.abs(ref).max()
    unscaled = F.reference_logits({**cfg, "rope_scaling": None}, weights, ids)
    assert np.abs(unscaled - ref).max() > 20 * tol  # the scaling matters at these positions
    got = lcpp_logits(llama_cpp, out, ids)
    assert np.abs(got - ref).max() < tol


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Relative L2 error of each row (position)."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        ("llama", {"attention_bias": True}),
        ("qwen2", {}),
        ("llama", {"head_dim": 32, "num_attention_heads": 2, "rope_scaling": LLAMA3_SCALING}),
        ("qwen3", {"head_dim": 32}),
        ("qwen3_moe", {}),
        ("qwen3_moe", {"norm_topk_prob": False}),
        ("mixtral", {"shards": 3}),
        ("phi3", {"partial_rotary_factor": 0.5}),
        ("phi3", {"rope_scaling": PHI3_LONGROPE, "original_max_position_embeddings": 8,
                  "max_position_embeddings": 256}),
    ],
    ids=[
        "llama-attention-bias", "qwen2-biases", "llama3-rope", "qwen3-head-norms", "qwen3moe",
        "qwen3moe-no-renorm", "mixtral", "phi3-partial-rope", "phi3-longrope",
    ],
)
def test_engine_logits_match_float64_reference(tmp_path: Path, arch: str, kw: dict[str, Any]) -> None:
    """splitllm's own engine on our f32 file: biases (q, k, v and Llama's o), rope_freqs, head norms
    and experts (routing, renormalized or not) applied."""
    from splitllm import Model

    cfg, weights = F.tiny_model(tmp_path / "hf", arch, **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ids = [(7 * i + 3) % cfg["vocab_size"] for i in range(40)]
    ref = F.reference_logits(cfg, weights, ids)
    # what the test can tell apart: the model without its biases / rope scaling / head norms, or
    # with the other choice of experts' weights
    plain = {n: w for n, w in weights.items() if not n.endswith((".bias", "_norm.weight"))}
    other = {**cfg, "rope_scaling": None}
    if "norm_topk_prob" in cfg:
        plain, other = weights, {**cfg, "norm_topk_prob": not cfg["norm_topk_prob"]}
    elif "num_local_experts" in cfg:
        plain, other = weights, {**cfg, "num_experts_per_tok": 1}
    elif cfg.get("rope_scaling"):  # LongRoPE: the short factors, no attention factor
        plain, other = weights, {**cfg, "rope_scaling": None}
    elif "partial_rotary_factor" in cfg:
        plain, other = weights, {**cfg, "partial_rotary_factor": 1.0}
    assert rel_err(F.reference_logits(other, plain, ids), ref).max() > 0.1
    with Model(out, n_ctx=64, n_threads=2) as m:
        got = m.logits(ids)
    assert rel_err(got, ref).max() < 1e-3  # f32 weights: the engine's own error only (f16 KV cache)


@pytest.mark.reference
@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "smollm"])
def test_bpe_tokenizer_matches_hf(tmp_path: Path, llama_cpp: Any, pre: str) -> None:
    from tokenizers import Tokenizer

    F.tiny_model(tmp_path / "hf", "llama", pre=pre, extra_vocab=3)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f16", quiet=True)
    r = GGUFReader(out)
    tok_json = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    vocab = {**tok_json["model"]["vocab"], **{a["content"]: a["id"] for a in tok_json["added_tokens"]}}
    tokens = field(r, "tokenizer.ggml.tokens")
    assert tokens[: len(vocab)] == sorted(vocab, key=vocab.__getitem__)
    assert tokens[len(vocab) :] == [f"[PAD{i}]" for i in range(len(vocab), len(vocab) + 3)]
    assert field(r, "tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # specials are CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    assert field(r, "tokenizer.ggml.merges") == merges
    assert (field(r, "tokenizer.ggml.model"), field(r, "tokenizer.ggml.pre")) == ("gpt2", pre)
    assert field(r, "tokenizer.ggml.bos_token_id") == 1 and field(r, "tokenizer.ggml.eos_token_id") == 2
    assert field(r, "tokenizer.chat_template") == F.CHAT_TEMPLATE
    hf = (
        Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
        .encode(TEXT, add_special_tokens=False)
        .ids
    )
    llm = lcpp_model(llama_cpp, out)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == hf
    assert llm.detokenize(hf).decode() == TEXT


@pytest.mark.reference
def test_spm_tokenizer_matches_sentencepiece(tmp_path: Path, llama_cpp: Any) -> None:
    import sentencepiece as spm

    F.tiny_model(tmp_path / "hf", "llama", tokenizer="spm", extra_vocab=2)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="q8_0", quiet=True)
    r = GGUFReader(out)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "hf" / "tokenizer.model"))
    n = sp.vocab_size()
    assert field(r, "tokenizer.ggml.tokens")[:n] == [sp.IdToPiece(i) for i in range(n)]
    assert np.allclose(field(r, "tokenizer.ggml.scores")[:n], [sp.GetScore(i) for i in range(n)])
    assert field(r, "tokenizer.ggml.token_type")[:4] == [2, 3, 3, 6]  # unk, bos, eos control, byte
    assert (field(r, "tokenizer.ggml.model"), field(r, "tokenizer.ggml.pre")) == ("llama", "default")
    assert (
        field(r, "tokenizer.ggml.add_bos_token") is True and field(r, "tokenizer.ggml.add_eos_token") is False
    )
    assert field(r, "tokenizer.ggml.merges") is None
    llm = lcpp_model(llama_cpp, out)
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == [1, *sp.encode(TEXT)]


# -- metadata against gguf-py, the library llama.cpp's converter writes it with --------------------


def _written(path: Path, keep: Any) -> dict[str, Any]:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if keep(k)}


def _is_special(key: str) -> bool:
    """What SpecialVocab writes: special token ids, add_*_token flags, the chat template."""
    short = key.removeprefix("tokenizer.ggml.")
    flag = short.startswith("add_") and short.endswith("_token")
    return key == "tokenizer.chat_template" or (short != key and (short.endswith("_token_id") or flag))


def _gguf_py_file(path: Path, add: Any) -> Path:
    """A GGUF file holding only the key-values ``add(writer)`` adds."""
    w = GGUFWriter(path, "llama")
    add(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def _template(single: list[str | None], pair: list[str | None]) -> dict[str, Any]:
    """A TemplateProcessing post-processor; ``None`` marks the sequence (A, then B in ``pair``)."""

    def pieces(spec: list[str | None]) -> list[dict[str, Any]]:
        seqs = iter("AB")
        return [{"Sequence": {"id": next(seqs), "type_id": 0}} if t is None
                else {"SpecialToken": {"id": t, "type_id": 0}} for t in spec]  # fmt: skip

    names = {t for t in single + pair if t}
    return {
        "type": "TemplateProcessing",
        "single": pieces(single),
        "pair": pieces(pair),
        "special_tokens": {t: {"id": t, "ids": [F.BPE_SPECIALS.index(t)], "tokens": [t]} for t in names},
    }


BOS, EOS, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"  # ids 1, 2, 0 in the BPE fixture
SPECIAL_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # id: (arch, tiny_model options, edits {file: changes or None to delete}, keys we expect)
    "qwen2-bpe": ("qwen2", {}, {}, {"unknown_token_id": 0, "padding_token_id": 0, "add_bos_token": False}),
    "llama3-template": ("llama", {}, {
        "tokenizer.json": {"post_processor": _template([BOS, None], [BOS, None, BOS, None])},
        "tokenizer_config.json": {"add_bos_token": None},
    }, {"add_bos_token": True, "add_sep_token": False}),
    "trailing-token-not-eos": ("qwen2", {}, {
        "tokenizer.json": {"post_processor": _template([BOS, None, EOT], [BOS, None, None, EOT])},
    }, {"eos_token_id": 0, "eot_token_id": 2, "add_eos_token": True}),
    "sep-in-pair": ("qwen2", {}, {
        "tokenizer.json": {"post_processor": _template([BOS, None], [BOS, None, EOS, None])},
    }, {"seperator_token_id": 2, "add_sep_token": True}),
    "dict-entries-and-config-ids": ("mistral", {}, {
        "tokenizer_config.json": {
            "unk_token": {"content": EOS, "lstrip": False}, "pad_token": {"content": BOS},
            "add_eos_token": True,
        },
        "config.json": {"pad_token_id": 2, "unk_token_id": 1},
    }, {"unknown_token_id": 2, "padding_token_id": 1, "add_eos_token": True}),
    "special-tokens-map-only": ("qwen2", {}, {
        "tokenizer_config.json": {"unk_token": None, "pad_token": None},
        "special_tokens_map.json": {"unk_token": EOT, "pad_token": EOT},
    }, {"unknown_token_id": None, "padding_token_id": None}),
    "spm-config-ids": ("llama", {"tokenizer": "spm"}, {
        "tokenizer_config.json": {"add_eos_token": True, "add_bos_token": False},
        "config.json": {"pad_token_id": 3, "unk_token_id": 0},
    }, {"unknown_token_id": 0, "padding_token_id": 3, "add_bos_token": False, "add_eos_token": True}),
    "no-tokenizer-config": ("qwen2", {}, {
        "tokenizer.json": {"post_processor": _template([EOT, None, EOS], [EOT, None, None, EOS])},
        "tokenizer_config.json": None,
    }, {"unknown_token_id": None, "add_bos_token": True, "add_eos_token": True}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SPECIAL_CASES))
def test_special_tokens_match_llama_cpp_converter(tmp_path: Path, case: str) -> None:
    """unk/pad/sep/eot ids, add_bos/add_eos/add_sep and the chat template equal what llama.cpp's
    converter writes: gguf-py's SpecialVocab, called as its _set_vocab_sentencepiece (with the
    vocab size) and _set_vocab_gpt2 (with merges) call it."""
    arch, options, edits, expect = SPECIAL_CASES[case]
    d = tmp_path / "hf"
    cfg, _ = F.tiny_model(d, arch, **options)
    for name, changes in edits.items():
        if changes is None:
            (d / name).unlink()
            continue
        data = json.loads((d / name).read_text()) if (d / name).is_file() else {}
        data.update(changes)
        (d / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    spm = (d / "tokenizer.model").is_file()
    special = gguf.SpecialVocab(d, load_merges=not spm, n_vocab=cfg["vocab_size"] if spm else None)
    ref = _gguf_py_file(tmp_path / "ref.gguf", lambda w: special.add_to_gguf(w, quiet=True))
    ours, theirs = _written(out, _is_special), _written(ref, _is_special)
    assert ours == theirs
    for key, value in expect.items():
        assert ours.get(f"tokenizer.ggml.{key}") == value, key


def test_generation_config_sampling_keys(tmp_path: Path) -> None:
    """generation_config.json's sampling defaults become general.sampling.*, as llama.cpp's
    converter writes them through gguf-py's Metadata; keys it does not map are left out."""
    d = tmp_path / "hf"
    F.tiny_model(d, "qwen2")
    convert(d, tmp_path / "none.gguf", type="f32", quiet=True)
    assert not _written(tmp_path / "none.gguf", lambda k: k.startswith("general.sampling."))
    gen = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "min_p": 0.05,
           "repetition_penalty": 1.05, "bos_token_id": 1, "eos_token_id": [2, 0]}  # fmt: skip
    (d / "generation_config.json").write_text(json.dumps(gen))
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    ours = _written(out, lambda k: k.startswith("general.sampling."))
    meta = gguf.Metadata.load(None, d, None, 0)
    theirs = _written(_gguf_py_file(tmp_path / "ref.gguf", meta.set_gguf_meta_model), lambda k: k in ours)
    assert ours == theirs
    assert ours == {
        "general.sampling.temp": pytest.approx(0.7),
        "general.sampling.top_k": 20,
        "general.sampling.top_p": pytest.approx(0.8),
        "general.sampling.min_p": pytest.approx(0.05),
    }


# -- values, layout, float output types -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_values_round_trip(tmp_path: Path, dtype: str) -> None:
    cfg, weights = F.tiny_model(tmp_path / "hf", "llama", dtype=dtype, shards=3 if dtype == "f16" else 1)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    got = tensors(out)
    assert len(got) == len(weights)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, t in got.items():
        x = as_f32(t)
        if name.endswith("attn_q.weight"):
            x = F.undo_rope_permute(x, nh)
        elif name.endswith("attn_k.weight"):
            x = F.undo_rope_permute(x, nkv)
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(x, weights[F.hf_name(name)], err_msg=name)


@pytest.mark.parametrize("qtype", ["f16", "bf16"])
def test_float_output_types(tmp_path: Path, qtype: str) -> None:
    _, weights = F.tiny_model(tmp_path / "hf", "qwen2")
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type=qtype, quiet=True)
    r = GGUFReader(out)
    assert field(r, "general.file_type") == int(FILE_TYPES[qtype].ftype)
    for t in r.tensors:
        src = weights[F.hf_name(t.name)]
        if len(src.shape) == 1 or t.name.endswith("norm.weight"):
            assert t.tensor_type.name == "F32", t.name
            continue
        assert t.tensor_type.name == qtype.upper(), t.name
        want = F.as_dtype(src, qtype)[2]  # the fixture's own rounding (nearest even)
        np.testing.assert_array_equal(as_f32(t), want, err_msg=t.name)


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path: Path) -> None:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    cfg, _ = F.tiny_model(tmp_path / "hf", "llama", rope_scaling=scaling, rope_theta=500000.0)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f16", quiet=True)
    r = GGUFReader(out)
    assert r.tensors[0].name == "rope_freqs.weight" and r.tensors[0].tensor_type.name == "F32"
    assert field(r, "llama.rope.scaling.type") is None  # llama.cpp carries llama3 scaling in the tensor
    # transformers' _compute_llama3_parameters, in float64
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / 500000.0 ** (np.arange(0, hd, 2) / hd)
    wavelen = 2 * math.pi / inv
    smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
    factors = np.where(
        wavelen < 64 / 4.0, 1.0, np.where(wavelen > 64 / 1.0, 8.0, 1 / ((1 - smooth) / 8.0 + smooth))
    )
    np.testing.assert_allclose(as_f32(r.tensors[0]), factors, rtol=1e-5)


@pytest.mark.parametrize(
    ("arch", "scaling", "keys"),
    [
        ("llama", {"type": "linear", "factor": 2.5}, {"type": "linear", "factor": 2.5}),
        ("qwen2", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
         {"type": "yarn", "factor": 4.0, "original_context_length": 256}),
    ],
)  # fmt: skip
def test_rope_scaling_metadata(
    tmp_path: Path, arch: str, scaling: dict[str, Any], keys: dict[str, Any]
) -> None:
    F.tiny_model(tmp_path / "hf", arch, rope_scaling=scaling)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    for key, value in keys.items():
        assert field(r, f"{arch}.rope.scaling.{key}") == pytest.approx(value), key


# -- quantization mixes against llama.cpp's quantizer ------------------------------------------

MIX_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # 16 layers so use_more_bits picks a pattern; ffn_down rows of 288 exercise the K fallbacks
    "gqa4-untied": ("llama", {
        "hidden_size": 256, "intermediate_size": 288, "num_hidden_layers": 16, "num_attention_heads": 8,
        "num_key_value_heads": 2,
    }),
    "rows96-tied": ("llama", {
        "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 4, "tie_word_embeddings": True,
    }),
    "rows80-f16-fallback": ("llama", {
        "hidden_size": 80, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }),
    # qwen2: q/k/v biases stay F32, its own arch name in llama.cpp's recipes; 8 layers, MQA
    "qwen2-mqa-biases": ("qwen2", {
        "hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 1,
    }),
    # qwen3: per-head q/k norms stay F32; head size 64 with width 128 (q rows 256)
    "qwen3-headdim": ("qwen3", {
        "hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64,
    }),
    # mixtures of experts: the router stays F32, the stacked experts follow the dense rules; with
    # exactly 8 experts llama.cpp bumps attn_k/attn_v to Q8_0 and attn_output to Q5_K
    "qwen3moe-8x": ("qwen3_moe", {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "moe_intermediate_size": 256,
    }),
    "mixtral-4x": ("mixtral", {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }),
    # phi3: q/k/v and gate/up fused (attn_qkv takes the attn_v rules), half of each head rotated
    "phi3-fused": ("phi3", {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 1, "partial_rotary_factor": 0.5,
    }),
    # mistral: written as a llama model; tied output, 6 layers
    "mistral-tied": ("mistral", {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": True,
    }),
}  # fmt: skip
# the IQ1/IQ2/IQ3 file types and Q2_K_S (importance matrices): test_quantize_imatrix.py
QUANT_TYPES = [t for t, ft in FILE_TYPES.items()
               if ft.is_quantized and t != "q2_k_s" and not t.startswith(("iq1", "iq2", "iq3"))]  # fmt: skip


@pytest.fixture(scope="module", params=list(MIX_MODELS))
def mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp(request.param)
    arch, kw = MIX_MODELS[request.param]
    F.tiny_model(d / "hf", arch, **kw)
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, mix_model: tuple[Path, Path], qtype: str
) -> None:
    hf_dir, f32 = mix_model
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    lcpp_quantize(llama_cpp, f32, ref, int(FILE_TYPES[qtype].ftype))
    want = tensors(ref)
    plan = convert(hf_dir, ours, type=qtype, dry_run=True)
    assert {t.name: t.type.name for t in plan.tensors} == {n: t.tensor_type.name for n, t in want.items()}
    convert(hf_dir, ours, type=qtype, quiet=True, n_threads=2)
    got = tensors(ours)
    assert field(GGUFReader(ours), "general.file_type") == field(GGUFReader(ref), "general.file_type")
    for name, t in got.items():
        assert (t.tensor_type, list(t.shape)) == (want[name].tensor_type, list(want[name].shape)), name
        # the same reference quantizers as ggml: byte for byte
        assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name


# max |logit error| / max |logit| of llama.cpp on our file vs the float64 reference, about twice
# what each type gives on this random model (llama.cpp also quantizes activations for q-types)
LOGIT_ERROR = {
    "f32": 1e-3, "f16": 2e-3, "bf16": 1e-2, "q8_0": 0.04, "q6_k": 0.08, "q5_k_m": 0.16, "q5_k_s": 0.16,
    "q5_1": 0.15, "q5_0": 0.2, "q4_k_m": 0.3, "q4_k_s": 0.3, "q4_1": 0.35, "q4_0": 0.35, "q3_k_l": 0.5,
    "q3_k_m": 0.5, "q3_k_s": 0.7, "q2_k": 0.8, "iq4_nl": 0.3, "iq4_xs": 0.35, "mxfp4_moe": 0.04,
}  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_llama_cpp_loads_every_type(tmp_path: Path, llama_cpp: Any, arch: str) -> None:
    cfg, weights = F.tiny_model(
        tmp_path / "hf",
        arch,
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ref = F.reference_logits(cfg, weights, IDS)
    for qtype in LOGIT_ERROR:
        out = tmp_path / f"{qtype}.gguf"
        convert(tmp_path / "hf", out, type=qtype, quiet=True)
        got = lcpp_logits(llama_cpp, out, IDS)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert np.isfinite(got).all() and err < LOGIT_ERROR[qtype], (qtype, err)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_read_f32_in_chunks(tmp_path: Path, dtype: str) -> None:
    from splitllm_convert.hfdir import index_tensors, read_f32

    _, weights = F.tiny_model(tmp_path / "hf", "llama", dtype=dtype)
    for name, entry in index_tensors(tmp_path / "hf").items():
        np.testing.assert_array_equal(read_f32(entry, chunk=7), weights[name], err_msg=name)


def test_missing_expert_is_named(tmp_path: Path) -> None:
    d = tmp_path / "hf"
    _, weights = F.tiny_model(d, "qwen3_moe")
    gone = "model.layers.1.mlp.experts.3.up_proj.weight"
    F.save_weights(d, {n: w for n, w in weights.items() if n != gone})
    with pytest.raises(ConvertError, match=f"tensor '{gone}' \\(blk.1.ffn_up_exps.weight\\) is missing"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"mlp_only_layers": [1]}, "dense blocks among the experts"),
        ({"decoder_sparse_step": 2}, "dense blocks among the experts"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok 9 is more than num_experts 8"),
        ({"moe_intermediate_size": 0}, "'moe_intermediate_size' must be a positive integer"),
    ],
)
def test_bad_expert_config(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    _bad_config(tmp_path, "qwen3_moe", over, match)


ORIG8 = {"original_max_position_embeddings": 8}


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"partial_rotary_factor": 1.5}, "'partial_rotary_factor' must be in"),
        ({"rope_scaling": {**PHI3_LONGROPE, "long_factor": [1.0] * 3}, **ORIG8},
         r"rope_scaling.long_factor must be a list of 8 positive numbers"),
        ({"rope_scaling": {**PHI3_LONGROPE, "short_factor": [0.0] * 8}, **ORIG8},
         r"rope_scaling.short_factor must be a list of 8 positive numbers"),
        ({"rope_scaling": PHI3_LONGROPE, "original_max_position_embeddings": 1},
         "needs 'original_max_position"),
        ({"rope_scaling": {"rope_type": "ntk"}}, r"'ntk' is not supported \(supported: .*longrope"),
    ],
)
def test_bad_phi3_config(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    _bad_config(tmp_path, "phi3", over, match)


def _bad_config(tmp_path: Path, arch: str, over: dict[str, Any], match: str) -> None:
    d = tmp_path / "hf"
    F.tiny_model(d, arch)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **over}))
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
