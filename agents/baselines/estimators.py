"""Moment estimators for the mean-variance baselines.

Every estimator takes ``returns_window``: a ``(T, N)`` array of per-step returns (rows oldest to
newest, one column per asset), simple ``p_t / p_{t-1} - 1`` or log ``log(p_t / p_{t-1})``: the
formulas do not care, but the caller must pass the kind its optimizer assumes (simple returns for a
one-step mean-variance portfolio; :attr:`defialloc.agents.policy.MarketView.log_returns` gives log returns, and
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


# ------------------------------------------------------------------------------------ batched
# A backtest step estimates B windows at once. scikit-learn's LedoitWolf().fit costs ~390 us per
# (60, 5) window (input validation and a pseudo-inverse of the result we never use): 25 ms per step
# for 64 envs, more than the env step itself. The batched functions below are one stack of numpy
# calls over (B, T, N); each equals its per-window counterpart above to rounding (tested).
def _as_windows(returns_windows: np.ndarray) -> np.ndarray:
    """Validate a ``(B, T, N)`` finite stack of windows with ``T >= 2``; return it as float64."""
    arr = np.asarray(returns_windows, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1] < 2 or arr.shape[2] < 1:
        raise ValueError(
            f"returns_windows must be a (B, T, N) array of B windows with T >= 2 rows (steps) and "
            f"N >= 1 columns (assets), got shape {arr.shape}"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        b, row, col = np.argwhere(~finite)[0].tolist()
        raise ValueError(
            f"returns_windows must be finite, got {arr[b, row, col]} in window {b} at step {row}, "
            f"asset {col}; drop or fill missing prices first"
        )
    return arr


def _gram(x: np.ndarray) -> np.ndarray:
    """``x_b' x_b`` for every window: ``(B, T, N) -> (B, N, N)``."""
    return np.matmul(x.transpose(0, 2, 1), x)


def sample_cov_batch(returns_windows: np.ndarray, ddof: int = 1) -> np.ndarray:
    """``(B, N, N)``: :func:`sample_cov` of each ``(T, N)`` window of ``returns_windows (B, T, N)``."""
    arr = _as_windows(returns_windows)
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof}")
    centered = arr - arr.mean(axis=1, keepdims=True)
    return _gram(centered) / (arr.shape[1] - ddof)


def ledoit_wolf_cov_batch(returns_windows: np.ndarray) -> np.ndarray:
    """``(B, N, N)``: :func:`ledoit_wolf_cov` (scikit-learn's ``LedoitWolf()``) of each window.

    scikit-learn's ``ledoit_wolf_shrinkage`` (``assume_centered=False``) vectorized over windows:
    with ``X`` the centered ``(T, N)`` window, ``S = X'X / T`` and ``m = tr(S) / N``::

        delta_ = ||X'X||_F^2 / T^2
        beta   = (sum_ij (X∘X)'(X∘X) / T - delta_) / (N T)
        delta  = (delta_ - 2 m tr(S) + N m^2) / N
        s      = min(beta, delta) / delta        (0 when min(beta, delta) == 0)

    and the estimate is ``(1 - s) S + s m I`` (``s = 0`` for one asset).
    """
    arr = _as_windows(returns_windows)
    _, t, n = arr.shape
    x = arr - arr.mean(axis=1, keepdims=True)
    emp = _gram(x) / t
    trace = np.einsum("bii->b", emp)
    mu = trace / n
    if n == 1:
        return emp
    x2 = x * x
    # sum_ij (X2' X2)_ij = sum_t (sum_i x_ti^2)^2: one pass instead of an (N, N) product
    beta_ = np.einsum("bt,bt->b", x2.sum(axis=2), x2.sum(axis=2))
    delta_ = np.einsum("bij,bij->b", emp, emp)  # = ||X'X||_F^2 / T^2
    beta = (beta_ / t - delta_) / (n * t)
    delta = (delta_ - 2.0 * mu * trace + n * mu**2) / n
    beta = np.minimum(beta, delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        shrinkage = np.where(beta == 0.0, 0.0, beta / np.where(beta == 0.0, 1.0, delta))
    out = (1.0 - shrinkage)[:, None, None] * emp
    diag = np.arange(n)
    out[:, diag, diag] += (shrinkage * mu)[:, None]
    return out


def ewma_cov_batch(
    returns_windows: np.ndarray, halflife: float, *, demean: bool = True
) -> np.ndarray:
    """``(B, N, N)``: :func:`ewma_cov` of each window (same weights, same bias correction)."""
    arr = _as_windows(returns_windows)
    halflife = float(halflife)
    if not math.isfinite(halflife) or halflife <= 0.0:
        raise ValueError(f"halflife must be a finite number of steps > 0, got {halflife}")
    t = arr.shape[1]
    weights = 0.5 ** (np.arange(t - 1, -1, -1, dtype=np.float64) / halflife)
    total = float(weights.sum())
    if not demean:
        return np.matmul((arr * weights[None, :, None]).transpose(0, 2, 1), arr) / total
    centered = arr - np.einsum("t,btn->bn", weights, arr)[:, None, :] / total
    norm = total - float(weights @ weights) / total
    return np.matmul((centered * weights[None, :, None]).transpose(0, 2, 1), centered) / norm


def shrunk_mean_batch(
    returns_windows: np.ndarray,
    target: Literal["zero", "grand_mean"] = "zero",
    shrinkage: float = 0.5,
) -> np.ndarray:
    """``(B, N)``: :func:`shrunk_mean` of each ``(T, N)`` window of ``returns_windows``."""
    arr = _as_windows(returns_windows)
    shrinkage = float(shrinkage)
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    mean = arr.mean(axis=1)
    if target == "zero":
        anchor = np.zeros_like(mean)
    elif target == "grand_mean":
        anchor = np.broadcast_to(mean.mean(axis=1, keepdims=True), mean.shape)
    else:
        raise ValueError(f"target must be 'zero' or 'grand_mean', got {target!r}")
    return (1.0 - shrinkage) * mean + shrinkage * anchor
