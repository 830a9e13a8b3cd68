"""SentencePiece unigram (``tokenizer.ggml.model`` = ``t5``), as llama.cpp's ``llm_tokenizer_ugm`` does it.

T5 and the XLM-RoBERTa embedding models (bge-m3, multilingual-e5, nomic-embed-text-v2) use it. A
piece of text (special tokens already cut out) is tokenized in two steps, on bytes as in llama.cpp:

1. Normalization. At each position, in this order: the longest prefix of a user-defined token's
   text is copied as it is (llama.cpp's trie does not check that a whole token matched: "caf" + the
   first byte of "è" is a prefix of "café"); else the longest key of the precompiled charsmap
   (SentencePiece's normalization rules, e.g. NFKC, stored as a double array and replacement
   strings) is replaced; else one UTF-8 sequence is copied (U+FFFD for a byte that starts none).
   Then spaces (" " only; nmt_nfkc's charsmap makes tabs and newlines spaces) become "▁": with
   ``remove_extra_whitespaces`` each run of non-spaces gets one "▁" in front and the spaces go;
   otherwise each space is a "▁" and, with ``add_space_prefix``, one more "▁" goes in front of the
   first non-space.
2. Viterbi: the highest sum of scores (float32 scores added as doubles; user-defined tokens count
   0) over the normal, user-defined and unused tokens, one UTF-8 sequence at a time. A code point
   that no token spells by itself may be the unknown token, scored (lowest normal score - 10);
   consecutive unknown tokens become one. Byte tokens are never used (llama.cpp's UGM has no byte
   fallback).

For speed, the Viterbi runs on each "▁"-started word on its own, with a cache. The result is
llama.cpp's when no token has "▁" after its first character (so that every path goes through the
start of each word) and the sums of scores over the text are exact in double precision (checked
per text from the scores' exponents); otherwise the whole text goes through one Viterbi.

The tries are built from the token types as stored in the GGUF (before llama.cpp's fix-ups by
token text, as llama.cpp builds them); the user-defined test of a token's score uses the final
attributes. ``TokenizerError`` is raised where llama.cpp throws or writes an invalid id: a charsmap
whose double array points outside itself, and text that needs the unknown token in a vocabulary
without one.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence

import numpy as np

from splitllm.tokenizer.errors import TokenizerError
from splitllm.tokenizer.vocab import TokenAttr

SPACE = "\u2581"  # "▁", what spaces become
_SPACE_BYTES = SPACE.encode()
_REPLACEMENT = "\ufffd".encode()
_NEG = -1.7976931348623157e308  # -DBL_MAX, the score of a position not reached yet
_NO_UNK = -1                    # llama.cpp's LLAMA_TOKEN_NULL, for a vocabulary without unknown token
_BROKEN = (-1, -1)               # a step of the charsmap's walk that would raise
_UTF8_LEN = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)  # unicode_len_utf8, by the high nibble


def _unit_len(data: bytes, i: int) -> int:
    """Length of the UTF-8 sequence at ``i`` as llama.cpp's unicode_cpt_from_utf8 accepts it (lead
    byte and continuation bits only: overlong forms and surrogates pass); 0 when it throws."""
    b = data[i]
    if b < 0x80:
        return 1
    k = 0 if b < 0xC0 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 0
    if not k or i + k > len(data):
        return 0
    for j in range(i + 1, i + k):
        if data[j] & 0xC0 != 0x80:
            return 0
    return k


def _utf8(text: str) -> bytes:
    """A token's bytes (GGUF strings that are not UTF-8 come decoded with surrogateescape)."""
    return text.encode("utf-8", "surrogateescape")


def _byte_class(values: Sequence[int] | set[int]) -> bytes:
    return b"[" + b"".join(b"\\x%02x" % v for v in sorted(values)) + b"]"


