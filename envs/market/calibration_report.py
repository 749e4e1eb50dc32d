"""Fitted-vs-data report of a calibrated synthetic market.

One job: compare a :class:`MarketConfig` with the history it was fitted to. :func:`calibration_report`
computes per-asset figures (annualized vol, excess kurtosis, worst and best day, autocorrelation of
absolute returns, calm/crash correlations) on the data and on simulated paths of the same length
(median and 5-95% range across paths); :func:`expected_return_report` compares the expected simple
return per regime and asset (data: next-day returns after each causal regime label; model: the drift
convention's implied value and the same statistic on the simulated paths). :func:`format_report`,
:func:`format_expected_returns` render them as Markdown and :func:`print_report` as console tables
(used by ``run_calibration`` in ``envs/market/calibrate.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defialloc.envs.market.config import DAYS_PER_YEAR, REGIME_NAMES, MarketConfig
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.replay import label_regimes
from defialloc.envs.market.synthetic import generate_synthetic_paths
from defialloc.envs.market.synthetic_model import expected_simple_return_step, step_transition


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
        "best_day": np.expm1(returns.max(axis=0)),
        "acf_abs_lag1": acf,
        "corr_calm": np.array([_mean_offdiag_corr(returns[regime == 0])]),
        "corr_crash": np.array([_mean_offdiag_corr(returns[regime == 2])]),
    }


def _closes(cfg: MarketConfig, data: dict[str, pd.DataFrame]) -> np.ndarray:
    """``(T, N)`` closes of ``cfg.assets`` from :func:`load_ohlcv` output."""
    return np.stack([data[a]["Close"].to_numpy() for a in cfg.assets], axis=1)


def simulate_report_paths(
    cfg: MarketConfig, n_days: int, n_paths: int = 200, seed: int = 0
) -> MarketPaths:
    """The report's model side: ``n_paths`` synthetic paths of ``n_days`` points (seeds
    ``seed..seed+n_paths-1``), each one alternative history of the data's length."""
    sim_cfg = cfg.model_copy(update={"source": "synthetic"})
    return generate_synthetic_paths(sim_cfg, np.arange(seed, seed + n_paths), n_days, 0)


def _quantile_row(value: float, sample: np.ndarray) -> dict[str, float]:
    col = sample[np.isfinite(sample)]
    q = np.percentile(col, [50, 5, 95]) if len(col) else [np.nan] * 3
    return {"data": float(value), "model_median": q[0], "model_p05": q[1], "model_p95": q[2]}


def calibration_report(
    cfg: MarketConfig,
    data: dict[str, pd.DataFrame],
    n_paths: int = 200,
    seed: int = 0,
    paths: MarketPaths | None = None,
) -> pd.DataFrame:
    """Fitted (simulated) vs historical figures, per asset.

    ``data`` is :func:`load_ohlcv` output for ``cfg.assets``. The model side simulates ``n_paths`` paths of
    the data's length (seeds ``seed..seed+n_paths-1``; or takes ``paths`` from
    :func:`simulate_report_paths`) and reports, per figure, the median and the 5-95% range across paths
    (each path is one alternative history of the same length). Correlations are mean pairwise
    correlations of daily returns on calm / crash days (data: causal rule; model: its regimes).
    ``worst_day`` / ``best_day`` are simple returns, ``exp(min / max log return) - 1``.

    Returns:
        DataFrame with columns ``metric, asset, data, model_median, model_p05, model_p95``.
    """
    assets = list(cfg.assets)
    close = _closes(cfg, data)
    returns = np.diff(np.log(close), axis=0)
    observed = _path_stats(returns, label_regimes(close, cfg.regime_rule)[1:])
    if paths is None:
        paths = simulate_report_paths(cfg, len(close), n_paths, seed)
    sim_ret = np.diff(np.log(paths.close), axis=1)
    sims = [_path_stats(sim_ret[b], paths.regime[b, 1:]) for b in range(paths.n_paths)]
    rows: list[dict[str, Any]] = []
    for metric, value in observed.items():
        sample = np.stack([s[metric] for s in sims])
        names = assets if len(value) == len(assets) else ["all"]
        for j, name in enumerate(names):
            rows.append({"metric": metric, "asset": name, **_quantile_row(value[j], sample[:, j])})
    return pd.DataFrame(rows)


