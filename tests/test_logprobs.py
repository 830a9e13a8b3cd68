"""Log-probabilities (``logprobs`` of completions, ``logprobs`` / ``top_logprobs`` of chat).

The values are checked against a float64 log-softmax written here, and on SmolLM2 against
llama.cpp: llama-cpp-python's own ``create_completion(logprobs=...)`` for generated tokens, and
the log-softmax of llama.cpp's logits for echoed prompt tokens (llama-cpp-python pairs each
echoed token with the logits of the position after it when the model adds no BOS token, so its
prompt values are not a reference). Which tokens a text's entries cover (stop strings, characters
split between tokens, end of generation) is checked with a made-up tokenizer.
"""

from __future__ import annotations

import numpy as np
import pytest
from splitllm import Model
from splitllm.completions import TokenText
from splitllm.logprobs import TokenLogprob, chat_n_top, check_n_top, token_logprob

NOISE = 0.5  # logit gaps below this are rounding noise on this model (see test_vs_llamacpp.py)
TOL = 0.3    # |logprob difference| to llama.cpp allowed on tokens both engines pick


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


# ---- the computation ----

def test_token_logprob_against_float64_reference():
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(5000) * 4).astype(np.float32)
    logits[[17, 4000, 123]] = logits.max() + 1.5  # a three-way tie at the top
    ref = log_softmax64(logits)
    for token in (17, 4000, 5, 4999):
        e = token_logprob(logits, token, 5, lambda t: b"t%d" % t)
        assert e.token == token and e.piece == b"t%d" % token
        assert e.logprob == pytest.approx(ref[token], abs=1e-6)  # float32 exp, float64 sum
        assert [t for t, _, _ in e.top][:3] == [17, 123, 4000]  # ties: lower id first
        want = sorted(range(5000), key=lambda i: (-ref[i], i))[:5]
        assert [t for t, _, _ in e.top] == want
        assert [lp for _, _, lp in e.top] == pytest.approx(ref[want], abs=1e-6)
        assert [p for _, p, _ in e.top] == [b"t%d" % t for t in want]
    assert token_logprob(logits, 3, 0, bytes).top == ()


def test_argument_checks():
    assert check_n_top(None) is None and check_n_top(0) == 0 and check_n_top(20) == 20
    for bad in (-1, 21, 1.5, True, "3"):
        with pytest.raises(ValueError, match="logprobs"):
            check_n_top(bad)  # type: ignore[arg-type]
    assert chat_n_top(None, None) is None and chat_n_top(False, None) is None
    assert chat_n_top(True, None) == 0 and chat_n_top(True, 4) == 4
    with pytest.raises(ValueError, match="top_logprobs needs logprobs"):
        chat_n_top(None, 2)
    with pytest.raises(ValueError, match="top_logprobs"):
        chat_n_top(True, 21)


class Pieces:
    """A made-up tokenizer: token i is PIECES[i]; token 9 ends the generation."""

    PIECES = [b"ab", b"c", "é".encode()[:1], "é".encode()[1:], b"S", b"TOP", b"x", b"", b"yz", b"<eos>"]
    eog_ids = frozenset({9})

    def token_to_piece(self, token: int) -> bytes:
        return self.PIECES[token]


def entry(t: int) -> TokenLogprob:
    return TokenLogprob(t, Pieces.PIECES[t], -float(t), ())


def run_text(tokens: list[int], stop: list[str], limit: int = 100) -> tuple[str, list[TokenLogprob], str]:
    text = TokenText(Pieces(), n_prompt=3, limit=limit, stop=stop, logprobs=0)
    out, entries = [], []
    for t in tokens:
        c = text.push(t, entry(t))
        if c is not None:
            out.append(c.text)
            entries += c.logprobs
            assert c.text or c.logprobs
        if text.done:
            break
    last = text.finish()
    out.append(last.text)
    entries += last.logprobs
    return "".join(out), entries, last.finish_reason


