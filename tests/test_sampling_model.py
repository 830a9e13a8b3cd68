"""The new sampler settings end to end on SmolLM2: ``Model`` calls against llama-cpp-python's
``Llama`` (mirostat), and the server's OpenAI and native endpoints taking llama-server's samplers.

The two engines' logits differ by up to ~0.5 on this model (see test_vs_llamacpp), enough to move a
random draw, so the model-level comparison has three parts: each engine's tokens are replayed by
the other side's sampler on that engine's own logits (recorded with a logits processor), which
must give the same tokens at every step; and the two engines give the same tokens for as long as
the draws do not depend on their logit differences (the steps where our sampler, in lockstep on
both engines' logits, picks the same token), which the prompt (a counting sequence: peaked
distributions) and seeds make long.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pytest
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.sampling import Sampler, SamplingParams
from splitllm.server import BackgroundServer
from test_sampling import LlamaCppChain

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,"
N_TOKENS = 12
PARALLEL = 2
SLOT_CTX = 128
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2) as m:
        yield m


class Recorder:
    """A logits processor that keeps a copy of each step's logits and changes nothing."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.rows.append(np.array(scores, dtype=np.float32))
        return scores


def replay(p: SamplingParams, seed: int, rows: list[np.ndarray]) -> list[int]:
    s = Sampler(p, rows[0].size, seed)
    out = []
    for x in rows:
        out.append(s.sample(x))
        s.accept(out[-1])
    return out


@pytest.mark.reference
@pytest.mark.parametrize(("mode", "seed"), [(1, 42), (2, 1234)])
def test_model_mirostat_is_llama_cpp_pythons(model, smollm2_path, mode: int, seed: int) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    ref = llama_cpp.Llama(str(smollm2_path), n_ctx=SLOT_CTX, n_threads=2, verbose=False)
    try:
        prompt = ref.tokenize(COUNTING.encode(), special=True)
        assert model._prompt_tokens(COUNTING) == prompt
        kw = {"mirostat_mode": mode, "mirostat_tau": 4.0, "mirostat_eta": 0.2, "repeat_penalty": 1.1}
        rec_ref, rec_ours = Recorder(), Recorder()
        ref.set_seed(seed)
        theirs = []
        hook = llama_cpp.LogitsProcessorList([rec_ref])
        for t in ref.generate(prompt, temp=0.8, logits_processor=hook, **kw):
            theirs.append(int(t))
            if len(theirs) == N_TOKENS:
                break
        mine = []
        for t in model.generate(prompt, temp=0.8, seed=seed, logits_processor=rec_ours, **kw):
            mine.append(t)
            if len(mine) == N_TOKENS:
                break
        params = SamplingParams(temperature=0.8, **kw)
        # Same logits, same tokens: our sampler on llama.cpp's logits, llama.cpp's on ours.
        assert replay(params, seed, rec_ref.rows[:N_TOKENS]) == theirs
        chain = LlamaCppChain(params, rec_ours.rows[0].size, seed)
        try:
            replayed = []
            for x in rec_ours.rows[:N_TOKENS]:
                replayed.append(chain.apply(x)[1])
                chain.accept(replayed[-1])
        finally:
            chain.close()
        assert replayed == mine
        # Across engines: the same tokens while the picks do not hang on the logit differences.
        s1, s2 = Sampler(params, rec_ref.rows[0].size, seed), Sampler(params, rec_ours.rows[0].size, seed)
        robust = 0
        for a, b in zip(rec_ref.rows, rec_ours.rows, strict=False):
            t1, t2 = s1.sample(a), s2.sample(b)
            if t1 != t2 or robust == N_TOKENS:
                break
            s1.accept(t1)
            s2.accept(t2)
            robust += 1
        assert robust >= 8, f"only {robust} steps are decided the same way on both engines' logits"
        assert mine[:robust] == theirs[:robust]
        # The same through __call__ (create_completion), with llama-cpp-python's argument names.
        a = ref(COUNTING, max_tokens=robust, temperature=0.8, seed=seed, **kw)["choices"][0]["text"]
        b = model(COUNTING, max_tokens=robust, temperature=0.8, seed=seed, **kw)["choices"][0]["text"]
        assert a == b
    finally:
        ref.close()


