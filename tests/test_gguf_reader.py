"""GGUF reader: files from gguf-py's GGUFWriter read back equal, the SmolLM2 file matches
gguf-py's GGUFReader, and every corrupt file raises GGUFError naming the file and the problem."""

from __future__ import annotations

import gc
import os
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import gguf_craft as c
import numpy as np
import pytest
import splitllm
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from proc_memory import mapped_rss_kb
from splitllm import GGUFError, GGUFFile

# ---------------------------------------------------------------------------------------------
# Files written by gguf.GGUFWriter


# key -> (value, GGUF value type, element type for arrays)
WRITER_KVS: dict[str, tuple[object, VT, VT | None]] = {
    "t.u8": (255, VT.UINT8, None),
    "t.i8": (-128, VT.INT8, None),
    "t.u16": (65535, VT.UINT16, None),
    "t.i16": (-32768, VT.INT16, None),
    "t.u32": (4294967295, VT.UINT32, None),
    "t.i32": (-2147483648, VT.INT32, None),
    "t.f32": (0.1, VT.FLOAT32, None),
    "t.u64": (2**64 - 1, VT.UINT64, None),
    "t.i64": (-(2**63), VT.INT64, None),
    "t.f64": (-1.5e300, VT.FLOAT64, None),
    "t.bool_true": (True, VT.BOOL, None),
    "t.bool_false": (False, VT.BOOL, None),
    "t.str": ("héllo, wörld ✓ \U0001f600", VT.STRING, None),
    "t.arr_u8": ([0, 1, 255], VT.ARRAY, VT.UINT8),
    "t.arr_i8": ([-1, 2], VT.ARRAY, VT.INT8),
    "t.arr_u16": ([1, 65535], VT.ARRAY, VT.UINT16),
    "t.arr_i16": ([-300, 300], VT.ARRAY, VT.INT16),
    "t.arr_u32": ([7, 4294967295], VT.ARRAY, VT.UINT32),
    "t.arr_i32": ([-7, 2147483647], VT.ARRAY, VT.INT32),
    "t.arr_f32": ([0.5, -0.1, 3.0e38], VT.ARRAY, VT.FLOAT32),
    "t.arr_u64": ([2**64 - 1, 0], VT.ARRAY, VT.UINT64),
    "t.arr_i64": ([-(2**63), 5], VT.ARRAY, VT.INT64),
    "t.arr_f64": ([1e-300, 2.5], VT.ARRAY, VT.FLOAT64),
    "t.arr_bool": ([True, False, True], VT.ARRAY, VT.BOOL),
    "t.arr_str": (["a", "", "ünï"], VT.ARRAY, VT.STRING),
    "t.arr_arr": ([[1, 2, 3], [4]], VT.ARRAY, None),
    "t.arr_arr_str": ([["x", "y"], ["z"]], VT.ARRAY, None),
}


def _expected(value: object, vtype: VT, sub: VT | None) -> object:
    """The value as a reader should return it: FLOAT32 values rounded to float32."""
    if vtype == VT.FLOAT32:
        return float(np.float32(value))
    if vtype == VT.ARRAY and sub == VT.FLOAT32:
        return [float(np.float32(v)) for v in value]  # type: ignore[attr-defined]
    return value


def _rng_tensors() -> dict[str, tuple[np.ndarray, QT | None]]:
    """Tensors to write: plain arrays (type from dtype) and raw bytes for BF16 and quants."""
    rng = np.random.default_rng(7)
    q8 = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), QT.Q8_0)
    bf16 = rng.integers(0, 256, size=(2, 10), dtype=np.uint8)  # 2 rows of 5 bf16 values
    q4k = rng.integers(0, 256, size=(2, 2, 144), dtype=np.uint8)  # Q4_K: 144 bytes per 256
    q6k = rng.integers(0, 256, size=(1, 210), dtype=np.uint8)
    return {
        "f32": (rng.standard_normal((3, 4)).astype(np.float32), None),
        "f32_4d": (rng.standard_normal((2, 3, 1, 5)).astype(np.float32), None),
        "f16": (rng.standard_normal(7).astype(np.float16), None),
        "f64": (rng.standard_normal((2, 2)), None),
        "i8": (np.arange(-5, 5, dtype=np.int8), None),
        "i16": (np.arange(6, dtype=np.int16).reshape(2, 3), None),
        "i32": (np.arange(8, dtype=np.int32).reshape(2, 2, 2), None),
        "i64": (np.array([-(2**63), 2**63 - 1], dtype=np.int64), None),
        "bf16": (bf16, QT.BF16),
        "q8_0": (q8, QT.Q8_0),
        "q4_k": (q4k, QT.Q4_K),
        "q6_k": (q6k, QT.Q6_K),
    }


