"""Kill-switch: a risk override that any allocator can sit behind (env, backtests, paper trading).

When the portfolio's drawdown passes ``max_drawdown`` or its health factor falls under ``min_health_factor``,
the kill-switch replaces the policy's target by "all in the numeraire, no leverage, no perps", then
holds it for ``cooldown_steps`` decision steps before handing control back. The trades it forces go
through the normal execution model, so de-levering pays the real fees, slippage and gas.

It is a component with vectorized state over ``B`` portfolios, not env-only code. Two users, both
off unless asked for: the policy wrapper :class:`defialloc.agents.kill_switch_policy.KillSwitchPolicy` (around
any policy, in backtests and paper trading: ``--kill-switch``) and the env's own option
``env.kill_switch`` (for training). With the same parameters they trade identically.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class KillSwitchConfig(BaseModel):
    """Thresholds of the kill-switch (disabled by default)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    max_drawdown: float = Field(
        default=0.35, gt=0.0, lt=1.0, description="trigger when 1 - V/peak exceeds this"
    )
    min_health_factor: float = Field(
        default=1.1, ge=1.0, le=10.0, description="trigger when HF falls under this"
    )
    cooldown_steps: int = Field(
        default=10, ge=0, le=10_000, description="steps held in cash after a trigger"
    )
    reset_peak_after_cooldown: bool = Field(
        default=True, description="measure drawdown from the value at re-entry, not the old peak"
    )


class KillSwitch:
    """Vectorized kill-switch state for ``n`` portfolios."""

    def __init__(self, cfg: KillSwitchConfig, n: int) -> None:
        self.cfg = cfg
        self.remaining = np.zeros(n, dtype=np.int64)

    def reset(self, mask: np.ndarray) -> None:
        self.remaining[mask] = 0

    @property
    def active(self) -> np.ndarray:
        """``(B,)`` bool: the kill-switch overrides the policy this step."""
        return self.remaining > 0

    def update(self, drawdown: np.ndarray, health_factor: np.ndarray | None = None) -> np.ndarray:
        """Advance one decision step; returns ``(B,)`` bool of portfolios that must go to cash now.

        Args:
            drawdown: ``(B,)`` current drawdown ``1 - V / peak`` (fraction).
            health_factor: ``(B,)`` current health factor (inf without debt), or None without lending.
        """
        if not self.cfg.enabled:
            return np.zeros_like(self.remaining, dtype=bool)
        trigger = drawdown > self.cfg.max_drawdown
        if health_factor is not None:
            trigger |= health_factor < self.cfg.min_health_factor
        was_active = self.remaining > 0
        remaining = self.remaining - was_active  # one step of cooldown used by the active ones
        fire = trigger & ~was_active
        if fire.any():
            # the step that fires counts as the first of cooldown + 1 steps in cash
            remaining[fire] = self.cfg.cooldown_steps + 1
        self.remaining = remaining
        return remaining > 0

    @property
    def last_override_step(self) -> np.ndarray:
        """``(B,)`` bool: this step is the last one under the override (control returns next step)."""
        return self.remaining == 1

    def released(self, before: np.ndarray) -> np.ndarray:
        """Portfolios whose override ended this step (``before`` = active mask of the previous step)."""
        return before & ~self.active

    def apply(
        self,
        actions: np.ndarray,
        safe_action: np.ndarray,
        drawdown: np.ndarray,
        health_factor: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Policy-side use (:class:`defialloc.agents.kill_switch_policy.KillSwitchPolicy`): one
        :meth:`update`, then the rows under the override get ``safe_action``.

        Args:
            actions: ``(B, A)`` the policy's actions.
            safe_action: ``(A,)`` the action meaning all numeraire, no debt, no perps (e.g.
                ``defialloc.envs.leverage.ActionLayout.safe_action()``).
            drawdown, health_factor: as in :meth:`update`.

        Returns:
            ``(actions (B, A), active (B,) bool)``.
        """
        active = self.update(drawdown, health_factor)
        if not active.any():
            return actions, active
        return np.where(active[:, None], np.asarray(safe_action, dtype=float), actions), active
