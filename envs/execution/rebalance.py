"""Execute a rebalance toward target weights through the pools, for a batch of envs at once.

Every asset trades against the numeraire, so a move from asset A to asset B is two orders, A -> numeraire
then numeraire -> B (the hop through the numeraire). Sells and buys of all assets are routed in one
vectorized call; each order is split across the pair's fee tiers by :func:`route_order`.

Cash never goes negative: when the buys plus gas would overdraw the cash that the sells leave, the buys
are scaled down pro rata (same split across pools, re-quoted); if even the sells cannot pay their own
gas, that env does not trade this step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.execution.costs import GasModel, TradeCosts
from envs.execution.pools import PoolBook
from envs.execution.router import route_order
from envs.protocols.amm import get_amount_out


@dataclass
class Fills:
    """Result of one rebalance: position changes ``(B, N)`` in asset units and numeraire units ``(B,)``."""

    asset_delta: np.ndarray
    cash_delta: np.ndarray
    costs: TradeCosts
    traded_usd: np.ndarray  # (B, N) market value of each asset's order (sells and buys, positive)


def execute_rebalance(
    units: np.ndarray,
    cash: np.ndarray,
    target_weights: np.ndarray,
    trade_mask: np.ndarray,
    price_usd: np.ndarray,
    numeraire_usd: np.ndarray,
    pools: PoolBook,
    gas: GasModel,
    gas_price_gwei: np.ndarray,
    eth_usd: np.ndarray,
) -> Fills:
    """Trade toward ``target_weights`` (``(B, N+1)``, cash last) for the assets in ``trade_mask``.

    Mutates ``pools`` (the trades move the reserves); does not mutate ``units``/``cash``.
    Prices are market prices at the decision time, USD per unit; the numeraire is ``numeraire_usd``.
    """
    n_envs = units.shape[0]
    value = (units * price_usd).sum(axis=1) + cash * numeraire_usd
    target_units = target_weights[:, :-1] * value[:, None] / price_usd
    delta = np.where(trade_mask, target_units - units, 0.0)
    is_sell = delta < 0.0
    is_buy = delta > 0.0
    if not (is_sell.any() or is_buy.any()):
        return Fills(np.zeros_like(units), np.zeros(n_envs), TradeCosts.zeros(n_envs), np.zeros_like(units))

    price_num = price_usd / numeraire_usd[:, None]
    amount_in = np.where(is_sell, -delta, delta * price_num)
    sell3 = is_sell[..., None]
    reserve_in = np.where(sell3, pools.reserve_asset, pools.reserve_num)
    reserve_out = np.where(sell3, pools.reserve_num, pools.reserve_asset)
    pool_gas_usd = gas.per_pool_usd(gas_price_gwei, eth_usd)[:, None]
    out_price_usd = np.where(is_sell, numeraire_usd[:, None], price_usd)
    route = route_order(amount_in, reserve_in, reserve_out, pools.fees, gas_per_pool_out=pool_gas_usd / out_price_usd)

    pool_in = route.amounts_in
    pool_out = route.amounts_out
    active = amount_in > 0.0
    sell_gas = gas.orders_usd((active & is_sell).sum(1), np.where(is_sell, route.n_pools, 0).sum(1), gas_price_gwei, eth_usd)
    buy_gas = gas.orders_usd((active & is_buy).sum(1), np.where(is_buy, route.n_pools, 0).sum(1), gas_price_gwei, eth_usd)
    sells_out = np.where(is_sell, pool_out.sum(-1), 0.0).sum(1)
    buys_in = np.where(is_buy, amount_in, 0.0).sum(1)

    cash_after_sells = cash + sells_out - sell_gas / numeraire_usd
    cancel_all = cash_after_sells < 0.0
    room_for_buys = cash_after_sells - buy_gas / numeraire_usd
    scale = np.ones(n_envs)
    short = (buys_in > room_for_buys) & (buys_in > 0.0)
    if short.any():
        scale = np.where(short, np.clip(room_for_buys / np.where(buys_in > 0, buys_in, 1.0), 0.0, 1.0), 1.0)
    scale = np.where(cancel_all, 0.0, scale)
    buy_gas = np.where(scale > 0.0, buy_gas, 0.0)
    sell_gas = np.where(cancel_all, 0.0, sell_gas)
    if (scale < 1.0).any():
        leg_scale = np.where(is_buy, scale[:, None], np.where(cancel_all[:, None], 0.0, 1.0))[..., None]
        pool_in = pool_in * leg_scale
        pool_out = get_amount_out(pool_in, reserve_in, reserve_out, pools.fees)

    total_in = pool_in.sum(-1)
    total_out = pool_out.sum(-1)
    pools.reserve_asset = pools.reserve_asset + np.where(sell3, pool_in, -pool_out)
    pools.reserve_num = pools.reserve_num + np.where(sell3, -pool_out, pool_in)

    in_price_usd = np.where(is_sell, price_usd, numeraire_usd[:, None])
    fee_usd = (pool_in * pools.fees).sum(-1) * in_price_usd
    value_in_usd = total_in * in_price_usd
    slippage_usd = value_in_usd - total_out * out_price_usd - fee_usd
    gas_usd = sell_gas + buy_gas

    asset_delta = np.where(is_sell, -total_in, np.where(is_buy, total_out, 0.0))
    cash_delta = np.where(is_sell, total_out, 0.0).sum(1) - np.where(is_buy, total_in, 0.0).sum(1)
    cash_delta = cash_delta - gas_usd / numeraire_usd
    costs = TradeCosts(fee_usd.sum(1), slippage_usd.sum(1), gas_usd)
    return Fills(asset_delta, cash_delta, costs, value_in_usd)
