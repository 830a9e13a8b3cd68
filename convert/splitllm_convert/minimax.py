"""MiniMax-M2 / M2.1 and Phi-3.5-MoE (PhiMoe, below).

MiniMax-M2 / M2.1 (MiniMaxM2ForCausalLM; llama.cpp's ``minimax-m2`` architecture), as llama.cpp's
MiniMaxM2Model writes it.

Every block: q/k/v/o without biases, ``q_norm`` / ``k_norm`` RMSNorms over the whole q and k
projections (all heads together: HF's rows as they are), the NEOX rotation of each head's first
``rotary_dim`` dims; a mixture of ``num_local_experts`` experts (``block_sparse_moe.experts.{e}``'s
w1 / w3 / w2: gate / up / down, stacked) whose router takes the sigmoid of its logits, adds
``e_score_correction_bias`` (``exp_probs_b.bias``) for choosing and renormalizes the chosen scores.
What llama.cpp's graph would run differently from transformers is refused: another scoring
function, no routing bias, q/k norms off or per head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf import ExpertGatingFuncType, GGUFWriter

from splitllm_convert.arch import Architecture, Phi3, TensorRule, _llama_rules, _moe_config, _require
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import Olmo2

L, B = "model.layers.{bid}.", "blk.{bid}."


class MiniMaxM2(Architecture):
    """MiniMaxM2ForCausalLM (see the module's docstring)."""

    hf_names = ("MiniMaxM2ForCausalLM",)
    gguf_arch = "minimax-m2"
    rules = (
        *_llama_rules(permute=False, biases="", ffn="mixtral"),
        TensorRule(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("q",)),
        TensorRule(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("kv",)),
        TensorRule(L + "block_sparse_moe.e_score_correction_bias", B + "exp_probs_b.bias", ("n_expert",)),
    )
    default_ctx = 196608  # (MiniMax-M2's max_position_embeddings)
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json (TextModel.set_vocab)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_rot = _require(cfg, "rotary_dim", config_path)  # (llama.cpp's converter requires it)
        if self.n_rot > self.head_dim or self.n_rot % 2:
            raise ConvertError(f"{config_path}: 'rotary_dim' {self.n_rot} must be even and at most the head "
                               f"size {self.head_dim}")  # fmt: skip
        checks = (
            ("scoring_func", "sigmoid", "llama.cpp's minimax-m2 routes by sigmoid scores"),
            ("use_routing_bias", True, "llama.cpp's minimax-m2 needs e_score_correction_bias"),
            ("use_qk_norm", True, "llama.cpp's minimax-m2 always norms q and k"),
            ("qk_norm_type", "per_layer", "llama.cpp's minimax-m2 norms the whole projections"),
            ("attention_bias", False, "llama.cpp's minimax-m2 has no attention biases"),
        )
        for key, want, why in checks:
            if key in cfg and cfg[key] != want:
                raise ConvertError(f"{config_path}: '{key}' is {cfg[key]!r}: {why}")

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "num_local_experts", "intermediate_size")

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_rope_dimension_count(self.n_rot)


class PhiMoe(Phi3):
    """PhiMoEForCausalLM (Phi-3.5-MoE), as llama.cpp's PhiMoeModel writes phimoe: Phi3MiniModel's keys
    (LongRoPE's factors and attention factor among them) with the expert counts; q/k/v/o separate,
    each with its bias; the LayerNorms' weights and biases (llama.cpp's graph runs them as RMS norms
    plus the bias, and routes by the softmax's top k: the file means that, not transformers'
    LayerNorm and sparsemixer, nor config.json's short_mscale / long_mscale: the attention factor
    is Phi3MiniModel's sqrt(1 + ln s / ln original context), s = max_position_embeddings / original
    context, 1.190 for Phi-3.5-MoE where transformers uses its 1.243); block_sparse_moe's experts
    stacked; lm_head's bias. llama.cpp requires the attention output's and lm_head's biases:
    ``attention_bias`` or ``lm_head_bias`` false is refused."""

    hf_names = ("PhiMoEForCausalLM",)
    gguf_arch = "phimoe"
    rules = (
        *_llama_rules(permute=False, biases="qkv", ffn="mixtral"),
        TensorRule(L + "self_attn.o_proj.bias", B + "attn_output.bias", ("embd",)),
        TensorRule(L + "input_layernorm.bias", B + "attn_norm.bias", ("embd",)),
        TensorRule(L + "post_attention_layernorm.bias", B + "ffn_norm.bias", ("embd",)),
        TensorRule("model.norm.bias", "output_norm.bias", ("embd",)),
        TensorRule("lm_head.bias", "output.bias", ("vocab",)),
    )
    default_ctx = 131072  # transformers' PhimoeConfig
    default_rms_eps = 1e-5

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        for key in ("attention_bias", "lm_head_bias"):
            if cfg.get(key) is not True:
                raise ConvertError(f"{config_path}: '{key}' is {cfg.get(key)!r}: llama.cpp's phimoe needs "
                                   "the attention output's and the output layer's biases")  # fmt: skip
        if self.head_dim * self.n_head != self.n_embd:
            raise ConvertError(f"{config_path}: llama.cpp's phimoe needs head_dim = hidden_size / "
                               f"num_attention_heads, got {self.head_dim}")  # fmt: skip

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "num_local_experts", "intermediate_size")

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_count(self.n_expert)
