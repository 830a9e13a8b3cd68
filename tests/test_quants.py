"""Block formats against references we did not write: gguf-py's quantizers and dequantizers
(exact, bit for bit), numpy re-statements of ggml's Q8_K rules, llama.cpp's round-trip error
limits (tests/test-quantize-fns.cpp), and llama.cpp's own quantizer via llama-cpp-python."""

from __future__ import annotations

import ctypes
import hashlib
import zlib

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.constants import GGML_QUANT_SIZES
from splitllm import quants

ALL = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

# Byte offsets of the f16 scale fields in each block (ggml-common.h).
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}  # fmt: skip

# Row shapes, in blocks: (leading dims..., blocks per row); each about 4096 blocks in all.
SHAPES = [(4096,), (64, 64), (8, 16, 32), (1365, 3)]


def seed_of(*key: object) -> int:
    """A seed that is the same in every run (str hashes are salted per process)."""
    return zlib.crc32(repr(key).encode())


def bits(a: np.ndarray) -> np.ndarray:
    """Float32 array as its bit patterns, so that NaNs and signed zeros compare exactly."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def finite_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random finite f16 bit patterns over the whole range (subnormals, zeros, both signs)."""
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bad = (h & 0x7C00) == 0x7C00
    h[bad] &= np.uint16(0xBFFF)  # clear the top exponent bit: a finite value
    return h


