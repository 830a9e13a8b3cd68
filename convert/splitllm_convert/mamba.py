"""Pure state-space models: MambaForCausalLM and FalconMambaForCausalLM (Mamba-1, gguf arch mamba) and
Mamba2ForCausalLM (Mamba-2, gguf arch mamba2), written as llama.cpp's MambaModel / Mamba2Model
(conversion/mamba.py) write them: context_length 2^20, feed_forward_length and head_count 0, the
ssm.* sizes (Mamba-2: time_step_rank = its heads, d_inner / head_dim), layer_norm_rms_epsilon from
layer_norm_epsilon, ssm.dt_b_c_rms for Falcon-Mamba (model_type falcon_mamba); A_log as -exp(A_log),
the Conv1d kernels squeezed (Mamba-2's tensors as granite_hybrid.Mamba2 writes them); lm_head left
out where the embeddings are tied.

Refused, nothing written: projection biases (use_bias), a convolution without bias (llama.cpp requires
it), a d_inner other than 2 x hidden_size (llama.cpp's mamba loads no other), a vocabulary that is not
a multiple of pad_vocab_size_multiple (llama.cpp pads the token list past the embedding's rows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _require
from splitllm_convert.errors import ConvertError
from splitllm_convert.granite_hybrid import Mamba2 as Mamba2Mixer
from splitllm_convert.llama_variants import _flag
from splitllm_convert.quant_rules import HParams

_L, _B = "backbone.layers.{bid}.", "blk.{bid}."


class Mamba(Architecture):
    """MambaForCausalLM / FalconMambaForCausalLM: backbone.layers.N.norm, then its mixer."""

    hf_names = ("MambaForCausalLM", "FalconMambaForCausalLM")
    gguf_arch = "mamba"
    pad_vocab = 8  # (MambaModel.set_vocab's default pad_vocab_size_multiple)
    rules = (
        TensorRule("backbone.embeddings.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(_L + "norm.weight", _B + "attn_norm.weight", ("embd",)),
        TensorRule("backbone.norm_f.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )
    ignored = ()

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        # (no attention: one placeholder head for the base's checks; head_count is written as 0)
        super().__init__(
            {"num_attention_heads": 1, "intermediate_size": 1, **cfg, "head_dim": 2}, config_path
        )
        self.cfg = cfg
        self.tied = bool(cfg.get("tie_word_embeddings", True))  # (transformers' default)
        self.d_inner = self.d_inner_of(cfg, config_path)
        if _flag(cfg, "use_bias", config_path):
            raise ConvertError(
                f"{config_path}: 'use_bias' is true: llama.cpp's {self.gguf_arch} has no projection biases"
            )
        if not _flag({"use_conv_bias": True, **cfg}, "use_conv_bias", config_path):
            raise ConvertError(f"{config_path}: 'use_conv_bias' is false: llama.cpp requires conv1d.bias")
        pad = cfg.get("pad_vocab_size_multiple", self.pad_vocab)
        if not isinstance(pad, int) or pad < 1 or self.n_vocab % pad:
            raise ConvertError(
                f"{config_path}: vocab_size {self.n_vocab} is not a multiple of pad_vocab_size_multiple "
                f"{pad!r}: llama.cpp pads the token list to one, past the embedding's rows"
            )
        self.d_conv = _require({"conv_kernel": 4, **cfg}, "conv_kernel", config_path)
        self.eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        self.init_mixer(cfg, config_path)

    def d_inner_of(self, cfg: dict[str, Any], config_path: Path) -> int:
        d_inner = _require({"intermediate_size": 2 * self.n_embd, **cfg}, "intermediate_size", config_path)
        if d_inner != 2 * self.n_embd:
            raise ConvertError(
                f"{config_path}: intermediate_size {d_inner} is not 2 x hidden_size {self.n_embd} "
                "(llama.cpp's mamba supports no other expansion)"
            )
        return d_inner

    def init_mixer(self, cfg: dict[str, Any], config_path: Path) -> None:
        self.d_state = _require({"state_size": 16, **cfg}, "state_size", config_path)
        self.dt_rank = _require(
            {"time_step_rank": -(self.n_embd // -16), **cfg}, "time_step_rank", config_path
        )
        self.dt_b_c_rms = cfg.get("model_type") == "falcon_mamba"

    def mixer_rules(self, m: str) -> tuple[TensorRule, ...]:
        return (
            TensorRule(m + "in_proj.weight", _B + "ssm_in.weight", ("ssm_in", "embd")),
            TensorRule(
                m + "conv1d.weight", _B + "ssm_conv1d.weight", ("d_inner", "one", "d_conv"), "squeeze"
            ),
            TensorRule(m + "conv1d.bias", _B + "ssm_conv1d.bias", ("d_inner",)),
            TensorRule(m + "x_proj.weight", _B + "ssm_x.weight", ("x_out", "d_inner")),
            TensorRule(m + "dt_proj.weight", _B + "ssm_dt.weight", ("d_inner", "dt_rank")),
            TensorRule(m + "dt_proj.bias", _B + "ssm_dt.bias", ("d_inner",)),
            TensorRule(m + "A_log", _B + "ssm_a", ("d_inner", "d_state"), "minus_exp"),
            TensorRule(m + "D", _B + "ssm_d", ("d_inner",)),
            TensorRule(m + "out_proj.weight", _B + "ssm_out.weight", ("embd", "d_inner")),
        )

    def table(self, available: Any) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        return (*self.rules, *self.mixer_rules(_L + "mixer.")), self.ignored

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ssm_in": 2 * self.d_inner, "d_inner": self.d_inner, "one": 1,
                "d_conv": self.d_conv, "x_out": self.dt_rank + 2 * self.d_state, "dt_rank": self.dt_rank,
                "d_state": self.d_state}  # fmt: skip

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "squeeze": lambda w: w.reshape(w.shape[0], w.shape[-1]),  # (d_inner, 1, d_conv) -> 2-D
            "minus_exp": lambda w: -np.exp(w),  # A = -exp(A_log)
        }

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        squeezed = (self.d_inner, self.d_conv)
        return [replace(s, shape=squeezed) if s.transform == "squeeze" else s
                for s in self.untied(Architecture.plan(self, available, where, files))]  # fmt: skip

    def untied(self, planned: list[PlannedSource]) -> list[PlannedSource]:
        """Without lm_head where the embeddings are tied (MambaModel leaves out one equal to them)."""
        return [s for s in planned if not (self.tied and s.gguf_name == "output.weight")]

    def hparams(self) -> HParams:
        return HParams.of(self.gguf_arch, self.n_layer, 0, 0, 0)  # (head_count 0)

    def add_hparams(self, w: GGUFWriter) -> None:
        """MambaModel.set_gguf_parameters' keys."""
        w.add_context_length(2**20)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_block_count(self.n_layer)
        self.add_ssm_hparams(w)

    def add_ssm_hparams(self, w: GGUFWriter) -> None:
        w.add_ssm_conv_kernel(self.d_conv)
        w.add_ssm_inner_size(self.d_inner)
        w.add_ssm_state_size(self.d_state)
        w.add_ssm_time_step_rank(self.dt_rank)
        w.add_layer_norm_rms_eps(self.eps)
        w.add_ssm_dt_b_c_rms(self.dt_b_c_rms)

    def add_norm_eps(self, w: GGUFWriter) -> None:
        """(in add_ssm_hparams, where MambaModel writes it)"""


