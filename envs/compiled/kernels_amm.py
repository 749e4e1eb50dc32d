"""Constant-product pools for one env, compiled: routing one order, arbitrage, forced sales.

Scalar translations of :mod:`defialloc.envs.execution.router` (``route_pool_major``), :mod:`defialloc.envs.protocols.amm`
(``amount_out_keep``, ``band_multipliers``) and :mod:`defialloc.envs.execution.pools` (``realign``,
``sell_asset``), written operation by operation in the same order as the numpy reference, so the
two agree to the last bits except where numpy sums in another order (a few ulps).

Reserves live in an env's ``fstate`` row at ``res + (side * K + k) * N + i`` (side 0: asset units,
1: numeraire units; ``k`` the fee tier; ``i`` the asset). ``fp``/``ip`` are the packed parameters
(:mod:`defialloc.envs.compiled.params`); ``w`` is the env's scratch row (:mod:`defialloc.envs.compiled.scratch`).
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.params import (
    F_INV_KEEP,
    F_KEEP,
    IP_K,
    IP_RES,
    IP_SUBSET_MASKS,
    IP_SUBSETS,
)
from defialloc.envs.compiled.scratch import W_C, W_OUT, W_RIN, W_ROUT, W_SPLIT

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def amount_out(amount, r_in, r_out, keep):
    """Uniswap v2 output of ``amount`` into a pool (``amount_out_keep``: same operations)."""
    effective = amount * keep
    return (effective * r_out) / (effective + r_in)


@njit(**JIT)
def route_order(amount, gas, gas_on, w, fp, ip):
    """Split one order of ``amount`` input units across the ``K`` pools in ``w[W_RIN:]`` /
    ``w[W_ROUT:]`` (input / output reserves); writes the split into ``w[W_SPLIT:]`` and each pool's
    output into ``w[W_OUT:]``. ``gas``: gas of touching one pool in output units (``gas_on`` 0: none).

    Every non-empty subset of pools is scored by its forced split's output minus its gas (the
    water-filling closed form, infeasible subsets at -inf); the first best wins, as in
    ``route_pool_major``.
    """
    k = ip[IP_K]
    masks = ip[IP_SUBSET_MASKS]
    n_sub = ip[IP_SUBSETS]
    for j in range(k):
        w[W_C + j] = math.sqrt((fp[F_KEEP + j] * w[W_RIN + j]) * w[W_ROUT + j])
    best = 0
    best_net = -math.inf
    best_water = 0.0
    first = True
    for s in range(n_sub):
        mask = ip[masks + s]
        size = 0
        for j in range(k):
            size += (mask >> j) & 1
        if size == 1:
            j = 0
            while not (mask >> j) & 1:
                j += 1
            net = amount_out(amount, w[W_RIN + j], w[W_ROUT + j], fp[F_KEEP + j])
            water = 0.0
            feasible = True
        else:
            slope = 0.0
            level = 0.0
            outs = 0.0
            thr = -math.inf
            for j in range(k):
                if (mask >> j) & 1:
                    slope += w[W_C + j] * fp[F_INV_KEEP + j]
                    level += w[W_RIN + j] * fp[F_INV_KEEP + j]
                    outs += w[W_ROUT + j]
                    t = w[W_RIN + j] / w[W_C + j]
                    if t > thr:
                        thr = t
            level += amount
            water = level / slope
            net = outs - (slope * slope) / level
            feasible = water - thr >= 0.0
        if gas_on:
            net -= size * gas
        if not feasible:
            net = -math.inf
        if first or net > best_net:
            best, best_net, best_water, first = s, net, water, False
    mask = ip[masks + best]
    size = 0
    for j in range(k):
        size += (mask >> j) & 1
    if size == 1:
        for j in range(k):
            w[W_SPLIT + j] = amount if (mask >> j) & 1 else 0.0
    else:
        total = 0.0
        for j in range(k):
            split = 0.0
            if (mask >> j) & 1:
                split = (w[W_C + j] * best_water - w[W_RIN + j]) * fp[F_INV_KEEP + j]
                if split < 0.0:
                    split = 0.0
            w[W_SPLIT + j] = split
            total += split
        if total == 0.0:
            total = 1.0
        factor = amount / total
        for j in range(k):
            w[W_SPLIT + j] = w[W_SPLIT + j] * factor
    for j in range(k):
        w[W_OUT + j] = amount_out(w[W_SPLIT + j], w[W_RIN + j], w[W_ROUT + j], fp[F_KEEP + j])


@njit(**JIT)
def realign_pools(b, n, price, num, depth, fstate, fp, ip, side):
    """Arbitrage env ``b``'s pools into their fee bands around the market ``price`` ``(N,)`` USD
    (numeraire at ``num`` USD), then rescale each to its depth (``PoolBook.realign``).

    ``side``: offset in ``fp`` of the per-tier side values ``(K, N)`` USD at depth multiplier 1.
    """
    k = ip[IP_K]
    res = ip[IP_RES]
    for i in range(n):
        price_num = price[i] / num
        root_price = math.sqrt(price[i] * num)
        for j in range(k):
            at_a = res + j * n + i
            at_n = res + (k + j) * n + i
            asset = fstate[b, at_a]
            reserve_num = fstate[b, at_n]
            ratio = reserve_num / (asset * price_num)
            s = 1.0 / ratio
            if ratio > s:
                s = ratio
            s *= fp[F_KEEP + j]
            if not s > 1.0:  # np.maximum(s, 1.0): NaN propagates
                s = 1.0 if s == s else s
            s = math.sqrt(s)
            u = (s - 1.0) * fp[F_INV_KEEP + j] + 1.0
            inv_s = 1.0 / s
            mult_a = u if ratio >= 1.0 else 0.0
            mult_n = u if ratio < 1.0 else 0.0
            if inv_s > mult_a:
                mult_a = inv_s
            if inv_s > mult_n:
                mult_n = inv_s
            moved_a = asset * mult_a
            moved_n = reserve_num * mult_n
            scale = math.sqrt(moved_a * moved_n)
            liquidity = (fp[side + j * n + i] * depth) / root_price
            scale = liquidity / scale
            fstate[b, at_a] = moved_a * scale
            fstate[b, at_n] = moved_n * scale


@njit(**JIT)
def sell_ratio(b, n, i, amount, fstate, w, fp, ip):
    """Sell ``amount`` units of asset ``i`` into env ``b``'s pools (``PoolBook.sell_asset`` for one
    pair) and return the pair's liquidity-weighted price after the sale over before it."""
    k = ip[IP_K]
    res = ip[IP_RES]
    before_a = 0.0
    before_n = 0.0
    for j in range(k):
        w[W_RIN + j] = fstate[b, res + j * n + i]
        w[W_ROUT + j] = fstate[b, res + (k + j) * n + i]
        before_a += w[W_RIN + j]
        before_n += w[W_ROUT + j]
    route_order(amount, 0.0, 0, w, fp, ip)
    after_a = 0.0
    after_n = 0.0
    for j in range(k):
        new_a = w[W_RIN + j] + w[W_SPLIT + j]
        new_n = w[W_ROUT + j] - w[W_OUT + j]
        fstate[b, res + j * n + i] = new_a
        fstate[b, res + (k + j) * n + i] = new_n
        after_a += new_a
        after_n += new_n
    return after_n / after_a / (before_n / before_a)
