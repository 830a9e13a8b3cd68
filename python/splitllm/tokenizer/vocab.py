"""The vocabulary as llama.cpp reads it from GGUF metadata.

Everything here follows ``llama_vocab::impl::load`` in llama.cpp's ``src/llama-vocab.cpp``: the
per-token attributes (from ``tokenizer.ggml.token_type`` plus the fix-ups llama.cpp applies by
token text), the special token ids with their defaults, the add-BOS/EOS/SEP flags, the WordPiece
normalizer options, the unigram (UGM) normalization data and the set of end-of-generation tokens. The
tokenizers proper (SPM, BPE, WPM, UGM) are built on top of this.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from splitllm.tokenizer.errors import TokenizerError
from splitllm.tokenizer.pretok import PreTokenizer, pre_tokenizer_for


class TokenAttr(enum.IntFlag):
    """Per-token attributes (``llama_token_attr``)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# tokenizer.ggml.token_type values (gguf TokenType) -> attribute bits; unknown values are UNDEFINED.
_TYPE_ATTR = {0: 0, 1: int(TokenAttr.NORMAL), 2: int(TokenAttr.UNKNOWN), 3: int(TokenAttr.CONTROL),
              4: int(TokenAttr.USER_DEFINED), 5: int(TokenAttr.UNUSED), 6: int(TokenAttr.BYTE)}

KEY = "tokenizer.ggml."

# Special ids read from metadata, in llama.cpp's order; the deprecated FIM keys come last and win.
_SPECIAL_KEYS = (
    ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"), ("eom", "eom_token_id"),
    ("unk", "unknown_token_id"), ("sep", "seperator_token_id"), ("pad", "padding_token_id"),
    ("mask", "mask_token_id"), ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"),
    ("fim_mid", "fim_mid_token_id"), ("fim_pad", "fim_pad_token_id"), ("fim_rep", "fim_rep_token_id"),
    ("fim_sep", "fim_sep_token_id"), ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"),
    ("fim_mid", "middle_token_id"),
)

# Ids llama.cpp finds by token text when the metadata does not name them (first match wins there,
# in hash-map order; we take the lowest id). The chosen token is made a control token.
_BY_TEXT = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# Token texts that end generation whatever the metadata says.
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

# gpt-oss: always rendered, never treated as control.
_FORCE_USER_DEFINED = frozenset(("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"))

SUPPORTED_MODELS = ("llama", "gpt2", "bert", "t5", "gemma4")


