"""LFM2 (gguf arch lfm2) on tiny random models: gated short-convolution layers between attention
layers, against the float64 re-implementation of transformers' Lfm2ForCausalLM
(tests/tiny_lfm2.py) and against llama.cpp on the same files; the convolution state each sequence
keeps beside its KV cache across passes, sequences, saved states and reused prefixes."""

from __future__ import annotations

import time
from dataclasses import replace
from itertools import islice

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from recurrent_checks import (
    plan_equals_model,
    prefix_reused_only_where_the_state_is,
    same_greedy_as_llama_cpp,
    slot_continues_only_where_it_stopped,
    state_saved_and_loaded,
    two_sequences_equal_each_alone,
)
from routed_checks import split_with_host_parts
from splitllm import GGUFError, Model
from tiny_lfm2 import Lfm2Config, lfm2_reference_logits, write_lfm2_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11, 8, 160, 70, 2]
LFM2 = Lfm2Config(seed=51)
# LFM2-350M's pattern in small: two convolution layers, attention, ...; an untied output; l_cache 4
CONV, ATTN = "conv", "full_attention"
LFM2_WIDE = Lfm2Config(n_layer=6, layer_types=(CONV, CONV, ATTN, CONV, ATTN, CONV), n_head_kv=1, l_cache=4,
                       tied_output=False, seed=52)
OPTS = dict(n_ctx=64, n_threads=2)


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def tiny(tmp_path, cfg: Lfm2Config, **kw) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / f"tiny-lfm2-{cfg.seed}-{kw.get('weight_type', 'F32')}.gguf"
    return str(path), write_lfm2_gguf(cfg, path, **kw)


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    return tiny(tmp_path_factory.mktemp("lfm2"), LFM2)


@pytest.mark.parametrize("cfg", [LFM2, LFM2_WIDE], ids=["lfm2", "lfm2-l4-mqa-untied"])
def test_f32_logits_match_float64_reference(tmp_path, cfg):
    path, held = tiny(tmp_path, cfg)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
        c = m.config
    assert (c["recurrent"], c["conv_l_cache"]) == (True, cfg.l_cache)
    assert c["conv_layers"] == [i for i in range(cfg.n_layer) if cfg.is_conv(i)]
    assert rel_err(ours, lfm2_reference_logits(cfg, held, TOKENS)).max() < 1e-4


def test_the_convolution_state_is_visible(lfm2):
    """Without the convolution's past inputs (a kernel of length 1), or with the kernel taps
    reversed, the reference is far from the real one: the tests above see the state."""
    _, held = lfm2
    ref = lfm2_reference_logits(LFM2, held, TOKENS)
    last = {k: (v[:, -1:] if k.endswith("shortconv.conv.weight") else v) for k, v in held.items()}
    flipped = {k: (v[:, ::-1] if k.endswith("shortconv.conv.weight") else v) for k, v in held.items()}
    assert rel_err(lfm2_reference_logits(replace(LFM2, l_cache=1), last, TOKENS), ref)[1:].min() > 1e-2
    assert rel_err(lfm2_reference_logits(LFM2, flipped, TOKENS), ref).max() > 1e-2


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
def test_matches_llama_cpp(tmp_path, wtype):
    """llama.cpp on the same file: within 1e-3 of ours at f32, and the same greedy continuation;
    at q8_0 (a wider model) ours no farther from float64 than 1.5x llama.cpp's distance (no
    greedy check: the tiny model's top two logits come within 0.02 of each other, inside both
    engines' activation rounding)."""
    cfg = LFM2_WIDE if wtype == "F32" else replace(LFM2_WIDE, n_embd=256, n_ff=512)
    path, held = tiny(tmp_path, cfg, weight_type=wtype)
    theirs = llama_cpp_logits(path, TOKENS)
    with Model(path, **OPTS) as m:
        ours = m.logits(TOKENS)
    # (q8_0: measured 3.5e-2, each engine ~3.6e-2 from float64: the gates B * x and C * conv
    # multiply two projections' rounding; f32: 2.1e-4, llama.cpp itself 2.1e-4 from float64)
    assert rel_err(ours, theirs).max() < (1e-3 if wtype == "F32" else 6e-2)
    exact = lfm2_reference_logits(cfg, held, TOKENS)
    assert rel_err(ours, exact).max() <= max(1.5 * rel_err(theirs, exact).max(), 1e-4)
    if wtype != "F32":
        return
    same_greedy_as_llama_cpp(path, TOKENS[:8], 24)


