"""Cash as an optional asset of the mean-variance problems (``allow_cash``), per env and batched.

The quadratic-utility baselines (``mean_variance`` and the oracle) may de-risk into cash: the problem
gets one more asset with zero mean and a variance of :data:`CASH_VARIANCE_SHARE` times the mean asset
variance (riskless up to a term that keeps the Hessian definite), so the budget stays an equality.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from defialloc.agents.baselines.batch_inputs import BatchSolveInfo
from defialloc.agents.baselines.batch_optimizers import solve_mean_variance_batch
from defialloc.agents.baselines.optimizers import solve_mean_variance

#: variance of the optional cash asset relative to the mean asset variance (keeps the QP definite)
CASH_VARIANCE_SHARE = 1e-6


def mean_variance_with_cash(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_aversion: float,
    *,
    budget: float,
    prev_risky: np.ndarray,
    max_weight: float | None = None,
    turnover_penalty: float = 0.0,
    allow_cash: bool = True,
) -> tuple[np.ndarray, Any]:
    """Quadratic-utility risky weights ``(N,)`` summing to at most ``budget`` (``allow_cash``) or exactly.

    With ``allow_cash`` the problem gets one more asset, cash: zero mean and a variance of
    :data:`CASH_VARIANCE_SHARE` times the mean asset variance (riskless up to a term that keeps the
    Hessian definite), so the optimizer may de-risk into cash; ``max_weight`` then caps that cash
    share too. ``turnover_penalty`` is per unit of ``||w - w_now||_1`` over all entries.
    """
    if not allow_cash:
        return solve_mean_variance(
            mu,
            cov,
            risk_aversion,
            max_weight=max_weight,
            budget=budget,
            prev_weights=prev_risky,
            turnover_penalty=turnover_penalty,
        )
    n = mu.shape[0]
    cov_ext = np.zeros((n + 1, n + 1))
    cov_ext[:n, :n] = cov
    cov_ext[n, n] = CASH_VARIANCE_SHARE * max(float(np.mean(np.diag(cov))), 1e-300)
    prev_ext = np.append(prev_risky, max(budget - float(prev_risky.sum()), 0.0))
    weights, info = solve_mean_variance(
        np.append(mu, 0.0),
        cov_ext,
        risk_aversion,
        max_weight=max_weight,
        budget=budget,
        prev_weights=prev_ext,
        turnover_penalty=turnover_penalty,
    )
    return weights[:n], info


def with_cash(
    mu: np.ndarray, cov: np.ndarray, prev_risky: np.ndarray, budget: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu (B, N+1), cov (B, N+1, N+1), prev (B, N+1))``: :func:`mean_variance_with_cash`'s cash
    asset appended to ``B`` problems (zero mean, variance :data:`CASH_VARIANCE_SHARE` x the mean
    asset variance, current cash ``max(budget - sum(prev_risky), 0)``)."""
    b, n = mu.shape
    cov_ext = np.zeros((b, n + 1, n + 1))
    cov_ext[:, :n, :n] = cov
    mean_var = np.einsum("bii->b", cov) / n
    cov_ext[:, n, n] = CASH_VARIANCE_SHARE * np.maximum(mean_var, 1e-300)
    mu_ext = np.concatenate([mu, np.zeros((b, 1))], axis=1)
    return mu_ext, cov_ext, cash_prev(prev_risky, budget)


def cash_prev(prev_risky: np.ndarray, budget: float) -> np.ndarray:
    """``(B, N+1)``: the current risky weights ``(B, N)`` and the cash the optimizer may hold."""
    cash = np.maximum(budget - prev_risky.sum(axis=1, keepdims=True), 0.0)
    return np.concatenate([prev_risky, cash], axis=1)


def mean_variance_with_cash_batch(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_aversion: float,
    *,
    budget: float,
    prev_risky: np.ndarray,
    max_weight: float | None = None,
    turnover_penalty: float = 0.0,
    allow_cash: bool = True,
) -> tuple[np.ndarray, BatchSolveInfo]:
    """:func:`mean_variance_with_cash` of ``B`` problems: ``mu (B, N)``, ``cov (B, N, N)``,
    ``prev_risky (B, N)``; returns risky weights ``(B, N)`` and the batch's solve info."""
    kwargs = {"max_weight": max_weight, "budget": budget, "turnover_penalty": turnover_penalty}
    if not allow_cash:
        return solve_mean_variance_batch(mu, cov, risk_aversion, prev_weights=prev_risky, **kwargs)
    mu_ext, cov_ext, prev_ext = with_cash(mu, cov, prev_risky, budget)
    weights, info = solve_mean_variance_batch(
        mu_ext, cov_ext, risk_aversion, prev_weights=prev_ext, **kwargs
    )
    return weights[:, :-1], info
