"""DeepSeek-V2 / V3 (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM; llama.cpp's ``deepseek2``
architecture), as llama.cpp's DeepseekV2Model writes it.

Multi-head latent attention: q_proj, or the low-rank q_a_proj / q_a_layernorm / q_b_proj;
kv_a_proj_with_mqa (the latent and the shared rotary key part) and kv_a_layernorm; kv_b_proj
(per head the no-rope key rows, then the value rows) split into ``attn_k_b`` (each head's key part
transposed: (n_head, kv_lora_rank, qk_nope_head_dim)) and ``attn_v_b`` ((n_head, v_head_dim,
kv_lora_rank)), the form llama.cpp absorbs into its queries and output. The metadata as the
converter writes it: one KV head, key_length kv_lora_rank + qk_rope_head_dim, value_length
kv_lora_rank, the per-head sizes as key_length_mla / value_length_mla. No rope permute (the
checkpoint's interleaved pairs are ggml's normal rope).

The first ``first_k_dense_replace`` blocks are dense; the others have a router (with V3's
``e_score_correction_bias`` as ``exp_probs_b.bias``), n_routed_experts experts (stacked) and
shared experts (``ffn_*_shexp``). Multi-token-prediction layers past num_hidden_layers (V3's) are
left out, as llama.cpp does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from gguf import ExpertGatingFuncType, GGUFWriter

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _describe, _moe_config, _require
from splitllm_convert.errors import ConvertError

L, B = "model.layers.{bid}.", "blk.{bid}."
_ATTN = "self_attn."
_DENSE = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_SHARED = ("mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight",
           "mlp.shared_experts.down_proj.weight")
_EXPERTS = ("mlp.experts.{xid}.gate_proj.weight", "mlp.experts.{xid}.up_proj.weight",
            "mlp.experts.{xid}.down_proj.weight")


def without_mtp_layers(available: dict[str, tuple[int, ...]], n_layer: int) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensors but those of its multi-token-prediction layers (layers past
    num_hidden_layers), which llama.cpp's forward pass never runs."""
    mtp = re.compile(r"model\.layers\.(\d+)\.")
    return {n: s for n, s in available.items() if not ((m := mtp.match(n)) and int(m.group(1)) >= n_layer)}


def require_tensors(names: Iterable[str], available: Collection[str], files: Sequence[Path]) -> None:
    """Raises naming the first of names the checkpoint does not hold."""
    for name in names:
        if name not in available:
            raise ConvertError(f"tensor {name!r} is missing from {_describe(files)}")


def _optional(hf: str, gguf: str, shape: tuple[str, ...]) -> TensorRule:
    return TensorRule(hf, gguf, shape, required=False)


# A block's feed-forward rows, all optional (which a block needs: ffn_needed), then the output's:
# dense (the leading blocks), or the router with its selection bias, the routed experts (stacked)
# and the shared experts (one feed-forward of their stacked rows). deepseek2's and glm4moe's.
FFN_AND_OUTPUT_ROWS = (
    _optional(L + _DENSE[0], B + "ffn_gate.weight", ("ff", "embd")),
    _optional(L + _DENSE[1], B + "ffn_up.weight", ("ff", "embd")),
    _optional(L + _DENSE[2], B + "ffn_down.weight", ("embd", "ff")),
    _optional(L + "mlp.gate.weight", B + "ffn_gate_inp.weight", ("n_expert", "embd")),
    _optional(L + "mlp.gate.e_score_correction_bias", B + "exp_probs_b.bias", ("n_expert",)),
    _optional(L + _EXPERTS[0], B + "ffn_gate_exps.weight", ("ff_exp", "embd")),
    _optional(L + _EXPERTS[1], B + "ffn_up_exps.weight", ("ff_exp", "embd")),
    _optional(L + _EXPERTS[2], B + "ffn_down_exps.weight", ("embd", "ff_exp")),
    _optional(L + _SHARED[0], B + "ffn_gate_shexp.weight", ("ff_sh", "embd")),
    _optional(L + _SHARED[1], B + "ffn_up_shexp.weight", ("ff_sh", "embd")),
    _optional(L + _SHARED[2], B + "ffn_down_shexp.weight", ("embd", "ff_sh")),
    TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
    TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
)


def ffn_needed(p: str, dense: bool, n_expert: int, n_shared: int, bias: str = "") -> list[str]:
    """The feed-forward tensors block prefix p must have: the dense ones, or the router (and its
    selection bias, the tensor named bias after p, where given), every expert's and the shared
    experts' (where n_shared)."""
    if dense:
        return [p + n for n in _DENSE]
    names = [p + "mlp.gate.weight"] + ([p + bias] if bias else [])
    names += [p + n.format(xid=x) for n in _EXPERTS for x in range(n_expert)]
    return names + ([p + n for n in _SHARED] if n_shared else [])