class CharsMap:
    """SentencePiece's precompiled charsmap: a XOR-compressed compact double array (Kanda 2018) over
    the UTF-8 bytes of the keys, then NUL-terminated replacement strings.

    Layout (little-endian): u32 size of the array in bytes, the array's u32 units, the strings. A
    unit holds BASE in bits 10-30 (shifted left by 8 when bit 9 is set), the LEAF flag in bit 8 and
    the label (LCHECK) in bits 0-7; bit 31 marks the units that hold a string offset (VALUE).
    """

    def __init__(self, blob: bytes) -> None:
        # checked when llama.cpp loads the vocabulary (and by load_vocab)
        if len(blob) < 4:
            raise TokenizerError("the precompiled charsmap is too small for its header")
        size = struct.unpack_from("<I", blob)[0]
        if size + 4 >= len(blob):
            raise TokenizerError(f"the precompiled charsmap's double array ({size} bytes) runs past its end")
        self._units: tuple[int, ...] = struct.unpack_from(f"<{size // 4}I", blob, 4)
        self._strings = blob[4 + size:]
        self._replacements: dict[int, bytes] = {}
        # (state << 8 | byte) -> (next state, string offset or -1), or None where the walk stops
        self._trans: dict[int, tuple[int, int] | None] = {}
        self.root = self._base(self._unit(0)) if self._units else -1

    def __bool__(self) -> bool:
        return bool(self._units)

    def _unit(self, index: int) -> int:
        if index >= len(self._units):
            raise TokenizerError("index out of bounds in the precompiled charsmap's double array")
        return self._units[index]

    @staticmethod
    def _base(unit: int) -> int:
        return (unit >> 10) << ((unit & 0x200) >> 6)

    def step(self, state: int, c: int) -> tuple[int, int] | None:
        """One byte of the walk from ``state``: (next state, string offset if a key ends here, else -1)."""
        key = state << 8 | c
        if key in self._trans:
            return self._trans[key]
        out = None
        if c != 0:  # llama.cpp stops the walk at a NUL byte
            node = state ^ c
            unit = self._unit(node)
            if unit & 0x800000FF == c:
                nxt = node ^ self._base(unit)
                out = (nxt, self._unit(nxt) & 0x7FFFFFFF if unit >> 8 & 1 else -1)
        self._trans[key] = out
        return out

    def try_step(self, state: int, c: int) -> tuple[int, int] | None:
        """``step``, or _BROKEN where it raises (left to the walk, which raises when it gets there)."""
        try:
            return self.step(state, c)
        except TokenizerError:
            return _BROKEN

    def match(self, data: bytes, i: int) -> tuple[int, bytes]:
        """The longest key at ``data[i:]``: (its length, its replacement), or (0, b"")."""
        state, best, offset = self.root, 0, -1
        for j in range(i, len(data)):
            t = self.step(state, data[j])
            if t is None:
                break
            state = t[0]
            if t[1] >= 0:
                best, offset = j + 1 - i, t[1]
        return (best, self.replacement(offset)) if best else (0, b"")

    def replacement(self, offset: int) -> bytes:
        out = self._replacements.get(offset)
        if out is None:
            if offset >= len(self._strings):
                raise TokenizerError("index out of bounds in the precompiled charsmap's strings")
            end = self._strings.find(b"\0", offset)
            if end < 0:
                raise TokenizerError("unterminated string in the precompiled charsmap")
            out = self._replacements[offset] = self._strings[offset:end]
        return out


