"""``defialloc evaluate``, ``defialloc compare`` and ``defialloc bench baselines`` (registered by training/cli.py).

Heavy imports (numpy, mlflow, matplotlib) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from defialloc.evaluation.table_fit import label, output_console, print_fitted
from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config
from defialloc.training.kill_switch_options import (
    KILL_SWITCH_OPTION,
    KILL_SWITCH_PARAM_OPTION,
    describe_kill_switch,
    resolve_kill_switch,
)

# piped output (CI logs) gets a wide table instead of rich's 80-column default
console = output_console()  # the terminal width, else $COLUMNS, else 160

OVERRIDES_ARG = typer.Argument(None, help="section.key=value overrides, e.g. env.horizon=90")
CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="simulation config YAML (default: configs/default.yaml)"
)
EVAL_CONFIG_OPTION = typer.Option(
    None,
    "--eval-config",
    help="evaluation YAML: policies, their parameters, periods (default: configs/evaluation/default.yaml)",
)


def _fail(message: str) -> None:
    console.print(f"[red]{message}[/red]")
    raise typer.Exit(code=2)


def evaluate(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path = CONFIG_OPTION,
    eval_config: Path = EVAL_CONFIG_OPTION,
    policies: str = typer.Option(
        None, help="comma-separated baselines (default: policies_to_run of the eval config)"
    ),
    scenarios: int = typer.Option(
        None, min=1, help="number of scenarios K (default: the eval config's)"
    ),
    scenario_set: str = typer.Option(None, help="test | validation (default: the eval config's)"),
    period: str = typer.Option(
        None, help="replay a named real period instead, e.g. heldout_2023 or dev_2022"
    ),
    workers: int = typer.Option(None, min=1, help="processes (default: the eval config's)"),
    experiment: str = typer.Option(
        None,
        help="MLflow experiment (default: the eval config's, else $MLFLOW_EXPERIMENT_NAME, else defialloc)",
    ),
    run_name: str = typer.Option(None, help="MLflow run name"),
    track: bool = typer.Option(
        True, help="log the run to MLflow ($MLFLOW_TRACKING_URI or ./mlflow.db)"
    ),
    progress: bool = typer.Option(True, help="show a progress bar"),
    kill_switch: bool = KILL_SWITCH_OPTION,
    kill_switch_param: list[str] = KILL_SWITCH_PARAM_OPTION,
    cache: bool = typer.Option(
        True,
        "--cache/--no-cache",
        help="reuse baseline backtests already run on the same scenarios (evaluation/backtest_cache.py)",
    ),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Backtest baselines on K paired scenarios (or a real period) and log the run to MLflow.

    ``--kill-switch`` runs every policy behind the kill-switch wrapper (parameters: the eval
    config's ``kill_switch:`` section, then ``--kill-switch-param``); they are logged with the run.
    """
    from defialloc.agents.baselines.policies import UPPER_REFERENCES
    from defialloc.envs.config import ConfigError, load_config, parse_cli_overrides
    from defialloc.envs.seeds import scenario_seeds
    from defialloc.evaluation.backtest import (
        load_evaluation_config,
        resolve_period,
        run_backtest,
        run_period_backtest,
    )

    try:
        cfg = load_config(config, parse_cli_overrides(overrides or []))
        ev = load_evaluation_config(eval_config)
        overlay = resolve_kill_switch(kill_switch, kill_switch_param, ev.kill_switch)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    if print_config:  # both configs: the simulation and the evaluation settings
        echo_config(
            {"simulation": cfg.model_dump(mode="json"), "evaluation": ev.model_dump(mode="json")}
        )
        return
    if overlay is not None:
        console.print(describe_kill_switch(overlay))
    names = [
        p.strip() for p in (policies.split(",") if policies else ev.policies_to_run) if p.strip()
    ]
    if not policies:  # the defaults: only those the config (and the market) can run
        from defialloc.agents.baselines.policies import baselines_for

        names, dropped = baselines_for(cfg, names, synthetic_truth=None if not period else False)
        for name, why in dropped.items():
            console.print(f"[dim]{name} left out: {why}[/dim]")
    params_path = str(eval_config) if eval_config else None
    workers = workers or ev.workers
    try:
        if period:
            spec = resolve_period(period, ev)
            refused = [n for n in names if n in UPPER_REFERENCES]
            if refused:
                names = [n for n in names if n not in UPPER_REFERENCES]
                console.print(
                    f"[yellow]{', '.join(refused)} left out: upper references need the synthetic "
                    "market's true state and parameters, and a replayed period has none[/yellow]"
                )
                if not names:
                    _fail("no policy left to evaluate on the replayed period")
            if spec.held_out:
                console.print(
                    f"[yellow]{period} is HELD-OUT data: report it, never tune or select on it[/yellow]"
                )
            result = run_period_backtest(
                cfg,
                names,
                spec.start,
                spec.end,
                name=period,
                workers=workers,
                progress=progress,
                params_path=params_path,
                kill_switch=overlay,
                cache=cache,
            )
        else:
            kind = scenario_set or ev.scenario_set
            seeds = scenario_seeds(kind, scenarios or ev.scenarios)
            result = run_backtest(
                cfg,
                names,
                seeds,
                workers=workers,
                progress=progress,
                params_path=params_path,
                scenario_set=kind,
                kill_switch=overlay,
                cache=cache,
            )
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    print_metrics_summary(result)
    if track:
        from defialloc.agents.mlflow_store import default_experiment, display_tracking_uri
        from defialloc.evaluation.tracking import log_backtest

        name = experiment or ev.experiment or default_experiment()
        run_id = log_backtest(result, name, run_name, result.config)
        console.print(f"logged run {run_id} to experiment {name!r} at {display_tracking_uri()}")


