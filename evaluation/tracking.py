"""MLflow tracking of evaluations: a parent run per backtest, a nested child run per policy.

Tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else an embedded SQLite store ``mlflow.db`` in the
working folder (artifacts beside it in ``mlartifacts/``). The parent run holds:

- params: policies, scenario set, number of scenarios, seeds, config hash
  (``SimulationConfig.config_hash()``), hash of the policies' resolved parameters, git commit,
  market source, horizon, period dates, the policy-side kill-switch (``kill_switch.enabled`` and,
  when on, ``kill_switch.max_drawdown``, ``kill_switch.min_health_factor``, ...);
- the scenario set as a dataset input (``mlflow.log_input``) and the comparison table (means, CIs,
  P(improvement), PSR/DSR) as ``comparison_table.json`` (``mlflow.log_table``); a description;
- artifacts: ``metrics.csv`` (policy x scenario table: what ``defialloc compare`` reads),
  ``series.parquet`` (per-step series), ``config.yaml`` (resolved simulation config) and
  ``plots/*.png``;
- tags: ``defialloc.kind = evaluation``, scenario set, config hash, git commit, held-out flag,
  ``kill_switch`` (``true``/``false``), ``defialloc.policy_runs`` (policy -> child run id).

Each policy's child run (``evaluation/tracking_policies.py``) holds its parameters and its metrics
under plain names (``sharpe_ratio``, ``max_drawdown``, ...), so MLflow's own runs table, compare
view and charts put an agent next to its baselines.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from defialloc.envs.config import REPO_ROOT, SimulationConfig

if TYPE_CHECKING:
    from defialloc.agents.mlflow_store import local_artifact_root as _local_artifact_root  # noqa: F401
from defialloc.agents.kill_switch_policy import kill_switch_params
from defialloc.agents.mlflow_store import setup_mlflow, tracking_uri  # noqa: F401  (re-exported)
from defialloc.evaluation.backtest import BacktestResult

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EVALUATION_TAG = "defialloc.kind"
EVALUATION_KIND = "evaluation"
#: on the parent: ``{policy: child run id}`` (each child has ``defialloc.evaluation_run``)
CHILD_RUNS_TAG = "defialloc.policy_runs"
METRICS_ARTIFACT = "metrics.csv"
SERIES_ARTIFACT = "series.parquet"
PLOTS_DIR = "plots"
#: MLflow caps a param value at 6000 characters; longer seed lists are summarized
MAX_PARAM_CHARS = 6000


def git_commit() -> str:
    """HEAD commit of the repository (``+dirty`` when the tree has changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def format_seeds(seeds: np.ndarray) -> str:
    """``"2000000..2000063"`` for a contiguous range, else a comma list (summarized if too long)."""
    s = np.asarray(seeds, dtype=np.int64)
    if s.size > 1 and np.all(np.diff(s) == 1):
        return f"{s[0]}..{s[-1]}"
    text = ",".join(str(int(v)) for v in s)
    if len(text) > MAX_PARAM_CHARS:
        text = f"{s.size} seeds: {s[0]},{s[1]},...,{s[-1]} (all in seeds.json)"
    return text


def params_hash(policy_params: dict[str, Any]) -> str:
    """Short stable hash of the policies' resolved parameters (runs are compared only if equal).

    Policies without parameters (trained agents) are left out, so the evaluations of different agents
    against the same baselines fall into one comparison group.
    """
    blob = json.dumps(
        {k: v for k, v in policy_params.items() if v}, sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def log_backtest(
    result: BacktestResult,
    experiment: str | None,
    run_name: str | None,
    config: SimulationConfig | None = None,
    extra_params: dict[str, Any] | None = None,
    *,
    plots: bool = True,
    n_boot: int = 2000,
) -> str:
    """Log one evaluation: a parent run and one nested run per policy; returns the parent's id.

    Args:
        result: the backtest to log.
        experiment: MLflow experiment name (created if missing; None: the default experiment).
        run_name: the parent run's name (None: ``<scenario set>-<K>``).
        config: the config to hash and store (default ``result.config``).
        extra_params: the agents' params (e.g. the trained model's run id): logged on the parent
            and on every agent's child run; values are stringified.
        plots: also render and log the PNG plots.
        n_boot: bootstrap resamples of the comparison table.
    """
    import mlflow

    from defialloc.evaluation.plots import save_plots
    from defialloc.evaluation.tracking_policies import (
        COMPARISON_TABLE,
        comparison_table,
        describe_parent,
        log_policy_runs,
        log_scenarios,
        save_comparison_view,
        scenario_dataset,
    )

    cfg = config or result.config
    experiment_id = setup_mlflow(experiment)
    table = result.metrics_table()
    commit = git_commit()
    rec = next(iter(result.records.values()))
    overlay = kill_switch_params(result.kill_switch)
    hashed = dict(result.policy_params)
    if result.kill_switch is not None:
        # policies behind a kill-switch are other policies: `defialloc compare` (which groups runs
        # by this hash) must not pool them with the same policies run without it. Off adds nothing,
        # so runs without the kill-switch keep the hash they always had.
        hashed["__kill_switch__"] = overlay
    config_hash = cfg.config_hash()
    shared = {
        "scenario_set": result.scenario_set,
        "n_scenarios": rec.n_scenarios,
        "seeds": format_seeds(result.seeds),
        "config_hash": config_hash,
        "horizon": cfg.env.horizon,
        **overlay,
    }
    if result.period:
        shared |= {f"period_{k}": v for k, v in result.period.items()}
    params: dict[str, Any] = {
        **shared,
        "policies": ",".join(result.policies),
        "git_commit": commit,
        "market_source": cfg.market.source,
        "step_days": cfg.market.step_days,
        "assets": ",".join(cfg.market.assets),
        "policy_params_hash": params_hash(hashed),
    }
    agent_params = {k: str(v) for k, v in (extra_params or {}).items()}
    params |= agent_params
    tags = {
        "scenario_set": result.scenario_set,
        "config_hash": config_hash,
        "git_commit": commit,
        "held_out": str(result.held_out).lower(),
        "kill_switch": str(result.kill_switch is not None).lower(),
    }
    comparison = comparison_table(result, table, n_boot=n_boot)
    best = comparison.loc[comparison["vs_best_baseline"] == "best baseline", "policy"]
    name = run_name or f"{result.scenario_set}-{rec.n_scenarios}"
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        tags={**tags, EVALUATION_TAG: EVALUATION_KIND},
        description=describe_parent(result, config_hash, best.iloc[0] if len(best) else None),
    ) as run:
        mlflow.log_params({k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()})
        dataset = scenario_dataset(result, config_hash)
        log_scenarios(dataset, result)
        mlflow.log_table(comparison, COMPARISON_TABLE)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            table.to_csv(folder / METRICS_ARTIFACT, index=False)
            result.series_frame().to_parquet(folder / SERIES_ARTIFACT, index=False)
            (folder / "config.yaml").write_text(
                yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
            )
            (folder / "diagnostics.json").write_text(json.dumps(result.diagnostics, indent=1))
            (folder / "seeds.json").write_text(json.dumps([int(s) for s in result.seeds]))
            (folder / "policy_params.json").write_text(json.dumps(result.policy_params, indent=1))
            for file in (
                "policy_params.json",
                METRICS_ARTIFACT,
                SERIES_ARTIFACT,
                "config.yaml",
                "diagnostics.json",
                "seeds.json",
            ):
                mlflow.log_artifact(str(folder / file))
            if plots:
                for path in save_plots(result, folder / PLOTS_DIR):
                    mlflow.log_artifact(str(path), artifact_path=PLOTS_DIR)
        children = log_policy_runs(
            result,
            table,
            dataset,
            {k: str(v) for k, v in shared.items()},
            tags,
            agent_params,
        )
        mlflow.set_tag(CHILD_RUNS_TAG, json.dumps(children))
    save_comparison_view(experiment_id, run.info.run_id)
    return run.info.run_id
