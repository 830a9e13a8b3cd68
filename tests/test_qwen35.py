"""Qwen3.5 (gguf arch qwen35) on tiny random models: gated delta-net layers between gated attention
layers, against the float64 re-implementation of transformers' Qwen3_5ForCausalLM
(tests/tiny_qwen35.py) and against llama.cpp on the same files; the recurrent state (convolution
inputs and delta-rule matrices) each sequence keeps beside its KV cache across passes, sequences,
saved states and reused prefixes."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial
from itertools import islice

import numpy as np
import pytest
import recurrent_checks as R
from lcpp import llama_cpp_greedy, llama_cpp_logits
from recurrent_checks import rel_err
from routed_checks import split_with_host_parts
from splitllm import Error, GGUFError, Model
from tiny_qwen35 import Qwen35Config, qwen35_reference_logits, write_qwen35_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
QWEN35 = Qwen35Config(seed=61)
# Qwen3.5's own pattern in small (three delta nets, then attention), value heads 4 per key head,
# MQA attention, a 3-tap convolution, a tied output
QWEN35_WIDE = Qwen35Config(
    n_layer=8,
    full_attention_interval=4,
    k_heads=1,
    v_heads=4,
    n_head_kv=1,
    conv_kernel=3,
    tied_output=True,
    seed=62,
)
OPTS = dict(n_ctx=64, n_threads=2)


def tiny(tmp_path, cfg: Qwen35Config, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-qwen35-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    return str(path), write_qwen35_gguf(cfg, path, **kw)


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    return tiny(tmp_path_factory.mktemp("qwen35"), QWEN35)


@pytest.mark.parametrize("cfg", [QWEN35, QWEN35_WIDE], ids=["qwen35", "qwen35-8l-mqa-tied"])
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
        c = m.config
    assert c["recurrent"] and c["conv_l_cache"] == cfg.conv_kernel
    assert c["conv_layers"] == [i for i in range(cfg.n_layer) if cfg.is_linear(i)]
    assert rel_err(ours, qwen35_reference_logits(cfg, held, TOKENS)).max() < 1e-4


def test_the_reference_sees_each_part(qwen35):
    """The state, the output gates, the decay and the value-head order each change the reference's
    logits: the comparisons above would see them wrong."""
    _, held = qwen35
    ref = qwen35_reference_logits(QWEN35, held, TOKENS)

    def changed(**kw: np.ndarray) -> float:
        w = dict(held)
        for key, v in kw.items():
            for name in [n for n in w if n.endswith(key.replace("__", "."))]:
                w[name] = v(w[name])
        return float(rel_err(qwen35_reference_logits(QWEN35, w, TOKENS), ref)[1:].min())

    assert changed(linear_attn__A_log=lambda a: a + 30) > 1e-2  # no memory: each token's own state
    assert changed(linear_attn__in_proj_z__weight=lambda z: 0 * z) > 1e-2
    assert (
        changed(self_attn__q_proj__weight=lambda q: q.reshape(4, 2, 32, -1)[:, ::-1].reshape(q.shape)) > 1e-2
    )
    assert changed(linear_attn__in_proj_qkv__weight=lambda x: np.concatenate([x[:64], x[64:][::-1]])) > 1e-2


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
def test_matches_llama_cpp(tmp_path, wtype):
    """llama.cpp on the same file: within 1e-3 of ours at f32 and the same greedy continuation;
    at q8_0 (a wider model) ours no farther from float64 than 1.5x llama.cpp's distance (no greedy
    check: rounding of both engines' activations moves the tiny model's close top logits)."""
    cfg = QWEN35_WIDE if wtype == "F32" else replace(QWEN35, n_embd=256, n_ff=512)
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    # (q8_0: measured 2.1e-2 apart, ours 2.5e-2 and llama.cpp 2.6e-2 from float64; f32: 1.9e-4 apart)
    f32 = wtype == "F32"
    ref = partial(qwen35_reference_logits, cfg, held)
    R.against_llama_cpp(path, ref, TOKENS, apart=1e-3 if f32 else 5e-2, greedy=f32)


@pytest.mark.parametrize("n_batch", [1, 5])
def test_chunked_prefill_then_decode_equals_one_pass(qwen35, n_batch):
    path, held = qwen35
    R.chunked_prefill_then_decode(path, partial(qwen35_reference_logits, QWEN35, held), TOKENS, n_batch, 1e-4)


def test_two_sequences_at_once_equal_each_alone(tmp_path):
    path, held = tiny(tmp_path, QWEN35_WIDE)
    R.two_sequences_equal_each_alone(path, partial(qwen35_reference_logits, QWEN35_WIDE, held), TOKENS, 1e-4)


def test_a_slot_continues_only_where_it_stopped(qwen35):
    path, held = qwen35
    R.slot_continues_only_where_it_stopped(path, partial(qwen35_reference_logits, QWEN35, held), TOKENS, 1e-4)


def test_prefix_reuse_and_saved_states(qwen35):
    """A prompt extending the cached one reads only the rest, one sharing part of it is read again;
    save_state / load_state carry the recurrent state with the K/V."""
    path, held = qwen35
    ref = partial(qwen35_reference_logits, QWEN35, held)
    R.prefix_reused_only_where_the_state_is(path, ref, TOKENS, 1e-4)
    R.state_saved_and_loaded(path, ref, TOKENS, 1e-4)


@pytest.mark.parametrize("moe", [False, True], ids=["qwen35", "qwen35moe"])
def test_memory_counts_the_weights_and_states(tmp_path, moe):
    """model.placement's bytes of each block are its tensors' bytes in the file (gguf-py's reader);
    the plan and the loaded model count per slot each delta net's conv_kernel - 1 inputs of its
    q, k, v channels and its state matrices with the attention layers' KV cache."""
    import gguf
    from splitllm.plan import plan

    c = Qwen35Config(n_expert=4, seed=64) if moe else QWEN35
    path, _ = tiny(tmp_path, c)
    per_block: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if b := re.match(r"(blk\.\d+)\.", t.name):
            per_block[b.group(1)] = per_block.get(b.group(1), 0) + int(t.n_bytes)
    opts = dict(n_ctx=64, n_batch=4, n_seq_max=2, n_threads=2)
    p = plan(path, cpu_memory="1GiB", **opts)
    with Model(path, **opts) as m:
        got = {d["name"]: d for d in m._engine().memory}["CPU"]
        blocks = {p["name"]: p["weight_bytes"] for p in m.placement if p["name"].startswith("blk.")}
    assert blocks == per_block
    cpu = p.device("CPU")
    assert (cpu.buffers, cpu.weights, cpu.kv_cache) == (got["buffers"], got["weights"], got["kv"])
    n_lin = sum(c.is_linear(i) for i in range(c.n_layer))
    kv = (c.n_layer - n_lin) * 64 * c.n_head_kv * c.head_dim * 2 * 2  # K and V in f16
    state = (c.conv_kernel - 1) * c.conv_dim + c.v_heads * c.dn_head_dim**2
    assert cpu.kv_cache == kv + n_lin * 2 * state * 4


def test_bad_files_are_refused(tmp_path):
    for key, match in (
        ("qwen35.ssm.state_size", "ssm.state_size"),
        ("qwen35.ssm.inner_size", "inner_size"),
        ("qwen35.rope.dimension_sections", "dimension_sections"),
    ):
        path, _ = tiny(tmp_path, QWEN35, metadata={key: None})
        with pytest.raises(GGUFError, match=match):
            Model(path, **OPTS)
    path, _ = tiny(tmp_path, QWEN35, metadata={"qwen35.ssm.time_step_rank": 3})
    with pytest.raises(GGUFError, match="time_step_rank"):
        Model(path, **OPTS)
    path, _ = tiny(tmp_path, QWEN35, metadata={"qwen35.ssm.conv_kernel": 5})  # the kernels have 4 taps
    with pytest.raises(GGUFError, match="ssm_conv1d.weight"):
        Model(path, **OPTS)
    path, _ = tiny(tmp_path, replace(QWEN35, mrope_section=(1, 0, 1)))  # pair 1 would keep position 0
    with pytest.raises(GGUFError, match="dimension_sections"):
        Model(path, **OPTS)


QWEN35_MOE = Qwen35Config(n_expert=4, seed=63)


def test_moe_matches_float64_reference_and_llama_cpp(tmp_path):
    """qwen35moe (Qwen3.5-MoE): the routed experts and the gated shared expert, against the float64
    reference at f32 (ours and llama.cpp's) with equal greedy continuations; state carried over
    passes of 5."""
    path, held = tiny(tmp_path, QWEN35_MOE)
    ref = qwen35_reference_logits(QWEN35_MOE, held, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, n_batch=5, **OPTS) as m:
        ours = m.logits(TOKENS)
        greedy = list(islice(m.generate(TOKENS[:8], temp=0.0), 16))
    assert rel_err(ours, ref).max() < 1e-4
    assert rel_err(theirs, ref).max() < 1e-3
    assert greedy == llama_cpp_greedy(path, TOKENS[:8], 16)


def test_imatrix_and_quantized_cache(qwen35):
    """llama-imatrix's sites of a delta net (attn_qkv, ssm_out: the squared inputs summed over the
    tokens) beside the attention's (attn_q ... attn_output); a q8_0 KV cache (keys and values
    rotated) stays close to the f16 one's logits."""
    path, held = qwen35
    with Model(path, **OPTS) as m:
        m.imatrix_start()
        ref = m.logits(TOKENS)
        imx = m.imatrix_stop()
    lin = [i for i in range(QWEN35.n_layer) if QWEN35.is_linear(i)]
    names = [f"blk.{i}.{t}.weight" for i in lin for t in ("attn_qkv", "ssm_out")]
    assert set(names) < set(imx.entries) and "blk.1.attn_q.weight" in imx.entries
    h = held["model.embed_tokens.weight"][TOKENS]
    h = (
        h
        / np.sqrt((h * h).mean(-1, keepdims=True) + QWEN35.rms_eps)
        * (1 + held["model.layers.0.input_layernorm.weight"])
    )
    np.testing.assert_allclose(imx.entries["blk.0.attn_qkv.weight"].sums[0], (h * h).sum(axis=0), rtol=1e-4)
    assert all(imx.entries[n].counts.tolist() == [len(TOKENS)] for n in names)
    with Model(path, type_k="q8_0", type_v="q8_0", **OPTS) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-2  # (measured 3.1e-3; 4.9e-3 unrotated)


def test_lora_adapters_are_refused(qwen35):
    """(the gated attention and the delta nets apply no LoRA updates: refused rather than ignored)"""
    from splitllm import _core

    path, _ = qwen35
    with pytest.raises(Error, match="LoRA adapters are not supported on a qwen35 model"):
        _core.Model(path, n_ctx=64, n_threads=1, loras=[("adapter.gguf", 1.0)])


def test_a_multi_token_prediction_block_is_not_run(tmp_path, qwen35):
    """block_count counts the MTP block past the trunk (nextn_predict_layers, as llama.cpp's
    converter writes it): the trunk's layers alone give the logits."""
    _, held = qwen35
    path, _ = tiny(tmp_path, QWEN35, metadata={"qwen35.block_count": 5, "qwen35.nextn_predict_layers": 1})
    with Model(path, **OPTS) as m:
        assert rel_err(m.logits(TOKENS), qwen35_reference_logits(QWEN35, held, TOKENS)).max() < 1e-4


@pytest.mark.parametrize("ngl", [2, -1])
def test_gpu_split_keeps_the_mixers_on_the_host(qwen35, monkeypatch, ngl):
    """With a (fake) GPU: every mixer (delta nets, gated attention with its KV cache) stays on the
    host, the feed-forwards go to the GPU; the placement splits the file's tensors so, and the
    logits are the CPU's exactly (routed_checks.split_with_host_parts)."""
    split_with_host_parts(qwen35[0], monkeypatch, ngl=ngl)

