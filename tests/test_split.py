"""GGUF files split in several parts (llama.cpp's gguf-split layout): the reader opens them from
the first part, the model runs them as the whole file, llama.cpp reads the same parts, and the
bad cases (a later part, a missing or foreign part, a wrong count) are clear errors."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from lcpp import llama_cpp_logits
from split_gguf import T, split_name, write_split
from splitllm import GGUFError, GGUFFile, Model
from tiny_model import TinyConfig, make_weights, write_gguf

TOKENS = [1, 5, 9, 2, 7, 3, 11, 4]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "tiny.gguf"
    write_gguf(make_weights(TinyConfig(seed=3)), path)  # F32: llama.cpp and ours agree to 1e-3
    return path


def test_split_reads_as_the_whole_file(whole, tmp_path):
    parts = write_split(whole, tmp_path / "tiny", 3)
    assert [p.name for p in parts] == [f"tiny-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    with GGUFFile(whole) as w, GGUFFile(parts[0]) as s:
        assert s.part_paths == [str(p) for p in parts]
        assert list(s.tensors) == list(w.tensors)
        assert {t.part for t in s.tensors.values()} == {0, 1, 2}
        for name, info in s.tensors.items():
            np.testing.assert_array_equal(s.tensor(name), w.tensor(name))
            with open(s.part_paths[info.part], "rb") as f:  # offset: in the part's own file
                f.seek(info.offset)
                assert f.read(info.nbytes) == s.tensor(name).tobytes()
        assert s.metadata["split.count"] == 3
        assert {k: v for k, v in s.metadata.items() if not k.startswith("split.")} == w.metadata
    with Model(whole, n_ctx=64, n_threads=2) as m:
        ref = m.logits(TOKENS)
    with Model(parts[0], n_ctx=64, n_threads=2) as m:
        np.testing.assert_array_equal(m.logits(TOKENS), ref)
        assert sum(p["weight_bytes"] for p in m.placement) > 0
        cpu = {d["name"]: d for d in m._engine().memory}["CPU"]
    headers = [gguf.GGUFReader(p).data_offset for p in parts]  # the overhead: every part's header
    assert cpu["overhead"] == sum(headers) and len(headers) == 3


@pytest.mark.reference
def test_llama_cpp_reads_the_same_split(whole, tmp_path):
    """llama.cpp loads the parts (so they are what its gguf-split writes) to the logits of the
    whole file, and ours agree with them."""
    parts = write_split(whole, tmp_path / "tiny", 2)
    theirs = llama_cpp_logits(parts[0], TOKENS)
    np.testing.assert_allclose(theirs, llama_cpp_logits(whole, TOKENS), rtol=0, atol=1e-6)
    with Model(parts[0], n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-3


def test_split_errors(whole, tmp_path):
    parts = write_split(whole, tmp_path / "a", 3)
    with pytest.raises(GGUFError, match=r"a-00002-of-00003.gguf: this is part 2 of a GGUF split in 3 files: "
                                        r"open the first part"):
        GGUFFile(parts[1])
    with pytest.raises(ValueError, match="this is part 3 of a GGUF split"):
        Model(parts[2], n_ctx=64)
    parts[2].unlink()
    with pytest.raises(GGUFError, match=r"a-00003-of-00003.gguf: cannot open"):
        GGUFFile(parts[0])
    # the first part under another name: the others cannot be found
    other = tmp_path / "renamed.gguf"
    parts[0].rename(other)
    with pytest.raises(GGUFError, match=r"renamed.gguf: the first part of a GGUF split in 3 files must be "
                                        r"named PREFIX-00001-of-00003.gguf"):
        GGUFFile(other)
    # a part of another split (its count differs)
    b = write_split(whole, tmp_path / "b", 2)
    c = write_split(whole, tmp_path / "c", 3)
    split_name(tmp_path / "b", 1, 2).unlink()
    c[1].rename(split_name(tmp_path / "b", 1, 2))
    with pytest.raises(GGUFError, match=r"b-00002-of-00002.gguf: not part 2 of 2 of .*b-00001-of-00002.gguf"):
        GGUFFile(b[0])
    # the tensor count of the first part's metadata
    d = write_split(whole, tmp_path / "d", 2, extra={0: {"split.tensors.count": (5, T.INT32)}})
    with pytest.raises(GGUFError, match=r"split.tensors.count is 5 but the 2 parts hold \d+ tensors"):
        GGUFFile(d[0])
    # a tensor in two parts
    e = write_split(whole, tmp_path / "e", 2)
    f = write_split(whole, tmp_path / "f", 2, tensors_per_part=[0, len(GGUFFile(whole).tensors)])
    e[1].unlink()
    f[1].rename(e[1])
    with pytest.raises(GGUFError, match=r"e-00002-of-00002.gguf: tensor '.*' is in an earlier part too"):
        GGUFFile(e[0])
    # split.count of a wrong type
    g = write_split(whole, tmp_path / "g", 2, extra={0: {"split.count": ("two", T.STRING)}})
    with pytest.raises(GGUFError, match="metadata 'split.count' must be an integer"):
        GGUFFile(g[0])