def print_metrics_summary(result) -> None:  # noqa: ANN001 (BacktestResult, imported lazily)
    """Mean across scenarios of the headline metrics, one row per policy."""
    import numpy as np

    table = result.metrics_table()
    cols = [
        "sharpe_ratio",
        "annual_return",
        "annual_volatility",
        "max_drawdown",
        "conditional_value_at_risk",
        "turnover_annual",
        "cost_total_usd",
        "final_value_usd",
    ]
    if "ex_ante_log_growth" in table.columns:  # synthetic markets: the ex-ante growth per step
        cols.insert(1, "ex_ante_log_growth")
    k = int(table.groupby("policy").size().max())
    rows = []
    means = table.groupby("policy", sort=False)[cols].mean()
    for policy, row in means.iterrows():
        cells = []
        for c in cols:
            v = float(row[c])
            if c in (
                "annual_return",
                "annual_volatility",
                "max_drawdown",
                "conditional_value_at_risk",
            ):
                cells.append(f"{100 * v:.1f}%")
            elif c.endswith("_usd"):
                cells.append(f"{v:,.0f}")
            elif c == "ex_ante_log_growth":
                cells.append(f"{1e4 * v:.1f} bp")
            else:
                cells.append(f"{v:.2f}")
        rows.append([str(policy), *cells])
    title = f"{result.scenario_set}: mean over {k} scenario(s), {result.config.env.horizon} steps"
    print_fitted(console, title, ["policy", *map(label, cols)], rows)
    if result.ex_ante_ceiling is not None:
        g = float(np.mean(result.ex_ante_ceiling))
        console.print(
            f"true ceiling (growth-optimal on the true state, cost-free; bounds ex_ante_log_growth): "
            f"{1e4 * g:.1f} bp per step, {g * result.periods_per_year:.3f} a year (log)"
        )
    for policy, diag in result.diagnostics.items():
        if diag.get("ex_ante_outside_steps"):
            console.print(
                f"{policy}: {diag['ex_ante_outside_steps']} live step(s) with post-trade exposures "
                "outside the ceiling's constraints (costs, frozen perps, drift): not bounded there"
            )
        fallbacks = {
            k.removeprefix("fallback_"): v for k, v in diag.items() if k.startswith("fallback_")
        }
        if fallbacks:
            detail = ", ".join(f"{n} to {kind.replace('_', ' ')}" for kind, n in fallbacks.items())
            console.print(f"{policy}: {diag['solves']} optimizer solves, fell back: {detail}")


