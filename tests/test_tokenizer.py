"""Tokenizer tests.

References we did not write: llama.cpp's golden cases (``../shared/data/tokenizer``), llama.cpp
itself through llama-cpp-python (``llama_tokenize``, ``llama_token_to_piece``,
``llama_detokenize``, ``Llama.detokenize``), and the ``regex`` package running llama.cpp's
pre-tokenizer expressions. GGUF metadata is read with gguf-py's ``GGUFReader``.
"""

from __future__ import annotations

import ctypes
import functools
import random
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from splitllm.tokenizer import PRE_TOKENIZERS, TokenAttr, Tokenizer, TokenizerError
from splitllm.tokenizer.bpe import llama_codepoints

SEP = "\n__ggml_vocab_test__\n"
KEY = "tokenizer.ggml."

# ---- GGUF metadata (gguf-py) ----


@functools.cache
def gguf_metadata(path: str) -> dict[str, Any]:
    """GGUF metadata as splitllm.GGUFFile gives it: key -> int/float/bool/str/list."""
    out: dict[str, Any] = {}
    for key, f in GGUFReader(path).fields.items():
        if key.startswith("GGUF."):
            continue
        kind = f.types[0]
        if kind == GGUFValueType.ARRAY and f.types[-1] == GGUFValueType.STRING:
            out[key] = [f.parts[i].tobytes().decode("utf-8") for i in f.data]
        elif kind == GGUFValueType.ARRAY:
            out[key] = np.concatenate([f.parts[i] for i in f.data]).tolist() if f.data else []
        elif kind == GGUFValueType.STRING:
            out[key] = f.parts[f.data[0]].tobytes().decode("utf-8")
        else:
            out[key] = f.parts[f.data[0]][0].item()
    return out


