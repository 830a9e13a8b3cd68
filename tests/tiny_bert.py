"""Tiny random BERT encoders as GGUF files (llama.cpp's ``bert`` and ``nomic-bert`` layouts, as its
convert_hf_to_gguf.py writes them), and a numpy float64 re-implementation of transformers' BertModel
(and of Nomic's NomicBertModel) for reference.

The reference follows transformers (modeling_bert.py): embeddings = word + position + token type 0,
LayerNorm; per layer self-attention with biases and no mask within a text, output dense, residual,
LayerNorm; intermediate dense, GELU (exact, with erf: BERT's "gelu"), output dense, residual,
LayerNorm; the last hidden states. (llama.cpp's bert graph reads a float16 table of GELU's tanh
approximation instead: ``gelu_kind="tanh"`` gives that form.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "and", "is", "it", "hello", "world",
         "play", "##s", "##ing", "##ed", "un", "##known", ",", ".", "!", "?"]


def wpm_vocab(n_vocab: int) -> list[str]:
    """A WordPiece vocabulary in llama.cpp's GGUF spelling: specials, words with the phantom space
    U+2581 before them ("##x" continuations as "x"), letters both ways, filler up to n_vocab."""
    toks = list(SPECIALS)
    for w in WORDS:
        toks.append(w[2:] if w.startswith("##") else "\u2581" + w)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        toks += [t for t in ("\u2581" + ch, ch) if t not in toks]
    i = 0
    while len(toks) < n_vocab:
        toks.append(f"\u2581w{i}")
        i += 1
    return toks[:n_vocab]


@dataclass
class BertConfig:
    arch: str = "bert"  # or "nomic-bert": rotary positions (NEOX pairs), SwiGLU, fused qkv, no biases
    rope_base: float = 1000.0
    n_vocab: int = 120
    n_embd: int = 64
    n_head: int = 4
    n_ff: int = 128
    n_layer: int = 2
    n_ctx_train: int = 48
    n_types: int = 2
    eps: float = 1e-12
    pooling: int = 1  # llama.cpp's pooling type: mean
    fused_qkv: bool = False
    key_length: int | None = None  # head size, if not n_embd / n_head (written as attention.key_length)
    n_cls_out: int = 0  # a reranker's head: cls (dense + tanh, unless cls_dense False) and cls.output
    cls_dense: bool = True
    seed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head


def make_weights(cfg: BertConfig) -> dict[str, np.ndarray]:
    """Random weights under llama.cpp's tensor names, shapes (rows, cols) as numpy holds them."""
    rng = np.random.default_rng(cfg.seed)
    E, F = cfg.n_embd, cfg.n_ff

    def mat(r: int, c: int, s: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((r, c)) * s / math.sqrt(c)).astype(np.float32)

    def vec(n: int, s: float = 0.1, mean: float = 0.0) -> np.ndarray:
        return (mean + s * rng.standard_normal(n)).astype(np.float32)

    w = {
        "token_embd.weight": (rng.standard_normal((cfg.n_vocab, E)) * 0.5).astype(np.float32),
        "position_embd.weight": (rng.standard_normal((cfg.n_ctx_train, E)) * 0.5).astype(np.float32),
        "token_types.weight": (rng.standard_normal((cfg.n_types, E)) * 0.5).astype(np.float32),
        "token_embd_norm.weight": vec(E, mean=1.0),
        "token_embd_norm.bias": vec(E),
    }
    nomic = cfg.arch == "nomic-bert"
    if nomic:
        del w["position_embd.weight"]
    if cfg.n_cls_out:
        if cfg.cls_dense:
            w["cls.weight"], w["cls.bias"] = mat(E, E), vec(E)
        w["cls.output.weight"], w["cls.output.bias"] = mat(cfg.n_cls_out, E, 2.0), vec(cfg.n_cls_out)
    Q = cfg.n_head * cfg.head_dim
    mats = [("attn_q", Q, E), ("attn_k", Q, E), ("attn_v", Q, E), ("attn_output", E, Q), ("ffn_up", F, E),
            ("ffn_down", E, F)] + ([("ffn_gate", F, E)] if nomic else [])
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        for name, rows, cols in mats:
            w[b + name + ".weight"] = mat(rows, cols, 2.0 if name in ("attn_q", "attn_k") else 1.0)
            if not nomic:
                w[b + name + ".bias"] = vec(rows)
        for name in ("attn_output_norm", "layer_output_norm"):
            w[b + name + ".weight"] = vec(E, mean=1.0)
            w[b + name + ".bias"] = vec(E)
    return w


