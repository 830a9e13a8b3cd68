"""DRY against llama.cpp's own sampler (``llama_sampler_init_dry`` through llama-cpp-python's
low-level API, with the vocabularies of SmolLM2 and of llama.cpp's llama-spm test file): the logits
after DRY bit for bit over multi-step runs with histories of many shapes (repeats across breakers,
multi-token and custom breakers, allowed_length edges, penalty_last_n windows, the exponent cap),
the whole chain's candidates and drawn tokens, then SmolLM2 end to end: a Model run with DRY equals
llama.cpp's DRY on the same logits (the prompt in its history), the server's fields and its 400s."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pytest
from splitllm.dry import DEFAULT_BREAKERS, sequence_breakers
from splitllm.sampling import Sampler, SamplingParams
from test_sampling import LlamaCppChain, llama_cpp_dry, ours, random_logits

PROMPT = "red green blue red green blue red green blue red green blue red"


class Vocab:
    """Our tokenizer and llama.cpp's vocabulary (a llama_vocab pointer) of one GGUF file."""

    def __init__(self, path: Any) -> None:
        import llama_cpp
        from test_tokenizer import tokenizer_for

        self.llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.ptr = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.tok = tokenizer_for(str(path))
        self.n = self.tok.n_vocab


@pytest.fixture(scope="module")
def smol(smollm2_path) -> Vocab:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    return Vocab(smollm2_path)


@pytest.fixture(scope="module")
def spm() -> Vocab:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    from lcpp import llama_cpp_vocab

    return Vocab(llama_cpp_vocab("ggml-vocab-llama-spm.gguf"))


def dry_logits(vocab: Any, p: SamplingParams, x: np.ndarray, ref: Any) -> np.ndarray:
    """llama.cpp's DRY sampler ``ref`` applied to x (all tokens, in id order)."""
    import ctypes

    import llama_cpp as lc

    data = (lc.llama_token_data * x.size)()
    view = np.ctypeslib.as_array(data)
    view["id"], view["logit"], view["p"] = np.arange(x.size), x, 0.0
    cur = lc.llama_token_data_array(data=ctypes.cast(data, lc.llama_token_data_p), size=x.size,
                                    selected=-1, sorted=False)
    lc.llama_sampler_apply(ref, ctypes.byref(cur))
    assert cur.size == x.size and (view["id"] == np.arange(x.size)).all()
    return view["logit"].copy()


BREAKER_SETS = [DEFAULT_BREAKERS, ("User:", "\n\n"), ("*", " the cat", "\n"), (), ('"', ":"),
                ("é:", "```")]


def alphabet(tok: Any, breakers: tuple[str, ...], rng: np.random.Generator) -> list[int]:
    """A few tokens that make repeats likely: words, breaker pieces, heads of multi-token breakers."""
    words = tok.tokenize(" the cat sat on a mat:\n\n\"yes\" * User: said", add_bos=False)
    pieces = [t for b in breakers for t in tok.tokenize(b, add_bos=False)]
    heads = [h for h, tail in sequence_breakers(tok, breakers) if tail]
    extra = list(rng.choice(heads, size=min(4, len(heads)), replace=False)) if heads else []
    return sorted({*words, *pieces, *map(int, extra)})


def history(rng: np.random.Generator, tok: Any, breakers: tuple[str, ...], length: int) -> list[int]:
    """A prompt-like history: phrases of the alphabet repeated (with changes), breakers (whole or
    as their tokens) in between, or a few tokens at random."""
    alpha = alphabet(tok, breakers, rng)
    shape = rng.integers(3)
    if shape == 0:  # a small alphabet: many short repeats
        return [int(t) for t in rng.choice(alpha[: int(rng.integers(2, 6))], size=length)]
    if shape == 1:  # one token over and over: long repeats (the exponent cap)
        return [alpha[0]] * length
    phrase = [int(t) for t in rng.choice(alpha, size=int(rng.integers(2, 9)))]
    out: list[int] = []
    while len(out) < length:
        out += phrase
        if rng.random() < 0.4 and breakers:
            out += tok.tokenize(str(rng.choice(breakers)), add_bos=False)
        if rng.random() < 0.3:
            phrase[int(rng.integers(len(phrase)))] = int(rng.choice(alpha))
    return out[:length]


def dry_params(rng: np.random.Generator) -> SamplingParams:
    breakers = BREAKER_SETS[int(rng.integers(len(BREAKER_SETS)))]
    return SamplingParams(
        temperature=0, repeat_penalty=1.0,
        dry_multiplier=float(rng.choice([0.8, 2.0, -0.5, 1e-3])),
        dry_base=float(rng.choice([1.0, 1.75, 3.0, 1.000001, 1.1])),
        dry_allowed_length=int(rng.choice([0, 1, 2, 3, 5])),
        dry_penalty_last_n=int(rng.choice([1, 2, 3, 7, 20, 64, -1])),
        dry_sequence_breakers=breakers)


