"""deepseek2 (DeepSeek-V2 / V3 GGUFs) on tiny random models: multi-head latent attention with the
latent cache (and the older attn_kv_b files' per-head cache), q lora or not, YaRN's mscale, leading
dense blocks, routed experts (V2: softmax; V3: sigmoid, selection bias, group-limited choice,
normalized and scaled weights) and shared experts; against the float64 reference written from
DeepSeek's modeling code (tests/tiny_deepseek.py) and llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest
import routed_checks as RC
import tiny_deepseek
from lcpp import llama_cpp_logits
from routed_checks import rel_err
from splitllm import Error, GGUFError, Model
from splitllm.plan import plan
from tiny_deepseek import make_weights, reference_logits, v2, v3, write_gguf
from tiny_model import F32_LOGITS_TOL

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions
YARN = {"factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.707, "mscale_all_dim": 0.707}

CONFIGS = {
    "v2": v2(),
    "v2-q-lora": v2(q_lora_rank=32, seed=2),
    "v2-kv-b": v2(mla=False, seed=3),
    "v3": v3(),
    "v3-no-q-lora": v3(q_lora_rank=0, seed=4),
    "v3-yarn": v3(rope_scaling=YARN, seed=5),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each config's F32 file and its weights (as held)."""
    return RC.write_files(
        tmp_path_factory.mktemp("deepseek2"), {n: (tiny_deepseek, c) for n, c in CONFIGS.items()}
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(files, name):
    """One pass, passes of 5 tokens through the cache, then token by token: the reference's logits;
    the cached steps equal the one pass to float rounding (a few float16 cache values rounded the
    other way by the other kernels of a one-token batch: up to 5e-5)."""
    cfg, path, held = files[name]
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        whole = m.logits(TOKENS)
    assert rel_err(whole, ref) < F32_LOGITS_TOL
    with Model(path, n_ctx=64, n_batch=5, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref) < F32_LOGITS_TOL
        m.reset()
        steps = np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(len(TOKENS))])
    assert rel_err(steps, ref) < F32_LOGITS_TOL
    assert rel_err(steps, whole) < 1e-4


def test_reference_sees_every_part(files):
    """The parts the tests rely on change the reference's logits (so a engine that left one out
    would fail): the selection bias, the shared experts, the q lora norm, the latent norm, YaRN."""
    cfg, _, held = files["v3-yarn"]
    ref = reference_logits(cfg, held, TOKENS)
    for part in ("exp_probs_b.bias", "ffn_down_shexp", "attn_kv_a_norm"):
        changed = {k: (v * 0.5 if part in k else v) for k, v in held.items()}
        assert rel_err(reference_logits(cfg, changed, TOKENS), ref) > 1e-2, part
    plain = v3(**{**cfg.__dict__, "rope_scaling": None})
    assert rel_err(reference_logits(plain, held, TOKENS), ref) > 1e-2
    ungrouped = v3(**{**cfg.__dict__, "n_group": 1, "topk_group": 1})
    assert rel_err(reference_logits(ungrouped, held, TOKENS), ref) > 1e-2


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_llama_cpp(files, name):
    """F32 weights: llama.cpp's logits within its own distance to the reference (3e-4 to 6e-4,
    its float16 attention)."""
    cfg, path, held = files[name]
    RC.f32_against_llama_cpp(path, reference_logits(cfg, held, TOKENS), TOKENS)


@pytest.fixture
def no_repack(monkeypatch):
    """llama.cpp without its CPU repacked weight buffers: 0.3.36 crashes on these tiny deepseek2
    files with them for Q8_0 weights (a segfault, or GGML_ASSERT(*cur_backend_id != -1) in
    ggml-backend.cpp; even with attn_q alone in Q8_0); the plain CPU buffers compute the same."""
    low = pytest.importorskip("llama_cpp").llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(low, "llama_model_default_params", params)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["v2", "v3", "v2-kv-b"])
def test_q8_0_matches_llama_cpp(tmp_path, name, no_repack):
    """Q8_0 weights: per token, llama.cpp's logits on the same file and the reference's on the
    weights as the file holds them. Both engines' 8-bit activations flip near ties of the tiny
    random routers at a few tokens (measured: medians 1.3e-2 to 1.8e-2 from the reference for both
    engines, each with its own outliers up to 0.06-0.21)."""
    cfg = CONFIGS[name]
    path = tmp_path / "q8.gguf"
    held = write_gguf(cfg, make_weights(cfg), path, weight_type="Q8_0")
    RC.q8_against_llama_cpp(path, lambda w: reference_logits(cfg, w, TOKENS), held, TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["v2", "v3"])
def test_greedy_tokens_match_llama_cpp(files, name):
    """12 greedy tokens after a prompt of 6, F32 weights: llama.cpp's."""
    _, path, _ = files[name]
    RC.greedy_matches_llama_cpp(path, TOKENS[:6])


