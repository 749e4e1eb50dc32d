"""Ethereum gas: the USD cost of an operation and the gas units of the operations the simulator models.

``cost_usd = gas_units * gas_price_gwei * 1e-9 * eth_usd`` (1 gwei = 1e-9 ETH per gas unit).

Gas units (mainnet, from the protocols' contracts and tests, see
``shared/reference/defi-mechanics.md``) vary with the call path, warm/cold storage slots and token
transfer hooks, so the reference gives ranges; :data:`GAS_UNITS_RANGE` keeps them and
:data:`GAS_UNITS` picks one documented value per operation (the midpoint of the range, unless noted).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from defialloc.envs.protocols.amm import check_in_range

__all__ = ["GAS_UNITS", "GAS_UNITS_RANGE", "gas_cost_usd", "swap_gas_units"]

GAS_UNITS_RANGE: MappingProxyType[str, tuple[int, int]] = MappingProxyType(
    {
        "uniswap_v2_pair_swap": (73_000, 73_000),
        "uniswap_v2_router_swap": (102_000, 102_000),
        "uniswap_v3_swap": (99_000, 153_000),
        "aave_supply": (140_000, 165_000),
        "aave_borrow": (209_000, 245_000),
        "aave_repay": (146_000, 151_000),
        "aave_withdraw": (155_000, 221_000),
        "aave_liquidation_call": (312_000, 435_000),
    }
)

GAS_UNITS: MappingProxyType[str, int] = MappingProxyType(
    {
        # One UniswapV2Pair.swap (reserves update, transfer out): the per-pool cost of a route.
        "uniswap_v2_pair_swap": 73_000,
        # Router call through one pool (transferFrom in, path checks, pair swap): 102k in all.
        "uniswap_v2_router_swap": 102_000,
        # What a router call costs on top of its pair swaps: 102k - 73k.
        "uniswap_v2_router_overhead": 29_000,
        "uniswap_v3_swap": 126_000,
        "aave_supply": 152_500,
        "aave_borrow": 227_000,
        "aave_repay": 148_500,
        "aave_withdraw": 188_000,
        "aave_liquidation_call": 373_500,
        # ASSUMPTION, not in the reference: open / close a perp position through an order router plus
        # keeper execution (GMX-v2-like, oracle update included). Order of magnitude of an Aave
        # liquidationCall; configure per venue (dYdX v4 charges no gas).
        "perp_open": 350_000,
        "perp_close": 350_000,
    }
)


def gas_cost_usd(
    gas_units: float | np.ndarray, gas_price_gwei: float | np.ndarray, eth_usd: float | np.ndarray
) -> np.ndarray:
    """USD cost of ``gas_units`` at ``gas_price_gwei`` (gwei per unit) and ETH price ``eth_usd``.

    All arguments broadcast and must be finite and ``>= 0``. Example: a Uniswap v2 router swap,
    102,000 units at 30 gwei with ETH at $2,000, costs ``102_000 * 30e-9 * 2000 = $6.12``.
    """
    units = check_in_range("gas_units", gas_units, 0.0, high_open=True)
    price = check_in_range("gas_price_gwei", gas_price_gwei, 0.0, high_open=True)
    eth = check_in_range("eth_usd", eth_usd, 0.0, high_open=True)
    return units * (price * 1e-9) * eth


def usd_per_gas_unit(gas_price_gwei: np.ndarray, eth_usd: np.ndarray) -> np.ndarray:
    """:func:`gas_cost_usd` of one gas unit (bit for bit: ``1.0 * x == x``), without validation.

    For hot paths whose inputs were validated upstream (the market path that supplies them).
    """
    return (gas_price_gwei * 1e-9) * eth_usd


def swap_gas_units(
    n_orders: int | np.ndarray,
    n_pools: int | np.ndarray,
    overhead_units: float = GAS_UNITS["uniswap_v2_router_overhead"],
    units_per_pool: float = GAS_UNITS["uniswap_v2_pair_swap"],
) -> np.ndarray:
    """Gas units of ``n_orders`` router calls touching ``n_pools`` pools in all (broadcasting).

    ``overhead * n_orders + per_pool * n_pools``; with the defaults one order through one pool is
    the 102k of a Uniswap v2 router swap.
    """
    orders = check_in_range("n_orders", n_orders, 0.0, high_open=True)
    pools = check_in_range("n_pools", n_pools, 0.0, high_open=True)
    return overhead_units * orders + units_per_pool * pools
