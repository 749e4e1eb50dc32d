"""Tests of evaluation.statistics on hand-computed cases and published values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from defialloc.evaluation import statistics as s

# ---------- IQM ----------


def test_iqm_of_one_to_eight() -> None:
    # middle 50 % of 1..8 is {3, 4, 5, 6}
    assert s.iqm(np.arange(1, 9)) == pytest.approx((3 + 4 + 5 + 6) / 4)
    shuffled = np.random.default_rng(0).permutation(np.arange(1, 9))
    assert s.iqm(shuffled.reshape(2, 4)) == pytest.approx(4.5)  # all values, any shape
    # an outlier does not move it: 1..7 plus 1000 -> still {3, 4, 5, 6}
    assert s.iqm([1, 2, 3, 4, 5, 6, 7, 1000]) == pytest.approx(4.5)
    assert s.iqm(np.array([[1, 2, 3, 4], [10, 20, 30, 40]]), axis=-1) == pytest.approx([2.5, 25])
    with pytest.raises(ValueError, match="empty"):
        s.iqm([])


# ---------- stratified bootstrap ----------


def test_bootstrap_ci_contains_true_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(42)
    x = rng.normal(1.0, 2.0, size=4000)
    ci = s.stratified_bootstrap_ci(x, "mean", n_boot=1000, seed=7)
    assert ci.point == pytest.approx(x.mean())
    assert ci.low < 1.0 < ci.high
    # width ~ 2 * 1.96 * sigma / sqrt(n) = 0.124
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * 2.0 / math.sqrt(4000), rel=0.15)
    assert s.stratified_bootstrap_ci(x, "mean", n_boot=1000, seed=7) == ci
    assert s.stratified_bootstrap_ci(x, "mean", n_boot=1000, seed=8) != ci
    iqm_ci = s.stratified_bootstrap_ci(x, "iqm", n_boot=1000, seed=7)
    assert iqm_ci.point == pytest.approx(stats.trim_mean(x, 0.25))
    assert iqm_ci.low < 1.0 < iqm_ci.high  # symmetric distribution: IQM = mean


def test_bootstrap_level_orders_intervals() -> None:
    x = np.random.default_rng(1).standard_t(3, size=300)
    narrow = s.stratified_bootstrap_ci(x, np.median, n_boot=500, level=0.5, seed=0)
    wide = s.stratified_bootstrap_ci(x, np.median, n_boot=500, level=0.99, seed=0)
    assert wide.low <= narrow.low <= narrow.high <= wide.high


def test_stratification_never_mixes_runs() -> None:
    # run 0 scores are all 0, run 1 all 10: any within-run resample has mean exactly 5.
    scores = np.vstack([np.zeros(50), np.full(50, 10.0)])
    assert s.stratified_bootstrap_ci(scores, "mean", n_boot=500, seed=0) == (5.0, 5.0, 5.0)
    # Pooled (unstratified) resampling of the same numbers would vary a lot.
    pooled = s.stratified_bootstrap_ci(scores.ravel(), "mean", n_boot=500, seed=0)
    assert pooled.high - pooled.low > 1.0

    # Direct check: the first 30 resampled entries of every draw all come from run 0.
    rng = np.random.default_rng(3)
    runs = np.vstack([rng.uniform(0, 1, 30), rng.uniform(10, 11, 30), rng.uniform(20, 21, 30)])

    def run0_fraction(a: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean((a[..., :30] < 1) & (a[..., 30:60] >= 10) & (a[..., 30:60] < 11), axis=axis)

    assert s.stratified_bootstrap_ci(runs, run0_fraction, n_boot=200, seed=1) == (1.0, 1.0, 1.0)


def test_bootstrap_validation() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        s.stratified_bootstrap_ci([1.0, 2.0], "mean", n_boot=0)
    with pytest.raises(ValueError, match="level"):
        s.stratified_bootstrap_ci([1.0, 2.0], "mean", level=1.5)
    with pytest.raises(ValueError, match="scores contains NaN"):
        s.stratified_bootstrap_ci([1.0, np.nan], "mean")
    with pytest.raises(ValueError, match="scores must be non-empty"):
        s.stratified_bootstrap_ci(np.zeros((2, 2, 2)), "mean")
    with pytest.raises(ValueError, match="statistic"):
        s.stratified_bootstrap_ci([1.0, 2.0], "average")


# ---------- probability of improvement ----------


def test_probability_of_improvement_extremes() -> None:
    y = np.random.default_rng(0).normal(size=(3, 40))
    assert s.probability_of_improvement(y + 1, y, n_boot=200) == (1.0, 1.0, 1.0)
    assert s.probability_of_improvement(y, y + 1, n_boot=200) == (0.0, 0.0, 0.0)
    assert s.probability_of_improvement(y, y.copy(), n_boot=200) == (0.5, 0.5, 0.5)


def test_probability_of_improvement_hand_case_and_pairing() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 2.0, 5.0, 1.0])
    # wins 1, tie 1/2, loss 0, win 1 -> 2.5 / 4
    ci = s.probability_of_improvement(x, y, n_boot=500, seed=0)
    assert ci.point == pytest.approx(0.625)
    assert 0.0 <= ci.low <= 0.625 <= ci.high <= 1.0
    # Paired: x beats y on every scenario although their marginal distributions overlap almost
    # entirely, so an unpaired comparison would give ~0.5.
    base = np.random.default_rng(2).normal(0, 10, 200)
    assert s.probability_of_improvement(base + 0.1, base, n_boot=200).point == 1.0
    # A single baseline series is broadcast against several seeded runs.
    runs = np.vstack([x, x - 10])
    assert s.probability_of_improvement(runs, y, n_boot=200).point == pytest.approx(2.5 / 8)
    with pytest.raises(ValueError, match="paired"):
        s.probability_of_improvement(x, y[:3])
    with pytest.raises(ValueError, match="paired"):
        s.probability_of_improvement(np.zeros((2, 4)), np.zeros((3, 4)))


def test_paired_difference_ci_and_significance_helpers() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1, 500)
    diff = s.paired_difference_ci(y + 0.2 + rng.normal(0, 0.1, 500), y, n_boot=500)
    assert diff.point == pytest.approx(0.2, abs=0.02)
    assert s.is_significant(diff)
    assert not s.is_significant((0.1, -0.05, 0.2))
    assert s.is_significant((-0.1, -0.2, -0.05))
    assert s.is_significant((0.1, 0.05, 0.2), null=0.0)
    assert not s.is_significant((0.1, 0.05, 0.2), null=0.1)
    assert not s.improvement_is_significant((0.6, 0.4, 0.8))
    assert s.improvement_is_significant((0.3, 0.1, 0.45))
    assert s.improvement_is_significant((0.7, 0.55, 0.85))


# ---------- PSR / DSR ----------


def test_probabilistic_sharpe_ratio_hand_computed() -> None:
    r = np.array([0.02, -0.01, 0.03, 0.0, -0.02, 0.04, 0.01, -0.005])
    n = 8
    mean = sum(r) / n
    dev = r - mean
    sr = mean / math.sqrt(sum(dev**2) / (n - 1))
    m2, m3, m4 = sum(dev**2) / n, sum(dev**3) / n, sum(dev**4) / n
    skew, kurt = m3 / m2**1.5, m4 / m2**2
    for bench in (0.0, 0.1):
        z = (sr - bench) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
        assert s.probabilistic_sharpe_ratio(r, bench) == pytest.approx(stats.norm.cdf(z))
    assert s.probabilistic_sharpe_ratio(r, sr) == pytest.approx(0.5)
    assert s.sharpe_per_period(r) == pytest.approx(sr)


def test_deflated_sharpe_ratio_published_example() -> None:
    # Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio", numerical example: annualized
    # SR 2.5 over T = 1250 daily obs (250 a year), N = 100 trials with annualized V[SR] = 1/2,
    # skew -3, kurtosis 10 -> expected max SR 0.1132 (per period) and DSR 0.9004.
    sr0 = s.expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = s.psr_from_moments(2.5 / math.sqrt(250), sr0, 1250, skew=-3.0, kurtosis=10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


@pytest.mark.parametrize("n_trials", [100, 1000])
def test_expected_max_sharpe_approximates_expected_max_of_normals(n_trials: int) -> None:
    # E[max of N iid standard normals] = integral x N phi(x) Phi(x)^(N-1) dx
    exact, _ = integrate.quad(
        lambda x: x * n_trials * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n_trials - 1), -10, 10
    )
    assert s.expected_max_sharpe(n_trials, 1.0) == pytest.approx(exact, rel=0.02)
    assert s.expected_max_sharpe(n_trials, 0.04) == pytest.approx(
        0.2 * s.expected_max_sharpe(n_trials, 1.0)
    )


def test_deflated_sharpe_ratio_from_returns_hand_computed() -> None:
    rng = np.random.default_rng(11)
    r = 0.001 + 0.01 * rng.standard_t(5, size=500)
    trials = [0.02, 0.05, 0.1, -0.03, 0.08]
    var = np.var(trials, ddof=1)
    g = 0.5772156649015329
    sr0 = math.sqrt(var) * (
        (1 - g) * stats.norm.ppf(1 - 1 / 5) + g * stats.norm.ppf(1 - 1 / (5 * math.e))
    )
    assert s.deflated_sharpe_ratio(r, trials) == pytest.approx(s.probabilistic_sharpe_ratio(r, sr0))
    # deflation lowers the probability
    assert s.deflated_sharpe_ratio(r, trials) < s.probabilistic_sharpe_ratio(r, 0.0)
    with pytest.raises(ValueError, match="sr_trials"):
        s.deflated_sharpe_ratio(r, [0.1])
    with pytest.raises(ValueError, match="returns"):
        s.probabilistic_sharpe_ratio([np.nan, 0.1])
    assert math.isnan(s.probabilistic_sharpe_ratio(np.full(10, 0.01)))


# ---------- summary table ----------


def test_summarize_scores_table() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, size=(3, 60))
    table = s.summarize_scores(
        {"baseline": base, "better": base + 0.5, "same": base.copy()},
        baseline="baseline",
        n_boot=300,
    )
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["baseline", "better", "same"]
    assert table.loc["better", "n"] == 180
    assert table.loc["better", "mean"] == pytest.approx(base.mean() + 0.5)
    assert table.loc["better", "iqm"] == pytest.approx(stats.trim_mean(base.ravel(), 0.25) + 0.5)
    assert table.loc["better", "mean_ci_low"] < table.loc["better", "mean"]
    assert table.loc["better", "prob_improvement"] == 1.0
    assert table.loc["better", "diff_mean"] == pytest.approx(0.5)
    assert bool(table.loc["better", "significant"])
    assert table.loc["same", "prob_improvement"] == 0.5
    assert not bool(table.loc["same", "significant"])
    no_base = s.summarize_scores({"a": base[0]}, n_boot=100)
    assert "prob_improvement" not in no_base.columns
    with pytest.raises(ValueError, match="baseline"):
        s.summarize_scores({"a": base}, baseline="b")
