"""Risk and performance metrics of one return series (pure numpy/scipy).

Conventions, fixed in writing (also in ``docs/metrics.md``):

- ``returns`` is a 1-D array ``(T,)`` of per-period SIMPLE returns ``r_t = V_t / V_{t-1} - 1``
  (fractions, 0.01 = 1 %), net of every cost. Each value must be finite and ``>= -1`` (a return
  below -1 would mean a negative portfolio value). Empty input, NaN/inf or a 2-D array raise
  ``ValueError`` naming the argument.
- ``periods_per_year`` annualizes; crypto trades every day, so daily steps give 365
  (``periods_per_year_from_step(step_days) = 365 / step_days``).
- ``annual_return`` is geometric (CAGR): ``prod(1 + r) ** (ppy / T) - 1``.
- ``annual_volatility`` is ``std(r, ddof=1) * sqrt(ppy)``.
- ``sharpe_ratio``: ``mean(r - rf) / std(r - rf, ddof=1) * sqrt(ppy)``; ``risk_free`` is PER PERIOD.
- ``sortino_ratio``: ``mean(r - req) / DD * sqrt(ppy)`` with the full-sample downside deviation
  ``DD = sqrt(mean(min(r - req, 0) ** 2))`` over ALL ``T`` periods (as empyrical).
- ``max_drawdown`` is a POSITIVE fraction in [0, 1]: ``max_t 1 - W_t / max_{s<=t} W_s`` with wealth
  ``W_0 = 1`` (the starting capital counts as a peak) and ``W_t = prod_{s<=t} (1 + r_s)``.
  (empyrical returns the same number with a negative sign.)
- ``calmar_ratio = annual_return / max_drawdown``.
- ``value_at_risk`` (historical) is a LOSS, positive when the quantile is a loss:
  ``-quantile(r, 1 - level)`` with numpy's default linear interpolation. (empyrical returns the
  signed quantile, i.e. the negative of this.) ``conditional_value_at_risk`` is
  ``-mean(r[r <= quantile(r, 1 - level)])``.
- Cornish-Fisher (modified) VaR uses ``mean``, ``std(ddof=1)``, and the moment (biased) skewness ``S``
  and excess kurtosis ``K`` of the sample: ``z_cf = z + (z^2-1) S/6 + (z^3-3z) K/24 - (2z^3-5z) S^2/36``
  with ``z = Phi^-1(1 - level)``; ``VaR = -(mean + std * z_cf)``. CF-CVaR is the average of the CF
  quantile function over the tail, ``-(1/a) * integral_0^a Q_cf(u) du`` with ``a = 1 - level``, in
  closed form (see ``cornish_fisher_tail_mean_z``). The expansion is only trustworthy for moderate
  skew/kurtosis; with strong fat tails it can even be non-monotone.
- Undefined values are NaN, never inf: ratios whose denominator is zero (zero variance, no downside,
  no drawdown), and sample statistics of fewer than 2 periods (volatility, Sharpe, Sortino, CF).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

DAYS_PER_YEAR = 365.0


def _as_returns(returns: np.ndarray, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1:
        raise ValueError(f"{name} must be 1-D (T,), got shape {r.shape}")
    if r.size == 0:
        raise ValueError(f"{name} is empty; need at least 1 period")
    bad = ~np.isfinite(r)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {r[i]} is not finite; allowed: finite values >= -1")
    if (r < -1.0).any():
        i = int(np.argmin(r))
        raise ValueError(f"{name}[{i}] = {r[i]} is below -1 (negative wealth); allowed: >= -1")
    return r


def _check_ppy(periods_per_year: float) -> float:
    ppy = float(periods_per_year)
    if not np.isfinite(ppy) or ppy <= 0:
        raise ValueError(f"periods_per_year = {periods_per_year} must be finite and > 0")
    return ppy


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level} must be in (0, 1), e.g. 0.95")
    return float(level)


def _check_rate(value: float, name: str) -> float:
    if not np.isfinite(value) or value <= -1.0:
        raise ValueError(f"{name} = {value} must be a finite per-period rate > -1")
    return float(value)


def _is_constant(x: np.ndarray) -> bool:
    # An exact test: std() of identical values can leave a ~1e-18 residue, giving a huge ratio.
    return bool(x.max() == x.min())


def periods_per_year_from_step(step_days: float) -> float:
    """Periods per year for a step of ``step_days`` days (crypto: 365 days a year)."""
    if not np.isfinite(step_days) or step_days <= 0:
        raise ValueError(f"step_days = {step_days} must be finite and > 0")
    return DAYS_PER_YEAR / float(step_days)


def annual_return(returns: np.ndarray, periods_per_year: float) -> float:
    """Geometric annual return (CAGR), a fraction; -1.0 if wealth hits 0."""
    r, ppy = _as_returns(returns), _check_ppy(periods_per_year)
    final_wealth = np.prod(1.0 + r)
    return float(final_wealth ** (ppy / r.size) - 1.0)


def annual_volatility(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualized sample standard deviation (ddof=1) of returns; NaN for T < 2."""
    r, ppy = _as_returns(returns), _check_ppy(periods_per_year)
    if r.size < 2:
        return float("nan")
    return float(r.std(ddof=1) * np.sqrt(ppy))


