"""Gemma 4 text models (Gemma4ForConditionalGeneration's language model, Gemma4ForCausalLM): the
31B-style dense models, E2B / E4B with per-layer embeddings and KV-shared last layers, and the
26B-A4B experts; written as llama.cpp's Gemma4Model (conversion/gemma.py) writes them.

- Norm weights are written as they are stored (Gemma 4's RMSNorm multiplies by its weight, not
  ``1 + w``); the value norm has no weight.
- Per-layer head sizes: sliding layers ``head_dim``, full-attention layers ``global_head_dim``
  (attention.key_length / value_length, the sliding ones as *_swa), head_count_kv per layer
  when ``num_global_key_value_heads`` is set, the layer kinds as attention.sliding_window_pattern.
- The full layers' "proportional" rope: rotate the first partial_rotary_factor of each head's
  pairs, the rest not at all; llama.cpp's NEOX rope over the whole head with a rope_freqs tensor
  of 1 for rotated pairs and 1e30 for the others.
- Experts: router.proj -> ffn_gate_inp, router.scale -> ffn_gate_inp.scale,
  router.per_expert_scale -> ffn_down_exps.scale, experts.gate_up_proj (gate rows, then up rows)
  -> ffn_gate_up_exps, experts.down_proj -> ffn_down_exps, beside the dense MLP.
- The tokenizer: tokenizer.json's byte-fallback BPE as ``tokenizer.ggml.model = gemma4`` with its
  merges (gguf-py's LlamaHfVocab, read here without transformers; see ``gemma4_vocab``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, TokenType

from splitllm_convert.arch import Architecture, Array, PlannedSource, TensorRule, _positive, _require, logger
from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import read_json
from splitllm_convert.vocab import Vocab, _content, _merges, _optional_json, _special_tokens

_SLIDING, _FULL = "sliding_attention", "full_attention"
# llama.cpp's Gemma4Model.set_vocab: always rendered, so that its chat parser can read them
VISIBLE_TOKENS = frozenset(("<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                            "<tool_response|>", '<|"|>'))  # fmt: skip


def _int(cfg: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    """A non-negative integer (``default`` where the key is absent or null)."""
    v = cfg.get(key)
    if v is None and default is not None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConvertError(f"{path}: '{key}' must be a non-negative integer, got {v!r}")
    return v


class Gemma4(Architecture):
    """Gemma4ForConditionalGeneration / Gemma4ForCausalLM, the text model (the vision and audio
    towers are left out; llama.cpp writes them to an mmproj file)."""

    hf_names = ("Gemma4ForConditionalGeneration", "Gemma4ForCausalLM")
    gguf_arch = "gemma4"
    rules = ()
    skipped = ("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.",
               "vision_tower.", "embed_vision.", "audio_tower.", "embed_audio.")  # fmt: skip

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        text = cfg.get("text_config")
        if text is not None and not isinstance(text, dict):
            raise ConvertError(f"{config_path}: 'text_config' must be an object, got {text!r}")
        cfg = {**cfg, **(text or {})}  # as llama.cpp's TextModel merges it
        super().__init__(cfg, config_path)
        p = config_path
        types = cfg.get("layer_types")
        kinds = (_SLIDING, _FULL)
        if not isinstance(types, list) or len(types) != self.n_layer or any(t not in kinds for t in types):
            raise ConvertError(f"{p}: 'layer_types' must list {self.n_layer} entries, each "
                               f"'{_SLIDING}' or '{_FULL}', got {types!r}")  # fmt: skip
        self.swa = [t == _SLIDING for t in types]
        self.head_dim_full = _require(cfg, "global_head_dim", p)
        kv_full = cfg.get("num_global_key_value_heads")
        self.n_kv_full = self.n_head_kv if kv_full is None else _require(cfg, "num_global_key_value_heads", p)
        self.kv_array = kv_full is not None  # llama.cpp writes head_count_kv per layer only then
        self.n_shared = _int(cfg, "num_kv_shared_layers", p, 0)
        if self.n_shared >= self.n_layer:
            raise ConvertError(f"{p}: 'num_kv_shared_layers' {self.n_shared} leaves no layer with keys")
        if self.n_shared and not all(any(s == self.swa[i] for s in self.swa[: self.n_layer - self.n_shared])
                                     for i in range(self.n_layer - self.n_shared, self.n_layer)):  # fmt: skip
            raise ConvertError(f"{p}: a KV-shared layer has no earlier layer of its kind to take keys from")
        self.k_eq_v = bool(cfg.get("attention_k_eq_v", False))
        self.double_wide = bool(cfg.get("use_double_wide_mlp", False))
        self.n_per_layer = _int(cfg, "hidden_size_per_layer_input", p, 0)
        if self.n_per_layer:
            pl_vocab = _int(cfg, "vocab_size_per_layer_input", p, self.n_vocab)
            if pl_vocab != self.n_vocab:
                raise ConvertError(f"{p}: 'vocab_size_per_layer_input' {pl_vocab} differs from "
                                   f"'vocab_size' {self.n_vocab}; llama.cpp's gemma4 reads one")  # fmt: skip
        self.n_swa = _require(cfg, "sliding_window", p)
        self.rms_eps = _positive(cfg, "rms_norm_eps", p) if "rms_norm_eps" in cfg else 1e-6
        act = cfg.get("hidden_activation", cfg.get("hidden_act", "gelu_pytorch_tanh"))
        if act != "gelu_pytorch_tanh":
            raise ConvertError(f"{p}: activation {act!r}; llama.cpp's gemma4 runs gelu_pytorch_tanh")
        self.full_rope, self.swa_rope = self._gemma4_rope(p)
        cap = cfg.get("final_logit_softcapping")
        self.final_softcap = _positive(cfg, "final_logit_softcapping", p) if cap else None
        if not cap:  # (llama.cpp's converter writes no key, and llama.cpp then caps at 30)
            logger.warning("%s: no final_logit_softcapping; llama.cpp's gemma4 will cap the logits at 30", p)

    def _gemma4_rope(self, p: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """rope_parameters per layer type: the full layers' "proportional" rope (the only kind
        llama.cpp's converter accepts) and the sliding layers' default one."""
        rope = self.cfg.get("rope_parameters")
        full = rope.get(_FULL) if isinstance(rope, dict) else None
        local = rope.get(_SLIDING) if isinstance(rope, dict) else None
        if not isinstance(full, dict) or not isinstance(local, dict):
            raise ConvertError(f"{p}: 'rope_parameters' must hold '{_FULL}' and '{_SLIDING}' objects")
        if full.get("rope_type") != "proportional":
            raise ConvertError(f"{p}: rope_parameters.{_FULL}.rope_type is {full.get('rope_type')!r}; "
                               "llama.cpp's converter writes only 'proportional'")  # fmt: skip
        if local.get("rope_type", "default") != "default":
            raise ConvertError(f"{p}: rope scaling of the sliding-window layers is not supported")
        for where, r in ((_FULL, full), (_SLIDING, local)):
            _positive(r, "rope_theta", p) if "rope_theta" in r else None
            f = r.get("partial_rotary_factor", 1.0)
            if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
                raise ConvertError(f"{p}: rope_parameters.{where}.partial_rotary_factor must be in (0, 1]: "
                                   f"{f!r}")  # fmt: skip
        if local.get("partial_rotary_factor", 1.0) != 1.0:  # (llama.cpp's converter reads it from elsewhere)
            raise ConvertError(f"{p}: a partial rotation of the sliding-window layers is not supported")
        return full, local

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        if not self.cfg.get("enable_moe_block"):
            return 0, 0, 0
        n = _require(self.cfg, "num_experts", config_path)
        used = _require(self.cfg, "top_k_experts", config_path)
        if used > n:
            raise ConvertError(f"{config_path}: top_k_experts {used} is more than num_experts {n}")
        key = "expert_intermediate_size"  # (llama.cpp's find_hparam: this key, else the next)
        key = key if self.cfg.get(key) else "moe_intermediate_size"
        return n, used, _require(self.cfg, key, config_path)

    # -- tensors ---------------------------------------------------------------------------

    def shared(self, i: int) -> bool:
        return i >= self.n_layer - self.n_shared

    def head_dim_of(self, i: int) -> int:
        return self.head_dim if self.swa[i] else self.head_dim_full

    def dims(self) -> dict[str, int]:
        d = {**super().dims(), "one": 1, "ff_exp2": 2 * self.n_ff_exp, "per": self.n_per_layer,
             "per_all": self.n_layer * self.n_per_layer}  # fmt: skip
        for i in range(self.n_layer):
            hd, kv = self.head_dim_of(i), self.n_head_kv if self.swa[i] else self.n_kv_full
            d |= {f"hd{i}": hd, f"q{i}": self.n_head * hd, f"kv{i}": kv * hd, f"ff{i}": self.n_ff_of(i)}
        return d

    def n_ff_of(self, i: int) -> int:
        return self.n_ff * (2 if self.double_wide and self.shared(i) else 1)

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        multimodal = "model.language_model.embed_tokens.weight" in available
        return self._rules("model.language_model." if multimodal else "model."), ()

    def _rules(self, prefix: str) -> tuple[TensorRule, ...]:
        """The table for a checkpoint whose decoder lies under ``prefix``, one layer at a time (the
        head sizes and widths differ by layer)."""
        P = prefix
        rules = [
            TensorRule(P + "embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
            TensorRule(P + "norm.weight", "output_norm.weight", ("embd",)),
            TensorRule("lm_head.weight", "output.weight", ("vocab", "embd"), required=False),
        ]
        if self.n_per_layer:
            rules += [
                TensorRule(P + "embed_tokens_per_layer.weight", "per_layer_token_embd.weight",
                           ("vocab", "per_all")),
                TensorRule(P + "per_layer_model_projection.weight", "per_layer_model_proj.weight",
                           ("per_all", "embd")),
                TensorRule(P + "per_layer_projection_norm.weight", "per_layer_proj_norm.weight", ("per",)),
            ]  # fmt: skip
        for i in range(self.n_layer):
            rules += self._layer_rules(P + f"layers.{i}.", f"blk.{i}.", i)
        return tuple(rules)

    def _layer_rules(self, L: str, B: str, i: int) -> list[TensorRule]:
        q, kv, hd, ff = f"q{i}", f"kv{i}", f"hd{i}", f"ff{i}"
        has_kv = not self.shared(i)  # (llama.cpp's gemma4 takes a KV-shared layer's k / v if there)
        has_v = has_kv and (self.swa[i] or not self.k_eq_v)  # (else values are the keys' projection)
        rows = [
            ("input_layernorm.weight", "attn_norm.weight", ("embd",), True),
            ("self_attn.q_proj.weight", "attn_q.weight", (q, "embd"), True),
            ("self_attn.q_norm.weight", "attn_q_norm.weight", (hd,), True),
            ("self_attn.k_proj.weight", "attn_k.weight", (kv, "embd"), has_kv),
            ("self_attn.k_norm.weight", "attn_k_norm.weight", (hd,), has_kv),
            ("self_attn.v_proj.weight", "attn_v.weight", (kv, "embd"), has_v),
            ("self_attn.o_proj.weight", "attn_output.weight", ("embd", q), True),
            ("post_attention_layernorm.weight", "post_attention_norm.weight", ("embd",), True),
            ("pre_feedforward_layernorm.weight", "ffn_norm.weight", ("embd",), True),
            ("mlp.gate_proj.weight", "ffn_gate.weight", (ff, "embd"), True),
            ("mlp.up_proj.weight", "ffn_up.weight", (ff, "embd"), True),
            ("mlp.down_proj.weight", "ffn_down.weight", ("embd", ff), True),
            ("post_feedforward_layernorm.weight", "post_ffw_norm.weight", ("embd",), True),
            ("layer_scalar", "layer_output_scale.weight", ("one",), False),
        ]
        if self.n_expert:
            rows += [
                ("router.proj.weight", "ffn_gate_inp.weight", ("n_expert", "embd"), True),
                ("router.scale", "ffn_gate_inp.scale", ("embd",), True),
                ("router.per_expert_scale", "ffn_down_exps.scale", ("n_expert",), True),
                ("experts.gate_up_proj", "ffn_gate_up_exps.weight", ("n_expert", "ff_exp2", "embd"), True),
                ("experts.down_proj", "ffn_down_exps.weight", ("n_expert", "embd", "ff_exp"), True),
                ("pre_feedforward_layernorm_2.weight", "pre_ffw_norm_2.weight", ("embd",), True),
                ("post_feedforward_layernorm_1.weight", "post_ffw_norm_1.weight", ("embd",), True),
                ("post_feedforward_layernorm_2.weight", "post_ffw_norm_2.weight", ("embd",), True),
            ]
        if self.n_per_layer:
            rows += [
                ("per_layer_input_gate.weight", "inp_gate.weight", ("per", "embd"), True),
                ("per_layer_projection.weight", "proj.weight", ("embd", "per"), True),
                ("post_per_layer_input_norm.weight", "post_norm.weight", ("embd",), True),
            ]
        return [TensorRule(L + hf, B + g, shape, required=req) for hf, g, shape, req in rows]

    def _generated(self) -> list[PlannedSource]:
        return [PlannedSource("rope_freqs.weight", (self.head_dim_full // 2,), generate=self._rope_freqs)]

    def _rope_freqs(self) -> Array:
        """The full layers' proportional rope as factors of NEOX rope: 1 for the first
        partial_rotary_factor of the pairs, 1e30 (no rotation) for the rest."""
        n_rot = int(self.head_dim_full * float(self.full_rope["partial_rotary_factor"]) / 2)
        return np.array([1.0] * n_rot + [1e30] * (self.head_dim_full // 2 - n_rot), dtype=np.float32)

    # -- metadata --------------------------------------------------------------------------

    def add_hparams(self, w: GGUFWriter) -> None:
        """TextModel.set_gguf_parameters' keys (as Gemma3Model and Gemma4Model leave them)."""
        cfg = self.cfg
        w.add_block_count(self.n_layer)
        w.add_context_length(int(cfg.get("max_position_embeddings", 131072)))
        w.add_embedding_length(self.n_embd)
        ff = [self.n_ff_of(i) for i in range(self.n_layer)]
        w.add_feed_forward_length(ff if self.double_wide else self.n_ff)
        w.add_head_count(self.n_head)
        kv = [self.n_head_kv if s else self.n_kv_full for s in self.swa]
        w.add_head_count_kv(kv if self.kv_array else self.n_head_kv)
        if "rope_theta" in self.full_rope:
            w.add_rope_freq_base(float(self.full_rope["rope_theta"]))
        if "rope_theta" in self.swa_rope:
            w.add_rope_freq_base_swa(float(self.swa_rope["rope_theta"]))
        w.add_layer_norm_rms_eps(self.rms_eps)
        if self.n_expert:
            w.add_expert_count(self.n_expert)
            w.add_expert_used_count(self.n_expert_used)
        w.add_key_length(self.head_dim_full)
        w.add_value_length(self.head_dim_full)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:
        """Gemma3Model's and Gemma4Model's own keys."""
        if self.final_softcap:
            w.add_final_logit_softcapping(self.final_softcap)
        w.add_sliding_window(self.n_swa)
        w.add_shared_kv_layers(self.n_shared)
        w.add_embedding_length_per_layer_input(self.n_per_layer)
        w.add_sliding_window_pattern(self.swa)
        w.add_key_length_swa(self.head_dim)
        w.add_value_length_swa(self.head_dim)
        if self.n_expert:
            w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_rope_dimension_count(self.head_dim_full)
        w.add_rope_dimension_count_swa(self.head_dim)

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        vocab = gemma4_vocab(model_dir)
        if len(vocab.tokens) != self.n_vocab:
            raise ConvertError(
                f"{model_dir / 'tokenizer.json'}: {len(vocab.tokens)} tokens, but config.json's vocab_size "
                f"is {self.n_vocab} (the rows of embed_tokens); llama.cpp's gemma4 needs them equal"
            )
        return vocab


