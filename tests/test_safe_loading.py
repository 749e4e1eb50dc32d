"""Loading never executes code from files: crafted ``model.zip`` and ``vecnormalize.pkl`` files
(pickles whose ``__reduce__`` writes a marker file) go through export (a file, a training run's
artifacts), resume and paper trading; no marker may appear.

A crafted model zip puts the payload in every cloudpickled entry SB3 writes (policy class, spaces,
schedules, buffers): the loader rebuilds those from plain JSON, so the zip loads and acts exactly
like the clean one. A payload in an entry the loader does not know is refused. A crafted
statistics pickle is refused by the restricted unpickler before anything in it runs.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.agents.sb3 import load_model, make_agent
from defialloc.agents.sb3_io import read_model_data, save_statistics, serialized_entries
from defialloc.training.callbacks import STATE_FILE, RunState
from defialloc.training.cli import app
from defialloc.training.train import RUN_DIR_TAG, build_env
from tests.test_paper import make_policy_dir
from tests.test_train_mlflow import ROLLOUT, tiny_config


class _Payload:
    """Unpickling this writes ``path`` (what an attacker's file would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def text(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def evil_bytes(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def craft_zip(clean: Path, out: Path, marker: Path, *, extra_entry: bool = False) -> Path:
    """``clean`` with the payload in every serialized entry (and, optionally, in a new one)."""
    data = read_model_data(clean)
    payload = base64.b64encode(evil_bytes(marker)).decode()
    for key in serialized_entries(data):
        data[key][":serialized:"] = payload
    if extra_entry:
        data["backdoor"] = {":type:": "<class 'object'>", ":serialized:": payload}
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(data) if name == "data" else src.read(name))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PPO (untrained, but with real VecNormalize statistics) saved as a run folder would hold it."""
    root = tmp_path_factory.mktemp("safe")
    cfg = tiny_config(root, **{"total_timesteps": 2 * ROLLOUT})
    venv = build_env(cfg, 0)
    venv.reset()
    for _ in range(20):
        venv.step(np.random.default_rng(0).uniform(-1, 1, (cfg.n_envs, venv.action_space.shape[0])))
    model = make_agent(cfg.algo, venv, cfg.agent_kwargs(), "cpu", seed=0)
    folder = root / "clean"
    folder.mkdir()
    model.save(folder / "model.zip")
    save_statistics(venv, folder)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    return cfg, folder


def test_crafted_model_zip_loads_without_running_its_payload(trained, tmp_path):
    _, clean = trained
    marker = tmp_path / "MARKER"
    evil = craft_zip(clean / "model.zip", tmp_path / "evil.zip", marker)
    assert len(serialized_entries(read_model_data(evil))) >= 6  # spaces, schedules, classes...
    reference = load_model("ppo", clean / "model.zip", device="cpu")
    obs_dim = reference.observation_space.shape[0]
    obs = np.random.default_rng(1).normal(size=(4, obs_dim)).astype(np.float32)
    a = load_model("ppo", evil, device="cpu").predict(obs, deterministic=True)[0]
    b = reference.predict(obs, deterministic=True)[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="'backdoor'.*refused rather than unpickled"):
        load_model(
            "ppo", craft_zip(clean / "model.zip", tmp_path / "e2.zip", marker, extra_entry=True)
        )
    assert not marker.exists()


def test_export_of_crafted_files_runs_no_code(trained, tmp_path):
    _, clean = trained
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil"
    craft_zip(clean / "model.zip", evil / "model.zip", marker)
    shutil.copy(clean / "config.yaml", evil / "config.yaml")
    (evil / "vecnormalize.pkl").write_bytes(evil_bytes(marker))
    runner = CliRunner()
    args = [
        "export",
        "--model",
        str(evil / "model.zip"),
        "--out",
        str(tmp_path / "out"),
        "--no-mlflow",
    ]
    out = runner.invoke(app, args)
    assert out.exit_code == 2 and "refused builtins.exec" in text(out), out.output
    assert not (tmp_path / "out" / "policy.onnx").exists()
    # with plain-array statistics the crafted zip exports, exactly like the clean one
    (evil / "vecnormalize.pkl").unlink()
    shutil.copy(clean / "vecnormalize.npz", evil / "vecnormalize.npz")
    assert runner.invoke(app, args).exit_code == 0
    ok = runner.invoke(app, [*args[:2], str(clean / "model.zip"), "--out", str(tmp_path / "ok"),
                             "--no-mlflow"])  # fmt: skip
    assert ok.exit_code == 0
    obs_dim = OnnxPolicy(tmp_path / "ok").obs_dim
    obs = np.random.default_rng(2).normal(size=(5, obs_dim)).astype(np.float32)
    np.testing.assert_array_equal(
        OnnxPolicy(tmp_path / "out").act(obs), OnnxPolicy(tmp_path / "ok").act(obs)
    )
    assert not marker.exists()


def test_export_from_a_run_with_crafted_artifacts_runs_no_code(trained, tmp_path, monkeypatch):
    cfg, clean = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    marker = tmp_path / "MARKER"
    staged = tmp_path / "best"
    craft_zip(clean / "model.zip", staged / "model.zip", marker)
    (staged / "vecnormalize.pkl").write_bytes(evil_bytes(marker))
    from defialloc.agents.mlflow_store import setup_mlflow

    with mlflow.start_run(experiment_id=setup_mlflow("crafted")) as run:
        mlflow.log_artifacts(str(staged), "best")
        mlflow.log_text(cfg.to_yaml(), "config/train_config.yaml")
        mlflow.set_tag("algo", "ppo")
    out = CliRunner().invoke(
        app, ["export", "--run-id", run.info.run_id, "--out", str(tmp_path / "o"), "--no-mlflow"]
    )
    assert out.exit_code == 2 and "refused builtins.exec" in text(out), out.output
    assert not marker.exists()


def test_resume_from_crafted_checkpoint_files_runs_no_code(trained, tmp_path, monkeypatch):
    cfg, clean = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    marker = tmp_path / "MARKER"
    # a run whose tag points at a folder of crafted files (the path comes from the tracking server)
    run_dir = tmp_path / "runs" / "crafted"
    checkpoint = run_dir / "checkpoint"
    craft_zip(clean / "model.zip", checkpoint / "model.zip", marker)
    (checkpoint / "vecnormalize.pkl").write_bytes(evil_bytes(marker))
    RunState(num_timesteps=0).save(checkpoint / STATE_FILE)
    data = yaml.safe_load(cfg.to_yaml()) | {"output_dir": str(tmp_path / "runs")}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
    from defialloc.agents.mlflow_store import setup_mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")  # not a previous test's store
    run = client.create_run(setup_mlflow(cfg.mlflow.experiment), tags={RUN_DIR_TAG: str(run_dir)})
    client.set_terminated(run.info.run_id, "KILLED")
    runner = CliRunner()
    out = runner.invoke(app, ["train", "--resume", run.info.run_id, "--no-progress"])
    assert out.exit_code == 2 and "checkpoint refused" in text(out), out.output
    assert client.get_run(run.info.run_id).info.status == "KILLED"  # the run was not touched
    # plain-array statistics: the crafted zip's poisoned entries are rebuilt, training resumes
    (checkpoint / "vecnormalize.pkl").unlink()
    shutil.copy(clean / "vecnormalize.npz", checkpoint / "vecnormalize.npz")
    out = runner.invoke(app, ["train", "--resume", run.info.run_id, "--no-progress"])
    assert out.exit_code == 0, out.output
    assert RunState.load(checkpoint / STATE_FILE).num_timesteps == cfg.total_timesteps
    assert not marker.exists()


def test_paper_trading_never_opens_crafted_files_next_to_the_policy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    policy = make_policy_dir(tmp_path / "policy")
    for name in ("model.zip", "vecnormalize.pkl", "replay_buffer.pkl", "policy.pkl"):
        (policy / name).write_bytes(evil_bytes(marker))
    out = CliRunner().invoke(
        app,
        ["paper", "--policy", str(policy), "--feed", "simulated", "--bars", "80",
         "--ledger", str(tmp_path / "paper.db"), "--no-mlflow", "--no-view"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert not marker.exists()
