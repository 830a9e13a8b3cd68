"""seed_oss, apertus, hunyuan-dense, arcee and starcoder2 in the engine, on tiny random models,
against the numpy float64 re-implementations of transformers' models (tests/tiny_densevar.py) and
against llama.cpp on the same files; each difference from llama shown to move the logits, so that
the comparisons can fail; bad files refused with the file and the key or tensor named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import GGUFError, Model
from test_dense_archs import TOKENS, rel_err
from tiny_densevar import VarConfig, make_weights, reference_logits, write_var
from tiny_model import F32_LOGITS_TOL

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # fmt: skip
CASES = {
    "seed_oss": VarConfig("seed_oss", qkv_bias=True, seed=11),
    "seed_oss-tied": VarConfig("seed_oss", n_layer=2, tied=True, n_head_kv=1, seed=2),
    "apertus": VarConfig("apertus", rope_scaling=LLAMA3, seed=3),
    "apertus-scalar": VarConfig("apertus", n_layer=2, xielu_scalar=True, seed=4),
    "hunyuan-dense": VarConfig("hunyuan-dense", ntk_alpha=50.0, tied=True, seed=5),
    "hunyuan-dense-alpha": VarConfig("hunyuan-dense", ntk_alpha=50.0, alpha_key=True, qkv_bias=True, seed=6),
    "arcee": VarConfig("arcee", seed=7),
    "starcoder2": VarConfig("starcoder2", seed=8),
    "starcoder2-tied": VarConfig("starcoder2", n_layer=2, tied=True, seed=9),
}


def tiny(tmp_path, cfg: VarConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-{cfg.arch}-{cfg.seed}.gguf"
    return str(path), write_var(cfg, path, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_f32_logits_match_float64_reference(tmp_path, case):
    cfg = CASES[case]
    path, held = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, reference_logits(cfg, held, TOKENS)).max() < 1e-4


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_llama_cpp(tmp_path, case, wtype):
    """llama.cpp on the same file: within 1e-3 of ours at f32; quantized (a wider model), ours no
    farther from float64 than 1.5x llama.cpp's distance (as test_dense_archs)."""
    cfg = CASES[case]
    if wtype != "F32":
        cfg = replace(cfg, n_embd=256, n_ff=512)
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, theirs).max() < (1e-3 if wtype == "F32" else 4e-2)
    exact = reference_logits(cfg, held, TOKENS)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 1e-4)


# Each difference from llama, undone in the reference alone: far from the real thing on TOKENS.
UNDONE = {
    "seed_oss": [{"neox": False}],
    "apertus": [{"act": "relu2"}, {"qk_norm_first": False}],
    "apertus-scalar": [{"act": "gelu"}],
    "hunyuan-dense": [{"qk_norm_first": True}, {"neox": False}],
    "arcee": [{"act": "gelu"}, {"neox": True}],
    "starcoder2": [{"act": "relu2"}, {"neox": False}],
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNDONE))
def test_each_difference_is_visible(case):
    cfg = CASES[case]
    w = make_weights(cfg)
    ref = reference_logits(cfg, w, TOKENS)
    for change in UNDONE[case]:
        assert rel_err(reference_logits(cfg, w, TOKENS, **change), ref).max() > 1e-2, change
    if cfg.ntk_alpha:  # the NTK-alpha base
        assert rel_err(reference_logits(replace(cfg, ntk_alpha=0.0), w, TOKENS), ref).max() > 1e-2
    if cfg.arch == "starcoder2":  # the norms' biases
        nb = {k: (0 * v if k.endswith("norm.bias") else v) for k, v in w.items()}
        assert rel_err(reference_logits(cfg, nb, TOKENS), ref).max() > 1e-2


@pytest.mark.parametrize("case", ["apertus", "hunyuan-dense", "starcoder2"])
def test_generation_reuses_the_cache(tmp_path, case):
    """Token-by-token decoding after a prompt gives the logits of one pass over everything."""
    path, _ = tiny(tmp_path, CASES[case])
    with Model(path, n_ctx=64, n_threads=2) as m:
        full = m.logits(TOKENS)
    with Model(path, n_ctx=64, n_batch=8, n_threads=2) as m:
        m.eval_prompt(TOKENS[:10])
        steps = [m.eval_prompt(TOKENS[: i + 1]) for i in range(10, len(TOKENS))]
    assert rel_err(np.array(steps), full[10:]).max() < F32_LOGITS_TOL


BAD = [
    ("seed_oss", {"seed_oss.attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon' is missing"),
    ("seed_oss", {"seed_oss.rope.dimension_count": 8}, "rotates whole heads"),
    ("apertus", {"xielu.beta": None}, "'xielu.beta' is missing"),
    ("apertus", {"xielu.alpha_p": [0.5, 0.5]}, "'xielu.alpha_p' has 2 values for 3 layers"),
    ("hunyuan-dense", {"hunyuan-dense.rope.dimension_sections": [4, 2, 2, 0]}, "XD-RoPE"),
    ("hunyuan-dense", {"hunyuan-dense.expert_count": 4, "hunyuan-dense.expert_used_count": 2},
     "has no experts"),
    ("starcoder2", {"starcoder2.attention.layer_norm_epsilon": None}, "layer_norm_epsilon"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "meta", "match"), BAD)
def test_bad_metadata(tmp_path, case, meta, match):
    path, _ = tiny(tmp_path, replace(CASES[case], extra=meta))
    with pytest.raises(GGUFError, match=match):
        Model(path, n_ctx=64, n_threads=2)


@pytest.mark.parametrize(
    ("case", "tensor", "match"),
    [("seed_oss", "blk.1.attn_output.bias", "has no attention output bias"),
     ("seed_oss", "blk.0.post_attention_norm.weight", "post_attention_norm.weight' is missing"),
     ("hunyuan-dense", "blk.0.attn_k_norm.weight", "attn_k_norm.weight' is missing"),
     ("arcee", "blk.1.ffn_gate.weight", "has no gate"),
     ("arcee", "blk.1.ffn_up.bias", "feed-forward biases are not supported"),
     ("apertus", "output.weight", "'output.weight' is missing"),
     ("starcoder2", "blk.1.ffn_norm.bias", "ffn_norm.bias' is missing"),
     ("starcoder2", "blk.0.ffn_down.bias", "ffn_down.bias' is missing"),
     ("starcoder2", "blk.0.attn_output.bias", "attn_output.bias' is missing"),
     ("starcoder2", "output_norm.bias", "output_norm.bias' is missing")],
)  # fmt: skip
def test_bad_tensors(tmp_path, case, tensor, match):
    """An extra tensor llama.cpp would not read, or a missing one: refused, named."""
    cfg = CASES[case]
    w = make_weights(cfg)
    if tensor in w:
        del w[tensor]
    elif tensor.endswith("ffn_gate.weight"):
        w[tensor] = w[tensor.replace("gate", "up")]
    else:
        w[tensor] = np.ones(cfg.n_ff if "ffn_up" in tensor else cfg.n_embd)
    path, _ = tiny(tmp_path, cfg, weights=w)
    with pytest.raises(GGUFError, match=match):
        Model(path, n_ctx=64, n_threads=2)
