"""Run a policy on a batch of market paths and record every step (the core of all backtests).

All ``K`` scenarios run side by side in one batched simulator, so every policy given the same seeds
sees exactly the same market paths (paired comparisons). Nothing resets mid-run: an env that is
ruined stays flat (its later steps are masked out by ``alive``).

The record is open to extension: every cost kind of the step's ``TradeCosts`` (fields ending in
``_usd``) lands in ``costs_usd``, and every other per-env ``(B,)`` array a :class:`StepResult`
carries beyond the core fields (health factor, liquidations, kill-switch, ... once the env has them)
lands in ``extras`` under its field name, without changes here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from defialloc.agents.kill_switch_policy import KillSwitchPolicy
from defialloc.agents.policy import MarketView, Policy
from defialloc.envs.compiled import make_simulator
from defialloc.envs.config import SimulationConfig
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.seeds import check_evaluation_seeds
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.step_moments import QUOTE_SERIES, true_state
from defialloc.envs.step_records import StepResult

#: StepResult fields recorded by dedicated EpisodeRecord attributes (everything else goes to extras)
CORE_STEP_FIELDS = frozenset(
    {"reward", "terminated", "truncated", "value_usd", "costs", "turnover", "regime"}
)


@dataclass
class EpisodeRecord:
    """Per-step series of one policy on ``K`` scenarios over ``T`` steps (arrays ``(K, T, ...)``).

    ``value_usd[:, 0]`` is the initial value; ``value_usd[:, t+1]`` the value after step ``t``.
    ``weights[:, t]`` are the weights right after trading at decision time ``t`` (before the move),
    over GROSS assets (risky holdings + cash, ``(1 + debt / equity)`` times the equity with debt).
    ``close_usd[:, t]`` are the asset close prices at decision time ``t`` (``t = T``: the final mark).
    With lending or perps, ``debt_to_equity[:, t]`` ``(K, T)`` and ``perp_to_equity[:, t]``
    ``(K, T, N)`` (signed perp notional at the index price) are the post-trade positions over the
    post-trade equity (NaN where the equity is not positive); None in spot mode. Together with the
    weights they are the exposures ``(x, d, y)`` whose ex-ante growth ``defialloc.evaluation.ex_ante`` scores.
    ``costs_usd`` maps each cost kind (``"fees"``, ``"slippage"``, ``"gas"``, and later ones such
    as funding or interest) to its ``(K, T)`` USD series; ``extras`` maps other per-step series the
    env reports (e.g. ``health_factor``, ``liquidations_usd``, ``kill_switch_active``) to ``(K, T)``.
    Steps after an env was ruined (``~alive``) record zero costs, and NaN (float), 0 (int) or
    False (bool) extras; its value stays at the ruin value (0 after a loss beyond equity, never
    negative), and ``ruined`` flags the scenarios that ended in ruin.
    """

    policy: str
    seeds: np.ndarray
    asset_names: tuple[str, ...]
    value_usd: np.ndarray  # (K, T+1)
    weights: np.ndarray  # (K, T, N+1), cash last
    fees_usd: np.ndarray  # (K, T)
    slippage_usd: np.ndarray  # (K, T)
    gas_usd: np.ndarray  # (K, T)
    turnover: np.ndarray  # (K, T) one-sided, fraction of the value before the step
    regime: np.ndarray  # (K, T) regime codes during each step's move
    regime_names: tuple[str, ...]
    alive: np.ndarray  # (K, T) bool: the env had not been ruined before this step
    step_days: float
    dates: np.ndarray | None = None  # (K, T) datetime64[D] of each step's end (replay only)
    close_usd: np.ndarray | None = None  # (K, T+1, N)
    costs_usd: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    #: ``(K,)`` bool: the episode ended in ruin (equity at or below ``env.ruin_fraction`` of the
    #: initial value, on any step including the last); None for records built before it existed
    ruined: np.ndarray | None = None
    debt_to_equity: np.ndarray | None = None  # (K, T), protocols only
    perp_to_equity: np.ndarray | None = None  # (K, T, N), protocols only

    @property
    def n_ruined(self) -> int:
        """How many scenarios ended in ruin."""
        if self.ruined is None:
            return int((~self.alive[:, -1]).sum())
        return int(np.count_nonzero(self.ruined))

    @property
    def returns(self) -> np.ndarray:
        """Per-step simple returns ``(K, T)`` net of every cost, in ``[-1, inf)``.

        Values are never negative (a loss beyond equity is bad debt, the value is 0): the step that
        ruins an account to 0 returns -1 and the flat steps after it return 0 (not 0/0).
        """
        before, after = self.value_usd[:, :-1], self.value_usd[:, 1:]
        live = before > 0.0
        return np.where(live, after / np.where(live, before, 1.0) - 1.0, 0.0)

    @property
    def n_scenarios(self) -> int:
        return int(self.value_usd.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.value_usd.shape[1] - 1)


def _cost_kinds(costs: object) -> dict[str, np.ndarray]:
    """``{"fees": (B,), "slippage": (B,), ...}`` from any dataclass whose fields end in ``_usd``."""
    return {
        f.name.removesuffix("_usd"): np.asarray(getattr(costs, f.name), dtype=np.float64)
        for f in dataclasses.fields(costs)  # type: ignore[arg-type]
        if f.name.endswith("_usd")
    }


def _extra_series(result: StepResult, n_envs: int) -> dict[str, np.ndarray]:
    """Per-env ``(B,)`` arrays of a StepResult beyond the core fields (None-valued fields skipped)."""
    out: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(result):
        if f.name in CORE_STEP_FIELDS:
            continue
        value = getattr(result, f.name)
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.shape == (n_envs,) and (arr.dtype.kind in "biuf"):
            out[f.name] = arr
    return out


def _dead_fill(dtype: np.dtype) -> object:
    """What a ruined env records: False for flags, 0 for counts, NaN for float series."""
    return {"b": False, "i": 0, "u": 0}.get(dtype.kind, np.nan)


def oracle_info(sim: PortfolioSimulator, paths: MarketPaths | None = None) -> dict[str, np.ndarray]:
    """What an ``uses_oracle`` policy (an upper reference) is told at the current decision time ``t``.

    Always the true regime ``"regime"`` ``(B,)`` the market is in at ``t`` (its next move's regime
    is still random). On synthetic ``paths`` (the ones the envs run on, with ``cond_var``) also the
    rest of :func:`defialloc.envs.step_moments.true_state`: ``"cond_var"`` ``(B, N)``, the next step's GARCH
    variance ``h_{t+1}`` (a function of the shocks up to ``t``), and with lending/perps the quotes at
    ``t`` the env charges over the step (``borrow_rate``, ``cash_supply_rate``, ``supply_rate``,
    ``basis``, ``funding``). ``oracle_mean_variance`` reads only the regime; ``ceiling`` reads all.
    """
    tau = sim.warmup + sim.t
    if paths is None or paths.cond_var is None:
        return {"regime": sim.regime[np.arange(sim.n_envs), tau].astype(np.int64)}
    engine = sim.protocols
    series = None
    if engine is not None:
        series = {n: getattr(engine.paths, n) for n in QUOTE_SERIES if hasattr(engine.paths, n)}
    return true_state(paths, series, tau)


def _post_trade_positions(
    sim: PortfolioSimulator, price: np.ndarray, num: np.ndarray, held: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Debt / equity ``(B,)`` and perp notional / equity ``(B, N)`` right after trading (NaN where
    the post-trade equity ``held - debt`` is not positive)."""
    engine = sim.protocols
    assert engine is not None
    debt_usd = engine.debt * num
    equity = held - debt_usd
    live = equity > 0.0
    safe = np.where(live, equity, 1.0)
    debt = np.where(live, debt_usd / safe, np.nan)
    perp = np.where(live[:, None], engine.perp_size * price / safe[:, None], np.nan)
    return debt, perp


