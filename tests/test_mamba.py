"""Pure state-space models on tiny random files: mamba (Mamba-1, and Falcon-Mamba's RMS norms of dt,
B and C) and mamba2 (Mamba-2), against the float64 re-implementations of transformers'
MambaForCausalLM / FalconMambaForCausalLM / Mamba2ForCausalLM (tests/tiny_mamba.py) and against
llama.cpp on the same files; no attention layer (no KV cache), the per-sequence states kept, saved
and restored."""

from __future__ import annotations

import functools
from dataclasses import replace

import gguf
import numpy as np
import pytest
from recurrent_checks import (
    against_llama_cpp,
    batching_engine_slots,
    chunked_prefill_then_decode,
    plan_equals_model,
    prefix_reused_only_where_the_state_is,
    rel_err,
    scan_parts_matter,
    slot_continues_only_where_it_stopped,
    state_saved_and_loaded,
    two_sequences_equal_each_alone,
)
from splitllm import GGUFError, Model
from tiny_mamba import MambaConfig, falcon, mamba_reference_logits, write_mamba_gguf
from tiny_mamba2 import hybrid_reference_logits

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
CASES = {
    "mamba": MambaConfig(seed=71),
    "falcon-mamba": falcon(MambaConfig(seed=72, tied_output=False, d_conv=3)),
    "mamba2": MambaConfig(version=2, n_group=2, seed=73),  # (two groups of B, C and the gated norm)
}
OPTS = dict(n_ctx=64, n_threads=2)


