"""Terminal summaries of simulated episodes."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from defialloc.envs.config import SimulationConfig
from defialloc.evaluation.rollout import EpisodeRecord

#: cost kinds the lending market and the perps add (a config with either on reports them)
PROTOCOL_COSTS = ("interest", "funding", "liquidation")


def _seed_label(record: EpisodeRecord, i: int) -> str:
    return str(record.seeds[i]) if i < len(record.seeds) else str(i)


def print_episode_summary(record: EpisodeRecord, cfg: SimulationConfig, console: Console) -> None:
    """Final value, return, drawdown, costs by kind and regime counts, per scenario and on average."""
    k, horizon = record.turnover.shape
    table = Table(
        title=f"{record.policy} on {k} scenario(s) x {horizon} steps ({cfg.market.source} market)"
    )
    for col in (
        "seed",
        "final value $",
        "return",
        "max DD",
        "fees $",
        "slippage $",
        "gas $",
        "turnover",
    ):
        table.add_column(col, justify="right")
    values = record.value_usd
    peak = np.maximum.accumulate(values, axis=1)
    max_dd = (1 - values / peak).max(axis=1)
    for i in range(k):
        table.add_row(
            _seed_label(record, i),
            f"{values[i, -1]:,.0f}",
            f"{values[i, -1] / values[i, 0] - 1:+.2%}",
            f"{max_dd[i]:.2%}",
            f"{record.fees_usd[i].sum():,.2f}",
            f"{record.slippage_usd[i].sum():,.2f}",
            f"{record.gas_usd[i].sum():,.2f}",
            f"{record.turnover[i].sum():.2f}",
        )
    console.print(table)
    if record.costs_usd.keys() & set(PROTOCOL_COSTS):
        console.print(protocol_table(record))
    elif "kill_switch" in record.extras and record.extras["kill_switch"].any():
        # spot configs have no protocol table: report the kill-switch (env or wrapper) here
        steps = record.extras["kill_switch"].sum(axis=1)
        per = ", ".join(f"{_seed_label(record, i)}: {int(n)}" for i, n in enumerate(steps))
        console.print(f"kill-switch steps per scenario (seed: steps): {per}")
    codes, counts = np.unique(record.regime, return_counts=True)
    names = record.regime_names or tuple(str(c) for c in codes)
    regimes = ", ".join(f"{names[c]}: {n}" for c, n in zip(codes, counts, strict=True))
    console.print(f"regime steps (all scenarios): {regimes}")
    if record.dates is not None:
        console.print(f"dates: {record.dates[0, 0]} .. {record.dates[0, -1]}")


def protocol_table(record: EpisodeRecord) -> Table:
    """Per scenario: interest, funding and liquidation costs (USD, summed over the episode), the
    number of liquidations, the lowest health factor, the highest debt / equity after a step and the
    steps the kill-switch was engaged (a ruined env's later steps are left out)."""
    table = Table(title="lending, perps and kill-switch")
    costs = (f"{kind} $" for kind in PROTOCOL_COSTS)
    for col in ("seed", *costs, "liquidations", "min HF", "max debt/equity", "kill-switch steps"):
        table.add_column(col, justify="right")
    zeros = np.zeros_like(record.turnover)
    extras = record.extras
    hf = extras.get("health_factor", np.full_like(zeros, np.inf))
    debt = extras.get("debt_usd", zeros)
    alive = record.alive
    # debt over the equity after the step; dead steps (NaN debt) and zero equity drop out
    with np.errstate(divide="ignore", invalid="ignore"):
        lev = np.where(alive & (record.value_usd[:, 1:] > 0), debt / record.value_usd[:, 1:], 0.0)
    for i in range(record.n_scenarios):
        lowest = np.min(hf[i][alive[i]], initial=np.inf)
        table.add_row(
            _seed_label(record, i),
            *(f"{record.costs_usd.get(kind, zeros)[i].sum():,.2f}" for kind in PROTOCOL_COSTS),
            str(int(extras.get("liquidations", zeros)[i].sum())),
            "no debt" if np.isinf(lowest) else f"{lowest:.3f}",
            f"{lev[i].max(initial=0.0):.2f}",
            str(int(extras.get("kill_switch", zeros)[i].sum())),
        )
    return table
