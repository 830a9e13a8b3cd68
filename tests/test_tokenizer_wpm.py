"""WordPiece vocabularies (``tokenizer.ggml.model`` = ``bert``: all-MiniLM, bge, e5, ...) against llama.cpp.

The reference is llama.cpp through llama-cpp-python (``llama_tokenize``, ``llama_token_to_piece``,
``llama_detokenize``, ``Llama.detokenize``), on:

- vocabularies trained here with ``tokenizers``' WordPiece trainer, cased and uncased, written as
  llama.cpp's ``convert_hf_to_gguf.py`` (``BertModel.set_vocab`` and gguf-py's ``SpecialVocab``)
  writes them: "##x" becomes "x", any other token "▁x", special tokens stay as they are; with each
  setting of the normalizer keys, and with the keys older converters wrote (no BOS/EOS ids);
- llama.cpp's own ``ggml-vocab-bert-bge.gguf`` and its golden cases, from the llama-cpp-python
  0.3.36 source release (fetched with pip into ``splitllm.assets.cache_dir()``; the tests that need
  it skip when it cannot be fetched).

llama.cpp loads a vocabulary-only "bert" GGUF without any ``bert.*`` key, so none are written.
Left out of the test strings: code points above U+10FFFF (llama.cpp aborts on them; splitllm
raises, see ``test_code_point_above_unicode_is_refused``) and, under a Python whose ``unicodedata``
is newer than llama.cpp's Unicode 15.1, code points assigned since (random code points are then
drawn from those Unicode 3.2 already had).
"""

from __future__ import annotations

import random
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import test_tokenizer as TT
from hf_fixtures import corpus as training_lines
from lcpp import LLAMA_CPP_SDIST, fetch_llama_cpp_vocab, llama_cpp_vocab  # noqa: F401 - W.* in other tests
from splitllm.tokenizer import TokenAttr, Tokenizer, TokenizerError
from splitllm.tokenizer.bpe import llama_codepoints

KEY = "tokenizer.ggml."
HF_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BGE = "ggml-vocab-bert-bge.gguf"

MULTILINGUAL = [
    "Привет, мир! Как дела? Москва и Санкт-Петербург.", "Γειά σου Κόσμε, η Αθήνα είναι όμορφη.",
    "Ünïcödé àçcents: café, naïve, résumé, façade, jalapeño, Ångström, Straße, Øresund.",
    "日本語のテキスト、カタカナとひらがな。東京タワー", "中文字符测试，标点符号。我想在北京工作。",
    "한국어 텍스트 안녕하세요 세계", "مرحبا بالعالم ١٢٣ العربية", "שָׁלוֹם עולם", "नमस्ते दुनिया हिन्दी",
    "สวัสดีชาวโลก ภาษาไทย", "İstanbul ıi Ǆ ǅungla", "Ελληνικά ΕΛΛΗΝΙΚΑ", "ÀÉÎÕÜ àéîõü ÇÑ çñ",
    "emoji 🦙 😀 👍🏽 ❤️ 🇯🇵", "quantize the model's weights: 4-bit, 8-bit (q4_0, q8_0) & more...",
    "Hello World! HELLO world. hello WORLD?",
]

