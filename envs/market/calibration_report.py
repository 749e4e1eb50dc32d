"""Fitted-vs-data report of a calibrated synthetic market.

One job: compare a :class:`MarketConfig` with the history it was fitted to. :func:`calibration_report`
computes per-asset figures (annualized vol, excess kurtosis, worst day, autocorrelation of absolute
returns, calm/crash correlations) on the data and on simulated paths of the same length (median and
5-95% range across paths); :func:`format_report` renders it as Markdown and :func:`print_report` as a
console table (used by ``run_calibration`` in ``envs/market/calibrate.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from envs.market.config import DAYS_PER_YEAR, MarketConfig
from envs.market.replay import label_regimes
from envs.market.synthetic import generate_synthetic_paths


def _mean_offdiag_corr(x: np.ndarray) -> float:
    if x.shape[0] < 10 or x.shape[1] < 2:
        return float("nan")
    c = np.corrcoef(x, rowvar=False)
    return float(c[np.triu_indices(x.shape[1], 1)].mean())


def _path_stats(returns: np.ndarray, regime: np.ndarray) -> dict[str, np.ndarray]:
    """Per-asset figures of one path: returns ``(T, N)``, regime ``(T,)`` (regime of each return's day)."""
    a = np.abs(returns - returns.mean(axis=0))
    acf = np.sum(a[1:] * a[:-1] - a.mean(axis=0) ** 2, axis=0) / (len(a) * a.var(axis=0))
    return {
        "ann_vol": returns.std(axis=0) * np.sqrt(DAYS_PER_YEAR),
        "excess_kurtosis": pd.DataFrame(returns).kurt().to_numpy(),
        "worst_day": np.expm1(returns.min(axis=0)),
        "acf_abs_lag1": acf,
        "corr_calm": np.array([_mean_offdiag_corr(returns[regime == 0])]),
        "corr_crash": np.array([_mean_offdiag_corr(returns[regime == 2])]),
    }


def calibration_report(
    cfg: MarketConfig, data: dict[str, pd.DataFrame], n_paths: int = 200, seed: int = 0
) -> pd.DataFrame:
    """Fitted (simulated) vs historical figures, per asset.

    ``data`` is :func:`load_ohlcv` output for ``cfg.assets``. The model side simulates ``n_paths`` paths of
    the data's length (seeds ``seed..seed+n_paths-1``) and reports, per figure, the median and the 5-95%
    range across paths (each path is one alternative history of the same length). Correlations are mean
    pairwise correlations of daily returns on calm / crash days (data: causal rule; model: its regimes).

    Returns:
        DataFrame with columns ``metric, asset, data, model_median, model_p05, model_p95``.
    """
    assets = list(cfg.assets)
    close = np.stack([data[a]["Close"].to_numpy() for a in assets], axis=1)
    returns = np.diff(np.log(close), axis=0)
    observed = _path_stats(returns, label_regimes(close, cfg.regime_rule)[1:])
    sim_cfg = cfg.model_copy(update={"source": "synthetic"})
    paths = generate_synthetic_paths(sim_cfg, np.arange(seed, seed + n_paths), len(close), 0)
    sim_ret = np.diff(np.log(paths.close), axis=1)
    sims = [_path_stats(sim_ret[b], paths.regime[b, 1:]) for b in range(n_paths)]
    rows: list[dict[str, Any]] = []
    for metric, value in observed.items():
        sample = np.stack([s[metric] for s in sims])
        names = assets if len(value) == len(assets) else ["all"]
        for j, name in enumerate(names):
            col = sample[:, j][np.isfinite(sample[:, j])]
            q = np.percentile(col, [50, 5, 95]) if len(col) else [np.nan] * 3
            rows.append(
                {
                    "metric": metric,
                    "asset": name,
                    "data": float(value[j]),
                    "model_median": float(q[0]),
                    "model_p05": float(q[1]),
                    "model_p95": float(q[2]),
                }
            )
    return pd.DataFrame(rows)


def format_report(report: pd.DataFrame) -> str:
    """The report as a Markdown table (for the docs and the console)."""
    lines = ["| metric | asset | data | model median | model 5-95% |", "|---|---|---:|---:|---:|"]
    for r in report.itertuples():
        lines.append(
            f"| {r.metric} | {r.asset} | {r.data:.3f} | {r.model_median:.3f} | {r.model_p05:.3f} .. {r.model_p95:.3f} |"
        )
    return "\n".join(lines)


def print_report(
    report: pd.DataFrame, cfg: MarketConfig, out_path: str | Path, console: Any
) -> None:
    """Print the report as a rich table to ``console`` (a new Console if None), then the output path."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"calibration {cfg.start}..{cfg.end}: data vs model (median, 5-95% over paths)"
    )
    for col in ("metric", "asset", "data", "model median", "model 5-95%"):
        table.add_column(col, justify="left" if col in ("metric", "asset") else "right")
    for r in report.itertuples():
        table.add_row(
            r.metric,
            r.asset,
            f"{r.data:.3f}",
            f"{r.model_median:.3f}",
            f"{r.model_p05:.3f} .. {r.model_p95:.3f}",
        )
    console.print(table)
    console.print(f"wrote {out_path}")