def sharpe_ratio(returns: np.ndarray, periods_per_year: float, risk_free: float = 0.0) -> float:
    """Annualized Sharpe ratio; ``risk_free`` per period. NaN for T < 2 or zero variance."""
    r, ppy = _as_returns(returns), _check_ppy(periods_per_year)
    excess = r - _check_rate(risk_free, "risk_free")
    if r.size < 2 or _is_constant(excess):
        return float("nan")
    return float(excess.mean() / excess.std(ddof=1) * np.sqrt(ppy))


def downside_deviation(returns: np.ndarray, required_return: float = 0.0) -> float:
    """Per-period downside deviation ``sqrt(mean(min(r - req, 0)^2))`` over all T periods."""
    r = _as_returns(returns)
    shortfall = np.minimum(r - _check_rate(required_return, "required_return"), 0.0)
    return float(np.sqrt(np.mean(shortfall**2)))


def sortino_ratio(
    returns: np.ndarray, periods_per_year: float, required_return: float = 0.0
) -> float:
    """Annualized Sortino ratio (``required_return`` per period). NaN for T < 2 or no downside."""
    r, ppy = _as_returns(returns), _check_ppy(periods_per_year)
    dd = downside_deviation(r, required_return)
    if r.size < 2 or dd == 0.0:
        return float("nan")
    return float(np.mean(r - required_return) / dd * np.sqrt(ppy))


def drawdown_series(returns: np.ndarray) -> np.ndarray:
    """Drawdown ``(T,)`` after each period, positive fractions ``1 - W_t / peak_t`` (W_0 = 1)."""
    r = _as_returns(returns)
    wealth = np.concatenate(([1.0], np.cumprod(1.0 + r)))
    peak = np.maximum.accumulate(wealth)
    return 1.0 - wealth[1:] / peak[1:]


def max_drawdown(returns: np.ndarray) -> float:
    """Maximum drawdown as a POSITIVE fraction in [0, 1] (0.25 = a 25 % fall from the peak)."""
    return float(drawdown_series(returns).max())


def calmar_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    """``annual_return / max_drawdown``; NaN when there is no drawdown."""
    mdd = max_drawdown(returns)
    if mdd == 0.0:
        return float("nan")
    return annual_return(returns, periods_per_year) / mdd


def value_at_risk(returns: np.ndarray, level: float = 0.95) -> float:
    """Historical VaR: loss ``-quantile(r, 1 - level)`` (linear interpolation), per period."""
    r, level = _as_returns(returns), _check_level(level)
    return float(-np.quantile(r, 1.0 - level))


def conditional_value_at_risk(returns: np.ndarray, level: float = 0.95) -> float:
    """Historical CVaR (expected shortfall): ``-mean(r[r <= quantile(r, 1 - level)])``."""
    r, level = _as_returns(returns), _check_level(level)
    q = np.quantile(r, 1.0 - level)
    return float(-r[r <= q].mean())


def cornish_fisher_z(
    z: float | np.ndarray, skew: float, excess_kurtosis: float
) -> float | np.ndarray:
    """Cornish-Fisher adjusted standard-normal quantile ``z_cf`` for ``z`` (scalar or array)."""
    s, k = skew, excess_kurtosis
    return z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36


def cornish_fisher_tail_mean_z(alpha: float, skew: float, excess_kurtosis: float) -> float:
    """Mean of ``z_cf(Phi^-1(u))`` over ``u`` in (0, alpha): the standardized CF expected shortfall.

    Integrating each Hermite term against the normal density below ``z = Phi^-1(alpha)`` gives
    ``-(phi(z) / alpha) * (1 + z S/6 + (z^2-1) K/24 + (1-2z^2) S^2/36)``.
    """
    z = stats.norm.ppf(alpha)
    s, k = skew, excess_kurtosis
    bracket = 1 + z * s / 6 + (z**2 - 1) * k / 24 + (1 - 2 * z**2) * s**2 / 36
    return float(-stats.norm.pdf(z) / alpha * bracket)


def _moments(r: np.ndarray) -> tuple[float, float, float, float]:
    """mean, std (ddof=1), moment skewness, moment excess kurtosis; NaN moments if constant."""
    if _is_constant(r):
        return float(r.mean()), 0.0, float("nan"), float("nan")
    return (
        float(r.mean()),
        float(r.std(ddof=1)),
        float(stats.skew(r, bias=True)),
        float(stats.kurtosis(r, fisher=True, bias=True)),
    )


