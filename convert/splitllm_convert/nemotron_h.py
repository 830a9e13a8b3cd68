"""Nemotron-H / Nemotron Nano 2 (NemotronHForCausalLM, without experts): Mamba-2, attention and
squared-ReLU MLP layers, ``hybrid_override_pattern`` saying which ("M", "*", "-"); written as
llama.cpp's NemotronHModel (conversion/nemotron.py, on GraniteHybridModel) writes it:
head_count_kv and feed_forward_length per layer (0 where a layer has no attention or no MLP),
key_length / value_length the attention's head size, the ssm.* sizes (inner_size = mamba_num_heads x
mamba_head_dim), rope.scaling.finetuned false and a 2^20 context (the attention is not rotated),
attention.layer_norm_epsilon; the Mamba-2 tensors as granite_hybrid.Mamba2 writes them, q/k rows
permuted as for llama's rope.

Nemotron 3 Nano (a config with num_experts_per_tok: NemotronHMoe, written as nemotron_h_moe): "E"
layers in the MLP's place, the router (mixer.gate, its e_score_correction_bias as exp_probs_b.bias),
n_routed_experts experts of moe_intermediate_size (up_proj and down_proj, stacked) and the shared
expert (moe_shared_expert_intermediate_size), with NemotronHModel's expert_* keys (count, used
count, widths, shared count, weights_norm from norm_topk_prob, weights_scale from
routed_scaling_factor, group_count).

Refused, nothing written: biases llama.cpp leaves out or reads differently (use_bias, mlp_bias,
attention_bias), an activation other than relu2, a vocabulary that is not a multiple of 8 (llama.cpp
pads the token list to one); with experts, expert groups (n_group other than 1: llama.cpp's
converter leaves out topk_group) and Nemotron 3 Super's latent projections (moe_latent_size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gguf import GGUFWriter

from splitllm_convert.arch import (
    Architecture,
    PlannedSource,
    TensorRule,
    _moe_config,
    _positive,
    _require,
    rope_permute,
)
from splitllm_convert.errors import ConvertError
from splitllm_convert.granite_hybrid import Mamba2
from splitllm_convert.lfm2 import check_layer_kinds
from splitllm_convert.llama_variants import _flag
from splitllm_convert.quant_rules import HParams

_L, _B = "backbone.layers.{bid}.", "blk.{bid}."
_KINDS = {"M": "mamba", "*": "attention", "-": "mlp"}


class NemotronH(Architecture):
    """NemotronHForCausalLM: every layer is one mixer (backbone.layers.N.mixer) after its norm."""

    hf_names = ("NemotronHForCausalLM",)
    gguf_arch = "nemotron_h"
    rules = (
        TensorRule("backbone.embeddings.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(_L + "norm.weight", _B + "attn_norm.weight", ("embd",)),
        TensorRule("backbone.norm_f.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )

    def __new__(cls, cfg: dict[str, Any], config_path: Path) -> NemotronH:  # noqa: ARG004
        """NemotronHMoe for a config with experts (llama.cpp's test: num_experts_per_tok)."""
        return super().__new__(NemotronHMoe if cls is NemotronH and "num_experts_per_tok" in cfg else cls)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        pattern, kinds = cfg.get("hybrid_override_pattern"), self.pattern_kinds()
        if not isinstance(pattern, str) or len(pattern) != self.n_layer or not set(pattern) <= set(kinds):
            raise ConvertError(
                f"{config_path}: 'hybrid_override_pattern' must have {self.n_layer} characters, each one of "
                f"{', '.join(f'{c!r} ({k})' for c, k in kinds.items())}, got {pattern!r:.200} (the experts' "
                "'E' layers need num_experts_per_tok and the other keys of Nemotron 3's experts)"
            )
        self.kinds = [kinds[k] for k in pattern]
        for key in ("use_bias", "mlp_bias", "attention_bias"):
            if _flag(cfg, key, config_path):
                raise ConvertError(
                    f"{config_path}: '{key}' is true: splitllm's nemotron_h has no such biases"
                )
        if cfg.get("mlp_hidden_act", "relu2") != "relu2":
            raise ConvertError(
                f"{config_path}: 'mlp_hidden_act' is {cfg['mlp_hidden_act']!r}; llama.cpp's is relu2"
            )
        if self.n_vocab % 8:
            raise ConvertError(
                f"{config_path}: vocab_size {self.n_vocab} is not a multiple of 8: llama.cpp pads the token "
                "list of a Mamba-2 model to one, past the embedding's rows"
            )
        heads = _require(cfg, "mamba_num_heads", config_path)
        d_head = _require(cfg, "mamba_head_dim", config_path)
        self.ssm = Mamba2(
            d_conv=_require({"conv_kernel": 4, **cfg}, "conv_kernel", config_path),
            d_state=_require({"ssm_state_size": 128, **cfg}, "ssm_state_size", config_path),
            n_group=_require({"n_groups": 1, **cfg}, "n_groups", config_path),
            heads=heads, d_inner=heads * d_head,
            conv_bias=_flag({"use_conv_bias": True, **cfg}, "use_conv_bias", config_path),
        )  # fmt: skip
        self.ssm.check(config_path, d_head)

    def pattern_kinds(self) -> dict[str, str]:
        return _KINDS

    def by_kind(self) -> dict[str, tuple[TensorRule, ...]]:
        m = _L + "mixer."
        attention = (
            TensorRule(m + "q_proj.weight", _B + "attn_q.weight", ("q", "embd"), "permute_q"),
            TensorRule(m + "k_proj.weight", _B + "attn_k.weight", ("kv", "embd"), "permute_k"),
            TensorRule(m + "v_proj.weight", _B + "attn_v.weight", ("kv", "embd")),
            TensorRule(m + "o_proj.weight", _B + "attn_output.weight", ("embd", "q")),
        )
        mlp = (
            TensorRule(m + "up_proj.weight", _B + "ffn_up.weight", ("ff", "embd")),
            TensorRule(m + "down_proj.weight", _B + "ffn_down.weight", ("embd", "ff")),
        )
        return {"mamba": self.ssm.rules(m), "attention": attention, "mlp": mlp}

    def table(self, available: Any) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        typed = (
            TensorRule(r.hf, r.gguf, r.shape, r.transform, required=False)
            for rs in self.by_kind().values()
            for r in rs
        )  # fmt: skip  (checked in plan)
        return (*self.rules, *typed), self.ignored

    def dims(self) -> dict[str, int]:
        return {**super().dims(), **self.ssm.dims()}

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return {
            **self.ssm.transforms(),
            "permute_q": lambda w: rope_permute(w, self.n_head),
            "permute_k": lambda w: rope_permute(w, self.n_head_kv),
        }

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        every = range(self.n_expert)  # (each expert's tensors checked: a rule per expert)
        checked = {
            kind: tuple(replace(r, hf=r.hf.replace("{xid}", str(x))) for r in rs for x in every)
            if any("{xid}" in r.hf for r in rs) else rs
            for kind, rs in self.by_kind().items()
        }  # fmt: skip
        check_layer_kinds(checked, self.kinds, available, where)
        return self.ssm.shaped(super().plan(available, where, files))

    def hparams(self) -> HParams:
        """(llama.cpp's quantizer reads layer 0's head_count_kv)"""
        return HParams.of(self.gguf_arch, self.n_layer, self.n_head, self.head_count_kv()[0], self.n_expert)

    def head_count_kv(self) -> list[int]:
        return [self.n_head_kv if k == "attention" else 0 for k in self.kinds]

    def add_hparams(self, w: GGUFWriter) -> None:
        """TextModel's and LlamaModel's keys as GraniteHybridModel and NemotronHModel leave them."""
        w.add_block_count(self.n_layer)
        w.add_context_length(2**20)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(
            [self.n_ff if k == "mlp" else self.n_ff_exp if k == "moe" else 0 for k in self.kinds]
        )
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.head_count_kv())
        w.add_layer_norm_eps(float(self.cfg.get("layer_norm_epsilon", 1e-5)))
        w.add_vocab_size(self.n_vocab)
        w.add_rope_dimension_count(self.n_embd // self.n_head)  # (GraniteModel drops head_dim first)
        self.ssm.add_hparams(w)
        w.add_rope_scaling_finetuned(False)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)


