"""Sources of market bars for paper trading, behind one adapter interface (:class:`Feed`).

- :class:`ReplayFeed`: real daily OHLCV files replayed at a chosen speed, any period including the
  held-out one (2023-01-01 onward: evaluate on it, never tune on it). The bars are exactly the rows of
  the replay ``MarketPaths`` a backtest of the same dates uses (``defialloc.envs.market.replay``), so paper
  trading and the backtest see the same market.
- :class:`SimulatedFeed`: a "live" feed drawn from the scenario generator (``defialloc.envs.market.sources``):
  a fresh synthetic path per seed, delivered bar by bar at a chosen speed.
- :class:`LiveFeedAdapter`: the documented template for a live exchange or on-chain source:
  implement :meth:`LiveFeedAdapter.fetch_bar`. ``training/paper/ccxt_feed.py`` is the adapter for
  real exchanges (``--feed ccxt:<exchange>``).

Levered and hedged policies: every bar carries the protocol state (``MarketBar.protocol``). The
replay and simulated feeds stream the rows the env generates for the same path and path seed
(``defialloc.envs.streaming_protocol.generate_protocol_series``: seed 0 for a replayed period, as
``run_period_backtest``; the scenario seed for a simulated feed), so a paper run equals the backtest.

Bar ``0`` is the first history (warmup) bar; the first decision is at bar ``env.warmup``. A feed must
deliver consecutive bars, one ``step_days`` apart, with finite positive prices; the runner checks
every bar and stops with an error (nothing written for that bar) when one is not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.market.config import MarketConfig
from defialloc.envs.market.paths import POSITIVE_FIELDS, MarketPaths
from defialloc.envs.streaming import MarketBar, check_bar
from defialloc.envs.streaming_protocol import (
    ProtocolState,
    generate_protocol_series,
    required_fields,
)

SECONDS_PER_DAY = 86_400.0
#: nominal date of bar 0 of a simulated feed (synthetic paths have no calendar)
SIMULATED_EPOCH = "2030-01-01"


class Feed(ABC):
    """A source of market bars (adapter interface).

    Attributes (set by subclasses):
        kind: short name (``"replay"``, ``"simulated"``, ``"live:<venue>"``).
        asset_names: the ``N`` risky assets, in the policy's order.
        numeraire: symbol of the cash asset whose USD price ``MarketBar.numeraire_usd`` carries.
        step_days: bar length in days (must equal the policy's).
        regime_names: names of ``MarketBar.regime`` codes (informative).

    Contract: :meth:`bars` yields ``MarketBar`` with ``index = start, start + 1, ...``; a restart calls
    it again with the first index the ledger lacks, so a feed must be able to deliver any bar it has
    not delivered yet (replayed feeds: any bar). :meth:`identity` describes the data (not the speed)
    and is stored in the ledger: a restart with a different feed is refused.
    """

    kind: str = "feed"
    asset_names: tuple[str, ...] = ()
    numeraire: str = "USDC"
    step_days: float = 1.0
    regime_names: tuple[str, ...] = ()
    #: the protocol state every bar carries (``defialloc.envs.streaming_protocol``; empty: spot only)
    protocol_fields: tuple[str, ...] = ()

    def protocol_sources(self) -> dict[str, str]:
        """Where each protocol field (and each constant market field) of the bars comes from."""
        return {}

    def identity(self) -> dict[str, Any]:
        """JSON-serializable description of the data this feed delivers (subclasses add to it)."""
        return {
            "kind": self.kind,
            "asset_names": list(self.asset_names),
            "numeraire": self.numeraire,
            "step_days": self.step_days,
        }

    @property
    def length(self) -> int | None:
        """Number of bars when known in advance (replays), None for open-ended live feeds."""
        return None

    @abstractmethod
    def bars(self, start: int = 0) -> Iterator[MarketBar]:
        """Bars ``start, start + 1, ...`` (blocking until each is available)."""

    def extends(self, stored: dict[str, Any]) -> bool:
        """True when this feed continues the feed ``stored`` describes (default: never)."""
        return False

    def validate(self) -> None:  # noqa: B027 - optional hook: open-ended feeds check bar by bar
        """Check every bar up front when the feed is finite (nothing is written before this passes)."""


def bar_time(epoch: str, index: int, step_days: float) -> str:
    """ISO time of bar ``index``: a date for whole-day steps, else a UTC datetime."""
    start = np.datetime64(epoch, "s")
    moment = start + np.timedelta64(int(round(index * step_days * SECONDS_PER_DAY)), "s")
    if float(step_days).is_integer():
        return str(moment.astype("datetime64[D]"))
    return str(moment)


def check_spacing(previous: str, current: str, step_days: float, index: int) -> None:
    """Raise ValueError when two consecutive bar times are not exactly one step apart (a gap)."""
    gap = (np.datetime64(current, "s") - np.datetime64(previous, "s")).astype(np.int64)
    expected = step_days * SECONDS_PER_DAY
    if abs(gap - expected) > 1.0:
        raise ValueError(
            f"gap in feed at bar {index}: {previous} is followed by {current} "
            f"({gap / SECONDS_PER_DAY:g} days; bars must be {step_days:g} day(s) apart)"
        )


#: the path seed of a replayed period's protocol series: the one ``run_period_backtest`` uses
PERIOD_SEED = 0


def _paths_digest(
    paths: MarketPaths,
    protocol: dict[str, np.ndarray] | None = None,
    n_bars: int | None = None,
) -> str:
    """Digest of the path's market data and protocol series (their first ``n_bars`` bars; default
    all: a feed extended to later bars keeps the digest of its first bars)."""
    digest = hashlib.sha256()
    for name in (*POSITIVE_FIELDS, "regime"):
        digest.update(np.ascontiguousarray(getattr(paths, name)[:, :n_bars]).tobytes())
    for name in sorted(protocol or {}):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(protocol[name][:, :n_bars]).tobytes())  # type: ignore[index]
    return digest.hexdigest()[:16]


def protocol_fields_of(config: SimulationConfig) -> tuple[str, ...]:
    """The protocol state bars must carry for a policy trained on ``config`` (empty: spot only)."""
    return required_fields(config.env.lending.enabled, config.env.perps.enabled)


class PathFeed(Feed):
    """Streams the rows of one ``MarketPaths`` path, ``speed`` bars per second (0: no waiting).

    ``protocol``: the path's lending / perps series (``{name: (1, L, ...)}``, as
    ``ProtocolPaths.generate`` returns them) when the policy is levered or hedged: each bar carries
    its row (:class:`defialloc.envs.streaming_protocol.ProtocolState`); ``protocol_seed``: the path seed they
    were drawn from (the backtest of the same path draws them from the same seed);
    ``backtest_seed``: the seed a backtest of this path uses (replay: 0, simulated: the scenario
    seed), for the reference backtest a paper run is shown against (None: none).
    """

    def __init__(
        self,
        paths: MarketPaths,
        *,
        kind: str,
        numeraire: str,
        source: dict[str, Any],
        speed: float = 0.0,
        epoch: str = SIMULATED_EPOCH,
        sleep: Callable[[float], None] = time.sleep,
        protocol: dict[str, np.ndarray] | None = None,
        protocol_seed: int | None = None,
        backtest_seed: int | None = None,
    ) -> None:
        if paths.n_paths != 1:
            raise ValueError(f"a feed streams one path; got {paths.n_paths}")
        self.protocol = protocol
        self.protocol_seed = protocol_seed
        #: the path seed a backtest of this path runs with (None: no reference backtest)
        self.backtest_seed = backtest_seed
        self.protocol_fields = tuple(protocol or ())
        if not speed >= 0.0:
            raise ValueError(f"speed={speed} must be >= 0 bars per second (0: as fast as possible)")
        self.paths = paths
        self.kind = kind
        self.asset_names = tuple(paths.asset_names)
        self.numeraire = numeraire
        self.step_days = float(paths.step_days)
        self.regime_names = tuple(paths.regime_names)
        self.speed = float(speed)
        self.source = source
        self._sleep = sleep
        dates = paths.dates
        if dates is not None:
            dates = np.asarray(dates)
            dates = dates[0] if dates.ndim == 2 else dates
            self.times = [str(d) for d in dates.astype("datetime64[D]")]
        else:
            self.times = [bar_time(epoch, i, self.step_days) for i in range(paths.length)]

    @property
    def length(self) -> int:
        return self.paths.length

    def identity(self) -> dict[str, Any]:
        out = {
            **super().identity(),
            "n_bars": self.length,
            "first_time": self.times[0],
            "last_time": self.times[-1],
            "data_sha256": _paths_digest(self.paths, self.protocol),
            **self.source,
        }
        if self.protocol is not None:
            out["protocol_seed"] = self.protocol_seed
            out["protocol_sources"] = self.protocol_sources()
        return out

    def protocol_sources(self) -> dict[str, str]:
        """Where each protocol field of the bars comes from (recorded in the ledger and MLflow)."""
        return {
            name: f"env generator (envs/leverage_paths.py), path seed {self.protocol_seed}"
            for name in self.protocol_fields
        }

    def extends(self, stored: dict[str, Any]) -> bool:
        """True when this feed is the feed of ``stored`` (an earlier :meth:`identity`) with more
        bars after it: same kind, source and settings, and its first ``stored['n_bars']`` bars are
        the same data (digest), e.g. the same replay to a later ``--end``."""
        n = stored.get("n_bars")
        if not isinstance(n, int) or not 0 < n < self.length:
            return False
        prefix = {
            **self.identity(),
            "n_bars": n,
            "last_time": self.times[n - 1],
            "data_sha256": _paths_digest(self.paths, self.protocol, n),
        }
        if "end" in self.source:  # a replay's end date is its last bar's
            prefix["end"] = self.times[n - 1]
        return prefix == stored

    def bar(self, index: int) -> MarketBar:
        p = self.paths
        return MarketBar(
            index=index,
            time=self.times[index],
            close=p.close[0, index].copy(),
            high=p.high[0, index].copy(),
            low=p.low[0, index].copy(),
            numeraire_usd=float(p.numeraire_usd[0, index]),
            depth_multiplier=float(p.depth_multiplier[0, index]),
            gas_price_gwei=float(p.gas_price_gwei[0, index]),
            eth_usd=float(p.eth_usd[0, index]),
            regime=int(p.regime[0, index]),
            protocol=None
            if self.protocol is None
            else ProtocolState.from_series(self.protocol, 0, index),
        )

    def validate(self) -> None:
        for i in range(self.length):
            check_bar(self.bar(i), self.asset_names, self.protocol_fields)
            if i > 0:
                check_spacing(self.times[i - 1], self.times[i], self.step_days, i)

    def bars(self, start: int = 0) -> Iterator[MarketBar]:
        t0 = time.monotonic()
        for k, index in enumerate(range(start, self.length)):
            if self.speed > 0.0:
                wait = t0 + k / self.speed - time.monotonic()
                if wait > 0:
                    self._sleep(wait)
            yield self.bar(index)


class ReplayFeed(PathFeed):
    """Real daily closes of ``[start - warmup days, end]`` replayed bar by bar (first decision at ``start``)."""

    @classmethod
    def from_config(
        cls,
        config: SimulationConfig,
        start: str | dt.date,
        end: str | dt.date,
        *,
        data_dir: str | None = None,
        market: MarketConfig | None = None,
        speed: float = 0.0,
    ) -> ReplayFeed:
        """The replay of ``start..end`` for a policy trained on ``config`` (its assets, numeraire and
        regime rule; ``market`` replaces the market section, ``data_dir`` the data folder)."""
        from defialloc.envs.market.replay import load_panel, replay_paths

        base = market or config.market
        update: dict[str, Any] = {
            "source": "replay",
            "start": parse_date(start, "start"),
            "end": parse_date(end, "end"),
        }
        if data_dir is not None:
            update["data_dir"] = str(data_dir)
        cfg = MarketConfig.model_validate({**base.model_dump(), **update})
        warmup = config.env.warmup
        panel = load_panel(cfg)
        lo, hi = panel.window(cfg.start, cfg.end, history_days=warmup)
        if hi - lo < warmup + 2:
            raise ValueError(
                f"replay {start}..{end} with {warmup} warmup days has {hi - lo} days of data in "
                f"{cfg.resolved_data_dir()}; need at least warmup + 2 = {warmup + 2}"
            )
        first_decision = panel.dates[lo + warmup]
        if first_decision != np.datetime64(cfg.start, "D"):
            raise ValueError(
                f"the data hold only {int(np.datetime64(cfg.start, 'D') - panel.dates[lo])} days before "
                f"start={cfg.start}; the policy needs warmup={warmup} days of history"
            )
        last = panel.dates[hi - 1]
        if last != np.datetime64(cfg.end, "D"):
            raise ValueError(
                f"the data in {cfg.resolved_data_dir()} end at {last}, before end={cfg.end}"
            )
        paths = replay_paths(cfg, np.zeros(1, dtype=np.int64), hi - lo, warmup)
        source = {"start": str(cfg.start), "end": str(cfg.end), "warmup": warmup}
        # levered / hedged policies: the rates, marks and funding of the backtest of these dates
        seed = np.array([PERIOD_SEED], dtype=np.int64)
        protocol = generate_protocol_series(config, paths, seed)
        return cls(paths, kind="replay", numeraire=cfg.numeraire, source=source, speed=speed,
                   protocol=protocol, protocol_seed=None if protocol is None else PERIOD_SEED,
                   backtest_seed=PERIOD_SEED)  # fmt: skip


class SimulatedFeed(PathFeed):
    """A synthetic market path from the scenario generator, delivered as a live feed."""

    @classmethod
    def from_config(
        cls,
        config: SimulationConfig,
        seed: int,
        n_bars: int,
        *,
        market: MarketConfig | None = None,
        speed: float = 0.0,
        epoch: str = SIMULATED_EPOCH,
    ) -> SimulatedFeed:
        """``n_bars`` bars (``env.warmup`` of them history) of the path of scenario ``seed``."""
        from defialloc.envs.market.sources import sample_paths

        warmup = config.env.warmup
        if n_bars < warmup + 2:
            raise ValueError(
                f"--bars={n_bars} must be >= warmup + 2 = {warmup + 2} (history + two decisions)"
            )
        if seed < 0:
            raise ValueError(f"--seed={seed} must be >= 0")
        cfg = market or config.market
        if cfg.source == "replay":
            raise ValueError(
                "a simulated feed needs a synthetic or bootstrap market, not source=replay"
            )
        seeds = np.array([seed], dtype=np.int64)
        paths = sample_paths(cfg, seeds, n_bars, warmup)
        source = {"seed": int(seed), "source": cfg.source, "warmup": warmup, "epoch": epoch}
        # levered / hedged policies: the series a backtest of scenario `seed` draws at reset
        protocol = generate_protocol_series(config, paths, seeds)
        return cls(
            paths,
            kind="simulated",
            numeraire=cfg.numeraire,
            source=source,
            speed=speed,
            epoch=epoch,
            protocol=protocol,
            protocol_seed=None if protocol is None else int(seed),
            backtest_seed=int(seed),
        )


def parse_date(value: str | dt.date, name: str) -> dt.date:
    """A ``--start``/``--end`` value as a date, or a clear error naming the option."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"--{name}={value!r} is not a date (YYYY-MM-DD)") from None


