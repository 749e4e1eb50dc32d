"""Choose baseline parameters on VALIDATION scenarios only (``defialloc tune-baselines``).

For each feasible baseline, every point of a small grid (:data:`GRIDS`; the parameters it does
not name keep their values in the evaluation YAML) runs on the same ``K`` validation scenarios
(``defialloc.envs.seeds.scenario_seeds("validation", K)``, paired: one set of market paths for every point),
and the point with the best mean objective wins:

- ``sharpe`` (default): the mean over scenarios of each scenario's annualized Sharpe ratio
  (``defialloc.evaluation.metrics.sharpe_ratio``, risk-free 0), the metric the baselines are compared on
  (``defialloc evaluate`` / ``compare``, whose primary metric is ``sharpe_ratio``): a baseline is
  tuned for the yardstick it is judged by. Sharpe is nearly blind to scale (a vol target or a
  leverage cap moves it only through costs and compounding), so the grid's risk levels are
  chosen on what they do to risk-adjusted returns, not on how much risk they take.
- ``log_growth``: the mean annualized log growth ``log(V_T / V_0) * 365 / (T * step_days)`` (the
  env's reward; a ruined scenario counts as ``V_T = 1e-9 V_0``). It rewards risk taking up to the
  Kelly point.

Ties go to the earlier grid point. Hygiene, asserted in code (:func:`assert_validation_only`):
every seed must be a validation seed (never a test one), and the market must not replay or
bootstrap data from the held-out period (``market.end >= 2023-01-01``) nor replay any real period
(a replayed period is one path; named periods are for reports). References (the oracle, any
``ceiling``: everything outside ``FEASIBLE_BASELINES``) are never tuned.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.agents.baselines.policies import (
    BASELINES,
    DEFAULT_PARAMS_PATH,
    FEASIBLE_BASELINES,
    PROTOCOL_BASELINES,
    make_policy,
)
from defialloc.envs.config import SimulationConfig
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.seeds import SEEDS_PER_SET, TEST_SEED_BASE, VALIDATION_SEED_BASE, scenario_seeds
from defialloc.evaluation import backtest
from defialloc.evaluation.backtest import HELD_OUT_START

#: The grids: ``{baseline: {parameter: values}}``; the points are their Cartesian product (the
#: last parameter varies fastest). Small on purpose (4-24 points: a grid search over 64 scenarios
#: can overfit them too), around the hand-set values, with the cheap schedules of the QP baselines
#: (a solve per env and rebalance). ``None`` = no cap. ``buy_and_hold`` has nothing to tune.
#: Ties go to the earlier point, so a safety parameter lists its most conservative value first
#: (``hf_floor``). The first run chose grid edges for equal_weight, equal_weight_band,
#: mean_variance and carry; those grids were widened past the edge once (validation only).
GRIDS: dict[str, dict[str, list[Any]]] = {
    "equal_weight": {"rebalance_every": [7, 30, 90, 365], "no_trade_band": [0.0, 0.02, 0.05, 0.1]},
    "min_variance": {
        "lookback": [31, 61],
        "rebalance_every": [7, 30],
        "max_weight": [0.5, None],
    },
    "max_sharpe": {
        "lookback": [31, 61],
        "mean_shrinkage": [0.5, 0.8, 1.0],
        "rebalance_every": [7, 30],
    },
    "mean_variance": {
        "risk_aversion": [0.5, 1.0, 2.0, 5.0],
        "mean_shrinkage": [0.8, 1.0],
        "rebalance_every": [7, 30],
    },
    "risk_parity": {
        "lookback": [31, 61],
        "cov_estimator": ["ledoit_wolf", "ewma"],
        "rebalance_every": [7, 30],
    },
    "static_tangency": {"max_weight": [None, 0.5, 0.35], "no_trade_band": [0.02, 0.05, 0.1]},
    "equal_weight_band": {"no_trade_band": [0.05, 0.1, 0.2, 0.3]},
    "inverse_vol": {
        "ewma_halflife": [10.0, 20.0, 40.0],
        "rebalance_every": [1, 7, 30],
        "no_trade_band": [0.02, 0.05],
    },
    "vol_target": {
        "base": ["equal", "inverse_vol"],
        "target_vol": [0.3, 0.5, 0.8],
        "ewma_halflife": [10.0, 20.0],
        "rebalance_every": [1, 7],
    },
    "levered_vol_target": {
        "base": ["equal", "inverse_vol"],
        "target_vol": [0.5, 0.8, 1.2],
        "hf_floor": [2.0, 1.6, 1.3],
    },
    "carry": {
        "base": ["equal", "inverse_vol"],
        "min_funding_annual": [0.2, 0.5, 1.0],
        "hedge_ratio": [0.25, 0.5, 1.0],
    },
}

OBJECTIVES = ("sharpe", "log_growth")


@dataclass
class TuningResult:
    """One baseline's grid search: every point's mean validation objective and the winner."""

    name: str
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]]
    scores: list[float]
    objective: str
    seeds: np.ndarray
    config_label: str
    horizon: int
    elapsed_s: float
    date: str = field(default_factory=lambda: dt.date.today().isoformat())

    @property
    def best_index(self) -> int:
        return int(np.nanargmax(np.asarray(self.scores, dtype=np.float64)))

    @property
    def chosen(self) -> dict[str, Any]:
        return dict(self.points[self.best_index])

    @property
    def best_score(self) -> float:
        return float(self.scores[self.best_index])

    def record(self) -> dict[str, Any]:
        """What the evaluation YAML keeps under ``tuning.<name>`` (plain YAML types)."""
        return {
            "date": self.date,
            "objective": f"{self.objective}: mean over the validation scenarios"
            + (
                " of the annualized Sharpe ratio"
                if self.objective == "sharpe"
                else " of the annualized log growth"
            ),
            "config": self.config_label,
            "scenario_set": "validation",
            "scenarios": int(self.seeds.size),
            "seeds": f"{int(self.seeds.min())}..{int(self.seeds.max())}",
            "horizon_steps": self.horizon,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "chosen": self.chosen,
            "score": round(self.best_score, 4),
            "scores": [round(float(s), 4) for s in self.scores],
        }


def assert_validation_only(seeds: np.ndarray, config: SimulationConfig) -> None:
    """Refuse anything but validation scenarios of a synthetic or pre-2023 market (module docstring).

    Raises:
        ValueError: a seed outside the validation set (test seeds named as such), a replayed
            market, or a bootstrap market that draws from the held-out period.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    test = (seeds >= TEST_SEED_BASE) & (seeds < TEST_SEED_BASE + SEEDS_PER_SET)
    if test.any():
        raise ValueError(
            f"tuning touched TEST scenario seeds {seeds[test][:5].tolist()}: parameters are chosen "
            "on validation scenarios only (envs.seeds.scenario_seeds('validation', n))"
        )
    outside = (seeds < VALIDATION_SEED_BASE) | (seeds >= VALIDATION_SEED_BASE + SEEDS_PER_SET)
    if outside.any():
        raise ValueError(
            f"seeds {seeds[outside][:5].tolist()} are not validation seeds "
            f"([{VALIDATION_SEED_BASE}, {VALIDATION_SEED_BASE + SEEDS_PER_SET}))"
        )
    market = config.market
    if market.source == "replay":
        raise ValueError(
            "tuning runs on validation scenarios, not on a replayed period (market.source=replay): "
            "periods, the held-out one above all, are for reports only"
        )
    if market.source == "bootstrap" and (market.end is None or market.end >= HELD_OUT_START):
        raise ValueError(
            f"market.end={market.end}: a bootstrap market for tuning must end before "
            f"{HELD_OUT_START} (the held-out period)"
        )


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a grid, last parameter fastest; ``{}`` is one point (nothing varies)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def annual_log_growth(record: Any) -> np.ndarray:
    """``(K,)`` annualized log growth ``log(V_T / V_0) * 365 / (T * step_days)`` of each scenario of
    an :class:`~defialloc.evaluation.rollout.EpisodeRecord` (a ruined one counts as ``V_T = 1e-9 V_0``)."""
    v0, vt = record.value_usd[:, 0], record.value_usd[:, -1]
    years = record.horizon * record.step_days / 365.0
    return np.log(np.maximum(vt, 1e-9 * v0) / v0) / years