def test_entries_follow_the_text_shown():
    # A character split between two tokens: both start where it starts.
    text, entries, _ = run_text([0, 2, 3, 1, 7, 8], [])
    assert text == "abécyz"
    assert [e.token for e in entries] == [0, 2, 3, 1, 7, 8]
    assert [e.offset for e in entries] == [0, 2, 2, 3, 4, 4]
    # A stop string: tokens inside it are left out, one that starts before it stays.
    text, entries, reason = run_text([0, 1, 6, 4, 5, 8], ["STOP"])
    assert (text, reason) == ("abcx", "stop")
    assert [e.token for e in entries] == [0, 1, 6]
    text, entries, _ = run_text([0, 1, 6, 4, 5, 8], ["xS"])
    assert text == "abc" and [e.token for e in entries] == [0, 1]
    text, entries, _ = run_text([0, 6, 8], ["bx"])  # the stop string starts inside token 0
    assert text == "a" and [e.token for e in entries] == [0]
    # The end-of-generation token has no entry; a character cut short by the end is left out.
    text, entries, reason = run_text([0, 1, 9], [])
    assert (text, reason) == ("abc", "stop") and [e.token for e in entries] == [0, 1]
    text, entries, reason = run_text([0, 2], [], limit=2)
    assert (text, reason) == ("ab", "length") and [e.token for e in entries] == [0]
    with pytest.raises(ValueError, match="exactly when"):
        TokenText(Pieces(), n_prompt=1, limit=5).push(0, entry(0))


# ---- the model ----

@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=512, n_threads=2) as m:
        yield m


def check_shape(lp: dict, text: str, n_top: int) -> None:
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    n = len(lp["tokens"])
    assert n == len(lp["text_offset"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
    for tok, off, v, top in zip(lp["tokens"], lp["text_offset"], lp["token_logprobs"], lp["top_logprobs"],
                                strict=True):
        assert text[off: off + len(tok)] == tok
        if v is None:
            assert top is None
            continue
        assert v <= 0.0 and top[tok] == v
        assert n_top <= len(top) <= n_top + 1
        ranked = sorted(top.values(), reverse=True)
        assert v >= ranked[min(n_top, len(ranked)) - 1] or v not in ranked[:n_top]


def test_completion_logprobs_are_the_log_softmax_of_the_logits(model):
    prompt = "The capital of France is"
    out = model.create_completion(prompt, max_tokens=10, temperature=0, logprobs=4)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    check_shape(lp, prompt + choice["text"], 4)
    assert lp["text_offset"][0] == len(prompt)  # offsets count from the start of the prompt
    assert "".join(lp["tokens"]) == choice["text"]
    # The same values from the model's logits, fed the completion one token at a time as the
    # generation did (a pass over many tokens rounds differently: up to 0.17 on this model).
    ptoks = model.tokenize(prompt.encode(), add_bos=True, special=True)
    gen = model.tokenize(choice["text"].encode(), add_bos=False, special=True)
    assert [model.detokenize([t]).decode() for t in gen] == lp["tokens"]
    model.reset()
    ref = np.stack([log_softmax64(model.eval_prompt(ptoks + gen[:i])) for i in range(len(gen))])
    got = np.array(lp["token_logprobs"])
    assert np.abs(got - ref[np.arange(len(gen)), gen]).max() < 1e-6
    for i, top in enumerate(lp["top_logprobs"]):
        order = np.argsort(-ref[i])
        if ref[i][order[3]] - ref[i][order[4]] > NOISE:  # the 4 best are decided
            want = {model.detokenize([int(t)]).decode("utf-8", "ignore") for t in order[:4]}
            assert want <= set(top)
    # Greedy: each token is the best one.
    for v, top in zip(got, lp["top_logprobs"], strict=True):
        assert v == max(top.values())


def test_no_logprobs_unless_asked(model):
    out = model.create_completion("Hello", max_tokens=2, temperature=0)
    assert out["choices"][0]["logprobs"] is None
    chat = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)
    assert chat["choices"][0]["logprobs"] is None
    for bad in (-1, 21):
        with pytest.raises(ValueError, match="logprobs"):
            model.create_completion("Hello", max_tokens=2, logprobs=bad)
    with pytest.raises(ValueError, match="top_logprobs"):
        model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, top_logprobs=2)


