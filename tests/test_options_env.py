"""The options venue inside the env, on hand-made paths, checked against hand-computed values.

The env runs BTC + ETH with the options venue only (lending, perps and cascades off unless a test
turns them on), gas off so that the cash moves only by the flows under test. Hand-made paths carry
no generator state, so the venue's forecast is the causal GARCH filter, recomputed here by its
recursion; prices come from QuantLib's ``blackFormula``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defialloc.envs import make_env, make_vec_env
from defialloc.envs.action_kinds import ActionMap, ActionTargets, OptionTargets, PortfolioState
from defialloc.envs.config import ActionConfig, load_config
from defialloc.envs.env import DeFiMarketEnv
from defialloc.envs.features.model import TraderModel
from defialloc.envs.leverage_actions import ActionLayout, OptionOrder
from defialloc.envs.protocols.options_params import load_options_params
from tests.test_leverage_env import flat_path, make_paths

ql = pytest.importorskip("QuantLib")

OPTIONS_CONFIG = "configs/options.yaml"
WARMUP = 6
STRIKES = (0.8, 0.9, 1.0, 1.1, 1.2)
TENORS = (7, 30, 90)


def options_env(horizon: int, **overrides) -> DeFiMarketEnv:
    base = {
        "market.assets": ["BTC", "ETH"],
        "env.warmup": WARMUP,
        "env.horizon": horizon,
        "env.observation.return_window": 2,
        "env.observation.vol_window": 2,
        "env.observation.corr_window": 5,
        "env.kill_switch.enabled": False,
        "env.lending.enabled": False,
        "env.perps.enabled": False,
        "env.cascades.enabled": False,
        "env.gas.enabled": False,
    }
    base.update(overrides)
    return make_env(OPTIONS_CONFIG, **base)


def act(env: DeFiMarketEnv, weights, **order) -> np.ndarray:
    """The action for spot ``weights`` (N + 1, cash last) and an :class:`OptionOrder`."""
    w = np.asarray(weights, dtype=float)
    spot = np.clip(2.0 * w / w.max() - 1.0, -1.0, 1.0)[None]
    layout: ActionLayout = env.sim.protocols.layout
    return layout.compose(spot, 0.0, 0.0, 0.0, OptionOrder(**order))[0].astype(np.float32)


def _garch():
    # the default market's GARCH parameters (BTC and ETH are its first two assets)
    return TraderModel.from_market(load_config(OPTIONS_CONFIG).market, with_regime=False).garch


def filter_variance(close: np.ndarray, asset: int, tau: int) -> float:
    """The trader model's GARCH(1,1) forecast at point ``tau`` of the next step's variance, by its
    recursion ``f_0 = h_bar``, ``f_t = min(omega + alpha r_t^2 + beta f_{t-1}, cap)``."""
    g = _garch()
    omega, alpha, beta, h_bar, cap = (
        float(x[asset]) for x in (g.omega, g.alpha, g.beta, g.h_bar, g.h_cap)
    )
    f = h_bar
    for t in range(1, tau + 1):
        r = math.log(close[t, asset] / close[t - 1, asset])
        f = min(omega + alpha * r * r + beta * f, cap)
    return f


def hand_quote(close, asset, tau, steps, moneyness, is_call, regime="calm"):
    """(mid, bid, ask, vol) of a listed contract at point ``tau`` by the documented formulas."""
    p = load_options_params()
    g = _garch()
    h_bar, phi = float(g.h_bar[asset]), float(g.alpha[asset] + g.beta[asset])
    f = filter_variance(close, asset, tau)
    avg = h_bar + (f - h_bar) * (1.0 - phi**steps) / ((1.0 - phi) * steps)
    atm = math.sqrt(avg * 365.0) * getattr(p.variance_premium, regime)
    t = steps / 365.0
    s = close[tau, asset]
    k = moneyness * s
    x = math.log(k / s) / (atm * math.sqrt(t))
    skew, smile = getattr(p.skew, regime), getattr(p.smile, regime)
    vol = atm * min(max(1.0 + skew * x + smile * x * x, p.smile_floor_ratio), p.smile_cap_ratio)
    kind = ql.Option.Call if is_call else ql.Option.Put
    h = getattr(p.half_spread_vol, regime)
    tick = p.min_half_spread_of_underlying * s
    mid = ql.blackFormula(kind, k, s, vol * math.sqrt(t), 1.0)
    ask = ql.blackFormula(kind, k, s, (vol + h) * math.sqrt(t), 1.0) + tick
    bid = max(ql.blackFormula(kind, k, s, (vol - h) * math.sqrt(t), 1.0) - tick, 0.0)
    return mid, bid, ask, vol


# ---------------------------------------------------------------------------------------- settlement
def test_protective_put_is_bought_at_the_ask_and_settles_at_expiry_against_the_close():
    """90 % in ETH with puts at 0.9 x forward for 7 days (the cash pays the premium); ETH falls
    from 2000 to 1500 by expiry."""
    horizon = 9
    close = np.tile([100.0, 2000.0], (WARMUP + horizon + 1, 1))
    close[WARMUP + 3 :, 1] = [1900.0, 1700.0, 1600.0, 1500.0, 1500.0, 1500.0, 1500.0][: horizon - 2]
    env = options_env(horizon, **{"env.action.no_trade_band": 0.3})  # trades at the first step only
    _, info = env.reset(options={"paths": make_paths(close)})
    a = act(env, [0.0, 0.9, 0.1], put_share=1.0, put_strike=STRIKES.index(0.9), tenor=0)
    _, _, _, _, info = env.step(a)
    units = info["holdings"][1]
    puts = info["option_units"][1, 1]
    assert puts == pytest.approx(units, rel=1e-12) and info["option_units"][1, 0] == 0.0
    assert info["option_expiry_step"][1, 1] == 7
    mid, _, ask, _ = hand_quote(close, 1, WARMUP, 7, 0.9, False)
    fee = puts * min(0.0005 * 2000.0, 0.125 * ask)
    assert info["option_premium_usd"] == pytest.approx(puts * ask, rel=1e-9)
    assert info["option_fees_usd"] == pytest.approx(fee, rel=1e-9)
    assert info["option_spread_usd"] == pytest.approx(puts * (ask - mid), rel=1e-9)
    strike = info["option_strike"][1, 1]
    assert strike == pytest.approx(1800.0, rel=1e-12)
    for step in range(1, 7):  # the same target: the contract is kept, no premium paid again
        _, _, _, _, info = env.step(a)
        if step < 6:
            assert info["option_premium_usd"] == 0.0 and info["option_settlement_usd"] == 0.0
            # marked at the venue's mid at t = step + 1 (that day's filter forecast), 6 - step
            # days to go
            mark = _mark_at_strike(close, 1, WARMUP + step + 1, 6 - step, 1800.0, False)
            assert info["option_marks"][1, 1] == pytest.approx(mark, rel=1e-9)
    # the 7th move ends at expiry: cash-settled against the close (1500)
    payoff = puts * (1800.0 - 1500.0)
    settle_fee = puts * min(0.00015 * 1500.0, 0.125 * 300.0)
    assert info["option_settlement_usd"] == pytest.approx(payoff, rel=1e-12)
    assert info["option_settlement_fee_usd"] == pytest.approx(settle_fee, rel=1e-12)
    assert info["costs"]["fees"] == pytest.approx(settle_fee, rel=1e-12)
    assert info["option_units_during_move"][1, 1] == pytest.approx(puts)
    assert info["option_marks_after"][1, 1] == pytest.approx(300.0)
    # the next decision rolls: a new 7-day put at 0.9 x 1500
    _, _, _, _, info = env.step(a)
    assert info["option_strike"][1, 1] == pytest.approx(1350.0)
    assert info["option_expiry_step"][1, 1] == 14


def _mark_at_strike(close, asset, tau, steps, strike, is_call, regime="calm"):
    """The venue's mid of a contract of a given USD strike at point ``tau`` (hand formulas)."""
    s = close[tau, asset]
    return _hand_mid(close, asset, tau, steps, strike / s, is_call, regime)


