"""Architectures: hyperparameters, the Hugging Face -> GGUF tensor name table and its transforms.

Name mapping is data: each architecture lists ``TensorRule`` rows (HF name pattern, GGUF name
pattern, expected shape in config symbols, an optional named transform). Adding an architecture
is one small class. Metadata keys and the q/k layout are those llama.cpp's convert_hf_to_gguf.py
writes, so llama.cpp loads these files and splitllm loads llama.cpp's. Gemma 2 and 3 are in
``gemma``; ``registry`` maps config.json's architecture names to the classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, PoolingType, RopeScalingType

from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import TensorEntry
from splitllm_convert.quant_rules import HParams
from splitllm_convert.vocab import Vocab, load_vocab

logger = logging.getLogger("convert-hf")
Array = np.ndarray[Any, np.dtype[np.float32]]


def rope_permute(w: Array, n_head: int) -> Array:
    """Reorder each head's rows from HF's rotate-half layout to GGML's interleaved pairs.

    HF keeps a head's rotary pairs as (x[i], x[i + d/2]); llama.cpp's rope wants them adjacent,
    (x[2i], x[2i+1]). Works on weights (rows = n_head * head_dim) and biases alike.
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_unpermute(w: Array, n_head: int) -> Array:
    """Inverse of ``rope_permute`` (GGML layout back to HF's)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class TensorRule:
    """One HF tensor and its GGUF counterpart; ``{bid}`` stands for the layer index. A rule whose
    HF name holds ``{xid}`` (the expert index) stacks the n_expert experts into one GGUF tensor of
    shape (n_expert, *shape)."""

    hf: str
    gguf: str
    shape: tuple[str, ...]  # symbols looked up in Architecture.dims()
    transform: str | None = None  # a key of Architecture.transforms()
    required: bool = True


@dataclass(frozen=True)
class PlannedSource:
    """Where a GGUF tensor comes from: an HF tensor (with a transform) or a generated array."""

    gguf_name: str
    shape: tuple[int, ...]  # row-major, as numpy holds it
    hf_name: str | None = None
    transform: str | None = None
    generate: Callable[[], Array] | None = None
    hf_stack: tuple[str, ...] = ()  # experts: these HF tensors stacked along a new first axis
    # already encoded in this type (MXFP4 experts): the raw (U8) HF tensors ``hf_name`` and
    # ``hf_extra`` go through ``Architecture.packed_transforms()[transform]``, bits moved, never
    # requantized; the file type's rules do not change its type
    packed: GGMLQuantizationType | None = None
    # with ``packed`` None: the value is ``Architecture.entry_transforms()[transform]`` of the entries
    # of ``hf_name`` and ``hf_extra`` (BitNet's 2-bit codes and their scale), then typed as any other
    hf_extra: tuple[str, ...] = ()


def _require(cfg: dict[str, Any], key: str, path: Path) -> int:
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConvertError(f"{path}: '{key}' must be a positive integer, got {v!r}")
    return v


def _positive(cfg: dict[str, Any], key: str, path: Path) -> float:
    v = cfg.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < math.inf:
        raise ConvertError(f"{path}: '{key}' must be a positive number, got {v!r}")
    return float(v)


def _describe(files: Sequence[Path]) -> str:
    """The weight files searched, for an error message: the path, or the folder and the names."""
    if len(files) == 1:
        return str(files[0])
    names = [f.name for f in files]
    listed = ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ..., {names[-1]}"
    return f"all {len(files)} weight files in {files[0].parent} ({listed})"


class Architecture:
    """Base for llama-like decoder models; subclasses set the table and the defaults."""

    hf_names: ClassVar[tuple[str, ...]]
    gguf_arch: ClassVar[str]
    rules: ClassVar[tuple[TensorRule, ...]]
    ignored: ClassVar[tuple[str, ...]] = ("model.layers.{bid}.self_attn.rotary_emb.inv_freq",)
    skipped: ClassVar[tuple[str, ...]] = ()  # name prefixes of another model's tensors (a vision tower)
    # transformers' config defaults where config.json leaves a key out
    default_ctx: ClassVar[int] = 2048
    default_rope_theta: ClassVar[float] = 10000.0
    default_rms_eps: ClassVar[float] = 1e-6
    extra_rope_types: ClassVar[tuple[str, ...]] = ()  # rope scaling types only this architecture has
    # tokenizer_config.json's add_prefix_space written as tokenizer.ggml.add_space_prefix (LlamaModel's)
    space_prefix_key: ClassVar[bool] = False
    # convert's sentence_transformers_dense_modules (llama.cpp's --sentence-transformers-dense-modules):
    # include a sentence-transformers model's Dense modules (EmbeddingGemma reads it)
    dense_modules: bool = False

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        self.cfg = cfg
        self.n_embd = _require(cfg, "hidden_size", config_path)
        self.n_layer = _require(cfg, "num_hidden_layers", config_path)
        self.n_head = _require(cfg, "num_attention_heads", config_path)
        self.n_ff = _require(cfg, "intermediate_size", config_path)
        self.n_vocab = _require(cfg, "vocab_size", config_path)
        kv = cfg.get("num_key_value_heads")
        self.n_head_kv = self.n_head if kv is None else _require(cfg, "num_key_value_heads", config_path)
        hd = cfg.get("head_dim")
        self.head_dim = self.n_embd // self.n_head if hd is None else _require(cfg, "head_dim", config_path)
        if self.n_head % self.n_head_kv != 0:
            raise ConvertError(
                f"{config_path}: num_attention_heads {self.n_head} is not a multiple of "
                f"num_key_value_heads {self.n_head_kv}"
            )
        if self.head_dim % 2 != 0:
            raise ConvertError(
                f"{config_path}: head dimension {self.head_dim} must be even for rotary embeddings"
            )
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        self.rope = self._rope_params(config_path)
        self.n_expert, self.n_expert_used, self.n_ff_exp = self._experts(config_path)

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        """(n_expert, n_expert_used, expert width) of a mixture-of-experts model; zeros if dense."""
        return 0, 0, 0

    # -- tensors ---------------------------------------------------------------------------

    def dims(self) -> dict[str, int]:
        return {
            "vocab": self.n_vocab,
            "embd": self.n_embd,
            "ff": self.n_ff,
            "q": self.n_head * self.head_dim,
            "kv": self.n_head_kv * self.head_dim,
            "head": self.head_dim,
            "n_expert": self.n_expert,
            "ff_exp": self.n_ff_exp,
        }

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {}

    def packed_transforms(self) -> dict[str, Callable[..., np.ndarray[Any, Any]]]:
        """Transforms of raw inputs to the bytes of an already-encoded tensor (``PlannedSource.packed``)."""
        return {}

    def entry_transforms(self) -> dict[str, Callable[..., Array]]:
        """Transforms of several stored tensors (their ``TensorEntry``s) to one float32 array."""
        return {}

    def default_type(self, available: dict[str, tuple[str, tuple[int, ...]]]) -> str:
        """The ``--type`` when none is given (``available``: HF name -> (dtype, shape), file order)."""
        return "f16"

    def adjust_types(
        self, file_type: str, shapes: dict[str, tuple[int, ...]], types: dict[str, GGMLQuantizationType]
    ) -> dict[str, GGMLQuantizationType]:
        """Each tensor's type for ``--type file_type`` where this architecture's llama.cpp converter
        writes others than ``types`` (``mix.tensor_types``'); ``types`` by default."""
        return types

    def written_file_type(self, ftype: LlamaFileType, quantized: bool) -> LlamaFileType:
        """general.file_type for the ``--type`` whose file type is ``ftype``: that one by default."""
        return ftype

    def hparams(self) -> HParams:
        """What llama.cpp's quantizer reads from the metadata this writes (``quant_rules``)."""
        return HParams.of(self.gguf_arch, self.n_layer, self.n_head, self.n_head_kv, self.n_expert)

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        """Match the checkpoint's tensors to the table.

        ``available`` maps HF name -> shape, in file order; ``where`` names the file holding a
        tensor; ``files`` are the weight files that were searched (named when a tensor is missing).
        """
        dims = self.dims()
        rules, ignored_patterns = self.table(available)
        available = {n: s for n, s in available.items() if not n.startswith(self.skipped)}
        expected: dict[str, tuple[TensorRule, str]] = {}
        stacks: dict[str, tuple[str, ...]] = {}  # GGUF name -> its experts' HF names
        for rule in rules:
            for bid in range(self.n_layer) if "{bid}" in rule.hf else [None]:
                if "{xid}" in rule.hf:
                    names = tuple(rule.hf.format(bid=bid, xid=x) for x in range(self.n_expert))
                    stacks[rule.gguf.format(bid=bid)] = names
                    expected.update((n, (rule, rule.gguf.format(bid=bid))) for n in names)
                else:
                    expected[rule.hf.format(bid=bid)] = (rule, rule.gguf.format(bid=bid))
        ignored = {p.format(bid=b) for p in ignored_patterns for b in range(self.n_layer)}
        unknown = sorted(n for n in available if n not in expected and n not in ignored)
        if unknown:
            raise ConvertError(
                f"tensor {unknown[0]!r} in {where(unknown[0])} is not part of a "
                f"{self.hf_names[0]} model ({len(unknown)} unexpected tensor(s))"
            )
        for hf_name, (rule, gguf_name) in expected.items():
            if (
                hf_name not in available
                and rule.required
                and not (gguf_name == "output.weight" and self.tied)
            ):
                raise ConvertError(f"tensor {hf_name!r} ({gguf_name}) is missing from {_describe(files)}")
        position = {n: i for i, n in enumerate(available)}
        first = {min(names, key=position.__getitem__): g for g, names in stacks.items()  # where a stack goes
                 if names[0] in position}  # (optional stacks: deepseek2's dense blocks have none)
        out = self._generated()
        # in file order, as llama.cpp writes them (a stack of experts where its first expert is;
        # llama.cpp writes it after its last: the order of tensors in a GGUF carries no meaning)
        for hf_name, shape in available.items():
            if hf_name in ignored:
                continue
            rule, gguf_name = expected[hf_name]
            want = tuple(dims[s] for s in rule.shape)
            if shape != want:
                raise ConvertError(
                    f"tensor {hf_name!r} in {where(hf_name)} has shape {list(shape)}, "
                    f"config.json implies {list(want)}"
                )
            if gguf_name not in stacks:
                out.append(PlannedSource(gguf_name, want, hf_name, rule.transform))
            elif hf_name in first:
                out.append(PlannedSource(gguf_name, (self.n_expert, *want), transform=rule.transform,
                                         hf_stack=stacks[gguf_name]))
        return out

    def extra_tensors(self, model_dir: Path) -> dict[str, TensorEntry]:
        """Tensors outside the model's weight files that are converted too (sentence-transformers'
        modules), by a name the table knows them by; none by default."""
        return {}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        """The rules and ignored names for a checkpoint holding tensors ``available``: the class's own,
        unless the names depend on how the checkpoint was saved (a multimodal model's text part)."""
        return self.rules, self.ignored

    def _generated(self) -> list[PlannedSource]:
        """Tensors written that the checkpoint does not hold (rotary factors)."""
        return []

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        """The tokenizer.* metadata: the SentencePiece or byte-level BPE tokenizer of ``model_dir``
        padded to vocab_size, with ``adjust_vocab``'s fix-ups."""
        vocab = load_vocab(model_dir, self.n_vocab, pre=pre, add_prefix_space_key=self.space_prefix_key)
        self.adjust_vocab(vocab)
        return vocab

    def adjust_vocab(self, vocab: Vocab) -> None:
        """Architecture-specific tokenizer fix-ups llama.cpp applies; none by default."""

    # -- metadata --------------------------------------------------------------------------

    def _rope_params(self, config_path: Path) -> dict[str, Any]:
        rope = self.cfg.get("rope_parameters") or self.cfg.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ConvertError(f"{config_path}: 'rope_scaling' must be an object, got {rope!r}")
        kind = str(rope.get("rope_type", rope.get("type", "default"))).lower()
        if kind == "dynamic":  # NTK scaling applied at inference time; llama.cpp's converter ignores it too
            logger.warning("%s: rope scaling type 'dynamic' is not carried into GGUF", config_path)
        elif kind not in ("default", "linear", "llama3", "yarn", *self.extra_rope_types):
            raise ConvertError(
                f"{config_path}: rope scaling type {kind!r} is not supported "
                f"(supported: {', '.join(('linear', 'llama3', 'yarn', *self.extra_rope_types))})"
            )
        if kind == "yarn" and "original_max_position_embeddings" not in rope:
            raise ConvertError(f"{config_path}: yarn rope scaling needs 'original_max_position_embeddings'")
        return {**rope, "rope_type": kind}

    def rope_theta(self) -> float:
        return float(self.cfg.get("rope_theta", self.rope.get("rope_theta", self.default_rope_theta)))

    def add_hparams(self, w: GGUFWriter) -> None:
        """The ``{arch}.*`` keys, as llama.cpp's TextModel.set_gguf_parameters writes them."""
        cfg = self.cfg
        w.add_block_count(self.n_layer)
        w.add_context_length(int(cfg.get("max_position_embeddings", self.default_ctx)))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        factor = self.rope.get("factor")
        if self.rope["rope_type"] == "linear" and factor is not None:
            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif self.rope["rope_type"] == "yarn" and factor is not None:
            w.add_rope_scaling_type(RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            w.add_rope_scaling_orig_ctx_len(int(self.rope["original_max_position_embeddings"]))
            for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                             ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                             ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                             ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):  # fmt: skip
                if self.rope.get(key) is not None:
                    add(float(self.rope[key]))
        w.add_rope_freq_base(self.rope_theta())
        self.add_norm_eps(w)
        self.add_expert_hparams(w)
        if cfg.get("head_dim") is not None:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)

    def add_norm_eps(self, w: GGUFWriter) -> None:
        """The norms' epsilon: RMSNorm's (rms_norm_eps) by default."""
        w.add_layer_norm_rms_eps(float(self.cfg.get("rms_norm_eps", self.default_rms_eps)))

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        """Expert counts where TextModel writes them (after the norm epsilon, before the head size), for
        an architecture whose llama.cpp class leaves them to TextModel (gpt-oss); none by default."""

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        """Keys a subclass's set_gguf_parameters adds in llama.cpp after TextModel's, whose last is
        general.file_type (Qwen3-Reranker's); none by default."""


