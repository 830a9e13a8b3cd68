"""The token sampler against a numpy float64 re-implementation of llama.cpp's sampler chain as
llama-cpp-python 0.3.36 builds it (logit_bias, penalties, top_k, top_p, min_p, temperature,
draw), written here from llama.cpp's documented semantics, and against llama.cpp's own samplers
(through llama-cpp-python's low-level API, on the same logits): the fast chain, and the general
path (typical_p, mirostat 1 / 2, XTC, top_n_sigma, dynamic temperature) in llama-cpp-python's
and llama-server's chains."""

from __future__ import annotations

from collections import Counter
from dataclasses import FrozenInstanceError, replace
from typing import Any

import numpy as np
import pytest
from splitllm import _core
from splitllm.sampling import Sampler, SamplingParams, check_tfs_z, sampling_params

# ---------------------------------------------------------------- reference (numpy, float64)


def ref_logits(logits: np.ndarray, p: SamplingParams, history: list[int]) -> np.ndarray:
    """Logits after logit_bias and the penalties over the last repeat_last_n accepted tokens."""
    x = logits.astype(np.float64).copy()
    for token, bias in p.logit_bias:
        x[token] += bias
    window = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else []
    for token, count in Counter(window).items():
        x[token] = x[token] * p.repeat_penalty if x[token] <= 0 else x[token] / p.repeat_penalty
        x[token] -= count * p.frequency_penalty + p.presence_penalty
    return x


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_probs(
    logits: np.ndarray, p: SamplingParams, history: list[int] = (), *, temp_before_filters: bool = False
) -> dict[int, float]:
    """Final candidates -> probability. temp_before_filters builds a deliberately wrong chain."""
    x = ref_logits(logits, p, list(history))
    n = x.size
    if p.temperature == 0:
        return {int(np.argmax(x)): 1.0}
    if p.temperature < 0:
        return dict(enumerate(softmax(x).tolist()))
    if temp_before_filters:
        x = x / p.temperature
    order = np.lexsort((np.arange(n), -x))  # descending logit, then ascending id
    ids, lg = order, x[order]
    if 0 < p.top_k < n:
        ids, lg = ids[: p.top_k], lg[: p.top_k]
    if p.top_p < 1:
        cum = np.cumsum(softmax(lg))
        keep = int(np.argmax(cum >= p.top_p)) + 1 if (cum >= p.top_p).any() else lg.size
        ids, lg = ids[:keep], lg[:keep]
    if p.min_p > 0:
        keep = max(1, int(np.sum(lg >= lg[0] + np.log(p.min_p))))
        ids, lg = ids[:keep], lg[:keep]
    probs = softmax(lg if temp_before_filters else lg / p.temperature)
    return dict(zip(ids.tolist(), probs.tolist(), strict=True))


def ours(sampler: Sampler, logits: np.ndarray) -> dict[int, float]:
    ids, probs = sampler.probs(logits)
    assert ids.dtype == np.int32 and probs.dtype == np.float32
    assert len(set(ids.tolist())) == ids.size
    assert np.all(np.diff(probs) <= 0), "probs() must be in descending order"
    return dict(zip(ids.tolist(), probs.astype(np.float64).tolist(), strict=True))


def assert_same_dist(got: dict[int, float], want: dict[int, float], atol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want), (
        f"candidate sets differ: only ours {sorted(set(got) - set(want))[:10]}, "
        f"only reference {sorted(set(want) - set(got))[:10]} (sizes {len(got)} vs {len(want)})"
    )
    ids = sorted(want)
    np.testing.assert_allclose([got[i] for i in ids], [want[i] for i in ids], rtol=1e-5, atol=atol)


def random_logits(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return (rng.standard_normal(n) * scale).astype(np.float32)


# ---------------------------------------------------------------- settings


def test_defaults_follow_llama_cpp_python() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.frequency_penalty, p.presence_penalty) == (1.0, 64, 0.0, 0.0)
    assert p.logit_bias == ()
    with pytest.raises(FrozenInstanceError):
        p.temperature = 1.0  # type: ignore[misc]
    assert hash(SamplingParams(logit_bias={"3": 1.5})) == hash(SamplingParams(logit_bias=[(3, 1.5)]))
    assert SamplingParams(logit_bias={7: -1.0, 2: 4}).logit_bias == ((2, 4.0), (7, -1.0))
    assert replace(p, temperature=0).greedy
    assert (p.typical_p, p.mirostat_mode, p.mirostat_tau, p.mirostat_eta) == (1.0, 0, 5.0, 0.1)
    assert (p.xtc_probability, p.xtc_threshold, p.top_n_sigma, p.dynatemp_range, p.dynatemp_exponent) == \
        (0.0, 0.1, -1.0, 0.0, 1.0)
    assert p.chain == "llama-cpp-python" and not p.replayed
    # llama-server's temperature 0 runs typical_p / XTC before keeping the highest logit left
    assert replace(p, temperature=0, typical_p=0.5).greedy
    assert not replace(p, temperature=0, typical_p=0.5, chain="llama-server").greedy
    assert replace(p, temperature=0, chain="llama-server").greedy


