"""XLM-RoBERTa encoders (bge-m3, multilingual-e5): llama.cpp's XLMRobertaModel (convert_hf_to_gguf.py)
writes them as ``bert`` models with a Unigram ("t5", llama.cpp's UGM tokenizer) vocabulary.

- The weights are BERT's (see ``bert``), at the top level or under ``roberta.``; the pooler and the
  ``position_ids`` buffer are left out.
- XLM-R numbers positions from ``pad_token_id + 1`` (transformers' create_position_ids_from_input_ids):
  the first ``pad_token_id + 1`` rows of the position embeddings are never used. They are cut, as
  llama.cpp cuts them, and ``context_length`` is ``max_position_embeddings - pad_token_id - 1``, so
  that position 0 of llama.cpp (and splitllm) is XLM-R's position ``pad_token_id + 1``.
- The vocabulary comes from ``sentencepiece.bpe.model`` (a unigram SentencePiece model, whatever its
  name says), realigned to fairseq's ids as transformers' XLMRobertaTokenizer does: ``<s>``,
  ``<pad>``, ``</s>``, ``<unk>`` at 0-3, SentencePiece piece ``i`` (``i >= 3``) at ``i + 1``, the
  last id left as llama.cpp leaves it (a ``[PADn]`` placeholder where the model has ``<mask>``).
  Scores, token types, the normalizer's precompiled_charsmap, add_dummy_prefix and
  remove_extra_whitespaces come from the model proto; special ids and add_* flags from gguf-py's
  SpecialVocab (tokenizer.json's post-processor and added tokens, tokenizer_config.json,
  config.json), as llama.cpp's ``_xlmroberta_set_vocab`` writes them.

config.json is read as llama.cpp reads it through transformers' AutoConfig: keys left out take
XLMRobertaConfig's defaults (pad_token_id 1, ...). A directory with tokenizer.json and no
sentencepiece.bpe.model is refused: llama.cpp builds that vocabulary through transformers'
AutoTokenizer, which this converter does not use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType

from splitllm_convert.arch import Array, PlannedSource, TensorRule
from splitllm_convert.bert import BERT_DEFAULTS, Bert, _bert_rules
from splitllm_convert.errors import ConvertError
from splitllm_convert.vocab import Vocab, _special_tokens

# transformers' XLMRobertaConfig defaults: BertConfig's, with RoBERTa's special ids
XLMR_DEFAULTS: dict[str, Any] = {**BERT_DEFAULTS, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
SPM_FILE = "sentencepiece.bpe.model"
# fairseq's first four ids (transformers' XLMRobertaTokenizer), which replace SentencePiece's 0-2
FAIRSEQ_SPECIALS = (("<s>", TokenType.CONTROL), ("<pad>", TokenType.CONTROL), ("</s>", TokenType.CONTROL),
                    ("<unk>", TokenType.UNKNOWN))  # fmt: skip


class XLMRoberta(Bert):
    """XLMRobertaModel: BERT's encoder with positions starting at pad_token_id + 1 and a unigram
    SentencePiece vocabulary."""

    hf_names = ("XLMRobertaModel",)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        if cfg.get("lora_adaptations"):
            raise ConvertError(
                f"{config_path}: 'lora_adaptations' is set: a jina-embeddings-v3 model (llama.cpp's "
                "jina-bert-v3), which splitllm does not run"
            )
        super().__init__({**XLMR_DEFAULTS, **cfg}, config_path)
        pad = self.cfg["pad_token_id"]
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise ConvertError(
                f"{config_path}: 'pad_token_id' must be a non-negative integer (XLM-R's positions start "
                f"at pad_token_id + 1), got {pad!r}"
            )
        self.offset = pad + 1
        self.n_pos = self.n_ctx  # rows of the checkpoint's position embeddings
        if self.n_pos <= self.offset:
            raise ConvertError(
                f"{config_path}: 'max_position_embeddings' {self.n_pos} leaves no positions after "
                f"pad_token_id + 1 = {self.offset}"
            )
        self.n_ctx = self.n_pos - self.offset  # written as context_length

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ctx": self.n_pos}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        prefix = "roberta." if "roberta.embeddings.word_embeddings.weight" in available else ""
        norm = ("gamma", "beta") if prefix + "embeddings.LayerNorm.gamma" in available else ("weight", "bias")
        rules = tuple(
            dataclasses.replace(r, transform="cut_positions") if r.gguf == "position_embd.weight" else r
            for r in _bert_rules(prefix, norm)
        )
        ignored = tuple(
            prefix + n for n in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
        )
        return rules, ignored

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {"cut_positions": lambda w: w[self.offset :]}

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        cut = (self.n_ctx, self.n_embd)  # the position embeddings without their first `offset` rows
        return [
            dataclasses.replace(s, shape=cut) if s.gguf_name == "position_embd.weight" else s
            for s in super().plan(available, where, files)
        ]

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        return xlmr_vocab(model_dir, self.n_vocab, self.n_types)


# -- the unigram vocabulary ------------------------------------------------------------------------


@dataclass
class UgmVocab(Vocab):
    """tokenizer.* of a unigram ("t5") vocabulary, in the order llama.cpp's _xlmroberta_set_vocab
    writes them."""

    remove_extra_whitespaces: bool = True
    precompiled_charsmap: bytes = b""

    def add_to(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        assert self.scores is not None
        w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        w.add_add_space_prefix(bool(self.add_space_prefix))
        w.add_token_type_count(int(self.token_type_count or 1))
        w.add_remove_extra_whitespaces(self.remove_extra_whitespaces)
        if self.precompiled_charsmap:
            w.add_precompiled_charsmap(self.precompiled_charsmap)
        for typ, tid in self.special_ids.items():
            if typ in ("bos", "eos", "unk", "sep", "pad", "mask", "eot", "eom"):
                getattr(w, f"add_{typ}_token_id")(tid)
        for typ, value in self.add_special.items():
            if typ in ("bos", "eos", "sep"):
                getattr(w, f"add_add_{typ}_token")(value)
        if self.chat_template:
            w.add_chat_template(self.chat_template)
        for key in ("lowercase", "strip_accents"):
            if key in self.normalizer:
                w.add_bool(f"tokenizer.ggml.normalizer.{key}", self.normalizer[key])


def _varint(buf: bytes, i: int, path: Path) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ConvertError(f"{path}: not a SentencePiece model (a truncated or malformed protobuf)")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def proto_fields(buf: bytes, path: Path) -> list[tuple[int, int | bytes]]:
    """The top-level fields of a protobuf message: (field number, varint value or bytes)."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i, path)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i, path)
            out.append((number, value))
        elif wire == 2:
            n, i = _varint(buf, i, path)
            if i + n > len(buf):
                raise ConvertError(f"{path}: not a SentencePiece model (a field runs past the end)")
            out.append((number, buf[i : i + n]))
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ConvertError(f"{path}: not a SentencePiece model (protobuf wire type {wire})")
    if i != len(buf):
        raise ConvertError(f"{path}: not a SentencePiece model (a field runs past the end)")
    return out


