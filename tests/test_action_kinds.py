"""Action kinds (target, anchored, delta) and decisions every k market steps.

Each mapping is checked against hand-computed targets, has a right inverse that recovers every
target of its reachable set exactly (property tests), and runs in the env: a ``delta`` decision
never turns over more than ``max_turnover``, and ``env.decision_every = k`` trades only at decisions
while the reward sums the interval.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defialloc.agents.policy import FixedWeightsPolicy
from defialloc.envs import make_env, make_vec_env
from defialloc.envs.action_kinds import ActionMap, ActionTargets, PortfolioState
from defialloc.envs.config import ActionConfig, ConfigError, load_config
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.rollout import run_policy

LEVERAGE = "configs/leverage.yaml"
N = 3


def _map(kind: str, lending: bool = True, perps: bool = True, **cfg) -> ActionMap:
    return ActionMap(ActionLayout(N, lending, perps), ActionConfig(kind=kind, **cfg), 2.0)


def _state(weights, leverage=0.0, hedge=0.0, vol=None) -> PortfolioState:
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    b = w.shape[0]
    return PortfolioState(
        w,
        np.broadcast_to(np.asarray(leverage, dtype=float), (b,)).copy(),
        np.broadcast_to(np.asarray(hedge, dtype=float), (b, N)).copy(),
        None if vol is None else np.atleast_2d(np.asarray(vol, dtype=float)),
    )


# ------------------------------------------------------------------------------ hand values
def test_anchored_targets_by_hand():
    amap = _map("anchored", max_deviation=0.1, leverage_deviation=0.5, hedge_deviation=0.4)
    a = np.array([[1.0, -1.0, 0.0, 0.0, 0.6, 1.0, -0.5, 0.0]])  # spot (3 + cash), lev, 3 hedges
    t = amap.targets(a, _state([0.0, 0.0, 0.0, 1.0]))
    # d = a - mean(a) = a - 0 over the 4 spot outputs; anchor = 1/3 each, cash 0
    np.testing.assert_allclose(t.weights, [[1 / 3 + 0.1, 1 / 3 - 0.1, 1 / 3, 0.0]], rtol=1e-12)
    assert t.leverage[0] == pytest.approx(0.3)  # 0.5 x 0.6 around the anchor's zero debt
    np.testing.assert_allclose(t.hedge, [[0.4, -0.2, 0.0]])
    # the lower half of the leverage output is zero debt
    a[0, 4] = -0.7
    assert amap.targets(a, _state([0.0, 0.0, 0.0, 1.0])).leverage[0] == 0.0


def test_inverse_vol_anchor_by_hand():
    amap = _map("anchored", lending=False, perps=False, anchor="inverse_vol", max_deviation=0.2)
    t = amap.targets(np.zeros((1, N + 1)), _state([0.0, 0.0, 0.0, 1.0], vol=[0.5, 1.0, 2.0]))
    inverse = np.array([2.0, 1.0, 0.5])
    np.testing.assert_allclose(t.weights[0, :-1], inverse / inverse.sum(), rtol=1e-12)
    assert t.weights[0, -1] == 0.0


def test_delta_targets_by_hand():
    amap = _map("delta", max_turnover=0.1, max_leverage_change=0.25, max_hedge_change=0.5)
    now = [0.4, 0.3, 0.2, 0.1]
    a = np.array([[1.0, 1.0, -1.0, -1.0, -1.0, 0.5, 0.0, -1.0]])
    t = amap.targets(a, _state(now, leverage=0.6, hedge=[0.2, 0.0, 0.9]))
    # d = a (mean 0), |d|_1 / 2 = 2 -> scaled by 0.1 / 2: w = now + 0.05 d
    np.testing.assert_allclose(t.weights, [[0.45, 0.35, 0.15, 0.05]], rtol=1e-12)
    assert 0.5 * np.abs(t.weights - now).sum() == pytest.approx(0.1)
    assert t.leverage[0] == pytest.approx(0.35)  # 0.6 - 0.25
    np.testing.assert_allclose(t.hedge, [[0.45, 0.0, 0.4]])
    # an output of 0 trades nothing
    t0 = amap.targets(np.zeros((1, 2 * N + 2)), _state(now, 0.6, [0.2, 0.0, 0.9]))
    np.testing.assert_allclose(t0.weights, [now])
    assert t0.leverage[0] == pytest.approx(0.6)


def test_target_kind_is_todays_mapping():
    amap = _map("target")
    a = np.array([[1.0, -1.0, -1.0, -1.0, 0.0, 0.3, -0.2, 1.0]])
    t = amap.targets(a, _state([0.25] * 4))
    np.testing.assert_allclose(t.weights, [[1.0, 0.0, 0.0, 0.0]])
    assert t.leverage[0] == pytest.approx(1.0)  # (0 + 1) / 2 x 2
    np.testing.assert_allclose(t.hedge, [[0.3, -0.2, 1.0]])


def test_spot_only_actions_mean_no_debt_and_no_hedge_in_every_kind():
    for kind in ("target", "anchored", "delta"):
        t = _map(kind).targets(np.zeros((1, N + 1)), _state([0.25] * 4, leverage=0.5))
        assert t.leverage[0] == 0.0 and not t.hedge.any()


def test_bad_action_config_names_the_key():
    with pytest.raises(ConfigError, match="env.action.kind"):
        load_config(None, {"env.action.kind": "softmax"})
    with pytest.raises(ConfigError, match="env.action.max_turnover"):
        load_config(None, {"env.action.max_turnover": 0.0})
    # the Gymnasium envs need whole decision intervals; backtests run at any horizon
    with pytest.raises(ConfigError, match="multiple of env.decision_every=7"):
        make_env(None, **{"env.decision_every": 7})
    load_config(None, {"env.decision_every": 7})


# ------------------------------------------------------------------------------ right inverses
def _simplex(draw, size: int) -> np.ndarray:
    raw = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=size, max_size=size)))
    raw = raw + 1e-3
    return raw / raw.sum()


@st.composite
def _reachable(draw, amap: ActionMap):
    """(state, targets) with targets in the map's reachable set."""
    kind, cfg = amap.kind, amap.cfg
    now = _simplex(draw, N + 1)
    vol = np.array(draw(st.lists(st.floats(0.1, 3.0), min_size=N, max_size=N)))
    lev_now = draw(st.floats(0.0, 2.0))
    hedge_now = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=N, max_size=N)))
    state = _state(now, lev_now, hedge_now, vol)
    direction = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=N + 1, max_size=N + 1)))
    direction -= direction.mean()
    frac = draw(st.floats(0.0, 1.0))
    if kind == "target":
        w = _simplex(draw, N + 1)
        lev = draw(st.floats(0.0, 2.0))
        hedge = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=N, max_size=N)))
    elif kind == "anchored":
        # inside the band and non-negative: shrink the direction until the anchor + d >= 0
        anchor = amap.anchor(state)[0]
        d = cfg.max_deviation * frac * direction / max(np.ptp(direction) / 2.0, 1e-12)
        with np.errstate(over="ignore"):  # a tiny negative entry: the bound is huge
            d *= min(1.0, np.min(np.where(d < 0, anchor / np.where(d < 0, -d, 1.0), np.inf)))
        w = anchor + d
        lev = draw(st.floats(0.0, cfg.leverage_deviation))
        hedge = cfg.hedge_deviation * np.array(
            draw(st.lists(st.floats(-1.0, 1.0), min_size=N, max_size=N))
        )
    else:
        step = direction / max(0.5 * np.abs(direction).sum(), 1e-12)
        d = cfg.max_turnover * frac * step
        with np.errstate(over="ignore"):
            d *= min(1.0, np.min(np.where(d < 0, now / np.where(d < 0, -d, 1.0), np.inf)))
        w = now + d
        lev = float(np.clip(lev_now + cfg.max_leverage_change * draw(st.floats(-1, 1)), 0, 2))
        hedge = np.clip(
            hedge_now
            + cfg.max_hedge_change
            * np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=N, max_size=N))),
            -1.0,
            1.0,
        )
    return state, ActionTargets(w[None], np.array([lev]), hedge[None])


