"""Which type each tensor of a GGUF file gets when it is quantized: llama.cpp's quantizer's rules.

A port of ``tensor_allows_quantization``, ``llama_tensor_get_type`` (with its ``_impl`` and
``tensor_type_fallback``) and the state they keep (src/llama-quant.cpp, llama.cpp as vendored by
llama-cpp-python 0.3.36), for the file types of :data:`splitllm_convert.mix.FILE_TYPES` (k-quants
Q2_K to Q6_K with Q2_K_S and Q3_K_S / Q3_K_M / Q3_K_L, legacy types, IQ4_NL, IQ4_XS, MXFP4_MOE,
the IQ1 / IQ2 / IQ3 file types, the ternary TQ1_0 / TQ2_0), with or without an importance matrix
(``has_imatrix``: some rules change with one), and ``tensor_requires_imatrix``
(:func:`requires_imatrix`). Left out: the Q2_0 branch (splitllm has no such format) and the
``ATTENTION_QKV`` branch after the ``attn_v`` one, which llama.cpp never reaches (``attn_qkv`` is
``attn_v``-like).
``--prune-layers``' renumbering is :class:`LayerPruning`.

The choice depends on the order the tensors are visited in (llama.cpp counts the ``attn_v``-like
tensors it has seen, and, for dense models, the ``ffn_down`` ones): :class:`TypeChooser` is fed
the tensors in the quantizer's order (:func:`tensor_order`) and keeps the same counters.

The one copy of these rules: ``requantize`` (``splitllm quantize``) runs them over a GGUF file's
tensors, with llama-quantize's options; the converter (``mix``) over the tensors it is about to
write, as llama.cpp's quantizer would over the F32 file.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

Q = GGMLQuantizationType
F = LlamaFileType

FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)


def block_size(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def is_quantized(t: GGMLQuantizationType) -> bool:
    """ggml_is_quantized: a block type (the float and integer types are not)."""
    return t not in (Q.F32, Q.F16, Q.BF16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64)


class Category(enum.Enum):
    """tensor_category: broad roles read from a tensor's name."""

    TOKEN_EMBD = enum.auto()
    ATTENTION_Q = enum.auto()
    ATTENTION_V = enum.auto()
    ATTENTION_K = enum.auto()
    ATTENTION_QKV = enum.auto()
    ATTENTION_KV_B = enum.auto()
    ATTENTION_OUTPUT = enum.auto()
    FFN_UP = enum.auto()
    FFN_GATE = enum.auto()
    FFN_DOWN = enum.auto()
    OUTPUT = enum.auto()
    OTHER = enum.auto()


_CATEGORY_BY_PART = (  # tested in this order, as tensor_get_category does
    ("attn_qkv.weight", Category.ATTENTION_QKV),
    ("attn_kv_b.weight", Category.ATTENTION_KV_B),
    ("attn_v.weight", Category.ATTENTION_V),
    ("attn_k.weight", Category.ATTENTION_K),
    ("attn_q.weight", Category.ATTENTION_Q),
    ("attn_output.weight", Category.ATTENTION_OUTPUT),
    ("ffn_up", Category.FFN_UP),
    ("ffn_gate", Category.FFN_GATE),
    ("ffn_down", Category.FFN_DOWN),
)
_ATTN_V_LIKE = (Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B)


def category(name: str) -> Category:
    if name == "output.weight":
        return Category.OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return Category.TOKEN_EMBD
    for part, cat in _CATEGORY_BY_PART:
        if part in name:
            return cat
    return Category.OTHER


_BLK = re.compile(r"blk\.[ \t\n\v\f\r]*([+-]?\d+)")


def _blk_layer(name: str) -> int | None:
    """sscanf(name, "blk.%d.", &i) == 1: the layer number, or None."""
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def tensor_order(names: Iterable[str]) -> list[str]:
    """The order llama.cpp's model loader keeps the tensors in (weight_name_comparer): by layer
    number (tensors outside ``blk.N.`` first), then by name (bytewise)."""

    def key(name: str) -> tuple[int, bytes]:
        layer = _blk_layer(name)
        return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))

    return sorted(names, key=key)


