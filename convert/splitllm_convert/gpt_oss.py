"""gpt-oss (GptOssForCausalLM; llama.cpp's ``gpt-oss`` architecture), as llama.cpp's GptOssModel
writes it.

Attention with q/k/v/o biases and one sink logit per head (``self_attn.sinks`` ->
``attn_sinks.weight``), NEOX rope (no permute), every other layer on a sliding window; a router
with a bias and experts with biases in every block, the block's second norm
(``post_attention_layernorm``) written as ``post_attention_norm``.

The experts come in one of two forms:

- dequantized (bf16 / f16 / f32): ``mlp.experts.gate_up_proj`` (n_expert, n_embd, 2 * n_ff) with
  the gate and up columns interleaved (gate at even columns), ``down_proj`` (n_expert, n_ff,
  n_embd): transposed to GGUF's (n_expert, rows, cols) and split, and written in the file type's
  types like any other matrix;
- MXFP4, as OpenAI's checkpoints store them: ``*_blocks`` (n_expert, rows, cols / 32, 16) U8 with
  two 4-bit codes a byte (element 2j in the low nibble of byte j, 2j + 1 in the high one) and
  ``*_scales`` (n_expert, rows, cols / 32) U8 E8M0 exponents. The codes index the same values as
  ggml's MXFP4 (``kvalues_mxfp4`` with ggml's half scale), so the blocks are repacked into
  ``block_mxfp4`` (exponent, then byte j holding elements j and j + 16), never requantized, and
  stay MXFP4 whatever ``--type`` is. llama.cpp then writes general.file_type MOSTLY_MXFP4_MOE
  for a float ``--outtype``, and its default ``--outtype auto`` takes the checkpoint's bf16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _describe, _moe_config
from splitllm_convert.errors import ConvertError

Q = GGMLQuantizationType
L, B = "model.layers.{bid}.", "blk.{bid}."
EXPERTS = "mlp.experts."
# transformers' GptOss constants that llama.cpp's graph hard-codes
SWIGLU_LIMIT = 7.0


def repack_mxfp4(blocks: np.ndarray[Any, Any], scales: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """OpenAI's MXFP4 ``blocks`` (..., n_block, 16) and ``scales`` (..., n_block) as ggml's
    ``block_mxfp4`` rows (..., n_block * 17): the exponent byte, then 16 bytes whose low nibbles
    hold elements 0..15 and high nibbles elements 16..31."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    out = np.concatenate([scales[..., None], qs], axis=-1)
    return np.ascontiguousarray(out.reshape(*blocks.shape[:-2], blocks.shape[-2] * 17))


