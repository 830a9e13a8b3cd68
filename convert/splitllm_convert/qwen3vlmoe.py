"""Qwen3-VL-30B-A3B / 235B-A22B (Qwen3VLMoeForConditionalGeneration), its text model, as llama.cpp's
Qwen3VLMoeTextModel writes it (``qwen3vlmoe``): Qwen3-MoE's table under ``model.language_model.``,
``text_config`` merged over the top level, Qwen3-VL's rope sections and deepstack layer count
(``dense.qwen3vl_rope``). The experts come packed and transposed: ``mlp.experts.gate_up_proj``
(n_experts, hidden, 2 x moe_intermediate_size; the gate's columns first) is split into
``ffn_gate_exps`` / ``ffn_up_exps`` and ``mlp.experts.down_proj`` (n_experts, moe_intermediate_size,
hidden) transposed into ``ffn_down_exps``. The vision tower (``model.visual.``) goes to llama.cpp's
mmproj file and is left out here. transformers' text model always renormalizes the chosen experts'
weights (no norm_topk_prob), as llama.cpp's qwen3vlmoe graph does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from gguf import GGUFWriter

from splitllm_convert.arch import (
    Architecture,
    PlannedSource,
    Qwen3Moe,
    TensorRule,
    _add_expert_hparams,
    text_config,
)
from splitllm_convert.dense import _moved, qwen3vl_rope

L, B = "model.layers.{bid}.", "blk.{bid}."
_PACKED = ("n_expert", "embd", "ff_exp2")  # gate_up_proj: each expert's (hidden, gate | up) columns


class Qwen3VLMoe(Qwen3Moe):
    """Qwen3VLMoeForConditionalGeneration's text model (see the module's docstring)."""

    hf_names = ("Qwen3VLMoeForConditionalGeneration",)
    gguf_arch = "qwen3vlmoe"
    rules = (
        *(r for r in Qwen3Moe.rules if "{xid}" not in r.hf),  # (the experts come packed)
        TensorRule(L + "mlp.experts.gate_up_proj", B + "ffn_gate_exps.weight", _PACKED, "gate_up"),
        TensorRule(
            L + "mlp.experts.down_proj", B + "ffn_down_exps.weight", ("n_expert", "ff_exp", "embd"), "t"
        ),
    )
    skipped = ("model.visual.", "visual.")

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__({**cfg, **text_config(cfg, config_path)}, config_path)
        self.sections, self.n_deepstack = qwen3vl_rope(self, cfg, config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_exp2": 2 * self.n_ff_exp}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        return _moved(self, "model.language_model.", "lm_head.weight")

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        out = []
        rows = (self.n_expert, self.n_ff_exp, self.n_embd)  # (ffn_gate_exps / ffn_up_exps, row-major)
        for s in super().plan(available, where, files):
            if s.transform == "gate_up":  # (one HF tensor, two GGUF ones)
                up = s.gguf_name.replace("gate_exps", "up_exps")
                out += [
                    PlannedSource(s.gguf_name, rows, s.hf_name, "gate_t"),
                    PlannedSource(up, rows, s.hf_name, "up_t"),
                ]
            elif s.transform == "t":
                out.append(
                    PlannedSource(s.gguf_name, (self.n_expert, self.n_embd, self.n_ff_exp), s.hf_name, "t")
                )
            else:
                out.append(s)
        return out

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        ff = self.n_ff_exp
        return {
            **super().transforms(),
            "gate_t": lambda w: w[..., :ff].transpose(0, 2, 1).copy(),
            "up_t": lambda w: w[..., ff:].transpose(0, 2, 1).copy(),
            "t": lambda w: w.transpose(0, 2, 1).copy(),
        }

    def add_hparams(self, w: GGUFWriter) -> None:
        Architecture.add_hparams(self, w)  # (Qwen3Moe's but its expert_weights_norm: always renormalized)
        _add_expert_hparams(w, self)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_rope_dimension_sections(self.sections)
        w.add_num_deepstack_layers(self.n_deepstack)