# substrings that keep a tensor out of quantization, for every architecture
_NOT_QUANTIZED_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)  # fmt: skip
_GLM5_NEXT_NOT_QUANTIZED_PARTS = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)  # fmt: skip


def n_dims(ne: Sequence[int]) -> int:
    """ggml_n_dims: dimensions up to the last one that is not 1 (at least 1); ``ne`` in ggml order."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] != 1:
            return i + 1
    return 1


@dataclass(frozen=True)
class QuantOptions:
    """llama_model_quantize_params, the part splitllm supports (None: the parameter's default)."""

    ftype: LlamaFileType
    default_type: GGMLQuantizationType  # llama_ftype_get_default_type(ftype)
    pure: bool = False
    quantize_output_tensor: bool = True  # False: --leave-output-tensor
    output_tensor_type: GGMLQuantizationType | None = None
    token_embedding_type: GGMLQuantizationType | None = None
    # --tensor-type PATTERN=TYPE, in order: the first pattern found in a tensor's name wins
    tensor_types: tuple[tuple[str, GGMLQuantizationType], ...] = ()
    # an importance matrix with at least one entry is passed (llama.cpp's qs.has_imatrix): some
    # rules give other types then, whichever tensors the matrix covers
    has_imatrix: bool = False


def allows_quantization(opts: QuantOptions, arch: str, name: str, ne: Sequence[int]) -> bool:
    """tensor_allows_quantization: a 2-D or 3-D weight that is not a norm, router, embedding of
    positions or token types, or one of the small tensors llama.cpp names."""
    if n_dims(ne) < 2 or not name.endswith("weight"):
        return False
    if not opts.quantize_output_tensor and name == "output.weight":
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    if any(part in name for part in _NOT_QUANTIZED_PARTS):
        return False
    return not (arch == "glm5-next" and any(part in name for part in _GLM5_NEXT_NOT_QUANTIZED_PARTS))


@dataclass(frozen=True)
class HParams:
    """What the rules read from the model's metadata (llama.cpp's load_hparams)."""

    arch: str
    n_layer_all: int  # {arch}.block_count
    n_head: int  # layer 0
    n_head_kv: int  # layer 0
    n_expert: int
    is_70b: bool  # llama.cpp's model type LLM_TYPE_70B

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], where: str) -> HParams:
        """From GGUF key-values (Python values); ``where`` names the file in errors."""
        arch = meta.get("general.architecture")
        if not isinstance(arch, str):
            raise ValueError(f"{where}: general.architecture is missing or not a string")

        def get(key: str, default: int | None = None, *, first: bool = False) -> int:
            full = f"{arch}.{key}"
            v = meta.get(full, default)
            if first and isinstance(v, list):  # a per-layer array: layer 0's value
                v = v[0] if v else default
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}: {full} is missing or not an integer")
            return v

        n_layer_all = get("block_count")
        if not 0 < n_layer_all <= 512:  # LLAMA_MAX_LAYERS
            raise ValueError(f"{where}: {arch}.block_count {n_layer_all} is out of range (1..512)")
        n_nextn = get("nextn_predict_layers", 0)
        n_expert = get("expert_count", 0)
        n_head = get("attention.head_count", 0, first=True)
        n_head_kv = get("attention.head_count_kv", n_head, first=True)
        return cls.of(arch, n_layer_all, n_head, n_head_kv, n_expert, n_nextn=n_nextn)

    @classmethod
    def of(cls, arch: str, n_layer_all: int, n_head: int, n_head_kv: int, n_expert: int = 0, *,
           n_nextn: int = 0) -> HParams:  # fmt: skip
        """From the values of the metadata keys (``n_nextn``: {arch}.nextn_predict_layers)."""
        return cls(arch, n_layer_all, n_head, n_head_kv, n_expert,
                   _is_70b(arch, n_layer_all - n_nextn, n_head, n_head_kv, n_expert))  # fmt: skip


