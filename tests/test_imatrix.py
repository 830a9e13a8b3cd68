"""Importance-matrix collection (splitllm.imatrix.compute, the engine's collector, ``splitllm imatrix``)
against the float64 reference forward pass of tests/tiny_model.py, whose weights record every input
they multiply, and against llama.cpp's own collection on SmolLM2 (test_matches_llama_cpp)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from splitllm import Model
from splitllm.cli import main as cli_main
from splitllm.imatrix import Imatrix, compute, from_collected
from tiny_model import TinyConfig, make_weights, reference_hidden, reference_logits, write_gguf

SUMS_RTOL = 2e-4  # float32 engine activations (F32 weights, f16 cache) against float64


class _Tracked(np.ndarray):
    """A weight that records, per expert for a stacked (3-D) weight, the rows it is multiplied with."""

    def __array_finalize__(self, obj: Any) -> None:
        self._name = getattr(obj, "_name", None)
        self._expert = getattr(obj, "_expert", 0)
        self._log = getattr(obj, "_log", None)

    def __getitem__(self, idx: Any) -> Any:
        v = super().__getitem__(idx)
        if isinstance(v, _Tracked) and self.ndim == 3 and isinstance(idx, (int, np.integer)):
            v._expert = int(idx)
        return v

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kw: Any) -> Any:
        plain = [np.asarray(x).view(np.ndarray) if isinstance(x, _Tracked) else x for x in inputs]
        if ufunc is np.matmul and method == "__call__":
            a, b = inputs
            if isinstance(b, _Tracked) and not isinstance(a, _Tracked):  # x @ W.T
                b._log(b._name, b._expert, np.atleast_2d(np.asarray(a)))
            elif isinstance(a, _Tracked):  # W[e] @ x
                a._log(a._name, a._expert, np.atleast_2d(np.asarray(b)))
        return getattr(ufunc, method)(*plain, **kw)


def reference_sums(
    cfg: TinyConfig, held: dict[str, np.ndarray], chunks: list[list[int]], process_output: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (sums (n_mat, K), counts (n_mat,)) of the float64 forward passes over the chunks."""
    acc: dict[str, list[Any]] = {}
    last: dict[str, int] = {}  # a fused weight's slices (phi3's q/k/v, gate/up) meet one input once

    def log(name: str, e: int, x: np.ndarray) -> None:
        n_mat = held[name].shape[0] if held[name].ndim == 3 else 1
        if n_mat == 1:
            if last.get(name) == id(x):
                return
            last[name] = id(x)
        s = acc.setdefault(name, [np.zeros((n_mat, x.shape[1])), np.zeros(n_mat, np.int64)])
        s[0][e] += (x * x).sum(axis=0)
        s[1][e] += x.shape[0]

    w: dict[str, Any] = dict(held)
    for name, v in held.items():
        if v.ndim >= 2 and name != "token_embd.weight" and (process_output or name != "output.weight"):
            t = v.view(_Tracked)
            t._name, t._expert, t._log = name, 0, log
            w[name] = t
    for chunk in chunks:
        last.clear()
        reference_logits(cfg, w, chunk)
    return {k: (v[0], v[1]) for k, v in acc.items()}


def _check(m: Imatrix, ref: dict[str, tuple[np.ndarray, np.ndarray]], rtol: float = SUMS_RTOL) -> None:
    assert sorted(m.entries) == sorted(ref)
    for name, (sums, counts) in ref.items():
        e = m.entries[name]
        np.testing.assert_array_equal(e.counts, counts, err_msg=name)
        np.testing.assert_allclose(e.sums, sums, rtol=rtol, atol=1e-6 * sums.max(), err_msg=name)


BOS = {"tokenizer.ggml.add_bos_token": True}


def _tokens(n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 256, n)]