def _special_texts(tc: dict[str, Any]) -> set[str]:
    """transformers' all_special_tokens as tokenizer_config.json names them: every ``*_token``
    (bos, eos, unk, pad, and Gemma's own such as boi_token), additional_special_tokens and
    extra_special_tokens."""
    out = {t for k, v in tc.items() if k.endswith("_token") and (t := _content(v)) is not None}
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = tc.get(key)
        values = extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else []
        out.update(t for v in values if (t := _content(v)) is not None)
    return out


def gemma4_vocab(model_dir: Path) -> Vocab:
    """tokenizer.* as llama.cpp's Gemma4Model.set_vocab writes them (gguf-py's LlamaHfVocab): the
    BPE model's tokens by id (scores -1000; <0xXX> BYTE, special tokens CONTROL, else NORMAL), then
    the added tokens beyond them in id order (CONTROL if special, else USER_DEFINED); the chat
    parser's tokens (VISIBLE_TOKENS) USER_DEFINED; the merges, special ids and chat template;
    add_space_prefix false, add_bos_token true. No tokenizer.ggml.pre."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ConvertError(f"{model_dir}: no tokenizer.json (Gemma 4's tokenizer)")
    data = read_json(path)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    decoder = data.get("decoder") if isinstance(data.get("decoder"), dict) else {}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or decoder.get("type") != "Sequence":
        raise ConvertError(f"{path}: not a byte-fallback BPE tokenizer with a Sequence decoder (Gemma 4's)")
    base = model.get("vocab")
    if not isinstance(base, dict) or sorted(base.values()) != list(range(len(base))):
        raise ConvertError(f"{path}: 'model.vocab' must map tokens to the ids 0 .. n-1")
    tc = _optional_json(model_dir / "tokenizer_config.json")
    specials = _special_texts(tc)
    ids = {**base}
    added = [a for a in data.get("added_tokens") or [] if isinstance(a, dict)]
    extra = sorted((int(a["id"]), str(a["content"])) for a in added if int(a["id"]) >= len(base))
    if [i for i, _ in extra] != list(range(len(base), len(base) + len(extra))):
        raise ConvertError(f"{path}: the added tokens beyond the model's vocabulary leave gaps in the ids")
    ids.update({text: i for i, text in extra})
    special_ids = {ids[t] for t in specials if t in ids}
    tokens = [""] * len(ids)
    types = [0] * len(ids)
    for text, i in ids.items():
        tokens[i] = text
        if i >= len(base):
            types[i] = int(TokenType.CONTROL if text in specials else TokenType.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types[i] = int(TokenType.BYTE)
        else:
            types[i] = int(TokenType.CONTROL if i in special_ids else TokenType.NORMAL)
        if text in VISIBLE_TOKENS:
            types[i] = int(TokenType.USER_DEFINED)
    vocab = Vocab("gemma4", "", tokens, types, [-1000.0] * len(tokens), merges=_merges(model, path))
    _special_tokens(model_dir, vocab, len(tokens), tok_json=data)
    vocab.add_space_prefix = False
    vocab.add_special["bos"] = True
    return vocab
