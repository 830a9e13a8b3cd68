"""glm4moe (GLM-4.5 / 4.5-Air / 4.6 / 4.7 GGUFs) on tiny random models with one multi-token-prediction
layer in the file: leading dense blocks, sigmoid routing with the selection bias, group-limited
choice, normalized and scaled weights, shared experts, q/k/v biases, per-head q/k norms or none,
the partial NEOX rotation; against the float64 reference written from transformers'
modeling_glm4_moe.py (tests/tiny_glm4moe.py) and llama.cpp. The MTP layer is neither loaded nor
run (llama.cpp's forward skips it too)."""

from __future__ import annotations

import dataclasses

import pytest
import routed_checks as RC
import tiny_glm4moe
from routed_checks import rel_err
from splitllm import Model
from splitllm.plan import plan
from tiny_glm4moe import air, file_block_bytes, glm45, make_weights, reference_logits, write_gguf
from tiny_model import F32_LOGITS_TOL, check_engine_passes

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions

CONFIGS = {
    "glm45": glm45(),
    "air-groups": air(),
    # every block routed, no MTP layer
    "all-moe": glm45(first_k_dense_replace=0, n_nextn=0, seed=2),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each config's F32 file and its weights (as held)."""
    return RC.write_files(
        tmp_path_factory.mktemp("glm4moe"), {n: (tiny_glm4moe, c) for n, c in CONFIGS.items()}
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(files, name):
    """One pass, passes of 5, then token by token (the decode path): the reference's logits."""
    cfg, path, held = files[name]
    check_engine_passes(path, TOKENS, reference_logits(cfg, held, TOKENS))


def test_reference_sees_every_part(files):
    """What the tests rely on changes the reference's logits far past the bound (an engine that
    left one out would fail): the selection bias, the shared experts, the q/k norms, the biases,
    the weights' scale and normalization, the groups, the partial rotation."""
    cfg, _, held = files["glm45"]
    ref = reference_logits(cfg, held, TOKENS)
    for part in ("exp_probs_b.bias", "ffn_down_shexp", "attn_q_norm", "attn_k.bias"):
        changed = {k: (v * 0.5 if part in k else v) for k, v in held.items()}
        assert rel_err(reference_logits(cfg, changed, TOKENS), ref) > 50 * F32_LOGITS_TOL, part
    for change in ({"routed_scaling_factor": 1.0}, {"norm_topk_prob": False}, {"partial_rotary_factor": 1.0}):
        assert rel_err(reference_logits(dataclasses.replace(cfg, **change), held, TOKENS), ref) > 1e-2, change
    acfg, _, aheld = files["air-groups"]
    ungrouped = dataclasses.replace(acfg, n_group=1, topk_group=1)
    assert rel_err(reference_logits(ungrouped, aheld, TOKENS), reference_logits(acfg, aheld, TOKENS)) > 1e-2


@pytest.mark.reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_llama_cpp(files, name):
    """F32 weights: llama.cpp's logits within its own distance to the reference (measured 2.4e-4 to
    4.5e-4: its float16 attention; ours 2.0e-5 to 2.7e-5), and ours within as much of its."""
    cfg, path, held = files[name]
    RC.f32_against_llama_cpp(path, reference_logits(cfg, held, TOKENS), TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["glm45", "air-groups"])
def test_q8_0_matches_llama_cpp(tmp_path, name):
    """Q8_0 weights (the router and vectors F32): per token, llama.cpp's logits on the same file
    and the reference's on the weights as the file holds them, within the engines' 8-bit
    activations, which may flip a near tie of the tiny random routers at a few tokens (measured:
    medians 1.0e-2 to 1.3e-2 for both engines against the reference and each other; glm45 one token
    at 0.35, where both engines flip the same near tie)."""
    cfg = CONFIGS[name]
    path = tmp_path / "q8.gguf"
    held = write_gguf(cfg, make_weights(cfg), path, weight_type="Q8_0")
    RC.q8_against_llama_cpp(path, lambda w: reference_logits(cfg, w, TOKENS), held, TOKENS)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["glm45", "air-groups"])
def test_greedy_tokens_match_llama_cpp(files, name):
    """12 greedy tokens after a prompt of 6, F32 weights: llama.cpp's."""
    _, path, _ = files[name]
    RC.greedy_matches_llama_cpp(path, TOKENS[:6])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_placement_counts_every_weight(files, name):
    """model.placement's blocks are the trunk's, each with the file's bytes of its tensors
    (gguf-py's reader: biases, q/k norms, the selection bias, the shared experts too); the MTP
    layer (blk.3 where the file has one) is no block of ours, and the plan's CPU weights are the
    file's tensors but its."""
    cfg, path, _ = files[name]
    per_block, total = file_block_bytes(path, cfg.n_layer)
    assert len(per_block) == cfg.n_layer
    with Model(path, n_ctx=64, n_threads=2) as model:
        got = {p["name"]: p["weight_bytes"] for p in model.placement if p["name"].startswith("blk.")}
    assert got == per_block
    weights = plan(path, n_ctx=64, n_batch=4, cpu_memory="1GiB").device("CPU").weights
    assert weights == total


def test_plan_kv_bytes(files):
    """The plan's KV bytes per token: the trunk's layers only (f16 keys and values of each KV head)."""
    cfg, path, _ = files["glm45"]
    p = plan(path, n_ctx=128, n_batch=16, n_threads=2)
    assert p.kv_bytes_per_token == cfg.n_layer * 2 * cfg.n_head_kv * cfg.head_dim * 2


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"glm4moe.expert_shared_count": None}, "glm4moe.expert_shared_count"),
        ({"glm4moe.nextn_predict_layers": 4}, r"nextn_predict_layers' = 4 is out of range \[0, 3\]"),
        ({"glm4moe.expert_gating_func": 3}, "expert_gating_func' = 3 is not supported"),
        ({"glm4moe.expert_group_count": 3, "glm4moe.expert_group_used_count": 1}, "expert_group_count' = 3"),
        ({"glm4moe.rope.dimension_sections": [8, 12, 12, 0]}, "M-RoPE"),
        ({"glm4moe.expert_count": None}, "expert_count' is missing"),
        ({"glm4moe.expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ],
)
def test_bad_metadata_is_named(tmp_path, changes, match):
    cfg = CONFIGS["glm45"]
    RC.refused(tmp_path, cfg, make_weights(cfg), write_gguf, match, metadata_changes=changes)


@pytest.mark.parametrize(
    "drop", ["blk.1.exp_probs_b.bias", "blk.2.ffn_up_shexp.weight", "blk.0.attn_k_norm.weight"]
)
def test_missing_tensor_is_named(tmp_path, drop):
    """A trunk tensor missing (the selection bias: the file would route differently; a q norm
    without its k norm) names it; the MTP layer's may be missing altogether."""
    cfg = CONFIGS["glm45"]
    w = make_weights(cfg)
    del w[drop]
    RC.refused(tmp_path, cfg, w, write_gguf, f"tensor '{drop}' is missing")
    path = tmp_path / "m.gguf"
    trunk = {k: v for k, v in make_weights(cfg).items() if not k.startswith(f"blk.{cfg.n_layer}.")}
    held = write_gguf(cfg, trunk, path)
    with Model(path, n_ctx=32, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS[:8]), reference_logits(cfg, held, TOKENS[:8])) < F32_LOGITS_TOL