@pytest.mark.parametrize("name", ["v2", "v2-kv-b"])
def test_plan_kv_bytes(files, name):
    """The plan's KV bytes per token: the latent and rotary part of each layer (one f16 row of
    kv_lora_rank + n_rot), or each head's key and value; all of its bytes are the engine's."""
    cfg, path, _ = files[name]
    p = plan(path, n_ctx=128, n_batch=16, n_threads=2)
    if cfg.mla:
        per_layer = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2
    else:
        per_layer = cfg.n_head * (cfg.qk_head_dim + cfg.v_head_dim) * 2
    assert p.kv_bytes_per_token == cfg.n_layer * per_layer
    cpu = p.device("CPU")
    with Model(path, n_ctx=128, n_batch=16, n_threads=2) as m:
        engine = {d["name"]: d for d in m._engine().memory}["CPU"]
    assert (cpu.buffers, cpu.weights, cpu.kv_cache) == (engine["buffers"], engine["weights"], engine["kv"])


@pytest.mark.reference
def test_quantized_latent_cache(tmp_path):
    """A q8_0 cache of the latent (rotary dims a whole number of blocks): llama.cpp's logits with
    the same cache (measured: 1.1e-2 at most, median 3.4e-3; both 6e-3 from the reference's in
    median, the same near tie flipped at one token); K and V types that differ, or a latent
    row not of whole blocks: clear errors."""
    cfg = v2(qk_rope_head_dim=32, seed=6)
    path = tmp_path / "rot32.gguf"
    held = write_gguf(cfg, make_weights(cfg), path)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2, type_k="q8_0", type_v="q8_0") as m:
        ours = m.logits(TOKENS)
    theirs = llama_cpp_logits(path, TOKENS, type_k=8, type_v=8, flash_attn=True)  # (8: GGML_TYPE_Q8_0)
    assert rel_err(ours, theirs) < 2e-2
    assert np.median(np.abs(ours - ref).max(axis=-1)) / np.abs(ref).max() < 1e-2
    with pytest.raises(Error, match="type_k and type_v must be equal"):
        Model(path, n_ctx=64, type_k="q8_0", type_v="f16")
    odd = tmp_path / "v2.gguf"
    write_gguf(v2(), make_weights(v2()), odd)
    with pytest.raises(Error, match="needs a head size divisible by 32 \\(head size 48, of values 32\\)"):
        Model(odd, n_ctx=64, type_k="q8_0", type_v="q8_0")


def test_bad_files(tmp_path):
    """Missing tensors and unsupported metadata: errors that name the file and the field."""
    cfg = v3()
    w = make_weights(cfg)
    del w["blk.1.attn_k_b.weight"]
    path = tmp_path / "missing.gguf"
    write_gguf(cfg, w, path)
    with pytest.raises(GGUFError, match="missing.gguf: tensor 'blk.1.attn_k_b.weight' is missing"):
        Model(path, n_ctx=32)
    temp = v3(extra={"deepseek2.attention.temperature_scale": 0.1})
    path = tmp_path / "temp.gguf"
    write_gguf(temp, make_weights(temp), path)
    with pytest.raises(GGUFError, match="temperature_scale"):
        Model(path, n_ctx=32)


@pytest.mark.parametrize("name", ["v3", "v2-kv-b"])
def test_gpu_layers_fall_back_to_cpu(files, name, monkeypatch):
    """With a (fake) GPU: the blocks stay on the CPU with a warning, the output layer goes to the
    GPU, and a batch of 32 (op offload of the dense block's matmuls) gives the CPU's logits."""
    m = RC.with_fake_gpu(files[name][1], TOKENS, monkeypatch)
    assert len(m.warnings) == 1 and "latent attention" in m.warnings[0]
    assert [p["device"] for p in m.placement] == ["CPU"] * 4 + ["FAKEGPU0"]
    assert m.n_op_offload == 3  # each block once (the dense one's feed-forward offloaded)


def test_state_round_trip_and_refusals(files):
    """A saved state (the latent rows alone) goes back into the cache and decoding goes on as if
    never interrupted; importance-matrix collection and LoRA adapters are refused clearly."""
    _, path, _ = files["v3"]
    RC.state_round_trip(path, TOKENS)
    from splitllm import _core

    with pytest.raises(Error, match="importance-matrix collection is not supported"):
        _core.Model(str(path), n_ctx=64, n_threads=1).imatrix_start()
    with pytest.raises(Error, match="LoRA adapters are not supported on a deepseek2 model"):
        _core.Model(str(path), n_ctx=64, n_threads=1, loras=[("adapter.gguf", 1.0)])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_placement_counts_every_weight(files, name):
    """model.placement's bytes of each block are the file's bytes of its tensors (gguf-py's reader):
    the latent attention's matrices, its norms, the selection bias and the shared experts too."""
    import re

    import gguf

    _, path, _ = files[name]
    per_block: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if m := re.match(r"(blk\.\d+)\.", t.name):
            per_block[m.group(1)] = per_block.get(m.group(1), 0) + int(t.n_bytes)
    with Model(path, n_ctx=64, n_threads=2) as model:
        got = {p["name"]: p["weight_bytes"] for p in model.placement if p["name"].startswith("blk.")}
    assert got == per_block