def test_tfs_z_only_off() -> None:
    """Tail-free sampling is gone from llama.cpp: 1.0 (off) passes, anything else is refused."""
    check_tfs_z(1.0)
    check_tfs_z(1)
    assert sampling_params(tfs_z=1.0, temperature=0.5) == SamplingParams(temperature=0.5)
    for bad in (0.95, 0.0, 2.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="tfs_z"):
            check_tfs_z(bad)
    with pytest.raises(ValueError, match="tail-free sampling is not available"):
        sampling_params(tfs_z=0.9)
    with pytest.raises(ValueError, match="logit_bias must map"):
        sampling_params(logit_bias=[(1, 2.0)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"temperature": "hot"},
        {"top_k": -2},
        {"top_k": 1.5},
        {"top_p": -0.1},
        {"top_p": 1.01},
        {"top_p": float("nan")},
        {"min_p": -0.01},
        {"min_p": 2.0},
        {"repeat_penalty": 0.0},
        {"repeat_penalty": -1.1},
        {"repeat_penalty": float("inf")},
        {"repeat_last_n": -1},
        {"frequency_penalty": float("nan")},
        {"presence_penalty": float("-inf")},
        {"logit_bias": {-1: 1.0}},
        {"logit_bias": {"x": 1.0}},
        {"logit_bias": {3: float("nan")}},
        {"logit_bias": {3: float("inf")}},
        {"logit_bias": {3: "a lot"}},
        {"logit_bias": [1, 2]},
        {"typical_p": 1.5},
        {"typical_p": -0.1},
        {"mirostat_mode": 3},
        {"mirostat_mode": 1.0},
        {"mirostat_tau": float("nan")},
        {"mirostat_eta": float("inf")},
        {"xtc_probability": 1.5},
        {"xtc_threshold": -0.5},
        {"top_n_sigma": float("inf")},
        {"dynatemp_range": -1.0},
        {"dynatemp_exponent": float("nan")},
        {"chain": "llama.cpp"},
    ],
)
def test_invalid_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_invalid_sampler_use_raises() -> None:
    p = SamplingParams(logit_bias={99: 1.0})
    with pytest.raises(ValueError, match="logit_bias token 99 is outside"):
        Sampler(p, 99, 0)
    with pytest.raises(ValueError, match="n_vocab"):
        Sampler(SamplingParams(), 0, 0)
    with pytest.raises(ValueError, match="seed"):
        Sampler(SamplingParams(), 10, -2)
    with pytest.raises(ValueError, match="seed"):
        Sampler(SamplingParams(), 10, 1 << 64)
    with pytest.raises(TypeError, match="SamplingParams"):
        Sampler({"temperature": 0}, 10, 0)  # type: ignore[arg-type]
    s = Sampler(SamplingParams(), 10, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.accept(10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.accept(-1)
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros(11, np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros((1, 10), np.float32))


def test_core_checks_its_own_input() -> None:
    """The native Sampler rejects bad input with ValueError too (never a crash)."""
    cp = _core.SamplerParams()
    cp.logit_bias = [(5, 1.0)]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _core.Sampler(cp, 5, 0)
    cp.logit_bias = []
    cp.repeat_penalty = 0.0
    with pytest.raises(ValueError, match="repeat_penalty"):
        _core.Sampler(cp, 5, 0)
    cp.repeat_penalty = 1.0
    cp.temperature = float("nan")
    with pytest.raises(ValueError, match="temperature"):
        _core.Sampler(cp, 5, 0)
    cp.temperature = 1.0
    cp.mirostat = 3
    with pytest.raises(ValueError, match="mirostat must be 0, 1 or 2"):
        _core.Sampler(cp, 5, 0)
    cp.mirostat = 0
    cp.typical_p = float("nan")
    with pytest.raises(ValueError, match="typical_p"):
        _core.Sampler(cp, 5, 0)
    cp.typical_p = 1.0
    s = _core.Sampler(cp, 5, 0)
    with pytest.raises(ValueError, match="expected 5 logits"):
        s.sample(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="expected 5 logits"):
        s.probs(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.accept(5)


# ---------------------------------------------------------------- greedy, bias, penalties


def test_greedy_is_argmax_and_bias_moves_it() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 7, 1000, 50_000):
        x = random_logits(rng, n, 3.0)
        s = Sampler(SamplingParams(temperature=0.0), n, 0)
        assert s.sample(x) == int(np.argmax(x))
        ids, probs = s.probs(x)
        assert ids.tolist() == [int(np.argmax(x))] and probs.tolist() == [1.0]
    x = np.array([0.0, 3.0, 2.0, 2.9], np.float32)
    assert Sampler(SamplingParams(temperature=0), 4, 0).sample(x) == 1
    assert Sampler(SamplingParams(temperature=0, logit_bias={2: 1.5}), 4, 0).sample(x) == 2
    assert Sampler(SamplingParams(temperature=0, logit_bias={1: float("-inf")}), 4, 0).sample(x) == 3
    # ties go to the lower id, as llama.cpp's greedy sampler does
    assert Sampler(SamplingParams(temperature=0), 4, 0).sample(np.array([1, 5, 5, 2], np.float32)) == 1


def test_greedy_applies_penalties() -> None:
    x = np.array([0.0, 3.0, 2.0, -1.0], np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=2), 4, 0)
    assert s.sample(x) == 1
    s.accept(1)  # 3.0 / 2 = 1.5 < 2.0
    assert s.sample(x) == 2
    s.accept(2)  # 2.0 / 2 = 1.0 < 1.5
    assert s.sample(x) == 1
    s.accept(0)  # window is now [2, 0]: token 1 left it
    assert s.sample(x) == 1


def penalty_params(rng: np.random.Generator) -> SamplingParams:
    return SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
        repeat_penalty=float(rng.choice([1.0, 0.8, 1.1, 1.5, 3.0])),
        repeat_last_n=int(rng.choice([0, 1, 5, 64, 300])),
        frequency_penalty=float(rng.choice([0.0, 0.3, -0.5, 1.2])),
        presence_penalty=float(rng.choice([0.0, 0.4, -0.2, 2.0])),
        logit_bias=dict(zip(rng.integers(0, 300, 4).tolist(), rng.normal(0, 3, 4).tolist(), strict=True)),
    )


