"""Writes a llama-architecture (or gemma3) GGUF with random weights, straight as random quantized blocks.

No float intermediate: each matrix is random bytes of its block type, with the block scales
(the f16 ``d``/``dmin``/``m`` fields) overwritten so that the values have a chosen standard
deviation (1/sqrt(row length) for the layer matrices). Tensors are streamed to the file one at
a time, so a Llama-2-7B-shaped Q4_K_M file (3.8 GiB) takes seconds and little memory.

    python3 bench/make_random_model.py out.gguf --shape llama2-7b --type q4_k_m
    python3 bench/make_random_model.py tiny.gguf --n-layer 4 --n-embd 256 --n-ff 512 --type q4_0
    python3 bench/make_random_model.py moe.gguf --shape mixtral-mini --type q4_k_m
    python3 bench/make_random_model.py g3.gguf --shape gemma3-1b --type q4_k_m

With --n-expert (a Mixtral-style llama), every feed-forward is n_expert experts of width n_ff, a
router (F32) choosing --n-expert-used of them per token.

Type mixes follow llama.cpp's llama_tensor_get_type for the file types offered: q4_k_m puts
attn_v and ffn_down in Q6_K on the layers where ``use_more_bits`` holds, the output matrix is
Q6_K for every quantized file type, and everything else is the file type's own block type; with
exactly 8 experts attn_k and attn_v are Q8_0 and (q4_k_m) attn_output Q5_K.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType

# Offsets of the f16 scale fields in each block, as (offset, role): role "d" is the scale,
# "dmin" a k-quant min scale (value -= dmin * m), "m" a legacy min (value += m).
SCALE_FIELDS: dict[Q, list[tuple[int, str]]] = {
    Q.Q4_0: [(0, "d")],
    Q.Q4_1: [(0, "d"), (2, "m")],
    Q.Q5_0: [(0, "d")],
    Q.Q5_1: [(0, "d"), (2, "m")],
    Q.Q8_0: [(0, "d")],
    Q.Q2_K: [(80, "d"), (82, "dmin")],
    Q.Q3_K: [(108, "d")],
    Q.Q4_K: [(0, "d"), (2, "dmin")],
    Q.Q5_K: [(0, "d"), (2, "dmin")],
    Q.Q6_K: [(208, "d")],
    **{t: [(0, "d")] for t in (Q.IQ4_NL, Q.IQ4_XS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S,
                               Q.IQ1_S)},
    Q.IQ1_M: [(48, "d")],  # spread over the top nibbles of the four scale words (set_scale)
    Q.MXFP4: [(0, "d")],  # one E8M0 byte: the power of two nearest the scale (set_scale)
    Q.TQ1_0: [(52, "d")],
    Q.TQ2_0: [(64, "d")],  # (random bytes: code 3, value 2 d, occurs too)
}

# Mean code of each type's unsigned codes: mins of this size (times d) centre the values.
MEAN_CODE = {Q.Q4_1: 7.5, Q.Q5_1: 15.5, Q.Q2_K: 1.5, Q.Q4_K: 7.5, Q.Q5_K: 15.5}

SHAPES = {
    # n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab
    "llama2-7b": (32, 4096, 11008, 32, 32, 32000),
    "llama2-13b": (40, 5120, 13824, 40, 40, 32000),
    "smollm2-135m": (30, 576, 1536, 9, 3, 49152),
    "mixtral-mini": (16, 1024, 1024, 16, 4, 32000),  # with --n-expert 8 --n-expert-used 2 (the default)
}
DEFAULT_EXPERTS = {"mixtral-mini": (8, 2)}
# Shapes of other architectures: gemma3-1b is Gemma 3 1B (head size 256, a window of 512 on five
# layers of six, tied embeddings of 262144 tokens).
SHAPES["gemma3-1b"] = (26, 1152, 6912, 4, 1, 262144)
ARCH_OPTIONS = {"gemma3-1b": dict(arch="gemma3", key_length=256, sliding_window=512)}
# gpt-oss-20b: 24 blocks of 64 query / 8 key heads of 64, a window of 128 on every other block, 32
# experts of 2880 (4 per token), biases, sinks; its o200k vocabulary (201088 tokens).
SHAPES["gpt-oss-20b"] = (24, 2880, 2880, 64, 8, 201088)
DEFAULT_EXPERTS["gpt-oss-20b"] = (32, 4)
ARCH_OPTIONS["gpt-oss-20b"] = dict(arch="gpt-oss", key_length=64, sliding_window=128)

FILE_TYPES = {
    "f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0, "q5_1": Q.Q5_1, "q2_k": Q.Q2_K, "q3_k": Q.Q3_K, "q4_k": Q.Q4_K, "q4_k_m": Q.Q4_K,
    "q5_k": Q.Q5_K, "q6_k": Q.Q6_K, "iq4_nl": Q.IQ4_NL, "iq4_xs": Q.IQ4_XS,
    "mxfp4_moe": Q.MXFP4,  # gpt-oss's files: MXFP4 experts, Q8_0 elsewhere
    "mxfp4": Q.MXFP4, "tq1_0": Q.TQ1_0, "tq2_0": Q.TQ2_0,
}  # fmt: skip


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's layers that get more bits: the first and last eighth, every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def set_scale(qtype: Q, b: np.ndarray, off: int, value: float) -> None:
    """Writes the f16 value into the scale field at off of every block of b (IQ1_M: the four
    nibbles of the f16 into the top nibbles of the four 16-bit scale words at 48; MXFP4: the
    E8M0 byte e of the power of two 2^(e - 128) nearest value)."""
    h = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint16)[0]
    if qtype == Q.MXFP4:
        b[:, off] = np.uint8(np.clip(128 + np.round(np.log2(value)), 2, 254))
    elif qtype == Q.IQ1_M:
        words = b[:, off:off + 8].copy().view(np.uint16)
        nibbles = (np.uint16(h) >> np.array([0, 4, 8, 12], np.uint16)) & 0xF
        b[:, off:off + 8] = ((words & 0x0FFF) | (nibbles << 12).astype(np.uint16)).view(np.uint8)
    else:
        b[:, off:off + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)


def _unit_scale_blocks(qtype: Q, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks (n_blocks, type_size) with d = 1 and the mins centring the values."""
    blck, size = gguf.GGML_QUANT_SIZES[qtype]
    b = np.frombuffer(rng.bytes(n_blocks * size), dtype=np.uint8).reshape(n_blocks, size).copy()
    for off, role in SCALE_FIELDS[qtype]:
        set_scale(qtype, b, off, 1.0 if role == "d" else MEAN_CODE[qtype] * (1.0 if role == "dmin" else -1.0))
    return b


