"""The protocol state a market bar carries for a levered or hedged policy (paper trading).

In a backtest the lending and perps series (:class:`defialloc.envs.leverage_paths.ProtocolPaths`) are
generated for the whole path at reset. A streaming simulator cannot generate them ahead of the
bars, so each bar carries its row: what the env reads at that time index. The names are exactly
the ``ProtocolPaths`` attributes, so a bar built from a backtest's generated series
(:meth:`ProtocolState.from_series`) loads bit for bit the row the backtest uses.

Lending (``env.lending.enabled``): ``borrow_rate`` (annual, the numeraire debt), ``cash_supply_rate``
(annual, what supplied numeraire cash earns), ``supply_rate`` ``(N,)`` (annual, supplied risky
collateral); and the per-step multipliers the move applies, ``debt_growth = exp(borrow_rate dt)``,
``cash_growth = 1 + cash_supply_rate dt``, ``supply_growth = 1 + supply_rate dt`` (``dt`` = the step
in years, 365 days a year). Perps (``env.perps.enabled``): ``mark`` ``(N,)`` USD, ``basis`` ``(N,)``
``= mark / index - 1``, ``funding`` ``(N,)`` the fraction of notional longs pay over the step that
starts at this bar (> 0: longs pay). A live source may give only the rates and the mark
(:meth:`ProtocolState.from_quotes` derives the rest with the formulas of ``ProtocolPaths``).

Timing (as in the env): the rates and the funding of a bar are the quotes at its close, applied over
the step to the next bar; the mark of a bar is the mark at its close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_paths import ProtocolPaths, ProtocolSetup
from defialloc.envs.market.paths import MarketPaths

DAYS_PER_YEAR = 365.0
LENDING_FIELDS = (
    "borrow_rate",
    "debt_growth",
    "cash_supply_rate",
    "cash_growth",
    "supply_rate",
    "supply_growth",
)
PERPS_FIELDS = ("basis", "mark", "funding")
#: fields with one value per risky asset (the others are one number)
PER_ASSET_FIELDS = frozenset({"supply_rate", "supply_growth", "basis", "mark", "funding"})
#: an annual rate above this (10 = 1,000 %/yr) is refused as a unit error (e.g. percent for fraction)
MAX_ANNUAL_RATE = 10.0
#: a funding payment above this fraction of notional per step is refused as a unit error
MAX_FUNDING_PER_STEP = 0.5


def required_fields(lending: bool, perps: bool) -> tuple[str, ...]:
    """The fields a trading bar must carry for a config with these protocols on."""
    return (LENDING_FIELDS if lending else ()) + (PERPS_FIELDS if perps else ())


@dataclass(frozen=True)
class ProtocolState:
    """One bar's protocol row (see the module docstring); a field is None when its protocol is off.

    Scalars are floats, per-asset fields ``(N,)`` float64 arrays in the feed's asset order.
    """

    borrow_rate: float | None = None
    debt_growth: float | None = None
    cash_supply_rate: float | None = None
    cash_growth: float | None = None
    supply_rate: np.ndarray | None = None
    supply_growth: np.ndarray | None = None
    basis: np.ndarray | None = None
    mark: np.ndarray | None = None
    funding: np.ndarray | None = None

    @classmethod
    def from_series(cls, series: dict[str, np.ndarray], path: int, row: int) -> ProtocolState:
        """Row ``row`` of path ``path`` of generated series (``ProtocolPaths.generate``'s dict:
        ``(K, L)`` or ``(K, L, N)`` arrays), copied exactly."""
        values: dict[str, object] = {}
        for name, arr in series.items():
            if name not in LENDING_FIELDS + PERPS_FIELDS:
                continue
            cell = arr[path, row]
            values[name] = (
                np.array(cell, dtype=np.float64) if name in PER_ASSET_FIELDS else float(cell)
            )
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_quotes(
        cls,
        index_usd: np.ndarray,
        step_days: float,
        *,
        borrow_rate: float | None = None,
        cash_supply_rate: float | None = None,
        supply_rate: np.ndarray | None = None,
        mark: np.ndarray | None = None,
        funding: np.ndarray | None = None,
    ) -> ProtocolState:
        """A row from quotes only (a live venue): the growth multipliers and the basis are derived
        with the formulas of ``defialloc.envs.leverage_paths.ProtocolPaths`` (``exp(r dt)``, ``1 + r dt``,
        ``mark / index - 1``); ``index_usd`` ``(N,)`` is the bar's close (the perps' index)."""
        dt = step_days / DAYS_PER_YEAR
        lending = {}
        if borrow_rate is not None:
            if cash_supply_rate is None or supply_rate is None:
                raise ValueError("borrow_rate needs cash_supply_rate and supply_rate too")
            supply = np.asarray(supply_rate, dtype=np.float64)
            lending = {
                "borrow_rate": float(borrow_rate),
                "debt_growth": math.exp(float(borrow_rate) * dt),
                "cash_supply_rate": float(cash_supply_rate),
                "cash_growth": 1.0 + float(cash_supply_rate) * dt,
                "supply_rate": supply,
                "supply_growth": 1.0 + supply * dt,
            }
        perps = {}
        if mark is not None:
            if funding is None:
                raise ValueError("mark needs funding too")
            mark = np.asarray(mark, dtype=np.float64)
            perps = {
                "mark": mark,
                "basis": mark / np.asarray(index_usd, dtype=np.float64) - 1.0,
                "funding": np.asarray(funding, dtype=np.float64),
            }
        return cls(**lending, **perps)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | list[float]]:
        """The fields that are set, JSON-ready (floats and lists of floats)."""
        out: dict[str, float | list[float]] = {}
        for name in LENDING_FIELDS + PERPS_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = (
                    np.asarray(value, dtype=np.float64).tolist()
                    if name in PER_ASSET_FIELDS
                    else float(value)
                )
        return out


def check_protocol_state(
    state: ProtocolState | None,
    where: str,
    asset_names: tuple[str, ...],
    fields: tuple[str, ...],
) -> None:
    """Raise ValueError naming the bar (``where``), the field, the asset and the value when a
    trading bar lacks a needed field or carries an unusable one."""
    if not fields:
        return
    if state is None:
        raise ValueError(
            f"{where}: the policy's config needs the protocol state {', '.join(fields)} "
            "and the bar carries none"
        )
    missing = [name for name in fields if getattr(state, name) is None]
    if missing:
        raise ValueError(f"{where}: protocol state lacks {', '.join(missing)}")
    n = len(asset_names)
    for name in fields:
        arr = np.asarray(getattr(state, name), dtype=np.float64)
        shape = (n,) if name in PER_ASSET_FIELDS else ()
        if arr.shape != shape:
            raise ValueError(f"{where}: {name} has shape {arr.shape}, expected {shape}")
        flat = arr.reshape(-1)
        bad = ~np.isfinite(flat) | ~_in_range(name, flat)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            label = f"{name} of {asset_names[i]}" if shape else name
            raise ValueError(f"{where}: {label} is {float(flat[i])!r}; {_allowed(name)}")
    if "borrow_rate" in fields:
        check_no_rate_arbitrage(state.borrow_rate, state.cash_supply_rate, where)  # type: ignore[arg-type]
        if state.cash_growth > state.debt_growth:  # type: ignore[operator]
            raise ValueError(
                f"{where}: cash_growth {state.cash_growth!r} exceeds debt_growth "
                f"{state.debt_growth!r}: borrowed cash would earn more than its debt costs"
            )


def check_no_rate_arbitrage(borrow_rate: float, cash_supply_rate: float, where: str) -> None:
    """Refuse a numeraire supply rate above its borrow rate: borrowing the numeraire to hold it
    (supplied) would earn the spread, a free lunch no lending market pays (Aave's supply rate is
    borrow rate x utilization x (1 - reserve factor) <= borrow rate)."""
    if cash_supply_rate > borrow_rate:
        raise ValueError(
            f"{where}: cash_supply_rate {cash_supply_rate!r} exceeds borrow_rate {borrow_rate!r}: "
            "borrowing the numeraire to supply it would earn the difference (a lending market's "
            "supply rate is borrow rate x utilization x (1 - reserve factor)); need "
            "cash_supply_rate <= borrow_rate"
        )


def _in_range(name: str, values: np.ndarray) -> np.ndarray:
    if name.endswith("_rate"):
        return (values >= 0.0) & (values <= MAX_ANNUAL_RATE)
    if name.endswith("_growth"):
        return values >= 1.0
    if name == "mark":
        return values > 0.0
    if name == "basis":
        return values > -1.0
    return np.abs(values) <= MAX_FUNDING_PER_STEP  # funding


def _allowed(name: str) -> str:
    if name.endswith("_rate"):
        return f"annual rates must be finite fractions in [0, {MAX_ANNUAL_RATE:g}] (0.05 = 5 %/yr)"
    if name.endswith("_growth"):
        return "growth multipliers must be finite and >= 1"
    if name == "mark":
        return "mark prices must be finite and > 0 (USD)"
    if name == "basis":
        return "the basis (mark / index - 1) must be finite and > -1"
    return f"funding must be a finite fraction of notional per step with |funding| <= {MAX_FUNDING_PER_STEP:g}"


def generate_protocol_series(
    config: SimulationConfig, paths: MarketPaths, seeds: np.ndarray
) -> dict[str, np.ndarray] | None:
    """The protocol series the env draws for ``paths`` from the path seeds ``seeds`` ``(K,)`` at reset
    (``ProtocolPaths.generate`` with the config's protocol snapshots), or None when the config needs
    none (spot only, or cascades alone: the borrower population is stepped with the bars).

    A feed that streams a path a backtest also runs (a replayed period: seed 0; a simulated scenario:
    its seed) streams these rows, so paper trading meets the backtest's rates, marks and funding.
    """
    env = config.env
    fields = required_fields(env.lending.enabled, env.perps.enabled)
    if not fields:
        return None
    setup = ProtocolSetup.load(
        tuple(paths.asset_names),
        env.lending.params_path if env.lending.enabled or env.cascades_enabled else None,
        env.perps.params_path if env.perps.enabled else None,
    )
    series = ProtocolPaths(
        setup,
        paths.n_paths,
        paths.length,
        lending=env.lending.enabled,
        perps=env.perps.enabled,
        step_days=config.market.step_days,
    )
    return series.generate(paths, np.asarray(seeds))
