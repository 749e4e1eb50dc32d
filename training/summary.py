"""Terminal summaries of simulated episodes."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from envs.config import SimulationConfig
from evaluation.rollout import EpisodeRecord


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
            str(record.seeds[i]) if i < len(record.seeds) else str(i),
            f"{values[i, -1]:,.0f}",
            f"{values[i, -1] / values[i, 0] - 1:+.2%}",
            f"{max_dd[i]:.2%}",
            f"{record.fees_usd[i].sum():,.2f}",
            f"{record.slippage_usd[i].sum():,.2f}",
            f"{record.gas_usd[i].sum():,.2f}",
            f"{record.turnover[i].sum():.2f}",
        )
    console.print(table)
    codes, counts = np.unique(record.regime, return_counts=True)
    names = record.regime_names or tuple(str(c) for c in codes)
    regimes = ", ".join(f"{names[c]}: {n}" for c, n in zip(codes, counts, strict=True))
    console.print(f"regime steps (all scenarios): {regimes}")
    if record.dates is not None:
        console.print(f"dates: {record.dates[0, 0]} .. {record.dates[0, -1]}")
