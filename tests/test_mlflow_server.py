"""Log an evaluation to a real ``mlflow server`` over HTTP and read it back through the REST API."""

from __future__ import annotations

import urllib.parse
import warnings

import numpy as np
import pytest

from defialloc.envs.config import load_config
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.backtest import run_backtest
from defialloc.evaluation.tracking import log_backtest
from tests.mlflow_server_helper import get_json, mlflow_server, post_json


@pytest.fixture
def server(tmp_path):
    with mlflow_server(tmp_path) as url:
        yield url


def test_log_over_http_and_read_back_through_rest(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    cfg = load_config({"market": {}, "env": {"horizon": 30}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_backtest(
            cfg,
            ["equal_weight", "min_variance"],
            scenario_seeds("test", 4),
            progress=False,
            scenario_set="test",
        )
    run_id = log_backtest(result, "server-eval", "http-run", cfg, plots=False)

    run = get_json(f"{server}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["policies"] == "equal_weight,min_variance"
    assert params["config_hash"] == cfg.config_hash()
    assert params["seeds"] == "2000000..2000003"
    assert [i["dataset"]["name"] for i in run["inputs"]["dataset_inputs"]] == ["test-4"]

    experiment = get_json(
        f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-eval"
    )["experiment"]
    found = post_json(
        f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]}
    )
    by_name = {r["info"]["run_name"]: r for r in found["runs"]}
    assert set(by_name) == {"http-run", "equal_weight", "min_variance"}  # parent + one per policy
    child = by_name["min_variance"]
    metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
    assert tags["mlflow.parentRunId"] == run_id
    final = result.records["min_variance"].value_usd[:, -1].mean()
    assert metrics["final_value_usd"] == pytest.approx(final, rel=1e-9)
    assert np.isfinite(metrics["sharpe_ratio"])

    query = urllib.parse.urlencode({"run_id": run_id})
    files = {
        f["path"]
        for f in get_json(f"{server}/api/2.0/mlflow/artifacts/list?{query}").get("files", [])
    }
    assert {"metrics.csv", "series.parquet", "config.yaml"} <= files
    assert (tmp_path / "artifacts").is_dir()  # artifacts proxied by the server into its destination
