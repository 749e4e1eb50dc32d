"""Protocol parameters (lending market, perpetual futures) as validated pydantic models.

Two dated YAML snapshots feed these models: ``configs/protocols/aave_v3_2023-10-31.yaml``
(:class:`LendingParams`) and ``configs/protocols/perps.yaml`` (:class:`PerpsParams`). Governance changes
the real values, so a snapshot pins its date. Every rate or fraction here is a plain fraction
(0.05 = 5 %); interest rates are annualized, funding and basis are per 8 h funding period.

The models turn into numpy arrays aligned with the simulator's asset and regime order via
``reserve_arrays`` / ``margin_arrays`` / ``RegimeProcess``; the array functions in
:mod:`defialloc.envs.protocols.lending` and :mod:`defialloc.envs.protocols.perps` only see arrays.

Regime-driven quantities (pool utilization, perp basis) follow a mean-reverting AR(1) around the
current regime's mean (:class:`RegimeProcess`)::

    x_t = m[r_t] + phi * (x_{t-1} - m[r_t]) + sqrt(1 - phi^2) * s[r_t] * eps_t,  clipped to [lower, upper]

so ``s`` is the stationary standard deviation inside a regime and ``phi = 0`` gives i.i.d. draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from defialloc.envs.yaml_io import format_validation_error

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LENDING_PATH = REPO_ROOT / "configs" / "protocols" / "aave_v3_2023-10-31.yaml"
DEFAULT_PERPS_PATH = REPO_ROOT / "configs" / "protocols" / "perps.yaml"


class ProtocolConfigError(ValueError):
    """A protocol YAML could not be loaded; the message names each bad key, its value and the range."""


def check_range(
    name: str,
    values: Any,
    lower: float = -np.inf,
    upper: float = np.inf,
    *,
    lower_open: bool = False,
    upper_open: bool = False,
) -> np.ndarray:
    """Return ``values`` as a float array, raising ValueError naming ``name`` if any entry is outside.

    NaN is always out of range. The message shows the first bad value and the allowed interval.
    """
    array = np.asarray(values, dtype=float)
    if array.size:
        too_low = array <= lower if lower_open else array < lower
        too_high = array >= upper if upper_open else array > upper
        bad = too_low | too_high | np.isnan(array)
        if bad.any():
            interval = (
                f"{'(' if lower_open else '['}{lower:g}, {upper:g}{')' if upper_open else ']'}"
            )
            count = int(bad.sum())
            extra = f" ({count} of {array.size} entries bad)" if array.size > 1 else ""
            raise ValueError(
                f"{name}={array[bad].flat[0]!r} is outside the allowed range {interval}{extra}"
            )
    return array


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------- regimes
class RegimeLevel(_Strict):
    """Level of a regime-driven quantity in one regime: its mean and stationary std."""

    mean: float
    std: float = Field(ge=0.0, description="stationary standard deviation inside the regime")


class RegimeModel(_Strict):
    """A quantity whose level depends on the market regime (see the module docstring for the AR(1))."""

    persistence: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="AR(1) coefficient per step"
    )
    lower: float = Field(description="draws are clipped to [lower, upper]")
    upper: float
    regimes: dict[str, RegimeLevel] = Field(min_length=1)

    @model_validator(mode="after")
    def _means_inside_bounds(self) -> RegimeModel:
        if not self.lower < self.upper:
            raise ValueError(f"lower={self.lower} must be < upper={self.upper}")
        for name, level in self.regimes.items():
            if not self.lower <= level.mean <= self.upper:
                raise ValueError(
                    f"regimes.{name}.mean={level.mean} must lie in [lower, upper] = [{self.lower}, {self.upper}]"
                )
        return self

    def process(
        self, regime_names: tuple[str, ...] | list[str], n_assets: int = 1
    ) -> RegimeProcess:
        """Arrays for the simulator's regime order; every asset column gets the same level."""
        missing = [r for r in regime_names if r not in self.regimes]
        if missing:
            raise ValueError(
                f"regime(s) {missing} have no level; configured regimes are {sorted(self.regimes)}"
            )
        mean = np.array([self.regimes[r].mean for r in regime_names], dtype=float)
        std = np.array([self.regimes[r].std for r in regime_names], dtype=float)
        return RegimeProcess(
            mean=np.repeat(mean[:, None], n_assets, axis=1),
            std=np.repeat(std[:, None], n_assets, axis=1),
            persistence=self.persistence,
            lower=self.lower,
            upper=self.upper,
        )


