"""Output types: the ``--type`` choices and the type each tensor of a converted model gets.

- f32/f16/bf16 follow llama.cpp's convert_hf_to_gguf.py: every matrix in that type; 1-D tensors
  (norms, biases, rope factors), ``*_norm.weight``, the experts' router (``ffn_gate_inp``) and
  BERT's ``position_embd`` and ``token_types`` F32.
- A quantized type gives what llama.cpp's quantizer makes of the F32 file (``quant_rules``, the
  tensors visited in its order): the file's type for most matrices, more bits for the output
  matrix and some ``attn_v`` and ``ffn_down`` layers, fallbacks for rows the block does not divide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from splitllm_convert.errors import ConvertError
from splitllm_convert.quant_rules import HParams, QuantOptions, TypeChooser, tensor_order

Q = GGMLQuantizationType


_NEEDS_IMATRIX = (
    LlamaFileType.MOSTLY_IQ2_XXS, LlamaFileType.MOSTLY_IQ2_XS, LlamaFileType.MOSTLY_IQ2_S,
    LlamaFileType.MOSTLY_IQ2_M, LlamaFileType.MOSTLY_IQ1_S, LlamaFileType.MOSTLY_IQ1_M,
    LlamaFileType.MOSTLY_IQ3_XXS, LlamaFileType.MOSTLY_IQ3_XS, LlamaFileType.MOSTLY_Q2_K_S,
)  # fmt: skip


@dataclass(frozen=True)
class FileType:
    """One ``--type`` choice: its ``general.file_type`` value and the type most matrices get."""

    name: str
    ftype: LlamaFileType
    default: GGMLQuantizationType

    @property
    def is_quantized(self) -> bool:
        return self.default not in (Q.F32, Q.F16, Q.BF16)

    @property
    def needs_imatrix(self) -> bool:
        """llama.cpp refuses this file type without an importance matrix: its rules give most
        matrices a type that needs one (``quant_rules.requires_imatrix``)."""
        return self.ftype in _NEEDS_IMATRIX


FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("f32", LlamaFileType.ALL_F32, Q.F32),
        FileType("f16", LlamaFileType.MOSTLY_F16, Q.F16),
        FileType("bf16", LlamaFileType.MOSTLY_BF16, Q.BF16),
        FileType("q8_0", LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
        FileType("q4_0", LlamaFileType.MOSTLY_Q4_0, Q.Q4_0),
        FileType("q4_1", LlamaFileType.MOSTLY_Q4_1, Q.Q4_1),
        FileType("q5_0", LlamaFileType.MOSTLY_Q5_0, Q.Q5_0),
        FileType("q5_1", LlamaFileType.MOSTLY_Q5_1, Q.Q5_1),
        FileType("q2_k", LlamaFileType.MOSTLY_Q2_K, Q.Q2_K),
        FileType("q3_k_s", LlamaFileType.MOSTLY_Q3_K_S, Q.Q3_K),
        FileType("q3_k_m", LlamaFileType.MOSTLY_Q3_K_M, Q.Q3_K),
        FileType("q3_k_l", LlamaFileType.MOSTLY_Q3_K_L, Q.Q3_K),
        FileType("q4_k_s", LlamaFileType.MOSTLY_Q4_K_S, Q.Q4_K),
        FileType("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, Q.Q4_K),
        FileType("q5_k_s", LlamaFileType.MOSTLY_Q5_K_S, Q.Q5_K),
        FileType("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M, Q.Q5_K),
        FileType("q6_k", LlamaFileType.MOSTLY_Q6_K, Q.Q6_K),
        FileType("iq4_nl", LlamaFileType.MOSTLY_IQ4_NL, Q.IQ4_NL),
        FileType("iq4_xs", LlamaFileType.MOSTLY_IQ4_XS, Q.IQ4_XS),
        FileType("mxfp4_moe", LlamaFileType.MOSTLY_MXFP4_MOE, Q.MXFP4),
        FileType("q2_k_s", LlamaFileType.MOSTLY_Q2_K_S, Q.Q2_K),
        FileType("iq3_xxs", LlamaFileType.MOSTLY_IQ3_XXS, Q.IQ3_XXS),
        FileType("iq3_xs", LlamaFileType.MOSTLY_IQ3_XS, Q.IQ3_S),
        FileType("iq3_s", LlamaFileType.MOSTLY_IQ3_S, Q.IQ3_S),
        FileType("iq3_m", LlamaFileType.MOSTLY_IQ3_M, Q.IQ3_S),
        FileType("iq2_xxs", LlamaFileType.MOSTLY_IQ2_XXS, Q.IQ2_XXS),
        FileType("iq2_xs", LlamaFileType.MOSTLY_IQ2_XS, Q.IQ2_XS),
        FileType("iq2_s", LlamaFileType.MOSTLY_IQ2_S, Q.IQ2_XS),  # llama.cpp: IQ2_S files are mostly IQ2_XS
        FileType("iq2_m", LlamaFileType.MOSTLY_IQ2_M, Q.IQ2_S),
        FileType("iq1_s", LlamaFileType.MOSTLY_IQ1_S, Q.IQ1_S),
        FileType("iq1_m", LlamaFileType.MOSTLY_IQ1_M, Q.IQ1_M),
        FileType("tq1_0", LlamaFileType.MOSTLY_TQ1_0, Q.TQ1_0),
        FileType("tq2_0", LlamaFileType.MOSTLY_TQ2_0, Q.TQ2_0),
    )
}


def file_type(name: str) -> FileType:
    try:
        return FILE_TYPES[name.lower()]
    except KeyError:
        raise ConvertError(f"unknown --type {name!r}; choose one of: {', '.join(FILE_TYPES)}") from None


def tensor_nbytes(t: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``shape`` (row-major; the last axis is the row) stored as ``t``."""
    blck, size = GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    return n // blck * size


def _is_float_matrix(name: str, shape: tuple[int, ...]) -> bool:
    """convert_hf_to_gguf.py's test for a tensor written in a float file's type rather than F32."""
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name  # the experts' router
        and "ffn_gate_inp_shexp.weight" not in name  # the shared expert's gate
        and name not in ("position_embd.weight", "token_types.weight")  # BERT's embeddings
        and not name.endswith("shortconv.conv.weight")  # lfm2's convolution kernels
        and not name.endswith("ssm_conv1d.weight")  # a Mamba-2 layer's
    )


def tensor_types(
    ft: FileType, hp: HParams, shapes: Mapping[str, tuple[int, ...]],
    packed: Mapping[str, GGMLQuantizationType] | None = None, *, has_imatrix: bool = False,
) -> dict[str, GGMLQuantizationType]:
    """The type of every tensor of a model (GGUF name -> row-major shape) for file type ``ft``;
    ``packed`` tensors (MXFP4 experts as a checkpoint stores them) keep their type, as llama.cpp's
    converter writes them whatever --outtype is (they still count in the quantizer's counters).
    ``has_imatrix``: an importance matrix will be used (some of llama.cpp's rules change then)."""
    packed = packed or {}
    if not ft.is_quantized:
        types = {n: ft.default if _is_float_matrix(n, s) else Q.F32 for n, s in shapes.items()}
    else:
        order = tensor_order(shapes)
        chooser = TypeChooser(hp, QuantOptions(ft.ftype, ft.default, has_imatrix=has_imatrix), order)
        types = {n: chooser.target(n, tuple(reversed(shapes[n])), Q.F32) for n in order}
    return {**types, **packed}
