"""``Tokenizer``: text <-> token ids with llama.cpp's semantics, built from GGUF metadata."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from typing import Any

from splitllm.tokenizer.bpe import BpeEncoder, SpmBpeEncoder, decode_byte_level
from splitllm.tokenizer.errors import TokenizerError
from splitllm.tokenizer.spm import SentencePieceEncoder, byte_token_text, merge_bytes
from splitllm.tokenizer.ugm import UnigramEncoder
from splitllm.tokenizer.vocab import TokenAttr, Vocab, load_vocab
from splitllm.tokenizer.wpm import WordPieceEncoder

_SPACE = "\u2581".encode()  # "▁", SentencePiece's visible space
_UNKNOWN, _CONTROL, _USER = int(TokenAttr.UNKNOWN), int(TokenAttr.CONTROL), int(TokenAttr.USER_DEFINED)
_NORMAL, _BYTE = int(TokenAttr.NORMAL), int(TokenAttr.BYTE)
_LSTRIP, _RSTRIP = int(TokenAttr.LSTRIP), int(TokenAttr.RSTRIP)
_ASCII_SPACE = b" \t\n\v\f\r"  # C isspace()


class Tokenizer:
    """A GGUF vocabulary's tokenizer, following llama.cpp (as llama-cpp-python exposes it).

    ``tokenize`` is ``llama_tokenize``; ``token_to_piece`` is ``llama_token_to_piece``;
    ``detokenize`` is llama-cpp-python's ``Llama.detokenize`` (pieces joined, one leading space
    dropped after BOS); ``llama_detokenize`` is the C function of that name.

    WordPiece vocabularies (``bert``) render "▁" as a space, as SPM does: "▁hello" "world" is
    " helloworld", and ``detokenize`` drops the space in front after [CLS] (the BOS token).
    Unigram vocabularies (``t5``) render their tokens as SPM does too.
    """

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._pieces: list[bytes | None] = [None] * vocab.n_vocab  # rendered with special=True
        self._special = [(i, vocab.tokens[i].encode("utf-8")) for i in vocab.special_cache]
        self._bpe: BpeEncoder | SpmBpeEncoder | None = None
        self._sp: SentencePieceEncoder | None = None
        self._spm_bytes: dict[bytes, int] | None = None
        self._byte_token: dict[int, int] = {}
        self._wpm: WordPieceEncoder | None = None
        self._ugm: UnigramEncoder | None = None
        if vocab.model == "t5":
            self._ugm = UnigramEncoder(vocab.tokens, vocab.scores, vocab.type_attrs, vocab.attrs,
                                       vocab.special["unk"], vocab.precompiled_charsmap,
                                       add_space_prefix=vocab.add_space_prefix,
                                       remove_extra_whitespaces=vocab.remove_extra_whitespaces)
        elif vocab.model == "bert":
            self._wpm = WordPieceEncoder(vocab.token_to_id, vocab.special["unk"], lowercase=vocab.lowercase,
                                         strip_accents=vocab.strip_accents)
        elif vocab.pre is not None and vocab.pre.spm_style:
            self._bpe = SpmBpeEncoder(vocab.tokens, vocab.token_to_id, vocab.merges, vocab.pre)
        elif vocab.pre is not None:
            self._bpe = BpeEncoder(vocab.tokens, vocab.token_to_id, vocab.merges, vocab.pre)
        else:
            self._init_spm()

    def __call__(self) -> Any:
        """llama-cpp-python's ``Llama.tokenizer()``: ``Model.tokenizer`` is this object, and calling
        it gives a :class:`splitllm.model_compat.LlamaTokenizer` over it (tokenize / detokenize /
        encode / decode with llama-cpp-python's signatures)."""
        from splitllm.model_compat import LlamaTokenizer

        return LlamaTokenizer(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Builds the tokenizer from GGUF metadata (key -> int/float/bool/str/list)."""
        return cls(load_vocab(metadata))

    def _init_spm(self) -> None:
        v = self.vocab
        for b in range(256):  # llama.cpp's byte_to_token: <0xXX>, else the byte itself as a token
            tid = v.token_to_id.get(byte_token_text(b))
            if tid is None and b < 0x80:
                tid = v.token_to_id.get(chr(b))
            if tid is not None:
                self._byte_token[b] = tid
        byte_ids = [v.token_to_id.get(byte_token_text(b)) for b in range(256)]
        if all(i is not None for i in byte_ids):
            self._sp = SentencePieceEncoder(v.tokens, v.scores, byte_ids, v.special["unk"])  # type: ignore[arg-type]

    # ---- vocabulary facts ----

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def vocab_type(self) -> str:
        """"spm" (tokenizer.ggml.model = llama), "bpe" (gpt2), "wpm" (bert) or "ugm" (t5)."""
        if self._wpm is not None:
            return "wpm"
        if self._ugm is not None:
            return "ugm"
        return "spm" if self.vocab.pre is None else "bpe"

    @property
    def pre(self) -> str | None:
        """The BPE pre-tokenizer's name (None for SPM)."""
        return None if self.vocab.pre is None else self.vocab.pre.name

    @property
    def bos_id(self) -> int | None:
        return self.vocab.special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.special["eos"]

    @property
    def eot_id(self) -> int | None:
        return self.vocab.special["eot"]

    @property
    def unk_id(self) -> int | None:
        return self.vocab.special["unk"]

    @property
    def pad_id(self) -> int | None:
        return self.vocab.special["pad"]

    @property
    def sep_id(self) -> int | None:
        """The separator ([SEP] in WordPiece vocabularies, which end every tokenized text with it)."""
        return self.vocab.special["sep"]

    @property
    def mask_id(self) -> int | None:
        return self.vocab.special["mask"]

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation (EOS, EOT, <|im_end|>, ... as llama.cpp decides them)."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def add_sep(self) -> bool:
        return self.vocab.add_sep

    @property
    def add_space_prefix(self) -> bool:
        return self.vocab.add_space_prefix

    def is_eog(self, token: int) -> bool:
        return token in self.vocab.eog_ids

    def _check(self, token: int) -> int:
        token = int(token)
        if not 0 <= token < self.vocab.n_vocab:
            raise TokenizerError(f"token id {token} is outside the vocabulary of {self.vocab.n_vocab} tokens")
        return token

    def token_text(self, token: int) -> str:
        """The token's text as stored in the vocabulary ("▁Hello", "Ġworld", "<|im_end|>")."""
        return self.vocab.tokens[self._check(token)]

    def token_attr(self, token: int) -> TokenAttr:
        return TokenAttr(self.vocab.attrs[self._check(token)])

    # ---- text -> tokens ----

    def tokenize(self, text: bytes | str, *, add_bos: bool = True, special: bool = False,
                 space_prefix: bool = True) -> list[int]:
        """Token ids of ``text`` (``llama_tokenize``).

        ``add_bos`` adds BOS (and EOS) only where the vocabulary asks for them; ``special`` parses
        control tokens such as "<|im_start|>" in the text (user-defined tokens always are).
        WordPiece vocabularies get [CLS] (BOS) in front and [SEP] at the end whenever ``add_bos``,
        whatever their add_bos/add_eos/add_sep flags say, as in llama.cpp. Unigram vocabularies
        normalize each piece of text between special tokens on its own (space prefix included).
        ``space_prefix=False`` leaves out the space a SentencePiece BPE vocabulary that adds one puts in
        front of the text (not after special tokens inside it): the tokens of text that continues
        other text, as Meta's CodeLlama tokenizes an infilling suffix.
        """
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if self._wpm is not None:
            return self._tokenize_wpm(raw, add_bos, special)
        v = self.vocab
        out: list[int] = []
        if add_bos and v.add_bos:
            out.append(v.special["bos"])  # type: ignore[arg-type]
        prev_special = space_prefix  # SPM: a space goes in front of text at the start and after specials
        for fragment in self._partition(raw, special):
            if isinstance(fragment, int):
                out.append(fragment)
                prev_special = True
            elif self._bpe is not None:
                out += self._bpe.encode(fragment)
            elif self._ugm is not None:
                out += self._ugm.encode(fragment)
            else:
                if v.add_space_prefix and prev_special:
                    fragment = b" " + fragment
                out += self._encode_spm(fragment.replace(b" ", _SPACE))
                prev_special = False
        if add_bos and v.add_eos:
            out.append(v.special["eos"])  # type: ignore[arg-type]
        return out

    def _tokenize_wpm(self, raw: bytes, add_special: bool, parse_special: bool) -> list[int]:
        bos, sep = self.vocab.special["bos"], self.vocab.special["sep"]
        if add_special and (bos is None or sep is None):  # llama.cpp asserts here
            missing = "BOS ([CLS])" if bos is None else "separator ([SEP])"
            raise TokenizerError(f"the WordPiece vocabulary has no {missing} token to add")
        out = [bos] if add_special else []
        for fragment in self._partition(raw, parse_special):
            if isinstance(fragment, int):
                out.append(fragment)
            else:
                out += self._wpm.encode(fragment)  # type: ignore[union-attr]
        if add_special:
            out.append(sep)
        return out  # type: ignore[return-value]

    def _partition(self, raw: bytes, parse_special: bool) -> list[bytes | int]:
        """Splits out special-token texts, longest first (llama.cpp's tokenizer_st_partition)."""
        fragments: list[bytes | int] = [raw] if raw else []
        attrs = self.vocab.attrs
        for tid, text in self._special:
            if not parse_special and attrs[tid] & (_CONTROL | _UNKNOWN):
                continue
            if not any(isinstance(f, bytes) and text in f for f in fragments):
                continue
            split: list[bytes | int] = []
            for f in fragments:
                if isinstance(f, int) or text not in f:
                    split.append(f)
                    continue
                parts = f.split(text)
                for k, part in enumerate(parts):
                    if k > 0:
                        split.append(tid)
                        if attrs[tid] & _RSTRIP:
                            part = part.lstrip(_ASCII_SPACE)
                    if k < len(parts) - 1 and attrs[tid] & _LSTRIP:
                        part = part.rstrip(_ASCII_SPACE)
                    if part:
                        split.append(part)
            fragments = split
        return fragments

    def _encode_spm(self, text: bytes) -> list[int]:
        if self._sp is not None:
            try:
                return self._sp.encode(text.decode("utf-8"))
            except UnicodeDecodeError:
                pass
        if self._spm_bytes is None:
            self._spm_bytes = {t.encode("utf-8"): i for t, i in self.vocab.token_to_id.items()}
        return merge_bytes(text, self._spm_bytes, self.vocab.scores, self._byte_token)

    # ---- tokens -> text ----

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for (``llama_token_to_piece`` with lstrip 0).

        Control and unknown tokens render as nothing unless ``special``.
        """
        token = self._check(token)
        if not special and self.vocab.attrs[token] & (_CONTROL | _UNKNOWN):
            return b""
        piece = self._pieces[token]
        if piece is None:
            piece = self._pieces[token] = self._render(token)
        return piece

    def _render(self, token: int) -> bytes:
        attr, text = self.vocab.attrs[token], self.vocab.tokens[token]
        if attr & (_UNKNOWN | _CONTROL | _USER):
            return text.encode("utf-8")
        if attr & _NORMAL and isinstance(self._bpe, BpeEncoder):
            return decode_byte_level(text)
        if attr & _NORMAL:
            return text.replace("\u2581", " ").encode("utf-8")
        if attr & _BYTE:
            return bytes([_strtol_hex(text[3:5]) & 0xFF])
        return b""  # unused and undefined tokens

    def detokenize(self, tokens: Iterable[int], *, special: bool = False) -> bytes:
        """Bytes of ``tokens`` as llama-cpp-python's ``Llama.detokenize`` gives them.

        The pieces are joined; when the first token is BOS, one leading space is dropped (the
        space SentencePiece puts in front of the text).
        """
        toks = [int(t) for t in tokens]
        out = b"".join([self.token_to_piece(t, special=special) for t in toks])
        if toks and toks[0] == self.bos_id and out[:1] == b" ":
            out = out[1:]
        return out

    def llama_detokenize(self, tokens: Iterable[int], *, remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """Bytes of ``tokens`` as llama.cpp's ``llama_detokenize`` gives them.

        The first piece loses one leading space when the vocabulary adds a space prefix (unless
        ``remove_special`` dropped a leading BOS); BOS/EOS are dropped when ``remove_special`` and
        the vocabulary adds them; vocabularies with ``clean_spaces`` get " ," " 's" etc. tidied.
        """
        toks = [int(t) for t in tokens]
        v = self.vocab
        remove_space = v.add_space_prefix
        if remove_special and v.add_bos and toks and toks[0] == v.special["bos"]:
            remove_space = False
            toks = toks[1:]
        if remove_special and v.add_eos and toks and toks[-1] == v.special["eos"]:
            toks = toks[:-1]
        pieces = [self.token_to_piece(t, special=unparse_special) for t in toks]
        if pieces and remove_space and pieces[0][:1] == b" ":
            pieces[0] = pieces[0][1:]
        text = b"".join(pieces)
        return _clean_spaces(text) if v.clean_spaces else text

    def stream_decoder(self, *, special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, special=special)


def _strtol_hex(s: str) -> int:
    """C ``strtol(s, NULL, 16)`` for the two hex digits of "<0xXX>" (0 when there are none)."""
    s = s.lstrip(" \t\n\v\f\r")
    sign = -1 if s[:1] == "-" else 1
    s = s[1:] if s[:1] in "+-" else s
    digits = ""
    for c in s:
        if c not in "0123456789abcdefABCDEF":
            break
        digits += c
    return sign * int(digits, 16) if digits else 0


def _clean_spaces(text: bytes) -> bytes:
    """llama_detokenize's clean-up for BPE vocabularies: " ?" " !" " ." " ," -> no space,
    " ' " -> "'", and " 's" " 'm" " 're" " 've" lose their space."""
    if not any(p in text for p in (b" ?", b" !", b" .", b" ,", b" '")):
        return text
    # 1: drop a space before ? ! . ,
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    # 2: a lone apostrophe between spaces loses both spaces
    src, out = bytes(out), bytearray(out[:1])
    prev, i = src[:1], 1
    while i < len(src):
        x = src[i:i + 1]
        if x == b"'" and i + 1 < len(src) and prev == b" " and src[i + 1] == 0x20:
            out.pop()
            prev, i = b"\0", i + 2  # the space after it is dropped, and no longer counts as a space
            out += x
            continue
        out += x
        prev, i = x, i + 1
    # 3: " 's" " 'm" " 're" " 've" lose their space
    src, out = bytes(out), bytearray(out[:1])
    for i in range(1, len(src)):
        if src[i - 1] == 0x20 and src[i] == 0x27 and i + 1 < len(src):
            nxt2 = src[i + 1:i + 3]
            if nxt2[:1] in (b"s", b"m") or (i + 2 < len(src) and nxt2 in (b"re", b"ve")):
                out.pop()
        out.append(src[i])
    return bytes(out)


class StreamDecoder:
    """Turns generated tokens into text as they come, holding back partial UTF-8 sequences.

    ``feed(token)`` returns the text completed by that token; ``flush()`` returns what is left at
    the end (an incomplete sequence becomes U+FFFD). The concatenation of all returned text is
    ``tokenizer.detokenize(tokens, special=special).decode("utf-8", "replace")``.
    """

    def __init__(self, tokenizer: Tokenizer, *, special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._drop_space = False  # first token was BOS and nothing has been emitted since

    def feed(self, token: int) -> str:
        piece = self._tokenizer.token_to_piece(token, special=self._special)
        if not self._started:
            self._started = True
            self._drop_space = int(token) == self._tokenizer.bos_id
        if self._drop_space and piece:
            self._drop_space = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return self._utf8.decode(piece)

    def feed_many(self, tokens: Iterable[int]) -> str:
        return "".join([self.feed(t) for t in tokens])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