def _hand_mid(close, asset, tau, steps, moneyness, is_call, regime):
    return hand_quote(close, asset, tau, steps, moneyness, is_call, regime)[0]


def test_written_call_pays_out_from_cash_then_from_its_covering_units():
    """All in ETH, calls at the money for 7 days; ETH rises 2000 -> 2500: the payoff (500 per unit)
    exceeds the premium in cash, so the venue takes the rest in ETH at the close."""
    horizon = 8
    close = np.tile([100.0, 2000.0], (WARMUP + horizon + 1, 1))
    close[WARMUP + 7 :, 1] = 2500.0  # on expiry day
    env = options_env(horizon, **{"env.action.no_trade_band": 0.3})  # trades at the first step only
    env.reset(options={"paths": make_paths(close)})
    a = act(env, [0.0, 1.0, 0.0], call_share=1.0, call_strike=STRIKES.index(1.0), tenor=0)
    _, _, _, _, info = env.step(a)
    calls = -info["option_units"][1, 0]
    cash0 = info["holdings"][-1]
    assert calls == pytest.approx(info["holdings"][1], rel=1e-12) and cash0 > 0.0
    before = info
    for _ in range(6):
        before = info
        _, _, _, _, info = env.step(a)
    units_before = before["holdings"][1]
    owed = calls * 500.0 + calls * min(0.00015 * 2500.0, 0.125 * 500.0)
    assert info["option_settlement_usd"] == pytest.approx(-calls * 500.0, rel=1e-12)
    assert info["holdings"][-1] == 0.0  # all the cash went to the buyer
    taken = (owed - before["holdings"][-1]) / 2500.0
    assert info["holdings"][1] == pytest.approx(units_before - taken, rel=1e-12)
    assert info["portfolio_value"] == pytest.approx(info["holdings"][1] * 2500.0, rel=1e-12)
    assert info["option_insurance_usd"] == 0.0


