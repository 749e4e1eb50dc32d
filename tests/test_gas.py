"""Gas cost formula and the gas-unit table."""

import numpy as np
import pytest

from defialloc.envs.protocols.gas import GAS_UNITS, GAS_UNITS_RANGE, gas_cost_usd, swap_gas_units


def test_router_swap_hand_value():
    # 102,000 units x 30 gwei x $2,000/ETH = 102,000 * 30e-9 ETH * 2000 = $6.12
    assert gas_cost_usd(102_000, 30, 2_000) == pytest.approx(6.12, rel=1e-14)
    assert gas_cost_usd(GAS_UNITS["uniswap_v2_router_swap"], 30.0, 2_000.0) == pytest.approx(
        6.12, rel=1e-14
    )
    # a crash-day spike: 1,000 gwei, ETH at $1,000 -> 102,000 * 1e-6 * 1000 = $102
    assert gas_cost_usd(102_000, 1_000, 1_000) == pytest.approx(102.0, rel=1e-14)


def test_broadcasting():
    units = np.array([[73_000.0], [102_000.0]])  # (2, 1)
    gwei = np.array([10.0, 30.0, 100.0])  # (3,)
    cost = gas_cost_usd(units, gwei, 2_000.0)
    assert cost.shape == (2, 3)
    np.testing.assert_allclose(cost[1], [2.04, 6.12, 20.4], rtol=1e-14)
    np.testing.assert_allclose(cost[0], 73_000 * gwei * 1e-9 * 2_000, rtol=1e-14)


def test_table_matches_reference_values():
    assert GAS_UNITS["uniswap_v2_pair_swap"] == 73_000
    assert GAS_UNITS["uniswap_v2_router_swap"] == 102_000
    assert GAS_UNITS["uniswap_v2_router_overhead"] + GAS_UNITS["uniswap_v2_pair_swap"] == 102_000
    for name, (low, high) in GAS_UNITS_RANGE.items():
        assert low <= GAS_UNITS[name] <= high, name
    assert GAS_UNITS["aave_liquidation_call"] == (312_000 + 435_000) / 2
    for name in (
        "aave_supply",
        "aave_borrow",
        "aave_repay",
        "aave_withdraw",
        "perp_open",
        "perp_close",
    ):
        assert GAS_UNITS[name] > 0
    with pytest.raises(TypeError):
        GAS_UNITS["aave_supply"] = 1  # read-only


def test_swap_gas_units():
    assert swap_gas_units(1, 1) == 102_000
    # two orders touching three pools: 2 * 29k + 3 * 73k
    assert swap_gas_units(2, 3) == 2 * 29_000 + 3 * 73_000
    np.testing.assert_array_equal(
        swap_gas_units(np.array([0, 1]), np.array([0, 2])), [0, 29_000 + 146_000]
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1.0, 30.0, 2000.0), r"gas_units must be in \[0, inf\); got -1.0"),
        (
            (1.0, np.array([30.0, -2.0]), 2000.0),
            r"gas_price_gwei must be in \[0, inf\); got -2.0 at index \(1,\)",
        ),
        ((1.0, 30.0, np.nan), r"eth_usd must be in \[0, inf\); got nan"),
        ((1.0, np.inf, 2000.0), r"gas_price_gwei .* got inf"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        gas_cost_usd(*args)
