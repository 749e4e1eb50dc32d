"""``defialloc export``, ``defialloc paper``, ``defialloc paper-view`` and ``defialloc bench policy``.

``paper`` and ``paper-view`` import only the paper-trading runtime (onnxruntime, numpy, sqlite3,
rich, mlflow): never torch or stable-baselines3. ``export`` needs the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from defialloc.agents.mlflow_store import default_experiment
from defialloc.training.cli_common import PRINT_CONFIG_OPTION, echo_config
from defialloc.training.kill_switch_options import (
    KILL_SWITCH_OPTION,
    KILL_SWITCH_PARAM_OPTION,
    describe_kill_switch,
    resolve_kill_switch,
)

console = Console()

HELD_OUT_START = "2023-01-01"
HELD_OUT_END = "2024-04-09"


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(code=2)


def export_command(
    run_id: str | None = typer.Option(
        None, "--run-id", help="MLflow training run to export (its best model, else final)"
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="SB3 model zip to export instead of a run, or a registered model: "
        "models:/<name>@<alias> or models:/<name>/<version>",
    ),
    out: Path = typer.Option(..., "--out", help="folder to write policy.onnx and manifest.json to"),
    vecnormalize: Path | None = typer.Option(
        None,
        help="VecNormalize statistics (default: vecnormalize.npz, or a legacy vecnormalize.pkl, next to --model)",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="training or simulation config of --model (default: config.yaml next to it or one folder up)",
    ),
    algo: str | None = typer.Option(
        None, help="ppo | sac (default: from the config or the model zip)"
    ),
    which: str = typer.Option(
        "auto", help="with --run-id: best | final | auto (best if the run has one)"
    ),
    log_mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="log the export to MLflow and tag the registered version"
    ),
    experiment: str | None = typer.Option(
        None,
        help="MLflow experiment of the export run (only with --model; default: $MLFLOW_EXPERIMENT_NAME, else defialloc)",
    ),
    print_config: bool = PRINT_CONFIG_OPTION,
) -> None:
    """Export a trained policy to ONNX (normalization and the action map baked in) plus manifest.json.

    Nothing in the model files is executed: SB3 zips are loaded with every pickled entry replaced
    (agents/sb3_io.py), statistics are plain arrays, a registered model is copied as ONNX + JSON.
    """
    if (run_id is None) == (model is None):
        raise _fail("give exactly one of --run-id RUN_ID or --model PATH|models:/NAME@ALIAS")
    if which not in ("auto", "best", "final"):
        raise _fail(f"--which={which!r} must be auto, best or final")
    from defialloc.agents.export import export_policy, load_config_file, source_from_files
    from defialloc.agents.export_mlflow import log_export, source_from_run
    from defialloc.agents.onnx_policy import load_manifest
    from defialloc.envs.config import ConfigError

    registered = model is not None and model.startswith("models:/")
    try:
        if print_config and not registered and run_id is None:
            from defialloc.agents.export import find_config_next_to

            echo_config(load_config_file(config or find_config_next_to(Path(model)))[0])
            return
        if registered:
            from defialloc.agents.registry import download_registered_export, resolve_version

            version = resolve_version(model)  # type: ignore[arg-type]
            if print_config:
                echo_config(_registered_manifest(version).simulation_config)
                return
            if download_registered_export(version, out) is not None:
                manifest = load_manifest(out)
                log_mlflow = False  # it is the registered model itself: nothing new to log
            else:  # registered before exports were: the SB3 files of its training run
                manifest = export_policy(source_from_run(version.run_id, which), out)
        elif run_id is not None:
            src = source_from_run(run_id, which)
            if print_config:
                echo_config(src.config)
                return
            manifest = export_policy(src, out)
        else:
            src = source_from_files(Path(model), vecnormalize, config, algo)  # type: ignore[arg-type]
            manifest = export_policy(src, out)
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"exported {manifest.algo.upper()} policy to {out}", show_header=False)
    table.add_row("policy_id", manifest.policy_id)
    table.add_row("assets", ", ".join(manifest.asset_names) + f" (+ {manifest.numeraire})")
    table.add_row(
        "observation / action", f"{manifest.obs_dim} features -> {manifest.action_dim} actions"
    )
    table.add_row("config hash", manifest.config_hash)
    table.add_row("onnx sha256", manifest.onnx_sha256[:16] + "...")
    if log_mlflow:
        logged = log_export(out, manifest, run_id=run_id, experiment=experiment)
        table.add_row("mlflow model", logged["model_uri"])
        for name, ver in logged["attached_versions"]:
            table.add_row("attached to", f"{name} v{ver} (tags onnx_*)")
    console.print(table)


def _registered_manifest(version: Any) -> Any:
    """The manifest of a registered ONNX policy version (downloaded to a temporary folder)."""
    import tempfile

    from defialloc.agents.onnx_policy import load_manifest
    from defialloc.agents.registry import download_registered_export

    with tempfile.TemporaryDirectory() as tmp:
        if download_registered_export(version, tmp) is None:
            raise ValueError(
                f"{version.name} v{version.version} is not an ONNX policy model; use --run-id "
                f"{version.run_id} --print-config"
            )
        return load_manifest(tmp)


def _make_feed(kind: str, cfg: Any, manifest: Any, opts: dict[str, Any]):
    from defialloc.envs.market.config import load_market_config
    from defialloc.training.paper.feeds import ReplayFeed, SimulatedFeed

    market = load_market_config(opts["market_config"]) if opts["market_config"] else None
    if kind.startswith("ccxt:"):
        from defialloc.training.paper.ccxt_feed import CcxtFeed
        from defialloc.training.paper.lending_quotes import parse_constants

        if opts["start"] is None:
            raise ValueError(
                f"--feed {kind} needs --start YYYY-MM-DD (the first decision date, UTC)"
            )
        return CcxtFeed(
            cfg,
            kind.removeprefix("ccxt:"),
            start=opts["start"],
            end=opts["end"],
            quote=opts["quote"],
            gas_price_gwei=opts["gas_gwei"],
            protocol_constants=parse_constants(opts["protocol_constant"], tuple(cfg.market.assets)),
        )
    if opts["protocol_constant"]:
        raise ValueError("--protocol-constant is for live venue feeds (--feed ccxt:<exchange>)")
    if kind == "replay":
        return ReplayFeed.from_config(
            cfg,
            opts["start"] or HELD_OUT_START,
            opts["end"] or HELD_OUT_END,
            data_dir=opts["data_dir"],
            market=market,
            speed=opts["speed"],
        )
    if kind == "simulated":
        return SimulatedFeed.from_config(
            cfg, opts["seed"], opts["bars"], market=market, speed=opts["speed"]
        )
    if kind.startswith("python:"):
        import importlib

        module_name, _, attr = kind.removeprefix("python:").partition(":")
        if not attr:
            raise ValueError(f"--feed {kind!r} must look like python:package.module:factory")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # the module or something it imports is missing
            raise ValueError(
                f"--feed {kind!r}: cannot import module {module_name!r} ({exc}); it must be "
                "importable from the current folder or PYTHONPATH"
            ) from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            found = sorted(n for n in vars(module) if not n.startswith("_"))
            raise ValueError(
                f"--feed {kind!r}: module {module_name!r} has no callable {attr!r} "
                f"(it defines: {', '.join(found[:20]) or 'nothing'})"
            )
        return factory(cfg, manifest)
    raise ValueError(
        f"--feed {kind!r} must be replay, simulated, ccxt:<exchange> or python:package.module:factory"
    )


def paper_command(
    policy: Path = typer.Option(
        ..., "--policy", help="export folder (policy.onnx + manifest.json)"
    ),
    feed: str = typer.Option(
        "replay",
        "--feed",
        help="replay | simulated | ccxt:<exchange> (e.g. ccxt:binance: a real venue's closed candles, "
        "perp marks and funding) | python:package.module:factory (a Feed adapter)",
    ),
    ledger: Path = typer.Option(
        Path("paper.db"), "--ledger", help="SQLite ledger: created, or resumed when it exists"
    ),
    start: str | None = typer.Option(
        None,
        help=f"replay and ccxt: first decision date (replay default {HELD_OUT_START}, the held-out "
        "period's start; ccxt: required)",
    ),
    end: str | None = typer.Option(
        None,
        help=f"replay: last date (default {HELD_OUT_END}); ccxt: last bar (default: open-ended)",
    ),
    quote: str = typer.Option("USDT", help="ccxt: quote currency of the markets (taken as 1 USD)"),
    gas_gwei: float = typer.Option(
        30.0, help="ccxt: gas price the bars carry (gwei; a CEX has none)"
    ),
    protocol_constant: list[str] = typer.Option(
        [],
        "--protocol-constant",
        help="ccxt, levered policies: a lending rate the venue lacks, KEY=VALUE (annual fraction): "
        "borrow_rate, cash_supply_rate, supply_rate or supply_rate.<ASSET> (default: the policy's "
        "Aave snapshot at its calm-regime utilization); repeatable",
    ),
    data_dir: str | None = typer.Option(
        None, help="replay: folder of SYMBOL-USD.csv (default: the policy config's)"
    ),
    market_config: Path | None = typer.Option(
        None, help="market YAML for the feed (default: the policy's market section)"
    ),
    seed: int = typer.Option(0, min=0, help="simulated: scenario seed"),
    bars: int = typer.Option(400, min=2, help="simulated: bars in the feed (warmup included)"),
    speed: float = typer.Option(0.0, min=0.0, help="bars per second (0: as fast as possible)"),
    max_bars: int | None = typer.Option(
        None, min=1, help="stop after this many new bars (resume later)"
    ),
    log_mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="stream metrics to an MLflow run"
    ),
    experiment: str | None = typer.Option(
        None,
        help="MLflow experiment of the paper run (default: $MLFLOW_EXPERIMENT_NAME, else defialloc)",
    ),
    view: bool = typer.Option(
        True, "--view/--no-view", help="live terminal view (when stdout is a terminal)"
    ),
    history_rows: int | None = typer.Option(
        None, help="features from this many trailing bars (default: all, = backtest)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON line"),
    reference: bool = typer.Option(
        True,
        "--reference/--no-reference",
        help="backtest the policy on the feed's path (replay, simulated) when the ledger is created, "
        "to show paper equity against it",
    ),
    kill_switch: bool = KILL_SWITCH_OPTION,
    kill_switch_param: list[str] = KILL_SWITCH_PARAM_OPTION,
) -> None:
    """Paper-trade an exported policy on a feed; crash-safe: rerun the same command to resume.

    ``--kill-switch`` puts the policy behind the kill-switch wrapper (recorded in the ledger and the
    MLflow run; a ledger resumes only with the setting it was started with).
    """
    from defialloc.agents.onnx_policy import OnnxPolicy
    from defialloc.envs.config import ConfigError, load_config
    from defialloc.training.paper.runner import PaperTrader
    from defialloc.training.paper.view import LiveView, render_ledger

    opts = {"start": start, "end": end, "data_dir": data_dir, "market_config": market_config, "seed": seed,
            "bars": bars, "speed": speed, "quote": quote, "gas_gwei": gas_gwei,
            "protocol_constant": protocol_constant}  # fmt: skip
    try:
        overlay = resolve_kill_switch(kill_switch, kill_switch_param)
        onnx_policy = OnnxPolicy(policy)
        cfg = load_config(onnx_policy.manifest.simulation_config)
        the_feed = _make_feed(feed, cfg, onnx_policy.manifest, opts)
        trader = PaperTrader(
            onnx_policy,
            the_feed,
            ledger,
            mlflow_experiment=(experiment or default_experiment()) if log_mlflow else None,
            history_rows=history_rows,
            kill_switch=overlay,
            reference=reference,
        )
        trader.preflight()
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if overlay is not None and not as_json:
        console.print(describe_kill_switch(overlay))
    live = view and console.is_terminal and not as_json
    try:
        if live:
            with LiveView(ledger, console) as screen:
                trader.on_bar = screen.update
                summary = trader.run(max_bars)
        else:
            summary = trader.run(max_bars)
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped; rerun the same command to resume from {ledger}[/yellow]")
        raise typer.Exit(code=130) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        trader.close()
    if as_json:
        print(json.dumps(summary.as_dict()))
        return
    if not live and view:
        console.print(render_ledger(ledger))
    table = Table(title=f"paper trading {summary.status}", show_header=False)
    table.add_row(
        "bars",
        f"{summary.bars_written} new (from bar {summary.first_new_bar}); last bar {summary.last_bar}",
    )
    table.add_row("decisions", f"{summary.decisions}: {summary.first_time} .. {summary.last_time}")
    table.add_row(
        "value",
        f"${summary.initial_value_usd:,.2f} -> ${summary.value_usd:,.2f} ({summary.total_return:+.2%})",
    )
    table.add_row("max drawdown", f"{summary.max_drawdown:.2%}")
    table.add_row(
        "costs",
        f"fees ${summary.fees_usd:,.2f}, slippage ${summary.slippage_usd:,.2f}, gas ${summary.gas_usd:,.2f}",
    )
    if overlay is not None:
        table.add_row("kill-switch", describe_kill_switch(overlay).removeprefix("kill-switch: "))
    if summary.mlflow_run_id:
        table.add_row("mlflow run", summary.mlflow_run_id)
    console.print(table)


def paper_view_command(
    ledger: Path = typer.Option(Path("paper.db"), "--ledger", help="paper-trading ledger"),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="also write a PNG: equity vs the backtest of the same export and path (when the ledger "
        "has one), and the health factor, leverage and perp exposure of a levered policy",
    ),
) -> None:
    """Show a paper-trading ledger (equity, levered state, positions, last actions); safe while a
    paper run writes it."""
    from defialloc.training.paper.view import render_ledger

    if not ledger.is_file():
        raise _fail(f"--ledger {ledger}: file not found")
    try:
        console.print(render_ledger(ledger))
    except Exception as exc:  # sqlite3 errors for a file that is not a ledger
        raise _fail(f"--ledger {ledger}: not a paper ledger ({exc})") from None
    if plot is not None:
        from defialloc.training.paper.plots import equity_figure

        figure = equity_figure(ledger)
        if figure is None:
            raise _fail(f"--ledger {ledger} has no decision bar yet: nothing to plot")
        plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(plot, dpi=110)
        console.print(f"wrote {plot}")


def bench_policy_command(
    policy: Path = typer.Option(..., "--policy", help="export folder"),
    batch: int = typer.Option(1, min=1, help="observations per call"),
    calls: int = typer.Option(2000, min=10, help="timed calls"),
) -> None:
    """Inference latency of an exported policy with onnxruntime (1 thread)."""
    import time

    import numpy as np

    from defialloc.agents.onnx_policy import OnnxPolicy

    try:
        pol = OnnxPolicy(policy)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    obs = np.zeros((batch, pol.obs_dim), dtype=np.float32)
    for _ in range(50):
        pol.act(obs)
    start = time.perf_counter()
    for _ in range(calls):
        pol.act(obs)
    per_call_us = (time.perf_counter() - start) / calls * 1e6
    console.print(
        f"onnxruntime act(): {per_call_us:,.1f} us per call at batch {batch} ({calls} calls)"
    )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("export")(export_command)
    app.command("paper")(paper_command)
    app.command("paper-view")(paper_view_command)
    bench_app.command("policy")(bench_policy_command)
