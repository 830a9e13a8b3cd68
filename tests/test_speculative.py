"""Speculative decoding (``Model(draft_model=...)``): the same tokens as without guesses, for any
sampling settings, in fewer forward passes when the guesses are right."""

from __future__ import annotations

import numpy as np
import pytest
from splitllm import Model
from splitllm.speculative import DraftModel, ModelDraft, PromptLookupDecoding

PROMPT = ("Repeat the following text exactly.\n\nText: The quick brown fox jumps over the lazy dog. "
          "A journey of a thousand miles begins with a single step. All that glitters is not gold.\n\n"
          "Repeated text: The quick brown fox")


def lookup_reference(ids: list[int], max_ngram: int, n_pred: int) -> list[int]:
    """Prompt lookup by brute force: the most recent earlier occurrence of the longest tail."""
    for size in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-size:]
        for start in range(len(ids) - size - 1, -1, -1):
            if ids[start: start + size] == tail:
                return ids[start + size: start + size + n_pred]
    return []


def test_prompt_lookup_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(300):
        ids = rng.integers(0, 6, size=int(rng.integers(1, 40))).tolist()
        for ngram in (1, 2, 3):
            for n_pred in (1, 4, 10):
                got = PromptLookupDecoding(ngram, n_pred)(np.asarray(ids, dtype=np.intc))
                assert got.tolist() == lookup_reference(ids, ngram, n_pred), (ids, ngram, n_pred)
    assert PromptLookupDecoding()(np.asarray([5], dtype=np.intc)).size == 0
    # The longer n-gram wins over a more recent shorter one.
    ids = [1, 2, 7, 8, 3, 2, 9, 1, 2]
    assert PromptLookupDecoding(2, 3)(np.asarray(ids)).tolist() == [7, 8, 3]
    assert PromptLookupDecoding(1, 3)(np.asarray(ids)).tolist() == [9, 1, 2]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            PromptLookupDecoding(max_ngram_size=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="positive integer"):
            PromptLookupDecoding(num_pred_tokens=bad)  # type: ignore[arg-type]


class CountingModel:
    """A Model whose forward passes are counted."""

    def __init__(self, path, **kw) -> None:
        self.m = Model(path, n_ctx=512, n_threads=2, **kw)
        self.passes = 0
        decode = self.m._decode

        def counted(*a, **k):
            self.passes += 1
            return decode(*a, **k)

        self.m._decode = counted  # type: ignore[method-assign]

    def run(self, prompt: str, **kw) -> tuple[str, list[int], int]:
        self.m.reset()
        self.passes = 0
        toks = self.m.tokenize(prompt.encode(), add_bos=True, special=True)
        gen = []
        for t in self.m.generate(toks, **kw):
            gen.append(t)
            if len(gen) == 48:
                break
        return self.m.detokenize(gen).decode("utf-8", "replace"), gen, self.passes


@pytest.fixture(scope="module")
def plain(smollm2_path):
    c = CountingModel(smollm2_path)
    yield c
    c.m.close()


@pytest.fixture(scope="module")
def lookup(smollm2_path):
    c = CountingModel(smollm2_path, draft_model=PromptLookupDecoding(num_pred_tokens=10))
    yield c
    c.m.close()


@pytest.mark.parametrize("sampling", [dict(temp=0.0), dict(temp=0.8, seed=3), dict(temp=1.2, top_k=0, seed=9),
                                      dict(temp=0.7, repeat_penalty=1.3, seed=5)],
                         ids=["greedy", "seeded", "wide", "penalty"])
def test_same_tokens_as_without_a_draft(plain, lookup, sampling):
    text, want, passes = plain.run(PROMPT, **sampling)
    got_text, got, spec_passes = lookup.run(PROMPT, **sampling)
    assert got == want
    assert got_text == text
    assert lookup.m._max_draft >= 1
    if sampling.get("temp") == 0.0:  # the greedy copy is guessed right: far fewer passes
        print(f"\npasses: {passes} without a draft, {spec_passes} with prompt lookup")
        assert spec_passes <= passes * 0.6


class Wrong(DraftModel):
    """Guesses that are always wrong, or out of the vocabulary, or too many."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.calls = 0

    def __call__(self, input_ids, /, **kwargs):
        self.calls += 1
        last = int(input_ids[-1])
        if self.calls % 3 == 0:
            return np.asarray([(last + 1) % self.n_vocab, -5, self.n_vocab + 7, 3], dtype=np.intc)
        return np.asarray([(last + 7 * k + 1) % self.n_vocab for k in range(100)], dtype=np.intc)


def test_wrong_guesses_change_nothing(smollm2_path, plain):
    with Model(smollm2_path, n_ctx=512, n_threads=2) as probe:
        n_vocab = probe.n_vocab()
    m = CountingModel(smollm2_path, draft_model=Wrong(n_vocab))
    for sampling in (dict(temp=0.0), dict(temp=0.9, seed=11)):
        assert m.run(PROMPT, **sampling)[1] == plain.run(PROMPT, **sampling)[1]
    m.m.close()


def test_generation_up_to_the_end_of_the_context(smollm2_path):
    """Guesses are cut to the room left: a generation that fills the context ends as without."""
    outs = []
    for draft in (None, PromptLookupDecoding(num_pred_tokens=10)):
        with Model(smollm2_path, n_ctx=96, n_threads=2, draft_model=draft) as m:
            out = m.create_completion(PROMPT, max_tokens=None, temperature=0)
            outs.append((out["choices"][0]["text"], out["choices"][0]["finish_reason"], out["usage"]))
    assert outs[0] == outs[1]
    assert outs[0][1] in ("length", "stop")


def test_draft_model_must_be_callable(smollm2_path):
    with pytest.raises(ValueError, match="draft_model"):
        Model(smollm2_path, n_ctx=64, draft_model=5)  # type: ignore[arg-type]


@pytest.mark.reference
def test_llama_cpp_python_draft_model_works(smollm2_path, plain):
    """llama-cpp-python's own LlamaPromptLookupDecoding fits the same slot."""
    spec = pytest.importorskip("llama_cpp.llama_speculative", reason="llama-cpp-python is not installed")
    m = CountingModel(smollm2_path, draft_model=spec.LlamaPromptLookupDecoding(num_pred_tokens=8))
    _, got, passes = m.run(PROMPT, temp=0.0)
    _, want, plain_passes = plain.run(PROMPT, temp=0.0)
    assert got == want and passes < plain_passes
    m.m.close()


