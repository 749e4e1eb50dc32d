"""Baseline allocators as :class:`~defialloc.agents.policy.Policy` objects, batched over ``B`` envs.

They act through the env like any agent (so they pay the same fees, slippage and gas) and see only the
:class:`~defialloc.agents.policy.MarketView`: trailing close prices up to the decision time and the current
weights. Two registered references are exceptions, told what no real strategy can know on a
synthetic market (and refused elsewhere): :class:`~defialloc.agents.baselines.oracle.OracleMeanVariancePolicy`
(``oracle_mean_variance``, a REGIME-INFORMED REFERENCE, NOT A BOUND: the true regime, but the
long-run variance) and :class:`~defialloc.agents.baselines.ceiling.CeilingPolicy` (``ceiling``, the TRUE
CEILING of the ex-ante growth: the full true state, growth-optimal within the env's constraints).

Cost awareness (so the baselines are not strawmen):

- a rebalance schedule (``rebalance_every`` steps, counted from the episode start);
- a policy-level no-trade band: a scheduled rebalance is skipped for an env when no risky weight
  would move by at least ``no_trade_band`` (the env's own per-asset band applies on top);
- mean-variance utility (and the oracle) subtract ``turnover_cost / cost_horizon * ||w - w_now||_1``:
  the cost of trading a unit of value, amortized over the steps the new weights are expected to be
  held (``cost_horizon``, default ``rebalance_every``); with cash in the vector a move into cash
  counts both legs, which makes the penalty conservative.

Moments are estimated per env on the trailing ``lookback`` prices: per-step SIMPLE returns
``p_t / p_{t-1} - 1`` (``(lookback - 1, N)``), covariance by Ledoit-Wolf, EWMA or sample, expected
returns shrunk toward zero or the cross-sectional mean. Constraints: long-only, a per-asset cap
``max_weight`` and a fixed cash share ``cash_weight`` (risky budget ``1 - cash_weight``).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defialloc.agents.baselines.batch_inputs import BatchSolveInfo
from defialloc.agents.baselines.batch_optimizers import (
    solve_max_sharpe_batch,
    solve_min_variance_batch,
    solve_risk_parity_batch,
)
from defialloc.agents.baselines.cash import (  # noqa: F401 (CASH_VARIANCE_SHARE: re-exported)
    CASH_VARIANCE_SHARE,
    cash_prev,
    mean_variance_with_cash,
    mean_variance_with_cash_batch,
    with_cash,
)
from defialloc.agents.baselines.estimators import (
    ewma_cov,
    ewma_cov_batch,
    ledoit_wolf_cov,
    ledoit_wolf_cov_batch,
    sample_cov,
    sample_cov_batch,
    shrunk_mean,
    shrunk_mean_batch,
)
from defialloc.agents.baselines.optimizers import (
    SolveInfo,
    SolverFallbackWarning,
    solve_max_sharpe,
    solve_min_variance,
    solve_risk_parity,
)
from defialloc.agents.policy import MarketView, Policy
from defialloc.envs.config import REPO_ROOT, SimulationConfig, format_validation_error

if TYPE_CHECKING:
    from defialloc.agents.baselines.oracle import OracleParams

DEFAULT_PARAMS_PATH = REPO_ROOT / "configs" / "evaluation" / "default.yaml"


# ---------------------------------------------------------------------------------------- params
class BaselineParams(BaseModel):
    """Schedule and constraints shared by every baseline."""

    model_config = ConfigDict(extra="forbid")

    rebalance_every: int = Field(
        default=7, ge=1, le=100_000, description="steps between rebalances"
    )
    no_trade_band: float = Field(
        default=0.02, ge=0.0, le=0.5, description="skip if max |dw| < band"
    )
    cash_weight: float = Field(default=0.0, ge=0.0, lt=1.0, description="fixed cash share")
    max_weight: float | None = Field(default=None, gt=0.0, le=1.0, description="per-asset cap")


class EstimationParams(BaselineParams):
    """Trailing-window moment estimation."""

    lookback: int = Field(default=61, ge=3, le=5_001, description="trailing price points")
    cov_estimator: Literal["ledoit_wolf", "ewma", "sample"] = "ledoit_wolf"
    ewma_halflife: float = Field(default=20.0, gt=0.0, le=1_000.0, description="steps")
    mean_target: Literal["zero", "grand_mean"] = "grand_mean"
    mean_shrinkage: float = Field(default=0.5, ge=0.0, le=1.0, description="1 = the target only")


class MaxSharpeParams(EstimationParams):
    """Tangency portfolio: ``risk_free`` is per step, like the moments."""

    risk_free: float = Field(default=0.0, ge=-0.01, le=0.01, description="per step")


class UtilityParams(BaseModel):
    """Quadratic utility with a turnover penalty, optionally holding cash."""

    model_config = ConfigDict(extra="forbid")

    risk_aversion: float = Field(default=2.0, gt=0.0, le=1e4, description="gamma")
    turnover_cost: float = Field(default=0.002, ge=0.0, le=0.1, description="per unit traded")
    cost_horizon: int | None = Field(
        default=None, ge=1, le=10_000, description="steps (None: rebalance_every)"
    )
    allow_cash: bool = Field(
        default=True, description="cash is a zero-return asset the optimizer may hold"
    )


class MeanVarianceParams(EstimationParams, UtilityParams):
    """Estimated moments + quadratic utility."""


# ---------------------------------------------------------------------------------------- helpers
def _penalty(p: MeanVarianceParams | OracleParams) -> float:
    """Per-step turnover penalty: the cost per unit traded amortized over the holding horizon."""
    return p.turnover_cost / (p.cost_horizon or p.rebalance_every)


# ---------------------------------------------------------------------------------------- base
class BaselinePolicy(Policy):
    """Scheduled, banded rebalancing toward :meth:`_targets`; between rebalances it holds."""

    params_model: type[BaselineParams] = BaselineParams

    def __init__(self, n_assets: int, name: str | None = None, **params: Any) -> None:
        if n_assets < 1:
            raise ValueError(f"n_assets={n_assets} must be >= 1")
        try:
            self.params = self.params_model(**params)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, prefix=self.name)) from None
        p = self.params
        if p.max_weight is not None and p.max_weight * n_assets < 1.0 - p.cash_weight - 1e-12:
            raise ValueError(
                f"{self.name}: max_weight={p.max_weight} * {n_assets} assets < risky budget "
                f"{1.0 - p.cash_weight} (1 - cash_weight): infeasible; raise max_weight or cash_weight"
            )
        self.n_assets = n_assets
        self.name = name or self.name
        self.budget = 1.0 - p.cash_weight
        self.lookback = int(getattr(p, "lookback", 1))
        self.solves = 0
        self.serial_solves = 0
        self.fallbacks: dict[str, int] = {}

    def target_weights(self, view: MarketView) -> np.ndarray:
        current = _clean_weights(view.weights)
        if current.shape[1] != self.n_assets + 1:
            raise ValueError(
                f"{self.name} was built for {self.n_assets} assets but the view has "
                f"{current.shape[1] - 1} (weights are assets + cash)"
            )
        due = np.flatnonzero(np.asarray(view.step) % self.params.rebalance_every == 0)
        if due.size == 0:
            return current
        target = self._targets(view, due, current[due])
        move = np.abs(target[:, :-1] - current[due, :-1]).max(axis=1)
        trade = move >= max(self.params.no_trade_band, 1e-12)
        out = current.copy()
        out[due[trade]] = target[trade]
        return out

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Target weights ``(len(index), N+1)`` (cash last) for the envs ``index`` due to rebalance."""
        raise NotImplementedError

    def _with_cash(self, risky: np.ndarray) -> np.ndarray:
        """``(M, N)`` risky weights -> ``(M, N+1)`` with cash last, clipped to the simplex."""
        risky = np.clip(risky, 0.0, None)
        total = risky.sum(axis=1, keepdims=True)
        risky = np.where(total > 1.0, risky / np.where(total > 0, total, 1.0), risky)
        return np.concatenate([risky, 1.0 - risky.sum(axis=1, keepdims=True)], axis=1)

    def _count(self, info: SolveInfo) -> None:
        self.solves += 1
        if info.fallback_used:
            self.fallbacks[info.fallback] = self.fallbacks.get(info.fallback, 0) + 1

    def _count_batch(self, info: BatchSolveInfo) -> None:
        self.solves += int(info.status.size)
        self.serial_solves += int(info.serial.sum())
        used = info.fallback_used
        if not used.any():
            return
        kinds, counts = np.unique(info.fallback[used].astype(str), return_counts=True)
        for kind, count in zip(kinds, counts, strict=True):
            self.fallbacks[kind] = self.fallbacks.get(kind, 0) + int(count)

    @property
    def diagnostics(self) -> dict[str, int]:
        """Optimizer solves and, per kind, the solves that fell back since construction.

        Each fallback is a :class:`SolverFallbackWarning` of the optimizer; the policy counts them
        (``fallback_prev_weights`` = no trade, ``fallback_min_variance`` = max Sharpe without a
        positive excess return, ...) instead of repeating thousands of warnings in a backtest.
        ``serial_qp``: solves the batched active-set method handed to the per-problem solver (its
        guesses gave up, or it was among the last few iterating; see
        :mod:`defialloc.agents.baselines.batch_qp`), when there were any.
        """
        serial = {"serial_qp": self.serial_solves} if self.serial_solves else {}
        return (
            {"solves": self.solves}
            | serial
            | {f"fallback_{k}": v for k, v in sorted(self.fallbacks.items())}
        )


