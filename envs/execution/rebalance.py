"""Execute a rebalance toward target weights through the pools, for a batch of envs at once.

Every asset trades against the numeraire, so a move from asset A to asset B is two orders, A -> numeraire
then numeraire -> B (the hop through the numeraire). Sells and buys of all assets are routed in one
vectorized call; each order is split across the pair's fee tiers by the router
(:func:`~defialloc.envs.execution.router.route_order`'s core), which also decides how many pools are worth
their gas.

Cash never goes negative: when the buys plus gas would overdraw the cash that the sells leave (plus any
``extra_cash`` such as a new borrow), the buys are scaled down pro rata (same split across pools,
re-quoted); if even the sells cannot pay their own gas, that env does not trade this step.

Layout: the public arrays are ``(B, N)``; internally every per-order array is ``(N, B)`` and every
per-pool array ``(K, N, B)``, the pool book's layout (see :mod:`defialloc.envs.execution.pools`), so sums over
the assets are row additions. Sells and buys are stacked ``(2, N, B)`` (``side``) so that one call
sums both sides. Every quantity is computed with the same floating-point operations as the plain
``(B, N, K)`` formulation, so the fills are bit-for-bit the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from defialloc.envs.execution.costs import GasModel, TradeCosts
from defialloc.envs.execution.pools import PoolBook
from defialloc.envs.execution.router import route_pool_major
from defialloc.envs.protocols.amm import amount_out_keep


@dataclass
class Fills:
    """Result of one rebalance: position changes ``(B, N)`` in asset units and numeraire units ``(B,)``."""

    asset_delta: np.ndarray
    cash_delta: np.ndarray
    costs: TradeCosts
    traded_usd: np.ndarray  # (B, N) market value of each asset's order (sells and buys, positive)


def target_units(
    target_weights: np.ndarray, value_usd: np.ndarray, price_usd: np.ndarray
) -> np.ndarray:
    """Units ``(B, N)`` that put ``target_weights[:, :N]`` of ``value_usd`` in each asset."""
    return target_weights[:, :-1] * (value_usd[:, None] / price_usd)


@dataclass
class _Orders:
    """One rebalance's orders, ``(N, B)`` per order (see the module docstring for the layout).

    ``side`` repeats ``[sell, buy]`` three times and ``flows`` holds, row by row, what each side
    sums: one product and one sum give every per-env total at once (:data:`_SUMS`).
    """

    side: np.ndarray  # (6, N, B) bool: [sell, buy] * 3
    flows: np.ndarray  # (6, N, B): output, input, pools touched (x2), is an order (x2), per order
    in_price_usd: np.ndarray  # USD per unit of the order's input token
    out_price_usd: np.ndarray  # USD per unit of its output token
    reserves: np.ndarray  # (2, K, N, B): [0] the pools' input-token side, [1] their output side

    @property
    def is_sell(self) -> np.ndarray:
        return self.side[0]

    @property
    def amount_in(self) -> np.ndarray:
        return self.flows[1]


# Rows of (flows * side).sum(1): sells' output, buys' input, pools the sells / buys touch, sell / buy
# orders (counts are integer-valued floats, exact in any order of summation).
_SUMS = slice(0, 2), slice(2, 4), slice(4, 6)


def execute_rebalance(
    units: np.ndarray,
    cash: np.ndarray,
    target: np.ndarray,
    trade_mask: np.ndarray,
    price_usd: np.ndarray,
    numeraire_usd: np.ndarray,
    pools: PoolBook,
    gas: GasModel,
    gas_price_gwei: np.ndarray,
    eth_usd: np.ndarray,
    extra_cash: np.ndarray | None = None,
) -> Fills:
    """Trade the assets in ``trade_mask`` toward ``target`` units ``(B, N)``.

    Mutates ``pools`` (the trades move the reserves); does not mutate ``units``/``cash``.
    Prices are market prices at the decision time, USD per unit; the numeraire is ``numeraire_usd``.
    ``extra_cash`` ``(B,)`` (numeraire units) may fund buys beyond ``cash`` (e.g. a borrow).
    """
    n_envs = units.shape[0]
    num = numeraire_usd
    orders = _orders(units, target, trade_mask, price_usd, num, pools)
    if orders is None:
        zeros = np.zeros_like(units)
        return Fills(zeros, np.zeros(n_envs), TradeCosts.zeros(n_envs), zeros)
    is_sell, amount_in, reserves = orders.is_sell, orders.amount_in, orders.reserves
    usd_per_gas = gas.usd_per_unit(gas_price_gwei, eth_usd) if gas.enabled else None
    pool_in, pool_out = _route(orders, pools, gas, usd_per_gas)
    total_in, total_out = amount_in, pool_out.sum(0, out=orders.flows[0])
    if usd_per_gas is None:
        (sells_out, buys_in), zeros = _side_sums(orders, 2), np.zeros(n_envs)
        sell_gas = buy_gas = zeros
        gas_num = (zeros, zeros)
    else:
        _count_touched(pool_in, orders)
        sums = _side_sums(orders, 6)
        (sells_out, buys_in), pools_touched, n_orders = (sums[rows] for rows in _SUMS)
        sell_gas, buy_gas = gas.orders_usd(n_orders, pools_touched, usd_per_gas)
        gas_num = (sell_gas / num, buy_gas / num)

    cash_after_sells = cash + sells_out - gas_num[0]
    if extra_cash is not None:
        cash_after_sells = cash_after_sells + extra_cash
    # the 1e-12 margin keeps float rounding from leaving cash at -1e-9 after an all-in buy
    room_for_buys = (cash_after_sells - gas_num[1]) * (1.0 - 1e-12)
    cancel_all = cash_after_sells < 0.0
    short = (buys_in > room_for_buys) | cancel_all
    any_short = short.any()
    if any_short:
        scale = room_for_buys / np.where(buys_in > 0, buys_in, 1.0)
        np.minimum(np.maximum(scale, 0.0, out=scale), 1.0, out=scale)  # np.clip, cheaper
        scale = np.where(short, scale, 1.0)
        scale[cancel_all] = 0.0
        buy_gas = np.where(scale > 0.0, buy_gas, 0.0)
        sell_gas = np.where(cancel_all, 0.0, sell_gas)
        leg_scale = np.where(orders.side[1], scale, np.where(cancel_all, 0.0, 1.0))
        pool_in = pool_in * leg_scale
        pool_out = amount_out_keep(pool_in, reserves[0], reserves[1], pools.terms.keep)
        flows = np.empty((2, *total_in.shape))
        total_out = pool_out.sum(0, out=flows[0])
        total_in = pool_in.sum(0, out=flows[1])
        sells_out, buys_in = (flows * orders.side[:2]).sum(1)

    reserves[0] += pool_in
    reserves[1] -= pool_out
    pools.reserves = np.where(is_sell, reserves, reserves[::-1])  # back to [asset, numeraire]

    # (fee, slippage) per order, summed over the assets in one call
    order_costs = np.empty((2, *total_in.shape))
    fee_usd = np.multiply(
        _fees_in(pool_in, pools.terms.fee), orders.in_price_usd, out=order_costs[0]
    )
    value_in_usd = total_in * orders.in_price_usd
    slippage_usd = np.subtract(value_in_usd, total_out * orders.out_price_usd, out=order_costs[1])
    slippage_usd -= fee_usd
    fees, slippage = order_costs.sum(1)
    gas_usd = sell_gas + buy_gas

    # a sell removes exactly the order amount (the router's split can differ from it by 1 ulp);
    # an empty order has no output, so the buys' side can take total_out unmasked
    sold = amount_in * ~cancel_all if any_short else amount_in
    asset_delta = np.where(is_sell, -sold, total_out)
    cash_delta = sells_out - buys_in - gas_usd / num
    costs = TradeCosts(fees, slippage, gas_usd)
    return Fills(_transposed(asset_delta), cash_delta, costs, _transposed(value_in_usd))


def _orders(
    units: np.ndarray,
    target: np.ndarray,
    trade_mask: np.ndarray,
    price_usd: np.ndarray,
    num: np.ndarray,
    pools: PoolBook,
) -> _Orders | None:
    """The orders ``(N, B)`` that move ``units`` to ``target`` (``None`` when nothing trades)."""
    delta = _transposed(np.where(trade_mask, target - units, 0.0))
    side = np.empty((6, *delta.shape), dtype=bool)
    np.less(delta, 0.0, out=side[0::2])
    np.greater(delta, 0.0, out=side[1::2])
    is_sell = side[0]
    if not side[:2].any():
        return None
    price = _transposed(price_usd)
    flows = np.empty((6, *delta.shape))
    # a sell spends -delta units of the asset, a buy delta * price / num units of the numeraire
    np.multiply(delta, np.where(is_sell, _minus_one(delta.shape), price / num), out=flows[1])
    return _Orders(
        side,
        flows,
        np.where(is_sell, price, num),
        np.where(is_sell, num, price),
        np.where(is_sell, pools.reserves, pools.reserves[::-1]),
    )


def _route(
    orders: _Orders, pools: PoolBook, gas: GasModel, usd_per_gas: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Route the orders through their pools; returns ``(pool_in, pool_out)`` ``(K, N, B)``.

    The per-pool gas is priced in the output token; ``usd_per_gas`` ``None`` means gas is off.
    """
    reserves = orders.reserves
    n_pools, n_orders = reserves.shape[1], orders.amount_in.size
    pool_gas = None
    if usd_per_gas is not None:
        pool_gas = (gas.units_per_pool * usd_per_gas) / orders.out_price_usd
        pool_gas = pool_gas.reshape(n_orders)
    split, out = route_pool_major(
        orders.amount_in.reshape(n_orders),
        reserves[0].reshape(n_pools, n_orders),
        reserves[1].reshape(n_pools, n_orders),
        pools.flat_terms,
        pool_gas,
    )
    return split.reshape(reserves.shape[1:]), out.reshape(reserves.shape[1:])


