"""splitllm.Model's llama-cpp-python-shaped API on the real SmolLM2 model."""

from __future__ import annotations

import gc
import os

import gguf
import numpy as np
import pytest
from proc_memory import anonymous_kb, file_mappings
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


def test_repeated_request_repeats_its_answer(model):
    """A long prompt asked again with its seed gets the same answer as from an empty cache: the
    prompt is not read again (its last token alone would take the few-token kernels, whose rounding
    differs from the many-token pass that read it)."""
    messages = [{"role": "user", "content": "Write a short poem about the sea, in four lines."}]
    kw = dict(max_tokens=24, temperature=0.8, seed=42)
    model.reset()
    def answer() -> str:
        return model.create_chat_completion(messages, **kw)["choices"][0]["message"]["content"]

    first = answer()
    before = model.n_eval
    again = [answer(), answer()]
    assert again == [first, first]
    assert model.n_eval - before <= 2 * 24  # only the generated tokens were evaluated
    toks = model.apply_chat_template(messages)
    model.reset()
    fresh = model.eval_prompt(toks)
    np.testing.assert_array_equal(model.eval_prompt(toks), fresh)


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


def prompt_tokens(model, prompt: str) -> list[int]:
    return model.tokenize(prompt.encode(), add_bos=True, special=True)


def greedy_tokens(model, tokens: list[int], n: int) -> list[int]:
    """The first n greedy tokens after tokens, from a fresh cache (as the completions below run)."""
    model.reset()
    out = []
    for t in model.generate(tokens, temp=0.0):
        out.append(t)
        if len(out) == n:
            return out
    raise AssertionError("unreachable")


def eos_bias(model, tokens: list[int], n: int = 12) -> tuple[float, list[int]]:
    """A logit bias on the EOS id that lets greedy generation run k >= 1 tokens and then makes EOS
    win by a wide margin: (bias, the k tokens before EOS)."""
    eos = model.token_eos()
    gen = greedy_tokens(model, tokens, n)
    lg = model.logits(tokens + gen)[len(tokens) - 1 :]
    margin = lg.max(axis=1) - lg[:, eos]  # the bias EOS needs to be chosen at each step
    for k in range(1, n):
        lo = margin[:k].min()
        if margin[k] < lo - 2 and not set(gen[:k]) & model.tokenizer.eog_ids:
            return float(margin[k] + lo) / 2, gen[:k]
    raise AssertionError(f"no step where a bias on EOS ends the generation: margins {margin}")


def test_completion_ends_at_eos(model):
    prompt = "The capital of France is"
    toks = prompt_tokens(model, prompt)
    bias, before = eos_bias(model, toks)
    eos = model.token_eos()
    kw = dict(max_tokens=24, temperature=0, logit_bias={eos: bias})
    model.reset()
    out = model(prompt, **kw)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == model.detokenize(before, prev_tokens=toks).decode()
    assert model.tokenizer.token_text(eos) not in choice["text"]
    assert out["usage"]["completion_tokens"] == len(before)  # EOS is not counted (llama-cpp-python)
    model.reset()
    chunks = list(model(prompt, stream=True, **kw))
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == out["usage"]


def test_chat_completion_ends_at_eos(model):
    messages = [{"role": "user", "content": "Say hello."}]
    toks, _ = model.chat_prompt(messages)
    bias, before = eos_bias(model, toks)
    eos = model.token_eos()
    kw = dict(max_tokens=24, temperature=0, logit_bias={eos: bias})
    model.reset()
    out = model.create_chat_completion(messages, **kw)
    content = out["choices"][0]["message"]["content"]
    assert out["choices"][0]["finish_reason"] == "stop"
    assert content == model.detokenize(before, prev_tokens=toks).decode()
    assert model.tokenizer.token_text(eos) not in content
    assert out["usage"]["completion_tokens"] == len(before)
    model.reset()
    chunks = list(model.create_chat_completion(messages, stream=True, **kw))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def completion_texts(model, prompt: str, **kw) -> tuple[str, list[str]]:
    """The text of a completion, and the chunks of the same completion streamed (each from a
    fresh cache, so both evaluate the prompt the same way)."""
    model.reset()
    whole = model(prompt, temperature=0, **kw)["choices"][0]["text"]
    model.reset()
    chunks = [c["choices"][0]["text"] for c in model(prompt, temperature=0, stream=True, **kw)]
    return whole, chunks


