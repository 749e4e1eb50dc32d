"""``defialloc promote``: point an alias of a registered policy (``champion`` by default) at a version.

Training registers every policy version and moves ``@candidate`` only when the new version validates
better than the current candidate (``agents/registry.py``). Promotion is a person's decision: it
copies ``@candidate`` (or a chosen version) to ``@champion``, the version that is passed on
(``defialloc export --model models:/<name>@champion``, ``mlflow.pyfunc.load_model``).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def promote_command(
    name: str = typer.Argument(..., help="registered model name, e.g. defialloc-ppo"),
    version: str | None = typer.Option(
        None, "--version", help="version to promote (default: the one holding --from-alias)"
    ),
    from_alias: str = typer.Option(
        "candidate",
        "--from-alias",
        help="alias whose version is promoted when --version is not given",
    ),
    alias: str = typer.Option("champion", "--alias", help="alias to set"),
) -> None:
    """Set @champion (or --alias) on the @candidate version (or --version) of a registered policy."""
    from defialloc.agents.mlflow_store import display_tracking_uri, setup_mlflow
    from defialloc.agents.registry import SCORE_TAG, promote

    if version is not None and not version.isdigit():
        console.print(f"[red]--version {version!r} must be a version number, e.g. 3[/red]")
        raise typer.Exit(code=2)
    setup_mlflow()
    try:
        chosen = promote(name, version=version, source_alias=from_alias, alias=alias)
    except ValueError as exc:
        console.print(f"[red]{exc} (tracking URI {display_tracking_uri()})[/red]")
        raise typer.Exit(code=2) from None
    table = Table(title=f"models:/{name}@{alias} -> version {chosen.version}", show_header=False)
    table.add_row("training run", str(chosen.run_id))
    table.add_row("validation score", chosen.tags.get(SCORE_TAG, "-"))
    table.add_row("load it", f'mlflow.pyfunc.load_model("models:/{name}@{alias}")')
    table.add_row("export it", f"defialloc export --model models:/{name}@{alias} --out DIR")
    console.print(table)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``promote`` to the CLI."""
    app.command("promote")(promote_command)