def test_penalties_and_bias_match_reference() -> None:
    """Full softmax (no filters, T=1) exposes the processed logits: compare log-probabilities."""
    rng = np.random.default_rng(2)
    n = 300
    for case in range(60):
        p = penalty_params(rng)
        s = Sampler(p, n, case)
        history = rng.integers(0, 40, int(rng.integers(0, 400))).tolist()  # many repeats
        s.accept_many(history)
        x = random_logits(rng, n, 2.0)
        ids, probs = s.probs(x)
        assert ids.size == n
        got = np.empty(n)
        got[ids] = np.log(probs.astype(np.float64))
        want = np.log(softmax(ref_logits(x, p, history)))
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"case {case}: {p}")


def test_penalty_window_forgets_old_tokens() -> None:
    n = 20
    x = np.linspace(-2, 2, n).astype(np.float32)
    p = SamplingParams(temperature=1, top_k=0, top_p=1, min_p=0, repeat_penalty=1.7, repeat_last_n=3,
                       frequency_penalty=0.5, presence_penalty=0.25)
    s = Sampler(p, n, 0)
    history = [19, 2, 19, 5, 5, 19]  # window [5, 5, 19]: token 2 and the first two 19s are out of it
    s.accept_many(history)
    assert_same_dist(ours(s, x), ref_probs(x, p, history))
    want = ref_logits(x, p, history)
    assert want[2] == pytest.approx(x[2])
    assert want[5] == pytest.approx(x[5] * 1.7 - 2 * 0.5 - 0.25)
    assert want[19] == pytest.approx(x[19] / 1.7 - 0.5 - 0.25)
    s.reset(0)  # clears the history
    assert_same_dist(ours(s, x), ref_probs(x, p, []))


# ---------------------------------------------------------------- filters and temperature


def chain_params(rng: np.random.Generator, n: int) -> SamplingParams:
    return SamplingParams(
        temperature=float(rng.choice([0.3, 0.8, 1.0, 1.7, -1.0])),
        top_k=int(rng.choice([-1, 0, 1, 5, 40, 300, 1500, n - 1, n, n + 10])),
        top_p=float(rng.choice([0.0, 0.3, 0.9, 0.95, 0.99, 1.0])),
        min_p=float(rng.choice([0.0, 0.0, 0.001, 0.05, 0.3, 1.0])),
        repeat_penalty=float(rng.choice([1.0, 1.3])),
        repeat_last_n=64,
        frequency_penalty=float(rng.choice([0.0, 0.2])),
        presence_penalty=float(rng.choice([0.0, 0.3])),
        logit_bias={int(rng.integers(0, n)): float(rng.normal(0, 2))} if rng.random() < 0.3 else None,
    )


