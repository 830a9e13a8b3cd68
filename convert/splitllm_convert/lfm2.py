"""LFM2 (Lfm2ForCausalLM, LiquidAI's LFM2-350M ... 2.6B): gated short-convolution layers and GQA
attention layers, ``layer_types`` saying which; written as llama.cpp's LFM2Model
(conversion/lfm2.py) writes it: head_count_kv per layer (0 for a convolution layer),
shortconv.l_cache, the feed-forward width after LFM2's own adjustment, the Conv1d kernels
squeezed to (hidden_size, conv_L_cache) and kept F32, the final norm as token_embd_norm.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gguf import GGUFWriter

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _positive, _require
from splitllm_convert.errors import ConvertError
from splitllm_convert.quant_rules import HParams

_L, _B = "model.layers.{bid}.", "blk.{bid}."
_CONV = "conv"
_ATTN = "full_attention"


def _ff_width(cfg: dict[str, Any], path: Path) -> int:
    """LFM2Model._add_feed_forward_length: block_ff_dim (or intermediate_size), with
    block_auto_adjust_ff_dim two thirds of it, times block_ffn_dim_multiplier, rounded up to
    block_multiple_of."""
    key = "block_ff_dim" if "block_ff_dim" in cfg else "intermediate_size"
    ff = _require(cfg, key, path)
    if not cfg.get("block_auto_adjust_ff_dim", False):
        return ff
    ff = int(2 * ff / 3)
    if cfg.get("block_ffn_dim_multiplier") is not None:
        ff = int(_positive(cfg, "block_ffn_dim_multiplier", path) * ff)
    multiple = _require(cfg, "block_multiple_of", path)
    return multiple * ((ff + multiple - 1) // multiple)


def check_layer_kinds(
    by_kind: dict[str, Sequence[TensorRule]],
    kinds: Sequence[str],
    available: Collection[str],
    where: Callable[[str], str],
) -> None:
    """Each layer's tensors are those of its kind (``kinds``: one per layer, as ``layer_types``
    says): every required rule of its kind present, none of another kind's."""
    for bid, kind in enumerate(kinds):
        for other, rules in by_kind.items():
            for r in rules:
                name = r.hf.format(bid=bid)
                if other == kind and r.required and name not in available:
                    raise ConvertError(f"tensor {name!r} of {kind} layer {bid} is missing")
                if other != kind and name in available:
                    raise ConvertError(
                        f"tensor {name!r} in {where(name)} belongs to a {other} layer, but 'layer_types' "
                        f"makes layer {bid} a {kind} layer"
                    )


