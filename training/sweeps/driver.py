"""The sweep driver: parent run, trials on a backend, result table, best config.

:func:`run_plan` runs any :class:`SweepPlan`: a sweep file (:func:`plan_from_sweep`, ``defialloc
sweep``) or an experiment's ablation and runs (:mod:`defialloc.training.experiment`). Running the same plan
again resumes its unfinished parent run (finished trials are not re-run, unfinished ones continue
from their checkpoints); ``fresh=True`` starts a new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from defialloc.envs.config import ConfigError
from defialloc.training.sweeps.config import (
    TRIAL_OVERRIDES,
    ResourcesConfig,
    SchedulerConfig,
    SweepConfig,
)
from defialloc.training.sweeps.context import SweepContext
from defialloc.training.sweeps.tracking import (
    ParentRun,
    TrialRun,
    check_store_for_address,
    finish_parent,
    latest_by_key,
    open_parent,
    plan_hash,
    redact_uri,
    trial_runs,
)
from defialloc.training.sweeps.trials import FixedTrials, OptunaTrials, TrialSpec, sweep_source

Backend = Literal["local", "ray"]
Finished = dict[str, tuple[dict[str, Any], int, float | None]]


@dataclass
class SweepPlan:
    """Everything a sweep needs besides where it runs.

    ``bases`` are resolved training configs (plain data) by name; ``source`` builds the trial source
    given the trials already finished (a resumed driver); ``best_base`` names the base the winner's
    overrides are written onto (None: no best config, e.g. an experiment's final runs).
    """

    name: str
    experiment: str
    kind: str
    bases: dict[str, dict[str, Any]]
    source: Callable[[Finished], FixedTrials | OptunaTrials]
    metric: str
    periods_per_year: float
    max_steps: int
    trial_overrides: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerConfig | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_failures: int = 2
    out_dir: Path | None = None
    best_base: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        return plan_hash(
            {"name": self.name, "kind": self.kind, "bases": self.bases, "params": self.params}
        )


@dataclass
class SweepOutcome:
    parent_run_id: str
    table: Any  # pandas.DataFrame
    n_trials: int
    winner_label: str | None
    winner_overrides: dict[str, Any] | None
    best_config: Path | None
    failed: list[str]


def plan_from_sweep(sweep: SweepConfig, base: Any) -> SweepPlan:
    """The plan of a sweep file (``base``: its training config with the shared overrides)."""
    resolved = base.resolved()
    return SweepPlan(
        name=sweep.sweep,
        experiment=sweep.experiment,
        kind="sweep",
        bases={"base": resolved},
        source=lambda finished: sweep_source(sweep, sweep.sweep, finished),
        metric=base.eval.metric,
        periods_per_year=365.0 / base.simulation.market.step_days,
        max_steps=base.total_timesteps,
        trial_overrides=dict(TRIAL_OVERRIDES),
        scheduler=sweep.scheduler,
        resources=sweep.resources,
        max_failures=sweep.max_failures,
        out_dir=Path(sweep.out),
        best_base="base",
        params={"sweep": sweep.model_dump(mode="json")},
    )


def absolute_tracking_uri() -> str:
    """The tracking URI with a relative SQLite path made absolute (trials run elsewhere)."""
    from defialloc.evaluation.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _resume_state(
    parent: ParentRun, metric: str, console: Console
) -> tuple[Finished, dict[str, str]]:
    """Finished trials (not re-run) and unfinished runs with a checkpoint (continued)."""
    from mlflow import MlflowClient

    from defialloc.training.callbacks import STATE_FILE
    from defialloc.training.train import run_dir_of

    if not parent.resumed:
        return {}, {}
    runs = latest_by_key(trial_runs(parent.run_id, parent.experiment_id, metric))
    finished = {k: (r.overrides, r.seed, r.score) for k, r in runs.items() if r.done}
    resume: dict[str, str] = {}
    for key, run in runs.items():
        if run.done:
            continue
        try:
            folder = run_dir_of(run.run_id) / "checkpoint" / STATE_FILE
        except ValueError:
            folder = None
        if folder is not None and folder.is_file():
            resume[key] = run.run_id
        else:  # nothing to continue from on this machine: that trial starts again as a new run
            MlflowClient().set_terminated(run.run_id, status="KILLED")
    console.print(
        f"resuming sweep run {parent.run_id}: {len(finished)} trial(s) finished, "
        f"{len(resume)} to continue from their checkpoint"
    )
    return finished, resume


def run_plan(
    plan: SweepPlan,
    console: Console,
    *,
    backend: Backend = "ray",
    address: str | None = None,
    workers: int | None = None,
    fresh: bool = False,
    cache: bool = False,
    output_dir: str | Path = "runs",
) -> SweepOutcome:
    """Run (or resume) a plan and write its results; see the module docstring."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend {backend!r}: allowed: local, ray")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if backend == "local" and (address or plan.scheduler is not None):
        what = "--address / RAY_ADDRESS" if address else "early stopping (scheduler)"
        raise ConfigError(
            f"{what} needs --backend ray; --backend local runs trials in this process"
        )
    if backend == "local" and workers not in (None, 1):
        raise ConfigError(f"--workers {workers}: --backend local runs one trial at a time")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = absolute_tracking_uri()
    if backend == "ray":
        check_store_for_address(uri, address)
    parent = open_parent(
        plan.experiment, plan.name, plan.digest(), plan.kind, plan.params, fresh=fresh
    )
    console.print(
        f"{plan.kind} {plan.name}: parent run {parent.run_id} in experiment {plan.experiment!r} "
        f"({redact_uri(uri)}), backend {backend}{f' at {address}' if address else ''}"
    )
    finished, resume = _resume_state(parent, plan.metric, console)
    ctx = SweepContext(
        sweep=plan.name,
        parent_run_id=parent.run_id,
        experiment=plan.experiment,
        tracking_uri=uri,
        output_dir=str(Path(output_dir).resolve()),
        bases=plan.bases,
        metric=plan.metric,
        trial_overrides=plan.trial_overrides,
        resume_runs=resume,
        cache=cache,
    )
    source = plan.source(finished)
    try:
        failed = _execute(plan, ctx, source, backend, address, workers, console)
    except BaseException:
        finish_parent(parent.run_id, status="KILLED")  # resumable: rerun the same command
        raise
    return _conclude(plan, parent, failed, console)


