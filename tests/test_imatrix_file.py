"""splitllm.imatrix's files against llama.cpp's layouts: GGUF written by ggml's own gguf writer
(through ctypes) and by gguf-py's GGUFWriter, .dat files packed by hand after llama-imatrix's
save_imatrix_legacy, and the arithmetic of llama-quantize's load_imatrix in float64."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from splitllm.imatrix import Imatrix, ImatrixEntry, ImatrixError, combine, statistics


def _sample(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Dense entries (one matrix) and a MoE entry of 4 experts, one never routed to."""
    out = {}
    for name, k in [("blk.0.attn_q.weight", 64), ("blk.0.ffn_down.weight", 96), ("blk.1.attn_q.weight", 64)]:
        out[name] = (rng.random((1, k), dtype=np.float32) * 100, np.array([512], dtype=np.int64))
    sums = rng.random((4, 32), dtype=np.float32) * 50
    sums[2] = 0
    out["blk.0.ffn_up_exps.weight"] = (sums, np.array([300, 700, 0, 49], dtype=np.int64))
    return out


def _imatrix(rng: np.random.Generator) -> Imatrix:
    ent = {n: ImatrixEntry(s.copy(), c.copy()) for n, (s, c) in _sample(rng).items()}
    return Imatrix(ent, datasets=["a.txt", "b.txt"], chunk_count=1, chunk_size=512)


def _expected_weights(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    # quantize.cpp: sum / count per matrix, 1 where the count is 0 (float64 quotient rounded to
    # float32 is the float32 quotient: 53 >= 2 * 24 + 2)
    w = np.ones(sums.shape, dtype=np.float32)
    for j, c in enumerate(counts):
        if c > 0:
            w[j] = (sums[j].astype(np.float64) / float(c)).astype(np.float32)
    return w


def test_gguf_round_trip_and_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    m = _imatrix(rng)
    p = tmp_path / "im.gguf"
    m.save(p)
    r = Imatrix.load(p)
    assert not r.legacy and r.has_metadata
    assert (r.datasets, r.chunk_count, r.chunk_size) == (["a.txt", "b.txt"], 1, 512)
    for name, (sums, counts) in _sample(np.random.default_rng(1)).items():
        np.testing.assert_array_equal(r.entries[name].sums, sums)
        np.testing.assert_array_equal(r.entries[name].counts, counts)
        np.testing.assert_array_equal(r.weights(name), _expected_weights(sums, counts))
    assert r.weights("blk.0.ffn_up_exps.weight")[2].tolist() == [1.0] * 32


def _ggml_lib() -> ctypes.CDLL:
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [
            ("mem_size", ctypes.c_size_t),
            ("mem_buffer", ctypes.c_void_p),
            ("no_alloc", ctypes.c_bool),
        ]

    lib.ggml_init.argtypes, lib.ggml_init.restype = [InitParams], ctypes.c_void_p
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_new_tensor_2d.restype = ctypes.c_void_p
    lib.ggml_set_name.argtypes, lib.ggml_set_name.restype = (
        [ctypes.c_void_p, ctypes.c_char_p],
        ctypes.c_void_p,
    )
    lib.ggml_get_data_f32.argtypes, lib.ggml_get_data_f32.restype = (
        [ctypes.c_void_p],
        ctypes.POINTER(ctypes.c_float),
    )
    lib.gguf_init_empty.restype = ctypes.c_void_p
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.gguf_set_val_str.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.gguf_set_val_u32.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    lib.gguf_set_arr_str.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_size_t,
    ]
    lib.gguf_add_tensor.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.gguf_write_to_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_bool]
    lib.gguf_write_to_file.restype = ctypes.c_bool
    lib.InitParams = InitParams
    return lib


