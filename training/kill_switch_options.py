"""``--kill-switch`` and ``--kill-switch-param KEY=VALUE``: the policy-side kill-switch on the CLI.

Shared by ``defialloc evaluate``, ``simulate`` and ``paper``. The kill-switch
(:class:`defialloc.agents.kill_switch_policy.KillSwitchPolicy`) is off unless asked for; ``--kill-switch``
turns it on with the defaults of :class:`defialloc.envs.kill_switch.KillSwitchConfig` (or the evaluation
YAML's ``kill_switch:`` section), and each ``--kill-switch-param`` overrides one parameter.
Heavy imports stay inside the functions so ``--help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from defialloc.envs.kill_switch import KillSwitchConfig

KILL_SWITCH_OPTION = typer.Option(
    None,
    "--kill-switch/--no-kill-switch",
    help="run the policy behind the kill-switch (drawdown / health-factor override to all cash); "
    "off by default",
)
KILL_SWITCH_PARAM_OPTION = typer.Option(
    None,
    "--kill-switch-param",
    help="KEY=VALUE kill-switch parameter (repeatable): max_drawdown, min_health_factor, "
    "cooldown_steps, reset_peak_after_cooldown",
)


def _allowed(key: str) -> str:
    """What ``key`` accepts, from the config's own field constraints (e.g. ``0 < max_drawdown < 1``)."""
    from defialloc.envs.kill_switch import KillSwitchConfig

    info = KillSwitchConfig.model_fields[key]
    if info.annotation is bool:
        return "true or false"
    low = high = ""
    for bound in info.metadata:
        if getattr(bound, "gt", None) is not None:
            low = f"{bound.gt} < "
        if getattr(bound, "ge", None) is not None:
            low = f"{bound.ge} <= "
        if getattr(bound, "lt", None) is not None:
            high = f" < {bound.lt}"
        if getattr(bound, "le", None) is not None:
            high = f" <= {bound.le}"
    kind = "an integer" if info.annotation is int else "a number"
    return f"{kind}, {low}{key}{high}"


def resolve_kill_switch(
    enabled: bool | None,
    params: list[str] | None,
    base: KillSwitchConfig | None = None,
) -> KillSwitchConfig | None:
    """The kill-switch a command runs with, or None when off.

    Args:
        enabled: ``--kill-switch`` (True), ``--no-kill-switch`` (False) or neither (None: as
            ``base.enabled``, off without a base).
        params: ``KEY=VALUE`` strings, applied over ``base`` (default: the config's defaults).
        base: the parameters to start from (e.g. the evaluation YAML's ``kill_switch:`` section).

    Raises:
        ValueError: a malformed, unknown, repeated or out-of-range parameter (naming the key and
            what it accepts), or parameters for a kill-switch that is off.
    """
    from pydantic import ValidationError

    from defialloc.agents.kill_switch_policy import KILL_SWITCH_KEYS
    from defialloc.envs.kill_switch import KillSwitchConfig

    base = base or KillSwitchConfig()
    on = base.enabled if enabled is None else enabled
    keys = ", ".join(KILL_SWITCH_KEYS)
    updates: dict[str, str] = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(
                f"--kill-switch-param {item!r}: expected KEY=VALUE with KEY one of {keys}"
            )
        if key == "enabled":
            raise ValueError(
                "--kill-switch-param enabled=...: use --kill-switch / --no-kill-switch to turn it "
                f"on or off; parameters: {keys}"
            )
        if key not in KILL_SWITCH_KEYS:
            raise ValueError(
                f"--kill-switch-param {item}: unknown key {key!r}; allowed keys: {keys}"
            )
        if key in updates:
            raise ValueError(f"--kill-switch-param {key} is given twice ({updates[key]}, {value})")
        updates[key] = value
    if not on:
        if updates:
            raise ValueError(
                "--kill-switch-param needs --kill-switch (the kill-switch is off by default)"
            )
        return None
    try:
        return KillSwitchConfig.model_validate({**base.model_dump(), **updates, "enabled": True})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            shown = updates.get(key, getattr(base, key, None))
            allowed = _allowed(key) if key in KILL_SWITCH_KEYS else keys
            problems.append(f"{key}={shown}: must be {allowed} ({err['msg']})")
        raise ValueError("bad kill-switch parameter: " + "; ".join(problems)) from None


def describe_kill_switch(config: KillSwitchConfig | None) -> str:
    """One line for the terminal: ``kill-switch: on (max_drawdown=0.35, ...)`` or ``off``."""
    if config is None or not config.enabled:
        return "kill-switch: off"
    from defialloc.agents.kill_switch_policy import KILL_SWITCH_KEYS

    values = config.model_dump(mode="json")
    shown = ", ".join(f"{k}={str(values[k]).lower()}" for k in KILL_SWITCH_KEYS)
    return f"kill-switch: on, policy wrapper ({shown})"