def test_calls_uncovered_by_a_lending_liquidation_are_margin_called_at_the_high():
    """Levered ETH with calls written on all of it; a wick to 79 % of the price liquidates part of
    the collateral (the calls are then uncovered) and a high of 2400 breaches their margin."""
    horizon = 3
    close = np.tile([100.0, 2000.0], (WARMUP + horizon + 1, 1))
    low, high = close.copy(), close.copy()
    low[WARMUP + 2, 1], high[WARMUP + 2, 1] = 1580.0, 2400.0  # the second move
    env = options_env(horizon, **{"env.lending.enabled": True})
    env.reset(options={"paths": make_paths(close, low=low, high=high)})
    layout: ActionLayout = env.sim.protocols.layout
    spot = np.array([[-1.0, 1.0, -1.0]])
    a = layout.compose(spot, 2.0, 0.0, 2.0, OptionOrder(call_share=1.0, call_strike=2, tenor=1))
    _, _, _, _, first = env.step(a[0].astype(np.float32))
    calls = -first["option_units"][1, 0]
    assert calls == pytest.approx(first["holdings_during_move"][1], rel=1e-12)
    assert first["debt_usd"] > 0.0 and first["liquidations"] == 0
    book = env.sim.protocols.options
    price, _ = env.sim.prices_now()
    _, _, _, _, info = env.step(a[0].astype(np.float32))
    assert info["liquidation_penalty_usd"] > 0.0  # the lending liquidation took collateral
    calls_after = -info["option_units"][1, 0]
    naked = calls - calls_after  # the written calls the margin call bought back
    assert naked > 0.2 * calls
    # cost = ask at the high minus the close's mid, plus the 0.19 % fee on the high
    now1 = env.sim._now
    strike = first["option_strike"][None]
    expiry = book.expiry.copy()  # the calls left keep their contract
    at_high = book.quote(now1, np.array([[100.0, 2400.0]]), strike, expiry)
    at_close = book.quote(now1, np.array([[100.0, 2000.0]]), strike, expiry)
    cost = naked * (at_high.ask[0, 1, 0] - at_close.mid[0, 1, 0]) + naked * 0.0019 * 2400.0
    assert info["option_liquidation_usd"] == pytest.approx(cost, rel=1e-9)
    assert info["costs"]["liquidation"] == pytest.approx(
        info["liquidation_penalty_usd"] + cost, rel=1e-9
    )
    assert info["liquidations"] >= 2 and price[0, 1] == 2000.0
    # the buy-back took all the cash and the rest in ETH at the close: the calls left may exceed
    # the units by that; the next decision buys the excess back before anything else
    assert info["holdings"][-1] == 0.0 and calls_after >= info["holdings"][1] - 1e-9
    _, _, _, _, info = env.step(a[0].astype(np.float32))
    assert -info["option_units"][1, 0] <= info["holdings"][1] + 1e-9


