"""Optimal order splitting across the K constant-product pools of one pair, and multi-hop swaps.

Water-filling: selling ``x_k`` into pool ``k`` (reserves ``r_k`` in, ``o_k`` out, ``g_k = 1 - fee_k``)
has marginal output ``g r o / (r + g x)^2``. At the optimum every active pool has the same marginal
output ``1 / s^2``, which gives ``x_k(s) = (s c_k - r_k) / g_k`` with ``c_k = sqrt(g_k r_k o_k)``; pool
``k`` is active once ``s`` exceeds its threshold ``t_k = r_k / c_k = sqrt(r_k / (g_k o_k))``. For a set
``T`` of pools that are all active, ``sum_T x_k = X`` gives ``s_T = (X + B_T) / A_T`` with
``A_T = sum_T c_k / g_k``, ``B_T = sum_T r_k / g_k``, and the output is ``O_T - A_T^2 / (X + B_T)``
(``O_T = sum_T o_k``), all closed form.

The router enumerates every non-empty subset of the K pools (7 for K = 3), keeps those whose forced
split is feasible (``s_T >= max_T t_k``: no pool would receive a negative amount), and picks the one
with the largest output minus ``gas_per_pool_out * |T|``. Without gas this is the exact water-filling
optimum (the optimum's active set is feasible and every feasible split is a valid order); with gas it
is the exact optimum over "which pools to touch" and never worse than any single pool net of gas.

Everything is vectorized over the orders, in a pool-major layout: ``(K, M)`` per pool, ``(S, M)`` per
subset (``S = 2^K - 1``), so each operation runs over long contiguous rows. :func:`route_order` is the
validated public entry for ``(..., K)`` arrays; the simulator calls the core,
:func:`route_pool_major`, directly on its pool-major book.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from defialloc.envs.protocols.amm import FeeTerms, amount_out_keep, check_in_range, fee_terms

__all__ = [
    "MAX_POOLS",
    "Pool",
    "PoolSet",
    "RouteResult",
    "SwapLeg",
    "SwapQuote",
    "route_order",
    "route_swap",
]

MAX_POOLS = 8  # subsets grow as 2^K; K is the number of fee tiers of one pair (3-4 in practice)


@dataclass(frozen=True)
class RouteResult:
    """Split of orders across pools; ``...`` is the orders' leading shape, ``K`` the pools.

    Attributes:
        amount_out: ``(...)`` total output, output-token units (before gas).
        amounts_in: ``(..., K)`` input sent to each pool, input-token units; sums to the order.
        amounts_out: ``(..., K)`` output received from each pool.
        n_pools: ``(...)`` int, pools receiving a positive amount (0 for a zero order).
        fees_in: ``(..., K)`` swap fee paid to each pool, input-token units (``amounts_in * fee``).
        gas_out: ``(...)`` gas of the pools touched, output-token units (``n_pools * gas_per_pool_out``).
    """

    amount_out: np.ndarray
    amounts_in: np.ndarray
    amounts_out: np.ndarray
    n_pools: np.ndarray
    fees_in: np.ndarray
    gas_out: np.ndarray

    @property
    def net_amount_out(self) -> np.ndarray:
        """``(...)`` output minus the per-pool gas, output-token units."""
        return self.amount_out - self.gas_out


@dataclass(frozen=True)
class _SubsetTable:
    """All ``S = 2^K - 1`` non-empty subsets of K pools, ordered by size (singletons first, then
    pairs, ...), lexicographically within a size; rows ``:K`` are the single pools.

    The subsets that extend one parent by one more pool are then contiguous rows, so a subset
    aggregate that no matmul gives (the max) takes one ufunc call per parent (``steps``, 3 for K = 3).
    """

    sizes: np.ndarray  # (S, 1) float, pools per subset
    multi_weights: np.ndarray  # (S - K, K) float 0/1 membership of the multi-pool subsets
    multi_t: np.ndarray  # (K, S) float 0/1, pool k is in subset s and s has several pools
    single_t: np.ndarray  # (K, S) float 0/1, subset s is the single pool k
    rank: np.ndarray  # (S, 1) uint8, S - s: the first-maximum search prefers earlier rows
    # (parent, first, stop, pool): rows first:stop are parent plus pool, pool + 1, ...
    steps: tuple[tuple[int, int, int, int], ...]


@lru_cache(maxsize=MAX_POOLS)
def _subset_table(n_pools: int) -> _SubsetTable:
    subsets = sorted(
        (tuple(k for k in range(n_pools) if bits >> k & 1) for bits in range(1, 2**n_pools)),
        key=lambda members: (len(members), members),
    )
    index = {members: i for i, members in enumerate(subsets)}
    masks = np.zeros((len(subsets), n_pools), dtype=bool)
    for i, members in enumerate(subsets):
        masks[i, list(members)] = True
    steps = []
    for p, members in enumerate(subsets):
        if members[-1] + 1 < n_pools:  # children: members + (l,) for every l > the last member
            first = index[(*members, members[-1] + 1)]
            steps.append((p, first, first + n_pools - 1 - members[-1], members[-1] + 1))
    sizes = masks.sum(1).astype(np.float64)
    table = _SubsetTable(
        sizes=sizes[:, None],
        multi_weights=masks[n_pools:].astype(np.float64),
        multi_t=(masks.T & (sizes > 1.0)).astype(np.float64),
        single_t=(masks.T & (sizes == 1.0)).astype(np.float64),
        rank=np.arange(len(subsets), 0, -1, dtype=np.uint8)[:, None],  # S <= 255 for K <= 8
        steps=tuple(steps),
    )
    for arr in (table.sizes, table.multi_weights, table.multi_t, table.single_t, table.rank):
        arr.setflags(write=False)
    return table


def _fill_subsets(rows: np.ndarray, table: _SubsetTable, ufunc: np.ufunc) -> None:
    """Aggregate the per-pool rows ``rows[:K]`` into every subset row ``rows[K:]`` in place.

    ``rows``: ``(S, ...)``; ``ufunc`` is e.g. ``np.maximum``. The leading subset axis keeps every
    call's inner loop over the whole contiguous trailing block.
    """
    for parent, first, stop, pool in table.steps:
        ufunc(rows[parent], rows[pool : pool + stop - first], out=rows[first:stop])


@lru_cache(maxsize=16)
def _order_columns(n_orders: int) -> np.ndarray:
    """``arange(M)`` (read-only, cached): with ``row * M`` the flat index of order m in a row."""
    cols = np.arange(n_orders)
    cols.setflags(write=False)
    return cols


# Below this many (subset, order) entries one argmax call is cheapest; above it numpy's argmax over
# the short subset axis costs ~8 ns per order and a max / compare / max pass is faster.
_ARGMAX_ENTRIES = 512


def _first_argmax(net: np.ndarray, table: _SubsetTable) -> np.ndarray:
    """``np.argmax(net, axis=0)`` of ``(S, M)`` values without NaN (the first maximum wins)."""
    if net.size < _ARGMAX_ENTRIES:
        return net.argmax(0)
    top = net.max(0)
    hit = np.equal(net, top).view(np.uint8)
    hit *= table.rank  # S - row where the row attains the maximum, else 0
    return np.subtract(table.rank.shape[0], hit.max(0), dtype=np.intp)


def _validate_order(
    amount_in: object, reserve_in: object, reserve_out: object, fee: object, gas: object
) -> tuple[np.ndarray, ...]:
    amount = check_in_range("amount_in", amount_in, 0.0, high_open=True)
    r_in = check_in_range("reserve_in", reserve_in, 0.0, low_open=True, high_open=True)
    r_out = check_in_range("reserve_out", reserve_out, 0.0, low_open=True, high_open=True)
    f = check_in_range("fee", fee, 0.0, 1.0, high_open=True)
    gas_out = check_in_range("gas_per_pool_out", gas, 0.0, high_open=True)
    if r_in.ndim == 0 or r_out.ndim == 0:
        raise ValueError(
            "reserve_in and reserve_out must have a trailing pool axis K (shape (..., K)); "
            f"got shapes {r_in.shape} and {r_out.shape}"
        )
    n_pools = max(r_in.shape[-1], r_out.shape[-1], f.shape[-1] if f.ndim else 1)
    if not 1 <= n_pools <= MAX_POOLS:
        raise ValueError(f"number of pools K must be in [1, {MAX_POOLS}]; got {n_pools}")
    return amount, r_in, r_out, f, gas_out


def route_order(
    amount_in: float | np.ndarray,
    reserve_in: np.ndarray,
    reserve_out: np.ndarray,
    fee: np.ndarray,
    gas_per_pool_out: float | np.ndarray = 0.0,
    *,
    validate: bool = True,
) -> RouteResult:
    """Split each order across its pair's K pools to maximize output minus per-pool gas.

    Args:
        amount_in: ``(...)`` order size, input-token units, ``>= 0``.
        reserve_in, reserve_out: ``(..., K)`` reserves of the input / output token in each pool, ``> 0``.
        fee: ``(K,)`` or ``(..., K)`` fee fraction per pool, in ``[0, 1)``.
        gas_per_pool_out: ``(...)`` or scalar, gas cost of touching one more pool in output-token
            units, ``>= 0``. With gas the router may use fewer pools than the gas-free optimum, but
            never does worse than the best single pool net of gas.
        validate: check the inputs (raises ``ValueError``); pass ``False`` on trusted hot paths.

    Returns:
        :class:`RouteResult` with the broadcast leading shape. A zero order gives all zeros.
    """
    if validate:
        amount_in, reserve_in, reserve_out, fee, gas_per_pool_out = _validate_order(
            amount_in, reserve_in, reserve_out, fee, gas_per_pool_out
        )
    amount = np.asarray(amount_in, dtype=np.float64)
    r_in = np.asarray(reserve_in, dtype=np.float64)
    r_out = np.asarray(reserve_out, dtype=np.float64)
    gas = np.asarray(gas_per_pool_out, dtype=np.float64)
    if r_in.shape == r_out.shape and amount.shape == r_in.shape[:-1]:
        shape = r_in.shape
    else:
        fee_shape = np.shape(fee) or (1,)
        lead = np.broadcast_shapes(amount.shape, r_in.shape[:-1], r_out.shape[:-1], fee_shape[:-1])
        shape = (*lead, max(r_in.shape[-1], r_out.shape[-1], fee_shape[-1]))
        amount = np.broadcast_to(amount, shape[:-1])
        r_in = np.broadcast_to(r_in, shape)
        r_out = np.broadcast_to(r_out, shape)
    n_pools = shape[-1]
    lead = shape[:-1]
    n_orders = math.prod(lead)
    # Pool-major layout (K, M): every row is contiguous, so per-pool and per-subset operations run on
    # long contiguous rows instead of broadcasting over a length-K inner axis (several times slower).
    fee_arr = np.asarray(fee, dtype=np.float64)
    if fee_arr.ndim > 1:
        fee_k = np.broadcast_to(fee_arr, shape).reshape(n_orders, n_pools).T
    else:
        fee_k = fee_arr.reshape(-1, 1) if fee_arr.ndim else fee_arr
    terms = fee_terms(fee_k, (n_pools, n_orders))
    r_in_k = np.ascontiguousarray(r_in.reshape(n_orders, n_pools).T)
    r_out_k = np.ascontiguousarray(r_out.reshape(n_orders, n_pools).T)
    x = np.ascontiguousarray(amount).reshape(n_orders)
    gas_m = None
    if gas.ndim:
        gas_m = np.broadcast_to(gas, lead).reshape(n_orders)
    elif gas != 0.0:
        gas_m = gas
    split, amounts_out = route_pool_major(x, r_in_k, r_out_k, terms, gas_m)

    n_used = (split > 0.0).sum(0).reshape(lead)
    fees_in = split * terms.fee
    return RouteResult(
        amount_out=amounts_out.sum(0).reshape(lead),
        amounts_in=np.ascontiguousarray(split.T).reshape(shape),
        amounts_out=np.ascontiguousarray(amounts_out.T).reshape(shape),
        n_pools=n_used,
        fees_in=np.ascontiguousarray(fees_in.T).reshape(shape),
        gas_out=n_used * gas,
    )


def route_pool_major(
    amount: np.ndarray,
    r_in: np.ndarray,
    r_out: np.ndarray,
    terms: FeeTerms,
    gas: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Core of :func:`route_order` in the pool-major layout, without validation (hot path).

    Args:
        amount: ``(M,)`` orders, input-token units, finite and ``>= 0``.
        r_in, r_out: ``(K, M)`` C-contiguous reserves, finite and ``> 0``.
        terms: fee terms at ``(K, M)``.
        gas: ``(M,)`` or scalar gas per pool touched in output units, or ``None`` for no gas
            (subtracting a zero gas changes nothing, so ``None`` only skips the work).

    Returns:
        ``(split, amounts_out)``, both ``(K, M)``: input sent to and output received from each pool.

    Every step is branch-free elementwise work (no masked writes): which subset wins varies from
    order to order, and data-dependent branches would mispredict.
    """
    n_pools, n_orders = r_in.shape
    table = _subset_table(n_pools)
    keep, inv_keep = terms.keep, terms.inv_keep
    root = np.multiply(keep, r_in)
    root *= r_out
    np.sqrt(root, out=root)  # c_k
    # Net output of every subset's split (S, M): single pools first, then the multi-pool subsets.
    net = np.empty((table.sizes.shape[0], n_orders))
    amount_out_keep(amount, r_in, r_out, keep, out=net[:n_pools])
    multi = net.shape[0] > n_pools
    if multi:
        water, bound = _multi_pool_outputs(amount, r_in, r_out, root, terms, table, net)
    if gas is not None:
        net -= table.sizes * gas
    if multi:
        np.minimum(net[n_pools:], bound, out=net[n_pools:])  # -inf where infeasible
    best = _first_argmax(net, table)  # ties go to the smaller subset (listed first)

    split = root
    if multi:
        flat = best * n_orders
        flat += _order_columns(n_orders)
        split *= water.reshape(-1).take(flat)  # s_best c_k
    split -= r_in
    split *= inv_keep
    np.maximum(split, 0.0, out=split)
    split *= table.multi_t.take(best, axis=1)  # members of a chosen multi-pool subset
    # Rounding leaves the split off the order by ~1e-16 of the reserves: restore the exact total.
    # Single-pool orders get exactly the order amount: their forced split was zeroed above, and
    # 0.0 + amount, x + 0.0 are exact (an arithmetic select: np.where broadcasting (M,) is slower).
    total = split.sum(0)
    total += total == 0.0  # 1 where nothing was split
    split *= amount / total
    single = table.single_t.take(best, axis=1)
    single *= amount
    split += single
    return split, amount_out_keep(split, r_in, r_out, keep)