def write_vocab_gguf(path: Path, md: dict[str, Any]) -> Path:
    """A vocabulary-only GGUF llama.cpp can load (vocab_only=True)."""
    w = GGUFWriter(str(path), md.get("general.architecture", "llama"))
    for key, value in md.items():
        if key == "general.architecture" or value is None:
            continue
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, (list, bytes)):  # ints are written as INT32, floats as FLOAT32, bytes as UINT8
            w.add_array(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_golden(vocab: Path) -> list[tuple[str, list[int]]]:
    """The .inp/.out cases, split the way llama.cpp's test-tokenizer-0 splits them."""
    raw = vocab.with_name(vocab.name + ".inp").read_bytes().decode("utf-8")
    inputs = raw.split(SEP)
    if raw.endswith(SEP):
        inputs.pop()
    lines = vocab.with_name(vocab.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(inputs) == len(lines)
    return [(s, [int(x) for x in line.split()]) for s, line in zip(inputs, lines, strict=True)]


# ---- llama.cpp through llama-cpp-python ----


class LlamaRef:
    """llama.cpp's vocabulary functions, called directly with buffers big enough."""

    def __init__(self, path: Path) -> None:
        self.lib = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference")
        self.llm = self.lib.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab
        self.bos = self.lib.llama_vocab_bos(self.vocab)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaRef:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
        n = -self.lib.llama_tokenize(self.vocab, text, len(text), None, 0, add_special, parse_special)
        buf = (self.lib.llama_token * max(n, 1))()
        got = self.lib.llama_tokenize(self.vocab, text, len(text), buf, max(n, 1), add_special, parse_special)
        assert got == n
        return list(buf[:n])

    def piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, 1024, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], special: bool) -> bytes:
        """Llama.detokenize; its own 32-byte piece buffer truncates longer pieces, so past that
        the same code is run here with a big buffer."""
        if all(len(self.piece(t, special)) <= 32 for t in tokens):
            return self.llm.detokenize(tokens, special=special)
        out = b"".join(self.piece(t, special) for t in tokens)
        return out[1:] if tokens and tokens[0] == self.bos and out[:1] == b" " else out

    def llama_detokenize(self, tokens: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (self.lib.llama_token * max(len(tokens), 1))(*tokens)
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.lib.llama_detokenize(self.vocab, arr, len(tokens), buf, 1 << 16, remove_special,
                                      unparse_special)
        assert n >= 0
        return buf.raw[:n]


# ---- test strings ----

HAND = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " \n ", "\r\n", "a\r\nb",
    "Hello world", " Hello world", " Hello World!", "Hello, world!", " this is 🦙.cpp",
    "w048 7tuijk dsdfhu", "нещо на Български", "កាន់តែពិសេសអាចខលចេញ",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～", "3", "33", "333", "3333",
    "33333333", "1234567890", "    Hello\n    Hello", " (", "\n =", "' era",
    "'s 'S 'll 'LL 're 'RE 've 'd 'm 't 'T", "don't I'm you're we've",
    "<|im_start|>user\nhi<|im_end|>\n", "<s>", "</s>", "<unk>", "<s>hello</s>", "a<s> b",
    "<0x41>", "<|endoftext|>", "<|endoftext|>x<|endoftext|>",
    "<|im_start|><|im_end|>", "text <|im_start|> text", "👨‍👩‍👧‍👦 🇺🇸 🏳️‍🌈", "e\u0301 é",
    "नमस्ते दुनिया", "مرحبا بالعالم ١٢٣", "สวัสดีชาวโลก", "안녕하세요 세계", "こんにちは世界、カタカナ",
    "Γειά σου Κόσμε", "∀x∈ℝ: x² ≥ 0 ½ ⅔ Ⅻ", "a\u00a0b\u2028c\u3000d\u2009e",
    "\x00\x01\x07\x7f", "a\u200bb\ufeffc", "\ue000\U0010fffd", "▁▁Hello ▁", "a" * 300,
    " " * 50, "\n" * 20, "ab " * 40, "def f(x):\n\treturn x**2  # sq\n",
    "if (a != b) { c++; }", "https://example.com/path?q=1&r=2#frag",
    "  leading and trailing  ", "tabs\t\tand\t spaces \t", "CamelCase snake_case",
    "123abc456 7 89 0.5 1e10 -3", "$100 + 20% = <=> ^~|`", "Ünïcödé àçcents",
    "中文字符测试，标点符号。", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３", "\u0085nel", "x\u000by\u000cz",
    "¡¿«»‘’“”–—…",
    "\U0001f600\U0001f9d1\u200d\U0001f4bb", " ?", "a ?", "a , b . c ! d", "it ' s", "it 's",
    "I 'm you 're we 've", "x ' y", " 't 'd 'll",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n",
]
POOL = [
    "the", "The", " quick", "brown", "fox", "über", "naïve", "日本語", "中文", "한국어", "русский",
    "ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย", "🦙", "😀", "👍🏽", "❤️", "🇯🇵", "0", "42",
    "2024", "3.14159", "١٢٣", "½", "²", "Ⅻ", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n",
    " \n", "\u00a0", "\u3000", "\u2003", ".", ",", "!", "?", ";", ":", "'", '"', "'s", "'ll",
    "'VE", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "-", "_", "=", "+", "*", "&", "%",
    "$", "#", "@", "^", "~", "|", "`", "...", "—", "…", "«", "»", "▁", "\u200b", "\u0301",
    "e\u0301", "\x00", "\x7f", "|>",
]


def corpus(specials: tuple[str, ...] = (), n: int = 300, seed: int = 1234) -> list[str]:
    """The hand-written strings plus ``n`` random mixes of words, scripts, digits, whitespace,
    punctuation, emoji and the vocabulary's special-token texts."""
    rnd = random.Random(seed)
    pool = POOL + list(specials)
    return HAND + ["".join(rnd.choice(pool) for _ in range(rnd.randint(1, 25))) for _ in range(n)]


def mismatches(tok: Tokenizer, ref: LlamaRef, strings: list[str]) -> list[str]:
    """Every way tokenize/detokenize differs from llama.cpp on ``strings``."""
    bad = []
    for s in strings:
        b = s.encode("utf-8")
        for add in (False, True):
            for special in (False, True):
                want, got = ref.tokenize(b, add, special), tok.tokenize(b, add_bos=add, special=special)
                if want != got:
                    bad.append(f"tokenize({s!r}, add_bos={add}, special={special}): {got} != {want}")
        ids = ref.tokenize(b, True, True)
        for special in (False, True):
            want_b, got_b = ref.detokenize(ids, special), tok.detokenize(ids, special=special)
            if want_b != got_b:
                bad.append(f"detokenize({ids}, special={special}): {got_b!r} != {want_b!r}")
            for remove in (False, True):
                want_b = ref.llama_detokenize(ids, remove, special)
                got_b = tok.llama_detokenize(ids, remove_special=remove, unparse_special=special)
                if want_b != got_b:
                    bad.append(f"llama_detokenize({ids}, {remove}, {special}): {got_b!r} != {want_b!r}")
    return bad


