"""The batching engine on SmolLM2: many sequences at once give each the tokens it gets alone
(``Model`` called directly), prompts are cut like Model cuts them, repeated prompts and next turns
reuse slot caches, and cancelled jobs free their slots."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from splitllm.engine import BatchEngine, EngineClosed
from splitllm.model import Model
from splitllm.sampling import SamplingParams

SLOT_CTX = 128
N_BATCH = 16
GREEDY = SamplingParams(temperature=0)
PROMPTS = [
    "Once upon a time", "The capital of France is", "def fibonacci(n):", "Water boils at",
    "The three primary colours are", "My favourite season is", "import numpy as np", "The sun is a",
    "In 1492, Columbus", "A haiku about the sea:", "SELECT name FROM", "The mitochondria is",
]


@pytest.fixture(scope="module")
def ref(smollm2_path):
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_batch=N_BATCH, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def engine(smollm2_path):
    """12 slots: wider than the CPU kernels' per-token path, so decode rows go in several passes."""
    model = Model(smollm2_path, n_ctx=SLOT_CTX * len(PROMPTS), n_batch=N_BATCH, n_seq_max=len(PROMPTS),
                  n_threads=2)
    eng = BatchEngine(model)
    yield eng
    eng.close()
    model.close()


def run_all(engine: BatchEngine, prompts: list[list[int]], *, seeds: list[int] | None = None,
            log: list[tuple[int, str]] | None = None, **kwargs: object) -> list[str]:
    """Submits every prompt at once (job i with seed ``seeds[i]``); the texts in order. ``log``
    gets (job, text) of every chunk in the order they arrive."""
    out: list[list[str]] = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def sink(i: int):
        def on_event(ev: object) -> None:
            if isinstance(ev, BaseException):
                out[i].append(f"<error {ev}>")
                done.release()
                return
            out[i].append(ev.text)  # type: ignore[attr-defined]
            if log is not None:
                log.append((i, ev.text))  # type: ignore[attr-defined]
            if ev.finish_reason is not None:  # type: ignore[attr-defined]
                done.release()
        return on_event

    for i, p in enumerate(prompts):
        engine.submit(p, on_event=sink(i), seed=None if seeds is None else seeds[i], **kwargs)
    for _ in prompts:
        assert done.acquire(timeout=600)
    return ["".join(parts) for parts in out]


