"""One env's perp book during the move, compiled (``defialloc.envs.leverage_move._settle_perps`` with
:func:`defialloc.envs.protocols.perps.perp_liquidation`).

Funding over the step is ``rate(t) x size x index(t)`` (longs pay when the rate is positive), the
PnL at the mark settles to cash, and the account is checked at the adverse price (the effective
low for longs, the high for shorts, times ``1 + basis(t + 1)``): below maintenance margin the whole
book closes there with the liquidation fee, and a loss beyond the margin goes to the venue's
insurance fund. Same operations in the same order as the numpy reference.
"""

from __future__ import annotations

from numba import njit

from defialloc.envs.compiled.params import (
    A_MMF,
    F_PERP_LIQ_FEE,
    IP_ASSETS,
    IP_M_BASIS,
    IP_M_FUNDING,
    IP_M_MARK,
    IP_PERP,
)
from defialloc.envs.compiled.scratch import V_ADVERSE, V_LOW, V_MARKADV, V_PRICE, vec

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def settle_perps(b, n, tau, cash, num1, fstate, mtab, w, fp, ip):
    """Funding, settlement and the margin check of env ``b``'s perps from ``tau`` to ``tau + 1``.

    ``cash`` (numeraire units) after interest; ``w[V_PRICE]`` the closes at ``tau`` (USD),
    ``w[V_LOW]`` the effective lows at ``tau + 1``. Returns ``(cash, funding USD, liquidation cost
    USD, insurance USD, liquidations 0/1)`` and closes the book in ``fstate`` when liquidated.
    """
    perp = ip[IP_PERP]
    mark_at = ip[IP_M_MARK]
    funding_at = ip[IP_M_FUNDING]
    basis_at = ip[IP_M_BASIS]
    assets = ip[IP_ASSETS]
    tau1 = tau + 1
    price0 = vec(V_PRICE, n)
    funding = 0.0
    pnl = 0.0
    any_size = False
    for i in range(n):
        size = fstate[b, perp + i]
        funding += (mtab[b, tau, funding_at + i] * size) * w[price0 + i]
        pnl += size * (mtab[b, tau1, mark_at + i] - mtab[b, tau, mark_at + i])
        if size != 0.0:
            any_size = True
    margin = cash * num1 - funding
    cash = (margin + pnl) / num1
    if not any_size:
        return cash, funding, 0.0, 0.0, 0
    adverse = vec(V_ADVERSE, n)
    mark_adv = vec(V_MARKADV, n)
    low = vec(V_LOW, n)
    move_adv = 0.0
    maintenance = 0.0
    for i in range(n):
        size = fstate[b, perp + i]
        index = mtab[b, tau1, 2 * n + i] if size < 0.0 else w[low + i]
        w[adverse + i] = index
        w[mark_adv + i] = index * (1.0 + mtab[b, tau1, basis_at + i])
        move_adv += size * (w[mark_adv + i] - mtab[b, tau, mark_at + i])
        maintenance += (fp[assets + A_MMF * n + i] * abs(size)) * index
    equity = margin + move_adv
    if not equity < maintenance:
        return cash, funding, 0.0, 0.0, 0
    # perp_liquidation at the adverse price
    total_notional = 0.0
    required = 0.0
    for i in range(n):
        notional = abs(fstate[b, perp + i]) * w[adverse + i]
        total_notional += notional
        required += notional * fp[assets + A_MMF * n + i]
    liquidated = equity < required and total_notional > 0.0
    fee = 0.0
    insurance = 0.0
    after = equity
    if liquidated:
        fee = min(fp[F_PERP_LIQ_FEE] * total_notional, max(equity, 0.0))
        after = max(equity - fee, 0.0)
        insurance = max(-equity, 0.0)
    cash = after / num1
    cost = 0.0
    for i in range(n):
        size = fstate[b, perp + i]
        cost += size * (mtab[b, tau1, mark_at + i] - w[mark_adv + i])
        if liquidated:
            fstate[b, perp + i] = size - size
    cost = cost + fee
    return cash, funding, cost, insurance, 1 if liquidated else 0
