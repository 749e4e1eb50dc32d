"""Trials on Ray Tune: a local Ray by default, a cluster with ``--address`` / ``RAY_ADDRESS``.

- Local: ``ray.init(num_cpus=<this machine's CPUs>, include_dashboard=False)``, shut down at the end.
- Cluster: ``ray.init(address=...)`` (``ray start --head`` on one machine, ``ray start --address``
  on the others; docs/sweeps.md). Every node needs this repository installed at the same version.
- Each trial asks for ``resources`` (CPUs, GPUs); ``workers`` caps the trials running at once.
- A trial whose worker dies is retried up to ``max_failures`` times from its last checkpoint
  (:mod:`defialloc.training.sweeps.trial`); the Ray checkpoints live under ``storage_path`` (absolute; on a
  cluster it must be a folder every node sees, e.g. NFS).
- ASHA or the median stopping rule stop trials early on ``score`` (the best validation metric so
  far) with env steps as time.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defialloc.training.sweeps.config import ResourcesConfig, SchedulerConfig
from defialloc.training.sweeps.context import SweepContext
from defialloc.training.sweeps.tracking import check_store_for_nodes
from defialloc.training.sweeps.trials import WAIT, FixedTrials, OptunaTrials, TrialSpec


def _trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    """The Ray Tune function trainable: one trial (runs in a Ray worker)."""
    from defialloc.training.sweeps.trial import RaySession, run_trial

    run_trial(TrialSpec.from_dict(config["trial"]), ctx, RaySession())


def _searcher(source: FixedTrials | OptunaTrials) -> Any:
    """A ``ray.tune.search.Searcher`` handing the source's specs to Tune (class made on first use:
    importing ray.tune is slow, and module-level classes keep closures out of Tune's pickles)."""
    return _classes()[0](source)


def _printer(say: Callable[[str], None]) -> Any:
    return _classes()[1](say)


_CLASSES: tuple[type, type] | None = None


def _classes() -> tuple[type, type]:
    global _CLASSES
    if _CLASSES is None:
        from ray.tune import Callback
        from ray.tune.search import Searcher

        _CLASSES = (
            type("SourceSearcher", (_SourceSearcherMixin, Searcher), {}),
            type("TrialPrinter", (_PrinterMixin, Callback), {}),
        )
    return _CLASSES


class _SourceSearcherMixin:
    """Hands the source's specs to Tune and tells the source each trial's final score."""

    def __init__(self, source: FixedTrials | OptunaTrials) -> None:
        super().__init__(metric="score", mode="max")  # type: ignore[call-arg]
        self.source = source
        self.live: dict[str, TrialSpec] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its state for Tuner.restore, which this project does not use (a resumed
        # driver reads MLflow instead), and an Optuna study holds locks
        return {}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save (see ``__getstate__``); silences Tune's "save not implemented"."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a resumed driver reads its finished trials from MLflow."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        spec = self.source.next_trial()
        if spec is None:
            return "FINISHED"  # Searcher.FINISHED
        if spec == WAIT or not isinstance(spec, TrialSpec):
            return None
        self.live[trial_id] = spec
        return {"trial": spec.as_dict()}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        spec = self.live.pop(trial_id, None)
        if spec is None:
            return
        score = None if error or not result else result.get("score")
        finite = isinstance(score, int | float) and math.isfinite(score)
        self.source.complete(spec, float(score) if finite else None)


class _PrinterMixin:
    """One line per finished, failed or retried trial (no progress tables)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def __getstate__(self) -> dict[str, Any]:
        return {}  # the console holds a lock (see _SourceSearcherMixin.__getstate__)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        result = trial.last_result or {}
        score = result.get("score", math.nan)
        self.say(f"trial {trial.config['trial']['key']}: score {score:+.4f}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self.say(
            f"trial {trial.config['trial']['key']}: worker failed, retrying from its checkpoint"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self.say(f"trial {trial.config['trial']['key']}: failed after {trial.num_failures} tries")


def _scheduler(scheduler: SchedulerConfig | None, max_steps: int) -> Any:
    if scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    if scheduler.kind == "asha":
        return ASHAScheduler(
            time_attr="env_steps",
            metric="score",
            mode="max",
            max_t=max_steps,
            grace_period=scheduler.grace_steps,
            reduction_factor=scheduler.reduction_factor,
        )
    return MedianStoppingRule(
        time_attr="env_steps",
        metric="score",
        mode="max",
        grace_period=scheduler.grace_steps,
        min_samples_required=scheduler.min_samples,
    )


def _mark_stopped(grid: Any) -> None:
    """Trials the scheduler stopped end with a mid-training report (a finished trial's last report
    carries its ``status``). The trial tags its run itself; if Tune ended its worker first, do it
    here, so a resumed driver does not continue a trial the scheduler stopped."""
    from mlflow import MlflowClient

    from defialloc.training.sweeps.context import EARLY_STOPPED
    from defialloc.training.train import STATUS_TAG

    client = MlflowClient()
    for result in grid:
        metrics = result.metrics or {}
        run_id = metrics.get("run_id")
        if result.error is not None or not run_id or metrics.get("status") is not None:
            continue
        run = client.get_run(run_id)
        if run.data.tags.get(STATUS_TAG) != EARLY_STOPPED:
            client.set_tag(run_id, STATUS_TAG, EARLY_STOPPED)
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")


def init_ray(address: str | None) -> None:
    """A local Ray (every CPU of this machine, no dashboard) or a connection to ``address``."""
    import ray

    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    os.environ.update(env)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no result tables: one line per trial instead
    common = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "runtime_env": {"env_vars": env},
    }
    if address:
        ray.init(address=address, **common)
    else:
        # "local": always a new Ray of our own, never a cluster `ray start` left on this machine
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **common)


def run_on_ray(
    source: FixedTrials | OptunaTrials,
    ctx: SweepContext,
    *,
    address: str | None,
    workers: int | None,
    resources: ResourcesConfig,
    scheduler: SchedulerConfig | None,
    max_failures: int,
    max_steps: int,
    storage_path: Path,
    say: Callable[[str], None],
) -> list[str]:
    """Run the sweep's trials on Ray Tune; returns the keys of trials that failed every retry."""
    from defialloc.training.sweeps.config import require_extra

    require_extra("ray", "--backend ray")
    import ray
    from ray import tune

    init_ray(address)
    try:
        nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
        check_store_for_nodes(ctx.tracking_uri, nodes, [ray.util.get_node_ip_address()])
        say(f"Ray: {len(nodes)} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs")
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, ctx=ctx),
            {"cpu": resources.cpu, "gpu": resources.gpu},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(source),
                scheduler=_scheduler(scheduler, max_steps),
                num_samples=-1,  # until the source has no more trials
                max_concurrent_trials=workers,
                trial_name_creator=lambda t: t.config["trial"]["key"],
                trial_dirname_creator=lambda t: t.config["trial"]["key"],
            ),
            run_config=tune.RunConfig(
                name=storage_path.name,
                storage_path=str(storage_path.parent.resolve()),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[_printer(say)],
            ),
        )
        grid = tuner.fit()
        if scheduler is not None:  # without a scheduler no trial is stopped early
            _mark_stopped(grid)
        return [r.config["trial"]["key"] for r in grid if r.error is not None and r.config]
    finally:
        ray.shutdown()
