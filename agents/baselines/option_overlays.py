"""Option baselines: a covered-call writer, a protective-put buyer and a delta-hedger with perps.

They need the options venue (``env.options.enabled``; the delta-hedger also the perps venue) and
refuse other configs. Each holds an equal-weight spot book on the ``equal_weight`` schedule
(``rebalance_every`` steps, ``no_trade_band``; :class:`~defialloc.agents.baselines.policies.BaselinePolicy`)
and asks, at every decision, for an option overlay on the held units of every listed asset
(:class:`defialloc.envs.leverage_actions.OptionOrder`): the env keeps a contract until it expires and then
rolls it into the chosen strike and tenor (docs/options.md), so the overlay costs nothing between
rolls.

* ``covered_call``: short calls on ``call_share`` of the held units at the listed moneyness
  ``call_moneyness`` and tenor ``tenor_days`` (default: all of it, 10 % out of the money, 30 days):
  sells upside for the premium (and the variance premium in it).
* ``protective_put``: long puts on ``put_share`` of the held units (default: all of it, 10 % out of
  the money, 30 days): pays the premium for a floor; ``cash_weight`` (default 5 %) keeps the cash
  the premia are paid from (the env scales down a purchase the cash cannot pay).
* ``delta_hedger``: the covered calls at the money, plus perps that keep each asset's delta at
  ``target_delta`` times its spot delta (default 1: the calls' negative delta is bought back with
  long perps, which leaves the spot book plus a delta-neutral short-volatility overlay; 0 would
  also hedge the spot away). Per listed asset, with ``c`` the call share, ``delta_c`` the per-unit
  delta of the call held (or of the one the env will open) and the env's perp size ``-h x units``,
  ``h = 1 - target_delta - c delta_c`` (clipped to [-1, 1]); unlisted assets get
  ``h = 1 - target_delta``. The hedge follows the calls' delta at every decision (the env's
  no-trade band skips changes under ``no_trade_band x E``); ``cash_weight`` (default 10 %) keeps the
  perps' margin in cash.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from defialloc.agents.baselines.policies import BaselineParams, BaselinePolicy
from defialloc.agents.policy import MarketView
from defialloc.envs.actions import weights_to_actions
from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_actions import ActionLayout, OptionOrder
from defialloc.envs.leverage_paths import resolve_params_path
from defialloc.envs.protocols.options_params import load_options_params


class OptionOverlayParams(BaselineParams):
    """Equal-weight spot book plus an option overlay (shares of the held units of listed assets)."""

    rebalance_every: int = Field(default=7, ge=1, le=100_000, description="spot: steps")
    call_share: float = Field(default=0.0, ge=0.0, le=1.0, description="short calls / units")
    put_share: float = Field(default=0.0, ge=0.0, le=1.0, description="long puts / units")
    call_moneyness: float = Field(default=1.1, gt=0.0, description="a listed strike / forward")
    put_moneyness: float = Field(default=0.9, gt=0.0, description="a listed strike / forward")
    tenor_days: int = Field(default=30, ge=1, description="a listed tenor, days")


class CoveredCallParams(OptionOverlayParams):
    call_share: float = Field(default=1.0, ge=0.0, le=1.0, description="short calls / units")


class ProtectivePutParams(OptionOverlayParams):
    put_share: float = Field(default=1.0, ge=0.0, le=1.0, description="long puts / units")
    cash_weight: float = Field(default=0.05, ge=0.0, lt=1.0, description="cash kept for premia")


class DeltaHedgerParams(OptionOverlayParams):
    call_share: float = Field(default=1.0, ge=0.0, le=1.0, description="short calls / units")
    call_moneyness: float = Field(default=1.0, gt=0.0, description="a listed strike / forward")
    cash_weight: float = Field(default=0.1, ge=0.0, lt=1.0, description="cash kept for margin")
    target_delta: float = Field(
        default=1.0, ge=0.0, le=2.0, description="asset delta / spot delta the perps keep"
    )


def _listed_index(values: list, wanted: float, what: str, name: str) -> int:
    for i, v in enumerate(values):
        if abs(v - wanted) < 1e-9:
            return i
    raise ValueError(
        f"{name}: {what}={wanted} is not listed by the options venue; listed: {values}"
    )


class OptionOverlayPolicy(BaselinePolicy):
    """Equal weight on the spot schedule plus a fixed option overlay (module docstring)."""

    name = "option_overlay"
    params_model = OptionOverlayParams
    needs_config = True
    requires: tuple[str, ...] = ("options",)

    def __init__(
        self, n_assets: int, config: SimulationConfig, name: str | None = None, **params: Any
    ) -> None:
        super().__init__(n_assets, name=name, **params)
        env = config.env
        for lever in self.requires:
            if not getattr(env, lever).enabled:
                raise ValueError(
                    f"{self.name} needs env.{lever}.enabled=true (the options venue"
                    f"{' and the perps venue' if 'perps' in self.requires else ''}); run it on an "
                    "options config, e.g. --config configs/options.yaml"
                )
        venue = load_options_params(resolve_params_path(env.options.params_path))
        p: OptionOverlayParams = self.params  # type: ignore[assignment]
        self.call_strike = _listed_index(
            venue.strikes, p.call_moneyness, "call_moneyness", self.name
        )
        self.put_strike = _listed_index(venue.strikes, p.put_moneyness, "put_moneyness", self.name)
        self.tenor = _listed_index(venue.tenors_days, p.tenor_days, "tenor_days", self.name)
        self.layout = ActionLayout.for_config(env, n_assets)
        self.max_leverage = env.lending.max_leverage

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        risky = np.full((index.size, self.n_assets), self.budget / self.n_assets)
        return self._with_cash(risky)

    def order(self, b: int) -> OptionOrder:
        p: OptionOverlayParams = self.params  # type: ignore[assignment]
        return OptionOrder(p.call_share, p.put_share, self.call_strike, self.put_strike, self.tenor)

    def hedge(self, view: MarketView) -> np.ndarray | float:
        """Perp hedge ratios ``(B, N)`` (0: none)."""
        return 0.0

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        spot = weights_to_actions(self.target_weights(view))
        b = spot.shape[0]
        return self.layout.compose(spot, 0.0, self.hedge(view), self.max_leverage, self.order(b))


class CoveredCallPolicy(OptionOverlayPolicy):
    """Equal weight plus short calls on the held units (module docstring)."""

    name = "covered_call"
    params_model = CoveredCallParams


class ProtectivePutPolicy(OptionOverlayPolicy):
    """Equal weight plus long puts on the held units (module docstring)."""

    name = "protective_put"
    params_model = ProtectivePutParams


class DeltaHedgerPolicy(OptionOverlayPolicy):
    """Covered calls whose delta perps hedge to ``target_delta`` of the spot's (module docstring)."""

    name = "delta_hedger"
    params_model = DeltaHedgerParams
    requires = ("options", "perps")

    def hedge(self, view: MarketView) -> np.ndarray:
        p: DeltaHedgerParams = self.params  # type: ignore[assignment]
        options = view.options
        if options is None:
            raise ValueError(
                f"{self.name} needs MarketView.options (filled by evaluation.rollout.run_policy "
                "on an options config)"
            )
        held = options["call_units"] != 0.0
        chain = options["chain_call_delta"][:, :, self.call_strike, self.tenor]
        delta_c = np.where(held, options["call_delta"], chain)
        calls = p.call_share * options["listed"]
        puts = p.put_share * options["listed"]
        held_put = options["put_units"] != 0.0
        chain_put = options["chain_put_delta"][:, :, self.put_strike, self.tenor]
        delta_p = np.where(held_put, options["put_delta"], chain_put)
        h = 1.0 - p.target_delta - calls * delta_c + puts * delta_p
        return np.clip(h, -1.0, 1.0)
