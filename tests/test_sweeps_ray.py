"""Sweeps end to end through the CLI: the smoke sweep on a local Ray, a trial worker killed mid-trial
and retried from its checkpoint, a killed driver resumed, and a two-node Ray cluster on 127.0.0.1.

Every process a test starts is stopped by its PID (the Ray nodes: by the PID of their
``ray start --block`` process, then their process group), never by name (no ``ray stop``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from defialloc.training.config import load_train_config
from tests.mlflow_server_helper import free_port, group_alive

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "defialloc-sweeps"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **extra)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "defialloc.training.cli", *args]


def _sweep_file(tmp_path: Path, name: str, values: list[float], **overrides) -> Path:
    spec = {
        "sweep": name,
        "experiment": EXPERIMENT,
        "config": "configs/train/ppo.yaml",
        "overrides": {
            "total_timesteps": 8192,
            "n_envs": 16,
            "ppo.batch_size": 256,
            "env.horizon": 60,
            "eval.every_steps": 2048,
            "eval.n_scenarios": 8,
            "checkpoint.every_steps": 2048,
            **overrides,
        },
        "seeds": [0],
        "search": "grid",
        "space": {"ppo.learning_rate": {"values": values}},
        "out": str(tmp_path / "reports"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _parent_and_trials(tmp_path: Path, kind: str = "sweep"):
    client = _client(tmp_path)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")
    trials = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return client, parent, trials


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _trial_runs(tmp_path: Path) -> list:
    client = _client(tmp_path)
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
    except Exception:  # noqa: BLE001 - the database may not exist yet
        return []
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`defialloc.trial` != ''")


def test_smoke_sweep_on_local_ray_and_a_killed_trial_worker_resumes_from_its_checkpoint(tmp_path):
    """The shipped configs/sweeps/smoke.yaml as it is, on a local Ray. Once a trial has reported its
    first Ray checkpoint (step 4096 of 16384), its worker process is killed with SIGKILL: Ray retries
    the trial, which continues the SAME MLflow run from that checkpoint. (One sweep for both checks:
    starting Ray and its workers is most of the time on 2 cores.)"""
    proc = subprocess.Popen(
        _cli("sweep", "--config", str(REPO / "configs/sweeps/smoke.yaml")),
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        marker = _wait_for(
            lambda: next(iter((tmp_path / "runs/sweeps").glob("smoke-*/*/checkpoint_*/trial.json")), None),
            600, "a trial's first checkpoint", proc,
        )  # fmt: skip
        key = marker.parent.parent.name  # the trial folder is named by the trial key
        (victim,) = [r for r in _trial_runs(tmp_path) if r.data.tags["defialloc.trial"] == key]
        pid = int(victim.data.tags["defialloc.trial_pid"])
        time.sleep(0.5)  # let the report finish; training goes on
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert f"trial {key}: worker failed, retrying from its checkpoint" in out
    client, parent, trials = _parent_and_trials(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == 2
    assert len(trials) == 2  # the killed trial continued its run: no third run
    for run in trials:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["defialloc.status"] == "completed"
        assert tags["defialloc.node"] != "local"  # it ran in a Ray worker
        assert run.data.params["eval.final"] == "false"  # validation only: no test set touched
        history = client.get_metric_history(run.info.run_id, "val/mean_log_growth")
        assert {m.step for m in history} == {4096, 8192, 12288, 16384}
        resumed = [
            int(k.removeprefix("resumed_at_step_")) for k in tags if k.startswith("resumed_")
        ]
        if tags["defialloc.trial"] == key:
            assert (
                resumed and 4096 <= resumed[0] < 16384 and int(tags["defialloc.trial_pid"]) != pid
            )
        else:
            assert resumed == []
    assert {r.data.params["ppo.learning_rate"] for r in trials} == {"0.0003", "0.001"}
    best = max(trials, key=lambda r: r.data.metrics["val/best_mean_log_growth"])
    assert parent.data.tags["winner"] == best.data.tags["defialloc.config_label"]
    cfg = load_train_config(tmp_path / "reports/sweeps/smoke/best_config.yaml")
    assert str(cfg.ppo.learning_rate) == best.data.params["ppo.learning_rate"]
    table = (tmp_path / "reports/sweeps/smoke/results.md").read_text()
    assert "N = 2 trials" in table and table.count("| ppo.learning_rate=") == 2


def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    """``--backend local``: kill the driver while the second trial trains, run the same command."""
    path = _sweep_file(tmp_path, "resume", [3e-4, 1e-3])
    args = _cli("sweep", "--config", str(path), "--backend", "local")
    env = _env(tmp_path)
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def second_has_checkpoint():
        runs = _trial_runs(tmp_path)
        done = [r for r in runs if r.data.tags.get("defialloc.status") == "completed"]
        live = [r for r in runs if r.data.tags.get("defialloc.status") == "running"]
        if len(done) == 1 and live:
            state = Path(live[0].data.tags["defialloc.run_dir"]) / "checkpoint/state.json"
            return state.is_file() and (done[0], live[0])
        return None

    try:
        done, live = _wait_for(second_has_checkpoint, 600, "the second trial's checkpoint", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming sweep run" in again.stdout and "1 trial(s) finished" in again.stdout
    client, parent, trials = _parent_and_trials(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_id for r in trials) == sorted([done.info.run_id, live.info.run_id])
    finished_first = client.get_run(done.info.run_id)
    assert not any(k.startswith("resumed_at_step_") for k in finished_first.data.tags)
    continued = client.get_run(live.info.run_id)
    assert any(k.startswith("resumed_at_step_") for k in continued.data.tags)
    assert continued.data.tags["defialloc.status"] == "completed"


def _stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's ``ray start --block`` PID (it stops its GCS, raylet and workers);
    then whatever is left in its process group (it leads its own group)."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(proc.pid):
            return
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_two_local_ray_nodes_share_a_sweep(tmp_path):
    port = free_port()
    # a private token for this test's cluster (Ray 2.60 refuses unauthenticated nodes)
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    # a temp folder of its own: Ray's default (/tmp/ray) would keep this cluster's address as the
    # machine's "current cluster" after the test (short: Ray's socket paths have a length limit)
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
              "--temp-dir", temp, "--block"]  # fmt: skip
    nodes: list[subprocess.Popen] = []
    log = (tmp_path / "nodes.log").open("w")
    try:
        nodes.append(subprocess.Popen(
            [RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        nodes.append(subprocess.Popen(
            [RAY, "start", "--address", f"127.0.0.1:{port}", *common],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        wait = (
            f"import ray, time; ray.init(address='127.0.0.1:{port}', logging_level='ERROR')\n"
            "t = time.monotonic()\n"
            "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() - t < 180:\n"
            "    time.sleep(0.5)\n"
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        ready = subprocess.run(
            [sys.executable, "-c", wait], env=env, capture_output=True, text=True, timeout=300
        )
        assert ready.stdout.strip().endswith("2"), ready.stderr[-2000:]
        path = _sweep_file(tmp_path, "two", [3e-4, 1e-3], total_timesteps=4096)
        proc = subprocess.run(
            _cli("sweep", "--config", str(path), "--address", f"127.0.0.1:{port}", "--workers", "2"),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Ray: 2 node(s)" in proc.stdout
    finally:
        for node in reversed(nodes):
            _stop_node(node)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
    assert not any(group_alive(n.pid) for n in nodes)
    _, parent, trials = _parent_and_trials(tmp_path)
    assert len(trials) == 2 and all(r.data.tags["defialloc.status"] == "completed" for r in trials)
    assert len({r.data.tags["defialloc.node"] for r in trials}) == 2  # one trial on each node
