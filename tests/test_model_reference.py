"""The engine's forward pass against a numpy float64 re-implementation, on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import Model
from splitllm.quants import quantize
from tiny_model import (
    BF16_ENGINE_TOL,
    F32_LOGITS_TOL,
    TinyConfig,
    llama3_rope_factors,
    make_weights,
    reference_logits,
    rope_inv_freq,
    write_gguf,
)

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
# Mixtures of experts: Qwen3-MoE (expert width of its own) and Mixtral (a llama with experts).
QWEN3MOE = TinyConfig(arch="qwen3moe", n_expert=8, n_expert_used=2, n_ff_exp=64, key_length=32, seed=12)
MIXTRAL = TinyConfig(arch="llama", n_expert=4, n_expert_used=2, seed=13)


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Relative L2 error of each row."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize(
    "cfg",
    [
        TinyConfig(arch="llama"),
        TinyConfig(arch="llama", n_head=8, n_head_kv=2, tied_output=True, seed=1),
        TinyConfig(arch="qwen2", seed=2),
        TinyConfig(arch="qwen2", n_head=4, n_head_kv=1, tied_output=True, seed=3),
        TinyConfig(arch="qwen3", seed=4),
        TinyConfig(arch="qwen3", n_head=4, n_head_kv=1, key_length=32, tied_output=True, seed=5),
        QWEN3MOE,
        MIXTRAL,
        TinyConfig(arch="phi3", seed=14),
        TinyConfig(arch="phi3", n_rot=8, n_head_kv=1, tied_output=True, seed=15),
    ],
    ids=[
        "llama-gqa2", "llama-gqa4-tied", "qwen2-gqa2", "qwen2-mqa-tied", "qwen3-gqa2", "qwen3-headdim-tied",
        "qwen3moe-8x2", "mixtral-4x2", "phi3-fused", "phi3-partial-rope-mqa-tied",
    ],
)
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path = tmp_path / "tiny.gguf"
    held = write_gguf(make_weights(cfg), path)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref).max() < F32_LOGITS_TOL


LLAMA3_SCALING = {  # wavelengths 6 .. 20000 tokens: one unscaled, two smoothed, five divided by 8
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


# YaRN over 64 original positions (16 rotary dims, base 10000): frequency 0 extrapolated, 1-2 on
# the ramp (3/4, 1/2 of the way), 3-7 interpolated (divided by 4).
YARN_SCALING = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize(
    "scaling", [{"rope_type": "linear", "factor": 4.0}, LLAMA3_SCALING, YARN_SCALING],
    ids=["linear", "llama3", "yarn"],
)
def test_rope_scaling_matches_float64_reference(tmp_path, arch, scaling):
    """Linear scaling (rope.scaling.type/.factor keys), llama3 frequency factors (the
    rope_freqs.weight tensor) and YaRN (its type, factor and original context) against the
    reference's Hugging Face rotary frequencies and attention factor."""
    cfg = TinyConfig(arch=arch, rope_scaling=scaling, seed=21)
    path = tmp_path / "tiny.gguf"
    held = write_gguf(make_weights(cfg), path)
    ref = reference_logits(cfg, held, TOKENS)
    unscaled = reference_logits(TinyConfig(arch=arch, seed=21), held, TOKENS)
    assert rel_err(unscaled, ref).max() > 1e-2  # the scaling is visible at these positions
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, ref).max() < F32_LOGITS_TOL


def test_llama3_rope_factors_cover_every_band():
    """The converter's factors (written to the file) equal the ratio of default to llama3
    frequencies in Hugging Face's formula, and the test's config reaches all three bands."""
    cfg = TinyConfig(rope_scaling=LLAMA3_SCALING)
    factors = llama3_rope_factors(cfg)
    plain = rope_inv_freq(TinyConfig())
    np.testing.assert_allclose(factors, plain / rope_inv_freq(cfg), rtol=1e-6)
    assert factors[0] == 1 and 1 < factors[1] < factors[2] < 8 and (factors[3:] == 8).all()


@pytest.mark.parametrize("cfg", [TinyConfig(arch="llama", seed=5), QWEN3MOE], ids=["llama", "qwen3moe"])
def test_incremental_decode_matches_batch(tmp_path, cfg):
    """Token-by-token evaluation through the KV cache gives the logits of one batched pass,
    and small n_batch splits the prompt without changing the result (for experts: a token's
    route does not depend on the other tokens of its batch)."""
    path = tmp_path / "tiny.gguf"
    held = write_gguf(make_weights(cfg), path)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(path, n_ctx=64, n_batch=3, n_threads=2) as m:
        batched = m.logits(TOKENS)
        m.reset()
        steps = np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(len(TOKENS))])
    assert rel_err(batched, ref).max() < 1e-4
    assert rel_err(steps, ref).max() < 1e-4