def tunable(config: SimulationConfig, names: Sequence[str] | None = None) -> list[str]:
    """The baselines to tune: ``names`` checked, or every feasible one with a grid that ``config``
    supports (the lending/perps ones only where the config has them)."""
    if names is None:
        spot_only = not (config.env.lending.enabled or config.env.perps.enabled)
        return [
            n
            for n in FEASIBLE_BASELINES
            if n in GRIDS and not (spot_only and n in PROTOCOL_BASELINES)
        ]
    for n in names:
        if n not in BASELINES:
            raise ValueError(f"unknown baseline {n!r}; known: {', '.join(BASELINES)}")
        if n not in FEASIBLE_BASELINES:
            raise ValueError(f"{n} is a reference, not a strategy: it is never tuned")
        if n not in GRIDS:
            raise ValueError(f"{n} has no parameter grid (nothing to tune); tunable: {list(GRIDS)}")
    return list(names)


def tune_baselines(
    config: SimulationConfig,
    names: Sequence[str] | None = None,
    n_scenarios: int = 64,
    *,
    objective: str = "sharpe",
    workers: int = 1,
    params_path: str | Path | None = None,
    config_label: str = "",
    grids: dict[str, dict[str, list[Any]]] | None = None,
    progress: bool = False,
    on_result: Callable[[TuningResult], None] | None = None,
) -> dict[str, TuningResult]:
    """Grid-search the baselines ``names`` (default: :func:`tunable`) on validation scenarios.

    Args:
        config: simulation config (synthetic or pre-2023 bootstrap market).
        n_scenarios: validation scenarios ``K`` (the first ``K`` of the validation set).
        objective: ``"sharpe"`` or ``"log_growth"`` (module docstring).
        workers: processes per grid (``run_backtest``'s; results do not depend on it).
        params_path: the evaluation YAML whose parameters the grid overrides.
        config_label: what to record as the config (e.g. its path).
        grids: replaces :data:`GRIDS` (tests).
        on_result: called with each baseline's result as soon as it is done (progress output).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    grids = GRIDS if grids is None else grids
    names = tunable(config, names) if grids is GRIDS else list(names or grids)
    seeds = scenario_seeds("validation", n_scenarios)
    assert_validation_only(seeds, config)
    warmup = config.env.warmup
    paths = sample_paths(config.market, seeds, warmup + config.env.horizon + 1, warmup)
    params_path = str(params_path or DEFAULT_PARAMS_PATH)
    results: dict[str, TuningResult] = {}
    for name in names:
        start = time.perf_counter()
        points = grid_points(grids[name])
        policies = []
        for i, point in enumerate(points):
            policy = make_policy(name, config, params_path=params_path, **point)
            policy.name = f"{name}#{i}"
            policies.append(policy)
        assert_validation_only(seeds, config)  # again, right before the only backtest call
        result = backtest.run_backtest(
            config,
            policies,
            seeds,
            workers=workers,
            progress=progress,
            params_path=params_path,
            scenario_set="validation",
            paths=paths,
        )
        if objective == "sharpe":
            table = result.metrics_table()
            means = table.groupby("policy", sort=False)["sharpe_ratio"].mean()
            scores = [float(means[p.name]) for p in policies]
        else:
            scores = [float(np.mean(annual_log_growth(result.records[p.name]))) for p in policies]
        results[name] = TuningResult(
            name=name,
            grid=grids[name],
            points=points,
            scores=scores,
            objective=objective,
            seeds=seeds,
            config_label=config_label,
            horizon=config.env.horizon,
            elapsed_s=time.perf_counter() - start,
        )
        if on_result is not None:
            on_result(results[name])
    return results