@pytest.mark.parametrize("n_batch", [1, 5])
def test_chunked_prefill_then_decode_equals_one_pass(lfm2, n_batch):
    """A prompt in passes of n_batch tokens, then one token at a time: the logits of one pass over
    everything (the state carried from pass to pass)."""
    path, held = lfm2
    ref = lfm2_reference_logits(LFM2, held, TOKENS)
    with Model(path, n_batch=n_batch, **OPTS) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 1e-4
        m.eval_prompt(TOKENS[:12])
        steps = [m.eval_prompt(TOKENS[: i + 1]) for i in range(12, len(TOKENS))]
        assert m.n_eval == 2 * len(TOKENS)  # each step read one token
    assert rel_err(np.array(steps), ref[12:]).max() < 1e-4


def test_two_sequences_at_once_equal_each_alone(tmp_path):
    path, held = tiny(tmp_path, LFM2_WIDE)
    two_sequences_equal_each_alone(path, lambda t: lfm2_reference_logits(LFM2_WIDE, held, t), TOKENS, 1e-4)


def test_a_slot_continues_only_where_it_stopped(lfm2):
    path, held = lfm2
    slot_continues_only_where_it_stopped(path, lambda t: lfm2_reference_logits(LFM2, held, t), TOKENS, 1e-4)


def test_prefix_reuse_only_where_the_state_is(lfm2):
    path, held = lfm2
    prefix_reused_only_where_the_state_is(path, lambda t: lfm2_reference_logits(LFM2, held, t), TOKENS, 1e-4)


def test_save_and_load_state(lfm2):
    path, held = lfm2
    state_saved_and_loaded(path, lambda t: lfm2_reference_logits(LFM2, held, t), TOKENS, 1e-4)


def test_batching_engine_slots(lfm2):
    """Two prompts at once in the batching engine, then a next turn continuing a slot's text and a
    prompt sharing only part of one: each first row is the reference's."""
    from splitllm.engine import BatchEngine
    from splitllm.sampling import SamplingParams

    path, held = lfm2
    greedy = SamplingParams(temperature=0)
    firsts, cached = [], []
    with Model(path, n_ctx=128, n_batch=4, n_seq_max=2, n_threads=2) as m:
        eng = BatchEngine(m)
        try:
            def run(prompts):
                jobs = [eng.submit(p, on_event=lambda ev: None, params=greedy, max_tokens=3) for p in prompts]
                for job in jobs:
                    deadline = time.monotonic() + 60
                    while not job.finished:
                        assert time.monotonic() < deadline
                        time.sleep(0.01)
                    firsts.append((job.prompt, eng._slots[job.slot].logits.copy()))
                    cached.append(job.n_cached)
                return jobs

            a, _ = run([TOKENS[:10], TOKENS[::-1][:7]])
            turn = list(a.tokens) + [9, 8, 7]  # the slot's whole text, then more
            run([turn])
            run([TOKENS[:6] + [1, 2, 3]])
        finally:
            eng.close()
    assert cached[2] == len(turn) - 3 and cached[3] == 0
    for prompt, got in firsts:
        assert rel_err(got, lfm2_reference_logits(LFM2, held, list(prompt))[-1]) < 1e-4


