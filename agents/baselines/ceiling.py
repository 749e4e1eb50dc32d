"""The TRUE CEILING: the growth-optimal portfolio under the synthetic market's true next-step moments.

An UPPER REFERENCE, not a strategy: at every decision time it is told the scenario's true state
(``MarketView.oracle``, see ``defialloc.evaluation.rollout.oracle_info``: the current regime, the next step's
GARCH variance ``h_{t+1}`` and, with protocols, the rates, basis and funding quoted at ``t``) and it
knows the generating parameters. It maximizes the second-order expected log growth of equity

    g(v) = const + v' mean - v' cov v / 2        (envs/step_moments.py; cost-free)

over ``v = (x, d, y)`` within the env's own constraints:

* risky exposures ``x >= 0`` (long-only spot; fractions of equity);
* with lending: debt ``0 <= d <= max_leverage`` and ``d <= ltv_buffer * sum_i LTV_i x_i`` (the env's
  leverage clip ``l <= S / (1 - S)``, ``S = ltv_buffer * sum_i w_i LTV_i``, written in exposures);
* cash ``c = 1 + d - sum(x) >= 0`` (spot: ``sum(x) <= 1``);
* with perps: ``|y_i| <= x_i`` (hedge ratio in ``[-1, 1]`` of the spot target) and the margin rule
  ``margin_buffer * sum_i IMF_i |y_i| <= c`` (``defialloc.envs.leverage.LeverageEngine._trade_perps``, without
  its fee allowance: the ceiling pays no costs).

It is a QP in ``(x, d, y, t)`` with ``t_i >= |y_i|`` (rows ``y - t <= 0``, ``-y - t <= 0``,
``t - x <= 0``), solved exactly by the batched primal active-set method of
:mod:`defialloc.agents.baselines.batched_qp` (all envs of a step at once; a state is accepted only when the KKT
conditions hold), warm-started from each env's previous solution: the constraint set never changes,
so the previous optimum is feasible and its working set is usually nearly the new one. ``d`` and
``t`` carry no risk, so a ridge of ``RIDGE`` (relative to the mean asset variance) on every variable
keeps the Hessian definite; it lowers the attained ``g`` by ``RIDGE * mean variance * |z|^2 / 2``,
under 1e-10 per step. Measured on the 2-core dev machine, 64 envs x 365 steps: ~1 s spot, 5-8 s
with ``configs/leverage.yaml`` (its 64 KKT systems of size 35 are factored in one numpy call per
iteration, ~2 and ~5 iterations per step; docs/baselines.md).

So for any policy whose post-trade exposures satisfy the same constraints, ``g(policy) <= g(ceiling)``
at every state: the ceiling BOUNDS the ex-ante growth (``BacktestResult.ex_ante``), not realized
results. Run through the env (``--policies ceiling``) it is the "executed ceiling": it trades to its
targets every step and pays the costs, so its realized metrics are not a bound on anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from defialloc.agents.baselines.batched_qp import BatchResult, solve_batch
from defialloc.agents.policy import MarketView, Policy
from defialloc.envs.actions import weights_to_actions
from defialloc.envs.config import SimulationConfig, format_validation_error
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.step_moments import InstrumentSpec, StepMoments, step_moments

#: ridge on every variable, relative to the mean asset variance (keeps the QP's Hessian definite)
RIDGE = 1e-9


class CeilingProblem:
    """The ceiling's QP for one env layout: static rows, a Hessian per state.

    Variables ``z = (x (N), d (1 if lending), y (N if perps), t (N if perps))``; the first
    ``spec.n_vars`` entries are the decision vector ``v`` of :mod:`defialloc.envs.step_moments`. Every
    constraint is a row of ``A z <= b`` (bounds included). With perps, ``t_i >= |y_i|`` (rows
    ``y - t <= 0``, ``-y - t <= 0``) carries the margin and ``t - x <= 0`` the hedge limit; ``x >= 0``
    and ``t >= 0`` are then implied and deliberately NOT rows: at an unused asset
    (``x_i = y_i = t_i = 0``) they would add two dependent constraints to the three rows.
    """

    def __init__(self, spec: InstrumentSpec) -> None:
        self.spec = spec
        n, v = spec.n_assets, spec.n_vars
        self.n_z = v + (n if spec.perps else 0)
        rows: list[np.ndarray] = []
        rhs: list[float] = []

        def row(entries: dict[int, float], bound: float) -> None:
            r = np.zeros(self.n_z)
            for col, value in entries.items():
                r[col] += value
            rows.append(r)
            rhs.append(bound)

        if not spec.perps:
            for i in range(n):
                row({i: -1.0}, 0.0)  # x >= 0 (long-only spot)
        cash = dict.fromkeys(range(n), 1.0)  # sum(x) - d + margin_buffer IMF't <= 1: c >= margin
        if spec.lending:
            assert spec.ltv is not None
            d = n
            row({d: -1.0}, 0.0)  # d >= 0
            row({d: 1.0}, spec.max_leverage)
            row({d: 1.0} | {i: -spec.ltv_buffer * spec.ltv[i] for i in range(n)}, 0.0)  # LTV clip
            cash[d] = -1.0
        if spec.perps:
            assert spec.imf is not None and spec.perp_slice is not None
            y0, t0 = spec.perp_slice.start, v
            for i in range(n):
                row({y0 + i: 1.0, t0 + i: -1.0}, 0.0)  # y - t <= 0
                row({y0 + i: -1.0, t0 + i: -1.0}, 0.0)  # -y - t <= 0
                row({t0 + i: 1.0, i: -1.0}, 0.0)  # t - x <= 0: |y| <= x
                cash[t0 + i] = spec.margin_buffer * float(spec.imf[i])
        row(cash, 1.0)
        self.rows = np.array(rows)
        self.rhs = np.array(rhs)
        self.n_rows = len(rhs)

    def max_violation(self, z: np.ndarray) -> np.ndarray:
        """``(...)`` largest constraint violation of ``z`` ``(..., n_z)`` (0 when feasible)."""
        return np.maximum(np.max(z @ self.rows.T - self.rhs, axis=-1), 0.0)

    def solve(
        self,
        moments: StepMoments,
        warm_z: np.ndarray | None = None,
        warm_rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, BatchResult]:
        """The ceiling ``v*`` ``(B, V)`` of ``B`` states (``moments`` with batch shape ``(B,)``).

        ``warm_z`` ``(B, n_z)`` / ``warm_rows`` ``(B, n_rows)``: feasible previous solutions and their
        working sets (:attr:`BatchResult.z` / ``.working`` of the previous call); None: all cash.
        The objective is scaled by the mean asset variance (unit-free tolerances) and gets a ridge
        of :data:`RIDGE` on every variable. Returns ``(v*, BatchResult)``.
        """
        mean, cov = moments.mean, moments.cov
        b, v = mean.shape
        scale = np.maximum(
            np.einsum("sii->s", cov[:, : self.spec.n_assets, : self.spec.n_assets]), 1e-300
        )
        scale = scale / self.spec.n_assets
        hessian = np.zeros((b, self.n_z, self.n_z))
        hessian[:, :v, :v] = cov / scale[:, None, None]
        diag = np.arange(self.n_z)
        hessian[:, diag, diag] += RIDGE
        linear = np.zeros((b, self.n_z))
        linear[:, :v] = -mean / scale[:, None]
        z0 = np.zeros((b, self.n_z)) if warm_z is None else warm_z
        result = solve_batch(hessian, linear, self.rows, self.rhs, z0, warm_rows)
        return result.z[:, :v], result


class CeilingParams(BaseModel):
    """The ceiling has no tuning parameters: it is defined by the env's constraints alone."""

    model_config = ConfigDict(extra="forbid")


