"""Gemma 4's tokenizer (``tokenizer.ggml.model`` = ``gemma4``: SentencePiece-style BPE over raw
UTF-8 with U+2581 for spaces and <0xXX> byte tokens) against llama.cpp's, on a vocabulary of that
shape trained here with the ``tokenizers`` library (as convert_hf_to_gguf.py's Gemma4Model writes
one: the merges, byte tokens typed BYTE, add_bos_token false, which llama.cpp overrides)."""

from __future__ import annotations

import json

import pytest
from splitllm.tokenizer import Tokenizer
from test_tokenizer import LlamaRef, assert_none, corpus, mismatches, token_mismatches, write_vocab_gguf
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, trainers

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def gemma4_vocab() -> dict:
    """Metadata of a small gemma4 vocabulary: merges learned over ▁-escaped lines of the corpus
    (every Latin letter, digit and common punctuation in the alphabet; other scripts fall back to
    bytes), newline runs as tokens of their own."""
    lines = [s.replace(" ", "\u2581") for text in corpus(n=200, seed=7)[:150] for s in text.split("\n") if s]
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"()-_:;\u2581")
    hf = HFTokenizer(models.BPE())
    hf.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet,
                                                      limit_alphabet=len(alphabet), show_progress=False))
    learned = sorted(hf.get_vocab().items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(hf.to_str())["model"]["merges"]]
    tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + ["\n", "\n\n", "\n\n\n"]
    tokens += [t for t, _ in learned if t not in tokens]
    types = [3, 3, 3, 2, 4, 4] + [6] * 256 + [1] * (len(tokens) - 262)
    return {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.pre": "default",  # (llama.cpp runs gemma4's whatever this says)
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * len(tokens),
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    md = gemma4_vocab()
    path = write_vocab_gguf(tmp_path_factory.mktemp("g4vocab") / "gemma4.gguf", md)
    with LlamaRef(path) as ref:
        yield Tokenizer.from_metadata(md), ref


def test_matches_llama_cpp(gemma4):
    tok, ref = gemma4
    assert tok.add_bos  # (the false flag overridden, as llama.cpp does)
    assert_none(mismatches(tok, ref, corpus(specials=("<start_of_turn>", "<end_of_turn>"))))


def test_tokens_match_llama_cpp(gemma4):
    tok, ref = gemma4
    assert_none(token_mismatches(tok, ref))


def test_spaces_and_bytes(gemma4):
    """Spaces are U+2581 inside tokens, characters outside the vocabulary are byte tokens."""
    tok, ref = gemma4
    ids = tok.tokenize("héllo  wörld\n\n", add_bos=False)
    assert ids == ref.tokenize("héllo  wörld\n\n".encode(), False, False)
    assert tok.vocab.token_to_id["<0xC3>"] in ids and tok.vocab.token_to_id["\n\n"] in ids
    assert tok.detokenize(ids) == "héllo  wörld\n\n".encode()