def _write(path: Path, *, alignment: int | None = None) -> dict[str, tuple[np.ndarray, QT | None]]:
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (value, vtype, sub) in WRITER_KVS.items():
        w.add_key_value(key, value, vtype, sub_type=sub)
    tensors = _rng_tensors()
    for name, (arr, raw) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, QT | None]]]:
    path = tmp_path_factory.mktemp("gguf") / "written.gguf"
    return path, _write(path)


def test_writer_metadata_reads_back(written) -> None:
    path, _ = written
    with GGUFFile(path) as f:
        assert f.version == 3
        assert f.metadata["general.architecture"] == "llama"
        for key, (value, vtype, sub) in WRITER_KVS.items():
            got = f.metadata[key]
            assert got == _expected(value, vtype, sub), key
            assert type(got) is type(value), key
        assert list(f.metadata) == ["general.architecture", *WRITER_KVS]


def test_writer_tensors_read_back(written) -> None:
    path, tensors = written
    with GGUFFile(path) as f:
        assert list(f.tensors) == list(tensors)
        for name, (arr, raw) in tensors.items():
            info = f.tensors[name]
            view = f.tensor(name)
            assert info.type == (
                raw.name
                if raw is not None
                else {
                    np.float32: "F32",
                    np.float16: "F16",
                    np.float64: "F64",
                    np.int8: "I8",
                    np.int16: "I16",
                    np.int32: "I32",
                    np.int64: "I64",
                }[arr.dtype.type]
            ), name
            assert view.dtype == arr.dtype, name
            assert view.shape == arr.shape, name
            assert np.array_equal(view, arr), name
            assert info.nbytes == arr.nbytes, name
            assert info.offset % f.alignment == 0
        assert f.tensors["q4_k"].shape == (2, 2, 256)  # 144 bytes per block of 256
        assert f.tensors["bf16"].shape == (2, 5)
        assert f.tensors["f32_4d"].shape == (2, 3, 1, 5)


def test_writer_file_matches_gguf_reader(written) -> None:
    path, _ = written
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.data_offset == ref.data_offset
        assert f.alignment == ref.alignment
        _assert_same_tensors(f, ref)
        for key, field in ref.fields.items():
            if key.startswith("GGUF.") or key.startswith("t.arr_arr"):  # gguf-py flattens nested arrays
                continue
            assert f.metadata[key] == field.contents(), key


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_custom_alignment(tmp_path: Path, alignment: int) -> None:
    path = tmp_path / "aligned.gguf"
    tensors = _write(path, alignment=alignment)
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.alignment == alignment
        assert f.data_offset % alignment == 0
        assert f.data_offset == ref.data_offset
        for name, (arr, _) in tensors.items():
            assert f.tensors[name].offset % alignment == 0
            assert np.array_equal(f.tensor(name), arr)


def test_version_2_reads_like_version_3(written, tmp_path: Path) -> None:
    path, tensors = written
    raw = bytearray(path.read_bytes())
    raw[4:8] = c.u32(2)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(raw))
    with GGUFFile(v2) as f2, GGUFFile(path) as f3:
        assert (f2.version, f3.version) == (2, 3)
        assert f2.metadata == f3.metadata
        assert f2.tensors == {k: v for k, v in f3.tensors.items()}
        assert np.array_equal(f2.tensor("q8_0"), tensors["q8_0"][0])


