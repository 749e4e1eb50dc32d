"""The sweep's result table and its best configuration, from validation scenarios only.

One row per configuration (its trials = its training seeds), sorted by the selection score:

- ``score``: the mean over the configuration's trials of each trial's best validation ``eval.metric``
  (what each trial's best model was chosen by, and what the sweep selects on);
- ``IQM`` and ``mean`` of the best models' per-scenario validation values (log growth for the
  log-growth metrics, annualized Sharpe for ``mean_sharpe``), shaped ``(trials, scenarios)``, with
  95% stratified bootstrap intervals (scenarios resampled within each trial,
  :func:`defialloc.evaluation.statistics.stratified_bootstrap_ci`);
- ``Sharpe``: annualized Sharpe of the per-step returns pooled over the configuration's scenarios and
  trials; ``DSR``: the deflated Sharpe ratio of those pooled returns against the per-period Sharpe
  ratios of every trial actually run (N = that count, early-stopped trials included: they were tried;
  :func:`defialloc.evaluation.statistics.deflated_sharpe_ratio`). With N < 2 there is nothing to deflate by.

The winner (highest ``score`` among configurations with at least one completed trial) is written
out as a full, resolved training config that ``defialloc train --config`` takes as it is.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defialloc.evaluation.statistics import (
    deflated_sharpe_ratio,
    sharpe_per_period,
    stratified_bootstrap_ci,
)
from defialloc.training.sweeps.context import EARLY_STOPPED, SCORES_ARTIFACT
from defialloc.training.sweeps.tracking import TrialRun

N_BOOT = 2000
SCORES_FILE = "validation.npz"


@dataclass(frozen=True)
class TrialScores:
    """A trial's best model on the validation scenarios (arrays from ``validation.npz``)."""

    run: TrialRun
    per_scenario: np.ndarray | None  # (K,) the metric family's value per scenario
    returns: np.ndarray | None  # (K, T) per-step simple returns


def metric_family(metric: str) -> str:
    """Which per-scenario array a validation metric summarizes."""
    return "sharpe" if metric == "mean_sharpe" else "log_growth"


