"""Tiny random llama/qwen2/qwen3/phi3/gemma models (and EmbeddingGemma, gguf arch gemma-embedding)
written to GGUF with gguf-py, and a numpy float64 forward pass (written from the architecture's
definition, independent of splitllm's engine) to check them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# Relative error allowed between an F32 model's logits and the float64 reference (which rounds
# the keys and values to float16 as the cache does). Float32 rounding in the engine puts a few
# cached values on the other side of a float16 rounding step than float64 does, each a change of
# 2^-11, and these add up over the tokens: 1.1e-4 to 1.3e-4 on some of the tiny models with the
# scalar kernels (one chain of additions per dot product), less with the SIMD ones.
F32_LOGITS_TOL = 2e-4
# BF16 weights: on CPUs with AVX512_BF16 the prompt's activations are rounded to bfloat16 for
# the matmuls, as llama.cpp does (about 3e-3 on the logits of the tiny models).
BF16_ENGINE_TOL = 5e-3


def interleaved_batch(texts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, positions, slots) of two texts read in one batch, their tokens alternating while
    the second lasts (text k in slot k; each text's tokens in position order)."""
    n2 = len(texts[1])
    rows = sorted((2 * i if i < n2 else n2 + i, k, i) for k, t in enumerate(texts) for i in range(len(t)))
    toks = np.array([texts[k][i] for _, k, i in rows], np.int32)
    pos = np.array([i for _, _, i in rows], np.int32)
    slot = np.array([k for _, k, _ in rows], np.int32)
    assert slot[:6].tolist() == [0, 1, 0, 1, 0, 1]
    return toks, pos, slot


def check_engine_passes(path: Path, tokens: list[int], ref: np.ndarray, tol: float = F32_LOGITS_TOL) -> None:
    """splitllm's logits of ``tokens`` on the model at ``path``: in one pass, in passes of 5, then
    token by token (the decode path), each within ``tol`` of ``ref`` (relative to its largest)."""
    from splitllm import Model  # noqa: PLC0415 - the reference itself needs no engine

    def err(a: np.ndarray) -> float:
        return float(np.abs(np.float64(a) - ref).max() / np.abs(ref).max())

    with Model(path, n_ctx=64, n_threads=2) as m:
        assert err(m.logits(tokens)) < tol
    with Model(path, n_ctx=64, n_batch=5, n_threads=2) as m:
        assert err(m.logits(tokens)) < tol
        m.reset()
        assert err(np.stack([m.eval_prompt(tokens[: i + 1]) for i in range(len(tokens))])) < tol


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
    # Hugging Face's ``rope_scaling``: None, {"rope_type": "linear", "factor": f} or {"rope_type":
    # "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}.
    rope_scaling: dict[str, Any] | None = None
    key_length: int | None = None  # head size, if not n_embd / n_head (written as attention.key_length)
    # Mixture of experts (qwen3moe, or llama as Mixtral): n_expert > 0 replaces every feed-forward
    # by n_expert experts of width n_ff_exp (n_ff if None), n_expert_used per token.
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int | None = None
    n_rot: int | None = None  # rotated dimensions of a head (partial rotary), head_dim if None
    # phi3's LongRoPE (rope_scaling {"rope_type": "longrope", "short_factor", "long_factor",
    # "original_max_position_embeddings"}): the factors used are the long ones when the context
    # (the reference's n_ctx argument) exceeds the original one.
    # Gemma 2/3 (transformers' Gemma2/Gemma3 models): sliding-window layers (every layer l with
    # l % swa_pattern < swa_pattern - 1; gemma2's pattern 2, gemma3's 6) see the last
    # sliding_window positions (0: no window, written as the key's absence for gemma3); gemma3's
    # sliding layers rotate with base rope_base_swa and no scaling; gemma2 soft-caps attention
    # scores and logits. query_scale: gemma's query_pre_attn_scalar ** -0.5 (None: head_dim's).
    sliding_window: int = 0
    swa_pattern: int | None = None
    write_swa_pattern: bool = False  # the pattern as metadata (else the architecture's default)
    rope_base_swa: float = 10000.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    query_scale: float | None = None
    # gemma-embedding (transformers' Gemma3TextModel with use_bidirectional_attention, as
    # EmbeddingGemma): gemma3's layers, no causal mask, the sliding layers seeing the keys within
    # sliding_window // 2 positions either side; sentence-transformers' dense projections of the
    # pooled embedding (dense_2: n_embd -> dense_out, with a bias if dense_bias, then dense_3:
    # dense_out -> n_embd; dense_out 0: none) and the pooling type written to the file.
    dense_out: int = 0
    dense_bias: bool = False
    pooling_type: int | None = None
    # granite's multipliers (transformers' GraniteModel): embedding_multiplier, residual_multiplier,
    # attention_multiplier (the query-key scale), logits_scaling (logits divided by it).
    granite_scales: tuple[float, float, float, float] = (12.0, 0.22, 0.015625, 8.0)

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head

    @property
    def rot(self) -> int:
        return self.n_rot or self.head_dim

    @property
    def neox(self) -> bool:
        return self.arch in ("qwen2", "qwen3", "qwen3moe", "phi3", "gemma", "gemma2", "gemma3",
                             "gemma-embedding", "olmo2", "gpt-oss", "bitnet")

    @property
    def qk_norm(self) -> bool:
        return self.arch in ("qwen3", "qwen3moe", "gemma3", "gemma-embedding")

    @property
    def olmo2(self) -> bool:  # no input norms; q/k RMS-normed over whole projections; post-norms
        return self.arch == "olmo2"

    def rotates(self, layer: int) -> bool:  # smollm3: every fourth layer has no rotary ("NoPE")
        return self.arch != "smollm3" or (layer + 1) % 4 != 0

    @property
    def gemma(self) -> bool:
        return self.arch in ("gemma", "gemma2", "gemma3", "gemma-embedding")

    @property
    def post_norms(self) -> bool:
        return self.arch in ("gemma2", "gemma3", "gemma-embedding", "olmo2")

    @property
    def encoder(self) -> bool:  # every token attends to the whole text (and no output layer)
        return self.arch == "gemma-embedding"

    def is_swa(self, layer: int) -> bool:
        if not self.sliding_window or self.arch not in ("gemma2", "gemma3", "gemma-embedding", "gpt-oss"):
            return False
        n = self.swa_pattern or (2 if self.arch in ("gemma2", "gpt-oss") else 6)
        return layer % n < n - 1

    @property
    def gpt_oss(self) -> bool:  # transformers' GptOssModel (see _moe and reference_hidden)
        return self.arch == "gpt-oss"

    @property
    def ff_exp(self) -> int:
        return self.n_ff_exp or self.n_ff


