"""deci (Llama-3.1-Nemotron NAS models) on tiny random models with every kind of block (attention
with its own key/value heads, linear attention, no attention, no feed-forward), against the float64
re-implementation of transformers' DeciLM (tests/tiny_deci.py) and llama.cpp on the same files."""

from __future__ import annotations

import dataclasses
from itertools import islice

import numpy as np
import pytest
from lcpp import llama_cpp_greedy, llama_cpp_logits
from recurrent_checks import plan_equals_model
from splitllm import GGUFError, Model
from tiny_deci import DeciConfig, make_weights, reference_logits, write_deci_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 290, 255, 18, 64, 5, 250, 33, 120, 11]
# (query heads, key/value heads, feed-forward width): GQA 2, linear attention, attention-free (51B),
# MHA, a dummy layer (Ultra-253B: neither), MQA
CFG = DeciConfig(layers=((4, 2, 96), (4, 0, 64), (0, 0, 128), (4, 4, 96), (0, 0, 0), (4, 1, 64)), seed=5)
# a layer that attends without a feed-forward (transformers keeps its attention; llama.cpp drops it)
NO_FFN = dataclasses.replace(CFG, layers=((4, 2, 96), (4, 1, 0), (4, 4, 64)), seed=6)
# DeciLM-7B's form: one head count and width, key/value heads per layer; attention biases
DECILM_7B = dataclasses.replace(CFG, layers=((4, 4, 96), (4, 2, 96), (4, 1, 96)), biases=True, seed=7)
OPTS = dict(n_ctx=64, n_threads=2)


