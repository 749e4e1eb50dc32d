"""Paired backtests: same prices for every policy, seed hygiene, workers, metric tables, real periods."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from defialloc.envs.config import load_config
from defialloc.envs.seeds import TRAIN_SEED_BASE, scenario_seeds
from defialloc.evaluation.backtest import (
    BacktestResult,
    load_evaluation_config,
    resolve_period,
    run_backtest,
    run_period_backtest,
)
from defialloc.evaluation.metrics import sharpe_ratio

POLICIES = ["equal_weight", "buy_and_hold", "min_variance", "oracle_mean_variance"]
DATA = load_config({"market": {}, "env": {}}).market.resolved_data_dir()


@pytest.fixture(scope="module")
def cfg():
    return load_config({"market": {}, "env": {"horizon": 60}})


@pytest.fixture(scope="module")
def result(cfg) -> BacktestResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_backtest(
            cfg, POLICIES, scenario_seeds("test", 4), progress=False, scenario_set="test"
        )


def test_every_policy_saw_identical_prices(result):
    closes = [rec.close_usd for rec in result.records.values()]
    for other in closes[1:]:
        np.testing.assert_array_equal(closes[0], other)
    regimes = [rec.regime for rec in result.records.values()]
    for other in regimes[1:]:
        np.testing.assert_array_equal(regimes[0], other)
    # ... and the policies did act differently on them
    assert not np.allclose(
        result.records["equal_weight"].value_usd, result.records["min_variance"].value_usd
    )


def test_evaluation_refuses_training_seeds(cfg):
    with pytest.raises(ValueError, match="training"):
        run_backtest(cfg, ["equal_weight"], np.array([5, TRAIN_SEED_BASE + 1]), progress=False)
    with pytest.raises(ValueError, match="unknown policy"):
        run_backtest(cfg, ["equal_weight", "typo"], scenario_seeds("test", 2), progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_backtest(
            cfg, ["equal_weight", "equal_weight"], scenario_seeds("test", 2), progress=False
        )


def test_workers_two_equals_workers_one(cfg, result):
    seeds = scenario_seeds("test", 4)
    parallel = run_backtest(cfg, POLICIES, seeds, progress=False, workers=2, chunk_size=2)
    for name, rec in result.records.items():
        other = parallel.records[name]
        np.testing.assert_array_equal(rec.value_usd, other.value_usd)
        np.testing.assert_array_equal(rec.weights, other.weights)
        for kind in rec.costs_usd:
            np.testing.assert_array_equal(rec.costs_usd[kind], other.costs_usd[kind])
        np.testing.assert_array_equal(rec.seeds, other.seeds)


def test_metrics_table_shape_and_values(result):
    table = result.metrics_table()
    assert len(table) == len(POLICIES) * 4
    assert list(table["policy"].unique()) == POLICIES
    for col in (
        "sharpe_ratio",
        "max_drawdown",
        "value_at_risk",
        "turnover_annual",
        "cost_fees_usd",
        "cost_gas_usd",
        "cost_slippage_usd",
        "cost_total_usd",
        "final_value_usd",
        "seed",
    ):
        assert col in table.columns, col
    assert result.periods_per_year == 365.0
    rec = result.records["min_variance"]
    row = table[(table["policy"] == "min_variance") & (table["scenario"] == 2)].iloc[0]
    v = rec.value_usd[2]
    assert row["total_return"] == pytest.approx(v[-1] / v[0] - 1.0, rel=1e-12)
    r = v[1:] / v[:-1] - 1.0
    assert row["sharpe_ratio"] == pytest.approx(
        r.mean() / r.std(ddof=1) * np.sqrt(365.0), rel=1e-10
    )
    assert row["cost_total_usd"] == pytest.approx(
        rec.fees_usd[2].sum() + rec.slippage_usd[2].sum() + rec.gas_usd[2].sum(), rel=1e-12
    )
    assert row["seed"] == scenario_seeds("test", 4)[2]


def test_series_frame_is_long_per_step(result):
    frame = result.series_frame()
    assert len(frame) == len(POLICIES) * 4 * 60
    assert {
        "policy",
        "scenario",
        "seed",
        "step",
        "value_usd",
        "return",
        "w_BTC",
        "w_cash",
        "cost_gas_usd",
        "turnover",
        "regime",
        "alive",
    } <= set(frame.columns)
    first = frame[(frame.policy == "equal_weight") & (frame.scenario == 0)]
    np.testing.assert_allclose(first["value_usd"], result.records["equal_weight"].value_usd[0, 1:])


def test_named_periods_from_the_evaluation_config():
    ev = load_evaluation_config()
    held = resolve_period("heldout_2023", ev)
    assert (held.start.isoformat(), held.end.isoformat()) == ("2023-01-01", "2024-04-09")
    assert held.held_out and held.n_steps == 464
    dev = resolve_period("dev_2022", ev)
    assert not dev.held_out and dev.n_steps == 364
    with pytest.raises(ValueError, match="heldout_2023"):
        resolve_period("nope", ev)


def test_period_backtest_replays_the_real_closes(cfg):
    res = run_period_backtest(
        cfg,
        ["equal_weight", "buy_and_hold"],
        "2022-03-01",
        "2022-04-30",
        name="spring",
        progress=False,
    )
    assert res.config.market.source == "replay" and res.config.env.horizon == 60
    assert res.scenario_set == "period:spring" and not res.held_out
    rec = res.records["buy_and_hold"]
    btc = pd.read_csv(DATA / "BTC-USD.csv", parse_dates=["Date"]).set_index("Date")["Close"]
    expected = btc.loc["2022-03-01":"2022-04-30"].to_numpy()
    np.testing.assert_array_equal(rec.close_usd[0, :, 0], expected)
    assert str(rec.dates[0, 0]) == "2022-03-02" and str(rec.dates[0, -1]) == "2022-04-30"
    # buy-and-hold from the first close: value tracks the held units (costs paid at step 0 only)
    assert np.all(rec.turnover[0, 1:] == 0)
    with pytest.raises(ValueError, match="synthetic"):
        run_period_backtest(
            cfg, ["oracle_mean_variance"], "2022-03-01", "2022-04-30", progress=False
        )


def test_heldout_period_runs_and_is_flagged(cfg):
    held = resolve_period("heldout_2023")
    res = run_period_backtest(
        cfg, ["equal_weight"], held.start, held.end, name="heldout_2023", progress=False
    )
    assert res.held_out and res.config.env.horizon == 464
    r = res.records["equal_weight"].returns[0]
    assert res.metrics_table()["sharpe_ratio"].iloc[0] == pytest.approx(sharpe_ratio(r, 365.0))


def test_protocol_series_are_recorded_when_the_env_reports_them():
    cfg = load_config(
        None,
        {
            "env.horizon": 40,
            "env.lending.enabled": True,
            "env.kill_switch.enabled": True,
            "env.kill_switch.max_drawdown": 0.05,
        },
    )
    res = run_backtest(cfg, ["equal_weight"], scenario_seeds("test", 3), progress=False)
    rec = res.records["equal_weight"]
    assert {"health_factor", "liquidations", "kill_switch"} <= set(rec.extras)
    assert rec.extras["kill_switch"].shape == (3, 40) and rec.extras["kill_switch"].any()
    assert {"interest", "liquidation"} <= set(rec.costs_usd)
    table = res.metrics_table()
    for k in range(3):
        row = table.iloc[k]
        assert row["kill_switch_fraction"] == pytest.approx(rec.extras["kill_switch"][k].mean())
        assert row["liquidations_count"] == rec.extras["liquidations"][k].sum()
        assert row["min_health_factor"] == np.nanmin(rec.extras["health_factor"][k])
    assert {"health_factor", "kill_switch", "cost_interest_usd"} <= set(res.series_frame().columns)