@dataclass
class Vocab:
    """Token texts, scores and attributes, and the special-token configuration."""

    model: str                       # "llama" (SentencePiece), "gpt2" (byte-level BPE), "bert" (WordPiece),
                                     # "t5" (SentencePiece unigram)
    tokens: list[str]                # (n_vocab,) token text as stored in the GGUF
    scores: list[float]              # (n_vocab,) SentencePiece scores: merge priority or unigram log-prob
    attrs: list[int]                 # (n_vocab,) TokenAttr bits
    token_to_id: dict[str, int]
    merges: list[tuple[str, str]]    # BPE merges in rank order (empty for SPM)
    pre: PreTokenizer | None         # BPE pre-tokenizer (None for SPM)
    special: dict[str, int | None] = field(default_factory=dict)  # bos, eos, eot, unk, ... -> id
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False            # reported only: llama.cpp's WPM adds [CLS] and [SEP] whatever the flags
    add_space_prefix: bool = False
    clean_spaces: bool = False
    lowercase: bool = False          # WordPiece normalizer (tokenizer.ggml.normalizer.*)
    strip_accents: bool = False
    remove_extra_whitespaces: bool = False  # unigram: one "▁" per run of spaces, none at the ends
    precompiled_charsmap: bytes = b""  # unigram: SentencePiece's normalization rules (empty: none)
    type_attrs: list[int] = field(default_factory=list)  # (n_vocab,) from token_type alone, before fix-ups
    eog_ids: frozenset[int] = frozenset()
    special_cache: list[int] = field(default_factory=list)  # partitioned before tokenizing, longest first

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def _get(md: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = md.get(key, default)
    if value is not default and not isinstance(value, kind):
        raise TokenizerError(f"GGUF metadata '{key}' has type {type(value).__name__}, expected {kind}")
    return value


def _get_list(md: Mapping[str, Any], key: str, n: int, item: type | tuple[type, ...]) -> list[Any] | None:
    value = md.get(key)
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TokenizerError(f"GGUF metadata '{key}' must be an array, got {type(value).__name__}")
    if len(value) < n:
        raise TokenizerError(f"GGUF metadata '{key}' has {len(value)} entries, fewer than the {n} tokens")
    for v in value[:1]:
        if not isinstance(v, item) or isinstance(v, bool):
            raise TokenizerError(f"GGUF metadata '{key}' holds {type(v).__name__}, expected {item}")
    return list(value[:n])


def _read_tokens(md: Mapping[str, Any]) -> tuple[list[str], dict[str, int]]:
    raw = md.get(KEY + "tokens")
    if raw is None:
        raise TokenizerError(f"GGUF metadata has no '{KEY}tokens' (the vocabulary)")
    if (not isinstance(raw, Sequence) or isinstance(raw, str | bytes)
            or not all(isinstance(t, str) for t in raw)):
        raise TokenizerError(f"GGUF metadata '{KEY}tokens' must be an array of strings")
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(raw)]
    token_to_id = {t: i for i, t in enumerate(tokens)}
    if len(token_to_id) != len(tokens):
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise TokenizerError(f"GGUF metadata '{KEY}tokens': duplicate token {t!r} "
                                     f"at ids {seen[t]} and {i}")
            seen[t] = i
    return tokens, token_to_id


def _read_merges(md: Mapping[str, Any]) -> list[tuple[str, str]]:
    raw = md.get(KEY + "merges")
    if raw is None:
        raise TokenizerError(f"GGUF metadata has no '{KEY}merges' (required by the gpt2 tokenizer)")
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise TokenizerError(f"GGUF metadata '{KEY}merges' must be an array of strings")
    merges = []
    for m in raw:
        if not isinstance(m, str):
            raise TokenizerError(f"GGUF metadata '{KEY}merges' holds {type(m).__name__}, expected str")
        pos = m.find(" ", 1)  # the first piece may itself be a space-like character, never empty
        merges.append((m[:pos], m[pos + 1:]) if pos >= 0 else ("", ""))
    return merges


