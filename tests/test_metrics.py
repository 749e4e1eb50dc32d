"""Tests of evaluation.metrics against hand arithmetic, empyrical and scipy (independent values)."""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import integrate, stats

from defialloc.evaluation import metrics as m

# Small case worked out by hand below with plain arithmetic.
R5 = [0.1, -0.05, 0.02, -0.1, 0.03]


def fat_tailed_returns(seed: int, n: int = 750) -> np.ndarray:
    """Student-t(3) daily returns (~2 % scale) with a slight drift: crypto-like fat tails."""
    rng = np.random.default_rng(seed)
    return 0.0005 + 0.02 * rng.standard_t(3, size=n).clip(-20, 20)


# ---------- hand-computed small case ----------


def test_hand_computed_compounding_metrics() -> None:
    final_wealth = 1.1 * 0.95 * 1.02 * 0.9 * 1.03  # 0.9880893
    # 5 periods with 10 periods a year = half a year -> square the growth.
    assert m.annual_return(R5, 10) == pytest.approx(final_wealth**2 - 1)
    assert m.annual_return(R5, 5) == pytest.approx(0.9880893 - 1)
    # wealth path: 1.1, 1.045, 1.0659, 0.95931, 0.9880893; the peak stays 1.1
    assert m.max_drawdown(R5) == pytest.approx(1 - 0.95931 / 1.1)
    assert m.drawdown_series(R5) == pytest.approx(
        [0.0, 0.05, 1 - 1.0659 / 1.1, 1 - 0.95931 / 1.1, 1 - 0.9880893 / 1.1]
    )
    assert m.calmar_ratio(R5, 10) == pytest.approx((final_wealth**2 - 1) / (1 - 0.95931 / 1.1))


def test_hand_computed_sharpe_and_volatility() -> None:
    # mean = 0; squared deviations sum to 0.01 + 0.0025 + 0.0004 + 0.01 + 0.0009 = 0.0238
    sample_std = math.sqrt(0.0238 / 4)
    assert m.annual_volatility(R5, 365) == pytest.approx(sample_std * math.sqrt(365))
    assert m.sharpe_ratio(R5, 365) == pytest.approx(0.0, abs=1e-12)
    # risk_free = -1 % per period: excess mean +0.01, same std
    assert m.sharpe_ratio(R5, 365, risk_free=-0.01) == pytest.approx(
        0.01 / sample_std * math.sqrt(365)
    )


def test_hand_computed_sortino() -> None:
    # required_return = -2 %: r - req = 0.12, -0.03, 0.04, -0.08, 0.05 -> mean 0.02
    # downside over ALL 5 periods: sqrt((0.03^2 + 0.08^2) / 5) = sqrt(0.00146)
    expected = 0.02 / math.sqrt(0.00146) * math.sqrt(12)
    assert m.sortino_ratio(R5, 12, required_return=-0.02) == pytest.approx(expected)
    assert m.downside_deviation(R5) == pytest.approx(math.sqrt((0.05**2 + 0.1**2) / 5))


def test_hand_computed_var_cvar() -> None:
    # sorted: -0.1, -0.05, 0.02, 0.03, 0.1; 5 % quantile at position 4 * 0.05 = 0.2
    assert m.value_at_risk(R5, 0.95) == pytest.approx(-(-0.1 + 0.2 * 0.05))
    assert m.conditional_value_at_risk(R5, 0.95) == pytest.approx(0.1)
    # 40 % quantile at position 1.6: -0.05 + 0.6 * 0.07 = -0.008 -> tail {-0.1, -0.05}
    assert m.value_at_risk(R5, 0.6) == pytest.approx(0.008)
    assert m.conditional_value_at_risk(R5, 0.6) == pytest.approx(0.075)


