"""Pre-tokenizers of byte-level BPE vocabularies, keyed by ``tokenizer.ggml.pre``.

llama.cpp (``llm_tokenizer_bpe`` in ``src/llama-vocab.cpp``) splits the text with a list of
regular expressions applied one after the other: each one splits every piece left by the previous
one, keeping both its matches and the text between them. The expressions below are llama.cpp's,
with its per-type flags (``clean_spaces`` for ``llama_detokenize``, ``ignore_merges``, the BOS
default). Only types whose expressions a standard Unicode regex engine runs exactly as llama.cpp
does are listed; any other name is refused, as llama.cpp refuses names it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitllm.tokenizer.errors import TokenizerError

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# o200k (GPT-4o, Phi-4-mini, Llama 4), as llama.cpp writes it. Hugging Face's original cuts words
# at case changes with \p{Lu}/\p{Ll} and keeps marks (\p{M}) in words; llama.cpp's has ASCII case
# classes behind a letter lookahead and no marks, so a non-ASCII letter counts as both cases ("мирМИР"
# is one piece) and a combining mark is cut from its letter. llama.cpp runs it with std::regex on a
# copy of the text where each non-ASCII code point is one byte for its category (0xD2 letter, 0xD1
# number, 0x0B whitespace, others); that byte is in [^a-z] and [^A-Z], as a non-ASCII letter is here
# on the real text, so the splits agree wherever the two Unicode tables do.
_CASED_WORDS = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
                r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?")
GPT4O = _CASED_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
STARCODER = (r"\p{N}", GPT2)
FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")
SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
HUNYUAN_DENSE = (r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
                 r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                 r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral's tekken: llama.cpp's form of the cased words (see _CASED_WORDS), without contractions
TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
          r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """How one ``tokenizer.ggml.pre`` value splits text before the BPE merges."""

    name: str
    regexes: tuple[str, ...]
    clean_spaces: bool = True     # llama_detokenize tidies " ," " 's" and the like
    ignore_merges: bool = False   # a piece that is itself a token is not merged further
    add_bos: bool = False         # default of tokenizer.ggml.add_bos_token
    no_bos: bool = False          # the type has no BOS token unless the metadata names one
    # SentencePiece-style BPE (gemma4): spaces written as U+2581, merges over raw UTF-8 characters,
    # <0xXX> byte tokens for characters outside the vocabulary (bpe.SpmBpeEncoder)
    spm_style: bool = False


def _group(names: str, regexes: tuple[str, ...], **flags: bool) -> dict[str, PreTokenizer]:
    return {n: PreTokenizer(n, regexes, **flags) for n in names.split()}


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_group("default", DEFAULT),
    **_group("gpt-2 phi-2 mpt olmo jais exaone4 jina-es jina-de jina-v2-es jina-v2-de gigachat a.x-4.0 "
             "mellum modern-bert", (GPT2,)),
    **_group("trillion granite-docling", (GPT2,), clean_spaces=False),
    **_group("starcoder refact codeshell exaone minerva-7b mellum2", STARCODER),
    **_group("smollm command-r", STARCODER, clean_spaces=False),
    **_group("qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open", (QWEN2,), clean_spaces=False),
    **_group("stablelm2 megrez", (QWEN2,)),
    **_group("qwen35", (QWEN35,), clean_spaces=False),
    **_group("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2", (LLAMA3,),
             ignore_merges=True, add_bos=True),
    **_group("dbrx smaug-bpe", (LLAMA3,)),
    **_group("chatglm-bpe glm4", (LLAMA3,), no_bos=True),
    **_group("falcon", FALCON),
    **_group("gpt-4o llama4 kanana2 talkie minimax-m2", (GPT4O,), clean_spaces=False),
    **_group("gemma4", (r"[^\n]+|[\n]+",), spm_style=True, add_bos=True),
    **_group("seed-coder", (SEED_CODER,), clean_spaces=False),
    **_group("hunyuan-dense", HUNYUAN_DENSE, clean_spaces=False),
    **_group("tekken", (TEKKEN,), clean_spaces=False, ignore_merges=True, add_bos=True),
}


def pre_tokenizer_for(name: str) -> PreTokenizer:
    """The pre-tokenizer named by ``tokenizer.ggml.pre``; a clear error for names we do not run."""
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.pre' = {name!r} is not a supported "
                             f"pre-tokenizer (supported: {known})") from None
