"""Paper trading behind the policy-side kill-switch (``defialloc paper --kill-switch``): equal to the
backtest behind the same wrapper, recorded in the ledger and MLflow, and a ledger resumes only with
the setting it was started with. (Crash safety with the wrapper: tests/test_paper_crash.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.envs.config import load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.training.cli import app
from defialloc.training.paper.feeds import ReplayFeed
from defialloc.training.paper.ledger import Ledger, LedgerMismatch
from defialloc.training.paper.runner import PaperTrader
from tests.test_paper import (
    DATA_DIR,
    file_digest,
    ledger_tables,
    make_policy_dir,
    needs_data,
    simulated_feed,
)

WRAPPER = KillSwitchConfig(enabled=True, max_drawdown=0.06, cooldown_steps=3)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    """A policy whose env kill-switch is off (the default): only the wrapper can act."""
    return make_policy_dir(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def plain(plain_dir) -> OnnxPolicy:
    return OnnxPolicy(plain_dir)


def _run(policy, feed, ledger: Path, kill_switch=None, max_bars=None, **kw):
    trader = PaperTrader(policy, feed, ledger, kill_switch=kill_switch, **kw)
    try:
        return trader.run(max_bars)
    finally:
        trader.close()


@needs_data
def test_paper_behind_the_wrapper_equals_the_backtest_behind_it(plain, tmp_path):
    from defialloc.evaluation.backtest import run_period_backtest

    start, end = "2023-01-01", "2023-09-30"
    cfg = load_config(plain.manifest.simulation_config)
    assert not cfg.env.kill_switch.enabled
    feed = ReplayFeed.from_config(cfg, start, end, data_dir=str(DATA_DIR))
    summary = _run(plain, feed, tmp_path / "ks.db", kill_switch=WRAPPER)
    assert summary.kill_switch == WRAPPER.model_dump(mode="json")
    result = run_period_backtest(
        load_config(cfg, {"market.data_dir": str(DATA_DIR)}),
        [plain],
        start,
        end,
        progress=False,
        kill_switch=WRAPPER,
    )
    record = result.records[plain.name]
    conn = sqlite3.connect(tmp_path / "ks.db")
    rows = np.array(
        conn.execute(
            "SELECT value_usd, fees_usd, slippage_usd, gas_usd, turnover, kill_switch FROM equity ORDER BY bar_index"
        ).fetchall()
    )
    # the backtest marks the last bar and stops; paper trading also decides at the last bar
    np.testing.assert_array_equal(rows[:, 0], record.value_usd[0])
    np.testing.assert_array_equal(rows[:-1, 1], record.fees_usd[0])
    np.testing.assert_array_equal(rows[:-1, 2], record.slippage_usd[0])
    np.testing.assert_array_equal(rows[:-1, 3], record.gas_usd[0])
    np.testing.assert_array_equal(rows[:-1, 4], record.turnover[0])
    np.testing.assert_array_equal(rows[:-1, 5], record.extras["kill_switch"][0])
    assert rows[:, 5].sum() > 0, "the wrapper should fire in 2023 with a 6% drawdown limit"
    # the decisions table keeps the policy's own action; the orders show the override
    decisions = conn.execute("SELECT kill_switch, action FROM decisions").fetchall()
    assert sum(k for k, _ in decisions) == rows[:, 5].sum()
    meta = Ledger.open(tmp_path / "ks.db").meta
    assert meta["kill_switch"] == WRAPPER.model_dump(mode="json")


def test_a_ledger_resumes_only_with_its_kill_switch_setting(plain, tmp_path):
    off, on = tmp_path / "off.db", tmp_path / "on.db"
    _run(plain, simulated_feed(plain), off, max_bars=70)
    _run(plain, simulated_feed(plain), on, kill_switch=WRAPPER, max_bars=70)
    assert Ledger.open(off).meta["kill_switch"] is None
    before = {p: (ledger_tables(p), file_digest(p)) for p in (off, on)}
    with pytest.raises(LedgerMismatch, match="kill-switch off; this run asks for it on"):
        _run(plain, simulated_feed(plain), off, kill_switch=WRAPPER)
    with pytest.raises(LedgerMismatch, match=r"kill-switch on \(.*max_drawdown=0.06.*\).* it off"):
        _run(plain, simulated_feed(plain), on)
    other = WRAPPER.model_copy(update={"cooldown_steps": 4})
    with pytest.raises(LedgerMismatch, match="cooldown_steps=4"):
        _run(plain, simulated_feed(plain), on, kill_switch=other)
    assert {p: (ledger_tables(p), file_digest(p)) for p in (off, on)} == before
    # the same setting resumes (and the CLI says why it refuses another one, exit code 2)
    assert _run(plain, simulated_feed(plain), on, kill_switch=WRAPPER).status == "finished"
    args = ["paper", "--policy", str(plain.directory), "--feed", "simulated", "--seed", "3",
            "--bars", "140", "--ledger", str(off), "--no-mlflow", "--no-view", "--kill-switch"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "written with the kill-switch off" in text, text


def test_the_kill_switch_parameters_are_mlflow_params_of_the_paper_run(
    plain, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    ledger = tmp_path / "tracked.db"
    _run(plain, simulated_feed(plain, n_bars=70), ledger, WRAPPER, mlflow_experiment="ks-paper")
    run = MlflowClient(tracking_uri=uri).get_run(Ledger.open(ledger).meta["mlflow_run_id"])
    params = run.data.params
    assert params["kill_switch.enabled"] == "True"
    assert params["kill_switch.max_drawdown"] == "0.06"
    assert params["kill_switch.cooldown_steps"] == "3"
    assert run.data.tags["kill_switch"] == "true"