def _is_70b(arch: str, n_layer: int, n_head: int, n_head_kv: int, n_expert: int) -> bool:
    """The architectures whose load_arch_hparams call a model LLM_TYPE_70B, and when."""
    if arch == "llama":
        return n_expert != 8 and n_layer == 80 and n_head != n_head_kv
    return (arch, n_layer) in (("qwen2", 80), ("deci", 80), ("olmo", 80), ("jais2", 68))


class QuantizeRuleError(ValueError):
    """A tensor llama.cpp's rules refuse (its message)."""


_FALLBACK = {
    Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.IQ4_XS: Q.IQ4_NL,
    Q.IQ1_S: Q.IQ4_NL, Q.IQ1_M: Q.IQ4_NL, Q.IQ2_XXS: Q.IQ4_NL, Q.IQ2_XS: Q.IQ4_NL, Q.IQ2_S: Q.IQ4_NL,
    Q.IQ3_XXS: Q.IQ4_NL, Q.IQ3_S: Q.IQ4_NL, Q.TQ1_0: Q.Q4_0, Q.TQ2_0: Q.Q4_0,
}  # fmt: skip
_IQ4 = (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS)
# the 1- and 2-bit IQ file types, which llama.cpp's rules treat as one family
_IQ12 = (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M)
_IQ2_SM = (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)  # the family's members that use IQ3_S where the rest use Q2_K
_IQ1 = (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M)
# types whose quantizer llama.cpp refuses to run without an importance matrix
_NEEDS_IMATRIX = (Q.IQ3_XXS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_M, Q.IQ1_S)


