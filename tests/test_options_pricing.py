"""Black-76 prices and Greeks against QuantLib and finite differences; parity; the venue's surface.

QuantLib (the ``dev`` extra; imported without a skip, so the check always runs) is the independent
reference: ``blackFormula`` for prices and ``BlackCalculator`` for the forward delta and gamma,
vega per 1.00 of vol and theta per year (with ``spot = forward`` its theta holds the forward, the
Black-76 convention used here).
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
import QuantLib as ql

from defialloc.envs.config import load_config
from defialloc.envs.option_quotes import VenueSurface
from defialloc.envs.protocols.options import (
    VarianceForecast,
    black76_greeks,
    black76_price,
    intrinsic_value,
    option_fee,
    surface_vol,
)
from defialloc.envs.protocols.options_params import load_options_params


def _grid(n: int = 400, seed: int = 0):
    """Forwards, strikes (moneyness 0.5-2), maturities (1 day - 2 years), vols 5-250 %, rates -2..10 %."""
    rng = np.random.default_rng(seed)
    forward = rng.uniform(1.0, 60_000.0, n)
    strike = forward * np.exp(rng.uniform(-0.7, 0.7, n))
    time_years = rng.uniform(1.0 / 365.0, 2.0, n)
    vol = rng.uniform(0.05, 2.5, n)
    rate = rng.uniform(-0.02, 0.10, n)
    is_call = rng.uniform(size=n) < 0.5
    return forward, strike, time_years, vol, rate, is_call


def _quantlib(f, k, t, v, r, call):
    kind = ql.Option.Call if call else ql.Option.Put
    std, df = v * np.sqrt(t), np.exp(-r * t)
    calc = ql.BlackCalculator(ql.PlainVanillaPayoff(kind, k), f, std, df)
    return (
        ql.blackFormula(kind, k, f, std, df),
        calc.deltaForward(),
        calc.gammaForward(),
        calc.vega(t),
        calc.theta(f, t),
    )


def test_prices_and_greeks_match_quantlib_to_1e8_relative():
    """Every option worth at least 1e-6 of its forward (QuantLib's normal CDF loses relative
    accuracy far in the tails: e.g. 1e-6 on a price of 1e-10 F, where ours matches 50-digit
    arithmetic to 1e-14, see the next test)."""
    f, k, t, v, r, call = _grid()
    keep = black76_price(f, k, t, v, r, call) >= 1e-6 * f
    assert keep.mean() > 0.8
    f, k, t, v, r, call = (x[keep] for x in (f, k, t, v, r, call))
    price = black76_price(f, k, t, v, r, call)
    greeks = black76_greeks(f, k, t, v, r, call)
    ref = np.array([_quantlib(*x) for x in zip(f, k, t, v, r, call, strict=True)])
    ours = np.stack([price, greeks.delta, greeks.gamma, greeks.vega, greeks.theta], axis=1)
    # relative to each quantity's own scale: the option's price for the value, theta and vega
    # (a near-zero Greek of a deep option has no meaningful relative error of its own)
    scale = np.stack([price, np.ones_like(price), greeks.gamma, price, price], axis=1)
    scale = np.maximum(np.abs(scale), 1e-300)
    assert np.all(np.abs(ours - ref) <= 1e-8 * np.maximum(np.abs(ref), scale))
    assert np.all(np.abs(price - ref[:, 0]) <= 1e-8 * np.abs(ref[:, 0]) + 1e-12)


def test_deep_out_of_the_money_prices_match_50_digit_arithmetic():
    mp.mp.dps = 50
    f, k, t, v, r, call = _grid(3000, seed=3)
    price = black76_price(f, k, t, v, r, call)
    checked = 0
    for i in np.flatnonzero(price < 1e-6 * f)[:40]:
        fi, ki, ti, vi, ri = (mp.mpf(float(x[i])) for x in (f, k, t, v, r))
        s = vi * mp.sqrt(ti)
        d1 = (mp.log(fi / ki) + s * s / 2) / s
        d2 = d1 - s
        sign = 1 if call[i] else -1
        exact = mp.e ** (-ri * ti) * sign * (fi * mp.ncdf(sign * d1) - ki * mp.ncdf(sign * d2))
        if exact > mp.mpf(1e-250):
            assert abs(price[i] - float(exact)) <= 1e-9 * float(exact)
            checked += 1
    assert checked >= 5


def test_greeks_match_central_finite_differences():
    f, k, t, v, r, call = _grid(200, seed=1)
    g = black76_greeks(f, k, t, v, r, call)

    def price(**kw):
        args = {"forward": f, "strike": k, "time_years": t, "vol": v, "rate": r, "is_call": call}
        args.update(kw)
        return black76_price(**args)

    hf, hv, ht = 1e-4 * f, 1e-5, 1e-6
    delta = (price(forward=f + hf) - price(forward=f - hf)) / (2 * hf)
    gamma = (price(forward=f + hf) - 2 * price() + price(forward=f - hf)) / hf**2
    vega = (price(vol=v + hv) - price(vol=v - hv)) / (2 * hv)
    # theta: calendar time passes (T falls) with the forward held
    theta = -(price(time_years=t + ht) - price(time_years=t - ht)) / (2 * ht)
    # tolerances: the differences' truncation (relative) and rounding (eps x price / h^k) errors
    for ours, fd, rel, rounding in (
        (g.delta, delta, 1e-6, 1e-10),
        (g.gamma, gamma, 1e-3, 1e-6 / f),
        (g.vega, vega, 1e-6, 1e-9 * f),
        (g.theta, theta, 1e-5, 1e-8 * f),
    ):
        assert np.all(np.abs(ours - fd) <= rel * np.abs(fd) + rounding)


def test_put_call_parity_holds_for_prices_and_greeks():
    f, k, t, v, r, _ = _grid(300, seed=2)
    df = np.exp(-r * t)
    call = black76_price(f, k, t, v, r, True)
    put = black76_price(f, k, t, v, r, False)
    assert np.all(np.abs((call - put) - df * (f - k)) <= 1e-9 * f)
    gc, gp = black76_greeks(f, k, t, v, r, True), black76_greeks(f, k, t, v, r, False)
    np.testing.assert_allclose(gc.delta - gp.delta, df, atol=1e-12)
    np.testing.assert_allclose(gc.gamma, gp.gamma, rtol=1e-12)
    np.testing.assert_allclose(gc.vega, gp.vega, rtol=1e-12)
    # d/dt of DF (F - K) per year of calendar time: r DF (F - K)
    assert np.all(np.abs((gc.theta - gp.theta) - r * df * (f - k)) <= 1e-8 * f)


def test_expiry_and_zero_vol_are_the_discounted_intrinsic_value():
    f = np.array([100.0, 100.0, 100.0, 100.0])
    k = np.array([90.0, 110.0, 90.0, 110.0])
    call = np.array([True, True, False, False])
    for t, v in ((0.0, 0.5), (0.5, 0.0)):
        df = np.exp(-0.03 * t)
        price = black76_price(f, k, t, v, 0.03, call)
        np.testing.assert_allclose(price, df * np.array([10.0, 0.0, 0.0, 10.0]))
        g = black76_greeks(f, k, t, v, 0.03, call)
        np.testing.assert_allclose(g.delta, df * np.array([1.0, 0.0, 0.0, -1.0]))
        assert not g.gamma.any() and not g.vega.any() and not g.theta.any()
    np.testing.assert_array_equal(intrinsic_value(f, k, call), [10.0, 0.0, 0.0, 10.0])


@pytest.mark.parametrize(
    "bad, name",
    [
        ({"forward": -1.0}, "forward"),
        ({"strike": 0.0}, "strike"),
        ({"vol": np.nan}, "vol"),
        ({"time_years": -0.1}, "time_years"),
    ],  # fmt: skip
)
def test_bad_inputs_name_the_argument(bad, name):
    args = {"forward": 100.0, "strike": 100.0, "time_years": 0.1, "vol": 0.5, "rate": 0.0}
    args.update(bad)
    with pytest.raises(ValueError, match=name):
        black76_price(is_call=True, **args)


def test_fee_is_a_share_of_the_index_capped_at_a_share_of_the_price():
    # Deribit: 0.03 % of the underlying, at most 12.5 % of the option's price
    fee = option_fee(np.array([2.0, 2.0]), 50_000.0, np.array([1_000.0, 40.0]), 0.0003, 0.125)
    np.testing.assert_allclose(fee, [2 * 15.0, 2 * 5.0])


def test_surface_is_flat_at_the_money_and_skewed_by_the_regime():
    atm, f, t = 0.8, 100.0, 30 / 365
    strikes = np.array([80.0, 100.0, 125.0])
    flat = surface_vol(atm, f, strikes, t, 0.0, 0.0)
    np.testing.assert_allclose(flat, atm)
    x = np.log(strikes / f) / (atm * np.sqrt(t))
    vol = surface_vol(atm, f, strikes, t, -0.1, 0.05)
    np.testing.assert_allclose(vol, atm * np.clip(1 - 0.1 * x + 0.05 * x * x, 0.5, 3.0))
    assert vol[0] > vol[1] and vol[1] == pytest.approx(atm)  # puts dearer under a negative skew


def test_variance_forecast_is_the_sum_of_hand_computed_regime_and_garch_terms():
    """E[sum_j r^2] over tau steps from the Markov chain and the GARCH mean reversion, by brute
    force (matrix powers and an explicit sum), against the tabulated forecast."""
    p = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.2, 0.1, 0.7]])
    vm = np.array([0.9, 1.05, 1.3])
    h_bar, phi = np.array([4e-4, 9e-4]), np.array([0.95, 0.9])
    jump_var = np.array([[0.0, 0.0], [1e-5, 2e-5], [5e-5, 1e-4]])
    table = VarianceForecast.build(
        h_bar=h_bar, persistence=phi, transition=p, vol_multiplier=vm, jump_var=jump_var,
        max_steps=40, step_days=1.0,
    )  # fmt: skip
    h_next = np.array([[1e-3, 3e-4]])
    for regime, tau in ((0, 1), (2, 7), (1, 30)):
        total = np.zeros(2)
        for j in range(1, tau + 1):
            law = np.linalg.matrix_power(p, j)[regime]
            total += law @ vm**2 * (h_bar + phi ** (j - 1) * (h_next[0] - h_bar)) + law @ jump_var
        expected = np.sqrt(total / tau * 365.0)
        got = table.annual_vol(np.array([regime]), h_next, np.full((1, 2, 1), tau))[0, :, 0]
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_quotes_straddle_the_mid_widen_in_crashes_and_admit_no_parity_arbitrage():
    """At the venue's quotes (with fees), a conversion or a reversal never locks in a profit:
    C_bid - P_ask - fees <= DF (F - K) <= C_ask - P_bid + fees, for every listed contract."""
    cfg = load_config("configs/options.yaml")
    params = load_options_params()
    surface = VenueSurface(cfg, params)
    table = surface.table_for(True)
    n = len(cfg.market.assets)
    index = np.full((3, n), 100.0)
    h = np.tile(surface.garch.h_bar, (3, 1))  # the same variance: only the regime differs
    strikes = np.array(params.strikes)
    rows = []
    for tenor in params.tenor_steps(1.0):
        k = np.broadcast_to(100.0 * strikes, (3, n, strikes.size))
        steps = np.full(k.shape, tenor)
        calls = surface.quote(table, np.array([0, 1, 2]), h, index, k, steps, True)
        puts = surface.quote(table, np.array([0, 1, 2]), h, index, k, steps, False)
        assert np.all(calls.bid <= calls.mid) and np.all(calls.mid <= calls.ask)
        assert np.all(puts.bid >= 0.0)
        fee = params.trading_fee_of_underlying * 100.0 * 2
        parity = 100.0 - k  # r = 0: DF (F - K)
        assert np.all(calls.bid - puts.ask - fee <= parity + 1e-9)
        assert np.all(parity <= calls.ask - puts.bid + fee + 1e-9)
        rows.append((calls.ask - calls.bid).mean(axis=(1, 2)))
    spread = np.array(rows).mean(axis=0)  # calm, bull, crash
    assert spread[2] > spread[0] and spread[2] > spread[1]
