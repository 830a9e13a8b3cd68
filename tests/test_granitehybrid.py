"""Granite 4.0 H (gguf arch granitehybrid) on tiny random models: Mamba-2 layers between attention
layers, against the float64 re-implementation of transformers' GraniteMoeHybridForCausalLM
(tests/tiny_mamba2.py) and against llama.cpp on the same files; the state each sequence keeps
beside its KV cache (the convolution's last inputs and the scan's state) across passes,
sequences and saved states."""

from __future__ import annotations

import functools
from dataclasses import replace

import gguf
import numpy as np
import pytest
from lcpp import llama_cpp_logits
from recurrent_checks import (
    plan_equals_model,
    prefix_reused_only_where_the_state_is,
    rel_err,
    same_greedy_as_llama_cpp,
    slot_continues_only_where_it_stopped,
    state_saved_and_loaded,
    two_sequences_equal_each_alone,
)
from routed_checks import split_with_host_parts
from splitllm import GGUFError, Model
from tiny_mamba2 import ATTN, MAMBA, HybridConfig, hybrid_reference_logits, write_hybrid_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
DENSE = HybridConfig(seed=61)  # (H-Micro's shape: a dense feed-forward, one group)
# H-Tiny / H-Small in small: experts with a shared one; here two groups of B and C, an untied
# output, rotary attention (as the non-hybrid Granite 4.0 files write it) and a convolution without bias
MOE = HybridConfig(
    n_layer=5,
    layer_types=(MAMBA, ATTN, MAMBA, MAMBA, ATTN),
    n_expert=4,
    n_ff_shexp=64,
    n_group=2,
    tied_output=False,
    seed=62,
)
ROPE = replace(DENSE, rope=True, conv_bias=False, d_conv=3, n_head_kv=1, seed=63)
OPTS = dict(n_ctx=64, n_threads=2)


def tiny(tmp_path, cfg: HybridConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-granitehybrid-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    return str(path), write_hybrid_gguf(cfg, path, **kw)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    return tiny(tmp_path_factory.mktemp("granitehybrid"), DENSE)


@pytest.mark.parametrize("cfg", [DENSE, MOE, ROPE], ids=["dense", "moe-shared-2groups", "rope-nobias"])
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
        c = m.config
    assert c["recurrent"] and c["ssm"] == [cfg.d_conv, cfg.d_inner, cfg.d_state, cfg.ssm_heads, cfg.n_group]
    assert c["conv_layers"] == [i for i in range(cfg.n_layer) if cfg.is_mamba(i)]
    # (measured 2.5e-7 dense and rope, 9.5e-6 moe; llama.cpp 2.8e-5 .. 4.2e-5 from the same reference,
    # which rounds the K/V to f16 as both caches do)
    assert rel_err(ours, hybrid_reference_logits(cfg, held, TOKENS)).max() < 3e-5


def test_the_reference_sees_every_part(tmp_path, dense):
    """The float64 reference moves materially when the scan forgets its state (A -> -inf), the
    convolution's taps are reversed, the D skip or the gate's norm are dropped: the comparisons
    above see each of them, and the groups of the norm."""
    _, held = dense
    ref = hybrid_reference_logits(DENSE, held, TOKENS)

    def changed(suffix: str, f) -> dict[str, np.ndarray]:
        return {k: (f(v) if k.endswith(suffix) else v) for k, v in held.items()}

    for weights in (
        changed("ssm_a", lambda a: a * 1e6),
        changed("ssm_conv1d.weight", lambda k: k[:, ::-1]),
        changed("ssm_d", np.zeros_like),
        changed("ssm_dt.bias", lambda b: b + 2.0),
    ):
        assert rel_err(hybrid_reference_logits(DENSE, weights, TOKENS), ref)[1:].min() > 1e-3
    path, held = tiny(tmp_path, MOE)  # (two groups: normed over the whole d_inner it differs)
    ref = hybrid_reference_logits(MOE, held, TOKENS)
    assert rel_err(hybrid_reference_logits(replace(MOE, norm_groups=1), held, TOKENS), ref).max() > 1e-3


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
def test_matches_llama_cpp(tmp_path, wtype):
    """llama.cpp on the same file: within 1e-3 of ours at f32 with the same greedy continuation; at
    q8_0 ours no farther from float64 than 1.5x llama.cpp's distance."""
    cfg = MOE if wtype == "F32" else replace(MOE, n_embd=128, n_ff=256, n_ff_shexp=128)
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
    exact = hybrid_reference_logits(cfg, held, TOKENS)
    # (f32: ours 9.5e-6 from float64, llama.cpp 4.2e-5, 4.0e-5 apart; q8_0: ours 1.19e-2, llama.cpp
    # 1.16e-2, 1.0e-2 apart)
    assert rel_err(ours, theirs).max() < (1e-3 if wtype == "F32" else 3e-2)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 3e-5)
    if wtype != "F32":
        return
    same_greedy_as_llama_cpp(path, TOKENS[:8], 24)