def requires_imatrix(name: str, t: GGMLQuantizationType, ftype: LlamaFileType) -> bool:
    """tensor_requires_imatrix: the IQ1/IQ2/IQ3_XXS types, and Q2_K in a Q2_K_S file, need an
    importance matrix, except in the token embeddings and the output matrix."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    return t in _NEEDS_IMATRIX or (t == Q.Q2_K and ftype == F.MOSTLY_Q2_K_S)


@dataclass
class TypeChooser:
    """llama_tensor_get_type with quantize_state_impl's counters; call :meth:`target` for every
    tensor in :func:`tensor_order`."""

    hp: HParams
    opts: QuantOptions
    names: Sequence[str]  # every tensor of the model (the counters' totals come from them)
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0
    tied_embeddings: bool = True
    _patterns: list[tuple[re.Pattern[str], GGMLQuantizationType]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cats = [category(n) for n in self.names]
        self.n_attention_wv = sum(c in _ATTN_V_LIKE for c in cats)
        self.tied_embeddings = Category.OUTPUT not in cats
        self._patterns = [(re.compile(p), t) for p, t in self.opts.tensor_types]

    def target(self, name: str, ne: Sequence[int], cur: GGMLQuantizationType) -> GGMLQuantizationType:
        """The type tensor ``name`` (ggml shape ``ne``, now of type ``cur``) is written in."""
        opts = self.opts
        if not allows_quantization(opts, self.hp.arch, name, ne):
            return cur
        cat = category(name)
        if opts.token_embedding_type is not None and cat == Category.TOKEN_EMBD:
            # per_layer_token_embd follows it too, unless a --tensor-type pattern names it
            if name != "per_layer_token_embd.weight" or not any(p.search(name) for p, _ in self._patterns):
                return opts.token_embedding_type
        if opts.output_tensor_type is not None and cat == Category.OUTPUT:
            return opts.output_tensor_type
        t = opts.default_type
        if is_quantized(t):
            manual = False
            for pattern, qtype in self._patterns:
                if pattern.search(name):
                    t, manual = qtype, True
                    break
            if not manual and not opts.pure:
                t = self._impl(t, name, ne, cat)
            t = self._fallback(name, ne[0], t)
        return t

    def _fallback(self, name: str, ncols: int, t: GGMLQuantizationType) -> GGMLQuantizationType:
        """tensor_type_fallback: a type whose block divides the row, else F16."""
        if ncols % block_size(t) == 0:
            return t
        self.n_fallback += 1
        if t in _FALLBACK:
            t = _FALLBACK[t]
        elif block_size(t) > 32:
            raise QuantizeRuleError(f"no tensor type fallback is defined for type {t.name} ({name})")
        return t if ncols % block_size(t) == 0 else Q.F16

    def _layer_info(self, counter: int, name: str) -> tuple[int, int]:
        n_layer = self.hp.n_layer_all
        if max(1, self.hp.n_expert) > 1:  # experts: the layer comes from the name
            i = _blk_layer(name)
            if i is None:
                raise QuantizeRuleError(f"Failed to determine layer for tensor {name}")
            if not 0 <= i < n_layer:
                raise QuantizeRuleError(f"Bad layer {i} for tensor {name}. Must be in [0, {n_layer})")
            return i, n_layer
        return counter, n_layer

    def _impl(
        self, t: GGMLQuantizationType, name: str, ne: Sequence[int], cat: Category
    ) -> GGMLQuantizationType:
        """llama_tensor_get_type_impl: its branches in its order (the first that applies decides)."""
        hp, f = self.hp, self.opts.ftype
        if hp.arch == "glm5-next" and any(p in name for p in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
            if t not in FLOAT_TYPES:
                return Q.Q8_0
        if cat == Category.OUTPUT or (self.tied_embeddings and cat == Category.TOKEN_EMBD):
            return self._output_type(t, f, ne[0])
        if f == F.MOSTLY_MXFP4_MOE:  # the experts (3-D, more than one) in MXFP4, the rest in Q8_0
            expert_role = cat in (Category.FFN_UP, Category.FFN_GATE, Category.FFN_DOWN)
            if len(ne) > 2 and ne[2] > 1 and (hp.arch != "bailingmoe3" or expert_role):
                return Q.MXFP4
            return Q.Q8_0
        if cat == Category.TOKEN_EMBD:
            return _TOKEN_EMBD.get(f, t)
        if f in _IQ12:
            return self._iq12(t, f, cat)
        if cat in _ATTN_V_LIKE:
            t = _attn_v_type(t, f, hp, self.i_attention_wv, self.n_attention_wv, self.opts.has_imatrix)
            self.i_attention_wv += 1
        elif cat == Category.ATTENTION_K:
            t = Q.Q8_0 if hp.n_expert == 8 else _ATTN_QK_IQ3.get(f, t)
        elif cat == Category.ATTENTION_Q:
            t = _ATTN_QK_IQ3.get(f, t)
        elif cat == Category.FFN_DOWN:
            i, n = self._layer_info(self.i_ffn_down, name)
            t = _ffn_down_type(t, f, i, n, hp, self.opts.has_imatrix)
            self.i_ffn_down += 1
        elif cat == Category.ATTENTION_OUTPUT:
            t = _attn_output_type(t, f, hp.n_expert, hp.arch == "falcon")
        elif cat in (Category.FFN_GATE, Category.FFN_UP):
            gate = cat == Category.FFN_GATE
            i, n = self._layer_info(self.i_ffn_gate if gate else self.i_ffn_up, name)
            if f == F.MOSTLY_IQ3_XS and n // 8 <= i < 7 * n // 8:
                t = Q.IQ3_XXS
            if gate:
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
        return t

    def _output_type(self, t: GGMLQuantizationType, f: LlamaFileType, ncols: int) -> GGMLQuantizationType:
        """The output matrix (and the token embeddings when the two are tied)."""
        if self.opts.output_tensor_type is not None:
            return self.opts.output_tensor_type
        if f == F.MOSTLY_MXFP4_MOE or self.hp.arch == "falcon" or ncols % block_size(t) != 0:
            return Q.Q8_0
        if f in _IQ12 or f == F.MOSTLY_IQ3_XXS:
            return Q.Q5_K
        return t if t == Q.Q8_0 else Q.Q6_K

    def _iq12(self, t: GGMLQuantizationType, f: LlamaFileType, cat: Category) -> GGMLQuantizationType:
        """The IQ1/IQ2 file types' own branch: a few roles get more bits, by counters only."""
        hp = self.hp
        low = Q.IQ3_S if f in _IQ2_SM else Q.Q2_K
        if cat in _ATTN_V_LIKE:
            t = Q.Q4_K if hp.n_gqa >= 4 or hp.n_expert >= 4 else low
            self.i_attention_wv += 1
        elif hp.n_expert == 8 and cat == Category.ATTENTION_K:
            t = Q.Q4_K
        elif cat == Category.FFN_DOWN:
            if self.i_ffn_down < hp.n_layer_all // 8:
                t = low
            self.i_ffn_down += 1
        elif cat == Category.ATTENTION_OUTPUT:
            if hp.n_expert == 8:
                t = Q.Q5_K
            elif f in _IQ1:
                t = Q.IQ2_XXS
            elif f in _IQ2_SM:
                t = Q.IQ3_S
        return t


