"""Tokenizer metadata as llama.cpp's convert_hf_to_gguf.py writes it.

``tokenizer.model`` (SentencePiece) wins when present and gives ``tokenizer.ggml.model = llama``
with scores; otherwise a byte-level BPE ``tokenizer.json`` gives ``gpt2`` with merges and a
``pre`` name (see pretok.py). Both are padded to config.json's ``vocab_size`` with ``[PADn]``
tokens. Special token ids, add_bos/add_eos/add_sep and the chat template come from
tokenizer_config.json, tokenizer.json's added tokens and post-processor, and config.json's
``*_token_id``, read as gguf-py's ``SpecialVocab`` (llama.cpp's converter) reads them.
special_tokens_map.json is not read, as llama.cpp does not read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType

from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import read_json
from splitllm_convert.pretok import detect_pre, hf_tokenizer

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = ("bos", "eos", "unk", "sep", "pad", "mask", "eot", "eom")  # GGUF has no cls


@dataclass
class Vocab:
    """Everything ``tokenizer.*`` in the GGUF file, gathered before writing."""

    model: str  # "llama" (SentencePiece), "gpt2" (byte-level BPE), "bert" (WordPiece) or "gemma4"
    pre: str  # "": not written (llama.cpp's Gemma4Model writes none)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    add_space_prefix: bool | None = None
    chat_template: Any = None
    token_type_count: int | None = None  # BERT's segment (token type) embeddings
    normalizer: dict[str, bool] = field(default_factory=dict)  # lowercase / strip_accents (WordPiece)

    def add_to(self, w: GGUFWriter) -> None:
        if self.token_type_count is not None:
            w.add_token_type_count(self.token_type_count)
        w.add_tokenizer_model(self.model)
        if self.pre:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
        for typ, tid in self.special_ids.items():
            if typ in _ID_KEYS:
                getattr(w, f"add_{typ}_token_id")(tid)
        for typ, value in self.add_special.items():
            if typ in ("bos", "eos", "sep"):
                getattr(w, f"add_add_{typ}_token")(value)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            w.add_chat_template(self.chat_template)
        for key in ("lowercase", "strip_accents"):  # gguf-py's add_normalizer_lowercase / _strip_accents
            if key in self.normalizer:
                w.add_bool(f"tokenizer.ggml.normalizer.{key}", self.normalizer[key])


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def looks_special(token: str) -> bool:
    """llama.cpp's does_token_look_special: added tokens that act as control tokens."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


# -- SentencePiece ----------------------------------------------------------------------------


def _spm_vocab(model_dir: Path, n_vocab: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a SentencePiece model ({e})") from None
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    if sp.vocab_size() > n_vocab:
        raise ConvertError(f"{path}: {sp.vocab_size()} pieces, more than config.json's vocab_size {n_vocab}")
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = int(
            TokenType.UNKNOWN
            if sp.IsUnknown(i)
            else TokenType.CONTROL
            if sp.IsControl(i)
            else TokenType.UNUSED
            if sp.IsUnused(i)
            else TokenType.BYTE
            if sp.IsByte(i)
            else TokenType.NORMAL
        )
    for text, tid in _optional_json(model_dir / "added_tokens.json").items():
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            tokens[tid], scores[tid], types[tid] = text, -1000.0, int(TokenType.USER_DEFINED)
    decoder = _optional_json(model_dir / "tokenizer_config.json").get("added_tokens_decoder", {})
    for key, data in decoder.items() if isinstance(decoder, dict) else []:
        tid, text = int(key), str(data.get("content", ""))
        if not 0 <= tid < n_vocab:
            continue
        if data.get("special") or looks_special(text):
            types[tid] = int(TokenType.CONTROL)
        else:
            text, types[tid] = text.replace("\u2581", " "), int(TokenType.USER_DEFINED)
        tokens[tid], scores[tid] = text, -1000.0
    return Vocab("llama", "default", tokens, types, scores)


# -- byte-level BPE (tokenizer.json) ------------------------------------------------------------


def _merges(model: dict[str, Any], path: Path) -> list[str]:
    merges = model.get("merges") or []
    if merges and isinstance(merges[0], list):  # transformers >= 4.45 writes pairs; spaces become U+0120
        return [
            " ".join("".join("\u0120" if c == " " else c for c in part) for part in pair) for pair in merges
        ]
    if not all(isinstance(m, str) for m in merges):
        raise ConvertError(f"{path}: 'model.merges' is neither strings nor pairs")
    return list(merges)


def _normalized_added(text: str, path: Path) -> str:
    """An added token that is not normalized, encoded and decoded again (as llama.cpp does)."""
    tok = hf_tokenizer(path)
    return str(tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False))


