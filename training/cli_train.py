"""``defialloc train`` and ``defialloc bench train`` (registered by training/cli.py).

Heavy imports (torch, SB3, MLflow) happen inside the commands so ``defialloc --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config

console = Console()

OVERRIDES_ARG = typer.Argument(
    None,
    help="key=value overrides, e.g. total_timesteps=100000 ppo.learning_rate=1e-4 env.horizon=90",
)
CONFIG_OPT = typer.Option(
    None, "--config", "-c", help="training config YAML, e.g. configs/train/ppo.yaml"
)
DEVICE_OPT = typer.Option(
    None, "--device", help="auto (CUDA if present) | cpu | cuda; default: the config's"
)
RESUME_OPT = typer.Option(
    None, "--resume", help="continue this MLflow run id from its last checkpoint"
)
PROGRESS_OPT = typer.Option(True, "--progress/--no-progress", help="progress bar")
FINAL_EVAL_OPT = typer.Option(
    True, "--final-eval/--no-final-eval", help="backtest vs the baselines at the end"
)
CACHE_OPT = typer.Option(
    True,
    "--cache/--no-cache",
    help="reuse baseline backtests already run on the same scenarios (evaluation/backtest_cache.py)",
)


def _overrides(items: list[str] | None, device: str | None) -> dict[str, Any]:
    from defialloc.envs.config import parse_cli_overrides

    overrides = parse_cli_overrides(items or [])
    if device is not None:
        overrides["device"] = device
    return overrides


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(code=2)


def train_command(
    overrides: list[str] | None = OVERRIDES_ARG,
    config: Path | None = CONFIG_OPT,
    device: str | None = DEVICE_OPT,
    resume: str | None = RESUME_OPT,
    progress: bool = PROGRESS_OPT,
    final_eval: bool = FINAL_EVAL_OPT,
    cache: bool = CACHE_OPT,
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Train a PPO or SAC agent from a config, tracked in MLflow; evaluate it against the baselines."""
    from defialloc.envs.config import ConfigError
    from defialloc.training.config import load_train_config
    from defialloc.training.train import RunAlreadyFinished, load_resume_config, train

    if (config is None) == (resume is None):
        raise _fail("give exactly one of --config (a new run) or --resume RUN_ID (continue a run)")
    try:
        items = _overrides(overrides, device)
        cfg = load_resume_config(resume, items) if resume else load_train_config(config, items)
    except RunAlreadyFinished as exc:  # says so and leaves the finished run as it is
        console.print(str(exc))
        raise typer.Exit(code=0) from None
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if print_config:
        echo_config(cfg)
        return
    console.rule(
        f"training {cfg.algo.upper()} for {cfg.total_timesteps:,} env steps ({cfg.n_envs} envs)"
    )
    try:
        result = train(
            cfg,
            resume_run_id=resume,
            progress=progress,
            final_evaluation=final_eval and cfg.eval.final,
            cache=cache,
        )
    except ValueError as exc:  # bad data or settings found while running (the message names them)
        raise _fail(str(exc)) from None
    table = Table(title=f"{cfg.algo.upper()} run {result.run_id}", show_header=False)
    table.add_row("status", "completed" if result.completed else "interrupted (resumable)")
    table.add_row("env steps", f"{result.num_timesteps:,}")
    table.add_row("throughput (this session)", f"{result.env_steps_per_s:,.0f} env-steps/s")
    if result.best_metric is not None:
        table.add_row(
            f"best validation {cfg.eval.metric}",
            f"{result.best_metric:+.4f} at step {result.best_step:,}",
        )
    if result.model_version is not None:
        table.add_row("registered model", f"{cfg.registered_name} v{result.model_version}")
        table.add_row(f"@{cfg.mlflow.alias}", result.registration_note or "")
    for kind, run_id in result.evaluation_run_ids.items():
        table.add_row(f"evaluation run ({kind})", run_id)
    table.add_row("files", str(result.run_dir))
    console.print(table)
    if not result.completed:
        console.print(f"resume with: defialloc train --resume {result.run_id}")
        raise typer.Exit(code=130)
    if result.evaluation_run_ids:
        console.print(f"agent vs baselines: defialloc compare --experiment {cfg.mlflow.experiment}")


