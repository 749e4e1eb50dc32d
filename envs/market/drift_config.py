"""The drift convention of the synthetic market: ``synthetic.drift`` (see docs/market.md, "Drift convention").

One job: the validated config of how the generator sets each step's expected return. ``drift`` is a
union discriminated on ``kind``:

* ``{kind: arithmetic, simple_return_per_year: R}`` (the default, also when ``kind`` is omitted): every
  asset's expected simple return per step is ``(1 + R)^(dt/365) - 1`` in every regime and at every
  conditional variance.
* ``{kind: sharpe, sharpe_per_year: S}``: ``E[P_{t+1}/P_t] = exp(S sqrt(dt/365) s_t)`` with ``s_t`` the
  step's diffusive vol (risk-free rate 0): the expected excess return is proportional to the vol.
* ``{kind: log, log_return_per_year: {calm, bull, crash}}``: the expected LOG return per regime, common
  to all assets (the convention before the drift became explicit, kept for comparison).

The formulas that turn these into each step's log drift are in :mod:`defialloc.envs.market.synthetic_model`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from defialloc.envs.market.regime_values import REGIME_NAMES, RegimeValues, StrictModel

DRIFT_KINDS: tuple[str, ...] = ("arithmetic", "log", "sharpe")


class ArithmeticDrift(StrictModel):
    """The same expected SIMPLE return ``R`` per year for every asset, regime and conditional variance."""

    kind: Literal["arithmetic"] = "arithmetic"
    simple_return_per_year: float = Field(
        default=0.0, gt=-1.0, allow_inf_nan=False, description="R: expected simple return per year"
    )


class SharpeDrift(StrictModel):
    """Expected excess simple return proportional to the step's diffusive vol, Sharpe ``S`` per year."""

    kind: Literal["sharpe"] = "sharpe"
    sharpe_per_year: float = Field(allow_inf_nan=False, description="S: annualized Sharpe ratio")


class LogDrift(StrictModel):
    """Expected LOG return per year in each regime, common to all assets (jumps compensated in log
    terms). The expected simple return then rises with the variance (the crash regime, the most
    volatile assets): kept for comparison, not as a default."""

    kind: Literal["log"] = "log"
    log_return_per_year: RegimeValues


def _drift_kind(value: Any) -> Any:
    """The tag of a drift mapping or model; a mapping without ``kind`` is arithmetic (the default)."""
    if isinstance(value, dict):
        return value.get("kind", "arithmetic")
    return getattr(value, "kind", None)


# A wrong kind fails with this message (pydantic's own names the discriminator function, not the
# key); envs.yaml_io.format_validation_error reads the context to print ``...drift.kind = 'x'``.
DriftParams = Annotated[
    Annotated[ArithmeticDrift, Tag("arithmetic")]
    | Annotated[LogDrift, Tag("log")]
    | Annotated[SharpeDrift, Tag("sharpe")],
    Discriminator(
        _drift_kind,
        custom_error_type="kind_invalid",
        custom_error_message="drift must be a mapping whose kind is one of 'arithmetic' (the "
        "default when kind is omitted), 'log', 'sharpe'",
        custom_error_context={"discriminator": "kind", "expected_tags": ", ".join(DRIFT_KINDS)},
    ),
]


def old_drift_key_error(value: Any) -> PydanticCustomError:
    """The error for a config that still writes ``drift_log_per_year`` (replaced by ``drift``)."""
    example = "{calm: ..., bull: ..., crash: ...}"
    if isinstance(value, dict) and set(value) == set(REGIME_NAMES):
        example = "{" + ", ".join(f"{k}: {value[k]}" for k in REGIME_NAMES) + "}"
    return PydanticCustomError(
        "renamed_key",
        "drift_log_per_year was replaced by drift, an explicit drift convention: write "
        f"drift: {{kind: log, log_return_per_year: {example}}} to keep the old behaviour (a log "
        "return common to all assets), or drift: {kind: arithmetic, simple_return_per_year: R} "
        "(the default: the same expected simple return in every regime; docs/market.md, "
        "'Drift convention')",
        {"key": "drift_log_per_year"},
    )