@pytest.mark.parametrize("n", [60, 3000, 20_000])
def test_chain_matches_reference(n: int) -> None:
    rng = np.random.default_rng(n)
    for case in range(120 if n < 20_000 else 40):
        p = chain_params(rng, n)
        s = Sampler(p, n, case)
        history = rng.integers(0, n, 30).tolist()
        s.accept_many(history)
        # small scales give flat distributions (top_p needs thousands of candidates)
        x = random_logits(rng, n, float(rng.choice([0.05, 0.5, 2.0, 6.0])))
        assert_same_dist(ours(s, x), ref_probs(x, p, history))


def test_each_filter_on_its_own() -> None:
    rng = np.random.default_rng(4)
    n = 5000
    x = random_logits(rng, n, 1.0)
    base = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    cases = [
        (replace(base, top_k=50), 50),
        (replace(base, top_k=2000), 2000),
        (replace(base, top_p=0.5), None),
        (replace(base, top_p=0.0), 1),
        (replace(base, min_p=0.1), None),
        (replace(base, min_p=1.0), 1),
        (replace(base, temperature=0.5), n),
        (replace(base, temperature=-1.0, top_k=3, top_p=0.1, min_p=0.9), n),  # temp < 0: no filters
    ]
    for p, size in cases:
        got = ours(Sampler(p, n, 0), x)
        if size is not None:
            assert len(got) == size, p
        assert_same_dist(got, ref_probs(x, p))
    # top_p=0.5 on 5000 near-uniform tokens keeps a few hundred to a few thousand
    assert 200 < len(ours(Sampler(replace(base, top_p=0.5), n, 0), x)) < n


def test_logits_are_left_untouched() -> None:
    rng = np.random.default_rng(5)
    x = random_logits(rng, 1000, 2.0)
    keep = x.copy()
    s = Sampler(SamplingParams(repeat_penalty=1.5, logit_bias={3: 5.0}, top_k=0), 1000, 0)
    s.accept_many([3, 4, 5])
    for _ in range(3):
        s.sample(x)
        s.probs(x)
    np.testing.assert_array_equal(x, keep)
    # float64 and lists are accepted too (converted)
    assert Sampler(SamplingParams(temperature=0), 3, 0).sample([0.0, 2.0, 1.0]) == 1
    assert Sampler(SamplingParams(temperature=0), 3, 0).sample(np.array([0.0, 2.0, 1.0])) == 1


# ---------------------------------------------------------------- the random draw


def chi_square(counts: Counter, probs: dict[int, float], draws: int) -> float:
    stray = sum(c for t, c in counts.items() if t not in probs)
    if stray:
        return float("inf")
    return sum((counts.get(t, 0) - draws * q) ** 2 / (draws * q) for t, q in probs.items())


def test_draws_follow_the_distribution() -> None:
    """20k draws against the reference probabilities. The chi-square bound (df <= 7, 40 is far
    beyond the 1e-6 quantile) is met by the right distribution and failed by a chain that applies
    the temperature before top_p, or that draws from the unfiltered distribution."""
    rng = np.random.default_rng(6)
    n = 64
    x = random_logits(rng, n, 1.5)
    p = SamplingParams(temperature=0.5, top_k=8, top_p=0.7, min_p=0.05, presence_penalty=0.7, repeat_last_n=4)
    s = Sampler(p, n, 1234)
    history = [int(np.argmax(x)), 3]
    s.accept_many(history)
    want = ref_probs(x, p, history)
    assert 3 <= len(want) <= 8
    draws = 20_000
    counts = Counter(s.sample(x) for _ in range(draws))
    assert chi_square(counts, want, draws) < 40.0
    wrong = ref_probs(x, p, history, temp_before_filters=True)
    assert chi_square(counts, wrong, draws) > 200.0
    assert chi_square(counts, ref_probs(x, replace(p, top_k=0, top_p=1, min_p=0), history), draws) > 200.0


def test_negative_temperature_draws_from_everything() -> None:
    n = 6
    x = np.array([1.0, 0.5, 0.0, -0.5, -1.0, 2.0], np.float32)
    p = SamplingParams(temperature=-1.0)  # top_k/top_p/min_p are ignored, as llama-cpp-python does
    s = Sampler(p, n, 7)
    draws = 20_000
    counts = Counter(s.sample(x) for _ in range(draws))
    assert chi_square(counts, ref_probs(x, p), draws) < 40.0
    assert set(counts) == set(range(n))


