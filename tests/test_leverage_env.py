"""Lending, perps and cascades inside the env, checked against hand-computed values.

Most tests run the env on small hand-made market paths (2 assets, constant prices unless a test
needs a move) and protocol snapshots whose regime processes have zero noise, so every rate, funding
payment and liquidation is a closed-form number computed here from the documented formulas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from defialloc.envs import make_env, make_vec_env
from defialloc.envs.config import ConfigError
from defialloc.envs.env import DeFiMarketEnv
from defialloc.envs.features import observation_size
from defialloc.envs.leverage_actions import ActionLayout, leverage_target, max_feasible_leverage
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.protocols.borrowers import population_liquidations
from defialloc.envs.protocols.params import (
    DEFAULT_LENDING_PATH,
    DEFAULT_PERPS_PATH,
    load_lending_params,
)

LEVERAGE_CONFIG = "configs/leverage.yaml"
OPTIONS_CONFIG = "configs/options.yaml"  # leverage.yaml + the options venue and the Greeks block
ASSETS = ("BTC", "ETH")
CALM, BULL, CRASH = 0, 1, 2
YEAR = 365.0


# ---------------------------------------------------------------------------------------- helpers
def protocol_file(tmp_path: Path, source: Path, edit, name: str) -> str:
    """Copy a protocol YAML with ``edit(dict)`` applied; returns the new path."""
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _zero_noise(model: dict) -> None:
    for level in model["regimes"].values():
        level["std"] = 0.0


def deterministic_lending(tmp_path: Path, zero_rates: bool = False) -> str:
    """Lending snapshot with noiseless utilization (U = the regime's mean), optionally no interest."""

    def edit(data: dict) -> None:
        _zero_noise(data["utilization_by_regime"])
        for asset in data["assets"].values():
            if asset.get("utilization_by_regime"):
                _zero_noise(asset["utilization_by_regime"])
            if zero_rates:
                asset["rate_model"].update(base=0.0, slope1=0.0, slope2=0.0)

    return protocol_file(tmp_path, DEFAULT_LENDING_PATH, edit, "lending.yaml")


def deterministic_perps(tmp_path: Path, means: dict[str, float] | None = None) -> str:
    """Perps venue with a noiseless basis per regime (default: zero basis everywhere)."""
    means = means or {"calm": 0.0, "bull": 0.0, "crash": 0.0}

    def edit(data: dict) -> None:
        for regime, level in data["basis_by_regime"]["regimes"].items():
            level.update(mean=means[regime], std=0.0)

    return protocol_file(tmp_path, DEFAULT_PERPS_PATH, edit, "perps.yaml")


def small_env(horizon: int, **overrides) -> DeFiMarketEnv:
    """The leverage config on BTC + ETH with short observation windows (warmup 6)."""
    base = {
        "market.assets": list(ASSETS),
        "env.warmup": 6,
        "env.horizon": horizon,
        "env.observation.return_window": 2,
        "env.observation.vol_window": 2,
        "env.observation.corr_window": 5,
        "env.kill_switch.enabled": False,
        "env.cascades.enabled": False,
    }
    base.update(overrides)
    return make_env(LEVERAGE_CONFIG, **base)


def make_paths(
    close: np.ndarray,
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
    regime: np.ndarray | int = CALM,
    warmup: int = 6,
    depth: float = 1.0,
) -> MarketPaths:
    """One hand-made path: ``close`` ``(L, N)`` USD; low/high default to the close."""
    close = np.asarray(close, dtype=float)
    length = close.shape[0]
    low = close if low is None else np.asarray(low, dtype=float)
    high = close if high is None else np.asarray(high, dtype=float)
    ones = np.ones((1, length))
    return MarketPaths(
        asset_names=ASSETS,
        close=close[None],
        high=high[None],
        low=low[None],
        numeraire_usd=ones.copy(),
        regime=np.broadcast_to(np.asarray(regime, dtype=np.int8), (1, length)).copy(),
        regime_names=("calm", "bull", "crash"),
        depth_multiplier=ones * depth,
        gas_price_gwei=ones * 30.0,
        eth_usd=close[None, :, 1].copy(),
        warmup=warmup,
    )


def flat_path(horizon: int, btc: float = 100.0, eth: float = 2000.0, **kw) -> MarketPaths:
    close = np.tile([btc, eth], (6 + horizon + 1, 1))
    return make_paths(close, **kw)


def action(env: DeFiMarketEnv, weights, leverage: float = -1.0, hedges=None) -> np.ndarray:
    """Box action with spot weights exactly ``weights`` (N+1, cash last), a leverage output and hedges."""
    w = np.asarray(weights, dtype=float)
    spot = np.clip(2.0 * w / w.max() - 1.0, -1.0, 1.0)
    parts = [spot]
    layout: ActionLayout = env.sim.protocols.layout
    if layout.lending:
        parts.append([leverage])
    if layout.perps:
        parts.append(np.zeros(layout.n_assets) if hedges is None else hedges)
    return np.concatenate(parts).astype(np.float32)


def market_pnl(before: dict, after: dict) -> float:
    """Holdings during the move x price change (numeraire incl., debt revalued) + perps x mark change
    + options held through the move x (their settlement value or mid at t + 1 - their mid at t)."""
    pnl = float(np.dot(after["holdings_during_move"], after["prices"] - before["prices"]))
    pnl -= after["debt_units_during_move"] * (after["prices"][-1] - before["prices"][-1])
    pnl += float(
        np.dot(after["perp_size_during_move"], after["mark_prices"] - before["mark_prices"])
    )
    if "option_units_during_move" in after:
        moved = after["option_marks_after"] - after["option_marks_at_decision"]
        pnl += float((after["option_units_during_move"] * moved).sum())
    return pnl


def identity_error(before: dict, after: dict) -> float:
    expected = (
        before["portfolio_value"]
        - sum(after["costs"].values())
        + after["insurance_usd"]
        + after["bad_debt_usd"]
        + market_pnl(before, after)
    )
    return abs(after["portfolio_value"] - expected) / before["portfolio_value"]


# ---------------------------------------------------------------------------------------- mapping
def test_leverage_target_is_clipped_to_the_buffered_ltv_capacity():
    ltv = np.array([0.73, 0.805])  # BTC, ETH (Aave v3 2023-10-31)
    weights = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    lev = leverage_target(np.array([1.0, 1.0, 1.0, 0.0]), weights, ltv, 4.0, 0.9)
    s_eth = 0.9 * 0.805  # all in ETH: S = 0.7245 -> S / (1 - S) = 2.629764...
    s_half_btc = 0.9 * 0.5 * 0.73  # 0.3285 -> 0.489203...
    np.testing.assert_allclose(
        lev,
        [s_eth / (1 - s_eth), s_eth / (1 - s_eth), s_half_btc / (1 - s_half_btc), 2.0],
        rtol=1e-12,
    )
    assert leverage_target(np.array([-1.0]), weights[:1], ltv, 4.0, 0.9)[0] == 0.0
    assert max_feasible_leverage(ltv, 0.9) == pytest.approx(s_eth / (1 - s_eth), rel=1e-12)


def test_action_layout_blocks_and_spot_only_actions():
    layout = ActionLayout(n_assets=2, lending=True, perps=True)
    assert layout.dim == 2 + 1 + 1 + 2
    spot, lev, hedge = layout.split(np.array([[0.1, 0.2, 0.3, 0.4, 0.5, -0.6]]))
    np.testing.assert_array_equal(spot, [[0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(lev, [0.4])
    np.testing.assert_array_equal(hedge, [[0.5, -0.6]])
    spot, lev, hedge = layout.split(np.array([[0.1, 0.2, 0.3]]))  # spot-only: no debt, no hedge
    assert lev[0] == -1.0 and np.all(hedge == 0.0)
    np.testing.assert_array_equal(layout.safe_action(), [-1.0, -1.0, 1.0, -1.0, 0.0, 0.0])


def test_borrow_targets_debt_and_exposure_from_equity():
    """w = all ETH, l = 2 (a = +1, max 2) from 100k cash: debt 200k, ETH worth ~300k, HF ~ 0.83 * 3 / 2."""
    env = small_env(5)
    _, before = env.reset(seed=0, options={"paths": flat_path(5)})
    _, _, _, _, info = env.step(action(env, [0, 1, 0], leverage=1.0))
    assert info["debt_units_during_move"] == pytest.approx(200_000.0, rel=1e-12)  # l * E exactly
    # the 300k buy plus gas exceeds the 100k + 200k cash: the buy is scaled to spend it all
    eth_value = info["holdings_during_move"][1] * 2000.0
    costs = info["costs"]
    assert eth_value + costs["fees"] + costs["slippage"] + costs["gas"] == pytest.approx(
        300_000.0, rel=1e-12
    )
    assert 0.0 <= info["holdings_during_move"][-1] < 1e-6
    eth_value = info["holdings"][1] * 2000.0
    expected_hf = 0.83 * eth_value / info["debt_units"]
    assert info["health_factor"] == pytest.approx(expected_hf, rel=1e-9)
    assert identity_error(before, info) < 1e-9
    assert info["collateral_usd"] == pytest.approx(eth_value, rel=1e-12)
    assert info["costs"]["gas"] > 0.0  # borrow + swap gas


def test_hedges_are_scaled_down_pro_rata_to_fit_the_margin(tmp_path):
    """98 % BTC with a full hedge: margin 2 x 5 % x 98k > cash, so the perp is scaled to fit exactly."""
    env = small_env(
        3, **{"env.lending.enabled": False, "env.perps.params_path": deterministic_perps(tmp_path)}
    )
    env.reset(seed=0, options={"paths": flat_path(3)})
    _, _, _, _, info = env.step(action(env, [0.98, 0.0, 0.02], hedges=[1.0, 0.0]))
    size, cash = info["perp_size"][0], info["holdings"][-1]
    assert -980.0 < size < 0.0 and info["perp_size"][1] == 0.0
    fee_rate, mark = 0.0005, 100.0
    # margin_buffer x IMF x |s| x p == room left after the worst-case fee of the unscaled order
    room = cash + fee_rate * abs(size) * mark - fee_rate * 980.0 * mark
    assert 2.0 * 0.05 * abs(size) * 100.0 == pytest.approx(room, rel=1e-9)


# ---------------------------------------------------------------------------------------- carry
@pytest.mark.parametrize("regime", [CALM, CRASH])
def test_interest_accrual_matches_the_kinked_rate_model(tmp_path, regime):
    env = small_env(3, **{"env.lending.params_path": deterministic_lending(tmp_path)})
    _, before = env.reset(seed=0, options={"paths": flat_path(3, regime=regime)})
    _, _, _, _, info = env.step(action(env, [0.5, 0.5, 0.0], leverage=0.0))
    # hand: USDC U = 0.60 (calm) or 0.92 (crash); Uopt 0.9, s1 3.5 %, s2 60 %
    usdc = 0.035 * 0.60 / 0.90 if regime == CALM else 0.035 + 0.60 * (0.92 - 0.90) / 0.10
    # supply rates: r_borrow(U) * U * (1 - RF) for WBTC (Uopt .45, s1 4 %) and WETH (Uopt .8, s1 2.8 %)
    u_btc, u_eth = (0.15, 0.45) if regime == CALM else (0.35, 0.75)
    supply = np.array([0.04 * u_btc / 0.45 * u_btc * 0.80, 0.028 * u_eth / 0.80 * u_eth * 0.85])
    debt0 = info["debt_units_during_move"]
    units0 = info["holdings_during_move"][:2]
    assert debt0 == pytest.approx(100_000.0, rel=1e-12)  # l = 1 of E = 100k
    assert info["debt_units"] == pytest.approx(debt0 * math.exp(usdc / YEAR), rel=1e-13)
    np.testing.assert_allclose(info["holdings"][:2], units0 * (1.0 + supply / YEAR), rtol=1e-13)
    paid = debt0 * (math.exp(usdc / YEAR) - 1.0)
    earned = float(np.dot(units0 * supply / YEAR, [100.0, 2000.0]))
    assert info["interest_usd"] == pytest.approx(paid - earned, rel=1e-9)
    assert info["costs"]["interest"] == info["interest_usd"]
    assert identity_error(before, info) < 1e-9


@pytest.mark.parametrize("regime", [CALM, CRASH])
@pytest.mark.parametrize("cash_earns", [True, False])
def test_idle_cash_earns_the_numeraire_supply_rate(tmp_path, regime, cash_earns):
    """Cash is supplied USDC: it grows at r_borrow(U) x U x (1 - RF) of the USDC reserve, so
    supplying the risky assets is not paid more than holding the numeraire is."""
    env = small_env(
        3,
        **{
            "env.lending.params_path": deterministic_lending(tmp_path),
            "env.lending.cash_earns_supply_rate": cash_earns,
        },
    )
    _, before = env.reset(seed=0, options={"paths": flat_path(3, regime=regime)})
    _, _, _, _, info = env.step(action(env, [0.0, 0.0, 1.0]))  # all cash, no debt: no trade
    u = 0.60 if regime == CALM else 0.92  # USDC utilization; Uopt 0.9, s1 3.5 %, s2 60 %, RF 10 %
    borrow = 0.035 * u / 0.90 if regime == CALM else 0.035 + 0.60 * (u - 0.90) / 0.10
    supply = borrow * u * (1.0 - 0.10) if cash_earns else 0.0
    cash0 = info["holdings_during_move"][-1]
    assert cash0 == pytest.approx(100_000.0, rel=1e-12)
    assert info["holdings"][-1] == pytest.approx(cash0 * (1.0 + supply / YEAR), rel=1e-13)
    assert info["interest_usd"] == pytest.approx(-cash0 * supply / YEAR, rel=1e-9, abs=1e-12)
    assert identity_error(before, info) < 1e-9


@pytest.mark.parametrize(
    "regime, hedge, expected_funding_usd",
    [
        (CALM, 1.0, -15.0),  # basis +1 bp/8 h, 3 periods: rate +3e-4; a 500-unit short receives
        (CALM, -1.0, 15.0),  # the long pays
        (CRASH, 1.0, 45.0),  # basis -3 bp: rate -9e-4; the short pays
    ],
)
def test_funding_sign_and_size(tmp_path, regime, hedge, expected_funding_usd):
    perps = deterministic_perps(tmp_path, {"calm": 0.0001, "bull": 0.0003, "crash": -0.0003})
    env = small_env(3, **{"env.lending.enabled": False, "env.perps.params_path": perps})
    env.reset(seed=0, options={"paths": flat_path(3, regime=regime)})
    act = action(env, [0.5, 0.0, 0.5], hedges=[hedge, 0.0])
    _, _, _, _, first = env.step(act)
    assert first["perp_size"][0] == pytest.approx(-hedge * 500.0, rel=1e-12)  # -h x 50k / $100
    basis = 0.0001 if regime == CALM else -0.0003
    np.testing.assert_allclose(
        first["mark_prices"], [100.0 * (1 + basis), 2000.0 * (1 + basis)], rtol=1e-12
    )
    assert first["funding_usd"] == pytest.approx(expected_funding_usd, rel=1e-9)
    _, _, _, _, second = env.step(act)  # holding: no trade, the same funding again
    assert second["costs"]["fees"] == 0.0
    assert second["funding_usd"] == pytest.approx(expected_funding_usd, rel=1e-9)
    assert second["costs"]["funding"] == second["funding_usd"]
    assert identity_error(first, second) < 1e-9


def test_carry_over_a_step_uses_the_rates_quoted_at_its_start(tmp_path):
    """Calm at t = 0, crash from t = 1 (noiseless regime AR(1)s): step 0 pays the calm funding and
    interest; at t = 1 basis and utilization move by ``m + phi (x - m)`` toward the crash means."""
    perps = deterministic_perps(tmp_path, {"calm": 0.0001, "bull": 0.0003, "crash": -0.0003})
    env = small_env(
        3,
        **{
            "env.perps.params_path": perps,
            "env.lending.params_path": deterministic_lending(tmp_path),
        },
    )
    regime = np.full(6 + 3 + 1, CRASH, dtype=np.int8)
    regime[: 6 + 1] = CALM
    _, before = env.reset(seed=0, options={"paths": flat_path(3, regime=regime)})
    act = action(env, [0.5, 0.0, 0.5], leverage=0.0, hedges=[1.0, 0.0])
    _, _, _, _, first = env.step(act)
    _, _, _, _, second = env.step(act)
    basis1 = -0.0003 + 0.7 * (0.0001 + 0.0003)  # persistence 0.7 (perps.yaml)
    util1 = 0.92 + 0.9 * (0.60 - 0.92)  # USDC, persistence 0.9
    size = first["perp_size"][0]
    assert second["perp_size_during_move"][0] == size
    assert first["funding_usd"] == pytest.approx(3 * 0.0001 * size * 100.0, rel=1e-9)
    assert second["funding_usd"] == pytest.approx(3 * basis1 * size * 100.0, rel=1e-9)
    for info, rate in ((first, 0.035 * 0.60 / 0.90), (second, 0.035 * util1 / 0.90)):
        debt = info["debt_units_during_move"]
        assert info["debt_units"] == pytest.approx(debt * math.exp(rate / YEAR), rel=1e-13)
    np.testing.assert_allclose(
        first["mark_prices"], [100 * (1 + basis1), 2000 * (1 + basis1)], rtol=1e-12
    )
    basis2 = -0.0003 + 0.7 * (basis1 + 0.0003)  # the mark at t = 2, after the second step
    np.testing.assert_allclose(
        second["mark_prices"], [100 * (1 + basis2), 2000 * (1 + basis2)], rtol=1e-12
    )
    assert identity_error(before, first) < 1e-9 and identity_error(first, second) < 1e-9


# ---------------------------------------------------------------------------------------- perps
@pytest.mark.parametrize("wick", [1.07, 1.08, 1.15])
def test_perp_maintenance_liquidation_at_the_adverse_price(tmp_path, wick):
    """A 900-unit BTC short with ~10k margin; the step's HIGH spikes to 100 x wick, the close stays 100."""
    env = small_env(
        4, **{"env.lending.enabled": False, "env.perps.params_path": deterministic_perps(tmp_path)}
    )
    horizon = 4
    close = np.tile([100.0, 2000.0], (6 + horizon + 1, 1))
    high = close.copy()
    high[6 + 2, 0] = 100.0 * wick  # during the move of step 1 (t = 1 -> 2)
    env.reset(seed=0, options={"paths": make_paths(close, high=high)})
    act = action(env, [0.9, 0.0, 0.1], hedges=[1.0, 0.0])
    _, _, _, _, first = env.step(act)
    size = first["perp_size"][0]
    assert size == pytest.approx(-900.0, rel=1e-6)  # -h x 0.9 x 100k / $100 (float32 action)
    _, _, _, _, info = env.step(act)
    assert info["perp_size_during_move"][0] == size  # held: no perp trade in step 1
    cash, spike = info["holdings_during_move"][-1], 100.0 * wick
    equity = cash + size * (spike - 100.0)  # zero basis and funding
    maintenance = 0.03 * abs(size) * spike
    if equity >= maintenance:
        assert wick == 1.07
        assert info["liquidations"] == 0 and info["perp_size"][0] == size
        assert info["costs"]["liquidation"] == 0.0
        return
    fee = min(0.015 * abs(size) * spike, max(equity, 0.0))
    assert info["liquidations"] == 1
    assert info["perp_size"][0] == 0.0
    assert info["holdings"][-1] == pytest.approx(max(equity - fee, 0.0), rel=1e-9, abs=1e-9)
    assert info["insurance_usd"] == pytest.approx(max(-equity, 0.0), rel=1e-9, abs=1e-9)
    # cost vs the close: closed at the spike instead of 100, plus the fee
    assert info["costs"]["liquidation"] == pytest.approx(-size * (spike - 100.0) + fee, rel=1e-9)
    assert (wick == 1.15) == (info["insurance_usd"] > 0.0)
    assert identity_error(first, info) < 1e-9
    assert np.all(info["holdings"] >= 0.0)


# ---------------------------------------------------------------------------------------- cascades
def _crash_path(low_ratio: float) -> MarketPaths:
    """ETH 2000 flat, then a -19 % close with an intra-step low of 2000 x low_ratio; BTC flat."""
    horizon = 3
    close = np.tile([100.0, 2000.0], (6 + horizon + 1, 1))
    close[6 + 1 :, 1] = 1620.0
    low = close.copy()
    low[6 + 1, 1] = min(2000.0 * low_ratio, 1620.0)
    return make_paths(close, low=low, regime=CALM)


def large_population_lending(tmp_path: Path) -> str:
    """Noiseless, interest-free lending snapshot with a population far larger than the calibrated
    one: collateral 0.5 x depth, half its sales into the pools (the pool sales of the uncalibrated
    0.25 / all-sales population, 50x the calibrated 0.05 x 0.10), so that one -19 % step visibly
    deepens the low. A mechanism test, not a calibrated size."""
    data = yaml.safe_load(Path(deterministic_lending(tmp_path, zero_rates=True)).read_text())
    data["population"].update(collateral_share_of_depth=0.5, pool_share_of_sales=0.5)
    path = tmp_path / "large_population.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("cascades", [False, True])
def test_cascade_sales_deepen_the_low_and_liquidate_a_borderline_position(tmp_path, cascades):
    lending = large_population_lending(tmp_path)
    env = small_env(3, **{"env.cascades.enabled": cascades, "env.lending.params_path": lending})
    paths = _crash_path(0.81)
    _, before = env.reset(seed=0, options={"paths": paths})
    _, _, _, _, info = env.step(action(env, [0, 1, 0], leverage=1.0))
    units, debt = info["holdings_during_move"][1], info["debt_units_during_move"]
    hf_at_raw_low = units * 1620.0 * 0.83 / debt
    assert 1.0 < hf_at_raw_low < 1.02  # borderline: the raw wick alone does not liquidate
    sim = env.sim
    if not cascades:
        assert info["liquidations"] == 0
        np.testing.assert_array_equal(info["low_prices_effective"], [100.0, 1620.0])
        return
    # the population's forced sales are those of the protocol function on this path (no feedback);
    # the env sells pool_share_of_sales (0.5 here) of them into the agent's pools
    reserves = sim.protocols.setup.reserves
    population = load_lending_params(lending).population
    assert population.pool_share_of_sales == 0.5
    forced = population_liquidations(
        paths.low[:, 7:],
        paths.close[:, 6],
        np.array([150e6, 250e6]),
        reserves.liq_threshold,
        reserves.liq_bonus,
        reserves.liq_protocol_fee,
        population,
        paths.close[:, 7:],
    )[0, 0]
    expected_sales = population.pool_share_of_sales * forced
    np.testing.assert_allclose(info["cascade_sale_units"], expected_sales, rtol=1e-14)
    assert expected_sales[1] > 0.0 and expected_sales[0] == 0.0
    low_eff = info["low_prices_effective"][1]
    assert low_eff < 1620.0 * 0.99  # sold into the agent's ETH pools: the low is deeper
    assert info["liquidations"] == 1
    # arbitrage closed the dislocation before the next decision: every tier is back where it was
    # before the forced sales, inside its fee band (the forced sellers bore their own impact)
    tier_price = sim.pools.reserve_num[0, 1] / sim.pools.reserve_asset[0, 1]
    fees = np.array([t.fee for t in env.config.env.amm.tiers])
    assert np.all(tier_price >= 1620.0 * (1.0 - fees) * (1 - 1e-12))
    assert np.all(tier_price <= 1620.0 / (1.0 - fees) * (1 + 1e-12))
    assert info["liquidation_penalty_usd"] > 0.0
    assert identity_error(before, info) < 1e-9


def test_trading_right_after_a_cascade_costs_what_it_costs_without_one(tmp_path):
    """No free lunch: arbitrage restores the pools the forced sales moved before the next decision,
    so a buy (or a sell) right after a cascade pays exactly the fees and slippage it pays without
    the cascade (and fees + slippage >= 0 against the market price)."""
    lending = deterministic_lending(tmp_path, zero_rates=True)
    for target in ([0, 1, 0], [0, 0, 1]):  # buy more ETH / sell the ETH after the crash
        costs = {}
        for cascades in (False, True):
            env = small_env(
                3, **{"env.cascades.enabled": cascades, "env.lending.params_path": lending}
            )
            env.reset(seed=0, options={"paths": _crash_path(0.80)})
            _, _, _, _, info = env.step(action(env, [0, 0.5, 0.5]))
            assert (info["cascade_sale_units"][1] > 0.0) == cascades
            _, _, _, _, info = env.step(action(env, target))
            costs[cascades] = info["costs"]
        assert costs[True]["fees"] > 0.0
        assert costs[True]["fees"] + costs[True]["slippage"] >= 0.0
        for kind in ("fees", "slippage", "gas"):
            assert costs[True][kind] == costs[False][kind]


# ---------------------------------------------------------------------------------------- identity
def _random_action(rng: np.random.Generator, dim: int) -> np.ndarray:
    """Uniform actions mixed with extremes (one-hot, max leverage, full hedges, all -1)."""
    u = rng.uniform()
    if u < 0.5:
        return rng.uniform(-1, 1, dim)
    if u < 0.75:
        a = -np.ones(dim)
        a[rng.integers(6)] = 1.0
        a[6] = rng.choice([-1.0, 1.0])
        a[7:] = rng.choice([-1.0, 0.0, 1.0], size=dim - 7)
        return a
    if u < 0.85:
        return -np.ones(dim)
    if u < 0.95:
        return np.ones(dim)
    return np.zeros(dim)


def test_accounting_identity_with_all_protocols_over_10000_random_steps():
    """V(t+1) = V(t) - costs (incl. interest, funding, liquidation, option fees and spreads) +
    insurance + bad debt + market PnL (incl. the options' marks and settlements), to 1e-9, with
    lending, perps, cascades, the options venue and the kill-switch all on."""
    # the kill-switch is off in options.yaml: turn it on, its forced de-leveraging is counted below
    env = make_env(
        OPTIONS_CONFIG,
        seed=7,
        **{
            "env.horizon": 365,
            "env.kill_switch.enabled": True,
            "env.kill_switch.min_health_factor": 1.0,
        },
    )
    rng = np.random.default_rng(1)
    _, info = env.reset(seed=7)
    worst, worst_liq, steps = 0.0, 0.0, 0
    seen = {"liquidations": 0, "interest": 0.0, "funding": 0.0, "insurance": 0.0, "kill": 0}
    seen |= {"premium_paid": 0.0, "premium_received": 0.0, "settled": 0, "option_fees": 0.0}
    while steps < 10_000:
        a = _random_action(rng, env.action_space.shape[0]).astype(np.float32)
        _, _, terminated, truncated, new = env.step(a)
        err = identity_error(info, new)
        worst = max(worst, err)
        if new["liquidations"]:
            worst_liq = max(worst_liq, err)
        assert np.all(new["holdings"] >= -1e-9) and new["holdings"][-1] >= 0.0
        assert new["debt_units"] >= 0.0
        seen["liquidations"] += new["liquidations"]
        seen["interest"] += abs(new["costs"]["interest"])
        seen["funding"] += abs(new["costs"]["funding"])
        seen["insurance"] += new["insurance_usd"]
        seen["kill"] += new["kill_switch"]
        seen["premium_paid"] += max(new["option_premium_usd"], 0.0)
        seen["premium_received"] += max(-new["option_premium_usd"], 0.0)
        seen["settled"] += new["option_settlement_usd"] != 0.0
        seen["option_fees"] += new["option_fees_usd"] + new["option_settlement_fee_usd"]
        info = new
        steps += 1
        if terminated or truncated:
            _, info = env.reset()
    assert worst < 1e-9 and worst_liq < 1e-9
    assert (
        seen["liquidations"] > 0
        and seen["interest"] > 0
        and seen["funding"] > 0
        and seen["kill"] > 0
    )
    assert seen["premium_paid"] > 0 and seen["premium_received"] > 0
    assert seen["settled"] > 0 and seen["option_fees"] > 0


# ---------------------------------------------------------------------------------------- contracts
def test_batched_env_equals_single_envs_with_all_protocols():
    n_envs, seed, steps, short = 3, 5, 80, {"env.horizon": 40}
    venv = make_vec_env(LEVERAGE_CONFIG, n_envs=n_envs, seed=seed, **short)
    singles = [make_env(LEVERAGE_CONFIG, **short) for _ in range(n_envs)]
    obs_single = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(singles)])
    np.testing.assert_allclose(venv.reset(), obs_single, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        actions = np.stack([_random_action(rng, venv.action_space.shape[0]) for _ in range(n_envs)])
        obs_batch, rewards, dones, infos = venv.step(actions.astype(np.float32))
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(actions[i].astype(np.float32))
            assert dones[i] == (term or trunc)
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-7)
            if not (term or trunc):
                batch_info = venv.env_info(i)
                for key in (
                    "debt_usd",
                    "health_factor",
                    "funding_usd",
                    "interest_usd",
                    "perp_notional_usd",
                ):
                    assert batch_info[key] == pytest.approx(info[key], rel=1e-12, abs=1e-9)
            else:
                o, _ = env.reset()
            np.testing.assert_allclose(obs_batch[i], o, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("overrides", [{}, {"env.lending.enabled": False}])
def test_gymnasium_and_sb3_checkers_pass_with_protocols(overrides):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make_env(LEVERAGE_CONFIG, **{"env.horizon": 20, **overrides})
    check_env(env, skip_render_check=True)
    sb3_check_env(make_env(LEVERAGE_CONFIG, **{"env.horizon": 20, **overrides}), warn=True)


def test_observation_block_layout():
    env = small_env(3)
    obs, _ = env.reset(seed=0, options={"paths": flat_path(3)})
    spot_dim = observation_size(2, env.unwrapped.config.env.observation)
    assert obs.shape == (spot_dim + 3 + 2 * 2,)
    assert env.unwrapped.sim.protocols.observation_names(ASSETS) == [
        "log_health_factor", "leverage", "borrow_rate_x10", "perp_exposure_BTC", "perp_exposure_ETH",
        "funding_rate_ann_x10_BTC", "funding_rate_ann_x10_ETH",
    ]  # fmt: skip
    assert obs[spot_dim] == pytest.approx(math.log(10.0))  # no debt: HF = inf reads as log(10)
    assert obs[spot_dim + 1] == 0.0  # leverage
    obs, *_, info = env.step(action(env, [0, 1, 0], leverage=1.0, hedges=[0.0, 0.5]))
    assert obs[spot_dim] == pytest.approx(math.log(info["health_factor"]), rel=1e-6)
    assert obs[spot_dim + 1] == pytest.approx(info["debt_usd"] / info["portfolio_value"], rel=1e-6)
    np.testing.assert_allclose(
        obs[spot_dim + 3 : spot_dim + 5],
        info["perp_size"] * info["prices"][:2] / info["portfolio_value"],
        rtol=1e-6,
    )


def test_default_config_stays_spot_only():
    env = make_env(seed=0, **{"env.horizon": 5})
    assert env.unwrapped.sim.protocols is None
    assert env.action_space.shape == (6,)
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert "health_factor" not in info and info["costs"]["interest"] == 0.0


# ---------------------------------------------------------------------------------------- errors
def test_max_leverage_above_what_the_ltvs_allow_names_both():
    with pytest.raises(
        ConfigError, match=r"max_leverage=3.0 exceeds the 2.6298.*ltv_buffer=0.9.*0.805"
    ):
        make_env(LEVERAGE_CONFIG, **{"env.lending.max_leverage": 3.0})


def test_liquidation_threshold_not_above_ltv_is_refused(tmp_path):
    bad = protocol_file(
        tmp_path,
        DEFAULT_LENDING_PATH,
        lambda d: d["assets"]["WETH"].update(liq_threshold=0.80),
        "bad.yaml",
    )
    with pytest.raises(ValueError, match=r"liq_threshold=0.8 must be > ltv=0.805"):
        make_env(LEVERAGE_CONFIG, **{"env.lending.params_path": bad})


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["assets"]["WETH"]["rate_model"].update(slope1=-0.01), "slope1"),
        (lambda d: d["assets"]["USDC"]["rate_model"].update(base=-0.02), "base"),
    ],
)
def test_negative_rates_are_refused(tmp_path, edit, match):
    bad = protocol_file(tmp_path, DEFAULT_LENDING_PATH, edit, "bad.yaml")
    with pytest.raises(ValueError, match=match):
        make_env(LEVERAGE_CONFIG, **{"env.lending.params_path": bad})


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"env.lending.ltv_buffer": 1.5}, "env.lending.ltv_buffer"),
        ({"env.lending.max_leverage": -1.0}, "env.lending.max_leverage"),
        ({"env.perps.margin_buffer": 0.5}, "env.perps.margin_buffer"),
        ({"env.lending.params_path": "no/such/file.yaml"}, "not found"),
    ],
)
def test_bad_leverage_config_values_get_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_env(LEVERAGE_CONFIG, **overrides)


