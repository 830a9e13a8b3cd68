"""Gemma 4 (gguf arch gemma4) in the engine, on tiny random models: against the numpy float64
re-implementation of transformers' Gemma 4 text model (tests/tiny_gemma4.py) and against
llama.cpp on the same files, at F32 and Q8_0.

What is tested: per-layer head sizes and key/value head counts (sliding vs full attention),
per-layer query head counts and feed-forward widths (arrays), the proportional rope of the full
layers (rope_freqs) and the sliding layers' own base, q/k/v norms, values from the key projection
(attention_k_eq_v), unscaled scores, post norms, layer_output_scale, the final soft-cap; the E2B /
E4B per-layer embeddings and the KV-shared last layers (no cache of their own). Text only: the
bidirectional sliding attention of image tokens does not arise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import GGUFError, Model
from test_gemma import rel_err
from tiny_gemma4 import Gemma4Config, make_weights, reference_logits, write_gguf
from tiny_model import F32_LOGITS_TOL

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]

DENSE = Gemma4Config(seed=51)  # 31B-like: sliding 16-wide heads (2 KV), full 32-wide (1 KV, K as V)
VARIANT = Gemma4Config(swa=(True, False, True, True, False), n_head_full=2, k_eq_v=False, tied_output=False,
                       final_softcap=0.0, seed=52)  # per-layer query heads, v_proj everywhere, no cap
E2B = Gemma4Config(swa=(True, False, True, False, True, True, False), n_embd_per_layer=32, n_kv_shared=3,
                   double_wide_shared=True, write_softcap=False, seed=53)  # per-layer inputs, shared KV
MOE = Gemma4Config(n_expert=4, n_expert_used=2, seed=57)  # 26B-A4B-like: fused gate/up experts beside the MLP
MOE_SPLIT = replace(MOE, fused_experts=False, swa=(True, False, True, False), seed=56)
CONFIGS = [DENSE, VARIANT, E2B, MOE]
IDS = ["dense", "variant", "e2b", "moe"]


def tiny(tmp_path, cfg: Gemma4Config, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-gemma4-{cfg.seed}.gguf"
    held = write_gguf(make_weights(cfg), path, **kw)
    return str(path), held


@pytest.mark.parametrize("cfg", [*CONFIGS, MOE_SPLIT], ids=[*IDS, "moe-split"])
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, reference_logits(cfg, held, TOKENS)).max() < F32_LOGITS_TOL


def test_each_difference_is_visible():
    """The reference without the window, with the sliding layers at the global base, with the
    full layers' rope over all dimensions, with other soft-caps: each far from the real thing on
    TOKENS, so the tests can fail."""
    held = make_weights(DENSE).weights
    ref = reference_logits(DENSE, held, TOKENS)
    for v in (replace(DENSE, sliding_window=64), replace(DENSE, rope_base_swa=DENSE.rope_base),
              replace(DENSE, partial_rotary_full=1.0), replace(DENSE, final_softcap=0.0)):
        assert rel_err(reference_logits(v, held, TOKENS), ref).max() > 1e-2
    no_scalar = {k: x for k, x in held.items() if "layer_output_scale" not in k}
    assert rel_err(reference_logits(DENSE, no_scalar, TOKENS), ref).max() > 1e-2
    moe = make_weights(MOE).weights  # the routed experts and their down scales
    ref = reference_logits(MOE, moe, TOKENS)
    no_scale = {k: (np.ones_like(x) if k.endswith("down_exps.scale") else x) for k, x in moe.items()}
    assert rel_err(reference_logits(MOE, no_scale, TOKENS), ref).max() > 1e-2
    assert rel_err(reference_logits(replace(MOE, n_expert_used=1), moe, TOKENS), ref).max() > 1e-2
    e2b = make_weights(E2B).weights
    ref = reference_logits(E2B, e2b, TOKENS)
    for v in (replace(E2B, n_kv_shared=0, double_wide_shared=False), replace(E2B, write_softcap=True)):
        w = e2b if v.n_kv_shared else {**e2b, **make_weights(v).weights}
        assert rel_err(reference_logits(v, w, TOKENS), ref).max() > 1e-2


@pytest.mark.reference
@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("cfg", [*CONFIGS, MOE_SPLIT], ids=[*IDS, "moe-split"])
def test_matches_llama_cpp(tmp_path, cfg, wtype):
    """llama.cpp reads the same file: its logits agree with ours and with the float64 reference on
    the weights the file holds (so the reference's layer shapes, ropes and norms are llama.cpp's)."""
    if wtype != "F32":  # (wider, as tests/test_model_reference.py's budgets)
        cfg = replace(cfg, n_embd=256, n_ff=512)
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    ref = reference_logits(cfg, held, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    if wtype == "F32":
        assert rel_err(theirs, ref).max() < 1e-3  # llama.cpp's f16 KV cache and f16 gelu table
        assert rel_err(ours, theirs).max() < 1e-3
        assert rel_err(ours, ref).max() < F32_LOGITS_TOL
    else:  # each engine's 8-bit activations: both ~1e-2 from float64
        assert rel_err(theirs, ref).max() < 2e-2
        assert rel_err(ours, theirs).max() < 2e-2
        assert rel_err(ours, ref).max() < 2e-2


@pytest.mark.parametrize("cfg", [MOE, MOE_SPLIT], ids=["moe", "moe-split"])
def test_quantized_experts(tmp_path, cfg):
    """Q8_0 experts (fused and split) within the engine budget of the float64 reference on the
    weights the file holds, without llama.cpp. (Seeds matter here: with seed 55 both engines' 8-bit
    activations flip the same near tie of the router for one token, 0.18 from float64.)"""
    cfg = replace(cfg, n_embd=256, n_ff=512)
    path, held = tiny(tmp_path, cfg, weight_type="Q8_0")
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), reference_logits(cfg, held, TOKENS)).max() < 2e-2


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("n_batch", [1, 4, 64])
def test_decode_paths_agree(tmp_path, cfg, n_batch):
    """Prompts cut into batches (with n_batch 1 and 4 the sliding layers' caches are rings of 6 and
    9 cells) and token by token through the cache: the reference's logits."""
    path, held = tiny(tmp_path, cfg)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_batch=n_batch, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < F32_LOGITS_TOL
        m.reset()
        steps = np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(len(TOKENS))])
    assert rel_err(steps, ref).max() < F32_LOGITS_TOL


