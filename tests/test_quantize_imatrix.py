"""``splitllm quantize --imatrix`` against llama.cpp's llama_model_quantize with the same matrix.

The matrices are random positive ones written here with gguf-py (llama-imatrix's GGUF layout:
``NAME.in_sum2`` and ``NAME.counts`` per entry) or as legacy ``.dat`` files; llama.cpp gets the
values llama-quantize's load_imatrix computes from them (sums / counts, in float32, computed
here with numpy) through ``llama_model_quantize_params.imatrix``, and the four
``quantize.imatrix.*`` keys llama-quantize adds as kv overrides. Tiny models: llama with GQA
(dense), llama with tied embeddings, qwen3moe with 8 experts and Mixtral-style llama with 4
(3-D expert tensors, a row of weights per expert), rows of 288 (the IQ types' fallback to
IQ4_NL); every file type that needs a matrix, the weighted legacy / k-quant / IQ4 quantizers, and
SmolLM2 requantized to IQ2_M and IQ3_XXS. The output files must be byte for byte llama.cpp's.
Then the errors llama.cpp raises (no matrix, an entry of the wrong size, non-finite values) and
the option checks.
"""

from __future__ import annotations

import ctypes
import re
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from splitllm import GGUFFile, quants
from splitllm.cli import main
from splitllm.imatrix import Imatrix, ImatrixEntry
from splitllm_convert import FILE_TYPES, QuantizeError
from test_quantize_cli import assert_same_file, llama_quantize, ours, types_of
from tiny_model import TinyConfig, make_weights, write_gguf

_LOG_SINK: list[Any] = []
_LOG: list[str] = []  # llama.cpp's log lines while a dry run is being read


def _log(level: int, text: bytes, user_data: Any) -> None:
    _LOG.append(text.decode("utf-8", "replace"))


IMATRIX_FTYPES = ["iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq1_s", "iq1_m", "iq3_xxs", "iq3_xs", "iq3_s",
                  "iq3_m", "q2_k_s"]  # fmt: skip
WEIGHTED_FTYPES = ["q4_k_m", "q5_k_m", "q4_0", "iq4_xs", "q3_k_s"]

MODELS = {
    "llama-gqa": (TinyConfig(n_layer=4, n_embd=256, n_ff=512, n_head=4, n_head_kv=2), "F16"),
    "llama-tied": (TinyConfig(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=1, tied_output=True),
                   "F32"),
    "qwen3moe-8x": (TinyConfig(arch="qwen3moe", n_layer=1, n_embd=256, n_ff=256, n_head=4, n_head_kv=2,
                               n_expert=8, n_expert_used=2), "F16"),
    "mixtral-4x": (TinyConfig(n_layer=2, n_embd=256, n_ff=256, n_head=4, n_head_kv=2, n_expert=4,
                              n_expert_used=2), "F16"),
    "fallback": (TinyConfig(n_layer=2, n_embd=288, n_ff=512, n_head=4, n_head_kv=2), "F16"),
    # 8 layers: the first-eighth rules reach layer 0; 4 queries a key (n_gqa 4)
    "llama-8l-gqa4": (TinyConfig(n_layer=8, n_embd=256, n_ff=256, n_head=4, n_head_kv=1), "F16"),
}  # fmt: skip


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    mod = pytest.importorskip("llama_cpp")
    if not _LOG_SINK:
        _LOG_SINK.append(mod.llama_log_callback(_log))
    mod.llama_log_set(_LOG_SINK[-1], ctypes.c_void_p(0))
    return mod


@pytest.fixture(scope="module")
def models(tmp_path_factory: Any) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("imatrix_models")
    out = {}
    for name, (cfg, weight_type) in MODELS.items():
        out[name] = d / f"{name}.gguf"
        write_gguf(make_weights(cfg), out[name], weight_type=weight_type)
    return out


# -- importance matrices, written as llama-imatrix writes them ------------------------------------

Entries = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (sums (n_mat, n_per_row), counts (n_mat,))


