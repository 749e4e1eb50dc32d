"""Order routing across fee tiers: hand checks, brute-force optimum, gas-aware pool choice, hops."""

from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, minimize_scalar

from defialloc.envs.execution import Pool, PoolSet, route_order, route_swap
from defialloc.envs.protocols.amm import get_amount_out, marginal_output

FEE_TIERS = [0.0, 0.0001, 0.0005, 0.003, 0.01]


def _pools(seed: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r_in = 10 ** rng.uniform(2, 7, k)
    # output reserves near the same price so that several pools compete
    r_out = r_in * 10 ** rng.uniform(-0.05, 0.05, k) * 3.0
    fee = rng.choice(FEE_TIERS, k)
    return r_in, r_out, fee


def _brute_force(amount: float, r_in, r_out, fee, gas: float = 0.0) -> float:
    """Best output minus gas over every pool subset, each split found by a numeric optimizer."""
    best = -np.inf
    k = len(r_in)
    for size in range(1, k + 1):
        for subset in combinations(range(k), size):
            idx = list(subset)
            if size == 1:
                value = float(get_amount_out(amount, r_in[idx], r_out[idx], fee[idx])[0])
            elif size == 2:
                res = minimize_scalar(
                    lambda w, i=idx: (
                        -get_amount_out(
                            amount * np.array([w, 1 - w]), r_in[i], r_out[i], fee[i]
                        ).sum()
                    ),
                    bounds=(0.0, 1.0),
                    method="bounded",
                    options={"xatol": 1e-12},
                )
                value = -res.fun
            else:
                res = minimize(
                    lambda w, i=idx: (
                        -get_amount_out(
                            amount * np.abs(w) / np.abs(w).sum(), r_in[i], r_out[i], fee[i]
                        ).sum()
                    ),
                    np.full(size, 1.0 / size),
                    method="Nelder-Mead",
                    options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 5000},
                )
                value = -res.fun
            best = max(best, value - gas * size)
    return best


# ---- hand checks -----------------------------------------------------------------------------


def test_two_identical_pools_split_equally():
    r = np.array([1000.0, 1000.0])
    res = route_order(100.0, r, 2 * r, np.array([0.003, 0.003]))
    np.testing.assert_allclose(res.amounts_in, [50.0, 50.0], rtol=1e-14)
    assert res.n_pools == 2
    # each half is an ordinary swap: 0.997*50*2000 / (1000 + 0.997*50)
    half_out = 0.997 * 50 * 2000 / (1000 + 0.997 * 50)
    np.testing.assert_allclose(res.amounts_out, [half_out, half_out], rtol=1e-14)
    assert res.amount_out == pytest.approx(2 * half_out, rel=1e-14)
    np.testing.assert_allclose(res.fees_in, [0.15, 0.15], rtol=1e-14)
    # splitting beats one pool
    assert res.amount_out > get_amount_out(100.0, 1000.0, 2000.0, 0.003)


def test_zero_fee_pool_fills_first_then_both_equalize():
    """Pools R/R with fee 0 and f: the fee-free pool takes everything until its marginal output
    falls to g = 1 - f, at x0 = R (1/sqrt(g) - 1); past that, R + g x1 = sqrt(g) (R + x0)."""
    big_r, f = 1000.0, 0.01
    g = 1 - f
    fees = np.array([0.0, f])
    r = np.array([big_r, big_r])
    x0 = big_r * (1 / np.sqrt(g) - 1)  # 5.0378...
    small = route_order(0.9 * x0, r, r, fees)
    assert small.n_pools == 1
    np.testing.assert_allclose(small.amounts_in, [0.9 * x0, 0.0])

    amount = 100.0
    x1 = (np.sqrt(g) * (big_r + amount) - big_r) / (g + np.sqrt(g))  # hand solution, = 47.60
    res = route_order(amount, r, r, fees)
    assert res.n_pools == 2
    np.testing.assert_allclose(res.amounts_in, [amount - x1, x1], rtol=1e-12)
    assert x1 == pytest.approx(47.6, abs=0.01)


