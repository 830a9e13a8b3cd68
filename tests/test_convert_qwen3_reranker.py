"""convert-hf on tiny random Qwen3-Reranker directories (Qwen3ForCausalLM named a reranker by its
model card, its directory's name or config.json's _name_or_path, as llama.cpp's Qwen3Model detects
one), checked against references we did not write.

- llama.cpp (llama-cpp-python, rank pooling) on our GGUF scores (query, document) prompts built from
  the file's "rerank" chat template as the numpy float64 reference does: the softmax of the "yes"
  and "no" logits of the last token (hf_fixtures.qwen3_rerank_scores, Qwen3-Reranker's model card).
  splitllm's engine gives the same scores from the same file, and builds the same prompt tokens.
- What llama.cpp's converter writes: cls.output.weight = the rows of "yes" and "no" (the tokenizer's
  ids, in that order) of lm_head, which is not written as output.weight, or of the tied embeddings,
  still written as token_embd; after general.file_type, pooling_type 4 (rank), labels ["yes", "no"]
  and the rerank template as gguf-py's add_chat_template writes a list of named templates
  (tokenizer.chat_template.rerank and tokenizer.chat_templates), the tokenizer's own template still
  tokenizer.chat_template. Everything else is the plain Qwen3 conversion of the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
from gguf import GGUFReader
from lcpp import llama_cpp_embeddings
from splitllm_convert import convert
from splitllm_convert.arch import QWEN3_RERANK_TEMPLATE, is_qwen3_reranker
from splitllm_convert.errors import ConvertError

PAIRS = [("what is a key cache?", "the key and value of each token are kept in memory."),
         ("hello world", "über café 東京 12345!"),
         ("quantize the block", "a small model is fast.")]  # fmt: skip
N_CTX = 1024
# Max |score - float64 reference| measured over these cases (scores 0.32 .. 0.96): llama.cpp 4.9e-5
# on the f32 files, 2.8e-4 on the f16 one; splitllm's engine 5.0e-5 and 1.2e-4.
TOL = 1e-3
RERANK_KEYS = ["qwen3.pooling_type", "qwen3.classifier.output_labels", "tokenizer.chat_template.rerank",
               "tokenizer.chat_templates"]  # fmt: skip

# id: (directory name, how it is marked, tied embeddings, output --type)
CASES: dict[str, tuple[str, str | None, bool, str]] = {
    "readme-untied": ("hf", "readme", False, "f32"),
    "readme-tied-f16": ("hf", "readme", True, "f16"),
    "dirname-tied": ("Qwen3-Reranker-0.6B", None, True, "f32"),
    "name-or-path-untied": ("hf", "name_or_path", False, "f32"),
}


def _fields(path: Path) -> dict[str, Any]:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def _tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in GGUFReader(path).tensors}


def _prompt_ids(d: Path, query: str, doc: str) -> list[int]:
    """The rerank template with the pair put in, tokenized by Hugging Face ``tokenizers``."""
    from tokenizers import Tokenizer

    prompt = QWEN3_RERANK_TEMPLATE.replace("{query}", query).replace("{document}", doc)
    return list(Tokenizer.from_file(str(d / "tokenizer.json")).encode(prompt).ids)


@pytest.mark.parametrize("case", list(CASES))
def test_scores_and_file(tmp_path: Path, case: str) -> None:
    from splitllm import Model

    llama_cpp = pytest.importorskip("llama_cpp")
    name, mark, tied, qtype = CASES[case]
    d = tmp_path / name
    cfg, w, (yes, no) = F.tiny_qwen3_reranker(d, mark=mark, tied=tied, seed=len(case),
                                              max_position_embeddings=N_CTX)  # fmt: skip
    out = tmp_path / "m.gguf"
    convert(d, out, type=qtype, quiet=True)

    kv, ts = _fields(out), _tensors(out)
    assert kv["qwen3.pooling_type"] == 4
    assert kv["qwen3.classifier.output_labels"] == ["yes", "no"]
    assert kv["tokenizer.chat_template.rerank"] == QWEN3_RERANK_TEMPLATE
    assert kv["tokenizer.chat_templates"] == ["rerank"]
    assert kv["tokenizer.chat_template"] == F.CHAT_TEMPLATE  # the tokenizer's own, still the default
    keys = list(kv)
    at = keys.index("general.file_type")
    assert keys[at + 1 : at + 5] == RERANK_KEYS  # where llama.cpp's Qwen3Model.set_gguf_parameters adds them

    head = w["model.embed_tokens.weight" if tied else "lm_head.weight"]
    cls_out = ts["cls.output.weight"]
    assert [int(n) for n in cls_out.shape] == [cfg["hidden_size"], 2]
    want = np.stack([head[yes], head[no]])
    got = np.asarray(cls_out.data).reshape(2, cfg["hidden_size"])
    assert np.array_equal(got, want.astype(got.dtype))
    assert "output.weight" not in ts
    if tied:  # cls.output.weight first, as llama.cpp's modify_tensors yields it
        assert list(ts).index("token_embd.weight") == list(ts).index("cls.output.weight") + 1

    seqs = [_prompt_ids(d, q, doc) for q, doc in PAIRS]
    refs = [F.qwen3_rerank_scores(cfg, w, ids, (yes, no)) for ids in seqs]
    # away from 0 and 1 (the test sees the head) and from 0.5 (it sees the order of the rows)
    assert 0.01 < min(abs(r[0] - 0.5) for r in refs) and max(abs(r[0] - 0.5) for r in refs) < 0.49
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:  # llama.cpp tokenizes the prompt as tokenizers does
        for (q, doc), ids in zip(PAIRS, seqs, strict=True):
            prompt = QWEN3_RERANK_TEMPLATE.replace("{query}", q).replace("{document}", doc)
            assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()
    lcpp = llama_cpp_embeddings(out, seqs, pooling=4, n_ctx=N_CTX)
    with Model(out, embedding=True, n_ctx=N_CTX, n_threads=2) as m:
        assert [m.rerank_tokens(q, doc) for q, doc in PAIRS] == seqs
        ours = m.rank_scores(seqs)
    for ref, a, b in zip(refs, lcpp, ours, strict=True):
        assert np.abs(a - ref).max() < TOL, (a, ref)
        assert np.abs(np.asarray(b) - ref).max() < TOL, (b, ref)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_rest_is_the_plain_qwen3_file(tmp_path: Path, tied: bool) -> None:
    """A directory not named a reranker converts as plain Qwen3 (output.weight, no rank keys); the
    reranker's file is that file with cls.output.weight in lm_head's place (before token_embd when
    tied) and the four keys after general.file_type, every other key and tensor the same bytes."""
    d = tmp_path / "rr"
    F.tiny_qwen3_reranker(d, mark="name_or_path", tied=tied)
    plain = tmp_path / "plain"
    shutil.copytree(d, plain)
    cfg = json.loads((plain / "config.json").read_text())
    del cfg["_name_or_path"]
    (plain / "config.json").write_text(json.dumps(cfg))
    assert not is_qwen3_reranker(cfg, plain)
    convert(d, tmp_path / "rr.gguf", type="q8_0", quiet=True)
    convert(plain, tmp_path / "plain.gguf", type="q8_0", quiet=True)

    kv, base = _fields(tmp_path / "rr.gguf"), _fields(tmp_path / "plain.gguf")
    assert not set(RERANK_KEYS) & set(base)

    def rest(f: dict[str, Any]) -> dict[str, Any]:  # general.name etc. follow _name_or_path
        return {k: v for k, v in f.items() if k not in RERANK_KEYS and k.split(".")[0] != "general"}

    assert list(rest(kv).items()) == list(rest(base).items())
    ts, tb = _tensors(tmp_path / "rr.gguf"), _tensors(tmp_path / "plain.gguf")
    want = [n for n in tb if n != "output.weight"]
    i = want.index("token_embd.weight") if tied else list(tb).index("output.weight")
    assert list(ts) == [*want[:i], "cls.output.weight", *want[i:]]
    assert ("output.weight" in tb) != tied
    for n in want:
        assert ts[n].tensor_type == tb[n].tensor_type and bytes(ts[n].data) == bytes(tb[n].data), n
    plan = convert(d, tmp_path / "x.gguf", type="f16", dry_run=True, quiet=True)
    src = {t.name: t.source for t in plan.tensors}["cls.output.weight"]
    assert src.endswith(":model.embed_tokens.weight" if tied else ":lm_head.weight")


@pytest.mark.parametrize(
    ("dirname", "card", "cfg", "want"),
    [
        ("m", "# Qwen3-Reranker-4B\n", {}, True),
        ("m", "intro\n\n## qwen3-vl-reranker usage\n", {}, True),
        ("qwen3-vl-reranker-2b", None, {}, True),
        ("m", None, {"model_type": "Qwen3-Reranker"}, True),
        ("m", None, {"_name_or_path": "/models/Qwen3-Reranker-8B"}, True),
        ("m", None, {"architectures": ["Qwen3ForSequenceClassification"]}, True),
        ("m", "Rerank with Qwen3-Reranker.\n", {}, False),  # no heading
        ("Qwen3-Embedding-0.6B", "# Qwen3-Embedding\n", {"_name_or_path": "Qwen/Qwen3-8B"}, False),
    ],
)
def test_detection(tmp_path: Path, dirname: str, card: str | None, cfg: dict[str, Any], want: bool) -> None:
    """As llama.cpp's Qwen3Model._is_qwen3_reranker, case-insensitive."""
    d = tmp_path / dirname
    d.mkdir()
    if card is not None:
        (d / "README.md").write_text(card, encoding="utf-8")
    assert is_qwen3_reranker({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **cfg}, d) is want


