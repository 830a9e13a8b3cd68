"""``splitllm.Model`` as a drop-in ``llama_cpp.Llama``: the same calls on llama-cpp-python 0.3.36
(the reference) and on splitllm with SmolLM2-135M Q4_1, compared. The constructor arguments, the
low-level API (eval / sample / input_ids / n_tokens / scores, the static helpers), the named chat
formats (against llama-cpp-python's own formatter functions), vocab_only, pickling and the prompt
cache.

This model amplifies last-bit differences (see test_vs_llamacpp.py): logits are compared by KL
divergence and by top-1 agreement where llama.cpp's top-2 gap exceeds NOISE, and a greedy sequence
may leave llama.cpp's only at such a near-tie.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
from splitllm import Model
from splitllm.cache import DiskCache, RAMCache
from splitllm.chat_formats import chat_prompt, format_names

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
from llama_cpp import llama_chat_format  # noqa: E402

pytestmark = pytest.mark.reference

NOISE = 0.5  # logit differences this large come from rounding alone in this model
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of"]
TEXT = ("The history of the city begins with a small settlement on the river, where traders from the north "
        "met farmers from the valleys to exchange grain, wool and salt. Over the centuries the market grew "
        "into a town with stone walls, a cathedral and a university, and by the eighteenth century it was "
        "one of the largest ports in the region. Its bridges, built and rebuilt after floods and wars, still "
        "carry most of the traffic between the old quarter and the new districts on the southern bank.")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref_logits) || softmax(logits))."""
    lp_ref, lp = log_softmax(ref_logits), log_softmax(logits)
    return float((np.exp(lp_ref) * (lp_ref - lp)).sum(-1).mean())


@pytest.fixture(scope="module")
def path(smollm2_path):
    """(llama.cpp runs without its AMX weight layout on AMX CPUs: see conftest.py)"""
    return str(smollm2_path)


