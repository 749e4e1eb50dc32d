"""A rebalance of one env through its pools, compiled (:func:`defialloc.envs.execution.rebalance.execute_rebalance`).

Every asset trades against the numeraire: a sell of ``-delta`` units (asset -> numeraire) or a buy
of ``delta * price / num`` numeraire units (numeraire -> asset), each split across the pair's fee
tiers by the router (which weighs the gas of touching one more pool, priced in the output token).
Sells fund the buys: when the cash after the sells and their gas cannot pay the buys and their gas,
the buys are scaled down pro rata (same split, re-quoted); when the sells cannot pay their own gas,
the env does not trade. Reserves move by the executed amounts. Same operations in the same order as
the numpy reference; per-env sums run over the assets in order.

Inputs in the scratch row ``w``: ``V_PRICE`` (USD), ``V_TARGET`` (target units), ``V_MASK`` (1.0
where the asset trades). Outputs: ``V_DELTA`` (units bought > 0 / sold < 0), ``V_TRADED`` (USD
market value of each order's input) and the return value ``(cash_delta, fees, slippage, gas)``
(numeraire units, then USD).
"""

from __future__ import annotations

from numba import njit

from defialloc.envs.compiled.kernels_amm import amount_out, route_order
from defialloc.envs.compiled.params import (
    F_FEE,
    F_KEEP,
    F_OVERHEAD_UNITS,
    F_UNITS_PER_POOL,
    IP_GAS_ON,
    IP_K,
    IP_RES,
    IP_UNITS,
)
from defialloc.envs.compiled.scratch import (
    M_POOL_IN,
    M_POOL_OUT,
    M_RIN,
    M_ROUT,
    V_AMOUNT,
    V_DELTA,
    V_IN_PRICE,
    V_MASK,
    V_OUT_PRICE,
    V_PRICE,
    V_SIDE,
    V_TARGET,
    V_TOTAL_IN,
    V_TOTAL_OUT,
    V_TRADED,
    W_OUT,
    W_RIN,
    W_ROUT,
    W_SPLIT,
    mat,
    vec,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def rebalance(b, n, cash, num, usd_per_gas, extra, fstate, w, fp, ip):
    """Trade env ``b``'s masked assets toward their target units; see the module docstring.

    ``extra`` (numeraire units, <= 0 to hold cash back) is added to the cash the buys may use.
    Mutates the pools in ``fstate`` (not the units or cash: the caller adds the deltas).
    """
    k = ip[IP_K]
    res = ip[IP_RES]
    units = ip[IP_UNITS]
    gas_on = ip[IP_GAS_ON] != 0
    price = vec(V_PRICE, n)
    amount_at = vec(V_AMOUNT, n)
    side_at = vec(V_SIDE, n)
    in_p = vec(V_IN_PRICE, n)
    out_p = vec(V_OUT_PRICE, n)
    tot_out = vec(V_TOTAL_OUT, n)
    tot_in = vec(V_TOTAL_IN, n)
    traded = vec(V_TRADED, n)
    delta_at = vec(V_DELTA, n)
    pool_in = mat(M_POOL_IN, n, k)
    pool_out = mat(M_POOL_OUT, n, k)
    rin = mat(M_RIN, n, k)
    rout = mat(M_ROUT, n, k)

    any_order = False
    for i in range(n):
        delta = 0.0
        if w[vec(V_MASK, n) + i] != 0.0:
            delta = w[vec(V_TARGET, n) + i] - fstate[b, units + i]
        side = 1.0 if delta < 0.0 else (2.0 if delta > 0.0 else 0.0)
        w[side_at + i] = side
        if side != 0.0:
            any_order = True
        if side == 1.0:
            w[amount_at + i] = delta * -1.0
        elif side == 2.0:
            w[amount_at + i] = delta * (w[price + i] / num)
        else:
            w[amount_at + i] = 0.0
    if not any_order:
        for i in range(n):
            w[delta_at + i] = 0.0
            w[traded + i] = 0.0
        return 0.0, 0.0, 0.0, 0.0

    sells_out = 0.0
    buys_in = 0.0
    pools_sell = 0.0
    pools_buy = 0.0
    orders_sell = 0.0
    orders_buy = 0.0
    for i in range(n):
        side = w[side_at + i]
        if side == 0.0:
            w[tot_out + i] = 0.0
            w[tot_in + i] = 0.0
            w[in_p + i] = num
            w[out_p + i] = w[price + i]
            for j in range(k):
                w[pool_in + i * k + j] = 0.0
                w[pool_out + i * k + j] = 0.0
            continue
        sell = side == 1.0
        w[in_p + i] = w[price + i] if sell else num
        w[out_p + i] = num if sell else w[price + i]
        for j in range(k):
            asset = fstate[b, res + j * n + i]
            reserve_num = fstate[b, res + (k + j) * n + i]
            w[W_RIN + j] = asset if sell else reserve_num
            w[W_ROUT + j] = reserve_num if sell else asset
            w[rin + i * k + j] = w[W_RIN + j]
            w[rout + i * k + j] = w[W_ROUT + j]
        pool_gas = 0.0
        if gas_on:
            pool_gas = (fp[F_UNITS_PER_POOL] * usd_per_gas) / w[out_p + i]
        amount = w[amount_at + i]
        route_order(amount, pool_gas, gas_on, w, fp, ip)
        total = 0.0
        touched = 0.0
        for j in range(k):
            w[pool_in + i * k + j] = w[W_SPLIT + j]
            w[pool_out + i * k + j] = w[W_OUT + j]
            total += w[W_OUT + j]
            if w[W_SPLIT + j] > 0.0:
                touched += 1.0
        w[tot_out + i] = total
        w[tot_in + i] = amount
        is_order = 1.0 if amount > 0.0 else 0.0
        if sell:
            sells_out += total
            pools_sell += touched
            orders_sell += is_order
        else:
            buys_in += amount
            pools_buy += touched
            orders_buy += is_order

    sell_gas = 0.0
    buy_gas = 0.0
    if gas_on:
        sell_gas = (
            fp[F_OVERHEAD_UNITS] * orders_sell + fp[F_UNITS_PER_POOL] * pools_sell
        ) * usd_per_gas
        buy_gas = (
            fp[F_OVERHEAD_UNITS] * orders_buy + fp[F_UNITS_PER_POOL] * pools_buy
        ) * usd_per_gas
    cash_after_sells = cash + sells_out - sell_gas / num + extra
    room_for_buys = (cash_after_sells - buy_gas / num) * (1.0 - 1e-12)
    cancel_all = cash_after_sells < 0.0
    short = buys_in > room_for_buys or cancel_all
    if short:
        scale = room_for_buys / (buys_in if buys_in > 0.0 else 1.0)
        scale = min(max(scale, 0.0), 1.0)
        if cancel_all:
            scale = 0.0
        if not scale > 0.0:
            buy_gas = 0.0
        if cancel_all:
            sell_gas = 0.0
        sells_out = 0.0
        buys_in = 0.0
        for i in range(n):
            side = w[side_at + i]
            if side == 0.0:  # no order: nothing to re-quote (its pools' reserves are not loaded)
                continue
            leg = scale if side == 2.0 else (0.0 if cancel_all else 1.0)
            total_out = 0.0
            total_in = 0.0
            for j in range(k):
                x = w[pool_in + i * k + j] * leg
                w[pool_in + i * k + j] = x
                y = amount_out(x, w[rin + i * k + j], w[rout + i * k + j], fp[F_KEEP + j])
                w[pool_out + i * k + j] = y
                total_out += y
                total_in += x
            w[tot_out + i] = total_out
            w[tot_in + i] = total_in
            if side == 1.0:
                sells_out += total_out
            elif side == 2.0:
                buys_in += total_in

    fees = 0.0
    slippage = 0.0
    for i in range(n):
        side = w[side_at + i]
        sell = side == 1.0
        fee_in = 0.0
        for j in range(k):
            x = w[pool_in + i * k + j]
            y = w[pool_out + i * k + j]
            a_at = res + j * n + i
            n_at = res + (k + j) * n + i
            if sell:
                fstate[b, a_at] = w[rin + i * k + j] + x
                fstate[b, n_at] = w[rout + i * k + j] - y
            elif side == 2.0:
                fstate[b, n_at] = w[rin + i * k + j] + x
                fstate[b, a_at] = w[rout + i * k + j] - y
            fee_in += x * fp[F_FEE + j]
        fee_usd = fee_in * w[in_p + i]
        value_in = w[tot_in + i] * w[in_p + i]
        slip = value_in - w[tot_out + i] * w[out_p + i]
        slip -= fee_usd
        fees += fee_usd
        slippage += slip
        w[traded + i] = value_in
        if sell:
            sold = w[amount_at + i] * (0.0 if cancel_all else 1.0) if short else w[amount_at + i]
            w[delta_at + i] = -sold
        else:
            w[delta_at + i] = w[tot_out + i]
    gas_usd = sell_gas + buy_gas
    return sells_out - buys_in - gas_usd / num, fees, slippage, gas_usd
