"""One env's trades at decision time ``t``, compiled (``PortfolioSimulator.execute`` and
:meth:`defialloc.envs.leverage.LeverageEngine.execute`).

Spot: assets whose target weight differs from the current one by more than the no-trade band are
rebalanced through the pools (an all-numeraire target closes every position). With protocols:
borrow first (its gas paid), rebalance toward ``w (1 + l) E``, repay from cash (a borrow above the
post-trade LTV capacity repays the excess), then perp orders at the mark with the taker fee, the
book scaled down to fit the margin. Same operations in the same order as the numpy reference.

The execution's record (value before, costs, turnover, override flag, intent) goes to ``rec[b]``.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.kernels_actions import clip1, current_weights, kill_switch, targets
from defialloc.envs.compiled.kernels_options import buyback_reserve, execute_options, option_targets
from defialloc.envs.compiled.kernels_rebalance import rebalance
from defialloc.envs.compiled.layout import (
    E_FEES,
    E_GAS,
    E_KILL,
    E_OPT_FEES,
    E_OPT_PREMIUM,
    E_OPT_SPREAD,
    E_SLIPPAGE,
    E_TURNOVER,
    E_VALUE_BEFORE,
    I_T,
    M_ETH,
    M_GAS,
    M_NUM,
    S_CASH,
    S_DEBT,
    S_VALUE,
)
from defialloc.envs.compiled.params import (
    A_IMF,
    A_LTV,
    F_BAND,
    F_BORROW_GAS_UNITS,
    F_LTV_BUFFER,
    F_MARGIN_BUFFER,
    F_PERP_FEE,
    F_PERP_GAS_UNITS,
    F_REPAY_GAS_UNITS,
    IP_ASSETS,
    IP_E_CURRENT,
    IP_E_MASK,
    IP_E_TARGET,
    IP_GAS_ON,
    IP_LENDING,
    IP_M_MARK,
    IP_M_SCAL,
    IP_OPTIONS,
    IP_PERP,
    IP_PERPS,
    IP_PROTOCOLS,
    IP_UNITS,
    IP_WARMUP,
)
from defialloc.envs.compiled.scratch import (
    V_DELTA,
    V_HEDGE,
    V_MASK,
    V_NEWPERP,
    V_O_OWED,
    V_PRICE,
    V_TARGET,
    V_TRADED,
    V_TUSD,
    V_WCUR,
    V_WTGT,
    vec,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def hold(b, fstate, rec):
    """A step between decisions: no order, no cost, no override."""
    rec[b, E_VALUE_BEFORE] = fstate[b, S_VALUE]
    rec[b, E_FEES] = 0.0
    rec[b, E_SLIPPAGE] = 0.0
    rec[b, E_GAS] = 0.0
    rec[b, E_TURNOVER] = 0.0
    rec[b, E_KILL] = 0.0
    rec[b, E_OPT_FEES] = 0.0
    rec[b, E_OPT_SPREAD] = 0.0
    rec[b, E_OPT_PREMIUM] = 0.0


@njit(**JIT)
def execute_env(b, n, actions, spot_only, fstate, istate, mtab, w, fp, ip, rec):
    """Trade env ``b`` toward its action's targets at its decision time (module docstring)."""
    tau = ip[IP_WARMUP] + istate[b, I_T]
    scal = ip[IP_M_SCAL]
    units = ip[IP_UNITS]
    price = vec(V_PRICE, n)
    for i in range(n):
        w[price + i] = mtab[b, tau, i]
    num = mtab[b, tau, scal + M_NUM]
    gwei = mtab[b, tau, scal + M_GAS]
    eth = mtab[b, tau, scal + M_ETH]
    usd_per_gas = (gwei * 1e-9) * eth if ip[IP_GAS_ON] else 0.0
    value = fstate[b, S_VALUE]
    lending = ip[IP_LENDING] != 0
    current_weights(b, n, value, num, fstate, w, ip)
    forced = kill_switch(b, value, lending, fstate, istate, fp, ip)
    lev = targets(b, n, value, num, actions, spot_only, forced, fstate, mtab, istate, w, fp, ip)
    options = ip[IP_OPTIONS] != 0
    picks = (0, 0, 0)
    if options:
        picks = option_targets(b, n, actions, spot_only, forced, fstate, w, fp, ip)
    opt_fee = 0.0
    opt_spread = 0.0
    rec[b, E_OPT_FEES] = 0.0
    rec[b, E_OPT_SPREAD] = 0.0
    rec[b, E_OPT_PREMIUM] = 0.0
    tgt = vec(V_WTGT, n)
    mask = vec(V_MASK, n)
    target = vec(V_TARGET, n)
    band = fp[F_BAND]
    flat = True
    for i in range(n):
        if w[tgt + i] != 0.0:
            flat = False
    borrow_gas = 0.0
    repay_gas = 0.0
    perp_fee = 0.0
    perp_gas = 0.0
    if ip[IP_PROTOCOLS] == 0:
        cur = vec(V_WCUR, n)
        for i in range(n):
            trade = abs(w[tgt + i] - w[cur + i]) > band
            if flat and fstate[b, units + i] > 0.0:
                trade = True
            w[mask + i] = 1.0 if trade else 0.0
            w[target + i] = w[tgt + i] * (value / w[price + i])
        cash = fstate[b, S_CASH]
        cash_delta, fees, slippage, gas = rebalance(
            b, n, cash, num, usd_per_gas, 0.0, fstate, w, fp, ip
        )
    else:
        eq = value if value > 0.0 else 0.0
        if lending:
            s = 0.0
            for i in range(n):
                s += w[tgt + i] * fp[ip[IP_ASSETS] + A_LTV * n + i]
            s = fp[F_LTV_BUFFER] * s
            lev = min(lev, s / (1.0 - s))
        else:
            lev = 0.0
        gross = (1.0 + lev) * eq
        tusd = vec(V_TUSD, n)
        for i in range(n):
            w[tusd + i] = w[tgt + i] * gross
        cash = fstate[b, S_CASH]
        debt = fstate[b, S_DEBT]
        move_debt = False
        gap = 0.0
        target_debt = 0.0
        borrow = 0.0
        if lending:
            target_debt = lev * eq
            gap = target_debt - debt * num
            move_debt = abs(gap) > band * eq or (target_debt <= 0.0 and debt > 0.0)
            borrow = gap if move_debt and gap > 0.0 else 0.0
            if borrow > 0.0:
                if ip[IP_GAS_ON]:
                    borrow_gas = fp[F_BORROW_GAS_UNITS] * (gwei * 1e-9) * eth
                if not cash * num + borrow >= borrow_gas:
                    borrow = 0.0
                    borrow_gas = 0.0
            else:
                borrow_gas = 0.0
            cash = cash + (borrow - borrow_gas) / num
            if not cash > 0.0:
                cash = 0.0
            debt = debt + borrow / num
        for i in range(n):
            held = fstate[b, units + i]
            trade = abs(w[tusd + i] - held * w[price + i]) > band * eq
            if flat and held > 0.0:
                trade = True
            w[mask + i] = 1.0 if trade else 0.0
            w[target + i] = w[tusd + i] / w[price + i]
        extra = 0.0  # numeraire units the buys leave for buying back calls the sells uncover
        if options:
            after = vec(V_O_OWED, n)
            sells = 0.0
            for i in range(n):
                held = fstate[b, units + i]
                w[after + i] = w[target + i] if w[mask + i] != 0.0 else held
                sells += max(held - w[after + i], 0.0) * w[price + i]
            need = buyback_reserve(b, n, tau, fstate, istate, mtab, w, fp, ip, after)
            extra = -(min(need, cash * num + 0.9 * sells) / num)
        cash_delta, fees, slippage, gas = rebalance(
            b, n, cash, num, usd_per_gas, extra, fstate, w, fp, ip
        )
        for i in range(n):
            fstate[b, units + i] = fstate[b, units + i] + w[vec(V_DELTA, n) + i]
        cash = cash + cash_delta
        if options:  # before the repay: covering the calls comes first
            cash = execute_options(
                b, n, tau, cash, num, eq, picks, fstate, istate, w, mtab, fp, ip, rec
            )
            opt_fee = rec[b, E_OPT_FEES]
            opt_spread = rec[b, E_OPT_SPREAD]
        if lending and move_debt:
            want = 0.0
            if gap < 0.0:
                want = min(-gap / num, debt)
            if target_debt <= 0.0:
                want = debt
            excess = 0.0
            if borrow > 0.0:
                capacity = 0.0
                for i in range(n):
                    capacity += (fstate[b, units + i] * w[price + i]) * fp[
                        ip[IP_ASSETS] + A_LTV * n + i
                    ]
                excess = max(debt * num - capacity, 0.0) / num
            want = min(max(want, excess), debt)
            if want > 0.0 and ip[IP_GAS_ON]:
                repay_gas = fp[F_REPAY_GAS_UNITS] * (gwei * 1e-9) * eth
            repay = max(min(want, cash - repay_gas / num), 0.0)
            if not repay > 0.0:
                repay_gas = 0.0
            if repay > 0.0 and repay >= debt:
                debt = 0.0
            else:
                debt = debt - repay
            cash = cash - repay - repay_gas / num
            if not cash > 0.0:
                cash = 0.0
        fstate[b, S_DEBT] = debt
        if ip[IP_PERPS]:
            cash, perp_fee, perp_gas = trade_perps(
                b, n, tau, cash, num, eq, gwei, eth, fstate, mtab, w, fp, ip
            )
        fstate[b, S_CASH] = cash
    if ip[IP_PROTOCOLS] == 0:
        for i in range(n):
            fstate[b, units + i] = fstate[b, units + i] + w[vec(V_DELTA, n) + i]
        fstate[b, S_CASH] = cash + cash_delta
    traded = 0.0
    for i in range(n):
        traded += w[vec(V_TRADED, n) + i]
    live = value if value > 0.0 else math.inf
    rec[b, E_VALUE_BEFORE] = value
    rec[b, E_FEES] = fees + perp_fee + opt_fee
    rec[b, E_SLIPPAGE] = slippage + opt_spread
    rec[b, E_GAS] = gas + borrow_gas + repay_gas + perp_gas
    rec[b, E_TURNOVER] = 0.5 * traded / live
    rec[b, E_KILL] = 1.0 if forced else 0.0
    cur = vec(V_WCUR, n)
    for i in range(n + 1):
        rec[b, ip[IP_E_CURRENT] + i] = w[cur + i]
        rec[b, ip[IP_E_TARGET] + i] = w[tgt + i]
    for i in range(n):
        rec[b, ip[IP_E_MASK] + i] = w[mask + i]


