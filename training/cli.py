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


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        console.print(f"[red]--{name}={text!r} must be comma-separated positive integers[/red]")
        raise typer.Exit(code=2)
    return values


@bench_app.command("compile")
def bench_compile_cmd(
    config: Path = typer.Option(
        Path("configs/options.yaml"), "--config", "-c", help="the config whose kernels compile"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Seconds to import the compiled step, compile its serial and threaded kernels on an empty numba
    cache, and load them from the cache (two fresh processes; envs/bench.py)."""
    from defialloc.envs.bench import bench_compile

    if not config.exists():
        console.print(f"[red]--config={str(config)!r}: no such file[/red]")
        raise typer.Exit(code=2)
    result = bench_compile(str(config))
    if as_json:
        print(json.dumps(result))
        return
    for run, times in result.items():
        typer.echo(
            f"{run}: import {times['import_s']:.1f} s, first single-env step "
            f"{times['first_single_step_s']:.1f} s, first threaded step "
            f"{times['first_parallel_step_s']:.1f} s"
        )


@bench_app.command("env")
def bench_env_cmd(
    overrides: list[str] = OVERRIDES_ARG,
    config: Path = typer.Option(
        None, "--config", "-c", help="bench this simulation config only (default: the grid)"
    ),
    markets: str = typer.Option(
        "spot,all_protocols",
        help="grid markets: spot and/or all_protocols (lending, perps, cascades, options)",
    ),
    assets: str = typer.Option("5,10,15", help="grid asset counts (of the 15-asset bench market)"),
    envs: str = typer.Option("1,64,256,1024", help="batch sizes of the batched env"),
    simulator: str = typer.Option(
        "both", help="compiled (the runtime step), numpy (the reference) or both"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON line"),
    quick: bool = typer.Option(False, help="fewer steps (smoke run)"),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Env-steps/s of the single env and of the batched env, and memory per env, for the compiled
    step and the numpy reference (envs/bench.py)."""
    from defialloc.envs.bench import MARKETS, SIMULATORS, bench_config, bench_grid

    sims = list(SIMULATORS) if simulator == "both" else [simulator]
    if not set(sims) <= set(SIMULATORS):
        console.print(f"[red]--simulator={simulator!r} must be compiled, numpy or both[/red]")
        raise typer.Exit(code=2)
    grid_markets = [m.strip() for m in markets.split(",") if m.strip()]
    if not grid_markets or not set(grid_markets) <= set(MARKETS):
        console.print(f"[red]--markets={markets!r} must be a subset of {','.join(MARKETS)}[/red]")
        raise typer.Exit(code=2)
    n_envs = _int_list(envs, "envs")

    def progress(row: dict) -> None:
        if not as_json:
            console.print(
                f"{row.get('market', 'config')} n_assets={row['n_assets']} {row['simulator']} "
                f"{row['env']} n_envs={row['n_envs']}: {row['env_steps_per_s']:,.0f} env-steps/s",
                highlight=False,
            )

    if config is not None or overrides:
        cfg = _load(config, overrides)
        if print_config:
            echo_config(cfg)
            return
        rows = bench_config(cfg, n_envs=n_envs, simulators=sims, quick=quick, on_row=progress)
        for row in rows:
            row["market"] = str(config or "configs/default.yaml")
    else:
        if print_config:
            console.print("[red]--print-config needs --config[/red]")
            raise typer.Exit(code=2)
        rows = bench_grid(
            markets=grid_markets,
            n_assets=_int_list(assets, "assets"),
            n_envs=n_envs,
            simulators=sims,
            quick=quick,
            on_row=progress,
        )
    if as_json:
        print(json.dumps(rows))
        return
    console.print(_bench_table(rows, sims))


def _bench_table(rows: list[dict], sims: list[str]) -> Table:
    """One row per (market, assets, env, n_envs); a column per simulator, the speed-up and MiB/env."""
    table = Table(title="env throughput (uniform random actions, resets included)")
    for name in ("market", "assets", "env", "n_envs"):
        table.add_column(name, justify="right" if name in ("assets", "n_envs") else "left")
    for sim in sims:
        table.add_column(f"{sim} env-steps/s", justify="right")
    if len(sims) == 2:
        table.add_column("speed-up", justify="right")
    for sim in sims:
        table.add_column(f"{sim} MiB/env", justify="right")
    keyed: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["market"], row["n_assets"], row["env"], row["n_envs"])
        keyed.setdefault(key, {})[row["simulator"]] = row
    for (market, k, env, n), by_sim in keyed.items():
        speeds = [by_sim[s]["env_steps_per_s"] if s in by_sim else None for s in sims]
        cells = [f"{v:,.0f}" if v is not None else "" for v in speeds]
        if len(sims) == 2:
            ok = None not in speeds and speeds[1]
            cells.append(f"{speeds[0] / speeds[1]:.1f}x" if ok else "")
        for s in sims:
            mib = by_sim.get(s, {}).get("mib_per_env")
            cells.append("" if mib is None else f"{mib:.3f}")
        table.add_row(str(market), str(k), env, str(n), *cells)
    return table


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
