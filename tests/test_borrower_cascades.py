"""The borrower population's fast paths against plain references, bit for bit.

``liquidate_population`` only computes the liquidatable buckets, and the env engine
(``BorrowerCascades``) keeps a bucket-major state; neither may change a single bit of the result.
"""

import numpy as np
import pytest

from defialloc.envs.leverage_population import BorrowerCascades
from defialloc.envs.protocols.borrowers import (
    BorrowerPopulation,
    init_population,
    liquidate_population,
    pool_sales,
    population_step,
    refresh_population,
)
from defialloc.envs.protocols.lending import snap_to_bag
from defialloc.envs.protocols.params import PopulationParams, ReserveArrays

N_ASSETS = 3
LT = np.array([0.83, 0.78, 0.7])
BONUS = np.array([0.05, 0.065, 0.1])
FEE = np.array([0.1, 0.2, 0.1])


def _params(lag: float, rounds: int, pool_share: float = 0.3) -> PopulationParams:
    return PopulationParams(
        hf_entry_min=1.02, hf_entry_max=2.5, n_buckets=21, refresh_rate_per_step=0.05,
        sell_fraction=0.8, execution_lag=lag, max_rounds_per_step=rounds,
        pool_share_of_sales=pool_share,
    )  # fmt: skip


def _dense_liquidation(pop, p_low, params):
    """Every bucket, every round, on the full ``(..., N, K)`` arrays (the plain formulation)."""
    p_low, threshold, lb = p_low[..., None], LT[:, None], 1.0 + BONUS[:, None]
    units, debt = pop.collateral_units, pop.debt_usd
    seized_total, repaid_total, bad_total = (np.zeros(units.shape[:-1]) for _ in range(3))
    for _ in range(params.max_rounds_per_step):
        liquidatable = units * (p_low * threshold) < debt
        if not liquidatable.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = np.where(units > 0.0, debt / (units * threshold), 0.0)
        price = p_low + (1.0 - params.execution_lag) * np.maximum(crossing - p_low, 0.0)
        full = units * price * threshold <= 0.95 * debt
        repaid = np.where(liquidatable, np.where(full, debt, 0.5 * debt), 0.0)
        np.minimum(repaid, units * price / lb, out=repaid)
        seized = snap_to_bag(repaid * lb / price, units)
        units, debt = units - seized, debt - repaid
        insolvent = (units <= 0.0) & (debt > 0.0)
        bad_total += np.sum(debt, axis=-1, where=insolvent)
        np.copyto(debt, 0.0, where=insolvent)
        seized_total += seized.sum(axis=-1)
        repaid_total += repaid.sum(axis=-1)
    kept = 1.0 - (lb - 1.0) / lb * FEE[:, None]
    return units, debt, params.sell_fraction * seized_total * kept[:, 0], repaid_total, bad_total


