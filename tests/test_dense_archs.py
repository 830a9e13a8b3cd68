"""mistral3, glm4, exaone4, ernie4_5, cohere2, qwen3vl (text), command-r, exaone and internlm2, and
seed_oss, apertus, hunyuan-dense, arcee and starcoder2, in the engine, on tiny random models: one
suite over a table of cases (CASES), against the numpy float64 re-implementations of transformers'
models (tests/tiny_dense.py, and tests/tiny_densevar.py for the last five) and against llama.cpp on
the same files (logits, and greedy tokens for command-r, exaone and internlm2); each difference from
llama shown to move the logits, so that the comparisons can fail; bad files refused with the file
and the key or tensor named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tiny_dense
import tiny_densevar
from lcpp import llama_cpp_logits
from routed_checks import greedy_matches_llama_cpp, with_fake_gpu
from splitllm import GGUFError, Model
from tiny_dense import DenseConfig
from tiny_densevar import VarConfig
from tiny_model import F32_LOGITS_TOL

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 2.0,
        "beta_slow": 0.05, "mscale_all_dim": 0.5}  # fmt: skip
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
CASES = {
    # YaRN with its own correction turns and magnitude, the attention temperature past position 8
    "mistral3": DenseConfig("mistral3", rope_scaling=YARN, temp_beta=0.5, out_bias=True, seed=1),
    "mistral3-plain-tied": DenseConfig("mistral3", n_layer=2, tied=True, n_head_kv=1, seed=2),
    "glm4": DenseConfig("glm4", partial_rotary=0.5, qkv_bias=True, seed=3),
    "exaone4": DenseConfig("exaone4", seed=4, tied=True),
    # the 32B's layout: 64 layers, windows on three of four (the only ones rotated), llama3 factors
    "exaone4-swa": DenseConfig("exaone4", n_layer=64, n_embd=32, n_head=2, n_head_kv=1, n_ff=32,
                               sliding_window=5, rope_scaling=LLAMA3, seed=5),
    "ernie4_5": DenseConfig("ernie4_5", tied=True, seed=6),
    "cohere2": DenseConfig("cohere2", n_layer=4, sliding_window=5, logit_scale=0.5, tied=True, seed=7),
    "qwen3vl": DenseConfig("qwen3vl", seed=8),
    "command-r": DenseConfig("command-r", logit_scale=0.25, tied=True, seed=9),
    # Command R+'s per-head q/k LayerNorms, which llama.cpp reads from 64 layers on
    "command-r-plus": DenseConfig("command-r", n_layer=64, n_embd=32, n_head=2, n_head_kv=1, n_ff=32,
                                  logit_scale=0.5, tied=True, seed=10),
    "exaone": DenseConfig("exaone", seed=11),
    "exaone-3.5": DenseConfig("exaone", tied=True, rope_scaling=LLAMA3, seed=12),  # (2.4B: tied)
    "internlm2": DenseConfig("internlm2", seed=14),
    # tests/tiny_densevar.py's
    "seed_oss": VarConfig("seed_oss", qkv_bias=True, seed=11),
    "seed_oss-tied": VarConfig("seed_oss", n_layer=2, tied=True, n_head_kv=1, seed=2),
    "apertus": VarConfig("apertus", rope_scaling={**LLAMA3, "original_max_position_embeddings": 16}, seed=3),
    "apertus-scalar": VarConfig("apertus", n_layer=2, xielu_scalar=True, seed=4),
    "hunyuan-dense": VarConfig("hunyuan-dense", ntk_alpha=50.0, tied=True, seed=5),
    "hunyuan-dense-alpha": VarConfig("hunyuan-dense", ntk_alpha=50.0, alpha_key=True, qkv_bias=True, seed=6),
    "arcee": VarConfig("arcee", seed=7),
    "starcoder2": VarConfig("starcoder2", seed=8),
    "starcoder2-tied": VarConfig("starcoder2", n_layer=2, tied=True, seed=9),
}  # fmt: skip
NEW = ["command-r", "command-r-plus", "exaone", "exaone-3.5", "internlm2"]  # (greedy and fake-GPU checks)


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


# The model's YaRN correction turns (rope.scaling.yarn_beta_*), not llama-cpp-python's defaults (32, 1),
# which both engines' Python APIs pass otherwise.
MODEL_BETAS = {"yarn_beta_fast": -1.0, "yarn_beta_slow": -1.0}


def module(cfg: DenseConfig):
    """The case's tiny_* module (make_weights, reference_logits)."""
    return tiny_densevar if isinstance(cfg, VarConfig) else tiny_dense


