"""SentencePiece (``tokenizer.ggml.model`` = ``llama``) encoding, as llama.cpp does it.

llama.cpp's ``llm_tokenizer_spm_session`` is SentencePiece's BPE encoder: start from single UTF-8
characters, repeatedly merge the adjacent pair whose concatenation is the highest-scoring token
(leftmost on ties), and spell any leftover piece that is not a token as ``<0xXX>`` byte tokens.
Two implementations of it live here:

* ``SentencePieceEncoder`` builds a SentencePiece model from the GGUF vocabulary and lets the
  ``sentencepiece`` library (C++) run it: fast, used for valid UTF-8 text. Every token is declared
  NORMAL (so that, as in llama.cpp, any token text can be reached by merging) except the byte
  tokens and the unknown token, which SentencePiece needs typed.
* ``merge_bytes`` runs the same algorithm in Python on raw bytes. llama.cpp groups bytes into
  characters by the lead byte alone, without checking the rest; text that is not valid UTF-8 goes
  through here so that it gets exactly llama.cpp's tokens.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Sequence

import sentencepiece

from splitllm.tokenizer.errors import TokenizerError

_SPACE = "\u2581"  # SentencePiece's visible space, "▁"

# SentencePiece.Type values in sentencepiece_model.proto.
_NORMAL, _UNKNOWN, _BYTE = 1, 2, 6


def byte_token_text(b: int) -> str:
    return f"<0x{b:02X}>"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value & 0xFFFFFFFFFFFFFFFF)


def model_proto(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int], unk_id: int) -> bytes:
    """A serialized ``sentencepiece.ModelProto`` for a BPE model with byte fallback.

    Written by hand (the field numbers are those of sentencepiece_model.proto) so that building a
    tokenizer does not need the protobuf package.
    """
    score_tag = _varint(2 << 3 | 5)  # field 2, fixed32
    out = [_field(1, _field(1, p.encode("utf-8")) + score_tag + struct.pack("<f", s) + _int_field(3, t))
           for p, s, t in zip(pieces, scores, types, strict=True)]
    trainer = (_int_field(3, 2)            # model_type = BPE
               + _int_field(35, 1)         # byte_fallback = true
               + _int_field(40, unk_id)    # unk_id
               + _int_field(41, -1) + _int_field(42, -1) + _int_field(43, -1))  # no bos/eos/pad
    normalizer = (_field(1, b"identity")
                  + _int_field(3, 0)       # add_dummy_prefix = false (we add the space ourselves)
                  + _int_field(4, 0)       # remove_extra_whitespaces = false
                  + _int_field(5, 0))      # escape_whitespaces = false (we escape ourselves)
    out.append(_field(2, trainer))
    out.append(_field(3, normalizer))
    return b"".join(out)


class SentencePieceEncoder:
    """Runs the SPM merges with the ``sentencepiece`` library; only for valid UTF-8 text.

    Needs all 256 byte tokens (llama.cpp's byte fallback); ``byte_ids[b]`` is the id of <0xbb>.
    """

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], byte_ids: Sequence[int],
                 unk_id: int | None) -> None:
        pieces, piece_scores = list(tokens), list(scores)
        types = [_NORMAL] * len(pieces)
        for i in byte_ids:
            types[i] = _BYTE
        if unk_id is None or types[unk_id] == _BYTE:
            unk_id = len(pieces)  # SentencePiece insists on an unknown piece: add one nobody can type
            pieces.append("\u2047splitllm-unk\u2047")
            piece_scores.append(0.0)
            types.append(_UNKNOWN)
        else:
            types[unk_id] = _UNKNOWN
        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(model_proto(pieces, piece_scores, types, unk_id))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, whose spaces are already written as "▁"."""
        return self._sp.EncodeAsIds(text)


def _utf8_len(lead: int) -> int:
    """Bytes in the UTF-8 sequence starting with ``lead``, judged by its high bits only."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]


def merge_bytes(text: bytes, token_to_id: dict[bytes, int], scores: Sequence[float],
                byte_token: dict[int, int]) -> list[int]:
    """llama.cpp's SPM merge on raw bytes (spaces already written as "▁").

    ``token_to_id`` maps token texts as UTF-8 bytes to ids; ``byte_token`` maps a byte to the token
    that spells it when a piece is not a token.
    """
    starts, lens = [], []
    pos = 0
    while pos < len(text):
        starts.append(pos)
        lens.append(min(_utf8_len(text[pos]), len(text) - pos))
        pos += lens[-1]
    n = len(starts)
    prev = list(range(-1, n - 1))
    nxt = [*range(1, n), -1]
    heap: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        size = lens[left] + lens[right]
        tid = token_to_id.get(text[starts[left]:starts[left] + size])
        if tid is not None:  # highest score first, then leftmost
            heapq.heappush(heap, (-scores[tid], left, right, size))

    for i in range(1, n):
        push(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if lens[left] == 0 or lens[right] == 0 or lens[left] + lens[right] != size:
            continue  # one side has changed since this pair was queued
        lens[left], lens[right] = size, 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])

    out: list[int] = []
    i = 0 if n else -1
    while i >= 0:
        piece = text[starts[i]:starts[i] + lens[i]]
        tid = token_to_id.get(piece)
        if tid is not None:
            out.append(tid)
        else:  # only a single character can be left that is not a token: spell its bytes
            for b in piece:
                if b not in byte_token:
                    raise TokenizerError(f"SentencePiece vocabulary has no token for byte 0x{b:02X}")
                out.append(byte_token[b])
        i = nxt[i]
    return out
