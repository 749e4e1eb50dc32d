"""Training tracked in MLflow: streamed metrics, params/tags/artifacts, registry, interrupt + resume.

Every test uses a temporary SQLite tracking store and runs in a temporary folder, so no mlflow.db or
runs/ folder is written into the repository.
"""

import math
import os
import signal
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import pytest
from mlflow import MlflowClient
from stable_baselines3.common.callbacks import BaseCallback

from defialloc.agents.sb3 import SB3Policy
from defialloc.envs.config import REPO_ROOT, ConfigError
from defialloc.training.callbacks import STATE_FILE, RunState
from defialloc.training.config import load_train_config
from defialloc.training.mlflow_logger import MLflowKVWriter
from defialloc.training.train import load_resume_config, train

ROLLOUT = 32 * 4  # n_steps x n_envs


def tiny_config(tmp_path: Path, **overrides):
    base = {
        "env.horizon": 30,
        "n_envs": 4,
        "total_timesteps": 8 * ROLLOUT,
        "ppo.n_steps": 32,
        "ppo.batch_size": 64,
        "ppo.n_epochs": 2,
        "policy.net_arch": [16, 16],
        "eval.every_steps": 2 * ROLLOUT,
        "eval.n_scenarios": 4,
        "eval.final": False,
        "checkpoint.every_steps": 2 * ROLLOUT,
        "output_dir": str(tmp_path / "runs"),
        "mlflow.experiment": f"test-train-{tmp_path.name}",
        "mlflow.register_model": False,
    }
    return load_train_config(REPO_ROOT / "configs" / "train" / "ppo.yaml", base | overrides)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes seconds); tests use own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(store)
    yield store
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


class MetricsSeenDuringTraining(BaseCallback):
    """Reads the run's metrics from MLflow while training is still going on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def _on_rollout_start(self) -> None:
        run_id = mlflow.active_run().info.run_id
        history = MlflowClient().get_metric_history(run_id, "time/total_timesteps")
        self.seen.append(len(history))

    def _on_step(self) -> bool:
        return True


class InterruptAt(BaseCallback):
    """Sends this process a SIGINT (as Ctrl-C would) once ``step`` env steps are done."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.sent = step, False

    def _on_step(self) -> bool:
        if not self.sent and self.num_timesteps >= self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return True


def test_kv_writer_forwards_numeric_values_at_the_step(tracking):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("kv")).info.run_id
    writer = MLflowKVWriter(run_id, client)
    values = {
        "train/loss": 0.5,
        "time/fps": 120,
        "note": "text",
        "flag": True,
        "hidden": 1.0,
        "bad": math.nan,
    }
    writer.write(
        values, {"hidden": ("stdout", "mlflow"), "train/loss": ("tensorboard",)}, step=4096
    )
    metrics = client.get_run(run_id).data.metrics
    assert metrics == {"train/loss": 0.5, "time/fps": 120.0}
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [4096]