def generate(s: Sampler, steps: int, n: int) -> list[int]:
    rng = np.random.default_rng(99)  # the same logits for every run
    out = []
    for _ in range(steps):
        t = s.sample(random_logits(rng, n, 1.0))
        s.accept(t)
        out.append(t)
    return out


def test_seed_reproduces_the_sequence() -> None:
    n = 2000
    p = SamplingParams(repeat_penalty=1.1, top_k=0, top_p=0.99, min_p=0.0)
    a = generate(Sampler(p, n, 42), 200, n)
    assert generate(Sampler(p, n, 42), 200, n) == a
    assert generate(Sampler(p, n, 43), 200, n) != a
    assert generate(Sampler(p, n, 1 << 63), 200, n) != a
    s = Sampler(p, n, 42)
    generate(s, 50, n)
    s.reset(42)  # clears the history and restarts the generator
    assert generate(s, 200, n) == a
    r1, r2 = Sampler(p, n, None), Sampler(p, n, -1)
    assert r1.seed != r2.seed and 0 <= r1.seed < 1 << 64
    assert generate(Sampler(p, n, r1.seed), 50, n) == generate(r1, 50, n)


def test_probs_does_not_move_the_state() -> None:
    n = 500
    p = SamplingParams(repeat_penalty=1.3)
    x = random_logits(np.random.default_rng(8), n, 2.0)
    s1, s2 = Sampler(p, n, 5), Sampler(p, n, 5)
    s1.accept(int(np.argmax(x)))
    s2.accept(int(np.argmax(x)))
    before = s1.probs(x)
    for _ in range(5):
        s1.probs(x)
    np.testing.assert_array_equal(s1.probs(x)[0], before[0])
    assert [s1.sample(x) for _ in range(30)] == [s2.sample(x) for _ in range(30)]


def test_non_finite_logits_do_not_crash() -> None:
    """NaN / inf logits (a broken model) still give a token id in range, never a crash."""
    rng = np.random.default_rng(9)
    n = 3000
    settings = [
        SamplingParams(),
        SamplingParams(temperature=0),
        SamplingParams(temperature=-1),
        SamplingParams(top_k=0, min_p=0),
        SamplingParams(top_k=0, top_p=0.5),
        SamplingParams(top_k=2000, repeat_penalty=1.5),
    ]
    inf, nan = float("inf"), float("nan")
    for p in settings:
        for fill in (nan, inf, -inf):
            for frac in (0.01, 1.0):
                x = random_logits(rng, n, 2.0)
                x[rng.random(n) < frac] = fill
                s = Sampler(p, n, 0)
                s.accept_many(range(10))
                assert 0 <= s.sample(x) < n
                ids, _ = s.probs(x)
                assert ids.size >= 1 and np.all((ids >= 0) & (ids < n))
        x = random_logits(rng, n, 2.0)
        x[[5, 17]] = inf  # the +inf tokens are the only candidates
        if not p.temperature < 0:
            assert Sampler(p, n, 0).sample(x) in (5, 17)
        x = random_logits(rng, n, 2.0)
        x[np.argsort(x)[-3:]] = nan  # NaN counts as -inf: never picked
        ids, probs = Sampler(p, n, 0).probs(x)
        assert not np.isnan(x[ids]).any() or probs[np.isnan(x[ids])].max() == 0
    x = np.array([1.0, nan, 0.5, inf], np.float32)
    assert Sampler(SamplingParams(temperature=0, logit_bias={3: -inf}), 4, 0).sample(x) == 0


def test_huge_penalty_window_is_not_allocated_up_front() -> None:
    p = SamplingParams(temperature=0, repeat_penalty=10.0, repeat_last_n=2**31 - 1)
    s = Sampler(p, 4, 0)
    x = np.array([0.0, 3.0, 2.0, 1.0], np.float32)
    s.accept_many([1] * 1000)
    assert s.sample(x) == 2


# ---------------------------------------------------------------- llama.cpp itself