def _next_day_means(close: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(3, N)`` mean and standard error of the simple return of day ``t + 1`` over the days ``t``
    labelled ``k`` (NaN where a regime has under 2 days)."""
    simple = close[1:] / close[:-1] - 1.0  # (T-1, N): return of day t + 1
    mean, se = np.full((3, close.shape[1]), np.nan), np.full((3, close.shape[1]), np.nan)
    for k in range(3):
        x = simple[labels[:-1] == k]
        if len(x) >= 2:
            mean[k], se[k] = x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(len(x))
    return mean, se


def model_expected_returns(cfg: MarketConfig) -> np.ndarray:
    """``(3, N)`` model-implied expected simple return per step on the step after a step in regime
    ``k``: ``sum_j P_step[k, j] expected_simple_return_step(j, h_bar)`` at each asset's unconditional
    GARCH variance ``h_bar = omega dt / (1 - alpha - beta)`` (the stationary mean of ``h`` when the
    stationary mean of ``vm^2`` is 1, as calibrated; exact whatever ``h`` for the arithmetic kind)."""
    p, dt = cfg.synthetic, cfg.step_days
    h_bar = np.array([p.garch[a].unconditional_variance_daily * dt for a in cfg.assets])
    by_regime = expected_simple_return_step(cfg, np.arange(3), np.tile(h_bar, (3, 1)))
    return step_transition(p.transition_array(), dt) @ by_regime


def expected_return_report(
    cfg: MarketConfig, data: dict[str, pd.DataFrame], paths: MarketPaths
) -> pd.DataFrame:
    """Expected SIMPLE return per regime and asset, annualized as ``mean daily simple return x 365``.

    A causal observer's view, the same on data and paths: the mean simple return of day ``t + 1`` over
    the days ``t`` that the causal rule (``cfg.regime_rule``, :func:`label_regimes` on the assets'
    closes up to ``t``) labels ``k``. Data: that mean with its standard error (days treated as
    independent). Model: ``model`` = :func:`model_expected_returns` (the drift convention's implied
    value after a step in TRUE regime ``k``); ``model_median/p05/p95`` = the data's statistic on each
    simulated path (``paths``, :func:`simulate_report_paths`), labelled by the same rule.

    Returns:
        DataFrame with columns ``regime, asset, data, data_se, model, model_median, model_p05,
        model_p95`` (per year).
    """
    close = _closes(cfg, data)
    data_mean, data_se = _next_day_means(close, label_regimes(close, cfg.regime_rule))
    sims = np.stack(
        [_next_day_means(c, label_regimes(c, cfg.regime_rule))[0] for c in paths.close]
    )  # (paths, 3, N)
    implied = model_expected_returns(cfg)
    per_year = DAYS_PER_YEAR / cfg.step_days
    rows = []
    for k, regime in enumerate(REGIME_NAMES):
        for j, asset in enumerate(cfg.assets):
            row = _quantile_row(data_mean[k, j] * per_year, sims[:, k, j] * per_year)
            rows.append(
                {
                    "regime": regime,
                    "asset": asset,
                    **row,
                    "data_se": data_se[k, j] * per_year,
                    "model": implied[k, j] * per_year,
                }
            )
    cols = ["regime", "asset", "data", "data_se", "model", "model_median", "model_p05", "model_p95"]
    return pd.DataFrame(rows)[cols]


def _report_cells(report: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    heads = ["metric", "asset", "data", "model median", "model 5-95%"]
    cells = [
        [r.metric, r.asset, f"{r.data:.3f}", f"{r.model_median:.3f}", _range(r)]
        for r in report.itertuples()
    ]
    return heads, cells


def _expected_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    heads = ["regime", "asset", "data (s.e.)", "model", "model paths median", "model paths 5-95%"]
    cells = [
        [
            r.regime,
            r.asset,
            f"{r.data:+.2f} ({r.data_se:.2f})",
            f"{r.model:+.3f}",
            f"{r.model_median:+.2f}",
            _range(r, "+.2f"),
        ]
        for r in table.itertuples()
    ]
    return heads, cells


def _range(r: Any, spec: str = ".3f") -> str:
    return f"{r.model_p05:{spec}} .. {r.model_p95:{spec}}"


def _markdown(heads: list[str], cells: list[list[str]]) -> str:
    align = ["---" if i < 2 else "---:" for i in range(len(heads))]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def format_report(report: pd.DataFrame) -> str:
    """The report as a Markdown table (for the docs and the console)."""
    return _markdown(*_report_cells(report))


def format_expected_returns(table: pd.DataFrame) -> str:
    """:func:`expected_return_report` as a Markdown table (per year; data with its standard error)."""
    return _markdown(*_expected_cells(table))


def print_report(
    report: pd.DataFrame,
    cfg: MarketConfig,
    out_path: str | Path,
    console: Any,
    expected: pd.DataFrame | None = None,
) -> None:
    """Print the report (and ``expected``, :func:`expected_return_report`) as rich tables to
    ``console`` (a new Console if None), then the output path."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    titles = [
        (
            f"calibration {cfg.start}..{cfg.end}: data vs model (median, 5-95% over paths)",
            _report_cells(report),
        )
    ]
    if expected is not None:
        titles.append(
            (
                f"expected simple return per year after a day in each regime, drift "
                f"{cfg.synthetic.drift.kind} (data: next day after the causal label; model: implied)",
                _expected_cells(expected),
            )
        )
    for title, (heads, cells) in titles:
        table = Table(title=title)
        for i, col in enumerate(heads):
            table.add_column(col, justify="left" if i < 2 else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)
    console.print(f"wrote {out_path}")