def cornish_fisher_var(returns: np.ndarray, level: float = 0.95) -> float:
    """Modified (Cornish-Fisher) VaR, a per-period loss. NaN for T < 2 or zero variance."""
    r, level = _as_returns(returns), _check_level(level)
    if r.size < 2 or _is_constant(r):
        return float("nan")
    mu, sigma, s, k = _moments(r)
    return float(-(mu + sigma * cornish_fisher_z(stats.norm.ppf(1.0 - level), s, k)))


def cornish_fisher_cvar(returns: np.ndarray, level: float = 0.95) -> float:
    """Modified CVaR: minus the mean CF quantile over the ``1 - level`` tail (per-period loss)."""
    r, level = _as_returns(returns), _check_level(level)
    if r.size < 2 or _is_constant(r):
        return float("nan")
    mu, sigma, s, k = _moments(r)
    return float(-(mu + sigma * cornish_fisher_tail_mean_z(1.0 - level, s, k)))


def turnover(weights_before: np.ndarray, weights_after: np.ndarray) -> np.ndarray | float:
    """One-sided turnover ``0.5 * sum_i |w_after_i - w_before_i|`` per period.

    Weights are portfolio fractions, shape ``(N,)`` (returns a float) or ``(T, N)`` (returns
    ``(T,)``); 1.0 means the whole portfolio changed hands once.
    """
    w0 = np.asarray(weights_before, dtype=float)
    w1 = np.asarray(weights_after, dtype=float)
    if w0.shape != w1.shape or w0.ndim not in (1, 2):
        raise ValueError(
            f"weights_before {w0.shape} and weights_after {w1.shape} must share shape (N,) or (T, N)"
        )
    for name, w in (("weights_before", w0), ("weights_after", w1)):
        if not np.isfinite(w).all():
            raise ValueError(f"{name} contains NaN/inf; allowed: finite weights")
    out = 0.5 * np.abs(w1 - w0).sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def _as_series(x: np.ndarray, name: str, n: int) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like returns, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf; allowed: finite values")
    return a


def summarize_returns(
    returns: np.ndarray,
    periods_per_year: float,
    *,
    risk_free: float = 0.0,
    level: float = 0.95,
    turnover_per_period: np.ndarray | None = None,
    costs_usd: Mapping[str, np.ndarray] | None = None,
    liquidations_count: np.ndarray | None = None,
    liquidations_usd: np.ndarray | None = None,
    kill_switch_active: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of one return series ``(T,)`` in one flat dict (JSON/MLflow friendly).

    Optional per-period series, each ``(T,)`` aligned with ``returns``: ``turnover_per_period``
    (one-sided fraction) -> ``turnover_mean`` (per period) and ``turnover_annual`` (mean * ppy);
    ``costs_usd`` by kind (e.g. ``{"fees": ..., "gas": ...}``) -> ``cost_<kind>_usd`` totals and
    ``cost_total_usd``; ``liquidations_count`` / ``liquidations_usd`` -> totals;
    ``kill_switch_active`` (bool) -> ``kill_switch_fraction`` = fraction of periods under it.
    """
    r = _as_returns(returns)
    ppy = _check_ppy(periods_per_year)
    out: dict[str, float] = {
        "n_periods": float(r.size),
        "total_return": float(np.prod(1.0 + r) - 1.0),
        "annual_return": annual_return(r, ppy),
        "annual_volatility": annual_volatility(r, ppy),
        "sharpe_ratio": sharpe_ratio(r, ppy, risk_free),
        "sortino_ratio": sortino_ratio(r, ppy, risk_free),
        "max_drawdown": max_drawdown(r),
        "calmar_ratio": calmar_ratio(r, ppy),
        "value_at_risk": value_at_risk(r, level),
        "conditional_value_at_risk": conditional_value_at_risk(r, level),
        "cornish_fisher_var": cornish_fisher_var(r, level),
        "cornish_fisher_cvar": cornish_fisher_cvar(r, level),
    }
    if turnover_per_period is not None:
        to = _as_series(turnover_per_period, "turnover_per_period", r.size)
        out["turnover_mean"] = float(to.mean())
        out["turnover_annual"] = float(to.mean() * ppy)
    if costs_usd is not None:
        total = 0.0
        for kind, series in costs_usd.items():
            out[f"cost_{kind}_usd"] = float(
                _as_series(series, f"costs_usd[{kind!r}]", r.size).sum()
            )
            total += out[f"cost_{kind}_usd"]
        out["cost_total_usd"] = total
    if liquidations_count is not None:
        count = _as_series(liquidations_count, "liquidations_count", r.size)
        out["liquidations_count"] = float(count.sum())
    if liquidations_usd is not None:
        out["liquidations_usd"] = float(
            _as_series(liquidations_usd, "liquidations_usd", r.size).sum()
        )
    if kill_switch_active is not None:
        active = _as_series(kill_switch_active, "kill_switch_active", r.size)
        out["kill_switch_fraction"] = float((active != 0).mean())
    return out
