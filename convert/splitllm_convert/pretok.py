"""Which ``tokenizer.ggml.pre`` a byte-level BPE tokenizer gets.

llama.cpp's convert_hf_to_gguf.py names the pre-tokenizer by hashing the token ids the tokenizer
gives for a fixed text and looking the hash up in a table it regenerates from known models. We
do not import that code. The order here:

1. ``--pre NAME`` from the user wins (llama.cpp rejects names it does not know).
2. The same fixed text and hash, looked up in a short table of well-known models' hashes
   (copied as data from llama.cpp's table; each names its reference model).
3. The pre-tokenizer structure in tokenizer.json: GPT-2's ByteLevel regex alone is ``gpt-2``;
   single digits split before it is ``smollm`` (the StarCoder/SmolLM regex set); a Split on
   Llama 3's regex is ``llama-bpe``, on Qwen2's is ``qwen2``, on o200k's (GPT-4o, gpt-oss) is ``gpt-4o``.
4. Otherwise an error asking for ``--pre``.
"""

from __future__ import annotations

from functools import lru_cache
from hashlib import sha256
from pathlib import Path
from typing import Any

from splitllm_convert.errors import ConvertError

CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
    "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= \u043d\u0435\u0449"
    "\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````\"\"\"\"......"
    "!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some "
    "tea? We'Ve a'lL"
)

# sha256 of str(token ids of CHECK_TEXT) -> pre name, for models this converter's architectures cover
KNOWN_HASHES: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding-0.6B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM-135M
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo-Base-2407
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # Xenova/gpt-4o
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",  # bigcode/starcoder2-3b
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",  # Seed-Coder-8B-Base
    "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6": "hunyuan-dense",  # Hunyuan-4B
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",  # Qwen3.5-9B-Instruct
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",  # MiniMax-M2
}

LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
# Qwen3.5's: marks (\p{M}) kept in words
QWEN35_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)

# o200k (GPT-4o, gpt-oss's o200k_harmony) as its tokenizer.json spells it
GPT4O_REGEX = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def hf_tokenizer(path: Path) -> Any:
    """tokenizer.json loaded by Hugging Face's ``tokenizers`` (cached while the file is unchanged)."""
    st = path.stat()
    return _load_tokenizer(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _load_tokenizer(path: str, mtime_ns: int, size: int) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the Rust library raises a bare Exception for a file it cannot parse
        raise ConvertError(f"{path}: the tokenizers library cannot load it ({e})") from None


def check_hash(tokenizer_json: Path) -> str:
    """The hash llama.cpp computes for a tokenizer: sha256 of the ids (special tokens added) of CHECK_TEXT."""
    ids = hf_tokenizer(tokenizer_json).encode(CHECK_TEXT).ids
    return sha256(str(ids).encode()).hexdigest()


def _steps(pre: Any) -> list[dict[str, Any]]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for p in pre.get("pretokenizers", []) if isinstance(p, dict)]
    return [pre]


def _from_structure(pre: Any) -> str | None:
    steps = _steps(pre)
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {})
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        known = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2", QWEN35_REGEX: "qwen35"}
        return {**known, GPT4O_REGEX: "gpt-4o"}.get(regex or "")
    return None


def detect_pre(tokenizer_json: Path, data: dict[str, Any], override: str | None) -> str:
    """The pre-tokenizer name for a byte-level BPE tokenizer.json (``data`` is its parsed JSON)."""
    if override:
        return override
    name = KNOWN_HASHES.get(check_hash(tokenizer_json))
    if name is None:
        name = _from_structure(data.get("pre_tokenizer"))
    if name is None:
        raise ConvertError(
            f"{tokenizer_json}: the BPE pre-tokenizer is not one the converter recognizes "
            f"({data.get('pre_tokenizer')!r:.200}); pass --pre NAME with llama.cpp's name for it "
            "(e.g. gpt-2, llama-bpe, qwen2, smollm, gpt-4o)"
        )
    return name