def test_model_takes_the_new_settings(model) -> None:
    """llama-cpp-python's names (and llama-server's extra samplers) on every call; bad values are
    ValueErrors naming the setting; tfs_z only 1.0."""
    prompt = model._prompt_tokens(PROMPT)
    kw = {"typical_p": 0.9, "mirostat_mode": 0, "xtc_probability": 0.5, "xtc_threshold": 0.1,
          "top_n_sigma": 2.0, "dynatemp_range": 0.2, "dynatemp_exponent": 1.5, "tfs_z": 1.0}
    p = SamplingParams(temperature=0.7, **{k: v for k, v in kw.items() if k != "tfs_z"})
    want = replay_model(model, prompt, p, 3, 6)
    out = model(PROMPT, max_tokens=6, temperature=0.7, seed=3, **kw)
    assert out["choices"][0]["text"] == model.detokenize(want).decode("utf-8", errors="replace")
    chunks = list(model.stream(prompt, max_tokens=6, temperature=0.7, seed=3, **kw))
    assert "".join(c.text for c in chunks) == out["choices"][0]["text"]
    gen = model.generate(prompt, temp=0.7, seed=3, **kw)
    assert [next(gen) for _ in range(6)] == want
    gen.close()
    chat = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=3, seed=1,
                                        mirostat_mode=2, mirostat_tau=3.0, typical_p=0.5)
    assert chat["choices"][0]["message"]["content"]
    for mode in (1, 2):  # a grammar masks tokens to -inf: mirostat still draws an allowed one
        out = model(PROMPT, max_tokens=8, grammar='root ::= " yes" | " no"', mirostat_mode=mode, seed=2)
        assert out["choices"][0]["text"] in (" yes", " no")
    for bad, match in (({"mirostat_mode": 3}, "mirostat_mode"), ({"typical_p": 2.0}, "typical_p"),
                       ({"tfs_z": 0.9}, "tfs_z"), ({"xtc_threshold": -1.0}, "xtc_threshold"),
                       ({"mirostat_tau": math.nan}, "mirostat_tau")):
        with pytest.raises(ValueError, match=match):
            model(PROMPT, max_tokens=2, **bad)
        with pytest.raises(ValueError, match=match):
            model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, **bad)
    with pytest.raises(TypeError):
        model(PROMPT, max_tokens=2, adaptive_target=0.5)


def test_mirostat_state_under_speculative_decoding(model, smollm2_path) -> None:
    """With a draft model, each position is still sampled once: mu and the generators advance as
    without one, so the tokens are the same."""
    from splitllm.speculative import PromptLookupDecoding

    prompt = model._prompt_tokens("red green blue red green blue red green blue red green blue red")
    kw = {"temp": 0.9, "seed": 4, "mirostat_mode": 2, "mirostat_tau": 1.0}
    gen = model.generate(prompt, **kw)
    want = [next(gen) for _ in range(12)]
    gen.close()
    with Model(smollm2_path, n_ctx=SLOT_CTX, n_threads=2,
               draft_model=PromptLookupDecoding(max_ngram_size=2, num_pred_tokens=4)) as spec:
        gen = spec.generate(prompt, **kw)
        assert [next(gen) for _ in range(12)] == want
        gen.close()
        assert max(spec._draft_policy._cost) >= 2  # (passes with guesses ran)


def replay_model(model: Model, prompt: list[int], p: SamplingParams, seed: int, n: int) -> list[int]:
    """The first n tokens ``model`` generates with a sampler of settings p (any chain)."""
    gen = model._generate(prompt, Sampler(p, model.n_vocab(), seed))
    out = [next(gen)[0] for _ in range(n)]
    gen.close()
    return out


