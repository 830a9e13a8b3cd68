"""Tiny random llama/qwen2 models written to GGUF with gguf-py, and a numpy float64 forward pass
(written from the architecture's definition, independent of splitllm's engine) to check them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np


def gpt2_byte_tokens() -> list[str]:
    """The 256 byte tokens of a byte-level BPE vocabulary (GPT-2's printable byte mapping)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return [mapping[b] for b in range(256)]


@dataclass
class TinyConfig:
    arch: str = "llama"
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    n_vocab: int = 320
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 256
    tied_output: bool = False
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class TinyModel:
    cfg: TinyConfig
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF name -> float64 (rows, cols)


def make_weights(cfg: TinyConfig) -> TinyModel:
    rng = np.random.default_rng(cfg.seed)
    hd = cfg.head_dim
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_head_kv * hd

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0, 1 / np.sqrt(cols), size=(rows, cols))

    def norm(n: int) -> np.ndarray:
        return 1 + 0.1 * rng.normal(size=n)

    w: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, cfg.n_embd))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(cfg.n_embd)
        w[b + "attn_q.weight"] = mat(q_dim, cfg.n_embd)
        w[b + "attn_k.weight"] = mat(kv_dim, cfg.n_embd)
        w[b + "attn_v.weight"] = mat(kv_dim, cfg.n_embd)
        if cfg.arch == "qwen2":
            w[b + "attn_q.bias"] = 0.1 * rng.normal(size=q_dim)
            w[b + "attn_k.bias"] = 0.1 * rng.normal(size=kv_dim)
            w[b + "attn_v.bias"] = 0.1 * rng.normal(size=kv_dim)
        w[b + "attn_output.weight"] = mat(cfg.n_embd, q_dim)
        w[b + "ffn_norm.weight"] = norm(cfg.n_embd)
        w[b + "ffn_gate.weight"] = mat(cfg.n_ff, cfg.n_embd)
        w[b + "ffn_up.weight"] = mat(cfg.n_ff, cfg.n_embd)
        w[b + "ffn_down.weight"] = mat(cfg.n_embd, cfg.n_ff)
    w["output_norm.weight"] = norm(cfg.n_embd)
    if not cfg.tied_output:
        w["output.weight"] = mat(cfg.n_vocab, cfg.n_embd)
    return TinyModel(cfg, w)


def write_gguf(
    model: TinyModel, path: Path, *, weight_type: str = "F32", quantize=None
) -> dict[str, np.ndarray]:
    """Writes the model; 2-D weights in ``weight_type`` (norms and biases stay F32).

    ``quantize(x, type_name) -> bytes array`` quantizes (default: gguf.quants). Returns the weights
    as the file holds them, dequantized with gguf.quants (float64), for the reference forward.
    """
    cfg = model.cfg
    arch = cfg.arch
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_name(f"tiny-{arch}")
    wr.add_block_count(cfg.n_layer)
    wr.add_context_length(cfg.n_ctx_train)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_head_count_kv(cfg.n_head_kv)
    wr.add_rope_freq_base(cfg.rope_base)
    wr.add_layer_norm_rms_eps(cfg.rms_eps)
    wr.add_rope_dimension_count(cfg.head_dim)
    wr.add_vocab_size(cfg.n_vocab)
    merges = ["t h", "h e", "i n", "e r", "a n"]
    tokens = gpt2_byte_tokens() + [m.replace(" ", "") for m in merges]
    n_normal = len(tokens)
    tokens += [f"<extra_{i}>" for i in range(cfg.n_vocab - len(tokens))]
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_types(
        [gguf.TokenType.NORMAL] * n_normal + [gguf.TokenType.CONTROL] * (cfg.n_vocab - n_normal)
    )
    wr.add_token_merges(merges)
    wr.add_bos_token_id(n_normal)
    wr.add_eos_token_id(n_normal + 1)
    wr.add_add_bos_token(False)
    held: dict[str, np.ndarray] = {}
    qtype = gguf.GGMLQuantizationType[weight_type.upper()]
    for name, x in model.weights.items():
        x32 = x.astype(np.float32)
        if x.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            wr.add_tensor(name, x32)
            held[name] = x32.astype(np.float64)
            continue
        if quantize is None:
            data = gguf.quants.quantize(x32, qtype)
        else:
            data = np.asarray(quantize(x32, weight_type))
        wr.add_tensor(name, data, raw_dtype=qtype)
        held[name] = gguf.quants.dequantize(data, qtype).astype(np.float64).reshape(x.shape)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def rope(x: np.ndarray, pos: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """Rotary embedding of x (n_tok, n_heads, head_dim) at positions pos (n_tok)."""
    hd = x.shape[-1]
    half = hd // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2 / hd)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * cos - b * sin
        out[..., half:] = a * sin + b * cos
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out


def reference_logits(
    cfg: TinyConfig, w: dict[str, np.ndarray], tokens: list[int], *, kv_f16: bool = True
) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab).

    With kv_f16 the keys (after rotation) and values are rounded to float16, as a KV cache of
    that type stores them; everything else is float64.
    """
    n, hd = len(tokens), cfg.head_dim
    gqa = cfg.n_head // cfg.n_head_kv
    pos = np.arange(n)

    def rmsnorm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.rms_eps) * g

    x = w["token_embd.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = rmsnorm(x, w[b + "attn_norm.weight"])
        q, k, v = (h @ w[b + f"attn_{t}.weight"].T + w.get(b + f"attn_{t}.bias", 0) for t in "qkv")
        q = rope(q.reshape(n, cfg.n_head, hd), pos, cfg.rope_base, cfg.arch == "qwen2")
        k = rope(k.reshape(n, cfg.n_head_kv, hd), pos, cfg.rope_base, cfg.arch == "qwen2")
        v = v.reshape(n, cfg.n_head_kv, hd)
        if kv_f16:
            k = k.astype(np.float16).astype(np.float64)
            v = v.astype(np.float16).astype(np.float64)
        att = np.empty((n, cfg.n_head, hd))
        for hh in range(cfg.n_head):
            kv = hh // gqa
            s = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            att[:, hh] = p @ v[:, kv]
        x = x + att.reshape(n, -1) @ w[b + "attn_output.weight"].T
        h = rmsnorm(x, w[b + "ffn_norm.weight"])
        g = h @ w[b + "ffn_gate.weight"].T
        u = h @ w[b + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[b + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return rmsnorm(x, w["output_norm.weight"]) @ out.T
