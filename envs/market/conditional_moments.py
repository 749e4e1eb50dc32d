"""True next-step moments of the synthetic market given its TRUE state at the decision time.

At decision time ``t`` the generator's state that matters for the step ``t -> t + 1`` is the current
regime ``k_t = i`` and the GARCH variance ``h_{t+1}`` of the next step (it depends on the shocks up to
``t`` only: ``MarketPaths.cond_var[:, t + 1]``). Given them, the next step's gross simple return
``X_a = P_{t+1, a} / P_{t, a}`` is a mixture over the next regime ``j ~ P_step[i, j]`` of

    log X = drift_j(h) + vm_j sqrt(h) x + J_j,    x multivariate Student-t (unit variance, corr C_j),

with ``J_j`` the generator's jump mixture (a common event with probability ``p_c[j]``, else each asset
on its own with ``p_i[j]``; ``N(m_a, s_a^2)`` log sizes, size correlation ``rho`` in a common event).

Moments, per next regime ``j`` (``s_a^2 = vm_j^2 h_a``):

* mean ``E[X_a | j] = 1 + expected_simple_return_step(j, h)`` (the drift convention; second order in
  the diffusion, exact for the jumps);
* second moment ``E[X_a X_b | j] = E[X_a|j] E[X_b|j] exp(vm_j^2 sqrt(h_a h_b) C_j[a, b]) M_j(a, b) /
  (M_j(a) M_j(b))`` with the EXACT joint jump moment generating function
  ``M_j(a, b) = E[exp(J_a + J_b)]`` and marginals ``M_j(a) = E[exp(J_a)]`` (independent diffusion and
  jumps; the diffusive factor is the lognormal (second-order) one, like the drift's compensation:
  the neglected Student-t fourth-moment term is ``~ (kappa - 3) sigma^4 / 24`` for a combination of
  variance ``sigma^2``, e.g. 2e-6 on a 1e-3 covariance: 0.2 %).

Mixture: ``mu = sum_j pi_j E[X | j] - 1`` and ``cov = sum_j pi_j Cov_j + sum_j pi_j (m_j - m)(m_j - m)'``
(within-regime covariance plus the dispersion of the regime means; the latter is 0 under the default
``arithmetic`` drift, whose mean is the same in every regime).

This generalizes :func:`defialloc.agents.baselines.oracle.true_moments_by_regime`, which fixes ``h`` at the
UNCONDITIONAL variance and matches the jumps by a lognormal approximation. Everything here is numpy
float64, vectorized over any batch of states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.market.config import MarketConfig
from defialloc.envs.market.synthetic_model import (
    expected_simple_return_step,
    jump_probability,
    model_of,
)


@dataclass(frozen=True)
class NextStepLaw:
    """Moments of the next step's gross simple returns ``X = P_{t+1} / P_t`` for a batch of states.

    ``...`` is the batch shape of the states (e.g. ``(B,)`` envs or ``(K, T)`` scenario steps).

    Attributes:
        prob: ``(..., 3)`` probability of each next regime ``j`` (row ``i`` of the step transition).
        mean_by_regime: ``(..., 3, N)`` ``E[X | j]`` (gross, about 1).
        cov_by_regime: ``(..., 3, N, N)`` ``Cov(X | j)``.
        mu: ``(..., N)`` expected SIMPLE return ``E[X] - 1`` per step.
        cov: ``(..., N, N)`` covariance of the simple returns per step.
    """

    prob: np.ndarray
    mean_by_regime: np.ndarray
    cov_by_regime: np.ndarray
    mu: np.ndarray
    cov: np.ndarray


def _jump_log_cross(market: MarketConfig) -> np.ndarray:
    """``(3, N, N)`` ``log M_j(a, b) - log M_j(a) - log M_j(b)`` of the generator's jump mixture.

    ``M_j(a, b) = p_c exp(m_a + m_b + (s_a^2 + s_b^2 + 2 rho s_a s_b) / 2) + (1 - p_c) E_a E_b`` for
    ``a != b`` (a common event moves both with correlated sizes, else each jumps on its own:
    ``E_a = 1 - p_i + p_i exp(m_a + s_a^2 / 2)``); on the diagonal ``E[exp(2 J_a)] = p_c exp(2 m_a +
    2 s_a^2) + (1 - p_c)(1 - p_i + p_i exp(2 m_a + 2 s_a^2))``. The event probabilities are the
    generator's float32 ones (``jump_probability``), as in ``DriftTerms.jump_log_mgf``.
    """
    syn, dt = market.synthetic, market.step_days
    assets = list(market.assets)
    p_c = jump_probability(syn.jumps.common_intensity_per_year.array(), dt).astype(np.float64)
    p_i = jump_probability(syn.jumps.idio_intensity_per_year.array(), dt).astype(np.float64)
    m = np.array([syn.jumps.mean_log[a] for a in assets])
    s = np.array([syn.jumps.std_log[a] for a in assets])
    rho = syn.jumps.size_correlation
    pc = p_c[:, None, None]
    single = np.exp(m + 0.5 * s * s)  # E[exp(J_a) | a jumps]
    own = 1.0 - p_i[:, None] + p_i[:, None] * single[None, :]  # (3, N) idiosyncratic only
    marginal = p_c[:, None] * single[None, :] + (1.0 - p_c[:, None]) * own  # M_j(a)
    var_sum = (s * s)[:, None] + (s * s)[None, :] + 2.0 * rho * np.outer(s, s)
    common = np.exp(m[:, None] + m[None, :] + 0.5 * var_sum)[None]  # (1, N, N)
    joint = pc * common + (1.0 - pc) * own[:, :, None] * own[:, None, :]
    double = np.exp(2.0 * m + 2.0 * s * s)  # E[exp(2 J_a) | a jumps]
    diag = np.arange(len(assets))
    joint[:, diag, diag] = p_c[:, None] * double + (1.0 - p_c[:, None]) * (
        1.0 - p_i[:, None] + p_i[:, None] * double
    )
    return np.log(joint) - np.log(marginal)[:, :, None] - np.log(marginal)[:, None, :]


def next_step_moments(
    market: MarketConfig, regime: np.ndarray, cond_var: np.ndarray
) -> NextStepLaw:
    """True moments of the next step's simple returns given the current regime and ``h_{t+1}``.

    Args:
        market: a ``source = synthetic`` market config (its generating parameters).
        regime: ``(...)`` integer current regime codes ``k_t`` (``REGIME_NAMES`` order).
        cond_var: ``(..., N)`` the next step's GARCH variance ``h_{t+1}`` per asset ((log return)^2 per
            step, before the regime's vol multiplier; ``MarketPaths.cond_var[:, t + 1]``), > 0.

    Returns:
        :class:`NextStepLaw` with the batch shape ``(...)`` of ``regime``.

    Raises:
        ValueError: a non-synthetic market, a regime code outside 0..2, or a ``cond_var`` of the wrong
            shape or not finite and > 0 (each naming the argument).
    """
    if market.source != "synthetic":
        raise ValueError(
            f"market.source={market.source!r}: next_step_moments needs the synthetic model's parameters"
        )
    n = len(market.assets)
    codes = np.asarray(regime)
    h = np.asarray(cond_var, dtype=np.float64)
    if h.shape != (*codes.shape, n):
        raise ValueError(f"cond_var has shape {h.shape}, expected {(*codes.shape, n)} (regime + N)")
    if not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError("cond_var must be finite and > 0 (a variance per step)")
    if codes.size and (codes.dtype.kind not in "iu" or codes.min() < 0 or codes.max() > 2):
        raise ValueError("regime must hold integer codes in 0..2 (calm, bull, crash)")
    model = model_of(market)
    syn = market.synthetic
    vm = syn.vol_multiplier.array()  # (3,) float64
    corr = syn.correlation.matrices(list(market.assets))  # (3, N, N)
    prob = model.transition[codes]  # (..., 3): row i of the step transition
    j = np.arange(3)
    h_j = np.broadcast_to(h[..., None, :], (*codes.shape, 3, n))
    mean_j = 1.0 + expected_simple_return_step(market, j, h_j)  # (..., 3, N)
    sd = np.sqrt(h)
    # vm_j^2 sqrt(h_a h_b) C_j[a, b]: the log covariance of the diffusion in next regime j
    diffusive = (
        (vm**2)[:, None, None] * corr * (sd[..., :, None] * sd[..., None, :])[..., None, :, :]
    )
    log_excess = diffusive + _jump_log_cross(market)  # (..., 3, N, N)
    cov_j = mean_j[..., :, None] * mean_j[..., None, :] * np.expm1(log_excess)
    mean = np.einsum("...j,...ja->...a", prob, mean_j)
    spread = mean_j - mean[..., None, :]
    cov = np.einsum("...j,...jab->...ab", prob, cov_j) + np.einsum(
        "...j,...ja,...jb->...ab", prob, spread, spread
    )
    return NextStepLaw(prob, mean_j, cov_j, mean - 1.0, cov)