class RandomInit:
    """The tiny models' random float64 weights, drawn from one generator in the order asked for:
    ``mat`` a matrix (rows, cols), or a stack of them, of N(0, 1 / cols) entries; ``norm`` a norm's
    weight, 1 + norm_spread N(0, 1); ``vec`` a bias, 0.3 N(0, 1); ``dense_ffn`` / ``routed_ffn`` a
    block's feed-forward tensors. ``rng`` draws anything else."""

    def __init__(self, seed: int, norm_spread: float = 0.1) -> None:
        self.rng = np.random.default_rng(seed)
        self.norm_spread = norm_spread

    def mat(self, rows: int, cols: int, *stack: int) -> np.ndarray:
        return self.rng.normal(0.0, 1.0 / math.sqrt(cols), (*stack, rows, cols))

    def norm(self, n: int) -> np.ndarray:
        return 1.0 + self.norm_spread * self.rng.normal(size=n)

    def vec(self, n: int) -> np.ndarray:
        return 0.3 * self.rng.normal(size=n)

    def dense_ffn(self, b: str, n_embd: int, n_ff: int) -> dict[str, np.ndarray]:
        """Block b's SwiGLU feed-forward: gate, up, down (drawn in that order)."""
        return {b + "ffn_gate.weight": self.mat(n_ff, n_embd), b + "ffn_up.weight": self.mat(n_ff, n_embd),
                b + "ffn_down.weight": self.mat(n_embd, n_ff)}  # fmt: skip

    def routed_ffn(
        self,
        b: str,
        n_embd: int,
        n_exp: int,
        ff: int,
        *,
        bias: float = 0.0,
        bias_shape: tuple[int, ...] | None = None,
        ff_shared: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Block b's experts, drawn in this order: the router (twice the usual scale: a sharper
        choice), the selection bias (bias N(0, 1) of bias_shape, default (n_exp,); none where bias is
        0), the stacked experts' gate, up and down, and where ff_shared is not None the shared
        experts' (ff_shared wide)."""
        w = {b + "ffn_gate_inp.weight": self.mat(n_exp, n_embd) * 2.0}
        if bias:
            w[b + "exp_probs_b.bias"] = bias * self.rng.normal(size=bias_shape or n_exp)
        w[b + "ffn_gate_exps.weight"] = self.mat(ff, n_embd, n_exp)
        w[b + "ffn_up_exps.weight"] = self.mat(ff, n_embd, n_exp)
        w[b + "ffn_down_exps.weight"] = self.mat(n_embd, ff, n_exp)
        if ff_shared is not None:
            w |= {b + "ffn_gate_shexp.weight": self.mat(ff_shared, n_embd),
                  b + "ffn_up_shexp.weight": self.mat(ff_shared, n_embd),
                  b + "ffn_down_shexp.weight": self.mat(n_embd, ff_shared)}  # fmt: skip
        return w


