"""What one trial runs, wherever it runs (a Ray worker on any node, or this process).

:func:`run_trial` builds the trial's training config (base + shared + searched overrides, with
``eval.final`` off for sweeps), trains it with :func:`defialloc.training.train.train` as a run nested under the
sweep's parent run, and reports after every validation through a *session*:

- :class:`RaySession` (``ray.tune.report``): each report carries a Ray checkpoint holding a copy of
  the training checkpoint taken at that rollout boundary (model, VecNormalize statistics, replay
  buffer, ``state.json``), the best model so far and the run's ``config.yaml``, so a trial whose
  worker dies is retried (``FailureConfig.max_failures``) from its last report on any node: the
  files go back into the run folder and the SAME MLflow run resumes at the checkpoint's step
  (``train(resume_run_id=...)``: no step is lost or counted twice). When the scheduler stops a trial
  early, the report raises; the trial stops at that rollout boundary and its run is tagged
  ``defialloc.status = early_stopped``.
- :class:`LocalSession`: reports are kept in memory; a killed driver resumes unfinished trials from
  their run folder's own checkpoint (``checkpoint.every_steps``) instead.

Nothing is unpickled here that this project did not write: the Ray checkpoint holds the SB3 files
that ``defialloc train --resume`` reads anyway, plus a JSON file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from defialloc.training.callbacks import BEST_SCORES_FILE, RunAwareCallback, TrainingInterrupted
from defialloc.training.sweeps.context import (
    CONFIG_TAG,
    EARLY_STOPPED,
    LABEL_TAG,
    OVERRIDES_TAG,
    SCORES_ARTIFACT,
    SEED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    SweepContext,
)
from defialloc.training.sweeps.trials import TrialSpec

TRIAL_FILE = "trial.json"
CONFIG_FILE = "config.yaml"  # the run folder's resolved config (training.train.CONFIG_FILE)


class EarlyStop(Exception):
    """The scheduler stopped this trial (raised out of a report)."""


class TrialSession(Protocol):
    """Where a trial reports and restores from (see the module docstring)."""

    wants_checkpoints: bool

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None: ...

    def restored(self) -> Any: ...  # a context manager yielding a folder or None


@dataclass
class LocalSession:
    """In-process trials: reports are kept, nothing to restore from (the run folder is)."""

    wants_checkpoints: bool = False
    reports: list[dict[str, Any]] = field(default_factory=list)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.reports.append(dict(metrics))

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        yield None


class RaySession:
    """Reports to Ray Tune; the retry of a failed trial restores from Tune's last checkpoint."""

    wants_checkpoints = True

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        from ray import tune

        try:
            tune.report(
                metrics,
                checkpoint=None
                if checkpoint is None
                else tune.Checkpoint.from_directory(checkpoint),
            )
        except SystemExit:  # Tune's way of stopping a function trainable at a report
            raise EarlyStop from None

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)


class SweepReporter(RunAwareCallback):
    """After each validation, at the next rollout boundary: checkpoint (when the session keeps
    them) and report ``score`` (the best ``eval.metric`` so far), ``env_steps`` and ``val/*``."""

    def __init__(self, session: TrialSession, spec: TrialSpec, metric: str) -> None:
        super().__init__()
        self.session, self.spec, self.metric = session, spec, metric
        self.reported_step: int | None = None
        self.early_stopped = False

    def attach(self, validation, checkpoint, run_dir, run_id) -> None:  # noqa: ANN001
        super().attach(validation, checkpoint, run_dir, run_id)
        from mlflow import MlflowClient

        node = _node_id()
        tags = {"defialloc.trial_pid": str(os.getpid()), "defialloc.node": node}
        for key, value in tags.items():
            MlflowClient().set_tag(run_id, key, value)

    def metrics(self) -> dict[str, Any]:
        """The latest validation as a Tune result (``score`` = best so far)."""
        history = self.validation.history
        latest = history[-1][1] if history else {}
        best = self.validation.state.best_metric
        return {
            "score": float("nan") if best is None else float(best),
            "env_steps": int(self.validation.last_validated_step or 0),
            "run_id": self.run_id,
            "trial_key": self.spec.key,
            **{f"val/{k}": float(v) for k, v in latest.items()},
        }

    def _on_rollout_start(self) -> None:
        step = self.validation.last_validated_step
        if step is None or step == self.reported_step:
            return
        self.reported_step = step
        if not self.session.wants_checkpoints:
            self.session.report(self.metrics(), None)
            return
        self.checkpoint.save()  # at this rollout boundary: consistent with every counted step
        with tempfile.TemporaryDirectory(prefix="defialloc-trial-") as tmp:
            folder = Path(tmp)
            pack_checkpoint(self.run_dir, self.run_id, folder)
            try:
                self.session.report(self.metrics(), folder)
            except EarlyStop:
                self.early_stopped = True
                raise TrainingInterrupted(
                    f"stopped early at step {step} by the scheduler"
                ) from None


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - the node id is informational only
        pass
    return "local"