@pytest.mark.parametrize("n_batch", [1, 5])
def test_chunked_prefill_then_decode_equals_one_pass(dense, n_batch):
    """A prompt in passes of n_batch tokens, then one token at a time: the logits of one pass over
    everything (the states carried from pass to pass)."""
    path, held = dense
    ref = hybrid_reference_logits(DENSE, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        one_pass = m.logits(TOKENS)
    with Model(path, n_batch=n_batch, **OPTS) as m:
        np.testing.assert_allclose(m.logits(TOKENS), one_pass, rtol=0, atol=1e-6 * np.abs(one_pass).max())
        m.eval_prompt(TOKENS[:12])
        steps = [m.eval_prompt(TOKENS[: i + 1]) for i in range(12, len(TOKENS))]
        assert m.n_eval == 2 * len(TOKENS)  # each step read one token
    assert rel_err(np.array(steps), ref[12:]).max() < 1e-5


def test_two_sequences_at_once_equal_each_alone(tmp_path):
    path, held = tiny(tmp_path, MOE)
    two_sequences_equal_each_alone(path, lambda t: hybrid_reference_logits(MOE, held, t), TOKENS, 1e-5)


def test_a_slot_continues_only_where_it_stopped(dense):
    path, held = dense
    ref = functools.partial(hybrid_reference_logits, DENSE, held)
    slot_continues_only_where_it_stopped(path, ref, TOKENS, 1e-5)
    with Model(path, **OPTS) as m:  # reset: the states start over
        m.logits(TOKENS[:7])
        m.reset()
        assert rel_err(m.logits(TOKENS[:5]), ref(TOKENS[:5])).max() < 1e-5


def test_prefix_reuse_and_saved_state(dense):
    path, held = dense
    ref = functools.partial(hybrid_reference_logits, DENSE, held)
    prefix_reused_only_where_the_state_is(path, ref, TOKENS, 1e-5)
    state_saved_and_loaded(path, ref, TOKENS, 1e-5)


def test_plan_and_placement_count_the_weights_and_states(tmp_path):
    """Each block's bytes are its tensors' bytes in the file (gguf-py's reader); the memory plan
    (from the header) and the loaded model count per slot each Mamba-2 layer's state,
    (d_conv - 1) x conv_dim + d_inner x d_state floats, with the attention layers' K/V."""
    from splitllm import _core

    cfg = MOE
    path, _ = tiny(tmp_path, cfg, weight_type="Q8_0")
    tensor_bytes: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        part = ".".join(t.name.split(".")[:2]) if t.name.startswith("blk.") else t.name.split(".")[0]
        tensor_bytes[part] = tensor_bytes.get(part, 0) + int(t.n_bytes)
    for p in _core.Model(path, n_ctx=64, n_threads=1).placement:
        if p["name"].startswith("blk."):
            assert p["weight_bytes"] == tensor_bytes[p["name"]], p["name"]
    cpu = plan_equals_model(path)
    n_mamba = sum(cfg.is_mamba(i) for i in range(cfg.n_layer))
    n_attn = cfg.n_layer - n_mamba
    kv = n_attn * 64 * cfg.n_head_kv * cfg.head_dim * 2 * 2  # K and V in f16
    state = (cfg.d_conv - 1) * cfg.conv_dim + cfg.d_inner * cfg.d_state
    assert cpu.kv_cache == kv + n_mamba * 2 * state * 4


def test_imatrix_collects_the_mamba2_projections(dense):
    """llama-imatrix's statistics of ssm_in and ssm_out: each sees every token, beside the others."""
    path, _ = dense
    with Model(path, **OPTS) as m:
        m.imatrix_start()
        m.logits(TOKENS)
        imx = m.imatrix_stop()
    names = [
        f"blk.{i}.ssm_{p}.weight" for i in range(DENSE.n_layer) if DENSE.is_mamba(i) for p in ("in", "out")
    ]
    assert set(names) < set(imx.entries) and "blk.2.attn_q.weight" in imx.entries
    for n in names:
        assert imx.entries[n].counts.tolist() == [len(TOKENS)]
        assert len(imx.entries[n].sums[0]) == (DENSE.n_embd if "ssm_in" in n else DENSE.d_inner)


def test_bad_files_are_refused(tmp_path):
    a = "granitehybrid."
    for changes, match in [({a + "ssm.state_size": None}, "ssm.state_size"),
                           ({a + "ssm.time_step_rank": 5}, "time_step_rank"),  # (heads do not divide d_inner)
                           ({a + "ssm.group_count": 3}, "group_count"),
                           ({a + "ssm.conv_kernel": 5}, "ssm_conv1d.weight"),  # (the kernels have 4 taps)
                           ({a + "ssm.inner_size": 96}, "ssm_")]:  # fmt: skip
        path, _ = tiny(tmp_path, DENSE, metadata_changes=changes)
        with pytest.raises(GGUFError, match=match):
            Model(path, **OPTS)


@pytest.mark.parametrize("ngl", [2, -1])
def test_gpu_split_keeps_the_mixers_on_the_host(dense, monkeypatch, ngl):
    """With a (fake) GPU: the Mamba-2 mixers (weights, states) stay on the host, the attention
    layers and feed-forwards go to the GPU; the placement splits the file's tensors so, and the
    logits are the CPU's exactly (routed_checks.split_with_host_parts)."""
    split_with_host_parts(dense[0], monkeypatch, ngl=ngl)