def write_gguf(cfg: BertConfig, w: dict[str, np.ndarray], path: Path, *, weight_type: str = "F32",
               metadata: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Writes the model (2-D weights in weight_type, quantized by gguf.quants; 1-D F32) with a
    WordPiece vocabulary; returns the weights as the file holds them (dequantized, float64)."""
    wr = gguf.GGUFWriter(str(path), cfg.arch)
    wr.add_name("tiny-bert")
    wr.add_block_count(cfg.n_layer)
    wr.add_context_length(cfg.n_ctx_train)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_layer_norm_eps(cfg.eps)
    wr.add_causal_attention(False)
    if cfg.key_length:
        wr.add_key_length(cfg.key_length)
        wr.add_value_length(cfg.key_length)
    if cfg.arch == "nomic-bert":
        wr.add_rope_freq_base(cfg.rope_base)
    wr.add_pooling_type(gguf.PoolingType(cfg.pooling))
    if cfg.n_cls_out > 1:  # llama.cpp takes the head's width from the labels (else 1)
        wr.add_classifier_output_labels([f"label_{i}" for i in range(cfg.n_cls_out)])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32 if weight_type == "F32" else gguf.LlamaFileType.MOSTLY_F16)
    wr.add_tokenizer_model("bert")
    toks = wpm_vocab(cfg.n_vocab)
    wr.add_token_list(toks)
    wr.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in toks])
    wr.add_token_type_count(cfg.n_types)
    wr.add_unk_token_id(1)
    wr.add_pad_token_id(0)
    wr.add_bos_token_id(2)
    wr.add_uint32("tokenizer.ggml.cls_token_id", 2)
    wr.add_sep_token_id(3)
    wr.add_mask_token_id(4)
    for key, value in {**cfg.metadata, **(metadata or {})}.items():
        kv = wr.kv_data[0]
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = gguf.GGUFValue(value, kv[key].type if key in kv else gguf.GGUFValueType.get_type(value))
    held: dict[str, np.ndarray] = {}
    names = list(w)
    if cfg.fused_qkv:
        names = [n for n in names if not any(n.startswith(f"blk.{i}.attn_{x}.") for i in range(cfg.n_layer)
                                              for x in "qkv")]
    for name in names:  # token_types stays F32, as llama.cpp writes it (its graph adds the row as is)
        _add(wr, held, name, w[name], "F32" if name == "token_types.weight" else weight_type)
    if cfg.fused_qkv:
        for i in range(cfg.n_layer):
            b = f"blk.{i}."
            for kind in ("weight", "bias") if f"{b}attn_q.bias" in w else ("weight",):
                parts = [w[f"{b}attn_{x}.{kind}"] for x in "qkv"]
                _add(wr, held, f"{b}attn_qkv.{kind}", np.concatenate(parts, axis=0), weight_type)
                E = cfg.n_embd
                for j, x in enumerate("qkv"):
                    held[f"{b}attn_{x}.{kind}"] = held[f"{b}attn_qkv.{kind}"][j * E:(j + 1) * E]
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def _add(wr: gguf.GGUFWriter, held: dict[str, np.ndarray], name: str, x: np.ndarray,
         weight_type: str) -> None:
    if x.ndim == 1 or weight_type == "F32":
        wr.add_tensor(name, x.astype(np.float32))
        held[name] = x.astype(np.float64)
        return
    qt = gguf.GGMLQuantizationType[weight_type]
    if weight_type in ("F16", "BF16"):
        data = gguf.quants.quantize(x.astype(np.float32), qt)
    else:  # block types: our quantizer writes them (gguf-py has no k-quant quantizer); read back by gguf-py
        from splitllm.quants import quantize  # noqa: PLC0415

        data = quantize(x.astype(np.float32), weight_type.lower())
    wr.add_tensor(name, data, raw_dtype=qt)
    held[name] = gguf.quants.dequantize(data, qt).reshape(x.shape).astype(np.float64)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "erf":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _rotate_neox(t: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = t.shape[-1] // 2
    a, c = t[..., :half], t[..., half:]
    return np.concatenate([a * cos - c * sin, a * sin + c * cos], axis=-1)


def reference_hidden(cfg: BertConfig, w: dict[str, np.ndarray], ids: list[int], *,
                     gelu_kind: str = "erf", rotate: bool = True) -> np.ndarray:
    """The last hidden states (len(ids), n_embd), float64, of one text (nomic-bert without its
    rotation: ``rotate`` False)."""
    n, H, D = len(ids), cfg.n_head, cfg.head_dim
    nomic = cfg.arch == "nomic-bert"
    x = w["token_embd.weight"][ids] + w["token_types.weight"][0]
    if not nomic:
        x = x + w["position_embd.weight"][:n]
    x = _layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"], cfg.eps)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."

        def lin(name: str, h: np.ndarray, b: str = b) -> np.ndarray:
            return h @ w[b + name + ".weight"].T + w.get(b + name + ".bias", 0.0)

        q, k, v = (lin(p, x).reshape(n, H, D).transpose(1, 0, 2) for p in ("attn_q", "attn_k", "attn_v"))
        if nomic and rotate:  # rotary, NEOX pairs (j, j + D/2), theta = pos * base^(-2j/D)
            ang = np.arange(n)[:, None] * cfg.rope_base ** (-np.arange(0, D, 2) / D)[None, :]
            q, k = (_rotate_neox(t, np.cos(ang), np.sin(ang)) for t in (q, k))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(D)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        att = (p @ v).transpose(1, 0, 2).reshape(n, H * D)
        x = _layer_norm(x + lin("attn_output", att), w[b + "attn_output_norm.weight"],
                        w[b + "attn_output_norm.bias"], cfg.eps)
        if nomic:
            g = lin("ffn_gate", x)
            ff = lin("ffn_down", g / (1.0 + np.exp(-g)) * lin("ffn_up", x))
        else:
            ff = lin("ffn_down", gelu(lin("ffn_up", x), gelu_kind))
        x = _layer_norm(x + ff, w[b + "layer_output_norm.weight"], w[b + "layer_output_norm.bias"], cfg.eps)
    return x


def reference_scores(cfg: BertConfig, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """A reranker's scores (n_cls_out,) for one text: cls_out(tanh(cls(h_0) + b)) + b of its first
    token's last hidden state, as transformers' classification heads (and llama.cpp's rank pooling)."""
    h = reference_hidden(cfg, w, ids)[0]
    if "cls.weight" in w:
        h = np.tanh(h @ w["cls.weight"].T + w["cls.bias"])
    return h @ w["cls.output.weight"].T + w["cls.output.bias"]
