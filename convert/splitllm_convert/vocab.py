"""Tokenizer metadata as llama.cpp's convert_hf_to_gguf.py writes it.

``tokenizer.model`` (SentencePiece) wins when present and gives ``tokenizer.ggml.model = llama``
with scores; otherwise a byte-level BPE ``tokenizer.json`` gives ``gpt2`` with merges and a
``pre`` name (see pretok.py). Both are padded to config.json's ``vocab_size`` with ``[PADn]``
tokens. Special token ids, add_bos/add_eos and the chat template come from tokenizer_config.json
(special_tokens_map.json fills entries it lacks), tokenizer.json's added tokens and
post-processor, and config.json's ``*_token_id``, in llama.cpp's order of precedence.
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
_ID_KEYS = {
    "bos": "bos",
    "eos": "eos",
    "unk": "unk",
    "sep": "sep",
    "pad": "pad",
    "mask": "mask",
}  # GGUF has no cls


@dataclass
class Vocab:
    """Everything ``tokenizer.*`` in the GGUF file, gathered before writing."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    add_space_prefix: bool | None = None
    chat_template: Any = None

    def add_to(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
        for typ, tid in self.special_ids.items():
            if typ in _ID_KEYS:
                getattr(w, f"add_{_ID_KEYS[typ]}_token_id")(tid)
        for typ, value in self.add_special.items():
            if typ in ("bos", "eos", "sep"):
                getattr(w, f"add_add_{typ}_token")(value)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


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


def _post_processor_flags(tok_json: dict[str, Any], cfg: dict[str, Any], v: Vocab) -> None:
    """add_bos/add_eos from a TemplateProcessing post-processor (simple templates only, as llama.cpp)."""
    post = tok_json.get("post_processor") or {}
    bos, cls_ = _content(cfg.get("bos_token")), _content(cfg.get("cls_token"))
    for proc in post.get("processors", [post]) if isinstance(post, dict) else []:
        if proc.get("type") == "RobertaProcessing":
            v.add_special.update(bos=True, eos=True, sep=True)
        if proc.get("type") != "TemplateProcessing":
            continue
        single = proc.get("single") or []
        if len(single) > 1:
            first = single[0].get("SpecialToken", {}).get("id")
            last = single[-1].get("SpecialToken", {}).get("id")
            if first:
                v.add_special["bos"] = first in (bos, cls_) if cfg else True
            if last:  # llama.cpp then treats the trailing token as the EOS, so this is always true
                v.add_special["eos"] = True


def _special_tokens(model_dir: Path, v: Vocab, n_vocab: int) -> None:
    tok_path = model_dir / "tokenizer.json"
    tok_json = read_json(tok_path) if tok_path.is_file() else {}
    cfg = {
        **_optional_json(model_dir / "special_tokens_map.json"),
        **_optional_json(model_dir / "tokenizer_config.json"),
    }
    added = [a for a in tok_json.get("added_tokens") or [] if isinstance(a, dict)]
    if tok_json:
        _post_processor_flags(tok_json, cfg, v)
    if cfg:
        template = cfg.get("chat_template")
        if template is None and (model_dir / "chat_template.jinja").is_file():
            template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        elif template is None and (model_dir / "chat_template.json").is_file():
            template = read_json(model_dir / "chat_template.json").get("chat_template")
        v.chat_template = template if isinstance(template, (str, list)) else None
    for typ in SPECIAL_TYPES:
        if isinstance(cfg.get(f"add_{typ}_token"), bool):
            v.add_special[typ] = cfg[f"add_{typ}_token"]
        text = _content(cfg.get(f"{typ}_token"))
        tid = next((a.get("id") for a in added if text is not None and a.get("content") == text), None)
        _set_id(v, typ, tid, n_vocab)
    config = _optional_json(model_dir / "config.json")
    for typ in SPECIAL_TYPES:
        _set_id(v, typ, config.get(f"{typ}_token_id"), n_vocab)


def _set_id(v: Vocab, typ: str, tid: Any, n_vocab: int) -> None:
    if isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < n_vocab and typ not in v.special_ids:
        v.special_ids[typ] = tid


def load_vocab(model_dir: Path, n_vocab: int, *, pre: str | None, add_prefix_space_key: bool) -> Vocab:
    """The tokenizer of ``model_dir`` padded to ``n_vocab`` tokens.

    ``add_prefix_space_key``: copy tokenizer_config.json's ``add_prefix_space`` into
    ``tokenizer.ggml.add_space_prefix`` (llama.cpp does this for the llama architecture).
    """
    if (model_dir / "tokenizer.model").is_file():
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
