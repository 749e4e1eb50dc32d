"""The kill-switch: the vectorized component, and through the leveraged env (de-lever, cooldown, release)."""

from __future__ import annotations

import numpy as np
import pytest

from defialloc.envs.actions import spot_safe_action
from defialloc.envs.config import load_config
from defialloc.envs.kill_switch import KillSwitch, KillSwitchConfig
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.simulator import PortfolioSimulator
from tests.test_leverage_env import action, identity_error, make_paths, small_env


def _switch(**kw) -> KillSwitch:
    return KillSwitch(KillSwitchConfig(enabled=True, **kw), n=3)


def test_component_fires_on_drawdown_and_on_health_factor_per_portfolio():
    ks = _switch(max_drawdown=0.3, min_health_factor=1.2, cooldown_steps=2)
    active = ks.update(np.array([0.31, 0.30, 0.0]), np.array([np.inf, np.inf, 1.19]))
    np.testing.assert_array_equal(active, [True, False, True])  # strict: 0.30 is not past 0.30


def test_component_holds_for_the_cooldown_then_releases():
    ks = _switch(max_drawdown=0.3, cooldown_steps=2)
    history = [ks.update(np.array([dd, 0.0, 0.0]))[0] for dd in (0.5, 0.0, 0.0, 0.0, 0.0)]
    assert history == [True, True, True, False, False]  # the firing step + 2 cooldown steps
    ks = _switch(max_drawdown=0.3, cooldown_steps=0)
    assert [ks.update(np.array([dd, 0.0, 0.0]))[0] for dd in (0.5, 0.0)] == [True, False]


def test_component_disabled_never_fires_and_reset_clears():
    ks = KillSwitch(KillSwitchConfig(enabled=False), n=2)
    assert not ks.update(np.array([0.99, 0.99]), np.array([0.5, 0.5])).any()
    ks = _switch(max_drawdown=0.1, cooldown_steps=5)
    ks.update(np.array([0.5, 0.5, 0.0]))
    ks.reset(np.array([True, False, False]))
    np.testing.assert_array_equal(ks.active, [False, True, False])


def test_apply_replaces_the_actions_of_portfolios_under_the_override():
    ks = _switch(max_drawdown=0.3)
    safe = ActionLayout(n_assets=2, lending=True, perps=True).safe_action()
    actions = np.ones((3, 6))
    out, active = ks.apply(actions, safe, np.array([0.0, 0.5, 0.0]))
    np.testing.assert_array_equal(active, [False, True, False])
    np.testing.assert_array_equal(out[1], safe)
    np.testing.assert_array_equal(out[[0, 2]], actions[[0, 2]])


def _flat_after_drop(drop: float, horizon: int = 8) -> np.ndarray:
    close = np.tile([100.0, 2000.0], (6 + horizon + 1, 1))
    close[6 + 1 :] *= 1.0 - drop  # both assets fall once in step 0, then stay flat
    return close


