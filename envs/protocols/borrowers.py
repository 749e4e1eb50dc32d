"""The other borrowers of the lending market, whose liquidations drive cascades.

One job: model the population of leveraged borrowers (one stablecoin debt and a single collateral
asset each, discretized into ``K`` health-factor buckets per asset) that enter at a price, are
liquidated with the Aave rules of :mod:`defialloc.envs.protocols.lending` when a step's LOW crosses their
liquidation price, re-lever at the close, and whose liquidators sell the seized collateral; the
share ``pool_share_of_sales`` of those sales trades in the agent's pools (:func:`pool_sales`).
Sizes and shares are calibrated on documented liquidation days (docs/leverage.md,
:mod:`defialloc.envs.protocols.cascade_events`).
Pure vectorized numpy; shapes are ``(..., N, K)`` for ``...`` any batch, ``N`` the collateral assets
and ``K`` the HF buckets (see docs/leverage.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.protocols.lending import snap_to_bag
from defialloc.envs.protocols.params import PopulationParams, check_range


@dataclass(frozen=True)
class BorrowerPopulation:
    """Other borrowers, one stablecoin debt and a single collateral asset each, in K HF buckets per asset.

    Attributes:
        collateral_units: ``(..., N, K)`` collateral of each bucket.
        debt_usd: ``(..., N, K)`` debt of each bucket.
        fresh_collateral_units: ``(..., N, K)`` bucket sizes of a newly levered population (refresh).
        entry_hf: ``(K,)`` entry health factor of each bucket (geometric bucket midpoints).
    """

    collateral_units: np.ndarray
    debt_usd: np.ndarray
    fresh_collateral_units: np.ndarray
    entry_hf: np.ndarray


@dataclass(frozen=True)
class PopulationStepResult:
    """One step of population liquidations; every array is ``(..., N)`` per collateral asset."""

    population: BorrowerPopulation
    forced_sale_units: np.ndarray
    debt_repaid_usd: np.ndarray
    bad_debt_usd: np.ndarray


def entry_health_factors(params: PopulationParams) -> np.ndarray:
    """``(K,)`` entry HF of each bucket: geometric midpoints of ``K`` equal-log-width buckets."""
    edges = np.geomspace(params.hf_entry_min, params.hf_entry_max, params.n_buckets + 1)
    return np.sqrt(edges[:-1] * edges[1:])


def fresh_positions(
    price: np.ndarray, depth: np.ndarray, threshold: np.ndarray, params: PopulationParams
) -> tuple[np.ndarray, np.ndarray]:
    """Unchecked core of :func:`init_population`: ``(units, debt_times_hf)``, both ``(..., N)``.

    ``units`` is the collateral of each of the ``K`` buckets of an (env, asset) row (equal across
    them); bucket ``k``'s debt (USD) is ``debt_times_hf / entry_hf[k]``, so that it starts at HF
    ``entry_hf[k]`` at ``price`` (callers divide in their own layout).
    """
    units = params.collateral_share_of_depth * depth / price / params.n_buckets
    return units, units * (price * threshold)


def init_population(
    entry_price: np.ndarray,
    pool_depth_usd: np.ndarray,
    liq_threshold: np.ndarray,
    params: PopulationParams,
) -> BorrowerPopulation:
    """Borrowers entering at ``entry_price`` ``(..., N)`` with HF log-uniform on [hf_entry_min, hf_entry_max].

    Total collateral per asset is ``collateral_share_of_depth * pool_depth_usd`` (``(..., N)`` or
    ``(N,)``), split equally over ``n_buckets`` equal-log-width buckets (log-uniform mass).
    """
    price = check_range("entry_price", entry_price, 0.0, lower_open=True)
    depth = check_range("pool_depth_usd", pool_depth_usd, 0.0)
    threshold = check_range("liq_threshold", liq_threshold, 0.0, 1.0)
    entry_hf = entry_health_factors(params)
    per_bucket, debt_times_hf = fresh_positions(price, depth, threshold, params)
    debt = debt_times_hf[..., None] / entry_hf
    units = np.broadcast_to(per_bucket[..., None], debt.shape)
    return BorrowerPopulation(units.copy(), debt, units.copy(), entry_hf)


def kept_by_liquidators(bonus: np.ndarray, protocol_fee_share: np.ndarray | float) -> np.ndarray:
    """Share of the seized units the liquidators keep: the protocol takes ``protocol_fee_share`` of
    the bonus part ``bonus / (1 + bonus)`` of every seized unit. Unchecked; shapes broadcast."""
    lb = 1.0 + bonus
    return 1.0 - (lb - 1.0) / lb * protocol_fee_share


def forced_sales(
    seized_units: np.ndarray, kept: np.ndarray, params: PopulationParams
) -> np.ndarray:
    """Units the liquidators sell (on every venue): ``sell_fraction`` of the seized units they keep."""
    return params.sell_fraction * seized_units * kept


def pool_sales(forced_sale_units: np.ndarray, params: PopulationParams) -> np.ndarray:
    """The part of the forced sales ``(..., N)`` (units) that trades in the agent's pools:
    ``pool_share_of_sales`` of them (the rest is absorbed by other DEXs and CEX order books).

    The protocol functions (:func:`population_step`, :func:`population_liquidations`) return all the
    liquidators' sales; the env (``envs/leverage_population.py``) pushes exactly
    ``pool_sales(forced_sale_units, params)`` into its pools.
    """
    return forced_sale_units * params.pool_share_of_sales


def hit_positions(mask_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (env, asset) rows with a liquidatable bucket, and where those buckets are in them.

    ``mask_rows`` ``(R, K)`` (any strides) marks the liquidatable buckets. Returns ``rows`` ``(m,)``
    (sorted) and ``pos`` ``(n,)``, the flat positions ``slot * K + k`` of the liquidatable buckets
    in the ``(m, K)`` block ``mask_rows[rows]`` (row-major), as :func:`liquidate_hit_buckets` takes.
    """
    rows = np.flatnonzero(mask_rows.any(axis=1))
    return rows, np.flatnonzero(mask_rows[rows])