def test_cvar_includes_the_quantile_when_it_lands_on_a_return() -> None:
    # 21 returns: 5 % quantile at position 20 * 0.05 = 1, exactly the 2nd smallest (-0.1)
    r = [-0.2, -0.1] + [0.01 * i for i in range(1, 20)]
    assert m.value_at_risk(r, 0.95) == pytest.approx(0.1)
    assert m.conditional_value_at_risk(r, 0.95) == pytest.approx((0.2 + 0.1) / 2)
    assert m.conditional_value_at_risk([0.001] * 10, 0.95) == pytest.approx(-0.001)


def test_turnover_one_sided() -> None:
    assert m.turnover([0.5, 0.5, 0.0], [0.2, 0.6, 0.2]) == pytest.approx(0.5 * (0.3 + 0.1 + 0.2))
    before = np.array([[1.0, 0.0], [0.5, 0.5]])
    after = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert m.turnover(before, after) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="weights_before"):
        m.turnover([0.5, 0.5], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="weights_after"):
        m.turnover([0.5, 0.5], [np.nan, 0.5])


def test_periods_per_year_from_step() -> None:
    assert m.periods_per_year_from_step(1.0) == 365.0
    assert m.periods_per_year_from_step(7.0) == pytest.approx(365 / 7)
    assert m.periods_per_year_from_step(1 / 24) == pytest.approx(8760)
    with pytest.raises(ValueError, match="step_days"):
        m.periods_per_year_from_step(0.0)


# ---------- against empyrical-reloaded on fat-tailed series ----------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_empyrical(seed: int) -> None:
    r = fat_tailed_returns(seed)
    ppy = 365
    assert m.annual_return(r, ppy) == pytest.approx(empyrical.annual_return(r, annualization=ppy))
    assert m.annual_volatility(r, ppy) == pytest.approx(
        empyrical.annual_volatility(r, annualization=ppy)
    )
    assert m.sharpe_ratio(r, ppy) == pytest.approx(empyrical.sharpe_ratio(r, annualization=ppy))
    assert m.sharpe_ratio(r, ppy, risk_free=1e-4) == pytest.approx(
        empyrical.sharpe_ratio(r, risk_free=1e-4, annualization=ppy)
    )
    assert m.sortino_ratio(r, ppy) == pytest.approx(empyrical.sortino_ratio(r, annualization=ppy))
    assert m.sortino_ratio(r, ppy, required_return=5e-4) == pytest.approx(
        empyrical.sortino_ratio(r, required_return=5e-4, annualization=ppy)
    )
    # empyrical reports drawdown as a negative number; ours is positive.
    assert m.max_drawdown(r) == pytest.approx(-empyrical.max_drawdown(r))
    assert m.max_drawdown(r) > 0
    assert m.calmar_ratio(r, ppy) == pytest.approx(empyrical.calmar_ratio(r, annualization=ppy))
    # empyrical's VaR is the signed 5 % quantile (a negative return); ours is the positive loss.
    assert m.value_at_risk(r, 0.95) == pytest.approx(-empyrical.value_at_risk(r, cutoff=0.05))
    assert m.value_at_risk(r, 0.99) == pytest.approx(-empyrical.value_at_risk(r, cutoff=0.01))
    # Without ties both CVaRs average the same lowest floor((n-1) * cutoff) + 1 returns.
    assert m.conditional_value_at_risk(r, 0.95) == pytest.approx(
        -empyrical.conditional_value_at_risk(r, cutoff=0.05)
    )


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 60), elements=st.floats(-0.95, 1.5)))
def test_drawdown_and_cagr_match_empyrical_property(r: np.ndarray) -> None:
    mdd = m.max_drawdown(r)
    assert 0.0 <= mdd <= 1.0
    assert mdd == pytest.approx(-empyrical.max_drawdown(r), abs=1e-12)
    assert m.annual_return(r, 365) == pytest.approx(
        empyrical.annual_return(r, annualization=365), rel=1e-9, abs=1e-12
    )


# ---------- Cornish-Fisher ----------


