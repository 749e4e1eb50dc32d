"""Moment estimators against scikit-learn, the textbook Ledoit-Wolf formula, pandas and hand loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import LedoitWolf

from defialloc.agents.baselines.estimators import ewma_cov, ledoit_wolf_cov, sample_cov, shrunk_mean
from defialloc.agents.baselines.optimizers import solve_min_variance

DATA_DIR = Path("/work/shared/data/crypto-daily")


def returns(seed: int, t: int = 60, n: int = 5) -> np.ndarray:
    """``(t, n)`` correlated daily-scale returns."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 0.03, (t, 1))
    return 0.001 + market * rng.uniform(0.5, 1.5, n) + rng.normal(0.0, 0.02, (t, n))


def test_sample_cov_matches_numpy():
    r = returns(0)
    np.testing.assert_allclose(sample_cov(r), np.cov(r, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(
        sample_cov(r, ddof=0), np.cov(r, rowvar=False, bias=True), rtol=1e-12
    )


@pytest.mark.parametrize(("seed", "t", "n"), [(0, 60, 5), (1, 20, 12), (2, 250, 10)])
def test_ledoit_wolf_matches_sklearn_and_textbook_formula(seed, t, n):
    r = returns(seed, t, n)
    ours = ledoit_wolf_cov(r)
    np.testing.assert_allclose(ours, LedoitWolf().fit(r).covariance_, rtol=1e-12)
    # Ledoit & Wolf (2004), Lemma 3.2-3.4 with the MLE covariance S (divisor T):
    # target m I, m = tr(S)/n; d2 = ||S - mI||^2/n; b2 = min(d2, sum_t ||x_t x_t' - S||^2 / (n T^2))
    x = r - r.mean(axis=0)
    s = x.T @ x / t
    m = np.trace(s) / n
    d2 = np.sum((s - m * np.eye(n)) ** 2) / n
    b2 = sum(np.sum((np.outer(row, row) - s) ** 2) for row in x) / (n * t**2)
    shrink = min(b2, d2) / d2
    expected = shrink * m * np.eye(n) + (1 - shrink) * s
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    assert np.linalg.eigvalsh(ours)[0] > 0  # positive definite even when T < N


@pytest.mark.parametrize("halflife", [1.0, 7.0, 30.0])
def test_ewma_cov_matches_hand_loop_and_pandas(halflife):
    r = returns(3, t=40, n=4)
    t = r.shape[0]
    lam = 0.5 ** (1.0 / halflife)
    # hand loop: weight lam^(age), age 0 for the newest row
    weight_sum = weight_sq = 0.0
    mean = np.zeros(4)
    for i in range(t):
        w = lam ** (t - 1 - i)
        weight_sum += w
        weight_sq += w * w
        mean += w * r[i]
    mean /= weight_sum
    acc = np.zeros((4, 4))
    raw = np.zeros((4, 4))
    for i in range(t):
        w = lam ** (t - 1 - i)
        acc += w * np.outer(r[i] - mean, r[i] - mean)
        raw += w * np.outer(r[i], r[i])
    expected = acc / (weight_sum - weight_sq / weight_sum)
    np.testing.assert_allclose(ewma_cov(r, halflife), expected, rtol=1e-12)
    np.testing.assert_allclose(ewma_cov(r, halflife, demean=False), raw / weight_sum, rtol=1e-12)
    pandas_cov = pd.DataFrame(r).ewm(halflife=halflife).cov().loc[t - 1].to_numpy()
    np.testing.assert_allclose(ewma_cov(r, halflife), pandas_cov, rtol=1e-10)


def test_ewma_with_huge_halflife_is_sample_cov():
    r = returns(4)
    np.testing.assert_allclose(ewma_cov(r, 1e12), sample_cov(r), rtol=1e-9)


def test_shrunk_mean_hand_values():
    r = np.array([[0.01, 0.03], [0.03, -0.01]])  # sample means 0.02 and 0.01, grand mean 0.015
    np.testing.assert_allclose(shrunk_mean(r), [0.01, 0.005], atol=1e-15)
    np.testing.assert_allclose(shrunk_mean(r, "grand_mean", 0.5), [0.0175, 0.0125], atol=1e-15)
    np.testing.assert_allclose(shrunk_mean(r, "zero", 0.0), [0.02, 0.01], atol=1e-15)
    np.testing.assert_allclose(shrunk_mean(r, "grand_mean", 1.0), [0.015, 0.015], atol=1e-15)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: sample_cov(r[0]), r"returns_window must be a \(T, N\) array"),
        (lambda r: ledoit_wolf_cov(r[:1]), "T >= 2"),
        (lambda r: ewma_cov(np.where(r > 0.05, np.nan, r), 5.0), "must be finite.*step"),
        (lambda r: ewma_cov(r, 0.0), "halflife must be"),
        (lambda r: shrunk_mean(r, "zero", 1.5), r"shrinkage must be in \[0, 1\]"),
        (lambda r: shrunk_mean(r, "median"), "target must be 'zero' or 'grand_mean'"),
        (lambda r: sample_cov(r, ddof=2), "ddof must be 0 or 1"),
    ],
)
def test_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(returns(5))


@pytest.mark.skipif(not DATA_DIR.exists(), reason="shared crypto data not mounted")
def test_real_data_pipeline_on_development_period():
    # development data only (<= 2022-12-31); T = 60 < 2N would make the sample cov unreliable
    closes = {}
    for sym in ("BTC", "ETH", "BNB", "ADA", "DOGE", "LINK"):
        frame = pd.read_csv(DATA_DIR / f"{sym}-USD.csv", parse_dates=["Date"]).set_index("Date")
        closes[sym] = frame.loc[:"2022-12-31", "Close"]
    prices = pd.DataFrame(closes).dropna().iloc[-61:]
    assert prices.index.max() <= pd.Timestamp("2022-12-31")
    window = np.diff(np.log(prices.to_numpy()), axis=0)
    cov = ledoit_wolf_cov(window)
    vols = np.sqrt(np.diag(cov) * 365)
    assert np.all((vols > 0.2) & (vols < 2.5))  # annualized crypto vols, sanity range
    w, info = solve_min_variance(cov, max_weight=0.4)
    assert info.status == "optimal" and abs(w.sum() - 1) < 1e-12 and w.max() <= 0.4 + 1e-15
