"""Gemma 1, Gemma 2 and Gemma 3 (text), and EmbeddingGemma: the table and the metadata llama.cpp's
GemmaModel / Gemma2Model / Gemma3Model / EmbeddingGemma (convert_hf_to_gguf.py) write, on the
Architecture machinery of ``arch``.

Gemma's RMSNorm multiplies by ``1 + w``; llama.cpp's by its weight, so every norm weight is
written as ``w + 1`` (computed in float32, as llama.cpp does for BF16 and F32 checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gguf import GGUFWriter

from splitllm_convert.arch import (
    Architecture,
    Array,
    PlannedSource,
    TensorRule,
    _positive,
    _require,
    logger,
    text_config,
    write_st_pooling,
)
from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import TensorEntry, file_tensors, read_json
from splitllm_convert.vocab import Vocab, _special_tokens


def _gemma_rules(
    prefix: str, lm_head: str | None, head_norms: bool, post_norms: bool = True
) -> tuple[TensorRule, ...]:
    """Gemma's table: RMSNorms each stored as ``w`` of ``x * (1 + w)`` and written as ``1 + w`` (what
    llama.cpp's plain RMSNorm multiplies by); q/k in HF order (NEOX rope).

    ``prefix``: where the decoder's tensors live ("model." or a multimodal model's text part).
    ``lm_head``: the HF name written as output.weight, or None to leave it out (Gemma 1 and 2).
    ``post_norms``: four norms a block (Gemma 2 and 3); else two (Gemma 1), whose
    post_attention_layernorm is the feed-forward's input norm.
    """
    L, B = prefix + "layers.{bid}.", "blk.{bid}."
    post_attention = "post_attention_norm" if post_norms else "ffn_norm"
    rules = [
        TensorRule(prefix + "embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",), "plus_one"),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", ("q", "embd")),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.v_proj.weight", B + "attn_v.weight", ("kv", "embd")),
        TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")),
        TensorRule(
            L + "post_attention_layernorm.weight", B + post_attention + ".weight", ("embd",), "plus_one"
        ),
        TensorRule(L + "mlp.gate_proj.weight", B + "ffn_gate.weight", ("ff", "embd")),
        TensorRule(L + "mlp.up_proj.weight", B + "ffn_up.weight", ("ff", "embd")),
        TensorRule(L + "mlp.down_proj.weight", B + "ffn_down.weight", ("embd", "ff")),
        TensorRule(prefix + "norm.weight", "output_norm.weight", ("embd",), "plus_one"),
    ]
    if post_norms:
        rules += [
            TensorRule(L + "pre_feedforward_layernorm.weight", B + "ffn_norm.weight", ("embd",), "plus_one"),
            TensorRule(
                L + "post_feedforward_layernorm.weight", B + "post_ffw_norm.weight", ("embd",), "plus_one"
            ),
        ]
    if head_norms:
        rules += [
            TensorRule(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("head",), "plus_one"),
            TensorRule(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("head",), "plus_one"),
        ]
    if lm_head:
        rules.append(TensorRule(lm_head, "output.weight", ("vocab", "embd")))
    return tuple(rules)


class _GemmaFamily(Architecture):
    """What every Gemma shares: config.json read over the config class's defaults (``defaults``, as
    llama.cpp's converter reads it through transformers' AutoConfig), norms written as ``1 + w``, a
    SentencePiece vocabulary without a space prefix, and the ``{arch}.*`` keys GemmaModel writes."""

    defaults: ClassVar[dict[str, Any]]
    label: ClassVar[str]  # the family's name in messages

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__({**self.defaults, **cfg}, config_path)
        self.n_ctx = _require(self.cfg, "max_position_embeddings", config_path)
        self.rms_eps = _positive(self.cfg, "rms_norm_eps", config_path)

    def _tied_and_unscaled(self, config_path: Path) -> None:
        """llama.cpp's gemma / gemma2 always use the token embedding as the output matrix and read no
        rope scaling (their converters write none)."""
        if not self.tied:
            raise ConvertError(
                f"{config_path}: 'tie_word_embeddings' is false, but llama.cpp's {self.gguf_arch} always "
                "uses the token embedding as the output matrix"
            )
        if self.rope["rope_type"] not in ("default", "dynamic"):
            raise ConvertError(
                f"{config_path}: rope scaling is not supported for {self.label} (llama.cpp's has none)"
            )

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        return {"plus_one": lambda w: w + np.float32(1.0)}

    def adjust_vocab(self, vocab: Vocab) -> None:
        vocab.add_space_prefix = False  # llama.cpp's Gemma converters

    def _add_gemma_hparams(self, w: GGUFWriter) -> None:
        """As llama.cpp's GemmaModel.set_gguf_parameters (Gemma2Model's begins alike); it writes no
        rope.freq_base (llama.cpp's default, 10000, is Gemma's), so the key is written only for a
        model with another base."""
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        if self.rope_theta() != 10000.0:
            w.add_rope_freq_base(self.rope_theta())
        w.add_layer_norm_rms_eps(self.rms_eps)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)


class Gemma(_GemmaFamily):
    """GemmaForCausalLM (Gemma 1, CodeGemma): two norms a block, every layer global, no soft-caps;
    queries scaled by 1/sqrt(head_dim) (transformers' and llama.cpp's alike); the output is the token
    embedding (llama.cpp's gemma has no output tensor; a saved lm_head.weight is left out, as
    GemmaModel leaves it).

    - ``head_dim`` from config.json (Gemma 7B: 256 with 16 heads of a 3072 width), written as
      key_length / value_length; a config.json without it takes GemmaConfig's 256, and a checkpoint
      whose q_proj disagrees is refused naming the key.
    - The vocabulary from tokenizer.model only (GemmaModel's _set_vocab_sentencepiece), and then
      GemmaModel's second SpecialVocab (CodeGemma's FIM tokens): of its prefix / suffix / middle /
      fsep / eot ids gguf-py writes only the EOT (107 unless the files name another).
    - The GeGLU's GELU is llama.cpp's tanh approximation: a ``hidden_activation`` naming another
      is refused (``hidden_act``, which Google's files set to "gelu", is not read: transformers'
      GemmaMLP of 2024 ignored it, taking hidden_activation or else gelu_pytorch_tanh).
    """

    hf_names = ("GemmaForCausalLM",)
    gguf_arch = "gemma"
    label = "Gemma"
    rules = _gemma_rules("model.", None, head_norms=False, post_norms=False)
    ignored = (*Architecture.ignored, "lm_head.weight")  # a copy of the tied embedding
    defaults = {  # transformers' GemmaConfig (rope_theta: default_rope_theta)
        "vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "attention_bias": False,
    }  # fmt: skip
    fim_types = ("prefix", "suffix", "middle", "fsep", "eot")  # GemmaModel's second SpecialVocab
    eot_id = 107  # GemmaModel's EOT (<end_of_turn>)
    tanh_gelus = ("gelu_pytorch_tanh", "gelu_new")

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.config_path = config_path
        self.head_dim_given = "head_dim" in cfg
        self._tied_and_unscaled(config_path)
        if self.cfg["attention_bias"] is not False:
            raise ConvertError(
                f"{config_path}: 'attention_bias' is {self.cfg['attention_bias']!r}; llama.cpp's gemma has "
                "no attention biases"
            )
        act = self.cfg.get("hidden_activation")
        if act is not None and act not in self.tanh_gelus:
            raise ConvertError(
                f"{config_path}: 'hidden_activation' is {act!r}; llama.cpp's gemma computes the tanh "
                f"approximation of GELU ({' or '.join(self.tanh_gelus)})"
            )

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        q = available.get("model.layers.0.self_attn.q_proj.weight")
        if not self.head_dim_given and q is not None and q[0] != self.n_head * self.head_dim:
            raise ConvertError(
                f"{self.config_path}: no 'head_dim'; transformers' GemmaConfig then takes {self.head_dim}, "
                f"but q_proj's {q[0]} rows in {where('model.layers.0.self_attn.q_proj.weight')} hold "
                f"{self.n_head} heads of {q[0] / self.n_head:g}"
            )
        return super().plan(available, where, files)

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        """GemmaModel.set_vocab: the SentencePiece vocabulary, then the EOT id (and any add_* flags of
        tokenizer.json's post-processor) of its second SpecialVocab."""
        if not (model_dir / "tokenizer.model").is_file():
            raise ConvertError(
                f"{model_dir / 'tokenizer.model'}: missing; llama.cpp's GemmaModel reads Gemma's "
                "SentencePiece tokenizer.model"
            )
        vocab = super().read_vocab(model_dir, pre)
        fim = Vocab(vocab.model, "", [], [])
        _special_tokens(model_dir, fim, self.n_vocab, types=self.fim_types)
        eot = fim.special_ids.get("eot", self.eot_id)
        if eot < self.n_vocab:  # (llama.cpp's converter writes 107 whatever the size; its loader ignores it)
            vocab.special_ids["eot"] = eot
        vocab.add_special.update(fim.add_special)
        return vocab

    def add_hparams(self, w: GGUFWriter) -> None:
        self._add_gemma_hparams(w)


class _Gemma(_GemmaFamily):
    """What Gemma 2 and Gemma 3 share: the embedding scaled by sqrt(n_embd), norms before and after
    attention and feed-forward, a GeGLU feed-forward, queries scaled by query_pre_attn_scalar**-0.5,
    sliding-window attention on some layers, tied embeddings.

    Layers attend locally as ``layer_types`` says (else transformers' fixed pattern); llama.cpp
    assumes a pattern of ``lcpp_pattern`` and is told only of a different one
    (``attention.sliding_window_pattern``).
    """

    lcpp_pattern: ClassVar[int]  # llama.cpp's SWA pattern: layer i is local unless (i + 1) % n == 0
    n_layer_27b: ClassVar[int]  # the 27B model, whose queries llama.cpp scales by n_embd / n_head
    always_swa: ClassVar[bool]  # llama.cpp's arch has sliding-window layers whatever the file says

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.swa = self._swa_layers(config_path)
        use_swa = any(self.swa) or self.always_swa
        self.n_swa = _require(self.cfg, "sliding_window", config_path) if use_swa else 0
        self._check_query_scale(config_path)

    def _pattern(self, config_path: Path) -> int:
        """transformers' local/global pattern when config.json has no ``layer_types``."""
        return self.lcpp_pattern

    def _swa_layers(self, config_path: Path) -> list[bool]:
        """Which layers use sliding-window attention."""
        types = self.cfg.get("layer_types")
        if types is None:
            n = self._pattern(config_path)
            return [(i + 1) % n != 0 for i in range(self.n_layer)]
        kinds = ("sliding_attention", "full_attention")
        if not isinstance(types, list) or len(types) != self.n_layer or any(t not in kinds for t in types):
            raise ConvertError(
                f"{config_path}: 'layer_types' must list {self.n_layer} entries, each 'sliding_attention' "
                f"or 'full_attention', got {types!r}"
            )
        return [t == "sliding_attention" for t in types]

    def _check_query_scale(self, config_path: Path) -> None:
        """llama.cpp has no key for the query scale: it takes 1/sqrt(head_dim), or 1/sqrt(n_embd / n_head)
        for the 27B models (known by their layer count). A model that differs would run wrong."""
        big = self.n_layer == self.n_layer_27b
        want = self.n_embd // self.n_head if big else self.head_dim
        v = self.cfg.get("query_pre_attn_scalar")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != want:
            basis = f"n_embd / n_head for a {self.n_layer}-layer model" if big else "head_dim"
            raise ConvertError(
                f"{config_path}: 'query_pre_attn_scalar' is {v!r}; llama.cpp's {self.gguf_arch} scales "
                f"queries by 1/sqrt({want}) ({basis}), so this model would not run as trained"
            )

    def _add_swa(self, w: GGUFWriter) -> None:
        if not self.n_swa:  # no sliding-window layers: llama.cpp's gemma3 then has none either
            return
        w.add_sliding_window(self.n_swa)
        if self.swa != [(i + 1) % self.lcpp_pattern != 0 for i in range(self.n_layer)]:
            w.add_sliding_window_pattern(self.swa)  # llama.cpp reads it; its converter never differs


class Gemma2(_Gemma):
    """Gemma2ForCausalLM: attention and final logits soft-capped, every other layer (the even ones)
    local; the output is the token embedding (llama.cpp's gemma2 has no output tensor)."""

    hf_names = ("Gemma2ForCausalLM",)
    gguf_arch = "gemma2"
    rules = _gemma_rules("model.", None, head_norms=False)
    ignored = (*Architecture.ignored, "lm_head.weight")  # a copy of the tied embedding
    defaults = {  # transformers' Gemma2Config (rope_theta: default_rope_theta)
        "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
        "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
        "tie_word_embeddings": True,
    }  # fmt: skip
    label = "Gemma 2"
    lcpp_pattern = 2
    n_layer_27b = 46
    always_swa = True

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self._tied_and_unscaled(config_path)
        # llama.cpp's gemma2 always soft-caps; transformers' null (no capping) cannot be written
        self.attn_softcap = _positive(self.cfg, "attn_logit_softcapping", config_path)
        self.final_softcap = _positive(self.cfg, "final_logit_softcapping", config_path)

    def add_hparams(self, w: GGUFWriter) -> None:
        """As llama.cpp's Gemma2Model.set_gguf_parameters: GemmaModel's keys, the soft-caps, the window."""
        self._add_gemma_hparams(w)
        w.add_attn_logit_softcapping(self.attn_softcap)
        w.add_final_logit_softcapping(self.final_softcap)
        self._add_swa(w)


class Gemma3(_Gemma):
    """Gemma3ForCausalLM: q/k RMS-normed per head, five local layers to one global (the global ones
    with rope_theta and any linear rope scaling, the local ones with rope_local_base_freq and none),
    final logits soft-capped only when final_logit_softcapping is set."""

    hf_names = ("Gemma3ForCausalLM",)
    gguf_arch = "gemma3"
    rules = _gemma_rules("model.", "lm_head.weight", head_norms=True)
    defaults = {  # transformers' Gemma3TextConfig (rope_theta: default_rope_theta)
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": None,
        "attn_logit_softcapping": None, "tie_word_embeddings": True,
    }  # fmt: skip
    label = "Gemma 3"
    lcpp_pattern = 6
    n_layer_27b = 62
    always_swa = False
    default_rope_theta = 1_000_000.0

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        rope = cfg.get("rope_parameters")
        if isinstance(rope, dict) and ("full_attention" in rope or "sliding_attention" in rope):
            cfg = self._split_rope(cfg, rope, config_path)
        super().__init__(cfg, config_path)
        if self.rope["rope_type"] not in ("default", "linear", "dynamic"):
            raise ConvertError(
                f"{config_path}: rope scaling type {self.rope['rope_type']!r} is not supported for Gemma 3 "
                "(supported: linear)"
            )
        if self.cfg.get("attn_logit_softcapping") is not None:
            raise ConvertError(
                f"{config_path}: 'attn_logit_softcapping' is set, but llama.cpp's gemma3 does not soft-cap "
                "attention"
            )
        cap = self.cfg.get("final_logit_softcapping")
        self.final_softcap = _positive(self.cfg, "final_logit_softcapping", config_path) if cap else None
        self.rope_local_theta = _positive(self.cfg, "rope_local_base_freq", config_path)

    @staticmethod
    def _split_rope(cfg: dict[str, Any], rope: dict[str, Any], config_path: Path) -> dict[str, Any]:
        """transformers >= 5 keeps rope settings per layer type: the global ones become this
        model's rope_parameters, the local base its rope_local_base_freq (the local layers are unscaled)."""
        full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
        if not isinstance(full, dict) or not isinstance(local, dict):
            raise ConvertError(f"{config_path}: 'rope_parameters' per layer type must be objects: {rope!r}")
        if local.get("rope_type", "default") != "default":
            raise ConvertError(f"{config_path}: rope scaling of the sliding-window layers is not supported")
        out = {**cfg, "rope_parameters": full}
        if "rope_theta" in local:
            out["rope_local_base_freq"] = local["rope_theta"]
        return out

    def _pattern(self, config_path: Path) -> int:
        n = self.cfg.get("sliding_window_pattern", self.lcpp_pattern)
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConvertError(f"{config_path}: 'sliding_window_pattern' must be a positive integer: {n!r}")
        return n

    def add_hparams(self, w: GGUFWriter) -> None:
        """As llama.cpp's Gemma3Model.set_gguf_parameters (after TextModel's): rope.freq_base for the
        global layers, rope.freq_base_swa for the local ones, linear rope scaling if any."""
        super().add_hparams(w)
        w.add_rope_freq_base_swa(self.rope_local_theta)
        if self.final_softcap:
            w.add_final_logit_softcapping(self.final_softcap)
        self._add_swa(w)


class Gemma3Multimodal(Gemma3):
    """Gemma3ForConditionalGeneration, its text model only: the settings in ``text_config``, the
    tensors under ``language_model.model.`` (or ``model.language_model.`` as transformers >= 4.52
    saves them); the vision tower and projector are left out (llama.cpp writes them to an mmproj file)."""

    hf_names = ("Gemma3ForConditionalGeneration",)
    skipped = ("vision_tower.", "multi_modal_projector.",
               "model.vision_tower.", "model.multi_modal_projector.")  # fmt: skip
    # (decoder prefix, lm_head name) of each way the checkpoint may be saved
    layouts = (("model.language_model.", "lm_head.weight"),
               ("language_model.model.", "language_model.lm_head.weight"))  # fmt: skip

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        # as AutoConfig's text_config merged over the top level (llama.cpp's TextModel)
        super().__init__({**cfg, **self.defaults, **text_config(cfg, config_path)}, config_path)

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        prefix, lm_head = next(
            (layout for layout in self.layouts if layout[0] + "embed_tokens.weight" in available),
            self.layouts[0],
        )
        return _gemma_rules(prefix, lm_head, head_norms=True), ()


class EmbeddingGemma(Gemma3):
    """Gemma3TextModel (EmbeddingGemma, saved by sentence-transformers): llama.cpp's EmbeddingGemma
    writes it as ``gemma-embedding``, Gemma 3's layers that llama.cpp runs non-causally.

    - The weights at the top level (as Gemma3TextModel saves them) or under ``model.``; no output
      layer. Queries are scaled by 1/sqrt(head_dim) whatever the depth (llama.cpp's gemma-embedding).
    - ``attention.sliding_window`` is config.json's own value, always written (transformers halves
      it for a bidirectional model; llama.cpp's local layers see ``window / 2`` tokens either side).
    - The pooling type from sentence-transformers' modules.json, after general.file_type.
    - With ``dense_modules`` (llama.cpp's --sentence-transformers-dense-modules), the Dense modules
      listed in modules.json that have a model.safetensors: the one at ``2_Dense`` as ``dense_2``,
      another as ``dense_3``, their in/out widths as ``dense_{2,3}_feat_{in,out}``. llama.cpp keeps
      only their ``.weight`` and applies no activation, so a bias or an activation other than
      Identity is refused here. Without the option they are left out, with a warning.
    - A model without ``use_bidirectional_attention`` true is converted all the same (llama.cpp
      registers every Gemma3TextModel so), with a warning: it will not attend as it was trained.
    """

    hf_names = ("Gemma3TextModel",)
    gguf_arch = "gemma-embedding"
    ignored = ()
    n_layer_27b = 0  # (llama.cpp's gemma-embedding has no 27B rule)
    always_swa = True  # llama.cpp requires the key

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self.model_dir = config_path.parent
        if self.cfg.get("use_bidirectional_attention") is not True:
            logger.warning("%s: 'use_bidirectional_attention' is not true, but llama.cpp's gemma-embedding "
                           "attends both ways: the embeddings will differ from this model's", config_path)
        self.dense = _dense_modules(self.model_dir)  # ("dense_2" / "dense_3", path, (in, out))

    def _included(self) -> list[tuple[str, str, tuple[int, int]]]:
        return self.dense if self.dense_modules else []

    def extra_tensors(self, model_dir: Path) -> dict[str, TensorEntry]:
        if self.dense and not self.dense_modules:
            logger.warning(
                "%s: sentence-transformers' Dense modules (%s) are left out, as llama.cpp's converter leaves "
                "them without --sentence-transformers-dense-modules: the embeddings will not be the model's",
                model_dir, ", ".join(p for _, p, _ in self.dense),
            )  # fmt: skip
        out = {}
        for _, path, _ in self._included():
            for entry in file_tensors(model_dir / path / "model.safetensors"):
                out[f"{path}/{entry.name}"] = entry
        return out

    def dims(self) -> dict[str, int]:
        widths = {name: dims for name, _, dims in self.dense}
        d2, d3 = widths.get("dense_2", (0, 0)), widths.get("dense_3", (0, 0))
        return {**super().dims(), "dense_2_out": d2[1], "dense_3_in": d3[0]}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        prefix = "model." if "model.embed_tokens.weight" in available else ""
        shapes = {"dense_2": ("dense_2_out", "embd"), "dense_3": ("embd", "dense_3_in")}
        dense = tuple(TensorRule(f"{path}/linear.weight", f"{name}.weight", shapes[name])
                      for name, path, _ in self._included())  # fmt: skip
        return _gemma_rules(prefix, None, head_norms=True) + dense, ()

    def add_hparams(self, w: GGUFWriter) -> None:
        super().add_hparams(w)
        for name, _, (n_in, n_out) in self._included():
            w.add_dense_features_dims(name, n_in, n_out)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        write_st_pooling(w, self.model_dir)


def _dense_modules(model_dir: Path) -> list[tuple[str, str, tuple[int, int]]]:
    """sentence-transformers' Dense modules of ``model_dir`` (modules.json), as llama.cpp's
    EmbeddingGemma picks them: (GGUF name, module path, (in_features, out_features)) of each whose
    model.safetensors exists, ``dense_2`` for the path ``2_Dense`` and ``dense_3`` for another."""
    path = model_dir / "modules.json"
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConvertError(f"{path}: expected a list of modules")
    out = []
    for m in modules:
        where = str(m.get("path", ""))
        if not str(m.get("type", "")).endswith("Dense"):
            continue
        if not (model_dir / where / "model.safetensors").is_file():  # (llama.cpp skips it too)
            logger.warning("%s: Dense module %r has no model.safetensors: left out", path, where)
            continue
        name = "dense_2" if where == "2_Dense" else "dense_3"
        cfg_path = model_dir / where / "config.json"
        cfg = read_json(cfg_path)
        n_in, n_out = _require(cfg, "in_features", cfg_path), _require(cfg, "out_features", cfg_path)
        if cfg.get("bias", True) is not False:
            raise ConvertError(f"{cfg_path}: a Dense module with a bias; llama.cpp's converter leaves biases "
                               "out and its gemma-embedding has none")
        act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
        if not act.endswith("Identity"):
            raise ConvertError(f"{cfg_path}: activation_function {act!r}; llama.cpp applies none (Identity)")
        if any(n == name for n, _, _ in out):
            raise ConvertError(f"{path}: more than one Dense module would be written as {name} (llama.cpp "
                               "names the one at 2_Dense dense_2 and any other dense_3)")
        out.append((name, where, (n_in, n_out)))
    return out