def compare_cmd(
    experiment: str = typer.Option(
        None, help="MLflow experiment to read (default: $MLFLOW_EXPERIMENT_NAME, else defialloc)"
    ),
    out: Path = typer.Option(
        None, help="write a report: .md (plots beside it) or .html (plots embedded)"
    ),
    metric: str = typer.Option("sharpe_ratio", help="primary metric for P(improvement)"),
    n_boot: int = typer.Option(2000, min=100, help="bootstrap resamples"),
) -> None:
    """Compare the evaluation runs of an experiment: means, IQM, 95% CIs, P(improvement), PSR/DSR."""
    from defialloc.agents.mlflow_store import default_experiment
    from defialloc.evaluation.report import compare

    try:
        compare(
            experiment or default_experiment(),
            out,
            metric=metric,
            n_boot=n_boot,
            console=output_console(),  # $COLUMNS as it is now
        )
    except ValueError as exc:
        _fail(str(exc))


BENCH_CONFIGS = ("configs/default.yaml", "configs/leverage.yaml")


def bench_baselines_cmd(
    configs: list[Path] = typer.Option(
        None,
        "--config",
        "-c",
        help="simulation config(s) to backtest on, repeatable (default: configs/default.yaml and "
        "configs/leverage.yaml)",
    ),
    scenarios: int = typer.Option(64, min=1, help="test scenarios per backtest"),
    horizon: int = typer.Option(60, min=1, help="backtest steps"),
    repeats: int = typer.Option(3, min=1, help="interleaved rounds; each policy's best is kept"),
    policies: str = typer.Option(None, help="comma-separated baselines (default: all)"),
    solvers: bool = typer.Option(
        False, "--solvers", help="also time the optimizers against PyPortfolioOpt (sub-report)"
    ),
    n_assets: int = typer.Option(10, min=2, help="--solvers: assets per problem"),
    n_problems: int = typer.Option(200, min=1, help="--solvers: random problems per method"),
    seed: int = typer.Option(0, help="--solvers: problem seed"),
    max_weight: float = typer.Option(None, help="--solvers: per-asset cap (both libraries)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON line"),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Backtest steps/s of every baseline vs equal weight on the same scenarios (goal: >= 1/5),
    spot and leveraged; with --solvers also our optimizers vs PyPortfolioOpt."""
    from defialloc.envs.config import ConfigError
    from defialloc.evaluation.bench_backtests import bench_backtests, print_backtest_bench

    names = [p.strip() for p in policies.split(",") if p.strip()] if policies else None
    if print_config:  # one resolved simulation config per --config
        from defialloc.envs.config import load_config

        try:
            paths = configs or [Path(c) for c in BENCH_CONFIGS]
            echo_config({str(p): load_config(p).model_dump(mode="json") for p in paths})
        except ConfigError as exc:
            _fail(str(exc))
        return
    backtests = {}
    try:
        for path in configs or [Path(c) for c in BENCH_CONFIGS]:
            backtests[str(path)] = bench_backtests(
                path, scenarios=scenarios, horizon=horizon, repeats=repeats, policies=names
            )
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    solver_result = None
    if solvers:
        from defialloc.agents.baselines.bench import bench_baselines

        solver_result = bench_baselines(
            n_assets=n_assets, n_problems=n_problems, seed=seed, max_weight=max_weight
        )
    if as_json:
        print(json.dumps({"backtests": backtests, "solvers": solver_result}))
        return
    for path, result in backtests.items():
        print_backtest_bench(result, title=path)
    if solver_result is not None:
        from defialloc.agents.baselines.bench import print_bench_table

        print_bench_table(solver_result)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``evaluate``, ``compare`` and ``bench baselines`` to the CLI."""
    app.command("evaluate")(evaluate)
    app.command("compare")(compare_cmd)
    bench_app.command("baselines")(bench_baselines_cmd)