class LlamaCppChain:
    """The sampler chain llama-cpp-python 0.3.36 builds in ``Llama._init_sampler`` (logit_bias is
    applied in Python before it, as ``_create_completion`` does), run on a token array through
    the low-level API: no model needed (but for DRY, which needs ``vocab``: a llama_vocab pointer).
    DRY, top_n_sigma, XTC and the dynamic temperature (llama-server's,
    not llama-cpp-python's) sit where llama-server's default order puts them. With
    ``chain="llama-server"``, the chain common/sampling.cpp builds instead (min_keep 0, its default;
    mirostat: temperature then mirostat, no penalties)."""

    def __init__(self, p: SamplingParams, n: int, seed: int, vocab: Any = None) -> None:
        import llama_cpp as lc

        self.lc, self.p, self.n = lc, p, n
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lambda s: lc.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        server = p.chain == "llama-server"
        keep = 0 if server else 1
        if not (server and p.mirostat_mode):
            add(lc.llama_sampler_init_penalties(n, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty,
                                                p.presence_penalty))
        if vocab is not None and p.dry and not p.mirostat_mode:  # DRY: llama-server's place
            add(llama_cpp_dry(vocab, p))
        if not server and p.temperature == 0:
            add(lc.llama_sampler_init_greedy())
        elif not server and p.temperature < 0:
            add(lc.llama_sampler_init_dist(seed))
        elif p.mirostat_mode:
            if server:
                add(lc.llama_sampler_init_temp(p.temperature))
            if p.mirostat_mode == 1:
                add(lc.llama_sampler_init_mirostat(n, seed, p.mirostat_tau, p.mirostat_eta, 100))
            else:
                add(lc.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta))
        else:
            add(lc.llama_sampler_init_top_n_sigma(p.top_n_sigma))
            add(lc.llama_sampler_init_top_k(p.top_k))
            add(lc.llama_sampler_init_typical(p.typical_p, keep))
            add(lc.llama_sampler_init_top_p(p.top_p, keep))
            add(lc.llama_sampler_init_min_p(p.min_p, keep))
            add(lc.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, keep, seed))
            if server or p.dynatemp_range > 0:
                add(lc.llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range, p.dynatemp_exponent))
            else:
                add(lc.llama_sampler_init_temp(p.temperature))
            add(lc.llama_sampler_init_dist(seed))

    def close(self) -> None:
        self.lc.llama_sampler_free(self.chain)

    def accept(self, token: int) -> None:
        self.lc.llama_sampler_accept(self.chain, token)

    def apply(self, logits: np.ndarray) -> tuple[dict[int, float], int]:
        """(candidate -> probability computed by the draw, picked token)."""
        import ctypes

        lc = self.lc
        x = logits.copy()
        for token, bias in self.p.logit_bias:
            x[token] = x[token] + np.float32(bias)
        data = (lc.llama_token_data * self.n)()
        view = np.ctypeslib.as_array(data)
        view["id"], view["logit"], view["p"] = np.arange(self.n), x, 0.0
        cur = lc.llama_token_data_array(data=ctypes.cast(data, lc.llama_token_data_p), size=self.n,
                                        selected=-1, sorted=False)
        lc.llama_sampler_apply(self.chain, ctypes.byref(cur))
        # XTC drops the most likely tokens by moving the array's start
        start = (ctypes.cast(cur.data, ctypes.c_void_p).value - ctypes.addressof(data)) // \
            ctypes.sizeof(lc.llama_token_data)
        kept = view[start: start + cur.size]
        picked = int(kept["id"][cur.selected])
        return dict(zip(kept["id"].tolist(), kept["p"].astype(np.float64).tolist(), strict=True)), picked


def llama_cpp_dry(vocab: Any, p: SamplingParams) -> Any:
    """llama.cpp's DRY sampler for p's settings (dry_penalty_last_n -1, "the whole context",
    as a window longer than any history here)."""
    import ctypes

    import llama_cpp as lc

    breakers = [b.encode("utf-8") for b in p.dry_sequence_breakers]
    array = (ctypes.c_char_p * max(len(breakers), 1))(*breakers)
    last_n = p.dry_penalty_last_n if p.dry_penalty_last_n >= 0 else 1 << 20
    return lc.llama_sampler_init_dry(vocab, p.dry_multiplier, p.dry_base, p.dry_allowed_length, last_n,
                                     array, len(breakers))


def at_filter_edge(x: np.ndarray, p: SamplingParams, history: list[int], token: int) -> bool:
    """Whether top_p or min_p keeps or drops ``token`` by a margin that float32 sums blur
    (llama.cpp adds the top_p mass in float32, this reference in float64)."""
    lg = ref_logits(x, p, history)
    order = np.lexsort((np.arange(lg.size), -lg))
    if 0 < p.top_k < lg.size:
        order = order[: p.top_k]
    probs = softmax(lg[order])
    where = int(np.flatnonzero(order == token)[0])
    mass_before = float(probs[:where].sum())
    ratio = float(np.exp(lg[token] - lg[order[0]]))
    return abs(mass_before - p.top_p) < 1e-4 or abs(ratio - p.min_p) < 1e-4 * max(p.min_p, 1e-30)


