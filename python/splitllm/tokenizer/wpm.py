"""WordPiece (``tokenizer.ggml.model`` = ``bert``), as llama.cpp's ``llm_tokenizer_wpm_session`` does it.

BERT-style embedding models (all-MiniLM, bge, e5, ...) use it. llama.cpp's GGUF vocabulary writes a
word-initial piece "x" as "▁x" and a continuation "##x" as "x". Tokenizing a piece of text (special
tokens already cut out):

1. UTF-8 is read as llama.cpp reads it (a bad byte is U+FFFD; overlong forms and surrogates pass).
2. With ``strip_accents``, each code point is replaced by the *first* code point of its canonical
   decomposition (llama.cpp's ``unicode_cpts_normalize_nfd`` is one code point in, one out: "é" is
   "e", a Hangul syllable is its leading consonant jamo).
3. Whitespace (llama.cpp's list: ``\\t``-``\\r``, space, U+0085, U+00A0, U+1680, U+2000-U+200A,
   U+2028, U+2029, U+202F, U+205F, U+3000) ends a word; U+0000, U+FFFD and control characters
   (categories Cc, Cf, Co, Cs) are dropped; with ``strip_accents`` so are marks (Mn, Mc, Me).
4. With ``lowercase``, a code point becomes its simple lowercase mapping (one code point: "İ" is
   "i", not "i̇").
5. Punctuation (P*), ASCII symbols (S* below U+007F) and CJK ideographs (llama.cpp's ranges) are
   words of their own; every other code point is appended to the current word.
6. Each word gets "▁" in front and is cut greedily, longest token first, from left to right; a word
   with a part that no token matches becomes one unknown token.

Character classes come from Python's ``unicodedata``, derived the way llama.cpp's
``scripts/gen-unicode-data.py`` derives its tables. llama.cpp's tables are Unicode 15.1; the marks,
punctuation, format characters and lowercase pairs assigned in Unicode 14.0-15.1 are listed here
for an older ``unicodedata`` (Python 3.10: Unicode 13.0, 3.11: 14.0, 3.12: 15.0). With them the
result of every code point, with each normalizer setting, is the one llama.cpp's
``unicode-data.cpp`` gives (checked on all 0x110000 code points under Python 3.10 to 3.13). Known
remaining difference: under a Python whose ``unicodedata`` is newer than 15.1 (3.14: Unicode 16.0),
the code points assigned since (e.g. U+1C89) follow their new category, lowercase and decomposition
here, while llama.cpp takes them as unassigned (appended to the word as they are).

``TokenizerError`` is raised where llama.cpp has no answer: a code point above U+10FFFF in the
text (llama.cpp's ``unicode_cpt_to_utf8`` throws through ``llama_tokenize`` and the process
terminates), and a word no tokens spell when the vocabulary has no unknown token (llama.cpp puts
the invalid id -1 in the output).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from splitllm.tokenizer.bpe import llama_codepoints
from splitllm.tokenizer.errors import TokenizerError

PHANTOM_SPACE = "\u2581"  # "▁", put in front of every word

# llama.cpp's unicode_set_whitespace (Unicode's White_Space property).
WHITESPACE = frozenset((*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                        0x2028, 0x2029, 0x202F, 0x205F, 0x3000))

# llama.cpp's is_chinese_char (the 0x2B920 start follows Hugging Face's code, as llama.cpp notes).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

# Code points assigned in Unicode 14.0-15.1 that matter here, as llama.cpp's tables have them, for
# an older unicodedata that calls them unassigned (Cn; Python 3.10 is Unicode 13.0, 3.11 is 14.0):
# marks, punctuation and format characters by category initial (new letters and symbols are
# appended to the word, as unassigned code points are), and the new lowercase pairs (start, end,
# offset to the lowercase letter).
_NEWER = {
    "M": ((0x00898, 0x0089F), (0x008CA, 0x008D2), (0x00C3C, 0x00C3C), (0x00CF3, 0x00CF3), (0x00ECE, 0x00ECE),
          (0x01715, 0x01715), (0x0180F, 0x0180F), (0x01AC1, 0x01ACE), (0x01DFA, 0x01DFA), (0x10EFD, 0x10EFF),
          (0x10F82, 0x10F85), (0x11070, 0x11070), (0x11073, 0x11074), (0x110C2, 0x110C2), (0x11241, 0x11241),
          (0x11F00, 0x11F01), (0x11F03, 0x11F03), (0x11F34, 0x11F3A), (0x11F3E, 0x11F42), (0x13440, 0x13440),
          (0x13447, 0x13455), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1E08F, 0x1E08F), (0x1E2AE, 0x1E2AE),
          (0x1E4EC, 0x1E4EF)),
    "P": ((0x0061D, 0x0061D), (0x01B7D, 0x01B7E), (0x02E53, 0x02E5D), (0x10F86, 0x10F89), (0x116B9, 0x116B9),
          (0x11B00, 0x11B09), (0x11F43, 0x11F4F), (0x12FF1, 0x12FF2)),
    "C": ((0x00890, 0x00891), (0x13439, 0x1343F)),
}
_NEWER_LOWER = ((0x2C2F, 0x2C2F, 0x30), (0xA7C0, 0xA7C0, 1), (0xA7D0, 0xA7D0, 1), (0xA7D6, 0xA7D6, 1),
                (0xA7D8, 0xA7D8, 1), (0x10570, 0x1057A, 0x27), (0x1057C, 0x1058A, 0x27),
                (0x1058C, 0x10592, 0x27), (0x10594, 0x10595, 0x27))


def _category(ch: str) -> str:
    """The general category's first letter, as llama.cpp's tables have it ("?" when unassigned)."""
    cat = unicodedata.category(ch)
    if cat == "Cn":
        cp = ord(ch)
        for initial, ranges in _NEWER.items():
            if any(lo <= cp <= hi for lo, hi in ranges):
                return initial
        return "?"
    return cat[0]


def _lower(ch: str) -> str:
    """Unicode's simple lowercase mapping (one code point), as llama.cpp's unicode_tolower."""
    low = ch.lower()
    if len(low) == 1:
        if low == ch and unicodedata.category(ch) == "Cn":
            cp = ord(ch)
            return next((chr(cp + d) for lo, hi, d in _NEWER_LOWER if lo <= cp <= hi), ch)
        return low
    return "i" if ch == "\u0130" else ch  # U+0130 is the only one whose full mapping is longer


def is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def normalize_char(cp: int, *, lowercase: bool, strip_accents: bool) -> str:
    """What llama.cpp's WPM pre-processing makes of one code point: " " (ends the word), ""
    (dropped), " x " (``x`` is a word of its own) or the character to append to the word."""
    ch = chr(cp)
    if strip_accents:
        ch = unicodedata.normalize("NFD", ch)[0]
        cp = ord(ch)
    if cp in WHITESPACE:
        return " "
    cat = _category(ch)
    if cp in (0, 0xFFFD) or cat == "C" or (strip_accents and cat == "M"):
        return ""
    out = _lower(ch) if lowercase else ch
    if cat == "P" or (cp < 0x7F and cat == "S") or is_cjk(cp):
        return f" {out} "
    return out


class _CharMap(dict):
    """code point -> normalize_char(...), filled in as code points are met (a str.translate table)."""

    def __init__(self, lowercase: bool, strip_accents: bool) -> None:
        super().__init__()
        self.lowercase, self.strip_accents = lowercase, strip_accents
        for cp in range(0x80):
            self[cp] = normalize_char(cp, lowercase=lowercase, strip_accents=strip_accents)

    def __missing__(self, cp: int) -> str:
        out = self[cp] = normalize_char(cp, lowercase=self.lowercase, strip_accents=self.strip_accents)
        return out


class WordPieceEncoder:
    """llama.cpp's WPM tokenizer for one vocabulary (``token_to_id`` maps GGUF token texts)."""

    _CACHE_SIZE = 1 << 16

    def __init__(self, token_to_id: Mapping[str, int], unk_id: int | None, *, lowercase: bool,
                 strip_accents: bool) -> None:
        self._token_to_id = token_to_id
        self._unk = unk_id
        self._max_len = max((len(t) for t in token_to_id), default=0)  # in code points
        self._map = _CharMap(lowercase, strip_accents)
        self._cache: dict[str, list[int]] = {}

    def words(self, data: bytes | str) -> list[str]:
        """The words llama.cpp's ``preprocess`` cuts ``data`` into (without the "▁" in front)."""
        try:
            text = data if isinstance(data, str) else data.decode("utf-8")
        except UnicodeDecodeError:
            cps = llama_codepoints(data)  # type: ignore[arg-type]
            if any(cp > 0x10FFFF for cp in cps):
                raise TokenizerError("text holds a UTF-8 sequence for a code point above U+10FFFF") from None
            text = "".join(map(chr, cps))  # surrogates included: they are dropped as controls
        return [w for w in text.translate(self._map).split(" ") if w]

    def encode(self, data: bytes) -> list[int]:
        """Token ids of one fragment of raw text (no special tokens in it)."""
        out: list[int] = []
        cache = self._cache
        for word in self.words(data):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= self._CACHE_SIZE:
                    cache.clear()
                ids = cache[word] = self._encode_word(word)
            out += ids
        return out

    def _encode_word(self, word: str) -> list[int]:
        """Greedy longest-match-first from the left; any unmatched part makes the word unknown."""
        text = PHANTOM_SPACE + word
        t2id, n, i = self._token_to_id, len(text), 0
        ids: list[int] = []
        while i < n:
            for j in range(min(n, i + self._max_len), i, -1):
                tid = t2id.get(text[i:j])
                if tid is not None:
                    ids.append(tid)
                    i = j
                    break
            else:
                if self._unk is None:
                    raise TokenizerError(f"no token matches part of the word {word[:40]!r} and the "
                                         "vocabulary has no unknown token")
                return [self._unk]
        return ids
