"""splitllm.Model's llama-cpp-python-shaped API on the real SmolLM2 model."""

from __future__ import annotations

import gc
import os

import numpy as np
import psutil
import pytest
from splitllm import Model, _core


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=256, n_threads=2) as m:
        yield m


def test_completion_shape_and_usage(model):
    out = model("The capital of France is", max_tokens=8, temperature=0)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
    n_prompt = len(model.tokenize(b"The capital of France is", add_bos=True, special=True))
    usage = out["usage"]
    assert usage["prompt_tokens"] == n_prompt
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 8


def test_greedy_text_equals_generated_tokens(model):
    prompt = "Once upon a time"
    toks = model.tokenize(prompt.encode(), add_bos=True, special=True)
    gen = []
    for t in model.generate(toks, temp=0.0):
        if t in model.tokenizer.eog_ids or len(gen) == 12:
            break
        gen.append(t)
    text = model(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
    assert text.encode() == model.detokenize(gen, prev_tokens=toks)


def test_stream_equals_whole(model):
    whole = model("def add(a, b):", max_tokens=20, temperature=0)
    chunks = list(model("def add(a, b):", max_tokens=20, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"] == whole["usage"]


def test_stop_strings_are_never_emitted(model):
    base = model("1, 2, 3, 4,", max_tokens=16, temperature=0)["choices"][0]["text"]
    assert " 6" in base  # the model counts on
    stop = " 6"
    cut = base[: base.index(stop)]
    out = model("1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop])
    assert out["choices"][0]["text"] == cut and out["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(
        c["choices"][0]["text"]
        for c in model("1, 2, 3, 4,", max_tokens=16, temperature=0, stop=stop, stream=True)
    )
    assert streamed == cut


def test_max_tokens_and_echo(model):
    out = model("Hello", max_tokens=3, temperature=0, echo=True)
    assert out["choices"][0]["text"].startswith("Hello")
    assert out["usage"]["completion_tokens"] <= 3
    out = model("Hello", max_tokens=0, temperature=0)  # until the context is full or EOS
    assert out["usage"]["total_tokens"] <= model.n_ctx()


def test_seed_reproducible(model):
    kw = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = model("My favourite animal is", seed=7, **kw)["choices"][0]["text"]
    b = model("My favourite animal is", seed=7, **kw)["choices"][0]["text"]
    texts = {model("My favourite animal is", seed=s, **kw)["choices"][0]["text"] for s in range(8, 14)}
    assert a == b
    assert len(texts) > 1


def test_logit_bias_forces_token(model):
    target = model.tokenize(b" banana", add_bos=False)[0]
    out = model("The capital of France is", max_tokens=3, temperature=0, logit_bias={target: 100.0})
    assert out["choices"][0]["text"].startswith(" banana")


def test_chat_completion(model):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    out = model.create_chat_completion(messages, max_tokens=16, temperature=0)
    assert out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"]
    assert "<|im_end|>" not in msg["content"]
    chunks = list(model.create_chat_completion(messages, max_tokens=16, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == msg["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    rendered = model.chat_template().render(messages)
    assert rendered.endswith("<|im_start|>assistant\n") and "What is 2+2?" in rendered


def test_prefix_reuse_evaluates_only_new_tokens(model):
    toks = model.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=False)
    model.reset()
    model.eval_prompt(toks)
    before = model.n_eval
    more = toks + model.tokenize(b" and runs away", add_bos=False)
    model.eval_prompt(more)
    assert model.n_eval - before == len(more) - len(toks)


def test_logits_shape_and_consistency(model):
    toks = model.tokenize(b"Hello world, this is a test", add_bos=False)
    lg = model.logits(toks)
    assert lg.shape == (len(toks), model.n_vocab()) and lg.dtype == np.float32
    last = model.eval_prompt(toks)
    np.testing.assert_allclose(last, lg[-1], rtol=1e-4, atol=1e-4)


def test_errors(smollm2_path, model):
    with pytest.raises(ValueError, match="exceed context window"):
        model(" ".join(["word"] * 400), max_tokens=4)
    with pytest.raises(ValueError):
        model("x", top_p=2.0)
    with pytest.raises(ValueError):
        model.logits([model.n_vocab()])
    with pytest.raises(ValueError, match="n_ctx"):
        Model(smollm2_path, n_ctx=-1)
    with pytest.raises(FileNotFoundError):
        Model(str(smollm2_path) + ".missing")
    m = Model(smollm2_path, n_ctx=32)
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m("hi")


@pytest.mark.skipif(_core.cuda_built, reason="this build has CUDA; the warning is for CPU-only builds")
def test_gpu_layers_without_gpu_warn_once(smollm2_path):
    with pytest.warns(RuntimeWarning, match="n_gpu_layers") as rec:
        with Model(smollm2_path, n_ctx=32, n_gpu_layers=10) as m:
            assert m("Hi", max_tokens=2, temperature=0)["choices"][0]["text"] is not None
            assert all(p["device"] == "CPU" for p in m.placement)
    assert len(rec) == 1


def rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def test_rss_after_load_is_mapping_plus_kv(smollm2_path):
    """RSS after load and a prompt: the mapped file, the KV cache and < 64 MiB; nothing copied."""
    gc.collect()
    before = rss()
    file_bytes = os.path.getsize(smollm2_path)
    with Model(smollm2_path, n_ctx=1024, n_threads=2) as m:
        m.logits(m.tokenize(b"The quick brown fox " * 60, add_bos=False)[:1000])
        grown = rss() - before
        kv = sum(p["kv_bytes"] for p in m.placement)
    assert kv == 2 * 30 * 3 * 64 * 2 * 1024
    assert grown < file_bytes + kv + 64 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