@pytest.mark.parametrize(
    "trigger, weights, leverage_action, drop, hedges",
    [
        # drawdown: l = 0.5, 120k BTC + 30k cash - 50k debt, a 240-unit BTC short; -40 %:
        # equity 72k + 30k + 9.6k - 50k = 61.6k (-38 % > 35 %), HF = 0.78 x 72 / 50 = 1.12
        ("drawdown", [0.8, 0.0, 0.2], -0.5, 0.40, [0.2, 0.0]),
        # health factor: 3x ETH, -8 %: HF = 0.83 x 3 x 0.92 / 2 = 1.145 < 1.2 (drawdown only 24 %)
        ("health_factor", [0.0, 1.0, 0.0], 1.0, 0.08, [0.0, 0.0]),
    ],
)
def test_env_kill_switch_delevers_pays_costs_holds_and_releases(
    trigger, weights, leverage_action, drop, hedges
):
    overrides = {
        "env.kill_switch.enabled": True,
        "env.kill_switch.cooldown_steps": 2,
        "env.kill_switch.max_drawdown": 0.35 if trigger == "drawdown" else 0.9,
        "env.kill_switch.min_health_factor": 1.0 if trigger == "drawdown" else 1.2,
    }
    env = small_env(8, **overrides)
    _, info = env.reset(seed=0, options={"paths": make_paths(_flat_after_drop(drop))})
    act = action(env, weights, leverage=leverage_action, hedges=hedges)  # l = (a + 1) / 2 x 2
    flags, states = [], []
    for _ in range(6):
        _, _, terminated, _, new = env.step(act)
        assert identity_error(info, new) < 1e-9 and not terminated
        flags.append(new["kill_switch"])
        states.append(new)
        info = new
    first = states[0]
    assert first["debt_usd"] > 0.0 and first["liquidations"] == 0
    if trigger == "drawdown":
        assert first["drawdown"] > 0.35 and first["health_factor"] > 1.0
        assert first["perp_size"][0] < 0.0
    else:
        assert first["health_factor"] < 1.2 and first["drawdown"] < 0.35
    # fires at the next decision, holds 1 + cooldown steps, then the policy's action runs again
    assert flags == [False, True, True, True, False, False]
    fired = states[1]
    assert fired["debt_usd"] == 0.0 and np.all(fired["perp_size"] == 0.0)
    assert np.all(fired["holdings"][:2] == 0.0) and fired["holdings"][-1] > 0.0
    assert fired["weights"][-1] == pytest.approx(1.0)
    costs = fired["costs"]
    assert (
        costs["fees"] > 0.0 and costs["gas"] > 0.0
    )  # real costs (slippage may be < 0 in the fee band)
    for held in states[2:4]:  # cooldown: nothing moves, nothing is paid (cash earns its rate)
        assert held["debt_usd"] == 0.0 and np.all(held["holdings"][:2] == 0.0)
        assert all(v == 0.0 for k, v in held["costs"].items() if k != "interest")
        assert held["costs"]["interest"] <= 0.0
    released = states[4]
    assert released["debt_usd"] > 0.0 and released["holdings"][:2].sum() > 0.0


# ------------------------------------------------------------------ one forced-close rule
def _with_dust(config: str | None, overrides: dict) -> PortfolioSimulator:
    """Two envs holding 2 % of their value in BTC (under a 5 % no-trade band), the rest in cash."""
    cfg = load_config(config, {"env.horizon": 4, "env.action.no_trade_band": 0.05, **overrides})
    sim = PortfolioSimulator(cfg, n_envs=2)
    sim.reset_envs(np.arange(2), np.array([2_000_000, 2_000_001]))
    price, num = sim.prices_now()
    sim.units[:] = 0.0
    sim.units[:, 0] = 0.02 * sim.value / price[:, 0]
    sim.cash[:] = 0.98 * sim.value / num
    return sim


@pytest.mark.parametrize("config", [None, "configs/leverage.yaml"])
def test_an_all_numeraire_target_closes_positions_under_the_no_trade_band(config):
    """A policy asking for cash sells dust the band would keep, like the env's kill-switch does."""
    overrides = {"env.kill_switch.enabled": False}
    if config is not None:
        overrides["env.cascades.enabled"] = False
    n = 5
    # env 0: the spot safe action; env 1: another all-cash action (risky at -1, cash at 0)
    spot = np.array([spot_safe_action(n), np.append(np.full(n, -1.0), 0.0)])
    sim = _with_dust(config, overrides)
    actions = spot if config is None else np.array([sim.protocols.layout.safe_action()] * 2)
    if config is not None:
        actions[1, : n + 1] = spot[1]
    sim.execute(actions)
    np.testing.assert_array_equal(sim.units, 0.0)
    # a target a hair away from cash still respects the band (the rule is for "all numeraire" only)
    sim = _with_dust(config, overrides)
    near = spot.copy()
    near[:, 0] = -1.0 + 0.02  # ~1 % BTC: under the band from 2 %, so nothing trades
    sim.execute(near)  # a spot-only action: the levered env reads it as no debt, no perps
    assert np.all(sim.units[:, 0] > 0.0)
