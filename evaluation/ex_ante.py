"""Ex-ante expected log growth of every policy of a synthetic backtest, and the true ceiling's.

At each decision time ``t`` of scenario ``k`` the synthetic market's true state (regime ``k_t``, the
next step's GARCH variance ``h_{t+1}``, the protocol quotes at ``t``) fixes the moments of the step
(:func:`defialloc.envs.step_moments.step_moments`). A policy's ex-ante growth at ``(k, t)`` is
``g(v) = const + v' mean - v' cov v / 2`` of ITS OWN post-trade exposures ``v = (x, d, y)``
(recorded by the rollout: weights, debt / equity, perp notional / equity), i.e. the expected log
growth of its equity over the step, to second order, before any cost of the NEXT trade. The
ceiling's is ``max g`` over the env's constraint set (``agents/baselines/ceiling.py``), on the same
states, so ``g(policy) <= g(ceiling)`` at every step for every policy whose exposures satisfy the
constraints (a policy can drift outside them between trades, e.g. leverage above the clip after a
price fall; :attr:`ExAnte.outside` counts those steps).

Why ex ante: realized growth over one year of a handful of scenarios is dominated by the market's
noise; the ex-ante growth of the same exposures isolates the quality of the allocation decision and
has a known maximum, so "share of the gap captured" is meaningful.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from defialloc.agents.baselines.ceiling import CeilingProblem
from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_paths import ProtocolPaths, ProtocolSetup
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.step_moments import (
    InstrumentSpec,
    StepMoments,
    decision_vector,
    expected_log_growth,
    step_moments,
    true_state,
)
from defialloc.evaluation.rollout import EpisodeRecord

#: a policy's exposures count as outside the ceiling's constraint set beyond this violation
OUTSIDE_TOL = 1e-6


@dataclass
class ExAnte:
    """Per-step ex-ante expected log growth (per step, log units) on ``K`` scenarios x ``T`` steps.

    Attributes:
        steps: policy -> ``(K, T)`` ``g`` of its post-trade exposures; NaN after ruin.
        ceiling: ``(K, T)`` the ceiling's ``g`` (the bound) at the same states.
        outside: policy -> number of live steps whose exposures violate the ceiling's constraints
            by more than :data:`OUTSIDE_TOL` (there the bound need not hold).
        solver: counts of the ceiling's solves: ``{"solves": K T, "fallbacks": ..., "<status>": ...}``
            (any status other than ``optimal`` means the bound at that step is not exact).
    """

    steps: dict[str, np.ndarray]
    ceiling: np.ndarray
    outside: dict[str, int] = field(default_factory=dict)
    solver: dict[str, int] = field(default_factory=dict)

    def means(self) -> dict[str, np.ndarray]:
        """Policy -> ``(K,)`` mean over each scenario's live steps (NaN if none)."""
        return {name: _nanmean_rows(g) for name, g in self.steps.items()}

    def ceiling_means(self) -> np.ndarray:
        """``(K,)`` the ceiling's mean ex-ante growth per scenario (every step)."""
        return self.ceiling.mean(axis=1)

    @staticmethod
    def concat(parts: list[ExAnte]) -> ExAnte:
        """Stack chunk results along the scenario axis (chunks in seed order)."""
        first = parts[0]
        solver: dict[str, int] = {}
        for part in parts:
            for key, value in part.solver.items():
                solver[key] = solver.get(key, 0) + value
        return ExAnte(
            steps={n: np.concatenate([p.steps[n] for p in parts]) for n in first.steps},
            ceiling=np.concatenate([p.ceiling for p in parts]),
            outside={n: sum(p.outside[n] for p in parts) for n in first.outside},
            solver=solver,
        )


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    count = ok.sum(axis=1)
    total = np.where(ok, a, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def protocol_series(
    config: SimulationConfig, paths: MarketPaths, seeds: np.ndarray
) -> dict[str, np.ndarray] | None:
    """The lending/perps series the env generates for ``paths`` and ``seeds`` (None in spot mode):
    the same function of (path, seed) as at the env's reset, so the quotes are the ones it charged."""
    env = config.env
    lending, perps = env.lending.enabled, env.perps.enabled
    if not (lending or perps):
        return None
    setup = ProtocolSetup.load(
        tuple(config.market.assets),
        env.lending.params_path if lending else None,
        env.perps.params_path if perps else None,
    )
    generator = ProtocolPaths(
        setup, 0, paths.length, lending=lending, perps=perps, step_days=config.market.step_days
    )
    return generator.generate(paths, np.asarray(seeds))


def ceiling_growth(
    spec: InstrumentSpec, moments: StepMoments
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The ceiling at every state of ``moments`` (batch ``(K, T)``): ``(g (K, T), v (K, T, V),
    solver counts)``. Solved step by step over the ``K`` scenarios at once, each scenario warm-started
    from its previous step (the policy's own sequence)."""
    problem = CeilingProblem(spec)
    k, t_steps, v = moments.mean.shape
    out = np.empty((k, t_steps, v))
    counts: dict[str, int] = {"solves": k * t_steps, "fallbacks": 0}
    warm = None
    for t in range(t_steps):
        step = StepMoments(moments.const[:, t], moments.mean[:, t], moments.cov[:, t])
        out[:, t], warm = problem.solve(
            step, None if warm is None else warm.z, None if warm is None else warm.working
        )
        counts["fallbacks"] += warm.fallbacks
        for status in warm.status[warm.status != "optimal"]:
            counts[str(status)] = counts.get(str(status), 0) + 1
    return expected_log_growth(moments, out), out, counts


#: scenarios per block of the moments (their per-regime temporaries are ~K T 3 (2N)^2 floats)
MOMENT_BLOCK = 16


def _block_moments(spec: InstrumentSpec, state: dict[str, np.ndarray]) -> StepMoments:
    """:func:`step_moments` of ``(K, T)`` states, ``MOMENT_BLOCK`` scenarios at a time (memory)."""
    k = len(state["regime"])
    parts = [
        step_moments(spec, {name: a[i : i + MOMENT_BLOCK] for name, a in state.items()})
        for i in range(0, k, MOMENT_BLOCK)
    ]
    return StepMoments(
        np.concatenate([p.const for p in parts]),
        np.concatenate([p.mean for p in parts]),
        np.concatenate([p.cov for p in parts]),
    )


def _outside(spec: InstrumentSpec, v: np.ndarray) -> np.ndarray:
    """``(...)`` bool: exposures ``v`` ``(..., V)`` violate the ceiling's constraints (NaN: False)."""
    n = spec.n_assets
    x = v[..., :n]
    d = v[..., n] if spec.lending else np.zeros(v.shape[:-1])
    cash = 1.0 + d - x.sum(axis=-1)
    worst = np.maximum(-x.min(axis=-1), -cash)
    if spec.lending:
        assert spec.ltv is not None
        worst = np.maximum(worst, d - spec.max_leverage)
        worst = np.maximum(worst, d - spec.ltv_buffer * (x @ spec.ltv))
    if spec.perps:
        assert spec.imf is not None
        y = np.abs(v[..., spec.perp_slice])
        worst = np.maximum(worst, (y - x).max(axis=-1))
        worst = np.maximum(worst, spec.margin_buffer * (y @ spec.imf) - cash)
    return np.nan_to_num(worst, nan=0.0) > OUTSIDE_TOL


def ex_ante_growth(
    config: SimulationConfig,
    paths: MarketPaths,
    seeds: np.ndarray,
    records: dict[str, EpisodeRecord],
) -> ExAnte | None:
    """Ex-ante growth of every record and of the ceiling on the scenarios ``paths`` / ``seeds``.

    Args:
        config: the backtest's simulation config.
        paths: the ``K`` market paths every record ran on (``cond_var`` needed: synthetic).
        seeds: ``(K,)`` their seeds (the protocol series are drawn from them).
        records: policy -> :class:`EpisodeRecord` on exactly these scenarios.

    Returns:
        :class:`ExAnte`, or None when the paths carry no true state (replay, bootstrap).
    """
    if paths.cond_var is None or config.market.source != "synthetic":
        return None
    spec = InstrumentSpec.from_config(config)
    horizon = config.env.horizon
    tau = paths.warmup + np.broadcast_to(np.arange(horizon), (paths.n_paths, horizon))
    state = true_state(paths, protocol_series(config, paths, seeds), tau)
    moments = _block_moments(spec, state)
    ceiling, _, solver = ceiling_growth(spec, moments)
    bad = {k: v for k, v in solver.items() if k not in ("solves", "fallbacks")}
    if bad:
        warnings.warn(
            f"the ceiling's QP was not solved to optimality at some steps {bad}: the bound is not "
            "exact there",
            RuntimeWarning,
            stacklevel=2,
        )
    steps, outside = {}, {}
    for name, rec in records.items():
        if rec.weights.shape[:2] != (paths.n_paths, horizon):
            raise ValueError(
                f"record {name!r} has weights {rec.weights.shape}; expected ({paths.n_paths}, {horizon}, N+1)"
            )
        v = decision_vector(spec, rec.weights, rec.debt_to_equity, rec.perp_to_equity)
        g = np.where(rec.alive, expected_log_growth(moments, v), np.nan)
        steps[name] = g
        outside[name] = int((_outside(spec, v) & rec.alive).sum())
    return ExAnte(steps, ceiling, outside, solver)


def ex_ante_of_chunks(
    config: SimulationConfig,
    paths: list[MarketPaths],
    seeds: list[np.ndarray],
    records: list[dict[str, EpisodeRecord]],
) -> ExAnte | None:
    """:func:`ex_ante_growth` of each chunk of a backtest (its paths, seeds and per-policy records),
    stacked in chunk order; None off synthetic markets."""
    parts = [ex_ante_growth(config, p, s, r) for p, s, r in zip(paths, seeds, records, strict=True)]
    if any(part is None for part in parts):
        return None
    return ExAnte.concat(parts)  # type: ignore[arg-type]


def position_and_ex_ante_columns(
    rec: EpisodeRecord, detail: ExAnte | None, name: str
) -> dict[str, np.ndarray]:
    """Flattened ``(K T,)`` per-step columns for ``BacktestResult.series_frame``: the post-trade
    ``debt_to_equity`` and ``perp_to_equity_<asset>`` (protocols only) and, on synthetic markets,
    ``ex_ante_log_growth`` (the policy's) and ``ex_ante_ceiling_log_growth`` (the bound's)."""
    cols: dict[str, np.ndarray] = {}
    if rec.debt_to_equity is not None:
        cols["debt_to_equity"] = rec.debt_to_equity.reshape(-1)
    if rec.perp_to_equity is not None:
        for i, asset in enumerate(rec.asset_names):
            cols[f"perp_to_equity_{asset}"] = rec.perp_to_equity[:, :, i].reshape(-1)
    if detail is not None:
        cols["ex_ante_log_growth"] = detail.steps[name].reshape(-1)
        cols["ex_ante_ceiling_log_growth"] = detail.ceiling.reshape(-1)
    return cols
