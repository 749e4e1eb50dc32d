"""What the leveraged env reports: the protocol fields of a batched StepResult and of the single env's info.

Keys (documented in docs/env_leverage.md), all USD unless named otherwise, after the step at ``t + 1``
prices: ``health_factor`` (inf without debt), ``debt_usd``, ``debt_units`` (numeraire units),
``collateral_usd``, ``perp_size`` (signed units), ``perp_notional_usd``, ``mark_prices``, the step's
flows ``liquidations`` (count), ``liquidation_penalty_usd``, ``interest_usd`` (paid minus earned),
``funding_usd`` (paid minus received), ``insurance_usd``, ``bad_debt_usd`` (negative equity written
off at ruin), and what a test needs to recompute the
market PnL independently: ``holdings_during_move`` (N + 1, cash last), ``debt_units_during_move``,
``perp_size_during_move``, plus ``low_prices_effective`` (the low the agent was checked at) and
``cascade_sale_units`` (the borrower population's forced sales into the pools).

With the options venue: ``option_units`` / ``option_strike`` / ``option_expiry_step`` ``(N, 2)``
(slot 0 the call, 1 the put; signed units, USD strikes, the episode step of expiry), ``option_marks``
``(N, 2)`` (mid per unit now), ``option_value_usd``, the step's ``option_premium_usd`` (net paid),
``option_fees_usd``, ``option_spread_usd``, ``option_settlement_usd`` (net payoff received),
``option_settlement_fee_usd``, ``option_liquidation_usd``, ``option_insurance_usd``, and for the
identity ``option_units_during_move``, ``option_marks_at_decision`` (mid at ``t`` of the contracts
held through the move) and ``option_marks_after`` (their settlement value or mid at ``t + 1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from defialloc.envs.leverage import LeverageEngine, StepCosts
from defialloc.envs.leverage_move import MoveOutcome

if TYPE_CHECKING:
    from defialloc.envs.option_book import OptionFills
    from defialloc.envs.step_records import StepResult

FLOW_KEYS = (
    "liquidations",
    "liquidation_penalty_usd",
    "interest_usd",
    "funding_usd",
    "insurance_usd",
    "bad_debt_usd",
)


OPTION_FLOW_KEYS = (
    "option_premium_usd",
    "option_fees_usd",
    "option_spread_usd",
    "option_settlement_usd",
    "option_settlement_fee_usd",
)


def protocol_step_fields(
    result: StepResult,
    engine: LeverageEngine,
    move: MoveOutcome,
    units: np.ndarray,
    price: np.ndarray,
    num: np.ndarray,
    option_fills: OptionFills | None = None,
) -> None:
    """Fill the protocol fields of ``result`` (``(B,)`` arrays) and extend its costs (the option
    settlement fees join the fees); ``option_fills``: the decision's option orders (None: none)."""
    costs = result.costs
    fees = costs.fees_usd
    if move.options is not None:
        fees = fees + move.options.settlement_fee_usd
    result.costs = StepCosts(
        fees,
        costs.slippage_usd,
        costs.gas_usd,
        move.interest_usd,
        move.funding_usd,
        move.liquidation_usd,
    )
    result.health_factor = engine.refresh_health(units, price, num)
    result.debt_usd = engine.debt * num
    collateral = (units * price).sum(axis=1)
    result.collateral_usd = collateral if engine.lending_on else np.zeros_like(collateral)
    result.liquidations = move.liquidations
    result.liquidation_penalty_usd = move.liquidation_penalty_usd
    result.interest_usd = move.interest_usd
    result.funding_usd = move.funding_usd
    result.perp_notional_usd = (np.abs(engine.perp_size) * price).sum(axis=1)
    result.insurance_usd = move.insurance_usd
    result.bad_debt_usd = move.bad_debt_usd
    book = engine.options
    if book is not None and move.options is not None:
        zero = np.zeros(engine.n_envs)
        result.option_value_usd = book.value_usd()
        result.option_premium_usd = zero if option_fills is None else option_fills.premium_usd
        result.option_fees_usd = zero if option_fills is None else option_fills.fees_usd
        result.option_spread_usd = zero if option_fills is None else option_fills.spread_usd
        result.option_settlement_usd = move.options.settlement_usd
        result.option_settlement_fee_usd = move.options.settlement_fee_usd