def test_cascade_sales_along_a_path_are_population_liquidations_exactly():
    """The online population (stepped with the env, liquidation calls batched by row) reproduces the
    protocol's ``population_liquidations`` along the env's own path (to 1e-14: the compiled step
    sums the buckets in another order than numpy)."""
    horizon = 120
    venv = make_vec_env(LEVERAGE_CONFIG, n_envs=3, seed=3, **{"env.horizon": horizon})
    venv.reset()
    sim = venv.sim
    w = sim.warmup
    reserves = sim.protocols.setup.reserves
    depth = np.array([sim.config.env.amm.pair_depth_usd(a) for a in sim.asset_names])
    population = load_lending_params().population
    # the env's cascade_sale_units are what enters its pools: pool_share_of_sales (0.10 shipped)
    # of all the liquidators' forced sales, which population_liquidations returns
    expected = population.pool_share_of_sales * population_liquidations(
        sim.low[:, w + 1 :], sim.close[:, w], depth * sim.depth[:, w, None], reserves.liq_threshold,
        reserves.liq_bonus, reserves.liq_protocol_fee, population, sim.close[:, w + 1 :],
    )  # fmt: skip
    got = np.zeros_like(expected)
    for t in range(horizon - 1):
        venv.step(np.zeros((3, venv.action_space.shape[0]), np.float32))
        got[:, t] = np.stack([venv.env_info(i)["cascade_sale_units"] for i in range(3)])
    np.testing.assert_allclose(got[:, : horizon - 1], expected[:, : horizon - 1], rtol=1e-14)
    assert expected[:, : horizon - 1].sum() > 0.0  # the path does liquidate borrowers


