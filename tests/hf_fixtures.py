"""Hugging Face model directories for converter tests and benchmarks, built without downloads.

- ``tiny_model``: a random Llama / Mistral / Qwen / Phi-3 / Gemma 1 / Gemma 2 / Gemma 3 model (config.json,
  safetensors in f32, f16 or bf16, one file or shards with an index) with a byte-level BPE
  ``tokenizer.json`` trained with ``tokenizers`` and/or a SentencePiece ``tokenizer.model`` trained
  with ``sentencepiece``. ``gemma3_multimodal`` rewrites a Gemma 3 one as the text part of a
  Gemma3ForConditionalGeneration checkpoint, beside a stand-in vision tower.
- ``smollm2_hf_dir``: the real SmolLM2-135M-Instruct rebuilt as a Hugging Face directory from
  its Q4_1 GGUF: weights dequantized with gguf-py (the reference), the rotary permutation of
  q/k undone, tokenizer.json from the GGUF vocabulary and merges. Cached under
  ``splitllm.assets.cache_dir()``; ``smollm2_gguf(type)`` caches our conversions of it.
- ``reference_logits``: a numpy float64 forward pass with Hugging Face's semantics (rotate-half
  rope, GQA, SwiGLU, RMSNorm; Gemma's scaled embedding, (1 + w) norms, GeGLU, sliding windows and
  soft-capping), independent of the converter and of llama.cpp.

The builders do not use the converter's code (only ``smollm2_gguf`` calls it): the fixtures stay
an independent description of the Hugging Face format.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import serialize_file
from safetensors.numpy import TensorSpec

Weights = dict[str, np.ndarray]

# Pre-tokenizers as they appear in the tokenizer.json of real models
LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace("\\p{N}{1,3}", "\\p{N}")
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL],
    },
    "llama-bpe": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {**_BYTE_LEVEL, "use_regex": False},
        ],
    },
    "qwen2": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {**_BYTE_LEVEL, "use_regex": False},
        ],
    },
}

# Qwen3.5's split as its tokenizer.json holds it (marks kept in words)
QWEN35_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
PRE_TOKENIZERS["qwen35"] = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN35_SPLIT}, "behavior": "Isolated", "invert": False},
        {**_BYTE_LEVEL, "use_regex": False},
    ],
}

# o200k's split (GPT-4o, gpt-oss's o200k_harmony) as their tokenizer.json holds it
O200K_REGEX = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
PRE_TOKENIZERS["gpt-4o"] = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": O200K_REGEX}, "behavior": "Isolated", "invert": False},
        {**_BYTE_LEVEL, "use_regex": False},
    ],
}

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus(n_lines: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic training text: words, numbers, punctuation, a little non-ASCII."""
    rng = random.Random(seed)
    words = (
        "the of and to in is model token layer weight value query key cache attention rope matrix "
        "quantize block scale row column memory thread fast small large über café naïve 東京 "
        "hello world it's we're they'll I'd"
    ).split()
    lines = []
    for _ in range(n_lines):
        parts = [rng.choice(words) for _ in range(rng.randint(4, 14))]
        parts.insert(rng.randint(0, len(parts)), str(rng.randint(0, 99999)))
        lines.append(" ".join(parts) + rng.choice([".", "!", "?", ",", ":", " -", "\n"]))
    return lines


def write_bpe_tokenizer(d: Path, *, pre: str = "gpt-2", vocab_size: int = 320) -> int:
    """Train a byte-level BPE with ``tokenizers`` and write tokenizer.json + tokenizer_config.json.

    Returns the number of tokens. Ids 0..2 are BPE_SPECIALS (endoftext, im_start, im_end).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = json.loads(Tokenizer(models.BPE()).to_str())
    spec["pre_tokenizer"] = PRE_TOKENIZERS[pre]  # as real models' tokenizer.json spell it
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BPE_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(d / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "GPT2Tokenizer",
    }
    _write_json(d / "tokenizer_config.json", config)
    return int(tok.get_vocab_size())


def write_spm_tokenizer(d: Path, *, vocab_size: int = 400) -> int:
    """Train a SentencePiece BPE model (byte fallback) and write tokenizer.model; returns its size."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,  # as Llama 2's tokenizer.model
    )
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    _write_json(
        d / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    )
    _write_json(d / "tokenizer_config.json", {"add_bos_token": True, "add_eos_token": False})
    return int(spm.SentencePieceProcessor(model_proto=buf.getvalue()).vocab_size())


# -- weights ------------------------------------------------------------------------------------


def _initializers(rng: np.random.Generator, e: int) -> tuple[Callable[..., np.ndarray], ...]:
    """Random float32 initializers drawing from ``rng``: ``mat(rows, cols)`` (normal / sqrt(cols)),
    ``vec(n, base, scale)`` (base + scale * normal) and ``embedding(n)`` ((n, e), 0.5 * normal)."""

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    def vec(n: int, base: float, scale: float) -> np.ndarray:
        return (base + scale * rng.standard_normal(n)).astype(np.float32)

    def embedding(n: int) -> np.ndarray:
        return (0.5 * rng.standard_normal((n, e))).astype(np.float32)

    return mat, vec, embedding


