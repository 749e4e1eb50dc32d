"""Calibration check of the liquidation cascades against documented liquidation days.

For each documented episode of :mod:`defialloc.envs.protocols.cascade_events` this module computes

* the **square-root-law target** of the extra price move that the episode's forced selling can
  explain: ``impact = Y * sigma_daily * sqrt(Q / V)`` with ``Q`` the documented liquidations (USD),
  ``V`` the asset's mean daily volume over the episode's days (USD, the dataset's ``Volume``
  column: the whole market) and ``sigma_daily`` the realized volatility of the
  ``SIGMA_WINDOW_DAYS`` daily log returns before the episode. The range runs from ``V`` = the whole
  market (lower end: liquidators spread their sales over every venue) to ``V`` = its DEX share
  (upper end: every sale trades on-chain). For a metaorder spread evenly over ``n`` days,
  ``sigma_n = sigma_daily sqrt(n)`` and ``V_n = n V``, so the same formula with the episode's total
  ``Q`` and mean daily ``V`` holds for multi-day episodes;
* the **modelled extra drawdown**: the env replays the real days (``market.source=replay``) with
  lending and cascades on and a cash-only agent, and reads ``low_prices_effective / low - 1`` of
  the asset (the low the agent's own liquidation check uses, deepened by the population's sales
  into its pools); the deepest value over the episode's days is reported, for the population
  parameters before the calibration (:data:`OLD_POPULATION`) and for the shipped ones.

Negative numbers are price falls (fractions: -0.01 = -1 %). No network: the episodes are data, the
prices and volumes come from the dataset files. ``defialloc calibrate-cascades`` prints the table.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from defialloc.envs.actions import weights_to_actions
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.market.replay import read_ohlcv_file
from defialloc.envs.protocols.cascade_events import (
    LIQUIDATION_EVENTS,
    SIGMA_WINDOW_DAYS,
    SQRT_LAW_Y,
    LiquidationEvent,
)
from defialloc.envs.protocols.params import REPO_ROOT, check_range

DEFAULT_CONFIG = REPO_ROOT / "configs" / "leverage.yaml"
#: The population before the calibration (unsourced assumptions): collateral 25 % of the pool
#: depth, every forced sale into the agent's pools.
OLD_POPULATION: dict[str, float] = {
    "hf_entry_min": 1.05,
    "hf_entry_max": 3.0,
    "collateral_share_of_depth": 0.25,
    "pool_share_of_sales": 1.0,
}
#: Days of replay before an episode's first day: the population enters at the first decision and
#: has been refreshed ~2 % a day for this long (so its HF mix reflects the run-up, not the entry).
LEAD_DAYS = 70


def sqrt_law_impact(
    liquidated_usd: float | np.ndarray,
    volume_usd: float | np.ndarray,
    sigma_daily: float | np.ndarray,
    y: float = SQRT_LAW_Y,
) -> np.ndarray:
    """Square-root-law price impact ``Y * sigma_daily * sqrt(Q / V)`` (a positive fraction).

    ``liquidated_usd`` (Q) >= 0 and ``volume_usd`` (V) > 0 in USD per day, ``sigma_daily`` >= 0 the
    daily volatility (fraction); shapes broadcast. Example: Q = $377M, V = $84.5B, sigma = 6 % gives
    0.06 * sqrt(0.00446) = 0.40 %.
    """
    q = check_range("liquidated_usd", liquidated_usd, 0.0)
    v = check_range("volume_usd", volume_usd, 0.0, lower_open=True)
    s = check_range("sigma_daily", sigma_daily, 0.0)
    return check_range("y", y, 0.0) * s * np.sqrt(q / v)


def realized_sigma(close: np.ndarray, window: int = SIGMA_WINDOW_DAYS) -> float:
    """Daily volatility: sample std (ddof 1) of the last ``window`` log returns of ``close`` ``(T,)``
    (USD, consecutive days, ``T >= window + 1``)."""
    close = check_range("close", close, 0.0, lower_open=True)
    if close.ndim != 1 or close.size < window + 1:
        raise ValueError(f"close must be 1-D with at least window + 1 = {window + 1} prices")
    return float(np.std(np.diff(np.log(close[-(window + 1) :])), ddof=1))


def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _daily_data(config: SimulationConfig, asset: str) -> pd.DataFrame:
    """``Open, High, Low, Close, Volume`` of ``asset`` (validated OHLC; Volume in USD per day)."""
    path = config.market.resolved_data_dir() / f"{asset}-USD.csv"
    frame = read_ohlcv_file(path)
    volume = pd.read_csv(path, usecols=["Date", "Volume"], parse_dates=["Date"]).set_index("Date")
    frame["Volume"] = check_range(f"{path.name} Volume", volume["Volume"].to_numpy(), 0.0)
    return frame


def _population_file(config: SimulationConfig, population: dict[str, Any], folder: Path) -> str:
    """A copy of the config's lending snapshot with ``population`` keys replaced; returns its path."""
    source = Path(config.env.lending.params_path)
    if not source.is_absolute() and not source.exists():
        source = REPO_ROOT / source
    data = yaml.safe_load(source.read_text())
    data["population"] = {**data.get("population", {}), **population}
    path = folder / "lending.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def modelled_extra_drawdown(
    config_path: str | Path,
    event: LiquidationEvent,
    lending_params_path: str | None = None,
    lead_days: int = LEAD_DAYS,
) -> pd.DataFrame:
    """Replay ``event``'s days through the env and read the cascade's extra move of its asset.

    The market replays ``[first_day - lead_days, last_day + 1]`` (the env's warmup before it; one
    window, so every seed gives the same path) with lending and cascades on and a cash-only agent
    (its trades cannot touch the pools). ``lending_params_path``: a lending snapshot replacing the
    config's (None: the config's own). Returns one row per episode day: ``date``, ``regime`` (its
    depth multiplier sized the pools), ``low`` and ``low_effective`` (USD), ``extra_drawdown``
    (``low_effective / low - 1``) and ``pool_sale_units`` (what the population's liquidators sold
    into the agent's pools).
    """
    first, last = _day(event.first_day), _day(event.last_day)
    start, end = first - dt.timedelta(days=lead_days), last + dt.timedelta(days=1)
    overrides: dict[str, Any] = {
        "market.source": "replay",
        "market.start": start.isoformat(),
        "market.end": end.isoformat(),
        "env.horizon": (end - start).days,
        "env.lending.enabled": True,
        "env.cascades.enabled": True,
        "env.kill_switch.enabled": False,
    }
    if lending_params_path is not None:
        overrides["env.lending.params_path"] = lending_params_path
    from defialloc.envs import make_env  # the env stack only when a replay runs

    env = make_env(config_path, **overrides)
    sim = env.unwrapped.sim
    data = _daily_data(sim.config, event.asset)
    n = len(sim.asset_names)
    if event.asset not in sim.asset_names:
        raise ValueError(f"event asset {event.asset!r} is not in market.assets {sim.asset_names}")
    col = sim.asset_names.index(event.asset)
    cash = np.append(np.zeros(n), 1.0)[None]
    layout = ActionLayout.for_config(env.unwrapped.config.env, n)
    action = layout.compose(weights_to_actions(cash), 0.0, 0.0, sim.config.env.lending.max_leverage)
    action = action[0].astype(np.float32)
    env.reset(seed=0)
    rows = []
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        day = _day(info["date"])
        if first <= day <= last:
            low = float(data.loc[pd.Timestamp(day), "Low"])  # replay uses the file's values
            low_eff = float(info["low_prices_effective"][col])
            rows.append(
                {
                    "date": info["date"],
                    "regime": info["regime"],
                    "low": low,
                    "low_effective": low_eff,
                    "extra_drawdown": low_eff / low - 1.0,
                    "pool_sale_units": float(info["cascade_sale_units"][col]),
                }
            )
    if len(rows) != (last - first).days + 1:
        raise ValueError(f"replay of {event.name} covered {len(rows)} of its days")
    return pd.DataFrame(rows)


