"""SentencePiece unigram vocabularies (``tokenizer.ggml.model`` = ``t5``: T5, XLM-RoBERTa) against llama.cpp.

The reference is llama.cpp through llama-cpp-python (``llama_tokenize``, ``llama_token_to_piece``,
``llama_detokenize``, ``Llama.detokenize``), on:

- unigram models trained here with ``sentencepiece`` and written as llama.cpp's converter writes
  them: ``T5Model.set_vocab`` (conversion/t5.py: SentencePiece's ids as they are, unused "[PADn]"
  tokens up to the model's vocab_size, added_tokens.json entries as user-defined tokens scored
  -1000) or ``_xlmroberta_set_vocab`` (conversion/bert.py: fairseq's <s>=0 <pad>=1 </s>=2 <unk>=3,
  the pieces one id up, the last id left for <mask>), with the normalizer spec's add_dummy_prefix,
  remove_extra_whitespaces and precompiled_charsmap bytes. Variants: nmt_nfkc (SentencePiece's
  default), nfkc_cf, identity (no charsmap), spaces kept, no space prefix, user-defined symbols and
  added tokens, byte fallback, pieces across spaces (split_by_whitespace off);
- llama.cpp's ``ggml-vocab-nomic-bert-moe.gguf`` (XLM-RoBERTa's 250k vocabulary and charsmap, as
  nomic-embed-text-v2-moe has them) from the llama-cpp-python 0.3.36 source release, fetched with
  pip into ``splitllm.assets.cache_dir()`` (the tests that need it skip when it cannot be fetched).
  llama.cpp ships no .inp/.out golden cases for it; the ids in ``test_nomic_examples`` were
  written down from llama.cpp.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import test_tokenizer as TT
import test_tokenizer_wpm as W
from hf_fixtures import corpus as training_lines
from splitllm.tokenizer import TokenAttr, Tokenizer, TokenizerError

KEY = "tokenizer.ggml."
NOMIC = "ggml-vocab-nomic-bert-moe.gguf"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf TokenType

# T5's added_tokens.json: user-defined tokens, the non-ASCII ones to see llama.cpp's normalizer
# copy a prefix of them ("cafè" starts with "caf" and the first byte of "é") as it is.
ADDED = ["<extra_id_0>", "café", "ﬁle", "東京都"]
USER_SYMBOLS = ["<tool>", "[SEP]", "▁<x>", "Ω"]  # SentencePiece user_defined_symbols (written NORMAL)

CASES = [
    # the charsmap: NFKC, compositions, case folding (nfkc_cf), controls, spaces
    "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３", "ﬁ ﬂ ﬀ ﬃ ﬆ", "①②③ ⑴ ⒈ ㉑", "㍻ ㌔ ㎏ ㏄ ㍿", "½ ¼ ¾ ⅓ ⅞", "x² y³ H₂O",
    "™ ℠ © ® ℃ ℉", "…‥ ‼ ⁇", "e\u0301 é E\u0301 É", "a\u0308 ä o\u0302\u0301 ố", "\u212b Å A\u030a å",
    "ｶﾞｷﾞ ｱｲｳ ﾊﾟ", "\u1100\u1161\u11a8 각 \u1100\u1161", "ǅ Ǆ ǆ", "ſ ẛ ﬅ", "Ⅻ ⅻ Ⅷ", "ℌℍ ℝ ℕ", "𝐀𝐁𝐂 𝒜 𝔄",
    "µ μ Ω Ω K K", "\u00a0nbsp\u00a0", "\u2000\u2001\u2002\u2003\u3000 wide", "zero\u200bwidth\u200c\u200d",
    "\ufeffbom", "soft\u00adhyphen", "\x01\x02\x1f\x7f ctrl", "tab\there", "new\nline\r\nend",
    "\u0085\u2028\u2029",
    "≠ ≮ ≯ <\u0338 =\u0338 >\u0338", "<=> <> ==", "\u0301 alone", "q\u0301 Q\u0301 z\u0301 Z\u0302",
    "HELLO World hello WORLD", "ÀÉÎÕÜ àéîõü ÇÑ çñ", "İstanbul ıi", "ß ẞ ΣΑΣ σας", "ǰ ŉ ΐ", "\ufb01\ufb02",
    # whitespace runs, at either end
    "  leading", "trailing  ", "  both  ", "a  b   c    d", " \t \n ", "\t\t", "\n\n\n", "\r",
    "x\u3000\u3000y",
    "▁", "▁▁", " ▁ ", "a▁b", "▁▁hello▁▁", "\u0000", "a\x00b", "\x00 \x00", "\ufffd", "a\ufffdb",
    # emoji, other scripts, characters the vocabulary lacks (unknown tokens, merged when consecutive)
    "emoji 🦙🦙 😀👍🏽 ❤️ 🇯🇵 👨‍👩‍👧‍👦", "𝄞𝄞𝄞", "ꙮꙮ x ꙮ", "Жж Ѯ ѱ", "ᚠᚢᚦ ᚨ", "⠁⠃⠉", "\ue000\U0010fffd",
    "a🦙b🦙🦙c", "🦙 🦙", "東京 東大 京都", "こんにちは世界", "안녕하세요", "مرحبا", "שָׁלוֹם", "नमस्ते", "สวัสดี",
    # user-defined and added tokens, and prefixes of them
    "<tool>", "<to", "<tool", "<tool>x<tool>", "a<tool>b", "[SEP]", "[SE", "<x>", "▁<x>", "x▁<x>y", "Ω Ω",
    "cafè café cafe", "caf", "café!", "ﬁle ﬁ file ﬁl", "東京都 東京 東大", "<extra_id_0>", "<extra_id_",
    "<extra",
    # special tokens in the text
    "<s>", "</s>", "<unk>", "<pad>", "<mask>", "<s>hello</s>", "a</s>b", "</s></s>", "<s> x </s>", " <unk> ",
    # long inputs
    "a" * 500, "unbelievably" * 30, "東" * 200, " ".join(["word"] * 300), "🦙" * 50, "ab " * 200,
]


def strings(seed: int = 77, n_mix: int = 400, n_random: int = 300) -> list[str]:
    pool = [*W.POOL, "cafè", "ﬁ", "ｆ", "①", "㍻", "e\u0301", "\u0301", "Ω", "<tool>", "<to", "café", "<s>",
            "</s>", "<unk>", "<mask>", "<extra_id_0>", "▁", "  ", "\t", "\n", "\u3000", "🦙"]
    rnd = random.Random(seed)
    mixes = ["".join(rnd.choice(pool) for _ in range(rnd.randint(1, 20))) for _ in range(n_mix)]
    randoms = [W.random_code_points(rnd, rnd.randint(1, 12)) for _ in range(n_random)]
    return CASES + W.CASES + W.MULTILINGUAL + TT.HAND + mixes + randoms


# ---- vocabularies, as llama.cpp's converter writes them ----


def train_unigram(vocab_size: int = 1200, **options: Any) -> bytes:
    """A serialized SentencePiece unigram model trained on the test text (options go to the trainer)."""
    import sentencepiece as spm

    lines = training_lines(1500) + W.MULTILINGUAL * 3 + [s for s in W.CASES if "[" not in s and s.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, model_type="unigram",
                                   vocab_size=vocab_size, hard_vocab_limit=False, minloglevel=2, **options)
    return out.getvalue()


def read_pieces(model: bytes) -> tuple[list[str], list[float], list[int], Any]:
    """Token texts, scores and GGUF types as the converter reads them, and the normalizer spec."""
    import sentencepiece as spm

    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2", reason="needs protobuf")
    sp = spm.SentencePieceProcessor(model_proto=model)
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        types.append(UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                     else BYTE if sp.IsByte(i) else NORMAL)  # user-defined symbols are NORMAL here
    return tokens, scores, types, proto.normalizer_spec


def t5_metadata(model: bytes, *, added: Sequence[str] = (), extra: int = 4,
                add_flags: bool = True) -> dict[str, Any]:
    """T5Model.set_vocab: the pieces, "[PADn]" up to vocab_size, added tokens in [PAD] slots."""
    tokens, scores, types, spec = read_pieces(model)
    n = len(tokens)
    tokens += [f"[PAD{i}]" for i in range(n, n + extra)]
    scores += [-10000.0] * extra
    types += [UNUSED] * extra
    for k, text in enumerate(added):
        tokens[n + k], scores[n + k], types[n + k] = text, -1000.0, USER_DEFINED
    md = {"general.architecture": "t5", "general.name": "unigram-test", KEY + "model": "t5",
          KEY + "pre": "default", KEY + "tokens": tokens, KEY + "scores": scores, KEY + "token_type": types,
          KEY + "add_space_prefix": spec.add_dummy_prefix,
          KEY + "remove_extra_whitespaces": spec.remove_extra_whitespaces,
          KEY + "eos_token_id": 1, KEY + "unknown_token_id": 2, KEY + "padding_token_id": 0}
    if spec.precompiled_charsmap:
        md[KEY + "precompiled_charsmap"] = bytes(spec.precompiled_charsmap)
    if add_flags:  # SpecialVocab, from tokenizer.json's "$A </s>" template
        md.update({KEY + "add_bos_token": False, KEY + "add_eos_token": True})
    return md


def xlmr_metadata(model: bytes) -> dict[str, Any]:
    """_xlmroberta_set_vocab from sentencepiece.bpe.model (<unk>=0 <s>=1 </s>=2 in SentencePiece)."""
    tokens, scores, types, spec = read_pieces(model)
    n = len(tokens) + 2  # the model's vocab_size: fairseq's offset and <mask>
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n)]
    scores += [-10000.0] * (n - len(scores))
    types += [UNUSED] * (n - len(types))
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *tokens[3:-1]]
    scores = [0.0] * 4 + scores[3:-1]
    types = [CONTROL, CONTROL, CONTROL, UNKNOWN, *types[3:-1]]
    md = {"general.architecture": "bert", "general.name": "xlm-roberta-test", KEY + "model": "t5",
          KEY + "pre": "default", KEY + "tokens": tokens, KEY + "scores": scores, KEY + "token_type": types,
          KEY + "add_space_prefix": spec.add_dummy_prefix, KEY + "token_type_count": 1,
          KEY + "remove_extra_whitespaces": spec.remove_extra_whitespaces,
          # SpecialVocab from XLM-R's tokenizer files: "<s> $A </s>"
          KEY + "bos_token_id": 0, KEY + "eos_token_id": 2, KEY + "unknown_token_id": 3,
          KEY + "seperator_token_id": 2, KEY + "padding_token_id": 1, KEY + "mask_token_id": n - 1,
          KEY + "add_bos_token": True, KEY + "add_eos_token": True}
    if spec.precompiled_charsmap:
        md[KEY + "precompiled_charsmap"] = bytes(spec.precompiled_charsmap)
    return md


T5_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "t5": ("t5", {}),
    "xlmr": ("xlmr", {}),
    "identity": ("t5-defaults", {"normalization_rule_name": "identity"}),
    "nfkc-cf-no-prefix": ("xlmr", {"normalization_rule_name": "nfkc_cf", "add_dummy_prefix": False,
                                   "remove_extra_whitespaces": False}),
    "keep-spaces": ("t5", {"remove_extra_whitespaces": False}),
    "user-defined": ("t5-added", {"user_defined_symbols": USER_SYMBOLS}),
    "byte-fallback": ("t5", {"byte_fallback": True}),
    "across-spaces": ("xlmr", {"split_by_whitespace": False, "remove_extra_whitespaces": False}),
}


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata as splitllm's Model reads it (splitllm.gguf_file; the charsmap as a list of ints)."""
    from splitllm.gguf_file import GGUFFile

    with GGUFFile(path) as gf:
        return dict(gf.metadata)


