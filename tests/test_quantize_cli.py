"""``splitllm quantize`` against llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize).

Every file type of FILE_TYPES but the IQ1/IQ2/IQ3 ones and Q2_K_S (Q3_K_S / Q3_K_L, IQ4_NL, IQ4_XS
and MXFP4_MOE included) on tiny random models (llama tied and untied, qwen2, qwen3moe with 8 experts,
Mixtral-style llama with 4, gpt-oss with 4, gemma3, phi3's fused q/k/v, rows that need the
fallback types, F32 / F16 / BF16 weights), a file written by convert-hf, sparse files that
trigger the 70B and falcon rules, requantization from Q8_0 and of the real SmolLM2: the output
files are byte for byte llama.cpp's. Then the options against the same llama.cpp parameters, the
command line's grammar, and the errors (the types llama.cpp refuses without an importance matrix
among them). Importance matrices: test_quantize_imatrix.py.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from typing import Any

import gguf
import hf_fixtures as F
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from split_gguf import write_split
from splitllm import GGUFError, GGUFFile
from splitllm.cli import main
from splitllm.quantize_cli import parse_override_kv
from splitllm_convert import FILE_TYPES, QuantizeError, convert, quantize
from splitllm_convert.requantize import NEEDS_IMATRIX, QUANT_OPTIONS
from tiny_model import TinyConfig, make_weights, write_gguf

_LOG_SINK: list[Any] = []  # keeps the ctypes log callback alive while llama.cpp may call it


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    mod = pytest.importorskip("llama_cpp")
    if not _LOG_SINK:
        _LOG_SINK.append(mod.llama_log_callback(lambda level, text, user_data: None))
    mod.llama_log_set(_LOG_SINK[-1], ctypes.c_void_p(0))
    return mod


def llama_quantize(llama_cpp: Any, src: Path, dst: Path, ftype: str, *, tensor_types: Any = (),
                   override_kv: dict[str, Any] | None = None, **params: Any) -> int:  # fmt: skip
    """llama.cpp's quantizer with llama_model_quantize_default_params() and ``params``; its return code."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = int(FILE_TYPES[ftype].ftype), 2
    keep = []
    for key, value in params.items():
        setattr(p, key, int(GT[value.upper()]) if key.endswith("_type") else value)
    if tensor_types:
        arr = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, qtype) in enumerate(tensor_types):
            arr[i].pattern, arr[i].type = pattern.encode(), int(GT[qtype.upper()])
        arr[-1].pattern, arr[-1].type = None, 0
        keep.append(arr)
        p.tt_overrides = ctypes.cast(arr, type(p.tt_overrides))
    if override_kv:
        kvs = (llama_cpp.llama_model_kv_override * (len(override_kv) + 1))()
        for i, (key, value) in enumerate(override_kv.items()):
            kvs[i].key = key.encode()
            if isinstance(value, bool):
                kvs[i].tag, kvs[i].value.val_bool = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL, value
            elif isinstance(value, int):
                kvs[i].tag, kvs[i].value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
            elif isinstance(value, float):
                kvs[i].tag, kvs[i].value.val_f64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
            else:
                kvs[i].tag, kvs[i].value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()
        kvs[-1].key = b""
        keep.append(kvs)
        p.kv_overrides = ctypes.cast(kvs, type(p.kv_overrides))
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p)


def ours(src: Path, dst: Path, ftype: str, **kw: Any) -> Any:
    return quantize(src, dst, ftype, nthreads=2, quiet=True, **kw)


def assert_same_file(a: Path, b: Path) -> None:
    """Byte-identical; otherwise the first key or tensor that differs, for the message."""
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    ka = [(f.name, [bytes(p) for p in f.parts]) for f in ra.fields.values()]
    kb = [(f.name, [bytes(p) for p in f.parts]) for f in rb.fields.values()]
    for x, y in zip(ka, kb, strict=False):
        assert x == y, f"key {x[0]} / {y[0]} differs"
    assert [k for k, _ in ka] == [k for k, _ in kb]
    for x, y in zip(ra.tensors, rb.tensors, strict=True):
        assert (x.name, x.tensor_type, list(x.shape)) == (y.name, y.tensor_type, list(y.shape))
        assert bytes(x.data) == bytes(y.data), f"tensor {x.name} ({x.tensor_type.name}) differs"
    raise AssertionError(f"{a} and {b} differ ({len(da)} and {len(db)} bytes)")