def _execute(
    plan: SweepPlan,
    ctx: SweepContext,
    source: FixedTrials | OptunaTrials,
    backend: Backend,
    address: str | None,
    workers: int | None,
    console: Console,
) -> list[str]:
    def say(text: str) -> None:
        console.print(text, highlight=False)

    if backend == "local":
        from defialloc.training.sweeps.local_backend import run_local

        def on_result(spec: TrialSpec, result: dict[str, Any]) -> None:
            say(f"trial {spec.key}: score {result.get('score', float('nan')):+.4f}")

        return run_local(source, ctx, on_result)
    from defialloc.training.sweeps.ray_backend import run_on_ray

    storage = Path(ctx.output_dir) / "sweeps" / f"{plan.name}-{ctx.parent_run_id[:8]}"
    return run_on_ray(
        source,
        ctx,
        address=address,
        workers=workers,
        resources=plan.resources,
        scheduler=plan.scheduler,
        max_failures=plan.max_failures,
        max_steps=plan.max_steps,
        storage_path=storage,
        say=say,
    )


def _conclude(
    plan: SweepPlan, parent: ParentRun, failed: list[str], console: Console
) -> SweepOutcome:
    """Result table, winner, best config; logged to the parent run, which is then finished."""
    import mlflow
    from mlflow import MlflowClient

    from defialloc.training.sweeps import results

    runs: list[TrialRun] = list(
        latest_by_key(trial_runs(parent.run_id, parent.experiment_id, plan.metric)).values()
    )
    scores = results.collect(runs, plan.metric)
    table, n_trials = results.result_table(scores, plan.periods_per_year)
    best = results.winner(table)
    client = MlflowClient()
    title = f"{plan.kind} {plan.name}: {len(runs)} trial(s), selected on validation {plan.metric}"
    text = results.markdown(table, plan.metric, title, n_trials)
    client.log_text(parent.run_id, text, "results.md")
    if not table.empty:
        frame = table.assign(overrides=table["overrides"].map(lambda o: json.dumps(o, default=str)))
        client.log_table(parent.run_id, frame, "results.json")
    client.log_metric(parent.run_id, "n_trials", n_trials)
    best_path = None
    winner_label = winner_overrides = None
    if best is not None:
        winner_label, winner_overrides = str(best["configuration"]), dict(best["overrides"])
        client.set_tag(parent.run_id, "winner", winner_label[:5000])
        client.log_metric(parent.run_id, f"best_val_{plan.metric}", float(best["score"]))
        for key, value in winner_overrides.items():
            client.log_param(parent.run_id, f"winner.{key}", str(value))
    if plan.out_dir is not None:
        folder = plan.out_dir / plan.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.md").write_text(text)
        if best is not None and plan.best_base is not None:
            header = (
                f"best configuration of {plan.kind} {plan.name} (MLflow parent run {parent.run_id}):\n"
                f"{winner_label}; mean best validation {plan.metric} {best['score']:+.4f} over "
                f"{best['completed']} trial(s). Selected on validation scenarios only."
            )
            best_path = folder / "best_config.yaml"
            best_path.write_text(
                results.best_config_yaml(plan.bases[plan.best_base], winner_overrides or {}, header)
            )
            mlflow.MlflowClient().log_artifact(parent.run_id, str(best_path))
    if failed:
        client.set_tag(parent.run_id, "failed_trials", ",".join(failed)[:5000])
    finish_parent(parent.run_id)
    _print_table(table, plan, n_trials, console)
    if best_path is not None:
        console.print(f"best configuration: {best_path}  (defialloc train --config {best_path})")
    if failed:
        console.print(f"[red]trials that failed every retry: {', '.join(failed)}[/red]")
    return SweepOutcome(
        parent.run_id, table, n_trials, winner_label, winner_overrides, best_path, failed
    )


def _print_table(table: Any, plan: SweepPlan, n_trials: int, console: Console) -> None:
    from defialloc.training.sweeps.results import display_rows, legend

    header, cells = display_rows(table, plan.metric)
    out = Table(
        title=f"{plan.kind} {plan.name} on validation scenarios (DSR: N = {n_trials} trials)"
    )
    for name in header:
        out.add_column(name, overflow="fold")
    for row in cells:
        out.add_row(*row)
    console.print(out)
    console.print(legend(plan.metric, n_trials), highlight=False)