def opts(cfg: DenseConfig) -> dict[str, float]:
    """The engines' options for the case (tiny_dense's: the model's own YaRN turns)."""
    return {} if isinstance(cfg, VarConfig) else MODEL_BETAS


def reference_logits(cfg: DenseConfig, w: dict[str, np.ndarray], tokens: list[int], **kw) -> np.ndarray:
    return module(cfg).reference_logits(cfg, w, tokens, **kw)


def tiny(tmp_path, cfg: DenseConfig, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-{cfg.arch}-{cfg.seed}.gguf"
    write = tiny_densevar.write_var if isinstance(cfg, VarConfig) else tiny_dense.write_dense
    return str(path), write(cfg, path, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_f32_logits_match_float64_reference(tmp_path, case):
    cfg = CASES[case]
    path, held = tiny(tmp_path, cfg)
    with Model(path, n_ctx=64, n_threads=2, **opts(cfg)) as m:
        ours = m.logits(TOKENS)
    # (float32 rounding adds up over exaone4-swa's 64 layers: 7e-4 measured)
    assert rel_err(ours, reference_logits(cfg, held, TOKENS)).max() < 1e-4 * max(1, cfg.n_layer // 6)


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_llama_cpp(tmp_path, case, wtype):
    """llama.cpp on the same file: within 1e-3 of ours at f32; quantized (a wider model), ours no
    farther from float64 than 1.5x llama.cpp's distance (as test_llama_variants)."""
    cfg = CASES[case]
    if wtype != "F32":
        cfg = replace(cfg, n_embd=128 if cfg.head_norms else 256,
                      n_ff=256 if cfg.arch == "exaone4" or cfg.n_layer == 64 else 512,
                      n_layer=min(cfg.n_layer, 8) if cfg.n_layer != 64 else 64)  # fmt: skip
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    theirs = llama_cpp_logits(path, TOKENS, **opts(cfg))
    with Model(path, n_ctx=64, n_threads=2, **opts(cfg)) as m:
        ours = m.logits(TOKENS)
    # (over exaone4-swa's 64 layers the engines drift apart 3x as far: 2.0e-3 at f32, where llama.cpp
    # is 1.9e-3 from float64 and ours 7e-4; 5.5e-2 at q8_0, each 4.4-4.9e-2 from float64)
    depth = 1 if cfg.n_layer < 24 else 3
    assert rel_err(ours, theirs).max() < (1e-3 if wtype == "F32" else 4e-2) * depth
    exact = reference_logits(cfg, held, TOKENS)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 1e-4)


# Each difference from llama, undone in the reference alone: far from the real thing on TOKENS.
UNDONE = {
    "mistral3": [{"temp_beta": 0.0}, {"rope_scaling": {**YARN, "mscale_all_dim": 0.0}},
                 {"rope_scaling": {**YARN, "beta_fast": 32.0, "beta_slow": 1.0}}],
    "glm4": [{"partial_rotary": 1.0}],
    "exaone4-swa": [{"sliding_window": 4096}, {"rope_scaling": None}],
    "cohere2": [{"sliding_window": 4096}, {"logit_scale": 1.0}],
    "command-r": [{"logit_scale": 1.0}],
    "exaone-3.5": [{"rope_scaling": None}],
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNDONE))
def test_each_difference_is_visible(case):
    """tiny_dense's cases: the config changed."""
    cfg = CASES[case]
    w = tiny_dense.make_weights(cfg)
    ref = reference_logits(cfg, w, TOKENS)
    for change in UNDONE[case]:
        other = replace(cfg, **change)
        if change.get("partial_rotary"):  # the reference's rotation of whole heads
            other = replace(other, partial_rotary=1.0)
        assert rel_err(reference_logits(other, w, TOKENS), ref).max() > 1e-2, change


@pytest.mark.parametrize(("case", "neox"), [("exaone", False), ("internlm2", True), ("command-r", True)])
def test_rotation_layout_is_visible(case, neox):
    """The pairs each architecture rotates (exaone: NEOX halves; internlm2, command-r: interleaved)
    matter: the other layout moves the reference's logits."""
    cfg = CASES[case]
    w = tiny_dense.make_weights(cfg)
    moved = reference_logits(cfg, w, TOKENS, neox=neox)
    assert rel_err(moved, reference_logits(cfg, w, TOKENS)).max() > 1e-2


def test_command_r_plus_head_norms_are_visible():
    """Command R+'s q/k LayerNorms matter, and so do their per-head weight rows: without the norms,
    or with every head given head 0's row, the reference's logits move."""
    cfg = CASES["command-r-plus"]
    w = tiny_dense.make_weights(cfg)
    ref = reference_logits(cfg, w, TOKENS)
    without = {k: v for k, v in w.items() if not k.endswith(("attn_q_norm.weight", "attn_k_norm.weight"))}
    shared = {k: np.broadcast_to(v[:1], v.shape) if k.endswith("q_norm.weight") else v for k, v in w.items()}
    for other in (without, shared):
        assert rel_err(reference_logits(cfg, other, TOKENS), ref).max() > 1e-2


@pytest.mark.parametrize("case", NEW)
def test_greedy_tokens_match_llama_cpp(tmp_path, case):
    """12 greedy tokens after an 8-token prompt: llama.cpp's."""
    path, _ = tiny(tmp_path, CASES[case])
    greedy_matches_llama_cpp(path, TOKENS[:8])


@pytest.mark.parametrize("case", ["command-r", "command-r-plus", "internlm2"])
def test_fake_gpu_placement(tmp_path, monkeypatch, case):
    """With a (fake) GPU and n_gpu_layers -1 the logits are the CPU's; Command R+'s blocks (per-head
    q/k LayerNorms: no GPU path) stay on the CPU with a warning, the output layer going to the GPU;
    command-r's and internlm2's blocks all go."""
    cfg = CASES[case]
    path, _ = tiny(tmp_path, cfg)
    m = with_fake_gpu(path, TOKENS, monkeypatch)
    devices = [p["device"] for p in m.placement]
    if cfg.head_norms:
        assert len(m.warnings) == 1 and "per-head query and key LayerNorms" in m.warnings[0]
        assert devices == ["CPU"] * (1 + cfg.n_layer) + ["FAKEGPU0"]  # (the embedding, the blocks, output)
    else:
        assert not m.warnings and devices == ["CPU"] + ["FAKEGPU0"] * (cfg.n_layer + 1)


# Each difference from llama, undone in tiny_densevar's reference alone (its keyword arguments).
UNDONE_VAR = {
    "seed_oss": [{"neox": False}],
    "apertus": [{"act": "relu2"}, {"qk_norm_first": False}],
    "apertus-scalar": [{"act": "gelu"}],
    "hunyuan-dense": [{"qk_norm_first": True}, {"neox": False}],
    "arcee": [{"act": "gelu"}, {"neox": True}],
    "starcoder2": [{"act": "relu2"}, {"neox": False}],
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNDONE_VAR))
def test_each_var_difference_is_visible(case):
    """tiny_densevar's cases: the reference's options changed, its NTK-alpha base and norm biases."""
    cfg = CASES[case]
    w = tiny_densevar.make_weights(cfg)
    ref = reference_logits(cfg, w, TOKENS)
    for change in UNDONE_VAR[case]:
        assert rel_err(reference_logits(cfg, w, TOKENS, **change), ref).max() > 1e-2, change
    if cfg.ntk_alpha:  # the NTK-alpha base
        assert rel_err(reference_logits(replace(cfg, ntk_alpha=0.0), w, TOKENS), ref).max() > 1e-2
    if cfg.arch == "starcoder2":  # the norms' biases
        nb = {k: (0 * v if k.endswith("norm.bias") else v) for k, v in w.items()}
        assert rel_err(reference_logits(cfg, nb, TOKENS), ref).max() > 1e-2