# ---- the server


@pytest.fixture(scope="module")
def server(smollm2_path):
    m = Model(smollm2_path, n_ctx=SLOT_CTX * PARALLEL, n_seq_max=PARALLEL, n_threads=2)
    engine = BatchEngine(m)
    with BackgroundServer(create_app(engine, model_alias="smol")) as srv:
        yield srv
    engine.close()
    m.close()


def post(server: Any, path: str, body: Any, status: int = 200) -> Any:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def server_params(**kw: Any) -> SamplingParams:
    return SamplingParams(chain="llama-server", **kw)


def test_native_endpoint_runs_llama_servers_samplers(server, model) -> None:
    prompt = model._prompt_tokens(PROMPT)
    extra = {"typical_p": 0.8, "xtc_probability": 0.5, "xtc_threshold": 0.05, "top_n_sigma": 2.0,
             "dynatemp_range": 0.3, "dynatemp_exponent": 1.5}
    out = post(server, "/completion", {"prompt": PROMPT, "n_predict": 6, "seed": 7, "return_tokens": True,
                                       **extra})
    assert out["tokens"] == replay_model(model, prompt, server_params(**extra), 7, 6)
    settings = out["generation_settings"]
    assert {k: settings[k] for k in extra} == extra
    assert settings["samplers"] == ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p",
                                    "xtc", "temperature"]
    # mirostat: temperature then mirostat, the penalties left out (llama-server's chain)
    miro = {"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2}
    out = post(server, "/completion", {"prompt": PROMPT, "n_predict": 6, "seed": 11, "temperature": 0.6,
                                       "repeat_penalty": 1.5, "return_tokens": True, **miro})
    want = replay_model(model, prompt, server_params(temperature=0.6, mirostat_mode=2, mirostat_tau=3.0,
                                                     mirostat_eta=0.2), 11, 6)
    assert out["tokens"] == want
    assert {k: out["generation_settings"][k] for k in miro} == miro
    # typical_p with temperature 0: the highest logit left after the filters, as llama-server
    out = post(server, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": 0, "typical_p": 0.3,
                                       "return_tokens": True})
    assert out["tokens"] == replay_model(model, prompt, server_params(temperature=0, typical_p=0.3), 0, 4)
    # llama-server's clamps; its defaults in /props
    clamped = post(server, "/completion", {"prompt": PROMPT, "n_predict": 1, "mirostat": 7,
                                           "xtc_probability": 2})["generation_settings"]
    assert (clamped["mirostat"], clamped["xtc_probability"]) == (2, 1.0)
    params = httpx.get(f"{server.url}/props", timeout=60).json()["default_generation_settings"]["params"]
    assert (params["typical_p"], params["mirostat"], params["mirostat_tau"], params["mirostat_eta"]) == \
        (1.0, 0, 5.0, 0.1)
    names = ("xtc_probability", "xtc_threshold", "top_n_sigma", "dynatemp_range", "dynatemp_exponent")
    assert tuple(params[k] for k in names) == (0.0, 0.1, -1.0, 0.0, 1.0)


