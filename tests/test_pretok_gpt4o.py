"""The ``gpt-4o`` pre-tokenizer (o200k vocabularies: Phi-4-mini, Llama 4, ...) against llama.cpp.

llama.cpp runs this expression with std::regex on a copy of the text where each non-ASCII code
point is one byte for its category; splitllm runs it with the ``tokenizers`` library on the text
itself. The reference is llama.cpp through llama-cpp-python, on two vocabularies trained here with
``tokenizers``:

- ``trained``: a few hundred merges learned over the pieces the expression cuts, as a real o200k
  vocabulary is made;
- ``seamless``: 3000 merges learned over whole lines of the test strings themselves, with no
  pre-tokenizer, so that about half the tokens cross a place where the expression cuts: a cut placed
  differently from llama.cpp's shows in the ids (Hugging Face's original expression, with its
  Lu/Ll category classes, differs from llama.cpp on about 110 of the strings).

Left out of the strings: code points assigned after llama.cpp's Unicode tables (Unicode 16, e.g.
U+1C89), which llama.cpp reads as "other" and ``tokenizers`` as letters or digits, for every
pre-tokenizer alike; and single pieces of more than 20,000 code points or so (50,000 crash), on
which llama.cpp's recursive std::regex overflows an 8 MiB stack.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import test_tokenizer as TT
from hf_fixtures import corpus as training_lines
from splitllm.tokenizer import PRE_TOKENIZERS, Tokenizer
from splitllm.tokenizer.pretok import GPT4O
from tiny_model import gpt2_byte_tokens

KEY = "tokenizer.ggml."
NAMES = ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2")  # llama.cpp's names for the expression
SPECIALS = (("<|endoftext|>", 3), ("<|user|>", 3), ("<|assistant|>", 3), ("<|end|>", 3), ("<tool>", 4))

CASES = [
    # contractions, both cases
    "I'M", "I'm", "i'm", "don't", "DON'T", "Don'T", "THEY'LL", "they'll", "They'Ll", "we've", "WE'VE",
    "you're", "YOU'RE", "she'd", "SHE'D", "it's", "IT'S", "It'S", "'s", "'S", "'ll", "'Re", "x'LL",
    "o'clock", "rock'n'roll", "Ma'am", "'tis", "l'été", "L'ÉTÉ", "don’t", "ABC's DEF'S abc'S",
    "I'M GOING 'CAUSE THEY'RE", "he said 'hello'", "''s", "'''", "a'", "'", "'1", "'é",
    # mixed case
    "HelloWorld", "iPhone", "McDONALD's", "XMLHttpRequest", "getHTTPResponseCode", "camelCaseWord",
    "PascalCase", "snake_case_Name", "ABCdef", "abcDEF", "aBcDeF", "AbC", "iOS", "PDFs", "JSONParser",
    "ÉCOLE", "École", "éCOLE", "ÀBC", "aÉb", "AéB", "ÉÉé", "éÉ", "Ünïcödé", "ΣΑΣ σας", "ΑθήναΑΘΗΝΑ",
    "Привет МИР", "мирМИР", "МИРмир", "ПРИВЕТмир", "Straße STRASSE ẞ ß", "İstanbul ıi", "Ǆ ǅ ǆ ǅungla",
    "ʰa ꜰ ᵃ", "ﬁ ﬀ", "aΩb", "ΩmegaΩ", "x1Y2z3", "A1b", "a_B", "A-b", "TCP/IP", "HTTP/2",
    # digits
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "1234567890123456789",
    "3.14159", "1,000,000", "-42", "+7", "v2.0.1", "x86_64", "0x1F", "1e-10", "$100", "100%",
    "a1b22c333d4444", "١٢٣٤", "٣٤٥٦٧", "½ ² Ⅻ", "ⅫⅫⅫⅫ", "²³⁴⁵", "𝟙𝟚𝟛𝟜𝟝", "١2٣4", "12abc", "abc12",
    # punctuation runs with newlines
    "a,\n\n b", "x/\n/y", "a/\nb", "a/\n\nb", "...\n", "!!\r\n", "a.\r\n\r\nb", "?/\n\n/", "//\n",
    "end.\n\n\n", " /\n", "--\n--", "a//b", " ///\n", ";\n\t", ")\n}", " )\r\n", "\n/", "/\r/\n",
    "a , b . c ! d", "it ' s", "x ' y", "(a)[b]{c}<d>", "!!!???...", "«quoted»", "“smart” ‘quotes’",
    # whitespace
    " ", "  ", "   ", "   x", " x", "  x", "x ", "x  ", "\t", "\t\tx", "a\t b", "a \t\nb", "\r\n",
    "a\r\nb", "a\r\n\r\n  b", "\n \n", "  \n  x", "x  \n", " \n\n ", "\r", "\r\r\n", "\n\r",
    "a\u00a0b", "a\u00a0\u00a0b", "a\u3000b", "a\u2003 b", "\u2028", "x\u2029y", "\u0085x", "\v\f",
    "a\vb", "\x1c\x1d x", "  \t  \n\t\n  ",
    # non-ASCII text
    "café naïve résumé", "Γειά σου Κόσμε", "Привет, мир! Как дела?", "中文字符测试，标点符号。",
    "日本語のテキスト、カタカナ", "한국어 텍스트", "مرحبا بالعالم ١٢٣", "שָׁלוֹם עולם", "नमस्ते दुनिया",
    "สวัสดีชาวโลก", "ქართული", "Ελληνικά ΕΛΛΗΝΙΚΑ", "e\u0301 é", "a\u0308\u0301b", "E\u0301COLE",
    "\u0301a", "a \u0301", "ﻻ", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３", "中文ABC中文", "ABC中文abc",
    # emoji, ZWJ sequences, flags
    "🦙", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇺🇸🇯🇵", "❤️", "😶‍🌫️", "a😀b", "Hi😀!", "🧑‍💻code", " 🚀 ",
    "😀😀😀", "x\u200dy", "a\u200bb\ufeffc",
    # code
    "def f(x):\n\treturn x**2  # square\n", "if (a != b) { c++; }\n",
    "for i in range(10):\n    print(i)\n", "int main() {\r\n\treturn 0;\r\n}\r\n",
    "const x = {a: 1, 'b': [2, 3]};", "<div class=\"x\">Hi</div>", "SELECT * FROM t WHERE id=42;",
    "path/to/file.py", "a/b/c\n/d", "// comment\n/* block */", "https://example.com/path?q=1&r=2#frag",
    "$HOME/.bashrc", "x += y >>= 2", "fn main() -> Result<(), Box<dyn Error>> {}", "#include <stdio.h>\n",
    "    if x:\n        return None\n\n\n", "s = 'don''t'\n", "L\"wide\" u8'c'",
    # controls, private use, specials
    "\x00\x01\x07\x7f", "\ue000\U0010fffd", "<|endoftext|>", "a<|endoftext|>b", "<|user|>\nHi<|end|>\n",
    "<|assistant|> x<tool>y", "<|end|>'s",
]
POOL = [
    *TT.POOL, "Hello", "World", "iPhone", "McDONALD", "XML", "Http", "ÉCOLE", "école", "мир", "МИР",
    "ΑΘΗΝΑ", "αθήνα", "I", "'M", "'m", "'T", "'RE", "'Ve", "'D", "don", "THEY", "/", "//", "\r", "\r\n\r\n",
    "\t\t", "    ", "1", "12", "123", "1234", "99999", "٣", "x", "Y", "_", "é", "É", "\u0308", "👨‍💻",
    "<|end|>", "<tool>",
]


def strings(n: int = 400, seed: int = 40) -> list[str]:
    rnd = random.Random(seed)
    mixes = ["".join(rnd.choice(POOL) for _ in range(rnd.randint(1, 20))) for _ in range(n)]
    return CASES + TT.HAND + mixes


# ---- vocabularies ----


def train_merges(lines: list[str], vocab_size: int, split: bool) -> list[tuple[str, str]]:
    """Byte-level BPE merges learned by ``tokenizers``, over GPT4O's pieces or over whole lines."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    cut = [pre_tokenizers.Split(Regex(GPT4O), behavior="isolated")] if split else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*cut, byte_level])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]


