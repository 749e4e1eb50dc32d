"""The oracle mean-variance: a REGIME-INFORMED REFERENCE, NOT A BOUND.

It is told what no real strategy can know (the scenario's true current regime,
``MarketView.oracle["regime"]``, and the synthetic model's parameters) but it is not an upper bound
on anything: it uses each asset's UNCONDITIONAL (long-run) GARCH variance instead of the conditional
one, a fixed risk aversion and a turnover penalty, so a feasible strategy can beat it (a static
long-only tangency portfolio on calibrated moments scored a higher Sharpe, if not significantly).
The bound is the true ceiling, :mod:`defialloc.agents.baselines.ceiling`. :class:`OracleMeanVariancePolicy`
solves the same cost-aware mean-variance utility as ``mean_variance`` (see
:mod:`defialloc.agents.baselines.policies`) on the moments of :func:`true_moments_by_regime`. It is only valid on ``market.source = synthetic``; the registry lists
it as ``oracle_mean_variance`` in ``UPPER_REFERENCES``, outside ``FEASIBLE_BASELINES``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from defialloc.agents.baselines.batch_inputs import prepare_cov_batch
from defialloc.agents.baselines.batch_optimizers import mean_variance_prepared
from defialloc.agents.baselines.cash import cash_prev, mean_variance_with_cash, with_cash
from defialloc.agents.baselines.constraints import make_constraints
from defialloc.agents.baselines.optimizers import SolverFallbackWarning
from defialloc.agents.baselines.policies import (
    BaselineParams,
    BaselinePolicy,
    UtilityParams,
    _penalty,
)
from defialloc.agents.policy import MarketView
from defialloc.envs.config import SimulationConfig
from defialloc.envs.market.config import DAYS_PER_YEAR, MarketConfig
from defialloc.envs.market.synthetic_model import expected_simple_return_step, step_transition


class OracleParams(BaselineParams, UtilityParams):
    """True moments + quadratic utility (no estimation window)."""


def true_moments_by_regime(market: MarketConfig) -> tuple[np.ndarray, np.ndarray]:
    """True next-step SIMPLE-return moments given the current regime (upper-reference oracle).

    Returns ``(mu, cov)`` with ``mu[i]`` ``(N,)`` and ``cov[i]`` ``(N, N)``: the moments of the next
    step's simple returns given that the CURRENT regime is ``i``, under the synthetic model of
    ``envs/market/synthetic.py``: a mixture over the next regime ``j ~ P_step[i, j]`` of per-regime
    laws, with ``h`` each asset's UNCONDITIONAL GARCH variance (the oracle is not told the conditional
    one). Means: the model-implied expected simple return under the config's drift convention,
    :func:`defialloc.envs.market.synthetic_model.expected_simple_return_step` at ``(j, h)`` (arithmetic: the same
    in every regime; sharpe: ``exp(S sqrt(dt/365) vm_j sqrt(h)) - 1``; log: ``drift_j`` in log terms,
    jumps compensated in log terms). Covariances: log covariance ``vm_j^2 sqrt(h h') C_j + jump
    covariance`` turned into simple-return covariance by lognormal moment matching around those means
    (exact for the diffusive part, an approximation with jumps).
    """
    p = market.synthetic
    assets = list(market.assets)
    dt = market.step_days
    h_bar = np.array([p.garch[a].unconditional_variance_daily for a in assets]) * dt
    vm = p.vol_multiplier.array()  # (3,)
    corr = p.correlation.matrices(assets)  # (3, N, N)
    sd = np.sqrt(h_bar)
    diff_cov = vm[:, None, None] ** 2 * corr * np.outer(sd, sd)[None]
    to_prob = dt / DAYS_PER_YEAR
    p_c = -np.expm1(-p.jumps.common_intensity_per_year.array() * to_prob)  # (3,)
    p_i = -np.expm1(-p.jumps.idio_intensity_per_year.array() * to_prob)
    m = np.array([p.jumps.mean_log[a] for a in assets])
    s = np.array([p.jumps.std_log[a] for a in assets])
    rho = p.jumps.size_correlation
    q = p_c + (1.0 - p_c) * p_i  # P(asset jumps in a step)
    mm, ss = np.outer(m, m), np.outer(s, s)
    # E[J_a J_b]: a common event (sizes correlated rho) or two independent idiosyncratic jumps
    cross = p_c[:, None, None] * (mm + rho * ss) + ((1.0 - p_c) * p_i**2)[:, None, None] * mm
    second = q[:, None] * (m**2 + s**2)
    jump_cov = cross - (q[:, None, None] ** 2) * mm
    diag = np.arange(len(assets))
    jump_cov[:, diag, diag] = second - (q[:, None] * m) ** 2
    log_cov = diff_cov + jump_cov
    # E[P'/P] - 1 in each next regime j at the unconditional variance, under the drift convention
    h_next = np.broadcast_to(h_bar, (3, len(assets)))  # row j: next regime j
    simple_mu = expected_simple_return_step(market, np.arange(3), h_next)
    growth = 1.0 + simple_mu  # (3, N)
    simple_cov = growth[:, :, None] * growth[:, None, :] * np.expm1(log_cov)
    trans = step_transition(p.transition_array(), dt)  # (3, 3): current -> next
    mu = trans @ simple_mu
    second_moment = simple_cov + simple_mu[:, :, None] * simple_mu[:, None, :]
    cov = np.einsum("ij,jab->iab", trans, second_moment) - mu[:, :, None] * mu[:, None, :]
    return mu, cov


class OracleMeanVariancePolicy(BaselinePolicy):
    """REGIME-INFORMED REFERENCE, NOT A BOUND (and not a feasible strategy): mean-variance on the
    next-step moments given the TRUE regime, at the long-run variance.

    It is told each env's true current regime (``MarketView.oracle["regime"]``; it ignores the
    rest of the true state the rollout passes) and knows the synthetic model's parameters, so its
    moments are the model's mean and covariance of the next step's simple returns given that regime
    at the UNCONDITIONAL GARCH variance (see :mod:`defialloc.agents.baselines.oracle`). Only valid on
    ``market.source = synthetic``.
    """

    name = "oracle_mean_variance"
    uses_oracle = True
    params_model = OracleParams
    #: one batched solve for all due envs (False: a Python loop over envs, the tested reference)
    batched: bool = True

    def __init__(
        self, n_assets: int, config: SimulationConfig, name: str | None = None, **params: Any
    ):
        super().__init__(n_assets, name=name, **params)
        if config.market.source != "synthetic":
            raise ValueError(
                f"{self.name} needs market.source='synthetic' (true parameters), got "
                f"{config.market.source!r}; leave it out of replay/bootstrap evaluations"
            )
        self.mu_by_regime, self.cov_by_regime = true_moments_by_regime(config.market)
        # the per-regime problems never change: validate and scale their covariances once here,
        # not on every rebalance (the batched path indexes the prepared matrices by regime)
        p: OracleParams = self.params  # type: ignore[assignment]
        mu, cov = self.mu_by_regime, self.cov_by_regime
        if p.allow_cash:
            mu, cov, _ = with_cash(mu, cov, np.zeros_like(mu), self.budget)
        self._mu_problem = mu
        self._hessian, self._scale, self._status = prepare_cov_batch(cov)
        self._constraints = make_constraints(
            mu.shape[1],
            long_only=True,
            max_weight=p.max_weight,
            budget=self.budget,
            max_gross_leverage=None,
        )

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        if view.oracle is None or "regime" not in view.oracle:
            raise ValueError(f"{self.name} needs MarketView.oracle['regime'] (uses_oracle=True)")
        regime = np.asarray(view.oracle["regime"])[index]
        p: OracleParams = self.params  # type: ignore[assignment]
        if self.batched:
            r = regime.astype(np.intp)
            prev = cash_prev(current[:, :-1], self.budget) if p.allow_cash else current[:, :-1]
            weights, batch_info = mean_variance_prepared(
                self._mu_problem[r],
                self._hessian[r],
                self._scale[r],
                self._status[r],
                p.risk_aversion,
                self._constraints,
                prev,
                _penalty(p),
            )
            self._count_batch(batch_info)
            return self._with_cash(weights[:, : self.n_assets])
        risky = np.empty((index.size, self.n_assets))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SolverFallbackWarning)  # counted in diagnostics
            for j in range(index.size):
                r = int(regime[j])
                risky[j], info = mean_variance_with_cash(
                    self.mu_by_regime[r],
                    self.cov_by_regime[r],
                    p.risk_aversion,
                    budget=self.budget,
                    prev_risky=current[j, :-1],
                    max_weight=p.max_weight,
                    turnover_penalty=_penalty(p),
                    allow_cash=p.allow_cash,
                )
                self._count(info)
        return self._with_cash(risky)