def _assert_same_tensors(f: GGUFFile, ref: gguf.GGUFReader) -> None:
    assert [t.name for t in ref.tensors] == list(f.tensors)
    for t in ref.tensors:
        info = f.tensors[t.name]
        assert info.type == t.tensor_type.name, t.name
        assert info.shape == tuple(reversed(t.shape.tolist())), t.name
        assert info.offset == t.data_offset, t.name
        assert info.nbytes == t.n_bytes, t.name
        view = f.tensor(t.name)
        assert view.dtype == t.data.dtype, t.name
        assert view.shape == t.data.shape, t.name
        assert view.tobytes() == t.data.tobytes(), t.name


# ---------------------------------------------------------------------------------------------
# Hand-built valid files: what GGUFWriter cannot write


def _write_bytes(tmp_path: Path, data: bytes, name: str = "case.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_crafted_base_file_is_valid(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, c.base_file().build())
    ref = gguf.GGUFReader(path)  # the builder itself agrees with gguf-py
    with GGUFFile(path) as f:
        assert f.metadata == {
            "general.architecture": "llama",
            "general.alignment": 32,
            "tokenizer.ggml.tokens": ["a", "bc"],
            "nested": [[1], []],
        }
        _assert_same_tensors(f, ref)
        assert f.tensor("a.weight").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_empty_and_scalar_tensors_and_empty_array(tmp_path: Path) -> None:
    g = c.Gguf(
        kvs=[c.kv("empty", c.ARRAY, c.array(c.FLOAT32, []))],
        infos=[
            c.tensor_info("empty", [0, 4], c.F32, 0),
            c.tensor_info("scalar", [], c.F32, 0),
            c.tensor_info("zero_rows", [32, 0], c.Q8_0, 32),
        ],
        data=struct.pack("<f", 2.5) + bytes(28),
    )
    path = _write_bytes(tmp_path, g.build())
    with GGUFFile(path) as f:
        assert f.metadata == {"empty": []}
        assert f.tensor("empty").shape == (4, 0)
        assert f.tensor("scalar").shape == ()
        assert float(f.tensor("scalar")) == 2.5
        assert f.tensor("zero_rows").shape == (0, 34)
        assert f.tensors["zero_rows"].nbytes == 0


def test_arrays_nested_eight_deep_are_accepted(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, c.Gguf(kvs=[_nested(8)]).build())
    with GGUFFile(path) as f:
        value = f.metadata["deep"]
        for _ in range(7):
            assert isinstance(value, list) and len(value) == 1
            value = value[0]
        assert value == []


def test_strings_keep_invalid_utf8_bytes(tmp_path: Path) -> None:
    raw = b"ok \xff\xfe \xed\xa0\x80 end"
    g = c.Gguf(
        kvs=[c.kv_str("bytes", raw), c.kv(b"key\xff", c.ARRAY, c.array(c.STRING, [c.gstr(raw)]))],
        infos=[c.tensor_info(b"t\xff", [1], c.F32, 0)],
        data=bytes(4),
    )
    path = _write_bytes(tmp_path, g.build())
    with GGUFFile(path) as f:
        assert f.metadata["bytes"].encode("utf-8", "surrogateescape") == raw
        assert f.metadata["key\udcff"][0].encode("utf-8", "surrogateescape") == raw
        assert f.tensor("t\udcff").shape == (1,)


# ---------------------------------------------------------------------------------------------
# Views, lifetime, API details


def test_views_do_not_copy_and_are_read_only(written) -> None:
    path, tensors = written
    f = GGUFFile(path)
    a = f.tensor("f32")
    b = f.tensor("f32")
    assert np.shares_memory(a, b)
    assert not a.flags.owndata
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    q = f.tensor("q8_0")
    assert q.dtype == np.uint8 and not q.flags.owndata
    f.close()
    assert f.closed
    del f
    gc.collect()
    # The arrays keep the mapping alive after the file object is closed and collected.
    assert np.array_equal(a, tensors["f32"][0])
    assert np.array_equal(q, tensors["q8_0"][0])


def test_closed_file(written) -> None:
    path, _ = written
    with GGUFFile(path) as f:
        pass
    assert f.closed
    assert f.metadata["t.u8"] == 255  # metadata and infos stay after close
    assert "f32" in f.tensors
    with pytest.raises(ValueError, match="closed"):
        f.tensor("f32")


def test_unknown_tensor_name(written) -> None:
    path, _ = written
    with GGUFFile(path) as f, pytest.raises(KeyError, match="nope"):
        f.tensor("nope")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFFile(tmp_path)
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GGUFError, match="not a regular file"):  # and does not wait for a writer
        GGUFFile(fifo)


