"""What the simulator shows at a decision time: protocol rates, the options venue, portfolio Greeks
and the state the action kinds read. Functions of a :class:`defialloc.envs.simulator.PortfolioSimulator` (its
methods of the same names call them), kept apart so that the simulator module holds the dynamics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from defialloc.envs.action_kinds import PortfolioState
from defialloc.envs.greeks import portfolio_greeks
from defialloc.envs.option_views import option_view

if TYPE_CHECKING:
    from defialloc.envs.simulator import PortfolioSimulator


def rates_now(sim: PortfolioSimulator) -> dict[str, np.ndarray] | None:
    """Protocol rates quoted at the decision time (``defialloc.agents.policy.MarketView.rates``); None in
    spot mode. They are the rates of the step ``t -> t + 1`` (set by the state at ``t``, so
    observable): annual ``borrow_rate`` / ``cash_supply_rate`` ``(B,)`` and ``supply_rate``
    ``(B, N)`` with lending, per-step ``funding_rate`` ``(B, N)`` (> 0: longs pay) with perps."""
    engine = sim.protocols
    if engine is None:
        return None
    paths, rates = engine.paths, {}
    if engine.lending_on:
        rates["borrow_rate"] = sim.now(paths.borrow_rate)
        rates["cash_supply_rate"] = sim.now(paths.cash_supply_rate)
        rates["supply_rate"] = sim.now(paths.supply_rate)
    if engine.perps_on:
        rates["funding_rate"] = sim.now(paths.funding)
    return rates or None


def options_now(sim: PortfolioSimulator) -> dict[str, np.ndarray] | None:
    """The options venue as a policy may see it at the decision time
    (:func:`defialloc.envs.option_views.option_view`); None without the venue."""
    engine = sim.protocols
    if engine is None or engine.options is None:
        return None
    price, _ = sim.prices_now()
    return option_view(engine.options, sim.units, sim._now, price)


def greeks_now(sim: PortfolioSimulator, price: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """``(B, N, 4)`` portfolio delta, gamma, vega per vol point and theta per day of each asset
    now (:func:`defialloc.envs.greeks.portfolio_greeks`; ``price`` ``(B, N)`` the index now).
    ``rows``: only these envs (one env's ``info`` needs one row, not the batch)."""
    engine = sim.protocols
    units = sim.units[rows]
    if engine is None:
        return portfolio_greeks(units)
    perp = basis = None
    if engine.perps_on:
        perp = engine.perp_size[rows]
        tau = sim._tau()[rows]
        basis = engine.paths.basis[rows][np.arange(tau.size), tau]
    book = engine.options
    if book is None:
        return portfolio_greeks(units, perp, basis)
    return portfolio_greeks(units, perp, basis, book.units[rows], book.unit_greeks[rows])


def portfolio_state(
    sim: PortfolioSimulator, price: np.ndarray, num: np.ndarray, value: np.ndarray
) -> PortfolioState:
    """What the action kinds read at the decision (envs/action_kinds.py): current weights,
    debt / equity, hedge ratios and, for the inverse-vol anchor, the trailing realized vol."""
    weights = sim.weights(price, num, value)
    b, n = sim.n_envs, sim.n_assets
    leverage, hedge = np.zeros(b), np.zeros((b, n))
    engine = sim.protocols
    if engine is not None:
        equity = np.where(value > 0.0, value, np.inf)
        leverage = engine.debt * num / equity
        held = sim.units > 0.0
        hedge = np.where(held, -engine.perp_size / np.where(held, sim.units, 1.0), 0.0)
    calls = puts = None
    if engine is not None and engine.options is not None:
        calls, puts = engine.options.shares(sim.units)
    vol = None
    if sim.action_map.needs_vol:
        window = min(sim.config.env.observation.vol_window, sim.warmup)
        returns = np.diff(np.log(sim.trailing_prices(window + 1)), axis=1)
        vol = returns.std(axis=1)
    return PortfolioState(weights, leverage, hedge, vol, calls, puts)