@dataclass
class TinyModel:
    cfg: TinyConfig
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF name -> float64 (rows, cols)


def make_weights(cfg: TinyConfig) -> TinyModel:
    init = RandomInit(cfg.seed)
    rng, mat, norm = init.rng, init.mat, init.norm
    hd = cfg.head_dim
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_head_kv * hd

    w: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, size=(cfg.n_vocab, cfg.n_embd))}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        if not cfg.olmo2:
            w[b + "attn_norm.weight"] = norm(cfg.n_embd)
        w[b + "attn_q.weight"] = mat(q_dim, cfg.n_embd)
        w[b + "attn_k.weight"] = mat(kv_dim, cfg.n_embd)
        w[b + "attn_v.weight"] = mat(kv_dim, cfg.n_embd)
        if cfg.arch in ("qwen2", "gpt-oss"):
            w[b + "attn_q.bias"] = 0.1 * rng.normal(size=q_dim)
            w[b + "attn_k.bias"] = 0.1 * rng.normal(size=kv_dim)
            w[b + "attn_v.bias"] = 0.1 * rng.normal(size=kv_dim)
        if cfg.qk_norm or cfg.olmo2:
            w[b + "attn_q_norm.weight"] = norm(q_dim if cfg.olmo2 else hd)
            w[b + "attn_k_norm.weight"] = norm(kv_dim if cfg.olmo2 else hd)
        if cfg.arch == "phi3":  # fused as phi3 stores them: q, k, v rows in one tensor
            w[b + "attn_qkv.weight"] = np.concatenate([w.pop(b + f"attn_{t}.weight") for t in "qkv"])
        w[b + "attn_output.weight"] = mat(cfg.n_embd, q_dim)
        if cfg.gpt_oss:  # the output projection's bias, one sink logit per head, the pre-MoE norm
            w[b + "attn_output.bias"] = 0.1 * rng.normal(size=cfg.n_embd)
            w[b + "attn_sinks.weight"] = rng.normal(0, 1, size=cfg.n_head)
            w[b + "post_attention_norm.weight"] = norm(cfg.n_embd)
        if cfg.post_norms:
            w[b + "post_attention_norm.weight"] = norm(cfg.n_embd)
            w[b + "post_ffw_norm.weight"] = norm(cfg.n_embd)
        if cfg.arch == "bitnet":  # llama.cpp's bitnet: sub-norms, a scalar scale of each matmul's output
            w[b + "attn_sub_norm.weight"] = norm(cfg.n_embd)
            w[b + "ffn_sub_norm.weight"] = norm(cfg.n_ff)
            for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                w[b + t + ".scale"] = rng.uniform(0.5, 2.0, size=1)
        if not cfg.olmo2 and not cfg.gpt_oss:
            w[b + "ffn_norm.weight"] = norm(cfg.n_embd)
        if cfg.n_expert:
            ne, ff = cfg.n_expert, cfg.ff_exp
            w[b + "ffn_gate_inp.weight"] = mat(ne, cfg.n_embd)
            w[b + "ffn_gate_exps.weight"] = np.stack([mat(ff, cfg.n_embd) for _ in range(ne)])
            w[b + "ffn_up_exps.weight"] = np.stack([mat(ff, cfg.n_embd) for _ in range(ne)])
            w[b + "ffn_down_exps.weight"] = np.stack([mat(cfg.n_embd, ff) for _ in range(ne)])
            if cfg.gpt_oss:  # biases of the router and of every expert's projections
                w[b + "ffn_gate_inp.bias"] = 0.1 * rng.normal(size=ne)
                w[b + "ffn_gate_exps.bias"] = 0.5 * rng.normal(size=(ne, ff))
                w[b + "ffn_up_exps.bias"] = 0.5 * rng.normal(size=(ne, ff))
                w[b + "ffn_down_exps.bias"] = 0.1 * rng.normal(size=(ne, cfg.n_embd))
            continue
        w[b + "ffn_gate.weight"] = mat(cfg.n_ff, cfg.n_embd)
        w[b + "ffn_up.weight"] = mat(cfg.n_ff, cfg.n_embd)
        w[b + "ffn_down.weight"] = mat(cfg.n_embd, cfg.n_ff)
        if cfg.arch == "phi3":  # gate rows, then up rows, in ffn_up
            w[b + "ffn_up.weight"] = np.concatenate([w.pop(b + "ffn_gate.weight"), w[b + "ffn_up.weight"]])
    w["output_norm.weight"] = norm(cfg.n_embd)
    if not cfg.tied_output and not cfg.encoder:
        w["output.weight"] = mat(cfg.n_vocab, cfg.n_embd)
    if cfg.dense_out:  # sentence-transformers' Dense modules (no activation)
        w["dense_2.weight"] = mat(cfg.dense_out, cfg.n_embd)
        if cfg.dense_bias:
            w["dense_2.bias"] = 0.3 * rng.normal(size=cfg.dense_out)
        w["dense_3.weight"] = mat(cfg.n_embd, cfg.dense_out)
    return TinyModel(cfg, w)