def test_marginal_outputs_are_equal_across_active_pools():
    rng = np.random.default_rng(3)
    r_in = rng.uniform(1e5, 1e6, (50, 3))
    r_out = r_in * rng.uniform(0.99, 1.01, (50, 3))
    fee = np.array([0.0005, 0.003, 0.01])
    amount = rng.uniform(1e3, 3e5, 50)
    res = route_order(amount, r_in, r_out, fee)
    marginal = marginal_output(res.amounts_in, r_in, r_out, fee)
    active = res.amounts_in > 0
    assert (res.n_pools >= 2).sum() > 10  # the sample exercises splitting
    for row in range(50):
        m = marginal[row]
        on = active[row]
        np.testing.assert_allclose(m[on], m[on][0], rtol=1e-9)
        # an unused pool's first unit would earn less than the common marginal
        assert np.all(m[~on] <= m[on][0] * (1 + 1e-9))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [2, 3])
def test_matches_brute_force_optimum(seed, k):
    r_in, r_out, fee = _pools(seed, k)
    amount = float(r_in.min()) * [0.001, 0.05, 0.5, 3.0][seed % 4]
    res = route_order(amount, r_in, r_out, fee)
    assert res.amount_out == pytest.approx(_brute_force(amount, r_in, r_out, fee), rel=1e-9)
    assert res.amount_out >= _brute_force(amount, r_in, r_out, fee) * (1 - 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_gas_aware_choice_matches_brute_force(seed):
    r_in, r_out, fee = _pools(100 + seed, 3)
    amount = float(r_in.mean())
    single = get_amount_out(amount, r_in, r_out, fee).max()
    for gas in (0.0, single * 1e-4, single * 1e-3, single * 1e-2):
        res = route_order(amount, r_in, r_out, fee, gas_per_pool_out=gas)
        net = float(res.amount_out - res.gas_out)
        assert net == pytest.approx(_brute_force(amount, r_in, r_out, fee, gas), rel=1e-9)
        assert res.gas_out == pytest.approx(gas * res.n_pools)


def test_large_gas_uses_the_best_single_pool_not_the_cheapest_fee():
    # shallow zero-fee pool vs deep 0.3% pool: for a large order the deep pool is best alone
    r_in = np.array([1e3, 1e6])
    fee = np.array([0.0, 0.003])
    amount = 5e4
    no_gas = route_order(amount, r_in, r_in, fee)
    assert no_gas.n_pools == 2
    gas = 1e4
    res = route_order(amount, r_in, r_in, fee, gas_per_pool_out=gas)
    assert res.n_pools == 1
    np.testing.assert_array_equal(res.amounts_in, [0.0, amount])
    assert res.amount_out == pytest.approx(get_amount_out(amount, 1e6, 1e6, 0.003), rel=1e-14)


order_strategy = dict(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 4),
    log_size=st.floats(-8.0, 1.0),
    log_gas=st.one_of(st.just(None), st.floats(-8.0, 0.0)),
)


@settings(max_examples=300, deadline=None)
@given(**order_strategy)
def test_never_worse_than_best_single_pool(seed, k, log_size, log_gas):
    rng = np.random.default_rng(seed)
    r_in = 10 ** rng.uniform(0, 9, (5, k))
    r_out = 10 ** rng.uniform(0, 9, (5, k))
    fee = rng.choice(FEE_TIERS + [0.05], k)
    amount = r_in.max(-1) * 10**log_size * rng.uniform(0.5, 1, 5)
    singles = get_amount_out(amount[:, None], r_in, r_out, fee)
    gas = 0.0 if log_gas is None else singles.max(-1) * 10**log_gas
    res = route_order(amount, r_in, r_out, fee, gas_per_pool_out=gas)
    best_single = singles.max(-1)
    tol = 1e-12 * best_single
    assert np.all(res.amount_out - res.gas_out >= best_single - gas - tol)
    if log_gas is None:
        assert np.all(res.amount_out >= best_single - tol)
    # conservation and bookkeeping
    np.testing.assert_allclose(res.amounts_in.sum(-1), amount, rtol=1e-12)
    assert np.all(res.amounts_in >= 0.0)
    np.testing.assert_allclose(
        res.amounts_out, get_amount_out(res.amounts_in, r_in, r_out, fee), rtol=1e-14
    )
    np.testing.assert_allclose(res.amount_out, res.amounts_out.sum(-1), rtol=1e-14)
    np.testing.assert_allclose(res.fees_in, res.amounts_in * fee, rtol=1e-14)
    np.testing.assert_array_equal(res.n_pools, (res.amounts_in > 0).sum(-1))


