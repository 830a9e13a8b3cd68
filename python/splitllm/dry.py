"""DRY's sequence breakers as tokens, as llama.cpp's ``llama_sampler_init_dry`` prepares them
(its ``get_overlapping_token_sequences``, after Koboldcpp).

A breaker is a string (llama-server's defaults: newline, colon, double quote, asterisk) that ends
a repeat. For every token of the vocabulary, with the token's text as ``llama_detokenize`` gives
it on its own (special tokens rendered, SentencePiece's leading space dropped, BPE's spaces
cleaned):

- the text contains the breaker: the token is a head with no tail (a single-token breaker, which
  DRY also never penalises);
- else, for each place where the text ends with the start of the breaker: the token is a head,
  its tail the tokenization of the rest of the breaker (no BOS, special tokens not parsed), cut to
  20 tokens; a tail the token already has is not added again.

Breakers are cut to 40 bytes and at a NUL (they are C strings there); empty ones are skipped.
The result is cached per tokenizer and list of breakers: the scan reads the whole vocabulary.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from splitllm.tokenizer import Tokenizer

__all__ = ["DEFAULT_BREAKERS", "sequence_breakers"]

DEFAULT_BREAKERS = ("\n", ":", '"', "*")  # llama-server's dry_sequence_breakers
MAX_CHARS = 40  # llama.cpp's MAX_CHAR_LEN: bytes of a breaker
MAX_TAIL = 20   # llama.cpp's MAX_SEQ_LEN: tokens of a tail

Breakers = tuple[tuple[int, tuple[int, ...]], ...]

_lock = threading.Lock()
_words: weakref.WeakKeyDictionary[Tokenizer, list[bytes]] = weakref.WeakKeyDictionary()
_done: weakref.WeakKeyDictionary[Tokenizer, dict[tuple[str, ...], Breakers]] = weakref.WeakKeyDictionary()


def _token_words(tok: Tokenizer) -> list[bytes]:
    words = _words.get(tok)
    if words is None:
        words = [tok.llama_detokenize([t], unparse_special=True) for t in range(tok.n_vocab)]
        _words[tok] = words
    return words


def _breaker_bytes(breaker: str) -> bytes:
    raw = breaker.encode("utf-8", "surrogatepass").split(b"\0", 1)[0]
    return raw[:MAX_CHARS]


def _overlaps(word: bytes, brk: bytes) -> Iterable[int]:
    """Where ``word`` ends with a proper start of ``brk``: the length of that start, each time."""
    pos = word.find(brk[:1])
    while pos >= 0:
        n = len(word) - pos
        if n < len(brk) and brk.startswith(word[pos:]):
            yield n
        pos = word.find(brk[:1], pos + 1)


def sequence_breakers(tok: Tokenizer, breakers: Iterable[str]) -> Breakers:
    """``(head token, tail tokens)`` pairs for ``breakers`` in ``tok``'s vocabulary (see the module's
    text), sorted."""
    key = tuple(breakers)
    with _lock:
        done = _done.setdefault(tok, {})
        if key in done:
            return done[key]
        words = _token_words(tok)
    pairs: dict[int, list[tuple[int, ...]]] = {}
    tails: dict[bytes, tuple[int, ...]] = {}
    for breaker in key:
        brk = _breaker_bytes(breaker)
        if not brk:
            continue
        for token, word in enumerate(words):
            if brk[:1] not in word:
                continue
            have = pairs.setdefault(token, [])
            if brk in word:
                have.append(())
                continue
            for n in _overlaps(word, brk):
                rest = brk[n:]
                if rest not in tails:
                    tails[rest] = tuple(tok.tokenize(rest, add_bos=False, special=False)[:MAX_TAIL])
                if tails[rest] not in have:
                    have.append(tails[rest])
    out = tuple(sorted((t, tail) for t, ts in pairs.items() for tail in ts))
    with _lock:
        done[key] = out
    return out