def test_a_held_contract_is_kept_until_expiry_then_rolls_into_the_new_choice():
    env = options_env(12)
    env.reset(options={"paths": flat_path(12)})
    a = act(env, [0.5, 0.5, 0.0], call_share=1.0, call_strike=3, tenor=0)
    _, _, _, _, info = env.step(a)
    strike0 = info["option_strike"][:, 0].copy()
    np.testing.assert_allclose(strike0, [110.0, 2200.0])
    b = act(env, [0.5, 0.5, 0.0], call_share=1.0, call_strike=4, tenor=1)
    for _ in range(5):  # a new choice does not switch a held contract
        _, _, _, _, info = env.step(b)
        np.testing.assert_allclose(info["option_strike"][:, 0], strike0)
    _, _, _, _, info = env.step(b)  # the 7th move settles it
    assert not info["option_units"].any() and info["option_settlement_usd"] == 0.0  # OTM
    _, _, _, _, info = env.step(b)  # the next decision opens the new choice
    np.testing.assert_allclose(info["option_strike"][:, 0], [120.0, 2400.0])
    assert np.all(info["option_expiry_step"][:, 0] == 7 + 30)


def test_all_numeraire_and_the_kill_switch_close_every_option():
    env = options_env(
        5, **{"env.kill_switch.enabled": True, "env.kill_switch.max_drawdown": 0.0001}
    )
    env.reset(options={"paths": flat_path(5)})
    a = act(env, [0.5, 0.5, 0.0], call_share=1.0, put_share=0.5, call_strike=3, put_strike=1)
    _, _, _, _, info = env.step(a)
    assert np.abs(info["option_units"]).sum() > 0.0
    _, _, _, _, info = env.step(a)  # the costs put the account under water: the switch fires
    assert info["kill_switch"] and not info["option_units"].any()
    env2 = options_env(3)
    env2.reset(options={"paths": flat_path(3)})
    env2.step(a)
    _, _, _, _, info = env2.step(act(env2, [0.0, 0.0, 1.0], call_share=1.0, put_share=1.0))
    assert not info["option_units"].any() and not info["holdings"][:2].any()


# ---------------------------------------------------------------------------------------- Greeks
def test_greeks_add_spot_perps_and_the_options_black76_sensitivities():
    env = options_env(4, **{"env.perps.enabled": True})
    env.reset(options={"paths": flat_path(4)})
    layout: ActionLayout = env.sim.protocols.layout
    a = layout.compose(
        np.array([[-1.0, 0.9, -0.9]]), 0.0, np.array([[0.0, 0.3]]), 0.0,
        OptionOrder(call_share=0.6, put_share=0.4, call_strike=3, put_strike=1, tenor=1),
    )[0].astype(np.float32)  # fmt: skip
    obs, _, _, _, info = env.step(a)
    units, perp = info["holdings"][1], info["perp_size"][1]
    calls, puts = info["option_units"][1]
    close = np.tile([100.0, 2000.0], (WARMUP + 5, 1))
    tau, steps = WARMUP + 1, 29
    deltas, gammas, vegas, thetas = [], [], [], []
    for moneyness, is_call in ((1.1, True), (0.9, False)):
        *_, vol = hand_quote(close, 1, tau, steps, moneyness, is_call)
        strike = info["option_strike"][1, 0 if is_call else 1]
        kind = ql.Option.Call if is_call else ql.Option.Put
        t = steps / 365.0
        calc = ql.BlackCalculator(
            ql.PlainVanillaPayoff(kind, strike), 2000.0, vol * math.sqrt(t), 1.0
        )
        deltas.append(calc.deltaForward())
        gammas.append(calc.gammaForward())
        vegas.append(calc.vega(t) / 100.0)
        thetas.append(calc.theta(2000.0, t) / 365.0)
    g = info["greeks"]
    basis = env.sim.now(env.sim.protocols.paths.basis)[0, 1]
    assert g["delta"][1] == pytest.approx(
        units + perp * (1 + basis) + calls * deltas[0] + puts * deltas[1], rel=1e-9
    )
    assert g["gamma"][1] == pytest.approx(calls * gammas[0] + puts * gammas[1], rel=1e-9)
    assert g["vega"][1] == pytest.approx(calls * vegas[0] + puts * vegas[1], rel=1e-9)
    assert g["theta"][1] == pytest.approx(calls * thetas[0] + puts * thetas[1], rel=1e-9)
    assert g["delta"][0] == 0.0 and g["vega_usd"] == pytest.approx(g["vega"].sum())
    # the observation block: the same Greeks over the equity (envs/greeks.py scales)
    names = env.sim.obs_layout.span("greeks")
    block = obs[names]
    v = info["portfolio_value"]
    np.testing.assert_allclose(
        block[[1, 3, 5, 7]],
        [g["delta"][1] * 2000 / v, g["gamma"][1] * 2000**2 / v, 100 * g["vega"][1] / v,
         1e4 * g["theta"][1] / v],
        rtol=1e-5,
    )  # fmt: skip