def test_zero_amount_gives_zero_everything():
    r = np.array([[10.0, 20.0, 30.0], [5.0, 5.0, 5.0]])
    res = route_order(
        np.array([0.0, 0.0]), r, r, np.array([0.0, 0.003, 0.01]), gas_per_pool_out=1.0
    )
    for field in (
        res.amount_out,
        res.amounts_in,
        res.amounts_out,
        res.fees_in,
        res.n_pools,
        res.gas_out,
    ):
        assert np.all(field == 0)
    assert res.n_pools.dtype.kind == "i"


def test_shapes_and_per_order_fees():
    rng = np.random.default_rng(0)
    b, n, k = 4, 5, 3
    r_in = rng.uniform(1e3, 1e4, (b, n, k))
    r_out = rng.uniform(1e3, 1e4, (b, n, k))
    amount = rng.uniform(0, 1e3, (b, n))
    fee_k = np.array([0.0005, 0.003, 0.01])
    res = route_order(amount, r_in, r_out, fee_k, gas_per_pool_out=rng.uniform(0, 1, (b, n)))
    assert res.amount_out.shape == (b, n) and res.n_pools.shape == (b, n)
    assert res.amounts_in.shape == (b, n, k) and res.fees_in.shape == (b, n, k)
    # a per-order fee array equal to the tiers gives the same answer
    same = route_order(amount, r_in, r_out, np.broadcast_to(fee_k, (b, n, k)), gas_per_pool_out=0.0)
    ref = route_order(amount, r_in, r_out, fee_k)
    np.testing.assert_allclose(same.amounts_in, ref.amounts_in, rtol=1e-14)
    # each order equals the same order routed alone
    one = route_order(amount[2, 3], r_in[2, 3], r_out[2, 3], fee_k)
    assert one.amount_out.shape == () and one.amounts_in.shape == (k,)
    assert one.amount_out == pytest.approx(ref.amount_out[2, 3], rel=1e-14)
    # broadcasting a scalar order over pools of shape (b, k)
    bcast = route_order(10.0, r_in[:, 0], r_out[:, 0], fee_k)
    assert bcast.amount_out.shape == (b,)