def _clean_weights(weights: np.ndarray) -> np.ndarray:
    """Current weights made a valid simplex point (a ruined env's tiny value can give NaN)."""
    w = np.nan_to_num(np.asarray(weights, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    w = np.clip(w, 0.0, None)
    total = w.sum(axis=1, keepdims=True)
    cash = np.zeros_like(w)
    cash[:, -1] = 1.0
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), cash)


class EqualWeightPolicy(BaselinePolicy):
    """``(1 - cash_weight) / N`` in every risky asset, rebalanced every ``rebalance_every`` steps."""

    name = "equal_weight"

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        risky = np.full((index.size, self.n_assets), self.budget / self.n_assets)
        return self._with_cash(risky)


class BuyAndHoldPolicy(BaselinePolicy):
    """Equal weight at the first step, then never trades (it returns the current weights).

    The env trades only assets whose target differs from the current weight by more than its
    no-trade band, so "current weights" means no order (with ``env.action.no_trade_band = 0``
    floating-point residues could still trigger dust orders that pay gas).
    """

    name = "buy_and_hold"

    def target_weights(self, view: MarketView) -> np.ndarray:
        current = _clean_weights(view.weights)
        first = np.flatnonzero(np.asarray(view.step) == 0)
        if first.size:
            risky = np.full((first.size, self.n_assets), self.budget / self.n_assets)
            current[first] = self._with_cash(risky)
        return current


