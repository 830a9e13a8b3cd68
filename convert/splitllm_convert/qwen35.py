"""Qwen3.5 dense text models (Qwen3_5ForCausalLM, and Qwen3_5ForConditionalGeneration's text part):
gated delta-net layers (``linear_attn``) between gated attention layers (``self_attn``, queries
with an output-gate half), written as llama.cpp's Qwen3_5TextModel (conversion/qwen.py) writes
them: the zero-centred RMSNorm weights plus 1 (not the delta net's gated norm), A_log as
ssm_a = -exp(A_log), dt_bias as ssm_dt.bias, the Conv1d kernels squeezed to (channels, kernel) and
kept F32, the value heads reordered from grouped by key head to tiled (value head j then reads key
head j % key heads), the ssm.* shapes, full_attention_interval, the rotated dimensions
(partial_rotary_factor) and M-RoPE's sections. The vision tower and the multi-token-prediction
block (``mtp.*``) are left out, as llama.cpp's --no-mtp does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import (
    Architecture,
    Array,
    PlannedSource,
    TensorRule,
    _require,
    check_layer_kinds,
    text_config,
)
from splitllm_convert.errors import ConvertError

_L, _B = "model.layers.{bid}.", "blk.{bid}."
_LINEAR, _FULL = "linear_attention", "full_attention"


def _r(hf: str, gguf: str, shape: tuple[str, ...], transform: str | None = None) -> TensorRule:
    return TensorRule(_L + hf, _B + gguf, shape, transform)


class Qwen35(Architecture):
    """Qwen3_5ForCausalLM; every layer has input_layernorm, post_attention_layernorm (written as
    post_attention_norm, the feed-forward's input norm) and the SwiGLU mlp."""

    hf_names = ("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration")
    gguf_arch = "qwen35"
    common = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        _r("input_layernorm.weight", "attn_norm.weight", ("embd",), "plus1"),
        _r("post_attention_layernorm.weight", "post_attention_norm.weight", ("embd",), "plus1"),
        _r("mlp.gate_proj.weight", "ffn_gate.weight", ("ff", "embd")),
        _r("mlp.up_proj.weight", "ffn_up.weight", ("ff", "embd")),
        _r("mlp.down_proj.weight", "ffn_down.weight", ("embd", "ff")),
        TensorRule("model.norm.weight", "output_norm.weight", ("embd",), "plus1"),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )
    by_type = {
        _FULL: (
            _r("self_attn.q_proj.weight", "attn_q.weight", ("q2", "embd")),
            _r("self_attn.k_proj.weight", "attn_k.weight", ("kv", "embd")),
            _r("self_attn.v_proj.weight", "attn_v.weight", ("kv", "embd")),
            _r("self_attn.o_proj.weight", "attn_output.weight", ("embd", "q")),
            _r("self_attn.q_norm.weight", "attn_q_norm.weight", ("head",), "plus1"),
            _r("self_attn.k_norm.weight", "attn_k_norm.weight", ("head",), "plus1"),
        ),
        _LINEAR: (
            _r("linear_attn.in_proj_qkv.weight", "attn_qkv.weight", ("conv", "embd"), "qkv"),
            _r("linear_attn.in_proj_z.weight", "attn_gate.weight", ("vd", "embd"), "v_rows"),
            _r("linear_attn.in_proj_b.weight", "ssm_beta.weight", ("hv", "embd"), "head_rows"),
            _r("linear_attn.in_proj_a.weight", "ssm_alpha.weight", ("hv", "embd"), "head_rows"),
            _r("linear_attn.conv1d.weight", "ssm_conv1d.weight", ("conv", "one", "kernel"), "conv"),
            _r("linear_attn.dt_bias", "ssm_dt.bias", ("hv",), "head_rows"),
            _r("linear_attn.A_log", "ssm_a", ("hv",), "a"),
            _r("linear_attn.norm.weight", "ssm_norm.weight", ("dn_head",)),
            _r("linear_attn.out_proj.weight", "ssm_out.weight", ("embd", "vd"), "v_cols"),
        ),
    }
    rules = (*common, *(TensorRule(r.hf, r.gguf, r.shape, r.transform, required=False)
                        for rs in by_type.values() for r in rs))  # fmt: skip
    skipped = ("model.visual.", "visual.", "mtp.", "model.mtp.")
    default_ctx = 262144
    default_rope_theta = 10_000_000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        if "text_config" in cfg:
            cfg = {**cfg, **text_config(cfg, config_path)}
        super().__init__(cfg, config_path)
        self.prefix = "model.language_model." if "text_config" in cfg else "model."
        if cfg.get("num_experts") or cfg.get("num_local_experts"):
            raise ConvertError(f"{config_path}: a Qwen3.5 mixture of experts (num_experts) is not supported")
        self.kernel = _require(cfg, "linear_conv_kernel_dim", config_path)
        self.dk = _require(cfg, "linear_key_head_dim", config_path)
        self.hk = _require(cfg, "linear_num_key_heads", config_path)
        self.hv = _require(cfg, "linear_num_value_heads", config_path)
        if _require(cfg, "linear_value_head_dim", config_path) != self.dk or self.hv % self.hk:
            raise ConvertError(
                f"{config_path}: linear_value_head_dim must equal linear_key_head_dim ({self.dk}) and "
                f"linear_num_value_heads ({self.hv}) be a multiple of linear_num_key_heads ({self.hk})"
            )
        self.interval = int(cfg.get("full_attention_interval", 4))
        types = cfg.get("layer_types") or [
            _FULL if (i + 1) % self.interval == 0 else _LINEAR for i in range(self.n_layer)
        ]
        pattern = [_FULL if (i + 1) % self.interval == 0 else _LINEAR for i in range(self.n_layer)]
        if types != pattern:  # (the file says which layers attend by the interval only)
            raise ConvertError(
                f"{config_path}: 'layer_types' {types!r:.200} is not every full_attention_interval-th "
                f"({self.interval}) layer attending"
            )
        self.layer_types: list[str] = types
        rope = self.rope
        if rope["rope_type"] != "default":
            raise ConvertError(
                f"{config_path}: rope scaling {rope['rope_type']!r} is not supported for Qwen3.5"
            )
        self.n_rot = int(
            self.head_dim * float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25)))
        )
        sections = rope.get("mrope_section", [11, 11, 10])
        if not isinstance(sections, list) or not 1 <= len(sections) <= 4:
            raise ConvertError(
                f"{config_path}: rope 'mrope_section' must list up to 4 sizes, got {sections!r}"
            )
        self.sections = [*sections, 0, 0, 0][:4]

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        def hf(name: str) -> str:
            return name if name == "lm_head.weight" else self.prefix + name.removeprefix("model.")

        rules = tuple(TensorRule(hf(r.hf), r.gguf, r.shape, r.transform, r.required) for r in self.rules)
        return rules, ()

    def dims(self) -> dict[str, int]:
        conv = (2 * self.hk + self.hv) * self.dk
        q2 = 2 * self.n_head * self.head_dim  # (each query head and its gate)
        return {**super().dims(), "q2": q2, "conv": conv, "vd": self.hv * self.dk, "hv": self.hv, "one": 1,
                "kernel": self.kernel, "dn_head": self.dk}  # fmt: skip

    def _tiled(self, x: Array, head: int, axis: int = 0) -> Array:
        """_reorder_v_heads: value heads grouped by key head -> tiled, along ``axis``."""
        x = np.moveaxis(x, axis, 0)
        r = self.hv // self.hk
        y = x.reshape(self.hk, r, head, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
        return np.ascontiguousarray(np.moveaxis(y, 0, axis))

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        qk = 2 * self.hk * self.dk

        def qkv(w: Array) -> Array:
            w = w.reshape(w.shape[0], -1)
            return np.concatenate([w[:qk], self._tiled(w[qk:], self.dk)])

        return {
            "plus1": lambda w: w + np.float32(1),
            "qkv": qkv,
            "conv": qkv,  # (channels, 1, kernel) -> (channels, kernel), the value channels tiled
            "v_rows": lambda w: self._tiled(w, self.dk),
            "head_rows": lambda w: self._tiled(w, 1),
            "v_cols": lambda w: self._tiled(w, self.dk, axis=1),
            "a": lambda w: self._tiled(-np.exp(w.astype(np.float32)), 1),
        }

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        check_layer_kinds(
            self.by_type, self.layer_types, available, where, lambda n: self.prefix + n.removeprefix("model.")
        )
        out = super().plan(available, where, files)
        conv = (2 * self.hk + self.hv) * self.dk
        return [replace(s, shape=(conv, self.kernel)) if s.transform == "conv" else s for s in out]

    def add_hparams(self, w: GGUFWriter) -> None:
        """Qwen2MoeModel's / TextModel's keys, then Qwen3NextModel's and the M-RoPE sections."""
        super().add_hparams(w)
        w.add_ssm_conv_kernel(self.kernel)
        w.add_ssm_state_size(self.dk)
        w.add_ssm_group_count(self.hk)
        w.add_ssm_time_step_rank(self.hv)
        w.add_ssm_inner_size(self.dk * self.hv)
        w.add_full_attention_interval(self.interval)
        w.add_rope_dimension_count(self.n_rot)
        w.add_rope_dimension_sections(self.sections)
