"""Uniswap v2 constant-product math: reference vectors, inverse, invariant, arbitrage band, depth."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from defialloc.envs.protocols.amm import (
    _amount_in_unchecked,
    _amount_out_unchecked,
    arbitrage_to_band,
    check_in_range,
    get_amount_in,
    get_amount_out,
    invariant,
    marginal_output,
    marginal_price_after,
    rescale_depth,
    spot_price,
)

WAD = 10**18
log_reserve = st.floats(0.0, 9.0).map(lambda e: 10.0**e)
fees = st.sampled_from([0.0, 0.0001, 0.0005, 0.003, 0.01, 0.3])


@pytest.mark.parametrize(
    ("reserve_in", "reserve_out", "expected_wei"),
    [
        (5, 10, 1_662497915624478906),
        (10, 5, 453305446940074565),
        (1000, 1000, 996006981039903216),
    ],
)
def test_uniswap_v2_reference_vectors(reserve_in, reserve_out, expected_wei):
    # the contract's integer formula reproduces the reference in wei ...
    a = 1 * WAD
    assert a * 997 * reserve_out * WAD // (reserve_in * WAD * 1000 + a * 997) == expected_wei
    # ... and the float formula agrees to 1e-12 relative
    out = get_amount_out(1.0, reserve_in, reserve_out, 0.003)
    assert out == pytest.approx(expected_wei / WAD, rel=1e-12)


def test_amount_in_hand_value_and_price_after():
    # 5/10 pool: 1.662497915624478906 out needs 1 in (the float formula has no +1 wei)
    assert get_amount_in(1.662497915624478906, 5.0, 10.0, 0.003) == pytest.approx(1.0, rel=1e-12)
    # price after selling 1 into 5/10: (10 - 1.6625) / 6
    assert marginal_price_after(1.0, 5.0, 10.0, 0.003) == pytest.approx(
        (10 - 1.662497915624478906) / 6, rel=1e-12
    )
    assert spot_price(5.0, 10.0) == 2.0
    assert invariant(5.0, 10.0) == 50.0


def test_broadcasting_over_leading_shapes():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 10, (4, 3, 2))
    r_in = rng.uniform(10, 100, (4, 3, 2))
    r_out = rng.uniform(10, 100, (4, 3, 2))
    fee = np.array([0.0005, 0.003])
    out = get_amount_out(a, r_in, r_out, fee)
    assert out.shape == (4, 3, 2)
    hand = a * (1 - fee) * r_out / (r_in + a * (1 - fee))
    np.testing.assert_allclose(out, hand, rtol=1e-14)
    np.testing.assert_array_equal(_amount_out_unchecked(a, r_in, r_out, fee), out)


@settings(max_examples=300, deadline=None)
@given(r_in=log_reserve, r_out=log_reserve, frac=st.floats(0.0, 100.0), fee=fees)
def test_get_amount_in_inverts_get_amount_out(r_in, r_out, frac, fee):
    a = frac * r_in
    out = get_amount_out(a, r_in, r_out, fee)
    if out >= r_out:  # the pool cannot be drained; float rounds out -> r_out for huge trades
        return
    back = get_amount_in(out, r_in, r_out, fee)
    # conditioning: d in / d out grows like R_out / (R_out - out)
    cond = r_out / (r_out - out)
    assert back == pytest.approx(a, rel=1e-12 * cond, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(
    r_in=log_reserve, r_out=log_reserve, trades=st.lists(st.floats(0.0, 5.0), max_size=8), fee=fees
)
def test_k_never_decreases_across_swaps(r_in, r_out, trades, fee):
    """Alternating directions, the fee stays in the pool: k after >= k before (to rounding)."""
    x, y = r_in, r_out
    for step, frac in enumerate(trades):
        k = x * y
        if step % 2 == 0:
            a = frac * x
            out = get_amount_out(a, x, y, fee)
            x, y = x + a, y - out
        else:
            a = frac * y
            out = get_amount_out(a, y, x, fee)
            x, y = x - out, y + a
        assert x * y >= k * (1 - 1e-12)
        assert x > 0 and y > 0


def test_marginal_output_matches_finite_difference():
    a, r_in, r_out, fee = 37.0, 1000.0, 2500.0, 0.003
    h = 1e-4
    numeric = (
        get_amount_out(a + h, r_in, r_out, fee) - get_amount_out(a - h, r_in, r_out, fee)
    ) / (2 * h)
    assert marginal_output(a, r_in, r_out, fee) == pytest.approx(numeric, rel=1e-8)
    assert marginal_output(0.0, r_in, r_out, fee) == pytest.approx(0.997 * 2.5, rel=1e-15)


# ---- arbitrage back to the fee band ----------------------------------------------------------


def _brute_force_arb(reserve_asset, reserve_num, p, fee):
    """Best arbitrage profit (numeraire) by 1-D numeric search in both directions."""

    def buy_profit(a_num):  # numeraire in, asset out, asset sold at p
        return get_amount_out(a_num, reserve_num, reserve_asset, fee) * p - a_num

    def sell_profit(a_asset):  # asset bought at p, sold into the pool
        return get_amount_out(a_asset, reserve_asset, reserve_num, fee) - a_asset * p

    best = 0.0
    for profit, scale in ((buy_profit, reserve_num), (sell_profit, reserve_asset)):
        res = minimize_scalar(
            lambda a, f=profit: -f(a),
            bounds=(0.0, 10 * scale),
            method="bounded",
            options={"xatol": 1e-10 * scale},
        )
        best = max(best, -res.fun)
    return best


@pytest.mark.parametrize(
    ("reserve_asset", "reserve_num", "p", "fee"),
    [
        (1000.0, 1000.0, 2.0, 0.003),  # pool cheap: arb buys the asset
        (1000.0, 1000.0, 0.5, 0.003),  # pool dear: arb sells the asset
        (50.0, 150_000.0, 2_000.0, 0.0005),
        (3.0, 7.0, 2.0, 0.01),
        (1e6, 1e6, 1.3, 0.0),
    ],
)
def test_arbitrage_is_the_profit_maximizing_swap(reserve_asset, reserve_num, p, fee):
    new_asset, new_num, profit = arbitrage_to_band(
        np.array(reserve_asset), np.array(reserve_num), np.array(p), np.array(fee)
    )
    pool_price = reserve_num / reserve_asset
    # documented end price: p (1 - f/s) from below, p / (1 - f/s) from above, inside the band
    if pool_price < p:
        s = np.sqrt((1 - fee) * p / pool_price)
        expected_price = p * (1 - fee / s)
    else:
        s = np.sqrt((1 - fee) * pool_price / p)
        expected_price = p / (1 - fee / s)
    assert new_num / new_asset == pytest.approx(expected_price, rel=1e-12)
    assert p * (1 - fee) * (1 - 1e-12) <= new_num / new_asset <= p / (1 - fee) * (1 + 1e-12)
    assert new_asset * new_num >= reserve_asset * reserve_num * (1 - 1e-14)
    assert profit == pytest.approx(_brute_force_arb(reserve_asset, reserve_num, p, fee), rel=1e-9)
    # the reserves moved by exactly a constant-product trade of the size implied
    if reserve_num / reserve_asset < p:
        a = new_num - reserve_num
        assert reserve_asset - new_asset == pytest.approx(
            get_amount_out(a, reserve_num, reserve_asset, fee), rel=1e-10
        )
    else:
        a = new_asset - reserve_asset
        assert reserve_num - new_num == pytest.approx(
            get_amount_out(a, reserve_asset, reserve_num, fee), rel=1e-10
        )


def test_arbitrage_hand_value():
    # 1000/1000 pool (P = 1), market p = 2, f = 0.3%: a = (sqrt(0.997 * 2 * 1e6) - 1000) / 0.997
    a_num = (np.sqrt(0.997 * 2 * 1e6) - 1000) / 0.997  # = 413.3289...
    out = 0.997 * a_num * 1000 / (1000 + 0.997 * a_num)
    new_asset, new_num, profit = arbitrage_to_band(1000.0, 1000.0, 2.0, 0.003)
    assert new_num == pytest.approx(1000 + a_num, rel=1e-14)
    assert new_asset == pytest.approx(1000 - out, rel=1e-14)
    assert profit == pytest.approx(2 * out - a_num, rel=1e-12)
    assert profit == pytest.approx(170.32969, abs=1e-5)  # grid search: 170.329692


def test_arbitrage_without_fee_hits_market_price_and_keeps_k():
    # zero fee: P' = p and k constant, so R_asset' = sqrt(k / p) = sqrt(1e6 / 4) = 500
    a, n, _ = arbitrage_to_band(np.array(1000.0), np.array(1000.0), 4.0, 0.0)
    assert a == pytest.approx(500.0, rel=1e-14)
    assert n == pytest.approx(2000.0, rel=1e-14)


def test_pool_inside_band_is_untouched():
    ra = np.array([[100.0, 100.0]])
    rn = np.array([[100.2, 99.8]])
    a, n, profit = arbitrage_to_band(ra, rn, np.array([[1.0]]), np.array([0.003, 0.003]))
    np.testing.assert_array_equal(a, ra)
    np.testing.assert_array_equal(n, rn)
    np.testing.assert_array_equal(profit, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    log_move=st.floats(-3.0, 3.0),
)
def test_arbitrage_vectorized_band_k_and_profit(seed, log_move):
    rng = np.random.default_rng(seed)
    shape = (4, 3, 3)
    ra = 10 ** rng.uniform(0, 8, shape)
    price = 10 ** rng.uniform(-3, 4, shape[:2] + (1,))
    rn = ra * price * np.exp(log_move + rng.normal(0, 0.5, shape))
    fee = np.array([0.0005, 0.003, 0.01])
    new_a, new_n, profit = arbitrage_to_band(ra, rn, price, fee)
    assert new_a.shape == shape and profit.shape == shape
    pool_price = new_n / new_a
    g = 1 - fee
    assert np.all(pool_price >= price * g * (1 - 1e-12))
    assert np.all(pool_price <= price / g * (1 + 1e-12))
    assert np.all(new_a * new_n >= ra * rn * (1 - 1e-12))
    # profit is non-negative up to rounding of the numeraire value moved
    assert np.all(profit >= -1e-12 * (ra * price + rn))
    # each element equals the scalar call (no cross-talk between broadcast elements)
    i = tuple(rng.integers(0, s) for s in shape)
    one = arbitrage_to_band(ra[i], rn[i], price[i[:2]][0], fee[i[2]])
    assert one[0] == pytest.approx(new_a[i], rel=1e-14)
    assert one[1] == pytest.approx(new_n[i], rel=1e-14)


def test_rescale_depth_sets_sqrt_k_and_keeps_price():
    ra = np.array([100.0, 4.0])
    rn = np.array([400.0, 9.0])
    a, n = rescale_depth(ra, rn, np.array([1000.0, 3.0]))
    np.testing.assert_allclose(np.sqrt(a * n), [1000.0, 3.0], rtol=1e-14)
    np.testing.assert_allclose(n / a, rn / ra, rtol=1e-14)
    # hand: price 4, sqrt k = 1000 -> 500 asset, 2000 numeraire
    assert a[0] == pytest.approx(500.0) and n[0] == pytest.approx(2000.0)


# ---- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1.0, 5.0, 10.0, 0.003), r"amount_in must be in \[0, inf\); got -1.0"),
        ((1.0, 0.0, 10.0, 0.003), r"reserve_in must be in \(0, inf\); got 0.0"),
        ((1.0, 5.0, -2.0, 0.003), r"reserve_out must be in \(0, inf\); got -2.0"),
        ((1.0, 5.0, 10.0, 1.0), r"fee must be in \[0, 1\); got 1.0"),
        ((1.0, 5.0, 10.0, -0.1), r"fee must be in \[0, 1\)"),
        ((np.nan, 5.0, 10.0, 0.003), r"amount_in .* got nan"),
        ((np.inf, 5.0, 10.0, 0.003), r"amount_in .* got inf"),
        ((np.array([1.0, -3.0]), 5.0, 10.0, 0.003), r"got -3.0 at index \(1,\)"),
    ],
)
def test_get_amount_out_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        get_amount_out(*args)


def test_get_amount_in_rejects_draining_the_pool():
    with pytest.raises(
        ValueError,
        match=r"amount_out must be in \[0, reserve_out\); got amount_out=10.0 >= reserve_out=10.0",
    ):
        get_amount_in(10.0, 5.0, 10.0, 0.003)
    with pytest.raises(ValueError, match="amount_out"):
        get_amount_in(np.array([1.0, 12.0]), 5.0, np.array([10.0, 11.0]), 0.003)
    assert np.isfinite(_amount_in_unchecked(1.0, 5.0, 10.0, 0.003))


def test_check_in_range_message_names_field_value_and_range():
    with pytest.raises(ValueError, match=r"x must be in \[1, 5\]; got 7.0 at index \(0, 1\)"):
        check_in_range("x", [[1.0, 7.0]], 1.0, 5.0)