def test_openai_endpoints_take_the_new_fields(server, model) -> None:
    prompt = model._prompt_tokens(PROMPT)
    body = {"prompt": PROMPT, "max_tokens": 6, "seed": 5, "temperature": 0.6, "mirostat_mode": 2,
            "mirostat_tau": 3.0, "mirostat_eta": 0.2, "tfs_z": 1.0}
    want = replay_model(model, prompt, server_params(temperature=0.6, mirostat_mode=2, mirostat_tau=3.0,
                                                     mirostat_eta=0.2), 5, 6)
    text = post(server, "/v1/completions", body)["choices"][0]["text"]
    assert text == model.detokenize(want).decode("utf-8", errors="replace")
    llama_server_names = {**body, "mirostat": 2}
    del llama_server_names["mirostat_mode"]
    assert post(server, "/v1/completions", llama_server_names)["choices"][0]["text"] == text
    extra = {"typical_p": 0.8, "xtc_probability": 0.5, "xtc_threshold": 0.05, "top_n_sigma": 2.0,
             "dynatemp_range": 0.3, "dynatemp_exponent": 1.5}
    text = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "seed": 8, **extra})
    want = replay_model(model, prompt, server_params(**extra), 8, 6)
    assert text["choices"][0]["text"] == model.detokenize(want).decode("utf-8", errors="replace")
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 3, "mirostat": 1, "seed": 2, "typical_p": 0.9})
    assert chat["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"typical_p": 1.5}, "typical_p"),
    ("/v1/completions", {"mirostat_mode": 3}, "mirostat_mode"),
    ("/v1/completions", {"mirostat": 1, "mirostat_mode": 2}, "mirostat"),
    ("/v1/completions", {"mirostat_eta": 0.0}, "mirostat_eta"),
    ("/v1/completions", {"tfs_z": 0.5}, "tfs_z"),
    ("/v1/completions", {"dry_allowed_length": -1}, "dry_allowed_length"),
    ("/v1/completions", {"dry_sequence_breakers": "\n"}, "dry_sequence_breakers"),
    ("/v1/completions", {"xtc_probability": 1.5}, "xtc_probability"),
    ("/v1/completions", {"dynatemp_range": -1.0}, "dynatemp_range"),
    ("/v1/chat/completions", {"typical_p": -0.5}, "typical_p"),
    ("/completion", {"dry_penalty_last_n": -2}, "dry_penalty_last_n"),
    ("/completion", {"dry_multiplier": "0.5"}, "dry_multiplier"),
    ("/completion", {"mirostat": "2"}, "mirostat"),
    ("/completion", {"mirostat_tau": math.nan}, "mirostat_tau"),
    ("/completion", {"dynatemp_exponent": math.inf}, "dynatemp_exponent"),
])
def test_bad_sampler_values_are_400(server, path: str, body: dict, param: str) -> None:
    if path == "/v1/chat/completions":
        body = {"messages": [{"role": "user", "content": "Hi"}], **body}
    else:
        body = {"prompt": PROMPT, **body}
    # (NaN and Infinity as Python's json writes them: llama-server's parser takes them too)
    r = httpx.post(f"{server.url}{path}", content=json.dumps({"max_tokens": 2, **body}), timeout=300,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_cli_sampling_options() -> None:
    """run / chat take llama-cli's option names; they become the Model's keyword arguments."""
    from splitllm.cli import build_parser, sampling_kwargs
    from splitllm.sampling import sampling_params

    args = build_parser().parse_args(
        ["run", "m.gguf", "-p", "x", "--typical", "0.9", "--mirostat", "2", "--mirostat-lr", "0.2",
         "--mirostat-ent", "3", "--xtc-probability", "0.4", "--xtc-threshold", "0.2", "--top-nsigma", "1.5",
         "--dynatemp-range", "0.3", "--dynatemp-exp", "2"])
    kw = sampling_kwargs(args)
    want = {"typical_p": 0.9, "mirostat_mode": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2,
            "xtc_probability": 0.4, "xtc_threshold": 0.2, "top_n_sigma": 1.5, "dynatemp_range": 0.3,
            "dynatemp_exponent": 2.0}
    assert {k: kw[k] for k in want} == want
    del kw["seed"]
    assert sampling_params(**kw).mirostat_mode == 2
    chat = build_parser().parse_args(["chat", "m.gguf", "--top-n-sigma", "2", "--typical-p", "0.5"])
    assert (sampling_kwargs(chat)["top_n_sigma"], sampling_kwargs(chat)["typical_p"]) == (2.0, 0.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "m.gguf", "-p", "x", "--mirostat", "3"])