def vocab_metadata(merges: list[tuple[str, str]], pre: str = "gpt-4o") -> dict[str, Any]:
    """The 256 byte tokens, one token per merge (in merge order), then the special tokens."""
    tokens = gpt2_byte_tokens() + [a + b for a, b in merges]
    assert len(set(tokens)) == len(tokens)
    eot = len(tokens)
    return {"general.architecture": "gpt2", "general.name": "o200k-like", KEY + "model": "gpt2",
            KEY + "pre": pre, KEY + "tokens": tokens + [t for t, _ in SPECIALS],
            KEY + "token_type": [1] * len(tokens) + [k for _, k in SPECIALS],
            KEY + "merges": [f"{a} {b}" for a, b in merges], KEY + "bos_token_id": eot,
            KEY + "eos_token_id": eot}


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    lines = training_lines(600) + [s for s in CASES if "<" not in s]
    merges = train_merges(lines, 256 + 400, split=True)
    assert len(merges) == 400
    return vocab_metadata(merges)


@pytest.fixture(scope="module")
def seamless() -> dict[str, Any]:
    lines = strings()
    for text, _ in SPECIALS:  # special tokens are cut out before the pre-tokenizer
        lines = [s.replace(text, " ") for s in lines]
    merges = train_merges(lines, 256 + 3000, split=False)
    assert len(merges) == 3000
    return vocab_metadata(merges)


