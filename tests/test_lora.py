"""LoRA adapters applied at run time (llama-cpp-python's ``lora_path`` / ``lora_scale``, llama.cpp's
``--lora`` / ``--lora-scaled``), on tiny random models: against the float64 reference forward pass
on the merged weights W + scale * alpha / rank * B A, and against llama.cpp on the same files."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import GGUFError, Model
from tiny_model import TinyConfig, make_weights, reference_logits, write_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def write_lora(path: Path, arch: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]], *, alpha: float = 0.0,
               dtype: str = "F32", metadata: dict | None = None) -> None:
    """An adapter GGUF as llama.cpp's convert_lora_to_gguf.py writes one: general.type 'adapter',
    adapter.type 'lora', adapter.lora.alpha; per matrix NAME, NAME.lora_a (rank, K) and
    NAME.lora_b (rows, rank)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for key, value in (metadata or {}).items():
        w.add_string(key, value)
    for name, (a, b) in pairs.items():
        for suffix, x in ((".lora_a", a), (".lora_b", b)):
            w.add_tensor(name + suffix, x.astype(np.float16 if dtype == "F16" else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_pairs(held: dict[str, np.ndarray], names: list[str], rank: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        rows, k = held[name].shape
        out[name] = (rng.normal(0, 1 / np.sqrt(k), size=(rank, k)), rng.normal(0, 0.5, size=(rows, rank)))
    return out


def merged(held: dict[str, np.ndarray], adapters: list[tuple[dict, float, float]]) -> dict[str, np.ndarray]:
    """The weights with every adapter's update added: W + scale * alpha / rank * B A (alpha 0:
    scale * B A), A and B as the file holds them."""
    out = dict(held)
    for pairs, scale, alpha in adapters:
        for name, (a, b) in pairs.items():
            s = scale * alpha / a.shape[0] if alpha else scale
            out[name] = out[name] + s * (b.astype(np.float64) @ a.astype(np.float64))
    return out


def f16(pairs: dict) -> dict:
    return {k: (a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64))
            for k, (a, b) in pairs.items()}


LLAMA = TinyConfig(arch="llama", seed=51)
LLAMA_NAMES = ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.attn_output.weight",
               "blk.1.ffn_up.weight", "blk.0.ffn_down.weight", "output.weight"]


@pytest.fixture
def llama(tmp_path):
    path = tmp_path / "base.gguf"
    held = write_gguf(make_weights(LLAMA), path)
    return path, held


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_matches_merged_weights(tmp_path, llama, dtype):
    path, held = llama
    pairs = random_pairs(held, LLAMA_NAMES, 4, 1)
    lora = tmp_path / "a.gguf"
    write_lora(lora, "llama", pairs, alpha=16.0, dtype=dtype)
    file_pairs = f16(pairs) if dtype == "F16" else pairs
    ref = reference_logits(LLAMA, merged(held, [(file_pairs, 0.7, 16.0)]), TOKENS)
    base = reference_logits(LLAMA, held, TOKENS)
    assert rel_err(base, ref).max() > 0.05  # the update is visible
    with Model(path, n_ctx=64, n_threads=2, lora_path=lora, lora_scale=0.7) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < (1e-4 if dtype == "F32" else 2e-3)


def test_two_adapters_and_a_negative_scale(tmp_path, llama):
    path, held = llama
    p1 = random_pairs(held, LLAMA_NAMES[:3], 4, 2)
    p2 = random_pairs(held, LLAMA_NAMES[2:], 8, 3)
    write_lora(tmp_path / "1.gguf", "llama", p1)
    write_lora(tmp_path / "2.gguf", "llama", p2, alpha=4.0)
    ref = reference_logits(LLAMA, merged(held, [(p1, 0.5, 0.0), (p2, -1.0, 4.0)]), TOKENS)
    both = [(tmp_path / "1.gguf", 0.5), (tmp_path / "2.gguf", -1.0)]
    with Model(path, n_ctx=64, n_threads=2, loras=both) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4
    with Model(path, n_ctx=64, n_threads=2, lora_path=tmp_path / "1.gguf", lora_scale=0.0) as m:  # 0: none
        assert rel_err(m.logits(TOKENS), reference_logits(LLAMA, held, TOKENS)).max() < 1e-4


@pytest.mark.parametrize("cfg,names", [
    (TinyConfig(arch="qwen2", seed=52), ["blk.0.attn_k.weight", "blk.1.ffn_gate.weight"]),
    (TinyConfig(arch="phi3", seed=53), ["blk.0.attn_qkv.weight", "blk.1.ffn_up.weight"]),
    (TinyConfig(arch="gemma3", n_layer=7, sliding_window=5, rope_base=1e6, seed=54),
     ["blk.0.attn_q.weight", "blk.3.ffn_gate.weight", "blk.5.attn_output.weight", "blk.6.ffn_down.weight"]),
], ids=["qwen2-biases", "phi3-fused", "gemma3-post-norms"])
def test_architectures(tmp_path, cfg, names):
    """Biases (qwen2), fused tensors split into row slices (phi3), post-norms and GeGLU (gemma3)."""
    path = tmp_path / "base.gguf"
    held = write_gguf(make_weights(cfg), path)
    pairs = random_pairs(held, names, 4, 5)
    write_lora(tmp_path / "a.gguf", cfg.arch, pairs, alpha=8.0)
    ref = reference_logits(cfg, merged(held, [(pairs, 1.5, 8.0)]), TOKENS)
    with Model(path, n_ctx=64, n_threads=2, lora_path=tmp_path / "a.gguf", lora_scale=1.5) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4


def test_split_across_devices_and_plan(tmp_path, llama, monkeypatch):
    """Through the fake GPU (the CPU kernels behind the GPU interface), with the updates uploaded
    with their layers: the CPU's logits exactly; the plan counts the adapters' bytes as the model
    holds them."""
    from splitllm.plan import plan

    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    path, held = llama
    pairs = random_pairs(held, LLAMA_NAMES, 4, 6)
    lora = tmp_path / "a.gguf"
    write_lora(lora, "llama", pairs, alpha=16.0)
    kw = dict(n_ctx=64, n_batch=32, n_threads=2, loras=[(lora, 0.7)])
    with Model(path, **kw) as m:
        cpu = m.logits(TOKENS)
    for ngl in (1, 2, -1):
        with Model(path, n_gpu_layers=ngl, **kw) as m:
            np.testing.assert_array_equal(m.logits(TOKENS), cpu)
            mem = {d["name"]: d for d in m._engine().memory}
        p = plan(path, n_ctx=64, n_batch=32, n_threads=2, n_gpu_layers=ngl, loras=[(lora, 0.7)],
                 cpu_memory="1GiB", gpu_memory="1GiB")
        for d in p.devices:
            assert (d.weights, d.kv_cache, d.buffers) == (mem[d.name]["weights"], mem[d.name]["kv"],
                                                          mem[d.name]["buffers"]), (ngl, d.name)
    bare = plan(path, n_ctx=64, n_batch=32, n_threads=2, cpu_memory="1GiB").device("CPU").weights
    with_lora = plan(path, n_ctx=64, n_batch=32, n_threads=2, cpu_memory="1GiB", loras=[(lora, 0.7)])
    sizes = sum(a.size * 4 + b.size * 4 for a, b in pairs.values())  # A from the file, B as F32
    assert with_lora.device("CPU").weights == bare + sizes


def test_cli_options(tmp_path, llama, capsys):
    from splitllm.cli import main

    path, held = llama
    pairs = random_pairs(held, LLAMA_NAMES, 4, 7)
    lora = tmp_path / "a.gguf"
    write_lora(lora, "llama", pairs)
    outs = []
    scaled = ["--lora-scaled", f"{lora}:1.0"], ["--lora-scaled", f"{lora}:0"]
    for extra in ([], ["--lora", str(lora)], *scaled):
        assert main(["run", str(path), "-p", "the", "-n", "8", "--temp", "0", "-c", "64", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[1] == outs[2] and outs[3] == outs[0] and outs[1] != outs[0]
    # llama.cpp's lists: --lora A,B and --lora-scaled A:S,B:S; splitllm plan takes them too
    from splitllm.cli import build_parser, lora_list

    run = ["run", str(path), "-p", "x"]
    args = build_parser().parse_args([*run, "--lora", f"{lora},{lora}", "--lora-scaled", f"{lora}:0.5"])
    assert lora_list(args) == [(str(lora), 1.0), (str(lora), 1.0), (str(lora), 0.5)]
    with pytest.raises(ValueError, match=r"expected FNAME:SCALE"):
        lora_list(build_parser().parse_args([*run, "--lora-scaled", str(lora)]))
    assert main(["plan", str(path), "-c", "64", "--cpu-memory", "1GiB", "--json", "--lora", str(lora)]) == 0


def test_bad_adapters_are_named(tmp_path, llama):
    path, held = llama
    good = random_pairs(held, LLAMA_NAMES[:1], 4, 8)
    bad = tmp_path / "bad.gguf"
    cases = [
        (dict(arch="qwen2", pairs=good),
         r"a LoRA adapter for architecture 'qwen2', but the model is 'llama'"),
        (dict(arch="llama", pairs={"blk.9.attn_q.weight": good["blk.0.attn_q.weight"]}),
         r"LoRA of 'blk.9.attn_q.weight': no such matrix in the model"),
        (dict(arch="llama", pairs={"token_embd.weight": (np.ones((4, 64)), np.ones((320, 4)))}),
         r"the token embedding's is not supported"),
        (dict(arch="llama", pairs={"blk.0.attn_q.weight": (np.ones((4, 64)), np.ones((32, 4)))}),
         r"LoRA of 'blk.0.attn_q.weight': A is \[64, 4, 1, 1\] and B \[4, 32, 1, 1\], but the matrix is "
         r"\[64, 64\]"),
    ]
    for kw, match in cases:
        write_lora(bad, kw["arch"], kw["pairs"])
        with pytest.raises(GGUFError, match=match):
            Model(path, n_ctx=64, lora_path=bad)
    # not an adapter at all: the base model itself
    with pytest.raises(GGUFError, match=r"not a LoRA adapter"):
        Model(path, n_ctx=64, lora_path=path)
    # a lone half of a pair
    w = gguf.GGUFWriter(str(bad), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"has no 'blk.0.attn_q.weight.lora_b'"):
        Model(path, n_ctx=64, lora_path=bad)
    with pytest.warns(RuntimeWarning, match=r"lora_base is ignored"):
        Model(path, n_ctx=64, lora_base=str(path)).close()
    with pytest.raises(ValueError, match=r"LoRA scale must be a finite number"):
        Model(path, n_ctx=64, lora_path=lora_of(tmp_path, held), lora_scale=float("nan"))
    tied = tmp_path / "tied.gguf"
    write_gguf(make_weights(TinyConfig(arch="llama", tied_output=True, seed=57)), tied)
    write_lora(bad, "llama", random_pairs({"output.weight": held["output.weight"]}, ["output.weight"], 4, 10))
    with pytest.raises(GGUFError, match=r"ties its output layer to token_embd.weight"):
        Model(tied, n_ctx=64, lora_path=bad)


def lora_of(tmp_path: Path, held: dict) -> Path:
    path = tmp_path / "good.gguf"
    write_lora(path, "llama", random_pairs(held, LLAMA_NAMES[:1], 4, 11))
    return path


@pytest.mark.reference
@pytest.mark.parametrize("cfg,names", [
    (LLAMA, LLAMA_NAMES),
    (TinyConfig(arch="gemma3", n_layer=7, sliding_window=5, rope_base=1e6, seed=55),
     ["blk.0.attn_q.weight", "blk.3.ffn_gate.weight", "blk.5.attn_output.weight", "blk.6.ffn_down.weight"]),
], ids=["llama", "gemma3"])
def test_matches_llama_cpp(tmp_path, cfg, names):
    """llama.cpp applies the same adapter file (llama-cpp-python's lora_path / lora_scale): its
    logits agree with ours and with the float64 reference on the merged weights."""
    path = tmp_path / "base.gguf"
    held = write_gguf(make_weights(cfg), path)
    pairs = random_pairs(held, names, 4, 9)
    lora = tmp_path / "a.gguf"
    write_lora(lora, cfg.arch, pairs, alpha=16.0)
    ref = reference_logits(cfg, merged(held, [(pairs, 0.7, 16.0)]), TOKENS)
    theirs = llama_cpp_logits(path, TOKENS, lora_path=str(lora), lora_scale=0.7)
    with Model(path, n_ctx=64, n_threads=2, lora_path=lora, lora_scale=0.7) as m:
        ours = m.logits(TOKENS)
    assert rel_err(theirs, ref).max() < 1e-3
    assert rel_err(ours, ref).max() < 3e-4  # f16 KV cache; the updates here are large (scale 2.8)
    assert rel_err(ours, theirs).max() < 1e-3


def test_op_offload_and_quantized_base(tmp_path, monkeypatch):
    """A quantized base model (Q8_0 matrices, F16 adapter): within the engine's Q8_0 budget of the
    merged reference; with the fake GPU and the blocks on the CPU, prompt batches of 32 tokens and
    more run their big matmuls on the device (op offload) and the updates beside them: the CPU's
    logits exactly."""
    from splitllm.quants import quantize

    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    cfg = TinyConfig(arch="llama", n_embd=128, n_head=4, n_head_kv=2, n_ff=256, seed=58)
    path = tmp_path / "q8.gguf"
    held = write_gguf(make_weights(cfg), path, weight_type="Q8_0", quantize=quantize)
    names = ["blk.0.attn_q.weight", "blk.1.ffn_gate.weight", "blk.1.ffn_down.weight"]
    pairs = random_pairs(held, names, 8, 12)
    lora = tmp_path / "a.gguf"
    write_lora(lora, "llama", pairs, alpha=8.0, dtype="F16")
    tokens = [(7 * i + 3) % 300 for i in range(40)]
    ref = reference_logits(cfg, merged(held, [(f16(pairs), 1.0, 8.0)]), tokens)
    with Model(path, n_ctx=64, n_threads=2, lora_path=lora, op_offload=False) as m:
        cpu = m.logits(tokens)
    assert rel_err(cpu, ref).max() < 3e-2  # Q8_0 activations for the base, f16 ones for the F16 adapter
    with Model(path, n_ctx=64, n_threads=2, lora_path=lora, n_gpu_layers=1) as m:
        np.testing.assert_array_equal(m.logits(tokens), cpu)
        assert m._engine().n_op_offload > 0


def test_attention_lora_on_a_mixture_of_experts(tmp_path):
    cfg = TinyConfig(arch="qwen3moe", n_expert=4, n_expert_used=2, n_ff_exp=64, key_length=32, seed=59)
    path = tmp_path / "moe.gguf"
    held = write_gguf(make_weights(cfg), path)
    pairs = random_pairs(held, ["blk.0.attn_q.weight", "blk.1.attn_output.weight"], 4, 13)
    write_lora(tmp_path / "a.gguf", "qwen3moe", pairs)
    ref = reference_logits(cfg, merged(held, [(pairs, 1.0, 0.0)]), TOKENS)
    with Model(path, n_ctx=64, n_threads=2, lora_path=tmp_path / "a.gguf") as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4
    experts = {"blk.0.ffn_up_exps.weight": (np.ones((4, 64)), np.ones((4 * 64, 4)))}
    write_lora(tmp_path / "b.gguf", "qwen3moe", experts)
    with pytest.raises(GGUFError, match=r"mixture-of-experts tensors are not supported"):
        Model(path, n_ctx=64, lora_path=tmp_path / "b.gguf")


def test_norm_pairs_are_skipped_with_a_warning(tmp_path, llama):
    """mergekit's adapters carry norm deltas as pairs: llama.cpp skips them, and so does splitllm,
    saying so; the matrices' updates still apply."""
    path, held = llama
    pairs = random_pairs(held, LLAMA_NAMES[:1], 4, 14)
    norm = {"blk.0.attn_norm.weight": (np.ones((1, 64)), np.ones((1, 1)))}
    write_lora(tmp_path / "a.gguf", "llama", {**pairs, **norm})
    with pytest.warns(RuntimeWarning, match=r"1 LoRA pairs of norm weights are skipped"):
        m = Model(path, n_ctx=64, n_threads=2, lora_path=tmp_path / "a.gguf")
    with m:
        ref = reference_logits(LLAMA, merged(held, [(pairs, 1.0, 0.0)]), TOKENS)
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4


@pytest.mark.parametrize("arch", ["falcon-h1", "qwen3moe"])
def test_updates_of_host_parts_stay_on_the_host(tmp_path, monkeypatch, arch):
    """A GPU block whose mixer (falcon-h1's attention beside its Mamba-2) or experts stay on the
    host: the updates of its attention stay there with it (falcon-h1), those of the moved matrices
    go up; the CPU's logits exactly (FAKEGPU0 runs the CPU's kernels), at every split."""
    from tiny_falcon_h1 import FalconConfig, write_falcon_gguf

    path = tmp_path / f"{arch}.gguf"
    if arch == "falcon-h1":
        write_falcon_gguf(FalconConfig(), path)
    else:
        cfg = TinyConfig(arch=arch, n_expert=4, n_expert_used=2, n_ff_exp=64, key_length=32, seed=59)
        write_gguf(make_weights(cfg), path)
    held = {t.name: np.asarray(t.data, np.float64) for t in gguf.GGUFReader(path).tensors}
    names = [n for n in held if re.fullmatch(r"blk\.\d+\.(attn_q|attn_output|ffn_up)\.weight", n)]
    write_lora(tmp_path / "a.gguf", arch, random_pairs(held, names, 4, 21), alpha=8.0)
    kw = dict(n_ctx=64, n_batch=32, n_threads=2, loras=[(tmp_path / "a.gguf", 0.6)])
    with Model(path, **kw) as m:
        cpu = m.logits(TOKENS)
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    for ngl in (2, -1):
        with pytest.warns(RuntimeWarning, match="host memory"):
            m = Model(path, n_gpu_layers=ngl, **kw)
        with m:
            np.testing.assert_array_equal(m.logits(TOKENS), cpu)