@pytest.mark.parametrize(
    ("case", "n_batch", "swa_cells"),
    [("mistral3", 512, 0), ("exaone4-swa", 512, 0), ("exaone4-swa", 8, 5 + 8), ("cohere2", 512, 0),
     ("cohere2", 8, 5 + 8), ("apertus", 8, 0), ("hunyuan-dense", 8, 0), ("starcoder2", 8, 0)],
)  # fmt: skip
def test_generation_reuses_the_cache(tmp_path, case, n_batch, swa_cells):
    """Token-by-token decoding after a prompt gives the logits of one pass over everything (with
    n_batch 8, the sliding-window layers' caches are rings of window + 8 cells)."""
    path, _ = tiny(tmp_path, CASES[case])
    kw = opts(CASES[case])
    with Model(path, n_ctx=64, n_batch=512, n_threads=2, **kw) as m:
        full = m.logits(TOKENS)
    with Model(path, n_ctx=64, n_batch=n_batch, n_threads=2, **kw) as m:
        assert m._core.swa_cells == swa_cells
        m.eval_prompt(TOKENS[:10])
        steps = [m.eval_prompt(TOKENS[: i + 1]) for i in range(10, len(TOKENS))]
    assert rel_err(np.array(steps), full[10:]).max() < F32_LOGITS_TOL * max(1, CASES[case].n_layer // 12)


BAD = [
    ("mistral3", {"mistral3.attention.layer_norm_rms_epsilon": None},
     "layer_norm_rms_epsilon' is missing"),
    ("mistral3", {"mistral3.attention.temperature_scale": -1.0},
     "temperature_scale' = -1 must be at least 0"),
    ("mistral3", {"mistral3.rope.dimension_count": 8}, "rotates whole heads"),
    ("glm4", {"glm4.rope.dimension_sections": [4, 2, 2, 0]}, "M-RoPE"),
    ("cohere2", {"cohere2.logit_scale": None}, "cohere2.logit_scale' is missing"),
    ("cohere2", {"cohere2.attention.sliding_window": None}, "cohere2.attention.sliding_window' is missing"),
    ("cohere2", {"cohere2.attention.layer_norm_epsilon": None}, "layer_norm_epsilon"),
    ("qwen3vl", {"qwen3vl.rope.dimension_sections": None}, "qwen3vl.rope.dimension_sections' is missing"),
    ("command-r", {"command-r.attention.layer_norm_epsilon": None}, "command-r.attention.layer_norm_epsilon"),
    ("command-r", {"command-r.logit_scale": -1.0}, "logit_scale' = -1 must be positive or 0"),
    ("command-r", {"command-r.attention.key_length": 8, "command-r.attention.value_length": 8,
                   "command-r.rope.dimension_count": 8},
     "head_count x key_length = embedding_length"),
    ("exaone", {"exaone.attention.layer_norm_rms_epsilon": None}, "'exaone.attention.layer_norm_rms_eps"),
    ("internlm2", {"internlm2.attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon' is missing"),
    ("internlm2", {"internlm2.rope.dimension_count": 8}, "internlm2 rotates whole heads"),
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
    [("ernie4_5", "blk.1.attn_output.bias", "has no attention output bias"),
     ("glm4", "blk.0.attn_output.bias", "has no attention output bias"),
     ("cohere2", "output.weight", "ties its output layer"),
     ("exaone4", "blk.2.post_ffw_norm.weight", "post_ffw_norm.weight' is missing"),
     ("glm4", "blk.1.ffn_up.weight", "ffn_up.weight' is missing"),
     ("seed_oss", "blk.1.attn_output.bias", "has no attention output bias"),
     ("seed_oss", "blk.0.post_attention_norm.weight", "post_attention_norm.weight' is missing"),
     ("hunyuan-dense", "blk.0.attn_k_norm.weight", "attn_k_norm.weight' is missing"),
     ("arcee", "blk.1.ffn_gate.weight", "has no gate"),
     ("arcee", "blk.1.ffn_up.bias", "feed-forward biases are not supported"),
     ("apertus", "output.weight", "'output.weight' is missing"),
     ("starcoder2", "blk.1.ffn_norm.bias", "ffn_norm.bias' is missing"),
     ("starcoder2", "blk.0.ffn_down.bias", "ffn_down.bias' is missing"),
     ("starcoder2", "blk.0.attn_output.bias", "attn_output.bias' is missing"),
     ("starcoder2", "output_norm.bias", "output_norm.bias' is missing"),
     ("command-r", "output.weight", "command-r ties its output layer"),
     ("command-r", "blk.0.attn_q_norm.weight", "norms only in models of 64 layers or more"),
     ("command-r-plus", "blk.3.attn_k_norm.weight", "blk.3.attn_k_norm.weight' is missing"),
     ("exaone", "blk.0.attn_output.bias", "has no attention output bias"),
     ("internlm2", "output.weight", "'output.weight' is missing"),
     ("internlm2", "rope_freqs.weight", "internlm2 reads no rotary factors")],
)  # fmt: skip
def test_bad_tensors(tmp_path, case, tensor, match):
    """An extra tensor llama.cpp would not read, or a missing one: refused, named."""
    cfg = CASES[case]
    w = module(cfg).make_weights(cfg)
    if tensor in w:
        del w[tensor]
    elif tensor.endswith("ffn_gate.weight"):
        w[tensor] = w[tensor.replace("gate", "up")]
    elif tensor.endswith(".bias"):
        w[tensor] = np.ones(cfg.n_ff if "ffn_up" in tensor else cfg.n_embd)
    else:
        w[tensor] = w["token_embd.weight"]
    path, _ = tiny(tmp_path, cfg, weights=w)
    with pytest.raises(GGUFError, match=match):
        Model(path, n_ctx=64, n_threads=2)
