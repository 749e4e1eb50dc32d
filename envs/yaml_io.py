"""Reading config files: one YAML-mapping reader and one path resolver for every config model."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

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
            lines.append(f"{loc}: unknown key (value {shown}); {_key_hint(error, item['loc'])}")
        elif "discriminator" in ctx:  # pydantic's union_tag_* errors and custom ones alike
            lines.append(_tag_error(loc, value, ctx))
        elif "key" in ctx and isinstance(value, dict) and ctx["key"] in value:
            lines.append(f"{loc}.{ctx['key']}: {item['msg']}")
        else:
            lines.append(f"{loc} = {shown}: {item['msg']}")
    return f"{header}:\n  " + "\n  ".join(lines)


def _key_hint(error: ValidationError, loc: tuple[Any, ...]) -> str:
    """``did you mean 'horizon'? keys here: ...`` for an unknown key at ``loc`` (difflib's closest
    matches among the keys the model accepts at that place)."""
    keys = sorted(allowed_keys(error.title, loc[:-1]))
    if not keys:
        return "check the spelling against the documented keys"
    close = difflib.get_close_matches(str(loc[-1]), keys, n=2, cutoff=0.6)
    shown = ", ".join(keys) if len(keys) <= 15 else ", ".join(keys[:15]) + ", ..."
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}? (keys here: {shown})"
    return f"keys here: {shown}"


def _model_classes(name: str) -> list[type[BaseModel]]:
    """Every pydantic model class called ``name`` (the title of a ValidationError)."""
    found, stack = [], list(BaseModel.__subclasses__())
    seen: set[type] = set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if cls.__name__ == name:
            found.append(cls)
    return found


def _members(annotation: Any) -> list[Any]:
    """The types an annotation stands for: Optional/Union members, Annotated's inner type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _step(annotation: Any, part: Any) -> list[Any]:
    """The annotations reached from ``annotation`` by one location part (field, key, index, tag)."""
    out: list[Any] = []
    for member in _members(annotation):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get(str(part))
            if field is not None:
                out.append(field.annotation)
            elif any(part in typing.get_args(f.annotation) for f in member.model_fields.values()):
                out.append(member)  # a discriminated union's tag in the location
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
            out.append(args[0])
        elif origin is dict and len(args) == 2:
            out.append(args[1])
    return out


def allowed_keys(model_name: str, loc: tuple[Any, ...]) -> set[str]:
    """Field names (and aliases) a model called ``model_name`` accepts at location ``loc``."""
    current: list[Any] = list(_model_classes(model_name))
    for part in loc:
        current = [nxt for ann in current for nxt in _step(ann, part)]
    keys: set[str] = set()
    for ann in current:
        for member in _members(ann):
            if isinstance(member, type) and issubclass(member, BaseModel):
                for name, field in member.model_fields.items():
                    keys.add(field.alias or name)
    return keys


def _tag_error(loc: str, value: Any, ctx: dict[str, Any]) -> str:
    """``loc.<tag key> = <tag>: must be one of ...`` for a discriminated union's unknown or missing tag."""
    key = str(ctx["discriminator"]).strip("'")
    allowed = str(ctx.get("expected_tags", "")).replace("'", "")
    if not isinstance(value, dict):
        return f"{loc} = {value!r}: must be a mapping with {key} one of {allowed}"
    tag = repr(value[key]) if key in value else "missing"
    return f"{loc}.{key} = {tag}: must be one of {allowed}" if allowed else f"{loc}.{key} = {tag}"
