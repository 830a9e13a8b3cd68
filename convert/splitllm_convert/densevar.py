"""Seed-OSS, Apertus, Hunyuan dense, AFM (Arcee) and StarCoder2: the tables and metadata of
llama.cpp's SeedOssModel, ApertusModel, HunYuanModel, ArceeModel and StarCoder2Model
(convert_hf_to_gguf.py), written as its ``seed_oss``, ``apertus``, ``hunyuan-dense``, ``arcee``
and ``starcoder2`` architectures.

What llama.cpp would run differently from transformers (or not load) is refused rather than written:

- seed_oss: ``attention_out_bias`` (llama.cpp's seed_oss reads no attn_output.bias), ``mlp_bias``.
- apertus: another activation than xIELU; a partial rotation.
- hunyuan-dense: experts; ``attention_bias`` (no attn_output.bias in llama.cpp's graph); NTK-alpha
  ("dynamic") rotary scaling other than llama.cpp's converter assumes (rope_theta 10000, a context
  of 32K or 256K); no tokenizer.json (the tiktoken vocabulary).
- arcee: ``attention_bias`` (llama.cpp's arcee reads no attn_output.bias), ``mlp_bias``.
- starcoder2: ``use_bias`` false (llama.cpp requires every bias), a partial rotation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from gguf import GGUFWriter, RopeScalingType

from splitllm_convert import hfdir
from splitllm_convert.arch import Architecture, Llama, TensorRule
from splitllm_convert.dense import _ATTN, _MLP, _OUTER, _QKV_BIASES, _rules
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import _flag
from splitllm_convert.vocab import Vocab

_O_BIAS = _rules(("self_attn.o_proj.bias", "attn_output.bias", ("embd",)), required=False)
_UNGATED = _rules(("mlp.up_proj.weight", "ffn_up.weight", ("ff", "embd")),
                  ("mlp.down_proj.weight", "ffn_down.weight", ("embd", "ff")))  # fmt: skip


def _refuse(arch: Architecture, path: Path, keys: tuple[str, ...], why: str) -> None:
    for key in keys:
        if _flag(arch.cfg, key, path):
            raise ConvertError(f"{path}: '{key}' is true: {why}")


def _whole_heads(arch: Architecture, path: Path) -> None:
    for key in ("partial_rotary_factor", "rotary_pct"):
        v = arch.cfg.get(key, arch.rope.get(key, 1.0))
        if v not in (None, 1, 1.0):
            raise ConvertError(f"{path}: '{key}' is {v!r}: llama.cpp's {arch.gguf_arch} rotates whole heads")


class SeedOss(Architecture):
    """SeedOssForCausalLM (Seed-OSS-36B): llama's layers with q/k/v biases, the NEOX rotation (HF's
    q/k rows as they are), the feed-forward's norm written as post_attention_norm."""

    hf_names = ("SeedOssForCausalLM",)
    gguf_arch = "seed_oss"
    rules = (
        _OUTER[0], *_rules(("input_layernorm.weight", "attn_norm.weight", ("embd",))), *_ATTN, *_QKV_BIASES,
        *_rules(("post_attention_layernorm.weight", "post_attention_norm.weight", ("embd",))),
        *_MLP, *_OUTER[1:],
    )  # fmt: skip
    default_ctx = 524288  # transformers' SeedOssConfig
    default_rope_theta = 10_000_000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        _refuse(self, config_path, ("attention_out_bias", "mlp_bias"),
                "llama.cpp's seed_oss has no attention output or feed-forward biases")  # fmt: skip
        _whole_heads(self, config_path)


