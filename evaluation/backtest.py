"""Paired multi-scenario backtests of several policies, on synthetic scenarios or a replayed period.

Every policy runs on the SAME market paths: the paths of each chunk of scenario seeds are sampled
once and handed to every policy, so the comparison is paired scenario by scenario. Seeds must be
evaluation seeds (``defialloc.envs.seeds.scenario_seeds``), never training ones. The work is split into tasks
(policy x seed chunk) defined independently of ``workers``, and each task builds or copies its own
policy (and wraps it in its own kill-switch, when one is asked for), so ``workers=N`` gives exactly
the numbers of ``workers=1``.
"""

from __future__ import annotations

import copy
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defialloc.agents.baselines.policies import DEFAULT_PARAMS_PATH, UPPER_REFERENCES, make_policy
from defialloc.agents.kill_switch_policy import KillSwitchPolicy
from defialloc.agents.policy import Policy
from defialloc.envs.config import SimulationConfig, format_validation_error, load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.seeds import check_evaluation_seeds
from defialloc.evaluation import backtest_cache
from defialloc.evaluation.ex_ante import ExAnte, ex_ante_of_chunks, position_and_ex_ante_columns
from defialloc.evaluation.greek_ranges import greek_metrics
from defialloc.evaluation.metrics import periods_per_year_from_step, summarize_returns
from defialloc.evaluation.progress import progress_bar
from defialloc.evaluation.rollout import EpisodeRecord, run_policy

HELD_OUT_START = date(2023, 1, 1)
#: extras names (as the env reports them) -> summarize_returns argument
EXTRA_METRIC_ARGS = {
    "liquidations": "liquidations_count",
    "liquidations_count": "liquidations_count",
    "liquidations_usd": "liquidations_usd",
    "kill_switch": "kill_switch_active",
    "kill_switch_active": "kill_switch_active",
}


# ------------------------------------------------------------------------------------ config
class PeriodSpec(BaseModel):
    """A named real period: decisions from ``start`` to the day before ``end`` (both dates in data)."""

    model_config = ConfigDict(extra="forbid")
    start: date
    end: date

    @property
    def held_out(self) -> bool:
        return self.end >= HELD_OUT_START

    @property
    def n_steps(self) -> int:
        """Daily steps from the close of ``start`` to the close of ``end``."""
        return (self.end - self.start).days


class EvaluationConfig(BaseModel):
    """``configs/evaluation/default.yaml`` minus the ``policies`` section (read by make_policy)."""

    model_config = ConfigDict(extra="forbid")
    policies_to_run: list[str] = Field(default_factory=lambda: ["equal_weight", "min_variance"])
    scenario_set: str = Field(default="test", pattern="^(test|validation)$")
    scenarios: int = Field(default=64, ge=1, le=100_000)
    workers: int = Field(default=1, ge=1, le=256)
    #: None: the default experiment every command shares (agents.mlflow_store.default_experiment)
    experiment: str | None = None
    periods: dict[str, PeriodSpec] = Field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: the policy-side kill-switch (agents/kill_switch_policy.py): its parameters, and whether
    #: ``defialloc evaluate`` wraps every policy in it without ``--kill-switch`` (off by default)
    kill_switch: KillSwitchConfig = Field(default_factory=KillSwitchConfig)
    #: records of ``defialloc tune-baselines`` (evaluation/tuning.py): how each policy's parameters
    #: were chosen on validation scenarios; informational, read by nothing else
    tuning: dict[str, Any] = Field(default_factory=dict)


def load_evaluation_config(path: str | Path | None = None) -> EvaluationConfig:
    """Read and validate an evaluation YAML (default ``configs/evaluation/default.yaml``)."""
    file = Path(path or DEFAULT_PARAMS_PATH)
    if not file.is_file():
        raise ValueError(f"evaluation config not found: {file}")
    data = yaml.safe_load(file.read_text()) or {}
    try:
        return EvaluationConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{file}: " + format_validation_error(exc)) from None


def resolve_period(name: str, eval_config: EvaluationConfig | None = None) -> PeriodSpec:
    """The :class:`PeriodSpec` called ``name`` in the evaluation config (e.g. ``heldout_2023``)."""
    periods = (eval_config or load_evaluation_config()).periods
    if name not in periods:
        raise ValueError(f"unknown period {name!r}; named periods: {', '.join(sorted(periods))}")
    return periods[name]


