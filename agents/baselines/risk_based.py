"""Risk-based baselines that need no expected returns: banded equal weight, inverse vol, vol target.

Each is a :class:`~defialloc.agents.baselines.policies.BaselinePolicy` (schedule + policy-level no-trade
band, pydantic parameters, same env costs) and sees only the :class:`~defialloc.agents.policy.MarketView`.

Volatility forecast (shared with :mod:`defialloc.agents.baselines.levered`): on the trailing ``lookback``
prices, per-step SIMPLE returns ``r_t = p_t / p_{t-1} - 1`` ``(T, N)``, and the zero-mean
RiskMetrics EWMA covariance ``Sigma = sum_t w_t r_t r_t' / sum_t w_t`` with
``w_t = 0.5 ** (age_t / ewma_halflife)`` (age 0 = the newest return): the forecast of the next
step's covariance, per step. Zero-mean because a 60-day mean return is noise that would only bias
the variance down (the standard RiskMetrics choice); it equals
:func:`defialloc.agents.baselines.estimators.ewma_cov` with ``demean=False``, batched over envs. The forecast
vol of asset ``i`` is ``sqrt(Sigma_ii)`` (the EWMA of its squared returns).

- ``equal_weight_band``: ``(1 - cash_weight) / N`` each, checked every step, traded only when a
  weight has drifted by at least ``no_trade_band``.
- ``inverse_vol``: ``w_i ∝ 1 / sigma_i``, scaled to the risky budget (capped at ``max_weight``,
  the excess spread over the others in proportion).
- ``vol_target``: a base portfolio ``b`` (``equal`` or ``inverse_vol``) scaled by
  ``min(1, target_vol / vol_ann)``, ``vol_ann = sqrt(b' Sigma b * periods_per_year)`` (annual,
  ``periods_per_year = 365 / step_days``); never above 100 % invested, the rest in cash.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from defialloc.agents.baselines.policies import BaselineParams, BaselinePolicy
from defialloc.agents.policy import MarketView
from defialloc.envs.market.config import DAYS_PER_YEAR


# ---------------------------------------------------------------------------------------- params
class BandParams(BaselineParams):
    """Checked every step (``rebalance_every = 1``), traded only past the band."""

    rebalance_every: int = Field(default=1, ge=1, le=100_000, description="steps between checks")
    no_trade_band: float = Field(
        default=0.05, ge=0.0, le=0.5, description="trade when max |dw| >= band"
    )


class VolParams(BaselineParams):
    """Trailing-window EWMA volatility forecast."""

    lookback: int = Field(default=61, ge=3, le=5_001, description="trailing price points")
    ewma_halflife: float = Field(default=20.0, gt=0.0, le=1_000.0, description="steps")


class VolTargetParams(VolParams):
    """A base portfolio scaled to a target annual volatility, at most fully invested."""

    base: Literal["equal", "inverse_vol"] = "inverse_vol"
    target_vol: float = Field(default=0.5, gt=0.0, le=5.0, description="annual, e.g. 0.5 = 50 %")


# ---------------------------------------------------------------------------------------- helpers
def ewma_cov_batch(returns: np.ndarray, halflife: float) -> np.ndarray:
    """Zero-mean EWMA covariance ``(M, N, N)`` per step of ``(M, T, N)`` per-step returns.

    ``sum_t w_t r_t r_t' / sum_t w_t`` with ``w_t = 0.5 ** ((T - 1 - t) / halflife)`` (row ``T-1``
    is the newest): :func:`defialloc.agents.baselines.estimators.ewma_cov` with ``demean=False``, per env.
    """
    r = np.asarray(returns, dtype=np.float64)
    t = r.shape[1]
    weights = 0.5 ** (np.arange(t - 1, -1, -1, dtype=np.float64) / float(halflife))
    weights /= weights.sum()
    return np.einsum("t,mti,mtj->mij", weights, r, r)


def forecast_cov(prices: np.ndarray, halflife: float) -> np.ndarray | None:
    """Per-step forecast covariance ``(M, N, N)`` from trailing prices ``(M, W, N)`` (module docstring).

    None when the window has fewer than 3 prices (too little history to say anything).
    """
    p = np.asarray(prices, dtype=np.float64)
    if p.shape[1] < 3:
        return None
    returns = p[:, 1:] / p[:, :-1] - 1.0
    return ewma_cov_batch(np.nan_to_num(returns, nan=0.0, posinf=0.0, neginf=0.0), halflife)


def forecast_vol(cov: np.ndarray) -> np.ndarray:
    """``(M, N)`` per-step forecast vol ``sqrt(Sigma_ii)`` of a ``(M, N, N)`` covariance."""
    return np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))


def capped_proportional(scores: np.ndarray, budget: float, cap: float | None) -> np.ndarray:
    """``(M, N)`` weights proportional to non-negative ``scores`` ``(M, N)``, summing to ``budget``,
    none above ``cap`` (water-filling: capped assets are fixed at ``cap`` and the rest of the budget
    is shared by the others in proportion). A row of zero scores gets equal weights.

    Needs ``cap * N >= budget`` (``BaselinePolicy`` checks it).
    """
    s = np.maximum(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0), 0.0)
    m, n = s.shape
    s = np.where(s.sum(axis=1, keepdims=True) > 0.0, s, 1.0)
    if cap is None:
        return budget * s / s.sum(axis=1, keepdims=True)
    if cap * n <= budget + 1e-12:  # only equal weights fit under the cap
        return np.full((m, n), budget / n)
    free = np.ones((m, n), dtype=bool)
    w = np.zeros((m, n))
    for _ in range(n):  # each round caps at least one more asset, or stops
        rest = budget - np.where(free, 0.0, w).sum(axis=1, keepdims=True)
        free_scores = np.where(free, s, 0.0)
        total = free_scores.sum(axis=1, keepdims=True)
        share = rest * free_scores / np.where(total > 0.0, total, 1.0)
        w = np.where(free, share, w)
        over = free & (w > cap + 1e-15)
        if not over.any():
            break
        w = np.where(over, cap, w)
        free &= ~over
    return w


def base_weights(
    kind: str,
    sigma: np.ndarray | None,
    n_rows: int,
    n_assets: int,
    budget: float,
    cap: float | None,
) -> np.ndarray:
    """``(M, N)`` risky base weights summing to ``budget``: ``"equal"``, or ``"inverse_vol"``
    (``∝ 1 / sigma``, equal when ``sigma`` is None, i.e. no history yet)."""
    if kind == "equal" or sigma is None:
        return capped_proportional(np.ones((n_rows, n_assets)), budget, cap)
    if kind != "inverse_vol":
        raise ValueError(f"base must be 'equal' or 'inverse_vol', got {kind!r}")
    # a zero forecast (a constant price) would get an infinite score: floor it at 1e-12 per step
    return capped_proportional(1.0 / np.maximum(sigma, 1e-12), budget, cap)


def annual_vol(weights: np.ndarray, cov: np.ndarray, step_days: float) -> np.ndarray:
    """``(M,)`` annualized forecast vol ``sqrt(w' Sigma w * 365 / step_days)`` of ``(M, N)`` weights."""
    var = np.einsum("mi,mij,mj->m", weights, cov, weights)
    return np.sqrt(np.maximum(var, 0.0) * DAYS_PER_YEAR / step_days)


def vol_target_scale(vol_ann: np.ndarray, target_vol: float) -> np.ndarray:
    """``(M,)`` exposure multiplier ``target_vol / vol_ann`` (inf for a zero forecast): the caller caps it."""
    return np.where(vol_ann > 0.0, target_vol / np.where(vol_ann > 0.0, vol_ann, 1.0), np.inf)


# ---------------------------------------------------------------------------------------- policies
class EqualWeightBandPolicy(BaselinePolicy):
    """Equal weight, checked every step, rebalanced only when some weight drifts past the band."""

    name = "equal_weight_band"
    params_model = BandParams

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        risky = capped_proportional(
            np.ones((index.size, self.n_assets)), self.budget, self.params.max_weight
        )
        return self._with_cash(risky)


class InverseVolPolicy(BaselinePolicy):
    """``w_i ∝ 1 / sigma_i`` (EWMA forecast vol), on a schedule with a band."""

    name = "inverse_vol"
    params_model: type[BaselineParams] = VolParams

    def _sigma_cov(self, view: MarketView, index: np.ndarray) -> tuple[Any, Any]:
        p: VolParams = self.params  # type: ignore[assignment]
        cov = forecast_cov(np.asarray(view.prices)[index], p.ewma_halflife)
        return (None, None) if cov is None else (forecast_vol(cov), cov)

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        sigma, _ = self._sigma_cov(view, index)
        risky = base_weights(
            "inverse_vol", sigma, index.size, self.n_assets, self.budget, self.params.max_weight
        )
        return self._with_cash(risky)


class VolTargetPolicy(InverseVolPolicy):
    """A base portfolio scaled to ``target_vol`` (annual), capped at fully invested; rest in cash."""

    name = "vol_target"
    params_model = VolTargetParams

    def exposure(self, view: MarketView, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        """Base weights ``(M, N)`` (summing to the risky budget), the uncapped exposure multiplier
        ``(M,)`` that hits ``target_vol`` (1 without history) and the forecast vols ``(M, N)`` or None."""
        p: VolTargetParams = self.params  # type: ignore[assignment]
        sigma, cov = self._sigma_cov(view, index)
        base = base_weights(p.base, sigma, index.size, self.n_assets, self.budget, p.max_weight)
        if cov is None:
            return base, np.ones(index.size), None
        vol = annual_vol(base, cov, view.step_days)
        return base, vol_target_scale(vol, p.target_vol), sigma

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        base, scale, _ = self.exposure(view, index)
        return self._with_cash(base * np.minimum(scale, 1.0)[:, None])