def test_training_run_streams_metrics_logs_params_tags_artifacts_and_registers(tracking, tmp_path):
    cfg = tiny_config(
        tmp_path, **{"mlflow.register_model": True, "mlflow.registered_name": "test-ppo"}
    )
    watcher = MetricsSeenDuringTraining()
    result = train(cfg, progress=False, callbacks=[watcher])
    assert result.completed and result.num_timesteps == 8 * ROLLOUT
    # streamed: metrics of earlier iterations were in MLflow while training still ran
    assert watcher.seen[0] == 0 and watcher.seen[-1] >= 6
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(result.run_id, "time/total_timesteps")]
    assert steps == [ROLLOUT * k for k in range(1, 9)]
    assert len(client.get_metric_history(result.run_id, "train/loss")) >= 6
    val_steps = [m.step for m in client.get_metric_history(result.run_id, "val/mean_log_growth")]
    assert val_steps[:2] == [2 * ROLLOUT, 4 * ROLLOUT] and val_steps[-1] == 8 * ROLLOUT
    assert run.data.params["ppo.n_steps"] == "32"
    assert run.data.params["simulation.env.horizon"] == "30"
    assert run.data.tags["algo"] == "ppo"
    assert run.data.tags["config_hash"] == cfg.config_hash()
    assert run.data.tags["git_commit"]
    artifacts = {
        f.path
        for folder in ("final", "best", "config")
        for f in client.list_artifacts(result.run_id, folder)
    }
    assert {
        "final/model.zip",
        "final/vecnormalize.npz",  # statistics as plain arrays, never a pickle
        "best/model.zip",
        "config/train_config.yaml",
    } <= artifacts
    assert not any(path.endswith(".pkl") for path in artifacts)
    # the registry holds the best model as ONNX: reachable by alias, a pyfunc that returns the
    # SB3 policy's deterministic action and its target weights, and an onnx flavor
    version = client.get_model_version_by_alias("test-ppo", "candidate")
    assert str(version.version) == result.model_version and version.run_id == result.run_id
    assert version.tags["validation_metric"] == "mean_log_growth"
    assert float(version.tags["validation_score"]) == result.best_metric
    assert version.tags["candidate_decision"] == "first version with @candidate"
    served = mlflow.pyfunc.load_model("models:/test-ppo@candidate")
    best = result.policy_dir()
    policy = SB3Policy.load("ppo", best / "model.zip", best / "vecnormalize.npz", device="cpu")
    obs = np.random.default_rng(0).normal(size=(5, policy.obs_dim)).astype(np.float32)
    frame = served.predict(obs)
    action = policy.act(obs)
    names = [*cfg.simulation.market.assets, cfg.simulation.market.numeraire]
    np.testing.assert_allclose(frame[[f"action_{a}" for a in names]], action, atol=1e-5)
    # the training configs trade in the delta kind: its target depends on the current portfolio,
    # so the model returns the action only (target-kind weights: tests/test_registry.py)
    assert cfg.simulation.env.action.kind == "delta"
    assert not [c for c in frame.columns if c.startswith("weight_")]
    graph = mlflow.onnx.load_model("models:/test-ppo@candidate")
    assert [o.name for o in graph.graph.output] == ["action"]


def test_interrupted_run_resumes_in_the_same_run_without_losing_steps(tracking, tmp_path):
    cfg = tiny_config(tmp_path)
    first = train(cfg, progress=False, callbacks=[InterruptAt(3 * ROLLOUT - 8)])
    assert not first.completed
    client = MlflowClient()
    assert client.get_run(first.run_id).info.status == "KILLED"
    # the stop waits for the rollout boundary, so the checkpoint holds exactly the learned steps
    saved = RunState.load(first.run_dir / "checkpoint" / STATE_FILE)
    assert saved.num_timesteps == 3 * ROLLOUT == first.num_timesteps

    with pytest.raises(ConfigError, match="cannot change n_envs"):
        load_resume_config(first.run_id, {"n_envs": 8})
    resumed_cfg = load_resume_config(first.run_id)
    assert resumed_cfg.config_hash() == cfg.config_hash()
    second = train(resumed_cfg, resume_run_id=first.run_id, progress=False)
    assert second.run_id == first.run_id
    assert second.completed and second.num_timesteps == 8 * ROLLOUT
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(first.run_id, "time/total_timesteps")]
    # every iteration logged once, none repeated or missing
    assert sorted(steps) == [ROLLOUT * k for k in range(1, 9)]
    updates = sorted(
        client.get_metric_history(first.run_id, "train/n_updates"), key=lambda m: m.step
    )
    values = [m.value for m in updates]
    assert values == sorted(values) and values[-1] > values[0]  # the optimizer state carried on


def test_sac_resume_restores_the_replay_buffer(tracking, tmp_path):
    cfg = tiny_config(
        tmp_path,
        **{
            "algo": "sac",
            "sac.learning_starts": 64,
            "sac.buffer_size": 2000,
            "sac.batch_size": 32,
            "sac.gradient_steps": 1,
            "checkpoint.every_steps": 0,
            "total_timesteps": 600,
        },
    )
    first = train(cfg, progress=False, callbacks=[InterruptAt(300)])
    assert not first.completed
    stopped_at = RunState.load(first.run_dir / "checkpoint" / STATE_FILE).num_timesteps
    assert stopped_at == first.num_timesteps and 300 <= stopped_at < 320  # next vec-env step

    captured = {}

    class BufferSize(BaseCallback):
        def _on_training_start(self) -> None:
            captured["buffer"] = self.model.replay_buffer.size() * self.model.n_envs

        def _on_step(self) -> bool:
            return True

    second = train(
        load_resume_config(first.run_id),
        resume_run_id=first.run_id,
        progress=False,
        callbacks=[BufferSize()],
    )
    assert captured["buffer"] == stopped_at  # every transition collected before the stop
    assert second.completed and second.num_timesteps == 600 and second.run_id == first.run_id