def test_echo_gives_the_prompt_tokens(model):
    prompt = "Once upon a time, there was a"
    out = model.create_completion(prompt, max_tokens=3, temperature=0, logprobs=2, echo=True)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    check_shape(lp, choice["text"], 2)
    assert choice["text"].startswith(prompt)
    ptoks = model.tokenize(prompt.encode(), add_bos=True, special=True)
    bos = model.token_bos()
    shown = [t for t in ptoks if t != bos] if ptoks[0] == bos else ptoks
    n = len(shown)
    assert "".join(lp["tokens"][:n]) == prompt
    assert lp["text_offset"][n] == len(prompt)
    rows = log_softmax64(model.logits(ptoks))
    first = 1 if ptoks[0] != bos else 0
    if first:  # no BOS: the first token has no value
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    start = len(ptoks) - n
    for i in range(first, n):
        p = start + i  # position of the token in ptoks
        assert lp["token_logprobs"][i] == pytest.approx(rows[p - 1][ptoks[p]], abs=1e-6)
    # The generated part equals the same request without echo.
    plain = model.create_completion(prompt, max_tokens=3, temperature=0, logprobs=2)["choices"][0]
    assert choice["text"] == prompt + plain["text"]
    assert lp["tokens"][n:] == plain["logprobs"]["tokens"]
    assert lp["text_offset"][n:] == plain["logprobs"]["text_offset"]
    assert lp["token_logprobs"][n:] == pytest.approx(plain["logprobs"]["token_logprobs"], abs=1e-6)


def test_echo_reads_long_prompts_in_batches(smollm2_path):
    """A prompt longer than n_batch: the entries go on across the passes."""
    with Model(smollm2_path, n_ctx=512, n_batch=32, n_threads=2) as m:
        prompt = "one two three four five six seven eight nine ten " * 8
        ptoks = m.tokenize(prompt.encode(), add_bos=True, special=True)
        assert len(ptoks) > 64
        lp = m.create_completion(prompt, max_tokens=1, temperature=0, logprobs=0,
                                 echo=True)["choices"][0]["logprobs"]
        n = len(ptoks) - (ptoks[0] == m.token_bos())
        assert len(lp["tokens"]) == n + 1
        assert "".join(lp["tokens"][:n]) == prompt
        rows = log_softmax64(m.logits(ptoks))
        got = np.array(lp["token_logprobs"][1:n], dtype=np.float64)
        want = rows[np.arange(len(ptoks) - n, len(ptoks) - 1), ptoks[len(ptoks) - n + 1:]]
        assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stream_carries_the_same_entries(model, stream):
    prompt = "def fibonacci(n):"
    whole = model.create_completion(prompt, max_tokens=8, temperature=0, logprobs=2, echo=True)
    lp = whole["choices"][0]["logprobs"]
    chunks = list(model.create_completion(prompt, max_tokens=8, temperature=0, logprobs=2, echo=True,
                                          stream=True))
    got: dict[str, list] = {k: [] for k in lp}
    for c in chunks:
        part = c["choices"][0]["logprobs"]
        if part is None:
            assert c["choices"][0]["text"] == ""
            continue
        for k in lp:
            got[k] += part[k]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert got == lp


def test_stop_string_cuts_the_entries(model):
    prompt = "The capital of France is"
    model.reset()
    free = model.create_completion(prompt, max_tokens=10, temperature=0, logprobs=1)["choices"][0]
    toks = free["logprobs"]["tokens"]
    stop = next(t for i, t in enumerate(toks) if i >= 2 and t.strip() and t not in "".join(toks[:i]))
    model.reset()
    cut = model.create_completion(prompt, max_tokens=10, temperature=0, logprobs=1, stop=[stop])["choices"][0]
    assert cut["finish_reason"] == "stop"
    end = free["text"].index(stop)
    k = next(i for i, off in enumerate(free["logprobs"]["text_offset"]) if off - len(prompt) >= end)
    assert cut["text"] == free["text"][:end]
    assert cut["logprobs"]["tokens"] == free["logprobs"]["tokens"][:k]


