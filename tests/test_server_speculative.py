"""Speculative decoding in the server (llama-server's -md / --spec-type / --spec-draft-*): the same
tokens as without guesses, for single and concurrent requests, streamed or not, with sampling,
grammars, log-probabilities and stop strings; the guesses reported in ``timings``."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from splitllm.api import create_app
from splitllm.cli import main
from splitllm.engine import BatchEngine
from splitllm.engine_draft import ModelSlotDrafter, NgramSlotDrafter, SpecParams, pass_groups
from splitllm.grammar import Grammar
from splitllm.model import Model
from splitllm.server import BackgroundServer

SLOT_CTX = 256
PARALLEL = 2
N = 12  # tokens per request: keeps the suite fast
PROMPTS = ["The capital of France is", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def ref(smollm2_path):
    """The model called directly (no draft), one slot as large as each of the server's."""
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def llama(smollm2_path):
    """llama.cpp on the same file (the reference we did not write)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=SLOT_CTX, n_threads=2, logits_all=True, verbose=False)
    yield llm
    llm.close()


def agrees_with_llama_cpp(llm, prompt_tokens: list[int], got: list[int]) -> None:
    """``got`` is llama.cpp's greedy continuation, or differs from it first at a near-tie (a top-2
    gap of llama.cpp's logits under 0.5, which rounding alone moves in this model)."""
    want = []
    for tok in llm.generate(prompt_tokens, temp=0.0, top_k=1, reset=True):
        want.append(tok)
        if len(want) == len(got) or tok == llm.token_eos():
            break
    if got == want:
        return
    step = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
    llm.reset()
    llm.eval(prompt_tokens + want[:step])
    top2 = np.sort(np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64))[-2:]
    assert top2[1] - top2[0] < 0.5, f"differs from llama.cpp at step {step}, not a near-tie"


