"""Run a policy on a batch of market paths and record every step (the core of all backtests).

All ``K`` scenarios run side by side in one batched simulator, so every policy given the same seeds
sees exactly the same market paths (paired comparisons). Nothing resets mid-run: an env that is
ruined stays flat (its later steps are masked out by ``alive``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.policy import MarketView, Policy
from envs.config import SimulationConfig
from envs.market.paths import MarketPaths
from envs.simulator import PortfolioSimulator


@dataclass
class EpisodeRecord:
    """Per-step series of one policy on ``K`` scenarios over ``T`` steps (arrays ``(K, T, ...)``).

    ``value_usd[:, 0]`` is the initial value; ``value_usd[:, t+1]`` the value after step ``t``.
    """

    policy: str
    seeds: np.ndarray
    asset_names: tuple[str, ...]
    value_usd: np.ndarray  # (K, T+1)
    weights: np.ndarray  # (K, T, N+1) weights after trading at each decision time... before the move
    fees_usd: np.ndarray  # (K, T)
    slippage_usd: np.ndarray
    gas_usd: np.ndarray
    turnover: np.ndarray
    regime: np.ndarray  # (K, T) regime codes during each step's move
    regime_names: tuple[str, ...]
    alive: np.ndarray  # (K, T) bool: the env had not been ruined before this step
    step_days: float
    dates: np.ndarray | None = None

    @property
    def returns(self) -> np.ndarray:
        """Per-step simple returns ``(K, T)`` net of every cost."""
        return self.value_usd[:, 1:] / self.value_usd[:, :-1] - 1.0


def run_policy(
    config: SimulationConfig,
    policy: Policy,
    seeds: np.ndarray,
    paths: MarketPaths | None = None,
) -> EpisodeRecord:
    """Run ``policy`` for one full episode on each scenario ``seeds[k]`` (or on the given ``paths``)."""
    seeds = np.asarray(seeds, dtype=np.int64)
    k = len(seeds) if paths is None else paths.n_paths
    sim = PortfolioSimulator(config, n_envs=k)
    sim.reset_envs(np.arange(k), seeds, paths=paths)
    policy.reset(k)
    horizon, n = sim.horizon, sim.n_assets
    value = np.empty((k, horizon + 1))
    value[:, 0] = sim.value
    weights = np.empty((k, horizon, n + 1))
    series = {name: np.zeros((k, horizon)) for name in ("fees", "slippage", "gas", "turnover")}
    regime = np.zeros((k, horizon), dtype=np.int8)
    alive = np.ones((k, horizon), dtype=bool)
    dead = np.zeros(k, dtype=bool)
    lookback = max(1, min(policy.lookback, sim.warmup + 1))
    for t in range(horizon):
        price, num = sim.prices_now()
        view = MarketView(sim.asset_names, sim.trailing_prices(lookback), sim.weights(price, num, sim.value),
                          sim.t.copy(), config.market.step_days)
        actions = np.asarray(policy.act(sim.observe(), view), dtype=np.float64)
        result = sim.step(actions)
        weights[:, t] = sim.weights(price, num, np.maximum((sim.units * price).sum(1) + sim.cash * num, 1e-300))
        alive[:, t] = ~dead
        value[:, t + 1] = np.where(dead, value[:, t], result.value_usd)
        live = ~dead
        series["fees"][:, t] = np.where(live, result.costs.fees_usd, 0.0)
        series["slippage"][:, t] = np.where(live, result.costs.slippage_usd, 0.0)
        series["gas"][:, t] = np.where(live, result.costs.gas_usd, 0.0)
        series["turnover"][:, t] = np.where(live, result.turnover, 0.0)
        regime[:, t] = result.regime
        dead = dead | result.terminated
    dates = None if sim.dates is None else sim.dates[:, sim.warmup + 1 : sim.warmup + horizon + 1]
    return EpisodeRecord(
        policy=policy.name,
        seeds=seeds,
        asset_names=sim.asset_names,
        value_usd=value,
        weights=weights,
        fees_usd=series["fees"],
        slippage_usd=series["slippage"],
        gas_usd=series["gas"],
        turnover=series["turnover"],
        regime=regime,
        regime_names=sim.regime_names,
        alive=alive,
        step_days=config.market.step_days,
        dates=dates,
    )