def _bpe_vocab(model_dir: Path, n_vocab: int, pre_override: str | None) -> Vocab:
    path = model_dir / "tokenizer.json"
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConvertError(
            f"{path}: a {model.get('type')} tokenizer"
            f"{' with byte_fallback' if model.get('byte_fallback') else ''}"
            " is not byte-level BPE; add its SentencePiece tokenizer.model to the directory"
        )
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = [a for a in data.get("added_tokens") or [] if isinstance(a, dict)]
    for a in added:
        vocab[str(a["content"])] = int(a["id"])
    reverse = {tid: text for text, tid in vocab.items()}
    if reverse and max(reverse) >= n_vocab:
        raise ConvertError(f"{path}: token id {max(reverse)} is beyond config.json's vocab_size {n_vocab}")
    added_by_id = {int(a["id"]): a for a in added}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        text = reverse[i]
        if i in added_by_id:
            a = added_by_id[i]
            if not a.get("normalized", True):
                text = _normalized_added(text, path)
            if a.get("special") or looks_special(text):
                types.append(int(TokenType.CONTROL))
            else:
                text = text.replace("\u2581", " ")
                types.append(int(TokenType.USER_DEFINED))
        else:
            types.append(int(TokenType.NORMAL))
        tokens.append(text)
    pre = detect_pre(path, data, pre_override)
    return Vocab("gpt2", pre, tokens, types, merges=_merges(model, path))


# -- special tokens -----------------------------------------------------------------------------


def _content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return str(entry["content"])
    return None


def _special_id(piece: Any) -> Any:
    """The token text of a ``{"SpecialToken": {"id": ...}}`` template piece, else None."""
    return piece.get("SpecialToken", {}).get("id") if isinstance(piece, dict) else None


def _template_flags(
    proc: dict[str, Any], tc: dict[str, Any], s: dict[str, Any], v: Vocab, types: list[str], latest: bool
) -> None:
    """add_bos/add_eos/add_sep from a TemplateProcessing (simple templates only, as llama.cpp).
    ``latest``: an unknown leading token becomes the BOS / CLS token where none is set."""
    single, pair = proc.get("single") or [], proc.get("pair") or []
    first = last = None
    if len(single) > 1:
        if first := _special_id(single[0]):
            if not tc:
                s["bos"] = first
            elif latest and first not in (s["bos"], s["cls"]):
                if not s["bos"]:
                    tc["bos_token"] = s["bos"] = first
                if not s["cls"]:
                    tc["cls_token"] = s["cls"] = first
            v.add_special["bos"] = first in (s["bos"], s["cls"])
        if last := _special_id(single[-1]):
            if not tc:
                s["eos"] = last
            elif last != s["eos"]:  # the trailing token becomes the EOS; the old EOS the EOT (or EOM)
                extra = next((t for t in ("eot", "eom") if t not in types), None)
                if extra:
                    types.append(extra)
                    tc[f"{extra}_token"] = s["eos"]
                tc["eos_token"] = s["eos"] = last
            v.add_special["eos"] = last == s["eos"]
    pair = pair[1 if first and _special_id(pair[0]) == first else 0 :] if pair else pair
    pair = pair[:-1] if pair and last and _special_id(pair[-1]) == last else pair
    if not pair or not all(isinstance(x, dict) for x in pair):
        return
    a, b = (x.get("Sequence", {}).get("id") for x in (pair[0], pair[-1]))
    middle = pair[1:-1]
    if a != "A" or b != "B" or not middle:
        return
    entry = _special_id(middle[0])
    add_sep = bool(entry and entry in (s["sep"], s["eos"]) and not last)  # A [sep] B
    if len(middle) == 2 and (entry := _special_id(middle[1])) and entry in (s["sep"], s["eos"]):
        add_sep = True  # A [sep] [eos] B
    v.add_special["sep"] = add_sep
    if add_sep and not s["sep"] and tc:
        tc["sep_token"] = s["eos"]