def test_draft_policy_guesses_only_when_it_pays():
    from splitllm.speculative import DraftPolicy

    pol = DraftPolicy(8)
    for n in range(1, 10):
        pol.timed(n, 0.004 * (1 + 0.2 * (n - 1)))  # each extra token costs a fifth of a pass
    for _ in range(40):
        pol.outcome(0, wrong=True)
    assert pol.p < 0.05 and pol.length(8) == 0  # always wrong: plain passes
    for _ in range(60):
        pol.outcome(1, wrong=False)
    assert pol.p > 0.95 and pol.length(8) == 8  # always right: as many as allowed
    assert pol.length(3) == 3  # never more than the draft has
    # p = 0.6: L guesses bring 1 + 0.6 + ... + 0.6^L tokens for 1 + 0.2 L of a pass: per pass
    # cost 1, 1.33, 1.40, 1.36, ... tokens; two guesses are best.
    pol.right, pol.wrong = 6.0, 4.0
    assert pol.length(8) == 2
    pol.timed(2, 0.010)
    pol.timed(2, 0.010)
    pol.timed(2, 0.010)  # a measured two-token pass far dearer than its guess: no more guessing
    assert pol._cost[2] > 0.008 and pol.length(1) == 0


# ---- a draft model (llama.cpp's --model-draft) ----

@pytest.fixture(scope="module")
def drafted(smollm2_path):
    """SmolLM2 drafting for itself: every confident guess is right, so passes shrink."""
    c = CountingModel(smollm2_path, draft_model=ModelDraft(smollm2_path, num_pred_tokens=8, n_ctx=512,
                                                           n_threads=2))
    yield c
    c.m.draft_model.close()
    c.m.close()


@pytest.mark.parametrize("sampling", [dict(temp=0.0), dict(temp=0.8, seed=3)], ids=["greedy", "seeded"])
def test_model_draft_same_tokens_fewer_passes(plain, drafted, sampling):
    text, want, passes = plain.run(PROMPT, **sampling)
    got_text, got, spec_passes = drafted.run(PROMPT, **sampling)
    assert got == want and got_text == text
    if sampling["temp"] == 0.0:
        print(f"\npasses: {passes} without a draft, {spec_passes} with SmolLM2 drafting for itself")
        assert spec_passes <= passes * 0.6


def test_model_draft_guesses_are_its_greedy_continuation(smollm2_path, plain):
    """p_min 0: the draft's guesses are the model's own greedy tokens; p_min 1: none (no token is
    certain); p_min between: a prefix of them, each above the threshold."""
    toks = plain.m.tokenize(PROMPT.encode(), add_bos=True, special=True)
    plain.m.reset()
    greedy = [t for t, _ in zip(plain.m.generate(toks, temp=0.0), range(6), strict=False)]
    draft = ModelDraft(smollm2_path, num_pred_tokens=6, p_min=0.0, n_ctx=512, n_threads=2)
    try:
        ids = np.asarray(toks, dtype=np.intc)
        assert draft(ids).tolist() == greedy
        assert draft(np.asarray(toks + greedy[:2], dtype=np.intc)).tolist()[:4] == greedy[2:]
        draft.p_min = 1.0
        assert draft(ids).tolist() == []
        draft.p_min = 0.5
        got = draft(ids).tolist()
        assert got == greedy[:len(got)]
        for k in range(len(got) + (len(got) < 6)):  # each kept guess was above 0.5, the next not
            logits = draft.model.eval_prompt(toks + greedy[:k]).astype(np.float64)
            p = 1.0 / np.exp(logits - logits.max()).sum()
            assert (p >= 0.5) == (k < len(got))
    finally:
        draft.close()


def test_model_draft_vocabulary_must_match(smollm2_path, tmp_path):
    from tiny_model import TinyConfig, make_weights, write_gguf

    other = tmp_path / "other-vocab.gguf"
    write_gguf(make_weights(TinyConfig(n_layer=1, seed=5)), other)
    with pytest.raises(ValueError, match="other-vocab.gguf"):
        Model(smollm2_path, n_ctx=64, n_threads=2, draft_model=ModelDraft(other, n_ctx=64))
    with pytest.raises(ValueError, match="num_pred_tokens"):
        ModelDraft(other, num_pred_tokens=0)
    with pytest.raises(ValueError, match="p_min"):
        ModelDraft(other, p_min=1.5)


def test_cli_model_draft(smollm2_path, capsys):
    from splitllm.cli import main

    args = ["run", str(smollm2_path), "-p", "The capital of France is", "-n", "16", "--temp", "0",
            "-c", "256"]
    assert main(args) == 0
    plain_out = capsys.readouterr().out
    assert main([*args, "-md", str(smollm2_path), "--draft-max", "4"]) == 0
    assert capsys.readouterr().out == plain_out
    assert main([*args, "-md", str(smollm2_path), "--prompt-lookup", "3"]) != 0
    assert "pick one" in capsys.readouterr().err