def test_bad_files_are_refused(tmp_path):
    cfg = LFM2
    path, _ = tiny(tmp_path, cfg, metadata={"lfm2.shortconv.l_cache": None})
    with pytest.raises(GGUFError, match="shortconv.l_cache"):
        Model(path, **OPTS)
    path, _ = tiny(tmp_path, replace(cfg, layer_types=("conv", "full_attention", "full_attention", "conv")),
                   metadata={"lfm2.attention.head_count_kv": [0, 2, 1, 0]})
    with pytest.raises(GGUFError, match="head_count_kv"):
        Model(path, **OPTS)
    path, _ = tiny(tmp_path, cfg, metadata={"lfm2.shortconv.l_cache": 5})  # the kernels have 3 taps
    with pytest.raises(GGUFError, match="shortconv.conv.weight"):
        Model(path, **OPTS)
    heads32 = {"lfm2.attention.key_length": 32, "lfm2.attention.value_length": 32}  # 4 x 32 != 64
    path, _ = tiny(tmp_path, cfg, metadata=heads32)
    with pytest.raises(GGUFError, match="head size = embedding_length"):
        Model(path, **OPTS)
    path, _ = tiny(tmp_path, cfg, metadata={"lfm2.attention.sliding_window": 8})
    with pytest.raises(GGUFError, match="sliding_window"):
        Model(path, **OPTS)


def test_speculative_decoding_is_turned_off(lfm2):
    from splitllm.speculative import PromptLookupDecoding

    path, _ = lfm2
    with pytest.warns(RuntimeWarning, match="draft_model is ignored"):
        m = Model(path, draft_model=PromptLookupDecoding(num_pred_tokens=4), **OPTS)
    with m:
        assert m.draft_model is None
        assert len(list(islice(m.generate(TOKENS[:8] * 2, temp=0.0), 8))) == 8


class _Inputs:
    """A weight W standing in the reference for ``x @ W.T``, keeping every x it meets."""

    __array_ufunc__ = None  # (numpy defers ``x @ self`` to __rmatmul__)

    def __init__(self, w: np.ndarray) -> None:
        self.w, self.seen = w, []

    @property
    def T(self) -> _Inputs:  # noqa: N802  (numpy's name)
        return self

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x)
        return x @ self.w.T


def test_imatrix_collects_the_convolution_projections(lfm2):
    """llama-imatrix's statistics of in_proj and out_proj (the squared inputs of each, summed over
    the tokens) equal the float64 reference's, beside the other weights'."""
    path, held = lfm2
    with Model(path, **OPTS) as m:
        m.imatrix_start()
        m.logits(TOKENS)
        imx = m.imatrix_stop()
    names = [f"blk.{i}.shortconv.{p}.weight" for i in range(LFM2.n_layer) if LFM2.is_conv(i)
             for p in ("in_proj", "out_proj")]
    assert set(names) < set(imx.entries) and "blk.2.attn_q.weight" in imx.entries
    tracked = {n: _Inputs(held[n]) for n in names}
    lfm2_reference_logits(LFM2, {**held, **tracked}, TOKENS)
    for n in names:
        (x,) = tracked[n].seen
        e = imx.entries[n]
        assert e.counts.tolist() == [len(TOKENS)]
        np.testing.assert_allclose(e.sums[0], (x * x).sum(axis=0), rtol=1e-4, err_msg=n)


def test_plan_counts_the_states(lfm2):
    """The memory plan (from the header) and the loaded model count the convolution states with
    the KV cache: the attention layer's cells, and per slot l_cache - 1 inputs of each
    convolution layer."""
    cpu = plan_equals_model(lfm2[0])
    n_conv = sum(LFM2.is_conv(i) for i in range(LFM2.n_layer))
    kv = 64 * LFM2.n_head_kv * LFM2.head_dim * 2 * 2  # one attention layer: K and V in f16
    assert cpu.kv_cache == kv + n_conv * 2 * (LFM2.l_cache - 1) * LFM2.n_embd * 4


@pytest.mark.parametrize("ngl", [2, -1])
def test_gpu_split_keeps_the_mixers_on_the_host(lfm2, monkeypatch, ngl):
    """With a (fake) GPU: the short-convolution mixers (weights, states) stay on the host, the
    attention layers and feed-forwards go to the GPU; the placement splits the file's tensors so,
    and the logits are the CPU's exactly (routed_checks.split_with_host_parts)."""
    split_with_host_parts(lfm2[0], monkeypatch, ngl=ngl)

