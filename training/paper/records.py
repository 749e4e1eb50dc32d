"""The ledger rows of one decision bar, read off the streaming simulator (see ``ledger.py``).

Spot rows (orders, fills, positions) and, for levered or hedged policies, the ``levered`` row (debt,
collateral, health factor, leverage, perp notional after the bar's trades; interest, funding,
liquidations, insurance and bad debt of the move that ended at the bar) and the ``perp_positions``
rows. Debt and perp trades are fills too: ``<numeraire>-DEBT`` (``borrow``/``repay``, numeraire
units) and ``<asset>-PERP`` (``buy``/``sell``, signed contract units, notional at the mark).
"""

from __future__ import annotations

import math

import numpy as np

from defialloc.envs.step_records import StepResult
from defialloc.envs.streaming import OrderIntent, StreamingSimulator

DEBT_SUFFIX = "-DEBT"
PERP_SUFFIX = "-PERP"


def _finite_or_none(value: float) -> float | None:
    """SQLite has no infinity worth storing: an infinite health factor (no debt) is NULL."""
    return float(value) if math.isfinite(value) else None


def order_rows(intent: OrderIntent, asset_names: tuple[str, ...]) -> list[tuple]:
    """``orders`` rows: per asset current and target weight, order USD, side, submitted."""
    rows = []
    for i, asset in enumerate(asset_names):
        gap = float(intent.target[i] - intent.current[i])
        side = "buy" if gap > 0 else ("sell" if gap < 0 else "none")
        order = (
            float(intent.order_usd[i]) if intent.order_usd is not None else gap * intent.value_usd
        )
        rows.append(
            (asset, float(intent.current[i]), float(intent.target[i]), order, side, int(intent.submitted[i]))
        )  # fmt: skip
    return rows


def fill_rows(
    sim: StreamingSimulator,
    intent: OrderIntent,
    asset_names: tuple[str, ...],
    numeraire: str,
    price: np.ndarray,
    num: float,
) -> list[tuple]:
    """``fills`` rows: spot units traded, the numeraire's change, then debt and perp changes."""
    rows = []
    delta = sim.units[0] - intent.units_before
    for i, asset in enumerate(asset_names):
        if delta[i] != 0.0:
            side = "buy" if delta[i] > 0 else "sell"
            rows.append((asset, side, float(delta[i]), float(abs(delta[i]) * price[i])))
    cash_delta = float(sim.cash[0] - intent.cash_before)
    if cash_delta != 0.0:
        rows.append(
            (numeraire, "in" if cash_delta > 0 else "out", cash_delta, abs(cash_delta) * num)
        )
    engine = sim.protocols
    if engine is None:
        return rows
    debt_delta = float(engine.debt[0]) - intent.debt_before
    if debt_delta != 0.0:
        side = "borrow" if debt_delta > 0 else "repay"
        rows.append((numeraire + DEBT_SUFFIX, side, debt_delta, abs(debt_delta) * num))
    if engine.perps_on and intent.perp_before is not None:
        mark = engine.paths.mark[0, sim.decision_row]
        perp_delta = engine.perp_size[0] - intent.perp_before
        for i, asset in enumerate(asset_names):
            if perp_delta[i] != 0.0:
                side = "buy" if perp_delta[i] > 0 else "sell"
                rows.append(
                    (asset + PERP_SUFFIX, side, float(perp_delta[i]), float(abs(perp_delta[i]) * mark[i]))
                )  # fmt: skip
    return rows


def position_rows(
    sim: StreamingSimulator,
    asset_names: tuple[str, ...],
    numeraire: str,
    price: np.ndarray,
    num: float,
) -> list[tuple]:
    """``positions`` rows: units, price, USD value and weight (of the gross holdings) per asset and cash."""
    units = sim.units[0]
    values = units * price
    cash_value = float(sim.cash[0]) * num
    total = float(values.sum()) + cash_value
    safe = total if total > 0.0 else math.inf  # an empty (ruined) account reads as weight 0
    rows = [(a, float(units[i]), float(price[i]), float(values[i]), float(values[i] / safe))
            for i, a in enumerate(asset_names)]  # fmt: skip
    rows.append((numeraire, float(sim.cash[0]), num, cash_value, cash_value / safe))
    return rows


def debt_usd(sim: StreamingSimulator, num: float) -> float:
    """USD value of the debt now (0 without lending)."""
    engine = sim.protocols
    return 0.0 if engine is None else float(engine.debt[0]) * num


def levered_rows(
    sim: StreamingSimulator,
    result: StepResult | None,
    price: np.ndarray,
    num: float,
    health_factor_marked: float,
    target_leverage: float,
) -> tuple[tuple, list[tuple]]:
    """The ``levered`` row (``ledger.LEVERED_COLUMNS``) and the ``perp_positions`` rows of a bar.

    States are after the bar's trades at the bar's close; flows are those of ``result``, the move
    that ended at this bar (None at the first decision bar: zero flows).
    """
    engine = sim.protocols
    assert engine is not None
    units = sim.units[0]
    debt_units = float(engine.debt[0])
    debt = debt_units * num
    held = float((units * price).sum()) + float(sim.cash[0]) * num
    equity = held - debt
    hf = float(engine.health_factor(sim.units, price[None, :], np.array([num]))[0])
    collateral = float((units * price).sum()) if engine.lending_on else 0.0
    notional = float((np.abs(engine.perp_size[0]) * price).sum())
    if result is None:
        flows = (0.0, 0.0, 0.0, 0, 0.0, 0.0)
    else:
        costs = result.costs
        flows = (
            float(result.interest_usd[0]),  # type: ignore[index]
            float(result.funding_usd[0]),  # type: ignore[index]
            float(costs.liquidation_usd[0]),  # type: ignore[attr-defined]
            int(result.liquidations[0]),  # type: ignore[index]
            float(result.insurance_usd[0]),  # type: ignore[index]
            float(result.bad_debt_usd[0]),  # type: ignore[index]
        )
    row = (
        debt_units,
        debt,
        collateral,
        _finite_or_none(hf),
        _finite_or_none(health_factor_marked),
        debt / equity if equity > 0.0 else None,
        float(target_leverage),
        notional,
        *flows,
    )
    perps = []
    if engine.perps_on:
        tau = sim.decision_row
        mark, funding = engine.paths.mark[0, tau], engine.paths.funding[0, tau]
        size = engine.perp_size[0]
        perps = [
            (a, float(size[i]), float(mark[i]), float(size[i] * price[i]), float(funding[i]))
            for i, a in enumerate(sim.asset_names)
        ]
    return row, perps