class Apertus(Llama):
    """ApertusForCausalLM: each query and key head RMS-normed, the NEOX rotation (HF's rows as they
    are: llama.cpp's ApertusModel does not permute), an ungated xIELU feed-forward whose per-layer
    parameters (mlp.act_fn.alpha_p / alpha_n / beta / eps, raw) are written as the xielu.* arrays;
    Llama 3 rope scaling as rope_freqs."""

    hf_names = ("ApertusForCausalLM",)
    gguf_arch = "apertus"
    rules = (
        _OUTER[0], *_rules(("attention_layernorm.weight", "attn_norm.weight", ("embd",))),
        *_ATTN, *_QKV_BIASES, *_O_BIAS,
        *_rules(("self_attn.q_norm.weight", "attn_q_norm.weight", ("head",)),
                ("self_attn.k_norm.weight", "attn_k_norm.weight", ("head",)),
                ("feedforward_layernorm.weight", "ffn_norm.weight", ("embd",))),
        *_UNGATED, *_OUTER[1:],
    )  # fmt: skip
    xielu_keys: ClassVar[tuple[str, ...]] = ("alpha_n", "alpha_p", "beta", "eps")
    ignored = (*Architecture.ignored, *(f"model.layers.{{bid}}.mlp.act_fn.{k}" for k in xielu_keys))
    default_ctx = 65536
    default_rope_theta = 12_000_000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if cfg.get("hidden_act", "xielu") != "xielu":
            raise ConvertError(
                f"{config_path}: 'hidden_act' is {cfg['hidden_act']!r}: llama.cpp's apertus runs xIELU"
            )
        _whole_heads(self, config_path)
        self.xielu: dict[str, list[float]] = {}

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        return {}

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        """(also reads the xIELU parameters, which llama.cpp writes as metadata: one per layer)"""
        entries = hfdir.index_tensors(model_dir)
        for key in self.xielu_keys:
            values = []
            for bid in range(self.n_layer):
                name = f"model.layers.{bid}.mlp.act_fn.{key}"
                if name not in entries:
                    raise ConvertError(f"tensor {name!r} (xielu.{key}) is missing from {model_dir}")
                x = hfdir.read_f32(entries[name]).reshape(-1)
                if x.size != 1:
                    raise ConvertError(f"tensor {name!r} has {x.size} values, expected 1")
                values.append(float(x[0]))
            self.xielu[key] = values
        return super().read_vocab(model_dir, pre)

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        for key in self.xielu_keys:
            getattr(w, f"add_xielu_{key}")(self.xielu[key])


class HunyuanDense(Architecture):
    """HunYuanDenseV1ForCausalLM (Hunyuan 0.5B-7B dense): query and key heads RMS-normed after the
    NEOX rotation (query_layernorm / key_layernorm); NTK-alpha ("dynamic" with alpha) scaling written
    as llama.cpp's HunYuanModel does: the base times alpha^(d / (d - 2)), scaling type none, factor 1,
    a context of 256K; eod_token_id as eos, generation_config.json's first eos as eot."""

    hf_names = ("HunYuanDenseV1ForCausalLM",)
    gguf_arch = "hunyuan-dense"
    rules = (
        _OUTER[0], *_rules(("input_layernorm.weight", "attn_norm.weight", ("embd",))), *_ATTN, *_QKV_BIASES,
        *_rules(("self_attn.query_layernorm.weight", "attn_q_norm.weight", ("head",)),
                ("self_attn.key_layernorm.weight", "attn_k_norm.weight", ("head",)),
                ("post_attention_layernorm.weight", "ffn_norm.weight", ("embd",))),
        *_MLP, *_OUTER[1:],
    )  # fmt: skip
    default_ctx = 32768
    lcpp_ctx: ClassVar[tuple[int, ...]] = (32 * 1024, 256 * 1024)  # what the converter asserts

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        if (cfg.get("num_experts") or 0) > 1:
            raise ConvertError(f"{config_path}: 'num_experts' is {cfg['num_experts']!r}: a Hunyuan MoE model "
                               "(hunyuan-moe) is not supported")  # fmt: skip
        super().__init__(cfg, config_path)
        _refuse(
            self, config_path, ("attention_bias",), "llama.cpp's hunyuan-dense has no attention output bias"
        )
        _refuse(self, config_path, ("mlp_bias",), "llama.cpp's hunyuan-dense has no feed-forward biases")
        self.alpha = None
        if self.rope["rope_type"] == "dynamic":
            self.alpha = float(self.rope.get("alpha", 50))
            ctx = cfg.get("max_position_embeddings")
            if self.rope_theta() != 10000.0 or ctx not in self.lcpp_ctx:
                raise ConvertError(
                    f"{config_path}: NTK-alpha rope scaling with rope_theta {self.rope_theta()} and "
                    f"max_position_embeddings {ctx!r}: llama.cpp's HunYuanModel assumes 10000 and 32K or 256K"
                )
            d = self.head_dim  # (written as the base and context_length)
            self.cfg = {**self.cfg, "rope_theta": self.rope_theta() * self.alpha ** (d / (d - 2)),
                        "max_position_embeddings": 256 * 1024}  # fmt: skip
        elif self.rope["rope_type"] != "default":
            raise ConvertError(f"{config_path}: rope scaling {self.rope['rope_type']!r} is not supported for "
                               "hunyuan-dense (default or dynamic with alpha)")  # fmt: skip

    def _rope_params(self, config_path: Path) -> dict[str, Any]:
        """(NTK alpha, "dynamic", is written here: the base class's warning that it is not, left out)"""
        rope = self.cfg.get("rope_parameters") or self.cfg.get("rope_scaling") or {}
        if isinstance(rope, dict) and str(rope.get("rope_type", rope.get("type", ""))).lower() == "dynamic":
            return {**rope, "rope_type": "dynamic"}
        return super()._rope_params(config_path)

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        if self.alpha is None:
            return
        w.add_rope_scaling_type(RopeScalingType.NONE)
        w.add_rope_scaling_factor(1)
        w.add_rope_scaling_orig_ctx_len(256 * 1024)

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        if not (model_dir / "tokenizer.json").is_file():
            raise ConvertError(
                f"{model_dir}: no tokenizer.json (Hunyuan's tiktoken vocabulary is not supported)"
            )
        vocab = super().read_vocab(model_dir, pre)
        eod = self.cfg.get("eod_token_id")
        if isinstance(eod, int) and not isinstance(eod, bool):
            vocab.special_ids["eos"] = eod
        gen = model_dir / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
            if isinstance(eos, list) and len(eos) >= 2:
                vocab.special_ids["eot"] = int(eos[0])
        return vocab


