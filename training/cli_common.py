"""Pieces shared by the command modules: ``--print-config`` and printing a config as YAML.

``--print-config`` prints the fully resolved config a command would run with (defaults filled in,
``key=value`` overrides applied, sections given as file paths inlined) and exits without running.
It goes to stdout as plain YAML (no wrapping, no colour), so ``> resolved.yaml`` gives a config the
command accepts back.
"""

from __future__ import annotations

from typing import Any

import typer

PRINT_CONFIG_OPTION = typer.Option(
    False,
    "--print-config",
    help="print the resolved config (defaults and overrides applied) as YAML and exit",
)


def echo_config(config: Any) -> None:
    """Print a pydantic config (or a plain mapping) as YAML on stdout."""
    import yaml

    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
