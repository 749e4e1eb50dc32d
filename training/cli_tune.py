"""``defialloc tune-baselines`` (registered by training/cli.py): baseline parameters chosen on
validation scenarios only (evaluation/tuning.py), written into the evaluation YAML."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from defialloc.evaluation.table_fit import output_console
from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config

console = output_console()  # the terminal width, else $COLUMNS, else 160

OVERRIDES_ARG = typer.Argument(None, help="section.key=value overrides, e.g. env.horizon=180")
CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="simulation config YAML (default: configs/default.yaml)"
)


def tune_baselines_cmd(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path = CONFIG_OPTION,
    scenarios: int = typer.Option(64, min=1, help="validation scenarios K (the first K seeds)"),
    baselines: str = typer.Option(
        None,
        help="comma-separated baselines (default: every feasible one with a grid that the config "
        "supports; levered_vol_target and carry need --config configs/leverage.yaml)",
    ),
    out: Path = typer.Option(
        None,
        help="evaluation YAML to read the other parameters from and write the choices into "
        "(default: configs/evaluation/default.yaml)",
    ),
    objective: str = typer.Option("sharpe", help="sharpe | log_growth (evaluation/tuning.py)"),
    workers: int = typer.Option(1, min=1, help="processes per grid"),
    write: bool = typer.Option(True, help="write the choices into --out (--no-write: print only)"),
    progress: bool = typer.Option(False, help="show a progress bar per grid"),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Grid-search baseline parameters on VALIDATION scenarios and record them in the eval YAML.

    Every grid point of a baseline runs on the same validation scenarios; the best mean objective
    wins. Test scenarios and held-out periods are never touched (asserted in code).
    """
    from defialloc.agents.baselines.policies import DEFAULT_PARAMS_PATH
    from defialloc.envs.config import ConfigError, load_config, parse_cli_overrides
    from defialloc.evaluation.tuning import tune_baselines
    from defialloc.evaluation.tuning_yaml import write_tuned_params

    path = out or DEFAULT_PARAMS_PATH
    names = [b.strip() for b in baselines.split(",") if b.strip()] if baselines else None
    label = str(config or "configs/default.yaml")
    if overrides:
        label += " " + " ".join(overrides)

    def show(result) -> None:  # noqa: ANN001 (TuningResult, imported lazily)
        console.print(
            f"{result.name}: {len(result.points)} points in {result.elapsed_s:.0f} s, best "
            f"{result.objective} {result.best_score:.3f} at {result.chosen}"
        )

    start = time.perf_counter()
    try:
        cfg = load_config(config, parse_cli_overrides(overrides or []))
        if print_config:
            echo_config(cfg)
            return
        results = tune_baselines(
            cfg,
            names,
            scenarios,
            objective=objective,
            workers=workers,
            params_path=path,
            config_label=label,
            progress=progress,
            on_result=show,
        )
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None
    elapsed = time.perf_counter() - start
    console.print(
        f"tuned {len(results)} baseline(s) on {scenarios} validation scenarios in {elapsed:.0f} s"
    )
    if write and results:
        write_tuned_params(
            path,
            {n: r.chosen for n, r in results.items()},
            {n: r.record() | {"wall_s": round(r.elapsed_s, 1)} for n, r in results.items()},
        )
        console.print(f"wrote the choices and their tuning records into {path}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``tune-baselines`` to the CLI."""
    app.command("tune-baselines")(tune_baselines_cmd)
