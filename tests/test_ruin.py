"""Ruin ends an episode cleanly: bounded terminal reward, no NaN/inf/warnings, values never below 0.

A loss beyond the account's equity is written off as bad debt (``bad_debt_usd``, like the perps'
``insurance_usd``); the recorded value is then exactly 0 and the episode terminates. The reward of
the ruining step is ``log(ruin_fraction * V0 / V_t)``, so an episode that ends in ruin sums to
exactly ``log(ruin_fraction)`` of log growth. Metrics, the compare report and the plots count and
show ruined scenarios.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from defialloc.agents.policy import FixedLeveredPolicy
from defialloc.envs import make_vec_env
from defialloc.envs.market.paths import MarketPaths
from defialloc.evaluation.backtest import run_backtest
from defialloc.evaluation.plots import equity_curves
from defialloc.evaluation.report import GroupComparison, _statements
from tests.test_leverage_env import LEVERAGE_CONFIG, action, identity_error, make_paths, small_env


def _crash(drop: float, horizon: int = 4) -> MarketPaths:
    """BTC flat at 100, ETH flat at 2,000 then a one-step fall of ``drop`` (low = close)."""
    close = np.tile([100.0, 2000.0], (6 + horizon + 1, 1))
    close[6 + 1 :, 1] = 2000.0 * (1.0 - drop)
    return make_paths(close)


def test_a_loss_beyond_equity_is_bad_debt_and_the_value_is_zero():
    env = small_env(4)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        _, before = env.reset(seed=0, options={"paths": _crash(0.70)})
        obs, reward, terminated, truncated, info = env.step(action(env, [0, 1, 0], leverage=1.0))
    # 2x leverage on ETH from 100k: ~300k of ETH against 200k of debt; -70 % leaves ~90k of ETH
    assert terminated and not truncated
    assert info["portfolio_value"] == 0.0
    assert np.all(info["holdings"] == 0.0) and info["debt_units"] == 0.0
    assert info["bad_debt_usd"] > 100_000.0  # ~200k debt minus ~90k of collateral
    assert identity_error(before, info) < 1e-9  # V(t+1) = ... + insurance + bad debt, exactly 0
    floor = env.config.env.ruin_fraction * env.config.env.initial_value_usd
    assert reward == pytest.approx(math.log(floor / before["portfolio_value"]), rel=1e-12)
    assert np.all(np.isfinite(obs))
    assert info["weights"][-1] == 1.0  # an empty account reads as all cash
    assert info["drawdown"] == 1.0


def test_an_episode_that_ends_in_ruin_sums_to_log_of_the_ruin_fraction():
    """Whatever the path to ruin, the summed log growth is exactly log(ruin_fraction)."""
    for drop in (0.45, 0.70, 0.95):
        env = small_env(4)
        env.reset(seed=0, options={"paths": _crash(drop)})
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(action(env, [0, 1, 0], leverage=1.0))
            total += reward
            done = terminated or truncated
        assert terminated
        assert total == pytest.approx(math.log(env.config.env.ruin_fraction), rel=1e-9)


def test_random_levered_policies_never_hand_a_learner_nan_inf_or_a_warning():
    venv = make_vec_env(LEVERAGE_CONFIG, n_envs=16, seed=3, **{"env.horizon": 120})
    rng = np.random.default_rng(0)
    ruins, worst = 0, 0.0
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        obs = venv.reset()
        for _ in range(600):
            a = rng.choice([-1.0, 1.0], size=(16, venv.action_space.shape[0]))  # extremes ruin
            obs, rewards, dones, infos = venv.step(a.astype(np.float32))
            assert np.all(np.isfinite(obs)) and np.all(np.isfinite(rewards))
            worst = min(worst, float(rewards.min()))
            for i in np.flatnonzero(dones):
                final = infos[i].get("terminal_observation")
                assert final is None or np.all(np.isfinite(final))
                ruins += infos[i].get("TimeLimit.truncated", False) is False
    assert ruins > 0  # the check saw ruined episodes
    # the ruining step's reward is bounded: log(floor / V_t) with V_t within a few x the start
    assert worst > math.log(0.05) - 3.0


def test_backtests_metrics_and_reports_count_ruined_scenarios():
    crash = _crash(0.70)
    paths = crash.take(np.array([0, 0]))  # scenario 0: ETH stays flat; scenario 1: the crash
    for name in ("close", "low", "high"):
        getattr(paths, name)[0, :, 1] = 2000.0
    paths.eth_usd[0] = 2000.0
    config = small_env(4).config
    levered = FixedLeveredPolicy(np.array([0.0, 1.0, 0.0]), config, leverage=2.0, name="all_in_2x")
    result = run_backtest(
        config, [levered, "equal_weight"], np.array([1, 2]), paths=paths, progress=False
    )
    record = result.records["all_in_2x"]
    np.testing.assert_array_equal(record.ruined, [False, True])
    assert np.all(record.value_usd >= 0.0) and record.value_usd[1, -1] == 0.0
    returns = record.returns
    assert np.all(np.isfinite(returns)) and returns.min() == -1.0
    table = result.metrics_table()
    row = table[(table.policy == "all_in_2x") & (table.scenario == 1)].iloc[0]
    assert row["ruined"] and row["annual_return"] == -1.0 and row["max_drawdown"] == 1.0
    assert not table[table.policy == "equal_weight"]["ruined"].any()
    # the plot says how many were ruined; the report counts them
    fig = equity_curves(result)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("all_in_2x") and t.endswith("1 of 2 ruined") for t in labels), labels
    assert any(t.startswith("equal_weight") and "ruined" not in t for t in labels), labels
    empty = pd.DataFrame()
    group = GroupComparison("custom", "x", ["r"], 2, "sharpe_ratio", None, empty, empty, empty)
    group.ruined = {"all_in_2x": (1, 2), "equal_weight": (0, 2)}
    assert group.ruined_cell("all_in_2x") == "1/2"
    assert any("`all_in_2x` ended in ruin in 1 of 2" in s for s in _statements(group))


def test_the_defi_table_counts_liquidations_lowest_hf_and_costs_once_per_run():
    from defialloc.evaluation.report import defi_table

    rows = []
    for run in ("r1", "r2"):  # the same deterministic baseline next to two agents
        for seed, (liq, hf, interest) in enumerate([(0.0, np.inf, -10.0), (2.0, 0.97, 30.0)]):
            rows.append(
                {"run_id": run, "policy": "levered", "seed": seed, "liquidations_count": liq,
                 "min_health_factor": hf, "cost_interest_usd": interest, "cost_fees_usd": 5.0}
            )  # fmt: skip
    rows.append(
        {"run_id": "r1", "policy": "spot", "seed": 0, "liquidations_count": 0.0,
         "min_health_factor": np.inf, "cost_interest_usd": -1.0, "cost_fees_usd": 1.0}
    )  # fmt: skip
    table = defi_table(pd.DataFrame(rows), ["levered", "spot"])
    assert table.loc["levered", "liquidations"] == 2.0  # counted once, not per agent run
    assert table.loc["levered", "liquidated runs"] == "1/2"
    assert table.loc["levered", "lowest HF"] == 0.97
    assert table.loc["levered", "interest"] == 10.0
    assert table.loc["spot", "lowest HF"] == np.inf
    assert defi_table(pd.DataFrame(rows).drop(columns="liquidations_count"), ["spot"]).empty
