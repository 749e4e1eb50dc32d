"""PNG plots of a backtest (matplotlib, Agg backend: no display needed).

Every function takes a :class:`~defialloc.evaluation.backtest.BacktestResult` and returns a Figure; the
x axis is the decision step (or the date for a replayed period, labelled by matplotlib's concise
date formatter so the labels never overlap). Values are normalized to the initial capital (1.0 =
the starting value). The equity and drawdown charts draw the policies a reader compares
(:func:`highlighted`: every agent, the best feasible baseline by mean Sharpe, equal weight and the
upper reference), not one line and band per policy; the table has every policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from defialloc.agents.baselines.policies import BASELINES, UPPER_REFERENCES  # noqa: E402

if TYPE_CHECKING:
    from defialloc.evaluation.backtest import BacktestResult

LIQUIDATION_KEYS = ("liquidations", "liquidations_count", "n_liquidations")
KILL_SWITCH_KEYS = ("kill_switch", "kill_switch_active")


def _x_axis(result: BacktestResult) -> tuple[np.ndarray, str]:
    """``(T+1,)`` x values (dates of a replayed period, else steps) and the axis label."""
    rec = next(iter(result.records.values()))
    if rec.dates is not None and rec.value_usd.shape[0] == 1:
        first = rec.dates[0, 0] - np.timedelta64(1, "D")
        return np.concatenate([[first], rec.dates[0]]), "date"
    return np.arange(rec.value_usd.shape[1]), "step"


def _date_axis(ax: plt.Axes, xlabel: str) -> None:
    """Concise date labels (year once, then months) that do not overlap, when x holds dates."""
    if xlabel == "date":
        locator = mdates.AutoDateLocator(minticks=4, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def mean_sharpe(result: BacktestResult, name: str) -> float:
    """Mean across scenarios of the annualized Sharpe ratio (ddof=1, zero risk-free rate)."""
    r = result.records[name].returns
    std = r.std(axis=1, ddof=1) if r.shape[1] > 1 else np.zeros(r.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(std > 0, r.mean(axis=1) / std, np.nan) * np.sqrt(result.periods_per_year)
    return float(np.nanmean(sharpe)) if np.isfinite(sharpe).any() else float("nan")


def highlighted(result: BacktestResult) -> dict[str, str]:
    """The policies the equity and drawdown charts draw, with their role: every agent (a policy
    that is not a named baseline), the best feasible baseline by mean Sharpe, ``equal_weight`` and
    the upper reference (``ceiling``, else ``oracle_mean_variance``)."""
    names = result.policies
    roles = {n: "agent" for n in names if n not in BASELINES}
    feasible = [n for n in names if n in BASELINES and n not in UPPER_REFERENCES]
    scored = [(mean_sharpe(result, n), n) for n in feasible]
    scored = [(s, n) for s, n in scored if np.isfinite(s)]
    if scored:
        roles.setdefault(max(scored)[1], "best baseline")
    if "equal_weight" in names:
        roles.setdefault("equal_weight", "equal weight")
    reference = next((n for n in ("ceiling", "oracle_mean_variance") if n in names), None)
    if reference is not None:
        roles.setdefault(reference, "upper reference")
    return roles or {names[0]: "policy"}


def _title(result: BacktestResult, what: str) -> str:
    k = next(iter(result.records.values())).n_scenarios
    return f"{what} ({result.scenario_set}, {k} scenario{'s' if k != 1 else ''})"


#: line styles of the highlighted roles (agents solid and thick; references dashed)
_STYLE = {
    "agent": {"lw": 2.0, "ls": "-"},
    "best baseline": {"lw": 1.6, "ls": "-"},
    "equal weight": {"lw": 1.2, "ls": "--"},
    "upper reference": {"lw": 1.2, "ls": ":"},
    "policy": {"lw": 1.4, "ls": "-"},
}


def equity_curves(result: BacktestResult, level: float = 0.95) -> Figure:
    """Mean normalized value across scenarios of the :func:`highlighted` policies; a ``level`` CI
    band for the mean (normal approximation, ``mean +- z * std(ddof=1) / sqrt(K)``) only on the
    agents and the best baseline (no band for one scenario). A policy with ruined scenarios says
    how many in its legend entry."""
    from scipy import stats

    fig, ax = plt.subplots(figsize=(10, 5.5))
    x, xlabel = _x_axis(result)
    z = float(stats.norm.ppf(0.5 + level / 2))
    roles = highlighted(result)
    for name, role in roles.items():
        rec = result.records[name]
        growth = rec.value_usd / rec.value_usd[:, :1]
        mean = growth.mean(axis=0)
        ruined = rec.n_ruined  # ruined paths stay in the mean (at their ruin value, >= 0)
        label = f"{name} ({role})"
        label += f", {ruined} of {rec.n_scenarios} ruined" if ruined else ""
        (line,) = ax.plot(x, mean, label=label, **_STYLE[role])
        if growth.shape[0] > 1 and role in ("agent", "best baseline"):
            half = z * growth.std(axis=0, ddof=1) / np.sqrt(growth.shape[0])
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    k = next(iter(result.records.values())).n_scenarios
    what = f"Equity, mean with {level:.0%} CI" if k > 1 else "Equity"
    others = len(result.policies) - len(roles)
    if others:
        what += f"; {others} other polic{'ies' if others > 1 else 'y'} in the table"
    ax.set(xlabel=xlabel, ylabel="value / initial value", title=_title(result, what))
    ax.legend(fontsize=8)
    _date_axis(ax, xlabel)
    fig.tight_layout()
    return fig


def drawdowns(result: BacktestResult) -> Figure:
    """Mean drawdown ``1 - V/peak`` across scenarios of the :func:`highlighted` policies (positive
    fractions, plotted down)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x, xlabel = _x_axis(result)
    for name, role in highlighted(result).items():
        rec = result.records[name]
        peak = np.maximum.accumulate(rec.value_usd, axis=1)
        style = _STYLE[role]
        ax.plot(x, -(1.0 - rec.value_usd / peak).mean(axis=0), label=f"{name} ({role})", **style)
    ax.set(
        xlabel=xlabel, ylabel="-drawdown", title=_title(result, "Drawdown, mean across scenarios")
    )
    ax.legend(fontsize=8)
    _date_axis(ax, xlabel)
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
    x, xlabel = _x_axis(result)
    for ax, name in zip(axes.flat, names, strict=False):
        rec = result.records[name]
        mean_w = rec.weights.mean(axis=0)  # (T, N+1)
        labels = [*rec.asset_names, "cash"]
        ax.stackplot(x[:-1], mean_w.T, labels=labels, alpha=0.85)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        _date_axis(ax, xlabel)
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
    if drawn:
        _date_axis(ax, xlabel)
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
