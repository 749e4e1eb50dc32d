"""The borrower population behind cascades, one env's step compiled
(:meth:`defialloc.envs.leverage_population.BorrowerCascades.step`).

Each (asset, bucket) of the env's population (``fstate[b, pop:]``: collateral units ``(N, Kb)``,
debt USD ``(N, Kb)``, fresh bucket sizes ``(N, Kb)``) is liquidated when the step's low crosses its
liquidation price (``units * low * LT < debt``; up to ``max_rounds_per_step`` calls at
``low + (1 - lag) (crossing - low)``, Aave close factor and bonus, buckets left empty with debt
written off), then ``refresh_rate`` of every bucket re-levers at the close. The liquidators sell
``sell_fraction`` of what they keep, and ``pool_share_of_sales`` of that enters the agent's pools:
those units per asset are written to ``sales``. Same operations as
:func:`defialloc.envs.protocols.borrowers.liquidate_hit_buckets` / ``refresh_buckets``; per-asset sums over
the buckets run in bucket order (numpy's pairwise sum can differ by an ulp).
"""

from __future__ import annotations

from numba import njit

from defialloc.envs.compiled.params import (
    A_KEPT,
    A_LB,
    A_LT,
    F_POP_CF_DEFAULT,
    F_POP_CF_THRESHOLD,
    F_POP_LAG,
    F_POP_REFRESH,
    F_POP_SELL,
    F_POP_SHARE,
    IP_ASSETS,
    IP_INV_HF,
    IP_KB,
    IP_POP,
    IP_POP_ROUNDS,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def _call(units, debt, p_low, threshold, lb, liquidatable, fp):
    """One liquidationCall on a bucket: ``(units, debt, seized, repaid)`` after it
    (``defialloc.envs.protocols.borrowers._liquidation_call``)."""
    lag = fp[F_POP_LAG]
    if lag < 1.0:
        crossing = debt / (units * threshold) if units > 0.0 else 0.0
        gap = crossing - p_low
        price = p_low + (1.0 - lag) * (gap if gap > 0.0 else 0.0)
    else:
        price = p_low
    value = units * price
    full = value * threshold <= fp[F_POP_CF_THRESHOLD] * debt
    repaid = debt if full else fp[F_POP_CF_DEFAULT] * debt
    if not liquidatable:
        repaid = 0.0
    cap = value / lb
    if cap < repaid:
        repaid = cap
    seized = repaid * lb / price
    if seized >= units * (1.0 - 1e-9):
        seized = units
    return units - seized, debt - repaid, seized, repaid


@njit(**JIT)
def population_step(b, n, low, close, sales, fstate, fp, ip):
    """Liquidate env ``b``'s population at the low ``low`` ``(N,)`` and refresh it at the close
    ``close`` ``(N,)``; writes the units sold into the pools ``(N,)`` into ``sales``; returns
    whether any were."""
    kb = ip[IP_KB]
    pop = ip[IP_POP]
    debt_at = pop + n * kb
    fresh_at = pop + 2 * n * kb
    assets = ip[IP_ASSETS]
    rounds = ip[IP_POP_ROUNDS]
    any_sale = False
    for i in range(n):
        threshold = fp[assets + A_LT * n + i]
        lb = fp[assets + A_LB * n + i]
        low_threshold = low[i] * threshold
        seized_row = 0.0
        repaid_row = 0.0
        hit_row = False
        for j in range(kb):
            u = fstate[b, pop + i * kb + j]
            d = fstate[b, debt_at + i * kb + j]
            if not u * low_threshold < d:
                continue
            hit_row = True
            for r in range(rounds):
                liquidatable = True
                if r > 0:
                    liquidatable = u * (low[i] * threshold) < d
                    if not liquidatable:
                        break
                u, d, seized, repaid = _call(u, d, low[i], threshold, lb, liquidatable, fp)
                if u <= 0.0 and d > 0.0:  # no collateral left: the rest is bad debt
                    d = 0.0
                seized_row += seized
                repaid_row += repaid
            fstate[b, pop + i * kb + j] = u
            fstate[b, debt_at + i * kb + j] = d
        sale = 0.0
        if hit_row:
            kept = fp[assets + A_KEPT * n + i]
            sale = (fp[F_POP_SELL] * seized_row) * kept * fp[F_POP_SHARE]
        sales[i] = sale
        if sale > 0.0:
            any_sale = True
    rate = fp[F_POP_REFRESH]
    if rate != 0.0:
        inv_hf = ip[IP_INV_HF]
        keep = 1.0 - rate
        for i in range(n):
            close_threshold = close[i] * fp[assets + A_LT * n + i]
            for j in range(kb):
                fresh = fstate[b, fresh_at + i * kb + j]
                fresh_debt = (fresh * (close_threshold * rate)) * fp[inv_hf + j]
                fstate[b, pop + i * kb + j] = fstate[b, pop + i * kb + j] * keep + fresh * rate
                fstate[b, debt_at + i * kb + j] = (
                    fstate[b, debt_at + i * kb + j] * keep + fresh_debt
                )
    return any_sale
