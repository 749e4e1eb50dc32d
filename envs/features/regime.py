"""Causal regime filter (Hamilton 1989): filtered regime probabilities from the returns up to ``t``.

With regimes ``k`` in (calm, bull, crash), the market model's per-step transition matrix ``P``
(``P[i, j] = P(k_t = j | k_{t-1} = i)``) and ``pi_0`` its stationary law, the filter is

    pi_{t|t-1} = pi_{t-1|t-1} P
    pi_{t|t}[k] = pi_{t|t-1}[k] f_k(r_t) / sum_j pi_{t|t-1}[j] f_j(r_t)

where ``r_t`` ``(N,)`` is the log return of the step that ends at ``t`` (the step whose regime the
market model labels ``regime[t]``) and ``f_k`` its density in regime ``k`` given the past:
mean ``mu_k = drift_const[k] + drift_vol_coef s_k - drift_var_coef s_k^2`` and covariance
``Sigma_k = diag(s_k) C_k diag(s_k)`` with ``s_k = vm[k] sqrt(h_t)``, ``h_t`` the GARCH forecast of
the step's variance made at ``t - 1`` and ``C_k`` the regime's shock correlation. With
``q_k = (r_t - mu_k)' Sigma_k^-1 (r_t - mu_k)`` and constants common to the regimes dropped,

* ``student_t`` (the market's shocks: unit-variance multivariate t, ``nu`` degrees of freedom):
  ``log f_k = -N log vm[k] - log det(L_k) - (nu + N) / 2 log(1 + q_k / (nu - 2))``;
* ``gaussian``: ``log f_k = -N log vm[k] - log det(L_k) - q_k / 2``

(``L_k`` the Cholesky factor of ``C_k``). Jumps are not in ``f_k``: the t density's heavy tails
absorb them, a Gaussian one reads a jump as a crash. Row ``t`` uses ``r_1 .. r_t`` only.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.features.model import RegimeModel

#: Floor on the likelihood ratio to the most likely regime, ``exp(-30)``: one step moves the odds
#: between two regimes by at most ``e^30 ~ 1e13`` (binds only for extreme moves under the Gaussian
#: emission), which keeps every probability positive and lets the recursion run unnormalized for
#: ``_RENORMALIZE_EVERY`` steps (it shrinks by at most ``e^-30`` a step: no underflow).
_MIN_LOG_RATIO = -30.0
_RENORMALIZE_EVERY = 8


def _emission_by_regime(r: np.ndarray, h: np.ndarray, model: RegimeModel) -> np.ndarray:
    """``log f_k`` ``(3, M)`` float64 of asset-major contiguous returns and forecasts ``(N, M)``.

    Elementwise operations on contiguous ``(M,)`` rows into preallocated buffers (no BLAS): a value
    does not depend on the batch it is computed in. ``q_k = |L_k^-1 y|^2`` with
    ``y = (r - mu_k) / s_k``.
    """
    n, m = r.shape
    sd = np.sqrt(h)
    s, y = np.empty_like(r), np.empty_like(r)
    acc, tmp, q = np.empty(m), np.empty(m), np.empty(m)
    out = np.empty((3, m))
    multiply = np.multiply
    for k in range(3):
        vm = float(model.vol_multiplier[k])
        multiply(sd, vm, out=s)
        # y = (r - mu) / s with mu = const + a s - b s^2, i.e. r - const + s (b s - a)
        multiply(s, model.drift_var_coef, out=y)
        y -= model.drift_vol_coef
        y *= s
        y += r
        y -= model.drift_const[k][:, None]
        y /= s
        inv = model.chol_inv[k]
        q.fill(0.0)
        for i in range(n):
            multiply(y[0], inv[i, 0], out=acc)
            for j in range(1, i + 1):
                acc += multiply(y[j], inv[i, j], out=tmp)
            q += np.square(acc, out=acc)
        log_norm = n * np.log(vm) + np.log(np.diag(model.chol[k])).sum()
        row = out[k]
        if model.emission == "gaussian":
            multiply(q, -0.5, out=row)
        else:
            nu = model.nu
            np.log1p(np.divide(q, nu - 2.0, out=row), out=row)
            row *= -0.5 * (nu + n)
        row -= log_norm
    return out


def emission_loglik(r: np.ndarray, h: np.ndarray, model: RegimeModel) -> np.ndarray:
    """``log f_k(r)`` ``(..., 3)`` up to a constant common to the regimes (see the module docstring).

    Args:
        r: ``(..., N)`` log returns of steps. h: ``(..., N)`` their GARCH variance forecasts (per step,
            made one step before).
    """
    lead = r.shape[:-1]
    n = r.shape[-1]
    flat_r = np.ascontiguousarray(r.reshape(-1, n).T)
    flat_h = np.ascontiguousarray(h.reshape(-1, n).T)
    return _emission_by_regime(flat_r, flat_h, model).T.reshape(*lead, 3)


def regime_filter(r: np.ndarray, h: np.ndarray, model: RegimeModel) -> np.ndarray:
    """Filtered regime probabilities ``(L, ..., 3)`` along time-major paths.

    Args:
        r: ``(L, ..., N)`` log returns, time first (``r[t]``: the step ending at ``t``; ``r[0]`` ignored).
        h: ``(L, ..., N)`` GARCH forecasts (:func:`defialloc.envs.features.garch.garch_forecast`: ``h[t]`` is
            the forecast made at ``t`` for step ``t + 1``).
        model: the regime model.

    Returns:
        float64 ``pi[t] = P(k_t | r_1 .. r_t)``, each row summing to 1; ``pi[0]`` is the prior.

    The recursion runs on ``alpha_t = (alpha_t-1 P) * lik_t`` (proportional to ``pi_t``), rescaled to
    sum 1 at every ``_RENORMALIZE_EVERY``-th row (counted from row 0, so a row does not depend on
    the rows after it), and every row is normalized at the end.
    """
    length, n = r.shape[0], r.shape[-1]
    lead = r.shape[1:-1]
    width = int(np.prod(lead, dtype=np.int64))
    # asset-major (N, (L - 1) W) for the densities; then regime-major rows (3, 1, W) per step, so
    # every operation runs on contiguous runs of W paths (no 3-long inner loops)
    steps_r = np.moveaxis(r[1:].reshape(length - 1, width, n), -1, 0).reshape(n, -1)
    steps_h = np.moveaxis(h[:-1].reshape(length - 1, width, n), -1, 0).reshape(n, -1)
    ll = _emission_by_regime(steps_r, steps_h, model).reshape(3, length - 1, width)
    ll -= ll.max(axis=0)
    np.maximum(ll, _MIN_LOG_RATIO, out=ll)
    lik = np.exp(ll, out=ll)
    # gain[t, i, j] = P_ij lik_t+1[j]: alpha_t+1[j] = sum_i alpha_t[i] gain[t, i, j]
    gain = model.transition[None, :, :, None] * lik.transpose(1, 0, 2)[:, None, :, :]
    alpha = np.empty((length, 3, 1, width))
    alpha[0] = model.initial[:, None, None]
    terms = np.empty((3, 3, width))
    total = np.empty((1, 1, width))
    multiply, add_up = np.multiply, np.add.reduce
    for t in range(1, length):
        cur = alpha[t]
        multiply(gain[t - 1], alpha[t - 1], out=terms)
        add_up(terms, axis=0, out=cur[:, 0])  # sum over i, in order
        if t % _RENORMALIZE_EVERY == 0:
            add_up(cur, axis=0, out=total, keepdims=True)
            cur /= total
    alpha /= alpha.sum(axis=1, keepdims=True)
    return np.moveaxis(alpha.reshape(length, 3, *lead), 1, -1)