class DeepseekV2(Architecture):
    """DeepseekV2ForCausalLM / DeepseekV3ForCausalLM (see the module's docstring)."""

    hf_names = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
    gguf_arch = "deepseek2"
    # (which of the optional rows a block needs is checked per block in plan)
    rules = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",)),
        _optional(L + _ATTN + "q_proj.weight", B + "attn_q.weight", ("q", "embd")),
        _optional(L + _ATTN + "q_a_proj.weight", B + "attn_q_a.weight", ("q_lora", "embd")),
        _optional(L + _ATTN + "q_a_layernorm.weight", B + "attn_q_a_norm.weight", ("q_lora",)),
        _optional(L + _ATTN + "q_b_proj.weight", B + "attn_q_b.weight", ("q", "q_lora")),
        TensorRule(L + _ATTN + "kv_a_proj_with_mqa.weight", B + "attn_kv_a_mqa.weight", ("kv_a", "embd")),
        TensorRule(L + _ATTN + "kv_a_layernorm.weight", B + "attn_kv_a_norm.weight", ("kv_lora",)),
        TensorRule(L + _ATTN + "kv_b_proj.weight", B + "attn_k_b.weight", ("kv_b", "kv_lora")),  # (split)
        TensorRule(L + _ATTN + "o_proj.weight", B + "attn_output.weight", ("embd", "o")),
        TensorRule(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", ("embd",)),
        *FFN_AND_OUTPUT_ROWS,
    )
    default_ctx = 4096

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_head_kv = 1  # the latent: one KV head (llama.cpp's converter sets num_key_value_heads 1)
        q_lora = cfg.get("q_lora_rank")
        self.q_lora_rank = 0 if q_lora is None else _require(cfg, "q_lora_rank", config_path)
        self.kv_lora_rank = _require(cfg, "kv_lora_rank", config_path)
        self.nope = _require(cfg, "qk_nope_head_dim", config_path)
        self.n_rot = _require(cfg, "qk_rope_head_dim", config_path)
        self.v_head_dim = _require(cfg, "v_head_dim", config_path)
        if self.n_rot % 2:
            raise ConvertError(f"{config_path}: qk_rope_head_dim {self.n_rot} must be even")
        self.n_shared = int(cfg.get("n_shared_experts") or 0)
        k = cfg.get("first_k_dense_replace")
        self.n_dense = (0 if self.n_expert else self.n_layer) if k is None else int(k)
        if not 0 <= self.n_dense <= self.n_layer or (self.n_dense < self.n_layer and not self.n_expert):
            raise ConvertError(f"{config_path}: first_k_dense_replace {k!r} does not fit {self.n_layer} "
                               f"layers and {self.n_expert} experts")
        scoring = cfg.get("scoring_func", "softmax")
        if scoring not in ("softmax", "sigmoid"):
            raise ConvertError(f"{config_path}: scoring_func {scoring!r} is not supported (softmax, sigmoid)")

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        if self.cfg.get("n_routed_experts") is None:
            return 0, 0, 0
        return _moe_config(self.cfg, config_path, "n_routed_experts", "moe_intermediate_size")

    def dims(self) -> dict[str, int]:
        qk, r = self.nope + self.n_rot, self.kv_lora_rank
        return {**super().dims(), "q": self.n_head * qk, "q_lora": self.q_lora_rank, "kv_a": r + self.n_rot,
                "kv_lora": r, "kv_b": self.n_head * (self.nope + self.v_head_dim),
                "o": self.n_head * self.v_head_dim, "ff_sh": self.n_ff_exp * self.n_shared}

    def _needed(self, bid: int) -> list[str]:
        """The HF tensors block bid must have (beside the ones every block has)."""
        p = L.format(bid=bid)
        lora = ("q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight")
        q = lora if self.q_lora_rank else ("q_proj.weight",)
        return [p + _ATTN + n for n in q] + ffn_needed(p, bid < self.n_dense, self.n_expert, self.n_shared)

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        available = without_mtp_layers(available, self.n_layer)
        require_tensors((n for bid in range(self.n_layer) for n in self._needed(bid)), available, files)
        out = []
        H, r = self.n_head, self.kv_lora_rank
        for s in super().plan(available, where, files):
            if not s.gguf_name.endswith("attn_k_b.weight"):
                out.append(s)
                continue
            out.append(PlannedSource(s.gguf_name, (H, r, self.nope), s.hf_name, "k_b"))
            out.append(PlannedSource(s.gguf_name.replace("attn_k_b", "attn_v_b"), (H, self.v_head_dim, r),
                                     s.hf_name, "v_b"))
        return out

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        H, nope, vd = self.n_head, self.nope, self.v_head_dim

        def k_b(w: Any) -> Any:  # (H * (nope + vd), r) -> each head's key rows, transposed
            return w.reshape(H, nope + vd, -1)[:, :nope].transpose(0, 2, 1).copy()

        def v_b(w: Any) -> Any:
            return w.reshape(H, nope + vd, -1)[:, nope:].copy()

        return {"k_b": k_b, "v_b": v_b}

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        cfg = self.cfg
        if self.n_expert:
            w.add_expert_count(self.n_expert)
            w.add_expert_used_count(self.n_expert_used)
        groups = (("n_group", w.add_expert_group_count), ("topk_group", w.add_expert_group_used_count))
        for key, add in groups:
            if cfg.get(key) is not None:
                add(int(cfg[key]))
        if "scoring_func" in cfg:
            w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if cfg["scoring_func"] == "sigmoid"
                                     else ExpertGatingFuncType.SOFTMAX)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_vocab_size(self.n_vocab)
        if self.q_lora_rank:
            w.add_q_lora_rank(self.q_lora_rank)
        w.add_kv_lora_rank(self.kv_lora_rank)
        w.add_key_length(self.kv_lora_rank + self.n_rot)
        w.add_value_length(self.kv_lora_rank)
        w.add_key_length_mla(self.nope + self.n_rot)
        w.add_value_length_mla(self.v_head_dim)
        w.add_expert_feed_forward_length(self.n_ff_exp or self.n_ff)
        w.add_expert_shared_count(self.n_shared)
        if cfg.get("routed_scaling_factor") is not None:
            w.add_expert_weights_scale(float(cfg["routed_scaling_factor"]))
        if cfg.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_rope_dimension_count(self.n_rot)
        if self.rope.get("mscale_all_dim") is not None:  # (llama.cpp's legacy 0.1 factor)
            w.add_rope_scaling_yarn_log_mul(0.1 * float(self.rope["mscale_all_dim"]))