def random_entries(model: Path, seed: int = 0) -> Entries:
    """Sums of squares and counts for every matrix a forward pass multiplies by (not the token
    embeddings), as llama-imatrix collects them; some expert never chosen (count 0)."""
    rng = np.random.default_rng(seed)
    out: Entries = {}
    with GGUFFile(model) as f:
        for name, info in f.tensors.items():
            if len(info.shape) < 2 or not name.endswith(".weight") or "norm" in name or "token_embd" in name:
                continue
            if "ffn_gate_inp" in name:
                continue
            n_mat = info.shape[0] if len(info.shape) == 3 else 1
            counts = rng.integers(1, 200, size=n_mat).astype(np.float32) * 512
            if n_mat > 1:
                counts[1] = 0
            mean_sq = rng.gamma(2.0, 1.0, size=(n_mat, info.shape[-1])).astype(np.float32)
            out[name] = ((mean_sq * counts[:, None]).astype(np.float32), counts)
    return out


def write_imatrix(path: Path, entries: Entries, datasets: list[str], chunk_count: int) -> None:
    """llama-imatrix's GGUF file (general.type imatrix, the datasets, chunk count and size)."""
    w = gguf.GGUFWriter(str(path), None)  # no architecture key
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", datasets)
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", sums)
        w.add_tensor(name + ".counts", counts.reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_legacy(
    path: Path, entries: dict[str, tuple[np.ndarray, int]], chunk_count: int, dataset: str
) -> None:
    """The legacy .dat layout: per entry its name, ncall and values (means times ncall), then the
    chunk count and the dataset's name."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, (values, ncall) in entries.items():
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size))
            f.write(values.astype("<f4").tobytes())
        f.write(struct.pack("<i", chunk_count))
        f.write(struct.pack("<i", len(dataset.encode())) + dataset.encode())


def mean_weights(entries: Entries) -> dict[str, np.ndarray]:
    """load_imatrix's values: each expert's sums divided by its count (1 where the count is 0)."""
    out = {}
    for name, (sums, counts) in entries.items():
        c = counts.astype(np.float32)[:, None]
        out[name] = (
            np.where(c > 0, sums / np.where(c > 0, c, 1), np.float32(1)).astype(np.float32).reshape(-1)
        )
    return out


def imatrix_param(llama_cpp: Any, weights: dict[str, np.ndarray]) -> tuple[Any, list[Any]]:
    """A llama_model_imatrix_data array ending in a NULL name, and what must stay alive with it."""
    arr = (llama_cpp.llama_model_imatrix_data * (len(weights) + 1))()
    keep: list[Any] = [arr]
    for i, (name, values) in enumerate(weights.items()):
        data = np.ascontiguousarray(values, dtype=np.float32)
        keep += [data, name.encode()]
        arr[i].name, arr[i].size = keep[-1], data.size
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    arr[-1].name = None
    return ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)), keep


def imatrix_kvs(path: Path, dataset: str | None, n_entries: int, chunk_count: int) -> dict[str, Any]:
    """The kv overrides llama-quantize adds for its --imatrix file (strings cut at 127 bytes)."""
    kvs: dict[str, Any] = {"quantize.imatrix.file": str(path).encode()[:127].decode()}
    if dataset is not None:
        kvs["quantize.imatrix.dataset"] = dataset.encode()[:127].decode()
    kvs["quantize.imatrix.entries_count"] = n_entries
    if chunk_count > 0:
        kvs["quantize.imatrix.chunks_count"] = chunk_count
    return kvs


def theirs_with(llama_cpp: Any, src: Path, dst: Path, ftype: str, weights: dict[str, np.ndarray],
                kvs: dict[str, Any] | None, **params: Any) -> int:  # fmt: skip
    ptr, keep = imatrix_param(llama_cpp, weights)
    rc = llama_quantize(llama_cpp, src, dst, ftype, override_kv=kvs, imatrix=ptr, **params)
    del keep
    return rc


def need_quantizers(ftype: str, path: Path) -> None:
    """Skip where splitllm lacks a quantizer for a type llama.cpp chose (the IQ ones come from
    another branch); names the type."""
    for name, t in types_of(path).items():
        info = quants.qtype_info(t)
        if info.is_quantized and not (info.can_quantize or info.takes_imatrix):
            pytest.skip(f"{ftype}: splitllm has no {t} quantizer yet ({name})")


# -- byte for byte ---------------------------------------------------------------------------------


def _compare(llama_cpp: Any, models: dict[str, Path], model: str, ftype: str, tmp_path: Path) -> Path:
    entries = random_entries(models[model])
    im = tmp_path / "imatrix.gguf"
    write_imatrix(im, entries, ["wiki.train.raw"], 37)
    weights = mean_weights(entries)
    theirs, mine = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    kvs = imatrix_kvs(im, "wiki.train.raw", len(weights), 37)
    assert theirs_with(llama_cpp, models[model], theirs, ftype, weights, kvs) == 0
    need_quantizers(ftype, theirs)
    plan = ours(models[model], mine, ftype, imatrix=im)
    assert_same_file(mine, theirs)
    assert plan.output_bytes == mine.stat().st_size
    return mine


# each file type on one or two models: dense with GQA, 8 experts, 4 experts, tied embeddings,
# rows of 288 (IQ types fall back to IQ4_NL), 8 layers with 4 queries a key
BYTE_CASES = [
    ("iq2_xxs", "llama-gqa"), ("iq2_xxs", "qwen3moe-8x"), ("iq2_xs", "mixtral-4x"), ("iq2_s", "llama-tied"),
    ("iq2_m", "llama-8l-gqa4"), ("iq1_s", "qwen3moe-8x"), ("iq1_m", "llama-gqa"), ("iq3_xxs", "mixtral-4x"),
    ("iq3_xxs", "llama-tied"), ("iq3_xs", "llama-gqa"), ("iq3_s", "fallback"), ("iq3_m", "qwen3moe-8x"),
    ("q2_k_s", "llama-8l-gqa4"),
    # the weighted legacy / k-quant / IQ4 quantizers, and the rules a matrix changes
    ("q4_k_m", "llama-gqa"), ("q4_k_m", "mixtral-4x"), ("q5_k_m", "qwen3moe-8x"), ("q4_0", "llama-8l-gqa4"),
    ("iq4_xs", "llama-8l-gqa4"), ("iq4_xs", "mixtral-4x"), ("q3_k_s", "llama-tied"),
]  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize(("ftype", "model"), BYTE_CASES)
def test_imatrix_quantize_matches_llama_cpp(llama_cpp: Any, models: dict[str, Path], ftype: str, model: str,
                                             tmp_path: Path) -> None:  # fmt: skip
    mine = _compare(llama_cpp, models, model, ftype, tmp_path)
    types = types_of(mine)
    if model == "fallback":  # rows of 288: no 256-block type fits, IQ4_NL does
        assert types["blk.0.attn_q.weight"] == "IQ4_NL"
    if (ftype, model) == ("q4_0", "llama-8l-gqa4"):  # with a matrix, layer 0's ffn_down in Q4_1
        assert (types["blk.0.ffn_down.weight"], types["blk.1.ffn_down.weight"]) == ("Q4_1", "Q4_0")
    if (ftype, model) == ("iq4_xs", "llama-8l-gqa4"):  # and IQ4_XS's not in Q5_K
        assert types["blk.0.ffn_down.weight"] == "IQ4_XS"


@pytest.mark.reference
def test_legacy_file_and_selection_match_llama_cpp(llama_cpp: Any, models: dict[str, Path],
                                                    tmp_path: Path) -> None:  # fmt: skip
    """A legacy .dat matrix (means times ncall; one entry's ncall 0: taken as it is), with
    --exclude-weights; then --include-weights on the GGUF form."""
    src = models["llama-gqa"]
    rng = np.random.default_rng(5)
    legacy = {}
    for i, (name, (sums, counts)) in enumerate(random_entries(src, 3).items()):
        ncall = 0 if i == 2 else int(rng.integers(1, 90))
        legacy[name] = ((sums / counts[:, None]).reshape(-1).astype(np.float32) * max(ncall, 1), ncall)
    dat = tmp_path / "imatrix.dat"
    write_legacy(dat, legacy, 11, "calibration.txt")
    weights = {n: v / np.float32(c) if c else v for n, (v, c) in legacy.items()}
    kept = {n: v for n, v in weights.items() if "attn_k" not in n and "blk.3." not in n}
    kvs = imatrix_kvs(dat, "calibration.txt", len(kept), 11)
    assert theirs_with(llama_cpp, src, tmp_path / "theirs.gguf", "iq3_s", kept, kvs) == 0
    need_quantizers("iq3_s", tmp_path / "theirs.gguf")
    ours(src, tmp_path / "ours.gguf", "iq3_s", imatrix=dat, exclude_weights=["attn_k", "blk.3."])
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")

    entries = random_entries(src, 4)
    im = tmp_path / "im.gguf"
    # written by splitllm.imatrix this time: an empty dataset list (gguf-py would drop the key), chunk
    # count 0; neither quantize.imatrix.dataset nor .chunks_count is written
    raw = {n: ImatrixEntry(sums, counts.astype(np.int64)) for n, (sums, counts) in entries.items()}
    Imatrix(raw, datasets=[], chunk_count=0, chunk_size=512).save(im)
    chosen = {n: v for n, v in mean_weights(entries).items() if "ffn" in n}
    kvs = imatrix_kvs(im, None, len(chosen), 0)
    assert theirs_with(llama_cpp, src, tmp_path / "theirs2.gguf", "q4_k_m", chosen, kvs) == 0
    ours(src, tmp_path / "ours2.gguf", "q4_k_m", imatrix=im, include_weights=["ffn"])
    assert_same_file(tmp_path / "ours2.gguf", tmp_path / "theirs2.gguf")


@pytest.mark.reference
def test_token_embd_entry_of_another_size_is_skipped(llama_cpp: Any, models: dict[str, Path],
                                                     tmp_path: Path) -> None:  # fmt: skip
    """llama.cpp ignores the token embeddings' entry when its size is not theirs (Q2_K without a
    matrix), where any other tensor's is an error."""
    src = models["llama-gqa"]
    entries = random_entries(src, 6)
    entries["token_embd.weight"] = (np.ones((1, 100), np.float32), np.ones(1, np.float32))
    im = tmp_path / "im.gguf"
    write_imatrix(im, entries, ["d"], 2)
    weights = mean_weights(entries)
    kvs = imatrix_kvs(im, "d", len(weights), 2)
    assert theirs_with(llama_cpp, src, tmp_path / "theirs.gguf", "iq2_xxs", weights, kvs) == 0
    need_quantizers("iq2_xxs", tmp_path / "theirs.gguf")
    ours(src, tmp_path / "ours.gguf", "iq2_xxs", imatrix=im)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize(("ftype", "prune"), [("iq2_m", tuple(range(4, 26))), ("iq3_xxs", tuple(range(26)))])
def test_real_model_with_imatrix_matches_llama_cpp(
    llama_cpp: Any, smollm2_path: Path, ftype: str, prune: tuple[int, ...], tmp_path: Path
) -> None:
    """SmolLM2-135M Q4_1 requantized by both with a random matrix: rows of 576 fall back to IQ4_NL,
    ffn_down's (1536) keep the IQ types. 8 or 4 of its 30 layers, to keep the test short
    (--prune-layers: a real model's names renumbered, the matrix's entries found under the old
    numbers, the rules still on 30 layers); the whole model is byte-identical too (not run here:
    about a minute)."""
    entries = random_entries(smollm2_path, 7)
    im = tmp_path / "smollm2.imatrix.gguf"
    write_imatrix(im, entries, ["random"], 100)
    weights = mean_weights(entries)
    kvs = imatrix_kvs(im, "random", len(weights), 100)
    theirs, mine = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    extra: dict[str, Any] = {}
    if prune:
        arr = (ctypes.c_int32 * (len(prune) + 1))(*prune, -1)
        extra["prune_layers"] = ctypes.cast(arr, ctypes.POINTER(ctypes.c_int32))
    assert (
        theirs_with(llama_cpp, smollm2_path, theirs, ftype, weights, kvs, allow_requantize=True, **extra) == 0
    )
    need_quantizers(ftype, theirs)
    ours(smollm2_path, mine, ftype, imatrix=im, allow_requantize=True, prune_layers=prune)
    assert_same_file(mine, theirs)
    t = types_of(mine)
    assert t["blk.1.attn_q.weight"] == "IQ4_NL" and t["blk.3.ffn_down.weight"] != "IQ4_NL"
    with GGUFFile(mine) as f:
        assert f.metadata["llama.block_count"] == 30 - len(prune)


@pytest.mark.reference
def test_prune_layers_with_imatrix_match_llama_cpp(llama_cpp: Any, models: dict[str, Path],
                                                    tmp_path: Path) -> None:  # fmt: skip
    """--prune-layers 2,1 on the command line: layers 1 and 2 dropped, layer 3 renamed 1 (its
    matrix entry still found under blk.3), block_count 2 set last; the rules keep the input's 4
    layers."""
    src = models["llama-gqa"]
    entries = random_entries(src, 9)
    im = tmp_path / "im.gguf"
    write_imatrix(im, entries, ["d"], 3)
    weights = mean_weights(entries)
    prune = (ctypes.c_int32 * 3)(1, 2, -1)
    kvs = imatrix_kvs(im, "d", len(weights), 3)
    theirs, mine = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    ptr = ctypes.cast(prune, ctypes.POINTER(ctypes.c_int32))
    assert theirs_with(llama_cpp, src, theirs, "iq2_xs", weights, kvs, prune_layers=ptr) == 0
    need_quantizers("iq2_xs", theirs)
    args = ["--imatrix", str(im), "--prune-layers", "2,1", str(src), str(mine), "iq2_xs", "2"]
    assert main(["quantize", "--quiet", *args]) == 0
    assert_same_file(mine, theirs)
    with GGUFFile(mine) as f:
        assert f.metadata["llama.block_count"] == 2 and "blk.2.attn_q.weight" not in f.tensors


@pytest.mark.reference
def test_convert_hf_with_imatrix_matches_llama_cpp(llama_cpp: Any, tmp_path: Path) -> None:
    """convert-hf --type iq2_m --imatrix: the tensors llama.cpp's quantizer makes of the F32
    conversion with the same matrix, and the quantize.imatrix.* keys; without a matrix, refused."""
    import hf_fixtures as HF
    from splitllm_convert import convert
    from splitllm_convert.cli import main as convert_main

    HF.tiny_model(tmp_path / "hf", "llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    f32 = tmp_path / "f32.gguf"
    convert(tmp_path / "hf", f32, type="f32", quiet=True)
    entries = random_entries(f32, 12)
    im = tmp_path / "im.gguf"
    write_imatrix(im, entries, ["cal"], 5)
    weights = mean_weights(entries)
    assert theirs_with(llama_cpp, f32, tmp_path / "theirs.gguf", "iq2_m", weights, None) == 0
    need_quantizers("iq2_m", tmp_path / "theirs.gguf")
    out = tmp_path / "ours.gguf"
    args = [str(tmp_path / "hf"), "-o", str(out), "--type", "iq2_m", "--imatrix", str(im), "--quiet"]
    assert convert_main(args) == 0
    want = {t.name: t for t in gguf.GGUFReader(tmp_path / "theirs.gguf").tensors}
    got = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert sorted(got) == sorted(want)
    for name, t in got.items():
        assert t.tensor_type == want[name].tensor_type, name
        assert bytes(t.data) == bytes(want[name].data), name
    with GGUFFile(out) as f:
        meta = f.metadata
    assert (meta["quantize.imatrix.file"], meta["quantize.imatrix.dataset"]) == (str(im), "cal")
    assert (meta["quantize.imatrix.entries_count"], meta["quantize.imatrix.chunks_count"]) == (
        len(weights),
        5,
    )
    assert convert_main([str(tmp_path / "hf"), "-o", str(tmp_path / "x.gguf"), "--type", "iq2_xxs"]) == 1
    assert not (tmp_path / "x.gguf").exists()


# -- the types each rule picks, whatever the quantizers -------------------------------------------


_DRY_RUN_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\] (\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^\n(]*(?:\((\w+)\))?\n"
)


def llama_dry_run_types(llama_cpp: Any, src: Path, ftype: str, weights: dict[str, np.ndarray] | None) -> dict:
    """Each tensor's type as llama.cpp's dry run logs it (no quantizing: fast)."""
    _LOG.clear()
    if weights is None:
        rc = llama_quantize(llama_cpp, src, src.with_suffix(".none"), ftype, dry_run=True)
    else:
        rc = theirs_with(llama_cpp, src, src.with_suffix(".none"), ftype, weights, None, dry_run=True)
    assert rc == 0
    found = _DRY_RUN_LINE.findall("".join(_LOG))
    assert found, "".join(_LOG)[-2000:]
    return {name: (new or cur).upper() for name, cur, new in found}


@pytest.mark.reference
@pytest.mark.parametrize(
    "ftype", [*IMATRIX_FTYPES, "q2_k", "q3_k_m", "q4_k_m", "q4_0", "q5_0", "iq4_nl", "iq4_xs"]
)
@pytest.mark.parametrize("model", list(MODELS))
def test_rules_with_imatrix_match_llama_cpp(
    llama_cpp: Any, models: dict[str, Path], model: str, ftype: str
) -> None:
    """Each tensor's type (dry runs) against llama.cpp's with a matrix."""
    weights = mean_weights(random_entries(models[model]))
    plan = ours(models[model], None, ftype, imatrix=weights, dry_run=True)
    assert {t.name: t.type.name for t in plan.tensors} == llama_dry_run_types(
        llama_cpp, models[model], ftype, weights
    )


@pytest.mark.reference
@pytest.mark.parametrize("ftype", ["iq3_s", "iq3_m", "iq3_xs", "iq3_xxs", "q2_k_s", "iq2_xxs", "iq1_m"])
@pytest.mark.parametrize("model", ["llama-gqa", "llama-8l-gqa4"])
def test_rules_without_imatrix_match_llama_cpp(
    llama_cpp: Any, models: dict[str, Path], model: str, ftype: str, tmp_path: Path
) -> None:
    """Without a matrix: the types llama.cpp picks (dry runs), or its refusal (no file from either;
    our dry run warns, as llama.cpp's)."""
    src = models[model]
    want = llama_dry_run_types(llama_cpp, src, ftype, None)
    plan = ours(src, None, ftype, dry_run=True)
    assert {t.name: t.type.name for t in plan.tensors} == want
    if FILE_TYPES[ftype].needs_imatrix:
        assert llama_quantize(llama_cpp, src, tmp_path / "theirs.gguf", ftype) != 0
        with pytest.raises(QuantizeError, match="this quantization requires an importance matrix"):
            ours(src, tmp_path / "ours.gguf", ftype)
        assert not (tmp_path / "ours.gguf").exists()
        assert plan.will_require_imatrix and "will require an imatrix" in plan.summary()
    else:
        assert not plan.will_require_imatrix


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.reference
def test_missing_entry_for_a_low_bit_tensor(llama_cpp: Any, models: dict[str, Path], tmp_path: Path) -> None:
    """A matrix without blk.1.attn_q's entry: llama.cpp stops at that tensor; we stop before
    writing anything."""
    src = models["llama-gqa"]
    weights = {n: v for n, v in mean_weights(random_entries(src)).items() if n != "blk.1.attn_q.weight"}
    assert theirs_with(llama_cpp, src, tmp_path / "theirs.gguf", "iq2_xxs", weights, None) != 0
    with pytest.raises(QuantizeError, match=r"missing importance matrix for tensor 'blk\.1\.attn_q\.weight'"):
        ours(src, tmp_path / "ours.gguf", "iq2_xxs", imatrix=weights)
    assert not (tmp_path / "ours.gguf").exists()


@pytest.mark.reference
def test_wrong_size_and_non_finite_are_refused(
    llama_cpp: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    src = models["qwen3moe-8x"]
    weights = mean_weights(random_entries(src))
    short = dict(weights, **{"blk.0.ffn_up_exps.weight": weights["blk.0.ffn_up_exps.weight"][:256]})
    assert theirs_with(llama_cpp, src, tmp_path / "theirs.gguf", "q4_k_m", short, None) != 0
    with pytest.raises(QuantizeError, match=r"'blk\.0\.ffn_up_exps\.weight' has 256 values.*needs 2048"):
        ours(src, tmp_path / "ours.gguf", "q4_k_m", imatrix=short)
    bad = dict(weights)
    bad["blk.0.attn_v.weight"] = weights["blk.0.attn_v.weight"].copy()
    bad["blk.0.attn_v.weight"][3] = np.nan
    assert theirs_with(llama_cpp, src, tmp_path / "theirs.gguf", "q4_k_m", bad, None) != 0
    with pytest.raises(QuantizeError, match="non-finite value nan"):
        ours(src, tmp_path / "ours.gguf", "q4_k_m", imatrix=bad)
    assert not (tmp_path / "ours.gguf").exists()


def test_cli_options(models: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    """--include-weights with --exclude-weights is refused (llama-quantize prints its usage); a
    file that is no matrix names itself; IQ2_XXS without a matrix names the tensor."""
    src, dst = str(models["llama-gqa"]), str(tmp_path / "out.gguf")
    im = tmp_path / "im.gguf"
    write_imatrix(im, random_entries(models["llama-gqa"]), ["d"], 1)
    cases = [
        (["--imatrix", str(im), "--include-weights", "a", "--exclude-weights", "b", src, dst, "q4_k_m"],
         "cannot be used together"),
        (["--imatrix", str(tmp_path / "none.gguf"), src, dst, "q4_k_m"], "none.gguf"),
        ([src, dst, "iq2_xxs"], "requires an importance matrix"),
        ([src, dst, "q1_0"], "no Q1_0 format"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(["quantize", "--quiet", *args]) != 0
        err = capsys.readouterr().err
        assert message in err, err
        assert not Path(dst).exists()
