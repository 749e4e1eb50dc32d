"""Historical data: strict OHLCV loading, the causal regime rule, and replay of real windows.

Files are ``SYMBOL-USD.csv`` with columns ``Date,Open,High,Low,Close[,Volume]`` (UTC days, USD).
Loading refuses anything doubtful and names the file, the CSV line/date and the column.

Regime rule (:func:`label_regimes`), causal: on the equal-weight index of the risky assets (mean daily
log return ``m_t``), with the windows of :class:`~defialloc.envs.market.config.RegimeRuleParams` ending at ``t``:

* crash if ``sum(m, crash_window) <= -crash_return`` or (``std(m, vol_window) * sqrt(365) >=
  crash_vol_ann`` and ``sum(m, trend_window) < 0``);
* else bull if ``sum(m, trend_window) >= bull_return``;
* else calm.

Windows shorter than requested at the start of the history use what is there (sums from 1 day, vol from
5 returns). ``regime[t]`` uses closes up to ``t`` only. In replay, depth and gas are the regime's
configured levels (no noise): the dataset has no on-chain liquidity or gas history.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from defialloc.envs.market.config import (
    BULL,
    CALM,
    CRASH,
    DAYS_PER_YEAR,
    REGIME_NAMES,
    MarketConfig,
    RegimeRuleParams,
    check_sample_request,
    resolve_data_dir,
)
from defialloc.envs.market.paths import MarketPaths

PRICE_COLUMNS = ("Open", "High", "Low", "Close")
_REL_TOL = 1e-9  # high/low consistency tolerance (CSV rounding)


def _csv_path(data_dir: Path, symbol: str) -> Path:
    return data_dir / f"{symbol}-USD.csv"


def read_ohlcv_file(path: str | Path) -> pd.DataFrame:
    """Read and validate one ``SYMBOL-USD.csv``.

    Returns:
        DataFrame indexed by ``Date`` (daily DatetimeIndex, consecutive days) with float64 columns
        ``Open, High, Low, Close``; floats are parsed with correct rounding (``round_trip``).

    Raises:
        ValueError: missing file or column, unparseable/duplicate/unsorted/gapped dates, non-numeric,
            NaN or non-positive prices, ``High < max(Open, Close)`` or ``Low > min(Open, Close)``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"OHLCV file not found: {path}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("Date", *PRICE_COLUMNS) if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    if raw.empty:
        raise ValueError(f"{path}: no data rows")
    line = np.arange(len(raw)) + 2  # CSV line numbers (line 1 is the header)
    dates = pd.to_datetime(raw["Date"], format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        i = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise ValueError(
            f"{path} line {line[i]}: column Date = {raw['Date'].iloc[i]!r} is not a YYYY-MM-DD date"
        )
    prices = {}
    for col in PRICE_COLUMNS:
        text = raw[col].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path} line {line[i]} ({raw['Date'].iloc[i]}): column {col} = {raw[col].iloc[i]!r}; "
                "prices must be finite numbers > 0"
            )
        # float() rounds correctly; pandas' fast parser may differ in the last bit
        prices[col] = np.array([float(v) for v in text], dtype=np.float64)
    day = dates.to_numpy().astype("datetime64[D]")
    step = np.diff(day).astype(np.int64)
    if np.any(step <= 0):
        i = int(np.flatnonzero(step <= 0)[0]) + 1
        what = "duplicate" if step[i - 1] == 0 else "out-of-order"
        raise ValueError(
            f"{path} line {line[i]}: {what} date {day[i]} (previous line has {day[i - 1]})"
        )
    if np.any(step > 1):
        i = int(np.flatnonzero(step > 1)[0])
        raise ValueError(
            f"{path} line {line[i + 1]}: gap in dates, {day[i]} is followed by {day[i + 1]} "
            f"({step[i] - 1} missing day(s))"
        )
    o, h, lo, c = (prices[k] for k in PRICE_COLUMNS)
    bad_high = h < np.maximum(o, c) * (1 - _REL_TOL)
    bad_low = lo > np.minimum(o, c) * (1 + _REL_TOL)
    for mask, col, rule in (
        (bad_high, "High", "High >= max(Open, Close)"),
        (bad_low, "Low", "Low <= min(Open, Close)"),
    ):
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise ValueError(
                f"{path} line {line[i]} ({day[i]}): column {col} = {raw[col].iloc[i]}; must satisfy {rule} "
                f"(Open {o[i]}, Close {c[i]})"
            )
    return pd.DataFrame(prices, index=pd.DatetimeIndex(day, name="Date"))


def _as_date(value: str | dt.date | None, name: str) -> np.datetime64 | None:
    if value is None:
        return None
    try:
        return np.datetime64(pd.Timestamp(value).date(), "D")
    except (ValueError, TypeError):
        raise ValueError(f"{name}={value!r} is not a date (YYYY-MM-DD)") from None


