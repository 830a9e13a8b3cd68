"""SmolLM3, Granite (3.x, dense) and OLMo 2: llama-like decoders that llama.cpp runs as its
``smollm3``, ``granite`` and ``olmo2`` architectures, with the tables and metadata of its
SmolLM3Model, GraniteModel and Olmo2Model (convert_hf_to_gguf.py).

config.json is read as llama.cpp's converter reads it, through transformers' AutoConfig: keys it
leaves out take the config class's defaults (``defaults`` and the class attributes). What llama.cpp
would run differently from transformers is refused rather than written:

- SmolLM3: llama.cpp skips the rotation on every fourth layer whatever ``no_rope_layers`` says, and
  has no sliding window, no biases and no rope_freqs tensor.
- Granite: llama.cpp ignores ``head_dim`` (its head size is hidden_size / num_attention_heads); the
  experts of GraniteMoe are another architecture; splitllm has no feed-forward biases.
- OLMo 2: llama.cpp's olmo2 has no output-projection bias, no tied output, and would apply a
  ``sliding_window`` (OLMo 3's) that transformers' Olmo2 ignores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from gguf import GGUFWriter

from splitllm_convert.arch import Architecture, Llama, TensorRule, _llama_rules, _positive
from splitllm_convert.errors import ConvertError
from splitllm_convert.vocab import Vocab, load_vocab


def _flag(cfg: dict[str, Any], key: str, path: Path) -> bool:
    v = cfg.get(key, False)
    if v is not None and not isinstance(v, bool):
        raise ConvertError(f"{path}: '{key}' must be true or false, got {v!r}")
    return bool(v)


def _common_checks(arch: Architecture, path: Path, *, biases: Sequence[str], why_bias: str) -> None:
    """What none of the three has: experts (GraniteMoe and OLMoE are other architectures in
    llama.cpp), the ``biases`` flags set (``why_bias`` says why), Llama 3 rope scaling (llama.cpp's
    converter cannot write the granite's rope_freqs, and smollm3 / olmo2 do not read it)."""
    for key in ("num_local_experts", "num_experts"):
        if arch.cfg.get(key):
            raise ConvertError(
                f"{path}: '{key}' is {arch.cfg[key]!r}: experts are not supported ({arch.gguf_arch} is dense)"
            )
    for key in biases:
        if _flag(arch.cfg, key, path):
            raise ConvertError(f"{path}: '{key}' is true: {why_bias}")
    if arch.rope["rope_type"] == "llama3":
        raise ConvertError(
            f"{path}: rope scaling type 'llama3' is not supported for {arch.gguf_arch} (llama.cpp's "
            "converter has no rope_freqs tensor for granite; smollm3 and olmo2 do not read it)"
        )


class SmolLM3(Llama):
    """SmolLM3ForCausalLM: a llama (q/k rows permuted for GGML's rope) whose every fourth layer is
    not rotated ("NoPE"), embeddings tied by default. llama.cpp hardcodes that pattern
    (n_no_rope_layer_step = 4) and writes nothing for it: a config whose ``no_rope_layers`` (or
    ``no_rope_layer_interval``) gives another pattern is refused."""

    hf_names = ("SmolLM3ForCausalLM",)
    gguf_arch = "smollm3"
    rules = _llama_rules(permute=True, biases="")
    defaults: ClassVar[dict[str, Any]] = {  # transformers' SmolLM3Config
        "tie_word_embeddings": True, "no_rope_layer_interval": 4, "use_sliding_window": False,
    }  # fmt: skip
    default_ctx = 32768
    default_rope_theta = 2_000_000.0
    lcpp_step: ClassVar[int] = 4  # llama.cpp's n_no_rope_layer_step

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__({**self.defaults, **cfg}, config_path)
        _common_checks(self, config_path, biases=("attention_bias", "mlp_bias"),
                       why_bias="llama.cpp's smollm3 has no biases")  # fmt: skip
        rotated, key = self._rotated_layers(config_path)
        lcpp = [(i + 1) % self.lcpp_step != 0 for i in range(self.n_layer)]
        if rotated != lcpp:
            ours = [i for i, r in enumerate(rotated) if not r]
            theirs = [i for i, r in enumerate(lcpp) if not r]
            raise ConvertError(
                f"{config_path}: '{key}' leaves layers {ours} unrotated; llama.cpp's smollm3 always skips "
                f"the rotation on every {self.lcpp_step}th layer ({theirs}), so this model would not run as "
                "trained"
            )
        self._check_sliding(rotated, config_path)

    def _rotated_layers(self, config_path: Path) -> tuple[list[bool], str]:
        """Which layers transformers rotates, and the key that says so."""
        layers = self.cfg.get("no_rope_layers")
        if layers is None:
            n = self.cfg.get("no_rope_layer_interval")
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ConvertError(
                    f"{config_path}: 'no_rope_layer_interval' must be a positive integer, got {n!r}"
                )
            return [(i + 1) % n != 0 for i in range(self.n_layer)], "no_rope_layer_interval"
        if (
            not isinstance(layers, list)
            or len(layers) < self.n_layer
            or any(v not in (0, 1) or isinstance(v, float) for v in layers)
        ):
            raise ConvertError(
                f"{config_path}: 'no_rope_layers' must list at least {self.n_layer} entries, each 1 "
                f"(rotated) or 0, got {layers!r:.200}"
            )
        return [bool(v) for v in layers[: self.n_layer]], "no_rope_layers"

    def _check_sliding(self, rotated: list[bool], config_path: Path) -> None:
        """transformers' SmolLM3 slides its window on the layers ``layer_types`` names (by default the
        unrotated ones) when use_sliding_window and sliding_window are set; llama.cpp never does."""
        if not _flag(self.cfg, "use_sliding_window", config_path) or self.cfg.get("sliding_window") is None:
            return
        types = self.cfg.get("layer_types")
        if types is None:
            types = ["full_attention" if r else "sliding_attention" for r in rotated]
        if not isinstance(types, list) or "sliding_attention" in types[: self.n_layer]:
            raise ConvertError(
                f"{config_path}: 'use_sliding_window' is true: sliding-window layers are not supported "
                "(llama.cpp's smollm3 attends to the whole context)"
            )


class Granite(Llama):
    """GraniteForCausalLM (Granite 3.x dense): a llama whose embeddings are multiplied by
    embedding_multiplier, branch outputs by residual_multiplier, attention scores by
    attention_multiplier (instead of 1/sqrt(head size)) and logits divided by logits_scaling;
    written as llama.cpp's embedding_scale, residual_scale, attention.scale, logit_scale."""

    hf_names = ("GraniteForCausalLM",)
    gguf_arch = "granite"
    rules = _llama_rules(permute=True, biases="optional")
    # transformers' GraniteConfig: (config key, GGUF key's writer)
    multipliers: ClassVar[tuple[tuple[str, str], ...]] = (
        ("attention_multiplier", "add_attention_scale"), ("embedding_multiplier", "add_embedding_scale"),
        ("residual_multiplier", "add_residual_scale"), ("logits_scaling", "add_logit_scale"),
    )  # fmt: skip

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        cfg = {**{key: 1.0 for key, _ in self.multipliers}, **cfg}
        # GraniteModel.set_gguf_parameters drops head_dim: llama.cpp's head is hidden_size / n_head
        super().__init__({k: v for k, v in cfg.items() if k != "head_dim"}, config_path)
        hd = cfg.get("head_dim")
        if hd is not None and hd != self.head_dim:
            raise ConvertError(
                f"{config_path}: 'head_dim' is {hd!r}, but llama.cpp's granite ignores it and takes "
                f"hidden_size / num_attention_heads = {self.head_dim}"
            )
        _common_checks(self, config_path, biases=("mlp_bias",),
                       why_bias="feed-forward biases are not supported (splitllm has none)")  # fmt: skip
        self.scales = {key: _positive(self.cfg, key, config_path) for key, _ in self.multipliers}

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        for key, add in self.multipliers:
            getattr(w, add)(self.scales[key])


class Olmo2(Architecture):
    """Olmo2ForCausalLM: no norms before attention and feed-forward, RMSNorms after each
    (post_attention_norm, post_ffw_norm), q and k RMS-normed over the whole projections before the
    NEOX rotation (HF's row order kept), an output matrix of its own."""

    hf_names = ("Olmo2ForCausalLM",)
    gguf_arch = "olmo2"
    L, B = "model.layers.{bid}.", "blk.{bid}."
    rules = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", ("q", "embd")),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.v_proj.weight", B + "attn_v.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")),
        TensorRule(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("q",)),
        TensorRule(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("kv",)),
        TensorRule(L + "post_attention_layernorm.weight", B + "post_attention_norm.weight", ("embd",)),
        TensorRule(L + "mlp.gate_proj.weight", B + "ffn_gate.weight", ("ff", "embd")),
        TensorRule(L + "mlp.up_proj.weight", B + "ffn_up.weight", ("ff", "embd")),
        TensorRule(L + "mlp.down_proj.weight", B + "ffn_down.weight", ("embd", "ff")),
        TensorRule(L + "post_feedforward_layernorm.weight", B + "post_ffw_norm.weight", ("embd",)),
        TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )
    del L, B
    default_rms_eps = 1e-5  # transformers' Olmo2Config (context 2048, rope_theta 10000: the base's)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if self.n_embd % self.n_head or self.head_dim != self.n_embd // self.n_head:
            raise ConvertError(
                f"{config_path}: head size {self.head_dim} ('head_dim') is not hidden_size / "
                f"num_attention_heads, the only one llama.cpp's olmo2 knows"
            )
        if self.tied:
            raise ConvertError(
                f"{config_path}: 'tie_word_embeddings' is true, but llama.cpp's olmo2 needs an output "
                "matrix of its own"
            )
        _common_checks(self, config_path, biases=("attention_bias",),
                       why_bias="llama.cpp's olmo2 has no attention output bias")  # fmt: skip
        if self.cfg.get("sliding_window") is not None:
            raise ConvertError(
                f"{config_path}: 'sliding_window' is {self.cfg['sliding_window']!r}: sliding-window layers "
                "(OLMo 3's) are not supported; llama.cpp would apply a window transformers' Olmo2 ignores"
            )

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        """Byte-level BPE from tokenizer.json only (llama.cpp's TextModel.set_vocab)."""
        return load_vocab(model_dir, self.n_vocab, pre=pre, add_prefix_space_key=False, spm=False)