class CeilingPolicy(Policy):
    """UPPER REFERENCE: the growth-optimal (second-order, cost-free) portfolio on the TRUE state.

    Told the true regime, ``h_{t+1}`` and the quotes at ``t`` (``MarketView.oracle``); valid on
    ``market.source = synthetic`` only. Registered as ``ceiling``; never a "best baseline" yardstick
    (it is not in ``FEASIBLE_BASELINES``). Acts every step toward its target (the env's no-trade
    band still applies), so through the env it pays costs: the "executed ceiling".
    """

    name = "ceiling"
    uses_oracle = True
    params_model = CeilingParams

    def __init__(
        self, n_assets: int, config: SimulationConfig, name: str | None = None, **params: Any
    ) -> None:
        try:
            self.params = self.params_model(**params)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, prefix="ceiling")) from None
        if config.market.source != "synthetic":
            raise ValueError(
                f"ceiling needs market.source='synthetic' (true state and parameters), got "
                f"{config.market.source!r}; leave it out of replay/bootstrap evaluations"
            )
        if n_assets != len(config.market.assets):
            raise ValueError(
                f"n_assets={n_assets} but the config has {len(config.market.assets)} assets"
            )
        self.name = name or self.name
        self.spec = InstrumentSpec.from_config(config)
        self.problem = CeilingProblem(self.spec)
        self.layout = ActionLayout.for_config(config.env, n_assets)
        self.solves = 0
        self.fallbacks: dict[str, int] = {}
        self._warm: BatchResult | None = None

    def reset(self, n_envs: int) -> None:
        self._warm = None

    def targets(self, view: MarketView) -> np.ndarray:
        """The ceiling ``v*`` ``(B, V)`` at the view's true state (``view.oracle``)."""
        if view.oracle is None or "cond_var" not in view.oracle:
            raise ValueError(
                f"{self.name} needs MarketView.oracle with the true state (uses_oracle=True; "
                "evaluation.rollout.oracle_info on synthetic paths)"
            )
        moments = step_moments(self.spec, view.oracle)
        warm = self._warm
        if warm is not None and len(warm.z) != len(moments.mean):
            warm = None
        v, result = self.problem.solve(
            moments, None if warm is None else warm.z, None if warm is None else warm.working
        )
        self._warm = result
        self.solves += len(v)
        if result.fallbacks:
            self.fallbacks["per_state_qp"] = (
                self.fallbacks.get("per_state_qp", 0) + result.fallbacks
            )
        for status in result.status[result.status != "optimal"]:
            self.fallbacks[str(status)] = self.fallbacks.get(str(status), 0) + 1
        return v

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        return self.actions(self.targets(view))

    def actions(self, v: np.ndarray) -> np.ndarray:
        """Env actions ``(B, action_dim)`` that ask for exposures ``v = (x, d, y)`` ``(B, V)``.

        Spot weights over gross assets ``E (1 + d)``: ``w = (x, c) / (1 + d)``; leverage ``d``; hedge
        ratios ``h_i = -y_i / x_i`` (the env sizes perps as ``-h x_i E / P_i``).
        """
        spec = self.spec
        n = spec.n_assets
        x = np.maximum(v[:, :n], 0.0)
        d = np.clip(v[:, n], 0.0, spec.max_leverage) if spec.lending else np.zeros(len(v))
        cash = np.maximum(1.0 + d - x.sum(axis=1), 0.0)
        gross = x.sum(axis=1) + cash
        weights = np.concatenate([x, cash[:, None]], axis=1) / gross[:, None]
        spot = weights_to_actions(weights)
        if not (spec.lending or spec.perps):
            return spot
        hedge = np.zeros((len(v), n))
        if spec.perps:
            y = v[:, spec.perp_slice]
            hedge = np.clip(np.where(x > 1e-12, -y / np.where(x > 1e-12, x, 1.0), 0.0), -1.0, 1.0)
        return self.layout.compose(spot, d, hedge, spec.max_leverage)

    @property
    def diagnostics(self) -> dict[str, int]:
        """QP solves and, per status, the solves that were not optimal (they kept the previous target)."""
        return {"solves": self.solves} | {
            f"fallback_{k}": v for k, v in sorted(self.fallbacks.items())
        }