def run_against_llama_cpp(vocab: Vocab, seed: int, cases: int, steps: int) -> int:
    """Multi-step runs: after a prompt, each step's logits after DRY are compared with llama.cpp's,
    then a token (mostly one that extends a repeat) goes into both histories."""
    import llama_cpp as lc

    rng = np.random.default_rng(seed)
    compared = penalised = 0
    for case in range(cases):
        p = dry_params(rng)
        length = int(rng.choice([0, 1, 3, 10, 60, 200]))
        prompt = history(rng, vocab.tok, tuple(p.dry_sequence_breakers), length)
        ref = llama_cpp_dry(vocab.ptr, p)
        mine = Sampler(p, vocab.n, 0, tokenizer=vocab.tok)
        assert mine.dry
        try:
            mine.accept_prompt(prompt)
            for t in prompt:
                lc.llama_sampler_accept(ref, t)
            hist = list(prompt)
            for step in range(steps):
                x = random_logits(rng, vocab.n, 2.0)
                want = dry_logits(vocab, p, x, ref)
                got = mine.adjusted(x)
                where = f"case {case} step {step}: {p}, history {hist[-30:]}"
                assert got.tobytes() == want.tobytes(), (
                    f"{where}: differ at {np.flatnonzero(got != want)[:10]}")
                penalised += int((got != x).any())
                compared += 1
                if hist and rng.random() < 0.7:  # the token after an earlier match of the last one
                    at = [i + 1 for i, t in enumerate(hist[:-1]) if t == hist[-1]]
                    nxt = hist[int(rng.choice(at))] if at else int(rng.choice(hist))
                else:
                    nxt = int(rng.choice(alphabet(vocab.tok, tuple(p.dry_sequence_breakers), rng)))
                hist.append(nxt)
                lc.llama_sampler_accept(ref, nxt)
                mine.accept(nxt)
        finally:
            lc.llama_sampler_free(ref)
    assert penalised > compared // 8  # (many steps do penalise something)
    return compared


@pytest.mark.reference
def test_dry_logits_are_llama_cpps(smol) -> None:
    """SmolLM2's vocabulary (byte-level BPE, clean_spaces): every logit after DRY, bit for bit."""
    assert run_against_llama_cpp(smol, 1, 40, 12) == 40 * 12


@pytest.mark.reference
def test_dry_logits_are_llama_cpps_spm(spm) -> None:
    """A SentencePiece vocabulary (leading space dropped from token texts, byte tokens)."""
    assert run_against_llama_cpp(spm, 2, 20, 8) == 20 * 8


@pytest.mark.reference
@pytest.mark.parametrize("chain", ["llama-cpp-python", "llama-server"])
def test_chain_with_dry_is_llama_cpps(smol, chain: str) -> None:
    """DRY with the other samplers (penalties, top_k / top_p / min_p, the general path's): the
    candidates, probabilities and drawn tokens over multi-step runs, the picks fed back."""
    rng = np.random.default_rng(7 + (chain == "llama-server"))
    for case in range(6):
        p = replace(dry_params(rng), chain=chain, temperature=float(rng.choice([0.0, 0.7, 1.3])),
                    repeat_penalty=float(rng.choice([1.0, 1.2])), repeat_last_n=16,
                    top_k=int(rng.choice([0, 40])),
                    typical_p=float(rng.choice([1.0, 0.9])), dry_multiplier=float(rng.choice([0.8, 3.0])))
        seed = int(rng.integers(0, 2**32 - 1))
        prompt = history(rng, smol.tok, tuple(p.dry_sequence_breakers), 80)
        ref = LlamaCppChain(p, smol.n, seed, vocab=smol.ptr)
        mine = Sampler(p, smol.n, seed, tokenizer=smol.tok)
        try:
            mine.accept_prompt(prompt)
            # llama.cpp's chain takes the prompt into every sampler: here the penalty window stays
            # empty (ours never takes the prompt), so the prompt goes to its DRY sampler alone
            dry = ref.lc.llama_sampler_chain_get(ref.chain, 1)
            for t in prompt:
                ref.lc.llama_sampler_accept(dry, t)
            for step in range(10):
                x = random_logits(rng, smol.n, 3.0)
                want, t_ref = ref.apply(x)
                if p.temperature != 0 or p.chain == "llama-server" and p.replayed:
                    got = ours(mine, x)
                    if mine._core.general:
                        assert got == want, f"case {case} step {step}: {p}"
                    else:
                        if set(got) != set(want):  # a top_p / min_p edge blurred by float sums
                            break
                        ids = sorted(want)
                        np.testing.assert_allclose([got[i] for i in ids], [want[i] for i in ids],
                                                   rtol=1e-5, atol=2e-6)
                t_ours = mine.sample(x)
                assert t_ours == t_ref, f"case {case} step {step}: {p}, seed {seed}"
                ref.accept(t_ref)
                mine.accept(t_ours)
        finally:
            ref.close()


