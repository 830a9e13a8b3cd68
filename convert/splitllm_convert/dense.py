"""Ministral 3 / Mistral Small 3.x, GLM-4-0414, EXAONE 4.0 and 3.x, ERNIE-4.5 (dense), Command R7B
and Command-R / R+: the tables and metadata of llama.cpp's Mistral3Model, Glm4Model, Exaone4Model,
ExaoneModel, Ernie4_5Model, Cohere2Model and CommandR2Model (convert_hf_to_gguf.py), written as its
``mistral3``, ``glm4``, ``exaone4``, ``exaone``, ``ernie4_5``, ``cohere2`` and ``command-r``
architectures.

What llama.cpp would run differently from transformers is refused rather than written:

- mistral3: a sliding window (llama.cpp has none), feed-forward biases (splitllm has none).
- glm4: GLM-4V's multimodal rotation (mrope sections).
- exaone4: windows (which also leave the global layers unrotated) on a model of other than 64
  layers: llama.cpp applies them to the 32B's 64 layers only, and on those always.
- ernie4_5: ``use_bias`` (llama.cpp's graph drops the attention output's bias).
- cohere2: biases, an output matrix of its own, a partial rotation, another pattern of sliding
  layers than every fourth layer global (llama.cpp's default; the converter writes no pattern).
- exaone: another activation than silu, a head size other than hidden_size / heads.
- command-r: cohere2's refusals, and use_qk_norm on fewer than 64 layers (or not on 64 or more):
  llama.cpp reads the q/k norms by the model's depth alone.

Qwen3-VL's text model (Qwen3VLForConditionalGeneration) is written as llama.cpp's ``qwen3vl``; its
vision tower goes to llama.cpp's mmproj file and is left out here. A Qwen3-VL reranker is refused.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

from gguf import GGUFWriter, RopeScalingType

from splitllm_convert.arch import (
    Architecture,
    Llama,
    Qwen3,
    TensorRule,
    _llama_rules,
    _positive,
    _require,
    text_config,
)
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import _flag
from splitllm_convert.vocab import Vocab, load_vocab

L, B = "model.layers.{bid}.", "blk.{bid}."


def _rules(*rows: tuple[str, str, tuple[str, ...]], required: bool = True) -> tuple[TensorRule, ...]:
    """Block rows (HF name after ``model.layers.{bid}.``, GGUF name after ``blk.{bid}.``, shape)."""
    return tuple(TensorRule(L + hf, B + g, shape, required=required) for hf, g, shape in rows)


_OUTER = (
    TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
    TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
    TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
)
_ATTN = _rules(
    ("self_attn.q_proj.weight", "attn_q.weight", ("q", "embd")),
    ("self_attn.k_proj.weight", "attn_k.weight", ("kv", "embd")),
    ("self_attn.v_proj.weight", "attn_v.weight", ("kv", "embd")),
    ("self_attn.o_proj.weight", "attn_output.weight", ("embd", "q")),
)
_QKV_BIASES = _rules(
    ("self_attn.q_proj.bias", "attn_q.bias", ("q",)),
    ("self_attn.k_proj.bias", "attn_k.bias", ("kv",)),
    ("self_attn.v_proj.bias", "attn_v.bias", ("kv",)),
    required=False,
)
_MLP = _rules(
    ("mlp.gate_proj.weight", "ffn_gate.weight", ("ff", "embd")),
    ("mlp.up_proj.weight", "ffn_up.weight", ("ff", "embd")),
    ("mlp.down_proj.weight", "ffn_down.weight", ("embd", "ff")),
)


def _moved(arch: Architecture, prefix: str, lm_head: str) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
    """The class's table and ignored names with the decoder under ``prefix`` (a multimodal model's text
    part) instead of ``model.``, and lm_head.weight saved as ``lm_head``."""
    def hf(name: str) -> str:
        return lm_head if name == "lm_head.weight" else prefix + name.removeprefix("model.")

    rules = tuple(TensorRule(hf(r.hf), r.gguf, r.shape, r.transform, r.required) for r in arch.rules)
    return rules, tuple(prefix + n.removeprefix("model.") for n in arch.ignored)


def _refuse_sliding(arch: Architecture, path: Path, why: str) -> None:
    if arch.cfg.get("sliding_window") is not None:
        raise ConvertError(f"{path}: 'sliding_window' is {arch.cfg['sliding_window']!r}: {why}")


class Mistral3(Llama):
    """Ministral3ForCausalLM: a llama (q/k rows permuted for GGML's rope) that llama.cpp writes as
    ``mistral3``; a Ministral 3 (model_type ministral3) adds YaRN's mscale_all_dim as
    rope.scaling.yarn_log_multiplier and Llama 4's attention temperature (llama_4_scaling_beta)
    as attention.temperature_scale."""

    hf_names = ("Ministral3ForCausalLM",)
    gguf_arch = "mistral3"
    default_ctx = 262144
    default_rope_theta = 1_000_000.0
    default_rms_eps = 1e-5

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if _flag(self.cfg, "mlp_bias", config_path):
            raise ConvertError(f"{config_path}: 'mlp_bias' is true: feed-forward biases are not supported")
        _refuse_sliding(self, config_path, "llama.cpp's mistral3 has no sliding window")
        self.ministral3 = self.cfg.get("model_type") == "ministral3"
        if self.ministral3:
            if self.rope["rope_type"] != "yarn":
                raise ConvertError(
                    f"{config_path}: a ministral3 model needs yarn rope_parameters (llama.cpp's "
                    f"Ministral3Model asserts it), got {self.rope['rope_type']!r}"
                )
            for key in ("mscale_all_dim", "llama_4_scaling_beta"):
                v = self.rope.get(key)
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < float("inf"):
                    raise ConvertError(
                        f"{config_path}: rope_parameters.{key} must be a number >= 0, got {v!r}"
                    )

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        if self.ministral3:
            w.add_rope_scaling_yarn_log_mul(float(self.rope["mscale_all_dim"]))
            w.add_attn_temperature_scale(float(self.rope["llama_4_scaling_beta"]))


class Mistral3Multimodal(Mistral3):
    """Mistral3ForConditionalGeneration (Mistral Small 3.1 / 3.2, Ministral 3 with vision), its text
    model only: ``text_config`` merged over the top level, the decoder under
    ``model.language_model.`` (or ``language_model.model.``); the vision tower and projector are
    left out (llama.cpp writes them to an mmproj file)."""

    hf_names = ("Mistral3ForConditionalGeneration",)
    skipped = (
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
    )
    layouts = (("model.language_model.", "lm_head.weight"),
               ("language_model.model.", "language_model.lm_head.weight"))  # fmt: skip

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__({**cfg, **text_config(cfg, config_path)}, config_path)

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        prefix, lm_head = next(
            (lay for lay in self.layouts if lay[0] + "embed_tokens.weight" in available), self.layouts[0]
        )
        return _moved(self, prefix, lm_head)


def glm_rotated_dims(arch: Architecture, config_path: Path) -> int:
    """GLM's rotated dimensions per head: head_dim x partial_rotary_factor (rope_parameters', else
    config.json's, else 0.5), as llama.cpp's Glm4Model / Glm4MoeModel write rope.dimension_count;
    GLM-4V's multimodal rotation (mrope_section) refused."""
    if "mrope_section" in arch.rope:
        raise ConvertError(
            f"{config_path}: rope 'mrope_section': GLM-4V's multimodal rotation is not supported"
        )
    factor = arch.rope.get("partial_rotary_factor", arch.cfg.get("partial_rotary_factor", 0.5))
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < factor <= 1:
        raise ConvertError(f"{config_path}: 'partial_rotary_factor' must be in (0, 1], got {factor!r}")
    n_rot = int(arch.head_dim * factor)
    if n_rot % 2:
        raise ConvertError(f"{config_path}: {n_rot} rotated dimensions per head (must be even)")
    return n_rot


class Glm4(Architecture):
    """Glm4ForCausalLM (GLM-4-0414, GLM-Z1): RMSNorms before and after the attention and the
    feed-forward, q/k/v biases, gate and up in one matrix (kept fused, ffn_up), the interleaved
    rotation of the first partial_rotary_factor of each head (HF's q/k rows as they are)."""

    hf_names = ("Glm4ForCausalLM",)
    gguf_arch = "glm4"
    rules = (
        _OUTER[0],
        *_rules(("input_layernorm.weight", "attn_norm.weight", ("embd",))),
        *_ATTN, *_QKV_BIASES,
        *_rules(("post_self_attn_layernorm.weight", "post_attention_norm.weight", ("embd",)),
                ("post_attention_layernorm.weight", "ffn_norm.weight", ("embd",)),
                ("mlp.gate_up_proj.weight", "ffn_up.weight", ("ff2", "embd")),
                ("mlp.down_proj.weight", "ffn_down.weight", ("embd", "ff")),
                ("post_mlp_layernorm.weight", "post_ffw_norm.weight", ("embd",))),
        *_OUTER[1:],
    )  # fmt: skip
    default_ctx = 131072
    default_rms_eps = 1.5625e-07  # transformers' Glm4Config

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.n_rot = glm_rotated_dims(self, config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff2": 2 * self.n_ff}

    def adjust_vocab(self, vocab: Vocab) -> None:
        """Glm4Model.set_vocab: bos, eos and unk are <|endoftext|>, eot is <|user|>."""
        for typ, token in (("eos", "<|endoftext|>"), ("eot", "<|user|>"), ("unk", "<|endoftext|>"),
                           ("bos", "<|endoftext|>")):  # fmt: skip
            if token not in vocab.tokens:
                raise ConvertError(f"the tokenizer has no {token!r} token (GLM-4's {typ} token)")
            vocab.special_ids[typ] = vocab.tokens.index(token)

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_rope_dimension_count(self.n_rot)


class Exaone4(Architecture):
    """Exaone4ForCausalLM (EXAONE 4.0): no norms before the attention and feed-forward, RMSNorms
    after each, each query and key head RMS-normed before the NEOX rotation (HF's rows); with a
    sliding window, layer_types as attention.sliding_window_pattern; Llama 3 rope scaling as the
    rope_freqs tensor."""

    hf_names = ("Exaone4ForCausalLM",)
    gguf_arch = "exaone4"
    rules = (
        _OUTER[0], *_ATTN,
        *_rules(("self_attn.q_norm.weight", "attn_q_norm.weight", ("head",)),
                ("self_attn.k_norm.weight", "attn_k_norm.weight", ("head",)),
                ("post_attention_layernorm.weight", "post_attention_norm.weight", ("embd",))),
        *_MLP,
        *_rules(("post_feedforward_layernorm.weight", "post_ffw_norm.weight", ("embd",))),
        *_OUTER[1:],
    )  # fmt: skip
    default_ctx = 2048
    default_rms_eps = 1e-5
    lcpp_swa_layers: ClassVar[int] = 64  # llama.cpp's exaone4 windows the 32B alone, by its depth

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        window = cfg.get("sliding_window")
        if self.n_layer != self.lcpp_swa_layers and window is not None:
            raise ConvertError(
                f"{config_path}: 'sliding_window' is {window!r} on {self.n_layer} layers: llama.cpp's "
                f"exaone4 applies windows (and leaves the global layers unrotated) only to models of "
                f"{self.lcpp_swa_layers} layers, so this one would not run as trained"
            )
        if self.n_layer == self.lcpp_swa_layers and window is None:
            raise ConvertError(
                f"{config_path}: no 'sliding_window', but llama.cpp's exaone4 gives a model of "
                f"{self.lcpp_swa_layers} layers windows of 4096 tokens and unrotated global layers"
            )
        self.swa = self._sliding_layers(config_path) if window is not None else None

    def _sliding_layers(self, config_path: Path) -> list[bool] | None:
        """Exaone4Model's pattern: layer_types, or sliding_window_pattern as "LLLG" or a period."""
        _require(self.cfg, "sliding_window", config_path)
        types, pattern = self.cfg.get("layer_types"), self.cfg.get("sliding_window_pattern")
        if types is not None:
            if not isinstance(types, list) or len(types) != self.n_layer:
                raise ConvertError(f"{config_path}: 'layer_types' must list {self.n_layer} layer types")
            return [t == "sliding_attention" for t in types]
        if isinstance(pattern, str) and pattern:
            return [pattern[i % len(pattern)] == "L" for i in range(self.n_layer)]
        if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
            return [(i + 1) % pattern != 0 for i in range(self.n_layer)]
        raise ConvertError(f"{config_path}: a sliding window needs 'layer_types' or 'sliding_window_pattern'")

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_vocab_size(self.n_vocab)
        if self.swa is not None:
            w.add_sliding_window(int(self.cfg["sliding_window"]))
            w.add_sliding_window_pattern(self.swa)

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        """Byte-level BPE from tokenizer.json (Exaone4Model.set_vocab)."""
        return load_vocab(model_dir, self.n_vocab, pre=pre, add_prefix_space_key=False, spm=False)

    def _generated(self) -> list[Any]:
        return Llama._generated(self)  # type: ignore[arg-type]

    def _llama3_factors(self) -> Any:
        return Llama._llama3_factors(self)  # type: ignore[arg-type]


_X = "transformer.h.{bid}."


class Exaone(Architecture):
    """ExaoneForCausalLM (EXAONE 3.0 / 3.5): a llama under GPT-2-style names (transformer.wte, h.N.ln_1,
    attn.attention.q/k/v_proj and out_proj, ln_2, mlp.c_fc_0 (gate), c_fc_1 (up), c_proj,
    transformer.ln_f), HF's q/k rows as they are (rotate_half: llama.cpp's NEOX rotation), Llama 3
    rope scaling (EXAONE 3.5) as the rope_freqs tensor; num_layers, layer_norm_epsilon. ExaoneModel's
    keys (TextModel's and rope.dimension_count), but for the norms' epsilon: llama.cpp 0.3.36's
    converter writes layer_norm_epsilon, which its own exaone loader refuses; it is written as
    layer_norm_rms_epsilon, the key that loader requires (and older converters wrote)."""

    hf_names = ("ExaoneForCausalLM",)
    gguf_arch = "exaone"
    rules = (
        TensorRule("transformer.wte.weight", "token_embd.weight", ("vocab", "embd")),
        *(TensorRule(_X + hf, B + g, shape) for hf, g, shape in (
            ("ln_1.weight", "attn_norm.weight", ("embd",)),
            ("attn.attention.q_proj.weight", "attn_q.weight", ("q", "embd")),
            ("attn.attention.k_proj.weight", "attn_k.weight", ("kv", "embd")),
            ("attn.attention.v_proj.weight", "attn_v.weight", ("kv", "embd")),
            ("attn.attention.out_proj.weight", "attn_output.weight", ("embd", "q")),
            ("ln_2.weight", "ffn_norm.weight", ("embd",)),
            ("mlp.c_fc_0.weight", "ffn_gate.weight", ("ff", "embd")),
            ("mlp.c_fc_1.weight", "ffn_up.weight", ("ff", "embd")),
            ("mlp.c_proj.weight", "ffn_down.weight", ("embd", "ff")))),
        TensorRule("transformer.ln_f.weight", "output_norm.weight", ("embd",)),
        _OUTER[2],
    )  # fmt: skip
    ignored = (_X + "attn.attention.rotary.inv_freq",)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        cfg = {"num_hidden_layers": cfg.get("num_layers"), **cfg}  # (ExaoneConfig's name for it)
        super().__init__(cfg, config_path)
        act = cfg.get("activation_function", "silu")
        if act != "silu":  # (ExaoneModel asserts it)
            raise ConvertError(
                f"{config_path}: 'activation_function' is {act!r}: llama.cpp's exaone runs silu"
            )
        if self.head_dim != self.n_embd // self.n_head:
            raise ConvertError(
                f"{config_path}: 'head_dim' {self.head_dim}: llama.cpp's exaone needs "
                f"hidden_size / num_attention_heads ({self.n_embd // self.n_head})"
            )

    def add_norm_eps(self, w: GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(float(self.cfg.get("layer_norm_epsilon", 1e-5)))

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_rope_dimension_count(self.head_dim)

    read_vocab = Exaone4.read_vocab
    _generated = Exaone4._generated
    _llama3_factors = Exaone4._llama3_factors


class Ernie4_5(Architecture):  # noqa: N801 - the architecture's name
    """Ernie4_5ForCausalLM (ERNIE-4.5-0.3B): a llama whose HF q/k rows already pair interleaved
    values (written as they are), SentencePiece vocabulary with tokenizer_config.json's
    add_prefix_space."""

    hf_names = ("Ernie4_5ForCausalLM", "Ernie4_5_ForCausalLM")
    gguf_arch = "ernie4_5"
    rules = _llama_rules(permute=False, biases="")
    default_ctx = 131072
    default_rope_theta = 500000.0
    default_rms_eps = 1e-5
    space_prefix_key = True

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if _flag(self.cfg, "use_bias", config_path):
            raise ConvertError(
                f"{config_path}: 'use_bias' is true: llama.cpp's ernie4_5 drops the attention "
                "output's bias (and splitllm has no feed-forward biases)"
            )


class Cohere2(Architecture):
    """Cohere2ForCausalLM (Command R7B): one LayerNorm (no bias) per block feeding attention and
    feed-forward in parallel, q/k rows as HF has them (interleaved pairs), embeddings tied, every
    fourth layer global (unrotated), the others sliding; layer_norm_eps, logit_scale,
    sliding_window, vocab_size, the rotated dimensions and rope scaling type none."""

    hf_names = ("Cohere2ForCausalLM",)
    gguf_arch = "cohere2"
    rules = (
        _OUTER[0], *_rules(("input_layernorm.weight", "attn_norm.weight", ("embd",))),
        *_ATTN, *_MLP, _OUTER[1],
    )  # fmt: skip
    default_ctx = 8192
    default_rope_theta = 50000.0
    lcpp_period: ClassVar[int] = 4  # llama.cpp's default sliding_window_pattern for cohere2

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        cfg = {"tie_word_embeddings": True, "sliding_window_pattern": 4, **cfg}
        super().__init__(cfg, config_path)
        self._cohere_checks(config_path, "Cohere2Model")
        _require(self.cfg, "sliding_window", config_path)
        self.logit_scale = _positive(self.cfg, "logit_scale", config_path)
        n = self.cfg["sliding_window_pattern"]
        types = self.cfg.get("layer_types") or [
            "full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(self.n_layer)
        ]
        lcpp = [
            "full_attention" if i % self.lcpp_period == self.lcpp_period - 1 else "sliding_attention"
            for i in range(self.n_layer)
        ]
        if list(types) != lcpp:
            raise ConvertError(
                f"{config_path}: layer types {types} are not llama.cpp's cohere2 pattern (every "
                f"{self.lcpp_period}th layer global): the converter writes no pattern"
            )

    def _cohere_checks(self, config_path: Path, lcpp_class: str) -> None:
        """What llama.cpp's cohere2 and command-r share: the output tied, no biases, whole heads rotated,
        rope scaling type none."""
        if not self.tied:
            raise ConvertError(
                f"{config_path}: 'tie_word_embeddings' is false, but llama.cpp's {self.gguf_arch} always "
                "ties its output layer to the embeddings"
            )
        if _flag(self.cfg, "attention_bias", config_path):
            raise ConvertError(
                f"{config_path}: 'attention_bias' is true: llama.cpp's {self.gguf_arch} has no biases"
            )
        if self.cfg.get("rotary_pct", 1.0) != 1.0:
            raise ConvertError(
                f"{config_path}: 'rotary_pct' is {self.cfg['rotary_pct']!r}: transformers' "
                "Cohere models rotate whole heads"
            )
        if self.rope["rope_type"] != "default":
            raise ConvertError(
                f"{config_path}: rope scaling {self.rope['rope_type']!r}: llama.cpp's {lcpp_class} "
                "writes rope scaling type none"
            )

    def add_norm_eps(self, w: GGUFWriter) -> None:
        w.add_layer_norm_eps(float(self.cfg.get("layer_norm_eps", 1e-5)))

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_logit_scale(self.logit_scale)
        w.add_sliding_window(int(self.cfg["sliding_window"]))
        w.add_vocab_size(self.n_vocab)
        w.add_rope_dimension_count(self.n_embd // self.n_head)
        w.add_rope_scaling_type(RopeScalingType.NONE)


class CommandR(Cohere2):
    """CohereForCausalLM (Command-R 35B, Command R+, Aya 23): Cohere 2's parallel block without
    windows, every layer rotated (interleaved pairs, HF's rows as they are); with use_qk_norm
    (Command R+) each query and key head LayerNormed by a row of its own (q_norm / k_norm, [heads,
    head_dim]), which llama.cpp reads only in models of 64 layers or more (and requires there).
    CommandR2Model's keys: TextModel's (context_length from model_max_length where config.json has
    it, layer_norm_eps), logit_scale (transformers' default 0.0625 where absent), rope scaling type
    none."""

    hf_names = ("CohereForCausalLM",)
    gguf_arch = "command-r"
    rules = (
        *Cohere2.rules[:-1],
        *_rules(("self_attn.q_norm.weight", "attn_q_norm.weight", ("n_head", "head")),
                ("self_attn.k_norm.weight", "attn_k_norm.weight", ("n_head_kv", "head")), required=False),
        Cohere2.rules[-1],
    )  # fmt: skip
    lcpp_qk_norm_layers: ClassVar[int] = 64

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        cfg = {"tie_word_embeddings": True, "logit_scale": 0.0625, **cfg}
        if cfg.get("model_max_length") is not None:  # (CommandR2Model: the context trained at)
            cfg["max_position_embeddings"] = cfg["model_max_length"]
        Architecture.__init__(self, cfg, config_path)
        self._cohere_checks(config_path, "CommandR2Model")
        self.logit_scale = _positive(self.cfg, "logit_scale", config_path)
        qk_norm = _flag(self.cfg, "use_qk_norm", config_path)
        if qk_norm != (self.n_layer >= self.lcpp_qk_norm_layers):
            raise ConvertError(
                f"{config_path}: 'use_qk_norm' is {str(qk_norm).lower()} on {self.n_layer} layers: "
                f"llama.cpp's command-r reads query and key norms exactly when a model has "
                f"{self.lcpp_qk_norm_layers} layers or more, so this one would not run as trained"
            )
        self.qk_norm = qk_norm

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "n_head": self.n_head, "n_head_kv": self.n_head_kv}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        """With use_qk_norm the q/k norms are required; without, not written (nor expected)."""
        rules, ignored = super().table(available)
        norms = {r.hf for r in rules if "self_attn." in r.hf and "_norm" in r.hf}
        if not self.qk_norm:
            return tuple(r for r in rules if r.hf not in norms), ignored
        required = (TensorRule(r.hf, r.gguf, r.shape, r.transform) if r.hf in norms else r for r in rules)
        return tuple(required), ignored

    def add_hparams(self, w: GGUFWriter) -> None:
        Architecture.add_hparams(self, w)
        w.add_logit_scale(self.logit_scale)
        w.add_rope_scaling_type(RopeScalingType.NONE)


class Qwen3VL(Qwen3):
    """Qwen3VLForConditionalGeneration, its text model (Qwen3VLTextModel): qwen3's table under
    ``model.language_model.``, ``text_config`` merged over the top level; rope_parameters'
    mrope_section as rope.dimension_sections (padded to 4) and the number of the vision tower's
    deepstack_visual_indexes as n_deepstack_layers."""

    hf_names = ("Qwen3VLForConditionalGeneration",)
    gguf_arch = "qwen3vl"
    skipped = ("model.visual.", "visual.")
    prefix = "model.language_model."

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__({**cfg, **text_config(cfg, config_path)}, config_path)
        if self.rerank:
            raise ConvertError(f"{config_path}: a Qwen3-VL reranker is not supported")
        self.sections, self.n_deepstack = qwen3vl_rope(self, cfg, config_path)

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        return _moved(self, self.prefix, "lm_head.weight")

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_rope_dimension_sections(self.sections)
        w.add_num_deepstack_layers(self.n_deepstack)


def qwen3vl_rope(arch: Architecture, cfg: dict[str, Any], config_path: Path) -> tuple[list[int], int]:
    """Qwen3-VL's (and Qwen3-VL-MoE's) rope.dimension_sections, rope_parameters' mrope_section padded
    to 4, and n_deepstack_layers, the number of the vision tower's deepstack_visual_indexes."""
    sections = arch.rope.get("mrope_section")
    if (
        not isinstance(sections, list)
        or not 1 <= len(sections) <= 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sections)
    ):
        raise ConvertError(
            f"{config_path}: rope 'mrope_section' must list up to 4 section sizes, got {sections!r}"
        )
    vision = cfg.get("vision_config") or {}
    return [*sections, 0, 0, 0][:4], len(vision.get("deepstack_visual_indexes") or [])
