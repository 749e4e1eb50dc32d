"""Terminal tables that fit their medium: short column labels, one-line cells, split to the width.

Rich shrinks a table wider than the console by wrapping or truncating cells (``sharpe_ra...``,
``equal_wei...``, a CI over three lines). :func:`print_fitted` instead keeps every cell on one line
and the policy names whole, and when the columns do not fit the console's width it prints them in
several tables, each repeating the policy column. The width is rich's own measurement of the table
(``rich.measure.Measurement``), not an estimate; the console's width honours ``COLUMNS`` in a pipe
(:func:`output_console`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

#: width of a console that writes into a pipe without ``COLUMNS`` (a log file has no edge)
PIPE_WIDTH = 160

#: terminal column labels of the metrics (the metric names stay in files and MLflow)
SHORT_LABELS = {
    "sharpe_ratio": "Sharpe",
    "annual_return": "ann. return",
    "annual_volatility": "ann. vol",
    "max_drawdown": "max DD",
    "conditional_value_at_risk": "CVaR 95%",
    "turnover_annual": "turnover/yr",
    "cost_total_usd": "costs $",
    "final_value_usd": "final $",
    "ex_ante_log_growth": "ex-ante growth",
    "sortino_ratio": "Sortino",
    "calmar_ratio": "Calmar",
    "liquidations_count": "liquidations",
}


def label(metric: str) -> str:
    """The short column label of ``metric`` (the name itself when it has none)."""
    return SHORT_LABELS.get(metric, metric)


def output_console() -> Console:
    """A console for command output: the terminal's width, else ``$COLUMNS``, else 160."""
    columns = os.environ.get("COLUMNS", "")
    if sys.stdout.isatty() or columns.isdigit():
        return Console()  # rich reads COLUMNS itself
    return Console(width=PIPE_WIDTH)


def _table(title: str | None, headers: Sequence[str], justify: Sequence[str]) -> Table:
    table = Table(title=title)
    for header, how in zip(headers, justify, strict=True):
        table.add_column(header, justify=how, no_wrap=True)  # type: ignore[arg-type]
    return table


def fitted_tables(
    title: str | None,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    console: Console,
) -> list[Table]:
    """``rows`` (first cell: the row's name) as tables no wider than ``width`` where possible.

    Columns are packed greedily in order; every table repeats the first column. A single column
    wider than ``width`` with the first one still gets a table of its own (one line per cell).
    """
    justify = ["left", *["right"] * (len(headers) - 1)]
    unbounded = console.options.update_width(10_000)  # the table's natural width, not the console's
    groups: list[list[int]] = []
    current: list[int] = []
    for j in range(1, len(headers)):
        trial = [0, *current, j]
        table = _table(title, [headers[i] for i in trial], [justify[i] for i in trial])
        for row in rows:
            table.add_row(*[row[i] for i in trial])
        fits = Measurement.get(console, unbounded, table).maximum <= width
        if current and not fits:
            groups.append(current)
            current = [j]
        else:
            current.append(j)
    if current or not groups:
        groups.append(current)
    out = []
    for k, group in enumerate(groups):
        cols = [0, *group]
        part = title if len(groups) == 1 else f"{title} ({k + 1}/{len(groups)})"
        table = _table(part, [headers[i] for i in cols], [justify[i] for i in cols])
        for row in rows:
            table.add_row(*[row[i] for i in cols])
        out.append(table)
    return out


def print_fitted(
    console: Console,
    title: str | None,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> None:
    """Print :func:`fitted_tables` at the console's width."""
    for table in fitted_tables(title, headers, rows, console.width, console):
        console.print(table)
