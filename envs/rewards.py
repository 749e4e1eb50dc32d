"""Per-step rewards, vectorized over a batch of envs.

All rewards are computed from the portfolio value before the step (``value_before``, USD, marked at
the market before trading) and after it (``value_after``, after trading costs and the market move), so
every cost the env charges lowers the reward.

Ruin: both values are floored at the ruin level ``floor_usd = ruin_fraction x initial value`` before
the ratio is taken. A live step starts above the floor (an env at or below it has terminated), so
only the step that ruins is affected: its growth is ``log(floor / V_t)``, finite and bounded, and an
episode that ends in ruin sums to exactly ``log(ruin_fraction)`` of log growth (``log 0.05 = -3.0``
by default), however deep the loss (a loss beyond equity is bad debt, the recorded value is 0).
No ``log(0)``, NaN or inf ever reaches a learner.

- ``log_growth``: ``log(V_t+1 / V_t)`` (net of all costs); its sum is the episode's log wealth growth.
- ``differential_sharpe``: Moody & Saffell (1998): with exponential moving moments ``A`` and ``B`` of the
  simple return ``R`` (rate ``eta``), ``D = (B dA - A dB / 2) / (B - A^2)^(3/2)``; zero while the
  variance estimate is not yet positive.
- ``drawdown_penalized``: ``log growth - penalty * max(0, DD_t+1 - DD_t)`` where ``DD = 1 - V / peak``.

Cost term (``reward.cost_weight = c``, default 0: off), added to every kind before ``scale``:
``- c * max(fees + slippage + gas, 0) / max(V_t, floor)`` with the step's trading costs in USD
(``defialloc.envs.execution.costs.TradeCosts``: swaps, perps orders and the lending operations' gas; not
interest, funding or liquidations). The costs already lower ``V_t+1`` and so the log growth; the
term makes the agent feel them ``c`` times more (to curb churn). Ruin: ``V_t`` is above the floor
on every live step and a step's trading costs are at most a few times ``V_t`` (they are a fraction
of the USD traded, itself a bounded multiple of the equity), so the ruining step's reward stays
finite and bounded: ``log(floor / V_t) - c * costs / V_t``. An episode that ends in ruin then sums
to ``log(ruin_fraction)`` (the growth part, unchanged) minus ``c`` times the sum of its cost ratios.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.config import RewardConfig
from defialloc.envs.execution.costs import TradeCosts


class RewardModel:
    """Stateful (per env) reward; ``reset(mask)`` clears the state of the envs that start a new episode."""

    def __init__(self, cfg: RewardConfig, n_envs: int, floor_usd: float) -> None:
        if not floor_usd > 0.0:
            raise ValueError(f"floor_usd={floor_usd} must be > 0 (ruin_fraction x initial value)")
        self.cfg = cfg
        self.floor_usd = float(floor_usd)
        self.ema_mean = np.zeros(n_envs)
        self.ema_sq = np.zeros(n_envs)

    def reset(self, mask: np.ndarray) -> None:
        self.ema_mean[mask] = 0.0
        self.ema_sq[mask] = 0.0

    def __call__(
        self,
        value_before: np.ndarray,
        value_after: np.ndarray,
        drawdown_before: np.ndarray,
        drawdown_after: np.ndarray,
        costs: TradeCosts | None = None,
    ) -> np.ndarray:
        """Reward ``(B,)`` for one step; values in USD, drawdowns as fractions in [0, 1].

        ``costs``: the step's trading costs (USD, ``(B,)`` arrays); needed when ``cost_weight > 0``.
        """
        floor = self.floor_usd
        ratio = np.maximum(value_after, floor) / np.maximum(value_before, floor)
        growth = np.log(ratio)
        kind = self.cfg.kind
        if kind == "log_growth":
            reward = growth
        elif kind == "drawdown_penalized":
            reward = growth - self.cfg.drawdown_penalty * np.maximum(
                drawdown_after - drawdown_before, 0.0
            )
        else:
            reward = self._differential_sharpe(ratio - 1.0)
        if self.cfg.cost_weight > 0.0:
            reward = reward - self.cfg.cost_weight * self.cost_ratio(value_before, costs)
        return self.cfg.scale * reward

    def cost_ratio(self, value_before: np.ndarray, costs: TradeCosts | None) -> np.ndarray:
        """``max(fees + slippage + gas, 0) / max(V_t, floor)`` ``(B,)``: the step's trading costs per
        unit of the value before it (slippage can be slightly negative: the sum is floored at 0)."""
        if costs is None:
            raise ValueError("reward.cost_weight > 0 needs the step's trading costs")
        total = costs.fees_usd + costs.slippage_usd + costs.gas_usd
        return np.maximum(total, 0.0) / np.maximum(value_before, self.floor_usd)

    def _differential_sharpe(self, simple_return: np.ndarray) -> np.ndarray:
        eta = self.cfg.dsr_eta
        a, b = self.ema_mean, self.ema_sq
        d_a = simple_return - a
        d_b = simple_return**2 - b
        variance = b - a**2
        safe = variance > 1e-12
        dsr = np.where(safe, (b * d_a - 0.5 * a * d_b) / np.where(safe, variance, 1.0) ** 1.5, 0.0)
        self.ema_mean = a + eta * d_a
        self.ema_sq = b + eta * d_b
        return dsr