def _ggml_write(path: Path, m: Imatrix) -> None:
    """llama-imatrix's save_imatrix, step by step, with ggml's own gguf writer."""
    lib = _ggml_lib()
    ctx = lib.ggml_init(lib.InitParams(1 << 22, None, False))
    g = lib.gguf_init_empty()
    try:
        lib.gguf_set_val_str(g, b"general.type", b"imatrix")
        arr = (ctypes.c_char_p * len(m.datasets))(*[d.encode() for d in m.datasets])
        lib.gguf_set_arr_str(g, b"imatrix.datasets", arr, len(m.datasets))
        lib.gguf_set_val_u32(g, b"imatrix.chunk_count", m.chunk_count)
        lib.gguf_set_val_u32(g, b"imatrix.chunk_size", m.chunk_size)
        for name in sorted(m.entries):
            e = m.entries[name]
            n_mat = e.counts.size
            for suffix, ne0, values in [(".in_sum2", e.sums.size // n_mat, e.sums), (".counts", 1, e.counts)]:
                t = lib.ggml_new_tensor_2d(ctx, 0, ne0, n_mat)  # GGML_TYPE_F32
                lib.ggml_set_name(t, (name + suffix).encode())
                flat = np.asarray(values, dtype=np.float32).reshape(-1)
                ctypes.memmove(lib.ggml_get_data_f32(t), flat.ctypes.data, flat.nbytes)
                lib.gguf_add_tensor(g, t)
        assert lib.gguf_write_to_file(g, os.fsencode(path), False)
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)


def test_gguf_bytes_match_ggml_writer(tmp_path: Path) -> None:
    m = _imatrix(np.random.default_rng(2))
    _ggml_write(tmp_path / "ref.gguf", m)
    m.save(tmp_path / "ours.gguf")
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    r = Imatrix.load(tmp_path / "ref.gguf")
    assert sorted(r.entries) == sorted(m.entries)


def test_gguf_from_gguf_py_writer(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(3)
    sample = _sample(rng)
    p = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(os.fspath(p), arch="llama")  # (adds general.architecture: ignored)
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["calib.txt"])
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 256)
    for name, (sums, counts) in sample.items():
        w.add_tensor(name + ".in_sum2", sums)  # numpy (n_mat, n_per_row): ggml [n_per_row, n_mat]
        w.add_tensor(name + ".counts", counts.astype(np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = Imatrix.load(p)
    assert (r.datasets, r.chunk_count, r.chunk_size) == (["calib.txt"], 3, 256)
    for name, (sums, counts) in sample.items():
        np.testing.assert_array_equal(r.entries[name].sums, sums)
        np.testing.assert_array_equal(r.entries[name].counts, counts)
        np.testing.assert_array_equal(r.weights(name), _expected_weights(sums, counts))


def _dat_by_hand(entries: list[tuple[str, int, np.ndarray]], last_chunk: int, dataset: str) -> bytes:
    """save_imatrix_legacy's layout: int32 n; per entry int32 len, name, int32 ncall, int32 nval,
    nval floats; int32 last chunk; int32 len, dataset."""
    b = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        b += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, vals.size)
        b += vals.astype("<f4").tobytes()
    return b + struct.pack("<ii", last_chunk, len(dataset)) + dataset.encode()


def test_dat_read_and_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    v1, v2 = rng.random(64, dtype=np.float32) * 9, rng.random(4 * 32, dtype=np.float32)
    data = _dat_by_hand([("blk.0.attn_k.weight", 3, v1), ("blk.0.ffn_up_exps.weight", 2, v2)], 3, "wiki.txt")
    (tmp_path / "a.dat").write_bytes(data)
    m = Imatrix.load(tmp_path / "a.dat")
    assert m.legacy and m.chunk_count == 3 and m.datasets == ["wiki.txt"]
    np.testing.assert_array_equal(
        m.weights("blk.0.attn_k.weight")[0], (v1.astype(np.float64) / 3).astype(np.float32)
    )
    np.testing.assert_array_equal(m.weights("blk.0.ffn_up_exps.weight", 32).shape, (4, 32))
    m.save(tmp_path / "b.dat", format="dat")  # a legacy matrix writes back unchanged
    assert (tmp_path / "b.dat").read_bytes() == data
    # without the optional trailer
    (tmp_path / "c.dat").write_bytes(data[: -(8 + len("wiki.txt"))])
    c = Imatrix.load(tmp_path / "c.dat")
    assert c.chunk_count == 0 and c.datasets == []


def test_dat_write_from_raw(tmp_path: Path) -> None:
    m = _imatrix(np.random.default_rng(5))
    m.chunk_size = 100  # ncall = ceil(max count / 100)
    m.save(tmp_path / "r.dat", format="dat")
    expect = []
    for name in sorted(m.entries):
        e = m.entries[name]
        ncall = -(-int(e.counts.max()) // 100)
        vals = np.empty_like(e.sums)
        for j, c in enumerate(e.counts):  # (value / count) * ncall, 1 / 1 where count is 0
            vals[j] = np.float32(ncall) if c == 0 else (e.sums[j] / np.float32(c)) * np.float32(ncall)
        expect.append((name, ncall, vals.reshape(-1)))
    assert (tmp_path / "r.dat").read_bytes() == _dat_by_hand(expect, 1, "b.txt")


def test_combine_like_in_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a, b = _imatrix(rng), _imatrix(rng)
    a.save(tmp_path / "a.gguf")
    v = rng.random(64, dtype=np.float32)
    (tmp_path / "c.dat").write_bytes(_dat_by_hand([("blk.0.attn_q.weight", 2, v)], 2, "old.txt"))
    b.save(tmp_path / "b.gguf")
    parts = [Imatrix.load(tmp_path / n) for n in ("a.gguf", "b.gguf", "c.dat")]
    m = combine(parts, chunk_size=256)
    q = "blk.0.attn_q.weight"
    np.testing.assert_array_equal(
        m.entries[q].sums[0], (a.entries[q].sums[0] + b.entries[q].sums[0]) + v * np.float32(256)
    )
    assert m.entries[q].counts.tolist() == [512 + 512 + 2 * 256]
    e = "blk.0.ffn_up_exps.weight"
    assert m.entries[e].counts.tolist() == [600, 1400, 0, 98]
    assert m.datasets == ["a.txt", "b.txt", "a.txt", "b.txt", "old.txt"]
    assert m.chunk_count == (512 + 512 + 512) // 256
    m.save(tmp_path / "m.gguf")
    assert Imatrix.load(tmp_path / "m.gguf").entries[q].counts.tolist() == [1536]


@pytest.mark.parametrize("cut", [2, 6, 10, 20, 27, 100, -9])
def test_truncated_dat_raises(tmp_path: Path, cut: int) -> None:
    data = _dat_by_hand([("blk.0.attn_k.weight", 1, np.ones(64, np.float32))], 1, "x")
    p = tmp_path / "t.dat"
    p.write_bytes(data[:cut] if cut > 0 else data[: len(data) + cut - 8 - 64 * 4 + 8])
    with pytest.raises(ImatrixError, match="t.dat"):
        Imatrix.load(p)


def test_corrupt_files_raise(tmp_path: Path) -> None:
    p = tmp_path / "x.dat"
    p.write_bytes(struct.pack("<ii", 1, 1 << 30) + b"abc")  # name length far past the end
    with pytest.raises(ImatrixError, match="name length"):
        Imatrix.load(p)
    p.write_bytes(struct.pack("<ii", 1, 3) + b"abc" + struct.pack("<ii", 1, -5))
    with pytest.raises(ImatrixError, match="nval -5"):
        Imatrix.load(p)
    p.write_bytes(b"")
    with pytest.raises(ImatrixError, match="entry count"):
        Imatrix.load(p)
    m = _imatrix(np.random.default_rng(7))
    g = tmp_path / "g.gguf"
    m.save(g)
    full = g.read_bytes()
    for cut in (3, 20, 100, len(full) // 2, len(full) - 40):  # (trailing padding is not checked)
        g.write_bytes(full[:cut])
        with pytest.raises(ImatrixError, match="g.gguf"):
            Imatrix.load(g)
    # a sums tensor without its counts
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(os.fspath(g), arch="llama")
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ImatrixError, match=r"attn_q.weight.counts"):
        Imatrix.load(g)


def test_statistics_table_values() -> None:
    sums = np.array([[4.0, 0.0, 8.0, 12.0]], np.float32)
    m = Imatrix({"blk.0.attn_q.weight": ImatrixEntry(sums, np.array([4]))}, chunk_size=4)
    m.entries["blk.1.attn_q.weight"] = ImatrixEntry(sums * 2, np.array([4]))
    (s0, s1) = sorted(statistics(m), key=lambda s: s.layer)
    a = np.array([1.0, 0.0, 2.0, 3.0])  # the means
    assert s0.total == 6.0 and s0.min == 0.0 and s0.max == 3.0 and s0.mean == 1.5
    assert s0.stddev == pytest.approx(np.std(a)) and s0.active == 0.75 and s0.elements == 4
    p = a[a > 0] / 6
    assert s0.entropy == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-6)
    assert s0.zd == 0.25  # only 3 is more than one deviation above the mean
    assert s0.cossim == 0.0 and s1.cossim == pytest.approx(1.0)
