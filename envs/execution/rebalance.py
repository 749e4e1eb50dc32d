"""Execute a rebalance toward target weights through the pools, for a batch of envs at once.

Every asset trades against the numeraire, so a move from asset A to asset B is two orders, A -> numeraire
then numeraire -> B (the hop through the numeraire). Sells and buys of all assets are routed in one
vectorized call; each order is split across the pair's fee tiers by :func:`route_order`, which also
decides how many pools are worth their gas.

Cash never goes negative: when the buys plus gas would overdraw the cash that the sells leave (plus any
``extra_cash`` such as a new borrow), the buys are scaled down pro rata (same split across pools,
re-quoted); if even the sells cannot pay their own gas, that env does not trade this step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.execution.costs import GasModel, TradeCosts
from envs.execution.pools import PoolBook
from envs.execution.router import route_order
from envs.protocols.amm import _amount_out_unchecked


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
    delta = np.where(trade_mask, target - units, 0.0)
    is_sell = delta < 0.0
    is_buy = delta > 0.0
    if not (is_sell.any() or is_buy.any()):
        zeros = np.zeros_like(units)
        return Fills(zeros, np.zeros(n_envs), TradeCosts.zeros(n_envs), zeros)

    num_col = numeraire_usd[:, None]
    amount_in = np.where(is_sell, -delta, delta * (price_usd / num_col))
    sell3 = is_sell[..., None]
    reserve_in = np.where(sell3, pools.reserve_asset, pools.reserve_num)
    reserve_out = np.where(sell3, pools.reserve_num, pools.reserve_asset)
    in_price_usd = np.where(is_sell, price_usd, num_col)
    out_price_usd = np.where(is_sell, num_col, price_usd)
    usd_per_gas = gas.usd_per_unit(gas_price_gwei, eth_usd)
    pool_gas_out = (gas.units_per_pool * usd_per_gas)[:, None] / out_price_usd
    route = route_order(
        amount_in, reserve_in, reserve_out, pools.fees, pool_gas_out, validate=False
    )

    pool_in, pool_out = route.amounts_in, route.amounts_out
    total_in, total_out = amount_in, route.amount_out
    active = amount_in > 0.0
    pools_used = route.n_pools
    sell_gas = gas.orders_usd((active & is_sell).sum(1), (pools_used * is_sell).sum(1), usd_per_gas)
    buy_gas = gas.orders_usd((active & is_buy).sum(1), (pools_used * is_buy).sum(1), usd_per_gas)
    sells_out = (total_out * is_sell).sum(1)
    buys_in = (amount_in * is_buy).sum(1)

    cash_after_sells = cash + sells_out - sell_gas / numeraire_usd
    if extra_cash is not None:
        cash_after_sells = cash_after_sells + extra_cash
    # the 1e-12 margin keeps float rounding from leaving cash at -1e-9 after an all-in buy
    room_for_buys = (cash_after_sells - buy_gas / numeraire_usd) * (1.0 - 1e-12)
    cancel_all = cash_after_sells < 0.0
    short = (buys_in > room_for_buys) | cancel_all
    if short.any():
        scale = np.where(
            short, np.clip(room_for_buys / np.where(buys_in > 0, buys_in, 1.0), 0.0, 1.0), 1.0
        )
        scale = np.where(cancel_all, 0.0, scale)
        buy_gas = np.where(scale > 0.0, buy_gas, 0.0)
        sell_gas = np.where(cancel_all, 0.0, sell_gas)
        leg_scale = np.where(is_buy, scale[:, None], np.where(cancel_all[:, None], 0.0, 1.0))
        pool_in = pool_in * leg_scale[..., None]
        pool_out = _amount_out_unchecked(pool_in, reserve_in, reserve_out, pools.fees)
        total_in = pool_in.sum(-1)
        total_out = pool_out.sum(-1)

    pools.reserve_asset = pools.reserve_asset + np.where(sell3, pool_in, -pool_out)
    pools.reserve_num = pools.reserve_num + np.where(sell3, -pool_out, pool_in)

    fee_usd = (pool_in @ pools.fees) * in_price_usd
    value_in_usd = total_in * in_price_usd
    slippage_usd = value_in_usd - total_out * out_price_usd - fee_usd
    gas_usd = sell_gas + buy_gas

    # a sell removes exactly the order amount (the router's split can differ from it by 1 ulp)
    sold = amount_in if not short.any() else amount_in * ~cancel_all[:, None]
    asset_delta = np.where(is_sell, -sold, total_out * is_buy)
    cash_delta = (total_out * is_sell).sum(1) - (total_in * is_buy).sum(1) - gas_usd / numeraire_usd
    costs = TradeCosts(fee_usd.sum(1), slippage_usd.sum(1), gas_usd)
    return Fills(asset_delta, cash_delta, costs, value_in_usd)