def _read_special_ids(md: Mapping[str, Any], special: dict[str, int | None], n: int) -> None:
    """Overrides the type's default special ids with the ones the metadata names."""
    for name, key in _SPECIAL_KEYS:
        if (special.get(name) or 0) >= n:
            special[name] = None  # a default id the vocabulary is too small for
        value = md.get(KEY + key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TokenizerError(f"GGUF metadata '{KEY}{key}' must be an integer, got {type(value).__name__}")
        if 0 <= value < n:
            special[name] = value
        else:
            warnings.warn(f"GGUF metadata '{KEY}{key}' = {value} is outside the vocabulary of {n} tokens; "
                          f"using the default {special.get(name)}", stacklevel=4)


def _find_by_text(vocab: Vocab) -> None:
    """Special ids llama.cpp finds by token text when the metadata leaves them unset."""
    control = int(TokenAttr.CONTROL)
    for name, texts in _BY_TEXT.items():
        if vocab.special.get(name) is not None:
            continue
        ids = [vocab.token_to_id[t] for t in texts if t in vocab.token_to_id]
        if ids:
            vocab.special[name] = min(ids)
            vocab.attrs[min(ids)] |= control


def _end_of_generation(vocab: Vocab) -> set[int]:
    """The tokens that end generation, with llama.cpp's fix-ups of their attributes."""
    attrs, t2id, special = vocab.attrs, vocab.token_to_id, vocab.special
    control, unused = int(TokenAttr.CONTROL), int(TokenAttr.UNUSED)
    for i, a in enumerate(attrs):  # control tokens named "unused" are unused
        if a & control and not a & unused and "unused" in vocab.tokens[i]:
            attrs[i] = a | unused
    eog = {special[k] for k in ("fim_pad", "fim_rep", "fim_sep") if special.get(k) is not None}
    for text in _EOG_TEXTS & t2id.keys():
        eog.add(t2id[text])
        attrs[t2id[text]] |= control
    for text in _FORCE_USER_DEFINED & t2id.keys():
        attrs[t2id[text]] = int(TokenAttr.USER_DEFINED)
    eog |= {special[k] for k in ("eos", "eot", "eom") if special.get(k) is not None}  # type: ignore[misc]

    by_text = {vocab.tokens[i]: i for i in eog}
    has_call = "<|call|>" in by_text or "<|calls|>" in by_text
    if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
        eog.discard(by_text["<|end|>"])  # harmony / solar-open: <|end|> ends a message, not the turn
        attrs[by_text["<|end|>"]] = int(TokenAttr.USER_DEFINED)
    if "<|tool_response>" in by_text and "</s>" in by_text:
        eog.discard(by_text["</s>"])  # gemma4 / paddleocr
        attrs[by_text["</s>"]] = int(TokenAttr.NORMAL)
    return eog


def _strip_attributes(vocab: Vocab, md: Mapping[str, Any]) -> None:
    """LSTRIP/RSTRIP, which llama.cpp sets from the model, pre-tokenizer or architecture name."""
    name = str(md.get("general.name", "")).lower()
    pre = str(md.get(KEY + "pre", ""))
    arch = str(md.get("general.architecture", ""))
    t2id, attrs = vocab.token_to_id, vocab.attrs
    lstrip, rstrip = int(TokenAttr.LSTRIP), int(TokenAttr.RSTRIP)
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        if "<mask>" in t2id:
            attrs[t2id["<mask>"]] |= lstrip
    elif "phi-3" in name or "phi3" in name:
        for i in vocab.special_cache:
            attrs[i] |= rstrip
        if "</s>" in t2id:
            attrs[t2id["</s>"]] |= rstrip
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            if text in t2id:
                attrs[t2id[text]] &= ~rstrip
    elif "modern-bert" in name and "[MASK]" in t2id:
        attrs[t2id["[MASK]"]] |= lstrip


def _read_charsmap(md: Mapping[str, Any]) -> bytes:
    """tokenizer.ggml.precompiled_charsmap (a UINT8 or INT8 array), checked as llama.cpp checks it."""
    key = KEY + "precompiled_charsmap"
    value = md.get(key)
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        blob = bytes(value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and all(
            isinstance(v, int) and not isinstance(v, bool) and -128 <= v <= 255 for v in value):
        blob = bytes([v & 0xFF for v in value])
    else:
        raise TokenizerError(f"GGUF metadata '{key}' must be an array of bytes")
    if len(blob) < 4:
        raise TokenizerError(f"GGUF metadata '{key}' is too small for its header ({len(blob)} bytes)")
    if int.from_bytes(blob[:4], "little") + 4 >= len(blob):
        raise TokenizerError(f"GGUF metadata '{key}': its double array runs past its {len(blob)} bytes")
    return blob


def _flags(md: Mapping[str, Any], model: str, pre: PreTokenizer | None) -> dict[str, bool]:
    if model == "bert":
        flags = {"add_bos": True, "add_eos": False, "add_sep": True, "add_space_prefix": False,
                 "clean_spaces": True}
    elif model == "t5":  # T5 ends every text with EOS; XLM-R vocabularies set add_bos_token too
        flags = {"add_bos": False, "add_eos": True, "add_space_prefix": False, "clean_spaces": False}
    elif pre is None:  # SentencePiece
        flags = {"add_bos": True, "add_eos": False, "add_space_prefix": True, "clean_spaces": False}
    else:
        flags = {"add_bos": pre.add_bos, "add_eos": False, "add_space_prefix": False,
                 "clean_spaces": pre.clean_spaces}
    flags.setdefault("add_sep", False)
    for name, key in (("add_space_prefix", "add_space_prefix"), ("add_bos", "add_bos_token"),
                      ("add_eos", "add_eos_token"), ("add_sep", "add_sep_token")):
        flags[name] = _get(md, KEY + key, bool, flags[name])
    # BertNormalizer options: lowercase by default, strip_accents as lowercase unless named
    flags["lowercase"] = _get(md, KEY + "normalizer.lowercase", bool, True)
    flags["strip_accents"] = _get(md, KEY + "normalizer.strip_accents", bool, flags["lowercase"])
    flags["remove_extra_whitespaces"] = _get(md, KEY + "remove_extra_whitespaces", bool, False)
    return flags


def load_vocab(md: Mapping[str, Any]) -> Vocab:
    """Reads the vocabulary from GGUF metadata (key -> int/float/bool/str/list)."""
    model = _get(md, KEY + "model", str)
    if model is None:
        raise TokenizerError(f"GGUF metadata has no '{KEY}model' (the tokenizer type)")
    if model not in SUPPORTED_MODELS:
        raise TokenizerError(f"GGUF metadata '{KEY}model' = {model!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_MODELS)})")
    tokens, token_to_id = _read_tokens(md)
    n = len(tokens)
    scores = _get_list(md, KEY + "scores", n, (int, float)) or [0.0] * n
    types = _get_list(md, KEY + "token_type", n, int)
    normal = int(TokenAttr.NORMAL)
    attrs = [_TYPE_ATTR.get(t, 0) for t in types] if types is not None else [normal] * n

    pre: PreTokenizer | None = None
    merges: list[tuple[str, str]] = []
    charsmap = b""
    special: dict[str, int | None] = {k: None for k, _ in _SPECIAL_KEYS}
    if model == "llama":
        special.update(bos=1, eos=2, unk=0)
    elif model == "t5":
        special.update(eos=1, unk=2, pad=0)
        charsmap = _read_charsmap(md)
    elif model == "bert":
        special.update(bos=101, unk=100, sep=102, pad=0, mask=103)
        byte = int(TokenAttr.BYTE)
        if any(a & byte for a in attrs):  # llama.cpp aborts on these (token_to_byte has no WPM case)
            raise TokenizerError(f"GGUF metadata '{KEY}token_type' marks byte tokens, which a bert "
                                 "(WordPiece) vocabulary cannot have")
    else:
        merges = _read_merges(md)
        # (llama.cpp runs a gemma4 vocabulary with its own pre-tokenizer whatever the file names)
        pre_name = "gemma4" if model == "gemma4" else _get(md, KEY + "pre", str)
        if pre_name is None:
            warnings.warn(f"GGUF metadata has no '{KEY}pre': using the 'default' pre-tokenizer, as llama.cpp "
                          "does (tokenization may not match the model's)", stacklevel=3)
            pre_name = "default"
        pre = pre_tokenizer_for(pre_name)
        special.update(bos=None if pre.no_bos else 11, eos=11)
    flags = _flags(md, model, pre)
    if model == "gemma4":  # llama.cpp overrides a false add_bos_token for Gemma 4
        flags["add_bos"] = True
    vocab = Vocab(model=model, tokens=tokens, scores=[float(s) for s in scores], attrs=attrs,
                  token_to_id=token_to_id, merges=merges, pre=pre, special=special,
                  precompiled_charsmap=charsmap, type_attrs=list(attrs), **flags)
    _read_special_ids(md, special, n)
    for flag, name in (("add_bos", "bos"), ("add_eos", "eos")):
        # WPM ignores the flags: its tokenize asks for [CLS] and [SEP] itself
        if getattr(vocab, flag) and special[name] is None and model != "bert":
            raise TokenizerError(f"GGUF metadata '{KEY}{flag}_token' is true but there is no {name} token")
    _find_by_text(vocab)
    vocab.eog_ids = frozenset(_end_of_generation(vocab))
    mask = int(TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN)
    cache = [i for i, a in enumerate(attrs) if a & mask]
    vocab.special_cache = sorted(cache, key=lambda i: -len(tokens[i].encode("utf-8")))
    _strip_attributes(vocab, md)
    return vocab