# The feed-forward of a block: dense, or a mixture of experts (router, then expert e's matrices).
_FFN_RULES = {
    "dense": (
        ("mlp.down_proj.weight", "ffn_down.weight", ("embd", "ff")),
        ("mlp.gate_proj.weight", "ffn_gate.weight", ("ff", "embd")),
        ("mlp.up_proj.weight", "ffn_up.weight", ("ff", "embd")),
    ),
    "qwen-moe": (
        ("mlp.gate.weight", "ffn_gate_inp.weight", ("n_expert", "embd")),
        ("mlp.experts.{xid}.down_proj.weight", "ffn_down_exps.weight", ("embd", "ff_exp")),
        ("mlp.experts.{xid}.gate_proj.weight", "ffn_gate_exps.weight", ("ff_exp", "embd")),
        ("mlp.experts.{xid}.up_proj.weight", "ffn_up_exps.weight", ("ff_exp", "embd")),
    ),
    "mixtral": (
        ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight", ("n_expert", "embd")),
        ("block_sparse_moe.experts.{xid}.w1.weight", "ffn_gate_exps.weight", ("ff_exp", "embd")),
        ("block_sparse_moe.experts.{xid}.w2.weight", "ffn_down_exps.weight", ("embd", "ff_exp")),
        ("block_sparse_moe.experts.{xid}.w3.weight", "ffn_up_exps.weight", ("ff_exp", "embd")),
    ),
}


