"""Qwen2-MoE, OLMoE and Granite MoE (shared or not): the mixtures of experts llama.cpp runs as its
``qwen2moe``, ``olmoe`` and ``granitemoe`` architectures, with the tables and metadata of its
Qwen2MoeModel, OlmoeModel and GraniteMoeModel (convert_hf_to_gguf.py / conversion/).

config.json is read as transformers' config classes read it (their defaults where keys are left
out). What llama.cpp's graphs would run differently from transformers is refused, nothing written:

- Qwen2-MoE: llama.cpp never renormalizes the chosen experts' weights (``norm_topk_prob``) and has
  experts in every block (``decoder_sparse_step`` / ``mlp_only_layers``).
- OLMoE: likewise ``norm_topk_prob``; it has no ``clip_qkv``, needs an output matrix of its own and
  a key norm as wide as the query's (no GQA). (llama.cpp's converter writes an RMS epsilon of 1e-5
  whatever config.json says; this writes config.json's, 1e-5 in every OLMoE checkpoint.)
- Granite MoE: Granite's (see ``llama_variants.Granite``); the experts' gate and up projections,
  stacked in one ``input_linear`` (gate rows first), are written as two tensors, as llama.cpp's
  converter splits them; GraniteMoeShared's ``shared_mlp`` likewise (llama.cpp writes both models
  as ``granitemoe``, the shared expert announced by expert_shared_feed_forward_length).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import (
    Architecture,
    PlannedSource,
    Qwen2,
    Qwen3Moe,
    TensorRule,
    _llama_rules,
    _moe_config,
    _require,
)
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import Granite, Olmo2, _flag

L, B = "model.layers.{bid}.", "blk.{bid}."


def _expert_counts(w: GGUFWriter, arch: Architecture) -> None:
    """expert_count and expert_used_count, where TextModel.set_gguf_parameters writes them."""
    w.add_expert_count(arch.n_expert)
    w.add_expert_used_count(arch.n_expert_used)


def _no_renorm(arch: Architecture, path: Path) -> None:
    if _flag(arch.cfg, "norm_topk_prob", path):
        raise ConvertError(
            f"{path}: 'norm_topk_prob' is true, but llama.cpp's {arch.gguf_arch} weighs the chosen experts "
            "by their softmax probabilities as they are (never renormalized)"
        )


class Qwen2Moe(Qwen2):
    """Qwen2MoeForCausalLM (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases, NEOX rope),
    experts in every block and a shared expert whose output is gated by sigmoid(shared_expert_gate
    . h); llama.cpp's expert_feed_forward_length and expert_shared_feed_forward_length after
    general.file_type."""

    hf_names = ("Qwen2MoeForCausalLM",)
    gguf_arch = "qwen2moe"
    rules = (
        *_llama_rules(permute=False, biases="qkv", ffn="qwen-moe"),
        TensorRule(L + "mlp.shared_expert_gate.weight", B + "ffn_gate_inp_shexp.weight", ("one", "embd")),
        TensorRule(L + "mlp.shared_expert.gate_proj.weight", B + "ffn_gate_shexp.weight", ("ff_sh", "embd")),
        TensorRule(L + "mlp.shared_expert.up_proj.weight", B + "ffn_up_shexp.weight", ("ff_sh", "embd")),
        TensorRule(L + "mlp.shared_expert.down_proj.weight", B + "ffn_down_shexp.weight", ("embd", "ff_sh")),
    )
    _experts = Qwen3Moe._experts  # num_experts, moe_intermediate_size; every block sparse
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json (TextModel.set_vocab)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        _no_renorm(self, config_path)
        self.n_ff_shexp = _require(cfg, "shared_expert_intermediate_size", config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "one": 1, "ff_sh": self.n_ff_shexp}

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        _expert_counts(w, self)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:  # (not Qwen2Model's pooling)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)


class Olmoe(Architecture):
    """OlmoeForCausalLM (OLMoE-1B-7B): q and k RMS-normed over the whole projections before the NEOX
    rotation (HF's row order kept), experts in every block (OLMoE's ``intermediate_size`` is their
    width), an output matrix of its own."""

    hf_names = ("OlmoeForCausalLM",)
    gguf_arch = "olmoe"
    rules = (
        *_llama_rules(permute=False, biases="", ffn="qwen-moe"),
        TensorRule(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("q",)),
        TensorRule(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("kv",)),
    )
    default_ctx = 4096  # transformers' OlmoeConfig
    default_rms_eps = 1e-5
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json (TextModel.set_vocab)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        _no_renorm(self, config_path)
        if self.n_head_kv != self.n_head or self.head_dim * self.n_head != self.n_embd:
            raise ConvertError(
                f"{config_path}: llama.cpp's olmoe needs num_key_value_heads = num_attention_heads and a "
                "head size of hidden_size / num_attention_heads (its q and k norms are both hidden_size "
                f"wide); got {self.n_head_kv} key/value heads of {self.n_head}, head size {self.head_dim}"
            )
        if cfg.get("clip_qkv") is not None:
            raise ConvertError(
                f"{config_path}: 'clip_qkv' is {cfg['clip_qkv']!r}: llama.cpp's olmoe does not clip"
            )
        if self.tied:
            raise ConvertError(
                f"{config_path}: 'tie_word_embeddings' is true, but llama.cpp's olmoe needs an output "
                "matrix of its own"
            )
        if _flag(cfg, "attention_bias", config_path):
            raise ConvertError(f"{config_path}: 'attention_bias' is true: llama.cpp's olmoe has no biases")

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "num_experts", "intermediate_size")

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        _expert_counts(w, self)


class GraniteMoe(Granite):
    """GraniteMoeForCausalLM and GraniteMoeSharedForCausalLM (granite-3.x-1b-a400m / 3b-a800m):
    Granite's multipliers with experts in every block, routed by the softmax of the top k router
    logits (llama.cpp: the renormalized softmax); q/k rows permuted for the llama-style rope."""

    hf_names = ("GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM")
    gguf_arch = "granitemoe"
    rules = (
        *(r for r in _llama_rules(permute=True, biases="optional") if ".mlp." not in r.hf),
        TensorRule(L + "block_sparse_moe.router.layer.weight", B + "ffn_gate_inp.weight",
                   ("n_expert", "embd")),
        # (split into ffn_gate_exps and ffn_up_exps by plan)
        TensorRule(L + "block_sparse_moe.input_linear.weight", B + "ffn_gate_exps.weight",
                   ("n_expert", "ff_exp2", "embd")),
        TensorRule(L + "block_sparse_moe.output_linear.weight", B + "ffn_down_exps.weight",
                   ("n_expert", "embd", "ff_exp")),
    )  # fmt: skip
    shared_rules: ClassVar[tuple[TensorRule, ...]] = (
        TensorRule(L + "shared_mlp.input_linear.weight", B + "ffn_gate_shexp.weight", ("ff_sh2", "embd")),
        TensorRule(L + "shared_mlp.output_linear.weight", B + "ffn_down_shexp.weight", ("embd", "ff_sh")),
    )
    # the fused tensors (gate rows, then up rows) and where their second halves go
    halves: ClassVar[dict[str, str]] = {"ffn_gate_exps.weight": "ffn_up_exps.weight",
                                        "ffn_gate_shexp.weight": "ffn_up_shexp.weight"}  # fmt: skip

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        # Granite's checks refuse experts (dense granite has none): they are read here
        self.moe_cfg = cfg
        super().__init__({k: v for k, v in cfg.items() if k != "num_local_experts"}, config_path)
        shared = cfg.get("shared_intermediate_size", 0)
        if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0:
            raise ConvertError(
                f"{config_path}: 'shared_intermediate_size' must be an integer >= 0, got {shared!r}"
            )
        self.n_ff_shexp = shared  # 0: no shared expert (transformers' GraniteMoeSharedMoE)

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.moe_cfg, config_path, "num_local_experts", "intermediate_size")

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_exp2": 2 * self.n_ff_exp, "ff_sh": self.n_ff_shexp,
                "ff_sh2": 2 * self.n_ff_shexp}  # fmt: skip

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        return (*self.rules, *(self.shared_rules if self.n_ff_shexp else ())), self.ignored

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        out = []
        for s in super().plan(available, where, files):
            second = next((v for k, v in self.halves.items() if s.gguf_name.endswith(k)), None)
            if second is None:
                out.append(s)
                continue
            half = (*s.shape[:-2], s.shape[-2] // 2, s.shape[-1])
            up = s.gguf_name.rsplit(".", 2)[0] + "." + second
            out += [PlannedSource(s.gguf_name, half, s.hf_name, "first_half"),
                    PlannedSource(up, half, s.hf_name, "second_half")]  # fmt: skip
        return out

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        def rows(w: Any, first: bool) -> Any:
            n = w.shape[-2] // 2
            return np.ascontiguousarray(w[..., :n, :] if first else w[..., n:, :])

        return {**super().transforms(), "first_half": lambda w: rows(w, True),
                "second_half": lambda w: rows(w, False)}  # fmt: skip

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        _expert_counts(w, self)

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        if self.n_ff_shexp:
            w.add_expert_shared_feed_forward_length(self.n_ff_shexp)