class EstimatingPolicy(BaselinePolicy):
    """Baselines that estimate moments on the trailing window and solve an optimizer per env.

    All due envs are estimated and solved together (batched estimators and
    :mod:`defialloc.agents.baselines.batch_optimizers`); ``batched = False`` runs the per-env loop of the
    per-problem functions instead, the reference the batched path is tested against.
    """

    params_model: type[BaselineParams] = EstimationParams
    #: one batched estimate and solve for all due envs (False: a Python loop over envs)
    batched: bool = True

    def _moments(self, view: MarketView, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-step ``mu (M, N)`` and ``cov (M, N, N)`` of simple returns for the envs ``index``."""
        p: EstimationParams = self.params  # type: ignore[assignment]
        prices = np.asarray(view.prices, dtype=np.float64)[index]
        returns = prices[:, 1:] / prices[:, :-1] - 1.0
        if self.batched:
            if p.cov_estimator == "ledoit_wolf":
                cov = ledoit_wolf_cov_batch(returns)
            elif p.cov_estimator == "ewma":
                cov = ewma_cov_batch(returns, p.ewma_halflife)
            else:
                cov = sample_cov_batch(returns)
            return shrunk_mean_batch(returns, p.mean_target, p.mean_shrinkage), cov
        mu = np.empty((index.size, self.n_assets))
        cov = np.empty((index.size, self.n_assets, self.n_assets))
        for j in range(index.size):
            window = returns[j]
            if p.cov_estimator == "ledoit_wolf":
                cov[j] = ledoit_wolf_cov(window)
            elif p.cov_estimator == "ewma":
                cov[j] = ewma_cov(window, p.ewma_halflife)
            else:
                cov[j] = sample_cov(window)
            mu[j] = shrunk_mean(window, target=p.mean_target, shrinkage=p.mean_shrinkage)
        return mu, cov

    def _targets(self, view: MarketView, index: np.ndarray, current: np.ndarray) -> np.ndarray:
        if view.prices.shape[1] < 3:
            # too little history to estimate anything: hold equal weight until the window fills
            return self._with_cash(
                np.full((index.size, self.n_assets), self.budget / self.n_assets)
            )
        mu, cov = self._moments(view, index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SolverFallbackWarning)  # counted in diagnostics
            if self.batched:
                risky, batch_info = self._solve_batch(mu, cov, current[:, :-1])
                self._count_batch(batch_info)
                return self._with_cash(risky)
            risky = np.empty((index.size, self.n_assets))
            for j in range(index.size):
                risky[j], info = self._solve(mu[j], cov[j], current[j, :-1])
                self._count(info)
        return self._with_cash(risky)

    def _solve(self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, Any]:
        """One env: ``mu (N,)``, ``cov (N, N)``, ``prev (N,)`` -> risky weights and SolveInfo."""
        raise NotImplementedError

    def _solve_batch(
        self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray
    ) -> tuple[np.ndarray, BatchSolveInfo]:
        """All due envs: ``mu (M, N)``, ``cov (M, N, N)``, ``prev (M, N)`` -> ``(M, N)`` weights."""
        raise NotImplementedError


class MinVariancePolicy(EstimatingPolicy):
    """Minimum variance ``argmin w'Σw`` (long-only, capped)."""

    name = "min_variance"

    def _solve(self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, Any]:
        return solve_min_variance(
            cov, max_weight=self.params.max_weight, budget=self.budget, prev_weights=prev
        )

    def _solve_batch(
        self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray
    ) -> tuple[np.ndarray, BatchSolveInfo]:
        return solve_min_variance_batch(
            cov, max_weight=self.params.max_weight, budget=self.budget, prev_weights=prev
        )


class MaxSharpePolicy(EstimatingPolicy):
    """Tangency portfolio on shrunk means (falls back to min variance when no mean beats risk_free)."""

    name = "max_sharpe"
    params_model = MaxSharpeParams

    def _solve(self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, Any]:
        p: MaxSharpeParams = self.params  # type: ignore[assignment]
        return solve_max_sharpe(
            mu, cov, p.risk_free, max_weight=p.max_weight, budget=self.budget, prev_weights=prev
        )

    def _solve_batch(
        self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray
    ) -> tuple[np.ndarray, BatchSolveInfo]:
        p: MaxSharpeParams = self.params  # type: ignore[assignment]
        return solve_max_sharpe_batch(
            mu, cov, p.risk_free, max_weight=p.max_weight, budget=self.budget, prev_weights=prev
        )


class MeanVariancePolicy(EstimatingPolicy):
    """Quadratic utility ``w'mu - gamma/2 w'Σw - turnover_cost / cost_horizon ||w - w_now||_1`` (cash allowed)."""

    name = "mean_variance"
    params_model = MeanVarianceParams

    def _solve(self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, Any]:
        p: MeanVarianceParams = self.params  # type: ignore[assignment]
        return mean_variance_with_cash(
            mu,
            cov,
            p.risk_aversion,
            budget=self.budget,
            prev_risky=prev,
            max_weight=p.max_weight,
            turnover_penalty=_penalty(p),
            allow_cash=p.allow_cash,
        )

    def _solve_batch(
        self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray
    ) -> tuple[np.ndarray, BatchSolveInfo]:
        p: MeanVarianceParams = self.params  # type: ignore[assignment]
        return mean_variance_with_cash_batch(
            mu,
            cov,
            p.risk_aversion,
            budget=self.budget,
            prev_risky=prev,
            max_weight=p.max_weight,
            turnover_penalty=_penalty(p),
            allow_cash=p.allow_cash,
        )


class RiskParityPolicy(EstimatingPolicy):
    """Equal risk contribution (long-only by construction; ``max_weight`` is not applied)."""

    name = "risk_parity"

    def __init__(self, n_assets: int, name: str | None = None, **params: Any) -> None:
        super().__init__(n_assets, name=name, **params)
        if self.params.max_weight is not None:
            raise ValueError(
                f"{self.name}: max_weight={self.params.max_weight} is not supported (equal risk contribution fixes the weights); leave it unset"
            )

    def _solve(self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, Any]:
        return solve_risk_parity(cov, budget=self.budget, prev_weights=prev)

    def _solve_batch(
        self, mu: np.ndarray, cov: np.ndarray, prev: np.ndarray
    ) -> tuple[np.ndarray, BatchSolveInfo]:
        return solve_risk_parity_batch(cov, budget=self.budget, prev_weights=prev)


# ---------------------------------------------------------------------------------------- registry
# imported here, not at the top: the oracle, the ceiling and the strong feasible baselines
# (docs/baselines.md) subclass BaselinePolicy and import it from this module
from defialloc.agents.baselines.ceiling import CeilingPolicy  # noqa: E402
from defialloc.agents.baselines.levered import CarryPolicy, LeveredVolTargetPolicy  # noqa: E402
from defialloc.agents.baselines.option_overlays import (  # noqa: E402
    CoveredCallPolicy,
    DeltaHedgerPolicy,
    ProtectivePutPolicy,
)
from defialloc.agents.baselines.oracle import OracleMeanVariancePolicy  # noqa: E402
from defialloc.agents.baselines.risk_based import (  # noqa: E402
    EqualWeightBandPolicy,
    InverseVolPolicy,
    VolTargetPolicy,
)
from defialloc.agents.baselines.static import StaticTangencyPolicy  # noqa: E402

BASELINES: dict[str, type[BaselinePolicy] | type[CeilingPolicy]] = {
    "equal_weight": EqualWeightPolicy,
    "buy_and_hold": BuyAndHoldPolicy,
    "min_variance": MinVariancePolicy,
    "max_sharpe": MaxSharpePolicy,
    "mean_variance": MeanVariancePolicy,
    "risk_parity": RiskParityPolicy,
    "oracle_mean_variance": OracleMeanVariancePolicy,
    "static_tangency": StaticTangencyPolicy,
    "equal_weight_band": EqualWeightBandPolicy,
    "inverse_vol": InverseVolPolicy,
    "vol_target": VolTargetPolicy,
    "levered_vol_target": LeveredVolTargetPolicy,
    "carry": CarryPolicy,
    "covered_call": CoveredCallPolicy,
    "protective_put": ProtectivePutPolicy,
    "delta_hedger": DeltaHedgerPolicy,
    "ceiling": CeilingPolicy,
}
#: baselines that need the lending market, the perps venue or the options venue (each of the
#: ``env.<section>.enabled`` named; they refuse a config without them)
PROTOCOL_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "levered_vol_target": ("lending",),
    "carry": ("perps",),
    "covered_call": ("options",),
    "protective_put": ("options",),
    "delta_hedger": ("options", "perps"),
}
PROTOCOL_BASELINES: tuple[str, ...] = tuple(PROTOCOL_REQUIREMENTS)
#: references told the synthetic scenario's true state: refused on replayed/bootstrapped markets and
#: never a yardstick. ``oracle_mean_variance`` is regime-informed, NOT a bound; ``ceiling`` bounds
#: the ex-ante growth (``defialloc.evaluation.ex_ante``), not realized results.
UPPER_REFERENCES: tuple[str, ...] = ("oracle_mean_variance", "ceiling")
#: baselines that are feasible strategies (the yardsticks a policy is compared against)
FEASIBLE_BASELINES: tuple[str, ...] = tuple(n for n in BASELINES if n not in UPPER_REFERENCES)
#: registered policies built with the simulation config (they read the market's true parameters)
_NEEDS_CONFIG = (OracleMeanVariancePolicy, CeilingPolicy)