def run_policy(
    config: SimulationConfig,
    policy: Policy,
    seeds: np.ndarray,
    paths: MarketPaths | None = None,
    *,
    on_step: Callable[[int], None] | None = None,
    simulator: type[PortfolioSimulator] | None = None,
) -> EpisodeRecord:
    """Run ``policy`` for one full episode on each scenario ``seeds[k]`` (or on the given ``paths``).

    Args:
        config: the simulation config (market + env).
        policy: the allocator; if it declares ``uses_oracle = True`` its MarketView carries
            ``oracle`` (see :func:`oracle_info`), otherwise ``oracle`` is None. Behind a
            :class:`~defialloc.agents.kill_switch_policy.KillSwitchPolicy`, the wrapper's override flags
            are OR-ed into the recorded ``kill_switch`` series (with the env's own flag).
        seeds: ``(K,)`` evaluation scenario seeds (training-range seeds are refused).
        paths: optional ready market paths (``K = paths.n_paths``) instead of sampling from seeds.
        on_step: optional callback called with the step index after every step (progress bars).
        simulator: None for the runtime (compiled) simulator; ``PortfolioSimulator`` for the numpy
            reference (the paper trader's reference backtest: the streaming trader steps it too).
    """
    seeds = check_evaluation_seeds(seeds)
    k = len(seeds) if paths is None else paths.n_paths
    sim = make_simulator(config, n_envs=k) if simulator is None else simulator(config, n_envs=k)
    if paths is None:  # drawn here, as reset_envs would, so that oracle_info can read them
        drawn = sim.sample_episodes(seeds)
        sim.reset_envs(np.arange(k), seeds, drawn=drawn)
        paths = drawn.paths
    else:
        sim.reset_envs(np.arange(k), seeds, paths=paths)
    policy.reset(k)
    horizon, n = sim.horizon, sim.n_assets
    value = np.empty((k, horizon + 1))
    value[:, 0] = sim.value
    close = np.empty((k, horizon + 1, n))
    weights = np.empty((k, horizon, n + 1))
    turnover = np.zeros((k, horizon))
    costs: dict[str, np.ndarray] = {}
    extras: dict[str, np.ndarray] = {}
    regime = np.zeros((k, horizon), dtype=np.int8)
    alive = np.ones((k, horizon), dtype=bool)
    dead = np.zeros(k, dtype=bool)
    lookback = max(1, min(policy.lookback, sim.warmup + 1))
    uses_oracle = bool(getattr(policy, "uses_oracle", False))
    overlay = policy if isinstance(policy, KillSwitchPolicy) else None
    levered = sim.protocols is not None
    debt_eq = np.full((k, horizon), np.nan) if levered else None
    perp_eq = np.full((k, horizon, n), np.nan) if levered else None
    # a policy that decides every k market steps (trained with env.decision_every = k) holds in
    # between: no order, no cost; the market, carry and liquidations still move every step
    every = max(1, int(getattr(policy, "decision_every", 1)))
    for t in range(horizon):
        price, num = sim.prices_now()
        close[:, t] = price
        if t % every:
            sim.execute(None, hold=True)
        else:
            hf = sim.health_factor_now()
            view = MarketView(
                sim.asset_names,
                sim.trailing_prices(lookback),
                sim.weights(price, num, sim.value),
                sim.t.copy(),
                config.market.step_days,
                oracle=oracle_info(sim, paths) if uses_oracle else None,
                value_usd=sim.value.copy(),
                health_factor=None if hf is None else hf.copy(),
                rates=sim.rates_now(),
                options=sim.options_now(),
            )
            actions = np.asarray(policy.act(sim.observe(), view), dtype=np.float64)
            # sim.step, split to record the post-trade (pre-move) positions
            sim.execute(
                actions,
                override=None if overlay is None else overlay.active,
                action_kind=getattr(policy, "action_kind", "target"),
            )
        held = (sim.units * price).sum(1) + sim.cash * num
        weights[:, t] = sim.weights(price, num, np.maximum(held, 1e-300))
        if levered:
            debt_eq[:, t], perp_eq[:, t] = _post_trade_positions(sim, price, num, held)
        result = sim.advance()
        if overlay is not None and not t % every:  # one kill-switch series, whoever pulled it
            result.kill_switch = result.kill_switch | overlay.active
        alive[:, t] = ~dead
        live = ~dead
        value[:, t + 1] = np.where(dead, value[:, t], result.value_usd)
        turnover[:, t] = np.where(live, result.turnover, 0.0)
        for kind, series in _cost_kinds(result.costs).items():
            costs.setdefault(kind, np.zeros((k, horizon)))[:, t] = np.where(live, series, 0.0)
        for name, series in _extra_series(result, k).items():
            if name not in extras:
                extras[name] = np.full((k, horizon), _dead_fill(series.dtype), dtype=series.dtype)
            extras[name][:, t] = np.where(live, series, _dead_fill(series.dtype))
        regime[:, t] = result.regime
        dead = dead | result.terminated
        if on_step is not None:
            on_step(t)
    close[:, horizon] = sim.prices_now()[0]
    dates = None if sim.dates is None else sim.dates[:, sim.warmup + 1 : sim.warmup + horizon + 1]
    zeros = np.zeros((k, horizon))
    return EpisodeRecord(
        policy=policy.name,
        seeds=seeds,
        asset_names=sim.asset_names,
        value_usd=value,
        weights=weights,
        fees_usd=costs.get("fees", zeros),
        slippage_usd=costs.get("slippage", zeros),
        gas_usd=costs.get("gas", zeros),
        turnover=turnover,
        regime=regime,
        regime_names=sim.regime_names,
        alive=alive,
        step_days=config.market.step_days,
        dates=dates,
        close_usd=close,
        costs_usd=costs,
        extras=extras,
        ruined=dead.copy(),
        debt_to_equity=debt_eq,
        perp_to_equity=perp_eq,
    )
