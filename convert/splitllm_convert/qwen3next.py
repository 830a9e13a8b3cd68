"""Qwen3-Next (Qwen3NextForCausalLM, Qwen3-Next-80B-A3B): Qwen3.5-MoE's layers (qwen35.py) as
llama.cpp's Qwen3NextModel (conversion/qwen.py) writes them: a delta net's in_proj_qkvz, laid out
per key head (q, k, its value heads' v, their z), split into attn_qkv (all q heads, all k heads, all
v heads) and attn_gate (z); in_proj_ba (per key head: its value heads' beta, then their alpha) kept
whole as ssm_ba; the value heads in Hugging Face's order (grouped by key head: llama.cpp's qwen3next
graph repeats each key head over its group); no M-RoPE sections. Every block has experts (llama.cpp's
qwen3next has no dense feed-forward: mlp_only_layers and decoder_sparse_step other than 1 refused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from splitllm_convert.arch import Array, PlannedSource, TensorRule
from splitllm_convert.errors import ConvertError
from splitllm_convert.qwen35 import _FULL, _LINEAR, Qwen35, Qwen35Moe, _r

_SPLIT = ("attn_qkv.weight", "attn_gate.weight", "ssm_beta.weight", "ssm_alpha.weight")


class Qwen3Next(Qwen35Moe):
    hf_names = ("Qwen3NextForCausalLM",)
    gguf_arch = "qwen3next"
    by_type = {
        _FULL: Qwen35.by_type[_FULL],
        _LINEAR: (
            _r("linear_attn.in_proj_qkvz.weight", "attn_qkv.weight", ("qkvz", "embd"), "qkv_of_qkvz"),
            _r("linear_attn.in_proj_ba.weight", "ssm_ba.weight", ("hv2", "embd")),
            *(r for r in Qwen35.by_type[_LINEAR] if r.gguf.removeprefix("blk.{bid}.") not in _SPLIT),
        ),
    }
    rules = (*Qwen35Moe.common, *(TensorRule(r.hf, r.gguf, r.shape, r.transform, required=False)
                                  for rs in (Qwen35Moe.experts, *by_type.values()) for r in rs))  # fmt: skip
    skipped = ("mtp.", "model.mtp.")

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if self.cfg.get("mlp_only_layers") or int(self.cfg.get("decoder_sparse_step", 1)) != 1:
            raise ConvertError(
                f"{config_path}: 'mlp_only_layers' / 'decoder_sparse_step' give dense feed-forward blocks: "
                "llama.cpp's qwen3next has experts in every block"
            )
        self.sections = None  # (plain NEOX rotation)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "qkvz": (2 * self.hk + 2 * self.hv) * self.dk, "hv2": 2 * self.hv}

    def _tiled(self, x: Array, head: int, axis: int = 0) -> Array:
        return x  # (the value heads stay grouped by key head)

    def _qkvz(self, w: Array) -> list[Array]:
        """in_proj_qkvz's q, k, v and z, each with its heads in order (fix_query_key_value_ordering)."""
        d, r = self.dk, self.hv // self.hk
        y = w.reshape(self.hk, 2 * d + 2 * r * d, -1)
        ends = np.cumsum((d, d, r * d, r * d))
        return [
            y[:, e - n : e].reshape(-1, w.shape[-1]) for e, n in zip(ends, (d, d, r * d, r * d), strict=True)
        ]

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {**super().transforms(), "qkv_of_qkvz": lambda w: np.concatenate(self._qkvz(w)[:3]),
                "z_of_qkvz": lambda w: np.ascontiguousarray(self._qkvz(w)[3])}  # fmt: skip

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        out = []
        for s in super().plan(available, where, files):
            if s.transform != "qkv_of_qkvz":
                out.append(s)
                continue
            conv, vd = (2 * self.hk + self.hv) * self.dk, self.hv * self.dk
            out.append(replace(s, shape=(conv, self.n_embd)))
            gate = s.gguf_name.replace("attn_qkv", "attn_gate")
            out.append(replace(s, gguf_name=gate, shape=(vd, self.n_embd), transform="z_of_qkvz"))
        return out