_UNIT_STD: dict[Q, float] = {}


def unit_std(qtype: Q) -> float:
    """Standard deviation of the values of random blocks with d = 1 (measured once per type)."""
    if qtype not in _UNIT_STD:
        sample = _unit_scale_blocks(qtype, 4096, np.random.default_rng(0))
        _UNIT_STD[qtype] = float(gguf.quants.dequantize(sample, qtype).std())
    return _UNIT_STD[qtype]


def random_blocks(qtype: Q, rows: int, cols: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A (rows, row bytes) uint8 array of random ``qtype`` rows whose values have std ~ sigma."""
    blck, size = gguf.GGML_QUANT_SIZES[qtype]
    if cols % blck:
        raise ValueError(f"{qtype.name}: rows of {cols} values are not whole blocks of {blck}")
    n_blocks = rows * (cols // blck)
    if qtype == Q.F32:
        return rng.normal(0, sigma, size=(rows, cols)).astype(np.float32).view(np.uint8)
    if qtype == Q.F16:
        return rng.normal(0, sigma, size=(rows, cols)).astype(np.float16).view(np.uint8)
    if qtype == Q.BF16:
        x = rng.normal(0, sigma, size=(rows, cols)).astype(np.float32).view(np.uint32)
        return (x >> 16).astype(np.uint16).view(np.uint8)
    b = _unit_scale_blocks(qtype, n_blocks, rng)
    d = sigma / unit_std(qtype)
    for off, role in SCALE_FIELDS[qtype]:
        mean = 0.0 if role == "d" else MEAN_CODE[qtype] * (1.0 if role == "dmin" else -1.0)
        set_scale(qtype, b, off, d if role == "d" else d * mean)
    return b.reshape(rows, (cols // blck) * size)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx_train: int = 4096
    n_expert: int = 0  # experts per feed-forward (0: dense); n_ff is an expert's width
    n_expert_used: int = 0
    arch: str = "llama"  # or gemma3: q/k head norms, post-norms, tied output, sliding window
    key_length: int = 0  # head size, if not n_embd / n_head
    sliding_window: int = 0

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head

    @property
    def tied(self) -> bool:
        return self.arch == "gemma3"


# llama.cpp's fallback when a row is not a whole number of 256-value super-blocks.
K_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def tensor_types(shape: Shape, file_type: str) -> dict[str, Q]:
    """The block type of each matrix (llama.cpp's rules for the offered file types)."""
    base = FILE_TYPES[file_type]
    if file_type == "mxfp4_moe":
        return {name: Q.MXFP4 if "_exps" in name else Q.Q8_0 for name, dims in tensor_shapes(shape).items()
                if not name.endswith(".bias") and dims[0] != 1}
    quantized = base not in (Q.F32, Q.F16, Q.BF16)
    out_type = Q.Q6_K if quantized and base != Q.Q8_0 else base
    # A tied embedding takes the output layer's type (llama.cpp's quantize).
    out = {"token_embd.weight": out_type if shape.tied else base}
    if not shape.tied:
        out["output.weight"] = out_type
    ffn = "_exps" if shape.n_expert else ""
    eight = quantized and shape.n_expert == 8
    for i in range(shape.n_layer):
        more = file_type == "q4_k_m" and use_more_bits(i, shape.n_layer)
        for name in ("attn_q", "attn_k", "attn_output", f"ffn_gate{ffn}", f"ffn_up{ffn}"):
            out[f"blk.{i}.{name}.weight"] = base
        out[f"blk.{i}.attn_v.weight"] = Q.Q6_K if more else base
        out[f"blk.{i}.ffn_down{ffn}.weight"] = Q.Q6_K if more else base
        if eight:
            out[f"blk.{i}.attn_k.weight"] = out[f"blk.{i}.attn_v.weight"] = Q.Q8_0
            if file_type == "q4_k_m":
                out[f"blk.{i}.attn_output.weight"] = Q.Q5_K
        if shape.n_expert:
            out[f"blk.{i}.ffn_gate_inp.weight"] = Q.F32
    cols = {name: dims[-1] for name, dims in tensor_shapes(shape).items()}
    for name, t in out.items():
        if cols[name] % gguf.GGML_QUANT_SIZES[t][0]:
            out[name] = K_FALLBACK.get(t, Q.F16)
    return out


def tensor_shapes(s: Shape) -> dict[str, tuple[int, ...]]:
    """(rows, row length) of every matrix, (n_expert, rows, row length) of stacked experts; norms
    are (1, n)."""
    q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (s.n_vocab, s.n_embd)}
    for i in range(s.n_layer):
        b = f"blk.{i}."
        out.update({
            b + "attn_norm.weight": (1, s.n_embd), b + "attn_q.weight": (q, s.n_embd),
            b + "attn_k.weight": (kv, s.n_embd), b + "attn_v.weight": (kv, s.n_embd),
            b + "attn_output.weight": (s.n_embd, q), b + "ffn_norm.weight": (1, s.n_embd),
        })  # fmt: skip
        if s.arch == "gpt-oss":  # biases (F32, (n_stack, rows)), sinks, post_attention_norm for ffn_norm
            del out[b + "ffn_norm.weight"]
            out.update({
                b + "attn_q.bias": (1, q), b + "attn_k.bias": (1, kv), b + "attn_v.bias": (1, kv),
                b + "attn_output.bias": (1, s.n_embd), b + "attn_sinks.weight": (1, s.n_head),
                b + "post_attention_norm.weight": (1, s.n_embd), b + "ffn_gate_inp.bias": (1, s.n_expert),
                b + "ffn_gate_exps.bias": (s.n_expert, s.n_ff), b + "ffn_up_exps.bias": (s.n_expert, s.n_ff),
                b + "ffn_down_exps.bias": (s.n_expert, s.n_embd),
            })  # fmt: skip
        if s.arch == "gemma3":
            out.update({
                b + "attn_q_norm.weight": (1, s.head_dim), b + "attn_k_norm.weight": (1, s.head_dim),
                b + "post_attention_norm.weight": (1, s.n_embd), b + "post_ffw_norm.weight": (1, s.n_embd),
            })  # fmt: skip
        if s.n_expert:
            e = (s.n_expert,)
            out.update({
                b + "ffn_gate_inp.weight": (s.n_expert, s.n_embd),
                b + "ffn_gate_exps.weight": (*e, s.n_ff, s.n_embd),
                b + "ffn_up_exps.weight": (*e, s.n_ff, s.n_embd),
                b + "ffn_down_exps.weight": (*e, s.n_embd, s.n_ff),
            })  # fmt: skip
            continue
        out.update({
            b + "ffn_gate.weight": (s.n_ff, s.n_embd), b + "ffn_up.weight": (s.n_ff, s.n_embd),
            b + "ffn_down.weight": (s.n_embd, s.n_ff),
        })  # fmt: skip
    out["output_norm.weight"] = (1, s.n_embd)
    if not s.tied:
        out["output.weight"] = (s.n_vocab, s.n_embd)
    return out


def _add_vocab(w: gguf.GGUFWriter, n_vocab: int) -> None:
    """A SentencePiece-style vocabulary (llama.cpp needs one to run): <unk> <s> </s>, the 256
    byte tokens, then placeholder pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (n_vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens[:n_vocab])
    w.add_token_scores([-float(i) for i in range(n_vocab)])
    w.add_token_types(types[:n_vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def write_model(path: Path, shape: Shape, file_type: str, *, seed: int = 0) -> None:
    if shape.n_vocab < 259:
        raise ValueError("n_vocab must be at least 259 (the byte tokens)")
    rng = np.random.default_rng(seed)
    types = tensor_types(shape, file_type)
    shapes = tensor_shapes(shape)
    w = gguf.GGUFWriter(str(path), shape.arch)
    w.add_name(f"random-{file_type}")
    w.add_block_count(shape.n_layer)
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(1e6 if shape.arch == "gemma3" else 10000.0)
    w.add_layer_norm_rms_eps(1e-6 if shape.arch == "gemma3" else 1e-5)
    if shape.key_length:
        w.add_key_length(shape.key_length)
        w.add_value_length(shape.key_length)
    if shape.sliding_window:
        w.add_sliding_window(shape.sliding_window)
    w.add_vocab_size(shape.n_vocab)
    if shape.n_expert:
        w.add_expert_count(shape.n_expert)
        w.add_expert_used_count(shape.n_expert_used)
        w.add_expert_feed_forward_length(shape.n_ff)
    _add_vocab(w, shape.n_vocab)
    for name, dims in shapes.items():
        *lead, cols = dims
        if lead == [1] or name.endswith(".bias"):
            n = int(np.prod(lead)) * cols
            w.add_tensor_info(name, (cols,) if lead == [1] else dims, np.dtype(np.float32), 4 * n)
        else:
            t = types[name]
            blck, size = gguf.GGML_QUANT_SIZES[t]
            row_bytes = cols // blck * size
            n = int(np.prod(lead)) * row_bytes
            w.add_tensor_info(name, (*lead, row_bytes), np.dtype(np.uint8), n, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, dims in shapes.items():
        *lead, cols = dims
        if name.endswith(".bias") or name.endswith("attn_sinks.weight"):
            w.write_tensor_data((0.1 * rng.standard_normal(dims if lead != [1] else cols)).astype(np.float32))
        elif lead == [1]:
            w.write_tensor_data((1.0 + 0.05 * rng.standard_normal(cols)).astype(np.float32))
        else:
            sigma = 1.0 if name == "token_embd.weight" else 1.0 / np.sqrt(cols)
            rows = int(np.prod(lead))
            w.write_tensor_data(random_blocks(types[name], rows, cols, sigma, rng).reshape(*lead, -1))
    w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), help="a named shape (the options below override it)")
    p.add_argument("--type", default="q4_k_m", choices=sorted(FILE_TYPES))
    for opt in ("n-layer", "n-embd", "n-ff", "n-head", "n-head-kv", "n-vocab", "n-expert", "n-expert-used"):
        p.add_argument(f"--{opt}", type=int)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    base = dict(zip(("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "n_vocab"),
                    SHAPES[a.shape] if a.shape else (2, 256, 512, 4, 4, 512), strict=True))
    base["n_expert"], base["n_expert_used"] = DEFAULT_EXPERTS.get(a.shape or "", (0, 0))
    extra = ARCH_OPTIONS.get(a.shape or "", {})
    for k in base:
        v = getattr(a, k)
        if v is not None:
            base[k] = v
    uneven = base["n_embd"] % base["n_head"] and not extra.get("key_length")
    if uneven or base["n_head"] % base["n_head_kv"]:
        p.error("n_embd must be a multiple of n_head, and n_head of n_head_kv")
    if base["n_expert"] and not 1 <= base["n_expert_used"] <= base["n_expert"]:
        p.error("--n-expert-used must be in [1, --n-expert]")
    write_model(a.out, Shape(**base, **extra), a.type, seed=a.seed)
    print(f"wrote {a.out} ({a.out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
