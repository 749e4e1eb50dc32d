"""``--feed ccxt:<exchange>``: closed candles, perp marks and funding from a real venue, via ccxt.

ccxt (https://github.com/ccxt/ccxt, MIT) gives one API over 100+ exchanges: ``load_markets``,
``fetch_ohlcv``, ``fetch_mark_ohlcv`` and ``fetch_funding_rate_history`` are what this feed uses,
all public endpoints (no API key is ever configured). Writing a client per exchange would repeat what
ccxt maintains; what is written here is the mapping to the simulator's bars and the checks.

Bars (``step_days`` of the policy; a daily policy reads ``1d`` candles). Bar ``i`` is the candle
opening at ``O_i = start + (i - warmup) x step`` (UTC; bar ``warmup`` is the first decision, at the
close of ``start``, like a replay) and closing at ``C_i = O_i + step``; its ``time`` is the date of
``O_i`` (as the replay files' dates). Per bar:

- ``close``/``high``/``low``: the ``<ASSET>/<QUOTE>`` spot candle (``--quote``, default USDT, taken as
  1 USD); ``numeraire_usd``: the close of ``<NUMERAIRE>/<QUOTE>`` (1.0 when they are the same);
  ``eth_usd``: the close of ``ETH/<QUOTE>`` (gas is paid in ETH);
- ``gas_price_gwei`` and ``depth_multiplier``: configured constants (a CEX has neither);
- with perps: ``mark`` = the close of the ``<ASSET>/<QUOTE>:<QUOTE>`` perp's mark-price candle,
  ``basis = mark / close - 1``, ``funding`` = the sum of the funding rates the venue settled during the
  bar (``O_i < t <= C_i``: three 8 h periods a day on Binance), the quote charged over the next step
  (the env's convention: the rate known at ``t`` applies over ``[t, t + 1]``; the realized rate of that
  step is only known at its end, so paper funding is this persistence forecast);
- with lending: the rates of :mod:`defialloc.training.paper.lending_quotes` (snapshot or constants).

Where each field comes from is :meth:`CcxtFeed.protocol_sources` (stored in the ledger's meta and
the MLflow params). Polling: a bar is fetched ``settle_seconds`` after its close; if the venue does
not have it yet, the feed polls every ``poll_seconds``; ``stale_after_seconds`` after the close a
missing candle is a :class:`StaleCandle` error. A missing candle with later ones present is a
:class:`GapInVenueData` error; a bar without a funding settlement a :class:`MissingFunding` error.
Network failures are retried with exponential backoff (:class:`Backoff`), then
:class:`VenueUnreachable`. :meth:`CcxtFeed.validate` fetches and checks every bar that has closed
before anything is written. Tests feed ccxt's own parsing with recorded-format responses
(tests/fixtures/ccxt/); no test touches the network.
"""

from __future__ import annotations

import datetime as dt
import difflib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.streaming import MarketBar, check_bar
from defialloc.envs.streaming_protocol import ProtocolState, required_fields
from defialloc.training.paper.feeds import (
    SECONDS_PER_DAY,
    Feed,
    bar_time,
    check_spacing,
    parse_date,
)
from defialloc.training.paper.lending_quotes import lending_quotes
from defialloc.training.paper.venue_errors import (
    Backoff,
    GapInVenueData,
    MissingFunding,
    StaleCandle,
    UnknownExchange,
    UnknownSymbol,
    call_with_retries,
)

MS = 1000
#: a funding settlement stamped up to this late still belongs to the bar that closed (venues stamp
#: 00:00:00.001 .. 00:00:05 for a 00:00 settlement)
FUNDING_TOLERANCE_MS = 60 * MS
#: candles per request (Binance spot serves at most 1000)
PAGE = 1000


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / MS, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