def token_mismatches(tok: Tokenizer, ref: LlamaRef) -> list[str]:
    """Every token's attributes and pieces (plain and special) against llama.cpp's."""
    lib, v = ref.lib, ref.vocab
    bad = []
    for t in range(tok.n_vocab):
        if tok.vocab.attrs[t] != lib.llama_vocab_get_attr(v, t):
            bad.append(f"attr {t}: {tok.vocab.attrs[t]} != {lib.llama_vocab_get_attr(v, t)}")
        for special in (False, True):
            if tok.token_to_piece(t, special=special) != ref.piece(t, special):
                bad.append(f"piece {t} special={special}: {tok.token_to_piece(t, special=special)!r}")
    return bad


def assert_none(bad: list[str]) -> None:
    assert not bad, f"{len(bad)} mismatches, first ones:\n" + "\n".join(bad[:8])


# ---- fixtures ----

VOCABS = {"llama-spm": "ggml-vocab-llama-spm.gguf", "gpt-2": "ggml-vocab-gpt-2.gguf"}
SPECIALS = {"llama-spm": ("<s>", "</s>", "<unk>"), "gpt-2": ("<|endoftext|>",),
            "smollm": ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>")}


@pytest.fixture(scope="session")
def vocab_path(shared_dir: Path):
    def get(name: str) -> Path:
        return shared_dir / "data" / "tokenizer" / VOCABS[name]

    return get


@pytest.fixture(scope="session", params=["llama-spm", "gpt-2", "smollm"])
def real_vocab(request, vocab_path) -> tuple[str, Path]:
    if request.param == "smollm":
        return request.param, request.getfixturevalue("smollm2_path")
    return request.param, vocab_path(request.param)


@functools.cache
def tokenizer_for(path: str) -> Tokenizer:
    return Tokenizer.from_metadata(gguf_metadata(path))


_REFS: dict[str, LlamaRef] = {}


def ref_for(path: str) -> LlamaRef:
    if path not in _REFS:
        _REFS[path] = LlamaRef(Path(path))
    return _REFS[path]


@pytest.fixture(scope="module", autouse=True)
def _close_references():
    yield
    while _REFS:
        _REFS.popitem()[1].close()


# ---- golden cases (llama.cpp's test-tokenizer-0 data) ----


@pytest.mark.parametrize("name", list(VOCABS))
def test_golden_cases(vocab_path, name: str) -> None:
    path = vocab_path(name)
    cases = read_golden(path)
    assert len(cases) == 46
    tok = tokenizer_for(str(path))
    for text, want in cases:
        ids = tok.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ids == want, f"{text!r}"
        # llama.cpp round trip: llama_detokenize drops the space SPM puts in front; byte-level BPE
        # gives the bytes back as they are (its clean_spaces pass would tidy " ?" and the like).
        back = tok.llama_detokenize(ids) if tok.vocab_type == "spm" else tok.detokenize(ids)
        assert back == text.encode("utf-8"), f"{text!r}"


def test_golden_round_trip_with_bos(vocab_path) -> None:
    """With BOS, Llama.detokenize's leading-space rule gives SPM text back too."""
    path = vocab_path("llama-spm")
    tok = tokenizer_for(str(path))
    for text, _ in read_golden(path):
        ids = tok.tokenize(text.encode("utf-8"))
        assert ids[0] == tok.bos_id == 1
        assert tok.detokenize(ids) == text.encode("utf-8")


# ---- against llama.cpp ----


@pytest.mark.reference
def test_matches_llama_cpp(real_vocab) -> None:
    name, path = real_vocab
    tok, ref = tokenizer_for(str(path)), ref_for(str(path))
    assert_none(mismatches(tok, ref, corpus(SPECIALS[name])))


@pytest.mark.reference
def test_vocabulary_matches_llama_cpp(real_vocab) -> None:
    """Every token's piece and attributes, the special ids, flags and end-of-generation set."""
    _, path = real_vocab
    tok, ref = tokenizer_for(str(path)), ref_for(str(path))
    lib, v = ref.lib, ref.vocab
    assert tok.n_vocab == lib.llama_vocab_n_tokens(v)
    for ours, theirs in ((tok.bos_id, lib.llama_vocab_bos(v)), (tok.eos_id, lib.llama_vocab_eos(v)),
                         (tok.eot_id, lib.llama_vocab_eot(v)), (tok.pad_id, lib.llama_vocab_pad(v))):
        assert (-1 if ours is None else ours) == theirs
    assert tok.add_bos == lib.llama_vocab_get_add_bos(v)
    assert tok.add_eos == lib.llama_vocab_get_add_eos(v)
    assert tok.eog_ids == {t for t in range(tok.n_vocab) if lib.llama_vocab_is_eog(v, t)}
    assert_none(token_mismatches(tok, ref))


@pytest.mark.reference
def test_long_text_matches_llama_cpp(real_vocab, tinyshakespeare: str) -> None:
    """300 kB of real text, in one call."""
    _, path = real_vocab
    tok, ref = tokenizer_for(str(path)), ref_for(str(path))
    text = tinyshakespeare[:300_000].encode("utf-8")
    ids = tok.tokenize(text)
    assert ids == ref.tokenize(text, True, False)
    assert tok.detokenize(ids) == text


def _random_bytes(rnd: random.Random) -> bytes:
    alphabet = [0x20, 0x41, 0x61, 0x30, 0x0A, 0xE2, 0x82, 0xAC, 0xED, 0xA0, 0xC0, 0xC3, 0xF0, 0x9F, 0xFF]
    return bytes(rnd.choice([rnd.randrange(256), *alphabet]) for _ in range(rnd.randint(1, 14)))


@pytest.mark.reference
def test_invalid_utf8_matches_llama_cpp(real_vocab) -> None:
    """Bad bytes: SPM spells them with byte tokens, BPE reads them as U+FFFD (as llama.cpp)."""
    _, path = real_vocab
    tok, ref = tokenizer_for(str(path)), ref_for(str(path))
    rnd = random.Random(7)
    bad, tried = [], 0
    while tried < 1500:
        data = _random_bytes(rnd)
        if tok.vocab_type == "bpe" and max(llama_codepoints(data)) > 0x10FFFF:
            continue  # llama.cpp aborts on these (see test_code_point_above_unicode_is_refused)
        tried += 1
        for special in (False, True):
            want, got = ref.tokenize(data, True, special), tok.tokenize(data, special=special)
            if want != got:
                bad.append(f"{data!r}: {got} != {want}")
    assert_none(bad)


def test_code_point_above_unicode_is_refused(vocab_path) -> None:
    tok = tokenizer_for(str(vocab_path("gpt-2")))
    with pytest.raises(TokenizerError, match="U\\+10FFFF"):
        tok.tokenize(b"a\xf4\x90\x80\x80b")
    assert tok.tokenize(b"\xed\xa0\x80") == [169, 254, 222]  # a surrogate: its three bytes, as llama.cpp


def test_spm_python_merge_agrees_with_sentencepiece(vocab_path) -> None:
    """The two SPM implementations (sentencepiece for valid UTF-8, Python for the rest) agree."""
    tok = tokenizer_for(str(vocab_path("llama-spm")))
    tok._encode_spm(b"x")  # builds the byte-keyed index
    fast, slow = tok._sp, tok._spm_bytes
    assert fast is not None and slow is not None
    from splitllm.tokenizer.spm import merge_bytes

    for s in corpus(n=200, seed=99):
        text = (" " + s).replace(" ", "\u2581")
        assert fast.encode(text) == merge_bytes(text.encode(), slow, tok.vocab.scores, tok._byte_token), s


# ---- vocabularies made for the test: every pre-tokenizer, special tokens, flags ----

BPE_EXTRA = (("<|im_start|>", 3), ("<|im_end|>", 3), ("<tool>", 4), ("<|fim_prefix|>", 3), ("<unused7>", 3))


def small_bpe_metadata(gpt2: dict[str, Any], pre: str, n_merges: int = 3000, drop_bytes: str = "") -> dict:
    """GPT-2's byte alphabet and first merges (token 256 + i is merge i), plus special tokens."""
    tokens = [t for t in gpt2[KEY + "tokens"][:256 + n_merges] if t not in drop_bytes]
    extra = [("<|endoftext|>", 3), *BPE_EXTRA]
    eot = len(tokens)
    return {"general.architecture": "gpt2", "general.name": "synthetic", KEY + "model": "gpt2",
            KEY + "pre": pre, KEY + "tokens": tokens + [t for t, _ in extra],
            KEY + "token_type": [1] * len(tokens) + [k for _, k in extra],
            KEY + "merges": gpt2[KEY + "merges"][:n_merges], KEY + "bos_token_id": eot,
            KEY + "eos_token_id": eot}


@pytest.fixture(scope="session")
def gpt2_metadata(vocab_path) -> dict[str, Any]:
    return gguf_metadata(str(vocab_path("gpt-2")))


@pytest.fixture(scope="session")
def spm_metadata(vocab_path) -> dict[str, Any]:
    return gguf_metadata(str(vocab_path("llama-spm")))


def check_against_llama_cpp(tmp: Path, md: dict[str, Any], strings: list[str]) -> Tokenizer:
    with LlamaRef(write_vocab_gguf(tmp / "vocab.gguf", md)) as ref:
        tok = Tokenizer.from_metadata(md)
        assert_none(mismatches(tok, ref, strings))
        lib = ref.lib
        assert tok.eog_ids == {t for t in range(tok.n_vocab) if lib.llama_vocab_is_eog(ref.vocab, t)}
        assert tok.vocab.attrs == [lib.llama_vocab_get_attr(ref.vocab, t) for t in range(tok.n_vocab)]
    return tok


@pytest.mark.reference
@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_every_pre_tokenizer_matches_llama_cpp(tmp_path: Path, gpt2_metadata, pre: str) -> None:
    extra = tuple(t for t, _ in BPE_EXTRA)
    strings = corpus(extra, n=40, seed=zlib.crc32(pre.encode()))
    check_against_llama_cpp(tmp_path, small_bpe_metadata(gpt2_metadata, pre), strings)


@pytest.mark.reference
def test_bpe_vocabulary_missing_byte_characters(tmp_path: Path, gpt2_metadata) -> None:
    """A byte that is not a token stays between its neighbours and is dropped (as in SmolLM2)."""
    kept = gpt2_metadata[KEY + "tokens"][256:256 + 3000]
    unused = "".join(c for c in gpt2_metadata[KEY + "tokens"][:256] if not any(c in t for t in kept))
    md = small_bpe_metadata(gpt2_metadata, "qwen2", drop_bytes=unused)
    tok = check_against_llama_cpp(tmp_path, md, corpus((), n=60))
    assert len(unused) > 20 and tok.n_vocab == 256 + 3000 + 1 + len(BPE_EXTRA) - len(unused)


def spm_variant(spm: dict[str, Any], **changes: Any) -> dict[str, Any]:
    md = dict(spm)
    extra = changes.pop("extra", ())
    md[KEY + "tokens"] = spm[KEY + "tokens"] + [t for t, _ in extra]
    md[KEY + "scores"] = spm[KEY + "scores"] + [0.0] * len(extra)
    md[KEY + "token_type"] = spm[KEY + "token_type"] + [k for _, k in extra]
    md.update(changes)
    return md


@pytest.mark.reference
def test_spm_without_space_prefix(tmp_path: Path, spm_metadata) -> None:
    md = spm_variant(spm_metadata, **{KEY + "add_space_prefix": False})
    tok = check_against_llama_cpp(tmp_path, md, corpus(SPECIALS["llama-spm"], n=60))
    assert tok.tokenize(b"Hello", add_bos=False) == [10994]  # "Hello", not "▁Hello"


@pytest.mark.reference
def test_spm_with_added_tokens_eos_and_phi3_rstrip(tmp_path: Path, spm_metadata) -> None:
    """User-defined tokens (always split out), control tokens (only with special=True), add_eos,
    and the RSTRIP llama.cpp gives Phi-3's special tokens."""
    extra = (("<|user|>", 3), ("<|assistant|>", 3), ("<|end|>", 3), ("<|endoftext|>", 3), ("<tool_call>", 4),
             ("<unused0>", 3), ("▁<PRE>", 3))  # llama.cpp refuses a "phi-3" without <|endoftext|>
    md = spm_variant(spm_metadata, extra=extra, **{"general.name": "Phi-3 mini", KEY + "add_eos_token": True})
    specials = tuple(t for t, _ in extra) + SPECIALS["llama-spm"] + ("<|user|>\n  ", "  <|end|>  x")
    tok = check_against_llama_cpp(tmp_path, md, corpus(specials, n=80))
    end = tok.vocab.token_to_id["<|end|>"]
    assert tok.token_attr(end) & TokenAttr.RSTRIP and end in tok.eog_ids
    # the spaces after <|end|> are stripped; "x" then gets the space prefix of text after a special token
    assert tok.tokenize("<|end|>  x", add_bos=False, special=True) == [end, *tok.tokenize("x", add_bos=False)]


@pytest.mark.reference
def test_bpe_add_bos_and_user_defined(tmp_path: Path, gpt2_metadata) -> None:
    md = small_bpe_metadata(gpt2_metadata, "smollm")
    md[KEY + "add_bos_token"] = True
    md[KEY + "add_eos_token"] = True
    tok = check_against_llama_cpp(tmp_path, md, corpus(tuple(t for t, _ in BPE_EXTRA), n=60))
    tool = tok.vocab.token_to_id["<tool>"]
    assert tok.tokenize("a<tool>b", special=False) == [tok.bos_id, 64, tool, 65, tok.eos_id]


# ---- pre-tokenizer expressions, against the regex package ----


def regex_split(regexes: tuple[str, ...], text: str) -> list[str]:
    """llama.cpp's unicode_regex_split semantics: each expression splits every piece, keeping
    the matches and the text between them."""
    regex = pytest.importorskip("regex")
    pieces = [text] if text else []
    for expr in regexes:
        split = []
        for piece in pieces:
            end = 0
            for m in regex.finditer(expr, piece):
                if m.start() > end:
                    split.append(piece[end:m.start()])
                split.append(m.group())
                end = m.end()
            if end < len(piece):
                split.append(piece[end:])
        pieces = split
    return pieces


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "smollm", "default", "gpt-2", "qwen35", "falcon"])
def test_pre_tokenizer_split_matches_regex(gpt2_metadata, pre: str) -> None:
    tok = Tokenizer.from_metadata(small_bpe_metadata(gpt2_metadata, pre, n_merges=10))
    regexes = PRE_TOKENIZERS[pre].regexes
    for s in corpus(n=150, seed=5):
        assert tok._bpe.split(s) == regex_split(regexes, s), repr(s)


