"""``defialloc calibrate-cascades``: the liquidation cascades against documented liquidation days.

Prints, per documented episode (envs/protocols/cascade_events.py), the square-root-law target of
the extra price move and the env's modelled extra drawdown with the old and the shipped population
parameters (envs/cascade_calibration.py; method in docs/leverage.md). Imports only numpy/pandas and
the env stack, inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config

console = Console()


def _pct(x: float) -> str:
    return f"{100.0 * x:+.2f}"


def _usd(x: float) -> str:
    return f"${x / 1e9:,.1f}B" if x >= 1e9 else f"${x / 1e6:,.1f}M"


def calibrate_cascades_command(
    config: Path = typer.Option(
        Path("configs/leverage.yaml"),
        "--config",
        "-c",
        help="simulation config whose lending snapshot holds the population (its market is replaced "
        "by a replay of each episode's days)",
    ),
    sweep: str = typer.Option(
        "",
        help="also print the modelled extra drawdowns for these comma-separated values of "
        "population.collateral_share_of_depth, e.g. 0.01,0.02,0.05,0.1",
    ),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Square-root-law targets vs modelled extra drawdowns on documented liquidation days."""
    from defialloc.envs.cascade_calibration import cascade_event_table, collateral_share_sweep

    if print_config:
        from defialloc.envs.config import ConfigError, load_config

        try:
            echo_config(load_config(config))
        except ConfigError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(code=2) from None
        return
    try:
        shares = [float(v) for v in sweep.split(",") if v.strip()]
    except ValueError:
        console.print(f"[red]--sweep={sweep!r}: give comma-separated numbers in [0, 10][/red]")
        raise typer.Exit(code=2) from None
    try:
        frame = cascade_event_table(config)
        swept = collateral_share_sweep(shares, config) if shares else None
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None
    print(format_event_table(frame))
    if swept is not None:
        print(
            "\nmodelled extra drawdown by population.collateral_share_of_depth (other keys as configured)"
        )
        print(swept.map(lambda v: f"{_pct(v)} %").to_string())


def format_event_table(frame) -> str:
    """Plain-text table of :func:`defialloc.envs.cascade_calibration.cascade_event_table` (no wrapping)."""
    header = (
        "event", "days", "documented liq.", "ETH vol/day", "sigma/day", "ETH open->low",
        "sqrt-law target", "modelled old -> new", "in target",
    )  # fmt: skip
    rows = [header]
    for r in frame.itertuples():
        days = r.first_day if r.first_day == r.last_day else f"{r.first_day}..{r.last_day[5:]}"
        bound = " (lower bound)" if r.at_least else ""
        rows.append(
            (
                r.event,
                days,
                (">= " if r.at_least else "") + _usd(r.documented_usd),
                _usd(r.volume_usd),
                f"{100.0 * r.sigma_daily:.2f} %",
                _pct(r.open_to_low) + " %",
                f"{_pct(r.target_low)} .. {_pct(r.target_high)} %{bound}",
                f"{_pct(r.modelled_old)} % -> {_pct(r.modelled_new)} %",
                "yes" if r.new_in_target else "NO",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    notes = [
        "",
        "extra drawdown = low_prices_effective / low - 1 of ETH on the days (deepest), replayed "
        "through the env; target = -Y sigma sqrt(Q / V), Y = 1, V = the ETH volume (milder end) or "
        "its DEX share (deeper end); a lower-bound episode is in target when at least as deep as "
        "its milder end.",
        *(f"{r.event}: {r.covers}" for r in frame.itertuples()),
    ]
    return "\n".join(line.rstrip() for line in [*lines, *notes])


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this module's command to the CLI."""
    del bench_app
    app.command("calibrate-cascades")(calibrate_cascades_command)
