"""llama-cpp-python's ``Llama`` constructor arguments that have no splitllm counterpart of the same
shape: checked here and turned into what :class:`~splitllm.model.Model` uses (a KV cache type name,
metadata overrides), or refused with an error that says why, where honouring them is impossible.
Also the tokenizer object of ``Llama.tokenizer()``."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

# llama.cpp's ggml_type values that llama-cpp-python passes as type_k / type_v (GGML_TYPE_*).
GGML_KV_TYPES = {1: "f16", 8: "q8_0", 2: "q4_0"}
LLAMA_SPLIT_MODE_NONE = 0
LLAMA_SPLIT_MODE_LAYER = 1
LLAMA_SPLIT_MODE_ROW = 2
LLAMA_ATTENTION_TYPE_UNSPECIFIED = -1
LLAMA_ATTENTION_TYPE_CAUSAL = 0
LLAMA_ATTENTION_TYPE_NON_CAUSAL = 1


def kv_type_name(name: str, value: Any) -> str:
    """A KV cache type as the engine names it, from a name ("f16", "q8_0", ...) or a GGML_TYPE_*
    integer as llama-cpp-python passes it (1: f16, 8: q8_0, 2: q4_0)."""
    if value is None:
        return "f16"
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        if value in GGML_KV_TYPES:
            return GGML_KV_TYPES[value]
        raise ValueError(f"{name}={value}: GGML type {value} is not a KV cache type splitllm has (1: f16, "
                         "8: q8_0, 2: q4_0, or give the name)")
    raise ValueError(f"{name} must be a type name or a GGML_TYPE_* integer (got {value!r})")


def check_devices(split_mode: Any, main_gpu: Any, tensor_split: Sequence[float] | None,
                  rpc_servers: Any) -> None:
    """llama-cpp-python's multi-GPU settings: accepted as long as they ask for what splitllm does
    (one GPU, layers placed whole); a split across devices or a remote server is refused."""
    if split_mode not in (LLAMA_SPLIT_MODE_NONE, LLAMA_SPLIT_MODE_LAYER, LLAMA_SPLIT_MODE_ROW):
        raise ValueError(f"split_mode must be 0 (none), 1 (layer) or 2 (row) (got {split_mode!r})")
    if split_mode == LLAMA_SPLIT_MODE_ROW:
        raise ValueError("split_mode=2 (row): splitting matrices across GPUs is not supported (one GPU; "
                         "use 0 or 1)")
    if isinstance(main_gpu, bool) or not isinstance(main_gpu, int) or main_gpu != 0:
        raise ValueError(f"main_gpu={main_gpu!r}: splitllm runs on the first CUDA device only (0); choose "
                         "another with CUDA_VISIBLE_DEVICES")
    if tensor_split is not None:
        shares = [float(x) for x in tensor_split]
        if sum(1 for x in shares if x > 0) > 1 or (shares and shares[0] <= 0 and any(x > 0 for x in shares)):
            raise ValueError(f"tensor_split={list(tensor_split)!r}: splitting the model across GPUs is not "
                             "supported (one GPU: leave it None)")
    if rpc_servers:
        raise ValueError("rpc_servers: llama.cpp's RPC backend (remote devices) is not supported")


def check_count(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    """A positive integer (or None where allowed); ValueError naming the argument otherwise."""
    if value is None and allow_none:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer (got {value!r})") from None
    if isinstance(value, bool) or n < 1:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return n


def check_numa(numa: Any) -> None:
    if not isinstance(numa, (bool, int)) or (not isinstance(numa, bool) and not 0 <= numa <= 4):
        raise ValueError(f"numa must be a bool or a GGML_NUMA_STRATEGY_* value 0..4 (got {numa!r})")


def warn_mlock(use_mlock: bool) -> None:
    if use_mlock:
        warnings.warn("use_mlock=True: splitllm does not lock the model in RAM (its pages may be swapped "
                      "out); results are unaffected", RuntimeWarning, stacklevel=4)


# ---- kv_overrides ----

def _family(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def checked_overrides(overrides: Mapping[str, Any] | None, metadata: Mapping[str, Any],
                      path: str) -> dict[str, bool | int | float | str]:
    """llama-cpp-python's ``kv_overrides`` (key -> bool, int, float or str, as llama.cpp's
    llama_model_kv_override takes them), checked against the file's metadata: a key the file holds
    must keep its kind (an int may replace a float), arrays cannot be overridden, strings are at
    most 127 bytes (llama.cpp's limit). ValueError naming the file and the key otherwise."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"kv_overrides must be a dict of key -> bool/int/float/str (got "
                         f"{type(overrides).__name__})")
    out: dict[str, bool | int | float | str] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"kv_overrides: keys must be non-empty strings (got {key!r})")
        kind = _family(value)
        if kind not in ("bool", "int", "float", "str"):
            raise ValueError(f"{path}: kv_overrides[{key!r}] must be a bool, int, float or str (got {kind})")
        if kind == "str" and len(value.encode("utf-8")) > 127:
            raise ValueError(f"{path}: kv_overrides[{key!r}] is longer than 127 bytes (llama.cpp's limit)")
        if kind == "float" and value != value:
            raise ValueError(f"{path}: kv_overrides[{key!r}] is NaN")
        if key in metadata:
            held = metadata[key]
            if isinstance(held, list):
                raise ValueError(f"{path}: kv_overrides[{key!r}]: the file holds an array there, which "
                                 "cannot be overridden")
            have = _family(held)
            if have != kind and not (have == "float" and kind == "int"):
                raise ValueError(f"{path}: kv_overrides[{key!r}] is a {kind}, but the file's value there "
                                 f"is a {have} ({held!r})")
            if have == "float":
                value = float(value)
        out[key] = value
    return out