class UnigramEncoder:
    """llama.cpp's UGM tokenizer for one vocabulary.

    ``type_attrs`` are the token attributes from tokenizer.ggml.token_type alone (the tries are
    built from them), ``attrs`` the final ones (a user-defined token scores 0).
    """

    _CACHE_SIZE = 1 << 16

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], type_attrs: Sequence[int],
                 attrs: Sequence[int], unk_id: int | None, charsmap: bytes, *, add_space_prefix: bool,
                 remove_extra_whitespaces: bool) -> None:
        normal, user, unused = int(TokenAttr.NORMAL), int(TokenAttr.USER_DEFINED), int(TokenAttr.UNUSED)
        self._unk = _NO_UNK if unk_id is None else unk_id
        self._prefix = add_space_prefix
        self._merge = remove_extra_whitespaces
        f32 = np.asarray(scores, dtype=np.float64).astype(np.float32)  # llama.cpp keeps float scores
        normal_scores = f32[np.array([bool(a & normal) for a in type_attrs], dtype=bool)]
        min_score = normal_scores.min() if normal_scores.size else np.float32(np.finfo(np.float32).max)
        self._unk_score = float(min_score - np.float32(10.0))  # in float, as llama.cpp computes it
        self._score = [0.0 if a & user else s for a, s in zip(attrs, f32.tolist(), strict=True)]

        # the token matcher: normal, user-defined and unused tokens
        ids = [i for i, a in enumerate(type_attrs) if a & (normal | user | unused)]
        self._match: dict[str, int] = dict(zip([tokens[i] for i in ids], ids, strict=True))
        lens: dict[str, set[int]] = {}
        for text in self._match:
            if len(text) > 1:
                lens.setdefault(text[:2], set()).add(len(text))
        self._lens2 = {k: tuple(sorted(v)) for k, v in lens.items()}  # first 2 chars -> token lengths
        users = [_utf8(tokens[i]) for i, a in enumerate(type_attrs) if a & user]
        self._user_prefixes = {t[:k] for t in users for k in range(1, len(t) + 1)}
        self._bytes_match: dict[bytes, int] | None = None  # built when a text needs the bytes path
        self._bytes_lens: dict[int, tuple[int, ...]] = {}

        # Words can be tokenized one by one unless a token has "▁" after its first character.
        self._by_word = not any(SPACE in t[1:] for t in self._match)
        # The sums are exact while below 2**53 units of the last bit of the smallest score (we keep a
        # factor 2 of margin).
        used = np.abs(np.append(np.asarray(self._score, dtype=np.float64)[ids], self._unk_score))
        used = used[used > 0]
        self._limit = math.ldexp(1.0, int(np.frexp(used)[1].min()) - 24 + 52) if used.size else math.inf
        self._max_score = float(used.max()) if used.size else 0.0
        self._cache: dict[str, tuple[list[int], float]] = {}

        self._charsmap = CharsMap(charsmap) if charsmap else None
        self._plain = self._plain_runs()

    # ---- normalization ----

    def _plain_runs(self) -> re.Pattern[bytes]:
        """A run of UTF-8 sequences that normalize to themselves: no user-defined token starts with
        their first byte and no charsmap key matches there (an ASCII byte whose walk may go on
        counts when the next byte cannot continue it)."""
        user_first = {p[0] for p in self._user_prefixes}
        cm = self._charsmap
        free = set(range(256)) - user_first
        if cm:
            steps = {c: cm.try_step(cm.root, c) for c in range(256)}
            free = {c for c in free if steps[c] is None}
        alts = [_byte_class([c for c in free if c < 0x80])] if any(c < 0x80 for c in free) else []
        if cm:
            groups: dict[frozenset[int], list[int]] = {}
            for c in range(1, 0x80):
                t = steps[c]
                if c in user_first or t is None or t == _BROKEN or t[1] >= 0:
                    continue
                nxt = frozenset(d for d in range(256) if cm.try_step(t[0], d) is not None)
                groups.setdefault(nxt, []).append(c)
            for nxt, group in groups.items():
                alts.append(_byte_class(group) + (b"(?!" + _byte_class(nxt) + b")" if nxt else b""))
        for lo, hi, k in ((0xC0, 0xE0, 1), (0xE0, 0xF0, 2), (0xF0, 0xF8, 3)):
            leads = [c for c in range(lo, hi) if c in free]
            if leads:
                alts.append(_byte_class(leads) + b"[\\x80-\\xbf]" + (b"{%d}" % k if k > 1 else b""))
        return re.compile(b"(?:" + b"|".join(alts) + b")+" if alts else b"(?!)")

    def _user_prefix(self, data: bytes, i: int) -> int:
        k, n, prefixes = 0, len(data) - i, self._user_prefixes
        while k < n and data[i:i + k + 1] in prefixes:
            k += 1
        return k

    def normalize(self, data: bytes) -> bytes:
        """The text the Viterbi runs on (llama.cpp's ``normalize``)."""
        out: list[bytes] = []
        plain, cm = self._plain.match, self._charsmap
        i, n = 0, len(data)
        while i < n:
            m = plain(data, i)
            if m is not None:
                out.append(data[i:m.end()])
                i = m.end()
                if i >= n:
                    break
            k = self._user_prefix(data, i) if self._user_prefixes else 0
            if k:
                out.append(data[i:i + k])
                i += k
                continue
            if cm:
                k, repl = cm.match(data, i)
                if k:
                    out.append(repl)
                    i += k
                    continue
            k = _unit_len(data, i)
            out.append(data[i:i + k] if k else _REPLACEMENT)
            i += k or 1
        text = b"".join(out)
        if self._merge:
            return b"".join(_SPACE_BYTES + w for w in text.split(b" ") if w)
        escaped = text.replace(b" ", _SPACE_BYTES)
        if self._prefix and text.strip(b" "):
            return _SPACE_BYTES + escaped
        return escaped

    # ---- Viterbi ----

    def encode(self, data: bytes) -> list[int]:
        """Token ids of one fragment of raw text (no special tokens in it)."""
        norm = self.normalize(data)
        if not norm:
            return []
        try:
            text = norm.decode("utf-8")
        except UnicodeDecodeError:  # surrogates, overlong forms, bytes split by a user-defined prefix
            ids = self._viterbi_bytes(norm)
        else:
            ids = self._encode_text(text)
        if self._unk == _NO_UNK and _NO_UNK in ids:
            raise TokenizerError("no token spells part of the text and the vocabulary has no unknown token")
        return ids

    def _encode_text(self, text: str) -> list[int]:
        if not self._by_word:
            return self._viterbi(text)[0]
        words = text.split(SPACE)
        words = [words[0], *(SPACE + w for w in words[1:])] if words[0] else [SPACE + w for w in words[1:]]
        cache, unk = self._cache, self._unk
        out: list[int] = []
        total, longest = 0.0, 0
        for word in words:
            hit = cache.get(word)
            if hit is None:
                if len(cache) >= self._CACHE_SIZE:
                    cache.clear()
                hit = cache[word] = self._viterbi(word)
            ids, score = hit
            total += abs(score)
            longest = max(longest, len(word))
            out += ids[1:] if out and out[-1] == unk and ids[0] == unk else ids
        if total + (longest + 1) * self._max_score >= self._limit:
            return self._viterbi(text)[0]  # a path's partial sums could round: no shortcut
        return out

    def _viterbi(self, text: str) -> tuple[list[int], float]:
        """Best tokenization of valid UTF-8 text (one character is one UTF-8 sequence) and its score."""
        n = len(text)
        unk, unk_score = self._unk, self._unk_score
        best, token, start = self._lattice(n)
        get, lens, score = self._match.get, self._lens2.get, self._score
        for i in range(n):
            here = best[i]
            tid = get(text[i])
            if tid is None:  # no token spells this character: the unknown token may
                tid, value = unk, here + unk_score
            else:
                value = here + score[tid]
            if value > best[i + 1]:
                best[i + 1], token[i + 1], start[i + 1] = value, tid, i
            for k in lens(text[i:i + 2], ()):
                j = i + k
                if j > n:
                    break
                tid = get(text[i:j])
                if tid is not None:
                    value = here + score[tid]
                    if value > best[j]:
                        best[j], token[j], start[j] = value, tid, i
        return self._backtrack(token, start, n), best[n]

    def _lattice(self, n: int) -> tuple[list[float], list[int], list[int]]:
        """The Viterbi's tables over positions 0..n: the best score ending there (0.0 at 0), the
        last token of that path and where it starts."""
        best = [_NEG] * (n + 1)
        best[0] = 0.0
        return best, [self._unk] * (n + 1), [0] * (n + 1)

    def _backtrack(self, token: list[int], start: list[int], end: int) -> list[int]:
        """The best path's tokens, consecutive unknown tokens merged."""
        unk, out, prev_unk = self._unk, [], False
        while True:
            tid = token[end]
            is_unk = tid == unk
            if not (prev_unk and is_unk):
                out.append(tid)
            if start[end] == 0:
                break
            prev_unk, end = is_unk, start[end]
        out.reverse()
        return out

    def _viterbi_bytes(self, text: bytes) -> list[int]:
        """llama.cpp's Viterbi on bytes, for normalized text that is not valid UTF-8."""
        if self._bytes_match is None:
            self._bytes_match = {_utf8(t): i for t, i in self._match.items()}
            lens: dict[int, set[int]] = {}
            for t in self._bytes_match:
                lens.setdefault(t[0], set()).add(len(t))
            self._bytes_lens = {k: tuple(sorted(v)) for k, v in lens.items()}
        n = len(text)
        unk, unk_score = self._unk, self._unk_score
        best, token, start = self._lattice(n)
        get, score = self._bytes_match.get, self._score
        i = 0
        while i < n:
            here, size, single = best[i], min(_UTF8_LEN[text[i] >> 4], n - i), False
            for k in self._bytes_lens.get(text[i], ()):
                j = i + k
                if j > n:
                    break
                tid = get(text[i:j])
                if tid is not None:
                    single = single or k == size
                    value = here + score[tid]
                    if value > best[j]:
                        best[j], token[j], start[j] = value, tid, i
            if not single and here + unk_score > best[i + size]:
                best[i + size], token[i + size], start[i + size] = here + unk_score, unk, i
            i += size
        return self._backtrack(token, start, n)
