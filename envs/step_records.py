"""What the batched simulator hands out: a step's results, an execution, drawn episodes.

Plain records with a leading env axis ``B`` (see :mod:`envs.simulator` for the dynamics that fill them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.execution.costs import TradeCosts
from envs.market.paths import MarketPaths


@dataclass
class StepResult:
    """Outcome of one batched step; arrays have a leading env axis ``B``.

    The protocol fields are None in spot-only mode. ``health_factor`` (inf without debt),
    ``debt_usd``, ``collateral_usd`` and ``perp_notional_usd`` are after the step, at ``t + 1``
    prices; ``liquidations`` counts this step's liquidation events (lending + perp account);
    ``liquidation_penalty_usd`` is the lending part of ``costs.liquidation_usd``; ``insurance_usd``
    is perp loss beyond the cash, absorbed by the venue (adds back to the value); ``bad_debt_usd``
    the account's negative equity written off at ruin (adds back too: the recorded value is 0).
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


@dataclass
class Execution:
    """What :meth:`PortfolioSimulator.execute` did at the decision time (arrays ``(B,)``)."""

    value_before: np.ndarray
    costs: TradeCosts
    turnover: np.ndarray
    kill_switch: np.ndarray
    #: spot path only (None with lending/perps): weights before trading, the targets acted on (after the
    #: kill-switch override) and the assets traded (after the no-trade band), ``(B, N+1)`` / ``(B, N)``
    current_weights: np.ndarray | None = None
    target_weights: np.ndarray | None = None
    trade_mask: np.ndarray | None = None


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