# ---- the type and its flags ----


def test_every_llama_cpp_name_with_its_flags() -> None:
    for name in NAMES:
        pre = PRE_TOKENIZERS[name]
        assert pre.regexes == (GPT4O,)
        assert (pre.clean_spaces, pre.ignore_merges, pre.add_bos, pre.no_bos) == (False, False, False, False)


def test_examples(trained) -> None:
    split = Tokenizer.from_metadata(trained)._bpe.split
    assert split("HelloWorld iPhone McDONALD's") == ["Hello", "World", " i", "Phone", " Mc", "DONALD's"]
    assert split("I'M don't THEY'LL") == ["I'M", " don't", " THEY'LL"]
    assert split("1234567 x/\n/y") == ["123", "456", "7", " x", "/\n/", "y"]
    assert split("a,\n\n b  c") == ["a", ",\n\n", " b", " ", " c"]
    # llama.cpp's form, not Hugging Face's: non-ASCII letters count as both cases, marks are cut
    assert split("мирМИР e\u0301") == ["мирМИР", " e", "\u0301"]


def test_split_matches_regex_package(trained) -> None:
    """The ``regex`` package, a third engine, cuts the text as ``tokenizers`` does."""
    tok = Tokenizer.from_metadata(trained)
    for s in strings():
        assert tok._bpe.split(s) == TT.regex_split((GPT4O,), s), repr(s[:80])


# ---- against llama.cpp ----


def check(tmp: Path, md: dict[str, Any], texts: list[str]) -> Tokenizer:
    """Tokenize (with and without BOS and special tokens), detokenize and llama_detokenize like
    llama.cpp; detokenize(tokenize(s)) gives s back."""
    ref = TT.LlamaRef(TT.write_vocab_gguf(tmp / "vocab.gguf", md))
    try:
        tok = Tokenizer.from_metadata(md)
        TT.assert_none(TT.mismatches(tok, ref, texts))
        for s in texts:
            assert tok.detokenize(tok.tokenize(s, add_bos=False)) == s.encode(), repr(s[:80])
            assert ref.detokenize(ref.tokenize(s.encode(), False, False), False) == s.encode(), repr(s[:80])
    finally:
        ref.close()
    return tok


@pytest.mark.reference
def test_trained_vocabulary_matches_llama_cpp(tmp_path: Path, trained) -> None:
    tok = check(tmp_path, trained, strings())
    assert (tok.pre, tok.add_bos) == ("gpt-4o", False)
    text = " ".join(training_lines(20, seed=1))  # the merges matter
    assert len(tok.tokenize(text, add_bos=False)) < len(text.encode()) / 3


@pytest.mark.reference
def test_seamless_vocabulary_matches_llama_cpp(tmp_path: Path, seamless) -> None:
    """Merges that cross the cuts: the ids show where llama.cpp cuts."""
    tok = check(tmp_path, seamless, strings())
    # "iPhone" is a token, but the pre-tokenizer cuts it before the merges
    assert "iPhone" in tok.vocab.token_to_id
    assert [tok.token_to_piece(t) for t in tok.tokenize("iPhone", add_bos=False)][:1] == [b"i"]


@pytest.mark.reference
def test_long_text_matches_llama_cpp(tmp_path: Path, seamless) -> None:
    """All the strings as one text, and long runs of one character class (pieces of up to 5000
    code points, well under the size at which llama.cpp's std::regex runs out of stack)."""
    runs = [c * 5000 for c in ("a", "A", "é", "É", "1", "!", " ", "\n", "/")] + ["aB" * 2500, "Ab" * 2500]
    check(tmp_path, seamless, ["\n".join(strings()), *runs])


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES[1:])
def test_other_names_match_llama_cpp(tmp_path: Path, seamless, name: str) -> None:
    check(tmp_path, {**seamless, KEY + "pre": name}, CASES)