@functools.lru_cache(maxsize=8)
def _read_params_file(path: str) -> dict[str, dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        return {}
    data = yaml.safe_load(file.read_text()) or {}
    section = data.get("policies", {}) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: 'policies' must map policy names to parameter mappings")
    unknown = sorted(set(section) - set(BASELINES))
    if unknown:
        raise ValueError(
            f"{path}: unknown policies {unknown} under 'policies'; known: {sorted(BASELINES)}"
        )
    return {k: dict(v or {}) for k, v in section.items()}


def default_policy_params(name: str, params_path: str | Path | None = None) -> dict[str, Any]:
    """The parameters of baseline ``name`` in ``configs/evaluation/default.yaml`` (or ``params_path``)."""
    return dict(_read_params_file(str(params_path or DEFAULT_PARAMS_PATH)).get(name, {}))


def make_policy(
    name: str, config: SimulationConfig, *, params_path: str | Path | None = None, **params: Any
) -> BaselinePolicy | CeilingPolicy:
    """Build baseline ``name`` for ``config``'s assets.

    Parameters come from ``policies.<name>`` of ``params_path`` (default
    ``configs/evaluation/default.yaml``), overridden by ``params``.

    Raises:
        ValueError: unknown name (listing the known ones) or a bad parameter (naming it).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown policy {name!r}; known baselines: {', '.join(BASELINES)}")
    merged = default_policy_params(name, params_path) | params
    n_assets = len(config.market.assets)
    cls = BASELINES[name]
    if cls in _NEEDS_CONFIG or getattr(cls, "needs_config", False):
        return cls(n_assets, config, **merged)  # type: ignore[call-arg]
    return cls(n_assets, **merged)  # type: ignore[call-arg]


def baselines_for(
    config: SimulationConfig, names: list[str], *, synthetic_truth: bool | None = None
) -> tuple[list[str], dict[str, str]]:
    """Split ``names`` into the baselines that can run on ``config`` and the others with the reason.

    A protocol baseline needs its protocols on (``levered_vol_target``: lending, ``carry``: perps,
    ``covered_call`` and ``protective_put``: options, ``delta_hedger``: options and perps);
    an upper reference needs the synthetic market's true state (``synthetic_truth``: default, the
    config's market is synthetic; pass False for a replayed period).
    """
    truth = config.market.source == "synthetic" if synthetic_truth is None else synthetic_truth
    env = config.env
    kept, dropped = [], {}
    for name in names:
        missing = [p for p in PROTOCOL_REQUIREMENTS.get(name, ()) if not getattr(env, p).enabled]
        if missing:
            example = "configs/options.yaml" if "options" in missing else "configs/leverage.yaml"
            needs = " and ".join(f"env.{p}.enabled" for p in missing)
            dropped[name] = f"needs {needs} (e.g. --config {example})"
        elif name in UPPER_REFERENCES and not truth:
            dropped[name] = "an upper reference needs the synthetic market's true state"
        else:
            kept.append(name)
    return kept, dropped