class LiveFeedAdapter(Feed):
    """Template for a live exchange or on-chain source (documented; not run in this project).

    Subclass it and implement :meth:`fetch_bar`; everything else (pacing, the contract of
    :meth:`Feed.bars`) is here. A typical on-chain adapter:

    - ``close``/``high``/``low``: per asset, the close of the bar from a price oracle (e.g. Chainlink
      ``latestRoundData``) or an exchange's OHLCV endpoint, aggregated to ``step_days`` bars in UTC;
    - ``numeraire_usd``: the stablecoin's USD price from the same source;
    - ``depth_multiplier``: current pool TVL divided by the config's baseline ``env.amm.depth_usd``;
    - ``gas_price_gwei``: ``eth_gasPrice`` (or the base fee + a tip) at the bar's close;
    - ``eth_usd``: the ETH price (gas is paid in ETH).

    The history bars (``index < warmup``) must be fetched too (the observation needs them). Bars must
    be final (closed) and, for the crash-safety guarantee, reproducible: after a restart the runner
    asks again for the first bar it has not recorded, which may lie in the past.

    A levered or hedged policy needs every bar to carry its protocol state
    (``MarketBar.protocol``, :class:`defialloc.envs.streaming_protocol.ProtocolState`, e.g. built with
    ``ProtocolState.from_quotes``); declare the fields with ``protocol_fields``
    (``defialloc.envs.streaming_protocol.required_fields``) and say where they come from in
    :meth:`Feed.protocol_sources`. :class:`defialloc.training.paper.ccxt_feed.CcxtFeed` is a complete example.
    """

    kind = "live"

    def __init__(
        self,
        asset_names: tuple[str, ...],
        numeraire: str,
        step_days: float,
        venue: str,
        poll_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        protocol_fields: tuple[str, ...] = (),
    ) -> None:
        self.protocol_fields = tuple(protocol_fields)
        self.asset_names = tuple(asset_names)
        self.numeraire = numeraire
        self.step_days = float(step_days)
        self.venue = venue
        self.kind = f"live:{venue}"
        self.poll_seconds = poll_seconds
        self._sleep = sleep

    @abstractmethod
    def fetch_bar(self, index: int) -> MarketBar | None:
        """The closed bar ``index``, or None when it has not closed yet (the caller polls again)."""

    def bars(self, start: int = 0) -> Iterator[MarketBar]:
        index = start
        while True:
            bar = self.fetch_bar(index)
            if bar is None:
                self._sleep(self.poll_seconds)
                continue
            yield bar
            index += 1
