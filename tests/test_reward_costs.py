"""The optional cost-aware reward term: ``- cost_weight * (fees + slippage + gas) / V_t``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defialloc.envs import make_env
from defialloc.envs.config import ConfigError, RewardConfig, load_config
from defialloc.envs.execution.costs import TradeCosts
from defialloc.envs.rewards import RewardModel
from tests.test_leverage_env import action, small_env
from tests.test_ruin import _crash


def _costs(fees, slippage, gas) -> TradeCosts:
    return TradeCosts(np.array(fees, float), np.array(slippage, float), np.array(gas, float))


def test_cost_term_against_hand_values():
    model = RewardModel(RewardConfig(cost_weight=2.0, scale=3.0), 3, floor_usd=5_000.0)
    before = np.array([100_000.0, 100_000.0, 20_000.0])
    after = np.array([99_000.0, 101_000.0, 1_000.0])  # the last one is ruined (under the floor)
    costs = _costs([300.0, 1.0, 100.0], [150.0, -3.0, 60.0], [50.0, 0.0, 40.0])
    zero = np.zeros(3)
    got = model(before, after, zero, zero, costs)
    expected = [
        3.0 * (math.log(0.99) - 2.0 * 500.0 / 100_000.0),  # log(0.99) - 0.01
        3.0 * math.log(1.01),  # fees + slippage + gas = -2 USD: floored at 0, no bonus
        3.0 * (math.log(5_000.0 / 20_000.0) - 2.0 * 200.0 / 20_000.0),  # ruin: floor, then the term
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_cost_term_applies_to_every_kind_and_is_off_by_default():
    before, after = np.array([100.0]), np.array([101.0])
    dd0, dd1 = np.zeros(1), np.zeros(1)
    costs = _costs([0.5], [0.2], [0.1])
    for kind in ("log_growth", "differential_sharpe", "drawdown_penalized"):
        plain = RewardModel(RewardConfig(kind=kind), 1, 1.0)(before, after, dd0, dd1)
        weighted = RewardModel(RewardConfig(kind=kind, cost_weight=4.0), 1, 1.0)
        got = weighted(before, after, dd0, dd1, costs)
        np.testing.assert_allclose(got, plain - 4.0 * 0.8 / 100.0, rtol=1e-12)
    assert RewardConfig().cost_weight == 0.0
    with pytest.raises(ValueError, match="needs the step's trading costs"):
        RewardModel(RewardConfig(cost_weight=1.0), 1, 1.0)(before, after, dd0, dd1)
    with pytest.raises(ConfigError, match=r"env\.reward\.cost_weight"):
        load_config(None, {"env.reward.cost_weight": -1.0})


def test_env_reward_subtracts_the_weighted_trading_costs_of_the_step():
    """Same seed and actions with and without the term: identical values, rewards apart by exactly
    ``cost_weight * (fees + slippage + gas) / V_t`` from the step's info."""
    weight = 5.0
    plain = make_env(seed=3, **{"env.horizon": 20})
    costly = make_env(seed=3, **{"env.horizon": 20, "env.reward.cost_weight": weight})
    rng = np.random.default_rng(2)
    value = plain.config.env.initial_value_usd
    traded = 0
    for _ in range(20):
        a = rng.uniform(-1, 1, plain.action_space.shape).astype(np.float32)
        _, r0, *_, info0 = plain.step(a)
        _, r1, *_, info1 = costly.step(a)
        assert info1["portfolio_value"] == info0["portfolio_value"]
        c = info1["costs"]
        paid = c["fees"] + c["slippage"] + c["gas"]
        traded += paid > 0
        assert r0 == pytest.approx(math.log(info0["portfolio_value"] / value), rel=1e-12)
        assert r1 == pytest.approx(r0 - weight * max(paid, 0.0) / value, rel=1e-12, abs=1e-15)
        value = info0["portfolio_value"]
    assert traded >= 10


def test_ruining_step_reward_stays_bounded_with_the_cost_term():
    """2x levered ETH falls 70 %: growth part log(floor / V_t), minus the weighted cost ratio."""
    env = small_env(4, **{"env.reward.cost_weight": 3.0})
    _, before = env.reset(seed=0, options={"paths": _crash(0.70)})
    _, reward, terminated, _, info = env.step(action(env, [0, 1, 0], leverage=1.0))
    assert terminated and info["portfolio_value"] == 0.0
    v = before["portfolio_value"]
    floor = env.config.env.ruin_fraction * env.config.env.initial_value_usd
    paid = info["costs"]["fees"] + info["costs"]["slippage"] + info["costs"]["gas"]
    assert 0.0 < paid < v
    assert reward == pytest.approx(math.log(floor / v) - 3.0 * paid / v, rel=1e-12)
    assert math.isfinite(reward) and reward > math.log(floor / v) - 3.0
