"""Qwen3-Next (gguf arch qwen3next) on tiny random models: qwen35's gated delta nets and gated
attention with Qwen3-Next's layout (q, k, v, z and beta, alpha fused per key head, value heads in
Hugging Face's grouped order, plain NEOX rotation, a routed mixture with a gated shared expert in
every block), against the float64 re-implementation of transformers' Qwen3NextForCausalLM
(tests/tiny_qwen35.py) and against llama.cpp on the same files, at f32 and q8_0, in llama.cpp's
current layout (attn_qkv, attn_gate, ssm_ba) and its older one (ssm_in)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import recurrent_checks as R
from lcpp import check_routed_q8, llama_cpp_logits
from recurrent_checks import rel_err
from routed_checks import split_with_host_parts
from splitllm import GGUFError, Model
from test_qwen35 import OPTS, TOKENS, tiny
from tiny_glm4moe import file_block_bytes
from tiny_qwen35 import Qwen35Config, qwen35_reference_logits

# two key heads of two value heads each (grouped and tiled orders differ); (seed 71 puts a router
# near-tie, 5e-5 apart, at token 16 of layer 1: llama.cpp picks the other expert)
NEXT = Qwen35Config(qwen3next=True, n_expert=4, seed=73)
# Qwen3-Next's pattern in small (three delta nets, then attention), three value heads per key head,
# a 3-tap convolution, a tied output, the older files' fused ssm_in
NEXT_WIDE = Qwen35Config(
    qwen3next=True,
    n_expert=4,
    n_layer=8,
    full_attention_interval=4,
    k_heads=2,
    v_heads=6,
    n_head_kv=1,
    conv_kernel=3,
    tied_output=True,
    ssm_in=True,
    seed=72,
)


@pytest.fixture(scope="module")
def qwen3next(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    return tiny(tmp_path_factory.mktemp("qwen3next"), NEXT)


@pytest.mark.parametrize(
    "cfg", [NEXT, replace(NEXT, ssm_in=True), NEXT_WIDE], ids=["qkv-gate", "ssm_in", "8l-3v-per-k-tied"]
)
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
        c = m.config
    assert c["arch"] == "qwen3next" and c["recurrent"] and c["conv_l_cache"] == cfg.conv_kernel
    assert c["conv_layers"] == [i for i in range(cfg.n_layer) if cfg.is_linear(i)]
    # (measured 3.5e-5: the routed experts' f32 sums)
    assert rel_err(ours, qwen35_reference_logits(cfg, held, TOKENS)).max() < 1e-4


def test_the_reference_sees_the_layout(qwen3next):
    """Reading the fused projections in another order (beta and alpha swapped within a key head, or
    the value heads tiled instead of grouped) changes the reference's logits: the comparisons above
    would see a wrong layout."""
    _, held = qwen3next
    ref = qwen35_reference_logits(NEXT, held, TOKENS)

    def changed(name: str, f) -> float:
        w = {k: f(v) if k.endswith(name) else v for k, v in held.items()}
        return float(rel_err(qwen35_reference_logits(NEXT, w, TOKENS), ref).min())

    d = NEXT.dn_head_dim

    def tile_v(x: np.ndarray) -> np.ndarray:  # each key head's two value heads swapped with the other's
        y = x.reshape(NEXT.k_heads, -1, x.shape[-1]).copy()
        v = y[:, 2 * d : 4 * d].reshape(2, 2, d, -1)
        y[:, 2 * d : 4 * d] = v.swapaxes(0, 1).reshape(2, 2 * d, -1)
        return y.reshape(x.shape)

    assert changed("in_proj_ba.weight", lambda x: x.reshape(2, 2, 2, -1)[:, ::-1].reshape(x.shape)) > 1e-2
    assert changed("in_proj_qkvz.weight", tile_v) > 1e-2


def test_matches_llama_cpp(qwen3next):
    """llama.cpp on the same file at f32: within 1e-3 of ours (measured 1.8e-4; ours 6.2e-6 from the
    float64 reference), ours nearer the reference, the same greedy continuation."""
    path, held = qwen3next
    R.against_llama_cpp(path, partial(qwen35_reference_logits, NEXT, held), TOKENS, apart=1e-3, greedy=True)


def test_q8_0_matches_reference_and_llama_cpp(tmp_path):
    """At q8_0 (a wider model) per token, as other routed mixtures are checked (lcpp.check_routed_q8:
    the 8-bit activations flip near ties of the routers at a few tokens)."""
    cfg = replace(NEXT, n_embd=256, n_ff_exp=128, n_ff_shexp=256)
    path, held = tiny(tmp_path, cfg, weight_type="Q8_0")
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
    check_routed_q8(ours, qwen35_reference_logits(cfg, held, TOKENS), llama_cpp_logits(path, TOKENS))


def test_older_layout_matches_llama_cpp(tmp_path):
    """The fused ssm_in (older converters' files), three value heads per key head: llama.cpp's legacy
    path on the same file, the same greedy continuation."""
    path, held = tiny(tmp_path, NEXT_WIDE)
    R.against_llama_cpp(
        path, partial(qwen35_reference_logits, NEXT_WIDE, held), TOKENS, apart=1e-3, greedy=True
    )


@pytest.mark.parametrize("n_batch", [1, 5])
def test_chunked_prefill_then_decode_equals_one_pass(qwen3next, n_batch):
    path, held = qwen3next
    R.chunked_prefill_then_decode(path, partial(qwen35_reference_logits, NEXT, held), TOKENS, n_batch, 1e-4)


def test_two_sequences_at_once_equal_each_alone(qwen3next):
    path, held = qwen3next
    R.two_sequences_equal_each_alone(path, partial(qwen35_reference_logits, NEXT, held), TOKENS, 1e-4)


def test_prefix_reuse_and_saved_states(qwen3next):
    path, held = qwen3next
    ref = partial(qwen35_reference_logits, NEXT, held)
    R.prefix_reused_only_where_the_state_is(path, ref, TOKENS, 1e-4)
    R.state_saved_and_loaded(path, ref, TOKENS, 1e-4)


@pytest.mark.parametrize("cfg", [NEXT, NEXT_WIDE], ids=["qkv-gate", "ssm_in"])
def test_placement_counts_every_weight(tmp_path, cfg):
    """model.placement's bytes of each block are its tensors' bytes in the file (gguf-py's reader:
    the fused projections, the experts, the shared expert and its gate); the plan and the loaded
    model count per slot each delta net's conv_kernel - 1 inputs and its state matrices with the
    attention layers' KV cache."""
    path, _ = tiny(tmp_path, cfg)
    with Model(path, **OPTS) as m:
        got = {p["name"]: p["weight_bytes"] for p in m.placement if p["name"].startswith("blk.")}
    assert got == file_block_bytes(path, cfg.n_layer)[0]
    cpu = R.plan_equals_model(path)
    n_lin = sum(cfg.is_linear(i) for i in range(cfg.n_layer))
    kv = (cfg.n_layer - n_lin) * 64 * cfg.n_head_kv * cfg.head_dim * 2 * 2  # K and V in f16
    state = (cfg.conv_kernel - 1) * cfg.conv_dim + cfg.v_heads * cfg.dn_head_dim**2
    assert cpu.kv_cache == kv + n_lin * 2 * state * 4


def test_bad_files_are_refused(tmp_path):
    path, _ = tiny(tmp_path, NEXT, metadata={"qwen3next.expert_count": None})
    with pytest.raises(GGUFError, match="expert_count"):
        Model(path, **OPTS)
    path, _ = tiny(tmp_path, NEXT, metadata={"qwen3next.ssm.group_count": 4})  # ssm_ba's rows are 2 x 4
    with pytest.raises(GGUFError, match="attn_qkv.weight"):
        Model(path, **OPTS)


def test_a_multi_token_prediction_block_is_not_run(tmp_path, qwen3next):
    """block_count counts the MTP block past the trunk (nextn_predict_layers, as llama.cpp's
    converter writes Qwen3-Next's): the trunk's layers alone give the logits."""
    _, held = qwen3next
    path, _ = tiny(tmp_path, NEXT, metadata={"qwen3next.block_count": 5, "qwen3next.nextn_predict_layers": 1})
    with Model(path, **OPTS) as m:
        assert rel_err(m.logits(TOKENS), qwen35_reference_logits(NEXT, held, TOKENS)).max() < 1e-4


def test_imatrix_names_the_files_projections(tmp_path):
    """llama-imatrix's site of a delta net's input projections is the file's tensor: attn_qkv, or
    the older files' ssm_in."""
    for cfg, name in ((NEXT, "attn_qkv"), (replace(NEXT, ssm_in=True, seed=75), "ssm_in")):
        path, _ = tiny(tmp_path, cfg)
        with Model(path, **OPTS) as m:
            m.imatrix_start()
            m.logits(TOKENS)
            imx = m.imatrix_stop()
        assert {f"blk.0.{name}.weight", "blk.0.ssm_out.weight", "blk.1.attn_q.weight"} < set(imx.entries)


@pytest.mark.parametrize("ngl", [2, -1])
def test_gpu_split_keeps_the_mixers_on_the_host(qwen3next, monkeypatch, ngl):
    """With a (fake) GPU: every mixer stays on the host, the experts too; the shared expert (gated
    per token) with them; the placement splits the file's tensors so, and the logits are the CPU's
    exactly (routed_checks.split_with_host_parts)."""
    split_with_host_parts(qwen3next[0], monkeypatch, ngl=ngl)

