"""Falcon-H1 (FalconH1ForCausalLM), as llama.cpp's FalconH1Model (conversion/falcon_h1.py, on
Mamba2Model) writes it: every layer input_layernorm, the attention (self_attn, NEOX rotation: HF's
row order kept) and the Mamba-2 mixer (mamba.*, granite_hybrid.Mamba2's tensors) side by side,
pre_ff_layernorm as ``blk.N.ffn_norm`` (gguf-py's name for it, without ``.weight``) and the SwiGLU
feed_forward. Every multiplier folded into the weights: embed_tokens x embedding_multiplier,
lm_head x lm_head_multiplier, q / v x attention_in_multiplier, k x attention_in_multiplier x
key_multiplier, o x attention_out_multiplier, in_proj x ssm_in_multiplier and the rows of z / x /
B / C / dt by ssm_multipliers, out_proj x ssm_out_multiplier, gate / down by mlp_multipliers. The
ssm.* sizes (inner_size mamba_d_ssm, time_step_rank mamba_d_ssm / mamba_d_head), key_length /
value_length head_dim, rope.freq_base rope_theta.

Refused, nothing written: biases (attention_bias, mlp_bias, projectors_bias, mamba_proj_bias), an
activation other than silu, the gated norm before the gate (mamba_norm_before_gate with
mamba_rms_norm), tied embeddings (llama.cpp would reuse the embeddings' multiplier for the logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _positive, _require
from splitllm_convert.errors import ConvertError
from splitllm_convert.granite_hybrid import Mamba2
from splitllm_convert.llama_variants import _flag

_L, _B = "model.layers.{bid}.", "blk.{bid}."
_MULTIPLIERS = (
    "embedding_multiplier", "lm_head_multiplier", "attention_in_multiplier", "attention_out_multiplier",
    "key_multiplier", "ssm_in_multiplier", "ssm_out_multiplier",
)  # fmt: skip
_FLAGS = ("attention_bias", "mlp_bias", "projectors_bias", "mamba_proj_bias", "tie_word_embeddings")


def _floats(cfg: dict[str, Any], key: str, n: int, path: Path) -> list[float]:
    v = cfg.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) for x in v):
        raise ConvertError(f"{path}: '{key}' must list {n} numbers, got {v!r:.200}")
    return [float(x) for x in v]


class FalconH1(Architecture):
    """FalconH1ForCausalLM (see the module's docstring)."""

    hf_names = ("FalconH1ForCausalLM",)
    gguf_arch = "falcon-h1"

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        for key in _FLAGS:
            if _flag(cfg, key, config_path):
                raise ConvertError(f"{config_path}: '{key}' is true: not supported (nor run by llama.cpp as "
                                   "transformers runs it)")  # fmt: skip
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConvertError(f"{config_path}: 'hidden_act' is {cfg['hidden_act']!r}; llama.cpp's is silu")
        self.rms_norm = _flag({"mamba_rms_norm": False, **cfg}, "mamba_rms_norm", config_path)
        if self.rms_norm and _flag(cfg, "mamba_norm_before_gate", config_path):
            raise ConvertError(
                f"{config_path}: 'mamba_norm_before_gate' is true: llama.cpp norms after the gate"
            )
        self.mult = {k: _positive({k: 1.0, **cfg}, k, config_path) for k in _MULTIPLIERS}
        self.mup = _floats({"ssm_multipliers": [1.0] * 5, **cfg}, "ssm_multipliers", 5, config_path)
        self.mlp_mult = _floats({"mlp_multipliers": [1.0] * 2, **cfg}, "mlp_multipliers", 2, config_path)
        self.rope_theta = _positive({"rope_theta": 1e11, **cfg}, "rope_theta", config_path)
        d_inner, d_head = (
            _require(cfg, "mamba_d_ssm", config_path),
            _require(cfg, "mamba_d_head", config_path),
        )
        self.ssm = Mamba2(
            d_conv=_require({"mamba_d_conv": 4, **cfg}, "mamba_d_conv", config_path),
            d_state=_require({"mamba_d_state": 128, **cfg}, "mamba_d_state", config_path),
            n_group=_require({"mamba_n_groups": 1, **cfg}, "mamba_n_groups", config_path),
            heads=d_inner // d_head, d_inner=d_inner,
            conv_bias=_flag({"mamba_conv_bias": True, **cfg}, "mamba_conv_bias", config_path),
        )  # fmt: skip
        self.ssm.check(config_path, d_head)

    @property
    def rules(self) -> tuple[TensorRule, ...]:  # type: ignore[override]
        a, f = _L + "self_attn.", _L + "feed_forward."
        scaled = {"in_proj.weight": "ssm_in", "out_proj.weight": "ssm_out"}
        mamba = tuple(
            replace(r, transform=next((t for n, t in scaled.items() if r.hf.endswith(n)), r.transform))
            for r in self.ssm.rules(_L + "mamba.")
            if self.rms_norm or not r.hf.endswith("norm.weight")
        )
        return (
            TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd"), "embedding"),
            TensorRule(_L + "input_layernorm.weight", _B + "attn_norm.weight", ("embd",)),
            TensorRule(a + "q_proj.weight", _B + "attn_q.weight", ("q", "embd"), "attention_in"),
            TensorRule(a + "k_proj.weight", _B + "attn_k.weight", ("kv", "embd"), "key"),
            TensorRule(a + "v_proj.weight", _B + "attn_v.weight", ("kv", "embd"), "attention_in"),
            TensorRule(a + "o_proj.weight", _B + "attn_output.weight", ("embd", "q"), "attention_out"),
            *mamba,
            TensorRule(_L + "pre_ff_layernorm.weight", _B + "ffn_norm", ("embd",)),
            TensorRule(f + "gate_proj.weight", _B + "ffn_gate.weight", ("ff", "embd"), "gate"),
            TensorRule(f + "up_proj.weight", _B + "ffn_up.weight", ("ff", "embd")),
            TensorRule(f + "down_proj.weight", _B + "ffn_down.weight", ("embd", "ff"), "down"),
            TensorRule("model.final_layernorm.weight", "output_norm.weight", ("embd",)),
            TensorRule("lm_head.weight", "output.weight", ("vocab", "embd"), "lm_head"),
        )

    def dims(self) -> dict[str, int]:
        return {**super().dims(), **self.ssm.dims()}

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        m, s = self.mult, self.ssm
        sizes = (s.d_inner, s.d_inner, s.n_group * s.d_state, s.n_group * s.d_state, s.heads)
        mup = np.repeat(np.array(self.mup), sizes)[:, None] * m["ssm_in_multiplier"]

        def times(k: float) -> Callable[[Any], Any]:
            return lambda w: w * k

        return {
            **s.transforms(),
            "embedding": times(m["embedding_multiplier"]),
            "lm_head": times(m["lm_head_multiplier"]),
            "attention_in": times(m["attention_in_multiplier"]),
            "key": times(m["attention_in_multiplier"] * m["key_multiplier"]),
            "attention_out": times(m["attention_out_multiplier"]),
            "ssm_in": lambda w: w * mup,
            "ssm_out": times(m["ssm_out_multiplier"]),
            "gate": times(self.mlp_mult[0]),
            "down": times(self.mlp_mult[1]),
        }

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        return self.ssm.shaped(super().plan(available, where, files))

    def add_hparams(self, w: GGUFWriter) -> None:
        """Mamba2Model's keys, then those FalconH1Model sets over them."""
        w.add_embedding_length(self.n_embd)
        self.ssm.add_hparams(w)
        w.add_layer_norm_rms_eps(float(self.cfg.get("rms_norm_eps", 1e-5)))
        w.add_vocab_size(self.n_vocab)
        w.add_block_count(self.n_layer)
        w.add_context_length(int(self.cfg.get("max_position_embeddings", 0)))
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_freq_base(self.rope_theta)
