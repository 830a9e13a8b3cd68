"""Quantize a GGUF file to another file type: llama.cpp's ``llama-quantize``.

Python::

    from splitllm_convert import quantize
    plan = quantize("model-f16.gguf", "model-q4_k_m.gguf", "q4_k_m")

Command line: ``splitllm quantize [options] IN.gguf [OUT.gguf] TYPE [NTHREADS]`` (see
``splitllm.quantize_cli``).

The output is the file llama.cpp's ``llama_model_quantize`` writes, byte for byte: every key-value
pair of the input in its order, then ``general.quantization_version`` and ``general.file_type``
moved to the end (ggml's setters remove a key and append it), the ``split.*`` keys removed; the
tensors in llama.cpp's order (by layer number, then by name), each of the type llama.cpp's rules
choose (``quant_rules``), quantized by splitllm's C++ quantizers (ggml's quantizers,
byte-identical; with an importance matrix its weighted ones, each expert of a 3-D tensor with its
own row of the matrix; ``importance``), GGUF version 3, data aligned to 32 bytes. An input split
in several files is read from its first part and written as one file, as llama.cpp does without
``--keep-split`` (which is refused). The differences, all for inputs llama.cpp handles badly:

- an input with ``general.alignment`` other than 32: llama.cpp keeps the key but aligns to 32
  (its output is then unreadable); splitllm aligns the output to the key's value;
- llama.cpp requires a known architecture and its hyper-parameters; splitllm reads only
  ``general.architecture``, ``block_count``, ``expert_count``, ``nextn_predict_layers`` and the
  head counts (what the rules use), so it also quantizes architectures llama.cpp does not know;
- an importance matrix with negative values (llama-imatrix writes none: they are means of
  squares) is refused; llama.cpp would use it.

Errors raise :class:`QuantizeError` (a ``ValueError``) naming the file and tensor before anything
is written where possible: already-quantized tensors without ``allow_requantize`` (llama.cpp stops
at the first one, half-way through its output), a type that needs an importance matrix without
one, or a matrix entry missing for such a tensor or of the wrong size (llama.cpp: half-way, too),
NaN or infinite values (in the matrix; in the tensors, llama.cpp's
``ggml_validate_row_data``, on the input and on the result), a bad or truncated file
(:class:`splitllm.GGUFError`). The input is memory-mapped and read a slab of rows at a time; the
output goes to a temporary file beside ``dst`` that replaces ``dst`` at the end, and errors and
Ctrl-C remove it.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from splitllm_convert import gguf_meta, importance, quant_rules
from splitllm_convert.importance import ImatrixError, Importance
from splitllm_convert.mix import FILE_TYPES, FileType
from splitllm_convert.quant_rules import HParams, LayerPruning, QuantizeRuleError, QuantOptions, TypeChooser

Q = GGMLQuantizationType


class QuantizeError(ValueError):
    """An input file, option or tensor the quantizer cannot use; the message names it."""


# llama-quantize's QUANT_OPTIONS (tools/quantize/quantize.cpp), in its order: a number names the
# first entry with that file type ("12" is "Q3_K"). None: a type splitllm cannot write.
QUANT_OPTIONS: tuple[tuple[str, int, str | None], ...] = (
    ("Q1_0", 40, None), ("Q2_0", 41, None), ("Q4_0", 2, "q4_0"), ("Q4_1", 3, "q4_1"),
    ("MXFP4_MOE", 38, "mxfp4_moe"), ("Q5_0", 8, "q5_0"), ("Q5_1", 9, "q5_1"), ("IQ2_XXS", 19, "iq2_xxs"),
    ("IQ2_XS", 20, "iq2_xs"), ("IQ2_S", 28, "iq2_s"), ("IQ2_M", 29, "iq2_m"), ("IQ1_S", 24, "iq1_s"),
    ("IQ1_M", 31, "iq1_m"), ("TQ1_0", 36, "tq1_0"), ("TQ2_0", 37, "tq2_0"), ("Q2_K", 10, "q2_k"),
    ("Q2_K_S", 21, "q2_k_s"), ("IQ3_XXS", 23, "iq3_xxs"), ("IQ3_S", 26, "iq3_s"), ("IQ3_M", 27, "iq3_m"),
    ("Q3_K", 12, "q3_k_m"), ("IQ3_XS", 22, "iq3_xs"), ("Q3_K_S", 11, "q3_k_s"), ("Q3_K_M", 12, "q3_k_m"),
    ("Q3_K_L", 13, "q3_k_l"), ("IQ4_NL", 25, "iq4_nl"), ("IQ4_XS", 30, "iq4_xs"), ("Q4_K", 15, "q4_k_m"),
    ("Q4_K_S", 14, "q4_k_s"), ("Q4_K_M", 15, "q4_k_m"), ("Q5_K", 17, "q5_k_m"),
    ("Q5_K_S", 16, "q5_k_s"), ("Q5_K_M", 17, "q5_k_m"), ("Q6_K", 18, "q6_k"), ("Q8_0", 7, "q8_0"),
    ("F16", 1, "f16"), ("BF16", 32, "bf16"), ("F32", 0, "f32"), ("COPY", 0, None),
)  # fmt: skip
SUPPORTED_NAMES = tuple(name for name, _, ours in QUANT_OPTIONS if ours)
# the file types llama.cpp refuses to write without an importance matrix (tensor_requires_imatrix:
# most of their matrices get IQ1_*, IQ2_* or IQ3_XXS, or Q2_K in a Q2_K_S file)
NEEDS_IMATRIX = tuple(name for name, _, ours in QUANT_OPTIONS if ours and FILE_TYPES[ours].needs_imatrix)
# why splitllm refuses the other types llama-quantize offers
_NO_QUANTIZER = {
    "Q1_0": "splitllm has no Q1_0 format", "Q2_0": "splitllm has no Q2_0 format",
    "COPY": "COPY (tensors copied as they are) is not supported",
}  # fmt: skip
# the tensor types of --output-tensor-type, --token-embedding-type and --tensor-type
TENSOR_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K,
                Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS, Q.MXFP4, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS,
                Q.IQ3_S, Q.IQ1_S, Q.IQ1_M, Q.TQ1_0, Q.TQ2_0)  # fmt: skip
_INT = re.compile(r"\s*[+-]?\d+\s*")


def parse_ftype(value: str | int) -> tuple[str, FileType] | None:
    """llama-quantize's try_parse_ftype: a name in any case or a file type number -> (its name in
    QUANT_OPTIONS, the FileType). None if llama.cpp knows no such type; QuantizeError for a type
    llama.cpp knows and splitllm cannot write. A number must be the whole string (llama.cpp's stoi
    would also read "7b.gguf" as type 7)."""
    entry = None
    if isinstance(value, str):
        entry = next((e for e in QUANT_OPTIONS if e[0] == value.upper()), None)
        if entry is None and _INT.fullmatch(value):
            value = int(value)
    if entry is None and isinstance(value, int):
        entry = next((e for e in QUANT_OPTIONS if e[1] == value), None)
    if entry is None:
        return None
    name, _, ours = entry
    if ours is None:
        raise QuantizeError(
            f"type {name} is not supported by splitllm quantize ({_NO_QUANTIZER.get(name, 'no quantizer')}; "
            f"use llama.cpp's llama-quantize); supported: {', '.join(SUPPORTED_NAMES)}"
        )
    return name, FILE_TYPES[ours]


def parse_tensor_type(value: str | GGMLQuantizationType) -> GGMLQuantizationType:
    """A ggml type by name in any case (llama-quantize's parse_ggml_type), among TENSOR_TYPES."""
    if isinstance(value, GGMLQuantizationType):
        t = value
    else:
        t = next((q for q in Q if q.name.lower() == value.lower()), None)
        if t is None:
            raise QuantizeError(f"invalid ggml_type {value!r}; supported: {_type_names()}")
    if t not in TENSOR_TYPES:
        raise QuantizeError(f"splitllm cannot quantize to {t.name}; supported: {_type_names()}")
    return t


def _type_names() -> str:
    return ", ".join(t.name.lower() for t in TENSOR_TYPES)


def row_bytes(t: GGMLQuantizationType, n: int) -> int:
    blck, size = GGML_QUANT_SIZES[t]
    return n // blck * size


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output: name, shape (numpy order), input and output types and bytes."""

    name: str
    shape: tuple[int, ...]
    src_type: GGMLQuantizationType
    type: GGMLQuantizationType
    src_nbytes: int
    nbytes: int
    source: str | None = None  # the input tensor's name, where --prune-layers renumbered it


@dataclass(frozen=True)
class QuantizePlan:
    """What ``quantize`` writes (or, with ``dry_run``, would write)."""

    src: Path
    dst: Path | None
    type_name: str  # as llama-quantize names it: "Q4_K_M"
    tensors: tuple[TensorPlan, ...]
    n_elements: int
    output_bytes: int  # the whole file
    n_fallback: int  # tensors whose rows the chosen type's block does not divide
    # --dry-run without a matrix of a type that needs one: llama.cpp's closing warning
    will_require_imatrix: bool = False

    @property
    def src_tensor_bytes(self) -> int:
        return sum(t.src_nbytes for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def summary(self) -> str:
        """llama-quantize's closing lines: the sizes and bits per weight before and after."""
        n = max(self.n_elements, 1)
        a, b = self.src_tensor_bytes, self.tensor_bytes
        lines = [f"model size = {a / 2**20:8.2f} MiB ({a * 8 / n:.2f} BPW)",
                 f"quant size = {b / 2**20:8.2f} MiB ({b * 8 / n:.2f} BPW)"]  # fmt: skip
        if self.will_require_imatrix:
            lines.append("WARNING: dry run completed successfully, but actually completing this quantization "
                         "will require an imatrix!")  # fmt: skip
        if self.n_fallback:
            lines.append(f"WARNING: {self.n_fallback} of {len(self.tensors)} tensor(s) required fallback "
                         "quantization")  # fmt: skip
        return "\n".join(lines)

    def format(self) -> str:
        """One tensor a line (llama.cpp's order, ggml's shape order), then the summary."""
        w = max((len(t.name) for t in self.tensors), default=10)
        lines = [f"{'tensor':<{w}}  {'shape (ggml order)':<24} {'type':<13} {'bytes':>12}"]
        for t in self.tensors:
            shape = "{" + ", ".join(str(d) for d in reversed(t.shape)) + "}"
            types = f"{t.src_type.name}->{t.type.name}" if t.type != t.src_type else t.type.name
            lines.append(f"{t.name:<{w}}  {shape:<24} {types:<13} {t.nbytes:>12}")
        return "\n".join(lines + [self.summary()])


# -- reading and planning -------------------------------------------------------------------------


@dataclass
class _Input:
    path: Path
    gf: Any  # splitllm.GGUFFile
    kvs: list[gguf_meta.KV]
    meta: dict[str, Any]


def _open(src: Path) -> _Input:
    from splitllm import GGUFFile

    gf = GGUFFile(src)  # checks every length and offset; GGUFError (a ValueError) names the file
    with open(src, "rb") as f:
        header = f.read(gf.data_offset)
    kvs = gguf_meta.read_kvs(header, str(src))
    meta = gf.metadata
    return _Input(src, gf, kvs, meta)


def _output_kvs(inp: _Input, ftype: int, override_kv: Sequence[tuple[str, Any]]) -> list[gguf_meta.KV]:
    """llama_model_quantize_impl's metadata: the input's pairs, then its setters and removals."""
    kvs = list(inp.kvs)
    gguf_meta.set_kv(kvs, gguf_meta.kv_u32("general.quantization_version", 2))  # GGML_QNT_VERSION
    gguf_meta.set_kv(kvs, gguf_meta.kv_u32("general.file_type", ftype))
    for key in ("split.no", "split.count", "split.tensors.count"):
        gguf_meta.remove_kv(kvs, key)
    for key, value in override_kv:
        gguf_meta.set_kv(kvs, _override(key, value))
    return kvs


def _override(key: str, value: Any) -> gguf_meta.KV:
    """An --override-kv pair as llama.cpp writes it: int as u32 of its absolute value, float as f32."""
    if key == "general.alignment":
        raise QuantizeError("general.alignment cannot be overridden")
    if isinstance(value, bool):
        return gguf_meta.kv_bool(key, value)
    if isinstance(value, int):
        return gguf_meta.kv_u32(key, abs(value))
    if isinstance(value, float):
        return gguf_meta.kv_f32(key, value)
    if isinstance(value, str):
        return gguf_meta.kv_str(key, value)
    raise QuantizeError(f"override of {key!r}: an int, float, bool or str is needed, "
                        f"not {type(value).__name__}")


def _overridden_value(value: Any) -> Any:
    return abs(value) & 0xFFFFFFFF if isinstance(value, int) and not isinstance(value, bool) else value


_Weights = dict[str, np.ndarray]  # tensor name -> its importance-matrix rows (experts, columns)


@dataclass
class _Rules:
    """What choosing the tensors' types needs beyond the file: the options and the matrix."""

    opts: QuantOptions
    allow_requantize: bool
    imatrix: Importance | None
    dry_run: bool
    pruning: LayerPruning
    will_require_imatrix: bool = False


def _plan_tensors(inp: _Input, rules: _Rules, override_kv: Sequence[tuple[str, Any]]
                  ) -> tuple[list[TensorPlan], int, dict[str, np.ndarray]]:  # fmt: skip
    """The output's tensors, the number of fallbacks and each quantized tensor's matrix rows."""
    meta = dict(inp.meta)
    meta.update({k: _overridden_value(v) for k, v in override_kv})
    try:
        hp = HParams.from_metadata(meta, str(inp.path))
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    infos = inp.gf.tensors
    renamed = {}
    for old in quant_rules.tensor_order(infos):
        new = rules.pruning.rename(old)
        if new is not None:
            renamed[new] = old
    chooser = TypeChooser(hp, rules.opts, list(renamed))
    plans = []
    for name, old in renamed.items():  # llama.cpp's first pass: the types, and a missing matrix refused
        info = infos[old]
        try:
            cur = Q[info.type]
        except KeyError:
            raise QuantizeError(f"{inp.path}: tensor {name!r} has a type splitllm does not know "
                                f"({info.type})") from None
        ne = tuple(reversed(info.shape))
        try:
            t = chooser.target(name, ne, cur)
        except QuantizeRuleError as e:
            raise QuantizeError(f"{inp.path}: {e}") from None
        if rules.imatrix is None and quant_rules.allows_quantization(rules.opts, hp.arch, name, ne):
            _refuse_without_imatrix(inp.path, rules, name, t)
        n_rows = math.prod(ne[1:])
        plans.append(TensorPlan(name, info.shape, cur, t, info.nbytes, n_rows * row_bytes(t, ne[0]),
                                None if old == name else old))  # fmt: skip
    weights = {}
    for tp in plans:  # its second: each tensor's matrix, and conversions it cannot make
        ne = tuple(reversed(tp.shape))
        rows = _imatrix_rows(inp.path, rules, tp.name, ne, tp.src_type, tp.type)
        if rows is not None:
            weights[tp.name] = rows
        # a dry run plans types splitllm has no quantizer for yet, as llama.cpp's does
        weighted = None if rules.dry_run else rows is not None
        _check_conversion(inp.path, tp.name, ne, tp.src_type, tp.type, rules.allow_requantize, weighted)
    return plans, chooser.n_fallback, weights


def _refuse_without_imatrix(path: Path, rules: _Rules, name: str, t: GGMLQuantizationType) -> None:
    """llama.cpp refuses a type that needs a matrix when there is none (a dry run warns)."""
    if quant_rules.requires_imatrix(name, t, rules.opts.ftype):
        if not rules.dry_run:
            raise QuantizeError(f"{path}: this quantization requires an importance matrix (--imatrix): "
                                f"tensor {name!r} gets type {t.name}, which needs one")  # fmt: skip
        rules.will_require_imatrix = True


def _imatrix_rows(path: Path, rules: _Rules, name: str, ne: tuple[int, ...], cur: GGMLQuantizationType,
                  t: GGMLQuantizationType) -> np.ndarray | None:  # fmt: skip
    """The matrix rows tensor ``name`` is quantized with (None: none); llama.cpp's refusal of a
    type that needs a matrix when the matrix has no entry for this tensor."""
    needs = quant_rules.requires_imatrix(name, t, rules.opts.ftype)
    if rules.imatrix is None or t == cur:  # no matrix, or copied as it is
        return None
    try:
        rows = rules.imatrix.rows_for(name, ne, rules.pruning.original(name))
    except (ImatrixError, QuantizeRuleError) as e:
        raise QuantizeError(str(e)) from None
    if rows is None and needs and not rules.dry_run:
        raise QuantizeError(f"{path}: missing importance matrix for tensor {name!r} in a very low-bit "
                            f"quantization ({t.name}): the result would be garbage")  # fmt: skip
    return rows


def _has_quantizer(t: GGMLQuantizationType, weighted: bool) -> bool:
    from splitllm import quants

    info = quants.qtype_info(int(t))
    return info.can_quantize or (weighted and info.takes_imatrix)


def _check_conversion(path: Path, name: str, ne: tuple[int, ...], cur: GGMLQuantizationType,
                      t: GGMLQuantizationType, allow_requantize: bool,
                      weighted: bool | None) -> None:  # fmt: skip
    """llama.cpp's refusals of a conversion, and splitllm's of a type it cannot write (``weighted``:
    with an importance matrix or not; None: not checked)."""
    if t == cur:
        return
    where = f"{path}: tensor {name!r}"
    if quant_rules.is_quantized(cur):
        if not allow_requantize:
            raise QuantizeError(f"{where} is already quantized ({cur.name}): requantizing from type "
                                f"{cur.name} is disabled (--allow-requantize allows it, at a loss of "
                                "quality)")  # fmt: skip
        from splitllm import quants

        if not quants.qtype_info(int(cur)).can_dequantize:
            raise QuantizeError(f"{where}: type {cur.name} unsupported for requantization: splitllm cannot "
                                "dequantize it")  # fmt: skip
    elif cur not in quant_rules.FLOAT_TYPES:
        raise QuantizeError(f"{where}: cannot dequantize/convert tensor type {cur.name}")
    if t not in TENSOR_TYPES or (weighted is not None and not _has_quantizer(t, weighted)):
        raise QuantizeError(f"{where}: splitllm cannot quantize to {t.name}" +
                            ("" if weighted else " without an importance matrix"))
    if ne[0] % GGML_QUANT_SIZES[t][0]:
        raise QuantizeError(f"{where}: rows of {ne[0]} values do not divide into {t.name} blocks of "
                            f"{GGML_QUANT_SIZES[t][0]}")  # fmt: skip


# -- tensor data ----------------------------------------------------------------------------------

# byte offsets of the f16 scales ggml_validate_row_data checks in each block
_F16_SCALES = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,), Q.Q2_K: (80, 82),
    Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.TQ1_0: (52,), Q.TQ2_0: (64,),
    Q.IQ2_XXS: (0,), Q.IQ2_XS: (0,), Q.IQ2_S: (0,), Q.IQ3_XXS: (0,), Q.IQ3_S: (0,), Q.IQ1_S: (0,),
    Q.IQ4_NL: (0,), Q.IQ4_XS: (0,),
}  # fmt: skip