def test_single_pool():
    res = route_order(
        np.array([1.0, 2.0]), np.array([[5.0], [10.0]]), np.array([[10.0], [5.0]]), 0.003
    )
    np.testing.assert_allclose(
        res.amount_out, [1.662497915624478906, 0.997 * 2 * 5 / (10 + 0.997 * 2)], rtol=1e-12
    )
    np.testing.assert_array_equal(res.n_pools, [1, 1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(amount_in=-1.0), r"amount_in must be in \[0, inf\); got -1.0"),
        (
            dict(reserve_in=np.array([1.0, 0.0])),
            r"reserve_in must be in \(0, inf\); got 0.0 at index \(1,\)",
        ),
        (dict(reserve_out=np.array([1.0, np.nan])), r"reserve_out .* got nan"),
        (dict(fee=np.array([0.003, 1.2])), r"fee must be in \[0, 1\); got 1.2"),
        (dict(gas_per_pool_out=-0.5), r"gas_per_pool_out must be in \[0, inf\); got -0.5"),
        (dict(reserve_in=1.0, reserve_out=1.0), "trailing pool axis"),
        (
            dict(reserve_in=np.ones(9), reserve_out=np.ones(9), fee=0.003),
            r"K must be in \[1, 8\]; got 9",
        ),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(
        amount_in=1.0,
        reserve_in=np.array([10.0, 20.0]),
        reserve_out=np.array([10.0, 20.0]),
        fee=np.array([0.003, 0.01]),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        route_order(**args)


# ---- multi-hop swaps ---------------------------------------------------------------------------


def _book() -> PoolSet:
    return PoolSet(
        (
            Pool("ETH", "USDC", 1_000.0, 2_000_000.0, 0.0005),
            Pool("USDC", "ETH", 1_000_000.0, 500.0, 0.003),
            Pool("BTC", "USDC", 100.0, 3_000_000.0, 0.003),
            Pool("SOL", "ETH", 10_000.0, 50.0, 0.01),
        ),
        numeraire="USDC",
    )


def test_route_swap_hops_through_the_numeraire():
    book = _book()
    quote = route_swap(book, "BTC", "ETH", 1.0)
    assert quote.path == ("BTC", "USDC", "ETH")
    usdc = get_amount_out(1.0, 100.0, 3_000_000.0, 0.003)  # one BTC/USDC pool
    assert quote.legs[0].route.amount_out == pytest.approx(usdc, rel=1e-14)
    # second leg is the optimal split over the two ETH/USDC pools, from the vectorized core
    leg2 = route_order(
        usdc,
        np.array([2_000_000.0, 1_000_000.0]),
        np.array([1_000.0, 500.0]),
        np.array([0.0005, 0.003]),
    )
    assert quote.amount_out == pytest.approx(float(leg2.amount_out), rel=1e-14)
    assert quote.legs[1].pool_indices == [0, 1]
    # no worse than either single ETH pool
    assert quote.amount_out >= get_amount_out(usdc, 2_000_000.0, 1_000.0, 0.0005)


def test_route_swap_prefers_the_better_of_direct_and_hop():
    book = _book()
    direct = route_swap(PoolSet(book.pools[3:], "USDC"), "SOL", "ETH", 100.0)
    assert direct.path == ("SOL", "ETH")
    assert direct.amount_out == pytest.approx(
        get_amount_out(100.0, 10_000.0, 50.0, 0.01), rel=1e-14
    )
    # with a deep SOL/USDC pool, going through USDC pays more than the shallow direct pool
    deep = PoolSet((*book.pools, Pool("SOL", "USDC", 1e6, 2e7, 0.0005)), "USDC")
    quote = route_swap(deep, "SOL", "ETH", 100.0)
    assert quote.path == ("SOL", "USDC", "ETH")
    assert quote.amount_out > direct.amount_out


def test_pool_set_after_applies_the_quote():
    book = _book()
    quote = route_swap(book, "ETH", "USDC", 10.0)
    after = book.after(quote)
    eth_in = sum(p.reserve0 for p in after.pools[:1]) + after.pools[1].reserve1
    eth_before = book.pools[0].reserve0 + book.pools[1].reserve1
    assert eth_in - eth_before == pytest.approx(10.0, rel=1e-12)
    usdc_out = (
        book.pools[0].reserve1
        + book.pools[1].reserve0
        - after.pools[0].reserve1
        - after.pools[1].reserve0
    )
    assert usdc_out == pytest.approx(quote.amount_out, rel=1e-12)
    for old, new in zip(book.pools, after.pools, strict=True):
        assert new.reserve0 * new.reserve1 >= old.reserve0 * old.reserve1 * (1 - 1e-15)


def test_route_swap_errors():
    book = _book()
    with pytest.raises(ValueError, match="no route from 'BTC' to 'DOGE'"):
        route_swap(book, "BTC", "DOGE", 1.0)
    with pytest.raises(ValueError, match="must differ"):
        route_swap(book, "BTC", "BTC", 1.0)
    with pytest.raises(ValueError, match=r"amount_in must be in \[0, inf\)"):
        route_swap(book, "BTC", "ETH", -1.0)
    with pytest.raises(ValueError, match=r"reserve0 of ETH/USDC must be in \(0, inf\)"):
        Pool("ETH", "USDC", 0.0, 1.0)
