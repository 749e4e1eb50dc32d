"""A registered policy loads with ``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` in a fresh
virtualenv that holds only mlflow, onnxruntime, numpy and pandas, and never this repository.

The model is registered on a real ``mlflow server`` (127.0.0.1, stopped by its PID); the fresh
environment reaches it over HTTP, the way a colleague would. It gets ``mlflow-skinny`` (MLflow's
client without the server, the same version as here, so the test stays lean), onnxruntime, numpy
and pandas from PyPI (about 2 minutes on this 2-core machine with a cold pip cache). Its Python
runs from a temporary folder with no PYTHONPATH, and checks that no module of this repository can
be imported before it loads the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from defialloc.agents.onnx_policy import OnnxPolicy
from tests.mlflow_server_helper import mlflow_server
from tests.test_paper import make_policy_dir

pytestmark = pytest.mark.slow

SCRIPT = """
import importlib.util, json, sys
import numpy as np
for name in ("agents", "envs", "evaluation", "training", "defialloc", "stable_baselines3", "torch"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable in the fresh env"
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = model.predict(np.load("obs.npy"))
np.save("pred.npy", frame.to_numpy(dtype=np.float64))
json.dump(list(frame.columns), open("columns.json", "w"))
"""


def test_registered_model_loads_in_a_fresh_virtualenv_without_this_repo(tmp_path, monkeypatch):
    import mlflow

    from defialloc.agents.mlflow_store import setup_mlflow
    from defialloc.agents.registry import Validation, log_policy_model, register_policy

    export = make_policy_dir(tmp_path / "export")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    packages = [f"mlflow-skinny=={version('mlflow')}", f"onnxruntime=={version('onnxruntime')}",
                "numpy", "pandas"]  # fmt: skip
    subprocess.run([*pip, "--disable-pip-version-check", *packages], check=True, timeout=900)

    work = tmp_path / "elsewhere"  # not the repository: nothing of it on sys.path
    work.mkdir()
    policy = OnnxPolicy(export)
    obs = np.random.default_rng(3).normal(size=(6, policy.obs_dim)).astype(np.float32)
    np.save(work / "obs.npy", obs)
    with mlflow_server(tmp_path / "server") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with mlflow.start_run(experiment_id=setup_mlflow("fresh-env")):
            uri = log_policy_model(export)
        register_policy(uri, "fresh-ppo", Validation("mean_log_growth", 0.1, 8, "c"))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": url,
               "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c", SCRIPT, "models:/fresh-ppo@candidate"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    columns = json.loads((work / "columns.json").read_text())
    predicted = np.load(work / "pred.npy")
    expected = policy.predict(obs)
    labels = [*policy.manifest.asset_names, policy.manifest.numeraire]
    assert columns == [f"weight_{a}" for a in labels] + [f"action_{a}" for a in labels]
    np.testing.assert_allclose(predicted[:, : len(labels)], expected["target_weights"], atol=1e-7)
    np.testing.assert_allclose(predicted[:, len(labels) :], expected["action"], atol=1e-6)
    assert Path(work / "pred.npy").stat().st_size > 0
