"""Output types: the ``--type`` choices and llama.cpp's rules for which tensor gets which type.

The rules follow llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp) for the llama-like
models this converter reads, without an importance matrix:

- 1-D tensors (norms, biases, rope factors) and ``*_norm.weight`` stay F32, and so do BERT's
  ``position_embd`` and ``token_types`` (llama.cpp's converter writes them in F32 and its quantizer
  leaves them as they are).
- The output matrix, or the token embedding when the output is tied to it, becomes Q6_K
  (Q8_0 stays Q8_0; a row that does not divide the file type's block gives Q8_0).
- ``attn_v`` (and phi3's fused ``attn_qkv``): Q2_K -> Q4_K if n_head/n_head_kv >= 4 else Q3_K;
  Q3_K_M -> Q5_K on the first two layers, else Q4_K; Q4_K_M and Q5_K_M -> Q6_K where
  ``use_more_bits``; Q4_K_S -> Q5_K on the first four layers; a 70B-class model bumps a Q3_K/Q4_K
  result to Q5_K.
- ``ffn_down``: Q2_K -> Q3_K; Q3_K_M -> Q5_K on the first n/16 layers, else Q4_K; Q4_K_M and
  Q5_K_M -> Q6_K where ``use_more_bits``; Q4_K_S -> Q5_K on the first n/8 layers.
- ``attn_output``: Q2_K -> Q3_K; Q3_K_M -> Q4_K.
- Mixtures of experts: the router (``ffn_gate_inp``) stays F32; the stacked experts follow the
  rules of their dense counterparts (the layer read from the name). With exactly 8 experts,
  ``attn_v`` and ``attn_k`` become Q8_0 and ``attn_output`` Q5_K (Q2_K, Q3_K_M, Q4_K_S, Q4_K_M).
- A row length that the chosen type's block does not divide falls back: Q2_K and Q3_K -> Q4_0,
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; a 32-block type, or a fallback that still does not
  divide, becomes F16.

f32/f16/bf16 follow llama.cpp's convert_hf_to_gguf.py: every matrix in that type, the rest F32.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from splitllm_convert.errors import ConvertError

Q = GGMLQuantizationType


@dataclass(frozen=True)
class FileType:
    """One ``--type`` choice: its ``general.file_type`` value and the type most matrices get."""

    name: str
    ftype: LlamaFileType
    default: GGMLQuantizationType

    @property
    def is_quantized(self) -> bool:
        return self.default not in (Q.F32, Q.F16, Q.BF16)


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
        FileType("q3_k_m", LlamaFileType.MOSTLY_Q3_K_M, Q.Q3_K),
        FileType("q4_k_s", LlamaFileType.MOSTLY_Q4_K_S, Q.Q4_K),
        FileType("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, Q.Q4_K),
        FileType("q5_k_s", LlamaFileType.MOSTLY_Q5_K_S, Q.Q5_K),
        FileType("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M, Q.Q5_K),
        FileType("q6_k", LlamaFileType.MOSTLY_Q6_K, Q.Q6_K),
    )
}

# llama-quant.cpp's tensor_type_fallback for the types this converter writes
_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def file_type(name: str) -> FileType:
    try:
        return FILE_TYPES[name.lower()]
    except KeyError:
        raise ConvertError(f"unknown --type {name!r}; choose one of: {', '.join(FILE_TYPES)}") from None


def block_size(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def tensor_nbytes(t: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``shape`` (row-major; the last axis is the row) stored as ``t``."""
    blck, size = GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    return n // blck * size


@dataclass(frozen=True)
class ModelShape:
    """What the mix rules look at besides a tensor's own name and shape."""

    n_layer: int
    n_head: int
    n_head_kv: int
    tied_output: bool  # no output.weight: the token embedding doubles as the output
    is_70b: bool = False
    n_expert: int = 0  # experts per block (0: dense)

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name  # the experts' router
        and name not in ("position_embd.weight", "token_types.weight")  # BERT's embeddings
    )


def _layer(name: str) -> int:
    return int(name.split(".")[1])


def _mix_rule(ft: FileType, model: ModelShape, name: str, ncols: int) -> GGMLQuantizationType:
    """llama_tensor_get_type_impl for the file types in FILE_TYPES (dense model, no imatrix)."""
    f = ft.ftype
    t = ft.default
    if name == "output.weight" or (model.tied_output and name == "token_embd.weight"):
        if ncols % block_size(t) != 0:
            return Q.Q8_0
        return t if t == Q.Q8_0 else Q.Q6_K
    if name.endswith(("attn_v.weight", "attn_qkv.weight")):  # a fused q/k/v (phi3) counts as attn_v
        i = _layer(name)
        if f == LlamaFileType.MOSTLY_Q2_K:
            t = Q.Q4_K if model.n_gqa >= 4 else Q.Q3_K
        elif f == LlamaFileType.MOSTLY_Q3_K_M:
            t = Q.Q5_K if i < 2 else Q.Q4_K
        elif f in (LlamaFileType.MOSTLY_Q4_K_M, LlamaFileType.MOSTLY_Q5_K_M) and use_more_bits(
            i, model.n_layer
        ):
            t = Q.Q6_K
        elif f == LlamaFileType.MOSTLY_Q4_K_S and i < 4:
            t = Q.Q5_K
        if model.is_70b and t in (Q.Q3_K, Q.Q4_K):
            t = Q.Q5_K
        if model.n_expert == 8:
            t = Q.Q8_0
    elif name.endswith("attn_k.weight"):
        if model.n_expert == 8:
            t = Q.Q8_0
    elif "ffn_down" in name:
        i, n = _layer(name), model.n_layer
        if f == LlamaFileType.MOSTLY_Q2_K:
            t = Q.Q3_K
        elif f == LlamaFileType.MOSTLY_Q3_K_M:
            t = Q.Q5_K if i < n // 16 else Q.Q4_K
        elif f in (LlamaFileType.MOSTLY_Q4_K_M, LlamaFileType.MOSTLY_Q5_K_M) and use_more_bits(i, n):
            t = Q.Q6_K
        elif f == LlamaFileType.MOSTLY_Q4_K_S and i < n // 8:
            t = Q.Q5_K
    elif name.endswith("attn_output.weight"):
        if model.n_expert == 8:
            if f in (LlamaFileType.MOSTLY_Q2_K, LlamaFileType.MOSTLY_Q3_K_M, LlamaFileType.MOSTLY_Q4_K_S,
                     LlamaFileType.MOSTLY_Q4_K_M):  # fmt: skip
                t = Q.Q5_K
        elif f == LlamaFileType.MOSTLY_Q2_K:
            t = Q.Q3_K
        elif f == LlamaFileType.MOSTLY_Q3_K_M:
            t = Q.Q4_K
    return t


def _fallback(t: GGMLQuantizationType, ncols: int) -> GGMLQuantizationType:
    if ncols % block_size(t) == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if ncols % block_size(t) == 0 else Q.F16


def tensor_type(ft: FileType, model: ModelShape, name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
    """The type llama.cpp stores GGUF tensor ``name`` of ``shape`` (row-major) in, for file type ``ft``."""
    if not _is_quantizable(name, shape):
        return Q.F32
    if not ft.is_quantized:
        return ft.default
    if all(n == 1 for n in shape[:-1]):  # ggml_n_dims 1 (a one-label head): llama-quantize leaves it as is
        return Q.F32
    return _fallback(_mix_rule(ft, model, name, shape[-1]), shape[-1])