def types_of(path: Path) -> dict[str, str]:
    with GGUFFile(path) as f:
        return {n: t.type for n, t in f.tensors.items()}


# -- models -----------------------------------------------------------------------------------------

TINY = {  # n_embd 256 (or 288: rows that need the fallback types) so that the k-quants apply
    "llama-f16": (TinyConfig(n_layer=4, n_embd=256, n_ff=512, n_head=4, n_head_kv=2), "F16"),
    "llama-tied-f32": (TinyConfig(n_layer=3, n_embd=256, n_ff=512, n_head=4, n_head_kv=1, tied_output=True),
                       "F32"),
    "qwen2-bf16": (TinyConfig(arch="qwen2", n_layer=3, n_embd=256, n_ff=512, n_head=4, n_head_kv=2), "BF16"),
    "qwen3moe-8x": (TinyConfig(arch="qwen3moe", n_layer=2, n_embd=256, n_ff=256, n_head=4, n_head_kv=2,
                               n_expert=8, n_expert_used=2), "F16"),
    "mixtral-4x": (TinyConfig(n_layer=2, n_embd=256, n_ff=256, n_head=4, n_head_kv=2, n_expert=4,
                              n_expert_used=2), "F16"),
    "gemma3-tied": (TinyConfig(arch="gemma3", n_layer=3, n_embd=256, n_ff=512, n_head=4, n_head_kv=2,
                               key_length=64, tied_output=True), "F16"),
    "phi3": (TinyConfig(arch="phi3", n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=4), "F16"),
    "fallback": (TinyConfig(n_layer=2, n_embd=288, n_ff=100, n_head=4, n_head_kv=2), "F16"),
    # experts with biases, sinks, the router's bias (MXFP4_MOE's own model)
    "gpt-oss-4x": (TinyConfig(arch="gpt-oss", n_layer=2, n_embd=256, n_ff=256, n_head=4, n_head_kv=2,
                              n_expert=4, n_expert_used=2, n_ff_exp=256, sliding_window=6), "F32"),
}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: Any) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quantize_models")
    out = {}
    for name, (cfg, weight_type) in TINY.items():
        out[name] = d / f"{name}.gguf"
        write_gguf(make_weights(cfg), out[name], weight_type=weight_type)
    # a file as convert-hf writes it: general.file_type and general.quantization_version already
    # there (moved to the end), a real tokenizer's keys
    F.tiny_model(d / "hf", "llama", hidden_size=256, intermediate_size=512, num_hidden_layers=3)
    out["converted-f16"] = d / "converted-f16.gguf"
    convert(d / "hf", out["converted-f16"], type="f16", quiet=True)
    cfg = TinyConfig(n_layer=3, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    out["q8_0"] = d / "q8_0.gguf"
    write_gguf(make_weights(cfg), out["q8_0"], weight_type="Q8_0")
    return out


# -- every file type, byte for byte ---------------------------------------------------------------

# the file types of splitllm's first quantizers; the IQ1/IQ2/IQ3 ones and Q2_K_S, and importance
# matrices, are tested in test_quantize_imatrix.py
NO_IMATRIX_TYPES = [t for t in FILE_TYPES if t not in ("q2_k_s",) and not t.startswith(("iq1", "iq2", "iq3"))]


@pytest.mark.reference
@pytest.mark.parametrize("ftype", NO_IMATRIX_TYPES)
@pytest.mark.parametrize("model", [*TINY, "converted-f16"])
def test_file_types_match_llama_cpp(llama_cpp: Any, models: dict[str, Path], model: str, ftype: str,
                                    tmp_path: Path) -> None:  # fmt: skip
    theirs, mine = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    assert llama_quantize(llama_cpp, models[model], theirs, ftype) == 0
    plan = ours(models[model], mine, ftype)
    assert_same_file(mine, theirs)
    assert plan.output_bytes == mine.stat().st_size
    if model == "fallback" and FILE_TYPES[ftype].is_quantized:
        assert plan.n_fallback > 0  # ffn_down's rows of 100 fit no block: F16


def test_metadata_order(models: dict[str, Path], tmp_path: Path) -> None:
    """The input's keys in order, general.quantization_version and general.file_type moved to the
    end (converted file: both were in the middle)."""
    src = models["converted-f16"]
    ours(src, tmp_path / "q.gguf", "q4_k_m")
    before = list(gguf.GGUFReader(str(src)).fields)
    after = list(gguf.GGUFReader(str(tmp_path / "q.gguf")).fields)
    assert before.index("general.file_type") < before.index("tokenizer.ggml.model")
    moved = ["general.quantization_version", "general.file_type"]
    assert after == [k for k in before if k not in moved] + moved
    with GGUFFile(tmp_path / "q.gguf") as f:
        assert f.metadata["general.file_type"] == 15 and f.metadata["general.quantization_version"] == 2


# -- rules for architectures and sizes the tiny models do not reach -------------------------------


def sparse_gguf(path: Path, arch: str, n_layer: int, names: list[str], *, n_head: int = 8, n_head_kv: int = 2,
                alignment: int | None = None, extra: dict[str, Any] | None = None) -> None:  # fmt: skip
    """A file with the metadata of an n_layer model but only the tensors ``names`` (64 x 256, F16):
    llama.cpp's quantizer reads the hyper-parameters, not the full set of tensors."""
    rng = np.random.default_rng(len(names))
    w = gguf.GGUFWriter(str(path), arch)
    if alignment:
        w.data_alignment = alignment
        w.add_custom_alignment(alignment)
    w.add_block_count(n_layer)
    w.add_context_length(64)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    for key, value in (extra or {}).items():
        w.add_key_value(key, value, gguf.GGUFValueType.UINT32)
    for n in names:
        w.add_tensor(n, rng.normal(size=(64, 256)).astype(np.float16))
    w.add_tensor("a.small", np.arange(8, dtype=np.float32))  # 32 bytes: the next offset is not 64-aligned
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _sparse_names(n_layer: int, falcon: bool = False) -> list[str]:
    parts = ("attn_qkv", "attn_output", "ffn_down", "ffn_up") if falcon else (
        "attn_v", "attn_k", "attn_output", "ffn_down", "ffn_up")
    layers = sorted({0, 1, 5, n_layer // 2, n_layer - 1})
    return ["token_embd.weight", "output.weight"] + [f"blk.{i}.{p}.weight" for i in layers for p in parts]


SPARSE = {  # (arch, n_layer, n_head_kv): llama 70B (80 layers, grouped heads), llama 65B (not 70B),
    "llama-70b": ("llama", 80, 2),  # qwen2 70B, falcon's own rules, a 16-layer llama
    "llama-65b": ("llama", 80, 8),
    "qwen2-70b": ("qwen2", 80, 2),
    "falcon": ("falcon", 16, 1),
    "llama-16": ("llama", 16, 1),
}


@pytest.mark.reference
@pytest.mark.parametrize("ftype", ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_m", "q8_0",
                                   "iq4_nl", "iq4_xs"])
@pytest.mark.parametrize("case", list(SPARSE))
def test_arch_rules_match_llama_cpp(llama_cpp: Any, case: str, ftype: str, tmp_path: Path) -> None:
    arch, n_layer, n_head_kv = SPARSE[case]
    src = tmp_path / "in.gguf"
    sparse_gguf(src, arch, n_layer, _sparse_names(n_layer, arch == "falcon"), n_head_kv=n_head_kv)
    assert llama_quantize(llama_cpp, src, tmp_path / "theirs.gguf", ftype) == 0
    ours(src, tmp_path / "ours.gguf", ftype)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")
    t = types_of(tmp_path / "ours.gguf")
    if ftype == "q4_k_m" and case in ("llama-70b", "llama-65b"):  # the 70B bump of attn_v
        assert t["blk.1.attn_v.weight"] == ("Q5_K" if case == "llama-70b" else "Q4_K")
    if case == "falcon" and ftype != "q8_0":
        assert t["output.weight"] == "Q8_0"
    if ftype in ("q3_k_s", "q3_k_l") and case in ("llama-70b", "llama-65b"):  # the 70B bump of Q3_K
        assert t["blk.1.attn_v.weight"] == ("Q5_K" if case == "llama-70b" or ftype == "q3_k_l" else "Q3_K")
    if ftype == "q3_k_l" and case == "falcon":  # falcon's Q4_K where others get Q5_K
        assert t["blk.1.attn_output.weight"] == t["blk.1.ffn_down.weight"] == "Q4_K"
    if ftype.startswith("iq4") and case == "llama-16":  # 8 queries a key; the first eighth's ffn_down
        assert t["blk.1.attn_v.weight"] == t["blk.1.ffn_down.weight"] == "Q5_K"
        assert t["blk.5.ffn_down.weight"] == ftype.upper()


# -- requantization and the options ------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("ftype", ["q4_k_m", "q2_k", "q4_0", "q6_k", "q8_0", "iq4_xs", "f16", "bf16"])
def test_requantize_q8_0_matches_llama_cpp(llama_cpp: Any, models: dict[str, Path], ftype: str,
                                           tmp_path: Path) -> None:  # fmt: skip
    src = models["q8_0"]
    assert llama_quantize(llama_cpp, src, tmp_path / "theirs.gguf", ftype, allow_requantize=True) == 0
    ours(src, tmp_path / "ours.gguf", ftype, allow_requantize=True)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")


@pytest.mark.reference
def test_requantize_needs_the_option(llama_cpp: Any, models: dict[str, Path], tmp_path: Path) -> None:
    assert llama_quantize(llama_cpp, models["q8_0"], tmp_path / "theirs.gguf", "q4_k_m") != 0
    with pytest.raises(QuantizeError, match="requantizing from type Q8_0 is disabled"):
        ours(models["q8_0"], tmp_path / "ours.gguf", "q4_k_m")
    assert not (tmp_path / "ours.gguf").exists()
    ours(models["q8_0"], tmp_path / "ours.gguf", "q8_0")  # nothing to requantize: every tensor copied
    with GGUFFile(tmp_path / "ours.gguf") as a, GGUFFile(models["q8_0"]) as b:
        assert sorted(a.tensors) == sorted(b.tensors)
        for name, t in b.tensors.items():
            assert a.tensors[name].type == t.type and np.array_equal(a.tensor(name), b.tensor(name))


OPTIONS = {  # name: (file type, llama.cpp's parameters, ours)
    "pure": ("q4_k_m", {"pure": True}, {"pure": True}),
    "pure-q2_k": ("q2_k", {"pure": True}, {"pure": True}),
    "output-q8_0": ("q4_k_m", {"output_tensor_type": "q8_0"}, {"output_tensor_type": "q8_0"}),
    "output-f16-embd-q5_k": ("q4_k_m", {"output_tensor_type": "f16", "token_embedding_type": "q5_K"},
                             {"output_tensor_type": "F16", "token_embedding_type": "q5_k"}),
    "f16-output-q4_0": ("f16", {"output_tensor_type": "q4_0"}, {"output_tensor_type": GT.Q4_0}),
    "leave-output": ("q5_k_s", {"quantize_output_tensor": False}, {"leave_output_tensor": True}),
    "tensor-types": ("q4_k_m", {"tensor_types": [("attn_q", "q8_0"), ("ffn_.*", "q5_0")]},
                     {"tensor_types": [("attn_q", "q8_0"), ("ffn_.*", "q5_0")]}),
    "override-kv": ("q3_k_m", {"override_kv": {"general.name": "renamed", "llama.block_count": 8,
                                               "x.f": 1.5, "x.b": True, "general.file_type": -3,
                                               "x.big": 1e39}},
                    {"override_kv": {"general.name": "renamed", "llama.block_count": 8, "x.f": 1.5,
                                     "x.b": True, "general.file_type": -3, "x.big": 1e39}}),  # (float: inf)
}  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("model", ["llama-f16", "llama-tied-f32"])
def test_options_match_llama_cpp(llama_cpp: Any, models: dict[str, Path], model: str, option: str,
                                 tmp_path: Path) -> None:  # fmt: skip
    ftype, theirs, mine = OPTIONS[option]
    assert llama_quantize(llama_cpp, models[model], tmp_path / "theirs.gguf", ftype, **theirs) == 0
    ours(models[model], tmp_path / "ours.gguf", ftype, **mine)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")


@pytest.mark.reference
def test_alignment_other_than_32(llama_cpp: Any, tmp_path: Path) -> None:
    """llama.cpp keeps general.alignment 64 but aligns to 32 (its output is then unreadable); ours
    aligns to 64 and is otherwise llama.cpp's output of the same file without the key."""
    names = _sparse_names(4)
    sparse_gguf(tmp_path / "a64.gguf", "llama", 4, names, alignment=64)
    sparse_gguf(tmp_path / "a32.gguf", "llama", 4, names)
    assert llama_quantize(llama_cpp, tmp_path / "a32.gguf", tmp_path / "theirs.gguf", "q4_k_m") == 0
    ours(tmp_path / "a64.gguf", tmp_path / "ours.gguf", "q4_k_m")
    with GGUFFile(tmp_path / "ours.gguf") as a, GGUFFile(tmp_path / "theirs.gguf") as b:
        assert a.alignment == 64 and all(t.offset % 64 == 0 for t in a.tensors.values())
        assert list(a.metadata) == ["general.architecture", "general.alignment"] + list(b.metadata)[1:]
        assert list(a.tensors) == list(b.tensors)
        for name, t in b.tensors.items():
            assert (a.tensors[name].type, a.tensors[name].shape) == (t.type, t.shape)
            assert np.array_equal(a.tensor(name).view(np.uint8), b.tensor(name).view(np.uint8))


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("ftype", ["q4_k_m", "iq4_xs"])  # IQ4_XS covers IQ4_NL too: its fallback
def test_real_model_requantized_matches_llama_cpp(llama_cpp: Any, smollm2_path: Path, ftype: str,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """SmolLM2-135M Q4_1 (made by llama.cpp) requantized by both. IQ4_XS: rows of 576 fall back to
    IQ4_NL, the tied embeddings' to Q8_0; ffn_down (rows of 1536) IQ4_XS, Q5_K in layers 0..2."""
    src = smollm2_path
    assert llama_quantize(llama_cpp, src, tmp_path / "theirs.gguf", ftype, allow_requantize=True) == 0
    plan = ours(src, tmp_path / "ours.gguf", ftype, allow_requantize=True)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")
    if ftype == "iq4_xs":
        t = types_of(tmp_path / "ours.gguf")
        assert plan.n_fallback > 0 and t["blk.5.attn_q.weight"] == "IQ4_NL"
        assert (t["blk.2.ffn_down.weight"], t["blk.3.ffn_down.weight"]) == ("Q5_K", "IQ4_XS")


# -- the command line -------------------------------------------------------------------------------


def test_cli_default_output_name_and_type_numbers(models: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    src.write_bytes(models["llama-f16"].read_bytes())
    assert main(["quantize", "--quiet", str(src), "q4_k_m", "2"]) == 0
    expected = (tmp_path / "ggml-model-Q4_K_M.gguf").read_bytes()
    assert main(["quantize", "--quiet", str(src), str(tmp_path / "n.gguf"), "15"]) == 0  # a number
    assert (tmp_path / "n.gguf").read_bytes() == expected
    assert main(["quantize", "--quiet", str(src), str(tmp_path / "alias.gguf"), "Q4_K", "1"]) == 0
    assert (tmp_path / "alias.gguf").read_bytes() == expected
    assert main(["quantize", "--quiet", str(src), "12"]) == 0  # llama-quantize names 12 "Q3_K"
    assert (tmp_path / "ggml-model-Q3_K.gguf").exists()
    ours(src, tmp_path / "api.gguf", "q4_k_m")
    assert (tmp_path / "api.gguf").read_bytes() == expected


def test_cli_options_reach_the_quantizer(models: dict[str, Path], tmp_path: Path) -> None:
    src = models["llama-f16"]
    (tmp_path / "types.txt").write_text("ATTN_Q=q8_0\n ffn_.*=q5_0  token_embd=q6_k\n")
    args = ["quantize", "--quiet", "--pure", "--tensor-type-file", str(tmp_path / "types.txt"),
            "--override-kv", "general.name=str:x y", "--override-kv", "a.b=float:0.25",
            "--output-tensor-type", "q8_0", str(src), str(tmp_path / "cli.gguf"), "q4_k_s"]  # fmt: skip
    assert main(args) == 0
    ours(src, tmp_path / "api.gguf", "q4_k_s", pure=True, output_tensor_type="q8_0",
         tensor_types=[("attn_q", "q8_0"), ("ffn_.*", "q5_0"), ("token_embd", "q6_k")],
         override_kv={"general.name": "x y", "a.b": 0.25})  # fmt: skip
    assert (tmp_path / "cli.gguf").read_bytes() == (tmp_path / "api.gguf").read_bytes()
    t = types_of(tmp_path / "cli.gguf")
    chosen = (t["blk.0.attn_q.weight"], t["blk.0.ffn_up.weight"], t["output.weight"])
    assert chosen == ("Q8_0", "Q5_0", "Q8_0")


def test_cli_dry_run_writes_nothing(models: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(models["llama-f16"].read_bytes())
    assert main(["quantize", "--dry-run", str(src), "q4_k_m"]) == 0
    out = capsys.readouterr().out
    assert "blk.3.ffn_down.weight" in out and "F16->Q6_K" in out and "quant size" in out
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


def _cli_error(args: list[str], capsys: Any) -> str:
    assert main(["quantize", "--quiet", *args]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{src}", "q9_9"], "missing ftype"),
        (["{src}", "{dst}", "q9_9"], "invalid ftype 'q9_9'"),
        (["{src}", "{dst}", "99"], "invalid ftype '99'"),
        (["{src}", "Q1_0"], "no Q1_0 format"),
        (["{src}", "{dst}", "Q2_K_S"], "this quantization requires an importance matrix"),
        (["{src}", "{dst}", "iq2_xs"], "gets type IQ2_XS, which needs one"),
        (["{src}", "{dst}", "24"], "gets type IQ1_S, which needs one"),
        (["{src}", "{dst}", "q4_k_m", "two"], "invalid nthread 'two'"),
        (["{src}", "{src}", "q8_0"], "input and output files are the same"),
        (["--imatrix", "x.dat", "{src}", "{dst}", "q4_k_m"], "x.dat: cannot load the importance matrix"),
        (["--include-weights", "a", "--exclude-weights", "b", "{src}", "{dst}", "q4_k_m"],
         "cannot be used together"),
        (["--prune-layers", "1,x", "{src}", "{dst}", "q4_k_m"], "invalid layer id 'x'"),
        (["--keep-split", "{src}", "q4_k_m"], "--keep-split is not supported"),
        (["--output-tensor-type", "iq2_xs", "{src}", "{dst}", "q4_k_m"], "cannot quantize to IQ2_XS"),
        (["--output-tensor-type", "q7", "{src}", "{dst}", "q4_k_m"], "invalid ggml_type 'q7'"),
        (["--override-kv", "a=int:x", "{src}", "{dst}", "q4_k_m"], "not a valid int"),
        (["--tensor-type", "attn_q", "{src}", "{dst}", "q4_k_m"], "malformed"),
        (["{q8}", "{dst}", "q4_k_m"], "requantizing from type Q8_0 is disabled"),
        (["{dir}", "{dst}", "q4_k_m"], "not a regular file"),
        (["{src}", "{dir}", "q4_k_m"], "is a directory"),
    ],
)
def test_cli_errors(models: dict[str, Path], tmp_path: Path, capsys: Any, args: list[str],
                    message: str) -> None:  # fmt: skip
    fill = {"src": str(models["llama-f16"]), "dst": str(tmp_path / "out.gguf"), "q8": str(models["q8_0"]),
            "dir": str(tmp_path)}  # fmt: skip
    err = _cli_error([a.format(**fill) for a in args], capsys)
    assert message in err, err
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.reference
@pytest.mark.parametrize("name", NEEDS_IMATRIX)
def test_imatrix_types_are_refused_as_llama_cpp(llama_cpp: Any, models: dict[str, Path], name: str,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """llama.cpp refuses these without an importance matrix; so do we, naming a tensor."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = next(n for t, n, _ in QUANT_OPTIONS if t == name), 2
    src = models["llama-f16"]
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(tmp_path / "theirs.gguf").encode(), p) != 0
    with pytest.raises(QuantizeError, match="this quantization requires an importance matrix"):
        ours(src, tmp_path / "ours.gguf", name)
    assert not (tmp_path / "ours.gguf").exists()


def test_truncated_input(models: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    data = models["llama-f16"].read_bytes()
    for n in (20, 3000, len(data) - 100):
        bad = tmp_path / f"cut{n}.gguf"
        bad.write_bytes(data[:n])
        with pytest.raises(GGUFError, match=re.escape(str(bad))):
            ours(bad, tmp_path / "out.gguf", "q4_0")
        assert str(bad) in _cli_error([str(bad), str(tmp_path / "out.gguf"), "q4_0"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cut")) == []


@pytest.mark.reference
@pytest.mark.parametrize(
    ("where", "value", "ftype", "message"),
    [
        ("blk.1.ffn_down.weight", np.nan, "q4_k_m", "has invalid data"),  # quantized
        ("blk.0.attn_norm.weight", np.inf, "q4_k_m", "has invalid data"),  # copied
        ("blk.1.ffn_up.weight", 1e6, "f16", "quantized data validation failed"),  # F16 overflows
    ],
)
def test_bad_values_are_refused(llama_cpp: Any, tmp_path: Path, where: str, value: float, ftype: str,
                                message: str) -> None:  # fmt: skip
    model = make_weights(TinyConfig(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2))
    model.weights[where].flat[77] = value
    src = tmp_path / "in.gguf"
    write_gguf(model, src, weight_type="F32")
    assert llama_quantize(llama_cpp, src, tmp_path / "theirs.gguf", ftype) != 0
    with pytest.raises(QuantizeError, match=message) as e:
        ours(src, tmp_path / "ours.gguf", ftype)
    assert where in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "theirs.gguf"]  # no partial output


@pytest.mark.reference
@pytest.mark.parametrize("ftype", ["q4_k_m", "iq4_xs"])
def test_split_input_matches_llama_cpp(llama_cpp: Any, models: dict[str, Path], ftype: str,
                                       tmp_path: Path) -> None:  # fmt: skip
    """A split input (read from its first part) gives one output file, llama.cpp's bytes, with
    the split keys removed (as llama-quantize without --keep-split)."""
    parts = write_split(models["llama-f16"], tmp_path / "in", 3)
    assert llama_quantize(llama_cpp, parts[0], tmp_path / "theirs.gguf", ftype) == 0
    ours(parts[0], tmp_path / "ours.gguf", ftype)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")
    with GGUFFile(tmp_path / "ours.gguf") as f:
        assert not any(k.startswith("split.") for k in f.metadata)
    whole = _whole(llama_cpp, models["llama-f16"], tmp_path, ftype)
    assert types_of(tmp_path / "ours.gguf") == types_of(whole)


def _whole(llama_cpp: Any, src: Path, tmp_path: Path, ftype: str) -> Path:
    out = tmp_path / "whole.gguf"
    assert llama_quantize(llama_cpp, src, out, ftype) == 0
    return out


def test_parse_override_kv() -> None:
    assert parse_override_kv("a.b=int:-3") == ("a.b", -3)
    assert parse_override_kv("a=float:1e-3") == ("a", 1e-3)
    assert parse_override_kv("a=bool:false") == ("a", False)
    assert parse_override_kv("a=str:x=y:z") == ("a", "x=y:z")
    for bad in ("a", "=int:1", "a=bool:yes", "a=long:1", "a=str:" + "x" * 128, "k" * 128 + "=int:1"):
        with pytest.raises(ValueError):
            parse_override_kv(bad)
