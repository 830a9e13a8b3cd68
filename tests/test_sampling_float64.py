"""The samplers of the general path (typical_p, top_n_sigma, XTC, dynamic temperature, mirostat 1
and 2) against float64 numpy re-implementations written from their documented semantics (the
papers and llama.cpp's comments), each on its own; tests/test_sampling.py checks them against
llama.cpp's own samplers."""

from __future__ import annotations

import numpy as np
import pytest
from splitllm.sampling import Sampler, SamplingParams
from test_sampling import assert_same_dist, ours, random_logits, softmax


def near(a: float, b: float, tol: float = 1e-4) -> bool:
    return abs(a - b) < tol * max(1.0, abs(b))


def test_typical_matches_float64() -> None:
    """Locally typical sampling (Meister et al.): tokens by |-log p - H| ascending, the shortest
    prefix whose mass exceeds typical_p; the survivors keep their softmax (T = 1)."""
    rng = np.random.default_rng(21)
    n = 3000
    checked = 0
    for _ in range(40):
        tp = float(rng.choice([0.2, 0.5, 0.9]))
        p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=tp)
        x = random_logits(rng, n, float(rng.choice([0.5, 2.0, 5.0])))
        q = softmax(x.astype(np.float64))
        entropy = -(q * np.log(q)).sum()
        order = np.argsort(np.abs(-np.log(q) - entropy), kind="stable")
        cum = np.cumsum(q[order])
        keep = int(np.argmax(cum > tp)) + 1
        if near(float(cum[keep - 1]), tp) or (keep > 1 and near(float(cum[keep - 2]), tp)):
            continue  # float32 sums may cut one token earlier or later
        want = dict(zip(order[:keep].tolist(), softmax(x.astype(np.float64)[order[:keep]]).tolist(),
                        strict=True))
        assert_same_dist(ours(Sampler(p, n, 0), x), want, atol=1e-5)
        checked += 1
    assert checked >= 30


def test_top_n_sigma_and_xtc_match_float64() -> None:
    rng = np.random.default_rng(22)
    n = 2000
    for _ in range(30):
        x = random_logits(rng, n, float(rng.choice([1.0, 3.0])))
        sigma = float(rng.choice([0.5, 1.0, 2.0]))
        p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, top_n_sigma=sigma)
        x64 = x.astype(np.float64)
        thr = x64.max() - sigma * x64.std()
        if np.abs(x64 - thr).min() < 1e-4:
            continue
        kept = np.flatnonzero(x64 >= thr)
        got = ours(Sampler(p, n, 0), x)  # (the others stay, at -inf: probability 0)
        assert len(got) == n and sum(v == 0 for v in got.values()) == n - kept.size
        assert_same_dist({t: v for t, v in got.items() if v > 0},
                         dict(zip(kept.tolist(), softmax(x64[kept]).tolist(), strict=True)))
    for _ in range(30):  # XTC with probability 1: every token above the threshold but the least likely goes
        x = random_logits(rng, n, float(rng.choice([3.0, 6.0, 10.0])))
        thr = float(rng.choice([0.02, 0.1, 0.2]))
        p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, xtc_probability=1.0,
                           xtc_threshold=thr)
        q = softmax(x.astype(np.float64))
        order = np.argsort(-q, kind="stable")
        above = int((q >= thr).sum())
        if np.abs(q - thr).min() < 1e-5:
            continue
        kept = order[above - 1:] if above >= 2 else order
        want = dict(zip(kept.tolist(), softmax(x.astype(np.float64)[kept]).tolist(), strict=True))
        assert_same_dist(ours(Sampler(p, n, 0), x), want, atol=1e-5)


def test_dynatemp_matches_float64() -> None:
    """The temperature moves within T +- range with the normalised entropy: T' = lo + (hi - lo) *
    (H / log n) ** exponent, applied to the survivors of the filters."""
    rng = np.random.default_rng(23)
    n = 500
    for _ in range(30):
        x = random_logits(rng, n, float(rng.choice([0.5, 2.0, 5.0])))
        t, r, e = float(rng.choice([0.3, 0.8, 1.2])), float(rng.choice([0.2, 0.5, 1.0])), \
            float(rng.choice([0.5, 1.0, 2.0]))
        p = SamplingParams(temperature=t, top_k=0, top_p=1.0, min_p=0.0, dynatemp_range=r,
                           dynatemp_exponent=e)
        x64 = x.astype(np.float64)
        q = softmax(x64)
        h = -(q * np.log(q)).sum() / np.log(n)
        lo, hi = max(0.0, t - r), t + r
        want = softmax(x64 / (lo + (hi - lo) * h**e))
        assert_same_dist(ours(Sampler(p, n, 0), x), dict(enumerate(want.tolist())), atol=1e-6)


def test_mirostat_matches_float64() -> None:
    """Mirostat 2.0 keeps the sorted tokens whose surprise -log2 p is at most mu (at least one) and
    draws from their softmax; mu -= eta * (surprise of the pick - tau). Mirostat 1 keeps the k
    most likely, k from Zipf's exponent estimated on the first m = 100. mu is followed in float64
    along the sampler's own picks."""
    rng = np.random.default_rng(24)
    n = 4000
    for mode in (1, 2):
        p = SamplingParams(mirostat_mode=mode, mirostat_tau=4.0, mirostat_eta=0.3)
        s = Sampler(p, n, 5)
        mu = 2 * p.mirostat_tau
        for _ in range(40):
            x = random_logits(rng, n, float(rng.choice([1.0, 3.0, 6.0])))
            q = softmax(x.astype(np.float64))
            order = np.argsort(-q, kind="stable")
            qs = q[order]
            if mode == 2:
                keep = max(1, int(np.argmax(-np.log2(qs) > mu)) if (-np.log2(qs) > mu).any() else n)
                edge = np.abs(-np.log2(qs) - mu).min() < 1e-3
            else:
                m = min(100, n) - 1
                t = np.log(np.arange(2, m + 2) / np.arange(1, m + 1))
                b = np.log(qs[:m] / qs[1: m + 1])
                s_hat = (t * b).sum() / (t * t).sum()
                eps = s_hat - 1
                k = (eps * 2**mu / (1 - n ** -eps)) ** (1 / s_hat)
                keep = max(int(k), 1)
                edge = abs(k - round(k)) < 1e-3
            got = ours(s, x)
            if not edge:
                want = dict(zip(order[:keep].tolist(), (qs[:keep] / qs[:keep].sum()).tolist(), strict=True))
                assert_same_dist(got, want, atol=1e-5)
            t_pick = s.sample(x)
            s.accept(t_pick)
            mu -= p.mirostat_eta * (-np.log2(got[t_pick]) - p.mirostat_tau)
            assert s.mirostat_mu == pytest.approx(mu, abs=1e-3)
