"""Backtest throughput of every registered baseline against equal weight (``defialloc bench baselines``).

Every policy runs :func:`defialloc.evaluation.rollout.run_policy` on the SAME ``K`` sampled market paths (the
test scenario seeds, ``env.horizon`` set to a short horizon), so the figures differ only by the
policy's own work. A backtest step is one decision for all ``K`` scenarios; ``ratio`` is a
policy's backtest steps/s over equal weight's (the cheapest policy, whose time is almost all env).
Runs are interleaved over ``repeats`` rounds and each policy's best round is kept: on a shared
machine the fastest run is the least disturbed one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.agents.baselines.policies import BASELINES, make_policy
from defialloc.agents.policy import MarketView, Policy
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.rollout import run_policy

REFERENCE = "equal_weight"
#: the goal: every baseline backtests at least this fraction of equal weight's steps/s
GOAL_RATIO = 0.2


class _Timed(Policy):
    """Delegates to ``policy`` and adds up the seconds spent in its ``act``."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name, self.lookback = policy.name, policy.lookback
        self.uses_oracle = policy.uses_oracle
        self.seconds = 0.0

    def reset(self, n_envs: int) -> None:
        self.policy.reset(n_envs)

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        start = time.perf_counter()
        actions = self.policy.act(observation, view)
        self.seconds += time.perf_counter() - start
        return actions


def bench_backtests(
    config: SimulationConfig | str | Path | None = None,
    *,
    scenarios: int = 64,
    horizon: int = 60,
    repeats: int = 3,
    policies: list[str] | None = None,
    params_path: str | Path | None = None,
) -> dict[str, Any]:
    """Backtest steps/s of each baseline and its ratio to equal weight's, on the same paths.

    Args:
        config: simulation config or YAML (default ``configs/default.yaml``).
        scenarios: ``K`` test scenarios per backtest (>= 1).
        horizon: backtest steps (overrides ``env.horizon``; >= 1).
        repeats: interleaved rounds; each policy's fastest is reported (>= 1).
        policies: baseline names (default: every registered baseline; the oracle only on a
            synthetic market). Equal weight is always run as the reference.
        params_path: baseline parameter YAML (default ``configs/evaluation/default.yaml``).

    Returns:
        ``{"config": {...}, "reference": "equal_weight", "goal_ratio": 0.2, "all_meet_goal": bool,
        "slowest": name, "policies": {name: {"steps_per_s", "env_steps_per_s", "ratio",
        "policy_ms_per_step", "seconds", "meets_goal", "diagnostics"}}}``; ``steps_per_s`` counts
        backtest steps (all ``K`` scenarios), ``env_steps_per_s`` scenario-steps.
    """
    for name, value in (("scenarios", scenarios), ("horizon", horizon), ("repeats", repeats)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    cfg = load_config(config, {"env.horizon": int(horizon)})
    synthetic = cfg.market.source == "synthetic"
    names = list(policies) if policies else [n for n in BASELINES if synthetic or "oracle" not in n]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known baselines: {', '.join(BASELINES)}")
    names = [REFERENCE, *(n for n in names if n != REFERENCE)]
    seeds = scenario_seeds("test", scenarios)
    warmup = cfg.env.warmup
    paths = sample_paths(cfg.market, seeds, warmup + cfg.env.horizon + 1, warmup)
    params = None if params_path is None else str(params_path)
    # one untimed run: imports, first-call allocations and caches
    run_policy(cfg, make_policy(REFERENCE, cfg, params_path=params), seeds, paths=paths)
    best: dict[str, tuple[float, float, dict[str, int]]] = {}
    for _ in range(int(repeats)):
        for name in names:
            timed = _Timed(make_policy(name, cfg, params_path=params))
            start = time.perf_counter()
            run_policy(cfg, timed, seeds, paths=paths)
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                diagnostics = dict(getattr(timed.policy, "diagnostics", {}) or {})
                best[name] = (seconds, timed.seconds, diagnostics)
    steps = cfg.env.horizon
    reference = steps / best[REFERENCE][0]
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        seconds, in_policy, diagnostics = best[name]
        ratio = steps / seconds / reference
        rows[name] = {
            "steps_per_s": round(steps / seconds, 1),
            "env_steps_per_s": round(scenarios * steps / seconds, 1),
            "ratio": round(ratio, 3),
            "policy_ms_per_step": round(1e3 * in_policy / steps, 3),
            "seconds": round(seconds, 4),
            "meets_goal": bool(ratio >= GOAL_RATIO),
            "diagnostics": diagnostics,
        }
    return {
        "config": {
            "market_source": cfg.market.source,
            "protocols": bool(cfg.env.protocols_enabled),
            "config_hash": cfg.config_hash(),
            "scenarios": int(scenarios),
            "horizon": int(steps),
            "repeats": int(repeats),
            "n_assets": len(cfg.market.assets),
        },
        "reference": REFERENCE,
        "goal_ratio": GOAL_RATIO,
        "all_meet_goal": all(row["meets_goal"] for row in rows.values()),
        "slowest": min(rows, key=lambda n: rows[n]["steps_per_s"]),
        "policies": rows,
    }


def print_backtest_bench(result: dict[str, Any], title: str = "") -> None:
    """Print :func:`bench_backtests`' result as a rich table."""
    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    table = Table(
        title=(
            f"{title or cfg['market_source']}: backtest steps/s, {cfg['scenarios']} scenarios x "
            f"{cfg['horizon']} steps, best of {cfg['repeats']}"
        ),
        caption=(
            f"ratio = steps/s / {result['reference']}'s (goal >= {result['goal_ratio']:g}); "
            "policy ms = time in the policy per backtest step"
        ),
    )
    table.add_column("policy", no_wrap=True)
    for column in ("steps/s", "env-steps/s", "ratio", "policy ms", "goal"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, row in result["policies"].items():
        table.add_row(
            name,
            f"{row['steps_per_s']:,.0f}",
            f"{row['env_steps_per_s']:,.0f}",
            f"{row['ratio']:.2f}",
            f"{row['policy_ms_per_step']:.2f}",
            "ok" if row["meets_goal"] else "MISS",
        )
    Console().print(table)