def test_missing_yes_token_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "hf"
    F.tiny_qwen3_reranker(d)
    spec = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["vocab"]["yes!"] = spec["model"]["vocab"].pop("yes")
    (d / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ConvertError, match="no token 'yes'"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert list(tmp_path.iterdir()) == [d]


def test_sequence_classification_is_not_supported(tmp_path: Path) -> None:
    """Qwen3ForSequenceClassification (a ``score`` head) is refused, as llama.cpp's converter, which
    registers no class for it, refuses it."""
    d = tmp_path / "hf"
    F.tiny_qwen3_reranker(d, architectures=["Qwen3ForSequenceClassification"])
    with pytest.raises(ConvertError, match="'Qwen3ForSequenceClassification' is not supported"):
        convert(d, tmp_path / "m.gguf", quiet=True)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_sentence_transformers_pooling(tmp_path: Path, arch: str) -> None:
    """A Qwen2 / Qwen3 embedding model (Qwen3-Embedding: sentence-transformers' last-token pooling)
    gets {arch}.pooling_type right after general.file_type, as llama.cpp's Qwen2Model writes it; the
    rest of the file is the plain conversion's, and Model.embed pools by the last token."""
    from splitllm import Model

    F.tiny_model(tmp_path / "hf", arch)
    convert(tmp_path / "hf", tmp_path / "plain.gguf", type="q8_0", quiet=True)
    F.write_pooling(tmp_path / "hf", "lasttoken")
    convert(tmp_path / "hf", tmp_path / "st.gguf", type="q8_0", quiet=True)
    plain, st = _fields(tmp_path / "plain.gguf"), _fields(tmp_path / "st.gguf")
    keys = list(st)
    assert keys[keys.index("general.file_type") + 1] == f"{arch}.pooling_type"
    assert st[f"{arch}.pooling_type"] == 3
    del st[f"{arch}.pooling_type"]
    assert st == plain
    with Model(str(tmp_path / "st.gguf"), embedding=True, n_ctx=64, n_threads=2) as m:
        assert m.pooling_type() == 3
