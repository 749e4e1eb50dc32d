"""The kill-switch as a policy wrapper: a risk overlay that any allocator can sit behind.

``KillSwitchPolicy(inner, config, sim_config)`` asks ``inner`` for its actions at every decision and
flags (:attr:`KillSwitchPolicy.active`) the portfolios under the override; the simulator then gives
those the safe target (all numeraire, no debt, no perps) whatever their action and whatever the
action kind (``PortfolioSimulator.execute(..., override=...)``: the backtest's rollout and the paper
trader pass the flags). An all-numeraire target closes every position regardless of the no-trade
band (``defialloc.envs.actions.all_numeraire``), through the normal execution model (fees, slippage, gas). The rule is the env's own kill-switch
(``env.kill_switch``, :mod:`defialloc.envs.kill_switch`), moved to the policy side so that a user chooses it
per run, around any policy, in backtests (``run_backtest(kill_switch=...)``, ``defialloc evaluate
--kill-switch``) and in paper trading (``defialloc paper --kill-switch``):

- drawdown ``1 - V / peak``, with ``peak`` the highest value seen at a decision; when a cooldown
  ends and ``reset_peak_after_cooldown`` is set, the peak restarts at the value at re-entry;
- it fires when the drawdown exceeds ``max_drawdown`` or the health factor falls under
  ``min_health_factor`` (lending only), and holds the safe action for ``cooldown_steps + 1``
  decisions (the firing one included) before handing control back.

With the same parameters, the wrapper around a policy and the env's kill-switch (wrapper off) give
identical trades, values and flags (tests/test_kill_switch_policy.py). The one difference: the
env's observation (its drawdown feature) and reward keep the env's own running peak, which the
wrapper does not touch.

The wrapper's state (peak and cooldown clock per portfolio) is plain JSON (:meth:`state`,
:meth:`load_state`), so a paper-trading run resumes from it exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from defialloc.agents.policy import MarketView, Policy
from defialloc.envs.config import SimulationConfig
from defialloc.envs.kill_switch import KillSwitch, KillSwitchConfig

#: the parameters a user may set (``enabled`` is the on/off switch itself)
KILL_SWITCH_KEYS = tuple(k for k in KillSwitchConfig.model_fields if k != "enabled")


def kill_switch_params(config: KillSwitchConfig | None) -> dict[str, Any]:
    """Flat run parameters ``{"kill_switch.enabled": ..., "kill_switch.max_drawdown": ...}``.

    Off (None or ``enabled=False``) records only ``kill_switch.enabled = False``.
    """
    if config is None or not config.enabled:
        return {"kill_switch.enabled": False}
    return {f"kill_switch.{k}": v for k, v in config.model_dump(mode="json").items()}


class KillSwitchPolicy(Policy):
    """``inner`` behind the kill-switch (see the module docstring).

    Args:
        inner: any policy; its actions are ``(B, N+1)`` spot-only or ``(B, A)`` in the env's full
            layout (``defialloc.envs.leverage_actions.ActionLayout``).
        config: thresholds; with ``enabled=False`` the wrapper never fires (passes actions through).
        sim_config: unused (kept for call compatibility: the safe target is the simulator's).

    Attributes:
        active: ``(B,)`` bool, the portfolios under the override at the last :meth:`act`.
        peak: ``(B,)`` USD, the value the drawdown is measured from.
    """

    def __init__(
        self, inner: Policy, config: KillSwitchConfig, sim_config: SimulationConfig | None = None
    ) -> None:
        self.inner = inner
        self.config = config
        self.reset(0)

    # the wrapper is invisible in results: it reports the inner policy's identity and needs
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def lookback(self) -> int:  # type: ignore[override]
        return self.inner.lookback

    @property
    def uses_oracle(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "uses_oracle", False))

    @property
    def action_kind(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "action_kind", "target")

    @property
    def decision_every(self) -> int:
        """The inner policy's decision interval (market steps; 1 unless it says otherwise)."""
        return int(getattr(self.inner, "decision_every", 1))

    @property
    def diagnostics(self) -> dict[str, int]:
        """The inner policy's diagnostics (e.g. optimizer fallbacks), if it keeps any."""
        return dict(getattr(self.inner, "diagnostics", {}) or {})

    @property
    def remaining(self) -> np.ndarray:
        """``(B,)`` decisions left under the override (the current one included)."""
        return self.switch.remaining

    def reset(self, n_envs: int) -> None:
        """New episodes for ``n_envs`` portfolios: the inner policy's reset, peaks and clocks cleared."""
        if n_envs > 0:
            self.inner.reset(n_envs)
        self.switch = KillSwitch(self.config, n_envs)
        # 0 until the first decision's value arrives (the peak is then that value)
        self.peak = np.zeros(n_envs)
        self.active = np.zeros(n_envs, dtype=bool)

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        """The inner policy's actions ``(B, A)``, unchanged; :attr:`active` flags the portfolios
        the simulator must override (pass it as ``execute(..., override=wrapper.active)``)."""
        if view.value_usd is None:
            raise ValueError(
                "KillSwitchPolicy needs MarketView.value_usd (the portfolio value at the decision); "
                "evaluation.rollout.run_policy fills it"
            )
        # the inner policy decides at every step, overridden or not, so that its own state (e.g.
        # rebalancing clocks) evolves exactly as behind the env's kill-switch
        actions = self.inner.act(observation, view)
        self.decide(view.value_usd, view.health_factor)
        return actions

    def decide(self, value_usd: np.ndarray, health_factor: np.ndarray | None = None) -> np.ndarray:
        """Advance one decision: update the peaks and the cooldown clocks; returns (and keeps in
        :attr:`active`) the ``(B,)`` override flags (paper trading calls this around the ONNX policy).

        Args:
            value_usd: ``(B,)`` portfolio values at the decision, USD.
            health_factor: ``(B,)`` health factors (inf without debt), None without lending.
        """
        value = np.asarray(value_usd, dtype=np.float64)
        b = self.peak.shape[0]
        if value.shape != (b,):
            raise ValueError(
                f"KillSwitchPolicy was reset for {b} portfolios but got values of shape "
                f"{value.shape}; call reset(n_envs) first"
            )
        peak = self.peak
        # re-entry: the previous decision was the last under the override (the env's semantics)
        released = self.switch.last_override_step
        if self.config.reset_peak_after_cooldown and released.any():
            peak = np.where(released, value, peak)
        peak = np.maximum(peak, value)
        live = peak > 0.0
        # the same expression as the env's (1 - V / peak): bit-identical triggers
        drawdown = np.where(live, 1.0 - value / np.where(live, peak, 1.0), 0.0)
        hf = None if health_factor is None else np.asarray(health_factor, dtype=np.float64)
        active = self.switch.update(drawdown, hf)
        self.peak = peak
        self.active = active.copy()
        return self.active

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, list]:
        """JSON-serializable state: ``peak`` (USD) and ``remaining`` (decisions) per portfolio."""
        return {"peak": self.peak.tolist(), "remaining": self.switch.remaining.tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`; raises ValueError naming what is wrong."""
        if not isinstance(state, dict) or set(state) != {"peak", "remaining"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"kill-switch state must have keys peak and remaining, got {got}")
        try:
            peak = np.asarray(state["peak"], dtype=np.float64)
            remaining = np.asarray(state["remaining"], dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"kill-switch state: peak/remaining must be number lists ({exc})"
            ) from None
        if peak.ndim != 1 or remaining.shape != peak.shape:
            raise ValueError(
                f"kill-switch state: peak {peak.shape} and remaining {remaining.shape} must be "
                "lists of the same length"
            )
        if not np.isfinite(peak).all() or (peak < 0).any() or (remaining < 0).any():
            raise ValueError("kill-switch state: peak must be finite >= 0 and remaining >= 0")
        limit = self.config.cooldown_steps + 1
        if (remaining > limit).any():
            raise ValueError(
                f"kill-switch state: remaining {int(remaining.max())} exceeds cooldown_steps + 1 = "
                f"{limit} of this kill-switch (state written with other parameters?)"
            )
        self.switch = KillSwitch(self.config, peak.size)
        self.switch.remaining = remaining.copy()
        self.peak = peak.copy()
        self.active = remaining > 0