class CcxtFeed(Feed):
    """Bars of ``config``'s assets from a ccxt exchange (see the module docstring).

    Args:
        config: the policy's simulation config (assets, numeraire, step, warmup, protocols).
        exchange: a ccxt exchange id (``ccxt.exchanges``), e.g. ``binance``.
        start: the first decision date (UTC); the ``warmup`` bars before it are history.
        end: the last bar's date (None: open-ended, polling at each bar's close).
        quote: quote currency of the markets, taken as 1 USD.
        gas_price_gwei, depth_multiplier: the constants the bars carry.
        protocol_constants: lending rates replacing the snapshot's (``lending_quotes``).
        exchange_options: extra ccxt constructor options (tests pass a recorded HTTP session).
        clock, sleep: seconds since the epoch, and waiting (tests pass fakes).
    """

    def __init__(
        self,
        config: SimulationConfig,
        exchange: str,
        *,
        start: str | dt.date,
        end: str | dt.date | None = None,
        quote: str = "USDT",
        gas_price_gwei: float = 30.0,
        depth_multiplier: float = 1.0,
        protocol_constants: dict[str, float] | None = None,
        backoff: Backoff | None = None,
        poll_seconds: float = 60.0,
        settle_seconds: float = 30.0,
        stale_after_seconds: float = 6 * 3600.0,
        exchange_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import ccxt

        if exchange not in ccxt.exchanges:
            near = difflib.get_close_matches(exchange, ccxt.exchanges, n=5, cutoff=0.5)
            raise UnknownExchange(
                f"--feed ccxt:{exchange}: ccxt {ccxt.__version__} has no exchange {exchange!r}"
                + (f"; did you mean {', '.join(near)}?" if near else "")
                + f" ({len(ccxt.exchanges)} exchanges: python -c 'import ccxt; print(ccxt.exchanges)')"
            )
        for name, value in (("--gas-gwei", gas_price_gwei), ("depth_multiplier", depth_multiplier)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be finite and > 0")
        self.ccxt = ccxt
        self.config = config
        self.venue = exchange
        self.kind = f"ccxt:{exchange}"
        self.asset_names = tuple(config.market.assets)
        self.numeraire = config.market.numeraire
        self.step_days = float(config.market.step_days)
        self.regime_names = ("unlabelled",)
        self.warmup = config.env.warmup
        self.quote = quote
        self.gas_price_gwei, self.depth_multiplier = float(gas_price_gwei), float(depth_multiplier)
        self.backoff = backoff or Backoff()
        self.poll_seconds, self.settle_seconds = poll_seconds, settle_seconds
        self.stale_after_seconds = stale_after_seconds
        self.clock, self._sleep = clock, sleep
        options: dict[str, Any] = {"enableRateLimit": True}
        env = config.env
        self.lending_on, self.perps_on = env.lending.enabled, env.perps.enabled
        if exchange.startswith("binance"):  # only the market types this feed reads
            types = ["spot", "linear"] if self.perps_on else ["spot"]
            options["options"] = {"fetchMarkets": {"types": types}}
        self.exchange = getattr(ccxt, exchange)({**options, **(exchange_options or {})})
        self.step_ms = int(round(self.step_days * SECONDS_PER_DAY * MS))
        self.timeframe = self._timeframe()
        self.start = parse_date(start, "start")
        self.end = None if end is None else parse_date(end, "end")
        first_decision = int(dt.datetime.combine(self.start, dt.time(), dt.UTC).timestamp() * MS)
        self.origin_ms = first_decision - self.warmup * self.step_ms
        self._length = None
        if self.end is not None:
            last = int(dt.datetime.combine(self.end, dt.time(), dt.UTC).timestamp() * MS)
            if last <= first_decision:
                raise ValueError(f"--end {self.end} must be after --start {self.start}")
            self._length = (last - self.origin_ms) // self.step_ms + 1
        self.protocol_fields = required_fields(self.lending_on, self.perps_on)
        self.lending = (
            lending_quotes(config, self.asset_names, protocol_constants or {})
            if self.lending_on
            else None
        )
        self.spot = {a: f"{a}/{quote}" for a in self.asset_names}
        if self.numeraire != quote:
            self.spot[self.numeraire] = f"{self.numeraire}/{quote}"
        self.spot.setdefault("ETH", f"ETH/{quote}")
        self.perp = {a: f"{a}/{quote}:{quote}" for a in self.asset_names} if self.perps_on else {}
        self._cache: dict[int, MarketBar] = {}
        self._validated = False

    # ------------------------------------------------------------------ description
    @property
    def length(self) -> int | None:
        return self._length

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "timeframe": self.timeframe,
            "quote": self.quote,
            "start": str(self.start),
            "end": None if self.end is None else str(self.end),
            "warmup": self.warmup,
            "first_time": self.bar_time(0),
            "markets": {**self.spot, **{f"{a}-PERP": s for a, s in self.perp.items()}},
            "sources": self.protocol_sources(),
        }

    def protocol_sources(self) -> dict[str, str]:
        venue, q = self.venue, self.quote
        out = {
            "close/high/low": f"{venue} {self.timeframe} candles of <ASSET>/{q} ({q} taken as 1 USD)",
            "numeraire_usd": f"{venue} {self.spot[self.numeraire]} close"
            if self.numeraire != q
            else f"constant 1.0 ({self.numeraire} is the quote)",
            "eth_usd": f"{venue} {self.spot['ETH']} close",
            "gas_price_gwei": f"constant {self.gas_price_gwei:g} gwei (--gas-gwei; a CEX has no gas)",
            "depth_multiplier": f"constant {self.depth_multiplier:g} (the config's baseline pool depth)",
        }
        if self.perps_on:
            out["mark"] = f"{venue} {self.timeframe} mark-price candles of <ASSET>/{q}:{q}, close"
            out["basis"] = "mark / spot close - 1"
            out["funding"] = (
                f"{venue} funding rate history of <ASSET>/{q}:{q}: sum of the rates settled during the "
                "bar, charged over the next step"
            )
        if self.lending is not None:
            out.update(self.lending.sources)
            out["debt_growth/cash_growth/supply_growth"] = "exp(r dt) / 1 + r dt of the rates above"
        return out

    def bar_open_ms(self, index: int) -> int:
        return self.origin_ms + index * self.step_ms

    def bar_time(self, index: int) -> str:
        epoch = str(np.datetime64(self.origin_ms, "ms"))
        return bar_time(epoch, index, self.step_days)

    # ------------------------------------------------------------------ venue calls
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        ccxt = self.ccxt
        try:
            return call_with_retries(
                fn,
                f"{self.venue}: {what}",
                self.backoff,
                (ccxt.NetworkError,),
                self._sleep,
                self.clock,
            )
        except ccxt.BadSymbol as exc:
            raise UnknownSymbol(f"{self.venue}: {what}: {exc}") from None
        except ccxt.BaseError as exc:  # the venue answered with an error: not worth retrying
            raise ValueError(f"{self.venue}: {what} failed: {type(exc).__name__}: {exc}") from None

    def _timeframe(self) -> str:
        frames = getattr(self.exchange, "timeframes", None) or {}
        seconds = self.step_ms // MS
        for name in frames:
            if self.exchange.parse_timeframe(name) == seconds:
                return name
        raise ValueError(
            f"{self.venue} has no candle of {self.step_days:g} day(s) for the policy's step "
            f"(its timeframes: {', '.join(frames) or 'none'})"
        )

    def _check_markets(self) -> None:
        markets = self._call("load_markets", self.exchange.load_markets)
        wanted = [("spot", s) for s in self.spot.values()] + [
            ("perp", s) for s in self.perp.values()
        ]
        for kind, symbol in wanted:
            if symbol not in markets:
                near = difflib.get_close_matches(symbol, list(markets), n=4, cutoff=0.6)
                raise UnknownSymbol(
                    f"{self.venue} lists no {kind} market {symbol}"
                    + (f" (similar: {', '.join(near)})" if near else "")
                    + f"; the policy trades {', '.join(self.asset_names)} against {self.numeraire}"
                    + (f" (--quote {self.quote})" if kind == "spot" else " (perps)")
                )
        has = self.exchange.has
        needed = ["fetchOHLCV"] + (
            ["fetchMarkOHLCV", "fetchFundingRateHistory"] if self.perps_on else []
        )
        lacking = [name for name in needed if not has.get(name)]
        if lacking:
            raise MissingFunding(
                f"{self.venue} (ccxt) does not offer {', '.join(lacking)}: a hedged policy needs the "
                "perps' mark prices and funding history"
            )

    def _candles(self, symbol: str, first: int, stop: int, mark: bool) -> dict[int, list[float]]:
        """Candles of ``symbol`` opening in ``[O_first, O_stop)`` (and any later ones the venue sends
        in the same pages), keyed by open time in ms: ``[open, high, low, close, volume]``."""
        out: dict[int, list[float]] = {}
        cursor, end = self.bar_open_ms(first), self.bar_open_ms(stop)
        method = self.exchange.fetch_mark_ohlcv if mark else self.exchange.fetch_ohlcv
        what = f"{'mark-price ' if mark else ''}{self.timeframe} candles of {symbol}"
        while cursor < end:
            limit = min(PAGE, (end - cursor) // self.step_ms)
            page = self._call(
                f"{what} from {_iso(cursor)}",
                lambda c=cursor, n=limit: method(symbol, self.timeframe, since=c, limit=n),
            )
            for row in page:
                out[int(row[0])] = [float(v) for v in row[1:6]]
            newest = max((int(r[0]) for r in page), default=cursor - 1)
            if newest < cursor:  # nothing at or after the cursor: the venue has no more yet
                break
            cursor = newest + self.step_ms
        return out

    def _funding(self, symbol: str, first: int, stop: int) -> list[tuple[int, float]]:
        """Funding settlements ``(time ms, rate)`` of ``symbol`` from ``O_first`` to ``C_{stop-1}``."""
        out: dict[int, float] = {}
        cursor = self.bar_open_ms(first) + 1
        end = self.bar_open_ms(stop) + FUNDING_TOLERANCE_MS
        while cursor < end:
            page = self._call(
                f"funding rate history of {symbol} from {_iso(cursor)}",
                lambda c=cursor: self.exchange.fetch_funding_rate_history(
                    symbol, since=c, limit=PAGE
                ),
            )
            for item in page:
                if item.get("fundingRate") is not None and item.get("timestamp") is not None:
                    out[int(item["timestamp"])] = float(item["fundingRate"])
            newest = max(
                (int(i["timestamp"]) for i in page if i.get("timestamp")), default=cursor - 1
            )
            if newest < cursor:
                break
            cursor = newest + 1
        return sorted(out.items())

    # ------------------------------------------------------------------ bars
    def _closed_before(self, now: float) -> int:
        """How many bars (from bar 0) had closed ``settle_seconds`` before ``now``."""
        elapsed = now * MS - self.settle_seconds * MS - self.origin_ms
        count = int(elapsed // self.step_ms)  # bar i is closed when C_i = O_{i+1} <= now - settle
        count = max(count, 0)
        return count if self._length is None else min(count, self._length)

    def _missing(self, what: str, symbol: str, index: int, series: dict[int, Any]) -> None:
        """Decide what a missing candle of bar ``index`` means: a gap (later candles exist), stale
        (long after the close), or not yet (return, the caller polls again)."""
        opened = self.bar_open_ms(index)
        later = [t for t in series if t > opened]
        if later:
            raise GapInVenueData(
                f"{self.venue} {symbol}: no {what} opening {_iso(opened)} (bar {index}) though it has "
                f"later ones from {_iso(min(later))}: a gap in the venue's data; paper trading does "
                "not fill gaps (choose another --start or venue)"
            )
        late = self.clock() - (opened + self.step_ms) / MS
        if late >= self.stale_after_seconds:
            newest = max(series, default=None)
            raise StaleCandle(
                f"{self.venue} {symbol}: bar {index} ({self.bar_time(index)}) closed at "
                f"{_iso(opened + self.step_ms)}, {late / 3600:.1f} h ago, but the newest {what} "
                + (f"opens {_iso(newest)}" if newest is not None else "is missing")
                + f": the venue's data is stale (more than {self.stale_after_seconds / 3600:g} h)"
            )

    def fetch_bars(self, first: int, stop: int) -> list[MarketBar]:
        """Bars ``first .. stop - 1`` (all closed), as many as the venue has in order; raises on a
        gap, stale data or missing funding."""
        spot = {a: self._candles(s, first, stop, mark=False) for a, s in self.spot.items()}
        marks = {a: self._candles(s, first, stop, mark=True) for a, s in self.perp.items()}
        funding = {a: self._funding(s, first, stop) for a, s in self.perp.items()}
        bars = []
        for index in range(first, stop):
            bar = self._bar(index, spot, marks, funding)
            if bar is None:
                break
            bars.append(bar)
        return bars

    def _bar(self, index: int, spot, marks, funding) -> MarketBar | None:
        opened = self.bar_open_ms(index)
        for asset, series in spot.items():
            if opened not in series:
                self._missing(f"{self.timeframe} candle", self.spot[asset], index, series)
                return None
        for asset, series in marks.items():
            if opened not in series:
                self._missing(
                    f"{self.timeframe} mark-price candle", self.perp[asset], index, series
                )
                return None
        lo, hi = opened + FUNDING_TOLERANCE_MS, opened + self.step_ms + FUNDING_TOLERANCE_MS
        rates = {a: [r for t, r in items if lo <= t < hi] for a, items in funding.items()}
        for asset, settled in rates.items():
            if not settled:
                late = self.clock() - (opened + self.step_ms) / MS
                if late < self.stale_after_seconds and not any(t >= hi for t, _ in funding[asset]):
                    return None  # not settled yet: poll again
                raise MissingFunding(
                    f"{self.venue} {self.perp[asset]}: no funding rate settled between "
                    f"{_iso(opened)} and {_iso(opened + self.step_ms)} (bar {index}, "
                    f"{self.bar_time(index)}): the perp's carry over the next step is unknown"
                )
        candle = {a: spot[a][opened] for a in spot}
        close = np.array([candle[a][3] for a in self.asset_names])
        protocol = None
        if self.protocol_fields:
            lend = self.lending
            protocol = ProtocolState.from_quotes(
                close,
                self.step_days,
                borrow_rate=None if lend is None else lend.borrow_rate,
                cash_supply_rate=None if lend is None else lend.cash_supply_rate,
                supply_rate=None if lend is None else lend.supply_rate,
                mark=np.array([marks[a][opened][3] for a in self.asset_names])
                if self.perps_on
                else None,
                funding=np.array([sum(rates[a]) for a in self.asset_names])
                if self.perps_on
                else None,
            )
        return MarketBar(
            index=index,
            time=self.bar_time(index),
            close=close,
            high=np.array([candle[a][1] for a in self.asset_names]),
            low=np.array([candle[a][2] for a in self.asset_names]),
            numeraire_usd=candle[self.numeraire][3] if self.numeraire in candle else 1.0,
            depth_multiplier=self.depth_multiplier,
            gas_price_gwei=self.gas_price_gwei,
            eth_usd=candle["ETH"][3],
            regime=0,
            protocol=protocol,
        )

    def validate(self) -> None:
        """Check the markets, then fetch and check every bar that has closed (nothing is written
        before this passes)."""
        self._check_markets()
        closed = self._closed_before(self.clock())
        bars = self.fetch_bars(0, closed) if closed else []
        for bar in bars:
            check_bar(bar, self.asset_names, self.protocol_fields)
            if bar.index:
                check_spacing(self.bar_time(bar.index - 1), bar.time, self.step_days, bar.index)
        self._cache = {bar.index: bar for bar in bars}
        self._validated = True

    def bars(self, start: int = 0) -> Iterator[MarketBar]:
        if not self._validated:
            self.validate()
        index = start
        while self._length is None or index < self._length:
            if index in self._cache:
                yield self._cache.pop(index)
                index += 1
                continue
            ready_at = (self.bar_open_ms(index) + self.step_ms) / MS + self.settle_seconds
            now = self.clock()
            if now < ready_at:  # poll at the bar's close
                self._sleep(ready_at - now)
                continue
            stop = max(index + 1, self._closed_before(now))
            got = self.fetch_bars(index, stop)
            if not got:
                self._sleep(self.poll_seconds)
                continue
            self._cache.update({bar.index: bar for bar in got})
