"""Reading config files: one YAML-mapping reader and one path resolver for every config model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config could not be loaded: the message names the key, the value and what is allowed."""


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    """The mapping in YAML file ``path``; a missing file, bad YAML or a non-mapping is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold a mapping, got {type(data).__name__}")
    return data


def resolve_config_path(name: str | Path, base: Path) -> Path:
    """A relative path is looked up next to the file naming it (``base``), then in the cwd, then the repo root."""
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    for root in (base, Path.cwd(), REPO_ROOT):
        if (root / candidate).is_file():
            return root / candidate
    return base / candidate


def format_validation_error(
    error: ValidationError, prefix: str = "", header: str = "invalid config"
) -> str:
    """Turn a pydantic error into ``header:`` then one line per problem, ``key.path = value: what is allowed``.

    A discriminated union's bad tag is reported on the tag's own key (``drift.kind = 'x': must be one
    of ...``) instead of on the whole mapping; an error with a ``key`` in its context (a renamed key,
    raised by a model validator) is reported on that key.
    """
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "") or "<root>"
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        ctx = item.get("ctx") or {}
        if item["type"] == "extra_forbidden":
            lines.append(
                f"{loc}: unknown key (value {shown}); check the spelling against the documented keys"
            )
        elif "discriminator" in ctx:  # pydantic's union_tag_* errors and custom ones alike
            lines.append(_tag_error(loc, value, ctx))
        elif "key" in ctx and isinstance(value, dict) and ctx["key"] in value:
            lines.append(f"{loc}.{ctx['key']}: {item['msg']}")
        else:
            lines.append(f"{loc} = {shown}: {item['msg']}")
    return f"{header}:\n  " + "\n  ".join(lines)


def _tag_error(loc: str, value: Any, ctx: dict[str, Any]) -> str:
    """``loc.<tag key> = <tag>: must be one of ...`` for a discriminated union's unknown or missing tag."""
    key = str(ctx["discriminator"]).strip("'")
    allowed = str(ctx.get("expected_tags", "")).replace("'", "")
    if not isinstance(value, dict):
        return f"{loc} = {value!r}: must be a mapping with {key} one of {allowed}"
    tag = repr(value[key]) if key in value else "missing"
    return f"{loc}.{key} = {tag}: must be one of {allowed}" if allowed else f"{loc}.{key} = {tag}"