# Budgets: relative L2 error of the logits against the float64 reference on the weights the file
# holds (dequantized with gguf.quants): what remains is the engine's own error (int8 activations,
# bf16 ones for BF16 weights where the CPU has AVX512_BF16, f16 KV cache). And against the F32
# model: the weight quantization error on top.
BUDGETS = {
    #        engine  vs F32 model
    "F16": (2e-3, 5e-3),
    "BF16": (BF16_ENGINE_TOL, 2e-2),
    "Q8_0": (2e-2, 3e-2),
    "Q6_K": (2e-2, 6e-2),
    "Q5_0": (2e-2, 1.6e-1),
    "Q5_1": (2e-2, 1.6e-1),
    "Q5_K": (2e-2, 1.6e-1),
    "Q4_0": (2e-2, 3.2e-1),
    "Q4_1": (2e-2, 3.2e-1),
    "Q4_K": (2e-2, 3.2e-1),
    "IQ4_NL": (2e-2, 3.2e-1),
    "IQ4_XS": (2e-2, 3.2e-1),
    "Q3_K": (3e-2, 6e-1),
    "Q2_K": (3e-2, 1.0),
}


@pytest.mark.parametrize("wtype", list(BUDGETS))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "qwen3moe", "phi3"])
def test_quantized_weights_within_budget(tmp_path, wtype, arch):
    moe = dict(n_expert=4, n_expert_used=2, n_ff_exp=256) if arch == "qwen3moe" else {}
    cfg = TinyConfig(arch=arch, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, seed=11, **moe)
    model = make_weights(cfg)
    f32_path, q_path = tmp_path / "f32.gguf", tmp_path / "q.gguf"
    write_gguf(model, f32_path)
    held = write_gguf(model, q_path, weight_type=wtype, quantize=quantize)
    ref_held = reference_logits(cfg, held, TOKENS)
    with Model(f32_path, n_ctx=64, n_threads=2) as m:
        f32 = m.logits(TOKENS)
    with Model(q_path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    engine_budget, model_budget = BUDGETS[wtype]
    assert rel_err(ours, ref_held).max() < engine_budget
    if not cfg.n_expert:  # experts: quantizing the weights may flip a near tie in routing (a jump)
        assert rel_err(ours, f32).max() < model_budget


def test_qwen3_head_norms_matter(tmp_path):
    """The per-head query/key norms are applied: the reference without them is far from the engine."""
    cfg = TinyConfig(arch="qwen3", key_length=32, seed=7)
    model = make_weights(cfg)
    for name, w in model.weights.items():  # norms far from 1, so that leaving them out shows
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            model.weights[name] = 3 * w
    path = tmp_path / "tiny.gguf"
    held = write_gguf(model, path)
    ref = reference_logits(cfg, held, TOKENS)
    plain = reference_logits(TinyConfig(arch="qwen2", key_length=32, seed=7), held, TOKENS)
    assert rel_err(plain, ref).max() > 0.1
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4


@pytest.mark.reference
@pytest.mark.parametrize("cfg", [QWEN3MOE, MIXTRAL], ids=["qwen3moe", "mixtral"])
def test_experts_match_llama_cpp(tmp_path, cfg):
    """llama.cpp reads the same mixture of experts from the file: its logits and ours agree, and
    both agree with the float64 reference (so the reference's routing is llama.cpp's). F32
    weights: with quantized ones each engine's own rounding may flip a near tie of the router."""
    path = tmp_path / "moe.gguf"
    held = write_gguf(make_weights(cfg), path)
    ref = reference_logits(cfg, held, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(theirs, ref).max() < 1e-3  # llama.cpp's f16 KV cache and f16 attention
    assert rel_err(ours, ref).max() < F32_LOGITS_TOL
    assert rel_err(ours, theirs).max() < 1e-3


PHI3_LONGROPE = {"rope_type": "longrope", "original_max_position_embeddings": 32,
                 "short_factor": [1.0 + 0.1 * i for i in range(8)],
                 "long_factor": [1.0 + 2.0 * i for i in range(8)]}


@pytest.mark.parametrize("n_ctx", [32, 64], ids=["short-factors", "long-factors"])
def test_phi3_longrope_factors_by_context(tmp_path, n_ctx):
    """LongRoPE: the short factors up to the original context, the long ones past it (llama.cpp's
    choice, by n_ctx), cos and sin scaled by the attention factor."""
    cfg = TinyConfig(arch="phi3", rope_scaling=PHI3_LONGROPE, n_ctx_train=256, seed=16)
    path = tmp_path / "tiny.gguf"
    held = write_gguf(make_weights(cfg), path)
    ref = reference_logits(cfg, held, TOKENS, n_ctx=n_ctx)
    other = reference_logits(cfg, held, TOKENS, n_ctx=96 - n_ctx)  # the other factors
    assert rel_err(other, ref).max() > 1e-2
    with Model(path, n_ctx=n_ctx, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4


def test_sliding_window_is_not_applied_as_in_llama_cpp(tmp_path):
    """llama.cpp runs phi3 with full attention (its sliding window disabled): so does splitllm,
    saying so when the context is longer than the window."""
    cfg = TinyConfig(arch="phi3", seed=17)
    path = tmp_path / "tiny.gguf"
    held = write_gguf(make_weights(cfg), path, metadata={"phi3.attention.sliding_window": 8})
    with Model(path, n_ctx=8, n_threads=2) as m:  # no longer than the window: nothing to say
        assert rel_err(m.logits(TOKENS[:8]), reference_logits(cfg, held, TOKENS[:8])).max() < 1e-4
    with pytest.warns(RuntimeWarning, match=r"sliding attention window \(8 tokens\) is not applied"):
        m = Model(path, n_ctx=64, n_threads=2)
    with m:
        assert rel_err(m.logits(TOKENS), reference_logits(cfg, held, TOKENS)).max() < 1e-4
