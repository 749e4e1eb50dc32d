"""The kill-switch as a policy wrapper: hand-made paths, equivalence with the env's own kill-switch,
workers, the CLI options and the tracked parameters."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from defialloc.agents.kill_switch_policy import KillSwitchPolicy, kill_switch_params
from defialloc.agents.policy import FixedLeveredPolicy, FixedWeightsPolicy, MarketView, Policy
from defialloc.envs.config import load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.seeds import scenario_seeds
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.evaluation.backtest import run_backtest
from defialloc.training.cli import app

LEVERAGE = "configs/leverage.yaml"
ASSETS = ["BTC", "ETH"]


class Constant(Policy):
    """The same actions every step; counts its calls."""

    name = "constant"
    lookback = 7

    def __init__(self, action: np.ndarray) -> None:
        self.action = np.asarray(action, dtype=np.float64)
        self.calls = 0

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        self.calls += 1
        return np.broadcast_to(self.action, (observation.shape[0], self.action.size)).copy()


def _view(values, hf=None) -> MarketView:
    b = len(values)
    return MarketView(
        ("BTC", "ETH"),
        np.ones((b, 1, 2)),
        np.full((b, 3), 1 / 3),
        np.zeros(b, dtype=np.int64),
        value_usd=np.asarray(values, dtype=float),
        health_factor=None if hf is None else np.asarray(hf, dtype=float),
    )


def _drive(wrapper: KillSwitchPolicy, values, hfs=None) -> tuple[list, list, list]:
    """Feed one portfolio the decision values (and HFs); returns actions, flags and peaks."""
    wrapper.reset(1)
    actions, flags, peaks = [], [], []
    for t, v in enumerate(values):
        hf = None if hfs is None else [hfs[t]]
        actions.append(wrapper.act(np.zeros((1, 4)), _view([v], hf))[0])
        flags.append(bool(wrapper.active[0]))
        peaks.append(float(wrapper.peak[0]))
    return actions, flags, peaks


# ----------------------------------------------------------------------------- (a) hand-made paths
def test_fires_past_max_drawdown_holds_cooldown_plus_one_then_hands_back_with_the_peak_reset():
    cfg = load_config(None, {"market.assets": ASSETS})
    inner = Constant([0.5, 0.5, -1.0])
    ks = KillSwitchConfig(enabled=True, max_drawdown=0.2, cooldown_steps=2)
    wrapper = KillSwitchPolicy(inner, ks, cfg)
    assert (wrapper.name, wrapper.lookback, wrapper.uses_oracle) == ("constant", 7, False)
    # peak 120: 97 is 19.2 % down (control stays), 95 is 20.8 % down (fires)
    values = [100.0, 120.0, 97.0, 95.0, 90.0, 80.0, 85.0, 70.0, 67.0, 60.0]
    actions, flags, peaks = _drive(wrapper, values)
    # the firing decision + 2 cooldown decisions in cash, then the policy again
    assert flags == [False, False, False, True, True, True, False, False, True, True]
    for a in actions:  # the actions pass through: the simulator overrides the flagged rows
        np.testing.assert_array_equal(a, inner.action)
    # re-entry at decision 6 restarts the peak at 85 (vs 120, 85 would be 29 % down and fire again):
    # 70 is 17.6 % under it (control stays), 67 is 21.2 % under it (fires)
    assert peaks == [100.0, 120.0, 120.0, 120.0, 120.0, 120.0, 85.0, 85.0, 85.0, 85.0]
    assert inner.calls == len(values)  # the inner policy decides at every step


def test_without_the_peak_reset_the_old_peak_fires_again_at_once():
    cfg = load_config(None, {"market.assets": ASSETS})
    ks = KillSwitchConfig(
        enabled=True, max_drawdown=0.2, cooldown_steps=0, reset_peak_after_cooldown=False
    )
    wrapper = KillSwitchPolicy(Constant([0.0, 0.0, 0.0]), ks, cfg)
    _, flags, peaks = _drive(wrapper, [100.0, 70.0, 75.0, 75.0])
    # cooldown 0: one decision in cash; the next one sees 75 vs the old 100 and fires again
    assert flags == [False, True, False, True]
    assert peaks == [100.0] * 4
    _, flags, peaks = _drive(
        KillSwitchPolicy(
            Constant([0.0, 0.0, 0.0]),
            ks.model_copy(update={"reset_peak_after_cooldown": True}),
            cfg,
        ),
        [100.0, 70.0, 75.0, 75.0],
    )
    assert flags == [False, True, False, False] and peaks == [100.0, 100.0, 75.0, 75.0]


def test_fires_under_min_health_factor_with_lending_and_uses_the_full_safe_action():
    cfg = load_config(LEVERAGE, {"market.assets": ASSETS})
    layout = ActionLayout.for_config(cfg.env, 2)
    inner = Constant(layout.compose(np.array([[1.0, -1.0, -1.0]]), 1.5, 0.5, 2.0)[0])
    ks = KillSwitchConfig(enabled=True, max_drawdown=0.9, min_health_factor=1.2, cooldown_steps=1)
    wrapper = KillSwitchPolicy(inner, ks, cfg)
    actions, flags, _ = _drive(wrapper, [100.0] * 5, hfs=[np.inf, 1.3, 1.19, 1.19, np.inf])
    # fires at 1.19 (1.3 is above the limit), holds 1 + 1 decisions, then hands back
    assert flags == [False, False, True, True, False]
    np.testing.assert_array_equal(actions[2], inner.action)
    # the simulator gives a flagged row the safe target whatever its action: no debt, no perp,
    # all numeraire, exactly what the layout's safe action asks for
    sim = PortfolioSimulator(load_config(cfg, {"env.horizon": 3}), n_envs=2)
    sim.reset_envs(np.arange(2), np.array([0, 0]))
    sim.step(np.stack([inner.action, inner.action]))  # both lever up and hedge
    sim.step(np.stack([inner.action, inner.action]), override=np.array([True, False]))
    assert sim.units[0].sum() == 0.0 and sim.protocols.debt[0] == 0.0
    assert not sim.protocols.perp_size[0].any()
    assert sim.protocols.debt[1] > 0.0  # (no cash left to margin a hedge: perps scaled to 0)
    twin = PortfolioSimulator(load_config(cfg, {"env.horizon": 3}), n_envs=1)
    twin.reset_envs(np.arange(1), np.array([0]))
    twin.step(inner.action[None])
    twin.step(layout.safe_action()[None])
    assert twin.value[0] == sim.value[0]


def test_state_round_trips_through_json_and_bad_states_are_refused():
    cfg = load_config(None, {"market.assets": ASSETS})
    ks = KillSwitchConfig(enabled=True, max_drawdown=0.1, cooldown_steps=3)
    a = KillSwitchPolicy(Constant([0.0, 0.0, 0.0]), ks, cfg)
    values = [100.0, 85.0, 90.0, 95.0, 80.0, 99.0, 70.0]
    _drive(a, values[:3])
    b = KillSwitchPolicy(Constant([0.0, 0.0, 0.0]), ks, cfg)
    b.reset(1)
    b.load_state(json.loads(json.dumps(a.state())))
    for v in values[3:]:
        np.testing.assert_array_equal(
            a.act(np.zeros((1, 4)), _view([v])), b.act(np.zeros((1, 4)), _view([v]))
        )
        assert a.state() == b.state()
    with pytest.raises(ValueError, match="keys peak and remaining"):
        b.load_state({"peak": [1.0]})
    with pytest.raises(ValueError, match="exceeds cooldown_steps"):
        b.load_state({"peak": [1.0], "remaining": [9]})
    with pytest.raises(ValueError, match="same length"):
        b.load_state({"peak": [1.0, 2.0], "remaining": [0]})
    with pytest.raises(ValueError, match="value_usd"):
        b.act(
            np.zeros((1, 4)),
            MarketView(("BTC", "ETH"), np.ones((1, 1, 2)), np.ones((1, 3)), np.zeros(1)),
        )


# ----------------------------------------------------------------------------- (b) equivalence
def _fixed(cfg, leverage: float, hedge: float) -> FixedLeveredPolicy:
    weights = np.append(np.full(5, 0.15), 0.25)  # cash left over: it margins the perp hedges
    return FixedLeveredPolicy(weights, cfg, leverage=leverage, hedge=hedge, name="fixed")


@pytest.mark.parametrize(
    "config, params, leverage, hedge",
    [
        (None, {"max_drawdown": 0.04, "cooldown_steps": 3}, 0.0, 0.0),
        (
            LEVERAGE,
            {"max_drawdown": 0.06, "cooldown_steps": 2, "min_health_factor": 1.25},
            1.0,
            0.3,
        ),
    ],
)
def test_wrapper_trades_exactly_like_the_env_kill_switch(config, params, leverage, hedge):
    """env kill-switch on + wrapper off == env kill-switch off + wrapper on, bit for bit."""
    short = {"env.horizon": 40}
    env_side = {f"env.kill_switch.{k}": v for k, v in params.items()}
    env_on = load_config(config, {**short, **env_side, "env.kill_switch.enabled": True})
    env_off = load_config(config, short)
    assert not env_off.env.kill_switch.enabled  # off by default, leverage.yaml included
    seeds = scenario_seeds("test", 3)
    ks = KillSwitchConfig(enabled=True, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_env = run_backtest(
            env_on, ["equal_weight", _fixed(env_on, leverage, hedge)], seeds, progress=False
        )
        by_wrapper = run_backtest(
            env_off,
            ["equal_weight", _fixed(env_off, leverage, hedge)],
            seeds,
            progress=False,
            kill_switch=ks,
        )
    assert by_env.kill_switch is None and by_wrapper.kill_switch == ks
    for name in ("equal_weight", "fixed"):
        a, b = by_env.records[name], by_wrapper.records[name]
        flags = a.extras["kill_switch"]
        # the override fired, and control came back (the release and peak reset are exercised)
        assert flags.any() and not flags.all(), (name, flags.sum(axis=1))
        np.testing.assert_array_equal(flags, b.extras["kill_switch"])
        np.testing.assert_array_equal(a.value_usd, b.value_usd)
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.turnover, b.turnover)
        assert a.costs_usd.keys() == b.costs_usd.keys()
        for kind in a.costs_usd:
            np.testing.assert_array_equal(a.costs_usd[kind], b.costs_usd[kind])
        table = by_wrapper.metrics_table()
        fraction = table[table.policy == name]["kill_switch_fraction"].to_numpy()
        np.testing.assert_allclose(fraction, flags.mean(axis=1))
    if config == LEVERAGE:  # the health factor triggered too, not only the drawdown
        debt = by_env.records["fixed"].extras["health_factor"]
        assert np.nanmin(debt) < 1.25


# ----------------------------------------------------------------------------- (c) workers
def test_workers_two_equals_workers_one_behind_the_wrapper():
    cfg = load_config(None, {"env.horizon": 30})
    seeds = scenario_seeds("test", 4)
    ks = KillSwitchConfig(enabled=True, max_drawdown=0.04, cooldown_steps=2)
    policies = ["equal_weight", FixedWeightsPolicy(np.append(np.full(5, 0.2), 0.0), name="fw")]
    # the same tasks (chunks of 2 scenarios) in one process or in two: the chunking itself is not
    # free, the slippage split of a full sell can differ by ~1e-12 USD between chunkings
    one = run_backtest(cfg, policies, seeds, progress=False, kill_switch=ks, chunk_size=2)
    two = run_backtest(
        cfg, policies, seeds, progress=False, kill_switch=ks, workers=2, chunk_size=2
    )
    assert two.kill_switch == ks
    for name, rec in one.records.items():
        other = two.records[name]
        assert rec.extras["kill_switch"].any()
        np.testing.assert_array_equal(rec.extras["kill_switch"], other.extras["kill_switch"])
        np.testing.assert_array_equal(rec.value_usd, other.value_usd)
        for kind in rec.costs_usd:
            np.testing.assert_array_equal(rec.costs_usd[kind], other.costs_usd[kind])


# ----------------------------------------------------------------------------- (d) CLI
@pytest.mark.parametrize("command", ["evaluate", "simulate", "paper --policy nowhere"])
@pytest.mark.parametrize(
    "param, expected",
    [
        ("max_drawdown=1.5", ["max_drawdown=1.5", "0.0 < max_drawdown < 1.0"]),
        ("cooldown_steps=-1", ["cooldown_steps=-1", "0 <= cooldown_steps <= 10000"]),
        ("reset_peak_after_cooldown=maybe", ["reset_peak_after_cooldown", "true or false"]),
        ("drawdown=0.2", ["unknown key 'drawdown'", "max_drawdown, min_health_factor"]),
        ("max_drawdown", ["expected KEY=VALUE"]),
        ("enabled=true", ["--kill-switch / --no-kill-switch"]),
    ],
)
def test_bad_kill_switch_params_get_a_clear_error(command, param, expected):
    args = [*command.split(), "--kill-switch", "--kill-switch-param", param]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for part in expected:
        assert part in text, text


def test_kill_switch_params_without_kill_switch_and_a_bad_yaml_section_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--kill-switch-param", "max_drawdown=0.1"])
    assert result.exit_code == 2 and "needs --kill-switch" in result.output
    bad = tmp_path / "eval.yaml"
    bad.write_text("kill_switch: {max_drawdown: 3.0}\n")
    result = CliRunner().invoke(app, ["evaluate", "--eval-config", str(bad), "--no-track"])
    assert result.exit_code == 2 and "kill_switch.max_drawdown" in result.output


def test_evaluate_with_the_kill_switch_prints_and_uses_its_parameters(tmp_path):
    args = ["evaluate", "env.horizon=30", "--policies", "equal_weight", "--scenarios", "2",
            "--no-track", "--no-progress", "--kill-switch", "--kill-switch-param",
            "max_drawdown=0.04", "--kill-switch-param", "cooldown_steps=2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "kill-switch: on" in text and "max_drawdown=0.04" in text and "cooldown_steps=2" in text
    # the YAML section gives the parameters (and may turn it on); --no-kill-switch wins
    yaml_on = tmp_path / "eval.yaml"
    yaml_on.write_text("kill_switch: {enabled: true, max_drawdown: 0.2}\n")
    base = ["evaluate", "env.horizon=5", "--policies", "equal_weight", "--scenarios", "1",
            "--no-track", "--no-progress", "--eval-config", str(yaml_on)]  # fmt: skip
    on = CliRunner().invoke(app, base)
    assert on.exit_code == 0 and "max_drawdown=0.2" in " ".join(on.output.split())
    off = CliRunner().invoke(app, [*base, "--no-kill-switch"])
    assert off.exit_code == 0 and "kill-switch: on" not in off.output


def test_run_params_of_the_kill_switch():
    assert kill_switch_params(None) == {"kill_switch.enabled": False}
    assert kill_switch_params(KillSwitchConfig()) == {"kill_switch.enabled": False}
    on = kill_switch_params(KillSwitchConfig(enabled=True, max_drawdown=0.2))
    assert on == {
        "kill_switch.enabled": True,
        "kill_switch.max_drawdown": 0.2,
        "kill_switch.min_health_factor": 1.1,
        "kill_switch.cooldown_steps": 10,
        "kill_switch.reset_peak_after_cooldown": True,
    }
