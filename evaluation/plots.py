"""PNG plots of a backtest (matplotlib, Agg backend: no display needed).

Every function takes a :class:`~evaluation.backtest.BacktestResult` and returns a Figure; the
x axis is the decision step (or the date for a replayed period). Values are normalized to the
initial capital (1.0 = the starting value).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from evaluation.backtest import BacktestResult

LIQUIDATION_KEYS = ("liquidations", "liquidations_count", "n_liquidations")
KILL_SWITCH_KEYS = ("kill_switch", "kill_switch_active")


def _x_axis(result: BacktestResult) -> tuple[np.ndarray, str]:
    """``(T+1,)`` x values (dates of a replayed period, else steps) and the axis label."""
    rec = next(iter(result.records.values()))
    if rec.dates is not None and rec.value_usd.shape[0] == 1:
        first = rec.dates[0, 0] - np.timedelta64(1, "D")
        return np.concatenate([[first], rec.dates[0]]), "date"
    return np.arange(rec.value_usd.shape[1]), "step"


def _title(result: BacktestResult, what: str) -> str:
    k = next(iter(result.records.values())).n_scenarios
    return f"{what} ({result.scenario_set}, {k} scenario{'s' if k != 1 else ''})"


def equity_curves(result: BacktestResult, level: float = 0.95) -> Figure:
    """Mean normalized value per policy across scenarios, with a ``level`` CI band for the mean
    (normal approximation, ``mean +- z * std(ddof=1) / sqrt(K)``; no band for one scenario). A
    policy with ruined scenarios says how many in its legend entry."""
    from scipy import stats

    fig, ax = plt.subplots(figsize=(10, 5.5))
    x, xlabel = _x_axis(result)
    z = float(stats.norm.ppf(0.5 + level / 2))
    for name, rec in result.records.items():
        growth = rec.value_usd / rec.value_usd[:, :1]
        mean = growth.mean(axis=0)
        ruined = rec.n_ruined  # ruined paths stay in the mean (at their ruin value, >= 0)
        label = f"{name} ({ruined} of {rec.n_scenarios} ruined)" if ruined else name
        (line,) = ax.plot(x, mean, label=label, lw=1.4)
        if growth.shape[0] > 1:
            half = z * growth.std(axis=0, ddof=1) / np.sqrt(growth.shape[0])
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    k = next(iter(result.records.values())).n_scenarios
    what = f"Equity, mean with {level:.0%} CI" if k > 1 else "Equity"
    ax.set(xlabel=xlabel, ylabel="value / initial value", title=_title(result, what))
    ax.legend(fontsize=8, ncol=2)
    fig.autofmt_xdate() if xlabel == "date" else None
    fig.tight_layout()
    return fig


def drawdowns(result: BacktestResult) -> Figure:
    """Mean drawdown ``1 - V/peak`` per policy across scenarios (positive fractions, plotted down)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x, xlabel = _x_axis(result)
    for name, rec in result.records.items():
        peak = np.maximum.accumulate(rec.value_usd, axis=1)
        ax.plot(x, -(1.0 - rec.value_usd / peak).mean(axis=0), label=name, lw=1.2)
    ax.set(
        xlabel=xlabel, ylabel="-drawdown", title=_title(result, "Drawdown, mean across scenarios")
    )
    ax.legend(fontsize=8, ncol=2)
    fig.autofmt_xdate() if xlabel == "date" else None
    fig.tight_layout()
    return fig


def allocations(result: BacktestResult) -> Figure:
    """Stacked area of the mean post-trade weights (assets and cash) per policy, one panel each."""
    names = list(result.records)
    ncols = min(3, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False, sharey=True
    )
    x, _ = _x_axis(result)
    for ax, name in zip(axes.flat, names, strict=False):
        rec = result.records[name]
        mean_w = rec.weights.mean(axis=0)  # (T, N+1)
        labels = [*rec.asset_names, "cash"]
        ax.stackplot(x[:-1], mean_w.T, labels=labels, alpha=0.85)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(_title(result, "Mean allocation after trading"), fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return fig


def cost_breakdown(result: BacktestResult) -> Figure:
    """Stacked bars: mean total cost per scenario in USD, by kind (fees, slippage, gas, ...)."""
    names = list(result.records)
    kinds = sorted({kind for rec in result.records.values() for kind in rec.costs_usd})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4.5))
    bottom = np.zeros(len(names))
    for kind in kinds:
        totals = np.array(
            [
                result.records[n].costs_usd[kind].sum(axis=1).mean()
                if kind in result.records[n].costs_usd
                else 0.0
                for n in names
            ]
        )
        ax.bar(names, totals, bottom=bottom, label=kind)
        bottom += totals
    ax.set(ylabel="USD per scenario (mean)", title=_title(result, "Trading costs by kind"))
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def liquidation_timeline(result: BacktestResult) -> Figure:
    """Cumulative liquidation events (summed over scenarios) and the share of scenarios under the
    kill-switch, per policy. Draws an explicit empty state when neither ever happened (spot env)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    x, xlabel = _x_axis(result)
    ks_ax = None
    drawn = False
    for name, rec in result.records.items():
        key = next((k for k in LIQUIDATION_KEYS if k in rec.extras), None)
        if key is not None:
            events = np.nan_to_num(rec.extras[key].astype(float)).sum(axis=0)
            if events.any():
                ax.step(
                    x[1:], np.cumsum(events), where="post", label=f"{name}: liquidations", lw=1.2
                )
                drawn = True
        ks = next((k for k in KILL_SWITCH_KEYS if k in rec.extras), None)
        if ks is not None and np.nan_to_num(rec.extras[ks].astype(float)).any():
            ks_ax = ks_ax or ax.twinx()
            share = np.nan_to_num(rec.extras[ks].astype(float)).mean(axis=0)
            ks_ax.plot(x[1:], share, ls="--", lw=0.8, label=f"{name}: under kill-switch")
            ks_ax.set_ylim(0, 1.05)
            ks_ax.set_ylabel("share of scenarios under kill-switch")
            drawn = True
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no liquidations and no kill-switch activity in this backtest",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=11,
            color="grey",
        )
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_ylabel("cumulative liquidation events (all scenarios)")
        handles, labels = ax.get_legend_handles_labels()
        if ks_ax is not None:
            more = ks_ax.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize=7)
    ax.set(xlabel=xlabel, title=_title(result, "Liquidations and kill-switch"))
    fig.tight_layout()
    return fig


PLOTS = {
    "equity_curves": equity_curves,
    "drawdowns": drawdowns,
    "allocations": allocations,
    "cost_breakdown": cost_breakdown,
    "liquidation_timeline": liquidation_timeline,
}


def save_plots(result: BacktestResult, out_dir: str | Path, dpi: int = 110) -> list[Path]:
    """Write every plot of :data:`PLOTS` as ``<out_dir>/<name>.png``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in PLOTS.items():
        fig = make(result)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths
