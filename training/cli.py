"""``defialloc`` command line. Heavy imports happen inside commands so ``--help`` stays fast."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config
from defialloc.training.kill_switch_options import (
    KILL_SWITCH_OPTION,
    KILL_SWITCH_PARAM_OPTION,
    describe_kill_switch,
    resolve_kill_switch,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# plain (click) help: rich panels print a <bool> placeholder beside every flag and box-draw
# every option; plain help lists `--progress / --no-progress` and fits any terminal width
app = typer.Typer(
    help="defialloc: RL allocation research for DeFi markets.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
bench_app = typer.Typer(
    help="Benchmarks that print measured figures.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(bench_app, name="bench")
console = Console()


@app.callback()
def _startup() -> None:
    """Process settings for every command (see envs/perf.py)."""
    from defialloc.envs.perf import tune_malloc

    tune_malloc()


CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="simulation config YAML (default: configs/default.yaml)"
)
OVERRIDES_ARG = typer.Argument(None, help="section.key=value overrides, e.g. env.horizon=90")


def _load(config: Path | None, overrides: list[str] | None):
    from defialloc.envs.config import ConfigError, load_config, parse_cli_overrides

    try:
        return load_config(config, parse_cli_overrides(overrides or []))
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None


@app.command()
def simulate(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path = CONFIG_OPTION,
    weights: str = typer.Option(
        "equal", help="fixed policy: equal | cash | BTC=0.5,ETH=0.3 (rest cash)"
    ),
    leverage: float = typer.Option(
        0.0, help="debt / equity target in [0, env.lending.max_leverage] (needs lending on)"
    ),
    hedge: float = typer.Option(
        0.0, help="perp hedge ratio of every asset in [-1, 1] (needs perps on; 1 = fully short)"
    ),
    seed: int = typer.Option(0, help="scenario seed"),
    scenarios: int = typer.Option(1, min=1, help="number of scenarios (seeds seed..seed+K-1)"),
    kill_switch: bool = KILL_SWITCH_OPTION,
    kill_switch_param: list[str] = KILL_SWITCH_PARAM_OPTION,
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Run episodes of a fixed-weight policy and print a summary (value, costs by kind, regimes)."""
    import numpy as np

    from defialloc.agents.kill_switch_policy import KillSwitchPolicy
    from defialloc.agents.policy import FixedLeveredPolicy, FixedWeightsPolicy, parse_weights
    from defialloc.evaluation.rollout import run_policy
    from defialloc.training.summary import print_episode_summary

    cfg = _load(config, overrides)
    if print_config:
        echo_config(cfg)
        return
    try:
        overlay = resolve_kill_switch(kill_switch, kill_switch_param)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None
    try:
        w = parse_weights(weights, tuple(cfg.market.assets))
    except ValueError as exc:
        console.print(f"[red]--weights: {exc}[/red]")
        raise typer.Exit(code=2) from None
    name = f"fixed:{weights}"
    policy = FixedWeightsPolicy(w, name=name)
    if leverage or hedge:
        try:
            policy = FixedLeveredPolicy(
                w,
                cfg,
                leverage=leverage,
                hedge=hedge,
                name=f"{name} lev={leverage:g} hedge={hedge:g}",
            )
        except ValueError as exc:
            console.print(f"[red]--leverage/--hedge: {exc}[/red]")
            raise typer.Exit(code=2) from None
    if overlay is not None:
        console.print(describe_kill_switch(overlay))
        policy = KillSwitchPolicy(policy, overlay, cfg)
    record = run_policy(cfg, policy, np.arange(seed, seed + scenarios))
    print_episode_summary(record, cfg, console)


@app.command()
def demo(
    cache: bool = typer.Option(
        True,
        "--cache/--no-cache",
        help="reuse baseline backtests already run on the same scenarios",
    ),
    sac: bool = typer.Option(
        False,
        "--sac",
        help="also train the small SAC (configs/train/demo_sac.yaml; a few minutes more)",
    ),
) -> None:
    """Train a small PPO in the DeFi market, backtest it against the baselines and the ceiling,
    print the table (`make demo`)."""
    from defialloc.training.demo import DEMO_CONFIGS, SAC_DEMO_CONFIG, run_demo

    run_demo(console, DEMO_CONFIGS + ((SAC_DEMO_CONFIG,) if sac else ()), cache=cache)


@bench_app.command("env")
def bench_env_cmd(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON line"),
    quick: bool = typer.Option(False, help="fewer steps (smoke run)"),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Steps/s of the single env and of the batched env at n_envs 1, 64 and 256."""
    from defialloc.envs.bench import bench_env

    cfg = _load(config, overrides)
    if print_config:
        echo_config(cfg)
        return
    result = bench_env(cfg, quick=quick)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="env throughput (uniform random actions, resets included)")
    table.add_column("env")
    table.add_column("env-steps/s", justify="right")
    table.add_row("single DeFiMarketEnv", f"{result['single_steps_per_s']:,.0f}")
    for n, v in result["batched_env_steps_per_s"].items():
        table.add_row(f"batched, n_envs={n}", f"{v:,.0f}")
    console.print(table)


@app.command()
def calibrate(
    data_dir: Path = typer.Option(Path("data/crypto-daily"), help="folder of SYMBOL-USD.csv files"),
    out: Path = typer.Option(Path("configs/market/calibrated.yaml"), help="market config to write"),
    assets: str = typer.Option("BTC,ETH,SOL,LINK,AVAX", help="comma-separated risky assets"),
    numeraire: str = typer.Option("USDC"),
    end: str = typer.Option(
        "2022-12-31", help="last date used for fitting (held-out data starts 2023-01-01)"
    ),
    allow_held_out: bool = typer.Option(
        False, help="allow end > 2022-12-31 (research hygiene: don't)"
    ),
    drift: str = typer.Option(
        "arithmetic",
        help="drift convention to fit: arithmetic (same expected simple return in every regime), "
        "log (per-regime log drift, the old convention) or sharpe (return proportional to vol)",
    ),
) -> None:
    """Fit the synthetic market (GARCH-t, regimes, correlations, jumps) to OHLCV files and write a config."""
    from defialloc.envs.market.calibrate import run_calibration

    try:
        run_calibration(
            data_dir=data_dir,
            out_path=out,
            assets=[a.strip() for a in assets.split(",")],
            numeraire=numeraire,
            end=end,
            allow_held_out=allow_held_out,
            drift=drift,
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None


def _register_subcommands() -> None:
    """Commands of later layers live in their own modules, each exposing ``register(app)``."""
    from defialloc.training import (
        cli_cascades,
        cli_evaluate,
        cli_paper,
        cli_registry,
        cli_sweep,
        cli_train,
        cli_tune,
    )

    for module in (
        cli_evaluate,
        cli_train,
        cli_paper,
        cli_registry,
        cli_cascades,
        cli_tune,
        cli_sweep,
    ):
        module.register(app, bench_app)


_register_subcommands()

if __name__ == "__main__":
    app()