class GptOss(Architecture):
    """GptOssForCausalLM (see the module's docstring)."""

    hf_names = ("GptOssForCausalLM",)
    gguf_arch = "gpt-oss"
    rules = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",)),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", ("q", "embd")),
        TensorRule(L + "self_attn.q_proj.bias", B + "attn_q.bias", ("q",)),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.k_proj.bias", B + "attn_k.bias", ("kv",)),
        TensorRule(L + "self_attn.v_proj.weight", B + "attn_v.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.v_proj.bias", B + "attn_v.bias", ("kv",)),
        TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")),
        TensorRule(L + "self_attn.o_proj.bias", B + "attn_output.bias", ("embd",)),
        TensorRule(L + "self_attn.sinks", B + "attn_sinks.weight", ("head_count",)),
        TensorRule(L + "post_attention_layernorm.weight", B + "post_attention_norm.weight", ("embd",)),
        TensorRule(L + "mlp.router.weight", B + "ffn_gate_inp.weight", ("n_expert", "embd")),
        TensorRule(L + "mlp.router.bias", B + "ffn_gate_inp.bias", ("n_expert",)),
        TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )
    default_ctx = 131072
    default_rope_theta = 150000.0
    default_rms_eps = 1e-5

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.mxfp4 = False  # set by plan: the experts come as MXFP4 blocks
        window = cfg.get("sliding_window")
        if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
            raise ConvertError(f"{config_path}: 'sliding_window' must be a positive integer, got {window!r}")
        # llama.cpp's gpt-oss: even layers on the window, odd ones on the whole context
        want = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.n_layer)]
        if cfg.get("layer_types") is not None and list(cfg["layer_types"]) != want:
            raise ConvertError(
                f"{config_path}: 'layer_types' {cfg['layer_types']!r} is not llama.cpp's gpt-oss pattern "
                "(sliding_attention on even layers, full_attention on odd ones)"
            )
        limit = cfg.get("swiglu_limit", SWIGLU_LIMIT)
        if limit != SWIGLU_LIMIT:
            raise ConvertError(f"{config_path}: 'swiglu_limit' is {limit!r}; llama.cpp's gpt-oss clamps at 7")
        if cfg.get("attention_bias") is False:
            raise ConvertError(f"{config_path}: 'attention_bias' is false; gpt-oss has q/k/v/o biases")

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "num_local_experts", "intermediate_size")

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "head_count": self.n_head}

    # -- tensors ---------------------------------------------------------------------------

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        experts = {n: s for n, s in available.items() if f".{EXPERTS}" in n}
        out = super().plan({n: s for n, s in available.items() if n not in experts}, where, files)
        blocks = [n for n in experts if n.endswith("_blocks")]
        self.mxfp4 = bool(blocks)
        for bid in range(self.n_layer):
            layer = self._layer_experts(bid, experts, where, files)
            at = next(i for i, s in enumerate(out) if s.gguf_name == f"blk.{bid}.ffn_gate_inp.bias")
            out[at + 1 : at + 1] = layer
        known = {n for bid in range(self.n_layer) for n in self._expert_names(bid)}
        unknown = sorted(set(experts) - known)
        if unknown:
            raise ConvertError(
                f"tensor {unknown[0]!r} in {where(unknown[0])} is not part of a {self.hf_names[0]} model "
                f"({len(unknown)} unexpected tensor(s); experts must all be MXFP4 blocks or all dequantized)"
            )
        return out

    def _expert_names(self, bid: int) -> dict[str, tuple[int, ...]]:
        """The expert tensors of layer ``bid`` in this checkpoint's form: HF name -> expected shape."""
        p = L.format(bid=bid) + EXPERTS
        ne, e, ff = self.n_expert, self.n_embd, self.n_ff_exp
        names = {p + "gate_up_proj_bias": (ne, 2 * ff), p + "down_proj_bias": (ne, e)}
        if self.mxfp4:
            names |= {p + "gate_up_proj_blocks": (ne, 2 * ff, e // 32, 16),
                      p + "gate_up_proj_scales": (ne, 2 * ff, e // 32),
                      p + "down_proj_blocks": (ne, e, ff // 32, 16),
                      p + "down_proj_scales": (ne, e, ff // 32)}  # fmt: skip
        else:
            names |= {p + "gate_up_proj": (ne, e, 2 * ff), p + "down_proj": (ne, ff, e)}
        return names

    def _layer_experts(
        self, bid: int, experts: dict[str, tuple[int, ...]], where: Callable[[str], str],
        files: Sequence[Path],
    ) -> list[PlannedSource]:
        names = self._expert_names(bid)
        if self.mxfp4 and (self.n_embd % 32 or self.n_ff_exp % 32):
            raise ConvertError(f"MXFP4 experts need hidden_size and intermediate_size divisible by 32, "
                               f"got {self.n_embd} and {self.n_ff_exp}")  # fmt: skip
        for name, want in names.items():
            if name not in experts:
                raise ConvertError(f"tensor {name!r} is missing from {_describe(files)}")
            if experts[name] != want:
                raise ConvertError(
                    f"tensor {name!r} in {where(name)} has shape {list(experts[name])}, "
                    f"config.json implies {list(want)}"
                )
        p, b = L.format(bid=bid) + EXPERTS, B.format(bid=bid)
        ne, e, ff = self.n_expert, self.n_embd, self.n_ff_exp
        bias = p + "gate_up_proj_bias"
        if self.mxfp4:
            blk, sc = (p + "gate_up_proj_blocks",), (p + "gate_up_proj_scales",)
            weights = [
                PlannedSource(b + "ffn_gate_exps.weight", (ne, ff, e), blk[0], "mxfp4_gate", packed=Q.MXFP4,
                              hf_extra=sc),
                PlannedSource(b + "ffn_up_exps.weight", (ne, ff, e), blk[0], "mxfp4_up", packed=Q.MXFP4,
                              hf_extra=sc),
                PlannedSource(b + "ffn_down_exps.weight", (ne, e, ff), p + "down_proj_blocks", "mxfp4",
                              packed=Q.MXFP4, hf_extra=(p + "down_proj_scales",)),
            ]  # fmt: skip
        else:
            weights = [
                PlannedSource(b + "ffn_gate_exps.weight", (ne, ff, e), p + "gate_up_proj", "gate_rows"),
                PlannedSource(b + "ffn_up_exps.weight", (ne, ff, e), p + "gate_up_proj", "up_rows"),
                PlannedSource(b + "ffn_down_exps.weight", (ne, e, ff), p + "down_proj", "transpose"),
            ]
        return [
            *weights,
            PlannedSource(b + "ffn_gate_exps.bias", (ne, ff), bias, "gate_bias"),
            PlannedSource(b + "ffn_up_exps.bias", (ne, ff), bias, "up_bias"),
            PlannedSource(b + "ffn_down_exps.bias", (ne, e), p + "down_proj_bias"),
        ]

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        # transformers' GptOssExperts: x @ gate_up_proj (n_embd, 2 n_ff), gate = even columns, up = odd
        def t(w: Any) -> Any:
            return w.swapaxes(-1, -2)

        return {
            "transpose": lambda w: np.ascontiguousarray(t(w)),
            "gate_rows": lambda w: np.ascontiguousarray(t(w)[:, 0::2, :]),
            "up_rows": lambda w: np.ascontiguousarray(t(w)[:, 1::2, :]),
            "gate_bias": lambda w: np.ascontiguousarray(w[..., 0::2]),
            "up_bias": lambda w: np.ascontiguousarray(w[..., 1::2]),
        }

    def packed_transforms(self) -> dict[str, Callable[..., np.ndarray[Any, Any]]]:
        return {
            "mxfp4": repack_mxfp4,
            "mxfp4_gate": lambda blocks, scales: repack_mxfp4(blocks[:, 0::2], scales[:, 0::2]),
            "mxfp4_up": lambda blocks, scales: repack_mxfp4(blocks[:, 1::2], scales[:, 1::2]),
        }

    def default_type(self, available: dict[str, tuple[str, tuple[int, ...]]]) -> str:
        """llama.cpp's ``--outtype auto`` for an MXFP4 checkpoint: the dtype of its first float matrix."""
        if not self.mxfp4:
            return super().default_type(available)
        first = next((d for d, s in available.values() if len(s) >= 2 and d in ("BF16", "F16")), "F16")
        return first.lower()

    def written_file_type(self, ftype: LlamaFileType, quantized: bool) -> LlamaFileType:
        return LlamaFileType.MOSTLY_MXFP4_MOE if self.mxfp4 and not quantized else ftype

    # -- metadata --------------------------------------------------------------------------

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        w.add_sliding_window(int(self.cfg["sliding_window"]))
        w.add_expert_feed_forward_length(self.n_ff_exp)