def random_weights(cfg: dict[str, Any], *, seed: int = 0) -> Weights:
    """Random float32 weights in Hugging Face names and shapes for a llama-like ``cfg``."""
    rng = np.random.default_rng(seed)
    e, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or e // nh
    mat, vec, _ = _initializers(rng, e)
    gemma = is_gemma(cfg)
    base = 0.0 if gemma else 1.0  # Gemma's norms multiply by (1 + w)
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((v, e)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(e, base, 0.1 + 0.2 * gemma)
        w[p + "self_attn.q_proj.weight"] = mat(nh * hd, e)
        w[p + "self_attn.k_proj.weight"] = mat(nkv * hd, e)
        w[p + "self_attn.v_proj.weight"] = mat(nkv * hd, e)
        w[p + "self_attn.o_proj.weight"] = mat(e, nh * hd)
        if cfg.get("architectures") == ["Qwen2ForCausalLM"] or cfg.get("attention_bias"):
            w[p + "self_attn.q_proj.bias"] = vec(nh * hd, 0.0, 0.3)
            w[p + "self_attn.k_proj.bias"] = vec(nkv * hd, 0.0, 0.3)
            w[p + "self_attn.v_proj.bias"] = vec(nkv * hd, 0.0, 0.3)
        if cfg.get("attention_bias"):
            w[p + "self_attn.o_proj.bias"] = vec(e, 0.0, 0.3)
        if cfg.get("architectures") in (["Qwen3ForCausalLM"], ["Qwen3MoeForCausalLM"], ["Gemma3ForCausalLM"],
                                        ["Gemma3TextModel"]):
            w[p + "self_attn.q_norm.weight"] = vec(hd, base, 0.5)
            w[p + "self_attn.k_norm.weight"] = vec(hd, base, 0.5)
        w[p + "post_attention_layernorm.weight"] = vec(e, base, 0.1 + 0.2 * gemma)
        if gemma and cfg["architectures"] != ["GemmaForCausalLM"]:  # Gemma 2 / 3's norms after each part
            w[p + "pre_feedforward_layernorm.weight"] = vec(e, 0.0, 0.3)
            w[p + "post_feedforward_layernorm.weight"] = vec(e, 0.0, 0.3)
        if moe := _moe_names(cfg):
            router, names, n_expert, fx = moe
            w[p + router] = mat(n_expert, e)
            for x in range(n_expert):
                gate, up, down = (p + n.format(xid=x) for n in names)
                w[gate], w[up], w[down] = mat(fx, e), mat(fx, e), mat(e, fx)
            continue
        w[p + "mlp.gate_proj.weight"] = mat(ff, e)
        w[p + "mlp.up_proj.weight"] = mat(ff, e)
        w[p + "mlp.down_proj.weight"] = mat(e, ff)
    if cfg.get("architectures") == ["Phi3ForCausalLM"]:  # fused as Phi-3 stores them
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            qkv = [w.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"]
            w[p + "self_attn.qkv_proj.weight"] = np.concatenate(qkv)
            w[p + "mlp.gate_up_proj.weight"] = np.concatenate([w.pop(p + "mlp.gate_proj.weight"),
                                                               w.pop(p + "mlp.up_proj.weight")])
    w["model.norm.weight"] = vec(e, base, 0.1 + 0.2 * gemma)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(v, e)
    return w


def _moe_names(cfg: dict[str, Any]) -> tuple[str, tuple[str, str, str], int, int] | None:
    """(router, (gate, up, down) with {xid}, experts, expert width) of a MoE config, else None."""
    arch = cfg.get("architectures", [""])[0]
    if arch == "Qwen3MoeForCausalLM":
        names = tuple(f"mlp.experts.{{xid}}.{n}_proj.weight" for n in ("gate", "up", "down"))
        return "mlp.gate.weight", names, cfg["num_experts"], cfg["moe_intermediate_size"]
    if arch == "MixtralForCausalLM":
        names = tuple(f"block_sparse_moe.experts.{{xid}}.{n}.weight" for n in ("w1", "w3", "w2"))
        return "block_sparse_moe.gate.weight", names, cfg["num_local_experts"], cfg["intermediate_size"]
    return None


def as_dtype(x: np.ndarray, dtype: str) -> tuple[np.ndarray, str, np.ndarray]:
    """(stored array, safetensors dtype name, the float32 values it holds)."""
    if dtype == "f32":
        return x, "float32", x
    if dtype == "f16":
        h = x.astype(np.float16)
        return h, "float16", h.astype(np.float32)
    u = x.view(np.uint32)
    b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return b, "bfloat16", (b.astype(np.uint32) << 16).view(np.float32)


def save_weights(d: Path, weights: Weights, *, dtype: str = "f32", shards: int = 1) -> Weights:
    """Write safetensors (sharded with an index when ``shards`` > 1); returns the stored values as float32.

    uint8 arrays (MXFP4 blocks and scales) are written as U8, as they are (and returned unchanged)."""
    names = list(weights)
    groups = [names[i::shards] for i in range(shards)]
    stored: Weights = {}
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        arrays, specs = [], {}
        for n in group:
            if weights[n].dtype == np.uint8:
                arr = np.ascontiguousarray(weights[n])
                dt, as_f32 = "uint8", arr
            else:
                arr, dt, as_f32 = as_dtype(np.ascontiguousarray(weights[n], dtype=np.float32), dtype)
            arrays.append(arr)
            specs[n] = TensorSpec(dtype=dt, shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes)
            stored[n] = as_f32
            weight_map[n] = fname
        serialize_file(specs, str(d / fname), metadata={"format": "pt"})
        del arrays
    if shards > 1:
        total = sum(v.nbytes for v in stored.values()) // (1 if dtype == "f32" else 2)
        _write_json(
            d / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
        )
    return stored


def dense_base_config(architecture: str) -> dict[str, Any]:
    """config.json's keys shared by hf_dense's and hf_densevar's small models: 3 layers 64 wide, a
    feed-forward 96 wide, 4 query heads on 2 key/value heads, float32."""
    return {
        "architectures": [architecture], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
    }  # fmt: skip


def tiny_config(arch: str = "llama", **over: Any) -> dict[str, Any]:
    """config.json of a small model; ``arch`` is llama, mistral, mixtral, phi3, qwen2, qwen3, qwen3_moe,
    gemma (Gemma 1), gemma2 or gemma3."""
    hf = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
          "phi3": "Phi3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
          "qwen3_moe": "Qwen3MoeForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
          "gemma3": "Gemma3ForCausalLM"}[arch]
    cfg: dict[str, Any] = {
        "architectures": [hf],
        "model_type": arch,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if arch in ("mistral", "mixtral"):
        cfg["sliding_window"] = None
    if arch == "mixtral":
        cfg.update(num_local_experts=4, num_experts_per_tok=2)
    if arch in ("gemma2", "gemma3"):  # heads wider than hidden_size / n_head, as Gemma's are
        cfg.update(rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32)
    if arch == "gemma":  # Gemma 1 (7B-like: heads wider than hidden_size / n_head; all layers global)
        cfg.update(rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="gelu",
                   hidden_activation="gelu_pytorch_tanh", num_hidden_layers=3, head_dim=32)
    if arch == "gemma2":  # even layers local; transformers' default soft-caps
        cfg.update(num_hidden_layers=4, sliding_window=6, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0)
    if arch == "gemma3":  # layers 0-4 local, layer 5 global, layer 6 local
        cfg.update(model_type="gemma3_text", num_hidden_layers=7, sliding_window=4, sliding_window_pattern=6,
                   rope_theta=1_000_000.0, rope_local_base_freq=10000.0, rope_scaling=None,
                   final_logit_softcapping=None, attn_logit_softcapping=None)
    if arch == "qwen3_moe":
        cfg.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=True,
                   decoder_sparse_step=1, mlp_only_layers=[])
    cfg.update(over)
    return cfg


def tiny_model(
    d: Path,
    arch: str = "llama",
    *,
    dtype: str = "f32",
    shards: int = 1,
    tokenizer: str = "bpe",
    pre: str | None = None,
    extra_vocab: int = 0,
    seed: int = 0,
    **cfg_over: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random model directory in ``d``; returns (config, stored weights as float32).

    ``tokenizer``: "bpe" (tokenizer.json), "spm" (tokenizer.model) or "both". The model's vocab
    is the tokenizer's plus ``extra_vocab`` unused ids.
    """
    d.mkdir(parents=True, exist_ok=True)
    default_pre = {"llama": "llama-bpe", "mistral": "gpt-2", "mixtral": "gpt-2", "phi3": "gpt-2",
                   "qwen2": "qwen2", "qwen3": "qwen2", "qwen3_moe": "qwen2", "gemma": "gpt-2",
                   "gemma2": "gpt-2", "gemma3": "gpt-2"}[arch]
    n_tok = 0
    if tokenizer in ("bpe", "both"):
        n_tok = write_bpe_tokenizer(d, pre=pre or default_pre)
    if tokenizer in ("spm", "both"):
        n_tok = write_spm_tokenizer(d)
    cfg = tiny_config(arch, vocab_size=n_tok + extra_vocab, **cfg_over)
    if tokenizer == "spm":
        cfg.update(bos_token_id=1, eos_token_id=2)
    _write_json(d / "config.json", cfg)
    stored = save_weights(d, random_weights(cfg, seed=seed), dtype=dtype, shards=shards)
    return cfg, stored


def bpe_model_dir(
    d: Path, config_of: Callable[[int], dict[str, Any]], weights_of: Callable[..., Weights], *,
    pre: str = "gpt-2", dtype: str = "f32", shards: int = 1, seed: int = 0,
) -> tuple[dict[str, Any], Weights]:  # fmt: skip
    """A random model directory in ``d``: a byte-level BPE tokenizer.json (``pre``), config.json as
    config_of(the number of tokens) gives it, weights_of(config, seed=seed)'s tensors in ``dtype``;
    returns (config.json, the stored weights as float32)."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = config_of(write_bpe_tokenizer(d, pre=pre))
    _write_json(d / "config.json", cfg)
    return cfg, save_weights(d, weights_of(cfg, seed=seed), dtype=dtype, shards=shards)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


# -- a reference forward pass --------------------------------------------------------------------


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_inv_freq(cfg: dict[str, Any], hd: int) -> np.ndarray:
    """Rotary inverse frequencies (head_dim / 2,) as transformers computes them: default, linear
    scaling (positions divided by the factor) or Llama 3 scaling (_compute_llama3_parameters)."""
    inv = 1.0 / cfg.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind != "llama3":
        return inv
    factor, low, high = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old_ctx = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def _rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Hugging Face rotate-half rope on (n_head, T, head_dim) with inverse frequencies ``inv``."""
    hd = x.shape[-1]
    ang = np.outer(pos, inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
    return x * cos + rot * sin


def reference_logits(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) of a llama-like model in float64, following transformers' modeling code."""
    if is_gemma(cfg):
        return _gemma_logits(cfg, w, ids)
    g = {k: v.astype(np.float64) for k, v in w.items()}
    nh, nkv, e = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd, eps = cfg.get("head_dim") or e // nh, cfg["rms_norm_eps"]
    rot = int(hd * cfg.get("partial_rotary_factor", 1.0))  # Phi-3/4: the first dimensions of a head
    inv = rope_inv_freq(cfg, rot)
    x = g["model.embed_tokens.weight"][ids]
    mscale = 1.0
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "longrope":  # transformers' Phi-3 LongRoPE
        orig = cfg["original_max_position_embeddings"]
        inv = inv / np.asarray(scaling["long_factor" if len(ids) > orig else "short_factor"], np.float64)
        mscale = math.sqrt(1 + math.log(cfg["max_position_embeddings"] / orig) / math.log(orig))
    t = len(ids)
    pos = np.arange(t, dtype=np.float64)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if p + "self_attn.qkv_proj.weight" in g:  # Phi-3's fused projections
            qkv, gate_up, qd = g[p + "self_attn.qkv_proj.weight"], g[p + "mlp.gate_up_proj.weight"], nh * hd
            g.update({p + "self_attn.q_proj.weight": qkv[:qd],
                      p + "self_attn.k_proj.weight": qkv[qd: qd + nkv * hd],
                      p + "self_attn.v_proj.weight": qkv[qd + nkv * hd:],
                      p + "mlp.gate_proj.weight": gate_up[: len(gate_up) // 2],
                      p + "mlp.up_proj.weight": gate_up[len(gate_up) // 2:]})
        h = _rms(x, g[p + "input_layernorm.weight"], eps)
        q, k, v = (
            h @ g[p + f"self_attn.{n}_proj.weight"].T + g.get(p + f"self_attn.{n}_proj.bias", 0.0)
            for n in "qkv"
        )
        q, k = q.reshape(t, nh, hd).transpose(1, 0, 2), k.reshape(t, nkv, hd).transpose(1, 0, 2)
        if p + "self_attn.q_norm.weight" in g:  # Qwen3: per-head RMSNorm before the rotation
            q = _rms(q, g[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, g[p + "self_attn.k_norm.weight"], eps)
        q[..., :rot] = mscale * _rope(q[..., :rot], pos, inv)
        k[..., :rot] = mscale * _rope(k[..., :rot], pos, inv)
        v = v.reshape(t, nkv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(1, 0, 2).reshape(t, nh * hd) @ g[p + "self_attn.o_proj.weight"].T
        x = x + g.get(p + "self_attn.o_proj.bias", 0.0)
        h = _rms(x, g[p + "post_attention_layernorm.weight"], eps)
        if moe := _moe_names(cfg):
            x = x + _moe_ffn(cfg, g, p, h, moe)
            continue
        gate = h @ g[p + "mlp.gate_proj.weight"].T
        x = (
            x
            + (gate / (1 + np.exp(-gate)) * (h @ g[p + "mlp.up_proj.weight"].T))
            @ g[p + "mlp.down_proj.weight"].T
        )
    x = _rms(x, g["model.norm.weight"], eps)
    return x @ g.get("lm_head.weight", g["model.embed_tokens.weight"]).T



def _moe_ffn(cfg: dict[str, Any], g: Weights, p: str, h: np.ndarray, moe: tuple[Any, ...]) -> np.ndarray:
    """transformers' Qwen3MoeSparseMoeBlock / MixtralSparseMoeBlock: softmax router, top-k experts,
    weights renormalized (Mixtral always; Qwen3-MoE when norm_topk_prob)."""
    router, (gate, up, down), _, _ = moe
    z = h @ g[p + router].T
    prob = np.exp(z - z.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    k = cfg["num_experts_per_tok"]
    renorm = cfg.get("norm_topk_prob", False) or "num_local_experts" in cfg
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-prob[t], kind="stable")[:k]
        wts = prob[t, top] / prob[t, top].sum() if renorm else prob[t, top]
        for x, wt in zip(top, wts, strict=True):
            a, b = g[p + gate.format(xid=x)] @ h[t], g[p + up.format(xid=x)] @ h[t]
            out[t] += wt * (g[p + down.format(xid=x)] @ (a / (1 + np.exp(-a)) * b))
    return out

# -- Gemma 1, Gemma 2 and Gemma 3 ---------------------------------------------------------------------


def is_gemma(cfg: dict[str, Any]) -> bool:
    return cfg.get("architectures", [""])[0] in (
        "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3TextModel"
    )  # fmt: skip


def gemma_sliding_layers(cfg: dict[str, Any]) -> list[bool]:
    """Which layers attend through a sliding window: ``layer_types``, else transformers' pattern
    (Gemma 2: the even layers; Gemma 3: all but every ``sliding_window_pattern``-th; Gemma 1: none)."""
    if cfg["architectures"] == ["GemmaForCausalLM"]:
        return [False] * cfg["num_hidden_layers"]
    if cfg.get("layer_types"):
        return [t == "sliding_attention" for t in cfg["layer_types"]]
    n = 2 if cfg["architectures"] == ["Gemma2ForCausalLM"] else cfg.get("sliding_window_pattern", 6)
    return [(i + 1) % n != 0 for i in range(cfg["num_hidden_layers"])]


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """transformers' gelu_pytorch_tanh."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softcap(x: np.ndarray, cap: float | None) -> np.ndarray:
    return np.tanh(x / cap) * cap if cap else x


def _gemma_logits(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """transformers' GemmaForCausalLM / Gemma2ForCausalLM / Gemma3ForCausalLM in float64 (see
    gemma_hidden_states), the final logits soft-capped (Gemma 2, 3)."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    logits = gemma_hidden_states(cfg, w, ids) @ g.get("lm_head.weight", g["model.embed_tokens.weight"]).T
    return _softcap(logits, cfg.get("final_logit_softcapping"))


def gemma_hidden_states(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """The normed last hidden states (T, hidden) of transformers' Gemma / Gemma2 / Gemma3 text models
    in float64 (weights in Gemma*ForCausalLM's names): the embedding times sqrt(hidden_size) (in
    float32, the model's dtype), norms ``x * (1 + w)`` before and after attention and
    feed-forward (Gemma 1 (modeling_gemma.py): only before, post_attention_layernorm being the
    feed-forward's), per-head q/k norms (Gemma 3), queries scaled by query_pre_attn_scalar**-0.5
    (Gemma 1: head_dim**-0.5),
    attention soft-capped (Gemma 2), local layers masking keys ``sliding_window`` or more positions
    back (Gemma 3's with rope_local_base_freq, unscaled), a GeGLU feed-forward (gelu_pytorch_tanh).
    With ``use_bidirectional_attention`` (EmbeddingGemma's Gemma3TextModel) no causal mask, and
    transformers' config sets the window to sliding_window // 2 + 1, the local layers masking keys
    that many positions or more away either side."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    t = len(ids)
    gemma1 = cfg["architectures"] == ["GemmaForCausalLM"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _rms(x, 1.0 + g[name], eps)

    x = g["model.embed_tokens.weight"][ids] * float(np.float32(math.sqrt(cfg["hidden_size"])))
    pos = np.arange(t, dtype=np.float64)
    back = pos[:, None] - pos[None, :]  # how far back each key is from each query
    full = np.where(back >= 0, 0.0, -np.inf)
    local = np.where((back >= 0) & (back < (cfg.get("sliding_window") or t)), 0.0, -np.inf)
    if cfg.get("use_bidirectional_attention"):
        full = np.zeros((t, t))
        local = np.where(np.abs(back) < cfg["sliding_window"] // 2 + 1, 0.0, -np.inf)
    inv_full = rope_inv_freq(cfg, hd)
    inv_local = rope_inv_freq({"rope_theta": cfg.get("rope_local_base_freq", cfg.get("rope_theta"))}, hd)
    if cfg["architectures"] == ["Gemma2ForCausalLM"]:
        inv_local = inv_full
    for i, sliding in enumerate(gemma_sliding_layers(cfg)):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q, k, v = (h @ g[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
        q, k = q.reshape(t, nh, hd).transpose(1, 0, 2), k.reshape(t, nkv, hd).transpose(1, 0, 2)
        v = v.reshape(t, nkv, hd).transpose(1, 0, 2)
        if p + "self_attn.q_norm.weight" in g:
            q, k = norm(q, p + "self_attn.q_norm.weight"), norm(k, p + "self_attn.k_norm.weight")
        inv = inv_local if sliding else inv_full
        q, k = _rope(q, pos, inv), _rope(k, pos, inv)
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) * cfg.get("query_pre_attn_scalar", hd) ** -0.5
        s = _softcap(s, cfg.get("attn_logit_softcapping")) + (local if sliding else full)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, nh * hd)
        a = a @ g[p + "self_attn.o_proj.weight"].T
        if gemma1:  # x + attn, then the feed-forward on post_attention_layernorm(x)
            x = x + a
            h = norm(x, p + "post_attention_layernorm.weight")
        else:
            x = x + norm(a, p + "post_attention_layernorm.weight")
            h = norm(x, p + "pre_feedforward_layernorm.weight")
        f = _gelu_tanh(h @ g[p + "mlp.gate_proj.weight"].T) * (h @ g[p + "mlp.up_proj.weight"].T)
        f = f @ g[p + "mlp.down_proj.weight"].T
        x = x + (f if gemma1 else norm(f, p + "post_feedforward_layernorm.weight"))
    return norm(x, "model.norm.weight")


# transformers' Gemma3TextConfig defaults: gemma3_multimodal leaves keys holding them out of text_config
GEMMA3_TEXT_DEFAULTS = {
    "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
    "tie_word_embeddings": True, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "rope_scaling": None, "hidden_activation": "gelu_pytorch_tanh",
}  # fmt: skip


def gemma3_multimodal(src: Path, d: Path, weights: Weights, *, layout: str = "new", shards: int = 1) -> None:
    """Write the Gemma 3 model of directory ``src`` (stored ``weights``) to ``d`` as
    Gemma3ForConditionalGeneration saves it: the text settings in ``text_config`` (keys at their
    transformers default left out, as in Google's config.json), token ids at the top level, the
    decoder under ``model.language_model.`` (``layout`` "new", transformers >= 4.52) or
    ``language_model.model.`` ("old"), and a small stand-in vision tower and projector."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, d / name)
    cfg = json.loads((src / "config.json").read_text())
    top = {k: cfg.pop(k) for k in ("bos_token_id", "eos_token_id")}
    for key in ("architectures", "torch_dtype"):
        cfg.pop(key)
    text = {k: v for k, v in cfg.items() if k not in GEMMA3_TEXT_DEFAULTS or GEMMA3_TEXT_DEFAULTS[k] != v}
    _write_json(d / "config.json", {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", **top,
        "text_config": text, "image_token_index": 262144, "mm_tokens_per_image": 4,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "image_size": 8,
                          "patch_size": 4, "num_hidden_layers": 1},
    })  # fmt: skip
    rng = np.random.default_rng(1)
    head = "model." if layout == "new" else ""
    vision = {
        "vision_tower.vision_model.embeddings.patch_embedding.weight": (16, 3, 4, 4),
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": (16, 16),
        "vision_tower.vision_model.post_layernorm.weight": (16,),
        "multi_modal_projector.mm_input_projection_weight": (16, cfg["hidden_size"]),
        "multi_modal_projector.mm_soft_emb_norm.weight": (16,),
    }
    decoder = "model.language_model." if layout == "new" else "language_model.model."
    lm_head = "lm_head.weight" if layout == "new" else "language_model.lm_head.weight"
    out = {head + n: rng.standard_normal(shape).astype(np.float32) for n, shape in vision.items()}
    for n, x in weights.items():
        out[lm_head if n == "lm_head.weight" else decoder + n.removeprefix("model.")] = x
    save_weights(d, out, shards=shards)


# -- EmbeddingGemma (sentence-transformers' Gemma3TextModel) --------------------------------------

# layers 0-4 local, 5 global, 6 local: EmbeddingGemma's pattern (its config.json lists layer_types)
EMBEDDING_GEMMA_TYPES = ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]


def embedding_gemma_config(**over: Any) -> dict[str, Any]:
    """config.json of a small EmbeddingGemma: Gemma3TextModel with use_bidirectional_attention, the
    window as Google's config.json has it (transformers halves it when it loads the config)."""
    cfg = tiny_config("gemma3", architectures=["Gemma3TextModel"], sliding_window=8,
                      layer_types=EMBEDDING_GEMMA_TYPES, use_bidirectional_attention=True,
                      intermediate_size=96)  # fmt: skip
    cfg.pop("sliding_window_pattern")
    cfg.update(over)
    return cfg


def tiny_embedding_gemma(
    d: Path,
    *,
    dtype: str = "f32",
    pooling: str = "mean",
    dense: int | None = 96,
    prefix: str = "",
    seed: int = 0,
    **cfg_over: Any,
) -> tuple[dict[str, Any], Weights, list[np.ndarray]]:
    """A random EmbeddingGemma directory in ``d`` as sentence-transformers saves it: the
    Gemma3TextModel weights (names without a prefix, or with ``prefix``), a SentencePiece
    tokenizer adding BOS and EOS, modules.json with the Transformer, the Pooling (``pooling``),
    the Dense modules 2_Dense (hidden -> ``dense``) and 3_Dense (back; none if ``dense`` is None,
    no bias, Identity activation) and Normalize. Returns (config, stored weights in
    Gemma3ForCausalLM's names, the Dense modules' weights)."""
    d.mkdir(parents=True, exist_ok=True)
    n_tok = write_spm_tokenizer(d)
    _write_json(d / "tokenizer_config.json", {"add_bos_token": True, "add_eos_token": True})
    cfg = embedding_gemma_config(vocab_size=n_tok, **cfg_over)
    _write_json(d / "config.json", cfg)
    w = random_weights(cfg, seed=seed)
    stored = save_weights(d, {prefix + n.removeprefix("model."): x for n, x in w.items()}, dtype=dtype)
    weights = {"model." + n.removeprefix(prefix): x for n, x in stored.items()}
    write_pooling(d, pooling)  # (its modules.json is replaced below)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    denses: list[np.ndarray] = []
    if dense:
        rng = np.random.default_rng(seed + 1)
        e = cfg["hidden_size"]
        for k, (n_in, n_out) in enumerate([(e, dense), (dense, e)]):
            path = f"{k + 2}_Dense"
            modules.append({"idx": k + 2, "name": str(k + 2), "path": path,
                            "type": "sentence_transformers.models.Dense"})  # fmt: skip
            (d / path).mkdir()
            _write_json(d / path / "config.json", {"in_features": n_in, "out_features": n_out, "bias": False,
                                                   "activation_function": "torch.nn.modules.linear.Identity"})
            x = (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)
            denses.append(save_weights(d / path, {"linear.weight": x}, dtype=dtype)["linear.weight"])
    n = len(modules)
    (d / "2_Normalize").rmdir()  # (write_pooling's, in another place here)
    (d / f"{n}_Normalize").mkdir()
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})  # fmt: skip
    _write_json(d / "modules.json", modules)
    return cfg, weights, denses


def embedding_gemma_vectors(cfg: dict[str, Any], w: Weights, denses: list[np.ndarray], ids: list[int],
                            pooling: str = "mean") -> np.ndarray:
    """sentence-transformers' EmbeddingGemma in float64, before its Normalize module: the hidden
    states of gemma_hidden_states, their mean (or first / last token's), then each Dense module
    (x W^T)."""
    h = gemma_hidden_states(cfg, w, ids)
    x = {"mean": h.mean(axis=0), "cls": h[0], "lasttoken": h[-1]}[pooling]
    for m in denses:
        x = x @ m.astype(np.float64).T
    return x


# -- SmolLM2 rebuilt from its GGUF ---------------------------------------------------------------

REBUILD_VERSION = "1"
_GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """Hugging Face name of a llama GGUF tensor name."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_GGUF_TO_HF[parts[2]]}.{parts[3]}"
    return f"{_GGUF_TO_HF[parts[0]]}.{parts[1]}"


def undo_rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGML's interleaved rotary rows back to Hugging Face's rotate-half order, head by head."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _rebuild_tokenizer(r: Any, d: Path) -> None:
    tokens: list[str] = _field(r, "tokenizer.ggml.tokens")
    types: list[int] = _field(r, "tokenizer.ggml.token_type")
    special = [i for i, t in enumerate(types) if t == 3]
    byte_level = {**_BYTE_LEVEL, "add_prefix_space": True, "trim_offsets": False}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in special
        ],
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[_field(r, "tokenizer.ggml.pre")],
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": _field(r, "tokenizer.ggml.merges"),
        },
    }
    _write_json(d / "tokenizer.json", tok)
    names = {
        "bos": "bos_token_id",
        "eos": "eos_token_id",
        "unk": "unknown_token_id",
        "pad": "padding_token_id",
    }
    cfg: dict[str, Any] = {f"{k}_token": tokens[_field(r, f"tokenizer.ggml.{v}")] for k, v in names.items()}
    _write_json(d / "special_tokens_map.json", dict(cfg))
    add_bos = _field(r, "tokenizer.ggml.add_bos_token")
    cfg.update(
        add_prefix_space=_field(r, "tokenizer.ggml.add_space_prefix"),
        chat_template=_field(r, "tokenizer.chat_template"),
        model_max_length=_field(r, "llama.context_length"),
        tokenizer_class="GPT2Tokenizer",
    )
    if add_bos is not None:
        cfg["add_bos_token"] = add_bos
    _write_json(d / "tokenizer_config.json", cfg)


def _rebuild_config(r: Any, d: Path, tied: bool) -> None:
    a = "llama."
    name = "-".join(str(_field(r, f"general.{k}")) for k in ("basename", "size_label", "finetune"))
    cfg = {
        "_name_or_path": f"{_field(r, 'general.organization')}/{name}",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": _field(r, a + "embedding_length"),
        "intermediate_size": _field(r, a + "feed_forward_length"),
        "num_hidden_layers": _field(r, a + "block_count"),
        "num_attention_heads": _field(r, a + "attention.head_count"),
        "num_key_value_heads": _field(r, a + "attention.head_count_kv"),
        "max_position_embeddings": _field(r, a + "context_length"),
        "rms_norm_eps": float(np.float32(_field(r, a + "attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(_field(r, a + "rope.freq_base")),
        "rope_scaling": None,
        "vocab_size": _field(r, a + "vocab_size"),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "bos_token_id": _field(r, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(r, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(r, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    _write_json(d / "config.json", cfg)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(d / "generation_config.json", gen)
    langs = _field(r, "general.languages") or []
    card = ["---", f"license: {_field(r, 'general.license')}", "language:", *[f"- {x}" for x in langs], "---"]
    (d / "README.md").write_text(
        "\n".join(card) + "\n\nSmolLM2-135M-Instruct rebuilt from its GGUF for tests.\n"
    )


def rebuild_hf_from_gguf(gguf_path: Path, d: Path) -> None:
    """Write a Hugging Face directory equivalent to the llama-architecture GGUF at ``gguf_path``."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(gguf_path)
    if _field(r, "general.architecture") != "llama" or _field(r, "tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{gguf_path}: only llama models with a gpt2 tokenizer can be rebuilt")
    n_head, n_kv = _field(r, "llama.attention.head_count"), _field(r, "llama.attention.head_count_kv")
    weights: Weights = {}
    for t in r.tensors:
        x = (
            dequantize(t.data, t.tensor_type)
            .astype(np.float32)
            .reshape(tuple(int(n) for n in reversed(t.shape)))
        )
        if t.name.endswith("attn_q.weight"):
            x = undo_rope_permute(x, n_head)
        elif t.name.endswith("attn_k.weight"):
            x = undo_rope_permute(x, n_kv)
        weights[hf_name(t.name)] = np.ascontiguousarray(x)
    _rebuild_config(r, d, tied="lm_head.weight" not in weights)
    _rebuild_tokenizer(r, d)
    save_weights(d, weights, dtype="f32")


def smollm2_hf_dir(cache: Path | None = None, *, gguf_path: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory (f32 safetensors), built once and cached."""
    from splitllm.assets import cache_dir, smollm2_path

    root = cache or cache_dir()
    target = root / "SmolLM2-135M-Instruct-hf"
    stamp = target / ".rebuild-version"
    if stamp.is_file() and stamp.read_text() == REBUILD_VERSION:
        return target
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".smollm2-hf-"))
    try:
        rebuild_hf_from_gguf(gguf_path or smollm2_path(), tmp)
        (tmp / ".rebuild-version").write_text(REBUILD_VERSION)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf(type: str, cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct converted by convert-hf to ``type`` (f16, q8_0, q4_k_m, ...), cached."""
    from splitllm.assets import cache_dir
    from splitllm_convert import convert

    src = smollm2_hf_dir(cache)
    out = (cache or cache_dir()) / f"SmolLM2-135M-Instruct.convert-hf.{type.upper()}.gguf"
    stamp = out.with_suffix(".stamp")
    if not (out.is_file() and stamp.is_file() and stamp.read_text() == REBUILD_VERSION):
        convert(src, out, type=type, force=True, quiet=True)
        stamp.write_text(REBUILD_VERSION)
    return out


# -- BERT encoders (embedding models) -------------------------------------------------------------

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4 in write_wordpiece_tokenizer


@functools.lru_cache(maxsize=4)
def _trained_wordpiece(lowercase: bool, vocab_size: int) -> str:
    """A WordPiece tokenizer.json trained on ``corpus()``, once a process: the trainer breaks ties
    in hash-map order, so two trainings may differ. Ids: BERT_SPECIALS, then the rest sorted."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )  # fmt: skip
    tok.decoder = decoders.WordPiece(prefix="##")
    data = json.loads(tok.to_str())
    rest = sorted(t for t in data["model"]["vocab"] if t not in BERT_SPECIALS)
    data["model"]["vocab"] = {t: i for i, t in enumerate(BERT_SPECIALS + rest)}
    return json.dumps(data, ensure_ascii=False)


def write_wordpiece_tokenizer(
    d: Path,
    *,
    lowercase: bool = True,
    vocab_size: int = 500,
    files: tuple[str, ...] = ("tokenizer.json", "vocab.txt"),
) -> int:
    """Write a WordPiece vocabulary trained with ``tokenizers`` on ``corpus()`` as a BERT tokenizer
    is saved: tokenizer.json (BertNormalizer, BertPreTokenizer, ``[CLS] $A [SEP]`` template,
    WordPiece decoder) and/or vocab.txt, and tokenizer_config.json. Returns its size."""
    data = json.loads(_trained_wordpiece(lowercase, vocab_size))
    if "tokenizer.json" in files:
        _write_json(d / "tokenizer.json", data)
    vocab = data["model"]["vocab"]
    if "vocab.txt" in files:
        (d / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.__getitem__)), "utf-8")
    config = {
        "do_lower_case": lowercase, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]", "tokenize_chinese_chars": True, "strip_accents": None,
        "model_max_length": 512, "tokenizer_class": "BertTokenizer",
    }  # fmt: skip
    _write_json(d / "tokenizer_config.json", config)
    return len(vocab)


def bert_config(arch: str = "BertModel", **over: Any) -> dict[str, Any]:
    """config.json of a small BERT (as transformers' BertConfig saves it)."""
    cfg: dict[str, Any] = {
        "architectures": [arch], "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "hidden_act": "gelu",
        "max_position_embeddings": 128, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "use_cache": True, "torch_dtype": "float32", "vocab_size": 30522,
    }  # fmt: skip
    cfg.update(over)
    return cfg


def bert_weights(cfg: dict[str, Any], *, seed: int = 0, pooler: bool = True) -> Weights:
    """Random float32 weights of transformers' BertModel, in its names (no ``bert.`` prefix)."""
    rng = np.random.default_rng(seed)
    e, ff = cfg["hidden_size"], cfg["intermediate_size"]
    mat, vec, embedding = _initializers(rng, e)

    w: Weights = {
        "embeddings.word_embeddings.weight": embedding(cfg["vocab_size"]),
        "embeddings.position_embeddings.weight": embedding(cfg["max_position_embeddings"]),
        "embeddings.token_type_embeddings.weight": embedding(cfg["type_vocab_size"]),
        "embeddings.LayerNorm.weight": vec(e, 1.0, 0.2),
        "embeddings.LayerNorm.bias": vec(e, 0.0, 0.2),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, rows, cols in (("attention.self.query", e, e), ("attention.self.key", e, e),
                                 ("attention.self.value", e, e), ("attention.output.dense", e, e),
                                 ("intermediate.dense", ff, e), ("output.dense", e, ff)):  # fmt: skip
            w[p + name + ".weight"], w[p + name + ".bias"] = mat(rows, cols), vec(rows, 0.0, 0.2)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"], w[p + name + ".bias"] = vec(e, 1.0, 0.2), vec(e, 0.0, 0.2)
    if pooler:
        w["pooler.dense.weight"], w["pooler.dense.bias"] = mat(e, e), vec(e, 0.0, 0.2)
    return w


def _save_with_position_ids(d: Path, weights: Weights, dtype: str, n_ctx: int) -> Weights:
    """model.safetensors holding ``weights`` and the int64 ``embeddings.position_ids`` buffer that
    older transformers saved (one file)."""
    arrays, specs, stored = [], {}, {}
    for n, x in weights.items():
        arr, dt, stored[n] = as_dtype(np.ascontiguousarray(x, dtype=np.float32), dtype)
        arrays.append(arr)
        specs[n] = TensorSpec(dtype=dt, shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    pos = np.arange(n_ctx, dtype=np.int64)[None]
    specs["embeddings.position_ids"] = TensorSpec(dtype="int64", shape=pos.shape, data_ptr=pos.ctypes.data,
                                                  data_len=pos.nbytes)  # fmt: skip
    serialize_file(specs, str(d / "model.safetensors"), metadata={"format": "pt"})
    del arrays
    return stored


def write_pooling(d: Path, mode: str) -> None:
    """sentence-transformers' modules.json and 1_Pooling/config.json pooling by ``mode`` (mean, cls,
    lasttoken, max, mean_sqrt_len, weightedmean), a Normalize module after it, as all-MiniLM-L6-v2
    ships them."""
    _write_json(d / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])  # fmt: skip
    (d / "1_Pooling").mkdir(exist_ok=True)
    (d / "2_Normalize").mkdir(exist_ok=True)
    modes = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens",
             "mean_sqrt_len": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens",
             "lasttoken": "lasttoken"}  # fmt: skip
    pooling = {"word_embedding_dimension": 64, **{f"pooling_mode_{m}": k == mode for k, m in modes.items()},
               "include_prompt": True}  # fmt: skip
    _write_json(d / "1_Pooling" / "config.json", pooling)
    _write_json(d / "sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False})


def tiny_bert(
    d: Path,
    arch: str = "BertModel",
    *,
    dtype: str = "f32",
    shards: int = 1,
    lowercase: bool = True,
    pooling: str | None = None,
    tokenizer_files: tuple[str, ...] = ("tokenizer.json", "vocab.txt"),
    position_ids: bool = False,
    seed: int = 0,
    **cfg_over: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random BERT directory in ``d``; returns (config, stored weights as float32, in
    BertModel's names). ``arch``: "BertModel" (names as BertModel saves them, pooler included) or
    "BertForMaskedLM" (under ``bert.``, no pooler, with the masked-LM head ``cls.predictions.*``).
    ``pooling``: write sentence-transformers' modules (see write_pooling)."""
    d.mkdir(parents=True, exist_ok=True)
    n_tok = write_wordpiece_tokenizer(d, lowercase=lowercase, files=tokenizer_files)
    cfg = bert_config(arch, vocab_size=n_tok, **cfg_over)
    _write_json(d / "config.json", cfg)
    if pooling:
        write_pooling(d, pooling)
    w = bert_weights(cfg, seed=seed, pooler=arch == "BertModel")
    if arch == "BertForMaskedLM":
        rng = np.random.default_rng(seed + 1)
        e = cfg["hidden_size"]
        t = "cls.predictions.transform."
        head = {"cls.predictions.bias": (cfg["vocab_size"],), t + "dense.weight": (e, e),
                t + "dense.bias": (e,), t + "LayerNorm.weight": (e,), t + "LayerNorm.bias": (e,)}  # fmt: skip
        saved = {"bert." + n: x for n, x in w.items()}
        saved.update((n, rng.standard_normal(shape).astype(np.float32)) for n, shape in head.items())
        stored = save_weights(d, saved, dtype=dtype, shards=shards)
        return cfg, {n.removeprefix("bert."): x for n, x in stored.items() if not n.startswith("cls.")}
    if position_ids:
        return cfg, _save_with_position_ids(d, w, dtype, cfg["max_position_embeddings"])
    return cfg, save_weights(d, w, dtype=dtype, shards=shards)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    """transformers' "gelu" (exact, with erf)."""
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def bert_hidden_states(cfg: dict[str, Any], w: Weights, ids: list[int], *, gelu: str = "erf") -> np.ndarray:
    """The last hidden states (T, hidden) of transformers' BertModel in float64 for one sequence of
    ``ids`` (attention to every token, token type 0 everywhere): word + position + token-type
    embeddings, LayerNorm; per layer self-attention with biases, softmax(q k^T / sqrt(head_dim)),
    output dense + residual + LayerNorm, intermediate dense + GELU + output dense + residual +
    LayerNorm. ``gelu``: "erf" (BERT's) or "tanh" (the approximation llama.cpp computes)."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    nh, eps, t = cfg["num_attention_heads"], cfg["layer_norm_eps"], len(ids)
    hd = cfg["hidden_size"] // nh
    act = _gelu_erf if gelu == "erf" else _gelu_tanh

    def dense(x: np.ndarray, name: str) -> np.ndarray:
        return x @ g[name + ".weight"].T + g[name + ".bias"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, g[name + ".weight"], g[name + ".bias"], eps)

    x = (g["embeddings.word_embeddings.weight"][ids] + g["embeddings.position_embeddings.weight"][:t]
         + g["embeddings.token_type_embeddings.weight"][0])  # fmt: skip
    x = norm(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{n}").reshape(t, nh, hd).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))  # fmt: skip
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, nh * hd)
        x = norm(dense(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        f = dense(act(dense(x, p + "intermediate.dense")), p + "output.dense")
        x = norm(f + x, p + "output.LayerNorm")
    return x


# -- Nomic BERT (nomic-embed-text) ----------------------------------------------------------------


def nomic_config(**over: Any) -> dict[str, Any]:
    """config.json of a small NomicBertModel, with the keys nomic-embed-text-v1.5's holds (Nomic's
    NomicBertConfig, a GPT2Config: n_embd, n_layer, n_head, n_inner, n_positions)."""
    cfg: dict[str, Any] = {
        "architectures": ["NomicBertModel"], "model_type": "nomic_bert",
        "auto_map": {"AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                     "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"},
        "activation_function": "swiglu", "attn_pdrop": 0.0, "bos_token_id": None, "causal": False,
        "dense_seq_output": True, "embd_pdrop": 0.0, "eos_token_id": None, "fused_bias_fc": True,
        "fused_dropout_add_ln": True, "initializer_range": 0.02, "layer_norm_epsilon": 1e-12,
        "max_trained_positions": 2048, "mlp_fc1_bias": False, "mlp_fc2_bias": False, "n_embd": 64,
        "n_head": 4, "n_inner": 128, "n_layer": 2, "n_positions": 8192, "pad_vocab_size_multiple": 64,
        "parallel_block": False, "parallel_block_tied_norm": False, "prenorm": False, "qkv_proj_bias": False,
        "reorder_and_upcast_attn": False, "resid_pdrop": 0.0, "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
        "torch_dtype": "float32", "type_vocab_size": 2, "use_cache": True, "use_flash_attn": True,
        "use_rms_norm": False, "use_xentropy": True, "vocab_size": 30528,
    }  # fmt: skip
    cfg.update(over)
    return cfg


def nomic_weights(cfg: dict[str, Any], *, seed: int = 0) -> Weights:
    """Random float32 weights of Nomic's NomicBertModel, in its names (no biases but the LayerNorms')."""
    rng = np.random.default_rng(seed)
    e, ff = cfg["n_embd"], cfg["n_inner"]
    mat, vec, embedding = _initializers(rng, e)

    w: Weights = {
        "embeddings.word_embeddings.weight": embedding(cfg["vocab_size"]),
        "embeddings.token_type_embeddings.weight": embedding(cfg["type_vocab_size"]),
        "emb_ln.weight": vec(e, 1.0, 0.2), "emb_ln.bias": vec(e, 0.0, 0.2),
    }  # fmt: skip
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}."
        w[p + "attn.Wqkv.weight"] = mat(3 * e, e)
        w[p + "attn.out_proj.weight"] = mat(e, e)
        w[p + "norm1.weight"], w[p + "norm1.bias"] = vec(e, 1.0, 0.2), vec(e, 0.0, 0.2)
        w[p + "mlp.fc11.weight"], w[p + "mlp.fc12.weight"] = mat(ff, e), mat(ff, e)
        w[p + "mlp.fc2.weight"] = mat(e, ff)
        w[p + "norm2.weight"], w[p + "norm2.bias"] = vec(e, 1.0, 0.2), vec(e, 0.0, 0.2)
    return w


def tiny_nomic(
    d: Path,
    *,
    dtype: str = "f32",
    shards: int = 1,
    pooling: str | None = None,
    prefix: str = "",
    seed: int = 0,
    **cfg_over: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random NomicBertModel directory in ``d`` with the WordPiece tokenizer of tiny_bert (its
    vocab_size rounded up to a multiple of 64, as Nomic pads it); returns (config, stored weights
    as float32, in NomicBertModel's names). ``pooling``: write sentence-transformers' modules (see
    write_pooling). ``prefix``: "bert." saves the weights under it (as NomicBertForPreTraining)."""
    d.mkdir(parents=True, exist_ok=True)
    n_tok = write_wordpiece_tokenizer(d, files=("tokenizer.json", "vocab.txt"))
    cfg = nomic_config(vocab_size=-(-n_tok // 64) * 64, **cfg_over)
    _write_json(d / "config.json", cfg)
    if pooling:
        write_pooling(d, pooling)
    w = {prefix + n: x for n, x in nomic_weights(cfg, seed=seed).items()}
    stored = save_weights(d, w, dtype=dtype, shards=shards)
    return cfg, {n.removeprefix(prefix): x for n, x in stored.items()}


def nomic_hidden_states(cfg: dict[str, Any], w: Weights, ids: list[int], *, gate: str = "fc12") -> np.ndarray:
    """The last hidden states (T, n_embd) of Nomic's NomicBertModel in float64 for one sequence
    (modeling_hf_nomic_bert.py, no padding, token type 0): word + token-type embeddings, emb_ln;
    per layer the fused Wqkv split into q, k, v (in that order, heads contiguous), rotary over the
    whole head with base rotary_emb_base, rotating the two halves (rotary_emb_interleaved false),
    softmax(q k^T / sqrt(head_dim)) over every token, out_proj, residual, norm1; then Nomic's
    gated MLP ``fc2(fc11(x) * silu(fc12(x)))`` (``gate``: which of fc11 / fc12 is the gate, to
    show the reference tells them apart), residual, norm2."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    nh, e, t = cfg["n_head"], cfg["n_embd"], len(ids)
    hd, eps = e // nh, cfg["layer_norm_epsilon"]
    inv = 1.0 / float(cfg["rotary_emb_base"]) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    pos = np.arange(t, dtype=np.float64)
    up = "fc11" if gate == "fc12" else "fc12"

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, g[name + ".weight"], g[name + ".bias"], eps)

    x = norm(g["embeddings.word_embeddings.weight"][ids] + g["embeddings.token_type_embeddings.weight"][0],
             "emb_ln")  # fmt: skip
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}."
        qkv = (x @ g[p + "attn.Wqkv.weight"].T).reshape(t, 3, nh, hd).transpose(1, 2, 0, 3)  # (3, nh, t, hd)
        q, k, v = _rope(qkv[0], pos, inv), _rope(qkv[1], pos, inv), qkv[2]
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, e)
        x = norm(x + a @ g[p + "attn.out_proj.weight"].T, p + "norm1")
        z = x @ g[p + f"mlp.{gate}.weight"].T
        f = (x @ g[p + f"mlp.{up}.weight"].T) * (z / (1 + np.exp(-z)))
        x = norm(x + f @ g[p + "mlp.fc2.weight"].T, p + "norm2")
    return x


# -- XLM-RoBERTa (bge-m3, multilingual-e5) --------------------------------------------------------

XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's ids 0..3; <mask> is the last id


def train_xlmr_spm(*, model_type: str = "unigram", vocab_size: int = 400, **spec: Any) -> bytes:
    """A SentencePiece model trained on ``corpus()`` as XLM-R's sentencepiece.bpe.model is laid out
    (<unk> 0, <s> 1, </s> 2, no <pad>; nmt_nfkc normalization, a dummy prefix, extra whitespace
    removed; ``spec`` overrides these trainer settings: normalization_rule_name, add_dummy_prefix,
    remove_extra_whitespaces, the special ids); the model proto's bytes. ("identity" leaves the
    model without the 240 KB precompiled_charsmap, which gguf-py's reader takes seconds to read
    element by element.)"""
    import sentencepiece as spm

    buf = io.BytesIO()
    settings = {"normalization_rule_name": "nmt_nfkc", "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
                **spec}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=False, **settings,
    )  # fmt: skip
    return buf.getvalue()


def xlmr_tokenizer_json(proto: bytes) -> str:
    """tokenizer.json as transformers' XLMRobertaConverter builds it from a sentencepiece.bpe.model:
    a Unigram model over fairseq's ids (the four specials, pieces 3.. at their id + 1, <mask>
    last), the model's precompiled normalizer and runs of spaces made one, Metaspace pre-tokenizer
    and decoder, ``<s> $A </s>`` template; the five specials as added tokens."""
    import tokenizers as tk
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    m = pb.ModelProto()
    m.ParseFromString(proto)
    vocab = [(t, 0.0) for t in XLMR_SPECIALS] + [(p.piece, p.score) for p in m.pieces[3:]] + [("<mask>", 0.0)]
    tok = tk.Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    steps = [normalizers.Precompiled(m.normalizer_spec.precompiled_charsmap)] if (
        m.normalizer_spec.precompiled_charsmap) else []  # fmt: skip
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(tk.Regex(" {2,}"), " ")])
    scheme = "always" if m.normalizer_spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    added = [tk.AddedToken(t, special=True, normalized=False) for t in XLMR_SPECIALS]
    tok.add_special_tokens([*added, tk.AddedToken("<mask>", special=True, lstrip=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return str(tok.to_str())


def write_xlmr_tokenizer(
    d: Path,
    *,
    model_type: str = "unigram",
    files: tuple[str, ...] = ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"),
    **spec: Any,
) -> int:
    """Write XLM-R's tokenizer files (as bge-m3 and multilingual-e5 ship them) for a SentencePiece
    model trained here (``spec``: see train_xlmr_spm); returns the vocabulary size: pieces + 2
    (fairseq's ids and <mask>)."""
    proto = train_xlmr_spm(model_type=model_type, **spec)
    if "sentencepiece.bpe.model" in files:
        (d / "sentencepiece.bpe.model").write_bytes(proto)
    if "tokenizer.json" in files:
        (d / "tokenizer.json").write_text(xlmr_tokenizer_json(proto), encoding="utf-8")
    if "tokenizer_config.json" in files:
        _write_json(d / "tokenizer_config.json", {
            "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
            "unk_token": "<unk>", "pad_token": "<pad>",
            "mask_token": {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False,
                           "single_word": False, "special": True},
            "model_max_length": 512, "tokenizer_class": "XLMRobertaTokenizer",
        })  # fmt: skip
    import sentencepiece as spm

    return int(spm.SentencePieceProcessor(model_proto=proto).vocab_size()) + 2


def xlmr_config(**over: Any) -> dict[str, Any]:
    """config.json of a small XLMRobertaModel (as transformers' XLMRobertaConfig saves bge-m3's)."""
    cfg = bert_config("XLMRobertaModel", model_type="xlm-roberta", max_position_embeddings=130,
                      type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      output_past=True)  # fmt: skip
    cfg.update(over)
    return cfg


def tiny_xlmr(
    d: Path,
    *,
    dtype: str = "f32",
    shards: int = 1,
    pooling: str | None = None,
    prefix: str = "",
    tokenizer_files: tuple[str, ...] = ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"),
    normalization: str = "nmt_nfkc",
    seed: int = 0,
    **cfg_over: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random XLMRobertaModel directory in ``d``; returns (config, stored weights as float32, in
    XLMRobertaModel's names: BertModel's). ``prefix``: "roberta." saves them under it, without the
    pooler (as a checkpoint of a bigger model does). ``normalization``: the SentencePiece model's."""
    d.mkdir(parents=True, exist_ok=True)
    n_tok = write_xlmr_tokenizer(d, files=tokenizer_files, normalization_rule_name=normalization)
    cfg = xlmr_config(vocab_size=n_tok, **cfg_over)
    _write_json(d / "config.json", cfg)
    if pooling:
        write_pooling(d, pooling)
    w = bert_weights(cfg, seed=seed, pooler=not prefix)
    stored = save_weights(d, {prefix + n: x for n, x in w.items()}, dtype=dtype, shards=shards)
    return cfg, {n.removeprefix(prefix): x for n, x in stored.items()}


def xlmr_hidden_states(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """The last hidden states (T, hidden) of transformers' XLMRobertaModel in float64: BertModel's
    (bert_hidden_states) with the position ids of create_position_ids_from_input_ids, which count
    the non-padding tokens from padding_idx + 1 (padding tokens get padding_idx)."""
    pad = cfg["pad_token_id"]
    mask = (np.asarray(ids) != pad).astype(np.int64)
    positions = np.cumsum(mask) * mask + pad
    name = "embeddings.position_embeddings.weight"
    return bert_hidden_states(cfg, {**w, name: w[name][positions]}, ids)


# -- SmolLM3, Granite 3 and OLMo 2 ------------------------------------------------------------------

VARIANT_ARCHS = {"smollm3": "SmolLM3ForCausalLM", "granite": "GraniteForCausalLM",
                 "olmo2": "Olmo2ForCausalLM"}  # fmt: skip
VARIANT_PRE = {"smollm3": "llama-bpe", "granite": "smollm", "olmo2": "llama-bpe"}  # as the real tokenizers


def variant_config(arch: str, **over: Any) -> dict[str, Any]:
    """config.json of a small SmolLM3 / Granite / OLMo 2 model (``arch``: smollm3, granite, olmo2),
    with the keys transformers' SmolLM3Config / GraniteConfig / Olmo2Config save."""
    cfg = tiny_config("llama", architectures=[VARIANT_ARCHS[arch]], model_type=arch, attention_bias=False)
    if arch == "smollm3":  # layers 3 and 7 unrotated, as SmolLM3-3B's config.json lists them
        n = over.get("num_hidden_layers", 8)
        cfg.update(num_hidden_layers=n, tie_word_embeddings=True, mlp_bias=False, use_sliding_window=False,
                   sliding_window=None, no_rope_layer_interval=4,
                   no_rope_layers=[int((i + 1) % 4 != 0) for i in range(n)],
                   layer_types=["full_attention"] * n)  # fmt: skip
    if arch == "granite":  # Granite 3's residual and logit multipliers; the embedding's and attention's
        # fitted to these unscaled random weights, so that every branch and score counts
        cfg.update(num_hidden_layers=3, mlp_bias=False, embedding_multiplier=0.5, residual_multiplier=0.22,
                   attention_multiplier=0.0625, logits_scaling=8.0)  # fmt: skip
    if arch == "olmo2":
        cfg.update(num_hidden_layers=3, rms_norm_eps=1e-6, pad_token_id=1)
    cfg.update(over)
    return cfg


def variant_weights(cfg: dict[str, Any], *, seed: int = 0) -> Weights:
    """Random float32 weights in the names and shapes of ``cfg``'s model: random_weights' llama
    layout (biases of q, k, v, o with attention_bias); OLMo 2 without input norms, with q/k norms
    over the whole projections and a norm after the feed-forward."""
    w = random_weights(cfg, seed=seed)
    if cfg["architectures"] != ["Olmo2ForCausalLM"]:
        return w
    e, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or e // nh
    _, vec, _ = _initializers(np.random.default_rng(seed + 1), e)
    out: Weights = {}
    for name, x in w.items():
        if name.endswith("input_layernorm.weight"):
            continue
        out[name] = x
        if name.endswith("self_attn.k_proj.weight"):
            p = name.removesuffix("k_proj.weight")
            out[p + "q_norm.weight"] = vec(nh * hd, 1.0, 0.3)
            out[p + "k_norm.weight"] = vec(nkv * hd, 1.0, 0.3)
        if name.endswith("mlp.down_proj.weight"):
            p = name.removesuffix("mlp.down_proj.weight")
            out[p + "post_feedforward_layernorm.weight"] = vec(e, 1.0, 0.2)
    return out


def tiny_variant(
    d: Path,
    arch: str,
    *,
    dtype: str = "f32",
    shards: int = 1,
    seed: int = 0,
    drop: tuple[str, ...] = (),
    **cfg_over: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random SmolLM3 / Granite / OLMo 2 directory in ``d`` with a byte-level BPE tokenizer.json
    (its pre-tokenizer as the real model's); returns (config.json as written, stored weights as
    float32). ``drop``: config keys left out of config.json (left to transformers' defaults; the
    weights are those of the full config)."""
    d.mkdir(parents=True, exist_ok=True)
    n_tok = write_bpe_tokenizer(d, pre=VARIANT_PRE[arch])
    cfg = variant_config(arch, vocab_size=n_tok, **cfg_over)
    written = {k: v for k, v in cfg.items() if k not in drop}
    _write_json(d / "config.json", written)
    return written, save_weights(d, variant_weights(cfg, seed=seed), dtype=dtype, shards=shards)


def variant_rotated_layers(cfg: dict[str, Any]) -> list[bool]:
    """The layers transformers rotates: SmolLM3's no_rope_layers (or every no_rope_layer_interval-th
    left out), every layer for the others."""
    n = cfg["num_hidden_layers"]
    if cfg["architectures"] != ["SmolLM3ForCausalLM"]:
        return [True] * n
    if cfg.get("no_rope_layers") is not None:
        return [bool(v) for v in cfg["no_rope_layers"][:n]]
    step = cfg.get("no_rope_layer_interval", 4)
    return [(i + 1) % step != 0 for i in range(n)]


def variant_logits(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) in float64 of transformers' SmolLM3ForCausalLM (llama with q/k unrotated
    on the layers variant_rotated_layers leaves out), GraniteForCausalLM (embeddings times
    embedding_multiplier, scores times attention_multiplier instead of head_dim**-0.5, attention
    and feed-forward outputs times residual_multiplier, logits divided by logits_scaling) or
    Olmo2ForCausalLM (no input norms; q and k RMS-normed over the whole projections before the
    rotation; RMSNorm of the attention and feed-forward outputs before their residual add)."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    arch = cfg["architectures"][0]
    granite, olmo2 = arch == "GraniteForCausalLM", arch == "Olmo2ForCausalLM"
    nh, nkv, e = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd = e // nh if granite else cfg.get("head_dim") or e // nh
    eps, t = cfg["rms_norm_eps"], len(ids)
    inv, pos = rope_inv_freq(cfg, hd), np.arange(t, dtype=np.float64)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    residual = cfg["residual_multiplier"] if granite else 1.0
    scale = cfg["attention_multiplier"] if granite else hd**-0.5
    x = g["model.embed_tokens.weight"][ids] * (cfg["embedding_multiplier"] if granite else 1.0)
    for i, rotated in enumerate(variant_rotated_layers(cfg)):
        p = f"model.layers.{i}."
        h = x if olmo2 else _rms(x, g[p + "input_layernorm.weight"], eps)
        q, k, v = (
            h @ g[p + f"self_attn.{n}_proj.weight"].T + g.get(p + f"self_attn.{n}_proj.bias", 0.0)
            for n in "qkv"
        )
        if olmo2:
            q = _rms(q, g[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, g[p + "self_attn.k_norm.weight"], eps)
        q, k = q.reshape(t, nh, hd).transpose(1, 0, 2), k.reshape(t, nkv, hd).transpose(1, 0, 2)
        v = v.reshape(t, nkv, hd).transpose(1, 0, 2)
        if rotated:
            q, k = _rope(q, pos, inv), _rope(k, pos, inv)
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) * scale + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, nh * hd)
        a = a @ g[p + "self_attn.o_proj.weight"].T + g.get(p + "self_attn.o_proj.bias", 0.0)
        if olmo2:
            a = _rms(a, g[p + "post_attention_layernorm.weight"], eps)
        x = x + a * residual
        h = x if olmo2 else _rms(x, g[p + "post_attention_layernorm.weight"], eps)
        gate = h @ g[p + "mlp.gate_proj.weight"].T
        f = gate / (1 + np.exp(-gate)) * (h @ g[p + "mlp.up_proj.weight"].T)
        f = f @ g[p + "mlp.down_proj.weight"].T
        if olmo2:
            f = _rms(f, g[p + "post_feedforward_layernorm.weight"], eps)
        x = x + f * residual
    x = _rms(x, g["model.norm.weight"], eps)
    logits = x @ g.get("lm_head.weight", g["model.embed_tokens.weight"]).T
    return logits / cfg["logits_scaling"] if granite else logits


# -- cross-encoder rerankers (BertForSequenceClassification, XLMRobertaForSequenceClassification) -


def classifier_config(cfg: dict[str, Any], arch: str, labels: list[str] | None) -> dict[str, Any]:
    """``cfg`` as transformers saves a sequence classifier's config: ``arch``, id2label (string ids)
    and label2id; ``labels`` None leaves them out (transformers then reads num_labels, else 2)."""
    out = {**cfg, "architectures": [arch]}
    if labels is not None:
        out["id2label"] = {str(i): v for i, v in enumerate(labels)}
        out["label2id"] = {v: i for i, v in enumerate(labels)}
    return out


def classifier_head(cfg: dict[str, Any], n_labels: int, kind: str, *, seed: int = 0) -> Weights:
    """Random float32 head weights: ``kind`` "bert" (BertForSequenceClassification's ``classifier``
    Linear; the pooler is BertModel's, see bert_weights) or "roberta" (RobertaClassificationHead:
    ``classifier.dense`` and ``classifier.out_proj``)."""
    e = cfg["hidden_size"]
    mat, vec, _ = _initializers(np.random.default_rng(seed + 100), e)

    def linear(name: str, rows: int) -> Weights:
        return {name + ".weight": mat(rows, e), name + ".bias": vec(rows, 0.0, 0.2)}

    if kind == "bert":
        return linear("classifier", n_labels)
    return {**linear("classifier.dense", e), **linear("classifier.out_proj", n_labels)}


def tiny_bert_reranker(
    d: Path,
    labels: list[str] | None = None,
    *,
    n_labels: int = 1,
    dtype: str = "f32",
    prefix: str = "bert.",
    seed: int = 0,
    **kw: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random BertForSequenceClassification directory (cross-encoder/ms-marco-MiniLM-L-6-v2's
    layout: the encoder and its pooler under ``prefix``, ``classifier.*`` at the top level) on
    tiny_bert's tokenizer and config (``kw``); ``labels`` (default LABEL_0 .. LABEL_{n_labels-1})
    become id2label. Returns (config, stored weights as float32, without ``prefix``)."""
    cfg, _ = tiny_bert(d, seed=seed, **kw)
    labels = [f"LABEL_{i}" for i in range(n_labels)] if labels is None else labels
    cfg = classifier_config(cfg, "BertForSequenceClassification", labels)
    _write_json(d / "config.json", cfg)
    w = {**bert_weights(cfg, seed=seed), **classifier_head(cfg, len(labels), "bert", seed=seed)}
    saved = {(n if n.startswith("classifier.") else prefix + n): x for n, x in w.items()}
    stored = save_weights(d, saved, dtype=dtype)
    return cfg, {n.removeprefix(prefix): x for n, x in stored.items()}


def tiny_xlmr_reranker(
    d: Path,
    labels: list[str] | None = None,
    *,
    n_labels: int = 1,
    dtype: str = "f32",
    prefix: str = "roberta.",
    seed: int = 0,
    **kw: Any,
) -> tuple[dict[str, Any], Weights]:
    """A random XLMRobertaForSequenceClassification directory (bge-reranker-v2-m3's layout: the
    encoder, without a pooler, under ``prefix``; ``classifier.dense`` / ``classifier.out_proj`` at
    the top level) on tiny_xlmr's tokenizer and config (``kw``). Returns (config, stored weights
    as float32, without ``prefix``)."""
    cfg, _ = tiny_xlmr(d, seed=seed, **kw)
    labels = [f"LABEL_{i}" for i in range(n_labels)] if labels is None else labels
    cfg = classifier_config(cfg, "XLMRobertaForSequenceClassification", labels)
    _write_json(d / "config.json", cfg)
    w = bert_weights(cfg, seed=seed, pooler=False)
    w.update(classifier_head(cfg, len(labels), "roberta", seed=seed))
    saved = {(n if n.startswith("classifier.") else prefix + n): x for n, x in w.items()}
    stored = save_weights(d, saved, dtype=dtype)
    return cfg, {n.removeprefix(prefix): x for n, x in stored.items()}


def bert_rerank_scores(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """transformers' BertForSequenceClassification logits (num_labels,) in float64 for one sequence,
    in eval mode (no dropout): BertPooler (``tanh(pooler.dense(h))`` on the first token's last
    hidden state), then ``classifier``. The encoder is bert_hidden_states: token type 0 for every
    token, as llama.cpp feeds them (transformers' pair encoding gives the second text type 1)."""
    g = {k: v.astype(np.float64) for k, v in w.items() if k.startswith(("pooler.", "classifier."))}
    x = bert_hidden_states(cfg, w, ids)[0]
    pooled = np.tanh(g["pooler.dense.weight"] @ x + g["pooler.dense.bias"])
    return g["classifier.weight"] @ pooled + g["classifier.bias"]


def xlmr_rerank_scores(cfg: dict[str, Any], w: Weights, ids: list[int]) -> np.ndarray:
    """transformers' XLMRobertaForSequenceClassification logits (num_labels,) in float64, eval mode:
    RobertaClassificationHead on the first token's last hidden state (xlmr_hidden_states),
    ``out_proj(tanh(dense(h)))``."""
    g = {k: v.astype(np.float64) for k, v in w.items() if k.startswith("classifier.")}
    x = xlmr_hidden_states(cfg, w, ids)[0]
    h = np.tanh(g["classifier.dense.weight"] @ x + g["classifier.dense.bias"])
    return g["classifier.out_proj.weight"] @ h + g["classifier.out_proj.bias"]


# -- causal rerankers (Qwen3-Reranker) -----------------------------------------------------------

QWEN3_RERANKER_CARD = """---
license: apache-2.0
pipeline_tag: text-ranking
---
# Qwen3-Reranker-0.6B

A tiny random stand-in.
"""


def tiny_qwen3_reranker(
    d: Path, *, mark: str | None = "readme", tied: bool = False, seed: int = 0, **over: Any
) -> tuple[dict[str, Any], Weights, tuple[int, int]]:
    """A random Qwen3ForCausalLM directory laid out as Qwen/Qwen3-Reranker-0.6B, whose scores are the
    softmax of the "yes" and "no" logits on the last token. ``mark`` says what names it a reranker:
    "readme" (a model card headed "# Qwen3-Reranker-0.6B"), "name_or_path" (config.json's
    _name_or_path) or None (nothing; the directory's name may). The byte-level BPE tokenizer gets
    plain tokens "no" and "yes" after the trained ones (in that order: "yes" has the larger id); the
    head's rows of those two (the embeddings' when tied) are scaled to lm_head's size, so the scores
    stay away from 0 and 1. Returns (config, stored weights as float32, (id of "yes", id of "no"))."""
    d.mkdir(parents=True, exist_ok=True)
    n = write_bpe_tokenizer(d, pre="qwen2")
    spec = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["vocab"].update({"no": n, "yes": n + 1})
    _write_json(d / "tokenizer.json", spec)
    yes, no = n + 1, n
    cfg = tiny_config("qwen3", vocab_size=n + 2, tie_word_embeddings=tied, **over)
    if mark == "name_or_path":
        cfg["_name_or_path"] = "Qwen/Qwen3-Reranker-0.6B"
    if mark == "readme":
        (d / "README.md").write_text(QWEN3_RERANKER_CARD, encoding="utf-8")
    _write_json(d / "config.json", cfg)
    w = random_weights(cfg, seed=seed)
    head = w["model.embed_tokens.weight" if tied else "lm_head.weight"]
    head[[yes, no]] *= 1.0 / np.sqrt((head[[yes, no]] ** 2).mean() * cfg["hidden_size"])
    return cfg, save_weights(d, w), (yes, no)


def qwen3_rerank_scores(
    cfg: dict[str, Any], w: Weights, ids: list[int], yes_no: tuple[int, int]
) -> np.ndarray:
    """A Qwen3-Reranker's scores in float64, as its model card computes them: the softmax of the
    last token's logits (reference_logits) of "yes" and "no", in that order."""
    z = reference_logits(cfg, w, ids)[-1][list(yes_no)]
    e = np.exp(z - z.max())
    return e / e.sum()


# -- gpt-oss ---------------------------------------------------------------------------------------

# transformers' FP4_VALUES (integrations/mxfp4.py): the E2M1 value of each 4-bit code
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])  # fmt: skip


def gpt_oss_config(**over: Any) -> dict[str, Any]:
    """config.json of a small GptOssForCausalLM (the keys openai/gpt-oss-20b's has, smaller)."""
    cfg: dict[str, Any] = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 64,
        "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 150000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "original_max_position_embeddings": 16},
        "attention_bias": True, "swiglu_limit": 7.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "eos_token_id": 2, "pad_token_id": 0,
    }  # fmt: skip
    cfg.update(over)
    return cfg


def mxfp4_values(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """transformers' convert_moe_packed_tensors before its transpose: blocks (..., rows, n_block, 16)
    and scales (..., rows, n_block) as float32 (..., rows, n_block * 32); element 2j of a block is the
    low nibble of byte j, 2j + 1 the high one, times 2^(scale - 127)."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    x = FP4_VALUES[codes] * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return x.reshape(*blocks.shape[:-2], -1).astype(np.float32)


def gpt_oss_weights(cfg: dict[str, Any], *, mxfp4: bool, seed: int = 0) -> tuple[Weights, Weights]:
    """(weights to save, their float32 values under the dequantized names): random GptOss tensors.
    With ``mxfp4`` the experts are random codes and exponents as ``*_blocks`` / ``*_scales`` (U8),
    their values (``mxfp4_values``) transposed to transformers' (n_expert, in, out) as
    ``gate_up_proj`` / ``down_proj``; otherwise those two are random floats."""
    rng = np.random.default_rng(seed)
    e, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    ne = cfg["num_local_experts"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    mat, vec, _ = _initializers(rng, e)
    w: Weights = {"model.embed_tokens.weight": rng.standard_normal((v, e)).astype(np.float32)}
    values: Weights = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(e, 1.0, 0.1)
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{n}_proj.weight"] = mat(rows, e)
            w[p + f"self_attn.{n}_proj.bias"] = vec(rows, 0.0, 0.1)
        w[p + "self_attn.o_proj.weight"] = mat(e, nh * hd)
        w[p + "self_attn.o_proj.bias"] = vec(e, 0.0, 0.1)
        w[p + "self_attn.sinks"] = vec(nh, 0.0, 1.0)
        w[p + "post_attention_layernorm.weight"] = vec(e, 1.0, 0.1)
        w[p + "mlp.router.weight"] = mat(ne, e)
        w[p + "mlp.router.bias"] = vec(ne, 0.0, 0.1)
        x = p + "mlp.experts."
        for name, rows, cols in (("gate_up_proj", 2 * ff, e), ("down_proj", e, ff)):
            if mxfp4:  # exponents around 2^-4.5: values of about the size mat() gives
                blocks = rng.integers(0, 256, size=(ne, rows, cols // 32, 16), dtype=np.uint8)
                scales = rng.integers(121, 124, size=(ne, rows, cols // 32), dtype=np.uint8)
                w[x + name + "_blocks"], w[x + name + "_scales"] = blocks, scales
                values[x + name] = mxfp4_values(blocks, scales).transpose(0, 2, 1)
            else:
                w[x + name] = np.stack([mat(rows, cols).T for _ in range(ne)])
        w[x + "gate_up_proj_bias"] = (0.5 * rng.standard_normal((ne, 2 * ff))).astype(np.float32)
        w[x + "down_proj_bias"] = (0.1 * rng.standard_normal((ne, e))).astype(np.float32)
    w["model.norm.weight"] = vec(e, 1.0, 0.1)
    w["lm_head.weight"] = mat(v, e)
    return w, values


def tiny_gpt_oss(d: Path, *, mxfp4: bool, dtype: str = "bf16", seed: int = 0,
                 **cfg_over: Any) -> tuple[dict[str, Any], Weights]:  # fmt: skip
    """A random gpt-oss directory (o200k-style BPE tokenizer, pre-tokenizer gpt-4o): experts as MXFP4
    blocks (as OpenAI's checkpoints, the rest in ``dtype``) or dequantized in ``dtype``. Returns
    (config, the stored values as float32, experts under the dequantized names)."""
    d.mkdir(parents=True, exist_ok=True)
    n_tok = write_bpe_tokenizer(d, pre="gpt-4o")
    cfg = gpt_oss_config(vocab_size=n_tok, **cfg_over)
    if mxfp4:
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    _write_json(d / "config.json", cfg)
    weights, values = gpt_oss_weights(cfg, mxfp4=mxfp4, seed=seed)
    stored = save_weights(d, weights, dtype=dtype)
    stored = {n: x for n, x in stored.items() if not n.endswith(("_blocks", "_scales"))}
    return cfg, {**stored, **values}