# ---- llama-cpp-python's LlamaTokenizer ----

class LlamaTokenizer:
    """What llama-cpp-python's ``Llama.tokenizer()`` returns: ``tokenize`` / ``detokenize`` on bytes
    (control tokens parsed by default, as there), ``encode`` / ``decode`` on str."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        return self._tok.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """Bytes of tokens; with prev_tokens, the bytes they add after prev_tokens."""
        if prev_tokens:
            prev = list(prev_tokens)
            whole = self._tok.detokenize(prev + list(tokens), special=special)
            head = self._tok.detokenize(prev, special=special)
            return whole[len(head):] if whole.startswith(head) else whole
        return self._tok.detokenize(list(tokens), special=special)

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenize(text.encode("utf-8", errors="ignore"), add_bos=add_bos, special=special)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.detokenize(tokens).decode("utf-8", errors="ignore")

    @classmethod
    def from_ggml_file(cls, path: str) -> LlamaTokenizer:
        """The tokenizer of a GGUF file (its vocabulary only)."""
        from splitllm.gguf_file import GGUFFile
        from splitllm.tokenizer import Tokenizer

        with GGUFFile(path) as gf:
            return cls(Tokenizer.from_metadata(gf.metadata))


def check_llama_args(*, type_k: Any, type_v: Any, split_mode: Any, main_gpu: Any, tensor_split: Any,
                     rpc_servers: Any, n_ubatch: Any, n_threads_batch: Any, numa: Any, attention_type: Any,
                     last_n_tokens_size: Any, chat_format: str | None, chat_handler: Any, tokenizer: Any,
                     use_mlock: bool) -> tuple[str, str]:
    """Checks ``Model``'s llama-cpp-python arguments (ValueError naming the one that is wrong) and
    returns the KV cache type names of type_k and type_v."""
    from splitllm.chat_formats import check_chat_format

    check_devices(split_mode, main_gpu, tensor_split, rpc_servers)
    check_count("n_ubatch", n_ubatch, allow_none=False)
    check_count("n_threads_batch", n_threads_batch)
    check_numa(numa)
    if attention_type not in (LLAMA_ATTENTION_TYPE_UNSPECIFIED, LLAMA_ATTENTION_TYPE_CAUSAL,
                              LLAMA_ATTENTION_TYPE_NON_CAUSAL):
        raise ValueError(f"attention_type must be -1 (the model's), 0 (causal) or 1 (non-causal); "
                         f"got {attention_type!r}")
    if isinstance(last_n_tokens_size, bool) or not isinstance(last_n_tokens_size, int) \
            or last_n_tokens_size < 0:
        raise ValueError(f"last_n_tokens_size must be a non-negative integer (got {last_n_tokens_size!r})")
    if chat_format is not None:
        check_chat_format(chat_format)
    check_chat_handler(chat_handler)
    if tokenizer is not None and not all(callable(getattr(tokenizer, f, None))
                                         for f in ("tokenize", "detokenize")):
        raise ValueError("tokenizer must have tokenize(text, add_bos, special) and detokenize(tokens, ...) "
                         "(a llama-cpp-python BaseLlamaTokenizer)")
    warn_mlock(use_mlock)
    return kv_type_name("type_k", type_k), kv_type_name("type_v", type_v)


def check_chat_handler(handler: Any) -> None:
    """A llama-cpp-python chat handler (called as ``handler(llama=model, messages=..., ...)``) is
    accepted; the multimodal ones (LLaVA's, mtmd's) need llama.cpp's image encoder: refused."""
    if handler is None:
        return
    if not callable(handler):
        raise ValueError(f"chat_handler must be callable (a llama-cpp-python chat handler; got "
                         f"{type(handler).__name__})")
    names = {c.__name__ for c in type(handler).__mro__}
    if names & {"Llava15ChatHandler", "MTMDChatHandler"} or hasattr(handler, "clip_model_path"):
        raise ValueError(f"chat_handler {type(handler).__name__}: multimodal chat handlers need llama.cpp's "
                         "image encoder (clip / mtmd), which splitllm does not have")
