"""A trial the scheduler stops early (in-process, no Ray): the report that Tune would answer with
"stop" raises, training stops at that rollout boundary, and the run is tagged ``early_stopped`` so a
resumed driver does not continue it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from defialloc.training.config import load_train_config
from defialloc.training.sweeps.config import TRIAL_OVERRIDES
from defialloc.training.sweeps.context import EARLY_STOPPED, SweepContext
from defialloc.training.sweeps.tracking import open_parent
from defialloc.training.sweeps.trial import EarlyStop, run_trial
from defialloc.training.sweeps.trials import TrialSpec
from defialloc.training.train import STATUS_TAG

pytestmark = pytest.mark.slow


@dataclass
class StopAtFirstReport:
    """A session like Ray's that is told to stop the trial at its first report."""

    wants_checkpoints: bool = True
    reports: list[dict] = field(default_factory=list)

    def report(self, metrics, checkpoint):  # noqa: ANN001
        assert checkpoint is not None and (checkpoint / "checkpoint").is_dir()
        self.reports.append(dict(metrics))
        raise EarlyStop

    def restored(self):  # noqa: ANN201
        from contextlib import nullcontext

        return nullcontext(None)


def test_a_trial_stopped_at_its_first_report_ends_there_tagged_early_stopped(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    overrides = {"total_timesteps": 4096, "n_envs": 8, "ppo.batch_size": 128, "env.horizon": 30,
                 "eval.every_steps": 1024, "eval.n_scenarios": 4, "checkpoint.every_steps": 1024}  # fmt: skip
    base = load_train_config("configs/train/ppo.yaml", {**overrides, **TRIAL_OVERRIDES})
    parent = open_parent("early", "early", "h", "sweep", {})
    ctx = SweepContext(
        sweep="early", parent_run_id=parent.run_id, experiment="early", tracking_uri=uri,
        output_dir=str(tmp_path / "runs"), bases={"base": base.resolved()},
        metric=base.eval.metric, trial_overrides=dict(TRIAL_OVERRIDES),
    )  # fmt: skip
    spec = TrialSpec("a-seed0", "a", "a", "base", {}, 0, "a-seed0")
    session = StopAtFirstReport()
    out = run_trial(spec, ctx, session)
    assert out["status"] == EARLY_STOPPED and len(session.reports) == 1
    first = session.reports[0]["env_steps"]
    assert 1024 <= first < 4096 and out["env_steps"] == first
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.tags[STATUS_TAG] == EARLY_STOPPED
    steps = {
        m.step for m in MlflowClient().get_metric_history(out["run_id"], "val/mean_log_growth")
    }
    assert max(steps) == first  # no validation after the stop
    assert Path(run.data.tags["defialloc.run_dir"]).is_dir()