def _multi_pool_outputs(
    amount: np.ndarray,
    r_in: np.ndarray,
    r_out: np.ndarray,
    root: np.ndarray,
    terms: FeeTerms,
    table: _SubsetTable,
    net: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Forced split of every multi-pool subset T: writes its output into ``net[K:]``.

    The output is ``O_T - A_T^2 / (X + B_T)``, valid where the level ``s_T = (X + B_T) / A_T``
    reaches every member's threshold ``t_k = r_k / c_k`` (no pool would receive a negative amount).

    Returns:
        ``(water, bound)``: ``water`` ``(S, M)`` holds ``s_T`` in the multi-pool rows (0 in the single
        rows, which only need a finite value); ``bound`` ``(S - K, M)`` is ``+inf`` where T is
        feasible and ``-inf`` where it is not (``min(output, bound)`` masks without a branch).
    """
    n_pools, n_orders = r_in.shape
    # Subset sums of c_k / g_k, r_k / g_k and o_k: one stacked matmul (3, K, M) -> (3, S - K, M);
    # 0/1 weights sum in pool order, exactly like adding the rows.
    per_pool = np.empty((3, n_pools, n_orders))
    np.multiply(root, terms.inv_keep, out=per_pool[0])
    np.multiply(r_in, terms.inv_keep, out=per_pool[1])
    per_pool[2] = r_out
    slope_sum, level, out_sum = np.matmul(table.multi_weights, per_pool)
    level += amount  # X + B_T
    water = np.empty((table.sizes.shape[0], n_orders))
    water[:n_pools] = 0.0
    np.divide(level, slope_sum, out=water[n_pools:])  # s_T
    multi_out = net[n_pools:]
    np.multiply(slope_sum, slope_sum, out=multi_out)
    multi_out /= level
    np.subtract(out_sum, multi_out, out=multi_out)
    threshold = np.empty((table.sizes.shape[0], n_orders))
    np.divide(r_in, root, out=threshold[:n_pools])
    _fill_subsets(threshold, table, np.maximum)  # max_T t_k
    # s_T - max t is >= +0.0 exactly when s_T >= max t (finite operands): its sign gives the bound
    bound = np.subtract(water[n_pools:], threshold[n_pools:], out=threshold[n_pools:])
    return water, np.copysign(np.inf, bound, out=bound)


@dataclass(frozen=True)
class Pool:
    """One constant-product pool: ``reserve0`` of ``token0`` and ``reserve1`` of ``token1``."""

    token0: str
    token1: str
    reserve0: float
    reserve1: float
    fee: float = 0.003

    def __post_init__(self) -> None:
        if self.token0 == self.token1:
            raise ValueError(f"token0 and token1 must differ; got {self.token0!r} twice")
        check_in_range(
            f"reserve0 of {self.token0}/{self.token1}",
            self.reserve0,
            0.0,
            low_open=True,
            high_open=True,
        )
        check_in_range(
            f"reserve1 of {self.token0}/{self.token1}",
            self.reserve1,
            0.0,
            low_open=True,
            high_open=True,
        )
        check_in_range(f"fee of {self.token0}/{self.token1}", self.fee, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class PoolSet:
    """Pools of several pairs, all quoted against ``numeraire`` where no direct pool exists."""

    pools: tuple[Pool, ...]
    numeraire: str = "USDC"

    def pair(
        self, token_in: str, token_out: str
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Pools trading ``token_in -> token_out``: ``(indices, reserve_in (K,), reserve_out (K,), fee (K,))``."""
        idx, r_in, r_out, fees = [], [], [], []
        for i, pool in enumerate(self.pools):
            if {pool.token0, pool.token1} != {token_in, token_out}:
                continue
            forward = pool.token0 == token_in
            idx.append(i)
            r_in.append(pool.reserve0 if forward else pool.reserve1)
            r_out.append(pool.reserve1 if forward else pool.reserve0)
            fees.append(pool.fee)
        return idx, np.array(r_in), np.array(r_out), np.array(fees)

    def after(self, quote: SwapQuote) -> PoolSet:
        """A new :class:`PoolSet` with the reserves moved by executing ``quote``."""
        pools = list(self.pools)
        for leg in quote.legs:
            for i, a_in, a_out in zip(
                leg.pool_indices, leg.route.amounts_in, leg.route.amounts_out, strict=True
            ):
                p = pools[i]
                sold0 = p.token0 == leg.token_in
                delta0, delta1 = (a_in, -a_out) if sold0 else (-a_out, a_in)
                pools[i] = Pool(
                    p.token0,
                    p.token1,
                    float(p.reserve0 + delta0),
                    float(p.reserve1 + delta1),
                    p.fee,
                )
        return PoolSet(tuple(pools), self.numeraire)


@dataclass(frozen=True)
class SwapLeg:
    """One hop of a swap: ``token_in -> token_out`` split across the pair's pools."""

    token_in: str
    token_out: str
    pool_indices: list[int]
    route: RouteResult


@dataclass(frozen=True)
class SwapQuote:
    """A (possibly multi-hop) swap: ``amount_in`` of ``path[0]`` for ``amount_out`` of ``path[-1]``."""

    path: tuple[str, ...]
    amount_in: float
    amount_out: float
    legs: tuple[SwapLeg, ...]


_ROUTE_FIELDS = ("amount_out", "amounts_in", "amounts_out", "n_pools", "fees_in", "gas_out")


def _quote_path(pools: PoolSet, path: tuple[str, ...], amount_in: float) -> SwapQuote | None:
    legs = []
    amount = amount_in
    for token_in, token_out in zip(path[:-1], path[1:], strict=True):
        idx, r_in, r_out, fees = pools.pair(token_in, token_out)
        if not idx:
            return None
        route = route_order(np.array([amount]), r_in[None, :], r_out[None, :], fees)
        single = RouteResult(*(getattr(route, name)[0] for name in _ROUTE_FIELDS))
        legs.append(SwapLeg(token_in, token_out, idx, single))
        amount = float(single.amount_out)
    return SwapQuote(path, float(amount_in), float(amount), tuple(legs))


def route_swap(pools: PoolSet, token_in: str, token_out: str, amount_in: float) -> SwapQuote:
    """Best quote for one order: the direct pools, or the hop ``token_in -> numeraire -> token_out``.

    Each hop is split optimally across its pair's pools by :func:`route_order` (no gas). When both
    routes exist the one with the larger output wins. Does not change ``pools``; use
    :meth:`PoolSet.after` to apply the quote.
    """
    if token_in == token_out:
        raise ValueError(f"token_in and token_out must differ; got {token_in!r} twice")
    check_in_range("amount_in", amount_in, 0.0, high_open=True)
    candidates = [(token_in, token_out)]
    if pools.numeraire not in (token_in, token_out):
        candidates.append((token_in, pools.numeraire, token_out))
    quotes = [
        q
        for q in (_quote_path(pools, path, float(amount_in)) for path in candidates)
        if q is not None
    ]
    if not quotes:
        raise ValueError(
            f"no route from {token_in!r} to {token_out!r}: no direct pool and no pools via {pools.numeraire!r}"
        )
    return max(quotes, key=lambda q: q.amount_out)