def load_scores(run: TrialRun, metric: str, tmp: Path) -> TrialScores:
    """Read the trial's ``sweep/validation.npz`` (numpy arrays only: ``allow_pickle=False``)."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.run_id,
            artifact_path=f"{SCORES_ARTIFACT}/{SCORES_FILE}",
            dst_path=str(tmp / run.run_id),
        )
    except Exception:  # noqa: BLE001 - a trial without validation data still has its score
        return TrialScores(run, None, None)
    with np.load(path, allow_pickle=False) as data:
        return TrialScores(
            run, np.asarray(data[metric_family(metric)]), np.asarray(data["returns"])
        )


def _ci_cells(scores: np.ndarray | None, statistic: str) -> tuple[float, float, float]:
    if scores is None:
        return (math.nan, math.nan, math.nan)
    ci = stratified_bootstrap_ci(scores, statistic, N_BOOT, 0.95, 0)
    return (ci.point, ci.low, ci.high)


def result_table(trials: list[TrialScores], periods_per_year: float) -> tuple[pd.DataFrame, int]:
    """One row per configuration (module docstring); returns the table and N (trials with data)."""
    sr_trials = [sharpe_per_period(t.returns.ravel()) for t in trials if t.returns is not None]
    sr_trials = [s for s in sr_trials if np.isfinite(s)]
    n_trials = len(sr_trials)
    rows = []
    groups: dict[str, list[TrialScores]] = {}
    for t in trials:
        groups.setdefault(t.run.config_id, []).append(t)
    for cid, members in groups.items():
        members.sort(key=lambda t: t.run.seed)
        done = [t for t in members if t.run.status == "completed"]
        stopped = [t for t in members if t.run.status == EARLY_STOPPED]
        scored = [t.run.score for t in members if t.run.score is not None]
        with_data = [t for t in members if t.per_scenario is not None]
        shapes = {t.per_scenario.shape for t in with_data}  # type: ignore[union-attr]
        matrix = (
            np.stack([t.per_scenario for t in with_data])
            if with_data and len(shapes) == 1
            else None
        )
        pooled = (
            np.concatenate([t.returns.ravel() for t in with_data]) if with_data else None  # type: ignore[union-attr]
        )
        sr = sharpe_per_period(pooled) if pooled is not None and pooled.size > 1 else math.nan
        dsr = (
            deflated_sharpe_ratio(pooled, sr_trials)
            if pooled is not None and n_trials >= 2 and np.isfinite(sr)
            else math.nan
        )
        iqm, mean = _ci_cells(matrix, "iqm"), _ci_cells(matrix, "mean")
        rows.append(
            {
                "config_id": cid,
                "configuration": members[0].run.label,
                "seeds": ",".join(str(t.run.seed) for t in members),
                "completed": len(done),
                "early_stopped": len(stopped),
                "score": float(np.mean(scored)) if scored else math.nan,
                "iqm": iqm[0], "iqm_low": iqm[1], "iqm_high": iqm[2],
                "mean": mean[0], "mean_low": mean[1], "mean_high": mean[2],
                "sharpe_ann": sr * math.sqrt(periods_per_year) if np.isfinite(sr) else math.nan,
                "dsr": dsr,
                "overrides": members[0].run.overrides,
            }
        )  # fmt: skip
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("score", ascending=False, na_position="last", ignore_index=True)
    return table, n_trials


def winner(table: pd.DataFrame) -> pd.Series | None:
    """The best-scoring configuration with at least one completed trial (None if there is none)."""
    eligible = (
        table[(table["completed"] > 0) & table["score"].notna()] if not table.empty else table
    )
    return None if eligible.empty else eligible.iloc[0]


def _fmt(x: float, spec: str = "+.4f") -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, spec)


def display_rows(table: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the table as printed and written to Markdown."""
    header = ["configuration", "seeds", "done/stopped", "score", "IQM [95% CI]", "mean [95% CI]",
              "Sharpe", "DSR"]  # fmt: skip
    cells = [
        [
            str(r["configuration"]),
            str(r["seeds"]),
            f"{r['completed']}/{r['early_stopped']}",
            _fmt(r["score"]),
            f"{_fmt(r['iqm'], '+.3f')} [{_fmt(r['iqm_low'], '+.3f')}, {_fmt(r['iqm_high'], '+.3f')}]",
            f"{_fmt(r['mean'], '+.3f')} [{_fmt(r['mean_low'], '+.3f')}, {_fmt(r['mean_high'], '+.3f')}]",
            _fmt(r["sharpe_ann"], ".2f"),
            _fmt(r["dsr"], ".3f"),
        ]
        for _, r in table.iterrows()
    ]
    return header, cells


def legend(metric: str, n_trials: int) -> str:
    """What the columns mean (printed under the table and written above it)."""
    family = metric_family(metric).replace("_", " ")
    return (
        f"Validation scenarios only. score: mean over the configuration's trials of the best "
        f"validation {metric}; IQM and mean: per-scenario {family} of the best models (95% "
        f"stratified bootstrap CI); Sharpe: annualized, pooled returns; DSR: deflated Sharpe ratio "
        f"with N = {n_trials} trials actually run."
    )


def markdown(table: pd.DataFrame, metric: str, title: str, n_trials: int) -> str:
    header, cells = display_rows(table, metric)
    lines = [
        f"# {title}",
        "",
        legend(metric, n_trials),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def collect(runs: list[TrialRun], metric: str) -> list[TrialScores]:
    """Download every trial's validation arrays (trials that never validated keep their score)."""
    with tempfile.TemporaryDirectory(prefix="defialloc-sweep-") as tmp:
        return [load_scores(r, metric, Path(tmp)) for r in runs]


def best_config_yaml(base: dict[str, Any], overrides: dict[str, Any], header: str) -> str:
    """The base config with the winner's overrides, resolved (loads back as it is)."""
    from defialloc.training.config import load_train_config

    cfg = load_train_config(base, {**overrides, "mlflow.run_name": None})
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + cfg.to_yaml()