def load_ohlcv(
    data_dir: str | Path,
    assets: list[str] | tuple[str, ...],
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
) -> dict[str, pd.DataFrame]:
    """Load ``SYMBOL-USD.csv`` for every symbol, aligned on the dates common to all, within [start, end].

    Args:
        data_dir: folder of the files (a relative path not found from the cwd is taken from the repo root).
        assets: symbols, e.g. ``["BTC", "ETH", "USDC"]``.
        start, end: inclusive date bounds (None: no bound).

    Returns:
        ``{symbol: DataFrame}`` in ``assets`` order, all with the same consecutive daily ``Date`` index
        and float64 columns ``Open, High, Low, Close``.
    """
    folder = resolve_data_dir(data_dir)
    if not folder.is_dir():
        raise ValueError(f"data_dir {str(data_dir)!r} is not a folder (looked at {folder})")
    if len(assets) == 0:
        raise ValueError("assets must name at least one symbol")
    lo, hi = _as_date(start, "start"), _as_date(end, "end")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"start={start} must be <= end={end}")
    frames = {}
    for symbol in assets:
        path = _csv_path(folder, symbol)
        if not path.is_file():
            have = sorted(p.name.removesuffix("-USD.csv") for p in folder.glob("*-USD.csv"))
            raise ValueError(
                f"no data file for asset {symbol!r}: {path} does not exist (available: {have})"
            )
        frames[symbol] = read_ohlcv_file(path)
    common = functools.reduce(lambda a, b: a.intersection(b), (f.index for f in frames.values()))
    if lo is not None:
        common = common[common >= pd.Timestamp(lo)]
    if hi is not None:
        common = common[common <= pd.Timestamp(hi)]
    if len(common) == 0:
        spans = {s: f"{f.index[0].date()}..{f.index[-1].date()}" for s, f in frames.items()}
        raise ValueError(
            f"no common dates in [{start}, {end}] for {list(assets)}; files cover {spans}"
        )
    return {s: f.loc[common] for s, f in frames.items()}


def available_dates(
    data_dir: str | Path,
    assets: list[str] | tuple[str, ...],
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
) -> pd.DatetimeIndex:
    """The consecutive dates on which every asset has data, within [start, end]."""
    frames = load_ohlcv(data_dir, assets, start, end)
    return next(iter(frames.values())).index


def label_regimes(close: np.ndarray, rule: RegimeRuleParams) -> np.ndarray:
    """Causal regime labels of a history (see the module docstring for the rule).

    Args:
        close: ``(T, N)`` closes of the risky assets (> 0), consecutive days.

    Returns:
        ``(T,)`` int8 codes into ``REGIME_NAMES``; entry ``t`` depends on ``close[: t + 1]`` only.
    """
    close = np.asarray(close, dtype=np.float64)
    if close.ndim != 2 or close.shape[0] < 1 or np.any(~(close > 0)):
        raise ValueError(
            f"close must be a (T, N) array of positive prices, got shape {close.shape}"
        )
    index_return = np.full(close.shape[0], np.nan)
    index_return[1:] = np.diff(np.log(close), axis=0).mean(axis=1)
    series = pd.Series(index_return)
    short = series.rolling(rule.crash_window_days, min_periods=1).sum().fillna(0.0).to_numpy()
    trend = series.rolling(rule.trend_window_days, min_periods=1).sum().fillna(0.0).to_numpy()
    vol = series.rolling(rule.vol_window_days, min_periods=5).std().to_numpy() * np.sqrt(
        DAYS_PER_YEAR
    )
    crash = (short <= -rule.crash_return) | (
        (np.nan_to_num(vol) >= rule.crash_vol_ann) & (trend < 0)
    )
    bull = (trend >= rule.bull_return) & ~crash
    return np.where(crash, CRASH, np.where(bull, BULL, CALM)).astype(np.int8)


@dataclass(frozen=True)
class HistoricalPanel:
    """Aligned daily history of a market: ``T`` days, ``N`` risky assets (read-only arrays)."""

    dates: np.ndarray  # (T,) datetime64[D]
    close: np.ndarray  # (T, N) USD
    high: np.ndarray  # (T, N)
    low: np.ndarray  # (T, N)
    numeraire_usd: np.ndarray  # (T,) the numeraire's close, ones when it has no file
    eth_usd: np.ndarray  # (T,) ETH close
    has_numeraire_file: bool

    def window(
        self, start: dt.date | None, end: dt.date | None, history_days: int = 0
    ) -> tuple[int, int]:
        """Index range ``[lo, hi)`` of the days in ``[start - history_days, end]``."""
        lo = 0
        if start is not None:
            first = np.datetime64(start, "D") - np.timedelta64(history_days, "D")
            lo = int(np.searchsorted(self.dates, first, side="left"))
        hi = (
            len(self.dates)
            if end is None
            else int(np.searchsorted(self.dates, np.datetime64(end, "D"), side="right"))
        )
        return lo, max(lo, hi)