CASES = [
    # case and accents
    "Hello World", "HELLO world", "Héllo Wörld", "ÀÉÎÕÜ àéîõü", "Ünïcödé àçcents", "naïve café résumé",
    "Straße STRASSE ẞ", "İstanbul ıi", "ǅungla Ǆ ǆ", "ΣΑΣ σας", "e\u0301 é", "a\u0308\u0301b", "\u0301a",
    "a \u0301", "\u212b \u00c5 A\u030a", "ﬁ ﬀ", "Ⅻ ½ ² ³", "ÉCOLE École", "Ꭰ ꭰ", "𐐀 𐐨", "Ⓐ ⓐ",
    "가각 힣", "ㄱ ᄀ", "Å", "Ǻ ǻ", "ﬃ", "ŉ", "ǰ",
    # punctuation and symbols
    "Hello, world!", "...!!!???", "a-b_c", "(a)[b]{c}<d>", "$100 + 20% = <=> ^~|`",
    "«quoted» “smart” ‘quotes’", "it's don't I'm we're", "a.b.c", "1,000,000.50", "--==++", "@user #tag",
    "path/to/file.py",
    "https://example.com/path?q=1&r=2#frag", "¡¿", "…—–", "·•", "©®™ ±×÷ €£¥", "x²+y²", "→ ← ∀∈",
    "a/b\\c", "\"quoted\"", "'single'",
    # CJK (llama.cpp's ranges, with their 0x2B920 quirk) and other East Asian text
    "中文字符测试，标点符号。", "日本語のテキスト、カタカナ", "東京タワー", "한국어 텍스트", "中文ABC中文",
    "ABC中文abc",
    "\U00020000\U0002a6df", "\U0002b81f\U0002b820\U0002b91f\U0002b920", "\u3000\u3001\u3002",
    "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３", "\u3400\u4dbf", "\uf900\ufaff", "\U0002f800", "\u9fff\ua000",
    # emoji
    "🦙", "👨‍👩‍👧‍👦 🇺🇸 🏳️‍🌈", "😀😀", "a😀b", "❤️", "👍🏽", " this is 🦙.cpp",
    # controls and whitespace
    "\x00\x01\x07\x7f", "a\x00b", "a\tb\nc\rd\x0be\x0cf", "a\u0085b", "a\u00a0b", "a\u1680b",
    "a\u2000b\u200ac", "a\u200bb", "a\ufeffb", "a\u2028b\u2029c", "a\u202fb\u205fc\u3000d",
    "a\x1cb\x1dc\x1ed\x1ff", "\ufffd", "a\ufffdb", "\ue000\U0010fffd", "a\u180eb", "a\u00adb", "\u200d",
    "a\u0600b", "   spaced   out   ", "\t\n \r\n", "tabs\t\tand\t spaces \t",
    # code points assigned in Unicode 14.0-15.1 (marks, punctuation, format characters, case pairs)
    "a\u0cf3b", "x\U00011f43y", "\U00013439x", "a\U00011b00b", "a\u0898b", "a\u2e53b", "a\u0890b",
    "\u2c2f\ua7c0\U00010570", "a\U0001cf00b",
    # words partly or wholly outside the vocabulary, long words
    "supercalifragilisticexpialidocious", "a" * 300, "quantize" * 20, "xyzzyqwv", "modelx", "zzz the",
    "the " * 50 + "ok", "attentionattention", "Q4_0 q8_0 k-quants", "w048 7tuijk dsdfhu",
    # special tokens in the text
    "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[CLS] hello [SEP] world [SEP]", "a[MASK]b", "[unused0]",
    "<tool>", "▁<tool>", "x▁<tool>y", "[CLS][SEP]", "[ CLS ]", "[cls]", "[MASK].", "▁", "▁▁x",
    "", " ", "\n",
    # the examples of test_examples
    "Héllo, WORLD!! 中文ab", "a\x00b\u200bc d\u3000e\u2028f", "İ ǅ \u212b 가", "$x+y^2 £5", "Héllo e\u0301 İ",
    "hello , world 's",
]

POOL = [
    *TT.POOL, "Hello", "WORLD", "Straße", "İ", "ı", "é", "É", "e\u0301", "\u0308", "中", "文", "東京", "한",
    "가", "ア", "ｆ", "１", "\u3000", "\u00a0", "\u2028", "\u0085", "\x00", "\x1f", "\u200b", "\ufeff",
    "\u00ad", "\ufffd", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[unused0]", "<tool>", "▁<tool>",
    "model", "quantize", "attention", "cache", "token", "##", "#", "naïve", "café", "über",
]


def _unicode_newer_than_llama_cpp() -> bool:
    return tuple(int(x) for x in unicodedata.unidata_version.split(".")) > (15, 1, 0)


def random_code_points(rnd: random.Random, n: int) -> str:
    """``n`` code points from anywhere in Unicode (no surrogates), with some ASCII around them."""
    out = []
    while len(out) < n:
        cp = rnd.choice([rnd.randrange(0x110000), rnd.randrange(0x3000), rnd.randrange(0x20000)])
        if 0xD800 <= cp < 0xE000:
            continue
        if _unicode_newer_than_llama_cpp() and unicodedata.ucd_3_2_0.category(chr(cp)) == "Cn":
            continue
        out.append(chr(cp))
        if rnd.random() < 0.3:
            out.append(rnd.choice([" ", "a", "E", ".", "\t"]))
    return "".join(out)