@njit(**JIT)
def trade_perps(b, n, tau, cash, num, eq, gwei, eth, fstate, mtab, w, fp, ip):
    """Move env ``b``'s perp book toward ``-h x target units`` within the margin
    (``LeverageEngine._trade_perps``); returns ``(cash, fee USD, gas USD)``.

    ``w[V_TUSD]`` holds the spot targets in USD, ``w[V_HEDGE]`` the hedge ratios.
    """
    perp = ip[IP_PERP]
    mark_at = ip[IP_M_MARK]
    price = vec(V_PRICE, n)
    hedge = vec(V_HEDGE, n)
    tusd = vec(V_TUSD, n)
    new = vec(V_NEWPERP, n)
    band = fp[F_BAND]
    assets = ip[IP_ASSETS]
    any_position = False
    for i in range(n):
        if w[hedge + i] != 0.0 or fstate[b, perp + i] != 0.0:
            any_position = True
    if not any_position:
        return cash, 0.0, 0.0
    margin = 0.0
    fee_bound = 0.0
    for i in range(n):
        old = fstate[b, perp + i]
        mark = mtab[b, tau, mark_at + i]
        want = (-clip1(w[hedge + i]) * w[tusd + i]) / w[price + i]
        trade = abs(want - old) * mark > band * eq or (want == 0.0 and old != 0.0)
        size = want if trade else old
        w[new + i] = size
        margin += (fp[assets + A_IMF * n + i] * abs(size)) * w[price + i]
        fee_bound += (abs(old) + abs(size)) * mark
    margin = fp[F_MARGIN_BUFFER] * margin
    cash_usd = cash * num
    room = cash_usd - fp[F_PERP_FEE] * fee_bound
    if margin > room:
        fit = room / (margin if margin > 0.0 else 1.0)
        scale = max(min(fit, 1.0), 0.0)
        for i in range(n):
            w[new + i] = w[new + i] * scale
    traded_notional = 0.0
    orders = 0.0
    for i in range(n):
        traded = abs(w[new + i] - fstate[b, perp + i])
        traded_notional += traded * mtab[b, tau, mark_at + i]
        if traded > 0.0:
            orders += 1.0
    fee = fp[F_PERP_FEE] * traded_notional
    gas = 0.0
    if fp[F_PERP_GAS_UNITS] != 0.0 and ip[IP_GAS_ON]:
        gas = (1.0 * (gwei * 1e-9) * eth) * (fp[F_PERP_GAS_UNITS] * orders)
    if fee + gas <= cash_usd:
        for i in range(n):
            fstate[b, perp + i] = w[new + i]
    else:
        fee = 0.0
        gas = 0.0
    cash = cash - (fee + gas) / num
    if not cash > 0.0:
        cash = 0.0
    return cash, fee, gas