def test_snapshot_restore_resumes_the_leveraged_state_exactly():
    env = make_env(LEVERAGE_CONFIG, seed=2, **{"env.horizon": 80})
    sim = env.unwrapped.sim
    rng = np.random.default_rng(4)
    actions = [_random_action(rng, env.action_space.shape[0]).astype(np.float32) for _ in range(50)]
    for a in actions[:30]:
        env.step(a)
    state = sim.snapshot(0)
    first = [env.step(a)[4]["portfolio_value"] for a in actions[30:]]
    sim.restore(0, state)
    second = [env.step(a)[4]["portfolio_value"] for a in actions[30:]]
    assert first == second
    assert state["protocols"]["debt"] >= 0.0 and len(state["protocols"]["perp_size"]) == 5


def test_fast_regime_path_matches_the_step_by_step_protocol_draws():
    """The filter form of the regime AR(1) equals the protocol's draw loop, clipped rows included."""
    from defialloc.envs.leverage_paths import fast_regime_path, path_noise, regime_path
    from defialloc.envs.protocols.lending import regime_utilization
    from defialloc.envs.protocols.params import load_perps_params
    from defialloc.envs.protocols.perps import regime_basis

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(4, 200))
    names = ("calm", "bull", "crash")
    util = load_lending_params().utilization_process(names, ["USDC", "WETH", "WBTC"])
    noise = path_noise(np.arange(4), 1, 200, 3)
    np.testing.assert_allclose(
        fast_regime_path(util, codes, noise, regime_utilization),
        regime_path(util, codes, noise, regime_utilization),
        rtol=0,
        atol=1e-14,
    )
    basis = load_perps_params().basis_by_regime.process(names, 2)
    wild = path_noise(np.arange(4), 2, 200, 2) * 60.0  # hits the +-2 % clip
    expected = regime_path(basis, codes, wild, regime_basis)
    assert np.any(np.abs(expected) == 0.02)
    np.testing.assert_allclose(
        fast_regime_path(basis, codes, wild, regime_basis), expected, atol=1e-15
    )
