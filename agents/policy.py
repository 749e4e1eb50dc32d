"""The one policy interface shared by every allocator: baselines, SB3 models and ONNX policies.

A policy acts on a batch of envs at once. At each decision time it receives the observation the env
emits and a :class:`MarketView` (the trailing price history and current weights the env exposes:
data up to the decision time only), and returns Box actions that the env maps to target weights.
Policies never see the future and pay exactly the env's costs, since they act through the env.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.actions import weights_to_actions
from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_actions import ActionLayout


@dataclass(frozen=True)
class MarketView:
    """What a policy may know at a decision time, for ``B`` envs.

    Attributes:
        asset_names: the ``N`` risky assets (weights have one more entry: cash, last).
        prices: ``(B, W, N)`` trailing close prices in USD, the last row being the decision time.
        weights: ``(B, N+1)`` current portfolio weights, cash last.
        step: ``(B,)`` decision step within the episode.
        step_days: step length in days.
        oracle: None, except for policies that declare ``uses_oracle = True`` (upper references
            that know the synthetic scenario's true state): then a dict of ``(B,)`` arrays, e.g.
            ``{"regime": true current regime codes}`` (see ``defialloc.evaluation.rollout.oracle_info``).
        value_usd: ``(B,)`` portfolio value (equity, net of debt) in USD at the decision time, or
            None when the caller does not know it (risk overlays such as
            :class:`defialloc.agents.kill_switch_policy.KillSwitchPolicy` need it).
        health_factor: ``(B,)`` lending health factor at the decision time (inf without debt);
            None without a lending market.
        rates: None in spot mode; with lending and/or perps, the protocol rates quoted at the
            decision time (what the env's observation shows; they apply over the next step):
            ``borrow_rate`` ``(B,)`` and ``cash_supply_rate`` ``(B,)`` (the numeraire's annual
            borrow and supply rates), ``supply_rate`` ``(B, N)`` (each risky asset's annual supply
            rate) with lending; ``funding_rate`` ``(B, N)`` (per step, a fraction of the notional,
            > 0: longs pay shorts) with perps. See ``defialloc.envs.simulator.PortfolioSimulator.rates_now``.
        options: None without the options venue; else its positions and chain at the decision
            time (``defialloc.envs.option_views.option_view``): e.g. ``call_units`` ``(B, N)``,
            ``call_delta`` (per unit), ``chain_call_delta`` ``(B, N, strikes, tenors)``.
    """

    asset_names: tuple[str, ...]
    prices: np.ndarray
    weights: np.ndarray
    step: np.ndarray
    step_days: float = 1.0
    oracle: dict[str, np.ndarray] | None = None
    value_usd: np.ndarray | None = None
    health_factor: np.ndarray | None = None
    rates: dict[str, np.ndarray] | None = None
    options: dict[str, np.ndarray] | None = None

    @property
    def log_returns(self) -> np.ndarray:
        """``(B, W-1, N)`` trailing per-step log returns."""
        return np.diff(np.log(self.prices), axis=1)


class Policy:
    """An allocator. Subclasses implement :meth:`target_weights` or override :meth:`act`."""

    name: str = "policy"
    #: trailing price points the policy needs in its MarketView (1 = only the current prices)
    lookback: int = 1
    #: True only for upper-reference policies that are told the scenario's true state (MarketView.oracle)
    uses_oracle: bool = False
    #: how the env must read this policy's actions (``envs/action_kinds.py``): ``"target"`` for
    #: policies that express target weights / leverage / hedges (every baseline: the actions of
    #: ``weights_to_actions`` and ``ActionLayout.compose``), whatever the config's
    #: ``env.action.kind``; None: the config's kind (trained agents act in the kind they learned)
    action_kind: str | None = "target"

    def reset(self, n_envs: int) -> None:
        """Called at the start of every episode batch."""

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        """Actions ``(B, action_dim)`` in [-1, 1] for observations ``(B, obs_dim)``."""
        return weights_to_actions(self.target_weights(view))

    def target_weights(self, view: MarketView) -> np.ndarray:
        """Target weights ``(B, N+1)`` (cash last, non-negative, summing to 1)."""
        raise NotImplementedError(f"{type(self).__name__} must implement target_weights or act")


class FixedWeightsPolicy(Policy):
    """Rebalance to the same target weights every step (subject to the env's no-trade band)."""

    def __init__(self, weights: np.ndarray, name: str = "fixed_weights") -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(
                f"weights must be a non-negative vector summing to 1 (cash last), got {w}"
            )
        self.weights = w
        self.name = name

    def target_weights(self, view: MarketView) -> np.ndarray:
        if view.weights.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"policy has {self.weights.shape[0]} weights but the env has {view.weights.shape[1]} (assets + cash)"
            )
        return np.broadcast_to(self.weights, view.weights.shape)


class FixedLeveredPolicy(FixedWeightsPolicy):
    """Fixed target weights plus a fixed leverage (debt / equity) and perp hedge ratio every step.

    The env clips the leverage to what the weights' LTVs allow and scales the hedges to the margin
    (envs/leverage_actions.py); ``leverage`` must lie in ``[0, env.lending.max_leverage]`` and
    ``hedge`` in ``[-1, 1]`` (1: each spot holding fully hedged by a short perp).
    """

    def __init__(
        self,
        weights: np.ndarray,
        config: SimulationConfig,
        *,
        leverage: float = 0.0,
        hedge: float = 0.0,
        name: str = "fixed_levered",
    ) -> None:
        super().__init__(weights, name)
        env = config.env
        self.layout = ActionLayout.for_config(env, len(config.market.assets))
        self.leverage, self.hedge = float(leverage), float(hedge)
        self.max_leverage = env.lending.max_leverage
        # compose once now so that a bad leverage or hedge fails before any episode runs
        self.layout.compose(self.weights[None, :], self.leverage, self.hedge, self.max_leverage)

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        spot = weights_to_actions(self.target_weights(view))
        return self.layout.compose(spot, self.leverage, self.hedge, self.max_leverage)


class RandomPolicy(Policy):
    """Uniform random actions in the Box (the reference a learning agent must beat)."""

    name = "random"

    def __init__(self, action_dim: int, seed: int = 0) -> None:
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(observation.shape[0], self.action_dim))


def parse_weights(spec: str, asset_names: tuple[str, ...]) -> np.ndarray:
    """``"equal"``, ``"cash"`` or ``"BTC=0.5,ETH=0.3"`` (rest in cash) -> weights ``(N+1,)``, cash last."""
    n = len(asset_names)
    if spec == "equal":
        return np.append(np.full(n, 1.0 / n), 0.0)
    if spec == "cash":
        return np.append(np.zeros(n), 1.0)
    weights = np.zeros(n + 1)
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in asset_names:
            raise ValueError(
                f"unknown asset {name.strip()!r} in weights; known: {', '.join(asset_names)}"
            )
        weights[asset_names.index(name.strip())] = float(value)
    if np.any(weights < 0) or weights.sum() > 1 + 1e-9:
        raise ValueError(f"weights {spec!r} must be >= 0 and sum to at most 1 (the rest is cash)")
    weights[-1] = 1.0 - weights[:-1].sum()
    return weights
