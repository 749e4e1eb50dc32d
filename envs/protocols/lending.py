"""Aave-v3-like lending market: health factor, liquidations, kinked interest rates.

Pure vectorized numpy. Shapes: ``...`` is any batch of positions (e.g. ``(B,)`` envs), ``N`` the
collateral assets (last axis). Per-asset parameters are ``(N,)`` and broadcast. Money is USD,
quantities are token units, rates are annual fractions unless a name says otherwise. Every position
has one stablecoin debt (``debt_usd``); a depegged numeraire is the caller's job (pass
``debt_units * numeraire_usd``).

Liquidation semantics (see docs/leverage.md):

* The env passes the step's LOW price as ``prices``: the health check and the seizure both use
  it, so a position that touched HF < 1 inside the step is liquidated at that price.
* One ``liquidationCall`` per position per step (``max_rounds=1``); more rounds re-check the HF
  after each call, as competing liquidators in later blocks would.
* ``seizure_order="largest_first"`` (default): each call seizes ONE collateral asset, the largest by
  USD value (Aave takes one collateral per call; liquidators pick the biggest bag). If the bag is too
  small for ``repay * (1 + bonus)``, the whole bag is seized and the repaid debt shrinks to
  ``bag / (1 + bonus)``, exactly as Aave's ``_calculateAvailableCollateralToLiquidate``.
  ``"pro_rata"`` spreads the repayment over all collateral by USD value (smoother approximation).

The borrower population behind liquidation cascades (``BorrowerPopulation``, ``population_step``,
...) lives in :mod:`defialloc.envs.protocols.borrowers`; its names stay importable from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from defialloc.envs.protocols.params import (
    LendingParams,
    RegimeProcess,
    ReserveArrays,
    check_range,
)

SeizureOrder = Literal["largest_first", "pro_rata"]


# ---------------------------------------------------------------------------------------- health
def health_factor(
    collateral_usd: np.ndarray, liq_threshold: np.ndarray, debt_usd: np.ndarray
) -> np.ndarray:
    """HF = sum_i(C_i * LT_i) / D; ``inf`` where D == 0.

    Args:
        collateral_usd: ``(..., N)`` collateral value per asset, >= 0.
        liq_threshold: ``(N,)`` liquidation thresholds in [0, 1].
        debt_usd: ``(...)`` debt value, >= 0.

    Returns:
        ``(...)`` health factor (dimensionless); liquidatable where < 1.
    """
    return health_factor_unchecked(
        check_range("collateral_usd", collateral_usd, 0.0),
        check_range("liq_threshold", liq_threshold, 0.0, 1.0),
        check_range("debt_usd", debt_usd, 0.0),
    )


def health_factor_unchecked(
    collateral: np.ndarray, threshold: np.ndarray, debt: np.ndarray
) -> np.ndarray:
    """:func:`health_factor` on already-validated float arrays (the env's hot path)."""
    weighted = (collateral * threshold).sum(axis=-1)
    has_debt = debt > 0.0
    with np.errstate(over="ignore"):  # dust debt: HF overflows to inf, which is the right answer
        return np.where(has_debt, weighted / np.where(has_debt, debt, 1.0), np.inf)


def borrow_capacity_usd(collateral_usd: np.ndarray, ltv: np.ndarray) -> np.ndarray:
    """Total borrowing power sum_i(C_i * LTV_i), ``(..., N) -> (...)`` USD."""
    collateral = check_range("collateral_usd", collateral_usd, 0.0)
    return (collateral * check_range("ltv", ltv, 0.0, 1.0)).sum(axis=-1)


def available_borrows_usd(
    collateral_usd: np.ndarray, ltv: np.ndarray, debt_usd: np.ndarray
) -> np.ndarray:
    """Additional debt allowed now: max(capacity - debt, 0), ``(...)`` USD."""
    debt = check_range("debt_usd", debt_usd, 0.0)
    return np.maximum(borrow_capacity_usd(collateral_usd, ltv) - debt, 0.0)


def close_factor(
    hf: np.ndarray,
    *,
    threshold: float = 0.95,
    default: float = 0.5,
    total_collateral_usd: np.ndarray | None = None,
    debt_usd: np.ndarray | None = None,
    full_close_below_usd: float = 0.0,
) -> np.ndarray:
    """Share of the debt one liquidation may repay: 0 at HF >= 1, ``default`` for threshold < HF < 1, 1 at HF <= threshold.

    With ``full_close_below_usd > 0`` (Aave v3.3+), positions whose total collateral or debt is below
    it are closed 100 % as well (needs ``total_collateral_usd`` and ``debt_usd``, ``(...)``).
    """
    check_range("threshold", threshold, 0.0, 1.0, lower_open=True)
    check_range("default", default, 0.0, 1.0, lower_open=True)
    check_range("full_close_below_usd", full_close_below_usd, 0.0)
    if full_close_below_usd > 0.0 and (total_collateral_usd is None or debt_usd is None):
        raise ValueError("full_close_below_usd > 0 needs total_collateral_usd and debt_usd")
    return _close_factor(
        np.asarray(hf, dtype=float),
        threshold,
        default,
        total_collateral_usd,
        debt_usd,
        full_close_below_usd,
    )


def _close_factor(
    hf: np.ndarray,
    threshold: float,
    default: float,
    total_collateral_usd: np.ndarray | None,
    debt_usd: np.ndarray | None,
    full_close_below_usd: float,
) -> np.ndarray:
    """:func:`close_factor` with already-validated rules."""
    full = hf <= threshold
    if full_close_below_usd > 0.0:
        small = (np.asarray(total_collateral_usd) < full_close_below_usd) | (
            np.asarray(debt_usd) < full_close_below_usd
        )
        full = full | small
    return np.where(hf < 1.0, np.where(full, 1.0, default), 0.0)


@dataclass(frozen=True)
class LiquidationResult:
    """Outcome of the liquidation calls of one step (summed over rounds).

    Attributes:
        debt_repaid_usd: ``(...)`` debt repaid by liquidators.
        collateral_seized_units: ``(..., N)`` collateral taken from the borrower (liquidator + protocol).
        protocol_fee_units: ``(..., N)`` part of the seized units that goes to the protocol treasury.
        penalty_usd: ``(...)`` value the borrower loses beyond the repaid debt (the bonus, incl. the fee).
        health_factor_before: ``(...)`` HF at the low price before liquidation.
        health_factor_after: ``(...)`` HF at the low price after liquidation.
        bad_debt_usd: ``(...)`` debt left on positions whose collateral is all gone (insolvent).
    """

    debt_repaid_usd: np.ndarray
    collateral_seized_units: np.ndarray
    protocol_fee_units: np.ndarray
    penalty_usd: np.ndarray
    health_factor_before: np.ndarray
    health_factor_after: np.ndarray
    bad_debt_usd: np.ndarray

    @property
    def liquidated(self) -> np.ndarray:
        """``(...)`` bool: some debt was repaid this step."""
        return self.debt_repaid_usd > 0.0

    @property
    def liquidator_received_units(self) -> np.ndarray:
        """``(..., N)`` units the liquidators keep (and typically sell)."""
        return self.collateral_seized_units - self.protocol_fee_units


def snap_to_bag(seized: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Clip seizures to the bag, and make a capped seizure take it exactly.

    The capped case computes ``bag / lb * lb / p``, which can miss the bag by an ulp either way;
    a dust remainder would hide an insolvent position from the bad-debt accounting.
    """
    return np.where(seized >= units * (1.0 - 1e-9), units, seized)


def _seize_one_round(
    debt: np.ndarray,
    units: np.ndarray,
    prices: np.ndarray,
    threshold: np.ndarray,
    bonus: np.ndarray,
    cf_kwargs: dict,
    order: SeizureOrder,
    hf: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One liquidationCall per position: ``(repaid (...), seized_units (..., N))``; ``hf``: the
    positions' HF at ``prices`` when the caller already has it."""
    collateral_usd = units * prices
    if hf is None:
        hf = health_factor_unchecked(collateral_usd, threshold, debt)
    total_usd = collateral_usd.sum(axis=-1) if cf_kwargs["full_close_below_usd"] > 0.0 else None
    target = _close_factor(hf, total_collateral_usd=total_usd, debt_usd=debt, **cf_kwargs) * debt
    lb = 1.0 + bonus  # (N,)
    if order == "largest_first":
        pick = np.argmax(collateral_usd, axis=-1)
        bag_usd = collateral_usd.max(axis=-1)
        lb_pick = lb[pick]
        repaid = np.minimum(target, bag_usd / lb_pick)
        onehot = np.arange(collateral_usd.shape[-1]) == pick[..., None]
        seized_usd = np.where(onehot, (repaid * lb_pick)[..., None], 0.0)
    elif order == "pro_rata":
        lb = np.broadcast_to(lb, collateral_usd.shape)
        total_usd = collateral_usd.sum(axis=-1)
        # the asset with the highest bonus runs out first: cap the repayment at its bag
        max_lb = np.where(collateral_usd > 0.0, lb, 0.0).max(axis=-1)
        cap = np.divide(total_usd, max_lb, out=np.zeros_like(total_usd), where=max_lb > 0.0)
        repaid = np.minimum(target, cap)
        share = np.divide(
            collateral_usd,
            total_usd[..., None],
            out=np.zeros_like(collateral_usd),
            where=total_usd[..., None] > 0.0,
        )
        seized_usd = repaid[..., None] * share * lb
    else:
        raise ValueError(f"seizure_order={order!r} must be 'largest_first' or 'pro_rata'")
    seized = np.divide(seized_usd, prices, out=np.zeros_like(seized_usd), where=prices > 0.0)
    return repaid, snap_to_bag(seized, units)


def liquidation(
    debt_usd: np.ndarray,
    collateral_units: np.ndarray,
    prices: np.ndarray,
    liq_threshold: np.ndarray,
    bonus: np.ndarray,
    protocol_fee_share: np.ndarray | float,
    *,
    close_factor_threshold: float = 0.95,
    default_close_factor: float = 0.5,
    full_close_below_usd: float = 0.0,
    seizure_order: SeizureOrder = "largest_first",
    max_rounds: int = 1,
    validate: bool = True,
) -> LiquidationResult:
    """Liquidate every position whose HF at ``prices`` (the step's LOW) is below 1.

    Per call: repay ``close_factor * debt``, seize collateral worth ``repaid * (1 + bonus)`` at
    ``prices`` (capped at the collateral held, repayment reduced to ``bag / (1 + bonus)``); the
    protocol keeps ``protocol_fee_share`` of the bonus part ``seized * bonus / (1 + bonus)``.

    Args:
        debt_usd: ``(...)`` debt, >= 0.
        collateral_units: ``(..., N)`` collateral held, >= 0.
        prices: ``(..., N)`` USD per unit, >= 0 (the step's low).
        liq_threshold: ``(N,)`` in [0, 1].
        bonus: ``(N,)`` liquidation bonus in [0, 1) (0.05 -> LB 1.05).
        protocol_fee_share: scalar or ``(N,)`` in [0, 1], share of the bonus taken by the protocol.
        close_factor_threshold, default_close_factor, full_close_below_usd: see :func:`close_factor`.
        seizure_order: ``"largest_first"`` or ``"pro_rata"`` (module docstring).
        max_rounds: liquidation calls per position in this step (>= 1).
        validate: ``False`` is the env's hot path: float arrays ``debt_usd`` ``(M,)`` and
            ``collateral_units`` / ``prices`` ``(M, N)`` the caller guarantees finite and >= 0,
            parameters from a snapshot validated when it was loaded.
    """
    if validate:
        debt_usd, collateral_units, prices, bonus, protocol_fee_share = _checked_liquidation_inputs(
            debt_usd, collateral_units, prices, liq_threshold, bonus, protocol_fee_share, max_rounds
        )
    cf_kwargs = {
        "threshold": close_factor_threshold,
        "default": default_close_factor,
        "full_close_below_usd": full_close_below_usd,
    }
    return _liquidate(
        debt_usd,
        collateral_units,
        prices,
        np.asarray(liq_threshold, dtype=float),
        bonus,
        protocol_fee_share,
        cf_kwargs,
        seizure_order,
        max_rounds,
    )


def _checked_liquidation_inputs(
    debt_usd: np.ndarray,
    collateral_units: np.ndarray,
    prices: np.ndarray,
    liq_threshold: np.ndarray,
    bonus: np.ndarray,
    protocol_fee_share: np.ndarray | float,
    max_rounds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`liquidation`'s range checks; returns debt, units, prices broadcast to one batch shape,
    the ``(N,)`` bonuses and the fee share as float arrays."""
    debt = check_range("debt_usd", debt_usd, 0.0)
    units = check_range("collateral_units", collateral_units, 0.0)
    prices = check_range("prices", prices, 0.0)
    check_range("liq_threshold", liq_threshold, 0.0, 1.0)
    # (N,) per asset: the seizure picks one asset's bonus
    bonus = np.broadcast_to(
        check_range("bonus", bonus, 0.0, 1.0, upper_open=True), units.shape[-1:]
    )
    fee_share = check_range("protocol_fee_share", protocol_fee_share, 0.0, 1.0)
    if not (isinstance(max_rounds, int | np.integer) and max_rounds >= 1):
        raise ValueError(f"max_rounds={max_rounds!r} must be an integer >= 1")
    units, prices = np.broadcast_arrays(units, prices)
    batch = np.broadcast_shapes(units.shape[:-1], debt.shape)
    units = np.broadcast_to(units, (*batch, units.shape[-1]))
    return np.broadcast_to(debt, batch), units, prices, bonus, fee_share


def _liquidate(
    debt: np.ndarray,
    units: np.ndarray,
    prices: np.ndarray,
    threshold: np.ndarray,
    bonus: np.ndarray,
    fee_share: np.ndarray | float,
    cf_kwargs: dict,
    order: SeizureOrder,
    max_rounds: int,
) -> LiquidationResult:
    """:func:`liquidation` on validated float arrays of the same batch shape (does not mutate them)."""
    if prices.shape != units.shape:
        prices = np.broadcast_to(prices, units.shape)
    hf_before = health_factor_unchecked(units * prices, threshold, debt)
    repaid_total = np.zeros(debt.shape)
    seized_total = np.zeros(units.shape)
    hf = hf_before
    for _ in range(max_rounds):
        repaid, seized = _seize_one_round(
            debt, units, prices, threshold, bonus, cf_kwargs, order, hf
        )
        hf = None  # later rounds re-check the HF of the updated positions
        debt = np.maximum(debt - repaid, 0.0)
        units = units - seized
        repaid_total += repaid
        seized_total += seized
    fee_units = seized_total * (bonus / (1.0 + bonus)) * fee_share
    value_after = units * prices
    penalty = (seized_total * prices).sum(axis=-1) - repaid_total
    return LiquidationResult(
        debt_repaid_usd=repaid_total,
        collateral_seized_units=seized_total,
        protocol_fee_units=fee_units,
        penalty_usd=np.maximum(penalty, 0.0),
        health_factor_before=hf_before,
        health_factor_after=health_factor_unchecked(value_after, threshold, debt),
        bad_debt_usd=np.where(value_after.sum(axis=-1) <= 0.0, debt, 0.0),
    )


def liquidation_from_params(
    debt_usd: np.ndarray,
    collateral_units: np.ndarray,
    prices: np.ndarray,
    reserves: ReserveArrays,
    params: LendingParams,
    *,
    validate: bool = True,
) -> LiquidationResult:
    """:func:`liquidation` with the thresholds, bonuses, fees and rules of a loaded snapshot
    (``validate``: see :func:`liquidation`)."""
    rules = params.close_factor
    return liquidation(
        debt_usd,
        collateral_units,
        prices,
        reserves.liq_threshold,
        reserves.liq_bonus,
        reserves.liq_protocol_fee,
        close_factor_threshold=rules.hf_threshold,
        default_close_factor=rules.default,
        full_close_below_usd=rules.full_close_below_usd,
        seizure_order=params.liquidation.seizure_order,
        max_rounds=params.liquidation.max_rounds_per_step,
        validate=validate,
    )


# ---------------------------------------------------------------------------------------- rates
def borrow_rate(
    utilization: np.ndarray,
    base: np.ndarray | float,
    slope1: np.ndarray | float,
    slope2: np.ndarray | float,
    u_optimal: np.ndarray | float,
) -> np.ndarray:
    """Annual variable borrow rate of the kinked model.

    ``base + slope1 * U / Uopt`` for U <= Uopt, else ``base + slope1 + slope2 * (U - Uopt) / (1 - Uopt)``.
    All arguments broadcast (e.g. utilization ``(..., N)`` with ``(N,)`` parameters).
    """
    u = check_range("utilization", utilization, 0.0, 1.0)
    base = check_range("base", base, 0.0)
    slope1 = check_range("slope1", slope1, 0.0)
    slope2 = check_range("slope2", slope2, 0.0)
    u_opt = check_range("u_optimal", u_optimal, 0.0, 1.0, lower_open=True, upper_open=True)
    return borrow_rate_unchecked(u, base, slope1, slope2, u_opt)


def borrow_rate_unchecked(
    u: np.ndarray, base: np.ndarray, slope1: np.ndarray, slope2: np.ndarray, u_opt: np.ndarray
) -> np.ndarray:
    """:func:`borrow_rate` without validation, for float arrays that are valid by construction.

    The protocol paths call it at every reset on ``(B, L, N)`` utilizations that are clipped to
    ``[0, 1]``, with parameters from a validated snapshot; re-checking them would cost as much as
    the formula.
    """
    shape = np.broadcast_shapes(*(np.shape(a) for a in (u, base, slope1, slope2, u_opt)))
    # base + slope1 * U / Uopt everywhere (in place), then the few entries above the kink
    rate = np.multiply(slope1, u, out=np.empty(shape))
    rate /= u_opt
    rate += base
    mask = np.broadcast_to(u > u_opt, shape)
    kinked = np.nonzero(mask) if mask.ndim else mask  # indices: a few gathers, not full passes
    if mask.any():
        uk, bk, s1k, s2k, ok = (
            np.broadcast_to(a, shape)[kinked] for a in (u, base, slope1, slope2, u_opt)
        )
        rate[kinked] = bk + s1k + s2k * (uk - ok) / (1.0 - ok)
    return rate


def supply_rate(
    utilization: np.ndarray, borrow_rate_annual: np.ndarray, reserve_factor: np.ndarray | float
) -> np.ndarray:
    """Annual supply rate = borrow_rate * U * (1 - reserve_factor) (suppliers share the interest pro rata)."""
    u = check_range("utilization", utilization, 0.0, 1.0)
    r = check_range("borrow_rate_annual", borrow_rate_annual, 0.0)
    rf = check_range("reserve_factor", reserve_factor, 0.0, 1.0)
    return supply_rate_unchecked(u, r, rf)


def supply_rate_unchecked(
    u: np.ndarray, borrow: np.ndarray, reserve_factor: np.ndarray
) -> np.ndarray:
    """:func:`supply_rate` without validation (see :func:`borrow_rate_unchecked`)."""
    return borrow * u * (1.0 - reserve_factor)


def reserve_rates(
    utilization: np.ndarray, reserves: ReserveArrays
) -> tuple[np.ndarray, np.ndarray]:
    """``(borrow, supply)`` annual rates, each ``(..., N)``, for utilization ``(..., N)``."""
    borrow = borrow_rate(
        utilization, reserves.base, reserves.slope1, reserves.slope2, reserves.u_optimal
    )
    return borrow, supply_rate(utilization, borrow, reserves.reserve_factor)


def accrue_debt(
    debt: np.ndarray, annual_rate: np.ndarray, dt_years: float | np.ndarray
) -> np.ndarray:
    """Variable debt after ``dt_years`` at a constant annual rate, compounded continuously: D * exp(r dt)."""
    check_range("annual_rate", annual_rate, 0.0)
    check_range("dt_years", dt_years, 0.0)
    return np.asarray(debt, dtype=float) * np.exp(np.asarray(annual_rate) * np.asarray(dt_years))


def accrue_supply(
    balance: np.ndarray, annual_supply_rate: np.ndarray, dt_years: float | np.ndarray
) -> np.ndarray:
    """Supplied balance after ``dt_years``: linear within a step, B * (1 + r dt).

    Aave's liquidity index grows by linear interest between updates; one update per step makes it
    compound step by step (daily steps: 365 compoundings a year).
    """
    check_range("annual_supply_rate", annual_supply_rate, 0.0)
    check_range("dt_years", dt_years, 0.0)
    return np.asarray(balance, dtype=float) * (
        1.0 + np.asarray(annual_supply_rate) * np.asarray(dt_years)
    )


def regime_utilization(
    regime_codes: np.ndarray,
    params: RegimeProcess,
    rng_or_noise: np.random.Generator | np.ndarray,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """Utilization of each reserve this step, ``(..., N)`` in [lower, upper] within [0, 1].

    Mean-reverting AR(1) toward the regime's mean (calm < bull < crash); ``params`` comes from
    :meth:`LendingParams.utilization_process` and ``regime_codes`` ``(...)`` index its rows.
    """
    if np.any(np.asarray(params.lower) < 0.0) or np.any(np.asarray(params.upper) > 1.0):
        raise ValueError(f"utilization bounds [{params.lower}, {params.upper}] must lie in [0, 1]")
    return params.draw(regime_codes, rng_or_noise, previous)


# ---------------------------------------------------------------------------------------- population
#: names of :mod:`defialloc.envs.protocols.borrowers` that docs/leverage.md documents as part of this module;