# ---- settings


def test_dry_settings() -> None:
    p = SamplingParams()
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_penalty_last_n) == (0.0, 1.75, 2, 64)
    assert p.dry_sequence_breakers == ("\n", ":", '"', "*") and not p.dry
    listed = SamplingParams(dry_multiplier=0.5, dry_sequence_breakers=["a", "b"])
    assert listed.dry_sequence_breakers == ("a", "b")
    # llama.cpp's no-ops: multiplier 0, base below 1, an empty window
    for off in ({"dry_multiplier": 0.0}, {"dry_multiplier": 1.0, "dry_base": 0.9},
                {"dry_multiplier": 1.0, "dry_penalty_last_n": 0}):
        q = SamplingParams(**off)
        assert not q.dry and not Sampler(q, 10, 0).dry
    on = SamplingParams(dry_multiplier=1.0, dry_sequence_breakers=())
    assert on.dry and Sampler(on, 10, 0).dry
    assert not Sampler(replace(on, mirostat_mode=2), 10, 0).dry  # mirostat's chain has no DRY
    assert not Sampler(on, 10, 0)._core.general  # DRY keeps the fast path
    with pytest.raises(ValueError, match="tokenizer"):
        Sampler(replace(on, dry_sequence_breakers=("\n",)), 10, 0)


@pytest.mark.parametrize("kw", [
    {"dry_multiplier": float("nan")}, {"dry_base": float("inf")}, {"dry_allowed_length": -1},
    {"dry_allowed_length": 1.5}, {"dry_penalty_last_n": -2}, {"dry_sequence_breakers": "\n"},
    {"dry_sequence_breakers": ["\n", 3]}, {"dry_multiplier": "x"},
])
def test_bad_dry_settings(kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        SamplingParams(**kw)


def test_dry_penalties_by_hand() -> None:
    """Small cases worked out by hand (no breakers): "1 2 3 1 2" makes 3 extend a repeat of 2."""
    x = np.zeros(10, np.float32)
    p = SamplingParams(temperature=0, dry_multiplier=1.0, dry_base=2.0, dry_sequence_breakers=())
    s = Sampler(p, 10, 0)
    s.accept_prompt([1, 2, 3, 1, 2])
    assert s.adjusted(x).tolist() == [0, 0, 0, -1, 0, 0, 0, 0, 0, 0]
    s.accept(3)
    s.accept(1)  # "1 2 3 1 2 3 1": the last "1 2 3 1" came before, followed by 2 -> 2 ** (4 - 2)
    got = s.adjusted(x)
    assert got[2] == -4.0 and np.count_nonzero(got) == 1
    s.reset(0)
    assert not s.adjusted(x).any()
    # the window: only the last dry_penalty_last_n tokens count
    s = Sampler(replace(p, dry_penalty_last_n=4), 10, 0)
    s.accept_prompt([1, 2, 3, 1, 2])
    assert not s.adjusted(x).any()


def test_breakers_of_smollm2(smol) -> None:
    """Single-token breakers (every token containing the string) and multi-token ones (a token that
    ends with the start of the string, then the rest's tokens)."""
    tok = smol.tok
    got = sequence_breakers(tok, ("\n", "User:"))
    newline = tok.tokenize("\n", add_bos=False)
    assert len(newline) == 1 and (newline[0], ()) in got
    user = tok.tokenize("User:", add_bos=False)
    assert len(user) == 2 and (user[0], (user[1],)) in got
    assert all(b"\n" in tok.llama_detokenize([h], unparse_special=True) for h, tail in got if not tail
               and b"User:" not in tok.llama_detokenize([h], unparse_special=True))
    assert sequence_breakers(tok, ("\n", "User:")) is got  # cached


# ---- SmolLM2 end to end


@pytest.fixture(scope="module")
def model(smollm2_path):
    from splitllm.model import Model

    with Model(smollm2_path, n_ctx=256, n_threads=2) as m:
        yield m


class Recorder:
    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.rows.append(np.array(scores, dtype=np.float32))
        return scores


DRY = {"dry_multiplier": 2.0, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": -1}


@pytest.mark.reference
def test_model_dry_is_llama_cpps(model, smol) -> None:
    """A greedy run with DRY: each pick is llama.cpp's DRY (the prompt accepted first, as
    llama-server does) then greedy on the same logits; the text differs from the run without."""
    import llama_cpp as lc

    prompt = model._prompt_tokens(PROMPT)
    plain = list(model(PROMPT, max_tokens=12, temperature=0)["choices"][0]["text"])
    rec = Recorder()
    gen = model.generate(prompt, temp=0, logits_processor=rec, **DRY)
    mine = [next(gen) for _ in range(12)]
    gen.close()
    p = SamplingParams(temperature=0, **DRY)
    ref = llama_cpp_dry(smol.ptr, p)
    try:
        for t in prompt:
            lc.llama_sampler_accept(ref, t)
        for x, t in zip(rec.rows, mine, strict=True):
            assert int(np.argmax(dry_logits(smol, p, x, ref))) == t
            lc.llama_sampler_accept(ref, t)
    finally:
        lc.llama_sampler_free(ref)
    text = model.detokenize(mine).decode("utf-8", errors="replace")
    assert text != "".join(plain)
    out = model(PROMPT, max_tokens=12, temperature=0, **DRY)["choices"][0]["text"]
    assert out == text
    chat = model.create_chat_completion([{"role": "user", "content": PROMPT}], max_tokens=4, **DRY)
    assert chat["choices"][0]["message"]["content"]
    with pytest.raises(ValueError, match="dry_allowed_length"):
        model(PROMPT, max_tokens=2, dry_multiplier=1.0, dry_allowed_length=-1)


@pytest.fixture(scope="module")
def server(model):
    from splitllm.api import create_app
    from splitllm.engine import BatchEngine
    from splitllm.server import BackgroundServer

    engine = BatchEngine(model)
    with BackgroundServer(create_app(engine, model_alias="smol")) as srv:
        yield srv
    engine.close()


def post(server: Any, path: str, body: Any, status: int = 200) -> Any:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def test_server_takes_dry(server, model) -> None:
    """The native and OpenAI endpoints: DRY changes a greedy text as the Model's does (the prompt
    in DRY's history there too); "dry" left out of ``samplers`` turns it off; settings echoed."""
    want = model(PROMPT, max_tokens=10, temperature=0, **DRY)["choices"][0]["text"]
    plain = model(PROMPT, max_tokens=10, temperature=0)["choices"][0]["text"]
    assert want != plain
    body = {"prompt": PROMPT, "n_predict": 10, "temperature": 0, **DRY}
    out = post(server, "/completion", body)
    assert out["content"] == want
    settings = out["generation_settings"]
    assert {k: settings[k] for k in DRY} == DRY
    assert settings["dry_sequence_breakers"] == list(DEFAULT_BREAKERS) and "dry" in settings["samplers"]
    off = post(server, "/completion", {**body, "samplers": ["penalties", "top_k", "temperature"]})
    assert off["content"] == plain
    assert post(server, "/completion", {**body, "dry_base": 0.5})["generation_settings"]["dry_base"] == 1.75
    oai = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, **DRY})
    assert oai["choices"][0]["text"] == want
    custom = {**DRY, "dry_sequence_breakers": [" blue"]}
    got = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, **custom})
    want = model(PROMPT, max_tokens=10, temperature=0, **custom)["choices"][0]["text"]
    assert got["choices"][0]["text"] == want