def bench_train_command(
    overrides: list[str] | None = OVERRIDES_ARG,
    ppo_config: Path = typer.Option(Path("configs/train/ppo.yaml"), help="PPO training config"),
    sac_config: Path = typer.Option(Path("configs/train/sac.yaml"), help="SAC training config"),
    steps: int = typer.Option(30_000, min=1_000, help="PPO env steps (SAC runs a third of them)"),
    algo: str = typer.Option("both", help="ppo | sac | both"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON line"),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """PPO and SAC training throughput (env-steps/s) and the share of wall time spent in the env."""
    from defialloc.envs.config import ConfigError
    from defialloc.training.bench_train import bench_train

    paths = {"ppo": str(ppo_config), "sac": str(sac_config)}
    if algo not in ("ppo", "sac", "both"):
        raise _fail(f"--algo {algo!r} must be ppo, sac or both")
    chosen = {k: v for k, v in paths.items() if algo in (k, "both")}
    if print_config:  # the training configs as bench_train resolves them (overrides applied)
        from defialloc.training.config import load_train_config

        try:
            items = _overrides(overrides, None)
            echo_config(
                {k: load_train_config(v, items).model_dump(mode="json") for k, v in chosen.items()}
            )
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        return
    try:
        result = bench_train(
            chosen, {"ppo": steps, "sac": max(steps // 3, 1_000)}, _overrides(overrides, None)
        )
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="training throughput (env steps summed over all envs)")
    for col in ("algo", "env-steps/s", "env share", "env alone/s", "envs", "net", "updates/step"):
        table.add_column(col, justify="right")
    for name, r in result.items():
        # gradient steps per env step: PPO n_epochs * (rollout / batch) per rollout of n_steps * n_envs
        ratio = r["n_epochs"] / r["batch_size"] if name == "ppo" else r["updates_per_env_step"]
        table.add_row(
            name.upper(),
            f"{r['env_steps_per_s']:,.0f}",
            f"{r['env_share']:.1%}",
            f"{r['env_only_steps_per_s']:,.0f}",
            str(r["n_envs"]),
            "x".join(map(str, r["net_arch"])),
            f"{ratio:.3g}",
        )
    console.print(table)
    console.print(
        f"torch threads: {next(iter(result.values()))['torch_threads']}. env share = wall time inside "
        "the env's reset/step_wait; the rest is the learner (forward passes, buffers, updates)."
    )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``train`` to the CLI and ``train`` to ``bench``."""
    app.command("train")(train_command)
    app.command("experiment")(experiment_command)
    app.command("curves")(curves_command)
    bench_app.command("train")(bench_train_command)


def experiment_command(
    config: Path = typer.Option(
        ..., "--config", "-c", help="experiment YAML (configs/experiments/)"
    ),
    out: Path = typer.Option(
        None, help="report file (.md or .html); default reports/<experiment>.md"
    ),
    cache: bool = CACHE_OPT,
    backend: str = typer.Option(
        "local", "--backend", help="local (this process, one run at a time) | ray (Ray Tune)"
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address (with --backend ray); default $RAY_ADDRESS"
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="runs at once with --backend ray"
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="start over instead of resuming an interrupted experiment"
    ),
    runs: list[str] = typer.Option(
        None,
        "--runs",
        help="train only the runs of this config (repeatable; as written under runs)",
    ),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Train several configs x seeds into one MLflow experiment and compare them with the baselines
    (through the sweep machinery: nested runs, resume, local or Ray backend)."""
    from rich.console import Console

    from defialloc.envs.config import ConfigError
    from defialloc.training.experiment import load_experiment, run_experiment

    try:
        if print_config:
            echo_config(load_experiment(config))
            return
        run_experiment(
            config,
            Console(),
            out=out,
            cache=cache,
            backend=backend,
            address=address,
            workers=workers,
            fresh=fresh,
            only=runs or None,
        )
    except (ConfigError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None


def curves_command(
    experiment: str = typer.Option(
        None,
        help="MLflow experiment of the training runs (default: $MLFLOW_EXPERIMENT_NAME, else defialloc)",
    ),
    out: Path = typer.Option(None, help="PNG file; default reports/<experiment>-curves.png"),
    metric: str = typer.Option("mean_log_growth", help="validation metric (val/<metric>)"),
) -> None:
    """Plot the validation learning curves of an experiment's training runs (mean over seeds)."""
    from rich.console import Console

    from defialloc.agents.mlflow_store import default_experiment
    from defialloc.evaluation.learning_curves import flattening, load_curves, write_learning_curves

    console = Console()
    experiment = experiment or default_experiment()
    path = out or Path("reports") / f"{experiment}-curves.png"
    try:
        write_learning_curves(experiment, path, metric)
        summary = flattening(load_curves(experiment, metric))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    for row in summary.itertuples():
        console.print(
            f"{row.label}: best validation at step {row[3]:,}; change over the last 30% of the "
            f"steps {row[2]:+.4f}"
        )
    console.print(f"learning curves: {path}")