# ------------------------------------------------------------------------------------ result
@dataclass
class BacktestResult:
    """Per-policy :class:`EpisodeRecord` on the same ``K`` scenarios.

    ``scenario_set`` names where the scenarios came from (``"test"``, ``"validation"``, ``"custom"``
    or ``"period:<name>"``); ``period`` holds the replayed period's name and dates, if any;
    ``policy_params`` each policy's resolved parameters (baselines; {} for other policies);
    ``kill_switch`` the parameters of the kill-switch every policy ran behind (None: off);
    ``ex_ante_detail`` the per-step ex-ante growth of every policy and of the true ceiling on the
    same states (:mod:`defialloc.evaluation.ex_ante`; synthetic markets only, None otherwise).
    """

    config: SimulationConfig
    records: dict[str, EpisodeRecord]
    seeds: np.ndarray
    scenario_set: str
    period: dict[str, str] | None = None
    elapsed_s: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, dict[str, int]] = field(default_factory=dict)
    policy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    kill_switch: KillSwitchConfig | None = None
    ex_ante_detail: ExAnte | None = None

    @property
    def ex_ante(self) -> dict[str, np.ndarray]:
        """Policy -> ``(K,)`` mean ex-ante log growth per live step (synthetic; else ``{}``)."""
        return {} if self.ex_ante_detail is None else self.ex_ante_detail.means()

    @property
    def ex_ante_ceiling(self) -> np.ndarray | None:
        """``(K,)`` the true ceiling's mean ex-ante log growth per step on the same states."""
        return None if self.ex_ante_detail is None else self.ex_ante_detail.ceiling_means()

    @property
    def policies(self) -> list[str]:
        return list(self.records)

    @property
    def periods_per_year(self) -> float:
        return periods_per_year_from_step(self.config.market.step_days)

    @property
    def held_out(self) -> bool:
        return bool(self.period and date.fromisoformat(self.period["end"]) >= HELD_OUT_START)

    def metrics_table(self, risk_free: float = 0.0, level: float = 0.95) -> pd.DataFrame:
        """One row per (policy, scenario): seed, final value and every metric of summarize_returns.

        Costs by kind are per-scenario totals in USD; turnover is one-sided. ``risk_free`` is per step.
        """
        rows = []
        ppy = self.periods_per_year
        ex_ante, ceiling = self.ex_ante, self.ex_ante_ceiling
        for name, rec in self.records.items():
            returns = rec.returns
            for k in range(rec.n_scenarios):
                extra = {
                    EXTRA_METRIC_ARGS[key]: np.nan_to_num(series[k].astype(np.float64))
                    for key, series in rec.extras.items()
                    if key in EXTRA_METRIC_ARGS
                }
                metrics = summarize_returns(
                    returns[k],
                    ppy,
                    risk_free=risk_free,
                    level=level,
                    turnover_per_period=rec.turnover[k],
                    costs_usd={kind: c[k] for kind, c in rec.costs_usd.items()},
                    **extra,
                )
                if (
                    "health_factor" in rec.extras
                ):  # lowest HF over the episode (inf: never borrowed)
                    metrics["min_health_factor"] = float(np.nanmin(rec.extras["health_factor"][k]))
                extras_k = {key: series[k] for key, series in rec.extras.items()}
                metrics.update(greek_metrics(extras_k, rec.value_usd[k, 1:], rec.alive[k]))
                if ceiling is not None:  # per step, log units (docs/evaluation.md, ex-ante growth)
                    metrics["ex_ante_log_growth"] = float(ex_ante[name][k])
                    metrics["ex_ante_ceiling_log_growth"] = float(ceiling[k])
                rows.append(
                    {
                        "policy": name,
                        "scenario": k,
                        "seed": int(rec.seeds[k]) if k < len(rec.seeds) else k,
                        "final_value_usd": float(rec.value_usd[k, -1]),
                        "ruined": bool(
                            rec.ruined[k] if rec.ruined is not None else not rec.alive[k, -1]
                        ),
                        **metrics,
                    }
                )
        return pd.DataFrame(rows)

    def series_frame(self) -> pd.DataFrame:
        """Long per-step table (policy, scenario, step): value, return, weights, costs, extras."""
        frames = []
        for name, rec in self.records.items():
            k, t = rec.turnover.shape
            cols: dict[str, Any] = {
                "policy": np.full(k * t, name),
                "scenario": np.repeat(np.arange(k), t),
                "seed": np.repeat(rec.seeds[:k] if len(rec.seeds) >= k else np.arange(k), t),
                "step": np.tile(np.arange(t), k),
            }
            if rec.dates is not None:
                cols["date"] = rec.dates.reshape(-1)
            cols["value_usd"] = rec.value_usd[:, 1:].reshape(-1)
            cols["return"] = rec.returns.reshape(-1)
            for i, asset in enumerate((*rec.asset_names, "cash")):
                cols[f"w_{asset}"] = rec.weights[:, :, i].reshape(-1)
            for kind, series in rec.costs_usd.items():
                cols[f"cost_{kind}_usd"] = series.reshape(-1)
            cols["turnover"] = rec.turnover.reshape(-1)
            names = np.asarray(rec.regime_names or ("",), dtype=object)
            cols["regime"] = names[np.clip(rec.regime, 0, len(names) - 1)].reshape(-1)
            cols["alive"] = rec.alive.reshape(-1)
            for key, series in rec.extras.items():
                cols[key] = series.reshape(-1)
            cols |= position_and_ex_ante_columns(rec, self.ex_ante_detail, name)
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------ running
def _policy_label(spec: str | Policy) -> str:
    return spec if isinstance(spec, str) else spec.name


