"""What the batched simulator hands out: a step's results, an execution, drawn episodes.

Plain records with a leading env axis ``B`` (see :mod:`defialloc.envs.simulator` for the dynamics that fill them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from defialloc.envs.execution.costs import TradeCosts
from defialloc.envs.market.paths import MarketPaths

# a runtime import (not TYPE_CHECKING): the paper trader resolves Execution's type hints to
# rebuild a pending execution from its JSON state (envs/streaming.py:load_state)
from defialloc.envs.option_book import OptionFills


@dataclass
class StepResult:
    """Outcome of one batched step; arrays have a leading env axis ``B``.

    The protocol fields are None in spot-only mode. ``health_factor`` (inf without debt),
    ``debt_usd``, ``collateral_usd`` and ``perp_notional_usd`` are after the step, at ``t + 1``
    prices; ``liquidations`` counts this step's liquidation events (lending + perp account);
    ``liquidation_penalty_usd`` is the lending part of ``costs.liquidation_usd``; ``insurance_usd``
    is perp loss beyond the cash, absorbed by the venue (adds back to the value); ``bad_debt_usd``
    the account's negative equity written off at ruin (adds back too: the recorded value is 0).

    With the options venue (None otherwise): ``option_value_usd`` the mark value of the option
    positions after the step (part of ``value_usd``); the step's flows ``option_premium_usd`` (net
    premium paid at the ask/bid, < 0 when received), ``option_fees_usd`` (trading fees, part of
    ``costs.fees_usd``), ``option_spread_usd`` (half-spread against the mid, part of
    ``costs.slippage_usd``), ``option_settlement_usd`` (net payoff received at expiry, < 0 when
    written calls paid) and ``option_settlement_fee_usd`` (part of ``costs.fees_usd``); and the
    portfolio Greeks after the step (envs/greeks.py): ``delta_usd``, ``gamma_usd``, ``vega_usd``,
    ``theta_usd``.
    """

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    value_usd: np.ndarray
    costs: TradeCosts
    turnover: np.ndarray
    regime: np.ndarray
    kill_switch: np.ndarray
    health_factor: np.ndarray | None = None
    debt_usd: np.ndarray | None = None
    collateral_usd: np.ndarray | None = None
    liquidations: np.ndarray | None = None
    liquidation_penalty_usd: np.ndarray | None = None
    interest_usd: np.ndarray | None = None
    funding_usd: np.ndarray | None = None
    perp_notional_usd: np.ndarray | None = None
    insurance_usd: np.ndarray | None = None
    bad_debt_usd: np.ndarray | None = None
    option_value_usd: np.ndarray | None = None
    option_premium_usd: np.ndarray | None = None
    option_fees_usd: np.ndarray | None = None
    option_spread_usd: np.ndarray | None = None
    option_settlement_usd: np.ndarray | None = None
    option_settlement_fee_usd: np.ndarray | None = None
    delta_usd: np.ndarray | None = None
    gamma_usd: np.ndarray | None = None
    vega_usd: np.ndarray | None = None
    theta_usd: np.ndarray | None = None


#: StepResult fields that are flows over a step: a decision interval sums them (the rest are states)
FLOW_FIELDS = frozenset(
    {
        "reward",
        "turnover",
        "liquidations",
        "liquidation_penalty_usd",
        "interest_usd",
        "funding_usd",
        "insurance_usd",
        "bad_debt_usd",
        "option_premium_usd",
        "option_fees_usd",
        "option_spread_usd",
        "option_settlement_usd",
        "option_settlement_fee_usd",
    }
)


def combine_steps(steps: list[StepResult]) -> StepResult:
    """One :class:`StepResult` for consecutive market steps (a decision interval of
    ``env.decision_every`` steps).

    Flows (:data:`FLOW_FIELDS` and every cost kind) are summed, the kill-switch flag is any-of, and
    states (value, regime, health factor, debt, ...) are the last step's. An env whose episode ended
    inside the interval (terminated or truncated at step ``j``) keeps step ``j``'s states and sums
    only up to it: later steps of that env are never counted.
    """
    if len(steps) == 1:
        return steps[0]
    first = steps[0]
    # live[j]: the env had not ended before step j
    ended = np.zeros(first.reward.shape, dtype=bool)
    live = []
    for step in steps:
        live.append(~ended)
        ended = ended | step.terminated | step.truncated
    out = {}
    for f in dataclasses.fields(first):
        name = f.name
        values = [getattr(step, name) for step in steps]
        if values[0] is None:
            out[name] = None
        elif name == "costs":
            costs = type(values[0])
            out[name] = costs(*(
                sum(np.where(m, getattr(c, g.name), 0.0) for c, m in zip(values, live, strict=True))
                for g in dataclasses.fields(values[0])
            ))  # fmt: skip
        elif name in FLOW_FIELDS:
            out[name] = sum(np.where(m, v, 0) for v, m in zip(values, live, strict=True))
        elif name in ("kill_switch", "terminated", "truncated"):
            out[name] = np.logical_or.reduce(
                [np.asarray(v, dtype=bool) & m for v, m in zip(values, live, strict=True)]
            )
        else:  # a state: the value at the step the env ended, else the last one
            state = values[-1]
            for j in range(len(steps) - 1, -1, -1):
                stopped = live[j] & (steps[j].terminated | steps[j].truncated)
                if stopped.any():
                    state = np.where(stopped, values[j], state)
            out[name] = state
    return StepResult(**out)


@dataclass
class Execution:
    """What :meth:`PortfolioSimulator.execute` did at the decision time (arrays ``(B,)``)."""

    value_before: np.ndarray
    costs: TradeCosts
    turnover: np.ndarray
    kill_switch: np.ndarray
    #: weights before trading (over the value, i.e. the equity with debt), the target weights acted
    #: on (after the kill-switch override; of the gross book ``(1 + leverage) x equity`` with debt)
    #: and the spot assets traded (after the no-trade band), ``(B, N+1)`` / ``(B, N)``; None on a hold
    current_weights: np.ndarray | None = None
    target_weights: np.ndarray | None = None
    trade_mask: np.ndarray | None = None
    #: lending only: the debt / equity target after the LTV clip ``(B,)``
    target_leverage: np.ndarray | None = None
    #: the option orders of the decision (options venue only; None on a hold step)
    options: OptionFills | None = None


@dataclass
class DrawnEpisodes:
    """What starting ``K`` episodes draws from their path seeds, before any env state is touched.

    ``paths``: the market paths; ``features``: their observation features ``(K, L, F)`` float32;
    ``protocol_series``: the lending/perps series (``ProtocolPaths.generate``), None in spot mode.
    """

    paths: MarketPaths
    features: np.ndarray
    protocol_series: dict[str, np.ndarray] | None = None

    def take(self, rows: np.ndarray) -> DrawnEpisodes:
        """The sub-batch of episodes ``rows``."""
        series = self.protocol_series
        return DrawnEpisodes(
            self.paths.take(rows),
            self.features[rows],
            None if series is None else {name: v[rows] for name, v in series.items()},
        )
