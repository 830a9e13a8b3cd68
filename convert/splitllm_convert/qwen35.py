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
from typing import Any, ClassVar

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import (
    Architecture,
    Array,
    PlannedSource,
    TensorRule,
    _require,
    text_config,
)
from splitllm_convert.errors import ConvertError
from splitllm_convert.lfm2 import check_layer_kinds

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
    moe: ClassVar[bool] = False
    default_ctx = 262144
    default_rope_theta = 10_000_000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        if "text_config" in cfg:
            cfg = {**cfg, **text_config(cfg, config_path)}
        if self.moe:  # (no dense feed-forward width)
            cfg = {"intermediate_size": cfg.get("moe_intermediate_size"), **cfg}
        super().__init__(cfg, config_path)
        self.prefix = "model.language_model." if "text_config" in cfg else "model."
        if not self.moe and (cfg.get("num_experts") or cfg.get("num_local_experts")):
            raise ConvertError(
                f"{config_path}: 'num_experts' in a dense Qwen3.5 config (mixture of experts: Qwen3_5Moe*)"
            )
        if cfg.get("attn_output_gate", True) is not True:
            raise ConvertError(f"{config_path}: 'attn_output_gate' false: llama.cpp's qwen35 gates attention")
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
        self.sections: list[int] | None = [*sections, 0, 0, 0][:4]

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
        moved = {
            k: [replace(r, hf=self.prefix + r.hf.removeprefix("model.")) for r in rs]
            for k, rs in self.by_type.items()
        }
        check_layer_kinds(moved, self.layer_types, available, where)
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
        if self.sections is not None:  # (qwen3next: none)
            w.add_rope_dimension_sections(self.sections)


class Qwen35Moe(Qwen35):
    """Qwen3_5MoeForCausalLM (and Qwen3_5MoeForConditionalGeneration's text part): qwen35's layers with
    every feed-forward a softmax-routed mixture of num_experts experts (the chosen weights
    renormalised: llama.cpp's qwen35moe always does) and a shared expert gated by
    sigmoid(shared_expert_gate . h). The experts come one tensor each (``mlp.experts.N.*``, stacked)
    or fused as transformers saves them (``mlp.experts.gate_up_proj``, gate rows first, split in two
    as llama.cpp's Qwen2MoeModel does, and ``mlp.experts.down_proj``)."""

    hf_names = ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration")
    gguf_arch = "qwen35moe"
    _fused = ("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj.weight")
    _fused_down = ("mlp.experts.down_proj", "mlp.experts.down_proj.weight")
    common = (
        *(r for r in Qwen35.common if "mlp." not in r.hf),
        _r("mlp.gate.weight", "ffn_gate_inp.weight", ("n_expert", "embd")),
        _r("mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight", ("one", "embd")),
        _r("mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight", ("ff_sh", "embd")),
        _r("mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight", ("ff_sh", "embd")),
        _r("mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight", ("embd", "ff_sh")),
    )
    experts = (
        _r("mlp.experts.{xid}.gate_proj.weight", "ffn_gate_exps.weight", ("ff_exp", "embd")),
        _r("mlp.experts.{xid}.up_proj.weight", "ffn_up_exps.weight", ("ff_exp", "embd")),
        _r("mlp.experts.{xid}.down_proj.weight", "ffn_down_exps.weight", ("embd", "ff_exp")),
        # (named apart from the stacks above while planned; see plan)
        *(_r(n, "fused.gate_exps", ("n_expert", "ff_exp2", "embd"), "gate_half") for n in _fused),
        *(_r(n, "fused.down_exps", ("n_expert", "embd", "ff_exp"), "as_is") for n in _fused_down),
    )  # fmt: skip
    rules = (*common, *(TensorRule(r.hf, r.gguf, r.shape, r.transform, required=False)
                        for rs in (experts, *Qwen35.by_type.values()) for r in rs))  # fmt: skip

    moe = True

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_ff_shexp = _require(self.cfg, "shared_expert_intermediate_size", config_path)
        if self.cfg.get("norm_topk_prob", True) is not True:
            raise ConvertError(
                f"{config_path}: 'norm_topk_prob' false: llama.cpp's {self.gguf_arch} renormalises"
            )

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        cfg = self.cfg
        n, used = _require(cfg, "num_experts", config_path), _require(cfg, "num_experts_per_tok", config_path)
        if used > n:
            raise ConvertError(f"{config_path}: num_experts_per_tok {used} is more than num_experts {n}")
        return n, used, _require(cfg, "moe_intermediate_size", config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_sh": self.n_ff_shexp, "ff_exp2": 2 * self.n_ff_exp}

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        ff = self.n_ff_exp
        return {**super().transforms(), "gate_half": lambda w: np.ascontiguousarray(w[:, :ff]),
                "up_half": lambda w: np.ascontiguousarray(w[:, ff:]), "as_is": lambda w: w}  # fmt: skip

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        out = super().plan(available, where, files)
        for bid in range(self.n_layer):

            def hf(name: str, bid: int = bid) -> str:
                return self.prefix + _L.removeprefix("model.").format(bid=bid) + name

            fused = [hf(n) for n in self._fused if hf(n) in available]
            single = hf("mlp.experts.0.gate_proj.weight") in available
            if len(fused) + single != 1 or (single and any(hf(n) in available for n in self._fused_down)):
                raise ConvertError(f"layer {bid}: the experts must come either one tensor each or fused "
                                   f"(mlp.experts.gate_up_proj and down_proj), once")  # fmt: skip
            if fused:  # the up half, a second tensor from the same one
                gate = next(s for s in out if s.hf_name == fused[0])
                up = replace(
                    gate, gguf_name=gate.gguf_name.replace("fused.gate", "fused.up"), transform="up_half"
                )
                out.insert(out.index(gate) + 1, up)
        halves = (self.n_expert, self.n_ff_exp, self.n_embd)
        return [replace(s, gguf_name=s.gguf_name.replace("fused.", "ffn_") + ".weight",
                        shape=halves if s.transform != "as_is" else s.shape)
                if ".fused." in s.gguf_name else s for s in out]  # fmt: skip

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)