# the token embeddings (untied) of the low-bit file types
_TOKEN_EMBD = {
    F.MOSTLY_IQ2_XXS: Q.Q2_K, F.MOSTLY_IQ2_XS: Q.Q2_K, F.MOSTLY_IQ1_S: Q.Q2_K, F.MOSTLY_IQ1_M: Q.Q2_K,
    F.MOSTLY_IQ2_S: Q.IQ3_S, F.MOSTLY_IQ2_M: Q.IQ3_S, F.MOSTLY_IQ3_XXS: Q.IQ3_S,
    F.MOSTLY_TQ1_0: Q.Q4_K, F.MOSTLY_TQ2_0: Q.Q4_K,
}  # fmt: skip
_ATTN_QK_IQ3 = {F.MOSTLY_IQ3_XS: Q.IQ3_XXS, F.MOSTLY_IQ3_XXS: Q.IQ2_S}  # attn_q, attn_k


def _attn_v_type(t: GGMLQuantizationType, f: LlamaFileType, hp: HParams, i: int, n: int,
                 has_imatrix: bool) -> GGMLQuantizationType:  # fmt: skip
    """The attn_v branch (outside the IQ1/IQ2 family): the ``i``-th of ``n`` attn_v-like tensors."""
    gqa4 = hp.n_gqa >= 4
    if f == F.MOSTLY_Q2_K:
        t = Q.Q4_K if gqa4 else Q.Q3_K
    elif f == F.MOSTLY_Q2_K_S and gqa4:
        t = Q.Q4_K
    elif f == F.MOSTLY_IQ3_XXS:
        t = Q.Q4_K if gqa4 else Q.IQ3_XXS if has_imatrix else Q.IQ3_S
    elif f in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and gqa4:
        t = Q.Q4_K
    elif f == F.MOSTLY_IQ3_M:
        t = Q.Q4_K
    elif f == F.MOSTLY_Q3_K_M:
        t = Q.Q5_K if i < 2 else Q.Q4_K
    elif f == F.MOSTLY_Q3_K_L:
        t = Q.Q5_K
    elif f in _IQ4 and gqa4:
        t = Q.Q5_K
    elif f in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i, n):
        t = Q.Q6_K
    elif f == F.MOSTLY_Q4_K_S and i < 4:
        t = Q.Q5_K
    if hp.is_70b and t in (Q.Q3_K, Q.Q4_K):
        t = Q.Q5_K
    return Q.Q8_0 if hp.n_expert == 8 else t


def _ffn_down_type(t: GGMLQuantizationType, f: LlamaFileType, i: int, n: int, hp: HParams,
                   has_imatrix: bool) -> GGMLQuantizationType:  # fmt: skip
    """The ffn_down branch (outside the IQ1/IQ2 family): layer ``i`` of ``n``."""
    falcon = hp.arch == "falcon"
    first_eighth = i < n // 8
    if f == F.MOSTLY_Q2_K:
        return Q.Q3_K
    if f == F.MOSTLY_Q2_K_S:
        return Q.Q4_K if first_eighth else t
    if f == F.MOSTLY_IQ3_XXS and not has_imatrix:
        return Q.Q4_K if first_eighth else Q.Q3_K
    if f == F.MOSTLY_Q3_K_M:
        return Q.Q5_K if i < n // 16 else Q.Q4_K if not falcon or use_more_bits(i, n) else Q.Q3_K
    if f == F.MOSTLY_IQ3_M and (first_eighth or (hp.n_expert == 8 and use_more_bits(i, n))):
        return Q.Q4_K
    if f == F.MOSTLY_Q3_K_L:
        return Q.Q4_K if falcon else Q.Q5_K
    if f == F.MOSTLY_Q4_K_M:
        if falcon:
            return Q.Q6_K if i < n // 16 else Q.Q5_K if use_more_bits(i, n) else Q.Q4_K
        return Q.Q6_K if use_more_bits(i, n) else t
    if first_eighth and f in _IQ4 and not has_imatrix:
        return Q.Q5_K
    if f == F.MOSTLY_Q5_K_M and use_more_bits(i, n):
        return Q.Q6_K
    if f == F.MOSTLY_Q4_K_S and not falcon and first_eighth:
        return Q.Q5_K
    if f in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and has_imatrix and first_eighth:
        # llama.cpp guards the first ffn_down layers of these two, with a matrix only
        return Q.Q4_1 if f == F.MOSTLY_Q4_0 else Q.Q5_1
    return t