class Mamba2(Mamba):
    """Mamba2ForCausalLM: Mamba-2 mixers (heads of head_dim, n_groups groups of B and C, the gated norm)."""

    hf_names = ("Mamba2ForCausalLM",)
    gguf_arch = "mamba2"
    pad_vocab = 16  # (Mamba2Model.set_vocab's default)

    def d_inner_of(self, cfg: dict[str, Any], config_path: Path) -> int:
        expand = _require({"expand": 2, **cfg}, "expand", config_path)
        return _require({"intermediate_size": expand * self.n_embd, **cfg}, "intermediate_size", config_path)

    def init_mixer(self, cfg: dict[str, Any], config_path: Path) -> None:
        head_dim = _require({"head_dim": 64, **cfg}, "head_dim", config_path)
        if self.d_inner % head_dim:
            raise ConvertError(f"{config_path}: head_dim {head_dim} does not divide d_inner {self.d_inner}")
        self.d_state = _require({"state_size": 128, **cfg}, "state_size", config_path)
        n_group = _require({"n_groups": 1, **cfg}, "n_groups", config_path)
        self.ssm = Mamba2Mixer(
            d_conv=self.d_conv, d_state=self.d_state, n_group=n_group, heads=self.d_inner // head_dim,
            d_inner=self.d_inner, conv_bias=True,
        )  # fmt: skip
        self.ssm.check(config_path, head_dim)

    def mixer_rules(self, m: str) -> tuple[TensorRule, ...]:
        return self.ssm.rules(m)

    def dims(self) -> dict[str, int]:
        return {**Architecture.dims(self), **self.ssm.dims()}

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return self.ssm.transforms()

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        return self.ssm.shaped(self.untied(Architecture.plan(self, available, where, files)))

    def add_ssm_hparams(self, w: GGUFWriter) -> None:
        """Mamba2Model.set_gguf_parameters' keys after the block count."""
        self.ssm.add_hparams(w)
        w.add_layer_norm_rms_eps(self.eps)