class NemotronHMoe(NemotronH):
    """NemotronHForCausalLM with experts (Nemotron 3 Nano): its "E" layers are mixtures of experts
    (NemotronHMoE), written as llama.cpp's NemotronHModel writes them with is_moe."""

    gguf_arch = "nemotron_h_moe"

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_ff_shexp = _require(cfg, "moe_shared_expert_intermediate_size", config_path)
        self.n_shared = _require(cfg, "n_shared_experts", config_path)
        if not isinstance(cfg.get("norm_topk_prob"), bool):
            raise ConvertError(f"{config_path}: 'norm_topk_prob' must be true or false")
        self.norm_topk = cfg["norm_topk_prob"]
        self.routed_scale = _positive(cfg, "routed_scaling_factor", config_path)
        if cfg.get("n_group", 1) != 1:
            raise ConvertError(
                f"{config_path}: 'n_group' is {cfg['n_group']!r}: expert groups are not supported "
                "(llama.cpp's converter writes no topk_group)"
            )
        if cfg.get("moe_latent_size") is not None:
            raise ConvertError(
                f"{config_path}: 'moe_latent_size' is set: the latent expert projections of Nemotron 3 "
                "Super are not supported"
            )

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "n_routed_experts", "moe_intermediate_size")

    def pattern_kinds(self) -> dict[str, str]:
        return {"M": "mamba", "*": "attention", "E": "moe"}

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_sh": self.n_ff_shexp}

    def by_kind(self) -> dict[str, tuple[TensorRule, ...]]:
        m = _L + "mixer."
        moe = (
            TensorRule(m + "gate.weight", _B + "ffn_gate_inp.weight", ("n_expert", "embd")),
            TensorRule(m + "gate.e_score_correction_bias", _B + "exp_probs_b.bias", ("n_expert",)),
            TensorRule(m + "experts.{xid}.up_proj.weight", _B + "ffn_up_exps.weight", ("ff_exp", "embd")),
            TensorRule(m + "experts.{xid}.down_proj.weight", _B + "ffn_down_exps.weight", ("embd", "ff_exp")),
            TensorRule(m + "shared_experts.up_proj.weight", _B + "ffn_up_shexp.weight", ("ff_sh", "embd")),
            TensorRule(
                m + "shared_experts.down_proj.weight", _B + "ffn_down_shexp.weight", ("embd", "ff_sh")
            ),
        )
        kinds = super().by_kind()
        return {"mamba": kinds["mamba"], "attention": kinds["attention"], "moe": moe}

    def add_hparams(self, w: GGUFWriter) -> None:
        """NemotronHModel's keys with is_moe (the per-layer feed_forward_length the experts' width)."""
        super().add_hparams(w)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)
        w.add_expert_count(self.n_expert)
        w.add_expert_shared_count(self.n_shared)
        w.add_expert_weights_norm(self.norm_topk)
        w.add_expert_weights_scale(self.routed_scale)
        w.add_expert_group_count(1)
