"""nemotron_h (NVIDIA Nemotron-H, Nemotron Nano 2) on tiny random models: Mamba-2, attention and
squared-ReLU MLP layers, one mixer each, against the float64 re-implementation of transformers'
NemotronHForCausalLM (tests/tiny_mamba2.py) and against llama.cpp on the same files."""

from __future__ import annotations

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from recurrent_checks import plan_equals_model, rel_err, same_greedy_as_llama_cpp
from routed_checks import with_fake_gpu
from splitllm import GGUFError, Model
from tiny_mamba2 import ATTN, MAMBA, MLP, HybridConfig, hybrid_reference_logits, write_hybrid_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
# Nemotron-H's pattern in small ("M-M*-M"), heads of their own size (key_length), two groups of B and C
NEMO = HybridConfig(
    arch="nemotron_h",
    n_layer=6,
    layer_types=(MAMBA, MLP, MAMBA, ATTN, MLP, MAMBA),
    key_length=32,
    n_group=2,
    tied_output=False,
    seed=81,
)
OPTS = dict(n_ctx=64, n_threads=2)


@pytest.fixture(scope="module")
def nemo(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("nemotron_h") / "tiny-nemotron-h.gguf"
    return str(path), write_hybrid_gguf(NEMO, path)


def test_f32_logits_match_float64_reference_and_decode(nemo):
    """One pass, passes of 5 tokens and token by token: the reference's logits (measured 5.9e-6)."""
    path, held = nemo
    ref = hybrid_reference_logits(NEMO, held, TOKENS)
    with Model(path, **OPTS) as m:
        assert m.config["conv_layers"] == [0, 2, 5]
        assert rel_err(m.logits(TOKENS), ref).max() < 3e-5
    with Model(path, n_batch=5, **OPTS) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 3e-5
        m.eval_prompt(TOKENS[:8])
        steps = [m.eval_prompt(TOKENS[: i + 1]) for i in range(8, len(TOKENS))]
    assert rel_err(np.array(steps), ref[8:]).max() < 3e-5


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
def test_matches_llama_cpp(tmp_path, wtype):
    """llama.cpp on the same file (f32: 1.1e-4 apart, llama.cpp 1.1e-4 from float64, ours 5.9e-6;
    q8_0: ours 2.9e-2 from float64, llama.cpp 2.8e-2): ours no farther from float64 than 1.5x
    llama.cpp, and at f32 the same greedy continuation."""
    path = tmp_path / f"nemotron-h-{wtype}.gguf"
    held = write_hybrid_gguf(NEMO, path, weight_type=wtype)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(str(path), **OPTS) as m:
        ours = m.logits(TOKENS)
    exact = hybrid_reference_logits(NEMO, held, TOKENS)
    assert rel_err(ours, theirs).max() < (1e-3 if wtype == "F32" else 5e-2)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 3e-5)
    if wtype == "F32":
        same_greedy_as_llama_cpp(path, TOKENS[:8], 16)


def test_only_the_attention_layers_keep_a_kv_cache(nemo):
    """The plan and the loaded model: K/V for the attention layer alone, the Mamba-2 states per
    slot, nothing for the MLP layers."""
    path, _ = nemo
    cpu = plan_equals_model(path)
    with Model(path, n_ctx=64, n_threads=2) as m:
        kv = {p["name"]: p["kv_bytes"] for p in m._engine().placement}
    attn = 64 * NEMO.n_head_kv * NEMO.head_dim * 2 * 2  # K and V in f16
    assert [kv[f"blk.{i}"] for i in range(NEMO.n_layer)] == [
        attn if t == ATTN else 0 for t in NEMO.layer_types
    ]
    state = (NEMO.d_conv - 1) * NEMO.conv_dim + NEMO.d_inner * NEMO.d_state
    assert cpu.kv_cache == attn + 3 * 2 * state * 4


def test_bad_files_are_refused(tmp_path):
    path = tmp_path / "bad.gguf"
    a = "nemotron_h."
    write_hybrid_gguf(NEMO, path, metadata_changes={a + "feed_forward_length": [0, 96, 0, 96, 96, 0]})
    with pytest.raises(GGUFError, match="both key/value heads"):
        Model(str(path), **OPTS)
    write_hybrid_gguf(NEMO, path, metadata_changes={a + "attention.layer_norm_epsilon": None})
    with pytest.raises(GGUFError, match="layer_norm_epsilon"):
        Model(str(path), **OPTS)


def test_blocks_stay_on_the_cpu_with_a_gpu(nemo, monkeypatch):
    """Its MLP layers' squared ReLU has no CUDA path yet: with a (fake) GPU the blocks stay on the
    CPU, said once, the output layer goes to the GPU, and the logits are the CPU's exactly."""
    m = with_fake_gpu(nemo[0], [(7 * i + 3) % 320 for i in range(40)], monkeypatch, op_offload=False)
    assert len(m.warnings) == 1 and "squared-ReLU" in m.warnings[0]
    assert [p["device"] for p in m.placement] == ["CPU"] * (1 + m.config["n_layer"]) + ["FAKEGPU0"]