def test_two_sequences_in_one_batch(tmp_path):
    from splitllm import _core

    path, held = tiny(tmp_path, E2B)
    other = TOKENS[::-1]
    m = _core.Model(path, n_ctx=128, n_seq_max=2, n_threads=2)
    n = len(TOKENS)
    pos = np.concatenate([np.arange(n), np.arange(n)]).astype(np.int32)
    out = m.decode(np.array(TOKENS + other, np.int32), pos, np.array([0] * n + [1] * n, np.int32))
    assert rel_err(out[:n], reference_logits(E2B, held, TOKENS)).max() < F32_LOGITS_TOL
    assert rel_err(out[n:], reference_logits(E2B, held, other)).max() < F32_LOGITS_TOL


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_quantized_kv_cache(tmp_path, kv):
    """A quantized cache of both head sizes (rotated keys and values), the shared layers reading it."""
    cfg = replace(E2B, head_dim=32, head_dim_full=64, seed=54)
    path, held = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_batch=4, n_threads=2, type_k=kv, type_v=kv) as m:
        err = rel_err(m.logits(TOKENS), reference_logits(cfg, held, TOKENS)).max()
    assert err < {"q8_0": 2e-2, "q4_0": 2e-1}[kv]


def test_shared_layers_hold_no_cache(tmp_path):
    """The KV-shared layers allocate no cache: in the model's placement, in its memory and in the
    plan from the header; each other layer holds its own heads' rows (the sliding ones a ring)."""
    from splitllm.plan import plan

    path, _ = tiny(tmp_path, E2B)
    ctx, ring = 64, E2B.sliding_window + 4

    def row(i: int) -> int:  # f16 K and V of one cell
        return 2 * 2 * E2B.n_kv_of(i) * E2B.head_dim_of(i)

    owners = [i for i in range(E2B.n_layer) if not E2B.shared(i)]
    want = {f"blk.{i}": row(i) * (ring if E2B.swa[i] else ctx) for i in owners}
    with Model(path, n_ctx=ctx, n_batch=4, n_threads=2) as m:
        assert {p["name"]: p["kv_bytes"] for p in m.placement if p["kv_bytes"]} == want
        assert sum(d["kv"] for d in m._core.memory) == sum(want.values())
    p = plan(path, n_ctx=ctx, n_batch=4, cpu_memory="1GiB")
    assert {lp.name: lp.kv_bytes for lp in p.layers if lp.kv_bytes} == want
    assert p.kv_bytes == sum(want.values())
    assert p.kv_bytes_per_token == sum(row(i) for i in owners if not E2B.swa[i])


