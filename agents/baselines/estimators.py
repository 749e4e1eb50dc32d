"""Moment estimators for the mean-variance baselines.

Every estimator takes ``returns_window``: a ``(T, N)`` array of per-step returns (rows oldest to
newest, one column per asset), simple ``p_t / p_{t-1} - 1`` or log ``log(p_t / p_{t-1})``: the
formulas do not care, but the caller must pass the kind its optimizer assumes (simple returns for a
one-step mean-variance portfolio; :attr:`agents.policy.MarketView.log_returns` gives log returns, and
at daily crypto volatility the two differ by ~``r^2 / 2``, e.g. 0.05% on a 3% day). Outputs are
per-step moments in the same units; annualize (x365 for daily crypto) only in reports.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from sklearn.covariance import LedoitWolf


def _as_window(returns_window: np.ndarray) -> np.ndarray:
    """Validate a ``(T, N)`` finite window with ``T >= 2``; return it as float64."""
    arr = np.asarray(returns_window, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(
            f"returns_window must be a (T, N) array with T >= 2 rows (steps) and N >= 1 columns "
            f"(assets), got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(
            f"returns_window must be finite, got {arr[row, col]} at step {row}, asset {col}; "
            f"drop or fill missing prices first"
        )
    return arr


def sample_cov(returns_window: np.ndarray, ddof: int = 1) -> np.ndarray:
    """``(N, N)`` sample covariance ``sum_t (r_t - m)(r_t - m)' / (T - ddof)`` per step.

    Singular when ``T <= N``: use :func:`ledoit_wolf_cov` for short windows.
    """
    arr = _as_window(returns_window)
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof}")
    centered = arr - arr.mean(axis=0)
    return centered.T @ centered / (arr.shape[0] - ddof)


def ledoit_wolf_cov(returns_window: np.ndarray) -> np.ndarray:
    """``(N, N)`` Ledoit-Wolf covariance (scikit-learn's ``LedoitWolf``), per step.

    Shrinks the maximum-likelihood covariance (divisor ``T``) toward a scaled identity with the
    Ledoit & Wolf (2004) optimal intensity; positive definite even when ``T <= N``.
    """
    arr = _as_window(returns_window)
    return LedoitWolf().fit(arr).covariance_


def ewma_cov(returns_window: np.ndarray, halflife: float, *, demean: bool = True) -> np.ndarray:
    """``(N, N)`` exponentially weighted covariance, per step.

    The weight of row ``t`` (0 = oldest, ``T-1`` = newest) is ``0.5 ** ((T-1-t) / halflife)``
    (``halflife`` in steps; RiskMetrics' daily ``lambda = 0.94`` is ``halflife ~ 11.2``). With
    ``demean`` the weighted mean is removed and the bias-corrected estimator
    ``sum_t w_t (r_t - m)(r_t - m)' / (sum w - sum w^2 / sum w)`` is returned, as
    ``pandas.DataFrame.ewm(halflife=h).cov()`` at the last row; without it the zero-mean
    RiskMetrics form ``sum_t w_t r_t r_t' / sum w``.
    """
    arr = _as_window(returns_window)
    halflife = float(halflife)
    if not math.isfinite(halflife) or halflife <= 0.0:
        raise ValueError(f"halflife must be a finite number of steps > 0, got {halflife}")
    t = arr.shape[0]
    weights = 0.5 ** (np.arange(t - 1, -1, -1, dtype=np.float64) / halflife)
    total = float(weights.sum())
    if not demean:
        return (arr * weights[:, None]).T @ arr / total
    centered = arr - weights @ arr / total
    norm = total - float(weights @ weights) / total
    return (centered * weights[:, None]).T @ centered / norm


def shrunk_mean(
    returns_window: np.ndarray,
    target: Literal["zero", "grand_mean"] = "zero",
    shrinkage: float = 0.5,
) -> np.ndarray:
    """``(N,)`` sample mean shrunk toward a target: ``(1 - s) * mean + s * target``, per step.

    Args:
        returns_window: ``(T, N)`` per-step returns.
        target: ``"zero"`` (no predictability) or ``"grand_mean"`` (every asset's mean replaced
            by the cross-sectional average of the sample means: a James-Stein-style target).
        shrinkage: ``s`` in [0, 1]; 0 keeps the sample mean, 1 returns the target.
    """
    arr = _as_window(returns_window)
    shrinkage = float(shrinkage)
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    mean = arr.mean(axis=0)
    if target == "zero":
        anchor = np.zeros_like(mean)
    elif target == "grand_mean":
        anchor = np.full_like(mean, mean.mean())
    else:
        raise ValueError(f"target must be 'zero' or 'grand_mean', got {target!r}")
    return (1.0 - shrinkage) * mean + shrinkage * anchor
