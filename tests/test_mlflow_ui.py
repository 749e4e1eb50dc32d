"""MLflow's own UI compares an agent with its baselines: headless Chromium on the runs table.

An evaluation (an agent and three baselines) is logged to a real ``mlflow server`` on 127.0.0.1;
Chromium (Debian's ``chromium`` package) loads the saved comparison view of MLflow's runs table
(``evaluation/tracking_policies.py``). The rendered DOM must show one row per policy run with its
name, its kind and its metrics under plain column names, and the screenshot must be a full-size,
non-blank page. Skipped only when no Chromium binary is installed (``apt-get install chromium``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from defialloc.agents.policy import FixedWeightsPolicy
from defialloc.envs.config import load_config
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.backtest import run_backtest
from defialloc.evaluation.tracking import CHILD_RUNS_TAG, log_backtest
from defialloc.training.mlflow_browser import WINDOW, capture_view, find_chromium, runs_table_text
from tests.mlflow_server_helper import mlflow_server

pytestmark = pytest.mark.slow

BASELINES = ["equal_weight", "min_variance", "risk_parity"]
COLUMNS = ("sharpe_ratio", "annual_return", "max_drawdown", "cost_total_usd")


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_runs_table_in_chromium_shows_the_agent_next_to_its_baselines(tmp_path, monkeypatch):
    import json

    import matplotlib.image
    import mlflow

    monkeypatch.chdir(tmp_path)
    cfg = load_config({"market": {}, "env": {"horizon": 30}})
    agent = FixedWeightsPolicy(np.array([0.3, 0.3, 0.1, 0.1, 0.1, 0.1]), name="ppo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_backtest(
            cfg, [agent, *BASELINES], scenario_seeds("test", 4), progress=False, scenario_set="test"
        )
    with mlflow_server(tmp_path / "server") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        parent = log_backtest(result, "ui-eval", "ppo-test", plots=False, n_boot=200)
        client = mlflow.MlflowClient(url)
        run = client.get_run(parent)
        children = {
            name: client.get_run(run_id)
            for name, run_id in json.loads(run.data.tags[CHILD_RUNS_TAG]).items()
        }
        shot = tmp_path / "runs_table.png"
        dom = capture_view(url, run.info.experiment_id, parent, shot)
    table = runs_table_text(dom)
    assert "4 matching runs" in table, table  # the policy runs only, not the parent
    for column in COLUMNS:
        assert column in table, f"metric column {column} missing: {table}"
    for name, child in children.items():
        assert name in table
        # MLflow prints the full value: JavaScript's shortest round trip equals Python's repr
        assert repr(child.data.metrics["sharpe_ratio"]) in table
    assert table.count("agent") == 1 and table.count("baseline") == len(BASELINES)
    # sorted by Sharpe, best first (the saved view's order)
    by_sharpe = sorted(children, key=lambda n: -children[n].data.metrics["sharpe_ratio"])
    positions = [table.index(f" {name} ") for name in by_sharpe]
    assert positions == sorted(positions), table
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    assert image[..., :3].std() > 0.05  # not a blank page
