"""``splitllm.Model``: a GGUF model with llama-cpp-python's ``Llama`` interface.

Three tiers of generation, each built on the one below:

* ``generate(tokens)`` yields token ids (the prompt is evaluated with KV-cache prefix reuse);
* ``stream(prompt_tokens, ...)`` yields typed :class:`CompletionChunk` s: text that is safe to show
  (whole UTF-8 characters, stop strings held back and never emitted), then the finish reason;
* ``create_completion`` / ``__call__`` / ``create_chat_completion`` return OpenAI-shaped dicts,
  or iterators of OpenAI-shaped chunks with ``stream=True``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from splitllm import _core
from splitllm.chat import CHATML_TEMPLATE, ChatTemplate
from splitllm.completions import (
    CompletionChunk,
    TokenText,
    check_max_tokens,
    completion_limit,
    stop_list,
)
from splitllm.dry import DEFAULT_BREAKERS
from splitllm.gguf_file import GGUFFile
from splitllm.grammar import Grammar, as_grammar, sample_with_grammar
from splitllm.imatrix import Imatrix, from_collected
from splitllm.logprobs import check_n_top, token_logprob
from splitllm.model_chat import ChatMethods
from splitllm.model_compat import LLAMA_SPLIT_MODE_LAYER, check_llama_args, checked_overrides
from splitllm.model_complete import CompletionMethods
from splitllm.model_embed import (  # noqa: F401 - the pooling names are splitllm.model's too
    LLAMA_POOLING_TYPE_CLS,
    LLAMA_POOLING_TYPE_LAST,
    LLAMA_POOLING_TYPE_MEAN,
    LLAMA_POOLING_TYPE_NONE,
    LLAMA_POOLING_TYPE_RANK,
    LLAMA_POOLING_TYPE_UNSPECIFIED,
    POOLING_NAMES,
    Dense,
    EmbeddingMethods,
    check_reranker,
    dense_views,
    pool_embeddings,
    pooling_type_of,
    read_dense,
)
from splitllm.model_lora import LoraMethods
from splitllm.model_lowlevel import LowLevelMethods
from splitllm.model_state import ModelState  # noqa: F401 - splitllm.model's too
from splitllm.sampling import LogitsHook, Sampler, SamplingParams, StopHook, sampling_params
from splitllm.speculative import DraftModel, DraftPolicy, single_pass_limit
from splitllm.tokenizer import Tokenizer

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "random seed"
# llama.cpp's rotary scaling types (llama_rope_scaling_type), as llama-cpp-python names them.
LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED = -1  # the model's (rope.scaling.type; linear when absent)
LLAMA_ROPE_SCALING_TYPE_NONE = 0
LLAMA_ROPE_SCALING_TYPE_LINEAR = 1
LLAMA_ROPE_SCALING_TYPE_YARN = 2
LLAMA_ROPE_SCALING_TYPE_LONGROPE = 3
MAX_SPECULATIVE_PASS = 16  # tokens in one pass that checks a draft model's guesses



def rope_settings(scaling_type: int | None, freq_base: float, freq_scale: float, ext_factor: float,
                  attn_factor: float, beta_fast: float, beta_slow: float, orig_ctx: int) -> dict[str, Any]:
    """llama-cpp-python's rotary arguments, checked, as the core's keywords (llama_context_params'
    meaning: 0 base / scale / original context and negative YaRN terms keep the model's)."""
    scaling_type = LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED if scaling_type is None else scaling_type
    if isinstance(scaling_type, bool) or not isinstance(scaling_type, int) or not -1 <= scaling_type <= 3:
        raise ValueError(f"rope_scaling_type must be -1 (the model's), 0 (none), 1 (linear), 2 (yarn) or 3 "
                         f"(longrope); got {scaling_type!r}")
    floats = {"rope_freq_base": freq_base, "rope_freq_scale": freq_scale, "yarn_ext_factor": ext_factor,
              "yarn_attn_factor": attn_factor, "yarn_beta_fast": beta_fast, "yarn_beta_slow": beta_slow}
    for name, v in floats.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number (got {v!r})")
    for name in ("rope_freq_base", "rope_freq_scale"):
        if floats[name] < 0:
            raise ValueError(f"{name} must be >= 0 (0: the model's; got {floats[name]!r})")
    if 0 < freq_scale < 1e-30:  # (as float32, YaRN's factor 1 / scale would overflow)
        raise ValueError(f"rope_freq_scale {freq_scale!r} is too small (its inverse overflows)")
    if isinstance(orig_ctx, bool) or not isinstance(orig_ctx, int) or orig_ctx < 0:
        raise ValueError(f"yarn_orig_ctx must be a non-negative integer (0: the model's; got {orig_ctx!r})")
    return {"rope_scaling_type": scaling_type, **{k: float(v) for k, v in floats.items()},
            "yarn_orig_ctx": orig_ctx}


class Model(CompletionMethods, EmbeddingMethods, ChatMethods, LoraMethods, LowLevelMethods):
    """A GGUF model loaded for inference.

    Follows ``llama_cpp.Llama``: same argument names, same result shapes. Weights stay in the
    memory-mapped file (or are uploaded once to the GPU for offloaded layers); the KV cache is
    allocated once for ``n_ctx`` tokens. ``n_seq_max`` splits the cache into that many sequence
    slots of ``n_ctx // n_seq_max`` cells (for :class:`splitllm.engine.BatchEngine`); the methods
    here use slot 0, so one generation holds at most that many tokens. The sliding-window layers
    of a model that has them (Gemma 2/3) keep only ``n_swa + n_batch`` cells per slot, as
    llama-server does; ``swa_full=True`` gives them ``n_ctx`` cells like the others (more memory,
    but any cached prefix can be continued, where the small cache may have to read a prompt again).
    ``lora_path`` / ``lora_scale`` (llama-cpp-python's) apply a LoRA adapter GGUF at run time, as
    llama.cpp does; ``loras`` takes several ``(path, scale)`` pairs; :meth:`set_lora_scales` changes
    their scales later (:attr:`lora_adapters` lists them). ``spm_infill``: a completion
    with a ``suffix`` puts the suffix before the prefix (see :mod:`splitllm.infill`).
    ``rope_scaling_type``, ``rope_freq_base``, ``rope_freq_scale`` and the ``yarn_*`` settings are
    llama-cpp-python's (and llama.cpp's) rotary overrides, e.g. ``rope_scaling_type=2,
    rope_freq_scale=0.25, yarn_orig_ctx=32768`` to run a model 4x past its trained context with
    YaRN; a model whose file asks for YaRN (``rope.scaling.type = yarn``) gets it by default.

    The rest of ``Llama``'s arguments: ``logits_all`` keeps every position's logits in ``scores``
    (each pass then computes all of them); ``vocab_only`` loads the tokenizer and metadata only
    (evaluating raises RuntimeError); ``kv_overrides`` ({key: bool/int/float/str}) replaces
    metadata values before the engine and the tokenizer read them (``metadata`` still shows the
    file's, as llama.cpp's); ``type_k`` / ``type_v`` also take GGML_TYPE_* ints (1 f16, 8 q8_0,
    2 q4_0); ``last_n_tokens_size`` is the penalty window; ``chat_format`` picks one of
    llama-cpp-python's named prompt formats (:mod:`splitllm.chat_formats`; default: the GGUF's
    template); ``chat_handler`` (a llama-cpp-python handler, not a multimodal one) answers
    ``create_chat_completion``; ``tokenizer`` (a llama-cpp-python tokenizer) replaces the GGUF's in
    ``tokenize`` / ``detokenize`` and so reads every prompt (generated text is still decoded with
    the GGUF's vocabulary); ``attention_type`` may only name the model's own. Accepted without
    effect, since they change nothing here: ``use_mmap`` (the file is always mapped),
    ``use_mlock`` (not locked: a warning), ``n_ubatch`` (a pass is ``n_batch`` tokens),
    ``n_threads_batch`` (``n_threads`` serves both), ``flash_attn`` (one attention path),
    ``numa``, ``no_perf``; ``split_mode`` 0/1, ``main_gpu`` 0 and a ``tensor_split`` giving
    everything to the first GPU describe the one GPU splitllm uses; other values, and
    ``rpc_servers``, are refused. The low-level calls (``eval``, ``sample``, ``input_ids``,
    ``n_tokens``, ``set_cache``, pickling ...) are in :mod:`splitllm.model_lowlevel`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_seq_max: int = 1,
        n_gpu_layers: int | str = 0,
        seed: int = LLAMA_DEFAULT_SEED,
        type_k: str | int | None = "f16",
        type_v: str | int | None = "f16",
        offload_kqv: bool = True,
        op_offload: bool | None = True,
        kv_rotate: bool = True,
        swa_full: bool | None = False,
        rope_scaling_type: int | None = LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        yarn_ext_factor: float = -1.0,
        yarn_attn_factor: float = 1.0,
        yarn_beta_fast: float = 32.0,
        yarn_beta_slow: float = 1.0,
        yarn_orig_ctx: int = 0,
        lora_path: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        lora_base: str | None = None,
        loras: Sequence[tuple[str | os.PathLike[str], float]] | None = None,
        chat_template: str | None = None,
        chat_format: str | None = None,
        chat_handler: Any = None,
        draft_model: DraftModel | None = None,
        embedding: bool = False,
        pooling_type: int | str = LLAMA_POOLING_TYPE_UNSPECIFIED,
        attention_type: int = -1,
        spm_infill: bool = False,
        logits_all: bool = False,
        vocab_only: bool = False,
        kv_overrides: Mapping[str, bool | int | float | str] | None = None,
        last_n_tokens_size: int = 64,
        tokenizer: Any = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        n_ubatch: int = 512,
        n_threads_batch: int | None = None,
        flash_attn: bool = False,
        no_perf: bool = False,
        numa: bool | int = False,
        split_mode: int = LLAMA_SPLIT_MODE_LAYER,
        main_gpu: int = 0,
        tensor_split: Sequence[float] | None = None,
        rpc_servers: str | None = None,
        verbose: bool = False,
    ) -> None:
        init_args = {k: v for k, v in locals().items() if k != "self"}  # (for pickling)
        self._core: Any = None
        self._closed = False
        self._init_args = init_args
        self.spm_infill = bool(spm_infill)
        path = os.fspath(model_path)
        self.model_path = path
        self.verbose = verbose
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_seq_max", n_seq_max)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
        if n_batch < 1 or n_seq_max < 1:
            raise ValueError("n_batch and n_seq_max must be at least 1")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be a positive integer or None (got {n_threads!r})")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer (got {seed!r})")
        if lora_base is not None:  # llama-cpp-python keeps it and uses it for nothing
            warnings.warn("lora_base is ignored: adapters are applied at run time to the loaded model, as "
                          "llama.cpp does", RuntimeWarning, stacklevel=2)
        adapters = [(os.fspath(p), float(s)) for p, s in (loras or [])]
        if lora_path is not None:
            adapters.insert(0, (os.fspath(lora_path), float(lora_scale)))
        for p, s in adapters:
            if not math.isfinite(s):
                raise ValueError(f"{p}: LoRA scale must be a finite number (got {s})")
        # llama-cpp-python's arguments without a splitllm counterpart (see splitllm.model_compat)
        type_k, type_v = check_llama_args(
            type_k=type_k, type_v=type_v, split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split,
            rpc_servers=rpc_servers, n_ubatch=n_ubatch, n_threads_batch=n_threads_batch, numa=numa,
            attention_type=attention_type, last_n_tokens_size=last_n_tokens_size, chat_format=chat_format,
            chat_handler=chat_handler, tokenizer=tokenizer, use_mlock=use_mlock)
        op_offload = True if op_offload is None else op_offload
        swa_full = False if swa_full is None else swa_full
        self.chat_format = chat_format
        self.chat_handler = chat_handler
        self.tokenizer_ = tokenizer
        self.last_n_tokens_size = last_n_tokens_size
        self.n_batch = n_batch
        self.lora_base, self.lora_path, self.lora_scale = lora_base, lora_path, lora_scale
        self.cache: Any = None
        self._logits_all = bool(logits_all)
        self._vocab_only = bool(vocab_only)
        self._scores: np.ndarray | None = None
        self._last: tuple[int, list[int], np.ndarray] | None = None

        # The tokenizer needs the vocabulary arrays; the model keeps only the scalar metadata (the
        # arrays are tens of MB of Python objects for a large vocabulary).
        with GGUFFile(path) as gf:
            metadata = gf.metadata
            overrides = checked_overrides(kv_overrides, metadata, path)
            self._file_values = {k: metadata.get(k) for k in overrides}  # (what `metadata` shows)
            metadata = {**metadata, **overrides}
            self.tokenizer = Tokenizer.from_metadata(metadata)
            # gemma-embedding's projections (read once the engine has checked them; other
            # architectures' files are not read for them, as llama.cpp loads them for this one only)
            is_gemma_embedding = metadata.get("general.architecture") == "gemma-embedding" and not vocab_only
            dense = dense_views(gf) if is_gemma_embedding else {}
        self.kv_overrides = overrides or None
        self._metadata = {k: v for k, v in metadata.items() if not isinstance(v, list)}
        del metadata
        arch = self._metadata.get("general.architecture", "")
        self._embedding = bool(embedding)
        if pooling_type not in (None, LLAMA_POOLING_TYPE_UNSPECIFIED):
            pooling_type_of(pooling_type, {})  # a bad argument is an error now
        self._pooling_arg = pooling_type
        if n_ctx == 0:
            n_ctx = int(self._metadata.get(f"{arch}.context_length", 4096))
        self._n_ctx = n_ctx
        self._n_batch = n_batch
        self._n_seq_max = n_seq_max
        self._history: list[int] = []  # tokens whose K/V are in the cache, at positions 0..len-1
        # The last prompt evaluated and the logits after it: (that history list, its length, logits).
        # Valid while self._history is that same list (generation only appends to it; any other
        # change of the cache assigns a new list).
        self._prompt_end: tuple[list[int], int, np.ndarray] | None = None
        self._seed = seed
        self._rng = random.Random(None if seed & 0xFFFFFFFF == LLAMA_DEFAULT_SEED else seed)
        template = chat_template or self._metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        if chat_format is not None and chat_format.startswith("chat_template."):
            name = chat_format[len("chat_template."):]
            key = "tokenizer.chat_template" if name == "default" else f"tokenizer.chat_template.{name}"
            if not isinstance(self._metadata.get(key), str):
                raise ValueError(f"{path}: chat_format {chat_format!r}: the file has no {key}")
            template, self.chat_format = self._metadata[key], None
        self._chat_template_source = template
        self._chat: ChatTemplate | None = None
        self._gvocab: Any = None
        self.draft_model = draft_model
        self._max_draft = 0
        self._draft_policy: DraftPolicy | None = None
        if vocab_only:  # the tokenizer and the metadata only (llama.cpp's vocab_only)
            self._seq_ctx = n_ctx // n_seq_max
            return
        if n_gpu_layers == "auto":
            from splitllm.plan import plan

            n_gpu_layers = plan(
                path, n_ctx=n_ctx, n_batch=n_batch, n_gpu_layers="auto", type_k=type_k, type_v=type_v,
                swa_full=swa_full, loras=adapters,
            ).n_gpu_layers
        if not isinstance(n_gpu_layers, int) or isinstance(n_gpu_layers, bool) or n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be an integer >= -1 or 'auto' (got {n_gpu_layers!r})")
        self._core = _core.Model(
            path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads or 0,
            n_seq_max=n_seq_max,
            n_gpu_layers=n_gpu_layers,
            type_k=type_k,
            type_v=type_v,
            offload_kqv=offload_kqv,
            op_offload=op_offload,
            kv_rotate=kv_rotate,
            swa_full=bool(swa_full),
            loras=adapters,
            kv_overrides=list(overrides.items()),
            **rope_settings(rope_scaling_type, rope_freq_base, rope_freq_scale, yarn_ext_factor,
                            yarn_attn_factor, yarn_beta_fast, yarn_beta_slow, yarn_orig_ctx),
        )
        self._loras = [(os.path.realpath(p), s, os.stat(p).st_size, os.stat(p).st_mtime_ns)
                       for p, s in adapters]
        self._lora_paths = [p for p, _ in adapters]
        self._lora_scales = [s for _, s in adapters]
        self._type_k, self._type_v, self._kv_rotate = type_k, type_v, kv_rotate
        st = os.stat(path)  # which file a saved state belongs to
        self._file_identity = (os.path.realpath(path), st.st_size, st.st_mtime_ns) + (
            (repr(sorted(overrides.items())),) if overrides else ())
        encoder = bool(self._core.config["encoder"])
        if attention_type != -1 and encoder != (attention_type == 1):
            self.close()
            kind = "non-causal" if encoder else "causal"
            raise ValueError(f"attention_type={attention_type}: this model's attention is {kind}, and "
                             "splitllm runs each model with its own")
        if pooling_type not in (None, LLAMA_POOLING_TYPE_UNSPECIFIED) and \
                pooling_type_of(pooling_type, {}) == LLAMA_POOLING_TYPE_RANK:
            try:
                check_reranker(self._core.config)
            except ValueError:
                self.close()
                raise
        self._dense: list[Dense] = read_dense(dense)
        for message in self._core.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._seq_ctx = int(self._core.slot_ctx)  # cells of one sequence slot
        if draft_model is not None and not callable(draft_model):
            raise ValueError("draft_model must be callable (a splitllm.speculative.DraftModel)")
        if draft_model is not None and self.config["recurrent"]:
            # (rejected guesses would have to be taken back out of the recurrent state)
            warnings.warn(f"draft_model is ignored: speculative decoding of a recurrent model "
                          f"({self.config['arch']}) is not supported", RuntimeWarning, stacklevel=2)
            self.draft_model = draft_model = None
        if draft_model is not None:
            if (attach := getattr(draft_model, "attach", None)) is not None:  # (e.g. a vocabulary check)
                try:
                    attach(self)
                except BaseException:
                    self.close()
                    raise
            # Guesses and the token before them go in one pass no longer than the longest whose
            # logits equal single-token passes, so the output does not depend on the guesses.
            cap = min(MAX_SPECULATIVE_PASS, self._seq_ctx - 1, n_batch)
            limit = single_pass_limit(self._core, self.n_vocab(), cap)
            self._max_draft = (cap if limit is None else limit - 1) - 1
            self._draft_policy = DraftPolicy(self._max_draft)
        if verbose:
            self._print_placement()

    # ---- lifetime ----

    @classmethod
    def from_pretrained(
        cls, repo_id: str, filename: str, *, revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None, local_dir: str | os.PathLike[str] | None = None,
        additional_files: Sequence[str] | None = None, **kwargs: Any,
    ) -> Model:
        """A model from a GGUF file on the Hugging Face Hub (llama-cpp-python's
        ``Llama.from_pretrained``): ``filename`` is a name or a glob matching one file of
        ``repo_id``, downloaded once (see :mod:`splitllm.hub`); ``kwargs`` go to ``Model``.
        ``additional_files``: more names or globs, each matching one file, downloaded beside it
        (the other parts of a split model; they are fetched without it when ``filename`` is
        the first part, ``NAME-00001-of-0000N.gguf``)."""
        from splitllm.hub import download

        return cls(download(repo_id, filename, revision=revision, cache_dir=cache_dir, local_dir=local_dir,
                            additional_files=additional_files or ()), **kwargs)

    def close(self) -> None:
        """Frees the KV cache, buffers and the file mapping. Any further call (other than
        ``close``) raises ValueError."""
        self._core = None
        self._closed = True
        self._chat = None
        self._scores = self._last = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._core = None

    def _open(self) -> None:
        """ValueError once the model is closed (what needs only the vocabulary calls this)."""
        if getattr(self, "_closed", True):
            raise ValueError(f"the model is closed (close() was called on {self.model_path})")

    def _engine(self) -> Any:
        """The native model; ValueError once the model is closed, RuntimeError when only its
        vocabulary was loaded (every public method that evaluates calls this)."""
        if self._core is None:
            self._open()
            raise RuntimeError(f"{self.model_path} was loaded with vocab_only=True: only the tokenizer "
                               "and the metadata are there (tokenize, detokenize, token ids); evaluating "
                               "needs the weights")
        return self._core

    # ---- information ----

    def n_ctx(self) -> int:
        self._open()
        return self._n_ctx

    def n_vocab(self) -> int:
        self._open()
        return int(self._core.n_vocab) if self._core is not None else self.tokenizer.n_vocab

    def token_bos(self) -> int:
        self._open()
        return -1 if self.tokenizer.bos_id is None else self.tokenizer.bos_id

    def token_eos(self) -> int:
        self._open()
        return -1 if self.tokenizer.eos_id is None else self.tokenizer.eos_id

    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata as strings, like ``Llama.metadata`` (arrays left out; numbers, booleans
        and floats written as llama.cpp writes them: ``"true"``, ``"0.000010"``). As there, the
        file's values: kv_overrides change what the model reads, not this."""
        self._open()
        out = {}
        for k, v in {**self._metadata, **self._file_values}.items():
            if isinstance(v, list) or v is None:
                continue
            if isinstance(v, bool):
                out[k] = "true" if v else "false"
            elif isinstance(v, float):
                out[k] = f"{v:f}"  # std::to_string
            else:
                out[k] = str(v)
        return out

    @property
    def gguf_metadata(self) -> Mapping[str, Any]:
        """GGUF metadata with typed values, arrays as lists (read from the file on each call)."""
        self._open()
        with GGUFFile(self.model_path) as gf:
            return gf.metadata

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._engine().config)

    @property
    def placement(self) -> list[dict[str, Any]]:
        """Per part of the model: the device it runs on and the bytes of weights and KV cache there."""
        return list(self._engine().placement)

    @property
    def n_eval(self) -> int:
        """Tokens evaluated since load (prompt and generated); prefix reuse makes this smaller."""
        return int(self._engine().n_eval)

    def _print_placement(self) -> None:
        print(f"splitllm: {self.model_path}", file=sys.stderr)
        width = max(12, *(len(p["name"]) for p in self.placement))  # (blk.N.experts: a GPU block's experts)
        for p in self.placement:
            kv = f"  kv {p['kv_bytes'] / 2**20:8.2f} MiB on {p['kv_device']}" if p.get("kv_device") else ""
            print(
                f"  {p['name']:<{width}} {p['device']:<8} weights {p['weight_bytes'] / 2**20:9.2f} MiB{kv}",
                file=sys.stderr,
            )

    # ---- tokens ----

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self._open()
        if self.tokenizer_ is not None:
            return list(self.tokenizer_.tokenize(text, add_bos, special))
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """Bytes of tokens; with prev_tokens, the bytes they add after prev_tokens."""
        self._open()
        if self.tokenizer_ is not None:
            return self.tokenizer_.detokenize(list(tokens), prev_tokens=prev_tokens, special=special)
        tokens = list(tokens)
        if prev_tokens:
            prev = list(prev_tokens)
            whole = self.tokenizer.detokenize(prev + tokens, special=special)
            head = self.tokenizer.detokenize(prev, special=special)
            return whole[len(head) :] if whole.startswith(head) else whole
        return self.tokenizer.detokenize(tokens, special=special)

    # ---- evaluation ----

    def _decode(
        self, tokens: Sequence[int], start: int, *, all_logits: bool = False, out: np.ndarray | None = None,
        embeddings: bool = False,
    ) -> np.ndarray:
        n = len(tokens)
        toks = np.asarray(tokens, dtype=np.int32)
        pos = np.arange(start, start + n, dtype=np.int32)
        slot = np.zeros(n, dtype=np.int32)
        want = None
        every = all_logits or (self._logits_all and not embeddings)  # (logits_all: scores gets every row)
        if not every:
            want = np.zeros(n, dtype=np.uint8)
            want[-1] = 1
        rows = self._engine().decode(toks, pos, slot, want, out if all_logits else None, embeddings)
        if embeddings:
            self._last = None
            return rows
        self._keep_logits(tokens, start, rows, every)
        return rows if all_logits else rows[-1:]

    def _check_tokens(self, tokens: Sequence[int], limit: tuple[int, str] | None = None) -> list[int]:
        """Ids in the vocabulary, at most ``limit`` (a count and what sets it; default a slot's
        context window) of them."""
        toks = [int(t) for t in tokens]
        n_vocab = self.n_vocab()
        bad = [t for t in toks if not 0 <= t < n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {n_vocab})")
        most, why = limit or (self._seq_ctx, "context window")
        if len(toks) > most:
            raise ValueError(f"Requested tokens ({len(toks)}) exceed {why} of {most}")
        return toks

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``tokens`` evaluated in a fresh context: (len, n_vocab) float32."""
        toks = self._check_tokens(tokens)
        if not toks:
            return np.zeros((0, self.n_vocab()), dtype=np.float32)
        out = np.empty((len(toks), self.n_vocab()), dtype=np.float32)
        self._history = []
        self._decode(toks, 0, all_logits=True, out=out)
        self._history = toks
        return out

    def eval_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        """Brings the KV cache to ``tokens`` (reusing the longest cached prefix) and returns the
        logits after the last one. As with llama.cpp, a pass over only the rest of a prompt may
        round differently from a pass over the whole prompt (the CPU kernels take another path for
        passes of 10 tokens and more); call :meth:`reset` first for the from-scratch result. The
        same prompt asked again, with the cache still holding it, gets the logits it got the
        first time (so that a request repeated with its seed repeats its answer)."""
        toks = self._check_tokens(tokens)
        if not toks:
            raise ValueError("cannot evaluate an empty prompt")
        if self._prompt_end is not None:
            held, n, logits = self._prompt_end
            # (and the cache can still continue from there: a sliding-window cache may have lost
            # what the next token attends to while tokens were generated past the prompt)
            if (held is self._history and n == len(toks) and held[:n] == toks
                    and self._engine().kv_reusable(0, n) == n):
                del held[n:]  # the cache's cells past the prompt are free again
                return logits.copy()
        if self._history == toks and (row := self._valid_last()) is not None:
            return row.copy()  # (what eval() left: llama-cpp-python samples from it too)
        # (the last token is evaluated again for its logits)
        keep = min(self.longest_token_prefix(self._history, toks), len(toks) - 1)
        # A sliding-window cache may no longer hold what continuing from there attends to.
        keep = self._engine().kv_reusable(0, keep)
        self._history = self._history[:keep]
        logits = self._decode(toks[keep:], keep)[0]
        self._history = toks
        self._prompt_end = (toks, len(toks), logits.copy())
        return logits

    # ---- saved states ----

    def _state_signature(self) -> tuple[Any, ...]:
        """What must match for a saved state to fit: the model file and the cache's geometry."""
        c = self.config
        return (self._file_identity, c.get("n_layer"), c.get("n_head_kv"), c.get("head_dim"), self._n_ctx,
                self._n_seq_max, self._type_k, self._type_v, self._kv_rotate) + (
                    (int(self._core.swa_cells),) if self._core.swa_cells else ()) + (
                    (tuple(self._loras),) if self._loras else ())

    def save_state(self) -> ModelState:
        """The tokens in the cache and their K/V (llama-cpp-python's ``save_state``), to put back
        later with :meth:`load_state` instead of reading them again. Picklable."""
        toks = list(self._history)
        state = self.state_of(toks, self._engine().kv_read(0, len(toks)))
        if self._prompt_end is not None and self._prompt_end[0] is self._history:
            state = dataclasses.replace(state, prompt_end=(self._prompt_end[1], self._prompt_end[2].copy()))
        return state

    def state_of(self, tokens: Sequence[int], data: bytes) -> ModelState:
        """A state of tokens and their K/V as ``kv_read`` gives them (a server's sequence slot's)."""
        return ModelState(np.asarray(tokens, dtype=np.intc), len(tokens), data, len(data), self._seed,
                          self._state_signature())

    def check_state(self, state: ModelState) -> None:
        """ValueError unless ``state`` is a ModelState this model (file, context, cache) can take."""
        if not isinstance(state, ModelState):
            raise ValueError(f"expected a ModelState from save_state (got {type(state).__name__})")
        if state.signature != self._state_signature():
            raise ValueError("the state was saved by another model or with other context / cache settings")

    def load_state(self, state: ModelState) -> None:
        """Puts back a state from :meth:`save_state` of this model (same file, context and cache
        settings): the next prompt that starts with its tokens reuses them."""
        self.check_state(state)
        toks = self._check_tokens([int(t) for t in state.input_ids])
        self._history = []
        self._engine().kv_write(0, len(toks), state.llama_state)
        self._history = toks
        self._last = None
        if state.prompt_end is not None and state.prompt_end[0] <= len(toks):
            self._prompt_end = (toks, state.prompt_end[0], np.array(state.prompt_end[1], dtype=np.float32))

    def imatrix_start(self, *, process_output: bool = False) -> None:
        """Starts collecting an importance matrix (llama-imatrix's) over every evaluation that
        follows; ``process_output``: output.weight's inputs too. See :mod:`splitllm.imatrix`."""
        self._engine().imatrix_start(process_output)

    def imatrix_stop(self) -> Imatrix:
        """Stops collecting and returns the raw sums and counts (no chunk size or datasets set)."""
        return from_collected(self._engine().imatrix_stop())

    def reset(self) -> None:
        """Forgets the cached prompt (the next evaluation starts from scratch)."""
        self._engine()
        self._history = []

    def _seed_for(self, seed: int | None) -> int:
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError(f"seed must be an integer (got {seed!r})")
            return seed & 0xFFFFFFFFFFFFFFFF
        return self._rng.getrandbits(64)

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        penalize_nl: bool = True,
        logits_processor: LogitsHook | None = None,
        stopping_criteria: StopHook | None = None,
        grammar: Grammar | str | None = None,
        *,
        logit_bias: Mapping[Any, float] | None = None,
        seed: int | None = None,
        xtc_probability: float = 0.0,
        xtc_threshold: float = 0.1,
        top_n_sigma: float = -1.0,
        dynatemp_range: float = 0.0,
        dynatemp_exponent: float = 1.0,
        dry_multiplier: float = 0.0,
        dry_base: float = 1.75,
        dry_allowed_length: int = 2,
        dry_penalty_last_n: int = 64,
        dry_sequence_breakers: Sequence[str] = DEFAULT_BREAKERS,
    ) -> Generator[int, None, None]:
        """Yields sampled token ids after ``tokens``, without end; stops when the context is full
        (or ``stopping_criteria`` says so: see :meth:`stream` for it and ``logits_processor``).
        The arguments are llama-cpp-python's, in its order: ``reset=True`` reuses the longest
        cached prefix of ``tokens`` (the rest of the cache is dropped), ``reset=False`` continues
        after the cached tokens (``input_ids[:n_tokens]``) with ``tokens``; ``penalize_nl`` has no
        effect (as there).

        Each yielded token is evaluated when the next one is requested, so a consumer that stops
        after an end-of-generation token leaves it out of the cache. Arguments are checked when
        this is called; the prompt is evaluated when the first token is requested.
        """
        params = sampling_params(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=logit_bias, xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
            top_n_sigma=top_n_sigma, dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exponent,
            dry_multiplier=dry_multiplier, dry_base=dry_base, dry_allowed_length=dry_allowed_length,
            dry_penalty_last_n=dry_penalty_last_n, dry_sequence_breakers=dry_sequence_breakers,
            repeat_last_n=self.last_n_tokens_size)
        del penalize_nl  # (llama-cpp-python no longer applies it either)
        toks = self._check_tokens(list(tokens) if reset else [*self._history, *tokens])
        if not toks:
            raise ValueError("cannot evaluate an empty prompt")
        sampler = Sampler(params, self.n_vocab(), self._seed_for(seed), tokenizer=self.tokenizer)
        return self._tokens(self._generate(toks, sampler, None, as_grammar(grammar), logits_processor),
                            stopping_criteria)

    def _tokens(self, gen: Generator[tuple[int, np.ndarray], None, None],
                stopping_criteria: StopHook | None) -> Generator[int, None, None]:
        try:
            for token, logits in gen:
                if self._stops(stopping_criteria, logits):
                    return
                yield token
        finally:
            gen.close()

    def _generate(self, tokens: list[int], sampler: Sampler, first: np.ndarray | None = None,
                  grammar: Grammar | None = None, logits_processor: LogitsHook | None = None
                  ) -> Generator[tuple[int, np.ndarray], None, None]:
        """Yields (token, the logits it was sampled from). ``first``: the logits after ``tokens``,
        when the cache already holds them (``eval_prompt`` is then skipped). With a draft model,
        a pass evaluates the token and the draft's guesses; the logits after a guess are used as
        long as the sampled tokens equal the guesses (see :mod:`splitllm.speculative`)."""
        sampler.accept_prompt(tokens)  # (DRY's history starts with the prompt)
        logits = self.eval_prompt(tokens) if first is None else first
        guessed: list[tuple[int, np.ndarray]] = []  # (guess, logits after it), K/V already cached
        unused: int | None = None  # the draft's first guess when the pass held none
        policy = self._draft_policy
        state = grammar.state() if grammar is not None else None
        vocab = self.grammar_vocab() if grammar is not None else None
        while True:
            if logits_processor is not None:
                logits = self._processed(logits_processor, logits)
            if state is None:
                token = sampler.sample(logits)
            else:
                token = sample_with_grammar(sampler, logits, state, vocab)
            sampler.accept(token)
            yield token, logits
            n = len(self._history)
            if n >= self._seq_ctx:
                return
            if policy is not None:
                if guessed:
                    right = guessed[0][0] == token
                    policy.outcome(int(right), wrong=not right)
                elif unused is not None:
                    policy.outcome(int(unused == token), wrong=unused != token)
            if guessed and guessed[0][0] == token:
                logits = guessed.pop(0)[1]
                self._history.append(token)
                continue
            draft = self._draft(token, n)
            unused = draft[0] if draft else None
            if policy is not None:
                draft = draft[: policy.length(len(draft))]
                if draft:
                    unused = None
            t0 = time.perf_counter()
            rows = self._decode([token, *draft], n, all_logits=bool(draft))
            if policy is not None:
                policy.timed(1 + len(draft), time.perf_counter() - t0)
            self._history.append(token)
            logits = rows[0]
            guessed = list(zip(draft, rows[1:], strict=True))

    def _stops(self, criteria: StopHook | None, logits: np.ndarray) -> bool:
        """Whether a stopping criterion ends the text before the token just picked (asked with the
        tokens evaluated so far and the pick's logits, as llama-cpp-python asks)."""
        return criteria is not None and bool(criteria(np.asarray(self._history, dtype=np.intc), logits))

    def _processed(self, hook: LogitsHook, logits: np.ndarray) -> np.ndarray:
        """``hook(input_ids, scores)`` on a copy of the logits (the tokens so far as input_ids)."""
        out = np.asarray(hook(np.asarray(self._history, dtype=np.intc), logits.copy()), dtype=np.float32)
        if out.shape != logits.shape:
            raise ValueError(f"logits_processor returned shape {out.shape}, expected {logits.shape}")
        return out

    def _draft(self, token: int, n: int) -> list[int]:
        """The draft model's guesses after the history and ``token`` (the token goes at position
        ``n``), cut to the pass limit and to the room left in the sequence."""
        room = min(self._max_draft, self._seq_ctx - n - 1)
        if self.draft_model is None or room <= 0:
            return []
        ids = np.asarray([*self._history, token], dtype=np.intc)
        n_vocab = self.n_vocab()
        out: list[int] = []
        for t in np.asarray(self.draft_model(ids)).ravel()[:room]:
            if not 0 <= int(t) < n_vocab:
                break  # the guesses after a bad one cannot be checked either
            out.append(int(t))
        return out

    def stream(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_tokens: int | None = 16,
        stop: str | Sequence[str] | None = None,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        logit_bias: Mapping[Any, float] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
        grammar: Grammar | str | None = None,
        logits_processor: LogitsHook | None = None,
        stopping_criteria: StopHook | None = None,
        xtc_probability: float = 0.0,
        xtc_threshold: float = 0.1,
        top_n_sigma: float = -1.0,
        dynatemp_range: float = 0.0,
        dynatemp_exponent: float = 1.0,
        dry_multiplier: float = 0.0,
        dry_base: float = 1.75,
        dry_allowed_length: int = 2,
        dry_penalty_last_n: int = 64,
        dry_sequence_breakers: Sequence[str] = DEFAULT_BREAKERS,
    ) -> Iterator[CompletionChunk]:
        """Generates after ``prompt_tokens`` and yields text chunks, then one with the finish reason.
        With ``logprobs`` (0..20 alternatives), chunks carry their tokens' log-probabilities;
        with ``grammar`` (a :class:`~splitllm.grammar.Grammar` or GBNF text), the text follows it.
        ``logits_processor(input_ids, scores) -> scores`` changes the logits before each pick
        (log-probabilities are then of the changed ones, as in llama-cpp-python);
        ``stopping_criteria(input_ids, logits) -> bool`` is asked after each pick, with the tokens
        evaluated so far and the logits of the pick (llama-cpp-python's arguments): true ends the
        text before the picked token (finish reason "stop"). The sampler settings are
        llama-cpp-python's, and llama-server's ``xtc_probability``, ``xtc_threshold``,
        ``top_n_sigma``, ``dynatemp_range``, ``dynatemp_exponent`` and DRY's ``dry_*`` (off by
        default; see :mod:`splitllm.sampling` for the chain).

        Arguments are checked when this is called."""
        params = sampling_params(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=logit_bias, xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
            top_n_sigma=top_n_sigma, dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exponent,
            dry_multiplier=dry_multiplier, dry_base=dry_base, dry_allowed_length=dry_allowed_length,
            dry_penalty_last_n=dry_penalty_last_n, dry_sequence_breakers=dry_sequence_breakers)
        return self._stream_from(prompt_tokens, None, params, max_tokens=max_tokens, stop=stop, seed=seed,
                                 logprobs=logprobs, grammar=grammar, logits_processor=logits_processor,
                                 stopping_criteria=stopping_criteria)

    def _stream_from(self, prompt_tokens: Sequence[int], first: np.ndarray | None, params: SamplingParams, *,
                     max_tokens: int | None, stop: str | Sequence[str] | None, seed: int | None,
                     logprobs: int | None, grammar: Grammar | str | None = None,
                     logits_processor: LogitsHook | None = None,
                     stopping_criteria: StopHook | None = None) -> Iterator[CompletionChunk]:
        """``stream`` with its settings made; ``first``: the logits after the prompt when its K/V
        are already cached."""
        prompt = self.check_prompt(prompt_tokens)
        check_max_tokens(max_tokens)
        if first is None:
            self._cache_lookup(prompt)
        if params.repeat_last_n != self.last_n_tokens_size:
            params = dataclasses.replace(params, repeat_last_n=self.last_n_tokens_size)
        n_top = check_n_top(logprobs)
        text = TokenText(
            self.tokenizer,
            n_prompt=len(prompt),
            stop=stop_list(stop),
            limit=completion_limit(max_tokens, len(prompt), self._seq_ctx),
            logprobs=n_top,
        )
        sampler = Sampler(params, self.n_vocab(), self._seed_for(seed), tokenizer=self.tokenizer)
        gen = self._generate(prompt, sampler, first, as_grammar(grammar), logits_processor)
        return self._stream(text, gen, stopping_criteria)

    def grammar_vocab(self) -> Any:
        """The vocabulary as grammars see it (built once)."""
        if self._gvocab is None:
            tok = self.tokenizer
            self._gvocab = _core.GrammarVocab([tok.token_to_piece(i) for i in range(self.n_vocab())],
                                              sorted(tok.eog_ids))
        return self._gvocab

    def _stream(self, text: TokenText, gen: Generator[tuple[int, np.ndarray], None, None],
                stopping_criteria: StopHook | None = None) -> Iterator[CompletionChunk]:
        n_top = text.n_logprobs
        piece = self.tokenizer.token_to_piece
        try:
            for token, logits in gen:
                if self._stops(stopping_criteria, logits):
                    text.stop()
                    break
                entry = None if n_top is None else token_logprob(logits, token, n_top, piece)
                chunk = text.push(token, entry)
                if chunk is not None:
                    yield chunk
                if text.done:
                    break
        finally:
            gen.close()
        last = text.finish()
        self._cache_save()
        yield last

    def check_prompt(self, prompt_tokens: Sequence[int]) -> list[int]:
        """The prompt as a list of ints; ValueError if it is empty, holds ids outside the
        vocabulary or leaves no room to generate in one sequence's context."""
        prompt = self._check_tokens(prompt_tokens)
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self._seq_ctx:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self._seq_ctx}")
        return prompt
