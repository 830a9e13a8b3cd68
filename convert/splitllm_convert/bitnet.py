"""BitNet b1.58 (BitNetForCausalLM: microsoft/bitnet-b1.58-2B-4T's bf16 master weights;
BitnetForCausalLM: 1bitLLM's), written as llama.cpp's BitnetModel (conversion/bitnet.py) writes it.

- Each projection (q, k, v, o, gate, up, down) is stored ternary, as BitNet b1.58 uses it in its
  forward pass: with s = mean |W| (at least 1e-5), W -> clamp(round(W / s), -1, 1) * s, in float32.
- The sub-norms (the attention output's before o_proj, the gated activation's before down_proj)
  as attn_sub_norm / ffn_sub_norm: 2B-4T names them self_attn.attn_sub_norm / mlp.ffn_sub_norm,
  1bitLLM self_attn.inner_attn_ln / mlp.ffn_layernorm (the names llama.cpp's table knows).
- q / k in Hugging Face's row order (llama.cpp's bitnet rotates NEOX-style); the output is the
  token embedding (llama.cpp's bitnet has no output tensor), rope scaling linear with factor 1.
- ``--type tq1_0`` / ``tq2_0`` give what convert_hf_to_gguf.py's --outtype gives: the projections
  in the ternary type (F16 where a row is not a whole number of 256-value blocks), the token
  embedding F16, 1-D tensors F32.
- A checkpoint already packed (quantization_config.quant_method "bitnet", microsoft/bitnet-b1.58-2B-4T:
  each projection's codes + 1 in 2-bit fields of uint8 rows, field i of packed row r holding row
  i * rows / 4 + r, and a weight_scale) is unpacked as transformers' BitLinear uses it: W = codes /
  weight_scale. Unlike llama.cpp's converter, which unpacks it the same way and then ternarizes it
  again (clamp(round(W / mean |W|), -1, 1) * mean |W| is codes * mean |W|: each matrix multiplied
  by its fraction of non-zero weights), these are not ternarized a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType

from splitllm_convert import hfdir
from splitllm_convert.arch import Architecture, Array, PlannedSource, TensorRule, logger
from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import TensorEntry

Q = GGMLQuantizationType
_L, _B = "model.layers.{bid}.", "blk.{bid}."
TERNARY = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# (attention sub-norm, feed-forward sub-norm) as each family of checkpoints names them
_SUB_NORMS = (
    ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
    ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
)


def ternarize(w: Array) -> Array:
    """llama.cpp's BitnetModel.weight_quant: clamp(round(W / s), -1, 1) * s with s = mean |W|
    (at least 1e-5), in float32 (the result divided by 1 / s, as it computes it)."""
    w = np.asarray(w, dtype=np.float32)
    scale = np.float32(max(float(np.abs(w, dtype=np.float64).mean()), 1e-5))
    iscale = np.float32(1) / scale
    return (np.clip(np.round(w * iscale), -1, 1) / iscale).astype(np.float32)


def unpack(weight: TensorEntry, scale: TensorEntry) -> Array:
    """transformers' unpack_weights and BitLinear: codes (field i of packed row r is row
    i * rows / 4 + r, each the code + 1) divided by weight_scale, in float32."""
    packed = hfdir.read_raw(weight)
    s = hfdir.read_f32(scale).reshape(-1)
    if s.size != 1 or not 0 < abs(float(s[0])) < np.inf:
        raise ConvertError(f"{scale.file}: tensor {scale.name!r} must be one finite non-zero scale")
    fields = np.concatenate([(packed >> (2 * i)) & 3 for i in range(4)])
    if (fields == 3).any():
        raise ConvertError(
            f"{weight.file}: tensor {weight.name!r} holds the 2-bit code 3, not a ternary value"
        )
    return (fields.astype(np.float32) - 1) / s[0]


class BitNet(Architecture):
    """BitNetForCausalLM / BitnetForCausalLM: a llama-shaped decoder with ternary projections."""

    hf_names = ("BitNetForCausalLM", "BitnetForCausalLM")
    gguf_arch = "bitnet"
    rules = ()

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        quant = cfg.get("quantization_config")
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        if method not in (None, "bitnet"):
            raise ConvertError(f"{config_path}: quantization_config.quant_method {method!r} is not supported "
                               "for BitNet (the bf16 master weights, or 'bitnet' packed codes)")  # fmt: skip
        self.packed = method == "bitnet"
        if self.rope["rope_type"] not in ("default", "dynamic"):
            raise ConvertError(f"{config_path}: rope scaling {self.rope['rope_type']!r} is not supported "
                               "for BitNet (llama.cpp's converter writes linear scaling of 1)")  # fmt: skip
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            logger.warning("%s: hidden_act is %r, but llama.cpp's bitnet gates the feed-forward with SiLU: "
                           "the model will not run as trained", config_path, act)  # fmt: skip

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        attn_sub, ffn_sub = next(
            (names for names in _SUB_NORMS if f"model.layers.0.{names[0]}.weight" in available), _SUB_NORMS[0]
        )
        rows = [
            ("input_layernorm.weight", "attn_norm.weight", ("embd",), None),
            ("self_attn.q_proj.weight", "attn_q.weight", ("q", "embd"), "ternary"),
            ("self_attn.k_proj.weight", "attn_k.weight", ("kv", "embd"), "ternary"),
            ("self_attn.v_proj.weight", "attn_v.weight", ("kv", "embd"), "ternary"),
            (attn_sub + ".weight", "attn_sub_norm.weight", ("q",), None),
            ("self_attn.o_proj.weight", "attn_output.weight", ("embd", "q"), "ternary"),
            ("post_attention_layernorm.weight", "ffn_norm.weight", ("embd",), None),
            ("mlp.gate_proj.weight", "ffn_gate.weight", ("ff", "embd"), "ternary"),
            ("mlp.up_proj.weight", "ffn_up.weight", ("ff", "embd"), "ternary"),
            (ffn_sub + ".weight", "ffn_sub_norm.weight", ("ff",), None),
            ("mlp.down_proj.weight", "ffn_down.weight", ("embd", "ff"), "ternary"),
        ]
        rules = (
            TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
            *(TensorRule(_L + hf, _B + g, shape, t) for hf, g, shape, t in rows),
            TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
        )
        if "lm_head.weight" in available and not self.tied:
            raise ConvertError(
                "lm_head.weight is a matrix of its own (tie_word_embeddings is false), but llama.cpp's "
                "bitnet always uses the token embedding as the output matrix"
            )
        return rules, (*self.ignored, "lm_head.weight")  # (a copy of the tied embedding)

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {"ternary": ternarize}

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        """A packed checkpoint's projections: (rows / 4, cols) uint8 codes and a weight_scale, planned
        as (rows, cols) matrices unpacked from both."""
        if not self.packed:
            return super().plan(available, where, files)
        scales = {n.removesuffix("_scale"): n for n in available if n.endswith(".weight_scale")}
        for weight, scale in scales.items():
            if weight not in available:
                raise ConvertError(f"tensor {scale!r} in {where(scale)} scales no tensor {weight!r}")
        shapes = {n: (s[0] * 4, *s[1:]) if n in scales else s for n, s in available.items()
                  if n not in scales.values()}  # fmt: skip
        out = super().plan(shapes, where, files)
        return [replace(p, transform="unpack", hf_extra=(scales[p.hf_name],)) if p.hf_name in scales else p
                for p in out]  # fmt: skip

    def entry_transforms(self) -> dict[str, Callable[..., Array]]:
        return {"unpack": unpack}

    def adjust_types(
        self, file_type: str, shapes: dict[str, tuple[int, ...]], types: dict[str, GGMLQuantizationType]
    ) -> dict[str, GGMLQuantizationType]:
        """convert_hf_to_gguf.py's types for --outtype tq1_0 / tq2_0 (not llama-quantize's)."""
        ternary = {"tq1_0": Q.TQ1_0, "tq2_0": Q.TQ2_0}.get(file_type)
        if ternary is None:
            return types
        out = {}
        for name, shape in shapes.items():
            if len(shape) <= 1 or name.endswith("_norm.weight"):
                out[name] = Q.F32
            elif name == "token_embd.weight" or shape[-1] % 256:  # (gguf-py's QuantError: F16 instead)
                out[name] = Q.F16
            else:
                out[name] = ternary
        return out

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0)