def test_spot_greeks_block_is_the_weights_without_derivatives():
    env = make_env(
        "configs/default.yaml",
        **{"env.observation.blocks": ["weights", "greeks"], "env.initial_weights": "equal"},
    )
    obs, info = env.reset(seed=1)
    n = len(env.sim.asset_names)
    np.testing.assert_allclose(obs[n + 1 : 2 * n + 1], obs[:n], rtol=1e-6)
    assert not obs[2 * n + 1 :].any()
    np.testing.assert_allclose(info["greeks"]["delta"], info["holdings"][:n])


# ---------------------------------------------------------------------------------------- actions
def test_option_block_layout_compose_and_split_round_trip():
    layout = ActionLayout(2, True, True, True, len(STRIKES), len(TENORS))
    assert layout.dim == 3 + 1 + 2 + 2 * 2 + 3
    order = OptionOrder(np.array([[0.25, 1.0]]), 0.5, 4, 0, 2)
    a = layout.compose(np.zeros((1, 3)), 0.5, 0.0, 2.0, order)
    calls, puts, choice = layout.split_options(a)
    amap = ActionMap(layout, ActionConfig(), 2.0)
    t = amap.targets(a, PortfolioState(np.full((1, 3), 1 / 3), np.zeros(1), np.zeros((1, 2))))
    np.testing.assert_allclose(t.options.call_share, [[0.25, 1.0]])
    np.testing.assert_allclose(t.options.put_share, [[0.5, 0.5]])
    assert (t.options.call_strike[0], t.options.put_strike[0], t.options.tenor[0]) == (4, 0, 2)
    safe = layout.safe_action()[None]
    t = amap.targets(safe, PortfolioState(np.full((1, 3), 1 / 3), np.zeros(1), np.zeros((1, 2))))
    assert not t.options.call_share.any() and not t.options.put_share.any()
    with pytest.raises(ValueError, match="call_share"):
        layout.compose(np.zeros((1, 3)), options=OptionOrder(call_share=1.5))
    with pytest.raises(ValueError, match="tenor"):
        layout.compose(np.zeros((1, 3)), options=OptionOrder(tenor=3))
    with pytest.raises(ValueError, match="options venue"):
        ActionLayout(2, False, False).compose(np.zeros((1, 3)), options=OptionOrder())