_Q5_K_OUTPUT_WITH_8_EXPERTS = (
    F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_Q4_K_S,
    F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M, *_IQ4,
)  # fmt: skip
_ATTN_OUTPUT_DENSE = {F.MOSTLY_Q2_K: Q.Q3_K, F.MOSTLY_IQ3_XXS: Q.IQ3_S, F.MOSTLY_Q3_K_M: Q.Q4_K,
                      F.MOSTLY_Q3_K_L: Q.Q5_K, F.MOSTLY_IQ3_M: Q.Q4_K}  # fmt: skip


def _attn_output_type(t: GGMLQuantizationType, f: LlamaFileType, n_expert: int, falcon: bool) -> Q:
    """The attn_output branch (outside the IQ1/IQ2 family)."""
    if falcon:
        return Q.Q4_K if f == F.MOSTLY_Q3_K_L else t
    if n_expert == 8:
        return Q.Q5_K if f in _Q5_K_OUTPUT_WITH_8_EXPERTS else t
    return _ATTN_OUTPUT_DENSE.get(f, t)


# -- --prune-layers ---------------------------------------------------------------------------------

_BLK_SEARCH = re.compile(r"blk\.([0-9]+)\.")


@dataclass
class LayerPruning:
    """llama-quantize's --prune-layers (remap_layer / remap_imatrix): the listed layers' tensors are
    dropped and the later layers renumbered, in the order the tensors are visited."""

    prune: tuple[int, ...]  # sorted, without repeats
    mapped: dict[int, str] = field(default_factory=dict)  # old layer -> new number ("": pruned)
    next_id: int = 0  # the new block count once every tensor is visited

    def rename(self, name: str) -> str | None:
        """The tensor's new name, or None when it is pruned."""
        m = _BLK_SEARCH.search(name)
        if not self.prune or m is None:
            return name
        blk = int(m.group(1))
        if blk not in self.mapped:
            if blk in self.prune:
                self.mapped[blk] = ""
            elif blk < self.prune[0]:
                self.mapped[blk] = str(blk)
                self.next_id = blk + 1
            else:
                self.mapped[blk] = str(self.next_id)
                self.next_id += 1
        new = self.mapped[blk]
        return None if not new else name[: m.start(1)] + new + name[m.end(1) :]

    def original(self, name: str) -> str:
        """The name a renamed tensor had (its importance-matrix entry's name)."""
        m = _BLK_SEARCH.search(name)
        if not self.mapped or m is None:
            return name
        old = next((k for k, v in sorted(self.mapped.items()) if v == m.group(1)), None)
        if old is None:
            raise QuantizeRuleError(f"imatrix mapping error for {name}")
        return name[: m.start(1)] + str(old) + name[m.end(1) :]


def parse_prune_layers(text: str) -> tuple[int, ...]:
    """llama-quantize's L0,L1,...: each read as std::stoi does (a leading integer), none negative;
    sorted, repeats dropped."""
    out = []
    for part in text.split(","):
        m = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", part)
        if m is None or not 0 <= int(m.group(1)) < 2**31:
            raise ValueError(f"--prune-layers: invalid layer id '{part}'")
        out.append(int(m.group(1)))
    return tuple(sorted(set(out)))
