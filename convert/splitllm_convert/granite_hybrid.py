"""Granite 4.0 H (GraniteMoeHybridForCausalLM: H-Micro, H-Tiny, H-Small): Mamba-2 layers between
attention layers, Granite's multipliers, a mixture of experts with a shared one or (no experts)
the shared MLP alone as a dense feed-forward; written as llama.cpp's GraniteHybridModel
(conversion/granite.py, on mamba.py's Mamba2Model) writes it:

- head_count_kv per layer, 0 for a Mamba-2 layer; the ssm.* sizes (conv_kernel, state_size,
  group_count, inner_size = mamba_expand x hidden_size, time_step_rank = mamba_n_heads);
  rope.scaling.finetuned false and a context of 2^20 (its attention layers are not rotated);
- A_log as A = -exp(A_log) (n_heads, 1), D as (n_heads, 1), the Conv1d kernels squeezed to
  (conv_dim, d_conv) and kept F32, the gated norm's weight as (n_groups, d_inner / n_groups);
- the fused gate/up projections of the experts and the shared MLP split in two (a model without
  experts: ffn_gate / ffn_up / ffn_down), q/k rows permuted as for Granite's llama-style rope.

What llama.cpp would run differently from transformers is refused, nothing written: rotary
attention beside Mamba-2 layers, in/out projection biases, a vocabulary that is not a multiple of 8
(llama.cpp pads the token list to one, past the embedding's rows).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import PlannedSource, TensorRule, _require
from splitllm_convert.errors import ConvertError
from splitllm_convert.lfm2 import check_layer_kinds
from splitllm_convert.llama_variants import _flag
from splitllm_convert.moe_archs import GraniteMoe
from splitllm_convert.quant_rules import HParams

_L, _B = "model.layers.{bid}.", "blk.{bid}."
MAMBA, ATTN = "mamba", "attention"


@dataclass(frozen=True)
class Mamba2:
    """A Mamba-2 mixer's sizes (as Mamba2Model writes them) and its tensors under llama.cpp's names
    (granitehybrid's, nemotron_h's): A_log as -exp(A_log) (n_heads, 1), D as (n_heads, 1), the
    Conv1d kernels squeezed to (conv_dim, d_conv), the gated norm as (n_groups, d_inner / n_groups)."""

    d_conv: int
    d_state: int
    n_group: int
    heads: int
    d_inner: int
    conv_bias: bool

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_group * self.d_state

    def rules(self, hf: str) -> tuple[TensorRule, ...]:
        """The mixer's tensors, ``hf`` the HF prefix of its names (``{bid}`` the layer)."""
        bias = (
            (TensorRule(hf + "conv1d.bias", _B + "ssm_conv1d.bias", ("conv_dim",)),) if self.conv_bias else ()
        )
        return (
            TensorRule(hf + "in_proj.weight", _B + "ssm_in.weight", ("ssm_in", "embd")),
            TensorRule(
                hf + "conv1d.weight", _B + "ssm_conv1d.weight", ("conv_dim", "one", "d_conv"), "squeeze"
            ),
            *bias,
            TensorRule(hf + "dt_bias", _B + "ssm_dt.bias", ("ssm_heads",)),
            TensorRule(hf + "A_log", _B + "ssm_a", ("ssm_heads",), "minus_exp"),
            TensorRule(hf + "D", _B + "ssm_d", ("ssm_heads",), "column"),
            TensorRule(hf + "norm.weight", _B + "ssm_norm.weight", ("d_inner",), "groups"),
            TensorRule(hf + "out_proj.weight", _B + "ssm_out.weight", ("embd", "d_inner")),
        )

    def dims(self) -> dict[str, int]:
        return {"ssm_in": self.d_inner + self.conv_dim + self.heads, "conv_dim": self.conv_dim, "one": 1,
                "d_conv": self.d_conv, "ssm_heads": self.heads, "d_inner": self.d_inner}  # fmt: skip

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "squeeze": lambda w: w.reshape(w.shape[0], w.shape[-1]),  # (conv_dim, 1, d_conv) -> 2-D
            "minus_exp": lambda w: -np.exp(w).reshape(-1, 1),  # A = -exp(A_log)
            "column": lambda w: w.reshape(-1, 1),
            "groups": lambda w: w.reshape(self.n_group, -1),
        }

    def shaped(self, planned: list[PlannedSource]) -> list[PlannedSource]:
        """The planned tensors with the shapes the transforms give them."""
        heads = (self.heads, 1)
        shapes = {"squeeze": (self.conv_dim, self.d_conv), "minus_exp": heads, "column": heads,
                  "groups": (self.n_group, self.d_inner // self.n_group)}  # fmt: skip
        return [replace(s, shape=shapes.get(s.transform or "", s.shape)) for s in planned]

    def add_hparams(self, w: GGUFWriter) -> None:
        w.add_ssm_conv_kernel(self.d_conv)
        w.add_ssm_state_size(self.d_state)
        w.add_ssm_group_count(self.n_group)
        w.add_ssm_inner_size(self.d_inner)
        w.add_ssm_time_step_rank(self.heads)

    def check(self, config_path: Path, d_head: Any) -> None:
        """The heads make up d_inner (at d_head each) and the groups divide them."""
        if self.d_inner % self.heads or d_head != self.d_inner // self.heads or self.heads % self.n_group:
            raise ConvertError(
                f"{config_path}: {self.heads} Mamba-2 heads of head size {d_head!r} do not make up d_inner "
                f"{self.d_inner}, or {self.n_group} groups do not divide them"
            )


class GraniteHybrid(GraniteMoe):
    """GraniteMoeHybridForCausalLM: ``layer_types`` ("mamba" or "attention" per layer); every layer
    has input_layernorm, post_attention_layernorm and the feed-forward."""

    hf_names = ("GraniteMoeHybridForCausalLM",)
    gguf_arch = "granitehybrid"
    attention_rules: ClassVar[tuple[TensorRule, ...]] = tuple(
        r for r in GraniteMoe.rules if "self_attn" in r.hf
    )
    # no experts: the shared MLP as the block's feed-forward
    dense_rules: ClassVar[tuple[TensorRule, ...]] = (
        TensorRule(_L + "shared_mlp.input_linear.weight", _B + "ffn_gate.weight", ("ff2", "embd")),
        TensorRule(_L + "shared_mlp.output_linear.weight", _B + "ffn_down.weight", ("embd", "ff")),
    )
    halves: ClassVar[dict[str, str]] = {**GraniteMoe.halves, "ffn_gate.weight": "ffn_up.weight"}
    default_rms_eps = 1e-6  # (transformers' GraniteMoeHybridConfig)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        types = cfg.get("layer_types")
        if not isinstance(types, list) or len(types) != self.n_layer or not set(types) <= {MAMBA, ATTN}:
            raise ConvertError(
                f"{config_path}: 'layer_types' must list {self.n_layer} entries, each 'mamba' or "
                f"'attention', got {types!r:.200}"
            )
        self.layer_types: list[str] = types
        if MAMBA not in types:
            raise ConvertError(
                f"{config_path}: no Mamba-2 layer in 'layer_types': llama.cpp writes such a model as granite "
                "or granitemoe"
            )
        if cfg.get("position_embedding_type", "nope") != "nope":
            raise ConvertError(
                f"{config_path}: 'position_embedding_type' is {cfg['position_embedding_type']!r}: "
                "llama.cpp's granitehybrid does not rotate the attention of a model with Mamba-2 layers"
            )
        if _flag(cfg, "mamba_proj_bias", config_path):
            raise ConvertError(
                f"{config_path}: 'mamba_proj_bias' is true: llama.cpp's Mamba-2 layers have none"
            )
        if self.n_vocab % 8:
            raise ConvertError(
                f"{config_path}: vocab_size {self.n_vocab} is not a multiple of 8: llama.cpp pads the "
                "token list of a Mamba-2 model to one, past the embedding's rows"
            )
        d_inner = _require({"mamba_expand": 2, **cfg}, "mamba_expand", config_path) * self.n_embd
        heads = _require({"mamba_n_heads": 128, **cfg}, "mamba_n_heads", config_path)
        self.ssm = Mamba2(
            d_conv=_require({"mamba_d_conv": 4, **cfg}, "mamba_d_conv", config_path),
            d_state=_require({"mamba_d_state": 256, **cfg}, "mamba_d_state", config_path),
            n_group=_require({"mamba_n_groups": 1, **cfg}, "mamba_n_groups", config_path),
            heads=heads, d_inner=d_inner,
            conv_bias=_flag({"mamba_conv_bias": True, **cfg}, "mamba_conv_bias", config_path),
        )  # fmt: skip
        self.ssm.check(config_path, cfg.get("mamba_d_head", d_inner // heads))
        if not self.n_expert and cfg.get("shared_intermediate_size", self.n_ff) != self.n_ff:
            raise ConvertError(
                f"{config_path}: without experts the shared MLP is the feed-forward, but "
                f"'shared_intermediate_size' {cfg['shared_intermediate_size']!r} is not 'intermediate_size' "
                f"{self.n_ff} (llama.cpp's width)"
            )

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        if not self.moe_cfg.get("num_local_experts"):
            return 0, 0, 0  # (H-Micro: the shared MLP alone)
        return super()._experts(config_path)

    def by_type(self) -> dict[str, tuple[TensorRule, ...]]:
        return {ATTN: self.attention_rules, MAMBA: self.ssm.rules(_L + "mamba.")}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        rules, ignored = super().table(available)  # (the experts' and the shared expert's)
        common = tuple(r for r in rules if ".self_attn." not in r.hf)
        if not self.n_expert:
            common = (
                *(r for r in common if ".block_sparse_moe." not in r.hf and ".shared_mlp." not in r.hf),
                *self.dense_rules,
            )
        typed = (replace(r, required=False) for rs in self.by_type().values() for r in rs)  # (see plan)
        return (*common, *typed), ignored

    def dims(self) -> dict[str, int]:
        return {**super().dims(), **self.ssm.dims(), "ff2": 2 * self.n_ff}

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return {**super().transforms(), **self.ssm.transforms()}

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        check_layer_kinds(self.by_type(), self.layer_types, available, where)
        return self.ssm.shaped(super().plan(available, where, files))

    def head_count_kv(self) -> list[int]:
        return [0 if t == MAMBA else self.n_head_kv for t in self.layer_types]

    def hparams(self) -> HParams:
        """(llama.cpp's quantizer reads layer 0's head_count_kv: 0 for a Mamba-2 layer)"""
        return HParams.of(self.gguf_arch, self.n_layer, self.n_head, self.head_count_kv()[0], self.n_expert)

    def add_hparams(self, w: GGUFWriter) -> None:
        """GraniteMoeModel's keys as GraniteHybridModel leaves them (head_count_kv per layer, the
        context 2^20, rope.scaling.finetuned false), then the Mamba-2 sizes."""
        w.add_block_count(self.n_layer)
        w.add_context_length(2**20)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.head_count_kv())
        w.add_rope_freq_base(self.rope_theta())
        self.add_norm_eps(w)
        if self.n_expert:
            self.add_expert_hparams(w)
        w.add_vocab_size(self.n_vocab)
        w.add_rope_dimension_count(self.head_dim)
        for key, add in self.multipliers:
            getattr(w, add)(self.scales[key])
        if self.n_expert and self.n_ff_shexp:
            w.add_expert_shared_feed_forward_length(self.n_ff_shexp)
        self.ssm.add_hparams(w)
        w.add_rope_scaling_finetuned(False)