def test_non_ascii_path_in_message(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, b"GGML" + bytes(40), name="modèle ✓.gguf")
    with pytest.raises(GGUFError) as e:
        GGUFFile(path)
    assert str(path) in str(e.value)


def test_typed_getters(written) -> None:
    path, _ = written
    core = splitllm._core.GGUFFile(str(path).encode())
    assert core.get_int("t.u32") == 4294967295
    assert core.get_int("t.i64") == -(2**63)
    assert core.get_float("t.f32") == float(np.float32(0.1))
    assert core.get_float("t.i8") == -128.0
    assert core.get_str("general.architecture") == "llama"
    assert core.get_bool("t.bool_true", False) is True
    assert core.get_bool("missing", True) is True
    cases = [
        (lambda: core.get_int("t.u64"), "'t.u64' value 18446744073709551615 does not fit"),
        (lambda: core.get_int("t.str"), "'t.str' holds a STRING, not an integer"),
        (lambda: core.get_int("absent"), "'absent' is missing"),
        (lambda: core.get_float("t.arr_f32"), "'t.arr_f32' holds a ARRAY, not a number"),
        (lambda: core.get_str("t.u8"), "'t.u8' holds a UINT8, not a STRING"),
        (lambda: core.get_bool("t.u8", False), "'t.u8' holds a UINT8, not a BOOL"),
    ]
    for call, message in cases:
        with pytest.raises(GGUFError) as e:
            call()
        assert str(path) in str(e.value) and message in str(e.value)


# ---------------------------------------------------------------------------------------------
# The real model