def _path(rng, b, steps):
    close = 2000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.06, (steps, b, N_ASSETS)), axis=0))
    low = close * np.exp(-np.abs(rng.normal(0.0, 0.06, close.shape)))
    low[steps // 2] *= 0.3  # a crash: buckets end insolvent (bad debt)
    return low, close


@pytest.mark.parametrize(("lag", "rounds"), [(1.0, 1), (0.0, 3), (0.4, 2)])
def test_liquidate_population_equals_the_dense_formulation(lag, rounds):
    rng = np.random.default_rng(7)
    params = _params(lag, rounds)
    pop = init_population(np.full((6, N_ASSETS), 2000.0), np.array([1e8, 5e7, 2e7]), LT, params)
    low, close = _path(rng, 6, 30)
    repaid_sum = bad = 0.0
    for t in range(30):
        res = liquidate_population(pop, low[t], LT, BONUS, FEE, params)
        units, debt, sales, repaid, bad_debt = _dense_liquidation(pop, low[t], params)
        np.testing.assert_array_equal(res.population.collateral_units, units)
        np.testing.assert_array_equal(res.population.debt_usd, debt)
        np.testing.assert_array_equal(res.forced_sale_units, sales)
        np.testing.assert_array_equal(res.debt_repaid_usd, repaid)
        np.testing.assert_array_equal(res.bad_debt_usd, bad_debt)
        repaid_sum, bad = repaid_sum + repaid.sum(), bad + bad_debt.sum()
        pop = refresh_population(res.population, close[t], LT, params.refresh_rate_per_step)
    assert repaid_sum > 0.0
    assert bad > 0.0 or lag < 1.0  # liquidated at the low, the crash leaves bad debt


@pytest.mark.parametrize(("lag", "rounds"), [(1.0, 1), (0.3, 3)])
def test_engine_equals_population_step_with_resets(lag, rounds):
    """Envs reset at different times; each env's sales and state are those of the protocol loop.

    The engine returns what enters the agent's pools: ``pool_share_of_sales`` (0.3 here) of the
    protocol's forced sales, ``pool_sales(step.forced_sale_units)``, bit for bit."""
    rng = np.random.default_rng(3)
    params, b, steps = _params(lag, rounds), 5, 40
    reserves = ReserveArrays(
        symbols=("A", "B", "C"), ltv=LT - 0.05, liq_threshold=LT, liq_bonus=BONUS,
        liq_protocol_fee=FEE, reserve_factor=FEE, u_optimal=LT, base=FEE, slope1=FEE, slope2=FEE,
    )  # fmt: skip
    depth = np.array([1e8, 5e7, 2e7])
    engine = BorrowerCascades(params, reserves, b, depth)
    low, close = _path(rng, b, steps)
    mult = rng.uniform(0.5, 2.0, b)
    engine.reset(np.arange(b), close[0], mult)
    pops = [init_population(close[0, i], depth * mult[i], LT, params) for i in range(b)]
    for t in range(1, steps):
        if t % 7 == 0:  # reset two envs mid-path
            idx = rng.choice(b, size=2, replace=False)
            engine.reset(idx, close[t - 1, idx], mult[idx])
            for i in idx:
                pops[i] = init_population(close[t - 1, i], depth * mult[i], LT, params)
        sales = engine.step(low[t], close[t])
        for i in range(b):
            step = population_step(pops[i], low[t, i], close[t, i], LT, BONUS, FEE, params)
            pops[i] = step.population
            np.testing.assert_array_equal(sales[i], pool_sales(step.forced_sale_units, params))
            np.testing.assert_array_equal(engine.units[i], pops[i].collateral_units)
            np.testing.assert_array_equal(engine.debt[i], pops[i].debt_usd)
            np.testing.assert_array_equal(engine.fresh[i], pops[i].fresh_collateral_units)


def test_engine_state_views_write_through():
    """Snapshot/restore write ``units``/``debt``/``fresh`` of one env; the engine must see it."""
    params = _params(1.0, 1)
    reserves = ReserveArrays(
        symbols=("A", "B", "C"), ltv=LT - 0.05, liq_threshold=LT, liq_bonus=BONUS,
        liq_protocol_fee=FEE, reserve_factor=FEE, u_optimal=LT, base=FEE, slope1=FEE, slope2=FEE,
    )  # fmt: skip
    engine = BorrowerCascades(params, reserves, 2, np.array([1e8, 5e7, 2e7]))
    engine.reset(np.arange(2), np.full((2, 3), 2000.0), np.ones(2))
    pop = BorrowerPopulation(
        engine.units[1].copy(), engine.debt[1].copy(), engine.fresh[1].copy(), engine.entry_hf
    )
    engine.debt[0] = 0.0  # env 0 without debt never liquidates
    sales = engine.step(np.full((2, 3), 1500.0), np.full((2, 3), 1600.0))
    assert np.all(sales[0] == 0.0) and np.all(sales[1] > 0.0)
    expected = population_step(pop, np.full(3, 1500.0), np.full(3, 1600.0), LT, BONUS, FEE, params)
    # the engine's sales are the pools' share (0.3) of the protocol's forced sales
    np.testing.assert_array_equal(sales[1], pool_sales(expected.forced_sale_units, params))


def test_pool_share_scales_the_engine_sales_linearly():
    """``pool_share_of_sales`` 0 sells nothing into the pools, 1 sells the protocol function's
    forced sales exactly, anything between scales them linearly; the population is unaffected."""
    reserves = ReserveArrays(
        symbols=("A", "B", "C"), ltv=LT - 0.05, liq_threshold=LT, liq_bonus=BONUS,
        liq_protocol_fee=FEE, reserve_factor=FEE, u_optimal=LT, base=FEE, slope1=FEE, slope2=FEE,
    )  # fmt: skip
    depth, b, steps = np.array([1e8, 5e7, 2e7]), 4, 30
    low, close = _path(np.random.default_rng(11), b, steps)
    runs = {}
    for share in (0.0, 0.3, 1.0):
        params = _params(1.0, 1, pool_share=share)
        engine = BorrowerCascades(params, reserves, b, depth)
        engine.reset(np.arange(b), close[0], np.ones(b))
        sales = np.stack([engine.step(low[t], close[t]) for t in range(1, steps)])
        runs[share] = sales, engine.units.copy(), engine.debt.copy()
    full = runs[1.0][0]
    assert full.sum() > 0.0
    np.testing.assert_array_equal(runs[0.0][0], 0.0)
    np.testing.assert_array_equal(runs[0.3][0], 0.3 * full)
    for share in (0.0, 0.3):
        np.testing.assert_array_equal(runs[share][1], runs[1.0][1])
        np.testing.assert_array_equal(runs[share][2], runs[1.0][2])
    # share 1: the protocol function's forced sales, env by env
    params = _params(1.0, 1, pool_share=1.0)
    for i in range(b):
        pop = init_population(close[0, i], depth, LT, params)
        for t in range(1, steps):
            step = population_step(pop, low[t, i], close[t, i], LT, BONUS, FEE, params)
            pop = step.population
            np.testing.assert_array_equal(full[t - 1, i], step.forced_sale_units)
