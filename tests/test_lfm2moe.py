"""LFM2-MoE (gguf arch lfm2moe, LiquidAI's LFM2-8B-A1B) on tiny random models: LFM2's short-convolution
and attention layers with experts after the leading dense blocks, against the float64
re-implementation of transformers' Lfm2MoeForCausalLM (tests/tiny_lfm2.py) and against llama.cpp
on the same files, F32 and Q8_0. Each case shows that what it checks (the sigmoid scores, the
selection bias, the renormalized weights) moves the logits far past the bound."""

from __future__ import annotations

import dataclasses
import itertools
import re

import gguf
import numpy as np
import pytest
import tiny_lfm2
from lcpp import llama_cpp_greedy, llama_cpp_logits
from routed_checks import split_with_host_parts
from splitllm import GGUFError, Model
from tiny_lfm2 import Lfm2Config, lfm2_reference_logits, write_lfm2_gguf
from tiny_model import F32_LOGITS_TOL, check_engine_passes

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
CONV, ATTN = "conv", "full_attention"
CASES = {
    # LFM2-8B-A1B's pattern in small: a dense block, then experts; 2 of 4 chosen
    "lfm2moe": Lfm2Config(arch="lfm2moe", layer_types=(CONV, ATTN, CONV, CONV), n_dense=1, n_expert=4,
                          n_expert_used=2, n_ff_exp=32, seed=61),
    # every block with experts, 3 of 8 chosen; MQA; an output matrix of its own
    "all-moe-8x3-untied": Lfm2Config(arch="lfm2moe", layer_types=(CONV, ATTN, CONV, ATTN), n_expert=8,
                                     n_expert_used=3, n_ff_exp=32, n_head_kv=1, tied_output=False, seed=62),
}  # fmt: skip


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.float64(a) - b).max() / np.abs(b).max())


def written(tmp_path, cfg: Lfm2Config, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"lfm2moe-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    return str(path), write_lfm2_gguf(cfg, path, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(tmp_path, case):
    """One pass, passes of 5, then token by token (the decode path): the reference's logits; the
    softmax's scores, the weights as they are or no selection bias move them far."""
    cfg = CASES[case]
    path, held = written(tmp_path, cfg)
    ref = lfm2_reference_logits(cfg, held, TOKENS)
    no_bias = {n: (np.zeros_like(x) if "exp_probs_b" in n else x) for n, x in held.items()}
    for other_cfg, other_w in ((dataclasses.replace(cfg, softmax_gating=True), held),
                               (dataclasses.replace(cfg, renorm=False), held), (cfg, no_bias)):  # fmt: skip
        assert rel_err(lfm2_reference_logits(other_cfg, other_w, TOKENS), ref) > 50 * F32_LOGITS_TOL
    check_engine_passes(path, TOKENS, ref)


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_matches_llama_cpp(tmp_path, case):
    """llama.cpp on the same file: its logits are the reference's and ours (measured 8.6e-5 apart);
    12 greedy tokens after 6 are its."""
    path, held = written(tmp_path, CASES[case])
    theirs = llama_cpp_logits(path, TOKENS)
    assert rel_err(theirs, lfm2_reference_logits(CASES[case], held, TOKENS)) < 1e-3
    with Model(path, n_ctx=64, n_batch=8, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), theirs) < 1e-3
        m.reset()
        got = list(itertools.islice(m.generate(TOKENS[:6], temp=0.0), 12))
    assert got == llama_cpp_greedy(path, TOKENS[:6], 12)


@pytest.mark.reference
def test_q8_0_matches_llama_cpp(tmp_path):
    """Q8_0 weights (the router and the bias stay F32), a wider model: each token's logits within
    the engines' 8-bit activations of the reference's and of llama.cpp's on the same file."""
    cfg = dataclasses.replace(CASES["lfm2moe"], n_embd=256, n_ff=512, n_ff_exp=256)
    path, held = written(tmp_path, cfg, weight_type="Q8_0")
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    ref, theirs = lfm2_reference_logits(cfg, held, TOKENS), llama_cpp_logits(path, TOKENS)
    for other in (ref, theirs):
        err = np.abs(ours - other).max(axis=-1) / np.abs(other).max()
        assert np.quantile(err, 0.75) < 3e-2 and err.max() < 0.1
    assert rel_err(ours, ref) <= max(1.5 * rel_err(theirs, ref), 1e-3)


@pytest.mark.parametrize(
    "drop",
    [
        "blk.2.exp_probs_b.bias",
        "blk.1.ffn_gate_inp.weight",
        "blk.0.ffn_up.weight",
        "blk.3.ffn_down_exps.weight",
    ],
)
def test_missing_tensor_is_named(tmp_path, monkeypatch, drop):
    make = tiny_lfm2.make_lfm2_weights

    def without(cfg: Lfm2Config):
        model = make(cfg)
        del model.weights[drop]
        return model

    monkeypatch.setattr(tiny_lfm2, "make_lfm2_weights", without)
    path, _ = written(tmp_path, CASES["lfm2moe"])
    with pytest.raises(GGUFError, match=f"tensor '{re.escape(drop)}' is missing"):
        Model(path, n_ctx=64)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lfm2moe.expert_gating_func": None}, "lfm2moe.expert_gating_func"),
        ({"lfm2moe.expert_gating_func": 3}, r"expert_gating_func' = 3 is out of range \[1, 2\]"),
        ({"lfm2moe.expert_count": None}, "lfm2moe.expert_count"),
        ({"lfm2moe.leading_dense_block_count": 2}, "tensor 'blk.1.ffn_gate.weight' is missing"),
    ],
)
def test_bad_metadata_is_named(tmp_path, changes, match):
    path, _ = written(tmp_path, CASES["lfm2moe"], metadata=changes)
    with pytest.raises(GGUFError, match=match):
        Model(path, n_ctx=64)


@pytest.mark.parametrize("ngl", [2, -1])
def test_placement_counts_every_weight_and_splits_with_a_gpu(tmp_path, monkeypatch, ngl):
    """model.placement's bytes of each block are the file's bytes of its tensors (the router, the
    selection bias, the experts; the convolutions); with n_gpu_layers on the (fake) GPU the
    convolutions and the experts stay on the host, the rest goes to the GPU, said once, and the
    logits are the CPU's (routed_checks.split_with_host_parts)."""
    cfg = CASES["lfm2moe"]
    path, _ = written(tmp_path, cfg, weight_type="Q8_0")
    tensors = gguf.GGUFReader(path).tensors
    with Model(path, n_ctx=64, n_threads=2) as m:
        for part in m.placement:
            if part["name"].startswith("blk."):
                mine = [int(t.n_bytes) for t in tensors if t.name.startswith(part["name"] + ".")]
                assert part["weight_bytes"] == sum(mine), part["name"]
    split_with_host_parts(path, monkeypatch, ngl=ngl)
