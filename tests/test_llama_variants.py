"""Llama variants in the engine, on tiny random models: SmolLM3 (every fourth layer without the
rotation, "NoPE"), Granite 3 (embedding, residual, attention and logit multipliers) and OLMo 2
(no input norms, RMS norms after the attention and the feed-forward, query and key norms over the
whole projections, NEOX rotation), against the numpy float64 re-implementations of transformers'
models (tests/tiny_model.py) and against llama.cpp on the same files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import GGUFError, Model
from tiny_model import TinyConfig, make_weights, reference_logits, write_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
SMOLLM3 = TinyConfig(arch="smollm3", n_layer=5, seed=41)  # layer 3 is unrotated
SMOLLM3_TIED = TinyConfig(arch="smollm3", n_layer=8, n_head_kv=1, tied_output=True, seed=44)
GRANITE = TinyConfig(arch="granite", n_layer=3, seed=42)
GRANITE_TIED = TinyConfig(arch="granite", n_layer=2, tied_output=True, granite_scales=(6.0, 0.5, 0.2, 3.0),
                          seed=45)
OLMO2 = TinyConfig(arch="olmo2", n_layer=3, seed=43)
OLMO2_MHA = TinyConfig(arch="olmo2", n_layer=2, n_head_kv=4, seed=46)
CONFIGS = [SMOLLM3, SMOLLM3_TIED, GRANITE, GRANITE_TIED, OLMO2, OLMO2_MHA]
IDS = ["smollm3", "smollm3-mqa-tied", "granite", "granite-tied", "olmo2", "olmo2-mha"]


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def tiny(tmp_path, cfg: TinyConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-{cfg.arch}-{cfg.seed}.gguf"
    return str(path), write_gguf(make_weights(cfg), path, **kw)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, reference_logits(cfg, held, TOKENS)).max() < 1e-4  # measured <= 3.3e-5


VARIANTS = (SMOLLM3, GRANITE, OLMO2)


@pytest.mark.parametrize(("cfg", "wtype"), [(c, t) for t in ("F32", "Q8_0") for c in VARIANTS],
                         ids=[f"{a}{t}" for t in ("", "-q8_0") for a in ("smollm3", "granite", "olmo2")])
def test_matches_llama_cpp(tmp_path, cfg, wtype):
    """llama.cpp on the same file: within 1e-3 of ours at f32 (it is itself 5e-4 from float64);
    quantized (a wider model, as the budgets of test_model_reference), both engines' activation
    rounding: ours no farther from float64 than 1.5x llama.cpp's distance."""
    if wtype != "F32":
        cfg = replace(cfg, n_embd=256, n_ff=512)
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, theirs).max() < (1e-3 if wtype == "F32" else 4e-2)  # (q8_0: each ~2% from float64)
    exact = reference_logits(cfg, held, TOKENS)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 1e-4)


def test_each_difference_is_visible(tmp_path):
    """The references without smollm3's unrotated layers or granite's multipliers are far from the
    real thing on TOKENS, so the comparisons above can fail."""
    _, held = tiny(tmp_path, SMOLLM3)
    ref = reference_logits(SMOLLM3, held, TOKENS)
    assert rel_err(reference_logits(replace(SMOLLM3, arch="llama"), held, TOKENS), ref).max() > 1e-2
    _, held = tiny(tmp_path, GRANITE)
    ref = reference_logits(GRANITE, held, TOKENS)
    scales = GRANITE.granite_scales
    for i, neutral in enumerate((1.0, 1.0, 0.25, 1.0)):  # each multiplier alone set to llama's value
        other = replace(GRANITE, granite_scales=tuple(neutral if j == i else s for j, s in enumerate(scales)))
        assert rel_err(reference_logits(other, held, TOKENS), ref).max() > 1e-2, i


def test_granite_metadata(tmp_path):
    path, _ = tiny(tmp_path, GRANITE, metadata={"granite.logit_scale": None})
    with pytest.raises(GGUFError, match="granite.logit_scale' is missing"):
        Model(path, n_ctx=64, n_threads=2)
    path, _ = tiny(tmp_path, GRANITE, metadata={"granite.residual_scale": -1.0})
    with pytest.raises(GGUFError, match="granite.residual_scale"):
        Model(path, n_ctx=64, n_threads=2)
    # 0 means none, as llama.cpp reads it
    zeros = {"granite.residual_scale": 0.0, "granite.embedding_scale": 0.0}
    path, held = tiny(tmp_path, GRANITE, metadata=zeros)
    plain = replace(GRANITE, granite_scales=(1.0, 1.0) + GRANITE.granite_scales[2:])
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), reference_logits(plain, held, TOKENS)).max() < 1e-4
    # rope.scaling.finetuned false: no rotation anywhere (llama.cpp's switch; scores scaled by 0.2,
    # not GRANITE's 1/64, under which positions hardly matter)
    path, held = tiny(tmp_path, GRANITE_TIED, metadata={"granite.rope.scaling.finetuned": False})
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, llama_cpp_logits(path, TOKENS)).max() < 1e-3
    assert rel_err(ours, reference_logits(GRANITE_TIED, held, TOKENS)).max() > 1e-2


def test_olmo3_sliding_window_is_refused(tmp_path):
    path, _ = tiny(tmp_path, OLMO2, metadata={"olmo2.attention.sliding_window": 16})
    with pytest.raises(GGUFError, match="sliding_window"):
        Model(path, n_ctx=64, n_threads=2)


@pytest.mark.parametrize("cfg", [SMOLLM3, GRANITE, OLMO2], ids=["smollm3", "granite", "olmo2"])
def test_generation_reuses_the_cache(tmp_path, cfg):
    """Token-by-token decoding after a prompt gives the logits of one pass over everything."""
    path, _ = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_threads=2) as m:
        full = m.logits(TOKENS)
        m.eval_prompt(TOKENS[:10])
        steps = [m.eval_prompt(TOKENS[: i + 1]) for i in range(10, len(TOKENS))]
    assert rel_err(np.array(steps), full[10:]).max() < 1e-4
