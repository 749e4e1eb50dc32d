"""MLflow logging of an evaluation to a temporary SQLite store, read back, and the comparison report."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defialloc.envs.config import REPO_ROOT, load_config
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.backtest import run_backtest, run_period_backtest
from defialloc.evaluation.tracking import format_seeds, log_backtest, params_hash, tracking_uri

POLICIES = ["equal_weight", "min_variance", "risk_parity"]


@pytest.fixture(scope="module", autouse=True)
def store(tmp_path_factory):
    """One temporary SQLite store for the module (creating one runs MLflow's migrations, seconds);
    never an mlflow.db, mlruns/ or mlartifacts/ in the repository."""
    root = tmp_path_factory.mktemp("mlflow")
    stray = [REPO_ROOT / name for name in ("mlflow.db", "mlruns", "mlartifacts")]
    before = [p.exists() for p in stray]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'm.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield root
    assert [p.exists() for p in stray] == before, "a test wrote MLflow files into the repository"


@pytest.fixture(scope="module")
def result():
    cfg = load_config({"market": {}, "env": {"horizon": 40}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_backtest(
            cfg, POLICIES, scenario_seeds("test", 12), progress=False, scenario_set="test"
        )


def test_tracking_uri_env_var_or_local_sqlite(store, monkeypatch):
    assert tracking_uri() == f"sqlite:///{store / 'm.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri() == f"sqlite:///{(store / 'mlflow.db').resolve()}"  # in the working folder


def test_format_seeds():
    assert format_seeds(np.arange(2_000_000, 2_000_064)) == "2000000..2000063"
    assert format_seeds(np.array([3, 1, 7])) == "3,1,7"


def test_log_backtest_and_read_it_back(result, tmp_path):
    import mlflow

    run_id = log_backtest(result, "unit-eval", "r1", result.config, extra_params={"note": "unit"})
    client = mlflow.MlflowClient(tracking_uri())
    run = client.get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["policies"] == ",".join(POLICIES)
    assert params["scenario_set"] == "test" and params["n_scenarios"] == "12"
    assert params["seeds"] == "2000000..2000011"
    assert params["config_hash"] == result.config.config_hash()
    assert params["git_commit"] and params["note"] == "unit"
    assert result.policy_params["min_variance"]["lookback"] == 61  # configs/evaluation/default.yaml
    assert params["policy_params_hash"] == params_hash(result.policy_params)
    assert run.data.tags["defialloc.kind"] == "evaluation"
    assert not any("." in key for key in metrics), "no <metric>.<policy> names on the parent"
    # one nested child run per policy, metrics under plain names = means across scenarios,
    # computed here independently from the records
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == sorted(POLICIES)
    for child in children:
        name = child.info.run_name
        rec = result.records[name]
        r = rec.returns
        sharpe = r.mean(axis=1) / r.std(axis=1, ddof=1) * np.sqrt(365.0)
        assert child.data.metrics["sharpe_ratio"] == pytest.approx(sharpe.mean(), rel=1e-9)
        assert child.data.metrics["final_value_usd"] == pytest.approx(
            rec.value_usd[:, -1].mean(), rel=1e-12
        )
        assert child.data.tags["defialloc.policy"] == name
        assert child.data.tags["defialloc.policy_kind"] == "baseline"
        assert child.data.tags["defialloc.kind"] == "evaluation_policy"  # not read by compare
        assert child.data.params["scenario_set"] == "test"
        assert child.data.params["config_hash"] == result.config.config_hash()
        assert child.data.tags["mlflow.note.content"].startswith(f"{name}: feasible baseline")
    mv = next(c for c in children if c.info.run_name == "min_variance")
    assert mv.data.params["lookback"] == "61"  # the policy's own parameters, flattened
    assert "note" not in mv.data.params  # agent params go to agents' runs only
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.csv", "series.parquet", "config.yaml", "plots"} <= names
    plots = {Path(a.path).name for a in client.list_artifacts(run_id, "plots")}
    assert plots == {
        "equity_curves.png",
        "drawdowns.png",
        "allocations.png",
        "cost_breakdown.png",
        "liquidation_timeline.png",
    }
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="metrics.csv", dst_path=str(tmp_path)
        )
    )
    table = pd.read_csv(local)
    assert table.shape[0] == len(POLICIES) * 12
    series = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="series.parquet")
    )
    assert len(series) == len(POLICIES) * 12 * 40


def test_compare_writes_a_report_with_cis(result, tmp_path, monkeypatch):
    from rich.console import Console

    from defialloc.evaluation.report import compare

    log_backtest(result, "cmp", "a", result.config)
    log_backtest(result, "cmp", "a-again", result.config)  # identical duplicate: kept once
    period = run_period_backtest(
        result.config, ["equal_weight", "min_variance"], "2022-05-01", "2022-06-30", progress=False
    )
    log_backtest(period, "cmp", "p", result.config, plots=False)
    console = Console(record=True, width=160)
    monkeypatch.chdir(tmp_path)  # a relative report path (as `make demo` passes) must work too
    groups = compare("cmp", "reports/report.md", n_boot=300, console=console)
    assert (tmp_path / "reports" / "report.md").is_file()
    by_set = {g.scenario_set: g for g in groups}
    assert set(by_set) == {"test", "period:2022-05-01..2022-06-30"}
    g = by_set["test"]
    assert g.n_scenarios == 12 and len(g.run_ids) == 2
    # the duplicate run did not double the sample: the bootstrap point equals the 12-scenario mean
    assert g.summary.loc[("min_variance", "sharpe_ratio"), "n"] == 12
    sharpe = result.metrics_table().groupby("policy")["sharpe_ratio"].mean()
    assert g.summary.loc[("min_variance", "sharpe_ratio"), "mean"] == pytest.approx(
        sharpe["min_variance"]
    )
    lo, hi = g.summary.loc[("equal_weight", "sharpe_ratio"), ["mean_ci_low", "mean_ci_high"]]
    assert lo < sharpe["equal_weight"] < hi
    assert g.best_baseline == sharpe.idxmax()
    assert set(g.improvement.index) == set(POLICIES) - {g.best_baseline}
    assert g.sharpe_tests["psr"].between(0, 1).all() and g.sharpe_tests["dsr"].between(0, 1).all()
    single = by_set["period:2022-05-01..2022-06-30"]
    assert single.n_scenarios == 1 and not single.improvement["poi_significant"].any()
    text = (tmp_path / "reports" / "report.md").read_text()
    assert "What is and is not significant" in text and "P(improvement)" in text
    assert "![equity_curves](report_files/" in text
    assert list((tmp_path / "reports" / "report_files").rglob("equity_curves.png"))
    assert "PSR" in console.export_text()
    compare(
        "cmp",
        tmp_path / "report.html",
        n_boot=300,
        console=Console(file=open(tmp_path / "o.txt", "w")),
    )
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    with pytest.raises(ValueError, match="not found") as missing:
        compare("does-not-exist", console=console)
    # the message lists the experiments that hold evaluation runs (the child runs are not counted)
    assert "cmp (3 evaluation runs)" in str(missing.value)


def test_agents_against_the_same_baselines_share_a_comparison_group():
    import pandas as pd

    from defialloc.evaluation.report import _merge_tables
    from defialloc.evaluation.tracking import params_hash

    base = {"equal_weight": {"rebalance_every": 7}}
    assert params_hash({"ppo": {}, **base}) == params_hash({"sac": {}, **base})
    assert params_hash(base) != params_hash({"equal_weight": {"rebalance_every": 30}})
    a = pd.DataFrame(
        {
            "policy": ["ppo", "equal_weight"],
            "seed": [1, 1],
            "sharpe": [0.5, 0.9],
            "run_id": ["a", "a"],
        }
    )
    b = pd.DataFrame(
        {
            "policy": ["sac", "equal_weight"],
            "seed": [1, 1],
            "sharpe": [0.4, 0.9],
            "run_id": ["b", "b"],
        }
    )
    c = pd.DataFrame(
        {"policy": ["ppo"], "seed": [1], "sharpe": [0.6], "run_id": ["c"]}
    )  # a second PPO training seed
    merged = _merge_tables([a, b, c])
    assert sorted(merged["policy"]) == ["equal_weight", "ppo", "ppo", "sac"]


def test_kill_switch_parameters_are_logged_with_the_run():
    import mlflow

    from defialloc.envs.kill_switch import KillSwitchConfig

    cfg = load_config({"market": {}, "env": {"horizon": 30}})
    seeds = scenario_seeds("test", 3)
    ks = KillSwitchConfig(enabled=True, max_drawdown=0.04, cooldown_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        on = run_backtest(cfg, ["equal_weight"], seeds, progress=False, kill_switch=ks)
        off = run_backtest(cfg, ["equal_weight"], seeds, progress=False)
    client = mlflow.MlflowClient(tracking_uri())
    run_on = client.get_run(log_backtest(on, "unit-ks", "on", plots=False))
    run_off = client.get_run(log_backtest(off, "unit-ks", "off", plots=False))
    params = run_on.data.params
    assert params["kill_switch.enabled"] == "True"
    assert params["kill_switch.max_drawdown"] == "0.04"
    assert params["kill_switch.cooldown_steps"] == "2"
    assert params["kill_switch.min_health_factor"] == "1.1"
    assert params["kill_switch.reset_peak_after_cooldown"] == "True"
    assert run_on.data.tags["kill_switch"] == "true" and run_off.data.tags["kill_switch"] == "false"
    assert run_off.data.params["kill_switch.enabled"] == "False"
    assert not any(k.startswith("kill_switch.max") for k in run_off.data.params)
    # behind the kill-switch the policies are other policies: never one comparison group
    assert run_off.data.params["policy_params_hash"] == params_hash(off.policy_params)
    assert params["policy_params_hash"] != run_off.data.params["policy_params_hash"]
    (child,) = client.search_runs(
        [run_on.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_on.info.run_id}'"
    )
    assert child.data.metrics["kill_switch_fraction"] > 0.0
    assert child.data.params["kill_switch.max_drawdown"] == "0.04"  # on every policy's run too
