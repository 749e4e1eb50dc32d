"""A :class:`~defialloc.envs.simulator.PortfolioSimulator` fed one market bar at a time (paper trading).

The batch simulator loads a whole market path at reset. Here the path arrays are preallocated (and
grown when a live feed runs past them) and filled row by row as bars arrive; each new observation
row is computed by the env's own :func:`defialloc.envs.features.market_features` on the history loaded so
far, and trades go through the env's own ``execute``/``advance``. Nothing about the market, the
features or the execution model is re-implemented.

Bar ``j`` of a feed is row ``j`` of the path. Rows ``0 .. warmup - 1`` are history only; at row
``warmup`` the portfolio starts (``reset_envs`` on the history) and the first decision is made; every
later bar is: load the row, :meth:`advance` (mark to market, pools realigned), observe, decide, execute.

Levered and hedged configs (lending, perps, cascades): each bar also carries its row of the protocol
series (``MarketBar.protocol``: rates and their growth multipliers, perp mark, basis and funding;
:mod:`defialloc.envs.streaming_protocol`), written into the engine's ``ProtocolPaths`` arrays instead of the
series a reset would generate from the path seed; the borrower population of the cascades is
stepped with the bars as in the env. Debt, perp sizes and the population are part of :meth:`state`.

Exactness: ``market_features`` is causal and computed with sequential prefix operations (``cumsum``,
``lfilter``), so the feature row of bar ``t`` computed from rows ``0 .. t`` equals bit for bit the row
a backtest computes from the full path (the model blocks ``garch_vol`` and ``regime`` included: they
use the config's calibrated model, never the feed's later bars). With ``history_rows`` set, only the
trailing rows are used (bounded cost per bar for long live runs); then the window features can
differ in the last float bits, and the recursive model blocks, which restart from their prior at the
trailing window's first row, by the prior's weight left after ``history_rows`` steps (the GARCH
forecast's by ``beta^history_rows``, e.g. 0.959^250 = 3e-5 for BTC; the filter forgets faster).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.features import market_features
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.step_records import DrawnEpisodes, Execution
from defialloc.envs.streaming_protocol import ProtocolState, check_protocol_state, required_fields


@dataclass(frozen=True)
class MarketBar:
    """One time point of the market, as a feed delivers it.

    Attributes:
        index: position in the feed (0 = first warmup bar); consecutive bars differ by 1.
        time: ISO-8601 date or datetime of the bar's close.
        close, high, low: ``(N,)`` USD prices of the risky assets (high >= close >= low > 0).
        numeraire_usd: USD price of the cash asset (1.0 when pegged).
        depth_multiplier: pool depth relative to the config's baseline (> 0).
        gas_price_gwei: gas price (> 0). eth_usd: ETH price in USD (gas is paid in ETH).
        regime: regime code (index into the feed's ``regime_names``; informative only).
        protocol: the lending / perps row at this bar (rates, mark, funding:
            :class:`defialloc.envs.streaming_protocol.ProtocolState`); None for a spot-only policy.
    """

    index: int
    time: str
    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    numeraire_usd: float
    depth_multiplier: float
    gas_price_gwei: float
    eth_usd: float
    regime: int = 0
    protocol: ProtocolState | None = None


def check_bar(
    bar: MarketBar, asset_names: tuple[str, ...], protocol_fields: tuple[str, ...] = ()
) -> None:
    """Raise ValueError naming the field, asset, bar and value when a bar is unusable.

    ``protocol_fields``: the protocol state the policy's config needs (``required_fields``); every
    bar of a levered or hedged policy must carry it (history bars too).
    """
    n = len(asset_names)
    for name in ("close", "high", "low"):
        arr = np.asarray(getattr(bar, name), dtype=np.float64)
        if arr.shape != (n,):
            raise ValueError(
                f"bar {bar.index} ({bar.time}): {name} has shape {arr.shape}, expected ({n},)"
            )
        bad = ~np.isfinite(arr) | (arr <= 0.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"bar {bar.index} ({bar.time}): {name} price of {asset_names[i]} is {float(arr[i])!r}; prices must be finite and > 0"
            )
    for name in ("numeraire_usd", "depth_multiplier", "gas_price_gwei", "eth_usd"):
        value = float(getattr(bar, name))
        if not (np.isfinite(value) and value > 0.0):
            raise ValueError(
                f"bar {bar.index} ({bar.time}): {name}={value!r} must be finite and > 0"
            )
    close, high, low = (
        np.asarray(getattr(bar, k), dtype=np.float64) for k in ("close", "high", "low")
    )
    if np.any(high < close * (1 - 1e-9)) or np.any(low > close * (1 + 1e-9)):
        raise ValueError(f"bar {bar.index} ({bar.time}): need high >= close >= low for every asset")
    check_protocol_state(
        bar.protocol, f"bar {bar.index} ({bar.time})", asset_names, protocol_fields
    )


@dataclass
class OrderIntent:
    """What the portfolio wanted at a decision, before execution (arrays ``(N+1,)`` / ``(N,)``).

    ``current``/``target``: weights (cash last) before trading and after the kill-switch override,
    over the value in spot mode; with debt, over the gross book (``current``: the holdings over
    their sum; ``target``: the policy's weights of ``(1 + leverage) x equity``);
    ``submitted``: assets whose gap exceeded the no-trade band (or that the kill-switch sells);
    ``value_usd``: portfolio value (equity) at the decision; ``units_before``/``cash_before``:
    holdings then; ``order_usd`` ``(N,)``: target minus current USD per risky asset;
    ``target_leverage``: debt / equity after the LTV clip (0 without lending);
    ``debt_before`` (numeraire units) and ``perp_before`` ``(N,)`` (signed units): protocol state then.
    """

    current: np.ndarray
    target: np.ndarray
    submitted: np.ndarray
    value_usd: float
    units_before: np.ndarray
    cash_before: float
    price_usd: np.ndarray
    numeraire_usd: float
    order_usd: np.ndarray | None = None
    target_leverage: float = 0.0
    debt_before: float = 0.0
    perp_before: np.ndarray | None = None


def _with_horizon(config: SimulationConfig, horizon: int) -> SimulationConfig:
    env = config.env.model_copy(update={"horizon": horizon})
    return config.model_copy(update={"env": env})


class StreamingSimulator(PortfolioSimulator):
    """One portfolio (``B = 1``) whose market path grows bar by bar.

    Args:
        config: the simulation config (its ``env.horizon`` is replaced by the capacity).
        capacity: decision bars to preallocate (grown by doubling when exceeded).
        regime_names: names of the feed's regime codes.
        history_rows: None (default) computes each feature row from the whole loaded history (equal
            to a backtest's features); an int >= ``observation.history_needed`` uses only that many
            trailing rows.
    """

    def __init__(
        self,
        config: SimulationConfig,
        capacity: int = 512,
        regime_names: tuple[str, ...] = (),
        history_rows: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        if config.env.options.enabled:
            # the bars carry no option quotes or variance forecasts (docs/options.md)
            raise ValueError(
                "env.options.enabled=true: paper trading does not stream the options venue yet; "
                "export a policy trained with env.options.enabled=false"
            )
        need = config.env.observation.history_needed
        if history_rows is not None and history_rows < need:
            raise ValueError(
                f"history_rows={history_rows} must be >= observation.history_needed = {need}"
            )
        super().__init__(_with_horizon(config, capacity), n_envs=1)
        self.feed_regime_names = tuple(regime_names)
        self.history_rows = history_rows
        self.rows_loaded = 0
        self.started = False
        self.last_intent: OrderIntent | None = None
        engine = self.protocols
        #: the protocol state every bar must carry (empty for a spot-only config)
        self.protocol_fields: tuple[str, ...] = (
            () if engine is None else required_fields(engine.lending_on, engine.perps_on)
        )

    # ------------------------------------------------------------------ loading bars
    def _ensure_rows(self, rows: int) -> None:
        if rows <= self.path_length:
            return
        new_length = max(rows, 2 * self.path_length)
        extra = new_length - self.path_length
        for name in (
            "close",
            "low",
            "high",
            "numeraire",
            "depth",
            "gas_gwei",
            "eth",
            "regime",
            "features",
        ):
            arr = getattr(self, name)
            pad = np.repeat(arr[:, -1:], extra, axis=1)
            setattr(self, name, np.concatenate([arr, pad], axis=1))
        if self.protocols is not None:
            series = self.protocols.paths
            for name in self.protocol_fields:
                arr = getattr(series, name)
                pad = np.repeat(arr[:, -1:], extra, axis=1)
                setattr(series, name, np.concatenate([arr, pad], axis=1))
        self.path_length = new_length
        self.horizon = new_length - self.warmup - 1
        self.sync_time_index()

    def _write_row(self, bar: MarketBar) -> int:
        row = self.rows_loaded
        if bar.index != row:
            raise ValueError(
                f"bar index {bar.index} arrived but the simulator expects bar {row} (no gaps, no repeats)"
            )
        self._ensure_rows(row + 1)
        self.close[0, row] = bar.close
        self.high[0, row] = bar.high
        self.low[0, row] = bar.low
        self.numeraire[0, row] = bar.numeraire_usd
        self.depth[0, row] = bar.depth_multiplier
        self.gas_gwei[0, row] = bar.gas_price_gwei
        self.eth[0, row] = bar.eth_usd
        self.regime[0, row] = bar.regime
        if self.protocol_fields:
            check_protocol_state(
                bar.protocol,
                f"bar {bar.index} ({bar.time})",
                self.asset_names,
                self.protocol_fields,
            )
            series = self.protocols.paths  # type: ignore[union-attr]
            for name in self.protocol_fields:
                getattr(series, name)[0, row] = getattr(bar.protocol, name)
        self.rows_loaded = row + 1
        return row

    def protocol_series(self) -> dict[str, np.ndarray] | None:
        """The loaded protocol rows padded with the last one to the full length, ``{name: (1, L, ...)}``
        (what ``reset_envs`` installs; None for a spot-only config)."""
        if not self.protocol_fields:
            return None
        m, series = self.rows_loaded, self.protocols.paths  # type: ignore[union-attr]
        out = {}
        for name in self.protocol_fields:
            arr = getattr(series, name).copy()
            arr[:, m:] = arr[:, m - 1 : m]
            out[name] = arr
        return out

    def _compute_features(self, first: int, stop: int) -> None:
        """Feature rows ``first .. stop - 1`` from the loaded history (see ``history_rows``)."""
        lo = 0 if self.history_rows is None else max(0, first + 1 - self.history_rows)
        feats = market_features(
            self.close[:, lo:stop],
            self.numeraire[:, lo:stop],
            self.depth[:, lo:stop],
            self.gas_gwei[:, lo:stop],
            self.config.env.observation,
            self.config.market.step_days,
            model=self.trader_model,
        )
        self.features[:, first:stop] = feats[:, first - lo :]

    def _padded_paths(self) -> MarketPaths:
        """The loaded rows, padded with the last bar to the full length (for ``reset_envs``)."""
        m = self.rows_loaded

        def pad(arr: np.ndarray) -> np.ndarray:
            out = arr.copy()
            out[:, m:] = arr[:, m - 1 : m]
            return out

        return MarketPaths(
            asset_names=self.asset_names,
            close=pad(self.close),
            high=pad(self.high),
            low=pad(self.low),
            numeraire_usd=pad(self.numeraire),
            regime=pad(self.regime),
            regime_names=self.feed_regime_names,
            depth_multiplier=pad(self.depth),
            gas_price_gwei=pad(self.gas_gwei),
            eth_usd=pad(self.eth),
            warmup=self.warmup,
            step_days=self.config.market.step_days,
        )

    def push_bar(self, bar: MarketBar) -> None:
        """Load the next bar's row (and, once started, its observation features)."""
        row = self._write_row(bar)
        if self.started:
            self._compute_features(row, row + 1)

    def start(self) -> None:
        """Open the portfolio at bar ``warmup`` (the env's reset: initial holdings, pools at market)."""
        if self.started:
            raise RuntimeError("the portfolio has already started")
        if self.rows_loaded != self.warmup + 1:
            raise RuntimeError(
                f"start() needs exactly warmup + 1 = {self.warmup + 1} bars; {self.rows_loaded} loaded"
            )
        paths = self._padded_paths()
        paths.validate()
        # the protocol series are the bars' rows (a reset would generate them from the seed)
        drawn = DrawnEpisodes(paths, self.path_features(paths), self.protocol_series())
        self.reset_envs(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), drawn=drawn)
        self.started = True

    def load_history(self, bars: list[MarketBar]) -> None:
        """Load many bars at once (a resume), computing their features in one pass."""
        first = self.rows_loaded
        for bar in bars:
            self._write_row(bar)
            if not self.started and self.rows_loaded == self.warmup + 1:
                self.start()
                first = self.rows_loaded
        if self.started and self.rows_loaded > first:
            self._compute_features(first, self.rows_loaded)

    # ------------------------------------------------------------------ trading
    @property
    def decision_row(self) -> int:
        """Row (= feed bar index) of the current decision time."""
        return int(self.warmup + self.t[0])

    def execute(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> Execution:
        """The env's ``execute`` (``action_kind``: see :meth:`PortfolioSimulator.execute`),
        recording the :class:`OrderIntent` it acted on in ``last_intent``."""
        price, num = self.prices_now()
        units_before, cash_before = self.units[0].copy(), float(self.cash[0])
        engine = self.protocols
        debt_before = 0.0 if engine is None else float(engine.debt[0])
        perp_before = None if engine is None else engine.perp_size[0].copy()
        done = super().execute(actions, override=override, hold=hold, action_kind=action_kind)
        value = float(done.value_before[0])
        if engine is None:  # spot: weights over the value, orders = weight gap x value
            current = self.weights(price, num, self.value)[0] if hold else done.current_weights[0]  # type: ignore[index]
            target = current if hold else done.target_weights[0]  # type: ignore[index]
            order_usd = (target[:-1] - current[:-1]) * value
            leverage = 0.0
        else:  # levered: weights of the gross book, orders = target minus held USD
            held = np.append(units_before * price[0], cash_before * float(num[0]))
            gross = float(held.sum())
            current = held / gross if gross > 0.0 else np.eye(self.n_assets + 1)[-1]
            lev = done.target_leverage
            leverage = 0.0 if hold or lev is None else float(lev[0])
            target = current if hold else done.target_weights[0]  # type: ignore[index]
            order_usd = (
                np.zeros(self.n_assets)
                if hold
                else target[:-1] * (1.0 + leverage) * max(value, 0.0) - held[:-1]
            )
        submitted = np.zeros(self.n_assets, dtype=bool) if hold else done.trade_mask[0]  # type: ignore[index]
        self.last_intent = OrderIntent(
            current,
            target,
            submitted,
            value,
            units_before,
            cash_before,
            price[0].copy(),
            float(num[0]),
            order_usd,
            leverage,
            debt_before,
            perp_before,
        )
        return done

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """JSON-serializable state after the last bar: ``snapshot(0)`` plus the pending execution."""
        state = self.snapshot(0)
        pending = self._pending
        if pending is None:
            state["pending"] = None
        else:
            record: dict = {}
            for f in dataclasses.fields(pending):
                value = getattr(pending, f.name)
                if value is None:
                    record[f.name] = None
                elif dataclasses.is_dataclass(value):
                    record[f.name] = {
                        g.name: np.asarray(getattr(value, g.name)).tolist()
                        for g in dataclasses.fields(value)
                    }
                else:
                    record[f.name] = np.asarray(value).tolist()
            state["pending"] = record
        return state

    def load_state(self, state: dict) -> None:
        """Inverse of :meth:`state` (the bars up to the state's decision row must be loaded)."""
        if not self.started:
            raise RuntimeError(
                "load_state() needs the warmup bars loaded and the portfolio started"
            )
        self.restore(0, state)
        if self.decision_row != self.rows_loaded - 1:
            raise ValueError(
                f"state is at bar {self.decision_row} but {self.rows_loaded} bars are loaded; they must agree"
            )
        pending = state.get("pending")
        if pending is None:
            self._pending = None
            return
        hints = typing.get_type_hints(Execution)
        values = {}
        for f in dataclasses.fields(Execution):
            raw = pending.get(f.name)  # fields added later are absent from older ledgers: None
            kind = hints[f.name]
            if raw is None:
                values[f.name] = None
            elif isinstance(raw, dict) and dataclasses.is_dataclass(kind):
                values[f.name] = kind(
                    **{k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}
                )
            else:
                values[f.name] = np.asarray(raw)
        self._pending = Execution(**values)