class Arcee(Llama):
    """ArceeForCausalLM (AFM-4.5B): llama's attention (q/k rows permuted for GGML's rope) and an
    ungated ReLU-squared feed-forward (mlp.up_proj, mlp.down_proj)."""

    hf_names = ("ArceeForCausalLM",)
    gguf_arch = "arcee"
    rules = tuple(r for r in Llama.rules if "gate_proj" not in r.hf and "o_proj.bias" not in r.hf)
    default_ctx = 4096

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        _refuse(self, config_path, ("attention_bias", "mlp_bias"),
                "llama.cpp's arcee has no attention output or feed-forward biases")  # fmt: skip
        if cfg.get("hidden_act", "relu2") != "relu2":
            raise ConvertError(
                f"{config_path}: 'hidden_act' is {cfg['hidden_act']!r}: llama.cpp's arcee runs relu2"
            )


class Starcoder2(Architecture):
    """Starcoder2ForCausalLM: LayerNorms with biases (norm_epsilon), biases on every projection, an
    ungated GELU feed-forward (mlp.c_fc, mlp.c_proj), the NEOX rotation (HF's rows as they are),
    embeddings tied unless lm_head.weight is there."""

    hf_names = ("Starcoder2ForCausalLM",)
    gguf_arch = "starcoder2"
    rules = (
        _OUTER[0],
        *_rules(("input_layernorm.weight", "attn_norm.weight", ("embd",)),
                ("input_layernorm.bias", "attn_norm.bias", ("embd",))),
        *_ATTN,
        *_rules(("self_attn.q_proj.bias", "attn_q.bias", ("q",)),
                ("self_attn.k_proj.bias", "attn_k.bias", ("kv",)),
                ("self_attn.v_proj.bias", "attn_v.bias", ("kv",)),
                ("self_attn.o_proj.bias", "attn_output.bias", ("embd",)),
                ("post_attention_layernorm.weight", "ffn_norm.weight", ("embd",)),
                ("post_attention_layernorm.bias", "ffn_norm.bias", ("embd",)),
                ("mlp.c_fc.weight", "ffn_up.weight", ("ff", "embd")),
                ("mlp.c_fc.bias", "ffn_up.bias", ("ff",)),
                ("mlp.c_proj.weight", "ffn_down.weight", ("embd", "ff")),
                ("mlp.c_proj.bias", "ffn_down.bias", ("embd",))),
        _OUTER[1], TensorRule("model.norm.bias", "output_norm.bias", ("embd",)), _OUTER[2],
    )  # fmt: skip
    default_ctx = 4096
    default_rope_theta = 10000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        cfg = {"tie_word_embeddings": True, **cfg}  # (transformers' Starcoder2Config)
        super().__init__(cfg, config_path)
        if not cfg.get("use_bias", True):
            raise ConvertError(
                f"{config_path}: 'use_bias' is false: llama.cpp's starcoder2 requires every bias"
            )
        if cfg.get("hidden_act", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise ConvertError(f"{config_path}: 'hidden_act' is {cfg['hidden_act']!r}: llama.cpp's "
                               "starcoder2 "
                               "runs the tanh-approximated GELU")  # fmt: skip
        _whole_heads(self, config_path)

    def add_norm_eps(self, w: GGUFWriter) -> None:
        w.add_layer_norm_eps(float(self.cfg.get("norm_epsilon", 1e-5)))