def protocol_info(
    engine: LeverageEngine,
    move: MoveOutcome | None,
    result: StepResult | None,
    index: int,
    tau: int,
    holdings: np.ndarray,
    prices: np.ndarray,
    low_now: np.ndarray,
) -> dict:
    """Protocol keys of env ``index``'s info; flows are zero right after a reset (``result`` None).

    ``holdings`` ``(N + 1,)`` (cash last) and ``prices`` ``(N + 1,)`` USD (numeraire last) are env
    ``index``'s state and prices now, at time index ``tau`` of its path; ``low_now`` ``(N,)`` the
    current time's low (reported as the effective low after a reset).
    """
    p, n = prices[:-1], float(prices[-1])
    units = holdings[:-1]
    debt_units = float(engine.debt[index])
    info: dict = {
        "health_factor": float(engine.hf_now[index]),
        "debt_usd": debt_units * n,
        "debt_units": debt_units,
        "collateral_usd": float(units @ p) if engine.lending_on else 0.0,
        "perp_size": engine.perp_size[index].copy(),
        "perp_notional_usd": float(np.abs(engine.perp_size[index]) @ p),
        "mark_prices": engine.paths.mark[index, tau].copy() if engine.perps_on else p.copy(),
    }
    if result is None or move is None:
        info.update({key: 0 if key == "liquidations" else 0.0 for key in FLOW_KEYS})
        info["holdings_during_move"] = holdings.copy()
        info["debt_units_during_move"] = debt_units
        info["perp_size_during_move"] = engine.perp_size[index].copy()
        info["low_prices_effective"] = np.array(low_now, dtype=float)
        info["cascade_sale_units"] = np.zeros(engine.n_assets)
        return info
    for key in FLOW_KEYS:
        value = getattr(result, key)[index]
        info[key] = int(value) if key == "liquidations" else float(value)
    during = np.empty(engine.n_assets + 1)
    during[:-1], during[-1] = move.units_during_move[index], move.cash_during_move[index]
    info["holdings_during_move"] = during
    info["debt_units_during_move"] = float(move.debt_during_move[index])
    info["perp_size_during_move"] = move.perp_size_during_move[index].copy()
    info["low_prices_effective"] = move.low_effective[index].copy()
    info["cascade_sale_units"] = move.cascade_sale_units[index].copy()
    if engine.options is not None:
        info.update(_option_info(engine, move, result, index))
    return info


def _option_info(
    engine: LeverageEngine, move: MoveOutcome | None, result: StepResult | None, index: int
) -> dict:
    """The options' info keys of env ``index`` (module docstring); flows are 0 after a reset."""
    book = engine.options
    assert book is not None
    warmup = engine.cfg.warmup
    info: dict = {
        "option_units": book.units[index].copy(),
        "option_strike": book.strike[index].copy(),
        "option_expiry_step": np.where(book.units[index] != 0.0, book.expiry[index] - warmup, 0),
        "option_marks": book.mark[index].copy(),
        "option_value_usd": float((book.units[index] * book.mark[index]).sum()),
    }
    opt = None if move is None else move.options
    if result is None or opt is None:
        info.update({key: 0.0 for key in OPTION_FLOW_KEYS})
        info["option_liquidation_usd"] = info["option_insurance_usd"] = 0.0
        info["option_units_during_move"] = book.units[index].copy()
        info["option_marks_at_decision"] = book.mark[index].copy()
        info["option_marks_after"] = book.mark[index].copy()
        return info
    for key in OPTION_FLOW_KEYS:
        info[key] = float(getattr(result, key)[index])
    info["option_liquidation_usd"] = float(opt.liquidation_usd[index])
    info["option_insurance_usd"] = float(opt.insurance_usd[index])
    info["option_units_during_move"] = opt.units_during_move[index].copy()
    info["option_marks_at_decision"] = opt.mark_before[index].copy()
    info["option_marks_after"] = opt.mark_after[index].copy()
    return info
