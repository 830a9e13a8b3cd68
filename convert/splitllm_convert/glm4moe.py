"""GLM-4.5 / 4.5-Air / 4.6 / 4.7 (Glm4MoeForCausalLM; llama.cpp's ``glm4moe`` architecture), as
llama.cpp's Glm4MoeModel writes it.

The attention: q/k/v with biases (``attention_bias``), the per-head q_norm / k_norm where
``use_qk_norm``, o_proj without a bias; the NEOX rotation of the first head_dim x
partial_rotary_factor dims of each head (HF's q/k rows as they are). ``post_attention_layernorm``
is written as ``post_attention_norm`` (llama.cpp's name for it; it is the feed-forward's input
norm). The first ``first_k_dense_replace`` blocks are dense; the others have a sigmoid router with
``e_score_correction_bias`` (``exp_probs_b.bias``), n_routed_experts experts (stacked) and
n_shared_experts shared experts (``ffn_*_shexp``, one feed-forward of their stacked width).

transformers' Glm4MoeConfig defaults where config.json leaves a key out (first_k_dense_replace 1,
norm_topk_prob true, routed_scaling_factor 1, n_group / topk_group 1): those are written, so the
file runs the model transformers would build. The multi-token-prediction layers past
num_hidden_layers are left out (llama.cpp's converter writes them, with nextn_predict_layers, for
its speculative decoding; neither engine's forward pass runs them), and no nextn_predict_layers is
written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gguf import ExpertGatingFuncType, GGUFWriter

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _moe_config, _positive
from splitllm_convert.deepseek import (
    FFN_AND_OUTPUT_ROWS,
    _optional,
    ffn_needed,
    require_tensors,
    without_mtp_layers,
)
from splitllm_convert.dense import glm_rotated_dims
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import _flag
from splitllm_convert.vocab import Vocab

L, B = "model.layers.{bid}.", "blk.{bid}."
_QKV = tuple(f"self_attn.{p}_proj.bias" for p in "qkv")
_QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
_BIAS = "mlp.gate.e_score_correction_bias"


def _int_or(cfg: dict[str, Any], key: str, default: int, path: Path, lo: int = 1) -> int:
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConvertError(f"{path}: '{key}' must be an integer >= {lo}, got {v!r}")
    return v


class Glm4Moe(Architecture):
    """Glm4MoeForCausalLM (see the module's docstring)."""

    hf_names = ("Glm4MoeForCausalLM",)
    gguf_arch = "glm4moe"
    # (which of the optional rows a block needs is checked per block in plan)
    rules = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",)),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", ("q", "embd")),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.v_proj.weight", B + "attn_v.weight", ("kv", "embd")),
        _optional(L + _QKV[0], B + "attn_q.bias", ("q",)),
        _optional(L + _QKV[1], B + "attn_k.bias", ("kv",)),
        _optional(L + _QKV[2], B + "attn_v.bias", ("kv",)),
        TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")),
        _optional(L + _QK_NORMS[0], B + "attn_q_norm.weight", ("head",)),
        _optional(L + _QK_NORMS[1], B + "attn_k_norm.weight", ("head",)),
        TensorRule(L + "post_attention_layernorm.weight", B + "post_attention_norm.weight", ("embd",)),
        *FFN_AND_OUTPUT_ROWS,
    )
    default_ctx = 131072  # transformers' Glm4MoeConfig
    default_rms_eps = 1e-5

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_rot = glm_rotated_dims(self, config_path)
        self.n_shared = _int_or(cfg, "n_shared_experts", 1, config_path, lo=0)
        self.n_dense = _int_or(cfg, "first_k_dense_replace", 1, config_path, lo=0)
        if self.n_dense > self.n_layer:
            raise ConvertError(f"{config_path}: first_k_dense_replace {self.n_dense} is more than "
                               f"num_hidden_layers {self.n_layer}")  # fmt: skip
        self.n_group = _int_or(cfg, "n_group", 1, config_path)
        self.topk_group = _int_or(cfg, "topk_group", 1, config_path)
        if self.n_expert % self.n_group or self.topk_group > self.n_group:
            raise ConvertError(f"{config_path}: n_group {self.n_group} / topk_group {self.topk_group} do not "
                               f"fit {self.n_expert} experts")  # fmt: skip
        self.bias = _flag(cfg, "attention_bias", config_path)
        self.qk_norm = _flag(cfg, "use_qk_norm", config_path)
        self.norm_topk = _flag({"norm_topk_prob": True, **cfg}, "norm_topk_prob", config_path)
        self.scale = _positive({"routed_scaling_factor": 1.0, **cfg}, "routed_scaling_factor", config_path)

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "n_routed_experts", "moe_intermediate_size")

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_sh": self.n_ff_exp * self.n_shared}

    def _needed(self, bid: int) -> list[str]:
        """The HF tensors block bid must have beside the ones every block has."""
        p = L.format(bid=bid)
        names = [p + n for n in (_QKV if self.bias else ()) + (_QK_NORMS if self.qk_norm else ())]
        return names + ffn_needed(p, bid < self.n_dense, self.n_expert, self.n_shared, _BIAS)

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        available = without_mtp_layers(available, self.n_layer)
        require_tensors((n for bid in range(self.n_layer) for n in self._needed(bid)), available, files)
        for name in available:  # (what config.json says the model has not: transformers would not load it)
            if name.endswith(_QKV) and not self.bias or name.endswith(_QK_NORMS) and not self.qk_norm:
                key = "attention_bias" if name.endswith(_QKV) else "use_qk_norm"
                raise ConvertError(f"tensor {name!r} in {where(name)}: config.json's {key!r} is false")
        return super().plan(available, where, files)

    def adjust_vocab(self, vocab: Vocab) -> None:
        """Glm4MoeModel's _set_vocab_glm: bos [gMASK], eot <|user|>, unk <|endoftext|>, eom
        <|observation|>."""
        for typ, token in (("bos", "[gMASK]"), ("eot", "<|user|>"), ("unk", "<|endoftext|>"),
                           ("eom", "<|observation|>")):  # fmt: skip
            if token not in vocab.tokens:
                raise ConvertError(f"the tokenizer has no {token!r} token (GLM-4.5's {typ} token)")
            vocab.special_ids[typ] = vocab.tokens.index(token)

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        if self.n_group > 1:
            w.add_expert_group_count(self.n_group)
            w.add_expert_group_used_count(self.topk_group)
        w.add_rope_dimension_count(self.n_rot)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_count(self.n_shared)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_scale(self.scale)
        w.add_expert_weights_norm(self.norm_topk)