class Lfm2(Architecture):
    """Lfm2ForCausalLM. A layer is either attention (q/k/v/out_proj, per-head q/k layernorms, NEOX
    rotation: HF's row order kept) or a short convolution (in_proj -> B, C, x; a depthwise Conv1d
    of conv_L_cache taps; out_proj); every layer has operator_norm, ffn_norm and the SwiGLU
    feed_forward (w1 gate, w3 up, w2 down)."""

    hf_names = ("Lfm2ForCausalLM", "LFM2ForCausalLM")
    gguf_arch = "lfm2"
    common = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(_L + "operator_norm.weight", _B + "attn_norm.weight", ("embd",)),
        TensorRule(_L + "ffn_norm.weight", _B + "ffn_norm.weight", ("embd",)),
        TensorRule(_L + "feed_forward.w1.weight", _B + "ffn_gate.weight", ("ff", "embd")),
        TensorRule(_L + "feed_forward.w3.weight", _B + "ffn_up.weight", ("ff", "embd")),
        TensorRule(_L + "feed_forward.w2.weight", _B + "ffn_down.weight", ("embd", "ff")),
        TensorRule("model.embedding_norm.weight", "token_embd_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )
    by_type = {
        _ATTN: (
            TensorRule(_L + "self_attn.q_proj.weight", _B + "attn_q.weight", ("q", "embd")),
            TensorRule(_L + "self_attn.k_proj.weight", _B + "attn_k.weight", ("kv", "embd")),
            TensorRule(_L + "self_attn.v_proj.weight", _B + "attn_v.weight", ("kv", "embd")),
            TensorRule(_L + "self_attn.out_proj.weight", _B + "attn_output.weight", ("embd", "q")),
            TensorRule(_L + "self_attn.q_layernorm.weight", _B + "attn_q_norm.weight", ("head",)),
            TensorRule(_L + "self_attn.k_layernorm.weight", _B + "attn_k_norm.weight", ("head",)),
        ),
        _CONV: (
            TensorRule(_L + "conv.in_proj.weight", _B + "shortconv.in_proj.weight", ("bcx", "embd")),
            TensorRule(_L + "conv.conv.weight", _B + "shortconv.conv.weight", ("embd", "one", "l_cache"),
                       "squeeze"),
            TensorRule(_L + "conv.out_proj.weight", _B + "shortconv.out_proj.weight", ("embd", "embd")),
        ),
    }
    # every rule is checked per layer in plan(), by the layer's type
    rules = (*common, *(TensorRule(r.hf, r.gguf, r.shape, r.transform, required=False)
                        for rs in by_type.values() for r in rs))
    default_ctx = 128000
    default_rope_theta = 1_000_000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        # transformers' Lfm2Config: tie_embedding (True) ties lm_head; norm_eps
        cfg = {**cfg, "intermediate_size": _ff_width(cfg, config_path)}
        cfg.setdefault("tie_word_embeddings", cfg.get("tie_embedding", True))
        super().__init__(cfg, config_path)
        types = cfg.get("layer_types")
        if types is None and isinstance(cfg.get("full_attn_idxs"), list):  # (the older form)
            types = [_ATTN if i in cfg["full_attn_idxs"] else _CONV for i in range(self.n_layer)]
        if not isinstance(types, list) or len(types) != self.n_layer or not set(types) <= {_ATTN, _CONV}:
            raise ConvertError(
                f"{config_path}: 'layer_types' must list {self.n_layer} entries, each 'conv' or "
                f"'full_attention', got {types!r:.200}"
            )
        self.layer_types: list[str] = types
        self.l_cache = _require(cfg, "conv_L_cache", config_path)
        if cfg.get("conv_bias"):
            raise ConvertError(f"{config_path}: 'conv_bias' is true: llama.cpp's lfm2 has no conv biases")
        if (kind := self.rope["rope_type"]) != "default":
            raise ConvertError(f"{config_path}: rope scaling {kind!r} is not supported for lfm2")
        if self.head_dim * self.n_head != self.n_embd:
            raise ConvertError(
                f"{config_path}: head size {self.head_dim} times {self.n_head} heads is not hidden_size "
                f"{self.n_embd}, as llama.cpp's lfm2 needs"
            )

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "bcx": 3 * self.n_embd, "one": 1, "l_cache": self.l_cache}

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return {"squeeze": lambda w: w.reshape(w.shape[0], w.shape[-1])}  # (hidden, 1, L) -> (hidden, L)

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        check_layer_kinds(self.by_type, self.layer_types, available, where)
        out = super().plan(available, where, files)
        return [replace(s, shape=(self.n_embd, self.l_cache)) if s.transform == "squeeze" else s for s in out]

    def head_count_kv(self) -> list[int]:
        return [0 if t == _CONV else self.n_head_kv for t in self.layer_types]

    def hparams(self) -> HParams:
        """(llama.cpp's quantizer reads layer 0's head_count_kv: 0 for a convolution layer)"""
        return HParams.of(self.gguf_arch, self.n_layer, self.n_head, self.head_count_kv()[0], 0)

    def add_hparams(self, w: GGUFWriter) -> None:
        """TextModel's keys (the feed-forward width already LFM2's), then LFM2Model's."""
        w.add_block_count(self.n_layer)
        w.add_context_length(int(self.cfg.get("max_position_embeddings", self.default_ctx)))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.head_count_kv())
        w.add_rope_freq_base(self.rope_theta())
        w.add_layer_norm_rms_eps(float(self.cfg.get("norm_eps", 1e-5)))
        w.add_vocab_size(self.n_vocab)
        w.add_shortconv_l_cache(self.l_cache)