def test_cornish_fisher_z_is_gaussian_without_skew_or_kurtosis() -> None:
    for level in (0.9, 0.95, 0.99):
        z = stats.norm.ppf(1 - level)
        assert m.cornish_fisher_z(z, 0.0, 0.0) == pytest.approx(z)
        # Gaussian expected shortfall of a standard normal: -pdf(z) / alpha
        assert m.cornish_fisher_tail_mean_z(1 - level, 0.0, 0.0) == pytest.approx(
            -stats.norm.pdf(z) / (1 - level)
        )


def test_cornish_fisher_var_cvar_reduce_to_gaussian_on_a_normal_moment_sample() -> None:
    # {-1, 0, 0, 0, 0, 1}: mean 0, m2 = 1/3, m3 = 0, m4 = 1/3 -> kurtosis m4/m2^2 = 3 exactly.
    r = np.array([-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]) * 0.01 + 0.001
    mu, sigma = 0.001, math.sqrt(2e-4 / 5)  # squared deviations sum to 2e-4; ddof=1
    assert sigma == pytest.approx(np.std(r, ddof=1))
    gauss = stats.norm(loc=mu, scale=sigma)
    assert m.cornish_fisher_var(r, 0.95) == pytest.approx(-gauss.ppf(0.05))
    assert m.cornish_fisher_var(r, 0.99) == pytest.approx(-gauss.ppf(0.01))
    # Gaussian ES: -E[X | X <= q_alpha], computed by scipy's conditional expectation.
    expected_es = -gauss.expect(lambda x: x, ub=gauss.ppf(0.05), conditional=True)
    assert m.cornish_fisher_cvar(r, 0.95) == pytest.approx(expected_es, rel=1e-6)


@pytest.mark.parametrize(("skew", "kurt"), [(-0.8, 3.0), (0.5, 1.0), (-0.3, 6.0)])
def test_cornish_fisher_tail_mean_matches_numerical_integral(skew: float, kurt: float) -> None:
    alpha = 0.05
    avg, _ = integrate.quad(
        lambda u: m.cornish_fisher_z(stats.norm.ppf(u), skew, kurt), 0.0, alpha, limit=200
    )
    assert m.cornish_fisher_tail_mean_z(alpha, skew, kurt) == pytest.approx(avg / alpha, rel=1e-6)


def test_cornish_fisher_on_skewed_sample() -> None:
    r = fat_tailed_returns(5, 2000)
    mu, sd = r.mean(), r.std(ddof=1)
    dev = r - mu
    s = np.mean(dev**3) / np.mean(dev**2) ** 1.5
    k = np.mean(dev**4) / np.mean(dev**2) ** 2 - 3
    z = stats.norm.ppf(0.05)
    zcf = z + (z * z - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s * s / 36
    assert m.cornish_fisher_var(r, 0.95) == pytest.approx(-(mu + sd * zcf))
    # CF-CVaR is a deeper tail than CF-VaR
    assert m.cornish_fisher_cvar(r, 0.95) > m.cornish_fisher_var(r, 0.95)
    # negative skew alone moves the 95 % CF quantile further into the loss tail
    left_skewed = -np.abs(np.random.default_rng(0).normal(0, 0.02, 3000)) + 0.01
    gaussian_var = -(left_skewed.mean() + left_skewed.std(ddof=1) * z)
    assert stats.skew(left_skewed) < 0
    assert m.cornish_fisher_var(left_skewed, 0.95) > gaussian_var


# ---------- edge cases and validation ----------


@pytest.mark.parametrize(
    "fn",
    [
        lambda r: m.annual_return(r, 365),
        lambda r: m.annual_volatility(r, 365),
        lambda r: m.sharpe_ratio(r, 365),
        lambda r: m.sortino_ratio(r, 365),
        m.max_drawdown,
        lambda r: m.calmar_ratio(r, 365),
        m.value_at_risk,
        m.conditional_value_at_risk,
        m.cornish_fisher_var,
        m.cornish_fisher_cvar,
        lambda r: m.summarize_returns(r, 365),
    ],
)
def test_bad_returns_raise_value_error_naming_argument(fn) -> None:
    with pytest.raises(ValueError, match="returns is empty"):
        fn([])
    with pytest.raises(ValueError, match=r"returns\[1\] = nan"):
        fn([0.01, np.nan, 0.02])
    with pytest.raises(ValueError, match="returns.*inf"):
        fn([0.01, np.inf])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0.01, 0.02]])
    with pytest.raises(ValueError, match="below -1"):
        fn([0.01, -1.5])


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="periods_per_year"):
        m.sharpe_ratio(R5, 0)
    with pytest.raises(ValueError, match="level"):
        m.value_at_risk(R5, 1.0)
    with pytest.raises(ValueError, match="level"):
        m.cornish_fisher_cvar(R5, 0.0)
    with pytest.raises(ValueError, match="risk_free"):
        m.sharpe_ratio(R5, 365, risk_free=np.nan)