def test_characters_split_across_tokens_are_never_emitted_half(model):
    """The model repeats a parrot emoji, four bytes in three byte tokens; every chunk holds whole
    characters and a generation cut inside one leaves the half out."""
    prompt = "Emoji: 🦜 🦜 🦜 🦜 🦜"
    toks = prompt_tokens(model, prompt)
    gen = greedy_tokens(model, toks, 18)
    assert b"".join(model.tokenizer.token_to_piece(t) for t in gen).decode() == "🦜" * 6
    for n in (17, 18):
        whole, chunks = completion_texts(model, prompt, max_tokens=n)
        assert "".join(chunks) == whole
        assert whole == "🦜" * (n // 3)
        assert all("\ufffd" not in c for c in chunks)
        assert sum(bool(c) for c in chunks) == n // 3  # one chunk per character


@pytest.mark.parametrize("span", [2, 3])
def test_stop_string_split_across_tokens_is_held_back(model, span):
    """A stop string from the last character of one token to the first of the token span - 1
    later: no part of it is emitted, streamed or not."""
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown fox"
    toks = prompt_tokens(model, prompt)
    pieces = [model.tokenizer.token_to_piece(t).decode() for t in greedy_tokens(model, toks, 16)]
    full = "".join(pieces)
    for i in range(1, len(pieces) - span):
        group = pieces[i : i + span]
        if not all(p.isascii() and len(p) >= 2 for p in group):
            continue
        stop = group[0][-1] + "".join(group[1:-1]) + group[-1][0]
        start = len("".join(pieces[: i + 1])) - 1
        if full.find(stop) == start:
            break
    else:
        raise AssertionError(f"no stop string to cut {pieces}")
    whole, chunks = completion_texts(model, prompt, max_tokens=16, stop=[stop])
    assert whole == "".join(chunks) == full[:start]
    model.reset()
    out = model(prompt, max_tokens=16, temperature=0, stop=stop)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == i + span


def test_metadata_matches_gguf_reader(model, smollm2_path):
    reader = gguf.GGUFReader(smollm2_path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    md = model.metadata
    assert set(md) == {k for k, f in fields.items() if f.types[0] != gguf.GGUFValueType.ARRAY}
    for key in ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre"):
        assert md[key] == fields[key].contents(), key
    for key in ("llama.block_count", "llama.context_length", "llama.embedding_length",
                "llama.attention.head_count_kv", "tokenizer.ggml.eos_token_id"):
        assert md[key] == str(fields[key].contents()), key
    add_bos = fields["tokenizer.ggml.add_bos_token"].contents()
    assert md["tokenizer.ggml.add_bos_token"] == ("true" if add_bos else "false")
    # floats as llama.cpp writes them (std::to_string)
    assert md["llama.rope.freq_base"] == "100000.000000" == f"{fields['llama.rope.freq_base'].contents():f}"
    assert md["llama.attention.layer_norm_rms_epsilon"] == "0.000010"


def test_constructor_seed(smollm2_path):
    """The same seed gives the same texts (call after call), another seed other texts."""
    kw = dict(max_tokens=8, temperature=1.0, top_k=40, top_p=1.0, min_p=0.0)

    def texts(seed: int) -> list[str]:
        with Model(smollm2_path, n_ctx=64, n_threads=2, seed=seed) as m:
            return [m("Once upon a time", **kw)["choices"][0]["text"] for _ in range(2)]

    a = texts(1234)
    assert a == texts(1234)
    assert a[0] != a[1]  # the random state moves on between calls
    assert texts(4321) != a


def test_closed_model_raises(smollm2_path):
    m = Model(smollm2_path, n_ctx=32, n_threads=1)
    toks = m.tokenize(b"Hello", add_bos=False)
    m.close()
    calls = {
        "tokenize": lambda: m.tokenize(b"Hello"),
        "detokenize": lambda: m.detokenize(toks),
        "n_ctx": m.n_ctx,
        "n_vocab": m.n_vocab,
        "token_bos": m.token_bos,
        "token_eos": m.token_eos,
        "metadata": lambda: m.metadata,
        "gguf_metadata": lambda: m.gguf_metadata,
        "config": lambda: m.config,
        "placement": lambda: m.placement,
        "n_eval": lambda: m.n_eval,
        "logits": lambda: m.logits(toks),
        "eval_prompt": lambda: m.eval_prompt(toks),
        "reset": m.reset,
        "generate": lambda: m.generate(toks),
        "stream": lambda: m.stream(toks),
        "check_prompt": lambda: m.check_prompt(toks),
        "create_completion": lambda: m.create_completion("Hello"),
        "create_completion(stream)": lambda: m.create_completion("Hello", stream=True),
        "__call__": lambda: m("Hello"),
        "echo_text": lambda: m.echo_text("Hello", toks),
        "chat_template": m.chat_template,
        "apply_chat_template": lambda: m.apply_chat_template([{"role": "user", "content": "hi"}]),
        "create_chat_completion": lambda: m.create_chat_completion([{"role": "user", "content": "hi"}]),
        "create_chat_completion(stream)": lambda: m.create_chat_completion(
            [{"role": "user", "content": "hi"}], stream=True
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="the model is closed") as e:
            call()
        assert str(smollm2_path) in str(e.value), name
    m.close()  # closing twice is fine
    with m:  # and so is leaving a with block of a closed model
        pass


@pytest.mark.skipif(_core.cuda_built, reason="this build has CUDA; the warning is for CPU-only builds")
def test_gpu_layers_without_gpu_warn_once(smollm2_path):
    with pytest.warns(RuntimeWarning, match="n_gpu_layers") as rec:
        with Model(smollm2_path, n_ctx=32, n_gpu_layers=10) as m:
            assert m("Hi", max_tokens=2, temperature=0)["choices"][0]["text"] is not None
            assert all(p["device"] == "CPU" for p in m.placement)
    assert len(rec) == 1


def test_rss_after_load_is_mapping_plus_kv(smollm2_path):
    """After load and a prompt the weights are read in place: the model's mapping of the file is
    resident (every weight was touched), and anonymous memory grew by the KV cache and < 64 MiB,
    less than the file itself, so no copy of the weights was made."""
    file_bytes = os.path.getsize(smollm2_path)
    assert file_bytes > 64 * 2**20  # else a copy could hide in the allowance
    gc.collect()
    mapped_before = file_mappings(smollm2_path)  # the module's model maps the file too
    anon_before = anonymous_kb() * 1024
    with Model(smollm2_path, n_ctx=1024, n_threads=2) as m:
        m.logits(m.tokenize(b"The quick brown fox " * 60, add_bos=False)[:1000])
        anon = anonymous_kb() * 1024 - anon_before
        new = {k: v for k, v in file_mappings(smollm2_path).items() if k not in mapped_before}
        kv = sum(p["kv_bytes"] for p in m.placement)
    assert kv == 2 * 30 * 3 * 64 * 2 * 1024
    resident = sum(new.values()) * 1024  # the new model's mapping(s) of the file
    assert 0.98 * file_bytes < resident < file_bytes + 2**16, (resident, file_bytes)
    assert anon < kv + 64 * 2**20, f"anonymous memory grew {anon / 2**20:.1f} MiB (KV {kv / 2**20:.1f} MiB)"


# The end of Qwen3's template: enable_thinking=False closes an empty thinking block up front.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def test_chat_template_kwargs(smollm2_path):
    messages = [{"role": "user", "content": "Hi!"}]
    with Model(smollm2_path, n_ctx=128, n_threads=2, chat_template=THINKING_TEMPLATE) as m:
        plain = m.apply_chat_template(messages)
        off = m.apply_chat_template(messages, chat_template_kwargs={"enable_thinking": False})
        assert off[: len(plain)] == plain
        assert m.detokenize(off[len(plain):], special=True) == b"<think>\n\n</think>\n\n"
        assert m.apply_chat_template(messages, chat_template_kwargs={"enable_thinking": True}) == plain
        out = m.create_chat_completion(messages, max_tokens=1, temperature=0,
                                       chat_template_kwargs={"enable_thinking": False})
        assert out["usage"]["prompt_tokens"] == len(off)
        for bad, match in (({"messages": []}, "'messages' is set by splitllm"), ([("a", 1)], "string keys"),
                           ({1: 2}, "string keys")):
            with pytest.raises(ValueError, match=match):
                m.create_chat_completion(messages, max_tokens=1, chat_template_kwargs=bad)