@pytest.mark.reference
@pytest.mark.parametrize("chain", ["llama-cpp-python", "llama-server"])
def test_same_candidates_and_tokens_as_llama_cpp(chain: str) -> None:
    """Candidate sets and probabilities equal llama.cpp's (but for tokens on a top_p / min_p edge,
    where llama.cpp's float32 sums and the float64 reference may disagree); with the same seed
    (below 2**32), the same logits and the picks fed back as history, the same tokens come out.
    Without the general path's samplers, llama-server's chain is llama-cpp-python's (its
    temperature 0 keeps the highest logit, the greedy pick; below 0, it replays llama.cpp)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    rng = np.random.default_rng(11)
    n = 1500
    compared = 0
    for case in range(60):
        p = replace(chain_params(rng, n), chain=chain)
        if case % 10 == 0:
            p = replace(p, temperature=0.0)
        seed = int(rng.integers(0, 2**32 - 1))  # 2**32 - 1 means "random" to llama.cpp
        ref, mine = LlamaCppChain(p, n, seed), Sampler(p, n, seed)
        history: list[int] = []
        try:
            for _ in range(20):
                x = random_logits(rng, n, float(rng.choice([0.5, 2.0, 5.0])))
                got = ours(mine, x)
                want, t_ref = ref.apply(x)
                if p.temperature != 0 and set(got) != set(want):
                    edge = set(got) ^ set(want)
                    assert len(edge) <= 2 and all(at_filter_edge(x, p, history, t) for t in edge), (
                        f"case {case}: {p}: tokens {sorted(edge)} differ")
                    assert_same_dist(got, ref_probs(x, p, history))  # the float64 reference agrees
                    break  # the picks may now differ, and the histories with them
                if p.temperature != 0:  # llama.cpp's greedy sampler computes no probabilities
                    assert_same_dist(got, want, atol=2e-6)
                t_ours = mine.sample(x)
                assert t_ours == t_ref, f"case {case}: {p}, seed {seed}, step {len(history)}"
                compared += 1
                history.append(t_ours)
                ref.accept(t_ref)
                mine.accept(t_ours)
        finally:
            ref.close()
    assert compared > 1000


# ---------------------------------------------------------------- the general path


GENERAL = {  # each sampler of the general path on its own, and all of them together
    "typical": {"typical_p": (0.2, 0.5, 0.9, 0.99)},
    "mirostat1": {"mirostat_mode": (1,), "mirostat_tau": (2.0, 5.0, 8.0), "mirostat_eta": (0.1, 0.5)},
    "mirostat2": {"mirostat_mode": (2,), "mirostat_tau": (1.0, 3.0, 5.0), "mirostat_eta": (0.1, 0.5)},
    "xtc": {"xtc_probability": (0.3, 1.0), "xtc_threshold": (0.01, 0.05, 0.1, 0.3)},
    "top_n_sigma": {"top_n_sigma": (0.5, 1.0, 2.0)},
    "dynatemp": {"dynatemp_range": (0.3, 0.8), "dynatemp_exponent": (0.5, 1.0, 2.0)},
    "all": {"typical_p": (0.6, 0.95), "xtc_probability": (0.5,), "xtc_threshold": (0.05,),
            "top_n_sigma": (1.5, 3.0), "dynatemp_range": (0.5,)},
}


def general_params(rng: np.random.Generator, n: int, kind: str, chain: str) -> SamplingParams:
    """The sampler ``kind`` on, with or without top_k / top_p / min_p / penalties / a banned token."""
    base = chain_params(rng, n)
    picked = {k: v[int(rng.integers(len(v)))] for k, v in GENERAL[kind].items()}
    bias = dict(base.logit_bias)
    if rng.random() < 0.3:
        bias[int(rng.integers(0, n))] = float("-inf")  # p = 0 candidates (typical's entropy turns NaN)
    temps = [0.4, 0.8, 1.0, 1.7] + ([0.0] if chain == "llama-server" else [])
    plain = rng.random() < 0.3  # no other filter
    return replace(base, **picked, chain=chain, logit_bias=bias,
                   temperature=float(rng.choice(temps)),
                   top_k=0 if plain else base.top_k, top_p=1.0 if plain else base.top_p,
                   min_p=0.0 if plain else base.min_p)


@pytest.mark.reference
@pytest.mark.parametrize("chain", ["llama-cpp-python", "llama-server"])
@pytest.mark.parametrize("kind", list(GENERAL))
def test_general_path_is_llama_cpp(kind: str, chain: str) -> None:
    """The samplers of the general path replay llama.cpp's: over multi-step runs with the picks fed
    back (penalties, mirostat's mu, XTC's and the draw's generators all evolving), the candidates,
    their probabilities (bit for bit: the same float operations in the same order, the same
    standard sorts; llama-cpp-python built from source here, with the same libstdc++ and libm) and
    the drawn tokens are llama.cpp's, with the same seed and logits. Banned tokens (-inf) and
    llama-server's temperature 0 are among the cases."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    rng = np.random.default_rng(2 * list(GENERAL).index(kind) + (chain == "llama-server"))
    compared = 0
    for case in range(8):
        n = int(rng.choice([100, 3000]))  # small: std::partial_sort; large: llama.cpp's bucket sort
        p = general_params(rng, n, kind, chain)
        seed = int(rng.integers(0, 2**32 - 1))
        ref, mine = LlamaCppChain(p, n, seed), Sampler(p, n, seed)
        assert mine._core.general
        try:
            for step in range(15):
                x = random_logits(rng, n, float(rng.choice([0.5, 2.0, 5.0, 10.0])))
                got = ours(mine, x)
                want, t_ref = ref.apply(x)
                where = f"case {case} step {step}: {p}, seed {seed}"
                assert got == want, f"{where}: candidates or probabilities differ"
                t_ours = mine.sample(x)
                assert t_ours == t_ref, where
                ref.accept(t_ref)
                mine.accept(t_ours)
                compared += 1
        finally:
            ref.close()
    assert compared == 8 * 15


def test_fast_path_stays_when_the_new_samplers_are_off() -> None:
    """Settings that leave typical_p / mirostat / XTC / top_n_sigma / dynatemp off keep the fast
    chain (llama-cpp-python's greedy and unfiltered draws ignore them: fast too)."""
    n = 1000
    off = [SamplingParams(), SamplingParams(typical_p=1.0, xtc_probability=0.5, xtc_threshold=0.6,
                                            top_n_sigma=0.0, dynatemp_range=0.0),
           SamplingParams(temperature=0, mirostat_mode=2, typical_p=0.5),
           SamplingParams(temperature=-1, xtc_probability=1.0),
           SamplingParams(chain="llama-server"), SamplingParams(chain="llama-server", temperature=0)]
    for p in off:
        assert not Sampler(p, n, 0)._core.general, p
    on = [SamplingParams(typical_p=0.9), SamplingParams(mirostat_mode=1), SamplingParams(top_n_sigma=1.0),
          SamplingParams(xtc_probability=0.1, xtc_threshold=0.5), SamplingParams(dynatemp_range=0.1),
          SamplingParams(chain="llama-server", temperature=0, typical_p=0.5),
          SamplingParams(chain="llama-server", temperature=-1)]
    for p in on:
        assert Sampler(p, n, 0)._core.general, p
    # without the new samplers both chains are the same
    a = generate(Sampler(SamplingParams(repeat_penalty=1.2), n, 3), 50, n)
    assert generate(Sampler(SamplingParams(repeat_penalty=1.2, chain="llama-server"), n, 3), 50, n) == a


@pytest.mark.parametrize("kw", [{"mirostat_mode": 1}, {"mirostat_mode": 2}, {"xtc_probability": 0.5},
                                {"typical_p": 0.8, "dynatemp_range": 0.4}])
def test_general_path_state(kw: dict) -> None:
    """probs() leaves mu and the generators alone; reset() brings back mu = 2 * tau and the seeds;
    mu moves with each draw."""
    n = 2000
    p = SamplingParams(**kw)
    s1, s2 = Sampler(p, n, 9), Sampler(p, n, 9)
    assert s1.mirostat_mu == 2 * p.mirostat_tau
    x = random_logits(np.random.default_rng(1), n, 4.0)
    seq = []
    for _ in range(25):
        before = s1.probs(x)
        np.testing.assert_array_equal(s1.probs(x)[0], before[0])
        seq.append(s1.sample(x))
        s1.accept(seq[-1])
    again = []
    for _ in range(25):
        again.append(s2.sample(x))
        s2.accept(again[-1])
    assert again == seq
    if p.mirostat_mode:
        assert s1.mirostat_mu != 2 * p.mirostat_tau
    s1.reset(9)
    assert s1.mirostat_mu == 2 * p.mirostat_tau
    assert generate(s1, 30, n) == generate(Sampler(p, n, 9), 30, n)
