"""Byte-level BPE (``tokenizer.ggml.model`` = ``gpt2``), run by the ``tokenizers`` library.

llama.cpp's ``llm_tokenizer_bpe_session`` splits the text with the pre-tokenizer's regular
expressions, writes each piece's UTF-8 bytes as GPT-2's printable byte characters and merges
adjacent symbols by merge rank (lowest first, leftmost on ties). A ``tokenizers`` BPE model with a
pre-tokenizer made of the same ``Split`` expressions and a ``ByteLevel`` step does the same.

Text that is not valid UTF-8 is decoded the way llama.cpp decodes it (``unicode_cpts_from_utf8``:
each bad byte becomes U+FFFD, overlong forms and surrogates are accepted) and takes a slower path.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from splitllm.tokenizer.errors import TokenizerError
from splitllm.tokenizer.pretok import PreTokenizer


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # "!".."~" "¡".."¬" "®".."ÿ"
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_TO_CHAR = _bytes_to_unicode()
_UNK_TEXT = "\u2047splitllm-unknown\u2047"
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


def decode_byte_level(text: str) -> bytes:
    """The bytes a byte-level token text stands for (llama.cpp's ``llama_decode_text``)."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError:
        pass
    out = bytearray()
    for c in text:
        if c in CHAR_TO_BYTE:
            out.append(CHAR_TO_BYTE[c])
        else:  # llama.cpp's marker for a character outside the byte table
            out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)


# Continuation bytes expected after a lead byte, by its top five bits.
_CONTINUATIONS = [0] * 16 + [-1] * 8 + [1] * 4 + [2] * 2 + [3] + [-1]


def llama_codepoints(data: bytes) -> list[int]:
    """Code points as llama.cpp reads UTF-8: a bad byte is U+FFFD; lengths come from the lead byte."""
    cps: list[int] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        need = _CONTINUATIONS[b >> 3]  # -1: not a lead byte
        if need < 0 or i + need >= n or any(data[i + k] & 0xC0 != 0x80 for k in range(1, need + 1)):
            cps.append(0xFFFD if need else b)
            i += 1
            continue
        cp = b & (0x7F, 0x1F, 0x0F, 0x07)[need]
        for k in range(1, need + 1):
            cp = cp << 6 | data[i + k] & 0x3F
        cps.append(cp)
        i += need + 1
    return cps


def _llama_utf8(cp: int) -> bytes:
    """UTF-8 of a code point the way llama.cpp writes it (surrogates included)."""
    return chr(cp).encode("utf-8", "surrogatepass")


class BpeEncoder:
    """Pre-tokenizer + byte-level BPE for one vocabulary."""

    def __init__(self, tokens: Sequence[str], token_to_id: dict[str, int],
                 merges: Sequence[tuple[str, str]], pre: PreTokenizer) -> None:
        usable = [(a, b) for a, b in merges if a in token_to_id and b in token_to_id and a + b in token_to_id]
        # A byte character missing from the vocabulary stays a symbol in llama.cpp, keeping its
        # neighbours from merging, and is dropped at the end. An unknown-token placeholder does
        # the same here; its id (one past the vocabulary) is filtered out of the results.
        self._unk = len(tokens)
        vocab = {**token_to_id, _UNK_TEXT: self._unk}
        try:
            model = models.BPE(vocab=vocab, merges=usable, unk_token=_UNK_TEXT, fuse_unk=False,
                               ignore_merges=pre.ignore_merges)
        except Exception as e:  # the Rust side reports malformed vocabularies as plain exceptions
            raise TokenizerError(f"cannot build the BPE model from the GGUF vocabulary: {e}") from e
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        self._split = pre_tokenizers.Sequence(splits)
        self._tk = HFTokenizer(model)
        self._tk.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    def encode(self, data: bytes) -> list[int]:
        """Token ids of one fragment of raw text (no special tokens in it)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._encode_codepoints(llama_codepoints(data))
        ids = self._tk.encode(text, add_special_tokens=False).ids
        return [i for i in ids if i != self._unk] if self._unk in ids else ids

    def split(self, text: str) -> list[str]:
        """The pieces the pre-tokenizer cuts ``text`` into (before byte-level encoding)."""
        return [piece for piece, _ in self._split.pre_tokenize_str(text)]

    def _encode_codepoints(self, cps: list[int]) -> list[int]:
        if any(cp > 0x10FFFF for cp in cps):
            raise TokenizerError("text holds a UTF-8 sequence for a code point above U+10FFFF")
        # Surrogates cannot cross into Rust; split with a private-use stand-in (same category for
        # llama.cpp: "other"), then encode the real bytes.
        stand_in = "".join("\ue000" if 0xD800 <= cp <= 0xDFFF else chr(cp) for cp in cps)
        ids: list[int] = []
        for _, (start, end) in self._split.pre_tokenize_str(stand_in):
            word = b"".join(_llama_utf8(cp) for cp in cps[start:end])
            symbols = "".join(BYTE_TO_CHAR[b] for b in word)
            ids += [t.id for t in self._tk.model.tokenize(symbols) if t.id != self._unk]
        return ids


class SpmBpeEncoder:
    """SentencePiece-style BPE (``tokenizer.ggml.model`` = ``gemma4``), as llama.cpp's
    LLAMA_VOCAB_PRE_TYPE_GEMMA4 runs it: spaces become U+2581, the text is cut into runs of
    newlines and runs of anything else; a newline run that is itself a token is that token, other
    pieces are merged by rank over their UTF-8 characters (no byte-level mapping); a character
    outside the vocabulary becomes the ``<0xXX>`` tokens of its bytes (those the vocabulary has)."""

    def __init__(self, tokens: Sequence[str], token_to_id: dict[str, int],
                 merges: Sequence[tuple[str, str]], pre: PreTokenizer) -> None:
        usable = [(a, b) for a, b in merges if a in token_to_id and b in token_to_id and a + b in token_to_id]
        self._ids = token_to_id
        self._unk = len(tokens)
        try:
            self._model = models.BPE(vocab={**token_to_id, _UNK_TEXT: self._unk}, merges=usable,
                                     unk_token=_UNK_TEXT, fuse_unk=False)
        except Exception as e:  # the Rust side reports malformed vocabularies as plain exceptions
            raise TokenizerError(f"cannot build the BPE model from the GGUF vocabulary: {e}") from e
        self._split = pre_tokenizers.Split(Regex(pre.regexes[0]), behavior="isolated")

    def encode(self, data: bytes) -> list[int]:
        """Token ids of one fragment of raw text (no special tokens in it)."""
        cps = llama_codepoints(data)
        if any(cp > 0x10FFFF for cp in cps):
            raise TokenizerError("text holds a UTF-8 sequence for a code point above U+10FFFF")
        text = "".join("\ufffd" if 0xD800 <= cp <= 0xDFFF else chr(cp) for cp in cps).replace(" ", "\u2581")
        ids: list[int] = []
        for piece, _ in self._split.pre_tokenize_str(text):
            if piece.strip("\n") == "" and piece in self._ids:
                ids.append(self._ids[piece])
                continue
            raw = piece.encode("utf-8")
            for t in self._model.tokenize(piece):
                if t.id != self._unk:
                    ids.append(t.id)
                    continue
                for b in raw[t.offsets[0]: t.offsets[1]]:  # byte fallback (offsets in bytes), as llama.cpp's
                    tid = self._ids.get(f"<0x{b:02X}>")
                    if tid is not None:
                        ids.append(tid)
        return ids