@dataclass(frozen=True)
class RegimeProcess:
    """Array form of :class:`RegimeModel` (s): ``mean``/``std`` are ``(R, N)`` (regime x asset);
    ``persistence``, ``lower`` and ``upper`` are scalars or ``(N,)`` per asset column."""

    mean: np.ndarray
    std: np.ndarray
    persistence: float | np.ndarray
    lower: float | np.ndarray
    upper: float | np.ndarray

    def draw(
        self,
        regime_codes: np.ndarray,
        rng_or_noise: np.random.Generator | np.ndarray,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """One step of the regime AR(1).

        Args:
            regime_codes: ``(...)`` int regime index of the current step (into the rows of ``mean``).
            rng_or_noise: a Generator, or ``(..., N)`` standard-normal shocks supplied by the caller.
            previous: ``(..., N)`` last step's value, or None to start at the stationary distribution.

        Returns:
            ``(..., N)`` value clipped to ``[lower, upper]``.
        """
        codes = np.asarray(regime_codes)
        n_regimes = self.mean.shape[0]
        if codes.size and (codes.min() < 0 or codes.max() >= n_regimes):
            raise ValueError(
                f"regime_codes must lie in [0, {n_regimes - 1}], got range [{codes.min()}, {codes.max()}]"
            )
        mean = self.mean[codes]
        std = self.std[codes]
        if isinstance(rng_or_noise, np.random.Generator):
            noise = rng_or_noise.standard_normal(mean.shape)
        else:
            noise = np.broadcast_to(np.asarray(rng_or_noise, dtype=float), mean.shape)
        if previous is None:
            value = mean + std * noise
        else:
            phi = np.asarray(self.persistence, dtype=float)
            value = mean + phi * (np.asarray(previous, dtype=float) - mean)
            value = value + np.sqrt(1.0 - phi * phi) * std * noise
        return np.clip(value, self.lower, self.upper)


# ---------------------------------------------------------------------------------------- lending
class RateModelParams(_Strict):
    """Aave v3 kinked variable-rate model (annualized fractions)."""

    u_optimal: float = Field(gt=0.0, lt=1.0, description="kink utilization Uopt, 0 < Uopt < 1")
    base: float = Field(ge=0.0, description="borrow rate at U = 0 (annual, >= 0)")
    slope1: float = Field(ge=0.0, description="rate added from U = 0 to U = Uopt (annual, >= 0)")
    slope2: float = Field(ge=0.0, description="rate added from U = Uopt to U = 1 (annual, >= 0)")


class LendingAsset(_Strict):
    """Risk and rate parameters of one reserve. ``symbol`` is filled from the YAML key."""

    symbol: str
    underlying: str = Field(
        description="the market's asset name for this reserve, e.g. WETH -> ETH"
    )
    ltv: float = Field(
        gt=0.0, lt=1.0, description="loan-to-value: borrow capacity per USD of collateral"
    )
    liq_threshold: float = Field(
        gt=0.0, lt=1.0, description="LT: weight of the collateral in the HF"
    )
    liq_bonus: float = Field(ge=0.0, le=0.25, description="liquidation bonus (0.05 -> LB = 1.05)")
    reserve_factor: float = Field(
        ge=0.0, lt=1.0, description="share of borrow interest kept by the protocol"
    )
    liq_protocol_fee: float = Field(
        default=0.10,
        ge=0.0,
        le=1.0,
        description="share of the liquidation bonus taken by the protocol",
    )
    rate_model: RateModelParams
    utilization_by_regime: RegimeModel | None = Field(
        default=None, description="overrides the market-wide utilization model for this reserve"
    )
    assumption: bool = Field(
        default=False, description="True when the values are not from the snapshot"
    )
    note: str = ""

    @model_validator(mode="after")
    def _ltv_below_threshold(self) -> LendingAsset:
        if not self.ltv < self.liq_threshold:
            raise ValueError(
                f"asset {self.symbol}: liq_threshold={self.liq_threshold} must be > ltv={self.ltv} "
                "(require 0 < ltv < liq_threshold < 1)"
            )
        if self.utilization_by_regime is not None:
            _check_utilization_bounds(
                self.utilization_by_regime, f"assets.{self.symbol}.utilization_by_regime"
            )
        return self


class CloseFactorParams(_Strict):
    """Share of the debt one liquidation may repay."""

    hf_threshold: float = Field(
        default=0.95, gt=0.0, le=1.0, description="100 % close at HF <= this"
    )
    default: float = Field(
        default=0.5, gt=0.0, le=1.0, description="close factor when threshold < HF < 1"
    )
    full_close_below_usd: float = Field(
        default=0.0,
        ge=0.0,
        description="v3.3+: 100 % when collateral or debt is below this (0 = off)",
    )


class LiquidationParams(_Strict):
    """How the simulator runs liquidations (see docs/leverage.md)."""

    max_rounds_per_step: int = Field(
        default=1, ge=1, le=10, description="liquidation calls per step"
    )
    seizure_order: Literal["largest_first", "pro_rata"] = "largest_first"


class PopulationParams(_Strict):
    """Other leveraged borrowers whose liquidations sell collateral, partly into the agent's pools.

    Defaults are the shipped snapshot's calibrated values (docs/leverage.md, "Borrower population").
    """

    hf_entry_min: float = Field(default=1.05, gt=1.0, description="lowest entry health factor")
    hf_entry_max: float = Field(default=3.0, gt=1.0, description="highest entry health factor")
    n_buckets: int = Field(default=48, ge=2, le=1024, description="log-spaced HF buckets")
    collateral_share_of_depth: float = Field(
        default=0.05,
        ge=0.0,
        le=10.0,
        description="population collateral USD / pool depth USD at entry",
    )
    refresh_rate_per_step: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="share of each bucket re-levered at the current price",
    )
    sell_fraction: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of the liquidators' seized units they sell (anywhere)",
    )
    pool_share_of_sales: float = Field(
        default=0.10,
        description="share of the liquidators' sales that trades in the agent's pools, in [0, 1] "
        "(the rest is absorbed by other DEXs and CEX order books)",
    )
    execution_lag: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="where in [crossing price, low] liquidations execute: 0 = at the crossing, 1 = at the low",
    )
    max_rounds_per_step: int = Field(
        default=1, ge=1, le=10, description="liquidation calls per bucket per step"
    )

    @field_validator("pool_share_of_sales")
    @classmethod
    def _share_in_unit_interval(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(
                f"pool_share_of_sales={value!r} must lie in [0, 1] (0: no forced sale reaches the "
                "agent's pools, 1: all of them do)"
            )
        return value

    @model_validator(mode="after")
    def _ordered_entry_range(self) -> PopulationParams:
        if not self.hf_entry_min < self.hf_entry_max:
            raise ValueError(
                f"hf_entry_min={self.hf_entry_min} must be < hf_entry_max={self.hf_entry_max}"
            )
        return self


def _check_utilization_bounds(model: RegimeModel, where: str) -> None:
    if model.lower < 0.0 or model.upper > 1.0:
        raise ValueError(
            f"{where}: utilization bounds [{model.lower}, {model.upper}] must lie in [0, 1]"
        )


@dataclass(frozen=True)
class ReserveArrays:
    """Per-asset parameters as ``(N,)`` float arrays in the simulator's asset order."""

    symbols: tuple[str, ...]
    ltv: np.ndarray
    liq_threshold: np.ndarray
    liq_bonus: np.ndarray
    liq_protocol_fee: np.ndarray
    reserve_factor: np.ndarray
    u_optimal: np.ndarray
    base: np.ndarray
    slope1: np.ndarray
    slope2: np.ndarray


class LendingParams(_Strict):
    """A dated snapshot of an Aave-v3-like market with one stablecoin debt asset."""

    snapshot_date: date
    source: str = ""
    debt_asset: str = Field(description="symbol of the borrowed reserve (the numeraire stablecoin)")
    close_factor: CloseFactorParams = Field(default_factory=CloseFactorParams)
    liquidation: LiquidationParams = Field(default_factory=LiquidationParams)
    assets: dict[str, LendingAsset] = Field(min_length=1)
    utilization_by_regime: RegimeModel
    population: PopulationParams = Field(default_factory=PopulationParams)

    @model_validator(mode="before")
    @classmethod
    def _symbol_from_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("assets"), dict):
            assets = {}
            for key, entry in data["assets"].items():
                if isinstance(entry, dict) and "symbol" not in entry:
                    entry = {"symbol": key, **entry}
                assets[key] = entry
            data = {**data, "assets": assets}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> LendingParams:
        if self.debt_asset not in self.assets:
            raise ValueError(
                f"debt_asset={self.debt_asset!r} must be one of the assets {sorted(self.assets)}"
            )
        _check_utilization_bounds(self.utilization_by_regime, "utilization_by_regime")
        return self

    def asset(self, name: str) -> LendingAsset:
        """Look a reserve up by its symbol (``WETH``) or its market name (``ETH``)."""
        if name in self.assets:
            return self.assets[name]
        for entry in self.assets.values():
            if entry.underlying == name:
                return entry
        known = sorted({*self.assets, *(a.underlying for a in self.assets.values())})
        raise ValueError(f"asset {name!r} has no lending parameters; known: {known}")

    def reserve_arrays(self, asset_names: tuple[str, ...] | list[str]) -> ReserveArrays:
        """``(N,)`` parameter arrays for ``asset_names`` (symbols or market names), in that order."""
        entries = [self.asset(a) for a in asset_names]

        def col(get: Any) -> np.ndarray:
            return np.array([get(e) for e in entries], dtype=float)

        return ReserveArrays(
            symbols=tuple(e.symbol for e in entries),
            ltv=col(lambda e: e.ltv),
            liq_threshold=col(lambda e: e.liq_threshold),
            liq_bonus=col(lambda e: e.liq_bonus),
            liq_protocol_fee=col(lambda e: e.liq_protocol_fee),
            reserve_factor=col(lambda e: e.reserve_factor),
            u_optimal=col(lambda e: e.rate_model.u_optimal),
            base=col(lambda e: e.rate_model.base),
            slope1=col(lambda e: e.rate_model.slope1),
            slope2=col(lambda e: e.rate_model.slope2),
        )

    def utilization_process(
        self, regime_names: tuple[str, ...] | list[str], asset_names: tuple[str, ...] | list[str]
    ) -> RegimeProcess:
        """``(R, N)`` utilization process: each asset's own model, else the market-wide one."""
        models = [
            self.asset(name).utilization_by_regime or self.utilization_by_regime
            for name in asset_names
        ]
        columns = [m.process(regime_names, 1) for m in models]
        return RegimeProcess(
            mean=np.concatenate([c.mean for c in columns], axis=1),
            std=np.concatenate([c.std for c in columns], axis=1),
            persistence=np.array([m.persistence for m in models]),
            lower=np.array([m.lower for m in models]),
            upper=np.array([m.upper for m in models]),
        )


