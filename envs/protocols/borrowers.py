"""The other borrowers of the lending market, whose liquidations drive cascades.

One job: model the population of leveraged borrowers (one stablecoin debt and a single collateral
asset each, discretized into ``K`` health-factor buckets per asset) that enter at a price, are
liquidated with the Aave rules of :mod:`envs.protocols.lending` when a step's LOW crosses their
liquidation price, re-lever at the close, and whose liquidators' forced sales go into the pools.
Pure vectorized numpy; shapes are ``(..., N, K)`` for ``...`` any batch, ``N`` the collateral assets
and ``K`` the HF buckets (see docs/leverage.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.protocols.lending import _snap_to_bag
from envs.protocols.params import PopulationParams, check_range


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
    edges = np.geomspace(params.hf_entry_min, params.hf_entry_max, params.n_buckets + 1)
    entry_hf = np.sqrt(edges[:-1] * edges[1:])
    units_total = params.collateral_share_of_depth * depth / price
    units = np.broadcast_to(
        units_total[..., None] / params.n_buckets, (*units_total.shape, params.n_buckets)
    )
    debt = units * (price * threshold)[..., None] / entry_hf
    return BorrowerPopulation(units.copy(), debt, units.copy(), entry_hf)


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
    p_low = check_range("price_low", price_low, 0.0, lower_open=True)[..., None]
    threshold = check_range("liq_threshold", liq_threshold, 0.0, 1.0)[:, None]
    lb = 1.0 + check_range("bonus", bonus, 0.0, 1.0, upper_open=True)[:, None]
    fee_share = np.asarray(check_range("protocol_fee_share", protocol_fee_share, 0.0, 1.0))
    fee_share = fee_share[:, None] if fee_share.ndim else fee_share
    # the protocol keeps fee_share of the bonus part (LB - 1) / LB of every seized unit
    kept_by_liquidators = (1.0 - (lb - 1.0) / lb * fee_share)[:, 0]
    lag = params.execution_lag
    units, debt = population.collateral_units, population.debt_usd
    batch = units.shape[:-1]
    seized_total, repaid_total, bad_total = np.zeros(batch), np.zeros(batch), np.zeros(batch)
    for _ in range(params.max_rounds_per_step):
        # HF < 1  <=>  C * LT < D: no division, and zero debt needs no special case
        liquidatable = units * (p_low * threshold) < debt
        if not liquidatable.any():  # the common calm step
            break
        if lag < 1.0:
            with np.errstate(divide="ignore", invalid="ignore"):
                crossing = np.where(units > 0.0, debt / (units * threshold), 0.0)
            price = p_low + (1.0 - lag) * np.maximum(crossing - p_low, 0.0)
        else:
            price = np.broadcast_to(p_low, units.shape)
        full = units * price * threshold <= close_factor_threshold * debt
        repaid = np.where(liquidatable, np.where(full, debt, default_close_factor * debt), 0.0)
        np.minimum(repaid, units * price / lb, out=repaid)
        seized = _snap_to_bag(repaid * lb / price, units)
        units = units - seized
        debt = debt - repaid
        insolvent = (units <= 0.0) & (debt > 0.0)
        bad_total += np.sum(debt, axis=-1, where=insolvent)
        np.copyto(debt, 0.0, where=insolvent)
        seized_total += seized.sum(axis=-1)
        repaid_total += repaid.sum(axis=-1)
    if not repaid_total.any() and not bad_total.any():
        return PopulationStepResult(population, seized_total, repaid_total, bad_total)
    return PopulationStepResult(
        population=BorrowerPopulation(
            units, debt, population.fresh_collateral_units, population.entry_hf
        ),
        forced_sale_units=params.sell_fraction * seized_total * kept_by_liquidators,
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
    p = check_range("price", price, 0.0)[..., None]
    threshold = check_range("liq_threshold", liq_threshold, 0.0, 1.0)[:, None]
    if refresh_rate == 0.0:
        return population
    fresh_units = population.fresh_collateral_units
    keep = 1.0 - refresh_rate
    fresh = np.multiply(fresh_units, p * threshold * refresh_rate)
    fresh /= population.entry_hf
    debt = np.multiply(population.debt_usd, keep)
    debt += fresh
    units = np.multiply(fresh_units, refresh_rate, out=fresh)
    units += keep * population.collateral_units
    return BorrowerPopulation(units, debt, fresh_units, population.entry_hf)


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
        ``(..., T, N)`` collateral units sold into the pools in each step. For cascades with price
        impact, call :func:`population_step` inside the env loop with the post-impact low instead.
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
