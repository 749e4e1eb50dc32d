"""``defialloc sweep`` (registered by training/cli.py): hyperparameters x seeds on Ray Tune."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config

console = Console()

BACKEND_OPT = typer.Option(
    "ray",
    "--backend",
    help="ray (Ray Tune: a local Ray, or the cluster at --address) | local (this process)",
)
ADDRESS_OPT = typer.Option(
    None,
    "--address",
    help="Ray cluster address (host:port of `ray start --head`); default $RAY_ADDRESS",
)
WORKERS_OPT = typer.Option(
    None, "--workers", min=1, help="trials at once (default: as many as the resources allow)"
)
FRESH_OPT = typer.Option(
    False,
    "--fresh",
    help="start a new sweep instead of resuming an unfinished one with the same plan",
)


def sweep_command(
    config: Path = typer.Option(..., "--config", "-c", help="sweep YAML (configs/sweeps/)"),
    overrides: list[str] | None = typer.Argument(
        None, help="key=value overrides shared by every trial, e.g. total_timesteps=50000"
    ),
    backend: str = BACKEND_OPT,
    address: str | None = ADDRESS_OPT,
    workers: int | None = WORKERS_OPT,
    fresh: bool = FRESH_OPT,
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Grid, random or Optuna search over hyperparameters x training seeds, scored on validation
    scenarios only; trials nested under the sweep's MLflow run; the best config written out."""
    from defialloc.envs.config import ConfigError, parse_cli_overrides
    from defialloc.training.sweeps.config import load_sweep
    from defialloc.training.sweeps.driver import plan_from_sweep, run_plan

    try:
        sweep, base = load_sweep(config, parse_cli_overrides(overrides or []))
        if print_config:  # the sweep file and its base training config with the shared overrides
            echo_config({"sweep": sweep.model_dump(mode="json"), "base": base.resolved()})
            return
        plan = plan_from_sweep(sweep, base)
        outcome = run_plan(
            plan,
            console,
            backend=backend,  # type: ignore[arg-type]
            address=address,
            workers=workers,
            fresh=fresh,
            output_dir=base.output_dir,
        )
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(code=2) from None
    if outcome.failed:
        raise typer.Exit(code=1)


def bench_sweep_command(
    config: Path = typer.Option(
        Path("configs/sweeps/scaling.yaml"), "--config", "-c", help="sweep YAML"
    ),
    overrides: list[str] | None = typer.Argument(None, help="key=value shared overrides"),
    workers: str = typer.Option("1,2", "--workers", help="worker counts to time, e.g. 1,2"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Wall time of a whole sweep on a local Ray with each worker count (fresh, temporary store)."""
    import json

    from rich.table import Table

    from defialloc.envs.config import ConfigError, parse_cli_overrides
    from defialloc.training.sweeps.bench import bench_sweep

    try:
        counts = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        console.print(
            f"[red]--workers {workers!r}: allowed: comma-separated integers, e.g. 1,2[/red]"
        )
        raise typer.Exit(code=2) from None
    try:
        result = bench_sweep(config, counts, parse_cli_overrides(overrides or []))
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps(result))
        return
    table = Table(
        title=f"sweep {result['sweep']}: wall time on a local Ray ({result['cpus']} CPUs, "
        f"{result['trial_cpus']} CPU per trial, {result['total_timesteps']:,} env steps per trial)"
    )
    for col in ("workers", "trials", "wall time (s)", "speed-up"):
        table.add_column(col, justify="right")
    for run in result["runs"]:
        table.add_row(
            str(run["workers"]),
            str(run["trials"]),
            f"{run['wall_s']:.1f}",
            f"{run['speedup']:.2f}x",
        )
    console.print(table)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``sweep`` and ``bench sweep`` to the CLI."""
    app.command("sweep")(sweep_command)
    bench_app.command("sweep")(bench_sweep_command)
