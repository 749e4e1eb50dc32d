"""The registered policy model: a pyfunc that needs no code of this repository, aliases, promote,
export from ``models:/`` (agents/registry.py, agents/onnx_pyfunc.py, `defialloc promote`)."""

from __future__ import annotations

import ast
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from defialloc.agents.onnx_policy import MANIFEST_FILE, ONNX_FILE, OnnxPolicy, sha256_file
from defialloc.agents.registry import (
    MODEL_CODE,
    Validation,
    log_policy_model,
    parse_models_uri,
    register_policy,
)
from defialloc.training.cli import app
from tests.test_paper import make_policy_dir

NAME = "reg-ppo"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store, one export and its model logged once in a run (the versions share it)."""
    root = tmp_path_factory.mktemp("registry")
    export = make_policy_dir(root / "export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'm.db'}")
        from defialloc.agents.mlflow_store import setup_mlflow

        with mlflow.start_run(experiment_id=setup_mlflow("registry")) as run:
            uri = log_policy_model(export)
        yield {"root": root, "export": export, "uri": uri, "run_id": run.info.run_id}


def _alias(name: str, alias: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)


def test_candidate_moves_only_when_the_new_version_validates_better(store):
    uri = store["uri"]
    setting = ("mean_log_growth", 32, "cfg-a")
    first = register_policy(uri, NAME, Validation(*setting[:1], 0.010, *setting[1:]))
    assert first.alias_moved and _alias(NAME, "candidate") == first.version
    worse = register_policy(uri, NAME, Validation(setting[0], 0.005, *setting[1:]))
    assert not worse.alias_moved and _alias(NAME, "candidate") == first.version
    assert "not above" in worse.reason
    other = register_policy(uri, NAME, Validation(setting[0], 0.900, 32, "cfg-b"))
    assert not other.alias_moved and "not comparable" in other.reason  # another simulation config
    unscored = register_policy(uri, NAME, None)
    assert not unscored.alias_moved
    better = register_policy(uri, NAME, Validation(setting[0], 0.020, *setting[1:]))
    assert better.alias_moved and _alias(NAME, "candidate") == better.version
    tags = mlflow.MlflowClient().get_model_version(NAME, worse.version).tags
    assert tags["candidate_decision"] == worse.reason and tags["validation_score"] == "0.005"


def test_pyfunc_returns_weights_and_actions_and_the_onnx_flavor_loads(store):
    policy = OnnxPolicy(store["export"])
    register_policy(store["uri"], "reg-serve", Validation("mean_log_growth", 0.1, 8, "c"))
    served = mlflow.pyfunc.load_model("models:/reg-serve@candidate")
    obs = np.random.default_rng(0).normal(size=(7, policy.obs_dim)).astype(np.float32)
    frame = served.predict(obs)
    graph = policy.predict(obs)
    labels = [*policy.manifest.asset_names, policy.manifest.numeraire]
    weights = frame[[f"weight_{a}" for a in labels]].to_numpy()
    np.testing.assert_array_equal(weights, graph["target_weights"])
    np.testing.assert_array_equal(frame[[f"action_{a}" for a in labels]], graph["action"])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    # a DataFrame of the named features works too
    named = pd.DataFrame(obs, columns=list(policy.manifest.observation_names))
    pd.testing.assert_frame_equal(served.predict(named), frame)
    assert len(served.predict(obs[:1])) == 1
    schema = served.metadata.signature
    assert tuple(schema.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, policy.obs_dim)
    assert schema.outputs.input_names() == list(frame.columns)
    with pytest.raises(Exception, match="shape"):
        served.predict(obs[:, :-1])
    onnx_model = mlflow.onnx.load_model("models:/reg-serve@candidate")
    assert [o.name for o in onnx_model.graph.output] == ["action", "target_weights"]
    # what a user gets who passes text instead of numbers: a clear message, not a traceback
    model = served.unwrap_python_model()
    with pytest.raises(ValueError, match="observations must be numbers"):
        model.predict(None, np.full((1, policy.obs_dim), "x"))


def test_model_code_imports_nothing_from_this_repository():
    tree = ast.parse(MODEL_CODE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    allowed = {"__future__", "hashlib", "json", "pathlib", "typing", "mlflow", "numpy", "pandas",
               "onnxruntime"}  # fmt: skip
    assert imported <= allowed, imported - allowed


def test_promote_and_export_from_a_models_uri(store, tmp_path):
    runner = CliRunner()
    register_policy(store["uri"], "reg-cli", Validation("mean_log_growth", 0.1, 8, "c"))
    register_policy(store["uri"], "reg-cli", Validation("mean_log_growth", 0.2, 8, "c"))
    out = runner.invoke(app, ["promote", "reg-cli"])
    assert out.exit_code == 0, out.output
    assert _alias("reg-cli", "champion") == _alias("reg-cli", "candidate") == "2"
    out = runner.invoke(app, ["promote", "reg-cli", "--version", "1", "--alias", "fallback"])
    assert out.exit_code == 0 and _alias("reg-cli", "fallback") == "1"
    out = runner.invoke(app, ["promote", "nope"])
    assert out.exit_code == 2 and "nope" in out.output and "Traceback" not in out.output

    dest = tmp_path / "from-registry"
    out = runner.invoke(app, ["export", "--model", "models:/reg-cli@champion", "--out", str(dest)])
    assert out.exit_code == 0, out.output
    for name in (ONNX_FILE, MANIFEST_FILE):
        assert sha256_file(dest / name) == sha256_file(store["export"] / name)
    assert OnnxPolicy(dest).manifest.policy_id == OnnxPolicy(store["export"]).manifest.policy_id
    printed = runner.invoke(
        app, ["export", "--model", "models:/reg-cli/1", "--out", str(dest), "--print-config"]
    )
    assert printed.exit_code == 0 and "market:" in printed.output and "env:" in printed.output
    for bad, message in (("models:/reg-cli@nobody", "nobody"), ("models:/reg-cli", "expected")):
        out = runner.invoke(app, ["export", "--model", bad, "--out", str(tmp_path / "x")])
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
    assert not (tmp_path / "x").exists()
    shutil.rmtree(dest)


def test_models_uri_forms():
    assert parse_models_uri("models:/a-b@champion") == ("a-b", None, "champion")
    assert parse_models_uri("models:/a-b/12") == ("a-b", "12", None)
    for bad in ("runs:/x/y", "models:/only", "models:/a@", "models:/a/latest"):
        with pytest.raises(ValueError):
            parse_models_uri(bad)
