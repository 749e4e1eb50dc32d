"""``defialloc bench baselines``: the backtest throughput report's shape and its CLI (no timing claims)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from defialloc.evaluation.bench_backtests import GOAL_RATIO, bench_backtests
from defialloc.training.cli import app


def test_bench_backtests_reports_every_policy_against_equal_weight():
    result = bench_backtests(
        None, scenarios=3, horizon=4, repeats=1, policies=["min_variance", "oracle_mean_variance"]
    )
    rows = result["policies"]
    assert list(rows) == ["equal_weight", "min_variance", "oracle_mean_variance"]
    assert rows["equal_weight"]["ratio"] == 1.0
    for row in rows.values():
        assert row["steps_per_s"] > 0 and row["env_steps_per_s"] == pytest.approx(
            3 * row["steps_per_s"], rel=1e-3
        )
        assert row["meets_goal"] == (row["ratio"] >= GOAL_RATIO)
    assert rows["min_variance"]["diagnostics"]["solves"] > 0
    assert result["config"]["horizon"] == 4 and result["slowest"] in rows


def test_bench_backtests_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown policies"):
        bench_backtests(None, scenarios=2, horizon=2, policies=["nope"])
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        bench_backtests(None, horizon=0)


def test_bench_baselines_cli_prints_json():
    out = CliRunner().invoke(
        app,
        ["bench", "baselines", "--config", "configs/leverage.yaml", "--scenarios", "2",
         "--horizon", "3", "--repeats", "1", "--policies", "risk_parity", "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["solvers"] is None
    (bench,) = result["backtests"].values()
    assert bench["config"]["protocols"] is True
    assert list(bench["policies"]) == ["equal_weight", "risk_parity"]