def _row_sums(
    values: tuple[np.ndarray, ...],
    pos: np.ndarray,
    n_rows: int,
    n_buckets: int,
    masked: bool = False,
) -> np.ndarray:
    """``(len(values), n_rows)`` sums over whole ``K``-bucket rows of each ``(n,)`` array of ``values``
    placed at ``pos`` (flat positions in an ``(n_rows, K)`` block).

    The other buckets of a row are zeros (``masked``: left out of the sum, as ``np.sum(where=)``),
    so each sum runs over the same row in the same order (numpy's pairwise summation depends on
    the positions) as a sum over the full population: bit for bit.
    """
    block = np.zeros((len(values), n_rows * n_buckets))
    for i, v in enumerate(values):
        block[i, pos] = v
    block = block.reshape(len(values), n_rows, n_buckets)
    if not masked:
        return block.sum(axis=-1)
    where = np.zeros(block.shape, dtype=bool)
    where.reshape(len(values), -1)[:, pos] = True
    return np.sum(block, axis=-1, where=where)


def _liquidation_call(
    units: np.ndarray,
    debt: np.ndarray,
    p_low: np.ndarray,
    threshold: np.ndarray,
    lb: np.ndarray,
    liquidatable: np.ndarray | None,
    params: PopulationParams,
    close_factor_threshold: float,
    default_close_factor: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One liquidationCall per bucket (``None``: all are liquidatable): ``(units, debt, seized,
    repaid)`` after it, every array ``(n,)`` like the arguments; debt in USD."""
    lag = params.execution_lag
    if lag < 1.0:
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = np.where(units > 0.0, debt / (units * threshold), 0.0)
        price = p_low + (1.0 - lag) * np.maximum(crossing - p_low, 0.0)
    else:
        price = p_low
    value = units * price
    full = value * threshold <= close_factor_threshold * debt
    repaid = np.where(full, debt, default_close_factor * debt)
    if liquidatable is not None:
        repaid = np.where(liquidatable, repaid, 0.0)
    np.minimum(repaid, value / lb, out=repaid)
    seized = snap_to_bag(repaid * lb / price, units)
    return units - seized, debt - repaid, seized, repaid


def liquidate_hit_buckets(
    units: np.ndarray,
    debt: np.ndarray,
    p_low: np.ndarray,
    threshold: np.ndarray,
    lb: np.ndarray,
    pos: np.ndarray,
    n_rows: int,
    params: PopulationParams,
    close_factor_threshold: float = 0.95,
    default_close_factor: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unchecked core of :func:`liquidate_population`, on just the buckets liquidatable at the low.

    Args:
        units, debt: ``(n,)`` collateral units and debt (USD) of the buckets with
            ``units * (p_low * threshold) < debt`` (HF < 1 at the low).
        p_low, threshold, lb: ``(n,)`` low price, liquidation threshold and ``1 + bonus`` of each
            bucket's (env, asset) row.
        pos: ``(n,)`` positions of the buckets in their rows' block (see :func:`hit_positions`).
        n_rows: the number of rows ``m`` of that block.

    Returns:
        ``units``, ``debt`` after the calls (new ``(n,)`` arrays), and ``(m,)`` sums per row of
        the seized units, the repaid debt (USD) and the bad debt written off (USD).

    A bucket not liquidatable at the low is left as it is by every round, so the calls only need
    these buckets; the per-row sums still run over whole rows (:func:`_row_sums`).
    """
    n_buckets = params.n_buckets
    sums = bad = None
    liquidatable = None  # the first round gets only liquidatable buckets
    for round_ in range(params.max_rounds_per_step):
        if round_:  # later rounds: only the buckets still under water at the low
            liquidatable = units * (p_low * threshold) < debt
            if not liquidatable.any():
                break
        units, debt, seized, repaid = _liquidation_call(
            units, debt, p_low, threshold, lb, liquidatable, params,
            close_factor_threshold, default_close_factor,
        )  # fmt: skip
        # a bucket left with debt but no collateral (units >= 0 after the snap) is written off
        empty = units <= 0.0
        if empty.any():
            at = np.flatnonzero(empty & (debt > 0.0))
            if at.size:
                round_bad = _row_sums((debt[at],), pos[at], n_rows, n_buckets, masked=True)[0]
                bad = round_bad if bad is None else bad + round_bad
                debt[at] = 0.0
        round_sums = _row_sums((seized, repaid), pos, n_rows, n_buckets)
        sums = round_sums if sums is None else sums + round_sums
    assert sums is not None  # max_rounds_per_step >= 1
    return units, debt, sums[0], sums[1], np.zeros(n_rows) if bad is None else bad


def liquidate_population(
    population: BorrowerPopulation,
    price_low: np.ndarray,
    liq_threshold: np.ndarray,
    bonus: np.ndarray,
    protocol_fee_share: np.ndarray | float,
    params: PopulationParams,
    *,
    close_factor_threshold: float = 0.95,
    default_close_factor: float = 0.5,
) -> PopulationStepResult:
    """Liquidate every bucket whose HF at ``price_low`` ``(..., N)`` is below 1.

    Each call executes at ``low + (1 - execution_lag) * (crossing - low)``, where ``crossing`` is
    the bucket's liquidation price (HF = 1): lag 1 liquidates at the low (the pessimistic
    default), lag 0 as soon as the price crosses. Up to ``max_rounds_per_step`` calls per bucket.
    Liquidators sell ``sell_fraction`` of the units they keep. Buckets left with debt but no
    collateral are written off as bad debt (the protocol absorbs it).
    """
    p_low = check_range("price_low", price_low, 0.0, lower_open=True)
    threshold = check_range("liq_threshold", liq_threshold, 0.0, 1.0)
    bonus = check_range("bonus", bonus, 0.0, 1.0, upper_open=True)
    fee_share = check_range("protocol_fee_share", protocol_fee_share, 0.0, 1.0)
    units, debt = population.collateral_units, population.debt_usd
    batch, n_buckets = units.shape[:-1], units.shape[-1]
    # HF < 1  <=>  C * LT < D: no division, and zero debt needs no special case
    liquidatable = units * (p_low[..., None] * threshold[:, None]) < debt
    rows, pos = hit_positions(liquidatable.reshape(-1, n_buckets))
    seized_total, repaid_total, bad_total = np.zeros(batch), np.zeros(batch), np.zeros(batch)
    if not rows.size:  # the common calm step
        return PopulationStepResult(population, seized_total, repaid_total, bad_total)
    # per (env, asset) row parameters, then per hit bucket
    per_row = (p_low, threshold, 1.0 + bonus, kept_by_liquidators(bonus, fee_share))
    p_row, lt_row, lb_row, kept_row = (np.broadcast_to(a, batch).reshape(-1) for a in per_row)
    bucket_row = rows[pos // n_buckets]
    flat = bucket_row * n_buckets + pos % n_buckets
    new_units, new_debt = units.copy(), debt.copy()
    new_units.flat[flat], new_debt.flat[flat], seized, repaid, bad = liquidate_hit_buckets(
        units.reshape(-1)[flat], debt.reshape(-1)[flat], p_row[bucket_row], lt_row[bucket_row],
        lb_row[bucket_row], pos, rows.size, params, close_factor_threshold, default_close_factor,
    )  # fmt: skip
    if not repaid.any() and not bad.any():
        seized_total.flat[rows] = seized
        return PopulationStepResult(population, seized_total, repaid_total, bad_total)
    seized_total.flat[rows] = forced_sales(seized, kept_row[rows], params)
    repaid_total.flat[rows] = repaid
    bad_total.flat[rows] = bad
    return PopulationStepResult(
        population=BorrowerPopulation(
            new_units, new_debt, population.fresh_collateral_units, population.entry_hf
        ),
        forced_sale_units=seized_total,
        debt_repaid_usd=repaid_total,
        bad_debt_usd=bad_total,
    )


def refresh_population(
    population: BorrowerPopulation,
    price: np.ndarray,
    liq_threshold: np.ndarray,
    refresh_rate: float,
) -> BorrowerPopulation:
    """Replace ``refresh_rate`` of every bucket by fresh positions levered at ``price`` ``(..., N)``.

    Borrowers re-lever as prices rise (and new ones arrive after a crash), so the HF distribution
    relaxes back toward the entry distribution instead of drifting to all-safe or all-liquidated.
    """
    check_range("refresh_rate", refresh_rate, 0.0, 1.0)
    p = check_range("price", price, 0.0)
    threshold = check_range("liq_threshold", liq_threshold, 0.0, 1.0)
    if refresh_rate == 0.0:
        return population
    state = np.stack((population.collateral_units, population.debt_usd))
    fresh = population.fresh_collateral_units
    inv_hf = inverse_entry_hf(population.entry_hf)
    refresh_buckets(state, fresh, (p * threshold)[..., None], inv_hf, refresh_rate)
    return BorrowerPopulation(state[0], state[1], fresh, population.entry_hf)


def inverse_entry_hf(entry_hf: np.ndarray) -> np.ndarray:
    """``1 / entry_hf``: the refresh multiplies by it (a division per bucket costs ~3x more)."""
    return 1.0 / entry_hf


def refresh_buckets(
    state: np.ndarray,
    fresh_units: np.ndarray,
    price_threshold: np.ndarray,
    inv_entry_hf: np.ndarray,
    refresh_rate: float,
    scratch: np.ndarray | None = None,
) -> None:
    """Unchecked core of :func:`refresh_population`, in place on ``state``: ``(2, ...)`` units and
    debt (USD) of every bucket, ``(2, ..., N, K)`` or any layout the other arguments broadcast to.

    ``fresh_units`` (fresh bucket sizes), ``price_threshold`` (``price * liq_threshold`` of each
    (env, asset) row) and ``inv_entry_hf`` (:func:`inverse_entry_hf`: ``(K,)``, or a column in a
    bucket-major layout) broadcast against ``state[1]``; ``scratch`` (optional) is a buffer of its
    shape for the fresh debt.
    """
    units, debt = state
    fresh_debt = np.multiply(
        fresh_units * (price_threshold * refresh_rate), inv_entry_hf, out=scratch
    )
    state *= 1.0 - refresh_rate
    debt += fresh_debt
    units += fresh_units * refresh_rate


def population_step(
    population: BorrowerPopulation,
    price_low: np.ndarray,
    price_close: np.ndarray,
    liq_threshold: np.ndarray,
    bonus: np.ndarray,
    protocol_fee_share: np.ndarray | float,
    params: PopulationParams,
) -> PopulationStepResult:
    """Liquidate at the step's low, then re-lever ``refresh_rate_per_step`` at the close."""
    result = liquidate_population(
        population, price_low, liq_threshold, bonus, protocol_fee_share, params
    )
    refreshed = refresh_population(
        result.population, price_close, liq_threshold, params.refresh_rate_per_step
    )
    return PopulationStepResult(
        refreshed, result.forced_sale_units, result.debt_repaid_usd, result.bad_debt_usd
    )


def population_liquidations(
    price_path_low: np.ndarray,
    entry_price: np.ndarray,
    pool_depth_usd: np.ndarray,
    liq_threshold: np.ndarray,
    bonus: np.ndarray,
    protocol_fee_share: np.ndarray | float,
    params: PopulationParams,
    price_path_close: np.ndarray | None = None,
) -> np.ndarray:
    """Forced collateral sales of the borrower population along price paths (no price feedback).

    Args:
        price_path_low: ``(..., T, N)`` low price of each step.
        entry_price: ``(..., N)`` price at which the population levered up (before step 0).
        pool_depth_usd: ``(N,)`` or ``(..., N)`` pool depth sizing the population.
        price_path_close: ``(..., T, N)`` close of each step for the refresh (default: the low).

    Returns:
        ``(..., T, N)`` collateral units the liquidators sell in each step, on every venue; the env's
        ``cascade_sale_units`` (what enters the agent's pools) are :func:`pool_sales` of them.
    """
    low = check_range("price_path_low", price_path_low, 0.0)
    close = low if price_path_close is None else np.asarray(price_path_close, dtype=float)
    if close.shape != low.shape:
        raise ValueError(
            f"price_path_close shape {close.shape} must equal price_path_low shape {low.shape}"
        )
    population = init_population(entry_price, pool_depth_usd, liq_threshold, params)
    sales = np.zeros(
        np.broadcast_shapes(low.shape, (*population.debt_usd.shape[:-2], 1, low.shape[-1]))
    )
    for t in range(low.shape[-2]):
        step = population_step(
            population,
            low[..., t, :],
            close[..., t, :],
            liq_threshold,
            bonus,
            protocol_fee_share,
            params,
        )
        population = step.population
        sales[..., t, :] = step.forced_sale_units
    return sales
