"""qwen3vlmoe (Qwen3-VL-30B-A3B / 235B-A22B GGUFs, text only) on tiny random models: qwen3moe's blocks
(per-head q/k norms, NEOX rotation, softmax routing with the chosen weights renormalized) under the
M-RoPE sections and deepstack layers of Qwen3-VL, which for text tokens are the plain rotation and
zeros; against the float64 reference of Qwen3's MoE text layers (tests/tiny_model.py, transformers'
Qwen3MoeSparseMoeBlock: Qwen3VLMoeTextSparseMoeBlock's routing) and llama.cpp."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from lcpp import check_routed_q8, llama_cpp_greedy, llama_cpp_logits
from routed_checks import split_with_host_parts
from splitllm import GGUFError, Model
from tiny_glm4moe import file_block_bytes, write_arch_gguf
from tiny_model import F32_LOGITS_TOL, TinyConfig, check_engine_passes, make_weights, reference_logits

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2  # 32 positions
CFG = TinyConfig("qwen3moe", n_layer=3, n_expert=8, n_expert_used=3, n_ff_exp=32, key_length=32, seed=3)


def write(cfg: TinyConfig, path, weight_type="F32", changes=None):
    """The file llama.cpp's Qwen3VLMoeTextModel writes for the text model (its rope sections of
    the rotated half, the deepstack layers); returns the weights as held (float64)."""
    half = cfg.rot // 2
    meta = {
        "block_count": cfg.n_layer, "context_length": cfg.n_ctx_train, "embedding_length": cfg.n_embd,
        "feed_forward_length": cfg.n_ff, "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_head_kv, "rope.freq_base": cfg.rope_base,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps, "expert_count": cfg.n_expert,
        "expert_used_count": cfg.n_expert_used, "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim, "expert_feed_forward_length": cfg.ff_exp,
        "rope.dimension_sections": [half - 2 * (half // 3), half // 3, half // 3, 0], "n_deepstack_layers": 2,
    }  # fmt: skip
    return write_arch_gguf(
        "qwen3vlmoe", meta, cfg.n_vocab, make_weights(cfg).weights, path, weight_type, changes
    )


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.float64(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3vlmoe") / "m.gguf"
    return path, write(CFG, path)


def test_matches_float64_reference(f32):
    """One pass, passes of 5, then token by token: the reference's logits; the q/k norms and the
    renormalization of the chosen weights matter far past that."""
    path, held = f32
    ref = reference_logits(CFG, held, TOKENS)
    check_engine_passes(path, TOKENS, ref)
    changed = {k: (v * 0.5 if "attn_k_norm" in k else v) for k, v in held.items()}
    assert rel_err(reference_logits(CFG, changed, TOKENS), ref) > 50 * F32_LOGITS_TOL
    top1 = dataclasses.replace(CFG, n_expert_used=1)
    assert rel_err(reference_logits(top1, held, TOKENS), ref) > 1e-2


@pytest.mark.reference
def test_matches_llama_cpp(f32, tmp_path):
    """F32: llama.cpp's logits within its distance to the reference (measured 3.0e-4; ours 1.1e-5),
    ours within as much of its, 12 greedy tokens equal; Q8_0: per token, as the other mixtures of
    experts (measured: medians 9.1e-3 from the reference, 9.4e-3 from llama.cpp)."""
    path, held = f32
    theirs = llama_cpp_logits(path, TOKENS)
    assert rel_err(theirs, reference_logits(CFG, held, TOKENS)) < 1e-3
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), theirs) < 1e-3
        m.reset()
        greedy = list(itertools.islice(m.generate(TOKENS[:6], temp=0.0), 12))
    assert greedy == llama_cpp_greedy(path, TOKENS[:6], 12)
    q8 = tmp_path / "q8.gguf"
    held = write(CFG, q8, "Q8_0")
    with Model(q8, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    check_routed_q8(ours, reference_logits(CFG, held, TOKENS), llama_cpp_logits(q8, TOKENS))


def test_placement_counts_every_weight(f32):
    path, _ = f32
    with Model(path, n_ctx=64, n_threads=2) as model:
        got = {p["name"]: p["weight_bytes"] for p in model.placement if p["name"].startswith("blk.")}
    assert got == file_block_bytes(path, CFG.n_layer)[0]


def test_experts_stay_on_the_host(f32, monkeypatch):
    """With a (fake) GPU: the blocks (the interleaved multi-section rotation on the GPU) go there
    but for their routers and experts; the logits are the CPU's (routed_checks.split_with_host_parts)."""
    split_with_host_parts(f32[0], monkeypatch, ngl=2)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"rope.dimension_sections": None}, "rope.dimension_sections' is missing"),
        ({"attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon' is missing"),
        ({"expert_count": None}, "expert_count"),
    ],
)
def test_bad_metadata_is_named(tmp_path, changes, match):
    path = tmp_path / "m.gguf"
    write(CFG, path, changes=changes)
    with pytest.raises(GGUFError, match=f"m.gguf: .*{match}"):
        Model(path, n_ctx=32)
