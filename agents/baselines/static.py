"""``static_tangency``: the long-only max-Sharpe portfolio of the calibrated training-period moments.

A feasible strategy, not a reference: a trader who fitted the market model on pre-2023 data (the
calibration behind ``configs/market/default.yaml``) knows its UNCONDITIONAL moments and nothing
about the current state. The policy computes once, at construction, the model-implied mean and
covariance of one step's simple returns in the stationary regime mix
(:func:`unconditional_moments`), solves the long-only tangency portfolio on them
(:func:`defialloc.agents.baselines.optimizers.solve_max_sharpe`, capped at ``max_weight``, risky budget
``1 - cash_weight``), and then only keeps those weights: checked every ``rebalance_every`` steps
(default every step), traded when some weight has drifted by at least ``no_trade_band``.

On a replayed or bootstrapped market it still uses the config's ``market.synthetic`` section (the
calibration), never the replayed prices. ``defialloc evaluate --period NAME`` keeps the calibrated
section of ``--config``; a market config without one (``configs/market/replay_heldout.yaml`` on
its own) gets the package's default synthetic parameters, which are not a fit: a warning says so.

Unlike ``oracle_mean_variance`` (:mod:`defialloc.agents.baselines.oracle`) it is never told the regime.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pydantic import Field

from defialloc.agents.baselines.optimizers import SolverFallbackWarning, solve_max_sharpe
from defialloc.agents.baselines.oracle import true_moments_by_regime
from defialloc.agents.baselines.policies import BaselinePolicy
from defialloc.agents.baselines.risk_based import BandParams
from defialloc.agents.policy import MarketView
from defialloc.envs.config import SimulationConfig
from defialloc.envs.market.config import MarketConfig, SyntheticParams


class StaticTangencyParams(BandParams):
    """Band rebalancing toward fixed tangency weights; ``risk_free`` per step, like the moments."""

    risk_free: float = Field(default=0.0, ge=-0.01, le=0.01, description="per step")


def mixture_moments(
    prob: np.ndarray, mu: np.ndarray, cov: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(N,)`` and covariance ``(N, N)`` of a mixture: component ``k`` with probability
    ``prob[k]`` ``(K,)``, mean ``mu[k]`` ``(K, N)`` and covariance ``cov[k]`` ``(K, N, N)``.

    Law of total variance: ``cov = sum_k p_k (cov_k + mu_k mu_k') - mean mean'``.
    """
    p = np.asarray(prob, dtype=np.float64)
    mean = p @ mu
    second = np.einsum("k,kab->ab", p, cov + mu[:, :, None] * mu[:, None, :])
    return mean, second - np.outer(mean, mean)


def unconditional_moments(market: MarketConfig) -> tuple[np.ndarray, np.ndarray]:
    """Model-implied unconditional per-step SIMPLE-return mean ``(N,)`` and covariance ``(N, N)``.

    :func:`defialloc.agents.baselines.oracle.true_moments_by_regime` gives the next step's moments given the
    current regime; averaged over the stationary law of the regime chain (the long-run share of
    each regime, which a trader without a regime signal faces) they are the unconditional moments.
    """
    missing = market.synthetic.missing_assets(list(market.assets))
    if missing:
        raise ValueError(
            f"static_tangency needs the calibrated synthetic parameters of every asset; the market "
            f"config lacks {', '.join(missing)}"
        )
    mu_k, cov_k = true_moments_by_regime(market)
    return mixture_moments(market.synthetic.stationary_distribution(), mu_k, cov_k)


class StaticTangencyPolicy(BaselinePolicy):
    """Long-only tangency of the calibrated unconditional moments, held with a drift band."""

    name = "static_tangency"
    params_model = StaticTangencyParams
    #: make_policy passes the simulation config (the calibration lives there)
    needs_config = True

    def __init__(
        self, n_assets: int, config: SimulationConfig, name: str | None = None, **params: Any
    ) -> None:
        super().__init__(n_assets, name=name, **params)
        market = config.market
        if market.source != "synthetic" and market.synthetic == SyntheticParams():
            warnings.warn(
                f"{self.name}: market.source={market.source!r} with the package's default "
                "synthetic parameters (not a calibration); pass a config with the calibrated "
                "market.synthetic section, e.g. --config configs/default.yaml --period NAME",
                UserWarning,
                stacklevel=2,
            )
        self.mu, self.cov = unconditional_moments(market)
        p: StaticTangencyParams = self.params  # type: ignore[assignment]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SolverFallbackWarning)  # counted in diagnostics
            weights, info = solve_max_sharpe(
                self.mu, self.cov, p.risk_free, max_weight=p.max_weight, budget=self.budget
            )
        self._count(info)
        #: ``(N + 1,)`` the fixed target, cash last
        self.weights = self._with_cash(weights[None, :])[0]

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.weights, (index.size, self.n_assets + 1)).copy()