def _llama_rules(permute: bool, biases: str, ffn: str = "dense") -> tuple[TensorRule, ...]:
    """The llama-family table.

    ``biases``: "" (none), "qkv" (required, Qwen2) or "optional" (Llama's ``attention_bias``).
    ``ffn``: a key of _FFN_RULES.
    """
    L = "model.layers.{bid}."
    B = "blk.{bid}."
    pq, pk = ("permute_q", "permute_k") if permute else (None, None)
    rules = [
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",)),
        *(TensorRule(L + hf, B + g, shape) for hf, g, shape in _FFN_RULES[ffn]),
        TensorRule(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", ("embd",)),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", ("kv", "embd"), pk),
        TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", ("q", "embd"), pq),
        TensorRule(L + "self_attn.v_proj.weight", B + "attn_v.weight", ("kv", "embd")),
        TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    ]
    if biases:
        req = biases == "qkv"
        rules += [
            TensorRule(L + "self_attn.q_proj.bias", B + "attn_q.bias", ("q",), pq, required=req),
            TensorRule(L + "self_attn.k_proj.bias", B + "attn_k.bias", ("kv",), pk, required=req),
            TensorRule(L + "self_attn.v_proj.bias", B + "attn_v.bias", ("kv",), required=req),
        ]
    if biases == "optional":
        rules.append(
            TensorRule(L + "self_attn.o_proj.bias", B + "attn_output.bias", ("embd",), required=False)
        )
    return tuple(rules)