# ---------------------------------------------------------------------------------------- perps
class MarginTier(_Strict):
    """Initial and maintenance margin fractions of notional for one liquidity tier."""

    initial: float = Field(gt=0.0, le=1.0, description="initial margin fraction (IMF)")
    maintenance: float = Field(gt=0.0, lt=1.0, description="maintenance margin fraction (MMF)")

    @model_validator(mode="after")
    def _mmf_below_imf(self) -> MarginTier:
        if not self.maintenance < self.initial:
            raise ValueError(f"maintenance={self.maintenance} must be < initial={self.initial}")
        return self


class FundingParams(_Strict):
    """Funding: rate per step = periods_per_step * clip(premium + interest, -clamp, clamp)."""

    periods_per_step: float = Field(default=3.0, gt=0.0, description="8 h funding periods per step")
    interest_per_period: float = Field(default=0.0, ge=-0.01, le=0.01, description="per 8 h period")
    clamp_per_period: float = Field(
        default=0.0075, gt=0.0, le=0.1, description="|rate| cap per period"
    )


class PerpsParams(_Strict):
    """Perpetual futures venue: funding, regime basis, margin tiers and fees."""

    funding: FundingParams = Field(default_factory=FundingParams)
    basis_by_regime: RegimeModel = Field(description="premium (mark - index) / index per regime")
    margin_tiers: dict[str, MarginTier] = Field(min_length=1)
    asset_tier: dict[str, str] = Field(default_factory=dict)
    default_tier: str
    liquidation_fee: float = Field(
        default=0.015, ge=0.0, le=0.1, description="fraction of notional"
    )
    trading_fee: float = Field(
        default=0.0005, ge=0.0, le=0.01, description="fraction of traded notional"
    )

    @model_validator(mode="after")
    def _tiers_exist(self) -> PerpsParams:
        tiers = sorted(self.margin_tiers)
        if self.default_tier not in self.margin_tiers:
            raise ValueError(f"default_tier={self.default_tier!r} must be one of {tiers}")
        for asset, tier in self.asset_tier.items():
            if tier not in self.margin_tiers:
                raise ValueError(f"asset_tier.{asset}={tier!r} must be one of {tiers}")
        if not -1.0 < self.basis_by_regime.lower:
            raise ValueError(f"basis_by_regime.lower={self.basis_by_regime.lower} must be > -1")
        return self

    def tier_of(self, asset: str) -> MarginTier:
        return self.margin_tiers[self.asset_tier.get(asset, self.default_tier)]

    def margin_arrays(
        self, asset_names: tuple[str, ...] | list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(imf, mmf)``, each ``(N,)``, for ``asset_names`` in that order."""
        tiers = [self.tier_of(a) for a in asset_names]
        return (
            np.array([t.initial for t in tiers], dtype=float),
            np.array([t.maintenance for t in tiers], dtype=float),
        )


# ---------------------------------------------------------------------------------------- loading
def _load(model: type[_Strict], source: str | Path | dict[str, Any]) -> Any:
    if isinstance(source, dict):
        data, path = source, Path("<dict>")
    else:
        path = Path(source)
        if not path.is_file():
            raise ProtocolConfigError(f"protocol config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolConfigError(
            format_validation_error(exc, header=f"invalid protocol config {path}")
        ) from None


def load_lending_params(source: str | Path | dict[str, Any] | None = None) -> LendingParams:
    """Load the lending snapshot (default ``configs/protocols/aave_v3_2023-10-31.yaml``).

    Raises:
        ProtocolConfigError: (a ValueError) naming every bad key, its value and the allowed range.
    """
    return _load(LendingParams, DEFAULT_LENDING_PATH if source is None else source)


def load_perps_params(source: str | Path | dict[str, Any] | None = None) -> PerpsParams:
    """Load the perps venue parameters (default ``configs/protocols/perps.yaml``)."""
    return _load(PerpsParams, DEFAULT_PERPS_PATH if source is None else source)
