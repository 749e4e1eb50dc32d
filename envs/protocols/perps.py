"""Perpetual futures math: mark price, funding, margin tiers, liquidation and fees.

Pure vectorized numpy. Shapes: ``...`` is any batch (e.g. ``(B,)`` envs), ``N`` the assets on the
last axis; per-asset parameters are ``(N,)``. Sizes are signed token units (> 0 long, < 0 short),
prices and money are USD, notional is ``|size| * index`` (oracle price, as dYdX/GMX use), and every
fee or margin fraction is of notional. One account is cross-margined over its N positions.

Funding (dYdX-style): premium = (mark - index) / index; each 8 h period pays
``clip(premium + interest, -clamp, clamp)``; a step of ``periods_per_step`` periods (3 for daily
steps) pays that many times it. The position holder receives ``-rate * size * index``: with the perp
above the index (rate > 0) longs pay and shorts receive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.protocols.params import FundingParams, RegimeProcess, check_range


def mark_price(index: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Perp mark price ``index * (1 + basis)``; basis ``(mark - index) / index`` > -1, shapes broadcast."""
    index = check_range("index", index, 0.0)
    basis = check_range("basis", basis, -1.0, lower_open=True)
    return index * (1.0 + basis)


def regime_basis(
    regime_codes: np.ndarray,
    params: RegimeProcess,
    rng_or_noise: np.random.Generator | np.ndarray,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """Perp premium over the index this step, ``(..., N)``: AR(1) around the regime's mean.

    ``params`` comes from ``PerpsParams.basis_by_regime.process(regime_names, N)``; typical means are
    positive in bull markets (longs crowd in) and negative in crashes.
    """
    if np.any(np.asarray(params.lower) <= -1.0):
        raise ValueError(f"basis lower bound {params.lower} must be > -1")
    return params.draw(regime_codes, rng_or_noise, previous)


def funding_rate(
    mark: np.ndarray,
    index: np.ndarray,
    clamp: float,
    *,
    periods_per_step: float = 1.0,
    interest_per_period: float = 0.0,
) -> np.ndarray:
    """Funding rate per step (fraction of notional): ``periods * clip((mark - index)/index + interest, ±clamp)``.

    Positive when the perp trades above the index (longs pay). Shapes broadcast.
    """
    mark = check_range("mark", mark, 0.0)
    index = check_range("index", index, 0.0, lower_open=True)
    check_range("clamp", clamp, 0.0, lower_open=True)
    check_range("periods_per_step", periods_per_step, 0.0, lower_open=True)
    premium = (mark - index) / index
    return periods_per_step * np.clip(premium + interest_per_period, -clamp, clamp)


def funding_rate_from_params(
    mark: np.ndarray, index: np.ndarray, params: FundingParams
) -> np.ndarray:
    """:func:`funding_rate` with a loaded venue's clamp, periods per step and interest."""
    return funding_rate(
        mark,
        index,
        params.clamp_per_period,
        periods_per_step=params.periods_per_step,
        interest_per_period=params.interest_per_period,
    )


def funding_payment_usd(size_units: np.ndarray, index: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Funding received by the position holder this step: ``-rate * size * index`` (``(..., N)`` USD).

    Negative = paid. Longs (size > 0) pay when rate > 0; shorts receive.
    """
    index = check_range("index", index, 0.0)
    return -np.asarray(rate, dtype=float) * np.asarray(size_units, dtype=float) * index


def notional_usd(size_units: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Position notional ``|size| * price``, ``(..., N)`` USD."""
    return np.abs(np.asarray(size_units, dtype=float)) * check_range("price", price, 0.0)


def unrealized_pnl_usd(
    size_units: np.ndarray, entry_price: np.ndarray, price: np.ndarray
) -> np.ndarray:
    """Mark-to-market profit ``size * (price - entry_price)`` per position, ``(..., N)`` USD."""
    entry = check_range("entry_price", entry_price, 0.0)
    return np.asarray(size_units, dtype=float) * (check_range("price", price, 0.0) - entry)


def adverse_price(size_units: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Worst intra-step price for each position: the low for longs, the high for shorts, ``(..., N)``.

    The margin check of a step uses it (conservatively, as if every leg hit its extreme together).
    """
    low = check_range("low", low, 0.0)
    high = check_range("high", high, 0.0)
    if np.any(high < low):
        raise ValueError("high must be >= low for every asset and step")
    return np.where(np.asarray(size_units) < 0.0, high, low)


def maintenance_margin_usd(notional: np.ndarray, mmf: np.ndarray) -> np.ndarray:
    """Required maintenance margin ``sum_i MMF_i * |notional_i|``, ``(..., N) -> (...)`` USD."""
    mmf = check_range("mmf", mmf, 0.0, 1.0)
    return (np.abs(np.asarray(notional, dtype=float)) * mmf).sum(axis=-1)


def initial_margin_usd(notional: np.ndarray, imf: np.ndarray) -> np.ndarray:
    """Required initial margin ``sum_i IMF_i * |notional_i|``, ``(..., N) -> (...)`` USD."""
    imf = check_range("imf", imf, 0.0, 1.0)
    return (np.abs(np.asarray(notional, dtype=float)) * imf).sum(axis=-1)


def is_liquidatable(equity_usd: np.ndarray, notional: np.ndarray, mmf: np.ndarray) -> np.ndarray:
    """``(...)`` bool: equity < maintenance margin (strict: equity exactly at the margin is safe)."""
    return np.asarray(equity_usd, dtype=float) < maintenance_margin_usd(notional, mmf)


def meets_initial_margin(
    equity_usd: np.ndarray, notional: np.ndarray, imf: np.ndarray
) -> np.ndarray:
    """``(...)`` bool: a position of this notional may be opened/increased (equity >= initial margin)."""
    return np.asarray(equity_usd, dtype=float) >= initial_margin_usd(notional, imf)


def trading_fee_usd(traded_units: np.ndarray, price: np.ndarray, fee_rate: float) -> np.ndarray:
    """Taker fee ``fee_rate * |traded| * price`` per asset, ``(..., N)`` USD."""
    check_range("fee_rate", fee_rate, 0.0, 1.0)
    return fee_rate * notional_usd(traded_units, price)


def liquidation_fee_usd(notional: np.ndarray, fee_rate: float = 0.015) -> np.ndarray:
    """Liquidation fee ``fee_rate * sum |notional|``, ``(..., N) -> (...)`` USD (before the equity cap)."""
    check_range("fee_rate", fee_rate, 0.0, 1.0)
    return fee_rate * np.abs(np.asarray(notional, dtype=float)).sum(axis=-1)


@dataclass(frozen=True)
class PerpLiquidation:
    """Outcome of the margin check of one step; arrays have the batch shape ``(...)``.

    Attributes:
        liquidated: bool, the account was below maintenance margin and is closed.
        fee_usd: liquidation fee actually paid (capped at the positive equity left).
        equity_after_usd: equity left to the trader (0 when fee or losses ate it).
        insurance_loss_usd: negative equity absorbed by the insurance fund.
        closed_size_units: ``(..., N)`` signed size closed (the whole position when liquidated).
    """

    liquidated: np.ndarray
    fee_usd: np.ndarray
    equity_after_usd: np.ndarray
    insurance_loss_usd: np.ndarray
    closed_size_units: np.ndarray


def perp_liquidation(
    equity_usd: np.ndarray,
    size_units: np.ndarray,
    price: np.ndarray,
    mmf: np.ndarray,
    liquidation_fee: float = 0.015,
    *,
    validate: bool = True,
) -> PerpLiquidation:
    """Close every position of accounts below maintenance margin at ``price`` and charge the fee.

    Args:
        equity_usd: ``(...)`` collateral + unrealized PnL valued at ``price``.
        size_units: ``(..., N)`` signed sizes.
        price: ``(..., N)`` price of the check (e.g. :func:`adverse_price`).
        mmf: ``(N,)`` maintenance margin fractions.
        liquidation_fee: fraction of the closed notional.
        validate: ``False`` is the env's hot path (float arrays, prices >= 0, fractions in [0, 1]
            already checked when the venue's parameters were loaded).
    """
    equity = np.asarray(equity_usd, dtype=float)
    size = np.asarray(size_units, dtype=float)
    if validate:
        price = check_range("price", price, 0.0)
        mmf = check_range("mmf", mmf, 0.0, 1.0)
        check_range("fee_rate", liquidation_fee, 0.0, 1.0)
    notional = np.abs(size) * price
    total_notional = notional.sum(axis=-1)
    # strict: equity exactly at the maintenance margin is safe (as :func:`is_liquidatable`)
    liquidated = (equity < (notional * mmf).sum(axis=-1)) & (total_notional > 0.0)
    fee = np.where(
        liquidated, np.minimum(liquidation_fee * total_notional, np.maximum(equity, 0.0)), 0.0
    )
    return PerpLiquidation(
        liquidated=liquidated,
        fee_usd=fee,
        equity_after_usd=np.where(liquidated, np.maximum(equity - fee, 0.0), equity),
        insurance_loss_usd=np.where(liquidated, np.maximum(-equity, 0.0), 0.0),
        closed_size_units=np.where(liquidated[..., None], size, 0.0),
    )