def wait_finished(job: object, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not job.finished:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_decode_width_is_measured(engine):
    assert 1 <= engine.decode_width <= engine.n_parallel


def test_concurrent_greedy_equals_model_alone(engine, ref):
    prompts = [ref._prompt_tokens(p) for p in PROMPTS]
    want = ["".join(c.text for c in ref.stream(p, max_tokens=5, temperature=0)) for p in prompts]
    before = engine.stats
    got = run_all(engine, prompts, params=GREEDY, max_tokens=5)
    after = engine.stats
    assert got == want
    assert after.max_batch_seqs == len(PROMPTS)  # all of them were decoding together
    assert after.steps - before.steps < after.generated_evaluated - before.generated_evaluated


def test_concurrent_seeded_sampling_equals_model_alone(engine, ref):
    prompts = [ref._prompt_tokens(p) for p in PROMPTS[:6]]
    opts = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    seeds = [100 + i for i in range(len(prompts))]
    want = ["".join(c.text for c in ref.stream(p, max_tokens=5, seed=s, **opts))
            for p, s in zip(prompts, seeds, strict=True)]
    assert run_all(engine, prompts, seeds=seeds, params=SamplingParams(**opts), max_tokens=5) == want


def test_long_prompt_is_cut_like_model_and_does_not_stall_others(engine, ref):
    long_prompt = ref._prompt_tokens("Here is a list of fruits: apple, banana, cherry, date, elderberry, "
                                     "fig, grape, honeydew, kiwi, lemon, mango, nectarine, orange, papaya,")
    assert len(long_prompt) > 2 * N_BATCH  # read over three steps, in Model's cuts
    short = ref._prompt_tokens("The capital of France is")
    ban = {t: -100.0 for t in ref.tokenizer.eog_ids}
    want_long = "".join(c.text for c in ref.stream(long_prompt, max_tokens=4, temperature=0))
    want_short = "".join(c.text for c in ref.stream(short, max_tokens=16, temperature=0, logit_bias=ban))

    log: list[tuple[str, str]] = []
    started = threading.Event()

    def sink(name: str):
        def on_event(ev: object) -> None:
            log.append((name, getattr(ev, "text", repr(ev))))
            started.set()
        return on_event

    a = engine.submit(short, on_event=sink("short"), params=SamplingParams(temperature=0, logit_bias=ban),
                      max_tokens=16)
    assert started.wait(300)  # the short one is decoding ...
    n_before = len(log)
    b = engine.submit(long_prompt, on_event=sink("long"), params=GREEDY, max_tokens=4)  # ... the long joins
    wait_finished(a)
    wait_finished(b)
    texts = {name: "".join(t for n, t in log if n == name) for name in ("short", "long")}
    assert texts == {"short": want_short, "long": want_long}
    # While the long prompt was read (one cut a step), the short one kept getting tokens.
    first_long = next(i for i, (n, _) in enumerate(log) if n == "long")
    assert sum(1 for n, _ in log[n_before:first_long] if n == "short") >= 2


def test_repeated_prompt_evaluates_nothing(engine, ref):
    prompt = ref._prompt_tokens("Tell me about the moon.")
    first = run_all(engine, [prompt], params=GREEDY, max_tokens=4)
    before = engine.stats
    events: list = []
    job = engine.submit(prompt, on_event=events.append, params=GREEDY, max_tokens=4)
    wait_finished(job)
    assert job.n_cached == len(prompt)
    assert engine.stats.prompt_evaluated == before.prompt_evaluated
    assert ["".join(e.text for e in events)] == first


def test_shared_prefix_gives_the_logits_of_reading_from_scratch(engine, ref):
    """A prompt that shares a prefix with another request's prompt reuses its cache, yet its logits
    are bit-identical to reading it whole (the suffix pass is kept in the from-scratch size class)."""
    system = ref._prompt_tokens("You are a helpful assistant who answers in one short sentence. Question:")
    a = system + ref.tokenize(b" What is the capital of Spain?", add_bos=False)
    b = system + ref.tokenize(b" Why?", add_bos=False)
    assert engine.prefill_threshold is None or len(b) - len(system) < engine.prefill_threshold
    run_all(engine, [a], params=GREEDY, max_tokens=1)
    events: list = []
    job = engine.submit(b, on_event=events.append, params=GREEDY, max_tokens=1)
    wait_finished(job)
    assert job.n_cached > 0
    ref.reset()
    want = ref.eval_prompt(b)  # read from scratch, cut every n_batch tokens
    np.testing.assert_array_equal(engine._slots[job.slot].logits, want)


def test_next_turn_evaluates_only_new_tokens(engine, ref):
    first = ref._prompt_tokens("The quick brown fox is a phrase that contains every letter of the alphabet.")
    run_all(engine, [first], params=GREEDY, max_tokens=3)
    longer = first + ref.tokenize(b" jumps over the lazy dog and", add_bos=False)
    before = engine.stats
    events: list = []
    job = engine.submit(longer, on_event=events.append, params=GREEDY, max_tokens=1)
    wait_finished(job)
    evaluated = engine.stats.prompt_evaluated - before.prompt_evaluated
    assert job.n_cached > 0
    assert evaluated == len(longer) - job.n_cached
    # the new tokens, and fewer than prefill_threshold cached ones read again to keep the
    # first pass in its from-scratch size class
    assert evaluated < len(longer) - len(first) + (engine.prefill_threshold or 1)


def test_cancel_frees_the_slot(engine, ref):
    prompt = ref._prompt_tokens("Count to one hundred: 1, 2, 3,")
    ban = {t: -100.0 for t in ref.tokenizer.eog_ids}
    stream = engine.stream(prompt, params=SamplingParams(temperature=0, logit_bias=ban), max_tokens=100)
    next(stream)
    stream.close()  # cancels
    deadline = time.monotonic() + 60
    while engine.n_active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert engine.stats.cancelled >= 1


def test_bad_submissions(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], on_event=print)
    with pytest.raises(ValueError, match="context"):
        engine.submit([1] * SLOT_CTX, on_event=print)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.submit([1, 10**9], on_event=print)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit([1, 2], on_event=print, max_tokens="many")  # type: ignore[arg-type]


def test_closed_engine(smollm2_path):
    with Model(smollm2_path, n_ctx=64, n_seq_max=2, n_threads=2) as model:
        eng = BatchEngine(model)
        eng.close()
        with pytest.raises(EngineClosed):
            eng.submit([1, 2], on_event=print)
