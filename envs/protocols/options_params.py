"""Validated parameters of the options venue (``configs/protocols/options.yaml``).

Every number is a fraction or an annual rate unless named otherwise; per-regime tables have one value
for each of calm, bull and crash. The YAML carries the source (or ``assumption``) of each prior.
Loaded by :func:`load_options_params`, which fails naming every bad key, its value and the range.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from defialloc.envs.market.regime_values import RegimeValues
from defialloc.envs.protocols.params import REPO_ROOT, _load, _Strict

DEFAULT_OPTIONS_PATH = REPO_ROOT / "configs" / "protocols" / "options.yaml"


class VolRatioByRegime(RegimeValues):
    """Implied over forecast realized vol at the money (1.0: no variance premium)."""

    calm: float = Field(ge=0.5, le=3.0)
    bull: float = Field(ge=0.5, le=3.0)
    crash: float = Field(ge=0.5, le=3.0)


class SkewByRegime(RegimeValues):
    """Slope of the smile in standardized log-moneyness (< 0: puts dearer than calls)."""

    calm: float = Field(ge=-1.0, le=1.0)
    bull: float = Field(ge=-1.0, le=1.0)
    crash: float = Field(ge=-1.0, le=1.0)


class SmileByRegime(RegimeValues):
    """Curvature of the smile in standardized log-moneyness (>= 0: both wings lifted)."""

    calm: float = Field(ge=0.0, le=1.0)
    bull: float = Field(ge=0.0, le=1.0)
    crash: float = Field(ge=0.0, le=1.0)


class HalfSpreadByRegime(RegimeValues):
    """Half the bid-ask spread in vol (0.01 = one vol point each side of the mid)."""

    calm: float = Field(ge=0.0, le=0.5)
    bull: float = Field(ge=0.0, le=0.5)
    crash: float = Field(ge=0.0, le=0.5)


class OptionsParams(_Strict):
    """The venue: what is listed, how it is priced and quoted, what it charges, its margin rule."""

    underlyings: list[str] = Field(min_length=1, description="assets with listed options")
    strikes: list[float] = Field(
        min_length=1, description="listed strikes as moneyness K / forward at listing, ascending"
    )
    tenors_days: list[int] = Field(min_length=1, description="listed expiries, days, ascending")
    rate: float = Field(
        default=0.0, ge=-0.1, le=0.5, description="annual discount rate (and forward carry)"
    )
    vol_forecast: Literal["auto", "garch_filter"] = Field(
        default="auto",
        description=(
            "auto: the synthetic generator's conditional expectation of the realized variance "
            "(its true GARCH variance and regime; a causal GARCH filter on replayed paths); "
            "garch_filter: the trader model's causal GARCH forecast everywhere"
        ),
    )
    variance_premium: VolRatioByRegime
    skew: SkewByRegime
    smile: SmileByRegime
    smile_floor_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    smile_cap_ratio: float = Field(default=3.0, ge=1.0, le=10.0)
    half_spread_vol: HalfSpreadByRegime
    min_half_spread_of_underlying: float = Field(
        default=0.0, ge=0.0, le=0.01, description="half-spread floor, fraction of the index"
    )
    trading_fee_of_underlying: float = Field(ge=0.0, le=0.01)
    trading_fee_cap_of_price: float = Field(ge=0.0, le=1.0)
    settlement_fee_of_underlying: float = Field(ge=0.0, le=0.01)
    settlement_fee_cap_of_value: float = Field(ge=0.0, le=1.0)
    short_maintenance_of_underlying: float = Field(
        gt=0.0, le=1.0, description="uncovered short: maintenance = this x index + option mark"
    )
    liquidation_fee_of_underlying: float = Field(ge=0.0, le=0.1)
    sources: dict[str, str] = Field(default_factory=dict, description="where each prior comes from")

    @field_validator("strikes")
    @classmethod
    def _strikes(cls, value: list[float]) -> list[float]:
        if any(not 0.1 <= m <= 10.0 for m in value) or sorted(set(value)) != value:
            raise ValueError(f"strikes {value} must be distinct, ascending and in [0.1, 10]")
        return value

    @field_validator("tenors_days")
    @classmethod
    def _tenors(cls, value: list[int]) -> list[int]:
        if any(not 1 <= d <= 730 for d in value) or sorted(set(value)) != value:
            raise ValueError(f"tenors_days {value} must be distinct, ascending and in [1, 730]")
        return value

    @model_validator(mode="after")
    def _smile_bounds(self) -> OptionsParams:
        if self.smile_floor_ratio > self.smile_cap_ratio:
            raise ValueError(
                f"smile_floor_ratio={self.smile_floor_ratio} must be <= smile_cap_ratio="
                f"{self.smile_cap_ratio}"
            )
        return self

    def listed_mask(self, asset_names: tuple[str, ...] | list[str]) -> np.ndarray:
        """``(N,)`` bool: which of ``asset_names`` have listed options."""
        return np.array([a in self.underlyings for a in asset_names], dtype=bool)

    def tenor_steps(self, step_days: float) -> np.ndarray:
        """``(T,)`` int steps to expiry of each listed tenor (at least one step)."""
        return np.maximum(np.rint(np.array(self.tenors_days) / step_days), 1).astype(np.int64)


@functools.lru_cache(maxsize=16)
def _cached(path: str, mtime_ns: int) -> OptionsParams:
    return _load(OptionsParams, Path(path))


def load_options_params(source: str | Path | dict[str, Any] | None = None) -> OptionsParams:
    """Load the options venue (default ``configs/protocols/options.yaml``).

    Raises:
        ProtocolConfigError: (a ValueError) naming every bad key, its value and the allowed range.
    """
    if isinstance(source, dict):
        return _load(OptionsParams, source)
    path = Path(DEFAULT_OPTIONS_PATH if source is None else source)
    if not path.is_file():
        return _load(OptionsParams, path)  # raises, naming the missing file
    return _cached(str(path.resolve()), path.stat().st_mtime_ns)