@functools.lru_cache(maxsize=8)
def _panel_cached(
    folder: str, assets: tuple[str, ...], numeraire: str, stamps: tuple
) -> HistoricalPanel:
    del stamps  # part of the cache key only: a changed file reloads
    path = Path(folder)
    extra = [s for s in (numeraire, "ETH") if s not in assets and _csv_path(path, s).is_file()]
    if "ETH" not in assets and "ETH" not in extra:
        raise ValueError(
            f"ETH prices are needed for gas costs: add ETH to assets or provide {_csv_path(path, 'ETH')}"
        )
    frames = load_ohlcv(path, [*assets, *extra])
    close = np.stack([frames[a]["Close"].to_numpy() for a in assets], axis=1)
    has_num = numeraire in frames
    panel = HistoricalPanel(
        dates=frames[assets[0]].index.to_numpy().astype("datetime64[D]"),
        close=close,
        high=np.stack([frames[a]["High"].to_numpy() for a in assets], axis=1),
        low=np.stack([frames[a]["Low"].to_numpy() for a in assets], axis=1),
        numeraire_usd=frames[numeraire]["Close"].to_numpy() if has_num else np.ones(len(close)),
        eth_usd=frames["ETH"]["Close"].to_numpy(),
        has_numeraire_file=has_num,
    )
    for arr in (
        panel.dates,
        panel.close,
        panel.high,
        panel.low,
        panel.numeraire_usd,
        panel.eth_usd,
    ):
        arr.setflags(write=False)
    return panel


def load_panel(cfg: MarketConfig) -> HistoricalPanel:
    """The full aligned history of ``cfg.assets`` (+ numeraire and ETH files), cached per file version."""
    folder = cfg.resolved_data_dir()
    if not folder.is_dir():
        raise ValueError(f"market.data_dir {cfg.data_dir!r} is not a folder (looked at {folder})")
    names = (*cfg.assets, cfg.numeraire, "ETH")
    stamps = tuple(
        (s, p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else (s, None, None)
        for s, p in ((s, _csv_path(folder, s)) for s in names)
    )
    return _panel_cached(str(folder), tuple(cfg.assets), cfg.numeraire, stamps)


def replay_paths(cfg: MarketConfig, seeds: np.ndarray, length: int, warmup: int) -> MarketPaths:
    """Windows of ``length`` consecutive real days; path ``b``'s window offset is drawn from ``seeds[b]``.

    The candidate days are ``[start - warmup days, end]`` (so the first decision, index ``warmup``, falls
    on or after ``start`` when the data reach back far enough). With ``K`` possible windows, path ``b``
    starts at offset ``default_rng(seeds[b]).integers(K)`` (0 when exactly ``length`` days exist).
    Closes, highs and lows are the files' values exactly. ``dates`` is ``(length,)`` when every path
    has the same window, else ``(B, length)``.
    """
    seeds = check_sample_request(seeds, length, warmup)
    panel = load_panel(cfg)
    lo, hi = panel.window(cfg.start, cfg.end, history_days=warmup)
    n_windows = hi - lo - length + 1
    if n_windows < 1:
        first = str(panel.dates[lo]) if hi > lo else "-"
        last = str(panel.dates[hi - 1]) if hi > lo else "-"
        raise ValueError(
            f"replay period {first}..{last} (start={cfg.start} minus warmup {warmup} days, end={cfg.end}) "
            f"has {hi - lo} days; a path needs length={length}"
        )
    offsets = np.array(
        [np.random.default_rng(int(s)).integers(n_windows) for s in seeds], dtype=np.int64
    )
    idx = lo + offsets[:, None] + np.arange(length)[None, :]
    regime_all = label_regimes(panel.close, cfg.regime_rule)
    regime = regime_all[idx]
    depth = cfg.liquidity.depth_multiplier.array()[regime]
    gas = cfg.gas.gwei.array()[regime]
    dates = panel.dates[idx]
    return MarketPaths(
        asset_names=tuple(cfg.assets),
        close=panel.close[idx],
        high=panel.high[idx],
        low=panel.low[idx],
        numeraire_usd=panel.numeraire_usd[idx],
        regime=regime,
        regime_names=REGIME_NAMES,
        depth_multiplier=depth,
        gas_price_gwei=gas,
        eth_usd=panel.eth_usd[idx],
        warmup=int(warmup),
        step_days=1.0,
        dates=dates[0].copy() if np.all(offsets == offsets[0]) else dates,
    )