def test_zero_variance_and_short_series_give_nan_not_inf() -> None:
    flat = np.full(30, 0.001)
    assert math.isnan(m.sharpe_ratio(flat, 365))
    assert math.isnan(m.sortino_ratio(flat, 365))  # no period below 0: no downside
    assert math.isnan(m.calmar_ratio(flat, 365))  # no drawdown
    assert math.isnan(m.cornish_fisher_var(flat))
    assert math.isnan(m.cornish_fisher_cvar(flat))
    assert m.annual_volatility(flat, 365) == pytest.approx(0.0, abs=1e-15)
    assert m.max_drawdown(flat) == 0.0
    assert m.value_at_risk(flat) == pytest.approx(-0.001)  # a gain, so a negative loss
    one = [0.05]
    assert math.isnan(m.annual_volatility(one, 365))
    assert math.isnan(m.sharpe_ratio(one, 365))
    assert math.isnan(m.sortino_ratio(one, 365))
    assert m.annual_return(one, 365) == pytest.approx(1.05**365 - 1)


def test_total_loss() -> None:
    r = [0.1, -1.0, 0.0]
    assert m.annual_return(r, 365) == -1.0
    assert m.max_drawdown(r) == 1.0
    assert m.calmar_ratio(r, 365) == -1.0


# ---------- summary ----------


def test_summarize_returns_matches_functions_and_extras() -> None:
    r = fat_tailed_returns(7, 200)
    turnover = np.linspace(0.0, 0.2, 200)
    fees = np.full(200, 2.0)
    gas = np.zeros(200)
    gas[::10] = 5.0
    liq_count = np.zeros(200)
    liq_count[[3, 50]] = [1, 2]
    kill = np.zeros(200, dtype=bool)
    kill[100:150] = True
    out = m.summarize_returns(
        r,
        365,
        turnover_per_period=turnover,
        costs_usd={"fees": fees, "gas": gas},
        liquidations_count=liq_count,
        liquidations_usd=liq_count * 1000.0,
        kill_switch_active=kill,
    )
    assert out["sharpe_ratio"] == m.sharpe_ratio(r, 365)
    assert out["max_drawdown"] == m.max_drawdown(r)
    assert out["cornish_fisher_cvar"] == m.cornish_fisher_cvar(r)
    assert out["n_periods"] == 200
    assert out["turnover_mean"] == pytest.approx(0.1)
    assert out["turnover_annual"] == pytest.approx(36.5)
    assert out["cost_fees_usd"] == pytest.approx(400.0)
    assert out["cost_gas_usd"] == pytest.approx(20 * 5.0)
    assert out["cost_total_usd"] == pytest.approx(500.0)
    assert out["liquidations_count"] == 3.0
    assert out["liquidations_usd"] == 3000.0
    assert out["kill_switch_fraction"] == pytest.approx(0.25)
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError, match="turnover_per_period"):
        m.summarize_returns(r, 365, turnover_per_period=turnover[:-1])
    with pytest.raises(ValueError, match="costs_usd\\['gas'\\]"):
        m.summarize_returns(r, 365, costs_usd={"gas": np.full(200, np.nan)})
