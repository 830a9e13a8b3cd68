"""ERNIE-4.5-21B-A3B / 300B-A47B (Ernie4_5_MoeForCausalLM; llama.cpp's ``ernie4_5-moe`` architecture),
as llama.cpp's Ernie4_5MoeModel writes it: ERNIE 4.5's attention and vocabulary (``dense.Ernie4_5``),
the first ``moe_layer_start_index`` blocks dense, the others with a softmax router (``mlp.gate``), its
correction bias (``moe_statics.e_score_correction_bias``, (1, moe_num_experts) as held, as
``exp_probs_b.bias``), moe_num_experts experts (stacked) and moe_num_shared_experts shared experts
(``ffn_*_shexp``).

expert_shared_feed_forward_length is the shared experts' stacked width, moe_intermediate_size x
moe_num_shared_experts, as transformers builds them (llama.cpp's converter writes
intermediate_size // num_key_value_heads, which is that width only where the two happen to agree).
Refused: experts other than in every block from moe_layer_start_index to the last
(``moe_layer_interval`` > 1, an earlier ``moe_layer_end_index``), which llama.cpp's graph does not
run as transformers does. The checkpoint's multi-token-prediction tensors (``model.mtp_*``) are left
out, as llama.cpp's converter leaves them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gguf import GGUFWriter

from splitllm_convert.arch import PlannedSource, TensorRule, _require
from splitllm_convert.deepseek import FFN_AND_OUTPUT_ROWS, ffn_needed, require_tensors
from splitllm_convert.dense import _ATTN, _OUTER, Ernie4_5, _rules
from splitllm_convert.errors import ConvertError

L = "model.layers.{bid}."
_BIAS = "mlp.moe_statics.e_score_correction_bias"


def _ernie_row(r: TensorRule) -> TensorRule:
    """deepseek2's feed-forward row with ERNIE's correction bias name and shape."""
    if r.gguf.endswith("exp_probs_b.bias"):
        return dataclasses.replace(r, hf=L + _BIAS, shape=("one", "n_expert"))
    return r


class Ernie4_5Moe(Ernie4_5):  # noqa: N801 - the architecture's name
    """Ernie4_5_MoeForCausalLM (see the module's docstring)."""

    hf_names = ("Ernie4_5_MoeForCausalLM",)
    gguf_arch = "ernie4_5-moe"
    # (which of the optional feed-forward rows a block needs is checked per block in plan)
    rules = (
        _OUTER[0],
        *_rules(("input_layernorm.weight", "attn_norm.weight", ("embd",)),
                ("post_attention_layernorm.weight", "ffn_norm.weight", ("embd",))),
        *_ATTN,
        *(_ernie_row(r) for r in FFN_AND_OUTPUT_ROWS),
    )  # fmt: skip
    skipped = ("model.mtp_block.", "model.mtp_emb_norm.", "model.mtp_hidden_norm.", "model.mtp_linear_proj.")

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_shared = int(cfg.get("moe_num_shared_experts") or 0)
        start = cfg.get("moe_layer_start_index")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= self.n_layer:
            raise ConvertError(
                f"{config_path}: 'moe_layer_start_index' must be an integer in [0, {self.n_layer}], "
                f"got {start!r}"
            )
        self.n_dense = start
        interval = _require(cfg, "moe_layer_interval", config_path)
        end = cfg.get("moe_layer_end_index", -1)
        if interval != 1 or end not in (-1, None) and end < self.n_layer - 1:
            raise ConvertError(
                f"{config_path}: moe_layer_interval {interval}, moe_layer_end_index {end!r}: only experts in "
                "every block from moe_layer_start_index on are supported"
            )

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        n = _require(self.cfg, "moe_num_experts", config_path)
        used = _require(self.cfg, "moe_k", config_path)
        if used > n:
            raise ConvertError(f"{config_path}: moe_k {used} is more than moe_num_experts {n}")
        return n, used, _require(self.cfg, "moe_intermediate_size", config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "one": 1, "ff_sh": self.n_ff_exp * self.n_shared}

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        needed = (
            n
            for bid in range(self.n_layer)
            for n in ffn_needed(L.format(bid=bid), bid < self.n_dense, self.n_expert, self.n_shared, _BIAS)
        )
        require_tensors(needed, available, files)
        return super().plan(available, where, files)

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_interleave_moe_layer_step(1)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_count(self.n_shared)
        if self.n_shared:
            w.add_expert_shared_feed_forward_length(self.n_ff_exp * self.n_shared)