def test_pre_tokenizer_examples(gpt2_metadata) -> None:
    def split(pre: str, s: str) -> list[str]:
        return Tokenizer.from_metadata(small_bpe_metadata(gpt2_metadata, pre, n_merges=10))._bpe.split(s)

    text = "Hello  world's 12345!\n\n"
    assert split("qwen2", text) == ["Hello", " ", " world", "'s", " ", *"12345", "!\n\n"]
    assert split("llama-bpe", text.upper()) == ["HELLO", " ", " WORLD", "'S", " ", "123", "45", "!\n\n"]
    assert split("gpt-2", text) == ["Hello", " ", " world", "'s", " 12345", "!", "\n\n"]
    assert split("smollm", "a 123") == ["a", " ", "1", "2", "3"]


# ---- streaming ----


def stream(tok: Tokenizer, ids: list[int], special: bool = False) -> list[str]:
    dec = tok.stream_decoder(special=special)
    return [dec.feed(t) for t in ids] + [dec.flush()]


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2"])
def test_stream_decoder_equals_whole_detokenization(vocab_path, name: str) -> None:
    tok = tokenizer_for(str(vocab_path(name)))
    for s in corpus(SPECIALS[name], n=150, seed=3):
        for special in (False, True):
            ids = tok.tokenize(s, special=special)
            chunks = stream(tok, ids, special)
            assert "".join(chunks) == tok.detokenize(ids, special=special).decode("utf-8", "replace")
            if not special and "▁" not in s:  # SPM reads a typed "▁" as a space
                assert "".join(chunks) == s