class Variant:
    """A trained vocabulary: its metadata, its GGUF file and our tokenizer, read back from the file."""

    def __init__(self, name: str, folder: Path) -> None:
        layout, options = VARIANTS[name]
        if layout == "xlmr":
            self.md = xlmr_metadata(train_unigram(**options))
        else:
            model = train_unigram(**T5_IDS, **options)
            self.md = t5_metadata(model, added=ADDED if layout == "t5-added" else [],
                                  add_flags=layout != "t5-defaults")
        self.path = TT.write_vocab_gguf(folder / f"{name}.gguf", self.md)
        self.tok = Tokenizer.from_metadata(read_metadata(self.path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """variant name -> Variant, trained when first asked for."""
    folder = tmp_path_factory.mktemp("ugm")
    made: dict[str, Variant] = {}

    def get(name: str) -> Variant:
        if name not in made:
            made[name] = Variant(name, folder)
        return made[name]

    return get


def specials_of(tok: Tokenizer) -> list[str]:
    """Texts of the control, user-defined, unknown and unused tokens (unused ones are normal text)."""
    kinds = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN | TokenAttr.UNUSED
    return [tok.token_text(i) for i in range(tok.n_vocab) if tok.token_attr(i) & kinds][:40]


# ---- trained vocabularies against llama.cpp ----


@pytest.mark.reference
@pytest.mark.parametrize("name", list(VARIANTS))
def test_trained_vocabulary_matches_llama_cpp(trained, name: str) -> None:
    v = trained(name)
    tok = v.tok
    rnd = random.Random(name)
    extra = specials_of(tok) + [" ", "a", "é"]
    texts = strings(seed=rnd.randrange(1 << 30)) + [
        "".join(rnd.choice(extra) for _ in range(rnd.randint(1, 8))) for _ in range(100)]
    with TT.LlamaRef(v.path) as ref:
        W.compare(tok, ref, texts)
    assert tok.vocab_type == "ugm"
    words = " ".join(training_lines(20, seed=1))  # the vocabulary covers its training text
    ids = tok.tokenize(words, add_bos=False)
    assert tok.unk_id not in ids and len(ids) < len(words) / 2
    assert Tokenizer.from_metadata(v.md).tokenize(words) == tok.tokenize(words)  # the charsmap as bytes


@pytest.mark.reference
@pytest.mark.parametrize("name", ["xlmr", "user-defined", "nfkc-cf-no-prefix"])
def test_invalid_utf8_matches_llama_cpp(trained, name: str) -> None:
    """Bad bytes become U+FFFD; surrogates and overlong forms pass (as llama.cpp reads UTF-8); a
    user-defined prefix may end inside a character."""
    v = trained(name)
    with TT.LlamaRef(v.path) as ref:
        rnd = random.Random(11)
        tails = [b"", b" the", b"\xc3\xa9t\xc3\xa9", b"caf\xc3", b"\xed\xa0\x80"]
        bad = []
        for _ in range(1500):
            data = TT._random_bytes(rnd) + rnd.choice(tails)
            for add, special in ((False, False), (True, True)):
                want = ref.tokenize(data, add, special)
                got = v.tok.tokenize(data, add_bos=add, special=special)
                if want != got:
                    bad.append(f"{data!r}: {got} != {want}")
        TT.assert_none(bad)


@pytest.mark.reference
def test_whole_text_viterbi_matches_llama_cpp(trained) -> None:
    """The whole-text Viterbi (taken when a word-by-word sum could round) gives llama.cpp's tokens too."""
    v = trained("xlmr")
    tok = Tokenizer.from_metadata(v.md)
    tok._ugm._limit = 0.0
    with TT.LlamaRef(v.path) as ref:
        texts = strings(seed=3, n_mix=150, n_random=100)
        bad = [s for s in texts if tok.tokenize(s, special=True) != ref.tokenize(s.encode(), True, True)]
        TT.assert_none(bad)


@pytest.mark.reference
def test_long_text_matches_llama_cpp(trained, tinyshakespeare: str) -> None:
    """300 kB of real text and the multilingual lines, in one call."""
    v = trained("xlmr")
    with TT.LlamaRef(v.path) as ref:
        ids = W.check_long_text(v.tok, ref, tinyshakespeare)
        head = ids[:4000]  # the reference's buffer holds 64 kB
        assert v.tok.llama_detokenize(head, remove_special=True) == ref.llama_detokenize(head, True, False)


# ---- what the normalizer and the Viterbi do, and their shortcuts ----


def test_normalization_examples(trained) -> None:
    """llama.cpp's normalize, spelled out (the tests above check it against llama.cpp)."""
    norm = trained("t5").tok._ugm.normalize
    assert norm("  Hello\t\tｗｏｒｌｄ ﬁ① \n".encode()) == "▁Hello▁world▁fi1".encode()
    assert norm("e\u0301 \x01x\u3000y".encode()) == "▁é▁x▁y".encode()
    assert norm(b"a\xffb\xed\xa0\x80") == "▁a\ufffdb".encode() + b"\xed\xa0\x80"  # a surrogate passes
    user = trained("user-defined").tok._ugm.normalize
    # prefixes of "café" and "ﬁle" are copied as they are: "caf" + the first byte of "è", then
    # U+FFFD for its second byte; "ﬁ" is not made "fi"
    assert user("cafè ﬁ ﬁle".encode()) == "▁caf".encode() + b"\xc3" + "\ufffd▁ﬁ▁ﬁle".encode()
    keep = trained("keep-spaces").tok._ugm.normalize
    assert keep(b"  a  b ") == "▁▁▁a▁▁b▁".encode() and keep(b"   ") == "▁▁▁".encode()
    plain = trained("nfkc-cf-no-prefix").tok._ugm.normalize
    assert plain("  HeLLo ＡＢ".encode()) == "▁▁hello▁ab".encode()
    ident = trained("identity").tok._ugm.normalize
    assert ident("  ｆ\t\x01 x ".encode()) == "▁ｆ\t\x01▁x".encode()


def test_word_by_word_equals_whole_text(trained) -> None:
    """The cached word-by-word Viterbi, the whole-text one and the one on bytes agree."""
    ugm = trained("user-defined").tok._ugm
    assert ugm._by_word
    split = 0
    for s in strings(seed=9, n_mix=200, n_random=100):
        norm = ugm.normalize(s.encode())
        try:
            text = norm.decode()
        except UnicodeDecodeError:  # a character split by a user-defined prefix ("cafè")
            split += 1
            continue
        if text:
            whole = ugm._viterbi(text)[0]
            assert ugm._encode_text(text) == whole == ugm._viterbi_bytes(norm), repr(s)
    assert split > 0
    assert not trained("across-spaces").tok._ugm._by_word  # pieces such as "s▁the" span words


def test_vocabulary_defaults(trained) -> None:
    """llama.cpp's defaults for "t5": no BOS, EOS 1 added, unknown 2, pad 0, no space prefix."""
    v = trained("identity")
    tok = v.tok
    vocab = tok.vocab
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.sep_id) == (None, 1, 2, 0, None)
    assert (vocab.add_bos, vocab.add_eos, vocab.add_sep, vocab.clean_spaces) == (False, True, False, False)
    assert (vocab.add_space_prefix, vocab.remove_extra_whitespaces) == (True, True)  # from the keys
    assert vocab.precompiled_charsmap == b"" and KEY + "precompiled_charsmap" not in v.md
    dropped = ("add_space_prefix", "remove_extra_whitespaces", "eos_token_id", "unknown_token_id")
    bare = {k: x for k, x in v.md.items() if k.removeprefix(KEY) not in dropped}
    vocab = Tokenizer.from_metadata(bare).vocab
    assert (vocab.add_space_prefix, vocab.remove_extra_whitespaces) == (False, False)
    assert (vocab.special["eos"], vocab.special["unk"]) == (1, 2)
    ids = tok.tokenize("hello")
    assert ids[-1] == 1 and ids[:-1] == tok.tokenize("hello", add_bos=False)
    assert tok.tokenize("") == [1] and tok.tokenize("", add_bos=False) == []
    xlmr = trained("xlmr").tok
    assert (xlmr.bos_id, xlmr.eos_id, xlmr.unk_id, xlmr.sep_id) == (0, 2, 3, 2)
    assert (xlmr.add_bos, xlmr.add_eos) == (True, True)
    assert xlmr.eog_ids == {2} and xlmr.token_attr(2) == TokenAttr.CONTROL
    assert xlmr.detokenize(xlmr.tokenize("hello world")) == b"hello world"


def test_bad_vocabularies(trained) -> None:
    md = trained("t5").md
    blob = md[KEY + "precompiled_charsmap"]
    for bad, message in ((b"\x01\x00", "too small"), (b"\x08\x00\x00\x00" + bytes(8), "runs past"),
                         ("text", "array of bytes"), ([1, 2, 300, 4, 5], "array of bytes")):
        with pytest.raises(TokenizerError, match=message):
            Tokenizer.from_metadata({**md, KEY + "precompiled_charsmap": bad})
    # a double array that points outside itself: llama.cpp throws when the walk gets there
    broken = blob[:4] + b"\xff\xff\xff\x7f" + blob[8:]
    tok = Tokenizer.from_metadata({**md, KEY + "precompiled_charsmap": broken})
    with pytest.raises(TokenizerError, match="out of bounds"):
        tok.tokenize("hello")
    # no unknown token (a vocabulary too small for the default id 2): llama.cpp would write id -1
    tiny = {**md, KEY + "tokens": ["▁", "a"], KEY + "scores": [-1.0, -2.0], KEY + "token_type": [1, 1]}
    for k in ("eos_token_id", "unknown_token_id", "padding_token_id", "add_eos_token"):
        tiny.pop(KEY + k)
    tok = Tokenizer.from_metadata(tiny)
    assert tok.unk_id is None and tok.tokenize("a a", add_bos=False) == [0, 1, 0, 1]
    with pytest.raises(TokenizerError, match="no unknown token"):
        tok.tokenize("ab", add_bos=False)


def test_tokenize_speed(trained) -> None:
    """About 1 MB: natural text (words repeat, so the word cache helps) and unique random words."""
    tok = trained("xlmr").tok
    rnd = random.Random(3)
    lines = W.MULTILINGUAL + training_lines(300)
    text = " ".join(rnd.choice(lines) for _ in range(12_000))[:1_000_000]
    start = time.perf_counter()
    tok.tokenize(text)
    took = time.perf_counter() - start
    assert took < 4.0, f"tokenizing 1 MB took {took:.2f} s"
    letters = "abcdefghijklmnopqrstuvwxyzéü東京"
    words = " ".join("".join(rnd.choice(letters) for _ in range(rnd.randint(2, 12))) for _ in range(125_000))
    start = time.perf_counter()
    tok.tokenize(words)
    took = time.perf_counter() - start
    assert took < 8.0, f"tokenizing {len(words) // 1000} kB of random words took {took:.2f} s"


# ---- llama.cpp's ggml-vocab-nomic-bert-moe.gguf (XLM-RoBERTa) ----


@pytest.fixture(scope="module")
def nomic_path() -> Path:
    return W.llama_cpp_vocab(NOMIC)


@pytest.fixture(scope="module")
def nomic(nomic_path: Path) -> Tokenizer:
    return Tokenizer.from_metadata(read_metadata(nomic_path))


def test_nomic_examples(nomic: Tokenizer) -> None:
    """Ids written down from llama.cpp (llama-cpp-python 0.3.36) for XLM-RoBERTa's vocabulary."""
    assert (nomic.vocab_type, nomic.n_vocab) == ("ugm", 250048)
    assert (nomic.bos_id, nomic.eos_id, nomic.unk_id, nomic.mask_id) == (0, 2, 3, 250001)
    assert nomic.tokenize("Hello World!") == [0, 35378, 6661, 38, 2]
    ids = nomic.tokenize("  ｆｕｌｌｗｉｄｔｈ\tﬁle  ①  e\u0301", add_bos=False)
    assert ids == [4393, 146984, 11435, 106, 393]  # NFKC, spaces merged, "e" + U+0301 composed
    assert nomic.detokenize(ids) == " fullwidth file 1 é".encode()
    # unknown characters (one unknown token per run), <mask> (special) and a CJK word
    assert nomic.tokenize("🦙 ꙮꙮ<mask> 東京", add_bos=False, special=True) == [6, 3, 6, 3, 250001, 6, 22888]
    assert nomic.tokenize("Ünïcödé  àçcents\u3000カタカナ ｶﾀｶﾅ") == [
        0, 8578, 19, 9392, 238, 21166, 446, 253, 2738, 16797, 7, 6, 10045, 10793, 10045, 17456, 6, 10045,
        10793, 10045, 17456, 2]
    assert nomic.detokenize([0, 35378, 6661, 38, 2]) == b"Hello World!"


@pytest.mark.reference
def test_nomic_matches_llama_cpp(nomic_path: Path, nomic: Tokenizer) -> None:
    with TT.LlamaRef(nomic_path) as ref:
        W.compare(nomic, ref, strings(seed=78), seed=6)


@pytest.mark.reference
def test_nomic_long_text_matches_llama_cpp(nomic_path: Path, nomic: Tokenizer, tinyshakespeare: str) -> None:
    with TT.LlamaRef(nomic_path) as ref:
        W.check_long_text(nomic, ref, tinyshakespeare)