def _valid(raw: np.ndarray, t: GGMLQuantizationType) -> bool:
    """ggml_validate_row_data: no NaN or infinity among the values (float types) or the block scales.

    ``raw``: contiguous uint8. Types without a check here (integers, IQ1_M) pass; MXFP4's block
    exponents must not be 0xFF (ggml's validate_e_e8m0)."""
    if t == Q.F32:
        return not ((raw.view(np.uint32) & 0x7F800000) == 0x7F800000).any()
    if t == Q.F16:
        return not ((raw.view(np.uint16) & 0x7C00) == 0x7C00).any()
    if t == Q.BF16:
        return not ((raw.view(np.uint16) & 0x7FFF) >= 0x7F80).any()
    if t == Q.F64:
        return bool(np.isfinite(raw.view(np.float64)).all())
    if t == Q.MXFP4:
        return not (raw.reshape(-1, GGML_QUANT_SIZES[t][1])[:, 0] == 0xFF).any()
    blocks = raw.reshape(-1, GGML_QUANT_SIZES[t][1]) if t in _F16_SCALES or t == Q.Q8_K else None
    if t == Q.Q8_K:
        return bool(np.isfinite(blocks[:, :4].copy().view(np.float32)).all())
    for off in _F16_SCALES.get(t, ()):
        if ((blocks[:, off : off + 2].copy().view(np.uint16) & 0x7C00) == 0x7C00).any():
            return False
    return True