@pytest.mark.parametrize("kind", ["target", "anchored", "delta"])
def test_option_block_right_inverse_recovers_every_reachable_target(kind):
    layout = ActionLayout(2, False, False, True, len(STRIKES), len(TENORS))
    cfg = ActionConfig(kind=kind)
    amap = ActionMap(layout, cfg, 0.0)
    width = {"target": 1.0, "anchored": cfg.option_deviation, "delta": cfg.max_option_change}[kind]
    shares = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2)

    @settings(max_examples=100, deadline=None)
    @given(shares, shares, shares, shares, st.integers(0, 4), st.integers(0, 4), st.integers(0, 2))
    def check(c_now, p_now, c_frac, p_frac, ks_c, ks_p, kt):
        c_now, p_now = np.array([c_now]), np.array([p_now])
        if kind == "delta":  # within max_option_change of now, inside [0, 1]
            calls = np.clip(c_now + width * (2 * np.array([c_frac]) - 1), 0, 1)
            puts = np.clip(p_now + width * (2 * np.array([p_frac]) - 1), 0, 1)
        else:
            calls, puts = width * np.array([c_frac]), width * np.array([p_frac])
        state = PortfolioState(
            np.full((1, 3), 1 / 3), np.zeros(1), np.zeros((1, 2)), None, c_now, p_now
        )
        wanted = OptionTargets(calls, puts, np.array([ks_c]), np.array([ks_p]), np.array([kt]))
        weights = np.full((1, 3), 1 / 3)
        action = amap.actions_for(
            ActionTargets(weights, np.zeros(1), np.zeros((1, 2)), wanted), state
        )
        targets = amap.targets(action, state).options
        np.testing.assert_allclose(targets.call_share, calls, atol=1e-12)
        np.testing.assert_allclose(targets.put_share, puts, atol=1e-12)
        assert (targets.call_strike[0], targets.put_strike[0], targets.tenor[0]) == (ks_c, ks_p, kt)

    check()


# ---------------------------------------------------------------------------------------- contracts
def test_batched_env_equals_single_envs_with_options():
    n_envs, seed, short = 2, 3, {"env.horizon": 40}
    venv = make_vec_env(OPTIONS_CONFIG, n_envs=n_envs, seed=seed, **short)
    singles = [make_env(OPTIONS_CONFIG, **short) for _ in range(n_envs)]
    obs_single = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(singles)])
    np.testing.assert_allclose(venv.reset(), obs_single, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(0)
    for _ in range(45):
        actions = rng.uniform(-1, 1, (n_envs, venv.action_space.shape[0])).astype(np.float32)
        obs_batch, rewards, dones, _ = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(actions[i])
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-7)
            if not (term or trunc):
                batch_info = venv.env_info(i)
                for key in ("option_value_usd", "option_premium_usd", "option_settlement_usd"):
                    assert batch_info[key] == pytest.approx(info[key], rel=1e-12, abs=1e-9)
            else:
                o, _ = env.reset()
            np.testing.assert_allclose(obs_batch[i], o, rtol=1e-6, atol=1e-7)


def test_snapshot_restore_resumes_the_option_book_exactly():
    env = make_env(OPTIONS_CONFIG, **{"env.horizon": 30})
    env.reset(seed=11)
    rng = np.random.default_rng(2)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, env.action_space.shape[0]).astype(np.float32))
    state = env.sim.snapshot(0)
    twin = make_env(OPTIONS_CONFIG, **{"env.horizon": 30})
    twin.reset(seed=11)
    twin.sim.restore(0, state)
    actions = rng.uniform(-1, 1, (8, env.action_space.shape[0])).astype(np.float32)
    for a in actions:
        o1, r1, *_, i1 = env.step(a)
        o2, r2, *_, i2 = twin.step(a)
        assert r1 == r2 and i1["portfolio_value"] == i2["portfolio_value"]
        np.testing.assert_array_equal(i1["option_units"], i2["option_units"])
        np.testing.assert_array_equal(o1, o2)


def test_options_config_errors_name_the_key():
    from defialloc.envs.config import ConfigError

    with pytest.raises(ConfigError, match="options"):
        make_env(OPTIONS_CONFIG, **{"env.options.enable": True})
    with pytest.raises(ValueError, match="underlyings"):
        options_env(3, **{"market.assets": ["SOL", "LINK"]})
    from defialloc.envs.config import load_config
    from defialloc.envs.streaming import StreamingSimulator

    # paper trading streams no option quotes: it refuses the venue rather than trade it blind
    with pytest.raises(ValueError, match="env.options.enabled=true: paper trading"):
        StreamingSimulator(load_config(OPTIONS_CONFIG))


def test_options_params_errors_name_the_key(tmp_path):
    import yaml

    from defialloc.envs.protocols.params import ProtocolConfigError

    data = yaml.safe_load(open("configs/protocols/options.yaml").read())
    data["strikes"] = [1.1, 0.9]
    data["variance_premium"]["crash"] = 7.0
    path = tmp_path / "options.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProtocolConfigError) as err:
        load_options_params(path)
    assert "strikes" in str(err.value) and "variance_premium.crash" in str(err.value)