def _count_touched(pool_in: np.ndarray, orders: _Orders) -> None:
    """Fill ``orders.flows[2:6]``: pools each order swaps in (twice) and whether it is an order (twice)."""
    n_pools = pool_in.shape[0]
    touched = np.empty((n_pools + 1, *pool_in.shape[1:]))
    np.greater(pool_in, 0.0, out=touched[:-1])
    np.greater(orders.amount_in, 0.0, out=touched[-1])
    counts = orders.flows[2:].reshape(4, -1)
    np.matmul(_counter(n_pools), touched.reshape(n_pools + 1, -1), out=counts)


@lru_cache(maxsize=8)
def _counter(n_pools: int) -> np.ndarray:
    """``(4, K + 1)`` 0/1 rows: pools touched (twice), then the order flag (twice); read-only."""
    counter = np.zeros((4, n_pools + 1))
    counter[:2, :-1] = 1.0
    counter[2:, -1] = 1.0
    counter.setflags(write=False)
    return counter


def _side_sums(orders: _Orders, n_rows: int) -> np.ndarray:
    """``(n_rows, B)``: the first ``n_rows`` flows summed over the assets on their side."""
    return (orders.flows[:n_rows] * orders.side[:n_rows]).sum(1)


@lru_cache(maxsize=8)
def _minus_one(shape: tuple[int, ...]) -> np.ndarray:
    """Read-only array of -1.0 (``np.where`` with an array operand is faster than with a scalar)."""
    minus_one = np.full(shape, -1.0)
    minus_one.setflags(write=False)
    return minus_one


def _fees_in(pool_in: np.ndarray, fee: np.ndarray) -> np.ndarray:
    """Swap fee of each order ``(N, B)`` in input units: its ``(K, N, B)`` split times the fee
    ``fee`` ``(K, N, B)``, summed over the tiers (elementwise: a BLAS product of ``(N B, K)`` rows
    needs a transposed copy and costs several times more; the sums differ by rounding only).
    """
    fees = np.multiply(pool_in, fee)
    return np.add.reduce(fees, axis=0)


def _transposed(matrix: np.ndarray) -> np.ndarray:
    """C-contiguous transpose of a 2-D array; one row or column transposes without a copy."""
    return matrix.T if 1 in matrix.shape else np.ascontiguousarray(matrix.T)