@pytest.mark.parametrize(
    "cfg",
    [
        TinyConfig(seed=11),
        TinyConfig(arch="phi3", seed=18),
        TinyConfig(arch="qwen3moe", n_expert=4, n_expert_used=2, n_ff_exp=64, key_length=32, seed=12),
        TinyConfig(
            arch="gpt-oss", n_layer=2, n_expert=4, n_expert_used=2, n_ff_exp=64, sliding_window=6, seed=13
        ),
    ],
    ids=["dense", "phi3-fused", "qwen3moe", "gpt-oss"],
)
def test_sums_match_float64_reference(tmp_path: Path, cfg: TinyConfig) -> None:
    """Chunks of 32 with BOS first, output.weight too: every weight's sums and counts (MoE: per
    expert, over the tokens routed to it) equal the reference's."""
    path = tmp_path / "m.gguf"
    held = write_gguf(make_weights(cfg), path, metadata=BOS)
    toks = _tokens(100)
    with Model(path, n_ctx=32, n_threads=2) as model:
        bos = model.tokenizer.bos_id
        res = compute(model, toks, n_ctx=32, process_output=True, dataset="calib.txt")
    chunks = [[bos, *toks[1:32]], [bos, *toks[33:64]], [bos, *toks[65:96]]]  # 100 // 32 chunks
    ref = reference_sums(cfg, held, chunks, process_output=True)
    if cfg.n_expert:
        counts = ref["blk.0.ffn_up_exps.weight"][1]
        assert counts.sum() == 96 * cfg.n_expert_used and np.count_nonzero(counts) > 1
    _check(res.imatrix, ref)
    m = res.imatrix
    assert (m.chunk_count, m.chunk_size, m.datasets, res.n_chunks) == (3, 32, ["calib.txt"], 3)
    # the perplexity of the second halves, from the reference's logits
    nll = []
    for c in chunks:
        z = reference_logits(cfg, held, c)[16:31]
        z = z - z.max(axis=1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll += [-lp[i, t] for i, t in enumerate(c[17:])]
    assert res.ppl == pytest.approx(np.exp(np.mean(nll)), rel=1e-4)


def test_encoder_layers(tmp_path: Path) -> None:
    """An embedding model's layers (gemma-embedding: bidirectional, no cache) collect the same way."""
    from splitllm import _core

    cfg = TinyConfig(arch="gemma-embedding", n_layer=3, key_length=32, sliding_window=8, rms_eps=1e-6,
                     tied_output=True, pooling_type=1, seed=19)  # fmt: skip
    path = tmp_path / "e.gguf"
    held = write_gguf(make_weights(cfg), path)
    toks = _tokens(40, seed=3)
    m = _core.Model(str(path), n_ctx=64, n_batch=64, n_threads=2)
    m.imatrix_start()
    z = np.zeros(40, np.int32)
    m.decode(np.asarray(toks, np.int32), np.arange(40, dtype=np.int32), z, None, None, True)
    got = from_collected(m.imatrix_stop())
    acc: dict[str, list[Any]] = {}

    def log(name: str, _e: int, x: np.ndarray) -> None:
        s = acc.setdefault(name, [np.zeros((1, x.shape[1])), np.zeros(1, np.int64)])
        s[0][0] += (x * x).sum(axis=0)
        s[1][0] += x.shape[0]

    w: dict[str, Any] = dict(held)
    for name, v in held.items():
        if name.startswith("blk.") and v.ndim == 2:
            w[name] = v.view(_Tracked)
            w[name]._name, w[name]._expert, w[name]._log = name, 0, log
    reference_hidden(cfg, w, toks, kv_f16=False)
    _check(got, {k: (v[0], v[1]) for k, v in acc.items()})


def test_no_output_without_process_output_and_small_batches(tmp_path: Path) -> None:
    """As llama-imatrix: output.weight only with process_output; dense matmuls of fewer than 16
    rows are not collected (llama-imatrix's scheduler callback skips them)."""
    cfg = TinyConfig(seed=14)
    path = tmp_path / "m.gguf"
    held = write_gguf(make_weights(cfg), path)
    toks = _tokens(64, seed=1)
    with Model(path, n_ctx=32, n_threads=2) as model:
        m = compute(model, toks, n_ctx=32, ppl=False).imatrix
    _check(m, reference_sums(cfg, held, [toks[:32], toks[32:64]]))
    assert "output.weight" not in m.entries
    with Model(path, n_ctx=32, n_batch=8, n_threads=2) as model:
        assert len(compute(model, toks, n_ctx=32, ppl=False).imatrix) == 0


def test_gpu_layers_through_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers on a GPU backend (FAKEGPU0: device memory behind the GPU interface) give the
    CPU's sums: their inputs are downloaded."""
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    cfg = TinyConfig(n_layer=3, seed=15)
    path = tmp_path / "m.gguf"
    held = write_gguf(make_weights(cfg), path)
    toks = _tokens(64, seed=2)
    with Model(path, n_ctx=32, n_threads=2, n_gpu_layers=-1, op_offload=False) as model:
        assert {p["device"] for p in model.placement} >= {"FAKEGPU0"}
        m = compute(model, toks, n_ctx=32, process_output=True).imatrix
    # (the GPU backend's attention rounds its own way: the later inputs drift a little further)
    _check(m, reference_sums(cfg, held, [toks[:32], toks[32:64]], process_output=True), rtol=2e-3)


def test_collection_is_off_by_default_and_restarts(tmp_path: Path) -> None:
    cfg = TinyConfig(seed=16)
    path = tmp_path / "m.gguf"
    write_gguf(make_weights(cfg), path)
    with Model(path, n_ctx=32, n_threads=2) as model:
        assert not model._engine().imatrix_active
        model.logits(_tokens(20))
        model.imatrix_start()
        assert model._engine().imatrix_active
        model.logits(_tokens(20))
        model.imatrix_start()  # a restart drops what was collected
        model.logits(_tokens(20))
        m = model.imatrix_stop()
        assert not model._engine().imatrix_active
        assert m.entries["blk.0.attn_q.weight"].counts.tolist() == [20]
        assert len(model.imatrix_stop()) == 0


def test_too_few_tokens(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(make_weights(TinyConfig(seed=17)), path)
    with Model(path, n_ctx=32, n_threads=2) as model, pytest.raises(ValueError, match="at least 64"):
        compute(model, _tokens(63), n_ctx=32)


# ---------------------------------------------------------------------------------------------
# SmolLM2: the command line, and llama.cpp's collection


def _text(tinyshakespeare: str) -> str:
    return tinyshakespeare[:1500]


def test_cli_end_to_end(smollm2_path: Path, tinyshakespeare: str, tmp_path: Path, capsys) -> None:
    txt = tmp_path / "calib.txt"
    txt.write_text(_text(tinyshakespeare), encoding="utf-8")
    out = tmp_path / "im.gguf"
    args = [
        "imatrix",
        "-m",
        str(smollm2_path),
        "-f",
        str(txt),
        "-o",
        str(out),
        "-c",
        "128",
        "--chunks",
        "2",
        "-t",
        "2",
    ]
    assert cli_main(args) == 0
    assert "Final estimate: PPL" in capsys.readouterr().out
    m = Imatrix.load(out)
    assert (m.chunk_count, m.chunk_size, m.datasets) == (2, 128, [str(txt)])
    n_layer = 30
    assert len(m) == 7 * n_layer  # q, k, v, output, gate, up, down per block (the output is tied)
    assert all(e.counts.tolist() == [256] for e in m.entries.values())
    # --in-file twice: sums and counts add; legacy output
    dat = tmp_path / "im.dat"
    assert cli_main(["imatrix", "--in-file", str(out), "--in-file", str(out), "-o", str(dat),
                     "--output-format", "dat", "-c", "128"]) == 0  # fmt: skip
    d = Imatrix.load(dat)
    q = "blk.3.attn_q.weight"
    assert d.legacy and d.entries[q].counts.tolist() == [4]  # ncall = 512 / 128
    np.testing.assert_allclose(d.weights(q), m.weights(q), rtol=1e-6)
    capsys.readouterr()
    assert cli_main(["imatrix", "--in-file", str(out), "--show-statistics"]) == 0
    table = capsys.readouterr().out
    assert "attn_q" in table and "Computing weighted average statistics per layer (30 layers)" in table
    with pytest.raises(SystemExit):
        cli_main(["imatrix", "-m", str(smollm2_path), "-f", str(txt), "--save-frequency", "1"])


def _llama_cpp_chunks(path: Path, text: str, n_ctx: int, n_chunks: int) -> list[list[int]]:
    """llama-imatrix's chunks: llama.cpp's tokens (add_special), BOS first where the vocabulary adds it."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        toks = llm.tokenize(text.encode(), add_bos=True)
        add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm._model.model))
        bos = llm.token_bos()
    finally:
        llm.close()
    chunks = [toks[i * n_ctx : (i + 1) * n_ctx] for i in range(n_chunks)]
    return [[bos, *c[1:]] if add_bos else c for c in chunks]


def _llama_cpp_sums(path: Path, chunks: list[list[int]]) -> dict[str, tuple[np.ndarray, int]]:
    """llama.cpp's collection, as llama-imatrix's collect_imatrix: a cb_eval callback asks for the
    MUL_MAT nodes of blk.* weights with at least 16 rows and sums the squares of src[1] (F32 rows
    in host memory on the CPU backend)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import ctypes

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    mul_mat = next(i for i in range(120) if lib.ggml_op_name(i) == b"MUL_MAT")

    # ggml.h's struct ggml_tensor (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_OP_PARAMS 64, name 64)
    class Tensor(ctypes.Structure):
        pass

    Tensor._fields_ = [
        ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32), ("src", ctypes.POINTER(Tensor) * 10), ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
    ]  # fmt: skip
    acc: dict[str, list[Any]] = defaultdict(lambda: [None, 0])

    def collect(t_ptr: int, ask: bool, _user: int) -> bool:
        t = ctypes.cast(t_ptr, ctypes.POINTER(Tensor)).contents
        if t.op != mul_mat:
            return not ask  # (a False for a node it did not ask for would stop the graph)
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = src0.name.decode()
        if ask:
            return src1.ne[1] >= 16 and src1.type == 0 and name.startswith("blk.")
        assert src1.nb[0] == 4 and src1.ne[2] == 1 and src1.ne[3] == 1
        rows = np.ctypeslib.as_array(ctypes.cast(src1.data, ctypes.POINTER(ctypes.c_char)),
                                     shape=(src1.nb[1] * src1.ne[1],))  # fmt: skip
        x = np.lib.stride_tricks.as_strided(rows.view(np.float32), (src1.ne[1], src1.ne[0]), (src1.nb[1], 4))
        x = x.astype(np.float64)
        e = acc[name]
        e[0] = (x * x).sum(axis=0) + (0 if e[0] is None else e[0])
        e[1] += x.shape[0]
        return True

    cb = llama_cpp.ggml_backend_sched_eval_callback(collect)
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = llama_cpp.llama_context_default_params()
    n_ctx = len(chunks[0])
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
    cparams.n_threads = cparams.n_threads_batch = 1  # (its spinning threads crawl on a busy machine)
    cparams.cb_eval = cb
    cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:
        for chunk in chunks:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            # every position an output, as llama-imatrix asks (else the last block's feed-forward
            # runs on the output rows only)
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, True
                batch.seq_id[i][0] = 0
            batch.n_tokens = n_ctx
            assert llama_cpp.llama_decode(ctx, batch) == 0
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return {k: (v[0], v[1]) for k, v in acc.items()}


def test_matches_llama_cpp(smollm2_path: Path, tinyshakespeare: str) -> None:
    """Our sums against llama.cpp's own (its tokens and chunks, its CPU kernels): the same weights,
    counts equal, each weight's sums close in the 2-norm over the columns. Both engines round the
    activations (8-bit for the quantized dot products, f16 keys and values): measured against a
    float64 forward pass over the same dequantized weights, each is off by 0.1-0.5% on the inputs
    that come straight from an RMSNorm (q, k, v, gate, up) and by 1.5% (median; 3% worst) on the
    attention output and the GLU product (attn_output, ffn_down), and the two by as much from
    each other; hence 1% and 5%."""
    with Model(smollm2_path, n_ctx=128, n_threads=2) as model:
        res = compute(model, _text(tinyshakespeare), n_ctx=128, n_chunks=2, ppl=False)
    ref = _llama_cpp_sums(smollm2_path, _llama_cpp_chunks(smollm2_path, _text(tinyshakespeare), 128, 2))
    m = res.imatrix
    assert sorted(m.entries) == sorted(ref)
    for name, (sums, count) in ref.items():
        e = m.entries[name]
        assert e.counts.tolist() == [count] == [256]
        tol = 0.05 if name.endswith(("attn_output.weight", "ffn_down.weight")) else 0.01
        assert np.linalg.norm(e.sums[0] - sums) / np.linalg.norm(sums) < tol, name