@pytest.fixture(scope="module")
def target(smollm2_path):
    with Model(smollm2_path, n_ctx=SLOT_CTX * PARALLEL, n_seq_max=PARALLEL, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def requantized(smollm2_path, tmp_path_factory):
    """SmolLM2 re-quantized to Q4_K by splitllm quantize: a draft that is often, not always, right."""
    out = tmp_path_factory.mktemp("draft") / "smollm2-q4k.gguf"
    assert main(["quantize", "--quiet", "--allow-requantize", str(smollm2_path), str(out), "Q4_K"]) == 0
    return out


def drafter(path) -> ModelSlotDrafter:
    return ModelSlotDrafter(path, PARALLEL, n_ctx=SLOT_CTX * PARALLEL, n_threads=2)


def serve(target, drafter, spec=SpecParams(n_max=4)):  # noqa: B008 - frozen dataclass
    engine = BatchEngine(target, drafter=drafter, speculative=spec)
    return engine, BackgroundServer(create_app(engine, model_alias="smol"))


def completion(url: str, body: dict) -> dict:
    """POST /completion; a streamed answer is put together as the plain one (content, tokens, and
    the final object's fields)."""
    if not body.get("stream"):
        r = httpx.post(f"{url}/completion", json=body, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()
    content, tokens, final = "", [], {}
    with httpx.stream("POST", f"{url}/completion", json=body, timeout=600) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                d = json.loads(line[6:])
                content += d["content"]
                tokens += d["tokens"]
                final = d
    return {**final, "content": content, "tokens": tokens}


def expected(ref: Model, prompt: str, **kw) -> tuple[str, list[int]]:
    """Model's text and tokens without a draft (greedy unless told)."""
    kw = {"temperature": 0.0, **kw}
    toks = []
    text = ""
    for c in ref.stream(ref.tokenize(prompt.encode()), max_tokens=kw.pop("max_tokens", N), **kw):
        text += c.text
        toks += list(c.tokens)
    return text, toks


def check_counts(out: dict, steps: int | None = None) -> tuple[int, int]:
    """timings.draft_n / draft_n_accepted are consistent: with ``steps`` (the request's passes,
    when it ran alone), every generated token is the prompt's, a pass's token or an accepted guess."""
    t = out["timings"]
    n, acc = t.get("draft_n", 0), t.get("draft_n_accepted", 0)
    assert 0 <= acc <= n
    if steps is not None:  # a prompt pass (none when cached), then passes of 1 + accepted guesses each
        decode_passes = steps - (1 if t["prompt_n"] else 0)
        assert out["tokens_predicted"] == 1 + decode_passes + acc
    return n, acc


def body(prompt: str, stream: bool, **kw) -> dict:
    return {
        "prompt": prompt,
        "n_predict": N,
        "temperature": 0,
        "return_tokens": True,
        "stream": stream,
        "cache_prompt": False,
        **kw,
    }


# ---- the same draft model: its guesses are the target's own ----


def test_same_model_draft_same_tokens_all_guesses_right(smollm2_path, target, ref, llama):
    engine, srv = serve(target, drafter(smollm2_path))
    with engine, srv:
        for prompt, stream in zip(PROMPTS, (False, True), strict=True):
            text, toks = expected(ref, prompt)
            s0 = engine.stats
            out = completion(srv.url, body(prompt, stream))
            assert out["content"] == text and out["tokens"] == toks
            agrees_with_llama_cpp(llama, ref.tokenize(prompt.encode()), out["tokens"])
            n, acc = check_counts(out, engine.stats.steps - s0.steps)
            # greedy guesses of the same weights: all right (but where the rounding of passes of
            # other sizes breaks a near tie), 4 a pass
            assert n >= 4 * (len(toks) - 1) // 5 - 4 and acc >= n - 1, out["timings"]
            assert engine.stats.draft_tokens - s0.draft_tokens == n
            assert engine.stats.draft_accepted - s0.draft_accepted == acc
        metrics = httpx.get(f"{srv.url}/metrics").text
        st = engine.stats
        assert f"llamacpp:spec_decode_num_draft_tokens_total {st.draft_tokens}\n" in metrics
        assert f"llamacpp:spec_decode_num_accepted_tokens_total {st.draft_accepted}\n" in metrics


# ---- another quantization of it: some guesses wrong ----


@pytest.fixture(scope="module")
def spec_server(target, requantized):
    engine, srv = serve(target, drafter(requantized))
    with engine, srv:
        yield engine, srv


def test_requantized_draft_concurrent_requests(spec_server, ref):
    engine, srv = spec_server
    with ThreadPoolExecutor(2) as pool:
        runs = zip(PROMPTS, (False, True), strict=True)
        outs = list(pool.map(lambda a: completion(srv.url, body(*a)), runs))
    assert engine.stats.max_batch_seqs == PARALLEL  # they did run together
    total = acc_total = 0
    for prompt, out in zip(PROMPTS, outs, strict=True):
        text, toks = expected(ref, prompt)
        assert out["content"] == text and out["tokens"] == toks
        n, acc = check_counts(out)
        total, acc_total = total + n, acc_total + acc
    assert 0 < acc_total < total  # partial acceptance


def test_sampling_grammar_logprobs_and_stops_with_a_draft(spec_server, ref):
    _, srv = spec_server
    # sampling: the draft's guesses are checked by the request's own sampler, seed and all
    kw = {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1234}
    text, toks = expected(ref, PROMPTS[0], **kw)
    out = completion(srv.url, body(PROMPTS[0], False, **kw))
    assert out["tokens"] == toks and out["content"] == text
    assert check_counts(out)[0] > 0
    # a JSON schema (llama-server drafts for grammar slots too: the sampler applies it)
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    text, toks = expected(ref, "A person as JSON:", grammar=Grammar.from_json_schema(schema))
    out = completion(srv.url, body("A person as JSON:", True, json_schema=schema))
    assert out["content"] == text and out["tokens"] == toks
    assert check_counts(out)[0] > 0
    # n_probs: each token's entries from its own row of the pass
    want = ref.create_completion(PROMPTS[1], max_tokens=N, temperature=0, logprobs=3)["choices"][0]
    out = completion(srv.url, body(PROMPTS[1], False, n_probs=3))
    got = out["completion_probabilities"]
    assert [e["token"] for e in got] == want["logprobs"]["tokens"]
    assert [e["logprob"] for e in got] == pytest.approx(want["logprobs"]["token_logprobs"], abs=1e-5)
    # a stop string inside the accepted guesses ends the text there
    text, _ = expected(ref, PROMPTS[0])
    stop = text.strip().split()[2]
    want = ref.create_completion(PROMPTS[0], max_tokens=N, temperature=0, stop=[stop])["choices"][0]
    out = completion(srv.url, body(PROMPTS[0], True, stop=[stop]))
    assert out["content"] == want["text"] and out["stop_type"] == "word"


def test_request_speculative_fields(spec_server, ref):
    engine, srv = spec_server
    text, toks = expected(ref, PROMPTS[0], max_tokens=8)
    out = completion(srv.url, body(PROMPTS[0], False, n_predict=8, **{"speculative.n_max": 0}))
    assert out["tokens"] == toks and "draft_n" not in out["timings"]
    assert out["generation_settings"]["speculative.n_max"] == 0
    s0 = engine.stats
    spec = {"speculative.n_max": 2, "speculative.p_min": 0.0}
    out = completion(srv.url, body(PROMPTS[0], False, n_predict=8, **spec))
    assert out["tokens"] == toks and out["stop_type"] == "limit"
    n, _ = check_counts(out, engine.stats.steps - s0.steps)
    assert 0 < n <= 2 * (engine.stats.steps - s0.steps)  # at most 2 guesses a pass
    out = completion(srv.url, body(PROMPTS[0], False, n_predict=8, **{"speculative.p_min": 1.0}))
    assert out["tokens"] == toks and "draft_n" not in out["timings"]  # never sure enough
    r = httpx.post(f"{srv.url}/completion", json=body(PROMPTS[0], False, **{"speculative.p_min": 2}))
    assert r.status_code == 400 and "speculative.p_min" in r.text


def test_cancelled_stream_frees_its_slot(spec_server, ref):
    engine, srv = spec_server
    with httpx.stream(
        "POST", f"{srv.url}/completion", json=body(PROMPTS[0], True, n_predict=200), timeout=600
    ) as r:
        next(r.iter_lines())
    for _ in range(600):
        if not engine.n_active:
            break
        engine._thread.join(0.05)
    assert engine.n_active == 0
    text, toks = expected(ref, PROMPTS[1], max_tokens=8)
    assert completion(srv.url, body(PROMPTS[1], False, n_predict=8))["tokens"] == toks


# ---- prompt lookup (--spec-type ngram-simple) ----


def ngram_simple_reference(tokens: list[int], n: int, m: int) -> list[int]:
    """llama.cpp's common_ngram_simple_draft, step by step: the history is all but the last token;
    the last n tokens are searched for backwards from history position len - n - 1 down to 1."""
    hist, last = tokens[:-1], tokens[-1]
    cur = len(hist)
    if cur <= n + m + 1:
        return []
    pattern = hist[cur - n + 1 :] + [last]
    for j in range(cur - n - 1, 0, -1):
        if hist[j : j + n] == pattern:
            count = min(m, cur - (j + n))
            return [] if count < n else hist[j + n : j + n + count]
    return []


def test_pass_groups():
    assert pass_groups([1, 1, 1, 1, 1], 2, 9) == [[0, 1], [2, 3], [4]]  # decode_width alone
    assert pass_groups([1, 5, 4, 1, 1], 4, 9) == [[0, 1], [2, 3, 4]]  # rows with guesses <= 9
    assert pass_groups([9, 1, 3, 3, 3], 8, 9) == [[0], [1, 2, 3], [4]]


def test_ngram_simple_lookup_equals_llama_cpp_rule():
    import random

    rng = random.Random(0)
    d = NgramSlotDrafter(3, 5)
    for _ in range(300):
        toks = [rng.randrange(4) for _ in range(rng.randrange(1, 40))]
        assert d.lookup(toks) == ngram_simple_reference(toks, 3, 5), toks
    with pytest.raises(ValueError, match="size-n"):
        NgramSlotDrafter(0, 5)


def test_ngram_simple_server_same_tokens(target, ref):
    engine, srv = serve(target, NgramSlotDrafter(2, 8), SpecParams(n_max=8))
    prompt = "1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3,"
    with engine, srv:
        text, toks = expected(ref, prompt)
        out = completion(srv.url, body(prompt, False))
        assert out["tokens"] == toks and out["content"] == text
        n, acc = check_counts(out)
        assert acc > 0


# ---- options ----


def test_bad_options_are_refused(smollm2_path, tmp_path, capsys):
    from tiny_model import TinyConfig, make_weights, write_gguf

    other = tmp_path / "other-vocab.gguf"
    write_gguf(make_weights(TinyConfig(n_layer=1, seed=5)), other)
    base = ["serve", str(smollm2_path), "-c", "256", "-np", "2", "-t", "2"]
    for extra, message in (
        (["-md", str(other)], f"draft model {other} and target model {smollm2_path}: the draft model's"),
        (["--spec-type", "draft-mtp"], "--spec-type 'draft-mtp': splitllm serves none, draft-simple, ngram"),
        (["--spec-type", "draft-simple"], "--spec-type draft-simple needs a draft model"),
        (["-md", str(other), "--spec-type", "ngram-simple"], "a draft model is --spec-type draft-simple"),
        (["--draft-p-min", "1.5"], "--spec-draft-p-min must be in [0, 1]"),
        (["--draft-max", "-1"], "--spec-draft-n-max must be at least 0"),
        (["--draft-max", "2", "--draft-min", "3"], "--spec-draft-n-min must be in [0, --spec-draft-n-max"),
        (["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "0"], "--spec-ngram-simple-size-n"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="speculative p_min"):
        SpecParams(p_min=-0.5)


def test_serve_options_make_the_drafter(smollm2_path, monkeypatch):
    import splitllm.server

    seen = {}
    monkeypatch.setattr(splitllm.server, "_serve", lambda args, model, **kw: seen.update(kw))
    base = ["serve", str(smollm2_path), "-c", "256", "-np", "2", "-t", "2"]
    assert (
        main(
            [*base, "-md", str(smollm2_path), "--draft-max", "5", "--draft-min", "2", "--draft-p-min", "0.5"]
        )
        == 0
    )
    assert isinstance(seen["drafter"], ModelSlotDrafter) and seen["drafter"].slot_ctx == 128
    assert seen["speculative"] == SpecParams(n_max=5, n_min=2, p_min=0.5)
    seen["drafter"].close()
    assert main([*base, "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3", "-cd", "64"]) == 0
    assert isinstance(seen["drafter"], NgramSlotDrafter) and seen["drafter"].size_n == 3
    assert main(base) == 0 and seen["drafter"] is None
