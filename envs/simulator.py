"""Batched portfolio simulator: ``B`` independent envs stepped in one vectorized numpy computation.

The single env (:class:`defialloc.envs.env.DeFiMarketEnv`) is this simulator with ``B = 1``, and the batched env
(:class:`defialloc.envs.vec_env.DeFiMarketVecEnv`) is the same code with ``B > 1``, so the two agree exactly for the
same seeds.

Timing of one step (no look-ahead): at decision time ``t`` the policy sees prices up to ``t``; its
trades execute against the pools' state at ``t`` and are valued at the market price at ``t``; then the
market moves to ``t + 1`` (prices, regime, depth, gas), pools are arbitraged back toward the new market
price, and the portfolio is marked at the new market prices. Hence, per env and step,

    V(t+1) = V(t) - fees - slippage - gas + sum_i holdings_i(t+1) * (p_i(t+1) - p_i(t))

where the sum includes the numeraire (cash units times the change of its USD price).

With lending, perps or cascades on (``env.lending/perps/cascades``), the action, the state (debt,
perp sizes), the observation and the step gain the protocol parts described in
:mod:`defialloc.envs.leverage` (action layout, execution order) and :mod:`defialloc.envs.leverage_move` (interest,
funding, cascades, liquidations, and the extended identity); with all of them off the spot code
path below runs unchanged.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.action_kinds import ActionMap, PortfolioState, override_targets
from defialloc.envs.actions import all_numeraire, apply_no_trade_band, validate_actions
from defialloc.envs.config import SimulationConfig
from defialloc.envs.execution.costs import GasModel, TradeCosts
from defialloc.envs.execution.pools import PoolBook
from defialloc.envs.execution.rebalance import execute_rebalance, target_units
from defialloc.envs.features import ObservationLayout, market_features, trader_model_for
from defialloc.envs.greeks import greek_totals, greeks_block
from defialloc.envs.indexing import flat_time_index, gather_at
from defialloc.envs.kill_switch import KillSwitch
from defialloc.envs.leverage import LeverageEngine
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.leverage_info import protocol_step_fields
from defialloc.envs.leverage_move import MoveOutcome, protocol_move, write_off_negative_equity
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.rewards import RewardModel
from defialloc.envs.simulator_records import STATE_FIELDS, env_info, restore_env, snapshot_env
from defialloc.envs.simulator_views import greeks_now, options_now, portfolio_state, rates_now
from defialloc.envs.step_records import DrawnEpisodes, Execution, StepResult


def _turnover(traded_usd: np.ndarray, value_before: np.ndarray) -> np.ndarray:
    """One-sided turnover ``(B,)``: half the USD traded ``(B, N)`` over the value before trading
    (0 for an empty, ruined account)."""
    live = value_before > 0.0
    return 0.5 * traded_usd.sum(axis=1) / np.where(live, value_before, np.inf)


class PortfolioSimulator:
    """State and dynamics of ``n_envs`` portfolios trading a multi-asset DeFi spot market."""

    def __init__(self, config: SimulationConfig, n_envs: int) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs={n_envs} must be >= 1")
        self.config = config
        self.n_envs = n_envs
        env_cfg = config.env
        self.asset_names: tuple[str, ...] = tuple(config.market.assets)
        self.n_assets = len(self.asset_names)
        self.action_dim = self.n_assets + 1
        self.protocols: LeverageEngine | None = None
        if env_cfg.protocols_enabled:
            self.protocols = LeverageEngine(config, n_envs, self.asset_names)
            self.action_dim = self.protocols.layout.dim
        protocol_size = 0 if self.protocols is None else self.protocols.obs_size
        self.obs_layout = ObservationLayout.build(self.n_assets, env_cfg.observation, protocol_size)
        self.obs_dim = self.obs_layout.size
        # the garch_vol / regime blocks' model: the market section's calibrated parameters (None without)
        self.trader_model = trader_model_for(config)
        self.action_map = ActionMap(
            ActionLayout.for_config(env_cfg, self.n_assets),
            env_cfg.action,
            env_cfg.lending.max_leverage,
        )
        self._move: MoveOutcome | None = None
        self.warmup = env_cfg.warmup
        self.horizon = env_cfg.horizon
        self.path_length = self.warmup + self.horizon + 1
        self.initial_value = env_cfg.initial_value_usd
        self.band = env_cfg.action.no_trade_band
        self.gas = GasModel(env_cfg.gas)
        self.rewards = RewardModel(
            env_cfg.reward, n_envs, env_cfg.ruin_fraction * env_cfg.initial_value_usd
        )
        self.kill_switch = KillSwitch(env_cfg.kill_switch, n_envs)
        self._pending: Execution | None = None
        tiers = env_cfg.amm.tiers
        self.pools = PoolBook.empty(
            n_envs,
            np.array([t.fee for t in tiers]),
            np.array([t.depth_share for t in tiers]),
            np.array([env_cfg.amm.pair_depth_usd(a) for a in self.asset_names]),
        )
        b, length, n = n_envs, self.path_length, self.n_assets
        self._rows = np.arange(b)
        self.close = np.ones((b, length, n))
        self.low = np.ones((b, length, n))
        self.high = np.ones((b, length, n))
        self.numeraire = np.ones((b, length))
        self.depth = np.ones((b, length))
        self.gas_gwei = np.ones((b, length))
        self.eth = np.ones((b, length))
        self.regime = np.zeros((b, length), dtype=np.int8)
        self.features = np.zeros((b, length, self.obs_layout.n_market), dtype=np.float32)
        self.regime_names: tuple[str, ...] = ()
        self.dates: np.ndarray | None = None
        self.t = np.zeros(b, dtype=np.int64)
        self._now = flat_time_index(b, length, self.warmup + self.t)
        self.units = np.zeros((b, n))
        self.cash = np.zeros(b)
        self.peak = np.ones(b)
        self.value = np.ones(b)

    # ------------------------------------------------------------------ reset
    def sample_episodes(self, seeds: np.ndarray) -> DrawnEpisodes:
        """The episodes of path seeds ``seeds`` ``(K,)``: market paths, features, protocol series.

        Episode ``k`` depends only on ``seeds[k]``, so episodes can be drawn in batches ahead of the
        resets that use them (:class:`defialloc.envs.vec_env.DeFiMarketVecEnv` does) with identical results.
        """
        seeds = np.asarray(seeds)
        paths = sample_paths(self.config.market, seeds, self.path_length, self.warmup)
        return self._drawn(paths, seeds)

    def _drawn(self, paths: MarketPaths, seeds: np.ndarray) -> DrawnEpisodes:
        series = None if self.protocols is None else self.protocols.generate_series(paths, seeds)
        return DrawnEpisodes(paths, self.path_features(paths), series)

    def path_features(self, paths: MarketPaths) -> np.ndarray:
        """The observation's market features ``(K, L, F)`` float32 of ``paths`` (causal per row)."""
        return market_features(
            paths.close,
            paths.numeraire_usd,
            paths.depth_multiplier,
            paths.gas_price_gwei,
            self.config.env.observation,
            paths.step_days,
            model=self.trader_model,
            dtype=np.float32,
        )

    def reset_envs(
        self,
        index: np.ndarray,
        seeds: np.ndarray,
        paths: MarketPaths | None = None,
        drawn: DrawnEpisodes | None = None,
    ) -> None:
        """Start new episodes for envs ``index`` on market paths drawn from ``seeds`` (or given ``paths``).

        ``drawn``: the episodes of ``seeds`` when already drawn by :meth:`sample_episodes` (then
        ``paths`` is ignored).
        """
        index = np.asarray(index, dtype=np.int64)
        seeds = np.asarray(seeds)
        if drawn is None:
            if paths is None:
                drawn = self.sample_episodes(seeds)
            else:  # the step's hot path trusts its prices: check what a caller hands in, once
                paths.validate()
                drawn = self._drawn(paths, seeds)
        paths = drawn.paths
        if paths.length != self.path_length or paths.n_assets != self.n_assets:
            raise ValueError(
                f"market paths have length {paths.length} and {paths.n_assets} assets; "
                f"expected {self.path_length} and {self.n_assets}"
            )
        self.close[index] = paths.close
        self.low[index] = paths.low
        self.high[index] = paths.high
        self.numeraire[index] = paths.numeraire_usd
        self.depth[index] = paths.depth_multiplier
        self.gas_gwei[index] = paths.gas_price_gwei
        self.eth[index] = paths.eth_usd
        self.regime[index] = paths.regime
        self.regime_names = paths.regime_names
        if paths.dates is not None:
            if self.dates is None:
                self.dates = np.full(
                    (self.n_envs, self.path_length), np.datetime64("NaT"), dtype="datetime64[D]"
                )
            self.dates[index] = np.broadcast_to(paths.dates, (len(index), self.path_length))
        self.features[index] = drawn.features
        tau = self.warmup
        price = paths.close[:, tau]
        num = paths.numeraire_usd[:, tau]
        self.t[index] = 0
        self.sync_time_index()
        self._initial_positions(index, price, num)
        self.value[index] = self.initial_value
        self.peak[index] = self.initial_value
        self.pools.set_at_market(index, price, num, paths.depth_multiplier[:, tau])
        if self.protocols is not None:
            self.protocols.reset(index, paths, seeds, drawn.protocol_series)
        reset_mask = np.isin(self._rows, index)
        self.rewards.reset(reset_mask)
        self.kill_switch.reset(reset_mask)

    def _initial_positions(self, index: np.ndarray, price: np.ndarray, num: np.ndarray) -> None:
        if self.config.env.initial_weights == "equal":
            share = self.initial_value / (self.n_assets + 1)
            self.units[index] = share / price
            self.cash[index] = share / num
        else:
            self.units[index] = 0.0
            self.cash[index] = self.initial_value / num

    # ------------------------------------------------------------------ views
    def _tau(self) -> np.ndarray:
        return self.warmup + self.t

    def sync_time_index(self) -> None:
        """Recompute the flat decision-time index (after ``t`` or the path length changed)."""
        self._now = flat_time_index(self.n_envs, self.path_length, self._tau())

    def now(self, arr: np.ndarray) -> np.ndarray:
        """Every env's row of a ``(B, L, ...)`` path array at the decision time."""
        return gather_at(arr, self._now)

    def prices_now(self) -> tuple[np.ndarray, np.ndarray]:
        """Market prices ``(B, N)`` USD and numeraire USD price ``(B,)`` at the current decision time."""
        return self.now(self.close), self.now(self.numeraire)

    def weights(self, price: np.ndarray, num: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Current weights ``(B, N+1)`` (cash last) at the given prices; an empty (ruined) account,
        ``value <= 0``, reads as all cash."""
        w = np.empty((self.n_envs, self.n_assets + 1))
        empty = value <= 0.0
        if empty.any():
            value = np.where(empty, np.inf, value)
        w[:, :-1] = self.units * price / value[:, None]
        w[:, -1] = self.cash * num / value
        if empty.any():
            w[empty, -1] = 1.0
        return w

    def health_factor_now(self) -> np.ndarray | None:
        """``(B,)`` health factor at the decision time (inf without debt); None without lending."""
        engine = self.protocols
        return engine.hf_now if engine is not None and engine.lending_on else None

    def rates_now(self) -> dict[str, np.ndarray] | None:
        """Protocol rates quoted at the decision time (:func:`defialloc.envs.simulator_views.rates_now`)."""
        return rates_now(self)

    def options_now(self) -> dict[str, np.ndarray] | None:
        """The options venue as a policy sees it now (:func:`defialloc.envs.simulator_views.options_now`)."""
        return options_now(self)

    def greeks(self, price: np.ndarray) -> np.ndarray:
        """``(B, N, 4)`` portfolio Greeks per asset now (:func:`defialloc.envs.simulator_views.greeks_now`)."""
        return greeks_now(self, price)

    def portfolio_state(
        self, price: np.ndarray, num: np.ndarray, value: np.ndarray
    ) -> PortfolioState:
        """What the action kinds read (:func:`defialloc.envs.simulator_views.portfolio_state`)."""
        return portfolio_state(self, price, num, value)

    def trailing_prices(self, lookback: int) -> np.ndarray:
        """Close prices ``(B, lookback, N)`` USD up to and including the decision time (no future rows)."""
        if not 1 <= lookback <= self.warmup + 1:
            raise ValueError(f"lookback={lookback} must be in [1, warmup + 1 = {self.warmup + 1}]")
        offsets = np.arange(-lookback + 1, 1)
        return self.close[self._rows[:, None], self._tau()[:, None] + offsets]

    def observe(self) -> np.ndarray:
        """Observation ``(B, obs_dim)`` float32 at the current decision time, in the blocks' order
        (``env.observation.blocks``; layout: envs/features/__init__.py)."""
        price, num = self.prices_now()
        obs = np.empty((self.n_envs, self.obs_dim), dtype=np.float32)
        layout = self.obs_layout
        if layout.n_market:  # (a reshape of no columns would be ambiguous)
            layout.put_market(obs, self.now(self.features))
        if layout.weights is not None:
            obs[:, layout.weights] = self.weights(price, num, self.value)
        if layout.drawdown is not None:
            obs[:, layout.drawdown] = 1.0 - self.value / self.peak
        clip = self.config.env.observation.clip
        if self.protocols is not None and layout.protocol is not None:
            block = obs[:, layout.protocol]
            self.protocols.observation(self.units, price, num, self.value, self._now, out=block)
            np.maximum(np.minimum(block, clip, out=block), -clip, out=block)
        if layout.greeks is not None:
            block = greeks_block(self.greeks(price), price, self.value)
            obs[:, layout.greeks] = np.clip(block, -clip, clip)
        return obs

    # ------------------------------------------------------------------ step
    def step(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> StepResult:
        """Advance every env by one market step: :meth:`execute` at ``t``, then :meth:`advance`.

        ``actions``: ``(B, action_dim)`` (or spot-only ``(B, N+1)``) in [-1, 1], read by the
        config's action kind (envs/action_kinds.py) unless ``action_kind`` names another; see
        :meth:`execute` for ``override``/``hold``.
        """
        self.execute(actions, override=override, hold=hold, action_kind=action_kind)
        return self.advance()

    def step_observe(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> tuple[StepResult, np.ndarray]:
        """:meth:`step` and the observation after it ``(B, obs_dim)`` float32 (the compiled
        simulator computes both in one pass; the envs step through this)."""
        result = self.step(actions, override=override, hold=hold, action_kind=action_kind)
        return result, self.observe()

    def action_map_for(self, kind: str | None) -> ActionMap:
        """The config's :class:`ActionMap`, or the same layout read as ``kind`` (e.g. ``"target"``
        for baselines, which express targets whatever the agents' kind)."""
        if kind is None or kind == self.action_map.kind:
            return self.action_map
        maps = self.__dict__.setdefault("_other_maps", {})
        if kind not in maps:
            cfg = self.config.env.action.model_copy(update={"kind": kind})
            maps[kind] = ActionMap(self.action_map.layout, cfg, self.action_map.max_leverage)
        return maps[kind]

    def execute(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> Execution:
        """Trade toward the actions' targets against the pools at the current decision time ``t``.

        Args:
            actions: ``(B, action_dim)`` or spot-only ``(B, N+1)``; None only with ``hold``.
            override: ``(B,)`` bool, envs that get the safe target (all numeraire, no debt, no
                perps) whatever their action and action kind: a policy-side kill-switch
                (``defialloc.agents.kill_switch_policy.KillSwitchPolicy``) asks for cash through it.
            hold: no env trades at this step (a step between two decisions, ``env.decision_every``):
                no order, no cost, and the kill-switch is not consulted (it acts at decisions).
            action_kind: read the actions as this kind instead of ``env.action.kind`` (baselines
                express targets: ``"target"``; None: the config's kind).

        A target that is all numeraire closes every position regardless of the no-trade band
        (:func:`defialloc.envs.actions.all_numeraire`). The env's kill-switch (when enabled) adds its own
        override, so it trades exactly like a policy-side kill-switch with the same parameters.
        """
        if hold:
            zero = np.zeros(self.n_envs)
            no_flag = np.zeros(self.n_envs, dtype=bool)
            self._pending = Execution(self.value, TradeCosts(zero, zero, zero), zero, no_flag)
            return self._pending
        if actions is None:
            raise ValueError("actions is None: only a hold step (hold=True) trades without actions")
        width = np.shape(actions)[-1] if np.ndim(actions) else 0  # a scalar: validated below
        spot_only = width == self.n_assets + 1 < self.action_dim
        actions = validate_actions(
            actions, self.n_envs, self.n_assets + 1 if spot_only else self.action_dim
        )
        price, num = self.prices_now()
        value_before = self.value
        state = self.portfolio_state(price, num, value_before)
        engine = self.protocols
        active = self.kill_switch.update(1.0 - value_before / self.peak, self.health_factor_now())
        forced = active if override is None else active | np.asarray(override, dtype=bool)
        targets = self.action_map_for(action_kind).targets(actions, state)
        if forced.any():
            targets = override_targets(targets, self.action_map.safe_targets(self.n_envs), forced)
        if engine is not None:
            fills = engine.execute(
                self.units,
                self.cash,
                targets,
                price,
                num,
                value_before,
                self._now,
                self.pools,
                self.gas,
                self.now(self.gas_gwei),
                self.now(self.eth),
            )
            self.units, self.cash = fills.units, fills.cash
            turnover = _turnover(fills.traded_usd, value_before)
            self._pending = Execution(
                value_before, fills.costs, turnover, forced, state.weights, targets.weights,
                fills.mask, fills.leverage if engine.lending_on else None, fills.options,
            )  # fmt: skip
            return self._pending
        target = targets.weights
        current = state.weights
        mask = apply_no_trade_band(target, current, self.band)
        mask |= all_numeraire(target)[:, None] & (self.units > 0.0)
        fills = execute_rebalance(
            self.units,
            self.cash,
            target_units(target, value_before, price),
            mask,
            price,
            num,
            self.pools,
            self.gas,
            self.now(self.gas_gwei),
            self.now(self.eth),
        )
        self.units = self.units + fills.asset_delta
        self.cash = self.cash + fills.cash_delta
        turnover = _turnover(fills.traded_usd, value_before)
        self._pending = Execution(
            value_before, fills.costs, turnover, forced, current, target, mask
        )
        return self._pending

    def advance(self) -> StepResult:
        """Move the market from ``t`` to ``t + 1``: realign the pools, mark the portfolio, score the step."""
        if self._pending is None:
            raise RuntimeError("advance() needs an execute() first")
        done, self._pending = self._pending, None
        if self.t.max() >= self.horizon:  # the flat time index would run into the next env's path
            ended = np.flatnonzero(self.t >= self.horizon).tolist()
            raise RuntimeError(f"envs {ended} are at the end of their path; reset them first")
        after = self._now + 1  # the flat index of t + 1
        new_price, new_num = gather_at(self.close, after), gather_at(self.numeraire, after)
        self.pools.realign(new_price, new_num, gather_at(self.depth, after))
        engine = self.protocols
        if engine is not None:
            move = protocol_move(
                engine,
                self.units,
                self.cash,
                self._now,
                self.now(self.close),
                new_price,
                new_num,
                gather_at(self.low, after),
                gather_at(self.high, after),
                self.pools,
            )
            self._move = move
            value_after = (move.units * new_price).sum(axis=1) + (move.cash - engine.debt) * new_num
            if engine.options is not None:
                value_after = value_after + engine.options.value_usd()
            # limited liability: a loss beyond the account's equity is bad debt, value >= 0
            value_after = write_off_negative_equity(engine, move, value_after)
            self.units, self.cash = move.units, move.cash
        else:
            value_after = (self.units * new_price).sum(axis=1) + self.cash * new_num
        value_before = done.value_before
        dd_before = 1.0 - value_before / self.peak
        # re-entry is the next decision: its drawdown is measured from the value it starts with
        released = done.kill_switch & self.kill_switch.last_override_step
        if self.kill_switch.cfg.reset_peak_after_cooldown and released.any():
            self.peak = np.where(released, value_after, self.peak)
        self.peak = np.maximum(self.peak, value_after)
        dd_after = 1.0 - value_after / self.peak
        reward = self.rewards(value_before, value_after, dd_before, dd_after, done.costs)
        self.value = value_after
        self.t = self.t + 1
        self._now = after
        terminated = value_after <= self.config.env.ruin_fraction * self.initial_value
        truncated = (self.t >= self.horizon) & ~terminated
        result = StepResult(
            reward,
            terminated,
            truncated,
            value_after,
            done.costs,
            done.turnover,
            self.now(self.regime),  # t + 1: the time index has moved
            done.kill_switch,
        )
        if engine is not None:
            assert self._move is not None
            protocol_step_fields(
                result, engine, self._move, self.units, new_price, new_num, done.options
            )
            if engine.options is not None:
                for name, series in greek_totals(self.greeks(new_price), new_price).items():
                    setattr(result, name, series)
        return result

    # ------------------------------------------------------------------ state
    STATE_FIELDS = STATE_FIELDS

    def snapshot(self, index: int) -> dict:
        """JSON-serializable state of env ``index`` (positions, pools, risk state), for ledgers and resumes."""
        return snapshot_env(self, index)

    def restore(self, index: int, state: dict) -> None:
        """Inverse of :meth:`snapshot` (the market path must already be loaded)."""
        restore_env(self, index, state)

    def info(self, index: int, result: StepResult | None = None) -> dict:
        """The documented ``info`` dict of env ``index`` (after a step, or after a reset when ``result`` is None)."""
        return env_info(self, index, result)