@dataclass(frozen=True)
class SpmSpec:
    """What llama.cpp reads from a SentencePiece ModelProto besides the pieces."""

    model_type: int  # TrainerSpec.model_type: 1 unigram, 2 bpe, 3 word, 4 char
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    precompiled_charsmap: bytes


def read_spm_spec(data: bytes, path: Path) -> SpmSpec:
    """ModelProto's trainer_spec.model_type (field 2.3) and normalizer_spec's precompiled_charsmap,
    add_dummy_prefix and remove_extra_whitespaces (fields 3.2-3.4), with the proto's defaults
    (unigram, true, true) for fields left out."""
    top = proto_fields(data, path)
    # a message field given twice is merged: its parts read as one
    trainer = b"".join(v for n, v in top if n == 2 and isinstance(v, bytes))
    normalizer = b"".join(v for n, v in top if n == 3 and isinstance(v, bytes))
    model_type, flags, charsmap = 1, {3: True, 4: True}, b""
    for n, v in proto_fields(trainer, path):
        if n == 3 and isinstance(v, int):
            model_type = v
    for n, v in proto_fields(normalizer, path):
        if n == 2 and isinstance(v, bytes):
            charsmap = v
        elif n in flags and isinstance(v, int):
            flags[n] = bool(v)
    return SpmSpec(model_type, flags[3], flags[4], charsmap)


def xlmr_vocab(model_dir: Path, n_vocab: int, n_types: int) -> UgmVocab:
    """The "t5" vocabulary llama.cpp's _xlmroberta_set_vocab writes from sentencepiece.bpe.model:
    ``max(vocab_size, pieces)`` ids, SentencePiece's pieces moved to fairseq's ids, then gguf-py's
    SpecialVocab for that many ids."""
    from sentencepiece import SentencePieceProcessor

    path = model_dir / SPM_FILE
    if not path.is_file():
        other = " (llama.cpp reads a tokenizer.json alone through transformers)" if (
            model_dir / "tokenizer.json").is_file() else ""  # fmt: skip
        raise ConvertError(f"{model_dir}: no {SPM_FILE} (XLM-R's SentencePiece model){other}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConvertError(f"{path}: cannot be read ({e.strerror or e})") from None
    spec = read_spm_spec(data, path)
    if spec.model_type != 1:
        kind = {2: "BPE", 3: "word", 4: "char"}.get(spec.model_type, f"type {spec.model_type}")
        raise ConvertError(
            f"{path}: a {kind} SentencePiece model; llama.cpp's XLM-R vocabulary (t5, its UGM tokenizer) "
            "is a unigram model"
        )
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a SentencePiece model ({e})") from None
    n_pieces = sp.vocab_size()
    if n_pieces > n_vocab:
        raise ConvertError(f"{path}: {n_pieces} pieces, more than config.json's vocab_size {n_vocab}")
    if n_pieces < 4 or not (sp.IsUnknown(0) and sp.IsControl(1) and sp.IsControl(2)):
        raise ConvertError(
            f"{path}: pieces 0-2 must be <unk>, <s> and </s> (XLM-R's layout, which fairseq's ids "
            f"replace), got {[sp.IdToPiece(i) for i in range(min(3, n_pieces))]}"
        )
    tokens, scores = [f"[PAD{i}]" for i in range(n_vocab)], [-10000.0] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i in range(n_pieces):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = int(
            TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
            else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i) else TokenType.NORMAL
        )  # fmt: skip
    # fairseq's ids: four specials, then piece i at i + 1; the last id falls off, as in llama.cpp
    tokens = [t for t, _ in FAIRSEQ_SPECIALS] + tokens[3:-1]
    scores = [0.0] * 4 + scores[3:-1]
    types = [int(k) for _, k in FAIRSEQ_SPECIALS] + types[3:-1]
    v = UgmVocab("t5", "default", tokens, types, scores, add_space_prefix=spec.add_dummy_prefix,
                 token_type_count=n_types, remove_extra_whitespaces=spec.remove_extra_whitespaces,
                 precompiled_charsmap=spec.precompiled_charsmap)  # fmt: skip
    _special_tokens(model_dir, v, n_vocab, latest=True)
    return v