def tiny(tmp_path, cfg: MambaConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-{cfg.arch}-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    return str(path), write_mamba_gguf(cfg, path, **kw)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> tuple[MambaConfig, str, dict[str, np.ndarray]]:
    cfg = CASES[request.param]
    return cfg, *tiny(tmp_path_factory.mktemp(request.param), cfg)


def test_f32_logits_match_float64_reference(case):
    """One pass, passes of 5 tokens, then token by token: the reference's logits (measured 2.1e-6
    mamba, 3.6e-6 falcon-mamba, 9.4e-7 mamba2; llama.cpp 8.1e-7, 7.1e-7, 5.3e-7)."""
    cfg, path, held = case
    ref = functools.partial(mamba_reference_logits, cfg, held)
    with Model(path, **OPTS) as m:
        c = m.config
        assert rel_err(m.logits(TOKENS), ref(TOKENS)).max() < 3e-5
    assert c["recurrent"] and c["conv_layers"] == list(range(cfg.n_layer))
    heads, groups = (cfg.d_inner, 0) if cfg.version == 1 else (cfg.ssm_heads, cfg.n_group)
    assert c["ssm"] == [cfg.d_conv, cfg.d_inner, cfg.d_state, heads, groups]
    chunked_prefill_then_decode(path, ref, TOKENS, 5, 3e-5)


def test_matches_llama_cpp_f32(case):
    """llama.cpp on the same file within 1e-3 of ours (no cache to round: 2.3e-6 .. 3.2e-6), ours no
    farther from float64 than 1.5x its distance or 1e-4, the same 24 greedy tokens."""
    cfg, path, held = case
    against_llama_cpp(
        path, functools.partial(mamba_reference_logits, cfg, held), TOKENS, apart=1e-3, greedy=True
    )


@pytest.mark.parametrize("name", list(CASES))
def test_matches_llama_cpp_q8_0(tmp_path, name):
    """Q8_0 (dt_proj of 32 columns: a whole block) against llama.cpp: both engines' 8-bit
    activations move the scan alike (measured from float64 ours 7.2e-2 / 5.2e-2 / 2.4e-2 for mamba /
    falcon-mamba / mamba2, llama.cpp 8.5e-2 / 5.1e-2 / 2.7e-2; apart 7.2e-2 / 4.0e-2 / 1.8e-2)."""
    cfg = replace(CASES[name], dt_rank=32, n_embd=128)
    path, held = tiny(tmp_path, cfg, weight_type="Q8_0")
    against_llama_cpp(
        path, functools.partial(mamba_reference_logits, cfg, held), TOKENS, apart=1e-1, greedy=False
    )


def test_the_reference_sees_every_part(tmp_path):
    """The float64 reference moves materially when the scan forgets its state (A -> -inf), the
    convolution's taps are reversed, the D skip is dropped, dt's bias moves, Falcon-Mamba's norms
    are left out, Mamba-2's norm is over all of d_inner instead of per group."""
    for name in CASES:
        cfg = CASES[name]
        _, held = tiny(tmp_path, cfg)
        scan_parts_matter(lambda w, cfg=cfg: mamba_reference_logits(cfg, w, TOKENS), held)
        ref = mamba_reference_logits(cfg, held, TOKENS)
        if cfg.dt_b_c_rms:
            moved = rel_err(mamba_reference_logits(replace(cfg, dt_b_c_rms=False), held, TOKENS), ref)
            assert moved.min() > 1e-3
        if cfg.version == 2:
            moved = rel_err(hybrid_reference_logits(replace(cfg.hybrid(), norm_groups=1), held, TOKENS), ref)
            assert moved.max() > 1e-3


def test_states_per_sequence(case):
    """Two sequences in one batch equal each alone; a slot continues only where it stopped; a
    prompt's cached prefix is reused only where the state is; saved states load back."""
    cfg, path, held = case
    ref = functools.partial(mamba_reference_logits, cfg, held)
    two_sequences_equal_each_alone(path, ref, TOKENS, 1e-5)
    slot_continues_only_where_it_stopped(path, ref, TOKENS, 1e-5)
    prefix_reused_only_where_the_state_is(path, ref, TOKENS, 1e-5)
    state_saved_and_loaded(path, ref, TOKENS, 1e-5)


def test_no_attention_layers(case, monkeypatch):
    """No KV cache: n_ctx 0 takes the file's 2**20 positions without memory for them; the plan and
    the loaded model count only the states, (d_conv - 1) x conv_dim + d_inner x d_state floats a
    layer and slot; each block's bytes are its tensors'; a quantized cache type is accepted; with a
    (fake) GPU the blocks stay on the CPU with a warning and the logits do not change."""
    cfg, path, _ = case
    conv_dim = cfg.d_inner + (2 * cfg.n_group * cfg.d_state if cfg.version == 2 else 0)
    state = (cfg.d_conv - 1) * conv_dim + cfg.d_inner * cfg.d_state
    with Model(path, n_ctx=0, n_threads=2, type_k="q8_0", type_v="q8_0") as m:
        assert m.n_ctx() == 2**20
        want = m.logits(TOKENS[:6])
        mem = {d["name"]: d for d in m._engine().memory}["CPU"]
        assert mem["kv"] == cfg.n_layer * state * 4
        tensors = gguf.GGUFReader(path).tensors
        for part in m.placement:
            if part["name"].startswith("blk."):
                mine = [int(t.n_bytes) for t in tensors if t.name.startswith(part["name"] + ".")]
                assert part["weight_bytes"] == sum(mine) and part["kv_bytes"] == 0, part["name"]
    assert plan_equals_model(path).kv_cache == cfg.n_layer * 2 * state * 4  # (n_seq_max 2)
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    with pytest.warns(RuntimeWarning, match="Mamba" if cfg.version == 1 else "Mamba-2"):
        m = Model(path, n_ctx=64, n_threads=2, n_gpu_layers=-1)
    with m:
        assert [p["device"] for p in m.placement] == ["CPU"] * (1 + cfg.n_layer) + ["FAKEGPU0"]
        np.testing.assert_allclose(m.logits(TOKENS[:6]), want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_batching_engine(case):
    """The server's batching engine over two slots of the file's whole context (n_ctx 0)."""
    cfg, path, held = case
    batching_engine_slots(path, functools.partial(mamba_reference_logits, cfg, held), TOKENS, n_ctx=0)


def test_imatrix_collects_in_and_out_projections(case):
    cfg, path, _ = case
    with Model(path, **OPTS) as m:
        m.imatrix_start()
        m.logits(TOKENS)
        imx = m.imatrix_stop()
    for i in range(cfg.n_layer):
        for p, width in (("in", cfg.n_embd), ("out", cfg.d_inner)):
            e = imx.entries[f"blk.{i}.ssm_{p}.weight"]
            assert e.counts.tolist() == [len(TOKENS)] and len(e.sums[0]) == width


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_quantize_matches_llama_quantize(tmp_path, name, qtype):
    """splitllm quantize of an f32 file: the tensors, types and bytes of llama.cpp's quantizer (the
    kernels, A, D and the norms kept F32; dt_proj's 32 columns whole blocks of q8_0 only)."""
    import test_convert as TC
    from splitllm_convert import FILE_TYPES
    from splitllm_convert.requantize import quantize

    llama_cpp = pytest.importorskip("llama_cpp")
    path, _ = tiny(tmp_path, replace(CASES[name], n_embd=256, dt_rank=32))
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    TC.lcpp_quantize(llama_cpp, path, theirs, int(FILE_TYPES[qtype].ftype))
    quantize(path, ours, qtype.upper(), nthreads=2)
    got, want = TC.tensors(ours), TC.tensors(theirs)
    assert sorted(got) == sorted(want)
    for n, t in got.items():
        assert (t.tensor_type, list(t.shape)) == (want[n].tensor_type, list(want[n].shape)), n
        assert np.array_equal(np.asarray(t.data), np.asarray(want[n].data)), n
    assert (
        got["blk.0.ssm_a"].tensor_type.name == "F32" and got["blk.0.ssm_in.weight"].tensor_type.name != "F32"
    )


@pytest.mark.parametrize(
    "name, changes, drop, match",
    [
        ("mamba", {"mamba.ssm.state_size": None}, (), "ssm.state_size"),
        ("mamba", {"mamba.attention.layer_norm_rms_epsilon": None}, (), "layer_norm_rms_epsilon"),
        ("mamba", {"mamba.ssm.time_step_rank": 200}, (), "time_step_rank"),
        ("mamba", {}, ("blk.1.ssm_x.weight",), "blk.1.ssm_x.weight"),
        ("mamba", {}, ("blk.0.ssm_conv1d.bias",), "blk.0.ssm_conv1d.bias"),
        ("mamba", {"mamba.ssm.conv_kernel": 5}, (), "ssm_conv1d.weight"),
        ("mamba2", {"mamba2.ssm.group_count": None}, (), "ssm.group_count"),
        ("mamba2", {}, ("blk.2.ssm_conv1d.bias",), "blk.2.ssm_conv1d.bias"),
        ("mamba2", {}, ("blk.0.ssm_norm.weight",), "blk.0.ssm_norm.weight"),
    ],
)
def test_bad_files_are_refused(tmp_path, name, changes, drop, match):
    path, _ = tiny(tmp_path, CASES[name], metadata_changes=changes, drop=drop)
    with pytest.raises(GGUFError, match=match):
        Model(path, **OPTS)
