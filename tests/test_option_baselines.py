"""The option baselines: hand-checked actions, refusals, and a smoke backtest through the evaluate CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from defialloc.agents.baselines import make_policy
from defialloc.agents.baselines.policies import PROTOCOL_BASELINES, baselines_for
from defialloc.agents.policy import MarketView
from defialloc.envs.config import load_config
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.evaluation.backtest import run_backtest

OPTION_BASELINES = ("covered_call", "protective_put", "delta_hedger")
STRIKES, TENORS = (0.8, 0.9, 1.0, 1.1, 1.2), (7, 30, 90)


@pytest.fixture(scope="module")
def opt2():
    return load_config("configs/options.yaml", {"market.assets": ["BTC", "ETH", "SOL"]})


def view(cfg, *, step=0, options=None) -> MarketView:
    n = len(cfg.market.assets)
    weights = np.append(np.full(n, 1.0 / n), 0.0)[None]
    return MarketView(
        tuple(cfg.market.assets),
        np.full((1, 2, n), 100.0),
        weights,
        np.array([step]),
        options=options,
    )


def chain(n: int, call_delta: float, put_delta: float, held_call: float = 0.0) -> dict:
    """A venue view with every listed call's delta ``call_delta`` and put's ``put_delta``."""
    shape = (1, n, len(STRIKES), len(TENORS))
    listed = np.array([1.0, 1.0] + [0.0] * (n - 2))
    return {
        "chain_call_delta": np.full(shape, call_delta),
        "chain_put_delta": np.full(shape, put_delta),
        "call_units": np.array([[-5.0 if held_call else 0.0] * 2 + [0.0] * (n - 2)]),
        "call_delta": np.array([[held_call] * 2 + [0.0] * (n - 2)]),
        "put_units": np.zeros((1, n)),
        "put_delta": np.zeros((1, n)),
        "listed": listed,
    }


def _option_block(cfg, action):
    layout = ActionLayout.for_config(cfg.env, len(cfg.market.assets))
    return layout, layout.split_options(action)


def test_covered_call_and_protective_put_actions_by_hand(opt2):
    cc = make_policy("covered_call", opt2)
    layout, (calls, puts, choice) = _option_block(opt2, cc.act(None, view(opt2)))
    np.testing.assert_allclose(
        calls, [[1.0, 1.0, 1.0]]
    )  # share 1 -> output +1 (the env lists BTC, ETH)
    np.testing.assert_allclose(puts, [[-1.0, -1.0, -1.0]])
    # call strike 1.1 is listed index 3 of 5: the middle of its bin, 2 (3 + 0.5) / 5 - 1 = 0.4;
    # tenor 30 days is index 1 of 3: 2 (1.5) / 3 - 1 = 0
    np.testing.assert_allclose(choice[0, [0, 2]], [0.4, 0.0], atol=1e-12)
    pp = make_policy("protective_put", opt2)
    _, (calls, puts, choice) = _option_block(opt2, pp.act(None, view(opt2)))
    np.testing.assert_allclose(calls, [[-1.0] * 3])
    np.testing.assert_allclose(puts, [[1.0] * 3])
    np.testing.assert_allclose(choice[0, 1], 2 * 1.5 / 5 - 1)  # put strike 0.9: index 1
    # equal weight with the protective put's 5 % cash kept for premia
    spot, _, _ = layout.split(pp.act(None, view(opt2)))
    assert pp.params.cash_weight == 0.05 and spot.shape == (1, 4)


def test_delta_hedger_buys_back_the_calls_delta_with_perps(opt2):
    """h = 1 - target_delta - c delta_c: covered calls (c = 1) of delta 0.55 -> h = -0.55 on the
    listed assets (a long perp of 0.55 per unit), 0 on the unlisted one; with target_delta 0.5,
    h = 0.5 - 0.55 = -0.05 listed and 0.5 unlisted."""
    dh = make_policy("delta_hedger", opt2)
    layout = ActionLayout.for_config(opt2.env, 3)
    _, _, hedge = layout.split(dh.act(None, view(opt2, options=chain(3, 0.55, -0.45))))
    np.testing.assert_allclose(hedge, [[-0.55, -0.55, 0.0]], atol=1e-12)
    # a held call's own delta wins over the chain's
    _, _, hedge = layout.split(dh.act(None, view(opt2, options=chain(3, 0.55, -0.45, 0.8))))
    np.testing.assert_allclose(hedge, [[-0.8, -0.8, 0.0]], atol=1e-12)
    half = make_policy("delta_hedger", opt2, target_delta=0.5)
    _, _, hedge = layout.split(half.act(None, view(opt2, options=chain(3, 0.55, -0.45))))
    np.testing.assert_allclose(hedge, [[-0.05, -0.05, 0.5]], atol=1e-12)
    with pytest.raises(ValueError, match="MarketView.options"):
        dh.act(None, view(opt2))


def test_option_baselines_refuse_other_configs_and_unlisted_choices(opt2):
    lev = load_config("configs/leverage.yaml")
    for name in OPTION_BASELINES:
        assert name in PROTOCOL_BASELINES
        with pytest.raises(ValueError, match="env.options.enabled"):
            make_policy(name, lev)
    with pytest.raises(ValueError, match="env.perps.enabled"):
        make_policy(
            "delta_hedger", load_config("configs/options.yaml", {"env.perps.enabled": False})
        )
    with pytest.raises(ValueError, match="call_moneyness=1.05 is not listed"):
        make_policy("covered_call", opt2, call_moneyness=1.05)
    with pytest.raises(ValueError, match="tenor_days=14 is not listed"):
        make_policy("protective_put", opt2, tenor_days=14)
    kept, dropped = baselines_for(lev, ["equal_weight", *OPTION_BASELINES])
    assert kept == ["equal_weight"] and "env.options.enabled" in dropped["covered_call"]
    kept, dropped = baselines_for(load_config("configs/options.yaml"), list(OPTION_BASELINES))
    assert kept == list(OPTION_BASELINES) and not dropped


def test_option_baselines_act_on_the_venue_and_record_greeks():
    """A short backtest: the writer holds short calls on every listed unit and collects premium,
    the put buyer pays premium for long puts, the hedger's delta stays near its spot delta; the
    Greeks are recorded and every balance stays non-negative."""
    cfg = load_config("configs/options.yaml", {"env.horizon": 40})
    seeds = np.arange(5_000_000, 5_000_004, dtype=np.int64)
    result = run_backtest(
        cfg, ["equal_weight", *OPTION_BASELINES], seeds, progress=False, cache=False
    )
    recs = result.records
    cc, pp, dh = (recs[n].extras for n in OPTION_BASELINES)
    assert np.nansum(cc["option_premium_usd"]) < 0.0 and np.nanmin(cc["vega_usd"]) < 0.0
    assert np.nansum(pp["option_premium_usd"]) > 0.0 and np.nanmax(pp["gamma_usd"]) > 0.0
    assert np.nanmin(dh["theta_usd"]) >= 0.0 and np.nanmax(dh["theta_usd"]) > 0.0
    # the hedger keeps (about) the delta of an unhedged book; the writer's is lower
    value = {n: recs[n].value_usd[:, 1:] for n in recs}
    delta = {n: np.nanmean(recs[n].extras["delta_usd"] / value[n]) for n in OPTION_BASELINES}
    assert delta["delta_hedger"] > delta["covered_call"] + 0.05
    assert abs(delta["delta_hedger"] - (1.0 - 0.1)) < 0.1  # 10 % kept in cash for the margin
    table = result.metrics_table()
    assert {"greek_delta_min", "greek_vega_max", "greek_theta_mean"} <= set(table.columns)
    ew = table[table.policy == "equal_weight"]
    assert np.allclose(ew["greek_vega_min"], 0.0) and np.allclose(ew["greek_delta_max"], 1.0)


@pytest.mark.slow
def test_defialloc_evaluate_runs_the_option_baselines(tmp_path, monkeypatch):
    """``defialloc evaluate`` on the options config, then ``compare``: the report has the Greeks."""
    from typer.testing import CliRunner

    from defialloc.training.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    from defialloc.envs.config import REPO_ROOT

    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--config",
            str(REPO_ROOT / "configs" / "options.yaml"),
            "--policies",
            "covered_call,protective_put,delta_hedger",
            "--scenarios",
            "2",
            "--scenario-set",
            "validation",
            "--no-progress",
            "--no-cache",
            "--experiment",
            "options-smoke",
            "env.horizon=20",
        ],
    )
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(
        app, ["compare", "--experiment", "options-smoke", "--out", str(tmp_path / "r.md")]
    )
    assert report.exit_code == 0, report.output
    text = (tmp_path / "r.md").read_text()
    assert "Portfolio Greeks" in text and "vega (% equity per vol pt)" in text
    for name in OPTION_BASELINES:
        assert f"| {name} |" in text


def test_baseline_view_carries_the_chain_on_options_configs():
    from defialloc.evaluation.rollout import run_policy

    cfg = load_config("configs/options.yaml", {"env.horizon": 3})
    seen = []

    class Spy:
        name, lookback, uses_oracle = "spy", 1, False

        def reset(self, n):
            pass

        def act(self, observation, v):
            seen.append(v.options)
            return np.tile(
                ActionLayout.for_config(cfg.env, 5).safe_action(), (v.weights.shape[0], 1)
            )

    run_policy(cfg, Spy(), np.array([5_000_000], dtype=np.int64))
    opts = seen[0]
    assert opts["chain_call_delta"].shape == (1, 5, len(STRIKES), len(TENORS))
    # a call's delta falls with the strike; a put's rises toward 0
    assert np.all(np.diff(opts["chain_call_delta"][0, 0, :, 1]) < 0)
    assert np.all(np.diff(opts["chain_put_delta"][0, 0, :, 1]) < 0)
    np.testing.assert_array_equal(opts["listed"], [1, 1, 0, 0, 0])
    assert dataclasses.is_dataclass(MarketView)
