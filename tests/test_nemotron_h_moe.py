"""nemotron_h_moe (NVIDIA Nemotron 3 Nano) on tiny random models: nemotron_h's Mamba-2 and attention
layers with mixture-of-experts layers (sigmoid routing with a selection bias, the chosen weights
renormalized and scaled, squared-ReLU experts without a gate, a shared expert), against the float64
re-implementation of transformers' NemotronHForCausalLM (tests/tiny_mamba2.py) and against
llama.cpp on the same files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from recurrent_checks import against_llama_cpp, chunked_prefill_then_decode, rel_err
from splitllm import GGUFError, Model
from tiny_mamba2 import ATTN, MAMBA, MOE, HybridConfig, hybrid_reference_logits, write_hybrid_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
# Nemotron 3 Nano's pattern in small ("MEM*EM"): 8 experts of 96, 3 used, a shared expert of 64
NANO = HybridConfig(
    arch="nemotron_h_moe",
    n_layer=6,
    layer_types=(MAMBA, MOE, MAMBA, ATTN, MOE, MAMBA),
    key_length=32,
    n_group=2,
    n_expert=8,
    n_expert_used=3,
    n_ff_shexp=64,
    tied_output=False,
    seed=93,
)
OPTS = dict(n_ctx=64, n_threads=2)


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("nemotron_h_moe") / "tiny-nemotron-h-moe.gguf"
    return str(path), write_hybrid_gguf(NANO, path)


def test_f32_logits_match_float64_reference_and_decode(nano):
    """One pass, passes of 5 tokens, then token by token: the reference's logits (measured 2.6e-6;
    without the selection bias the reference is 1.1 away, without the renormalization 0.88)."""
    path, held = nano
    ref = hybrid_reference_logits(NANO, held, TOKENS)
    with Model(path, **OPTS) as m:
        assert m.config["conv_layers"] == [0, 2, 5]
        assert rel_err(m.logits(TOKENS), ref).max() < 3e-5
    chunked_prefill_then_decode(path, lambda t: hybrid_reference_logits(NANO, held, t), TOKENS, 5, 3e-5)


@pytest.mark.parametrize("norm_topk, scale", [(True, 2.5), (False, 1.0)])
def test_router_settings(tmp_path, norm_topk, scale):
    """expert_weights_norm off and no scale as well as Nano's (on, 2.5)."""
    cfg = dataclasses.replace(NANO, norm_topk=norm_topk, routed_scale=scale, seed=7)
    path = tmp_path / "r.gguf"
    held = write_hybrid_gguf(cfg, path)
    with Model(str(path), **OPTS) as m:
        assert rel_err(m.logits(TOKENS), hybrid_reference_logits(cfg, held, TOKENS)).max() < 3e-5


@pytest.mark.parametrize("wtype, apart", [("F32", 1e-3), ("Q8_0", 5e-2)])
def test_matches_llama_cpp(tmp_path, wtype, apart):
    """llama.cpp on the same file (f32: 8.0e-5 apart, llama.cpp 8.0e-5 from float64, ours 2.6e-6;
    q8_0: 2.3e-2 apart, both 0.60 from float64, the quantized router choosing other experts for
    some tokens): ours no farther from float64 than 1.5x llama.cpp, at f32 the same greedy tokens."""
    path = tmp_path / f"nemotron-h-moe-{wtype}.gguf"
    held = write_hybrid_gguf(NANO, path, weight_type=wtype)
    ref = lambda t: hybrid_reference_logits(NANO, held, t)  # noqa: E731
    against_llama_cpp(str(path), ref, TOKENS, apart=apart, greedy=wtype == "F32")


def test_bad_files_are_refused(tmp_path):
    path = tmp_path / "bad.gguf"
    a = "nemotron_h_moe."
    write_hybrid_gguf(NANO, path, metadata_changes={a + "moe_latent_size": 32})
    with pytest.raises(GGUFError, match="latent"):
        Model(str(path), **OPTS)
    write_hybrid_gguf(NANO, path, metadata_changes={a + "expert_shared_feed_forward_length": None})
    with pytest.raises(GGUFError, match="expert_shared_feed_forward_length"):
        Model(str(path), **OPTS)