def random_blocks(qtype: str, shape_blocks: tuple[int, ...], seed: int) -> np.ndarray:
    """Random code bytes with finite random f16 scales, laid out as (..., row bytes)."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[GT[qtype]]
    n_blocks = int(np.prod(shape_blocks))
    if qtype == "F16":
        raw = finite_f16(rng, n_blocks).view(np.uint8)
    else:
        raw = rng.integers(0, 256, size=n_blocks * size, dtype=np.uint8)
        blocks = raw.reshape(n_blocks, size)
        for off in F16_FIELDS.get(qtype, []):
            blocks[:, off : off + 2] = finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(*shape_blocks[:-1], shape_blocks[-1] * size)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("qtype", ALL)
def test_dequantize_matches_gguf(qtype: str, shape: tuple[int, ...]) -> None:
    data = random_blocks(qtype, shape, seed=seed_of(qtype, shape))
    ours = quants.dequantize(data, qtype)
    ref = gguf.quants.dequantize(data, GT[qtype])
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    assert np.array_equal(bits(ours), bits(ref))


def q8_k_reference(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_K_ref restated in numpy float32: d = max / -127 (max = the value
    of largest magnitude, first on ties), codes rint(x * (-127 / max)) capped at 127, bsums."""
    blocks = x.reshape(-1, 256).astype(np.float32)
    imax = np.abs(blocks).argmax(axis=1)
    vmax = blocks[np.arange(len(blocks)), imax][:, None]
    zero = vmax == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / vmax).astype(np.float32)
    qs = np.minimum(np.rint((iscale * blocks).astype(np.float32)), 127).astype(np.int8)
    bsums = qs.reshape(-1, 16, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
    with np.errstate(divide="ignore"):
        d = np.where(zero, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    out = np.concatenate([d.view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], x.shape[-1] // 256 * 292)


def test_q8_k_matches_ggml_rules() -> None:
    rng = np.random.default_rng(8)
    x = gaussian_blocks(rng, 2048, 256).reshape(64, 32 * 256)
    ours = quants.quantize(x, "Q8_K")
    assert np.array_equal(ours, q8_k_reference(x))
    # Dequantize: d * q, with random codes and finite random f32 scales.
    data = rng.integers(0, 256, size=(1024, 292), dtype=np.uint8)
    d = (rng.standard_normal(1024) * 10.0 ** rng.integers(-20, 20, 1024)).astype(np.float32)
    data[:, :4] = d.view(np.uint8).reshape(-1, 4)
    ref = d[:, None] * data[:, 4:260].view(np.int8).astype(np.float32)
    assert np.array_equal(bits(quants.dequantize(data, "Q8_K")), bits(ref))


def gaussian_blocks(rng: np.random.Generator, n_blocks: int, block: int) -> np.ndarray:
    """Gaussian blocks over many magnitudes, plus blocks that stress the edge cases: all zero,
    constant, a single outlier, a tie between +max and -max, exact half-way codes, tiny."""
    assert n_blocks >= 8
    scale = np.float32(10.0) ** rng.uniform(-4, 4, size=(n_blocks, 1)).astype(np.float32)
    x = (rng.standard_normal((n_blocks, block)) * scale).astype(np.float32)
    x[0] = 0
    x[1] = 0.37
    x[2] = 0
    x[2, 5] = -3.0
    x[3] = rng.standard_normal(block)
    x[3, 1], x[3, 7] = 4.0, -4.0
    x[4] = np.arange(block, dtype=np.float32) / 8 - block / 16  # many values on code boundaries
    x[5] = rng.standard_normal(block) * np.float32(1e-20)
    x[6] = np.abs(x[6])  # all positive: min > 0
    x[7] = -np.abs(x[7])
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("qtype", [*LEGACY, "BF16", "F16", "F32"])
def test_quantize_matches_gguf(qtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(seed_of(qtype, shape))
    block = GGML_QUANT_SIZES[GT[qtype]][0]
    if block == 1:
        block = 32  # float types: rows of 32 values per "block" of the shape
    x = gaussian_blocks(rng, int(np.prod(shape)), block).reshape(*shape[:-1], shape[-1] * block)
    if qtype == "BF16":
        x.reshape(-1)[[3, 10, 100]] = [np.nan, np.inf, -np.inf]
        x.reshape(-1)[200] = np.float32(-np.nan)
    if qtype == "F16":
        x.reshape(-1)[[3, 10, 100, 101]] = [np.inf, -np.inf, 70000.0, 65519.0]  # overflow / round
        x.reshape(-1)[300:340] = rng.standard_normal(40) * 1e-6  # f16 subnormals
    ours = quants.quantize(x, qtype)
    with np.errstate(over="ignore"):  # F16 overflow to infinity is part of the test
        ref = np.ascontiguousarray(gguf.quants.quantize(x, GT[qtype])).view(np.uint8)
    assert ours.dtype == np.uint8
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref)


def llama_test_vector(n: int = 4096) -> np.ndarray:
    """llama.cpp's test-quantize-fns data: 0.1 + 2 cos(i)."""
    i = np.arange(n, dtype=np.float32)
    return (np.float32(0.1) + np.float32(2) * np.cos(i)).astype(np.float32)


# llama.cpp tests/test-quantize-fns.cpp: MAX_QUANTIZATION_TOTAL_ERROR(_2BITS, _3BITS).
ROUND_TRIP_LIMIT = {"Q2_K": 0.0075, "Q3_K": 0.004}


@pytest.mark.parametrize("qtype", [*KQUANTS, "Q8_K", *LEGACY, "BF16", "F16"])
def test_round_trip_error_within_llama_cpp_limits(qtype: str) -> None:
    x = llama_test_vector()
    y = quants.dequantize(quants.quantize(x, qtype), qtype)
    err = np.sqrt(np.sum((y.astype(np.float64) - x) ** 2)) / x.size
    assert err < ROUND_TRIP_LIMIT.get(qtype, 0.002), err


@pytest.mark.parametrize("qtype", [*KQUANTS, "Q8_K", *LEGACY, "Q8_1", "BF16", "F16", "F32"])
def test_threads_give_identical_bytes(qtype: str) -> None:
    rng = np.random.default_rng(5)
    block = max(32, GGML_QUANT_SIZES[GT[qtype]][0])
    x = gaussian_blocks(rng, 37 * 3, block).reshape(37, 3 * block)
    one = quants.quantize(x, qtype, n_threads=1)
    for n in (2, 3, 8):
        assert np.array_equal(quants.quantize(x, qtype, n_threads=n), one)
    assert np.array_equal(quants.quantize(x, qtype), one)
    back = quants.dequantize(one, qtype, n_threads=1)
    for n in (2, 5):
        assert np.array_equal(bits(quants.dequantize(one, qtype, n_threads=n)), bits(back))


def test_type_names_and_enums() -> None:
    x = gaussian_blocks(np.random.default_rng(2), 8, 256).reshape(2, 1024)
    ref = quants.quantize(x, "Q4_K")
    assert np.array_equal(quants.quantize(x, "q4_k"), ref)
    assert np.array_equal(quants.quantize(x, GT.Q4_K), ref)
    assert np.array_equal(quants.quantize(x, 12), ref)
    info = quants.qtype_info("bf16")
    assert (info.name, info.block_size, info.type_size) == ("BF16", 1, 2)
    for name in quants.SUPPORTED:
        if name != "Q8_1":  # gguf-py sizes Q8_1 as 40 bytes; ggml's block is 36
            info = quants.qtype_info(name)
            assert GGML_QUANT_SIZES[GT[name]] == (info.block_size, info.type_size)


def random_grid_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks of a grid i-quant with every bit random but a finite f16 super-block scale (IQ1_M
    spreads its scale over the top nibbles of its four scale words)."""
    size = GGML_QUANT_SIZES[GT[name]][1]
    b = np.frombuffer(rng.bytes(n_blocks * size), np.uint8).reshape(n_blocks, size).copy()
    d = rng.uniform(-0.1, 0.1, size=n_blocks).astype(np.float16).view(np.uint16)
    if name == "IQ1_M":
        words = b[:, 48:56].copy().view(np.uint16)
        nibbles = (d[:, None] >> np.array([0, 4, 8, 12], np.uint16)) & 0xF
        b[:, 48:56] = ((words & 0x0FFF) | (nibbles << 12).astype(np.uint16)).view(np.uint8)
    else:
        b[:, :2] = d.view(np.uint8).reshape(n_blocks, 2)
    return b


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"])
def test_grid_iquants_dequantize_as_gguf(name: str) -> None:
    """The grid i-quants dequantize to exactly gguf-py's floats, on random blocks where every
    grid index, sign and scale occurs (their quantizers: test_quants_grid_quantize.py)."""
    assert name in quants.SUPPORTED and name not in quants.DEQUANTIZE_ONLY
    info = quants.qtype_info(name)
    assert info.can_dequantize and info.takes_imatrix
    assert info.can_quantize == (name not in quants.NEEDS_IMATRIX)
    raw = random_grid_blocks(name, 4096, np.random.default_rng(len(name))).reshape(64, -1)
    ref = gguf.quants.dequantize(raw, GT[name])
    ours = quants.dequantize(raw, name, n_threads=2)
    assert ours.shape == ref.shape == (64, 64 * 256)
    assert np.array_equal(bits(ours), bits(ref))


def test_input_dtypes_and_layouts() -> None:
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((6, 512))
    ref = quants.quantize(x64.astype(np.float32), "Q6_K")
    assert np.array_equal(quants.quantize(x64, "Q6_K"), ref)
    assert np.array_equal(quants.quantize(x64.astype(np.float32).tolist(), "Q6_K"), ref)
    wide = np.zeros((6, 1024), dtype=np.float32)
    wide[:, ::2] = x64
    assert np.array_equal(quants.quantize(wide[:, ::2], "Q6_K"), ref)  # non-contiguous
    h = x64.astype(np.float16)
    assert np.array_equal(quants.quantize(h, "Q4_0"), quants.quantize(h.astype(np.float32), "Q4_0"))
    # Dequantize of a misaligned view and of a non-uint8 view of the same bytes.
    buf = np.zeros(ref.size + 1, dtype=np.uint8)
    buf[1:] = ref.reshape(-1)
    misaligned = buf[1:].reshape(ref.shape)
    expect = quants.dequantize(ref, "Q6_K")
    assert np.array_equal(bits(quants.dequantize(misaligned, "Q6_K")), bits(expect))
    f32 = rng.standard_normal((3, 8)).astype(np.float32)
    assert np.array_equal(bits(quants.dequantize(f32, "F32")), bits(f32))


def test_empty_arrays() -> None:
    assert quants.quantize(np.zeros((0, 256), np.float32), "Q4_K").shape == (0, 144)
    assert quants.quantize(np.zeros((3, 0), np.float32), "Q4_K").shape == (3, 0)
    assert quants.dequantize(np.zeros((0, 144), np.uint8), "Q4_K").shape == (0, 256)
    assert quants.dequantize(np.zeros((2, 0), np.uint8), "Q8_0").shape == (2, 0)


def test_bad_input_raises_clear_errors() -> None:
    x = np.ones((2, 100), dtype=np.float32)
    with pytest.raises(ValueError, match=r"axis \(100\) is not a multiple of the Q4_K block size \(256\)"):
        quants.quantize(x, "Q4_K")
    with pytest.raises(ValueError, match=r"multiple of the Q8_0 block \(34 bytes\)"):
        quants.dequantize(np.zeros((2, 35), np.uint8), "Q8_0")
    with pytest.raises(ValueError, match="unknown quantization type 'Q4_Z'"):
        quants.quantize(x, "Q4_Z")
    with pytest.raises(ValueError, match="unknown quantization type id 77"):
        quants.quantize(x, 77)
    with pytest.raises(ValueError, match="IQ2_XXS needs an importance matrix"):
        quants.quantize(np.ones(256, np.float32), GT.IQ2_XXS)
    with pytest.raises(NotImplementedError, match="quantize to I8"):
        quants.quantize(np.ones(256, np.float32), "i8")
    with pytest.raises(NotImplementedError, match="dequantize I32; supported: .*IQ1_M"):
        quants.dequantize(np.zeros(64, np.uint8), "i32")
    with pytest.raises(TypeError, match="qtype"):
        quants.quantize(x, 4.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="real numbers"):
        quants.quantize(np.ones(32, np.complex64), "Q8_0")
    with pytest.raises(ValueError, match="at least one axis"):
        quants.quantize(np.float32(1), "F32")
    with pytest.raises(ValueError, match="n_threads"):
        quants.quantize(np.ones(32, np.float32), "Q8_0", n_threads=0)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q4_0", "Q8_K"])
def test_non_finite_input_to_block_types_raises(qtype: str) -> None:
    x = np.ones((3, 512), dtype=np.float32)
    x[2, 300] = np.nan
    x[2, 400] = np.inf
    with pytest.raises(ValueError, match=r"value nan at row 2, column 300 is not finite"):
        quants.quantize(x, qtype, n_threads=2)
    x[2, 300] = 0
    with pytest.raises(ValueError, match=r"value inf at row 2, column 400"):
        quants.quantize(x, qtype)


# ---- llama.cpp's own quantizer: recorded output ----------------------------------------------

# SHA-256 of llama.cpp's quantization of golden_input() (llama-cpp-python 0.3.36,
# llama_model_quantize of an F32 GGUF, "pure", no importance matrix). Recorded from llama.cpp's
# output file, not from splitllm, so that this comparison runs without llama-cpp-python.
LLAMA_CPP_SHA256 = {
    "Q4_0": "068f965b0a7241c5aa7ccac77a419a376b6a26065e35922e68f31cdc058c881e",
    "Q4_1": "02027ef87681601dd7ab2a1b0355a43ddbb7bfb059646de727c1e78e42ab6911",
    "Q5_0": "6475d379e1b07a820bdc2ea7d13e4f5f67c3f8d4d00d197e9f7ac1aef16cdb2e",
    "Q5_1": "067c7191e8f024ee382f323ee775ce000f877a53a69051b02db9e5c06873b1c2",
    "Q8_0": "b80df32c33279352e7965f9ef8411b91f498c360a9ab30998ccac12a8ac3aabc",
    "Q2_K": "63fe48496846e2a30c5aa1b30ed0c34826c35ac1d3d4a17229c779412558a9f4",
    "Q3_K": "55124c23e44913ebe243768599b2a1a2263b7212fd377b9406074e66d9482032",
    "Q4_K": "550d66ffe30a849a961ee32d6d6b20a07e46a0c258bf8378f416687a40dc9266",
    "Q5_K": "7786ee53cf3668a3d5980c07670343a9a7cbaf19bb93a9a01a13ee9fd8c382bc",
    "Q6_K": "cf587129dd8dae295c14b830c7e6b6296e6c1cb9d15913045c730952705798a0",
}


def golden_input(rows: int = 256, cols: int = 1024) -> np.ndarray:
    """Bit-reproducible test matrix without a random generator: integer hashes (splitmix64
    finalizer), a sum of three 20-bit uniforms (roughly Gaussian) times a power of two that
    changes every 32 values (2^-28 .. 2^-16 steps); row 1 all zero, row 2 constant -0.75."""
    i = np.arange(rows * cols, dtype=np.uint64)

    def mix(k: int) -> np.ndarray:
        z = i * np.uint64(0x9E3779B97F4A7C15) + np.uint64((k * 0xBF58476D1CE4E5B9) % 2**64)
        z = (z ^ (z >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(29))

    tri = sum((mix(k) >> np.uint64(44)).astype(np.int64) for k in (1, 2, 3))
    block = (np.arange(rows * cols) // 32).astype(np.uint64)
    kexp = ((block * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(60)).astype(np.int64) % 13 - 6
    x = np.ldexp((tri - 3 * 2**19).astype(np.float64), kexp - 22).astype(np.float32).reshape(rows, cols)
    x[1] = 0.0
    x[2] = -0.75
    return x


@pytest.mark.parametrize("qtype", list(LLAMA_CPP_SHA256))
def test_quantize_matches_recorded_llama_cpp_output(qtype: str) -> None:
    ours = quants.quantize(golden_input(), qtype)
    assert hashlib.sha256(ours.tobytes()).hexdigest() == LLAMA_CPP_SHA256[qtype]


# ---- llama.cpp's own quantizer, live (llama-cpp-python's llama_model_quantize) -------------

LLAMA_FTYPES = {
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "Q3_K": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
}  # fmt: skip


_LOG_SINK: list = []  # keeps the ctypes log callback alive while llama.cpp may call it


@pytest.fixture(scope="module")
def llama_cpp_quantized(tmp_path_factory):
    """A small F32 GGUF of Gaussian matrices and llama.cpp's quantization of it to each type
    (pure: every tensor to the base type)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    _LOG_SINK.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
    llama_cpp.llama_log_set(_LOG_SINK[-1], ctypes.c_void_p(0))
    rng = np.random.default_rng(11)
    mats = [
        gaussian_blocks(rng, 96, 256).reshape(24, 1024),
        rng.standard_normal((16, 2048), dtype=np.float32),
    ]
    d = tmp_path_factory.mktemp("llama_quant")
    src = d / "f32.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_context_length(64)
    w.add_embedding_length(1024)
    w.add_block_count(len(mats))
    w.add_feed_forward_length(1024)
    w.add_head_count(8)
    w.add_layer_norm_rms_eps(1e-5)
    for i, m in enumerate(mats):
        w.add_tensor(f"blk.{i}.ffn_up.weight", m)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = {}
    for qtype, ftype in LLAMA_FTYPES.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, ftype)
        params.pure = True
        params.nthread = 2
        dst = d / f"{qtype}.gguf"
        assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
        reader = gguf.GGUFReader(str(dst))
        out[qtype] = [(t.tensor_type.name, np.array(t.data).reshape(-1)) for t in reader.tensors]
    return mats, out


@pytest.mark.reference
@pytest.mark.parametrize("qtype", list(LLAMA_FTYPES))
def test_quantize_matches_llama_cpp(llama_cpp_quantized, qtype: str) -> None:
    mats, out = llama_cpp_quantized
    assert len(out[qtype]) == len(mats)
    for m, (their_type, theirs) in zip(mats, out[qtype], strict=True):
        assert their_type == qtype
        ours = quants.quantize(m, qtype).reshape(-1)
        # ggml's reference quantizer step for step: the same bytes (a build of llama.cpp that
        # fuses multiply-adds could differ in rare last-bit ties).
        assert np.array_equal(ours, theirs)


def test_real_model_tensors_match_gguf(smollm2_path) -> None:
    """Every tensor type of a real GGUF file (SmolLM2-135M Q4_1: Q4_1, Q8_0, F32), as stored."""
    reader = gguf.GGUFReader(str(smollm2_path))
    tensors = [t for t in reader.tensors if t.name.startswith(("blk.0.", "blk.29.", "token_embd"))]
    assert {t.tensor_type.name for t in tensors} == {"Q4_1", "Q8_0", "F32"}
    for t in tensors:
        ours = quants.dequantize(t.data, t.tensor_type)
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(bits(ours), bits(ref)), t.name