def cascade_event_table(
    config_path: str | Path = DEFAULT_CONFIG,
    events: tuple[LiquidationEvent, ...] = LIQUIDATION_EVENTS,
    old_population: dict[str, Any] | None = None,
    lead_days: int = LEAD_DAYS,
) -> pd.DataFrame:
    """One row per documented episode: data, sqrt-law target and modelled extra drawdowns.

    Columns: ``event``, ``first_day``, ``last_day``, ``documented_usd``, ``at_least`` (partial
    coverage: a lower bound), ``covers``, ``volume_usd`` (mean daily volume of the asset over the
    days), ``sigma_daily``, ``open_to_low`` (first day's open to the lowest low, fraction),
    ``dex_share``, ``target_low`` / ``target_high`` (sqrt-law extra move with V = whole market / its
    DEX share, negative fractions; ``target_low`` is the milder end), ``modelled_old`` /
    ``modelled_new`` (the deepest ``low_effective / low - 1`` over the days, with
    ``old_population`` (default :data:`OLD_POPULATION`) and with the config's own snapshot) and
    ``new_in_target`` (inside the range; for a lower-bound episode: at least as deep as its milder
    end) and ``pool_sales_usd_new`` (USD the population sold into the agent's pools over the days,
    valued at the lows, shipped parameters).
    """
    config = load_config(config_path)
    old = OLD_POPULATION if old_population is None else old_population
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_path = _population_file(config, old, Path(tmp))
        for event in events:
            data = _daily_data(config, event.asset)
            first, last = pd.Timestamp(event.first_day), pd.Timestamp(event.last_day)
            days = data.loc[first:last]
            before = data.loc[: first - pd.Timedelta(days=1), "Close"].to_numpy()
            sigma = realized_sigma(before)
            volume = float(days["Volume"].mean())
            impact = sqrt_law_impact(
                event.liquidated_usd, volume * np.array([1.0, event.dex_share.share]), sigma
            )
            old_model = modelled_extra_drawdown(config_path, event, old_path, lead_days)
            new_model = modelled_extra_drawdown(config_path, event, None, lead_days)
            target_low, target_high = -impact
            new = float(new_model["extra_drawdown"].min())
            pool_usd = float((new_model["pool_sale_units"] * new_model["low"]).sum())
            inside = new <= target_low and (event.at_least or new >= target_high)
            rows.append(
                {
                    "event": event.name,
                    "first_day": event.first_day,
                    "last_day": event.last_day,
                    "documented_usd": event.liquidated_usd,
                    "at_least": event.at_least,
                    "covers": event.covers,
                    "volume_usd": volume,
                    "sigma_daily": sigma,
                    "open_to_low": float(days["Low"].min() / days["Open"].iloc[0] - 1.0),
                    "dex_share": event.dex_share.share,
                    "target_low": float(target_low),
                    "target_high": float(target_high),
                    "modelled_old": float(old_model["extra_drawdown"].min()),
                    "modelled_new": new,
                    "new_in_target": bool(inside),
                    "pool_sales_usd_new": pool_usd,
                }
            )
    return pd.DataFrame(rows)


def collateral_share_sweep(
    shares: tuple[float, ...] | list[float],
    config_path: str | Path = DEFAULT_CONFIG,
    events: tuple[LiquidationEvent, ...] = LIQUIDATION_EVENTS,
    lead_days: int = LEAD_DAYS,
) -> pd.DataFrame:
    """Modelled extra drawdown of each episode (columns, by name) for each value of
    ``population.collateral_share_of_depth`` in ``shares`` (rows), the config's other population
    values unchanged: how the calibrated value was chosen."""
    config = load_config(config_path)
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for share in shares:
            path = _population_file(config, {"collateral_share_of_depth": share}, Path(tmp))
            table[share] = {
                event.name: float(
                    modelled_extra_drawdown(config_path, event, path, lead_days)[
                        "extra_drawdown"
                    ].min()
                )
                for event in events
            }
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.index.name = "collateral_share_of_depth"
    return frame
