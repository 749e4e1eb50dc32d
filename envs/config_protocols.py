"""The protocol sections of the env config: lending, perps, cascades and the options venue.

Re-exported by :mod:`defialloc.envs.config` (their public home); kept here so that the config module stays small.
Every model forbids unknown keys and bounds its numbers (``defialloc.envs.config.format_validation_error``).
"""

from __future__ import annotations

from pydantic import Field

from defialloc.envs.market.regime_values import StrictModel


class LendingConfig(StrictModel):
    """Aave-v3-like lending market (see docs/env_leverage.md): borrow the numeraire against risky holdings."""

    enabled: bool = False
    params_path: str = Field(
        default="configs/protocols/aave_v3_2023-10-31.yaml",
        min_length=1,
        description="dated protocol snapshot (envs/protocols/params.py:LendingParams)",
    )
    max_leverage: float = Field(
        default=2.0,
        ge=0.0,
        le=50.0,
        description="debt / equity at the leverage action's top (a = +1)",
    )
    ltv_buffer: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="usable share of the LTV borrowing capacity for targets",
    )
    cash_earns_supply_rate: bool = Field(
        default=True,
        description=(
            "idle numeraire cash is supplied too (aUSDC) and earns the numeraire's supply rate, like "
            "the risky holdings earn theirs; false: cash earns nothing"
        ),
    )


class PerpsConfig(StrictModel):
    """Perpetual futures hedges, USDC-margined (the numeraire cash is the cross margin)."""

    enabled: bool = False
    params_path: str = Field(
        default="configs/protocols/perps.yaml",
        min_length=1,
        description="venue parameters (envs/protocols/params.py:PerpsParams)",
    )
    margin_buffer: float = Field(
        default=2.0,
        ge=1.0,
        le=20.0,
        description="cash must cover margin_buffer x the initial margin; hedges are scaled down otherwise",
    )
    gas_units_per_order: float = Field(
        default=0.0,
        ge=0.0,
        le=2_000_000.0,
        description="gas per perp asset traded (0: dYdX v4-like venue; ~350k for an on-chain GMX-like one)",
    )


class CascadesConfig(StrictModel):
    """Liquidations of a simulated borrower population selling into the agent's pools."""

    enabled: bool | None = Field(default=None, description="None: on exactly when lending is on")


class OptionsConfig(StrictModel):
    """The options venue (docs/options.md): covered calls and protective puts on the listed assets."""

    enabled: bool = False
    params_path: str = Field(
        default="configs/protocols/options.yaml",
        min_length=1,
        description="venue parameters (envs/protocols/options_params.py:OptionsParams)",
    )
