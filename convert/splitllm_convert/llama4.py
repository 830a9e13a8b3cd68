"""Llama 4 (Scout, Maverick): Llama4ForCausalLM and Llama4ForConditionalGeneration's text model, as
llama.cpp's Llama4Model (conversion/llama.py) writes them: the ``llama4`` architecture, q/k rows as
they are (the interleaved rotation), feed_forward_length the dense blocks' width
(``intermediate_size_mlp``), expert_feed_forward_length the experts' (``intermediate_size``),
interleave_moe_layer_step; each expert block's fused ``gate_up_proj`` (n_expert, hidden, 2 ff; gate
columns first) written as ffn_gate_exps and ffn_up_exps (n_expert, ff, hidden), ``down_proj``
transposed; llama3 rope scaling as rope_freqs. The vision tower and projector are left out
(llama.cpp writes them to an mmproj file).

config.json is read as transformers' Llama4TextConfig reads it (its defaults where keys are left
out). What llama.cpp's graph would run differently from transformers is refused, nothing written:
its chunk (8192 positions), the NoPE layers' temperature (floor 8192, scale 0.1, always on) and
every fourth layer without rotation are constants there; it L2-norms q / k unless the model has 128
experts; it has experts in every interleave_moe_layer_step-th block only, and no attention biases.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from gguf import GGUFWriter

from splitllm_convert import packed_experts
from splitllm_convert.arch import Array, Llama, PlannedSource, TensorRule, _require, text_config
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import Olmo2, _flag

_CHUNK, _FLOOR, _SCALE = 8192, 8192, 0.1  # llama.cpp's llama4 constants
_NOPE_STEP = 4


# A block's tensors: HF name (after the layer's prefix), GGUF name, HF shape (, transform)
_ATTN = (
    ("input_layernorm.weight", "attn_norm.weight", ("embd",)),
    ("self_attn.q_proj.weight", "attn_q.weight", ("q", "embd")),
    ("self_attn.k_proj.weight", "attn_k.weight", ("kv", "embd")),
    ("self_attn.v_proj.weight", "attn_v.weight", ("kv", "embd")),
    ("self_attn.o_proj.weight", "attn_output.weight", ("embd", "q")),
    ("post_attention_layernorm.weight", "ffn_norm.weight", ("embd",)),
)
_F = "feed_forward."
_MOE = (
    (_F + "router.weight", "ffn_gate_inp.weight", ("n_expert", "embd")),
    # (split into ffn_gate_exps and ffn_up_exps, down_proj transposed: packed_experts)
    (_F + "experts.gate_up_proj", "ffn_gate_exps.weight", packed_experts.GATE_UP, "gate_up"),
    (_F + "experts.down_proj", "ffn_down_exps.weight", packed_experts.DOWN, "t"),
    (_F + "shared_expert.gate_proj.weight", "ffn_gate_shexp.weight", ("ff_exp", "embd")),
    (_F + "shared_expert.up_proj.weight", "ffn_up_shexp.weight", ("ff_exp", "embd")),
    (_F + "shared_expert.down_proj.weight", "ffn_down_shexp.weight", ("embd", "ff_exp")),
)
_DENSE = (
    (_F + "gate_proj.weight", "ffn_gate.weight", ("ff", "embd")),
    (_F + "up_proj.weight", "ffn_up.weight", ("ff", "embd")),
    (_F + "down_proj.weight", "ffn_down.weight", ("embd", "ff")),
)


class Llama4(Llama):
    """Llama4ForCausalLM (the decoder under ``model.``) and Llama4ForConditionalGeneration (under
    ``language_model.model.`` or ``model.language_model.``, ``text_config`` merged over the top
    level)."""

    hf_names = ("Llama4ForCausalLM", "Llama4ForConditionalGeneration")
    gguf_arch = "llama4"
    space_prefix_key = False
    default_ctx = 131072  # transformers' Llama4TextConfig
    default_rope_theta = 500000.0
    default_rms_eps = 1e-5
    skipped = (
        "vision_model.",
        "multi_modal_projector.",
        "model.vision_model.",
        "model.multi_modal_projector.",
    )
    layouts = (("model.", "lm_head.weight"), ("language_model.model.", "language_model.lm_head.weight"),
               ("model.language_model.", "lm_head.weight"))  # fmt: skip
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json (Llama4Model: _set_vocab_gpt2)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        if "text_config" in cfg:
            cfg = {**cfg, **text_config(cfg, config_path)}
        # (llama.cpp's Llama4Model: intermediate_size_mlp the dense width, intermediate_size the experts')
        widths = {"intermediate_size": _require(cfg, "intermediate_size_mlp", config_path),
                  "intermediate_size_moe": cfg.get("intermediate_size")}  # fmt: skip
        super().__init__({**cfg, **widths}, config_path)
        self.moe_step = cfg.get("interleave_moe_layer_step", 1)
        if not isinstance(self.moe_step, int) or isinstance(self.moe_step, bool) or self.moe_step < 0:
            raise ConvertError(
                f"{config_path}: 'interleave_moe_layer_step' must be an integer >= 0, got {self.moe_step!r}"
            )
        self._check(cfg, config_path)

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        n = _require(self.cfg, "num_local_experts", config_path)
        used = _require(self.cfg, "num_experts_per_tok", config_path)
        if used > n:
            raise ConvertError(
                f"{config_path}: num_experts_per_tok {used} is more than num_local_experts {n}"
            )
        return n, used, _require(self.cfg, "intermediate_size_moe", config_path)

    def moe(self, bid: int) -> bool:
        return self.moe_step > 0 and (bid + 1) % self.moe_step == 0

    @property
    def chunked(self) -> bool:  # (MobileLLM-style: every layer full attention, no chunks)
        types = self.cfg.get("layer_types")
        return not (isinstance(types, list) and types and all(t == "full_attention" for t in types))

    def _check(self, cfg: dict[str, Any], path: Path) -> None:
        def refuse(key: str, why: str) -> None:
            raise ConvertError(f"{path}: '{key}' is {cfg.get(key)!r}: {why}")

        moe_layers = cfg.get("moe_layers")
        if moe_layers is not None and list(moe_layers) != [b for b in range(self.n_layer) if self.moe(b)]:
            refuse("moe_layers", "llama.cpp has experts in every interleave_moe_layer_step-th block only")
        if _flag(cfg, "attention_bias", path):
            refuse("attention_bias", "llama.cpp's llama4 has no attention biases")
        if bool(cfg.get("use_qk_norm", True)) != (self.n_expert != 128):
            refuse("use_qk_norm", f"llama.cpp L2-norms q and k {'not ' if self.n_expert == 128 else ''}with "
                   f"{self.n_expert} experts")  # fmt: skip
        if not self.chunked:
            return
        nope = cfg.get("no_rope_layers")
        want = [int((b + 1) % _NOPE_STEP != 0) for b in range(self.n_layer)]
        if nope and list(nope) != want:
            refuse("no_rope_layers", f"llama.cpp leaves every {_NOPE_STEP}th layer unrotated ({want})")
        types = cfg.get("layer_types")
        if types and [t == "chunked_attention" for t in types] != [bool(x) for x in want]:
            refuse("layer_types", "llama.cpp chunks the rotated layers' attention, the others see everything")
        for key, value in (("attention_chunk_size", _CHUNK), ("floor_scale", _FLOOR), ("attn_scale", _SCALE)):
            if cfg.get(key, value) != value:
                refuse(key, f"llama.cpp's llama4 takes {value}")
        if not _flag({"attn_temperature_tuning": True, **cfg}, "attn_temperature_tuning", path):
            refuse("attn_temperature_tuning", "llama.cpp always scales the unrotated layers' queries")

    # -- tensors ---------------------------------------------------------------------------

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_exp2": 2 * self.n_ff_exp}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        prefix, lm_head = next(
            (lay for lay in self.layouts if lay[0] + "embed_tokens.weight" in available), self.layouts[0]
        )
        rules = [TensorRule(prefix + "embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
                 TensorRule(prefix + "norm.weight", "output_norm.weight", ("embd",)),
                 TensorRule(lm_head, "output.weight", ("vocab", "embd"))]  # fmt: skip
        for bid in range(self.n_layer):
            p, b = f"{prefix}layers.{bid}.", f"blk.{bid}."
            layer = (*_ATTN, *(_MOE if self.moe(bid) else _DENSE))
            rules += [TensorRule(p + r[0], b + r[1], *r[2:]) for r in layer]
        return tuple(rules), (prefix + "layers.{bid}.self_attn.rotary_emb.inv_freq",)

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        return packed_experts.split(self, super().plan(available, where, files))

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return packed_experts.transforms(self.n_ff_exp)

    # -- metadata --------------------------------------------------------------------------

    def adjust_vocab(self, vocab: Any) -> None:
        """None (Llama4Model's _set_vocab_gpt2, not LlamaModel's fix-ups)."""

    def add_expert_hparams(self, w: GGUFWriter) -> None:  # (TextModel's)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        w.add_interleave_moe_layer_step(self.moe_step)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        if not self.chunked:
            w.add_sliding_window(0)
