"""LoRA scales changed after loading (llama.cpp's ``llama_set_adapter_lora``; ``Model.set_lora_scales``),
on a tiny random llama with two adapters: the logits after a change are those of a model loaded
with the new scales (bitwise: the same B is rebuilt the same way) and of the float64 reference
on the merged weights; scale 0 is the model without the adapter (bitwise: the pass skips it);
a cached prompt is not reused across a change; the fake GPU's uploaded copies are refreshed."""

from __future__ import annotations

import numpy as np
import pytest
from splitllm import Model
from test_lora import LLAMA, LLAMA_NAMES, TOKENS, merged, random_pairs, rel_err, write_lora
from tiny_model import make_weights, reference_logits, write_gguf

SETTINGS = [(0.7, -0.4), (0.0, 1.3), (2.0, 0.0), (0.0, 0.0), (0.7, -0.4)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The base model, two adapters (the second with alpha, both updating blk.1.attn_output and
    the second also ffn_up, so that scale 0 changes how the gated feed-forward runs) and their
    pairs for the reference."""
    d = tmp_path_factory.mktemp("lora_scales")
    held = write_gguf(make_weights(LLAMA), d / "base.gguf")
    p1 = random_pairs(held, LLAMA_NAMES[:3], 4, 21)
    p2 = random_pairs(held, LLAMA_NAMES[2:], 8, 22)
    write_lora(d / "1.gguf", "llama", p1)
    write_lora(d / "2.gguf", "llama", p2, alpha=4.0)
    return d, held, [(p1, 0.0), (p2, 4.0)]


def reference(held, adapters, scales):
    terms = [(p, s, a) for (p, a), s in zip(adapters, scales, strict=True)]
    return reference_logits(LLAMA, merged(held, terms), TOKENS)


def loras(d, scales):
    return [(d / "1.gguf", scales[0]), (d / "2.gguf", scales[1])]


KW = dict(n_ctx=64, n_batch=32, n_threads=2)


def test_changed_scales_equal_a_model_loaded_with_them(files):
    d, held, adapters = files
    with Model(d / "base.gguf", loras=loras(d, (1.0, 1.0)), **KW) as m:
        assert m.lora_adapters == [(str(d / "1.gguf"), 1.0), (str(d / "2.gguf"), 1.0)]
        for scales in SETTINGS:
            m.set_lora_scales(list(scales))
            assert m.lora_adapters == [(str(d / "1.gguf"), scales[0]), (str(d / "2.gguf"), scales[1])]
            got = m.logits(TOKENS)
            with Model(d / "base.gguf", loras=loras(d, scales), **KW) as fresh:
                np.testing.assert_array_equal(got, fresh.logits(TOKENS), err_msg=str(scales))
            ref = reference(held, adapters, scales)
            assert rel_err(got, ref).max() < 1e-4, scales
        m.set_lora_scales({1: 0.25})  # a mapping changes those it names
        assert [s for _, s in m.lora_adapters] == [0.7, 0.25]
        assert rel_err(m.logits(TOKENS), reference(held, adapters, (0.7, 0.25))).max() < 1e-4


def test_scale_zero_is_the_model_without_adapters(files):
    d, held, _ = files
    with Model(d / "base.gguf", **KW) as bare:
        want = bare.logits(TOKENS)
    assert rel_err(want, reference_logits(LLAMA, held, TOKENS)).max() < 1e-4
    with Model(d / "base.gguf", loras=loras(d, (0.0, 0.0)), **KW) as m:  # --lora-init-without-apply
        np.testing.assert_array_equal(m.logits(TOKENS), want)
        m.set_lora_scales([1.0, 1.0])
        assert rel_err(m.logits(TOKENS), want).max() > 0.05
        m.set_lora_scales([0.0, 0.0])
        np.testing.assert_array_equal(m.logits(TOKENS), want)


def test_a_cached_prompt_is_read_again_after_a_change(files):
    """eval_prompt reuses the cache for a prompt that extends (or repeats) the last; after a
    change of scales it must read the whole prompt again."""
    d, held, adapters = files
    with Model(d / "base.gguf", loras=loras(d, (1.0, 0.5)), **KW) as m:
        m.eval_prompt(TOKENS[:12])
        n = m.n_eval
        m.eval_prompt(TOKENS[:14])
        assert m.n_eval - n == 2  # reused: the reuse this test is about is on
        m.set_lora_scales([0.3, -1.0])
        n = m.n_eval
        got = m.eval_prompt(TOKENS)
        assert m.n_eval - n == len(TOKENS)
        ref = reference(held, adapters, (0.3, -1.0))[-1]
        assert rel_err(got, ref) < 1e-4
        m.set_lora_scales([1.0, 0.5])
        again = m.eval_prompt(TOKENS)  # the same prompt: its remembered logits were of other scales
        assert rel_err(again, reference(held, adapters, (1.0, 0.5))[-1]) < 1e-4
        m.set_lora_scales([1.0, 0.5])  # no change: the cache stays
        n = m.n_eval
        m.eval_prompt(TOKENS)
        assert m.n_eval == n


def test_saved_state_remembers_the_scales(files):
    d, _, _ = files
    with Model(d / "base.gguf", loras=loras(d, (1.0, 1.0)), **KW) as m:
        m.eval_prompt(TOKENS)
        state = m.save_state()
        m.set_lora_scales([0.5, 1.0])
        with pytest.raises(ValueError, match=r"another model or with other"):
            m.load_state(state)
        m.set_lora_scales([1.0, 1.0])
        m.load_state(state)


def test_bad_scales_are_refused_and_the_model_keeps_working(files):
    d, held, adapters = files
    with Model(d / "base.gguf", loras=loras(d, (1.0, 1.0)), **KW) as m:
        for bad, match in [
            ([1.0], r"expected 2 LoRA scales"),
            ({2: 1.0}, r"no LoRA adapter with id 2"),
            ({-1: 1.0}, r"id -1"),
            ([1.0, float("nan")], r"finite"),
            ({0: "1"}, r"finite number"),
            ({True: 1.0}, r"id True"),
        ]:
            with pytest.raises(ValueError, match=match):
                m.set_lora_scales(bad)
        assert [s for _, s in m.lora_adapters] == [1.0, 1.0]
        assert rel_err(m.logits(TOKENS), reference(held, adapters, (1.0, 1.0))).max() < 1e-4
    with Model(d / "base.gguf", **KW) as bare:
        assert bare.lora_adapters == []
        with pytest.raises(ValueError, match=r"none is loaded"):
            bare.set_lora_scales({0: 1.0})


@pytest.mark.parametrize("ngl", [1, -1])
def test_fake_gpu_copies_are_updated(files, monkeypatch, ngl):
    """Through the fake GPU, the adapters' B of the offloaded layers (and output layer) live in
    GPU memory: a change re-uploads them; the logits equal the CPU model's at the same scales."""
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    d, _, _ = files
    with Model(d / "base.gguf", loras=loras(d, (1.0, 1.0)), n_gpu_layers=ngl, **KW) as gpu:
        assert any(p["device"] != "CPU" for p in gpu.placement)
        for scales in SETTINGS[:4]:
            gpu.set_lora_scales(list(scales))
            with Model(d / "base.gguf", loras=loras(d, scales), **KW) as cpu:
                np.testing.assert_array_equal(gpu.logits(TOKENS), cpu.logits(TOKENS), err_msg=str(scales))
