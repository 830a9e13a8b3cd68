"""DeciLMForCausalLM with ``block_configs`` (NVIDIA's Llama-3.1-Nemotron NAS models: Nemotron-51B,
Llama-3.3-Nemotron-Super-49B v1 / v1.5, Llama-3.1-Nemotron-Ultra-253B), written as llama.cpp's
DeciModel (conversion/deci.py) writes ``deci``: per layer, from its block_config,

- attention.head_count / head_count_kv: (num_attention_heads, num_attention_heads // n_heads_in_group)
  for attention, (num_attention_heads, 0) for ``replace_with_linear`` (self_attn.linear_attn.weight
  written as attn_output.weight), (0, 0) for an attention without heads (no_op);
- feed_forward_length: ``_find_multiple(int(2 * ffn_mult * hidden_size / 3), 256)``, 0 where
  ffn_mult is None (no_op);

key_length / value_length hidden_size // num_attention_heads, rope.dimension_count, vocab_size; q / k
rows permuted for GGML's rope with the layer's head counts; llama3 rope scaling as rope_freqs.weight;
the tokenizer as DeciModel writes the models' 128256-token one (a byte-level BPE, no add_space_prefix).

Refused, nothing written: DeciLM-7B's form (num_key_value_heads_per_layer, no block_configs), a
feed-forward replaced by a linear map (llama.cpp has none), attention options llama.cpp does not run
(sparsify, a sliding window, an unshifted sink, prefix tokens), a head_dim other than
hidden_size // num_attention_heads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gguf import GGUFWriter

from splitllm_convert.arch import Array, Llama, TensorRule, rope_permute
from splitllm_convert.errors import ConvertError
from splitllm_convert.quant_rules import HParams

_L, _B = "model.layers.{l}.", "blk.{l}."


def ffn_width(ffn_mult: float, n_embd: int) -> int:
    """DeciLM's _ffn_mult_to_intermediate_size: 2/3 of ffn_mult x hidden_size up to a multiple of 256."""
    n = int(2 * ffn_mult * n_embd / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def _layer_shapes(cfg: dict[str, Any], path: Path) -> list[tuple[int, int, int]]:
    """(query heads, key/value heads, feed-forward width) of each block_config."""
    blocks, n_head, e = cfg.get("block_configs"), cfg.get("num_attention_heads"), cfg.get("hidden_size")
    if not isinstance(blocks, list) or len(blocks) != cfg.get("num_hidden_layers"):
        raise ConvertError(
            f"{path}: 'block_configs' must list one block per layer (num_hidden_layers); "
            "DeciLM-7B's num_key_value_heads_per_layer form is not supported"
        )
    if not isinstance(n_head, int) or not isinstance(e, int) or n_head <= 0 or e <= 0:
        raise ConvertError(f"{path}: 'num_attention_heads' and 'hidden_size' must be positive integers")
    shapes = []
    for i, b in enumerate(blocks):
        att, ffn = (b or {}).get("attention") or {}, (b or {}).get("ffn") or {}
        for key in (
            "sparsify",
            "window_length",
            "num_sink_tokens",
            "unshifted_sink",
            "use_prefill_window_in_sink_attention",
        ):
            if att.get(key) not in (None, False):
                raise ConvertError(
                    f"{path}: block_configs[{i}].attention.{key} = {att[key]!r}: llama.cpp's deci has none"
                )
        if ffn.get("replace_with_linear") or ffn.get("sparsify") not in (None, False):
            raise ConvertError(
                f"{path}: block_configs[{i}].ffn: a linear or sparse feed-forward is not supported"
            )
        g = att.get("n_heads_in_group")
        if g is None:
            heads = (n_head, 0) if att.get("replace_with_linear") else (0, 0)
        elif not isinstance(g, int) or g <= 0 or n_head % g:
            raise ConvertError(
                f"{path}: block_configs[{i}].attention.n_heads_in_group = {g!r} must divide {n_head}"
            )
        else:
            heads = (n_head, n_head // g)
        mult = ffn.get("ffn_mult")
        if mult is not None and (not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult <= 0):
            raise ConvertError(
                f"{path}: block_configs[{i}].ffn.ffn_mult = {mult!r} must be a positive number"
            )
        shapes.append((*heads, 0 if mult is None else ffn_width(float(mult), e)))
    return shapes


class Deci(Llama):
    """DeciLMForCausalLM (block_configs): llama's blocks with per-layer shapes."""

    hf_names = ("DeciLMForCausalLM",)
    gguf_arch = "deci"
    space_prefix_key = False
    rules = (
        TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
        TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")),
    )

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        self.layers = _layer_shapes(cfg, config_path)
        widest = max(f for _, _, f in self.layers) or 1
        super().__init__({**cfg, "intermediate_size": widest, "num_key_value_heads": None}, config_path)
        self.cfg = cfg
        if self.rope["rope_type"] not in ("default", "llama3"):  # (DeciModel writes llama3's factors alone)
            raise ConvertError(
                f"{config_path}: rope scaling {self.rope['rope_type']!r}: llama.cpp's DeciModel writes "
                "llama3 scaling only"
            )
        if self.head_dim != self.n_embd // self.n_head:
            raise ConvertError(
                f"{config_path}: 'head_dim' {self.head_dim} is not hidden_size // num_attention_heads: "
                "llama.cpp's DeciModel writes that as the key length"
            )

    def table(self, available: Any) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        rules = list(self.rules)
        for i, (nh, nkv, ff) in enumerate(self.layers):
            hf, g = _L.format(l=i), _B.format(l=i)
            if nh > 0:
                rules.append(TensorRule(hf + "input_layernorm.weight", g + "attn_norm.weight", ("embd",)))
            if nh > 0 and nkv == 0:
                rules.append(
                    TensorRule(
                        hf + "self_attn.linear_attn.weight", g + "attn_output.weight", ("embd", "embd")
                    )
                )
            elif nh > 0:
                rules += [
                    TensorRule(
                        hf + "self_attn.q_proj.weight",
                        g + "attn_q.weight",
                        (f"q{i}", "embd"),
                        f"permute_q{i}",
                    ),
                    TensorRule(
                        hf + "self_attn.k_proj.weight",
                        g + "attn_k.weight",
                        (f"kv{i}", "embd"),
                        f"permute_k{i}",
                    ),
                    TensorRule(hf + "self_attn.v_proj.weight", g + "attn_v.weight", (f"kv{i}", "embd")),
                    TensorRule(hf + "self_attn.o_proj.weight", g + "attn_output.weight", ("embd", f"q{i}")),
                ]
            if ff > 0:
                rules += [
                    TensorRule(hf + "post_attention_layernorm.weight", g + "ffn_norm.weight", ("embd",)),
                    TensorRule(hf + "mlp.gate_proj.weight", g + "ffn_gate.weight", (f"ff{i}", "embd")),
                    TensorRule(hf + "mlp.up_proj.weight", g + "ffn_up.weight", (f"ff{i}", "embd")),
                    TensorRule(hf + "mlp.down_proj.weight", g + "ffn_down.weight", ("embd", f"ff{i}")),
                ]
        return tuple(rules), self.ignored

    def dims(self) -> dict[str, int]:
        per_layer = {}
        for i, (nh, nkv, ff) in enumerate(self.layers):
            per_layer |= {f"q{i}": nh * self.head_dim, f"kv{i}": nkv * self.head_dim, f"ff{i}": ff}
        return {**super().dims(), **per_layer}

    def transforms(self) -> dict[str, Callable[[Array], Array]]:
        out: dict[str, Callable[[Array], Array]] = {}
        for i, (nh, nkv, _) in enumerate(self.layers):
            if nkv > 0:
                out[f"permute_q{i}"] = lambda w, h=nh: rope_permute(w, h)
                out[f"permute_k{i}"] = lambda w, h=nkv: rope_permute(w, h)
        return out

    def hparams(self) -> HParams:
        nh, nkv, _ = self.layers[0]  # (llama.cpp's quantizer reads layer 0's)
        return HParams.of(self.gguf_arch, self.n_layer, nh, nkv, 0)

    def add_hparams(self, w: GGUFWriter) -> None:
        """DeciModel.set_gguf_parameters' keys, in its order."""
        w.add_rope_freq_base(self.rope_theta())
        w.add_head_count_kv([kv for _, kv, _ in self.layers])
        w.add_head_count([h for h, _, _ in self.layers])
        w.add_feed_forward_length([f for _, _, f in self.layers])
        w.add_block_count(self.n_layer)
        w.add_context_length(int(self.cfg.get("max_position_embeddings", self.default_ctx)))
        w.add_embedding_length(self.n_embd)
        w.add_layer_norm_rms_eps(float(self.cfg.get("rms_norm_eps", self.default_rms_eps)))
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_vocab_size(self.n_vocab)
        w.add_rope_dimension_count(self.head_dim)