@pytest.mark.parametrize("ngl", [2, -1])
def test_experts_stay_on_the_host(files, monkeypatch, ngl):
    """With a (fake) GPU: the blocks go to the GPU but for their routers, selection biases and
    experts (the dense lead block wholly), said once; the MTP layer is not loaded; the logits are
    the CPU's (routed_checks.split_with_host_parts)."""
    RC.split_with_host_parts(files["glm45"][1], monkeypatch, ngl=ngl)


def test_state_round_trip_and_imatrix(files):
    """A saved state goes back into the cache and decoding goes on as if never interrupted; the
    importance matrix has the dense block's matrices, and the routed and shared experts' and the
    router's of the others, by llama-imatrix's names (none of the MTP layer's)."""
    from splitllm.imatrix import compute

    cfg, path, _ = files["glm45"]
    RC.state_round_trip(path, TOKENS)
    with Model(path, n_ctx=32, n_threads=2) as m:
        entries = compute(m, TOKENS * 2, n_ctx=32).imatrix.entries
    mats = ("attn_q", "attn_k", "attn_v", "attn_output")
    dense = {f"blk.0.{n}.weight" for n in (*mats, "ffn_gate", "ffn_up", "ffn_down")}
    routed = {f"blk.1.{n}.weight" for n in mats} | {
        f"blk.1.ffn_{n}.weight" for n in ("gate_inp", "gate_exps", "up_exps", "down_exps", "gate_shexp",
                                          "up_shexp", "down_shexp")
    }  # fmt: skip
    assert {n for n in entries if n.startswith(("blk.0.", "blk.1."))} == dense | routed
    assert not any(n.startswith(f"blk.{cfg.n_layer}.") for n in entries)