@pytest.mark.parametrize("cfg", [E2B, MOE], ids=["e2b", "moe"])
def test_plan_counts_every_weight(tmp_path, cfg):
    """The plan's weights are the file's tensors (the per-layer embedding table and projection,
    the per-layer input and expert matrices and norms), to within the few floats left out."""
    from gguf import GGUFReader
    from splitllm.plan import plan

    path, _ = tiny(tmp_path, cfg, weight_type="Q8_0")
    tensor_bytes = sum(int(t.n_bytes) for t in GGUFReader(path).tensors)
    weights = plan(path, n_ctx=64, n_batch=4, cpu_memory="1GiB").device("CPU").weights
    assert abs(weights - tensor_bytes) < 0.002 * tensor_bytes


def test_state_round_trip(tmp_path):
    """A saved state (the layers that own a cache) loaded into a fresh model continues the text."""
    path, held = tiny(tmp_path, E2B)
    with Model(path, n_ctx=64, n_threads=2) as m:
        m.eval_prompt(TOKENS[:12])
        state = m.save_state()
    with Model(path, n_ctx=64, n_threads=2) as m:
        m.load_state(state)
        n0 = m.n_eval
        got = m.eval_prompt(TOKENS)
        assert m.n_eval - n0 == len(TOKENS) - 12
    assert rel_err(got, reference_logits(E2B, held, TOKENS)[-1]).max() < F32_LOGITS_TOL


@pytest.mark.parametrize("cfg", [DENSE, E2B, MOE], ids=["dense", "e2b", "moe"])
def test_gpu_layers_stay_on_the_cpu(tmp_path, monkeypatch, cfg):
    """Through the fake GPU: the blocks stay on the CPU with a warning, the output layer moves;
    a 40-token prompt runs the blocks' matmuls on the device by op offload."""
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    path, _ = tiny(tmp_path, cfg)
    prompt = TOKENS * 2
    with Model(path, n_ctx=64, n_threads=2, op_offload=False) as m:
        cpu = m.logits(prompt)
    with pytest.warns(RuntimeWarning, match="blocks of a gemma4 model run on the CPU"):
        m = Model(path, n_ctx=64, n_threads=2, n_gpu_layers=-1)
    with m:
        assert {p["name"]: p["device"] for p in m.placement if p["device"] != "CPU"} == {"output": "FAKEGPU0"}
        np.testing.assert_allclose(m.logits(prompt), cpu, rtol=1e-4, atol=1e-4)
        assert m._core.n_op_offload > 0


@pytest.mark.parametrize(("change", "message"), [
    ({"gemma4.attention.key_length_swa": None}, r"gemma4.attention.key_length_swa' is missing"),
    ({"gemma4.attention.sliding_window_pattern": None},
     r"sliding_window_pattern' \(one flag per layer\) is missing"),
    ({"gemma4.attention.sliding_window": None}, r"gemma4.attention.sliding_window' is missing"),
    ({"gemma4.attention.key_length_swa": 15}, r"key_length_swa' = 15 must be even"),
    ({"gemma4.attention.shared_kv_layers": 4}, r"layer 3 would read the cache of layer 2"),
])
def test_bad_metadata_is_named(tmp_path, change, message):
    path, _ = tiny(tmp_path, E2B, metadata=change)
    with pytest.raises(GGUFError, match=message):
        Model(path, n_ctx=64)


@pytest.mark.parametrize("name", ["blk.1.attn_k_norm.weight", "blk.0.attn_q_norm.weight", "rope_freqs.weight",
                                  "blk.2.inp_gate.weight", "per_layer_proj_norm.weight",
                                  "blk.5.post_ffw_norm.weight"])
def test_missing_tensor_is_named(tmp_path, name):
    path = tmp_path / "bad.gguf"
    write_gguf(make_weights(E2B), path, skip=(name,))
    with pytest.raises(GGUFError, match=f"tensor '{name}' is missing"):
        Model(str(path), n_ctx=64)


def test_bad_experts_are_named(tmp_path):
    path = tmp_path / "bad.gguf"
    write_gguf(make_weights(MOE), path, metadata={"gemma4.expert_count": None})
    with pytest.raises(GGUFError, match=r"'blk.0.ffn_gate_inp.weight' but no metadata 'gemma4.expert_count'"):
        Model(str(path), n_ctx=64)
    for name in ("blk.1.pre_ffw_norm_2.weight", "blk.2.ffn_gate_inp.scale"):
        write_gguf(make_weights(MOE), path, skip=(name,))
        with pytest.raises(GGUFError, match=f"tensor '{name}' is missing"):
            Model(str(path), n_ctx=64)