def _post_processor_flags(
    tok_json: dict[str, Any], tc: dict[str, Any], v: Vocab, types: list[str], latest: bool
) -> None:
    """add_bos/add_eos/add_sep from tokenizer.json's post-processor, as llama.cpp's converter reads it.

    A port of gguf-py's ``SpecialVocab._try_load_from_tokenizer_json``, quirks included: entries
    are compared as tokenizer_config.json (``tc``) spells them (a dict entry never equals a token
    text), and ``tc`` and ``types`` are updated in place as that code does. ``latest``: as the
    gguf-py of llama-cpp-python 0.3.36's llama.cpp (a ByteLevel processor adds no BOS/EOS unless
    told otherwise; see ``_template_flags``).
    """
    s = {k: tc.get(f"{k}_token") for k in ("bos", "cls", "eos", "sep")}
    if not s["bos"] and s["cls"] and tc:
        tc["bos_token"] = s["bos"] = s["cls"]
    if not s["eos"] and s["sep"] and tc:
        tc["eos_token"] = s["eos"] = s["sep"]
    post = tok_json.get("post_processor")
    for proc in post.get("processors", [post]) if isinstance(post, dict) else []:
        if not isinstance(proc, dict):
            continue
        if latest and proc.get("type") == "ByteLevel":
            v.add_special.setdefault("bos", False)
            v.add_special.setdefault("eos", False)
        elif proc.get("type") == "RobertaProcessing":
            v.add_special.update(bos=True, eos=True, sep=True)
            if not s["cls"] and tc:
                tc["cls_token"] = s["cls"] = proc.get("cls", [s["bos"]])[0]
            if not s["sep"] and tc:
                tc["sep_token"] = s["sep"] = proc.get("sep", [s["eos"]])[0]
        elif proc.get("type") == "TemplateProcessing":
            _template_flags(proc, tc, s, v, types, latest)


def _normalizer_flags(normalizer: Any, out: dict[str, bool]) -> None:
    """lowercase / strip_accents of a tokenizer.json normalizer (gguf-py's ``_parse_normalizer``):
    a Lowercase or StripAccents step, a BertNormalizer's settings (null: not written), or a Sequence."""
    if not isinstance(normalizer, dict):
        return
    kind = normalizer.get("type")
    if kind in ("Lowercase", "StripAccents"):
        out["lowercase" if kind == "Lowercase" else "strip_accents"] = True
    elif kind == "BertNormalizer":
        for key in ("lowercase", "strip_accents"):
            if normalizer.get(key) is not None:
                out[key] = bool(normalizer[key])
            elif key in normalizer:
                out.pop(key, None)
    elif kind == "Sequence":
        for step in normalizer.get("normalizers") or []:
            _normalizer_flags(step, out)