def _policy_params(
    spec: str | Policy, config: SimulationConfig, params_path: str | None
) -> dict[str, Any]:
    """The resolved parameters of a policy (pydantic ``params`` of the baselines; {} otherwise)."""
    policy = make_policy(spec, config, params_path=params_path) if isinstance(spec, str) else spec
    params = getattr(policy, "params", None)
    return params.model_dump(mode="json") if isinstance(params, BaseModel) else {}


def _build_policy(
    spec: str | Policy,
    config: SimulationConfig,
    params_path: str | None,
    kill_switch: KillSwitchConfig | None = None,
) -> Policy:
    policy = (
        make_policy(spec, config, params_path=params_path)
        if isinstance(spec, str)
        else copy.deepcopy(spec)
    )
    return policy if kill_switch is None else KillSwitchPolicy(policy, kill_switch, config)


def _run_task(
    config: SimulationConfig,
    spec: str | Policy,
    seeds: np.ndarray,
    paths: MarketPaths,
    params_path: str | None,
    kill_switch: KillSwitchConfig | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[EpisodeRecord, dict[str, int], float]:
    """One policy on one chunk of scenarios (top-level so spawned workers can import it)."""
    start = time.perf_counter()
    policy = _build_policy(spec, config, params_path, kill_switch)
    record = run_policy(config, policy, seeds, paths=paths, on_step=on_step)
    diagnostics = dict(getattr(policy, "diagnostics", {}) or {})
    return record, diagnostics, time.perf_counter() - start


def _concat_records(parts: list[EpisodeRecord]) -> EpisodeRecord:
    """Stack chunk records of one policy along the scenario axis (chunks in seed order)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def cat(attr: str) -> np.ndarray:
        return np.concatenate([getattr(p, attr) for p in parts], axis=0)

    return EpisodeRecord(
        policy=first.policy,
        seeds=cat("seeds"),
        asset_names=first.asset_names,
        value_usd=cat("value_usd"),
        weights=cat("weights"),
        fees_usd=cat("fees_usd"),
        slippage_usd=cat("slippage_usd"),
        gas_usd=cat("gas_usd"),
        turnover=cat("turnover"),
        regime=cat("regime"),
        regime_names=first.regime_names,
        alive=cat("alive"),
        step_days=first.step_days,
        dates=None if first.dates is None else cat("dates"),
        close_usd=None if first.close_usd is None else cat("close_usd"),
        costs_usd={k: np.concatenate([p.costs_usd[k] for p in parts]) for k in first.costs_usd},
        extras={k: np.concatenate([p.extras[k] for p in parts]) for k in first.extras},
        ruined=None if first.ruined is None else cat("ruined"),
        debt_to_equity=None if first.debt_to_equity is None else cat("debt_to_equity"),
        perp_to_equity=None if first.perp_to_equity is None else cat("perp_to_equity"),
    )


def _sample_chunk(config: SimulationConfig, seeds: np.ndarray) -> MarketPaths:
    warmup = config.env.warmup
    return sample_paths(config.market, seeds, warmup + config.env.horizon + 1, warmup)


def run_backtest(
    config: SimulationConfig,
    policies: Sequence[str | Policy],
    seeds: np.ndarray,
    *,
    workers: int = 1,
    progress: bool = True,
    chunk_size: int | None = None,
    params_path: str | Path | None = None,
    scenario_set: str = "custom",
    paths: MarketPaths | None = None,
    period: dict[str, str] | None = None,
    kill_switch: KillSwitchConfig | None = None,
    cache: bool | backtest_cache.BacktestCache = False,
) -> BacktestResult:
    """Run every policy on the same scenarios ``seeds`` (paired) and collect the records.

    Args:
        config: simulation config.
        policies: baseline names (see ``defialloc.agents.baselines.BASELINES``) or Policy objects (each task
            runs a deep copy; with ``workers > 1`` they must be picklable).
        seeds: ``(K,)`` evaluation scenario seeds; training-range seeds raise ValueError.
        workers: processes (spawn); 1 runs in this process. Results do not depend on it.
        progress: show progress (steps of all tasks): a tqdm bar on a terminal, a plain line every
            few seconds otherwise (:mod:`defialloc.evaluation.progress`).
        chunk_size: scenarios per task (default: all K in one task per policy).
        params_path: baseline parameter YAML (default ``configs/evaluation/default.yaml``).
        scenario_set: label recorded with the result (``test``, ``validation``, ...).
        paths: ready market paths (e.g. a replayed period) instead of sampling them from ``seeds``.
        period: name/start/end of a replayed period, recorded with the result.
        kill_switch: run every policy behind :class:`~defialloc.agents.kill_switch_policy.KillSwitchPolicy`
            with these parameters (None or ``enabled=False``: off); recorded with the result. It
            is independent of the env's own ``env.kill_switch`` (off unless a config turns it on).
        cache: reuse and store the backtests of named baselines on disk
            (:mod:`defialloc.evaluation.backtest_cache`; True: the default directory); Policy objects always run.
    """
    if kill_switch is not None and not kill_switch.enabled:
        kill_switch = None
    seeds = check_evaluation_seeds(np.atleast_1d(np.asarray(seeds)))
    if seeds.size == 0:
        raise ValueError("seeds is empty; pass at least one evaluation scenario seed")
    if not policies:
        raise ValueError("policies is empty; pass at least one policy name or Policy")
    labels = [_policy_label(p) for p in policies]
    if len(set(labels)) != len(labels):
        raise ValueError(f"policy names must be unique, got {labels}")
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    if paths is not None and paths.n_paths != seeds.size:
        raise ValueError(
            f"paths has {paths.n_paths} scenarios but seeds has {seeds.size}; pass one seed per path"
        )
    k = seeds.size
    size = k if chunk_size is None else int(chunk_size)
    if size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    chunks = [np.arange(i, min(i + size, k)) for i in range(0, k, size)]
    params = None if params_path is None else str(params_path)
    # build each named policy once here: fails fast on a bad name or parameter before any simulation
    policy_params = {
        label: _policy_params(spec, config, params)
        for label, spec in zip(labels, policies, strict=True)
    }
    chunk_paths = [
        paths.take(c) if paths is not None else _sample_chunk(config, seeds[c]) for c in chunks
    ]
    chunk_seeds = [seeds[c] for c in chunks]
    tasks = [(p, c) for p in range(len(policies)) for c in range(len(chunks))]
    outputs: dict[tuple[int, int], tuple[EpisodeRecord, dict[str, int], float]] = {}
    store = backtest_cache.open_cache(cache)
    if store is not None:  # named baselines already run on these paths come from the cache
        hits, keys = backtest_cache.lookup_tasks(
            store, config, tasks, policies, [policy_params[label] for label in labels],
            list(zip(chunk_seeds, chunk_paths, strict=True)), period=period,
            run_options={"kill_switch": None if kill_switch is None else kill_switch.model_dump(mode="json")},
        )  # fmt: skip
        outputs.update(hits)
        tasks = [task for task in tasks if task not in hits]
    horizon = config.env.horizon
    bar = progress_bar(len(tasks) * horizon, "backtest", enabled=progress)
    try:
        if workers == 1:
            for p, c in tasks:
                bar.set_postfix_str(labels[p])
                outputs[(p, c)] = _run_task(
                    config,
                    policies[p],
                    chunk_seeds[c],
                    chunk_paths[c],
                    params,
                    kill_switch,
                    on_step=lambda _t: bar.update(1),
                )
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {
                    pool.submit(
                        _run_task,
                        config,
                        policies[p],
                        chunk_seeds[c],
                        chunk_paths[c],
                        params,
                        kill_switch,
                    ): (p, c)
                    for p, c in tasks
                }
                for fut in as_completed(futures):
                    outputs[futures[fut]] = fut.result()
                    bar.update(horizon)
    finally:
        bar.close()
    if store is not None:
        backtest_cache.store_tasks(store, keys, outputs, tasks)
    chunk_records = [
        {labels[p]: outputs[(p, c)][0] for p in range(len(labels))} for c in range(len(chunks))
    ]
    ex_ante = ex_ante_of_chunks(config, chunk_paths, chunk_seeds, chunk_records)
    records, elapsed, diagnostics = {}, {}, {}
    for p, label in enumerate(labels):
        parts = [outputs[(p, c)] for c in range(len(chunks))]
        record = _concat_records([part[0] for part in parts])
        record.policy = label
        records[label] = record
        elapsed[label] = float(sum(part[2] for part in parts))
        diag: dict[str, int] = {}
        for part in parts:
            for key, value in part[1].items():
                diag[key] = diag.get(key, 0) + int(value)
        if ex_ante is not None:  # steps the ceiling does not bound (docs/evaluation.md)
            diag["ex_ante_outside_steps"] = ex_ante.outside[label]
        diagnostics[label] = diag
    return BacktestResult(
        config,
        records,
        seeds,
        scenario_set,
        period,
        elapsed,
        diagnostics,
        policy_params,
        kill_switch,
        ex_ante,
    )


def period_config(config: SimulationConfig, spec: PeriodSpec) -> SimulationConfig:
    """``config`` replaying ``spec`` from data: ``market.source=replay``, the period's dates and
    ``env.horizon`` = its number of daily steps (the warmup history comes from before ``start``)."""
    if config.market.step_days != 1.0:
        raise ValueError(
            f"period replay needs daily steps (market.step_days=1), got {config.market.step_days}"
        )
    if spec.n_steps < 1:
        raise ValueError(f"period end {spec.end} must be after start {spec.start}")
    return load_config(
        config,
        {
            "market.source": "replay",
            "market.start": spec.start.isoformat(),
            "market.end": spec.end.isoformat(),
            "env.horizon": spec.n_steps,
        },
    )


def run_period_backtest(
    config: SimulationConfig,
    policies: Sequence[str | Policy],
    start: str | date,
    end: str | date,
    *,
    name: str | None = None,
    workers: int = 1,
    progress: bool = True,
    params_path: str | Path | None = None,
    kill_switch: KillSwitchConfig | None = None,
    cache: bool | backtest_cache.BacktestCache = False,
) -> BacktestResult:
    """Replay the real period ``start..end`` (one scenario) for every policy.

    ``env.horizon`` becomes the number of daily steps in the period; the first decision is at the
    close of ``start`` and the last mark at the close of ``end``. Use :func:`resolve_period` for
    named periods (``heldout_2023`` = 2023-01-01..2024-04-09 is held out: evaluate on it, never tune).
    ``kill_switch``: as in :func:`run_backtest`.
    ``cache`` as in :func:`run_backtest`.
    """
    spec = PeriodSpec(start=start, end=end)  # type: ignore[arg-type]
    cfg = period_config(config, spec)
    for p in policies:
        if getattr(p, "uses_oracle", False) or p in UPPER_REFERENCES:
            raise ValueError(
                f"policy {_policy_label(p)!r} is an upper reference that needs the synthetic market's "
                "true state and parameters; a replayed period has none (leave it out)"
            )
    seeds = np.array([0], dtype=np.int64)
    paths = _sample_chunk(cfg, seeds)
    label = name or f"{spec.start}..{spec.end}"
    period = {"name": label, "start": spec.start.isoformat(), "end": spec.end.isoformat()}
    return run_backtest(
        cfg,
        policies,
        seeds,
        workers=workers,
        progress=progress,
        params_path=params_path,
        scenario_set=f"period:{label}",
        paths=paths,
        period=period,
        kill_switch=kill_switch,
        cache=cache,
    )