def test_stream_decoder_holds_back_partial_characters(vocab_path) -> None:
    tok = tokenizer_for(str(vocab_path("llama-spm")))
    ids = tok.tokenize("a🦙b", add_bos=False)  # the llama has no token: four byte tokens
    pieces = [tok.token_to_piece(t) for t in ids]
    assert pieces == [b" a", b"\xf0", b"\x9f", b"\xa6", b"\x99", b"b"]
    assert stream(tok, ids) == [" a", "", "", "", "🦙", "b", ""]
    # a sequence that never completes comes out as U+FFFD, at once when it cannot be completed
    assert stream(tok, ids[:3] + ids[5:]) == [" a", "", "", "\ufffdb", ""]
    assert stream(tok, ids[:3]) == [" a", "", "", "\ufffd"]


def test_stream_decoder_drops_space_after_bos(vocab_path) -> None:
    tok = tokenizer_for(str(vocab_path("llama-spm")))
    ids = tok.tokenize("Hello world")
    assert stream(tok, ids) == ["", "Hello", " world", ""]
    assert stream(tok, ids, special=True) == ["<s>", " Hello", " world", ""]
    assert stream(tok, ids[1:]) == [" Hello", " world", ""]


# ---- special tokens and flags ----


def test_special_tokens(smollm2_path, vocab_path) -> None:
    tok = tokenizer_for(str(smollm2_path))
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.pre) == (1, 2, False, "smollm")
    assert tok.eog_ids == {0, 2, 4}  # <|endoftext|>, <|im_end|>, <reponame> (a FIM repo token)
    ids = tok.tokenize(b"<|im_start|>user\nhi<|im_end|>", special=True)
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 5
    assert tok.tokenize(b"<|im_start|>", special=False)[:2] != [1]
    assert tok.detokenize(ids) == b"user\nhi"
    assert tok.detokenize(ids, special=True) == b"<|im_start|>user\nhi<|im_end|>"
    assert tok.token_text(2) == "<|im_end|>" and tok.is_eog(2) and not tok.is_eog(1)
    assert tok.token_attr(2) == TokenAttr.CONTROL
    spm = tokenizer_for(str(vocab_path("llama-spm")))
    assert (spm.bos_id, spm.eos_id, spm.unk_id, spm.add_bos, spm.vocab_type) == (1, 2, 0, True, "spm")
    assert spm.tokenize(b"") == [1] and spm.tokenize(b"", add_bos=False) == []