def strings(n_mix: int = 400, n_random: int = 300, seed: int = 77) -> list[str]:
    rnd = random.Random(seed)
    mixes = ["".join(rnd.choice(POOL) for _ in range(rnd.randint(1, 20))) for _ in range(n_mix)]
    randoms = [random_code_points(rnd, rnd.randint(1, 12)) for _ in range(n_random)]
    return CASES + MULTILINGUAL + TT.HAND + mixes + randoms


# ---- vocabularies, as convert_hf_to_gguf.py writes them ----


def train_wordpiece(lowercase: bool, strip_accents: bool | None, vocab_size: int = 2000) -> list[str]:
    """A WordPiece vocabulary (Hugging Face token texts, in id order) trained with ``tokenizers``."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=strip_accents)
    lines = training_lines(1500) + MULTILINGUAL * 3 + [s for s in CASES if "[" not in s]
    tok.train_from_iterator(lines, vocab_size=vocab_size, special_tokens=HF_SPECIALS, show_progress=False)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def phantom(token: str, toktype: int) -> str:
    """BertModel.set_vocab's conversion to llama.cpp's phantom-space vocabulary."""
    if toktype == 3:  # CONTROL
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def bert_metadata(hf_tokens: list[str], *, lowercase: bool | None, strip_accents: bool | None,
                  legacy: bool = False) -> dict[str, Any]:
    """GGUF metadata of a BERT vocabulary: the trained tokens, then two added tokens (a control
    "[unused0]" and a user-defined "<tool>", which the converter writes as "▁<tool>").

    gguf-py's SpecialVocab takes BOS from [CLS] and EOS from [SEP] and sets add_bos/add_eos from
    the "[CLS] $A [SEP]" template; ``legacy`` writes the keys of older converters instead (as in
    llama.cpp's ggml-vocab-bert-bge.gguf): no BOS/EOS ids, so llama.cpp's defaults apply.
    """
    hf = [*hf_tokens, "[unused0]", "<tool>"]
    types = [3 if t in HF_SPECIALS or t == "[unused0]" else 1 for t in hf]
    types[-1] = 4
    tokens = [phantom(t, k) for t, k in zip(hf, types, strict=True)]
    assert len(set(tokens)) == len(tokens), "two tokens with the same GGUF text: llama.cpp refuses them"
    ids = {t: hf.index(t) for t in HF_SPECIALS}
    md: dict[str, Any] = {
        "general.architecture": "bert", "general.name": "wordpiece-test", KEY + "model": "bert",
        KEY + "pre": "default", KEY + "token_type_count": 2, KEY + "tokens": tokens,
        KEY + "token_type": types,
        KEY + "unknown_token_id": ids["[UNK]"], KEY + "seperator_token_id": ids["[SEP]"],
        KEY + "padding_token_id": ids["[PAD]"], KEY + "cls_token_id": ids["[CLS]"],
        KEY + "mask_token_id": ids["[MASK]"],
        KEY + "normalizer.lowercase": lowercase, KEY + "normalizer.strip_accents": strip_accents,
    }
    if not legacy:
        md.update({KEY + "bos_token_id": ids["[CLS]"], KEY + "eos_token_id": ids["[SEP]"],
                   KEY + "add_bos_token": True, KEY + "add_eos_token": True, KEY + "add_sep_token": False})
    return {k: v for k, v in md.items() if v is not None}


# (lowercase, strip_accents) as tokenizers trains with them. The GGUF keys are written as
# SpecialVocab writes them: strip_accents=None in a BertNormalizer is not written (llama.cpp then
# strips accents when it lowercases). "legacy" writes no normalizer keys (llama.cpp's defaults).
VARIANTS = {
    "uncased": (True, None),
    "cased": (False, None),
    "uncased-keep-accents": (True, False),
    "cased-strip-accents": (False, True),
    "legacy": (True, None),
}


@pytest.fixture(scope="module")
def trained() -> dict[tuple[bool, bool | None], list[str]]:
    """Trained vocabularies by (lowercase, strip_accents), filled in by variant_metadata."""
    return {}


def variant_metadata(trained: dict, name: str) -> dict[str, Any]:
    lowercase, strip = VARIANTS[name]
    if (lowercase, strip) not in trained:
        trained[lowercase, strip] = train_wordpiece(lowercase, strip)
    if name == "legacy":
        return bert_metadata(trained[lowercase, strip], lowercase=None, strip_accents=None, legacy=True)
    return bert_metadata(trained[lowercase, strip], lowercase=lowercase, strip_accents=strip)


def vocabulary_mismatches(tok: Tokenizer, ref: TT.LlamaRef) -> list[str]:
    """Special ids, flags, end-of-generation set, and every token's attributes and pieces."""
    lib, v = ref.lib, ref.vocab
    bad = []
    facts = {"n_vocab": (tok.n_vocab, lib.llama_vocab_n_tokens(v)),
             "bos": (tok.bos_id, lib.llama_vocab_bos(v)), "eos": (tok.eos_id, lib.llama_vocab_eos(v)),
             "sep": (tok.sep_id, lib.llama_vocab_sep(v)), "eot": (tok.eot_id, lib.llama_vocab_eot(v)),
             "pad": (tok.pad_id, lib.llama_vocab_pad(v)),
             "add_bos": (tok.add_bos, lib.llama_vocab_get_add_bos(v)),
             "add_eos": (tok.add_eos, lib.llama_vocab_get_add_eos(v)),
             "add_sep": (tok.add_sep, lib.llama_vocab_get_add_sep(v))}
    for name, (ours, theirs) in facts.items():
        if (-1 if ours is None else ours) != theirs:
            bad.append(f"{name}: {ours} != {theirs}")
    eog = {t for t in range(tok.n_vocab) if lib.llama_vocab_is_eog(v, t)}
    if tok.eog_ids != eog:
        bad.append(f"eog: {sorted(tok.eog_ids)} != {sorted(eog)}")
    return bad + TT.token_mismatches(tok, ref)


def random_id_mismatches(tok: Tokenizer, ref: TT.LlamaRef, n: int = 300, seed: int = 5) -> list[str]:
    """Detokenizing random id sequences (BOS, EOS, SEP and control tokens among them)."""
    rnd = random.Random(seed)
    specials = [i for i in (tok.bos_id, tok.eos_id, tok.sep_id, tok.unk_id, tok.pad_id) if i is not None]
    bad = []
    for k in range(n):
        ids = [rnd.choice([rnd.randrange(tok.n_vocab)] * 4 + specials) for _ in range(rnd.randint(0, 12))]
        if k % 3 == 0 and tok.bos_id is not None:
            ids = [tok.bos_id, *ids]
        for special in (False, True):
            if tok.detokenize(ids, special=special) != ref.detokenize(ids, special):
                bad.append(f"detokenize({ids}, {special}): {tok.detokenize(ids, special=special)!r}")
            for remove in (False, True):
                got = tok.llama_detokenize(ids, remove_special=remove, unparse_special=special)
                if got != ref.llama_detokenize(ids, remove, special):
                    bad.append(f"llama_detokenize({ids}, {remove}, {special}): {got!r}")
    return bad


def compare(tok: Tokenizer, ref: TT.LlamaRef, texts: list[str], seed: int = 5) -> None:
    """``tok`` against llama.cpp's ``ref``: the vocabulary, ``texts`` and random id sequences."""
    TT.assert_none(vocabulary_mismatches(tok, ref))
    TT.assert_none(TT.mismatches(tok, ref, texts))
    TT.assert_none(random_id_mismatches(tok, ref, seed=seed))


def check(tmp: Path, md: dict[str, Any], texts: list[str]) -> Tokenizer:
    with TT.LlamaRef(TT.write_vocab_gguf(tmp / "vocab.gguf", md)) as ref:
        tok = Tokenizer.from_metadata(md)
        compare(tok, ref, texts)
    return tok


# ---- trained vocabularies against llama.cpp ----


@pytest.mark.reference
@pytest.mark.parametrize("name", list(VARIANTS))
def test_trained_vocabulary_matches_llama_cpp(tmp_path: Path, trained, name: str) -> None:
    md = variant_metadata(trained, name)
    tok = check(tmp_path, md, strings())
    assert tok.vocab_type == "wpm" and 1000 < tok.n_vocab <= 2002
    words = " ".join(training_lines(20, seed=1))  # the vocabulary covers its training text
    ids = tok.tokenize(words, add_bos=False)
    assert tok.unk_id not in ids and len(ids) < len(words) / 3


@pytest.mark.reference
def test_invalid_utf8_matches_llama_cpp(tmp_path: Path, trained) -> None:
    """Bad bytes read as U+FFFD (dropped), surrogates and overlong forms read as llama.cpp reads them."""
    md = variant_metadata(trained, "uncased")
    with TT.LlamaRef(TT.write_vocab_gguf(tmp_path / "vocab.gguf", md)) as ref:
        tok = Tokenizer.from_metadata(md)
        rnd = random.Random(11)
        bad, tried = [], 0
        while tried < 1500:
            data = TT._random_bytes(rnd) + rnd.choice([b"", b" the", b"\xc3\xa9t\xc3\xa9"])
            if max(llama_codepoints(data), default=0) > 0x10FFFF:
                continue
            tried += 1
            for add, special in ((False, False), (True, True)):
                want, got = ref.tokenize(data, add, special), tok.tokenize(data, add_bos=add, special=special)
                if want != got:
                    bad.append(f"{data!r}: {got} != {want}")
        TT.assert_none(bad)


def test_examples(trained) -> None:
    """What the pre-processing does, spelled out (the tests above check it against llama.cpp)."""
    tok = Tokenizer.from_metadata(variant_metadata(trained, "uncased"))
    words = tok._wpm.words
    assert words("Héllo, WORLD!! 中文ab") == ["hello", ",", "world", "!", "!", "中", "文", "ab"]
    assert words("a\x00b\u200bc d\u3000e\u2028f") == ["abc", "d", "e", "f"]
    assert words("İ ǅ \u212b 가") == ["i", "ǆ", "a", "ᄀ"]  # simple lowercase; first code point of NFD
    assert words("$x+y^2 £5") == ["$", "x", "+", "y", "^", "2", "£5"]  # ASCII symbols only
    cased = Tokenizer.from_metadata(variant_metadata(trained, "cased"))._wpm.words
    assert cased("Héllo e\u0301 İ") == ["Héllo", "e\u0301", "İ"]
    cls, sep = tok.bos_id, tok.sep_id
    ids = tok.tokenize("hello world")
    assert ids[0] == cls and ids[-1] == sep and ids[1:-1] == tok.tokenize("hello world", add_bos=False)
    assert tok.tokenize("") == [cls, sep] and tok.tokenize("", add_bos=False) == []
    assert tok.detokenize(ids) == b"hello world"
    assert tok.detokenize(ids, special=True) == b"[CLS] hello world[SEP]"
    assert tok.llama_detokenize(tok.tokenize("hello , world 's", add_bos=False)) == b" hello, world's"


# ---- vocabulary metadata ----


def test_vocabulary_defaults(trained) -> None:
    md = variant_metadata(trained, "legacy")
    tok = Tokenizer.from_metadata(md)
    v = tok.vocab
    # llama.cpp's defaults for "bert": BOS 101 (where [CLS] sits in BERT's own vocabulary), no EOS
    assert (tok.bos_id, tok.eos_id, tok.sep_id, tok.mask_id) == (101, None, 3, 4)
    assert (v.add_bos, v.add_eos, v.add_sep) == (True, False, True)
    assert (v.clean_spaces, v.add_space_prefix) == (True, False)
    assert (v.lowercase, v.strip_accents) == (True, True)
    modern = Tokenizer.from_metadata(variant_metadata(trained, "uncased"))
    assert (modern.bos_id, modern.eos_id, modern.sep_id) == (2, 3, 3)
    assert modern.token_text(2) == "[CLS]" and modern.token_attr(2) == TokenAttr.CONTROL
    pad = modern.vocab.token_to_id["[PAD]"]
    assert modern.eog_ids == {pad, 3}  # [PAD] is found as a FIM pad token by its text, as in llama.cpp
    unused = modern.vocab.token_to_id["[unused0]"]
    assert modern.token_attr(unused) == TokenAttr.CONTROL | TokenAttr.UNUSED
    for lc, sa, want in ((None, None, (True, True)), (False, None, (False, False)),
                         (True, False, (True, False)), (False, True, (False, True))):
        md[KEY + "normalizer.lowercase"], md[KEY + "normalizer.strip_accents"] = lc, sa
        v = Tokenizer.from_metadata({k: x for k, x in md.items() if x is not None}).vocab
        assert (v.lowercase, v.strip_accents) == want


def test_bad_vocabularies(trained) -> None:
    md = variant_metadata(trained, "uncased")
    with pytest.raises(TokenizerError, match="byte tokens"):
        Tokenizer.from_metadata({**md, KEY + "token_type": [6] + md[KEY + "token_type"][1:]})
    # no unknown token: no key, and a vocabulary too small for llama.cpp's default id 100
    tiny = {k: v for k, v in md.items() if k != KEY + "unknown_token_id"}
    tiny.update({KEY + "tokens": md[KEY + "tokens"][:50], KEY + "token_type": md[KEY + "token_type"][:50]})
    tok = Tokenizer.from_metadata(tiny)
    assert tok.unk_id is None
    with pytest.raises(TokenizerError, match="no unknown token"):
        tok.tokenize("qqqqzzzz", add_bos=False)
    tiny = {k: v for k, v in tiny.items() if k not in (KEY + "bos_token_id", KEY + "seperator_token_id")}
    tok = Tokenizer.from_metadata(tiny)  # llama.cpp loads it, and asserts when adding [CLS]
    first = tiny[KEY + "tokens"][5]  # a character of the alphabet, "▁!"
    assert tok.bos_id is None and tok.tokenize(first[1:], add_bos=False) == [5]
    with pytest.raises(TokenizerError, match="no BOS"):
        tok.tokenize("a")


def test_code_point_above_unicode_is_refused(trained) -> None:
    tok = Tokenizer.from_metadata(variant_metadata(trained, "uncased"))
    with pytest.raises(TokenizerError, match="U\\+10FFFF"):
        tok.tokenize(b"a\xf4\x90\x80\x80b")
    surrogate = b"a\xed\xa0\x80b"  # U+D800 as llama.cpp reads it: a control character, dropped
    assert tok.tokenize(surrogate, add_bos=False) == tok.tokenize(b"ab", add_bos=False)


def test_tokenize_speed(trained) -> None:
    tok = Tokenizer.from_metadata(variant_metadata(trained, "uncased"))
    rnd = random.Random(3)
    text = " ".join(rnd.choice(MULTILINGUAL + training_lines(200)) for _ in range(1200))[:100_000]
    start = time.perf_counter()
    tok.tokenize(text)
    took = time.perf_counter() - start
    assert took < 2.0, f"tokenizing 100 kB took {took:.2f} s"


# ---- llama.cpp's ggml-vocab-bert-bge.gguf and its golden cases ----


@pytest.fixture(scope="module")
def bge_path() -> Path:
    return llama_cpp_vocab(BGE, (BGE + ".inp", BGE + ".out"))  # the GGUF last


@pytest.fixture(scope="module")
def bge(bge_path: Path) -> Tokenizer:
    return Tokenizer.from_metadata(TT.gguf_metadata(str(bge_path)))


def test_bge_golden_cases(bge_path: Path, bge: Tokenizer) -> None:
    cases = TT.read_golden(bge_path)
    assert len(cases) == 46
    for text, want in cases:
        assert bge.tokenize(text.encode("utf-8"), add_bos=False, special=False) == want, repr(text)
    assert (bge.vocab_type, bge.bos_id, bge.eos_id, bge.sep_id, bge.unk_id) == ("wpm", 101, None, 102, 100)
    assert bge.tokenize("Hello World!") == [101, 7592, 2088, 999, 102]
    assert bge.detokenize(bge.tokenize("Hello World!")) == b"hello world !"  # "!" is the token "▁!"


@pytest.mark.reference
def test_bge_matches_llama_cpp(bge_path: Path, bge: Tokenizer) -> None:
    with TT.LlamaRef(bge_path) as ref:
        compare(bge, ref, strings(seed=78) + [text for text, _ in TT.read_golden(bge_path)], seed=6)


@pytest.mark.reference
def test_bge_long_text_matches_llama_cpp(bge_path: Path, bge: Tokenizer, tinyshakespeare: str) -> None:
    """300 kB of real text (and the multilingual lines) in one call."""
    with TT.LlamaRef(bge_path) as ref:
        check_long_text(bge, ref, tinyshakespeare)


def check_long_text(tok: Tokenizer, ref: TT.LlamaRef, tinyshakespeare: str) -> list[int]:
    """300 kB of real text and the multilingual lines, tokenized and detokenized in one call as
    llama.cpp does; the ids."""
    text = (tinyshakespeare[:300_000] + "\n".join(MULTILINGUAL)).encode("utf-8")
    ids = tok.tokenize(text)
    assert ids == ref.tokenize(text, True, False)
    assert tok.detokenize(ids) == ref.detokenize(ids, False)
    return ids