def llama3_rope_factors(cfg: TinyConfig) -> np.ndarray:
    """``rope_freqs.weight`` for ``rope_type`` llama3, as llama.cpp's convert_hf_to_gguf.py writes it
    (LlamaModel.generate_extra_tensors): one divisor per rotary frequency."""
    rs = cfg.rope_scaling or {}
    dim = cfg.head_dim
    freqs = 1.0 / (cfg.rope_base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rs.get("factor", 8.0)
    low_freq_factor = rs.get("low_freq_factor", 1.0)
    high_freq_factor = rs.get("high_freq_factor", 4.0)
    old_context_len = rs.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(rope_factors, dtype=np.float32)


_VALUE_TYPES = {bool: gguf.GGUFValueType.BOOL, int: gguf.GGUFValueType.UINT32,
                float: gguf.GGUFValueType.FLOAT32, str: gguf.GGUFValueType.STRING,
                list: gguf.GGUFValueType.ARRAY}


def _override_metadata(wr: gguf.GGUFWriter, changes: Mapping[str, Any]) -> None:
    """Sets (keeping a present key's value type) or, for None, removes metadata keys."""
    kv = wr.kv_data[0]
    for key, value in changes.items():
        if value is None:
            del kv[key]
        else:
            vtype = kv[key].type if key in kv else _VALUE_TYPES[type(value)]
            kv[key] = gguf.GGUFValue(value, vtype)


_ARRAY_ITEM_TYPES = {"tokenizer.ggml.token_type": gguf.GGUFValueType.INT32,
                     "tokenizer.ggml.scores": gguf.GGUFValueType.FLOAT32}


def write_metadata(wr: gguf.GGUFWriter, metadata: Mapping[str, Any]) -> None:
    """Writes metadata read with splitllm's GGUFFile (typed values) with the types llama.cpp's
    converter gives them: integers as uint32 (token types int32), floats as float32, lists of
    strings, ints or floats as arrays. ``general.architecture`` is left to the writer."""
    t = gguf.GGUFValueType
    for key, value in metadata.items():
        if key == "general.architecture":
            continue
        if isinstance(value, list):
            first = value[0] if value else ""
            item = _ARRAY_ITEM_TYPES.get(key) or (t.STRING if isinstance(first, str) else
                                                  t.FLOAT32 if isinstance(first, float) else t.UINT32)
            wr.add_key_value(key, value, t.ARRAY, item)
        elif isinstance(value, bool):
            wr.add_key_value(key, value, t.BOOL)
        elif isinstance(value, int):
            wr.add_key_value(key, value, t.UINT32)
        elif isinstance(value, float):
            wr.add_key_value(key, value, t.FLOAT32)
        else:
            wr.add_key_value(key, value, t.STRING)


def write_gguf(
    model: TinyModel,
    path: Path,
    *,
    weight_type: str = "F32",
    quantize=None,
    metadata: Mapping[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Writes the model; 2-D weights in ``weight_type`` (norms and biases stay F32).

    ``quantize(x, type_name) -> bytes array`` quantizes (default: gguf.quants). ``metadata``
    changes keys after the model's own are set (a None value removes the key): for files with bad
    metadata. Returns the weights as the file holds them, dequantized with gguf.quants (float64),
    for the reference forward (``rope_freqs.weight`` is left out: the reference takes the rotary
    frequencies from ``cfg.rope_scaling``). ``tokenizer``: the ``tokenizer.*`` keys to write (a
    real vocabulary, see :func:`write_metadata`) instead of the small byte-level one.
    """
    cfg = model.cfg
    wr = gguf_writer(path, cfg)
    wr.add_rope_dimension_count(cfg.rot)
    if cfg.key_length:
        wr.add_key_length(cfg.key_length)
        wr.add_value_length(cfg.key_length)
    if cfg.n_expert:
        wr.add_expert_count(cfg.n_expert)
        wr.add_expert_used_count(cfg.n_expert_used)
        if cfg.n_ff_exp:
            wr.add_expert_feed_forward_length(cfg.n_ff_exp)
    wr.add_vocab_size(cfg.n_vocab)
    if cfg.sliding_window:
        wr.add_sliding_window(cfg.sliding_window)
        if cfg.write_swa_pattern:
            wr.add_sliding_window_pattern([cfg.is_swa(i) for i in range(cfg.n_layer)])
        if (cfg.arch == "gemma3" and cfg.rope_base_swa != 10000.0) or cfg.encoder:
            wr.add_rope_freq_base_swa(cfg.rope_base_swa)
    if cfg.dense_out:  # as convert_hf_to_gguf.py's EmbeddingGemma writes them
        wr.add_dense_features_dims("dense_2", cfg.n_embd, cfg.dense_out)
        wr.add_dense_features_dims("dense_3", cfg.dense_out, cfg.n_embd)
    if cfg.pooling_type is not None:
        wr.add_pooling_type(gguf.PoolingType(cfg.pooling_type))
    if cfg.attn_softcap:
        wr.add_attn_logit_softcapping(cfg.attn_softcap)
    if cfg.final_softcap:
        wr.add_final_logit_softcapping(cfg.final_softcap)
    if cfg.arch == "granite":  # as convert_hf_to_gguf.py's GraniteModel writes them
        emb, res, att, logit = cfg.granite_scales
        wr.add_embedding_scale(emb)
        wr.add_residual_scale(res)
        wr.add_attention_scale(att)
        wr.add_logit_scale(logit)
    scaling = (cfg.rope_scaling or {}).get("rope_type", "default")
    if scaling == "linear":  # as convert_hf_to_gguf.py writes it
        wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        wr.add_rope_scaling_factor(cfg.rope_scaling["factor"])
    elif scaling == "yarn":  # as convert_hf_to_gguf.py writes it
        wr.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        wr.add_rope_scaling_factor(cfg.rope_scaling["factor"])
        wr.add_rope_scaling_orig_ctx_len(cfg.rope_scaling["original_max_position_embeddings"])
    elif scaling == "llama3":
        wr.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    elif scaling == "longrope":  # as convert_hf_to_gguf.py's Phi3MiniModel writes it
        rs = cfg.rope_scaling
        orig = rs["original_max_position_embeddings"]
        wr.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(cfg.n_ctx_train / orig) / math.log(orig)))
        wr.add_rope_scaling_orig_ctx_len(orig)
        wr.add_tensor("rope_factors_long.weight", np.asarray(rs["long_factor"], np.float32))
        wr.add_tensor("rope_factors_short.weight", np.asarray(rs["short_factor"], np.float32))
    elif scaling != "default":
        raise ValueError(f"rope_type {scaling!r} is not supported here")
    if tokenizer is not None:
        write_metadata(wr, tokenizer)
    else:
        write_byte_vocab(wr, cfg.n_vocab)
    _override_metadata(wr, metadata or {})
    return write_file(wr, model.weights, weight_type, quantize)


def write_file(
    wr: gguf.GGUFWriter, weights: Mapping[str, np.ndarray], weight_type: str = "F32", quantize=None
) -> dict[str, np.ndarray]:
    """Adds the tensors (:func:`write_tensors`), writes the file and closes it; returns the tensors as
    the file holds them."""
    held = write_tensors(wr, weights, weight_type, quantize)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return held


def gguf_writer(path: Path, cfg: Any) -> gguf.GGUFWriter:
    """A writer for ``cfg.arch`` with the name and the shape keys every tiny model has (cfg's n_layer,
    n_ctx_train, n_embd, n_ff, n_head, n_head_kv, rope_base, rms_eps)."""
    wr = gguf.GGUFWriter(str(path), cfg.arch)
    wr.add_name(f"tiny-{cfg.arch}")
    wr.add_block_count(cfg.n_layer)
    wr.add_context_length(cfg.n_ctx_train)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_head_count_kv(cfg.n_head_kv)
    wr.add_rope_freq_base(cfg.rope_base)
    wr.add_layer_norm_rms_eps(cfg.rms_eps)
    return wr


def write_byte_vocab(wr: gguf.GGUFWriter, n_vocab: int) -> None:
    """A small byte-level BPE vocabulary of n_vocab tokens (the bytes, five merges, control tokens)."""
    merges = ["t h", "h e", "i n", "e r", "a n"]
    tokens = gpt2_byte_tokens() + [m.replace(" ", "") for m in merges]
    n_normal = len(tokens)
    tokens += [f"<extra_{i}>" for i in range(n_vocab - len(tokens))]
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_types([gguf.TokenType.NORMAL] * n_normal + [gguf.TokenType.CONTROL] * (n_vocab - n_normal))
    wr.add_token_merges(merges)
    wr.add_bos_token_id(n_normal)
    wr.add_eos_token_id(n_normal + 1)
    wr.add_add_bos_token(False)


def write_tensors(
    wr: gguf.GGUFWriter, weights: Mapping[str, np.ndarray], weight_type: str = "F32", quantize=None
) -> dict[str, np.ndarray]:
    """Adds the tensors, 2-D (and stacked) weights in ``weight_type``, as :func:`write_gguf`; returns
    them as the file holds them (float64)."""
    held: dict[str, np.ndarray] = {}
    qtype = gguf.GGMLQuantizationType[weight_type.upper()]
    for name, x in weights.items():
        x32 = x.astype(np.float32)
        # vectors, biases, the MoE router, lfm2's convolution kernels and a Mamba-2 layer's kernels, A, D
        # and norms (command-r's per-head ones too) stay F32, as llama.cpp keeps them
        if (x.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32 or name.endswith("ffn_gate_inp.weight")
                or name.endswith(".bias") or name.endswith("shortconv.conv.weight")
                or name.endswith(("ssm_conv1d.weight", "ssm_a", "ssm_d", "_norm.weight"))):
            wr.add_tensor(name, x32)
            held[name] = x32.astype(np.float64)
            continue
        rows = x32.reshape(-1, x32.shape[-1])  # stacked experts: quantized as rows
        if quantize is None:
            data = gguf.quants.quantize(rows, qtype)
        else:
            data = np.asarray(quantize(rows, weight_type))
        data = data.reshape(*x.shape[:-1], data.shape[-1])
        wr.add_tensor(name, data, raw_dtype=qtype)
        held[name] = gguf.quants.dequantize(data, qtype).astype(np.float64).reshape(x.shape)
    return held


def rope_inv_freq(cfg: TinyConfig, n_ctx: int | None = None) -> np.ndarray:
    """Inverse frequencies of the rotary embedding (rotated dimensions / 2), float64, as Hugging
    Face transformers' rope init functions compute them (default, linear, llama3, longrope: its
    long factors when ``n_ctx`` is past the original context)."""
    dim = cfg.rot
    inv_freq = 1.0 / (cfg.rope_base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = cfg.rope_scaling or {}
    rope_type = rs.get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    if rope_type == "longrope":  # _compute_longrope_parameters
        longer = n_ctx is not None and n_ctx > rs["original_max_position_embeddings"]
        return inv_freq / np.asarray(rs["long_factor" if longer else "short_factor"], np.float64)
    if rope_type == "linear":  # _compute_linear_scaling_rope_parameters
        return inv_freq / rs["factor"]
    if rope_type == "yarn":  # _compute_yarn_parameters
        def correction_dim(n_rotations: float) -> float:
            return dim * math.log(rs["original_max_position_embeddings"] / (n_rotations * 2 * math.pi)) / (
                2 * math.log(cfg.rope_base))

        low = max(math.floor(correction_dim(rs.get("beta_fast", 32))), 0)
        high = min(math.ceil(correction_dim(rs.get("beta_slow", 1))), dim - 1)
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / max(high - low, 0.001), 0, 1)
        extrapolation = 1 - ramp  # the share of the unscaled frequency
        return inv_freq / rs["factor"] * (1 - extrapolation) + inv_freq * extrapolation
    if rope_type != "llama3":
        raise ValueError(f"rope_type {rope_type!r} is not supported here")
    # _compute_llama3_parameters
    factor = rs["factor"]
    low_freq_factor = rs["low_freq_factor"]
    high_freq_factor = rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray, neox: bool, mscale: float = 1.0) -> np.ndarray:
    """Rotary embedding of x (n_tok, n_heads, head_dim) at positions pos (n_tok), with inverse
    frequencies inv (rotated dimensions / 2; the dimensions past them are left as they are), cos
    and sin times mscale."""
    if 2 * len(inv) < x.shape[-1]:  # partial rotary: the first dimensions only
        out = x.copy()
        out[..., : 2 * len(inv)] = rope(x[..., : 2 * len(inv)], pos, inv, neox, mscale)
        return out
    half = x.shape[-1] // 2
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos, sin = mscale * np.cos(ang)[:, None, :], mscale * np.sin(ang)[:, None, :]
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
    cfg: TinyConfig, w: dict[str, np.ndarray], tokens: list[int], *, kv_f16: bool = True,
    n_ctx: int | None = None,
) -> np.ndarray:
    """float64 forward pass over tokens at positions 0..n-1: logits (n, n_vocab).

    With kv_f16 the keys (after rotation) and values are rounded to float16, as a KV cache of
    that type stores them; everything else is float64. ``n_ctx``: the context the model is run
    with (LongRoPE picks its factors by it).
    """
    out = w.get("output.weight", w["token_embd.weight"])
    logits = reference_hidden(cfg, w, tokens, kv_f16=kv_f16, n_ctx=n_ctx) @ out.T
    if cfg.final_softcap:
        logits = cfg.final_softcap * np.tanh(logits / cfg.final_softcap)
    if cfg.arch == "granite":  # logits divided by logits_scaling
        logits = logits / cfg.granite_scales[3]
    return logits


def _split_fused(cfg: TinyConfig, w: dict[str, np.ndarray], b: str) -> dict[str, np.ndarray]:
    """A block's weights under the separate names (phi3 fuses q/k/v, and gate/up)."""
    if b + "attn_qkv.weight" not in w:
        return w
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    qkv, gate_up = w[b + "attn_qkv.weight"], w[b + "ffn_up.weight"]
    return {**w, b + "attn_q.weight": qkv[:q_dim], b + "attn_k.weight": qkv[q_dim: q_dim + kv_dim],
            b + "attn_v.weight": qkv[q_dim + kv_dim:], b + "ffn_gate.weight": gate_up[: cfg.n_ff],
            b + "ffn_up.weight": gate_up[cfg.n_ff:]}


def reference_hidden(
    cfg: TinyConfig, w: dict[str, np.ndarray], tokens: list[int], *, kv_f16: bool = True,
    n_ctx: int | None = None,
) -> np.ndarray:
    """The final hidden states after the output norm (n, n_embd), float64 (see reference_logits)."""
    n, hd = len(tokens), cfg.head_dim
    gqa = cfg.n_head // cfg.n_head_kv
    pos = np.arange(n)
    inv = rope_inv_freq(cfg, n_ctx)
    mscale = 1.0
    if (cfg.rope_scaling or {}).get("rope_type") == "longrope":  # transformers' longrope attention factor
        orig = cfg.rope_scaling["original_max_position_embeddings"]
        mscale = math.sqrt(1 + math.log(cfg.n_ctx_train / orig) / math.log(orig))
    if (cfg.rope_scaling or {}).get("rope_type") == "yarn":  # transformers' yarn attention factor
        mscale = 0.1 * math.log(cfg.rope_scaling["factor"]) + 1.0

    def rmsnorm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.rms_eps) * g

    x = w["token_embd.weight"][tokens]
    if cfg.gemma:  # transformers' Gemma*Model: embeddings times sqrt(hidden_size)
        x = x * np.sqrt(cfg.n_embd)
    granite = cfg.arch == "granite"
    res_scale = cfg.granite_scales[1] if granite else 1.0
    if granite:
        x = x * cfg.granite_scales[0]
    # Gemma's sliding layers rotate with their own base (gemma3: rope_local_base_freq, unscaled).
    inv_swa = inv
    if cfg.arch in ("gemma3", "gemma-embedding"):
        inv_swa = 1.0 / (cfg.rope_base_swa ** (np.arange(0, cfg.rot, 2, dtype=np.float64) / cfg.rot))
    dist = pos[:, None] - pos[None, :]  # query position - key position
    causal = np.where(dist >= 0, 0.0, -np.inf)
    windowed = np.where((dist >= 0) & (dist < max(cfg.sliding_window, 1)), 0.0, -np.inf)
    if cfg.encoder:  # transformers' bidirectional masks: the window |dist| < sliding_window // 2 + 1
        causal = np.zeros((n, n))
        windowed = np.where(np.abs(dist) < cfg.sliding_window // 2 + 1, 0.0, -np.inf)
    scale = cfg.query_scale if cfg.query_scale is not None else 1 / np.sqrt(hd)
    if granite:
        scale = cfg.granite_scales[2]
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        w = _split_fused(cfg, w, b)
        swa = cfg.is_swa(i)
        h = x if cfg.olmo2 else rmsnorm(x, w[b + "attn_norm.weight"])
        q, k, v = (h @ w[b + f"attn_{t}.weight"].T * w.get(b + f"attn_{t}.scale", 1)
                   + w.get(b + f"attn_{t}.bias", 0) for t in "qkv")
        if cfg.olmo2:  # the whole projections RMS-normed
            q, k = rmsnorm(q, w[b + "attn_q_norm.weight"]), rmsnorm(k, w[b + "attn_k_norm.weight"])
        q, k = q.reshape(n, cfg.n_head, hd), k.reshape(n, cfg.n_head_kv, hd)
        if cfg.qk_norm:  # each head RMS-normed before the rotation
            q, k = rmsnorm(q, w[b + "attn_q_norm.weight"]), rmsnorm(k, w[b + "attn_k_norm.weight"])
        if cfg.rotates(i):
            q = rope(q, pos, inv_swa if swa else inv, cfg.neox, mscale)
            k = rope(k, pos, inv_swa if swa else inv, cfg.neox, mscale)
        v = v.reshape(n, cfg.n_head_kv, hd)
        if kv_f16:
            k = k.astype(np.float16).astype(np.float64)
            v = v.astype(np.float16).astype(np.float64)
        att = np.empty((n, cfg.n_head, hd))
        for hh in range(cfg.n_head):
            kv = hh // gqa
            s = q[:, hh] @ k[:, kv].T * scale
            if cfg.attn_softcap:
                s = cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)
            s = s + (windowed if swa else causal)
            if cfg.gpt_oss:  # the head's sink logit joins the softmax (and adds no value)
                sink = w[b + "attn_sinks.weight"][hh]
                m = np.maximum(s.max(axis=-1, keepdims=True), sink)
                p = np.exp(s - m)
                p /= p.sum(axis=-1, keepdims=True) + np.exp(sink - m)
            else:
                p = np.exp(s - s.max(axis=-1, keepdims=True))
                p /= p.sum(axis=-1, keepdims=True)
            att[:, hh] = p @ v[:, kv]
        att = att.reshape(n, -1)
        if cfg.arch == "bitnet":  # the attention output RMS-normed before W_o
            att = rmsnorm(att, w[b + "attn_sub_norm.weight"])
        a = att @ w[b + "attn_output.weight"].T * w.get(b + "attn_output.scale", 1)
        a = a + w.get(b + "attn_output.bias", 0)
        if cfg.post_norms:
            a = rmsnorm(a, w[b + "post_attention_norm.weight"])
        x = x + res_scale * a
        ffn_norm = b + ("post_attention_norm" if cfg.gpt_oss else "ffn_norm") + ".weight"
        h = x if cfg.olmo2 else rmsnorm(x, w[ffn_norm])
        if cfg.n_expert:
            x = x + _moe(cfg, w, b, h)
            continue
        g = h @ w[b + "ffn_gate.weight"].T * w.get(b + "ffn_gate.scale", 1)
        u = h @ w[b + "ffn_up.weight"].T * w.get(b + "ffn_up.scale", 1)
        if cfg.gemma:  # gelu_pytorch_tanh
            act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        else:
            act = g / (1 + np.exp(-g))
        act = act * u
        if cfg.arch == "bitnet":  # the gated activation RMS-normed before W_down
            act = rmsnorm(act, w[b + "ffn_sub_norm.weight"])
        f = act @ w[b + "ffn_down.weight"].T * w.get(b + "ffn_down.scale", 1)
        if cfg.post_norms:
            f = rmsnorm(f, w[b + "post_ffw_norm.weight"])
        x = x + res_scale * f
    return rmsnorm(x, w["output_norm.weight"])


def reference_embedding(
    cfg: TinyConfig, w: dict[str, np.ndarray], tokens: list[int], pooling: int
) -> np.ndarray:
    """An embedding model's vector of one text (float64): the hidden states (no cache: not rounded)
    pooled as sentence-transformers' Pooling (1 mean, 2 first token, 3 last token), then its Dense
    modules, x @ W^T (+ b), where the model has them; pooling 0: the hidden states themselves."""
    h = reference_hidden(cfg, w, tokens, kv_f16=False)
    if pooling == 0:
        return h
    x = {1: h.mean(axis=0), 2: h[0], 3: h[-1]}[pooling]
    if "dense_2.weight" in w:
        x = x @ w["dense_2.weight"].T + w.get("dense_2.bias", 0)
    if "dense_3.weight" in w:
        x = x @ w["dense_3.weight"].T
    return x


def _gpt_oss_moe(cfg: TinyConfig, w: dict[str, np.ndarray], b: str, h: np.ndarray) -> np.ndarray:
    """transformers' GptOssMLP: the router's top n_expert_used logits (bias included), weighted by
    their softmax; each expert's gate and up projections with biases, the clamped SwiGLU
    (gate <= 7, up in [-7, 7], gate * sigmoid(1.702 gate) * (up + 1)), the down projection's bias."""
    z = h @ w[b + "ffn_gate_inp.weight"].T + w[b + "ffn_gate_inp.bias"]
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-z[t], kind="stable")[: cfg.n_expert_used]
        p = np.exp(z[t, top] - z[t, top].max())
        for e, weight in zip(top, p / p.sum(), strict=True):
            g = np.minimum(w[b + "ffn_gate_exps.weight"][e] @ h[t] + w[b + "ffn_gate_exps.bias"][e], 7.0)
            u = np.clip(w[b + "ffn_up_exps.weight"][e] @ h[t] + w[b + "ffn_up_exps.bias"][e], -7.0, 7.0)
            act = g / (1 + np.exp(-1.702 * g)) * (u + 1)
            out[t] += weight * (w[b + "ffn_down_exps.weight"][e] @ act + w[b + "ffn_down_exps.bias"][e])
    return out


def _moe(cfg: TinyConfig, w: dict[str, np.ndarray], b: str, h: np.ndarray) -> np.ndarray:
    """Mixture of experts as transformers' Qwen3MoeSparseMoeBlock / MixtralSparseMoeBlock: softmax
    of the router logits, the top n_expert_used, their probabilities renormalized to sum 1."""
    if cfg.gpt_oss:
        return _gpt_oss_moe(cfg, w, b, h)
    z = h @ w[b + "ffn_gate_inp.weight"].T
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-p[t], kind="stable")[: cfg.n_expert_used]
        for e, weight in zip(top, p[t, top] / p[t, top].sum(), strict=True):
            g = w[b + "ffn_gate_exps.weight"][e] @ h[t]
            u = w[b + "ffn_up_exps.weight"][e] @ h[t]
            out[t] += weight * (w[b + "ffn_down_exps.weight"][e] @ (g / (1 + np.exp(-g)) * u))
    return out