@pytest.mark.parametrize("kind", ["target", "anchored", "delta"])
def test_right_inverse_recovers_every_reachable_target(kind):
    amap = _map(kind, anchor="inverse_vol" if kind == "anchored" else "equal_weight")

    @settings(max_examples=200, deadline=None)
    @given(_reachable(amap))
    def check(case):
        state, wanted = case
        actions = amap.actions_for(wanted, state)
        assert np.all(np.abs(actions) <= 1.0)
        got = amap.targets(actions, state)
        np.testing.assert_allclose(got.weights, wanted.weights, atol=1e-12)
        assert got.leverage[0] == pytest.approx(wanted.leverage[0], abs=1e-12)
        np.testing.assert_allclose(got.hedge, wanted.hedge, atol=1e-12)

    check()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=N + 1, max_size=N + 1))
def test_a_delta_decision_never_turns_over_more_than_the_maximum(outputs):
    amap = _map("delta", lending=False, perps=False, max_turnover=0.07)
    now = np.array([0.1, 0.0, 0.5, 0.4])
    w = amap.targets(np.array([outputs]), _state(now)).weights[0]
    assert 0.5 * np.abs(w - now).sum() <= 0.07 + 1e-12
    assert w.min() >= 0.0 and w.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------------------ in the env
def test_delta_kind_in_the_env_turns_over_at_most_max_turnover():
    env = make_env(
        seed=0, **{"env.action.kind": "delta", "env.action.max_turnover": 0.05, "env.horizon": 20}
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, _, term, trunc, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        assert info["turnover"] <= 0.05 + 1e-9
        if term or trunc:
            break


@pytest.mark.parametrize("config", [None, LEVERAGE])
def test_decisions_every_k_steps_trade_only_at_decisions_and_sum_the_reward(config):
    """One env step with decision_every = k equals one daily decision followed by k - 1 held
    market steps: the same value, the summed reward and costs, no order in between."""
    k, horizon = 7, 28
    env = make_env(config, **{"env.decision_every": k, "env.horizon": horizon})
    daily = make_env(config, **{"env.horizon": horizon})
    env.reset(seed=3)
    daily.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(horizon // k):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        _, reward, _, trunc, info = env.step(a)
        _, total, *_, first = daily.step(a)
        fees = first["costs"]["fees"]
        for _ in range(k - 1):
            held = daily.sim.step(None, hold=True)
            assert held.costs.fees_usd[0] == 0.0 and held.turnover[0] == 0.0
            total += float(held.reward[0])
        assert info["portfolio_value"] == pytest.approx(float(daily.sim.value[0]), rel=1e-12)
        assert reward == pytest.approx(total, rel=1e-9, abs=1e-12)
        assert info["costs"]["fees"] == pytest.approx(fees, rel=1e-12)
    assert trunc and info["step"] == horizon


def test_decision_interval_reward_is_the_interval_log_growth():
    k = 4
    env = make_env(None, **{"env.decision_every": k, "env.horizon": 20})
    env.reset(seed=5)
    value = env.sim.value[0]
    _, reward, _, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert reward == pytest.approx(math.log(info["portfolio_value"] / value), rel=1e-9)
    assert info["step"] == k


@pytest.mark.parametrize("config", [None, LEVERAGE])
def test_batched_equals_single_with_decision_intervals_and_mid_interval_ruin(config):
    over = {"env.decision_every": 5, "env.horizon": 30, "env.ruin_fraction": 0.9}
    n_envs, seed = 3, 11
    venv = make_vec_env(config, n_envs=n_envs, seed=seed, **over)
    singles = [make_env(config, **over) for _ in range(n_envs)]
    obs = venv.reset()
    for i, env in enumerate(singles):
        np.testing.assert_allclose(obs[i], env.reset(seed=seed + i)[0], rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(2)
    ends = 0
    for _ in range(40):
        actions = rng.choice([-1.0, 1.0], size=(n_envs, venv.action_space.shape[0]))
        obs, rewards, dones, infos = venv.step(actions.astype(np.float32))
        for i, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(actions[i].astype(np.float32))
            assert dones[i] == (term or trunc)
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-6)
            if term or trunc:
                ends += 1
                np.testing.assert_allclose(
                    infos[i]["terminal_observation"], o, rtol=1e-6, atol=1e-7
                )
                o, _ = env.reset()
            np.testing.assert_allclose(obs[i], o, rtol=1e-6, atol=1e-7)
    assert ends > 0


def test_a_policy_deciding_every_k_steps_holds_in_between_in_backtests():
    cfg = load_config(None, {"env.horizon": 21, "env.action.no_trade_band": 0.0})
    n = len(cfg.market.assets)
    policy = FixedWeightsPolicy(np.append(np.full(n, 1.0 / n), 0.0), name="weekly")
    policy.decision_every = 7
    rec = run_policy(cfg, policy, scenario_seeds("validation", 2))
    traded = rec.turnover > 0.0
    assert traded[:, ::7].all() and not traded[:, 1:7].any() and not traded[:, 8:14].any()


@pytest.mark.parametrize("kind", ["anchored", "delta"])
def test_exported_policies_of_other_kinds_paper_trade_like_their_backtest(kind, tmp_path):
    """The ONNX graph of an anchored / delta policy outputs its action only (its target depends on
    the portfolio); the paper trader maps it with the env's ActionMap, holds between decisions,
    and reproduces the backtest of the same export on a replayed period bar for bar."""
    import sqlite3

    from defialloc.agents.onnx_policy import WEIGHTS_OUTPUT, OnnxPolicy
    from defialloc.evaluation.backtest import run_period_backtest
    from defialloc.training.paper.feeds import ReplayFeed
    from tests.test_paper import DATA_DIR, make_policy_dir, run_trader

    folder = make_policy_dir(
        tmp_path / "policy", overrides={"env.action.kind": kind, "env.decision_every": 5}
    )
    policy = OnnxPolicy(folder)
    assert policy.decision_every == 5
    assert WEIGHTS_OUTPUT not in policy.predict(np.zeros((1, policy.obs_dim)))
    cfg = load_config(policy.manifest.simulation_config)
    feed = ReplayFeed.from_config(cfg, "2022-09-01", "2022-10-31", data_dir=str(DATA_DIR))
    run_trader(policy, feed, tmp_path / "paper.db")
    result = run_period_backtest(
        load_config(cfg, {"market.data_dir": str(DATA_DIR)}),
        [policy],
        "2022-09-01",
        "2022-10-31",
        progress=False,
    )
    record = result.records[policy.name]
    rows = np.array(
        sqlite3.connect(tmp_path / "paper.db")
        .execute("SELECT value_usd, fees_usd, turnover FROM equity ORDER BY bar_index")
        .fetchall()
    )
    np.testing.assert_array_equal(rows[:, 0], record.value_usd[0])
    np.testing.assert_array_equal(rows[:-1, 1], record.fees_usd[0])
    traded = record.turnover[0] > 0.0
    assert traded.any() and not traded[np.arange(traded.size) % 5 != 0].any()


@pytest.mark.parametrize("config", [None, LEVERAGE])
def test_baselines_trade_the_same_whatever_the_agents_action_kind(config):
    """Baselines express targets (``Policy.action_kind = "target"``): in a config whose agents act
    as deltas or anchored deviations they trade exactly as in the target-kind config, while a
    trained agent's actions are read in the config's kind."""
    from defialloc.agents.policy import FixedLeveredPolicy
    from defialloc.evaluation.backtest import run_backtest

    seeds = scenario_seeds("validation", 3)
    results = {}
    for kind in ("target", "delta", "anchored"):
        cfg = load_config(config, {"env.horizon": 20, "env.action.kind": kind})
        policies = ["equal_weight", "min_variance"]
        if config == LEVERAGE:
            n = len(cfg.market.assets)
            policies.append(
                FixedLeveredPolicy(np.append(np.full(n, 0.15), 0.25), cfg, leverage=0.5, hedge=0.5)
            )
        results[kind] = run_backtest(cfg, policies, seeds, progress=False)
    for kind in ("delta", "anchored"):
        for name, rec in results["target"].records.items():
            other = results[kind].records[name]
            np.testing.assert_array_equal(rec.value_usd, other.value_usd)
            np.testing.assert_array_equal(rec.turnover, other.turnover)