def _chat_template(model_dir: Path, tc: dict[str, Any]) -> Any:
    """tokenizer_config.json's chat_template, else chat_template.jinja (with any additional
    templates) or chat_template.json; a value that is not a string or a list is dropped."""
    alt: Any = None
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        alt = jinja.read_text(encoding="utf-8")
        if extra := list((model_dir / "additional_chat_templates").glob("*.jinja")):
            alt = [{"name": "default", "template": alt}] + [
                {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra
            ]
    elif (model_dir / "chat_template.json").is_file():
        alt = read_json(model_dir / "chat_template.json").get("chat_template")
    template = tc.get("chat_template", alt)
    return template if isinstance(template, (str, list)) else None


def _special_tokens(
    model_dir: Path,
    v: Vocab,
    n_vocab: int,
    *,
    tok_json: dict[str, Any] | None = None,
    latest: bool = False,
    types: tuple[str, ...] = SPECIAL_TYPES,
) -> None:
    """Special token ids, add_* flags and the chat template, in llama.cpp's order of precedence.

    special_tokens_map.json is not read: llama.cpp's converter does not read it either, and
    reading it would write ids that llama.cpp's files lack. ``tok_json``: the tokenizer.json to
    read (default: the directory's, if any). ``latest``: as the gguf-py of llama-cpp-python
    0.3.36's llama.cpp, which the WordPiece (BERT) vocabulary follows: the post-processor's add_*
    flags win over tokenizer_config.json's, and the normalizer's lowercase / strip_accents are kept.
    ``types``: the special token types read (SpecialVocab's ``special_token_types``).
    """
    tok_path = model_dir / "tokenizer.json"
    if tok_json is None:
        tok_json = read_json(tok_path) if tok_path.is_file() else {}
    tc = _optional_json(model_dir / "tokenizer_config.json")
    types = list(types)
    added = [a for a in tok_json.get("added_tokens") or [] if isinstance(a, dict)]
    if tok_json:
        if latest:
            _normalizer_flags(tok_json.get("normalizer"), v.normalizer)
        _post_processor_flags(tok_json, tc, v, types, latest)
    if tc:
        v.chat_template = _chat_template(model_dir, tc)
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool) and not (latest and typ in v.add_special):
                v.add_special[typ] = flag
            text = _content(tc.get(f"{typ}_token"))
            tid = next((a.get("id") for a in added if text is not None and a.get("content") == text), None)
            _set_id(v, typ, tid, n_vocab)
    config = _optional_json(model_dir / "config.json")
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for typ in types:
        tid = config.get(f"{typ}_token_id")
        _set_id(v, typ, text_config.get(f"{typ}_token_id") if tid is None else tid, n_vocab)


def _set_id(v: Vocab, typ: str, tid: Any, n_vocab: int) -> None:
    if isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < n_vocab and typ not in v.special_ids:
        v.special_ids[typ] = tid


def load_vocab(
    model_dir: Path, n_vocab: int, *, pre: str | None, add_prefix_space_key: bool, spm: bool = True
) -> Vocab:
    """The tokenizer of ``model_dir`` padded to ``n_vocab`` tokens.

    ``add_prefix_space_key``: copy tokenizer_config.json's ``add_prefix_space`` into
    ``tokenizer.ggml.add_space_prefix`` (llama.cpp does this for the llama architecture).
    ``spm``: read ``tokenizer.model`` when present; False: tokenizer.json only (llama.cpp's
    converters that know only byte-level BPE).
    """
    if not spm:
        if not (model_dir / "tokenizer.json").is_file():
            raise ConvertError(f"{model_dir}: no tokenizer.json (byte-level BPE)")
        v = _bpe_vocab(model_dir, n_vocab, pre)
    elif (model_dir / "tokenizer.model").is_file():
        v = _spm_vocab(model_dir, n_vocab)
    elif (model_dir / "tokenizer.json").is_file():
        v = _bpe_vocab(model_dir, n_vocab, pre)
    else:
        raise ConvertError(f"{model_dir}: no tokenizer.model (SentencePiece) or tokenizer.json (BPE)")
    _special_tokens(model_dir, v, n_vocab)
    if add_prefix_space_key:
        flag = _optional_json(model_dir / "tokenizer_config.json").get("add_prefix_space")
        if isinstance(flag, bool):
            v.add_space_prefix = flag
    return v
