"""Lending rates for a feed whose venue has none (a centralized exchange has no Aave market).

A levered policy's bars must carry the numeraire's borrow and supply rates and the risky assets'
supply rates (``defialloc.envs.streaming_protocol``). A live feed from an exchange gets them from one of two
documented sources, recorded per field in the ledger's meta (``protocol_sources``) and the MLflow
params of the run:

- ``snapshot`` (default): the dated Aave v3 snapshot the policy was trained with
  (``env.lending.params_path``, e.g. ``configs/protocols/aave_v3_2023-10-31.yaml``): its kinked rate
  model (``defialloc.envs.protocols.lending.borrow_rate``/``supply_rate``) at the snapshot's calm-regime mean
  utilization of each reserve. A constant: the env's rates move with the regime, these do not.
- a configured constant: ``--protocol-constant borrow_rate=0.06`` (annual fraction), likewise
  ``cash_supply_rate``, ``supply_rate`` (every risky asset) or ``supply_rate.<ASSET>`` (one asset);
  a constant replaces the snapshot value of that field only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_paths import ProtocolSetup, resolve_params_path
from defialloc.envs.protocols.lending import borrow_rate, supply_rate
from defialloc.envs.streaming_protocol import check_no_rate_arbitrage

#: the keys ``--protocol-constant`` accepts (``supply_rate.<ASSET>`` too)
CONSTANT_KEYS = ("borrow_rate", "cash_supply_rate", "supply_rate")
#: the regime whose mean utilization prices the snapshot's default rates
SNAPSHOT_REGIME = "calm"


@dataclass(frozen=True)
class LendingQuotes:
    """Annual rates (fractions): numeraire ``borrow_rate`` and ``cash_supply_rate``, risky
    ``supply_rate`` ``(N,)``, and where each came from (``sources``: field -> description)."""

    borrow_rate: float
    cash_supply_rate: float
    supply_rate: np.ndarray
    sources: dict[str, str]


def parse_constants(items: list[str], asset_names: tuple[str, ...]) -> dict[str, float]:
    """``["borrow_rate=0.06", "supply_rate.BTC=0.001"]`` -> ``{key: value}``; a clear error names a
    bad item and the allowed keys."""
    allowed = [*CONSTANT_KEYS, *(f"supply_rate.{a}" for a in asset_names)]
    out: dict[str, float] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(
                f"--protocol-constant {item!r}: expected KEY=VALUE with KEY one of {', '.join(allowed)}"
            )
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"--protocol-constant {item!r}: {raw!r} is not a number (annual fraction, 0.05 = 5 %)"
            ) from None
        if not (np.isfinite(value) and 0.0 <= value <= 10.0):
            raise ValueError(
                f"--protocol-constant {item!r}: annual rates must be fractions in [0, 10] (0.05 = 5 %/yr)"
            )
        out[key] = value
    return out


def lending_quotes(
    config: SimulationConfig, asset_names: tuple[str, ...], constants: dict[str, float]
) -> LendingQuotes:
    """The rates of a policy trained on ``config``: the snapshot's, replaced by ``constants``."""
    params_path = config.env.lending.params_path
    setup = ProtocolSetup.load(asset_names, params_path, None)
    lending, reserves, debt = setup.lending, setup.reserves, setup.debt_reserve
    assert lending is not None and reserves is not None and debt is not None
    process = lending.utilization_process((SNAPSHOT_REGIME,), [lending.debt_asset, *asset_names])
    util = process.mean[0]  # (1 + N,): the debt reserve, then the assets
    params = {
        name: np.concatenate([getattr(debt, name), getattr(reserves, name)])
        for name in ("base", "slope1", "slope2", "u_optimal", "reserve_factor")
    }
    borrow = borrow_rate(
        util, params["base"], params["slope1"], params["slope2"], params["u_optimal"]
    )
    supply = supply_rate(util, borrow, params["reserve_factor"])
    where = f"{resolve_params_path(params_path).name} ({lending.snapshot_date})"

    def snapshot(what: str, u: np.ndarray) -> str:
        shown = ", ".join(f"{x:.3f}" for x in np.atleast_1d(u))
        return (
            f"Aave v3 snapshot {where}: {what} of the kinked rate model at the "
            f"{SNAPSHOT_REGIME}-regime mean utilization {shown} (constant)"
        )

    sources = {
        "borrow_rate": snapshot(f"{lending.debt_asset} borrow rate", util[:1]),
        "cash_supply_rate": snapshot(f"{lending.debt_asset} supply rate", util[:1]),
        "supply_rate": snapshot("supply rates of " + ", ".join(asset_names), util[1:]),
    }
    values = {
        "borrow_rate": float(borrow[0]),
        "cash_supply_rate": float(supply[0]),
        "supply_rate": supply[1:].astype(np.float64),
    }
    for key in ("borrow_rate", "cash_supply_rate", "supply_rate"):
        if key in constants:
            if key == "supply_rate":
                values[key] = np.full(len(asset_names), constants[key])
            else:
                values[key] = constants[key]
            sources[key] = f"constant {constants[key]!r} (--protocol-constant {key})"
    per_asset = {k: v for k, v in constants.items() if k.startswith("supply_rate.")}
    if per_asset:
        rates = np.array(values["supply_rate"], dtype=np.float64)
        for key, value in per_asset.items():
            rates[asset_names.index(key.split(".", 1)[1])] = value
        values["supply_rate"] = rates
        sources["supply_rate"] += "; " + ", ".join(
            f"{k.split('.', 1)[1]} constant {v!r} (--protocol-constant {k})"
            for k, v in per_asset.items()
        )
    check_no_rate_arbitrage(
        values["borrow_rate"],  # type: ignore[arg-type]
        values["cash_supply_rate"],  # type: ignore[arg-type]
        "--protocol-constant",
    )
    return LendingQuotes(
        values["borrow_rate"],  # type: ignore[arg-type]
        values["cash_supply_rate"],  # type: ignore[arg-type]
        np.asarray(values["supply_rate"], dtype=np.float64),
        sources,
    )