# ---- errors ----


def test_unknown_pre_tokenizer_is_refused(gpt2_metadata) -> None:
    md = small_bpe_metadata(gpt2_metadata, "no-such-pre", n_merges=10)
    with pytest.raises(TokenizerError, match="'no-such-pre' is not a supported pre-tokenizer.*qwen2"):
        Tokenizer.from_metadata(md)


def test_missing_pre_tokenizer_falls_back_to_default(gpt2_metadata) -> None:
    md = small_bpe_metadata(gpt2_metadata, "x", n_merges=10)
    del md[KEY + "pre"]
    with pytest.warns(UserWarning, match="'default' pre-tokenizer"):
        assert Tokenizer.from_metadata(md).pre == "default"


@pytest.mark.parametrize(("change", "message"), [
    ({KEY + "model": "rwkv"}, "'rwkv' is not supported"),
    ({KEY + "model": None}, "no 'tokenizer.ggml.model'"),
    ({KEY + "tokens": None}, "no 'tokenizer.ggml.tokens'"),
    ({KEY + "tokens": ["a", "b", "a"]}, "duplicate token 'a' at ids 0 and 2"),
    ({KEY + "merges": None}, "no 'tokenizer.ggml.merges'"),
    ({KEY + "token_type": [1, 1]}, "'tokenizer.ggml.token_type' has 2 entries"),
    ({KEY + "add_bos_token": True, KEY + "bos_token_id": None, KEY + "pre": "chatglm-bpe"}, "no bos token"),
    ({KEY + "add_eos_token": "yes"}, "'tokenizer.ggml.add_eos_token' has type str"),
])
def test_bad_metadata(gpt2_metadata, change: dict[str, Any], message: str) -> None:
    md = small_bpe_metadata(gpt2_metadata, "gpt-2", n_merges=10)
    for key, value in change.items():
        if value is None:
            md.pop(key, None)
        else:
            md[key] = value
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_metadata(md)


def test_token_out_of_range(vocab_path) -> None:
    tok = tokenizer_for(str(vocab_path("gpt-2")))
    for bad in (-1, tok.n_vocab):
        with pytest.raises(TokenizerError, match="outside the vocabulary of 50257"):
            tok.token_to_piece(bad)
        with pytest.raises(TokenizerError):
            tok.detokenize([1, bad])


# ---- speed ----


def test_build_and_tokenize_speed(vocab_path, tinyshakespeare: str) -> None:
    md = gguf_metadata(str(vocab_path("gpt-2")))
    start = time.perf_counter()
    tok = Tokenizer.from_metadata(md)
    built = time.perf_counter() - start
    assert built < 1.0, f"building a 50k BPE vocabulary took {built:.2f} s"
    text = tinyshakespeare[:100_000]
    start = time.perf_counter()
    tok.tokenize(text)
    took = time.perf_counter() - start
    assert took < 2.0, f"tokenizing 100 kB took {took:.2f} s"