def _slabs(inp: _Input, tp: TensorPlan, budget: int, n_threads: int | None,
           weights: np.ndarray | None = None) -> Iterator[np.ndarray]:  # fmt: skip
    """The tensor's output bytes, a slab of rows at a time (at most ``budget`` bytes of buffers);
    ``weights``: the importance matrix's rows, one per expert (a slab then stays in one expert)."""
    from splitllm import quants

    raw = inp.gf.tensor(tp.source or tp.name).reshape(-1).view(np.uint8)
    ncols = tp.shape[-1] if tp.shape else 1
    src_row, dst_row = row_bytes(tp.src_type, ncols), row_bytes(tp.type, ncols)
    n_rows = len(raw) // src_row if src_row else 0
    per_row = src_row + dst_row + (0 if tp.src_type == Q.F32 else 4 * ncols)
    step = max(1, min(n_rows, budget // per_row))
    where = f"{inp.path}: tensor {tp.name!r}"
    invalid = QuantizeError(f"{where} has invalid data (NaN or infinity)")
    if weights is None:
        slabs = [(r, min(n_rows, r + step), None) for r in range(0, n_rows, step)]
    else:
        per_expert = n_rows // len(weights)
        slabs = importance.expert_slices(n_rows, per_expert, step)
    for r, end, expert in slabs:
        src = raw[r * src_row : end * src_row]
        # the block quantizers refuse NaN and infinity themselves; the rest is checked here
        if (tp.type == tp.src_type or not quant_rules.is_quantized(tp.type)) and not _valid(src, tp.src_type):
            raise invalid
        if tp.type == tp.src_type:
            yield src
            continue
        rows = src.reshape(-1, src_row)
        if tp.src_type == Q.F32:
            x = rows.view(np.float32)
        else:
            x = quants.dequantize(rows, tp.src_type, n_threads=n_threads)
        try:
            qw = None if expert is None or weights is None else weights[expert]
            out = quants.quantize(x, tp.type, n_threads=n_threads, imatrix=qw).reshape(-1)
        except ValueError:  # a NaN or infinity in the input (or in its dequantized values)
            raise invalid from None
        if not _valid(out, tp.type):
            raise QuantizeError(f"{where}: quantized data validation failed (out of the range of "
                                f"{tp.type.name})")
        yield out


# -- the public entry point -----------------------------------------------------------------------


def _optional_type(value: str | GGMLQuantizationType | None) -> GGMLQuantizationType | None:
    return None if value is None else parse_tensor_type(value)


def default_output(src: str | os.PathLike[str], type_name: str) -> Path:
    """llama-quantize's output name when none is given: ggml-model-TYPE.gguf beside the input."""
    s = os.fspath(src)
    cut = max(s.rfind("/"), s.rfind("\\"))
    return Path(s[: cut + 1] + f"ggml-model-{type_name}.gguf")


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None,
    ftype: str | int,
    *,
    nthreads: int | None = None,
    allow_requantize: bool = False,
    leave_output_tensor: bool = False,
    pure: bool = False,
    output_tensor_type: str | GGMLQuantizationType | None = None,
    token_embedding_type: str | GGMLQuantizationType | None = None,
    tensor_types: Sequence[tuple[str, str | GGMLQuantizationType]] = (),
    override_kv: Mapping[str, int | float | bool | str] | None = None,
    imatrix: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    include_weights: Sequence[str] = (),
    exclude_weights: Sequence[str] = (),
    prune_layers: Sequence[int] = (),
    dry_run: bool = False,
    max_buffer_size: int | None = None,
    quiet: bool = False,
) -> QuantizePlan:
    """Quantize GGUF file ``src`` to ``dst`` (None: ``ggml-model-TYPE.gguf`` beside ``src``) as file
    type ``ftype`` (a name of :data:`SUPPORTED_NAMES` in any case, or llama.cpp's number); returns
    the plan. The options are llama_model_quantize_params': ``nthreads`` (None or <= 0: all),
    ``allow_requantize`` (dequantize already-quantized tensors, then quantize them),
    ``leave_output_tensor`` (output.weight as it is), ``pure`` (no k-quant mixture: every
    quantized tensor gets the file type's type, the rows' fallbacks aside),
    ``output_tensor_type`` / ``token_embedding_type`` (a type for output.weight / token_embd.weight),
    ``tensor_types`` ((regex, type) pairs: the first found in a tensor's name sets its type; Python's
    ``re``, which reads ordinary patterns as llama.cpp's std::regex does),
    ``override_kv`` (metadata to set: int is written as uint32, float as float32),
    ``imatrix`` (an importance matrix: a file llama-imatrix wrote, GGUF or legacy, recorded in the
    ``quantize.imatrix.*`` keys as llama-quantize does; or name -> values, recorded only by its
    entry count), ``include_weights`` / ``exclude_weights`` (use only / not the entries whose name
    contains one of these strings), ``prune_layers`` (layer numbers whose tensors are dropped,
    the later layers renumbered and ``{arch}.block_count`` set, as llama-quantize's
    --prune-layers; the rules still see the input's layer count), ``max_buffer_size`` (bytes of
    row buffers per slab; default 1 GiB), ``dry_run`` (plan only). An existing ``dst`` is
    replaced, as llama-quantize does; ``dst`` may not be ``src``.
    """
    src_path = Path(src)
    parsed = parse_ftype(ftype)
    if parsed is None:
        raise QuantizeError(f"invalid ftype {ftype!r}; supported: {', '.join(SUPPORTED_NAMES)}")
    type_name, ft = parsed
    if dst is not None:
        dst_path: Path | None = Path(dst)
    else:
        dst_path = None if dry_run else default_output(src, type_name)
    if dst_path is not None and not dry_run:
        _check_output(src_path, dst_path)
    matrix = _importance(imatrix, include_weights, exclude_weights)
    opts = QuantOptions(
        ft.ftype, ft.default, pure=pure, quantize_output_tensor=not leave_output_tensor,
        output_tensor_type=_optional_type(output_tensor_type),
        token_embedding_type=_optional_type(token_embedding_type),
        tensor_types=tuple((p, parse_tensor_type(t)) for p, t in tensor_types),
        has_imatrix=matrix is not None,
    )  # fmt: skip
    for pattern, _ in opts.tensor_types:
        try:
            re.compile(pattern)
        except re.error as e:
            raise QuantizeError(f"--tensor-type {pattern!r}: not a regular expression ({e})") from None
    kv_list = list((override_kv or {}).items()) + (matrix.override_kvs() if matrix else [])
    for key, value in kv_list:
        _override(key, value)  # checks the types before anything is read
    if any(i < 0 for i in prune_layers):
        raise QuantizeError(f"prune_layers: negative layer number in {list(prune_layers)}")
    rules = _Rules(opts, allow_requantize, matrix, dry_run, LayerPruning(tuple(sorted(set(prune_layers)))))
    inp = _open(src_path)
    try:
        plan, header, weights = _plan(inp, src_path, dst_path, type_name, ft, rules, kv_list)
        if not dry_run:
            assert dst_path is not None
            threads = nthreads if nthreads is not None and nthreads > 0 else None
            budget = max_buffer_size if max_buffer_size else 1 << 30
            _write(inp, plan, header, dst_path, weights, threads, budget, quiet)
    finally:
        inp.gf.close()
    return plan


def _importance(imatrix: str | os.PathLike[str] | Mapping[str, np.ndarray] | None,
                include: Sequence[str], exclude: Sequence[str]) -> Importance | None:  # fmt: skip
    """The entries the quantizer gets (None: no matrix, or no entry left), checked."""
    try:
        if imatrix is None:
            importance.select({}, include, exclude)  # refuses the two options together
            return None
        if isinstance(imatrix, Mapping):
            matrix = importance.from_mapping(importance.select(imatrix, include, exclude))
        else:
            matrix = importance.load(imatrix, include, exclude)
        if matrix is not None:
            matrix.check_finite()
    except ImatrixError as e:
        raise QuantizeError(str(e)) from None
    return matrix


def _plan(inp: _Input, src: Path, dst: Path | None, type_name: str, ft: FileType, rules: _Rules,
          override_kv: Sequence[tuple[str, Any]]) -> tuple[QuantizePlan, bytes, _Weights]:  # fmt: skip
    """The plan, the output's header (key-values and tensor infos, padded) and the tensors'
    importance-matrix rows."""
    tensors, n_fallback, weights = _plan_tensors(inp, rules, override_kv)
    kvs = _output_kvs(inp, int(ft.ftype), override_kv)
    if rules.pruning.prune:  # set last, once the layers are renumbered
        arch = inp.meta.get("general.architecture")
        gguf_meta.set_kv(kvs, gguf_meta.kv_u32(f"{arch}.block_count", rules.pruning.next_id))
    alignment = inp.gf.alignment
    infos, offset = [], 0
    for tp in tensors:
        infos.append(gguf_meta.TensorInfo(tp.name, tuple(reversed(tp.shape)), int(tp.type), offset))
        offset += gguf_meta.pad(tp.nbytes, alignment)
    header = gguf_meta.header_bytes(kvs, infos, [quant_rules.n_dims(i.ne) for i in infos], alignment)
    n_elements = sum(math.prod(tp.shape) for tp in tensors)
    plan = QuantizePlan(src, dst, type_name, tuple(tensors), n_elements, len(header) + offset, n_fallback,
                        rules.will_require_imatrix)  # fmt: skip
    return plan, header, weights


def _check_output(src: Path, dst: Path) -> None:
    if dst.is_dir():
        raise QuantizeError(f"{dst}: is a directory; give the output file name")
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise QuantizeError(f"input and output files are the same: '{src}'")
    if not dst.parent.is_dir():
        raise QuantizeError(f"{dst.parent}: output directory does not exist")


def _progress(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="quantize", disable=quiet)


def _write(inp: _Input, plan: QuantizePlan, header: bytes, dst: Path, weights: Mapping[str, np.ndarray],
           n_threads: int | None, budget: int, quiet: bool) -> None:  # fmt: skip
    alignment = inp.gf.alignment
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        f = open(tmp, "xb")
    except OSError as e:
        raise QuantizeError(f"{dst.parent}: cannot create the output file ({e})") from None
    except BaseException:  # Ctrl-C as open() returns
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f, _progress(plan.src_tensor_bytes, quiet) as bar:
            f.write(header)
            for i, tp in enumerate(plan.tensors):
                bar.set_postfix_str(f"{i + 1}/{len(plan.tensors)} {tp.name}", refresh=False)
                written = 0
                for data in _slabs(inp, tp, budget, n_threads, weights.get(tp.name)):
                    f.write(data)
                    written += data.nbytes
                if written != tp.nbytes:
                    raise QuantizeError(f"{tp.name}: wrote {written} bytes, planned {tp.nbytes}")
                f.write(bytes(gguf_meta.pad(written, alignment) - written))
                advise = getattr(inp.gf._core, "advise_dontneed", None)
                if advise is not None and tp.src_nbytes:
                    # as llama.cpp unmaps each tensor
                    advise((tp.source or tp.name).encode("utf-8", "surrogateescape"))
                bar.update(tp.src_nbytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
