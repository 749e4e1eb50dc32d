"""The paper run's equity against the backtest of the same period, and the levered state, as a figure.

Read from the ledger only (read-only connection; safe while ``defialloc paper`` writes it). Panels:
equity (USD) of the paper run and, where the ledger has one, of the reference backtest
(``reference`` table, training/paper/reference.py); their difference; and for a levered or hedged
policy the health factor (capped at 10 for display: no debt reads as 10) and the leverage and perp
exposure (notional / equity). Built on a bare ``matplotlib.figure.Figure`` (no pyplot state), so it
renders headless.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

#: health factors above this are drawn at the cap (no debt = infinite)
HF_DISPLAY_CAP = 10.0


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def read_series(path: str | Path) -> dict[str, np.ndarray]:
    """``bar`` (decision bar indices), ``value``, and where present ``reference`` (NaN where the
    backtest has no row), ``health_factor`` (NaN: no debt), ``leverage``, ``perp_notional``."""
    path = Path(path)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = _tables(conn)
        rows = conn.execute("SELECT bar_index, value_usd FROM equity ORDER BY bar_index").fetchall()
        out = {
            "bar": np.array([r[0] for r in rows], dtype=np.int64),
            "value": np.array([r[1] for r in rows], dtype=np.float64),
        }
        if "reference" in tables:
            ref = dict(conn.execute("SELECT bar_index, value_usd FROM reference").fetchall())
            if ref:
                out["reference"] = np.array([ref.get(b, np.nan) for b in out["bar"]], dtype=float)
        if "levered" in tables:
            lev = {
                r[0]: r[1:]
                for r in conn.execute(
                    "SELECT bar_index, health_factor, leverage, perp_notional_usd FROM levered"
                )
            }
            if lev:
                cols = np.array(
                    [
                        [np.nan if v is None else v for v in lev.get(b, (None,) * 3)]
                        for b in out["bar"]
                    ],
                    dtype=float,
                )
                out["health_factor"], out["leverage"] = cols[:, 0], cols[:, 1]
                out["perp_notional"] = cols[:, 2]
    finally:
        conn.close()
    return out


def equity_figure(path: str | Path) -> Figure | None:
    """The figure of a ledger (None when it has no decision bar yet)."""
    series = read_series(path)
    if series["bar"].size == 0:
        return None
    has_ref = "reference" in series
    levered = "health_factor" in series
    n_panels = 1 + int(has_ref) + int(levered)
    fig = Figure(figsize=(9, 2.6 * n_panels + 0.6), layout="constrained")
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    bars, value = series["bar"], series["value"]
    ax = axes[0]
    ax.plot(bars, value, label="paper", color="C0", lw=1.6)
    if has_ref:
        ax.plot(bars, series["reference"], label="backtest (same export, same path)", color="C1",
                lw=1.0, ls="--")  # fmt: skip
    ax.set_ylabel("equity, USD")
    ax.legend(loc="best")
    ax.set_title(f"paper trading: {Path(path).name}")
    panel = 1
    if has_ref:
        diff = value - series["reference"]
        axes[panel].plot(bars, diff, color="C2")
        finite = diff[np.isfinite(diff)]
        worst = float(np.max(np.abs(finite))) if finite.size else float("nan")
        axes[panel].set_ylabel("paper - backtest, USD")
        axes[panel].set_title(f"max |difference| {worst:.6g} USD", fontsize=9)
        panel += 1
    if levered:
        ax = axes[panel]
        hf = np.where(np.isnan(series["health_factor"]), HF_DISPLAY_CAP, series["health_factor"])
        ax.plot(bars, np.minimum(hf, HF_DISPLAY_CAP), color="C3", label="health factor (cap 10)")
        ax.axhline(1.0, color="C3", lw=0.6, ls=":")
        ax.set_ylabel("health factor")
        twin = ax.twinx()
        twin.plot(bars, series["leverage"], color="C4", lw=1.0, label="debt / equity")
        equity = np.where(value > 0.0, value, np.nan)
        twin.plot(bars, series["perp_notional"] / equity, color="C5", lw=1.0,
                  label="perp notional / equity")  # fmt: skip
        twin.set_ylabel("x equity")
        handles = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], loc="best", fontsize=8)
    axes[-1].set_xlabel("bar index")
    return fig