def test_training_ends_with_agent_vs_baselines_in_the_same_experiment(tracking, tmp_path):
    cfg = tiny_config(
        tmp_path,
        **{
            "total_timesteps": 2 * ROLLOUT,
            "eval.final": True,
            "eval.test_scenarios": 3,
            "eval.baselines": ["equal_weight"],
            "eval.held_out": True,
            "eval.plots": False,
        },
    )
    result = train(cfg, progress=False)
    assert set(result.evaluation_run_ids) == {"test", "held_out"}
    client = MlflowClient()
    training_run = client.get_run(result.run_id)
    for run_id in result.evaluation_run_ids.values():
        run = client.get_run(run_id)
        assert run.info.experiment_id == training_run.info.experiment_id
        assert run.data.tags["defialloc.kind"] == "evaluation"
        assert run.data.params["policies"] == "ppo,equal_weight"
        assert run.data.params["training_run_id"] == result.run_id
        children = {
            c.info.run_name: c
            for c in client.search_runs(
                [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
            )
        }
        assert set(children) == {"ppo", "equal_weight"}
        agent, baseline = children["ppo"], children["equal_weight"]
        assert agent.data.tags["defialloc.policy_kind"] == "agent"
        assert baseline.data.tags["defialloc.policy_kind"] == "baseline"
        assert agent.data.params["training_run_id"] == result.run_id
        assert "training_run_id" not in baseline.data.params
        assert "sharpe_ratio" in agent.data.metrics and "sharpe_ratio" in baseline.data.metrics
    held = client.get_run(result.evaluation_run_ids["held_out"])
    assert held.data.tags["held_out"] == "true"
    assert held.data.params["period_start"] == "2023-01-01"
    assert client.get_run(result.evaluation_run_ids["test"]).data.params["n_scenarios"] == "3"


def test_resume_of_a_finished_run_says_so_and_leaves_it_finished(tracking, tmp_path):
    from typer.testing import CliRunner

    from defialloc.training.cli import app

    result = train(tiny_config(tmp_path), progress=False)
    assert result.completed
    client = MlflowClient()
    before = client.get_run(result.run_id)
    out = CliRunner().invoke(app, ["train", "--resume", result.run_id])
    assert out.exit_code == 0, out.output
    assert "already finished" in out.output and "Traceback" not in out.output
    after = client.get_run(result.run_id)
    assert after.info.status == "FINISHED" == before.info.status
    assert after.data.tags["defialloc.status"] == "completed"
    assert after.info.end_time == before.info.end_time
    # a longer budget resumes it
    more = load_resume_config(result.run_id, {"total_timesteps": 10 * ROLLOUT})
    assert more.total_timesteps == 10 * ROLLOUT


def test_learning_rate_and_entropy_schedules_are_logged_with_their_real_values(tracking, tmp_path):
    cfg = tiny_config(
        tmp_path,
        **{
            "ppo.learning_rate": 1e-3,
            "ppo.learning_rate_final": 1e-4,
            "ppo.ent_coef": 0.02,
            "ppo.ent_coef_final": 0.0,
        },
    )
    result = train(cfg, progress=False)
    client = MlflowClient()

    def history(key):
        return [
            m.value
            for m in sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)
        ]

    lr, ent = history("train/learning_rate"), history("train/ent_coef")
    assert len(lr) >= 6 and len(ent) >= 6
    assert lr == sorted(lr, reverse=True) and 1e-4 < lr[-1] < lr[0] <= 1e-3
    assert ent == sorted(ent, reverse=True) and ent[0] == pytest.approx(0.02) and ent[-1] < 0.01
    total = cfg.total_timesteps  # SB3 evaluates the schedule at the progress remaining
    first_update = ROLLOUT
    assert lr[0] == pytest.approx(1e-4 + 9e-4 * (1 - first_update / total), rel=1e-6)