def test_chat_logprobs(model):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    model.reset()  # each prompt from scratch (a pass over part of a prompt rounds differently)
    out = model.create_chat_completion(messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    choice = out["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert "".join(c["token"] for c in content) == choice["message"]["content"]
    assert b"".join(bytes(c["bytes"]) for c in content).decode() == choice["message"]["content"]
    for c in content:
        assert len(c["top_logprobs"]) == 3
        values = [t["logprob"] for t in c["top_logprobs"]]
        assert values == sorted(values, reverse=True)
        assert c["logprob"] == values[0]  # greedy
        assert bytes(c["top_logprobs"][0]["bytes"]) == bytes(c["bytes"])
    # The same values as a text completion of the same prompt tokens.
    toks = model.apply_chat_template(messages)
    model.reset()
    plain = model.create_completion(toks, max_tokens=8, temperature=0, logprobs=3)["choices"][0]["logprobs"]
    n = len(content)
    assert [c["logprob"] for c in content] == pytest.approx(plain["token_logprobs"][:n], abs=1e-9)
    only = model.create_chat_completion(messages, max_tokens=3, temperature=0, logprobs=True)
    assert all(c["top_logprobs"] == [] for c in only["choices"][0]["logprobs"]["content"])
    model.reset()
    chunks = list(model.create_chat_completion(messages, max_tokens=8, temperature=0, logprobs=True,
                                               top_logprobs=3, stream=True))
    streamed = [x for c in chunks if c["choices"][0].get("logprobs")
                for x in c["choices"][0]["logprobs"]["content"]]
    assert streamed == content


# ---- against llama.cpp ----

@pytest.fixture(scope="module")
def reference(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    yield llm
    llm.close()


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
           "The three laws of robotics are"]


@pytest.mark.reference
def test_completion_logprobs_match_llama_cpp(model, reference):
    compared = 0
    for prompt in PROMPTS:
        want = reference.create_completion(prompt, max_tokens=10, temperature=0, logprobs=3)["choices"][0]
        got = model.create_completion(prompt, max_tokens=10, temperature=0, logprobs=3)["choices"][0]
        a, b = want["logprobs"], got["logprobs"]
        n = 0  # greedy paths part at near ties (rounding); compare up to there
        while n < min(len(a["tokens"]), len(b["tokens"])) and a["tokens"][n] == b["tokens"][n]:
            n += 1
        assert n >= 2, prompt
        compared += n
        assert a["text_offset"][:n] == b["text_offset"][:n]
        diff = np.abs(np.array(a["token_logprobs"][:n], np.float64) - np.array(b["token_logprobs"][:n]))
        assert diff.max() < TOL, (prompt, diff)
        for i in range(n):
            ref = sorted(a["top_logprobs"][i].values(), reverse=True)
            if len(ref) >= 3 and ref[1] - ref[2] > NOISE:  # the reference's best two are decided
                best2 = sorted(a["top_logprobs"][i], key=a["top_logprobs"][i].get, reverse=True)[:2]
                assert set(best2) <= set(b["top_logprobs"][i]), (prompt, i)
    assert compared >= 20


@pytest.mark.reference
def test_echo_logprobs_match_llama_cpp_logits(model, reference):
    for prompt in PROMPTS:
        toks = reference.tokenize(prompt.encode(), add_bos=True, special=True)
        reference.reset()
        reference.eval(toks)
        ref = log_softmax64(np.array(reference.scores[: len(toks)], dtype=np.float32))
        lp = model.create_completion(prompt, max_tokens=1, temperature=0, logprobs=1,
                                     echo=True)["choices"][0]["logprobs"]
        bos = reference.token_bos()
        start = 1 if toks[0] == bos else 0
        n = len(toks) - start
        assert "".join(lp["tokens"][:n]) == prompt
        want = np.array([ref[p - 1][toks[p]] for p in range(max(start, 1), len(toks))])
        got = np.array(lp["token_logprobs"][n - len(want): n], dtype=np.float64)
        assert np.abs(got - want).max() < TOL, prompt


def test_echo_offsets_with_control_tokens_in_the_prompt(model):
    """A control token typed in the prompt is one of its entries, shown as its text, and the
    offsets point into the echoed text."""
    prompt = "<|im_start|>user hi"
    model.reset()
    choice = model.create_completion(prompt, max_tokens=2, temperature=0, logprobs=0, echo=True)["choices"][0]
    lp = choice["logprobs"]
    assert lp["tokens"][:2] == ["<|im_start|>", "user"]
    for tok, off in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert choice["text"][off: off + len(tok)] == tok