def test_smollm2_matches_gguf_reader(smollm2_path: Path) -> None:
    ref = gguf.GGUFReader(smollm2_path)
    with GGUFFile(smollm2_path) as f:
        assert len(f.tensors) == 272
        assert f.metadata["general.architecture"] == "llama"
        assert f.metadata["llama.block_count"] == 30
        assert f.metadata["tokenizer.ggml.pre"] == "smollm"
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        fields = {k: v.contents() for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(f.metadata) == list(fields)
        for key, value in fields.items():
            assert f.metadata[key] == value, key
        assert f.data_offset == ref.data_offset
        _assert_same_tensors(f, ref)


def test_advise_dontneed_releases_pages(smollm2_path: Path) -> None:
    core = splitllm._core.GGUFFile(str(smollm2_path).encode())
    view = core.tensor("token_embd.weight")  # 30 MB
    expected = view.tobytes()  # faults every page in
    before = mapped_rss_kb(smollm2_path)
    core.advise_dontneed("token_embd.weight")
    after = mapped_rss_kb(smollm2_path)
    assert before - after > 25_000, (before, after)
    assert view.tobytes() == expected  # read back from the file


# ---------------------------------------------------------------------------------------------
# Corrupt files: each must raise GGUFError naming the file and the problem


def _base_with(**changes: object) -> bytes:
    g = c.base_file()
    for k, v in changes.items():
        setattr(g, k, v)
    return g.build()


def _one_kv(item: bytes) -> bytes:
    return c.Gguf(kvs=[item]).build()


def _one_tensor(info: bytes, data: bytes = bytes(64), kvs: list[bytes] | None = None) -> bytes:
    return c.Gguf(kvs=kvs or [], infos=[info], data=data).build()


def _nested(depth: int) -> bytes:
    body = c.array(c.UINT8, [])
    for _ in range(depth - 1):
        body = c.array(c.ARRAY, [body])
    return c.kv("deep", c.ARRAY, body)


def _truncated(boundary: str, delta: int = 0) -> Callable[[], bytes]:
    def make() -> bytes:
        g = c.base_file()
        data = g.build()
        return data[: g.boundaries[boundary] + delta]

    return make


BIG = 2**63
CORRUPT: dict[str, tuple[Callable[[], bytes], str]] = {
    # Truncated at each section boundary (and inside a few fields).
    "trunc_empty": (lambda: b"", "empty"),
    "trunc_in_magic": (lambda: b"GG", "ends inside the magic"),
    "trunc_after_magic": (_truncated("magic"), "ends inside the version"),
    "trunc_after_version": (_truncated("version"), "ends inside the tensor count"),
    "trunc_after_tensor_count": (_truncated("tensor_count"), "ends inside the metadata count"),
    "trunc_after_kv_count": (_truncated("kv_count"), "tensor count 2 cannot fit"),
    "trunc_in_first_key": (_truncated("kv_count", 12), "header: tensor count 2 cannot fit in the 12 bytes"),
    "trunc_after_kv0": (_truncated("kv0"), "header: tensor count 2 cannot fit in the 45 bytes"),
    "trunc_after_kv1": (_truncated("kv1"), "header: metadata count 4 cannot fit in the 78 bytes"),
    "trunc_in_string_array": (
        _truncated("kv2", -3),
        "'tokenizer.ggml.tokens': the file ends inside a string",
    ),
    "trunc_after_kv2": (_truncated("kv2"), "metadata entry 3"),
    "trunc_in_nested_array": (_truncated("kv3", -2), "'nested': the file ends inside an array's length"),
    "trunc_after_kv3": (_truncated("kv3"), "tensor info 0: the file ends inside a tensor name"),
    "trunc_in_tensor_info": (
        _truncated("info0", -3),
        "tensor 'a.weight': the file ends inside the tensor offset",
    ),
    "trunc_after_info0": (_truncated("info0"), "tensor info 1: the file ends inside a tensor name"),
    "trunc_after_info1": (_truncated("info1"), "tensor 'a.weight': 32 bytes at offset 0 of the data section"),
    "trunc_at_data": (_truncated("data"), "tensor 'a.weight': 32 bytes at offset 0"),
    "trunc_in_data": (_truncated("data", 40), "tensor 'b.weight': 68 bytes at offset 32"),
    "trunc_last_byte": (lambda: c.base_file().build()[:-1], "tensor 'b.weight': 68 bytes at offset 32"),
    # Header.
    "bad_magic": (lambda: _base_with(magic=b"GGML"), "bad magic 47 47 4d 4c"),
    "version_1": (lambda: _base_with(version=1), "version 1 is not supported"),
    "version_0": (lambda: _base_with(version=0), "unsupported GGUF version 0"),
    "version_4": (lambda: _base_with(version=4), "unsupported GGUF version 4"),
    "version_big_endian": (lambda: _base_with(version=0x03000000), "big-endian"),
    "huge_tensor_count": (
        lambda: _base_with(n_tensors=2**64 - 1),
        "tensor count 18446744073709551615 cannot fit",
    ),
    "huge_kv_count": (lambda: _base_with(n_kv=BIG), "metadata count 9223372036854775808 cannot fit"),
    "kv_count_one_too_many": (
        lambda: _base_with(n_kv=5),
        "tensor info 0: a tensor name of 562949953421312 bytes",
    ),
    # Metadata.
    "key_longer_than_file": (
        lambda: c.Gguf(kvs=[c.u64(10**6) + b"k"]).build(),
        "a metadata key of 1000000 bytes",
    ),
    "key_length_max": (lambda: c.Gguf(kvs=[c.u64(2**64 - 1) + bytes(8)]).build(), "is longer than the limit"),
    "key_over_limit": (lambda: _one_kv(c.kv_scalar("k" * 70000, c.UINT8, 1)), "of 70000 bytes is longer"),
    "string_longer_than_file": (
        lambda: _one_kv(c.kv("s", c.STRING, c.u64(4096) + b"abc")),
        "'s': a string value of 4096 bytes",
    ),
    "string_length_max": (
        lambda: _one_kv(c.kv("s", c.STRING, c.u64(2**64 - 1))),
        "18446744073709551615 bytes",
    ),
    "unknown_value_type": (lambda: _one_kv(c.kv("k", 13, bytes(8))), "'k': unknown value type 13"),
    "unknown_value_type_max": (
        lambda: _one_kv(c.kv("k", 2**32 - 1, bytes(8))),
        "unknown value type 4294967295",
    ),
    "unknown_array_type": (
        lambda: _one_kv(c.kv("a", c.ARRAY, c.array(13, [bytes(8)]))),
        "unknown array element type 13",
    ),
    "array_length_huge": (
        lambda: _one_kv(c.kv("a", c.ARRAY, c.u32(c.UINT8) + c.u64(2**62))),
        "array of 4611686018427387904 UINT8 values",
    ),
    "array_past_end": (
        lambda: _one_kv(c.kv("a", c.ARRAY, c.u32(c.UINT32) + c.u64(100) + bytes(16))),
        "array of 100 UINT32 values",
    ),
    "array_of_strings_past_end": (
        lambda: _one_kv(c.kv("a", c.ARRAY, c.u32(c.STRING) + c.u64(10**6))),
        "array of 1000000 STRING values",
    ),
    "arrays_too_deep": (lambda: _one_kv(_nested(9)), "nested more than 8 deep"),
    "array_elements_over_limit": (
        lambda: _one_kv(c.kv("a", c.ARRAY, c.u32(c.UINT8) + c.u64(2**22 + 1) + bytes(2**22 + 1))),
        "more than 4194304 elements",
    ),
    "bool_not_0_or_1": (lambda: _one_kv(c.kv("b", c.BOOL, b"\x02")), "BOOL byte 2"),
    "duplicate_key": (
        lambda: c.Gguf(kvs=[c.kv_scalar("k", c.UINT8, 1), c.kv_scalar("k", c.UINT8, 2)]).build(),
        "'k': the key appears twice",
    ),
    "alignment_zero": (
        lambda: _one_kv(c.kv_scalar("general.alignment", c.UINT32, 0)),
        "0 is not a power of two",
    ),
    "alignment_not_power_of_2": (
        lambda: _one_kv(c.kv_scalar("general.alignment", c.UINT32, 48)),
        "48 is not a power of two",
    ),
    "alignment_wrong_type": (
        lambda: _one_kv(c.kv_scalar("general.alignment", c.UINT64, 32)),
        "'general.alignment': has type UINT64",
    ),
    "alignment_past_end": (
        lambda: _one_tensor(
            c.tensor_info("t", [4], c.F32, 0), kvs=[c.kv_scalar("general.alignment", c.UINT32, 2**31)]
        ),
        "data section (which starts at 2147483648)",
    ),
    # Tensor infos.
    "tensor_name_longer_than_file": (
        lambda: c.Gguf(infos=[c.u64(10**9) + bytes(24)]).build(),
        "a tensor name of 1000000000 bytes",
    ),
    "tensor_name_over_limit": (
        lambda: _one_tensor(c.tensor_info("t" * 70000, [4], c.F32, 0)),
        "limit of 65535",
    ),
    "five_dims": (lambda: _one_tensor(c.tensor_info("t", [1, 1, 1, 1, 1], c.F32, 0)), "'t': 5 dimensions"),
    "n_dims_max": (
        lambda: _one_tensor(c.tensor_info("t", [1], c.F32, 0, n_dims=2**32 - 1)),
        "4294967295 dimensions",
    ),
    "negative_dim": (
        lambda: _one_tensor(c.tensor_info("t", [4, BIG], c.F32, 0)),
        "dimension 1 is 9223372036854775808",
    ),
    "dim_minus_one": (
        lambda: _one_tensor(c.tensor_info("t", [2**64 - 1], c.F32, 0)),
        "dimension 0 is 18446744073709551615",
    ),
    "unknown_tensor_type": (
        lambda: _one_tensor(c.tensor_info("t", [32], 4, 0)),
        "'t': unknown tensor type 4",
    ),
    "unknown_tensor_type_big": (
        lambda: _one_tensor(c.tensor_info("t", [32], 1000, 0)),
        "unknown tensor type 1000",
    ),
    "dims_product_overflow": (
        lambda: _one_tensor(c.tensor_info("t", [2**32, 2**32], c.F32, 0)),
        "element count of dimensions [4294967296, 4294967296] overflows",
    ),
    "dims_product_overflow_with_zero": (
        lambda: _one_tensor(c.tensor_info("t", [0, 2**40, 2**40], c.F32, 0)),
        "overflows 64 bits",
    ),
    "nbytes_overflow": (
        lambda: _one_tensor(c.tensor_info("t", [2**62], c.F32, 0)),
        "byte size of [4611686018427387904]",
    ),
    "empty_tensor_stride_overflow": (  # found by the fuzzer: numpy strides of shape (0, 2**61)
        lambda: _one_tensor(c.tensor_info("t", [2**61, 0], c.F32, 0)),
        "byte size of [2305843009213693952, 0] F32 values overflows 64 bits",
    ),
    "row_not_multiple_of_block": (
        lambda: _one_tensor(c.tensor_info("t", [31, 2], c.Q8_0, 0)),
        "row length 31 is not a multiple of the Q8_0 block size 32",
    ),
    "offset_misaligned": (
        lambda: _one_tensor(c.tensor_info("t", [4], c.F32, 8)),
        "'t': offset 8 is not a multiple of the alignment 32",
    ),
    "offset_outside_data": (lambda: _one_tensor(c.tensor_info("t", [4], c.F32, 2**20)), "offset 1048576"),
    "offset_wraps_around": (
        lambda: _one_tensor(c.tensor_info("t", [4], c.F32, 2**64 - 32)),
        "offset 18446744073709551584",
    ),
    "tensor_runs_past_end": (
        lambda: _one_tensor(c.tensor_info("t", [32], c.F32, 0)),
        "128 bytes at offset 0",
    ),
    "duplicate_tensor_name": (
        lambda: _base_with(infos=[c.tensor_info("a", [4], c.F32, 0), c.tensor_info("a", [4], c.F32, 32)]),
        "tensor 'a': the name appears twice",
    ),
    "tensors_overlap_same_offset": (
        lambda: _base_with(infos=[c.tensor_info("a", [4], c.F32, 0), c.tensor_info("b", [4], c.F32, 0)]),
        "tensors 'a' (bytes 0..16 of the data section) and 'b' (bytes 0..16) overlap",
    ),
    "tensors_overlap_partly": (
        lambda: _base_with(infos=[c.tensor_info("a", [16], c.F32, 0), c.tensor_info("b", [32], c.Q8_0, 32)]),
        "tensors 'a' (bytes 0..64 of the data section) and 'b'",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_file_raises(tmp_path: Path, case: str) -> None:
    make, message = CORRUPT[case]
    path = _write_bytes(tmp_path, make())
    with pytest.raises(GGUFError) as e:
        GGUFFile(path)
    text = str(e.value)
    assert text.startswith(f"{path}: "), text
    assert message in text, text
    assert isinstance(e.value, ValueError)


def test_corrupt_case_count() -> None:
    assert len(CORRUPT) >= 30


def test_control_characters_escaped_in_message(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, _one_tensor(c.tensor_info(b"bad\n\xff", [4], c.F32, 8)))
    with pytest.raises(GGUFError, match=r"tensor 'bad\\x0a\\xff': offset 8"):
        GGUFFile(path)