def pack_checkpoint(run_dir: Path, run_id: str, folder: Path) -> None:
    """Copy what ``train --resume`` needs (``checkpoint/``, ``best/``, ``config.yaml``) + run id."""
    for name in ("checkpoint", "best"):
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, folder / name)
    shutil.copy2(run_dir / CONFIG_FILE, folder / CONFIG_FILE)
    (folder / TRIAL_FILE).write_text(json.dumps({"run_id": run_id}))


def unpack_checkpoint(folder: Path) -> str:
    """Put a Ray checkpoint's files back into its run's folder (from the run's MLflow tag; created
    if this node never had it) and return the run id to resume."""
    from defialloc.training.train import run_dir_of

    run_id = str(json.loads((folder / TRIAL_FILE).read_text())["run_id"])
    run_dir = run_dir_of(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint", "best"):
        if (folder / name).is_dir():
            if (run_dir / name).exists():
                shutil.rmtree(run_dir / name)
            shutil.copytree(folder / name, run_dir / name)
    shutil.copy2(folder / CONFIG_FILE, run_dir / CONFIG_FILE)
    return run_id


def trial_config(spec: TrialSpec, ctx: SweepContext):  # noqa: ANN201 - TrainConfig (lazy import)
    """The trial's training config: its base, its overrides, its seed, the sweep's destination."""
    from defialloc.training.config import load_train_config

    overrides = {
        **spec.overrides,
        **ctx.trial_overrides,
        "seed": spec.seed,
        "output_dir": ctx.output_dir,
        "mlflow.experiment": ctx.experiment,
        "mlflow.run_name": spec.run_name,
    }
    return load_train_config(ctx.bases[spec.base], overrides)


def trial_tags(spec: TrialSpec, ctx: SweepContext) -> dict[str, str]:
    return {
        SWEEP_TAG: ctx.parent_run_id,
        TRIAL_TAG: spec.key,
        CONFIG_TAG: spec.config_id,
        LABEL_TAG: spec.label[:5000],
        OVERRIDES_TAG: json.dumps(spec.overrides, default=str)[:5000],
        SEED_TAG: str(spec.seed),
    }


def run_trial(spec: TrialSpec, ctx: SweepContext, session: TrialSession) -> dict[str, Any]:
    """Train one trial (or continue it) and return its final result (``score`` = best validation)."""
    import mlflow
    from mlflow import MlflowClient

    import defialloc.training.train as train_module
    from defialloc.training.train import STATUS_TAG, RunAlreadyFinished, load_resume_config

    os.environ["MLFLOW_TRACKING_URI"] = ctx.tracking_uri
    mlflow.set_tracking_uri(ctx.tracking_uri)
    reporter = SweepReporter(session, spec, ctx.metric)
    with session.restored() as folder:
        run_id = unpack_checkpoint(folder) if folder is not None else ctx.resume_runs.get(spec.key)
    if run_id is not None:
        try:
            cfg = load_resume_config(run_id)
        except RunAlreadyFinished:  # it finished before the driver (or worker) died
            out = final_result(spec, run_id, ctx.metric)
            session.report(out, None)
            return out
        result = train_module.train(
            cfg, resume_run_id=run_id, progress=False, callbacks=[reporter], cache=ctx.cache
        )
    else:
        retire_stale_runs(spec, ctx)
        result = train_module.train(
            trial_config(spec, ctx),
            progress=False,
            callbacks=[reporter],
            cache=ctx.cache,
            parent_run_id=ctx.parent_run_id,
            tags=trial_tags(spec, ctx),
        )
    client = MlflowClient()
    scores = result.run_dir / "best" / BEST_SCORES_FILE
    if scores.is_file():
        client.log_artifact(result.run_id, str(scores), SCORES_ARTIFACT)
    if reporter.early_stopped:
        client.set_tag(result.run_id, STATUS_TAG, EARLY_STOPPED)
        return reporter.metrics() | {"status": EARLY_STOPPED}
    out = final_result(spec, result.run_id, ctx.metric)
    if result.completed:
        session.report(out, None)
    return out


def retire_stale_runs(spec: TrialSpec, ctx: SweepContext) -> None:
    """Mark KILLED any earlier run of this trial that will not be continued (its worker died before
    its first checkpoint): the trial starts over as a new run, and the old one must not stay
    RUNNING in the MLflow UI."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(ctx.experiment)
    if experiment is None:
        return
    stale = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{SWEEP_TAG}` = '{ctx.parent_run_id}' and tags.`{TRIAL_TAG}` = '{spec.key}' "
        "and attributes.status = 'RUNNING'",
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")


def final_result(spec: TrialSpec, run_id: str, metric: str) -> dict[str, Any]:
    """A finished trial's result, read back from its MLflow run (latest ``val/*`` values)."""
    from mlflow import MlflowClient

    from defialloc.training.train import STATUS_TAG

    client = MlflowClient()
    run = client.get_run(run_id)
    metrics = run.data.metrics
    best = metrics.get(f"val/best_{metric}")
    history = client.get_metric_history(run_id, f"val/best_{metric}")
    return {
        "score": float("nan") if best is None else float(best),
        "env_steps": max((m.step for m in history), default=0),
        "run_id": run_id,
        "trial_key": spec.key,
        "status": run.data.tags.get(STATUS_TAG, "unknown"),
        **{k: float(v) for k, v in metrics.items() if k.startswith("val/")},
    }
