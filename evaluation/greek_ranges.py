"""Portfolio Greeks in backtests: per-scenario ranges (metrics table) and per-policy ranges (report).

A backtest on an options config records, after every step, the portfolio's Greek totals
(``defialloc.envs.greeks.greek_totals``: ``delta_usd``, ``gamma_usd``, ``vega_usd``, ``theta_usd``) as
extras. Here they are scaled by the equity after the same step so that scenarios of different
sizes compare (the observation's ``greeks`` block uses the same scales):

========  ======================================  ==========================================
metric    value                                   reads
========  ======================================  ==========================================
delta     ``delta_usd / V``                       exposure, x equity (1.0: all in, unhedged)
gamma     ``100 gamma_usd / V``                   change of delta per +1 % move, % of equity
vega      ``100 vega_usd / V``                    % of equity per vol point
theta     ``1e4 theta_usd / V``                   bp of equity per day
========  ======================================  ==========================================

Each scenario gets ``greek_<g>_min`` / ``_mean`` / ``_max`` over its live steps; the report shows
per policy the lowest minimum, the mean of the means and the highest maximum over scenarios.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Greek -> (recorded extra, scale after dividing by the equity, the report's column label)
GREEKS = {
    "delta": ("delta_usd", 1.0, "delta (x equity)"),
    "gamma": ("gamma_usd", 100.0, "gamma (% equity per 1 % move)"),
    "vega": ("vega_usd", 100.0, "vega (% equity per vol pt)"),
    "theta": ("theta_usd", 1e4, "theta (bp equity per day)"),
}


def greek_metrics(
    extras: dict[str, np.ndarray], value_after: np.ndarray, alive: np.ndarray
) -> dict[str, float]:
    """``greek_<g>_min/_mean/_max`` of one scenario: ``extras`` its ``(T,)`` series, ``value_after``
    ``(T,)`` the equity after each step, ``alive`` ``(T,)`` the live steps ({} without Greeks)."""
    out: dict[str, float] = {}
    live = alive & (value_after > 0.0)
    for greek, (key, scale, _) in GREEKS.items():
        if key not in extras:
            continue
        series = np.asarray(extras[key], dtype=np.float64)[live] / value_after[live] * scale
        series = series[np.isfinite(series)]
        if series.size == 0:
            continue
        out[f"greek_{greek}_min"] = float(series.min())
        out[f"greek_{greek}_mean"] = float(series.mean())
        out[f"greek_{greek}_max"] = float(series.max())
    return out


def greek_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Per policy (rows) and Greek (columns): ``"mean [min, max]"`` over its scenarios' steps, or an
    empty frame when the table has no Greeks (spot or perps-only configs)."""
    greeks = [g for g in GREEKS if f"greek_{g}_min" in table.columns]
    if not greeks:
        return pd.DataFrame()
    rows = {}
    for policy, sub in table.groupby("policy", sort=False):
        rows[policy] = {
            GREEKS[g][2]: (
                f"{sub[f'greek_{g}_mean'].mean():+.3g} "
                f"[{sub[f'greek_{g}_min'].min():+.3g}, {sub[f'greek_{g}_max'].max():+.3g}]"
            )
            for g in greeks
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "policy"
    return frame


def print_greeks(frame: pd.DataFrame, console, title: str) -> None:
    """The :func:`greek_frame` of a group as a rich table on ``console`` (terminal report)."""
    from defialloc.evaluation.table_fit import print_fitted

    print_fitted(
        console,
        f"{title}\nportfolio Greeks per step, mean [min, max] over scenarios",
        ["policy", *map(str, frame.columns)],
        [[str(policy), *map(str, row.to_numpy())] for policy, row in frame.iterrows()],
    )
