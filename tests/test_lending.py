"""Aave-v3-like lending math against hand-computed values (numbers written out as arithmetic)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defialloc.envs.protocols.borrowers import (
    init_population,
    liquidate_population,
    population_liquidations,
    population_step,
    refresh_population,
)
from defialloc.envs.protocols.lending import (
    accrue_debt,
    accrue_supply,
    available_borrows_usd,
    borrow_capacity_usd,
    borrow_rate,
    close_factor,
    health_factor,
    liquidation,
    liquidation_from_params,
    regime_utilization,
    reserve_rates,
    supply_rate,
)
from defialloc.envs.protocols.params import (
    PopulationParams,
    ProtocolConfigError,
    RegimeModel,
    load_lending_params,
)

LT_ETH, LT_BTC = 0.83, 0.78


# ---------------------------------------------------------------------------------------- health
def test_health_factor_two_assets():
    # 2 ETH at $2,000 and 0.1 BTC at $30,000 against $4,000 of debt
    collateral = np.array([2 * 2000.0, 0.1 * 30000.0])
    hf = health_factor(collateral, np.array([LT_ETH, LT_BTC]), 4000.0)
    assert hf == pytest.approx((4000 * 0.83 + 3000 * 0.78) / 4000)  # 1.415
    assert hf == pytest.approx(1.415)


def test_health_factor_batch_and_zero_debt():
    collateral = np.array([[4000.0, 3000.0], [4000.0, 0.0], [0.0, 0.0]])
    hf = health_factor(collateral, np.array([LT_ETH, LT_BTC]), np.array([4000.0, 3320.0, 0.0]))
    np.testing.assert_allclose(hf[:2], [1.415, 1.0])
    assert np.isinf(hf[2])


def test_borrow_capacity_and_available():
    collateral = np.array([4000.0, 3000.0])
    ltv = np.array([0.805, 0.73])
    assert borrow_capacity_usd(collateral, ltv) == pytest.approx(4000 * 0.805 + 3000 * 0.73)  # 5410
    assert available_borrows_usd(collateral, ltv, 5000.0) == pytest.approx(410.0)
    assert available_borrows_usd(collateral, ltv, 6000.0) == 0.0


def test_health_factor_rejects_negative_debt():
    with pytest.raises(ValueError, match="debt_usd"):
        health_factor(np.array([1.0]), np.array([0.8]), -1.0)
    with pytest.raises(ValueError, match="liq_threshold"):
        health_factor(np.array([1.0]), np.array([1.2]), 1.0)


def test_close_factor_cases():
    hf = np.array([1.2, 1.0, 0.999, 0.97, 0.9500001, 0.95, 0.9, 0.0])
    np.testing.assert_array_equal(close_factor(hf), [0, 0, 0.5, 0.5, 0.5, 1, 1, 1])


def test_close_factor_small_position_rule():
    cf = close_factor(
        np.array([0.97, 0.97, 1.1]),
        total_collateral_usd=np.array([1500.0, 50000.0, 100.0]),
        debt_usd=np.array([1500.0, 48000.0, 50.0]),
        full_close_below_usd=2000.0,
    )
    np.testing.assert_array_equal(cf, [1.0, 0.5, 0.0])


# ---------------------------------------------------------------------------------------- liquidation
def _eth_liquidation(low_price: float, **kwargs):
    # debt 10,000 USDC, 5 ETH collateral, LT 0.83, bonus 5 %, protocol fee 10 % of the bonus
    return liquidation(
        10_000.0, np.array([5.0]), np.array([low_price]), [0.83], [0.05], 0.10, **kwargs
    )


def test_liquidation_close_factor_50_percent():
    low = 2337.5
    res = _eth_liquidation(low)
    assert res.health_factor_before == pytest.approx(5 * 2337.5 * 0.83 / 10_000)  # 0.9700625
    assert res.debt_repaid_usd == pytest.approx(5_000.0)  # 50 % of 10,000
    seized = 5_000 * 1.05 / 2337.5  # 2.2459893... ETH
    fee = 5_000 * 0.05 * 0.10 / 2337.5  # 25 USD of ETH = 0.0106952 ETH
    np.testing.assert_allclose(res.collateral_seized_units, [seized])
    np.testing.assert_allclose(res.protocol_fee_units, [fee])
    np.testing.assert_allclose(res.liquidator_received_units, [seized - fee])
    assert res.penalty_usd == pytest.approx(250.0)  # 5 % of 5,000, fee included
    assert res.health_factor_after == pytest.approx((5 - seized) * 2337.5 * 0.83 / 5_000)
    assert res.bad_debt_usd == 0.0


def test_liquidation_close_factor_100_percent():
    low = 2160.0
    res = _eth_liquidation(low)
    assert res.health_factor_before == pytest.approx(5 * 2160 * 0.83 / 10_000)  # 0.8964 <= 0.95
    assert res.debt_repaid_usd == pytest.approx(10_000.0)
    np.testing.assert_allclose(res.collateral_seized_units, [10_500 / 2160])  # 4.8611 ETH
    np.testing.assert_allclose(res.protocol_fee_units, [50 / 2160])  # 10 % of the 500 USD bonus
    assert res.penalty_usd == pytest.approx(500.0)
    assert np.isinf(res.health_factor_after)


def test_liquidation_seizure_capped_at_collateral():
    low = 2000.0  # HF 0.83; repaying all 10,000 would need 10,500 USD = 5.25 ETH > 5 ETH held
    res = _eth_liquidation(low)
    np.testing.assert_allclose(res.collateral_seized_units, [5.0])
    repaid = 5 * 2000 / 1.05  # 9,523.81: the repayment shrinks to bag / (1 + bonus)
    assert res.debt_repaid_usd == pytest.approx(repaid)
    np.testing.assert_allclose(res.protocol_fee_units, [(5 - 5 / 1.05) * 0.10])  # 0.0238 ETH
    assert res.penalty_usd == pytest.approx(5 * 2000 - repaid)  # 476.19
    assert res.bad_debt_usd == pytest.approx(10_000 - repaid)


def test_healthy_position_is_untouched():
    res = _eth_liquidation(2500.0)  # HF 1.0375
    assert res.debt_repaid_usd == 0.0
    np.testing.assert_array_equal(res.collateral_seized_units, [0.0])
    assert not res.liquidated


def test_liquidation_exactly_at_hf_one_is_safe():
    low = 10_000 / (5 * 0.83)  # HF exactly 1
    res = _eth_liquidation(low * (1 + 1e-12))
    assert res.debt_repaid_usd == 0.0


TWO_ASSET = dict(liq_threshold=[0.83, 0.78], bonus=[0.05, 0.05], protocol_fee_share=0.1)


def test_largest_first_seizes_only_the_biggest_bag():
    # 3 ETH at 2,000 (6,000 USD) + 0.1 BTC at 30,000 (3,000 USD), debt 7,500: HF = 7,320 / 7,500 = 0.976
    res = liquidation(7_500.0, np.array([3.0, 0.1]), np.array([2000.0, 30000.0]), **TWO_ASSET)
    assert res.health_factor_before == pytest.approx((6000 * 0.83 + 3000 * 0.78) / 7500)
    assert res.debt_repaid_usd == pytest.approx(3_750.0)
    # 1.96875 ETH
    np.testing.assert_allclose(res.collateral_seized_units, [3750 * 1.05 / 2000, 0.0])


def test_pro_rata_spreads_the_seizure_by_value():
    res = liquidation(
        7_500.0,
        np.array([3.0, 0.1]),
        np.array([2000.0, 30000.0]),
        **TWO_ASSET,
        seizure_order="pro_rata",
    )
    assert res.debt_repaid_usd == pytest.approx(3_750.0)
    eth_usd = 3750 * (6000 / 9000) * 1.05  # 2,625 USD
    btc_usd = 3750 * (3000 / 9000) * 1.05  # 1,312.5 USD
    np.testing.assert_allclose(res.collateral_seized_units, [eth_usd / 2000, btc_usd / 30000])
    assert res.penalty_usd == pytest.approx(3750 * 0.05)


def test_largest_first_cap_then_second_round_takes_the_next_bag():
    # 2 ETH (4,000 USD) + 0.1 BTC (3,000 USD), debt 10,000: HF 0.566 -> 100 % close
    units, prices = np.array([2.0, 0.1]), np.array([2000.0, 30000.0])
    one = liquidation(10_000.0, units, prices, **TWO_ASSET)
    np.testing.assert_allclose(one.collateral_seized_units, [2.0, 0.0])
    assert one.debt_repaid_usd == pytest.approx(4000 / 1.05)  # 3,809.52
    two = liquidation(10_000.0, units, prices, **TWO_ASSET, max_rounds=2)
    np.testing.assert_allclose(two.collateral_seized_units, [2.0, 0.1])
    assert two.debt_repaid_usd == pytest.approx(4000 / 1.05 + 3000 / 1.05)  # 6,666.67
    assert two.bad_debt_usd == pytest.approx(10_000 - 7000 / 1.05)


def test_liquidation_batch_matches_single_calls():
    debt = np.array([10_000.0, 10_000.0, 10_000.0, 0.0])
    units = np.array([[5.0], [5.0], [5.0], [1.0]])
    lows = np.array([[2337.5], [2160.0], [2000.0], [10.0]])
    batch = liquidation(debt, units, lows, [0.83], [0.05], 0.10)
    for i in range(4):
        single = liquidation(debt[i], units[i], lows[i], [0.83], [0.05], 0.10)
        assert batch.debt_repaid_usd[i] == pytest.approx(single.debt_repaid_usd)
        np.testing.assert_allclose(batch.collateral_seized_units[i], single.collateral_seized_units)


def test_liquidation_from_loaded_params():
    params = load_lending_params()
    reserves = params.reserve_arrays(["ETH"])
    res = liquidation_from_params(10_000.0, np.array([5.0]), np.array([2160.0]), reserves, params)
    np.testing.assert_allclose(res.collateral_seized_units, [10_500 / 2160])


def test_unchecked_liquidation_path_equals_the_validated_one():
    """The env calls liquidation_from_params(validate=False): same numbers as the checked call, on
    positions with several assets, 50 % and 100 % close factors and a capped seizure."""
    params = load_lending_params()
    reserves = params.reserve_arrays(["WBTC", "ETH", "LINK"])
    rng = np.random.default_rng(7)
    units = rng.uniform(0.0, 3.0, (40, 3))
    prices = rng.uniform(5.0, 3_000.0, (40, 3))
    debt = (units * prices * reserves.liq_threshold).sum(1) * rng.uniform(0.5, 1.6, 40)
    checked = liquidation_from_params(debt, units, prices, reserves, params)
    fast = liquidation_from_params(debt, units, prices, reserves, params, validate=False)
    assert checked.liquidated.any() and not checked.liquidated.all()
    for field in (
        "debt_repaid_usd",
        "collateral_seized_units",
        "protocol_fee_units",
        "penalty_usd",
        "health_factor_before",
        "health_factor_after",
        "bad_debt_usd",
    ):
        np.testing.assert_array_equal(getattr(fast, field), getattr(checked, field), err_msg=field)


def test_liquidation_rejects_bad_input():
    with pytest.raises(ValueError, match="collateral_units"):
        liquidation(1.0, np.array([-1.0]), np.array([1.0]), [0.8], [0.05], 0.1)
    with pytest.raises(ValueError, match="seizure_order"):
        liquidation(
            1.0, np.array([1.0]), np.array([1.0]), [0.8], [0.05], 0.1, seizure_order="smallest"
        )
    with pytest.raises(ValueError, match="max_rounds"):
        liquidation(1.0, np.array([1.0]), np.array([1.0]), [0.8], [0.05], 0.1, max_rounds=0)


@settings(max_examples=150, deadline=None)
@given(
    debt=st.floats(0.0, 1e6),
    units=st.lists(st.floats(0.0, 100.0), min_size=3, max_size=3),
    prices=st.lists(st.floats(0.01, 5e4), min_size=3, max_size=3),
    bonus=st.floats(0.0, 0.25),
    order=st.sampled_from(["largest_first", "pro_rata"]),
    rounds=st.integers(1, 3),
)
def test_liquidation_invariants(debt, units, prices, bonus, order, rounds):
    units, prices = np.array(units), np.array(prices)
    res = liquidation(
        debt,
        units,
        prices,
        [0.8, 0.7, 0.6],
        [bonus] * 3,
        0.1,
        seizure_order=order,
        max_rounds=rounds,
    )
    seized_usd = float((res.collateral_seized_units * prices).sum())
    assert np.all(res.collateral_seized_units <= units)
    assert np.all(res.collateral_seized_units >= 0)
    assert 0.0 <= res.debt_repaid_usd <= debt * (1 + 1e-12)
    # the borrower loses exactly the bonus on what was repaid
    assert seized_usd == pytest.approx(res.debt_repaid_usd * (1 + bonus), rel=1e-9, abs=1e-6)
    assert np.all(res.protocol_fee_units <= res.collateral_seized_units)
    left_usd = float(((units - res.collateral_seized_units) * prices).sum())
    if left_usd == 0.0:  # everything seized: whatever debt is left is bad debt
        assert res.bad_debt_usd == pytest.approx(debt - res.debt_repaid_usd, abs=1e-6)
    else:
        assert res.bad_debt_usd == 0.0
    if res.health_factor_before >= 1.0:
        assert res.debt_repaid_usd == 0.0


# ---------------------------------------------------------------------------------------- rates
REF = dict(base=0.01, slope1=0.04, slope2=0.60, u_optimal=0.80)


def test_borrow_rate_reference_points():
    u = np.array([0.0, 0.4, 0.79, 0.8, 0.8 + 1e-9, 0.9, 1.0])
    expected = [
        0.01,
        0.01 + 0.04 * 0.4 / 0.8,  # 0.03
        0.01 + 0.04 * 0.79 / 0.8,  # 0.0495, just below the kink
        0.05,  # at the kink
        0.05 + 0.60 * 1e-9 / 0.2,  # just above: continuous, steep slope
        0.01 + 0.04 + 0.60 * 0.1 / 0.2,  # 0.35
        0.65,
    ]
    np.testing.assert_allclose(borrow_rate(u, **REF), expected, rtol=1e-12)


def test_borrow_rate_snapshot_weth_and_broadcasting():
    params = load_lending_params()
    reserves = params.reserve_arrays(["ETH", "USDC"])
    borrow, supply = reserve_rates(np.array([[0.9, 0.9], [0.5, 0.45]]), reserves)
    # 0.428, USDC at its kink
    np.testing.assert_allclose(borrow[0], [0.028 + 0.80 * 0.1 / 0.2, 0.035])
    np.testing.assert_allclose(borrow[1], [0.028 * 0.5 / 0.8, 0.035 * 0.45 / 0.9])
    np.testing.assert_allclose(supply[0], [0.428 * 0.9 * 0.85, 0.035 * 0.9 * 0.90])


def test_supply_rate():
    assert supply_rate(0.8, 0.05, 0.10) == pytest.approx(0.05 * 0.8 * 0.9)  # 0.036
    assert supply_rate(0.0, 0.01, 0.10) == 0.0


def test_rate_inputs_validated():
    with pytest.raises(ValueError, match="utilization"):
        borrow_rate(1.2, **REF)
    with pytest.raises(ValueError, match="slope1"):
        borrow_rate(0.5, base=0.0, slope1=-0.01, slope2=0.6, u_optimal=0.8)
    with pytest.raises(ValueError, match="u_optimal"):
        borrow_rate(0.5, base=0.0, slope1=0.01, slope2=0.6, u_optimal=1.0)


def test_accrual():
    assert accrue_debt(1000.0, 0.10, 1.0) == pytest.approx(1000 * math.e**0.1)  # 1,105.17
    daily = 1000.0
    for _ in range(365):
        daily = accrue_debt(daily, 0.10, 1 / 365)
    # continuous: steps compose exactly
    assert daily == pytest.approx(1000 * math.e**0.1, rel=1e-12)
    assert accrue_supply(1000.0, 0.036, 1 / 365) == pytest.approx(1000 * (1 + 0.036 / 365))
    with pytest.raises(ValueError, match="dt_years"):
        accrue_debt(1.0, 0.1, -1.0)


# ---------------------------------------------------------------------------------------- utilization
def test_regime_utilization_means_ar1_and_clip():
    process = RegimeModel(
        persistence=0.9,
        lower=0.0,
        upper=0.95,
        regimes={"calm": {"mean": 0.6, "std": 0.05}, "crash": {"mean": 0.92, "std": 0.03}},
    ).process(("calm", "crash"), n_assets=2)
    codes = np.array([0, 1])
    np.testing.assert_allclose(
        regime_utilization(codes, process, np.zeros((2, 2))), [[0.6, 0.6], [0.92, 0.92]]
    )
    prev = np.array([[0.5, 0.5], [0.5, 0.5]])
    u = regime_utilization(codes, process, np.array([[1.0, 0.0], [0.0, 100.0]]), previous=prev)
    np.testing.assert_allclose(
        u[0], [0.6 + 0.9 * (0.5 - 0.6) + math.sqrt(1 - 0.81) * 0.05, 0.6 + 0.9 * -0.1]
    )
    np.testing.assert_allclose(u[1], [0.92 + 0.9 * (0.5 - 0.92), 0.95])  # clipped at upper


def test_regime_utilization_ordering_from_snapshot():
    params = load_lending_params()
    process = params.utilization_process(("calm", "bull", "crash"), ["USDC", "ETH"])
    rng = np.random.default_rng(0)
    draws = regime_utilization(np.repeat([0, 1, 2], 2000), process, rng)
    means = draws.reshape(3, 2000, 2).mean(axis=1)
    assert np.all(np.diff(means, axis=0) > 0)  # calm < bull < crash for both reserves
    assert np.all((draws >= 0) & (draws <= 0.99))
    with pytest.raises(ValueError, match="regime_codes"):
        regime_utilization(np.array([3]), process, rng)
    with pytest.raises(ValueError, match="stress"):
        params.utilization_process(("calm", "stress"), ["USDC"])


# ---------------------------------------------------------------------------------------- population
POP = PopulationParams(
    hf_entry_min=1.1,
    hf_entry_max=4.4,
    n_buckets=2,
    collateral_share_of_depth=0.5,
    refresh_rate_per_step=0.0,
    sell_fraction=1.0,
)


def test_population_hand_computed_partial_liquidation():
    # depth 1,000,000 USD * 0.5 / entry 2,000 = 250 ETH, 125 per bucket; HF buckets sqrt(1.1*2.2), sqrt(2.2*4.4)
    pop = init_population(np.array([2000.0]), np.array([1e6]), np.array([0.83]), POP)
    h1, h2 = math.sqrt(1.1 * 2.2), math.sqrt(2.2 * 4.4)
    np.testing.assert_allclose(pop.entry_hf, [h1, h2])
    np.testing.assert_allclose(pop.debt_usd, [[125 * 2000 * 0.83 / h1, 125 * 2000 * 0.83 / h2]])
    low = 0.97 * 2000 / h1  # bucket 1 at HF 0.97 -> 50 % close; bucket 2 at HF 1.94 is safe
    res = liquidate_population(pop, np.array([low]), np.array([0.83]), np.array([0.05]), 0.1, POP)
    repaid = 0.5 * 125 * 2000 * 0.83 / h1
    seized = repaid * 1.05 / low
    np.testing.assert_allclose(res.debt_repaid_usd, [repaid])
    np.testing.assert_allclose(res.forced_sale_units, [seized * (1 - 0.05 / 1.05 * 0.1)])
    np.testing.assert_allclose(res.population.collateral_units, [[125 - seized, 125]])
    np.testing.assert_allclose(res.bad_debt_usd, [0.0])


def test_population_liquidates_at_the_crossing_price_with_zero_lag():
    params = POP.model_copy(update={"execution_lag": 0.0, "max_rounds_per_step": 2})
    pop = init_population(np.array([2000.0]), np.array([1e6]), np.array([0.83]), params)
    h1 = math.sqrt(1.1 * 2.2)
    d1 = 125 * 2000 * 0.83 / h1
    cross1 = 2000 / h1  # bucket 1 reaches HF 1 here on the way down
    low = 0.8 * cross1
    # round 1 at the crossing: HF is 1 (> 0.95) so 50 % is repaid
    s1 = (d1 / 2) * 1.05 / cross1
    # after it, HF at cross1 is 2 - 1.05 * 0.83 = 1.1285, so the next crossing is cross1 / 1.1285 > low
    cross2 = (d1 / 2) / ((125 - s1) * 0.83)
    assert cross2 == pytest.approx(cross1 / (2 - 1.05 * 0.83))
    s2 = (d1 / 4) * 1.05 / cross2
    res = liquidate_population(
        pop, np.array([low]), np.array([0.83]), np.array([0.05]), 0.1, params
    )
    np.testing.assert_allclose(res.debt_repaid_usd, [d1 / 2 + d1 / 4])
    np.testing.assert_allclose(res.forced_sale_units, [(s1 + s2) * (1 - 0.05 / 1.05 * 0.1)])
    # bucket 2 (entry HF 2 * h1) is at HF 1.6 at the low: untouched
    np.testing.assert_allclose(res.population.collateral_units[0, 1], 125.0)


def test_population_no_drop_no_sales_and_crash_gives_bad_debt():
    pop = init_population(np.array([2000.0]), np.array([1e6]), np.array([0.83]), POP)
    calm = liquidate_population(
        pop, np.array([2000.0]), np.array([0.83]), np.array([0.05]), 0.1, POP
    )
    np.testing.assert_array_equal(calm.forced_sale_units, [0.0])
    crash = liquidate_population(
        pop, np.array([200.0]), np.array([0.83]), np.array([0.05]), 0.1, POP
    )
    # -90 %: both buckets are under water; all 250 ETH are seized, debt beyond bag / 1.05 is bad
    h1, h2 = math.sqrt(1.1 * 2.2), math.sqrt(2.2 * 4.4)
    debt = 125 * 2000 * 0.83 * (1 / h1 + 1 / h2)
    np.testing.assert_allclose(crash.debt_repaid_usd, [250 * 200 / 1.05])
    np.testing.assert_allclose(crash.bad_debt_usd, [debt - 250 * 200 / 1.05])
    np.testing.assert_allclose(crash.forced_sale_units, [250 * (1 - 0.05 / 1.05 * 0.1)])


def test_population_matches_a_scalar_reference_loop():
    """Default snapshot population, ETH -30 % at the low, against a per-bucket scalar Aave loop."""
    params = load_lending_params().population
    pop = init_population(np.array([2000.0]), np.array([250e6]), np.array([0.83]), params)
    low = 1400.0
    res = liquidate_population(
        pop, np.array([low]), np.array([0.83]), np.array([0.05]), 0.1, params
    )
    assert (params.hf_entry_min, params.hf_entry_max, params.n_buckets) == (1.05, 3.0, 48)
    edges = [1.05 * (3.0 / 1.05) ** (k / 48) for k in range(49)]
    units_each = params.collateral_share_of_depth * 250e6 / 2000 / 48
    sold = repaid_sum = bad = 0.0
    for k in range(48):
        h = math.sqrt(edges[k] * edges[k + 1])
        debt = units_each * 2000 * 0.83 / h
        hf = units_each * low * 0.83 / debt
        if hf >= 1:
            continue
        repay = debt * (1.0 if hf <= 0.95 else 0.5)
        if repay * 1.05 > units_each * low:  # bag too small: seize all, repay bag / LB
            repay = units_each * low / 1.05
            bad += debt - repay
        seized = repay * 1.05 / low
        sold += seized - seized * 0.05 / 1.05 * 0.1
        repaid_sum += repay
    assert bad > 0  # the deepest buckets are insolvent at -30 %
    np.testing.assert_allclose(res.forced_sale_units, [sold], rtol=1e-12)
    np.testing.assert_allclose(res.debt_repaid_usd, [repaid_sum], rtol=1e-12)
    np.testing.assert_allclose(res.bad_debt_usd, [bad], rtol=1e-9)


def test_population_refresh_restores_entry_distribution():
    pop = init_population(np.array([2000.0]), np.array([1e6]), np.array([0.83]), POP)
    fresh = refresh_population(pop, np.array([3000.0]), np.array([0.83]), 1.0)
    hf = fresh.collateral_units * 3000 * 0.83 / fresh.debt_usd
    np.testing.assert_allclose(hf, [pop.entry_hf])


def test_population_path_shapes_and_deeper_crash_sells_more():
    params = load_lending_params().population
    lt, bonus = np.array([0.83, 0.78]), np.array([0.05, 0.05])
    t = np.arange(30)
    mild = np.stack([2000 * (1 - 0.005 * t), 30000 * (1 - 0.005 * t)], axis=-1)
    deep = np.stack([2000 * (1 - 0.02 * t), 30000 * (1 - 0.02 * t)], axis=-1)
    paths = np.stack([mild, deep])  # (B=2, T=30, N=2)
    sales = population_liquidations(
        paths, paths[:, 0], np.array([250e6, 150e6]), lt, bonus, 0.1, params
    )
    assert sales.shape == (2, 30, 2)
    assert np.all(sales >= 0)
    assert np.all(sales[1].sum(axis=0) > sales[0].sum(axis=0))
    # the path function is the step function in a loop
    pop = init_population(paths[:, 0], np.array([250e6, 150e6]), lt, params)
    step = population_step(pop, paths[:, 0], paths[:, 0], lt, bonus, 0.1, params)
    np.testing.assert_allclose(sales[:, 0], step.forced_sale_units)


# ---------------------------------------------------------------------------------------- config
def test_snapshot_matches_reference_table():
    params = load_lending_params()
    assert str(params.snapshot_date) == "2023-10-31"
    weth, wbtc, usdc = params.asset("WETH"), params.asset("BTC"), params.asset("USDC")
    assert (weth.ltv, weth.liq_threshold, weth.liq_bonus, weth.reserve_factor) == (
        0.805,
        0.83,
        0.05,
        0.15,
    )
    assert (wbtc.ltv, wbtc.liq_threshold, wbtc.rate_model.u_optimal, wbtc.rate_model.slope2) == (
        0.73,
        0.78,
        0.45,
        3.0,
    )
    assert (usdc.liq_bonus, usdc.rate_model.u_optimal, usdc.rate_model.slope1) == (
        0.045,
        0.90,
        0.035,
    )
    assert all(params.asset(a).assumption for a in ("SOL", "LINK", "AVAX"))
    assert not any(params.asset(a).assumption for a in ("ETH", "BTC", "USDC"))
    with pytest.raises(ValueError, match="DOGE"):
        params.asset("DOGE")


def _raw_snapshot() -> dict:
    return load_lending_params().model_dump(mode="json")


def test_config_error_lt_not_above_ltv():
    raw = _raw_snapshot()
    raw["assets"]["WETH"]["liq_threshold"] = 0.80  # ltv 0.805
    with pytest.raises(
        ProtocolConfigError, match=r"asset WETH: liq_threshold=0.8 must be > ltv=0.805"
    ):
        load_lending_params(raw)


def test_config_error_lt_equal_to_ltv():
    raw = _raw_snapshot()
    raw["assets"]["SOL"]["ltv"] = 0.5  # liq_threshold 0.5
    with pytest.raises(
        ProtocolConfigError, match=r"asset SOL: liq_threshold=0.5 must be > ltv=0.5"
    ):
        load_lending_params(raw)


def test_config_error_negative_rate():
    raw = _raw_snapshot()
    raw["assets"]["USDC"]["rate_model"]["slope1"] = -0.01
    with pytest.raises(ProtocolConfigError, match=r"assets\.USDC\.rate_model\.slope1 = -0\.01"):
        load_lending_params(raw)


def test_config_error_bonus_out_of_range():
    raw = _raw_snapshot()
    raw["assets"]["WBTC"]["liq_bonus"] = 0.3
    with pytest.raises(ProtocolConfigError, match=r"assets\.WBTC\.liq_bonus = 0\.3.*0\.25"):
        load_lending_params(raw)


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    [
        (("assets", "WETH", "rate_model", "u_optimal"), 1.0, r"u_optimal = 1\.0"),
        (("assets", "WETH", "liq_protocol_fee"), 1.5, r"liq_protocol_fee = 1\.5"),
        (("close_factor", "default"), 0.0, r"close_factor\.default = 0\.0"),
        (("debt_asset",), "DAI", "debt_asset='DAI'"),
        (("utilization_by_regime", "upper"), 1.2, r"\[0\.0, 1\.2\] must lie in \[0, 1\]"),
        (("population", "hf_entry_min"), 3.5, "hf_entry_min=3.5 must be < hf_entry_max=3.0"),
    ],
)
def test_config_errors_name_the_field(path, value, pattern):
    raw = _raw_snapshot()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ProtocolConfigError, match=pattern):
        load_lending_params(raw)


def test_config_missing_file():
    with pytest.raises(ProtocolConfigError, match="not found"):
        load_lending_params("configs/protocols/nope.yaml")
