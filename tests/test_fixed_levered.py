"""A fixed levered policy (weights + debt / equity + hedge ratio) and `defialloc simulate` with it."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from defialloc.agents.policy import FixedLeveredPolicy
from defialloc.envs.config import load_config
from defialloc.envs.leverage_actions import ActionLayout, leverage_target
from defialloc.evaluation.rollout import run_policy
from defialloc.training.cli import app
from tests.test_leverage_env import ASSETS, LEVERAGE_CONFIG, flat_path

SMALL = {
    "market.assets": list(ASSETS),
    "env.warmup": 6,
    "env.horizon": 5,
    "env.observation.return_window": 2,
    "env.observation.vol_window": 2,
    "env.observation.corr_window": 5,
    "env.kill_switch.enabled": False,
    "env.cascades.enabled": False,
}


def test_compose_is_the_inverse_of_the_leverage_and_hedge_mapping():
    layout = ActionLayout(n_assets=2, lending=True, perps=True)
    spot = np.array([[1.0, 0.0, -1.0]])
    action = layout.compose(spot, leverage=1.5, hedge=np.array([[0.25, -1.0]]), max_leverage=2.0)
    # l = (a + 1) / 2 * max_leverage  =>  a = 2 * 1.5 / 2 - 1 = 0.5
    np.testing.assert_array_equal(action, [[1.0, 0.0, -1.0, 0.5, 0.25, -1.0]])
    _, lev, hedges = layout.split(action)
    weights = np.array([[2 / 3, 1 / 3, 0.0]])  # S = 0.9 * 0.8 = 0.72 allows up to 2.57
    assert leverage_target(lev, weights, np.array([0.8, 0.8]), 2.0, 0.9)[0] == pytest.approx(1.5)
    np.testing.assert_array_equal(hedges, [[0.25, -1.0]])
    # no leverage on a lending layout is the bottom of the leverage output
    assert layout.compose(spot, max_leverage=2.0)[0, 3] == -1.0


@pytest.mark.parametrize(
    ("layout", "kwargs", "match"),
    [
        (ActionLayout(2, True, True), {"leverage": 2.5}, r"\[0, env.lending.max_leverage=2.0\]"),
        (ActionLayout(2, True, True), {"leverage": -0.1}, r"got -0.1"),
        (ActionLayout(2, True, True), {"hedge": 1.5}, r"hedge ratios must be in \[-1, 1\]"),
        (ActionLayout(2, False, True), {"leverage": 1.0}, r"env.lending.enabled=true"),
        (ActionLayout(2, True, False), {"hedge": 0.5}, r"env.perps.enabled=true"),
    ],
)
def test_compose_rejects_what_the_env_cannot_take(layout, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layout.compose(np.zeros((1, 3)), max_leverage=2.0, **kwargs)


def test_fixed_levered_policy_holds_its_leverage_on_a_flat_market():
    cfg = load_config(LEVERAGE_CONFIG, SMALL)
    policy = FixedLeveredPolicy(np.array([0.5, 0.5, 0.0]), cfg, leverage=1.0)
    record = run_policy(cfg, policy, np.array([3]), paths=flat_path(5))
    debt = record.extras["debt_usd"][0]
    equity = record.value_usd[0, 1:]
    # the target debt is 1 x the equity at decision time; fees and gas of the first trade take a
    # few tenths of a percent of the equity, and later steps stay inside the no-trade band
    np.testing.assert_allclose(debt / equity, 1.0, rtol=0.01)
    assert (record.extras["health_factor"][0] < 3.0).all()
    assert record.costs_usd["interest"][0].sum() > 0.0


def test_simulate_prints_the_protocol_table_for_a_levered_policy():
    runner = CliRunner()
    args = ["simulate", "--config", LEVERAGE_CONFIG, "--leverage", "1", "--hedge", "0.2"]
    result = runner.invoke(app, [*args, "env.horizon=30"])
    assert result.exit_code == 0, result.output
    assert "lending, perps and kill-switch" in result.output
    assert "lev=1 hedge=0.2" in result.output
    spot = runner.invoke(app, ["simulate", "env.horizon=30"])
    assert spot.exit_code == 0, spot.output
    assert "lending, perps and kill-switch" not in spot.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--config", LEVERAGE_CONFIG, "--leverage", "5"], "env.lending.max_leverage=2.0"),
        (["--leverage", "1"], "env.lending.enabled=true"),
        (["--config", LEVERAGE_CONFIG, "--hedge", "-2"], "hedge ratios must be in"),
    ],
)
def test_simulate_refuses_a_leverage_or_hedge_out_of_range(args, match):
    result = CliRunner().invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    assert match in " ".join(result.output.split())
