"""One env's market move ``t -> t + 1``, compiled (``PortfolioSimulator.advance`` with
:func:`defialloc.envs.leverage_move.protocol_move`, ``write_off_negative_equity`` and the reward).

Order: the pools are arbitraged into their fee bands and rescaled to the new depth; with protocols,
interest accrues, the population is liquidated at the low (its pool sales deepen the low the agent
is checked at), the agent's lending position is liquidated at that low when its HF is below 1 (the
liquidator sells into the pools), the pools get their pre-sale reserves back (arbitrage), perps pay
funding and settle, and the perp account is liquidated when below maintenance at the adverse price;
then the portfolio is marked, negative equity written off, and the step scored. Same operations in
the same order as the numpy reference.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.kernels_amm import realign_pools, sell_ratio
from defialloc.envs.compiled.kernels_option_quotes import greek_totals
from defialloc.envs.compiled.kernels_options import close_out_options, move_options, option_value
from defialloc.envs.compiled.kernels_perps import settle_perps
from defialloc.envs.compiled.kernels_population import population_step
from defialloc.envs.compiled.kernels_reward import score
from defialloc.envs.compiled.layout import (
    E_CASH_DURING,
    E_DEBT_DURING,
    I_NOW,
    I_T,
    M_DEPTH,
    M_NUM,
    O_VALUE,
    P_CASH_GROWTH,
    P_DEBT_GROWTH,
    R_BAD_DEBT,
    R_COLLATERAL,
    R_DEBT_USD,
    R_DELTA_USD,
    R_FUNDING,
    R_HF,
    R_INSURANCE,
    R_INTEREST,
    R_LIQUIDATION,
    R_PENALTY,
    R_PERP_NOTIONAL,
    R_VALUE,
    S_CASH,
    S_DEBT,
    S_HF,
)
from defialloc.envs.compiled.params import (
    A_BONUS,
    A_LB,
    A_LT,
    A_PROTO_FEE,
    F_CF_DEFAULT,
    F_CF_THRESHOLD,
    F_FULL_CLOSE_BELOW,
    IP_ASSETS,
    IP_CASCADES,
    IP_CASH_EARNS,
    IP_E_LOW,
    IP_E_OPT_MOVE,
    IP_E_PERP_DURING,
    IP_E_SALES,
    IP_E_UNITS_DURING,
    IP_K,
    IP_LENDING,
    IP_M_PROT,
    IP_M_SCAL,
    IP_M_SUPPLY_GROWTH,
    IP_MAX_ROUNDS,
    IP_OPTIONS,
    IP_PERP,
    IP_PERPS,
    IP_PROTOCOLS,
    IP_RES,
    IP_SEIZURE,
    IP_SIDE,
    IP_UNITS,
    IP_WARMUP,
)
from defialloc.envs.compiled.scratch import (
    M_SAVED,
    V_BAG,
    V_COLL,
    V_LOW,
    V_PRICE,
    V_PRICE1,
    V_RECEIVED,
    V_SALES,
    V_SEIZED,
    mat,
    vec,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def _save_pools(b, n, fstate, w, ip):
    k = ip[IP_K]
    res = ip[IP_RES]
    saved = mat(M_SAVED, n, k)
    for j in range(2 * k * n):
        w[saved + j] = fstate[b, res + j]


@njit(**JIT)
def _restore_pools(b, n, fstate, w, ip):
    k = ip[IP_K]
    res = ip[IP_RES]
    saved = mat(M_SAVED, n, k)
    for j in range(2 * k * n):
        fstate[b, res + j] = w[saved + j]


@njit(**JIT)
def _liquidate(b, n, debt_usd, w, fp, ip):
    """The agent's liquidation calls at the effective low (``defialloc.envs.protocols.lending._liquidate``
    on ``bag = max(units, 0)`` in ``w[V_BAG]``, prices ``w[V_LOW]``): writes the seized units
    into ``w[V_SEIZED]`` and what the liquidator keeps into ``w[V_RECEIVED]``; returns the debt
    repaid (USD)."""
    assets = ip[IP_ASSETS]
    bag = vec(V_BAG, n)
    low = vec(V_LOW, n)
    coll = vec(V_COLL, n)
    seized_at = vec(V_SEIZED, n)
    full_below = fp[F_FULL_CLOSE_BELOW]
    for i in range(n):
        w[seized_at + i] = 0.0
    repaid_total = 0.0
    debt = debt_usd
    for _ in range(ip[IP_MAX_ROUNDS]):
        weighted = 0.0
        total = 0.0
        for i in range(n):
            c = w[bag + i] * w[low + i]
            w[coll + i] = c
            weighted += c * fp[assets + A_LT * n + i]
            total += c
        hf = weighted / debt if debt > 0.0 else math.inf
        full = hf <= fp[F_CF_THRESHOLD]
        if full_below > 0.0 and (total < full_below or debt < full_below):
            full = True
        cf = (1.0 if full else fp[F_CF_DEFAULT]) if hf < 1.0 else 0.0
        target = cf * debt
        if ip[IP_SEIZURE] == 0:  # largest_first: one collateral asset per call
            pick = 0
            for i in range(1, n):
                if w[coll + i] > w[coll + pick]:
                    pick = i
            lb_pick = fp[assets + A_LB * n + pick]
            repaid = min(target, w[coll + pick] / lb_pick)
            for i in range(n):
                seized_usd = repaid * lb_pick if i == pick else 0.0
                _seize(b, n, i, seized_usd, w)
        else:  # pro_rata
            max_lb = 0.0
            for i in range(n):
                if w[coll + i] > 0.0 and fp[assets + A_LB * n + i] > max_lb:
                    max_lb = fp[assets + A_LB * n + i]
            cap = total / max_lb if max_lb > 0.0 else 0.0
            repaid = min(target, cap)
            for i in range(n):
                share = w[coll + i] / total if total > 0.0 else 0.0
                _seize(b, n, i, repaid * share * fp[assets + A_LB * n + i], w)
        debt = max(debt - repaid, 0.0)
        repaid_total += repaid
    received = vec(V_RECEIVED, n)
    for i in range(n):
        bonus = fp[assets + A_BONUS * n + i]
        fee_units = w[seized_at + i] * (bonus / (1.0 + bonus)) * fp[assets + A_PROTO_FEE * n + i]
        w[received + i] = w[seized_at + i] - fee_units
    return repaid_total


@njit(**JIT)
def _seize(b, n, i, seized_usd, w):
    """Seize ``seized_usd`` of asset ``i`` at the low (snapped to the bag) in one call."""
    low = w[vec(V_LOW, n) + i]
    seized = seized_usd / low if low > 0.0 else 0.0
    bag = w[vec(V_BAG, n) + i]
    if seized >= bag * (1.0 - 1e-9):
        seized = bag
    w[vec(V_BAG, n) + i] = bag - seized
    w[vec(V_SEIZED, n) + i] += seized


@njit(**JIT)
def advance_env(
    b, n, fstate, istate, mtab, regime, w, fp, ip, rec, res_f, res_b, res_r, liquidations
):
    """Move env ``b`` from ``t`` to ``t + 1`` and mark it (see the module docstring); writes the
    value, reward, costs and protocol results to ``res_f[:, b]``, the end and kill-switch flags to
    ``res_b[:, b]``, the regime at ``t + 1`` to ``res_r[b]`` and the liquidation count to
    ``liquidations[b]``."""
    tau = ip[IP_WARMUP] + istate[b, I_T]
    tau1 = tau + 1
    scal = ip[IP_M_SCAL]
    units = ip[IP_UNITS]
    price1 = vec(V_PRICE1, n)
    for i in range(n):
        w[price1 + i] = mtab[b, tau1, i]
    num1 = mtab[b, tau1, scal + M_NUM]
    realign_pools(
        b, n, mtab[b, tau1, :n], num1, mtab[b, tau1, scal + M_DEPTH], fstate, fp, ip, ip[IP_SIDE]
    )
    value = 0.0
    protocols = ip[IP_PROTOCOLS] != 0
    if protocols:
        value = _protocol_move(
            b, n, tau, num1, fstate, istate, mtab, w, fp, ip, rec, res_f, liquidations
        )
    else:
        for i in range(n):
            value += fstate[b, units + i] * w[price1 + i]
        value = value + fstate[b, S_CASH] * num1
    res_f[R_VALUE, b] = value
    istate[b, I_T] += 1
    istate[b, I_NOW] += 1
    score(b, fstate, istate, rec, res_f, res_b, fp, ip)
    res_r[b] = regime[b, tau1]
    if protocols:
        _protocol_fields(b, n, num1, fstate, w, fp, ip, res_f)
    if ip[IP_OPTIONS]:
        greek_totals(b, n, tau1, fstate, mtab, ip, res_f, R_DELTA_USD)


@njit(**JIT)
def _protocol_move(b, n, tau, num1, fstate, istate, mtab, w, fp, ip, rec, res_f, liquidations):
    """Interest, cascades, liquidations, perps and the write-off of env ``b`` (after the pools
    are realigned); returns the marked value (USD, >= 0)."""
    units = ip[IP_UNITS]
    perp = ip[IP_PERP]
    prot = ip[IP_M_PROT]
    assets = ip[IP_ASSETS]
    tau1 = tau + 1
    price1 = vec(V_PRICE1, n)
    price = vec(V_PRICE, n)
    low = vec(V_LOW, n)
    lending = ip[IP_LENDING] != 0
    cash = fstate[b, S_CASH]
    debt_held = fstate[b, S_DEBT]
    debt = debt_held
    rec[b, E_CASH_DURING] = cash
    rec[b, E_DEBT_DURING] = debt_held
    for i in range(n):
        rec[b, ip[IP_E_UNITS_DURING] + i] = fstate[b, units + i]
        rec[b, ip[IP_E_PERP_DURING] + i] = fstate[b, perp + i]
        w[price + i] = mtab[b, tau, i]  # close at t (perp funding)
        w[low + i] = mtab[b, tau1, n + i]
    interest = 0.0
    if lending:
        debt = debt * mtab[b, tau, prot + P_DEBT_GROWTH]
        earned = 0.0
        growth = ip[IP_M_SUPPLY_GROWTH]
        for i in range(n):
            held = fstate[b, units + i]
            grown = held * mtab[b, tau, growth + i]
            earned += (grown - held) * w[price1 + i]
            fstate[b, units + i] = grown
        interest = (debt - debt_held) * num1 - earned
        if ip[IP_CASH_EARNS]:
            grown_cash = cash * mtab[b, tau, prot + P_CASH_GROWTH]
            interest = interest - (grown_cash - cash) * num1
            cash = grown_cash
    saved = False
    sales = vec(V_SALES, n)
    for i in range(n):
        w[sales + i] = 0.0
    if ip[IP_CASCADES]:
        if population_step(
            b, n, w[low : low + n], w[price1 : price1 + n], w[sales : sales + n], fstate, fp, ip
        ):
            _save_pools(b, n, fstate, w, ip)
            saved = True
            for i in range(n):
                if w[sales + i] > 0.0:
                    w[low + i] = w[low + i] * sell_ratio(b, n, i, w[sales + i], fstate, w, fp, ip)
    penalty = 0.0
    count = 0
    if lending:
        debt_usd = debt * num1
        weighted = 0.0
        for i in range(n):
            weighted += (fstate[b, units + i] * w[low + i]) * fp[assets + A_LT * n + i]
        if weighted < debt_usd:
            bag = vec(V_BAG, n)
            for i in range(n):
                held = fstate[b, units + i]
                w[bag + i] = held if held > 0.0 else 0.0
            repaid = _liquidate(b, n, debt_usd, w, fp, ip)
            seized_value = 0.0
            for i in range(n):
                seized = w[vec(V_SEIZED, n) + i]
                fstate[b, units + i] = fstate[b, units + i] - seized
                seized_value += seized * w[price1 + i]
            left = debt - repaid / num1
            debt = 0.0 if left <= 1e-12 * debt else left
            penalty = seized_value - repaid
            if repaid > 0.0:
                count += 1
            if not saved:
                _save_pools(b, n, fstate, w, ip)
                saved = True
            received = vec(V_RECEIVED, n)
            for i in range(n):
                if w[received + i] > 0.0:
                    sell_ratio(b, n, i, w[received + i], fstate, w, fp, ip)
    fstate[b, S_DEBT] = debt
    if saved:
        _restore_pools(b, n, fstate, w, ip)
    funding = 0.0
    perp_cost = 0.0
    insurance = 0.0
    if ip[IP_PERPS]:
        cash, funding, perp_cost, insurance, closed = settle_perps(
            b, n, tau, cash, num1, fstate, mtab, w, fp, ip
        )
        count += closed
    options = ip[IP_OPTIONS] != 0
    opt_liq = 0.0
    if options:
        cash, opt_insurance, opt_liq, opt_count = move_options(
            b, n, tau1, cash, num1, fstate, istate, mtab, w, fp, ip, rec
        )
        insurance = insurance + opt_insurance
        count += opt_count
    fstate[b, S_CASH] = cash
    for i in range(n):
        rec[b, ip[IP_E_LOW] + i] = w[low + i]
        rec[b, ip[IP_E_SALES] + i] = w[sales + i]
    value = 0.0
    for i in range(n):
        value += fstate[b, units + i] * w[price1 + i]
    value = value + (cash - debt) * num1
    if options:
        value = value + option_value(b, n, fstate, ip)
    bad_debt = 0.0
    if value < 0.0:  # limited liability: the shortfall is bad debt, every position closes
        bad_debt = -value
        for i in range(n):
            fstate[b, units + i] = 0.0
            fstate[b, perp + i] = 0.0
        fstate[b, S_CASH] = 0.0
        fstate[b, S_DEBT] = 0.0
        if options:
            close_out_options(b, n, fstate, istate, ip)
        value = 0.0
    if options:
        rec[b, ip[IP_E_OPT_MOVE] + O_VALUE] = option_value(b, n, fstate, ip)
    res_f[R_INTEREST, b] = interest
    res_f[R_PENALTY, b] = penalty
    res_f[R_INSURANCE, b] = insurance
    res_f[R_BAD_DEBT, b] = bad_debt
    res_f[R_FUNDING, b] = funding
    res_f[R_LIQUIDATION, b] = penalty + perp_cost + opt_liq
    liquidations[b] = count
    return value


@njit(**JIT)
def _protocol_fields(b, n, num1, fstate, w, fp, ip, res_f):
    """The state fields of a protocol step (``protocol_step_fields``): HF at the close of ``t + 1``
    (inf without debt or without lending), debt and collateral USD, perp notional."""
    units = ip[IP_UNITS]
    perp = ip[IP_PERP]
    assets = ip[IP_ASSETS]
    price1 = vec(V_PRICE1, n)
    debt_usd = fstate[b, S_DEBT] * num1
    weighted = 0.0
    collateral = 0.0
    notional = 0.0
    for i in range(n):
        value = fstate[b, units + i] * w[price1 + i]
        weighted += value * fp[assets + A_LT * n + i]
        collateral += value
        notional += abs(fstate[b, perp + i]) * w[price1 + i]
    hf = math.inf
    if ip[IP_LENDING] and debt_usd > 0.0:
        hf = weighted / debt_usd
    fstate[b, S_HF] = hf
    res_f[R_HF, b] = hf
    res_f[R_DEBT_USD, b] = debt_usd
    res_f[R_COLLATERAL, b] = collateral if ip[IP_LENDING] else 0.0
    res_f[R_PERP_NOTIONAL, b] = notional