class Llama(Architecture):
    """LlamaForCausalLM: q/k rows permuted for GGML's rope; llama3 rope scaling as a rope_freqs tensor."""

    hf_names = ("LlamaForCausalLM",)
    gguf_arch = "llama"
    rules = _llama_rules(permute=True, biases="optional")
    space_prefix_key = True

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {
            "permute_q": lambda w: rope_permute(w, self.n_head),
            "permute_k": lambda w: rope_permute(w, self.n_head_kv),
        }

    def adjust_vocab(self, vocab: Vocab) -> None:
        # llama.cpp's LlamaModel.set_vocab: 49152-token vocabularies (SmolLM, Granite) add no BOS
        if self.n_vocab == 49152:
            vocab.add_special["bos"] = False

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_vocab_size(self.n_vocab)
        w.add_rope_dimension_count(self.head_dim)

    def _generated(self) -> list[PlannedSource]:
        if self.rope["rope_type"] != "llama3":
            return []
        return [PlannedSource("rope_freqs.weight", (self.head_dim // 2,), generate=self._llama3_factors)]

    def _llama3_factors(self) -> Array:
        """Per-frequency divisors of Llama 3.1 rope scaling (llama.cpp reads them from rope_freqs.weight)."""
        r, dim = self.rope, self.head_dim
        factor = float(r.get("factor", 8.0))
        low, high = float(r.get("low_freq_factor", 1.0)), float(r.get("high_freq_factor", 4.0))
        old_ctx = float(r.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / (
            np.float32(self.rope_theta()) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
        )
        out = np.empty(dim // 2, dtype=np.float32)
        for i, f in enumerate(freqs.astype(np.float32)):
            wavelen = 2 * math.pi / float(f)
            if wavelen < old_ctx / high:
                out[i] = 1.0
            elif wavelen > old_ctx / low:
                out[i] = factor
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                out[i] = 1.0 / ((1 - smooth) / factor + smooth)
        return out


def _add_expert_hparams(w: GGUFWriter, arch: Architecture) -> None:
    w.add_expert_count(arch.n_expert)
    w.add_expert_used_count(arch.n_expert_used)


def _moe_config(cfg: dict[str, Any], config_path: Path, n_key: str, width_key: str) -> tuple[int, int, int]:
    n = _require(cfg, n_key, config_path)
    used = _require(cfg, "num_experts_per_tok", config_path)
    if used > n:
        raise ConvertError(f"{config_path}: num_experts_per_tok {used} is more than {n_key} {n}")
    return n, used, _require(cfg, width_key, config_path)


class Mixtral(Llama):
    """MixtralForCausalLM: a llama whose feed-forward is a mixture of experts (llama.cpp writes it
    as a ``llama`` model with ``expert_count``)."""

    hf_names = ("MixtralForCausalLM",)
    rules = _llama_rules(permute=True, biases="", ffn="mixtral")
    default_ctx = 4096 * 32

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "num_local_experts", "intermediate_size")

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        _add_expert_hparams(w, self)


class Mistral(Llama):
    """MistralForCausalLM: written as llama.cpp writes it, a ``llama`` model."""

    hf_names = ("MistralForCausalLM",)
    default_ctx = 4096 * 32


def text_config(cfg: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """A multimodal model's ``text_config`` (llama.cpp's TextModel merges it over the top level)."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise ConvertError(f"{config_path}: 'text_config' must be an object, got {text!r}")
    return text


def write_st_pooling(w: GGUFWriter, model_dir: Path) -> None:
    """llama.cpp's Qwen2Model._try_set_pooling_type: a sentence-transformers directory's pooling (an
    embedding model such as Qwen3-Embedding: last token) as {arch}.pooling_type, when it names one."""
    from splitllm_convert.bert import pooling_type  # noqa: PLC0415 - bert builds on this module

    pooling = pooling_type(model_dir)
    if pooling is not None:
        w.add_pooling_type(pooling)


class Qwen2(Architecture):
    """Qwen2ForCausalLM: q/k/v biases, no rotary permute (llama.cpp's qwen2 uses NEOX rope); a
    sentence-transformers directory's pooling written after general.file_type, as llama.cpp does."""

    hf_names = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    rules = _llama_rules(permute=False, biases="qkv")
    default_ctx = 32768

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.model_dir = config_path.parent

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        write_st_pooling(w, self.model_dir)


# The "rerank" chat template llama.cpp's Qwen3Model writes for a Qwen3-Reranker: llama-server puts a
# pair's query and document in for {query} and {document}.
QWEN3_RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the "
    "query\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def is_qwen3_reranker(cfg: dict[str, Any], model_dir: Path) -> bool:
    """llama.cpp's Qwen3Model._is_qwen3_reranker: a model card with a "# Qwen3-Reranker" (or
    "# Qwen3-VL-Reranker") heading; either name in the directory's name, config.json's _name_or_path,
    model_type or architectures[0]; or a SequenceClassification architecture (case-insensitive)."""
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace").lower() if card.is_file() else ""
    if "# qwen3-reranker" in text or "# qwen3-vl-reranker" in text:
        return True
    names = cfg.get("architectures")
    arch = str(names[0] or "") if isinstance(names, list) and names else ""
    hints = (model_dir.name, str(cfg.get("_name_or_path", "")), str(cfg.get("model_type", "")), arch)
    if any("qwen3-reranker" in h.lower() or "qwen3-vl-reranker" in h.lower() for h in hints):
        return True
    return "sequenceclassification" in arch.lower()


class Qwen3(Architecture):
    """Qwen3ForCausalLM: no biases, each query/key head RMS-normed before the NEOX rotation.

    A Qwen3-Reranker (``is_qwen3_reranker``) is written as llama.cpp's Qwen3Model writes one: the
    rows of the "yes" and "no" tokens (the tokenizer's ids), in that order, of lm_head as
    ``cls.output.weight`` in its place (no output.weight), or of the tied embeddings just before
    token_embd; then, after general.file_type, pooling_type rank, labels ["yes", "no"] and the
    "rerank" chat template (tokenizer.chat_template.rerank, listed in tokenizer.chat_templates).
    llama.cpp scores a text by the softmax of the two rows on its last token's normed hidden state.
    """

    hf_names = ("Qwen3ForCausalLM",)
    gguf_arch = "qwen3"
    rules = (
        *_llama_rules(permute=False, biases=""),
        TensorRule("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight", ("head",)),
        TensorRule("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight", ("head",)),
    )
    default_ctx = 32768

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.model_dir = config_path.parent
        self.rerank = is_qwen3_reranker(cfg, self.model_dir)
        self.rank_ids: tuple[int, int] | None = None  # the ids of "yes" and "no", from the vocabulary

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        out = super().plan(available, where, files)
        if self.rerank:
            head = "model.embed_tokens.weight" if self.tied else "lm_head.weight"
            i = next(i for i, s in enumerate(out) if s.hf_name == head)
            cls_out = PlannedSource("cls.output.weight", (2, self.n_embd), head, "rank_rows")
            out[i : i + (not self.tied)] = [cls_out]  # in lm_head's place, or before token_embd
        return out

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {"rank_rows": self._rank_rows}

    def _rank_rows(self, w: Array) -> Array:
        assert self.rank_ids is not None  # set by read_vocab, before any tensor is produced
        return np.stack([w[self.rank_ids[0]], w[self.rank_ids[1]]])

    def adjust_vocab(self, vocab: Vocab) -> None:
        if not self.rerank:
            return
        ids = []
        for token in ("yes", "no"):  # as transformers' convert_tokens_to_ids finds them
            if token not in vocab.tokens:
                raise ConvertError(
                    f"{self.model_dir}: the tokenizer has no token {token!r}; a Qwen3-Reranker's head is the "
                    "rows of the 'yes' and 'no' tokens"
                )
            ids.append(vocab.tokens.index(token))
        self.rank_ids = (ids[0], ids[1])

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        if not self.rerank:  # (Qwen2Model's pooling; a reranker's is rank)
            write_st_pooling(w, self.model_dir)
        if self.rerank:
            w.add_pooling_type(PoolingType.RANK)
            w.add_classifier_output_labels(["yes", "no"])
            w.add_chat_template([{"name": "rerank", "template": QWEN3_RERANK_TEMPLATE}])


class Qwen3Moe(Architecture):
    """Qwen3MoeForCausalLM: Qwen3's attention and a mixture of experts in every block."""

    hf_names = ("Qwen3MoeForCausalLM",)
    gguf_arch = "qwen3moe"
    rules = (
        *_llama_rules(permute=False, biases="", ffn="qwen-moe"),
        *Qwen3.rules[-2:],  # the per-head q/k norms
    )
    default_ctx = 32768

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        cfg = self.cfg
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            raise ConvertError(
                f"{config_path}: dense blocks among the experts (mlp_only_layers / decoder_sparse_step) "
                "are not supported"
            )
        return _moe_config(cfg, config_path, "num_experts", "moe_intermediate_size")

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        _add_expert_hparams(w, self)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        if not self.cfg.get("norm_topk_prob", False):  # transformers' default; llama.cpp's is to renormalize
            w.add_expert_weights_norm(False)


class Phi3(Architecture):
    """Phi3ForCausalLM (Phi-3, Phi-3.5-mini): q/k/v in one projection and gate/up in
    another (kept fused, as llama.cpp's phi3 reads them), NEOX rope over ``partial_rotary_factor``
    of each head, LongRoPE's factors as the rope_factors_short/long tensors with the attention
    factor transformers computes for them."""

    hf_names = ("Phi3ForCausalLM",)
    gguf_arch = "phi3"
    L, B = "model.layers.{bid}.", "blk.{bid}."
    rules = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",)),
        TensorRule(L + "self_attn.qkv_proj.weight", B + "attn_qkv.weight", ("qkv", "embd")),
        TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")),
        TensorRule(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", ("embd",)),
        TensorRule(L + "mlp.gate_up_proj.weight", B + "ffn_up.weight", ("ff2", "embd")),
        TensorRule(L + "mlp.down_proj.weight", B + "ffn_down.weight", ("embd", "ff")),
        TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )
    del L, B
    default_ctx = 4096
    extra_rope_types = ("longrope", "su")

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        factor = cfg.get("partial_rotary_factor", 1.0)
        if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ConvertError(f"{config_path}: 'partial_rotary_factor' must be in (0, 1], got {factor!r}")
        self.n_rot = int(self.head_dim * factor)
        if self.n_rot % 2:
            raise ConvertError(f"{config_path}: {self.n_rot} rotated dimensions per head (must be even)")
        if self.rope["rope_type"] in ("longrope", "su"):
            for key in ("long_factor", "short_factor"):
                f = self.rope.get(key)
                if not isinstance(f, list) or len(f) != self.n_rot // 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in f
                ):
                    raise ConvertError(
                        f"{config_path}: rope_scaling.{key} must be a list of {self.n_rot // 2} positive "
                        "numbers"
                    )
            key = "original_max_position_embeddings"
            orig = cfg.get(key, self.rope.get(key))
            if not isinstance(orig, int) or isinstance(orig, bool) or orig < 2:
                raise ConvertError(f"{config_path}: LongRoPE needs 'original_max_position_embeddings' (>= 2)")

    def dims(self) -> dict[str, int]:
        d = super().dims()
        return {**d, "qkv": d["q"] + 2 * d["kv"], "ff2": 2 * self.n_ff}

    def _orig_ctx(self) -> int:
        return int(self.cfg.get("original_max_position_embeddings",
                                self.rope.get("original_max_position_embeddings", self.default_ctx)))

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_rope_dimension_count(self.n_rot)
        w.add_rope_scaling_orig_ctx_len(self._orig_ctx())
        w.add_sliding_window(int(self.cfg.get("sliding_window") or 0))
        if self.rope["rope_type"] in ("longrope", "su"):
            ctx, orig = int(self.cfg.get("max_position_embeddings", self.default_ctx)), self._orig_ctx()
            scale = ctx / orig  # transformers' Phi3 LongRoPE attention factor
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0
            w.add_rope_scaling_attn_factors(attn)

    def _generated(self) -> list[PlannedSource]:
        if self.rope["rope_type"] not in ("longrope", "su"):
            return []
        return [PlannedSource(f"rope_factors_{k}.weight", (self.n_rot // 2,),
                              generate=lambda k=k: np.asarray(self.rope[f"{k}_factor"], dtype=np.float32))
                for k in ("long", "short")]


def total_params(shapes: list[tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes)