@pytest.fixture(scope="module")
def ref(path):
    llm = llama_cpp.Llama(path, n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def ours(path):
    with Model(path, n_ctx=256, n_threads=1, logits_all=True) as m:
        yield m


@pytest.fixture(scope="module")
def vocab(path):
    """Both with vocab_only=True: the tokenizer and metadata, no weights."""
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    with Model(path, vocab_only=True) as m:
        yield llm, m
    llm.close()


def test_eval_sample_greedy(ref, ours):
    """eval(prompt), then sample(temp=0) / eval([token]) 8 times on both: the same input_ids and
    n_tokens after the prompt, the same tokens until a step where llama.cpp's top-2 gap is noise."""
    equal = 0
    for prompt in PROMPTS:
        toks = ref.tokenize(prompt.encode(), add_bos=False)
        assert ours.tokenize(prompt.encode(), add_bos=False) == toks
        ref.reset()
        ours.reset()
        ref.eval(toks)
        ours.eval(toks)
        assert ours.n_tokens == ref.n_tokens == len(toks)
        assert ours.input_ids.shape == ref.input_ids.shape
        assert ours.input_ids[: ours.n_tokens].tolist() == ref.input_ids[: ref.n_tokens].tolist()
        for step in range(8):
            a, b = ours.sample(temp=0.0), ref.sample(temp=0.0)
            if a != b:
                top2 = np.sort(ref.scores[ref.n_tokens - 1])[-2:]
                print(f"\n{prompt!r}: differs at step {step}, llama.cpp top-2 gap {top2[1] - top2[0]:.3f}")
                assert top2[1] - top2[0] < NOISE
                break
            ours.eval([a])
            ref.eval([b])
        else:
            equal += 1
            assert ours.input_ids[: ours.n_tokens].tolist() == ref.input_ids[: ref.n_tokens].tolist()
    assert equal >= 1


def test_generate_continues_without_reset(ref, ours):
    """generate([], reset=False) after eval samples from eval's logits and continues the cached
    tokens, as llama-cpp-python's does: the same tokens, the same input_ids after 4 of them."""
    toks = ref.tokenize(PROMPTS[0].encode(), add_bos=False)
    got = []
    for m in (ref, ours):
        m.reset()
        m.eval(toks)
        gen = m.generate([], temp=0.0, reset=False)
        got.append([next(gen) for _ in range(4)])
        gen.close()
    assert got[0] == got[1]
    assert ours.n_tokens == ref.n_tokens == len(toks) + 3
    assert ours.input_ids[: ours.n_tokens].tolist() == ref.input_ids[: ref.n_tokens].tolist()


def test_scores_close(ref, ours):
    """With logits_all, scores[:n_tokens] after two evals (the second continuing the first) hold
    every position's logits: KL(llama.cpp || ours) small, top-1 equal where decided; sample(idx=i)
    greedy is the argmax of row i."""
    toks = ref.tokenize(TEXT.encode(), add_bos=False)[:64]
    assert len(toks) == 64
    for m in (ref, ours):
        m.reset()
        m.eval(toks[:40])
        m.eval(toks[40:])
    assert ours.n_tokens == ref.n_tokens == len(toks)
    got, want = ours.scores[: ours.n_tokens], np.array(ref.scores[: ref.n_tokens])
    kl = mean_kl(want, got)
    top2 = np.sort(want, axis=-1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > NOISE
    print(f"\nscores: mean KL {kl:.5f}, top-1 agreement {(got.argmax(-1) == want.argmax(-1)).mean():.3f}")
    assert kl < 0.005
    assert (got.argmax(-1) == want.argmax(-1))[decided].all()
    for i in (0, 39, 50):
        assert ours.sample(temp=0.0, idx=i) == int(got[i].argmax())
    assert len(ours.eval_logits) == ours.n_tokens and list(ours.eval_tokens) == toks


def test_static_helpers_equal_llama_cpp():
    rng = np.random.default_rng(0)
    for shape, axis in (((50,), -1), ((4, 33), -1), ((6, 7), 0)):
        x = rng.normal(0, 5, shape).astype(np.float32)
        x.flat[rng.integers(0, x.size, 3)] = -np.inf
        np.testing.assert_array_equal(Model.logits_to_logprobs(x, axis=axis),
                                      llama_cpp.Llama.logits_to_logprobs(x, axis=axis))
    row = np.full(8, -np.inf, dtype=np.float32)  # (every logit -inf: NaN there)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(Model.logits_to_logprobs(row), llama_cpp.Llama.logits_to_logprobs(row))
    r = random.Random(1)
    for _ in range(200):
        a = [r.randrange(4) for _ in range(r.randrange(12))]
        b = a[: r.randrange(len(a) + 1)] + [r.randrange(4) for _ in range(r.randrange(5))]
        assert Model.longest_token_prefix(a, b) == llama_cpp.Llama.longest_token_prefix(a, b)


REFERENCE_FORMATTERS = {  # llama-cpp-python's registered formats and their formatter functions
    "llama-2": "format_llama2", "llama-3": "format_llama3", "alpaca": "format_alpaca", "qwen": "format_qwen",
    "vicuna": "format", "oasst_llama": "format_oasst_llama", "baichuan-2": "format_baichuan2",
    "baichuan": "format_baichuan", "openbuddy": "format_openbuddy",
    "redpajama-incite": "format_redpajama_incite", "snoozy": "format_snoozy", "phind": "format_phind",
    "intel": "format_intel", "open-orca": "format_open_orca",
    "mistrallite": "format_mistrallite", "zephyr": "format_zephyr", "pygmalion": "format_pygmalion",
    "chatml": "format_chatml", "mistral-instruct": "format_mistral_instruct", "chatglm3": "format_chatglm3",
    "openchat": "format_openchat", "saiga": "format_saiga", "gemma": "format_gemma",
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello, how can I help?"}, {"role": "user", "content": "Tell a joke."}],
    [{"role": "user", "content": "First"}, {"role": "assistant", "content": "Second"},
     {"role": "user", "content": "Third"}, {"role": "assistant", "content": None},
     {"role": "tool", "content": "ignored"}, {"role": "user", "content": ""}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "{braces} and\nnewlines"},
     {"role": "bot", "content": "saiga's role"}, {"role": "User", "content": "capitalized"}],
]


def test_formats_cover_llama_cpp_registry():
    """Every prompt format llama-cpp-python registers (its formatter functions) is one of ours."""
    assert sorted(REFERENCE_FORMATTERS) == format_names()


@pytest.mark.parametrize("name", sorted(REFERENCE_FORMATTERS))
def test_chat_format_prompt_equals_llama_cpp(name, vocab):
    """The prompt text and stop strings of each named format equal llama-cpp-python's formatter's,
    and so do the tokens a chat completion reads (tokenized as its chat handlers tokenize)."""
    llm, m = vocab
    formatter = getattr(llama_chat_format, REFERENCE_FORMATTERS[name])
    m.chat_format = name
    try:
        for messages in CONVERSATIONS:
            want = formatter(messages=messages)
            stop = [] if want.stop is None else [want.stop] if isinstance(want.stop, str) else list(want.stop)
            assert chat_prompt(name, messages) == (want.prompt, stop)
            tokens, stops = m.chat_prompt(messages, stop=["X"])
            assert tokens == llm.tokenize(want.prompt.encode(), add_bos=not want.added_special, special=True)
            assert stops == ["X", *stop]
    finally:
        m.chat_format = None


def test_chat_completion_with_format_and_handler(ref, ours):
    """chat_format="chatml" and llama-cpp-python's own chatml handler as chat_handler give
    llama-cpp-python's prompt: the same prompt size and greedy answer as llama.cpp's chat (the
    attributes set after loading, as on a Llama)."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ref.chat_format = "chatml"
    try:
        want = ref.create_chat_completion(messages, temperature=0.0, max_tokens=8)
    finally:
        ref.chat_format = "chat_template.default"
    handler = llama_chat_format.get_chat_completion_handler("chatml")
    for attr, value in (("chat_format", "chatml"), ("chat_handler", handler)):
        setattr(ours, attr, value)
        try:
            got = ours.create_chat_completion(messages, temperature=0.0, max_tokens=8)
        finally:
            setattr(ours, attr, None)
        assert got["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]
        assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    ours.chat_handler = handler
    try:
        with pytest.raises(ValueError, match="reasoning_format"):  # (a handler would not see it)
            ours.create_chat_completion(messages, reasoning_format="deepseek")
    finally:
        ours.chat_handler = None


def test_constructor_arguments_accepted_by_both(path):
    """llama-cpp-python's arguments, given to both: a greedy completion agrees, and a model
    without logits_all samples after eval as llama.cpp does."""
    kw = dict(n_ctx=128, n_batch=64, n_ubatch=32, n_threads=1, n_threads_batch=1, use_mmap=False,
              use_mlock=False, flash_attn=False, last_n_tokens_size=32, numa=False, no_perf=True,
              main_gpu=0, split_mode=1, tensor_split=None, type_k=1, type_v=1, seed=7, offload_kqv=True,
              op_offload=None, swa_full=None, spm_infill=False, embedding=False, chat_format="chatml",
              kv_overrides={"tokenizer.ggml.add_bos_token": False})
    llm = llama_cpp.Llama(model_path=path, verbose=False, **kw)
    try:
        with Model(model_path=path, verbose=False, **kw) as m:
            toks = llm.tokenize(b"The capital of France is", add_bos=False)
            llm.eval(toks)
            m.eval(toks)
            assert m.sample(temp=0.0) == llm.sample(temp=0.0)
            with pytest.raises(RuntimeError, match="logits_all"):
                m.scores  # noqa: B018
            a = m.create_completion("Once upon a time", max_tokens=6, temperature=0.0)["choices"][0]["text"]
            b = llm.create_completion("Once upon a time", max_tokens=6, temperature=0.0)["choices"][0]["text"]
            assert a == b
            assert m.n_vocab() == llm.n_vocab()  # (llama.cpp pads n_ctx to 256 cells; ours keeps 128)
    finally:
        llm.close()


@pytest.mark.parametrize("kw, match", [
    ({"type_k": 3}, "GGML type 3"),
    ({"split_mode": 2}, "row"),
    ({"tensor_split": [0.5, 0.5]}, "across GPUs"),
    ({"main_gpu": 1}, "first CUDA device"),
    ({"rpc_servers": "host:50052"}, "RPC"),
    ({"chat_format": "functionary-v2"}, "chat handlers"),
    ({"chat_format": "no-such-format"}, "unknown chat_format"),
    ({"kv_overrides": {"tokenizer.ggml.tokens": "x"}}, "array"),
    ({"kv_overrides": {"llama.block_count": "thirty"}}, "is a str, but"),
    ({"n_ubatch": 0}, "n_ubatch"),
    ({"attention_type": 1}, "causal"),
])
def test_constructor_refusals_name_the_argument(path, kw, match):
    with pytest.raises(ValueError, match=match):
        Model(path, n_ctx=64, **kw)


def test_multimodal_chat_handler_refused(path):
    class Llava15ChatHandler:  # (llama-cpp-python's class name; its instances need a CLIP model)
        def __call__(self, **kw):
            raise AssertionError

    with pytest.raises(ValueError, match="multimodal"):
        Model(path, n_ctx=64, chat_handler=Llava15ChatHandler())


def test_kv_overrides_reach_engine_and_tokenizer(path, ref, ours):
    """An override of a key the engine reads (rope base) changes the logits as llama.cpp's does (ours
    as close to llama.cpp's as without it, which are far from the file's); one the tokenizer reads
    (add BOS) changes tokenization as there."""
    toks = ref.tokenize(b"The quick brown fox jumps over the lazy dog because", add_bos=False)
    over = {"llama.rope.freq_base": 2000.0, "tokenizer.ggml.add_bos_token": True}
    llm = llama_cpp.Llama(path, n_ctx=64, n_threads=1, n_threads_batch=1, logits_all=True, kv_overrides=over,
                          verbose=False)
    try:
        with Model(path, n_ctx=64, n_threads=1, logits_all=True, kv_overrides=over) as m:
            assert m.tokenize(b"Hello") == llm.tokenize(b"Hello")
            assert m.tokenize(b"Hello") == [m.token_bos(), *m.tokenize(b"Hello", False)]
            assert m.metadata == llm.metadata  # (the file's values, as llama.cpp shows them)
            llm.eval(toks)
            m.eval(toks)
            want, got = np.array(llm.scores[: len(toks)]), m.scores[: len(toks)]
    finally:
        llm.close()
    kl = mean_kl(want, got)
    for llm in (ref, ours):  # the file's rope base
        llm.reset()
        llm.eval(toks)
    base_ref, base_ours = np.array(ref.scores[: len(toks)]), ours.scores[: len(toks)]
    kl_base, moved = mean_kl(base_ref, base_ours), mean_kl(want, base_ref)
    print(f"\nkv_overrides rope base 2000: KL to llama.cpp's {kl:.5f} (without the override {kl_base:.5f}); "
          f"llama.cpp's moved by {moved:.4f}")
    assert kl < 1.5 * kl_base + 1e-3
    assert moved > 10 * kl


def test_vocab_only_tokenizes_as_llama_cpp(vocab):
    llm, m = vocab
    for text in ["Hello world", " leading space", "<|im_start|>user\nhi<|im_end|>", "émoji 🤖 and 数字 123"]:
        for add_bos in (True, False):
            for special in (True, False):
                got = m.tokenize(text.encode(), add_bos, special)
                assert got == llm.tokenize(text.encode(), add_bos, special)
                assert m.detokenize(got) == llm.detokenize(got)
        assert m.tokenizer().encode(text) == llm.tokenizer().encode(text)
        ids = llm.tokenizer().encode(text)
        assert m.tokenizer().decode(ids) == llm.tokenizer().decode(ids)
    assert (m.token_bos(), m.token_eos(), m.token_nl(), m.n_vocab()) == \
        (llm.token_bos(), llm.token_eos(), llm.token_nl(), llm.n_vocab())
    with pytest.raises(RuntimeError, match="vocab_only"):
        m.create_completion("Hi", max_tokens=2)
    with pytest.raises(RuntimeError, match="vocab_only"):
        m.eval([1, 2])


def test_tokenizer_argument_replaces_tokenize(path, vocab):
    """tokenizer= (a llama-cpp-python tokenizer object) is what tokenize / detokenize call."""
    llm, _ = vocab
    calls = []

    class Counting(llama_cpp.llama_tokenizer.LlamaTokenizer):
        def tokenize(self, text, add_bos=True, special=True):
            calls.append(text)
            return super().tokenize(text, add_bos, special)

    with Model(path, vocab_only=True, tokenizer=Counting(llm)) as m:
        assert m.tokenize(b"Hello there", False, True) == llm.tokenize(b"Hello there", False, True)
        assert m.detokenize(m.tokenize(b"Hello there")) == b"Hello there"
    assert calls == [b"Hello there", b"Hello there"]
    with pytest.raises(ValueError, match="tokenizer must have"):
        Model(path, vocab_only=True, tokenizer=object())


def test_pickle_round_trip(ours):
    clone = pickle.loads(pickle.dumps(ours))
    try:
        assert clone.model_path == ours.model_path and clone.n_ctx() == ours.n_ctx()
        for prompt in PROMPTS[:2]:
            ours.reset()  # (a prompt read in one pass, as in the fresh clone)
            a = ours.create_completion(prompt, max_tokens=10, temperature=0.0)["choices"][0]["text"]
            b = clone.create_completion(prompt, max_tokens=10, temperature=0.0)["choices"][0]["text"]
            assert a == b
    finally:
        clone.close()


def _a_b_a(m: Model) -> tuple[str, str, int]:
    """Completes A, then B, then A again: the texts of A and the tokens evaluated for the second A."""
    a = "Once upon a time, in a land far away, there lived a"
    first = m.create_completion(a, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    m.create_completion("def fibonacci(n):", max_tokens=2, temperature=0.0)
    n0 = m.n_eval
    again = m.create_completion(a, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    return first, again, m.n_eval - n0


def test_cache_skips_repeated_prompt(ours, tmp_path):
    """With a prompt cache, a prompt seen before an unrelated one is evaluated again from its saved
    state: fewer tokens than without the cache, the same text. llama-cpp-python's LlamaRAMCache
    holds our states as well; a DiskCache's files are found by a new DiskCache on the folder."""
    ours.set_cache(None)
    ours.reset()
    first, again, n_plain = _a_b_a(ours)
    assert first == again
    for kind, cache in (("RAMCache", RAMCache()), ("DiskCache", DiskCache(tmp_path / "c")),
                        ("LlamaRAMCache", llama_cpp.LlamaRAMCache())):
        ours.set_cache(cache)
        try:
            ours.reset()
            first_c, again_c, n_cached = _a_b_a(ours)
        finally:
            ours.set_cache(None)
        print(f"\n{kind}: the second A evaluated {n_cached} tokens with the cache, {n_plain} without")
        assert (first_c, again_c) == (first, first)
        assert n_cached < n_plain // 2
    assert len(DiskCache(tmp_path / "c")) == 2


def test_openai_v1_types(ours):
    messages = [{"role": "user", "content": "Hi"}]
    try:
        from openai.types.chat import ChatCompletion, ChatCompletionChunk
    except ImportError:
        with pytest.raises(ImportError, match="openai"):
            ours.create_chat_completion_openai_v1(messages, max_tokens=2)
        return
    got = ours.create_chat_completion_openai_v1(messages, max_tokens=3, temperature=0.0)
    assert isinstance(got, ChatCompletion) and got.choices[0].message.role == "assistant"
    chunks = list(ours.create_chat_completion_openai_v1(messages, max_tokens=3, temperature=0.0, stream=True))
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