@pytest.mark.parametrize("path", ["/completion", "/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(("field", "value"), [
    ("dry_allowed_length", -1), ("dry_penalty_last_n", -2), ("dry_sequence_breakers", []),
    ("dry_sequence_breakers", "\n"), ("dry_sequence_breakers", [1]), ("dry_multiplier", "a"),
    ("dry_base", [1]),
])
def test_bad_dry_fields_are_400(server, path: str, field: str, value: Any) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    body: dict[str, Any] = chat if "chat" in path else {"prompt": "a"}
    err = post(server, path, {**body, "max_tokens": 2, field: value}, 400)["error"]
    assert err["param"] == field or field in err["message"], err


def test_cli_dry_options(smollm2_path, capsys):
    """`splitllm run --dry-*` (llama-cli's options; --dry-sequence-breaker replaces the defaults,
    'none' clears them): the greedy text of the Model given the same settings, not the one without."""
    from splitllm.cli import main
    from splitllm.model import Model

    prompt = "One two three, one two three, one two three,"
    args = ["run", str(smollm2_path), "-p", prompt, "-n", "24", "--temp", "0", "-t", "2", "-c", "256"]
    dry = ["--dry-multiplier", "2.0", "--dry-allowed-length", "1", "--dry-sequence-breaker", "none",
           "--dry-sequence-breaker", ";"]
    assert main([*args, *dry]) == 0
    with_dry = capsys.readouterr().out
    assert main(args) == 0
    without = capsys.readouterr().out
    with Model(smollm2_path, n_ctx=256, n_threads=2) as m:
        text = m(prompt, max_tokens=24, temperature=0, dry_multiplier=2.0, dry_allowed_length=1,
                 dry_sequence_breakers=[";"])["choices"][0]["text"]
    assert with_dry == prompt + text + "\n" and with_dry != without  # (run ends with a newline)
