"""The experiment's ablation: variants scored on validation only, the winner applied to the final runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from rich.console import Console

import defialloc.training.train as train_module
from defialloc.envs.config import ConfigError
from defialloc.evaluation.tracking import setup_mlflow
from defialloc.training.config import load_train_config
from defialloc.training.experiment import load_experiment, run_experiment
from defialloc.training.train import STATUS_TAG, TrainResult


def _experiment(tmp_path: Path, apply_to: list[str]) -> Path:
    spec = {
        "experiment": f"exp-{tmp_path.name}",
        "ablation": {
            "config": "configs/train/ppo.yaml",
            "seeds": [0, 1],
            "overrides": {"total_timesteps": 1000},
            "variants": {
                "daily_target": {"env.action.kind": "target", "env.decision_every": 1},
                "weekly_anchored": {"env.action.kind": "anchored", "env.decision_every": 7},
            },
            "apply_to": apply_to,
        },
        "runs": [
            {"config": "configs/train/ppo.yaml", "seeds": [3]},
            {"config": "configs/train/sac.yaml", "seeds": [4]},
        ],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def fake_train(monkeypatch, tmp_path):
    """Records every training config; scores the weekly anchored variant higher."""
    seen = []

    def train(cfg, *, parent_run_id=None, tags=None, **_):
        """Logs what a real run logs for the sweep machinery: a nested run, its best validation
        score and the completed status."""
        seen.append(cfg)
        weekly = cfg.simulation.env.decision_every == 7
        score = 0.02 + 0.001 * cfg.seed if weekly else 0.01
        experiment_id = setup_mlflow(cfg.mlflow.experiment)
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=cfg.mlflow.run_name,
            parent_run_id=parent_run_id,
            tags={**(tags or {}), STATUS_TAG: "completed"},
        ) as run:
            mlflow.log_metric(f"val/best_{cfg.eval.metric}", score, step=cfg.total_timesteps)
        run_dir = tmp_path / run.info.run_id
        run_dir.mkdir()
        return TrainResult(
            run.info.run_id,
            experiment_id,
            cfg.algo,
            cfg.total_timesteps,
            True,
            run_dir,
            1.0,
            score,
            1,
        )

    monkeypatch.setattr(train_module, "train", train)
    monkeypatch.setattr("defialloc.evaluation.report.compare", lambda *a, **k: [])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    return seen


def test_ablation_selects_on_validation_and_applies_the_winner(fake_train, tmp_path):
    path = _experiment(tmp_path, ["configs/train/ppo.yaml"])
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")
    ablation, final = fake_train[:4], fake_train[4:]
    # every ablation run is validation-only and kept out of the final experiment
    assert all(not c.eval.final and not c.mlflow.register_model for c in ablation)
    assert all(c.mlflow.experiment.endswith("-ablation") for c in ablation)
    # the winner's overrides go to the named run only; the test set is evaluated there, once
    ppo, sac = final
    assert ppo.simulation.env.action.kind == "anchored" and ppo.simulation.env.decision_every == 7
    own = load_train_config(
        "configs/train/sac.yaml"
    ).simulation.env  # not in apply_to: its own file's
    assert sac.simulation.env.action.kind == own.action.kind
    assert sac.simulation.env.decision_every == own.decision_every != 7
    assert ppo.eval.final and ppo.mlflow.experiment == f"exp-{tmp_path.name}"
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(f"exp-{tmp_path.name}-ablation")
    (summary,) = client.search_runs([exp.experiment_id], "tags.kind = 'ablation'")
    assert summary.data.tags["winner"] == "weekly_anchored"
    assert summary.data.params["winner.env.decision_every"] == "7"


def test_apply_to_must_name_runs_before_anything_trains(fake_train, tmp_path):
    with pytest.raises(ConfigError, match="apply_to"):
        run_experiment(_experiment(tmp_path, ["configs/train/nope.yaml"]), Console())
    assert fake_train == []


def test_a_single_variant_is_refused(tmp_path):
    path = _experiment(tmp_path, [])
    data = yaml.safe_load(path.read_text())
    data["ablation"]["variants"].pop("daily_target")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="variants"):
        load_experiment(path)


def test_a_finished_ablation_is_reused_not_rerun(fake_train, tmp_path):
    path = _experiment(tmp_path, ["configs/train/ppo.yaml"])
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")
    assert len(fake_train) == 6
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")  # resumed after a kill
    assert len(fake_train) == 8  # only the two final runs again
    assert fake_train[-2].simulation.env.decision_every == 7


def test_fresh_reruns_a_finished_ablation(fake_train, tmp_path):
    path = _experiment(tmp_path, ["configs/train/ppo.yaml"])
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")
    run_experiment(path, Console(width=200), out=tmp_path / "report.md", fresh=True)
    assert len(fake_train) == 12  # 4 ablation trials + 2 runs, twice


def test_an_interrupted_ablation_reuses_its_finished_runs(fake_train, tmp_path, monkeypatch):
    path = _experiment(tmp_path, ["configs/train/ppo.yaml"])
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")
    assert len(fake_train) == 6
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(f"exp-{tmp_path.name}-ablation")
    (parent,) = client.search_runs([exp.experiment_id], "tags.kind = 'ablation'")
    # as if the process died after the variants' runs, before the ablation's table
    client.set_tag(parent.info.run_id, "defialloc.sweep_state", "running")
    client.set_terminated(parent.info.run_id, status="KILLED")
    fake_train.clear()
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")
    # the four variant runs are reused from MLflow; only the two final runs train again
    assert [c.mlflow.experiment for c in fake_train] == [f"exp-{tmp_path.name}"] * 2
    assert (
        fake_train[0].simulation.env.decision_every == 7
    )  # the same winner, from the reused scores
    # a changed spec (another seed list) trains its variants afresh
    spec = yaml.safe_load(path.read_text())
    spec["ablation"]["seeds"] = [0]
    path.write_text(yaml.safe_dump(spec))
    fake_train.clear()
    run_experiment(path, Console(width=200), out=tmp_path / "report.md")
    assert sum(c.mlflow.experiment.endswith("-ablation") for c in fake_train) == 2


def test_runs_filter_trains_only_the_named_configs(fake_train, tmp_path):
    path = _experiment(tmp_path, ["configs/train/ppo.yaml"])
    run_experiment(path, Console(width=200), out=tmp_path / "r.md", only=["configs/train/sac.yaml"])
    final = [c for c in fake_train if not c.mlflow.experiment.endswith("-ablation")]
    assert [c.algo for c in final] == ["sac"]
    with pytest.raises(ConfigError, match="not runs of"):
        run_experiment(path, Console(), only=["configs/train/nope.yaml"])