def err(a: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference relative to the largest reference logit."""
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def f32(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("deci") / "tiny-deci.gguf"
    return str(path), write_deci_gguf(CFG, path)


def test_f32_matches_float64_reference_in_passes_and_decode(f32):
    """One pass, passes of 5 tokens and token by token within 1e-4 (measured 8.1e-5: the f16 cache's
    rounding steps, which float32 and float64 round apart at a few values)."""
    path, held = f32
    ref = reference_logits(CFG, held, TOKENS)
    with Model(path, **OPTS) as m:
        assert err(m.logits(TOKENS), ref) < 1e-4
    with Model(path, n_batch=5, **OPTS) as m:
        assert err(m.logits(TOKENS), ref) < 1e-4
        m.reset()
        assert err(np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(len(TOKENS))]), ref) < 1e-4


def test_llama_cpp_agrees_and_greedy_tokens_match(f32):
    """llama.cpp on the same file within 1e-3 of the reference (measured 2.8e-4) and of ours
    (2.9e-4); the same 12 greedy tokens."""
    path, held = f32
    ref = reference_logits(CFG, held, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
        greedy = list(islice(m.generate(TOKENS[:6], temp=0.0), 12))
    assert err(theirs, ref) < 1e-3
    assert err(ours, theirs) < 1e-3
    assert greedy == llama_cpp_greedy(path, TOKENS[:6], 12)


def test_scalar_head_count_and_width_with_biases(tmp_path):
    """DeciLM-7B's metadata (head_count and feed_forward_length one value, head_count_kv per layer)
    with q / k / v / o biases: ours within 1e-4 of the reference (7.0e-5), llama.cpp within 1e-3
    (2.6e-4); without the biases the reference moves 0.79."""
    path = tmp_path / "decilm-7b.gguf"
    held = write_deci_gguf(DECILM_7B, path, metadata={"attention.head_count": 4, "feed_forward_length": 96})
    ref = reference_logits(DECILM_7B, held, TOKENS)
    with Model(str(path), **OPTS) as m:
        assert err(m.logits(TOKENS), ref) < 1e-4
    assert err(llama_cpp_logits(path, TOKENS), ref) < 1e-3
    unbiased = {n: x for n, x in held.items() if not n.endswith(".bias")}
    assert err(reference_logits(DECILM_7B, unbiased, TOKENS), ref) > 1e-2


def test_state_round_trip(f32):
    """A saved state (the caches of the attending layers) restored: decoding goes on as before."""
    path, _ = f32
    with Model(path, **OPTS) as m:
        m.eval_prompt(TOKENS[:10])
        saved = m.save_state()
        want = m.eval_prompt(TOKENS[:14])
        m.reset()
        m.eval_prompt(TOKENS[15:])
        m.load_state(saved)
        np.testing.assert_array_equal(m.eval_prompt(TOKENS[:14]), want)


def test_importance_matrix_names_each_layers_matrices(f32):
    """An importance matrix of a pass: an entry for each matrix the blocks hold (the linear
    attention's map reading the normed input), none for what a layer lacks."""
    path, held = f32
    with Model(path, **OPTS) as m:
        m.imatrix_start()
        m.logits(TOKENS)
        im = m.imatrix_stop()
    assert sorted(im.entries) == sorted(n for n, x in held.items() if n.startswith("blk.") and x.ndim == 2)


def test_q8_0_kv_cache(tmp_path):
    """Quantized (q8_0) keys and values in the attending layers' caches (head size 32): ours 4.1e-3
    from the reference, llama.cpp 6.4e-3 (its flash attention, as q8_0 values need), 7.7e-3 apart."""
    cfg = dataclasses.replace(CFG, n_embd=128, seed=9)
    path = tmp_path / "deci-128.gguf"
    ref = reference_logits(cfg, write_deci_gguf(cfg, path), TOKENS)
    with Model(str(path), type_k="q8_0", type_v="q8_0", **OPTS) as m:
        ours = m.logits(TOKENS)
    theirs = llama_cpp_logits(path, TOKENS, type_k=8, type_v=8, flash_attn=True)  # (8: GGML_TYPE_Q8_0)
    assert err(ours, ref) < 1e-2 and err(ours, theirs) < 1.5e-2


def test_q8_0_matches_llama_cpp(tmp_path):
    """Q8_0 weights (both engines quantize activations to 8 bits): ours within 3e-2 of llama.cpp
    (measured 2.1e-2), and no farther from the float64 reference of the file's weights than 1.5x
    llama.cpp's distance (ours 1.9e-2, llama.cpp 1.8e-2)."""
    path = tmp_path / "deci-q8_0.gguf"
    held = write_deci_gguf(CFG, path, weight_type="Q8_0")
    ref = reference_logits(CFG, held, TOKENS)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(str(path), **OPTS) as m:
        ours = m.logits(TOKENS)
    assert err(ours, theirs) < 3e-2
    assert err(ours, ref) <= max(1.5 * err(theirs, ref), 1e-3)


def test_each_block_kind_matters(f32):
    """The reference moves (beyond 10x the tolerance) when the linear attention's map is zeroed,
    the attention-free layer's feed-forward dropped, llama3's frequency factors left out, or the
    query heads of the grouped layer read their key/value heads interleaved (j % n_kv) instead of
    in groups (j // (n_head / n_kv))."""
    path, held = f32
    ref = reference_logits(CFG, held, TOKENS)
    zeroed = dict(held, **{"blk.1.attn_output.weight": 0 * held["blk.1.attn_output.weight"]})
    no_ff = dataclasses.replace(CFG, layers=(*CFG.layers[:2], (0, 0, 0), *CFG.layers[3:]))
    plain_rope = dataclasses.replace(CFG, rope_scaling=None)
    moved = [
        reference_logits(CFG, zeroed, TOKENS),
        reference_logits(no_ff, held, TOKENS),
        reference_logits(plain_rope, held, TOKENS),
        reference_logits(CFG, held, TOKENS, kv_of_head=lambda j, nkv: j % nkv),
    ]
    for alt in moved:
        assert err(alt, ref) > 1e-3


def test_layer_without_feed_forward_keeps_its_attention(tmp_path):
    """transformers adds such a layer's attention to the stream (ours: 1.1e-5 from it); llama.cpp's
    graph skips the layer's output (its logits 3.0e-4 from the reference without that attention,
    which is 0.48 from the reference itself)."""
    path = tmp_path / "deci-no-ffn.gguf"
    held = write_deci_gguf(NO_FFN, path)
    ref = reference_logits(NO_FFN, held, TOKENS)
    dropped = reference_logits(NO_FFN, held, TOKENS, skip_attention=(1,))
    assert err(dropped, ref) > 1e-2
    with Model(str(path), **OPTS) as m:
        assert err(m.logits(TOKENS), ref) < 1e-4
    assert err(llama_cpp_logits(path, TOKENS), dropped) < 1e-3


def test_only_attention_layers_keep_a_kv_cache(f32):
    """Per layer the cache of its own key/value heads (none for linear, attention-free and dummy
    layers); the plan from the header equals the loaded model."""
    path, _ = f32
    cpu = plan_equals_model(path)
    with Model(path, **OPTS) as m:
        kv = {p["name"]: p["kv_bytes"] for p in m._engine().placement}
    per_head = 64 * CFG.head_dim * 2 * 2  # K and V of 64 cells in f16
    want = [per_head * nkv if nh > 0 else 0 for nh, nkv, _ in CFG.layers]
    assert [kv[f"blk.{i}"] for i in range(CFG.n_layer)] == want
    assert cpu.kv_cache == sum(want)  # (plan_equals_model: 64 cells, two sequences of 32)


def test_gpu_layers_stay_on_the_cpu(f32, monkeypatch):
    """With a (fake) GPU and n_gpu_layers -1: the blocks (head counts per layer, which the GPU
    backend cannot take) stay on the CPU with one warning, the output layer goes to the GPU, and a
    batch of 40 (op offload of the blocks' matmuls) gives the CPU's logits."""
    path, _ = f32
    prompt = [(7 * i + 3) % CFG.n_vocab for i in range(40)]
    with Model(path, n_ctx=64, n_threads=1, op_offload=False) as m:
        want = m.logits(prompt)
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    monkeypatch.delenv("SPLITLLM_FAKE_GPU_MEM", raising=False)
    with pytest.warns(RuntimeWarning, match="attention shapes per layer") as caught:
        m = Model(path, n_ctx=64, n_threads=1, n_gpu_layers=-1)
    with m:
        assert len(caught) == 1
        assert [p["device"] for p in m.placement] == ["CPU"] * (1 + CFG.n_layer) + ["FAKEGPU0"]
        got = m.logits(prompt)
        assert m._engine().n_op_offload > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(metadata={"attention.head_count_kv": [3, 0, 0, 4, 0, 1]}), "do not divide"),
        (dict(metadata={"attention.head_count": [4, 4, 0, 4]}), "has 4 values for 6 layers"),
        (dict(metadata={"attention.layer_norm_rms_epsilon": None}), "layer_norm_rms_epsilon"),
        (dict(metadata={"rope.dimension_count": 8}), "rope.dimension_count"),
        (dict(drop="blk.1.attn_output.weight"), "blk.1.attn_output.weight"),
        (dict(drop="blk.5.ffn_norm.weight"), "blk.5.ffn_norm.weight"),
        (
            dict(add=("blk.1.attn_q.weight", (64, 64))),
            "blk.1.attn_q.weight' in a layer without attention heads",
        ),
        (dict(add=("blk.2.attn_norm.weight", (64,))), r"blk.2.attn_norm.weight.*head_count' = 0"),
        (
            dict(add=("blk.4.ffn_up.weight", (64, 64))),
            r"without a feed-forward \(metadata 'deci.feed_forward_length",
        ),
        (dict(add=("blk.0.ffn_up.bias", (96,))), "feed-forward biases"),
    ],
)
def test_bad_files_are_refused(tmp_path, change, match):
    """Bad metadata and missing or unexpected tensors: a GGUFError naming the key or tensor."""
    w = make_weights(CFG)
    if "drop" in change:
        del w[change["drop"]]
    if "add" in change:
        name, shape = change["add"]
        w[name] = np.ones(shape)
    path = tmp_path / "bad.gguf"
    write_deci_gguf(CFG, path, weights=w, metadata=change.get("metadata"))
    with pytest.raises(GGUFError, match=match):
        Model(str(path), **OPTS)
