"""Validated parameters of the market section (``market:`` in a simulation config).

Units: returns are natural-log returns unless a key says ``simple`` (``P_{t+1}/P_t - 1``);
``*_per_year`` quantities are annualized over 365 days (crypto trades every day); ``*_daily``
quantities are per day and are rescaled to ``step_days`` by the generators. Per-regime values are
given as ``{calm: ..., bull: ..., crash: ...}`` and per-asset tables as ``{SYMBOL: ...}``; a table may
hold more assets than ``assets`` (the generator takes the subset).

Every model forbids unknown keys and bounds its numbers, so a typo fails on load naming the key.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from defialloc.envs.market.defaults import default_correlations, default_garch, default_jumps
from defialloc.envs.market.drift_config import (  # noqa: F401  (re-exported)
    DRIFT_KINDS,
    ArithmeticDrift,
    DriftParams,
    LogDrift,
    SharpeDrift,
    old_drift_key_error,
)
from defialloc.envs.market.regime_values import (  # noqa: F401  (re-exported)
    REGIME_NAMES,
    PositiveRegimeValues,
    ProbabilityRegimeValues,
    RateRegimeValues,
    RegimeValues,
    StrictModel,
)
from defialloc.envs.yaml_io import format_validation_error, read_yaml_mapping

CALM, BULL, CRASH = 0, 1, 2
DAYS_PER_YEAR = 365.0
LAST_DEVELOPMENT_DATE = dt.date(2022, 12, 31)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ASSETS = ["BTC", "ETH", "SOL", "LINK", "AVAX"]


_Strict = StrictModel


class GarchParams(_Strict):
    """GARCH(1,1) of one asset's daily log returns: ``h_t = omega + alpha * e_{t-1}^2 + beta * h_{t-1}``."""

    omega_daily: float = Field(
        gt=0.0, lt=0.1, description="variance intercept, (log return)^2 per day"
    )
    alpha: float = Field(ge=0.0, lt=1.0)
    beta: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _stationary(self) -> GarchParams:
        if self.alpha + self.beta >= 1.0:
            raise ValueError(
                f"alpha + beta = {self.alpha + self.beta:.6f} must be < 1 (covariance-stationary GARCH)"
            )
        return self

    @property
    def unconditional_variance_daily(self) -> float:
        return self.omega_daily / (1.0 - self.alpha - self.beta)


def _check_matrix(name: str, matrix: list[list[float]], size: int) -> np.ndarray:
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.shape != (size, size):
        raise ValueError(f"{name} must be {size}x{size}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def check_correlation(name: str, matrix: list[list[float]] | np.ndarray, size: int) -> np.ndarray:
    """Return ``matrix`` as an array after checking symmetry, unit diagonal and PSD (else ValueError)."""
    arr = _check_matrix(name, matrix, size)  # type: ignore[arg-type]
    if not np.allclose(np.diag(arr), 1.0, atol=1e-8):
        raise ValueError(f"{name} must have a unit diagonal, got {np.diag(arr).tolist()}")
    if not np.allclose(arr, arr.T, atol=1e-8):
        raise ValueError(f"{name} must be symmetric")
    if np.any(np.abs(arr) > 1.0 + 1e-12):
        raise ValueError(f"{name} entries must lie in [-1, 1]")
    min_eig = float(np.linalg.eigvalsh(arr).min())
    if min_eig < -1e-8:
        raise ValueError(
            f"{name} must be positive semi-definite; smallest eigenvalue {min_eig:.3g} < 0"
        )
    return arr


class RegimeCorrelations(_Strict):
    """Correlation of the assets' diffusive shocks in each regime; rows/columns in ``assets`` order."""

    assets: list[str] = Field(min_length=1)
    calm: list[list[float]]
    bull: list[list[float]]
    crash: list[list[float]]

    @model_validator(mode="after")
    def _valid_matrices(self) -> RegimeCorrelations:
        if len(set(self.assets)) != len(self.assets):
            raise ValueError(f"correlation.assets has duplicates: {self.assets}")
        for regime in REGIME_NAMES:
            check_correlation(f"correlation.{regime}", getattr(self, regime), len(self.assets))
        return self

    def matrices(self, assets: list[str]) -> np.ndarray:
        """``(3, N, N)`` sub-matrices for ``assets`` (in that order), regimes in ``REGIME_NAMES`` order."""
        idx = [self.assets.index(a) for a in assets]
        return np.stack([np.asarray(getattr(self, r))[np.ix_(idx, idx)] for r in REGIME_NAMES])


class JumpParams(_Strict):
    """Poisson jumps: common events hit every asset at once; idiosyncratic ones hit one asset.

    A jump adds a log return ``mean_log[a] + std_log[a] * xi`` to asset ``a``; within a common event the
    ``xi`` of different assets have correlation ``size_correlation``. At most one jump per asset per step.
    The generator compensates the jumps' mean (every step subtracts ``P(jump) * mean_log[a]``), so jumps
    add negative skew and tail risk but do not move the expected return set by ``drift``.
    """

    common_intensity_per_year: RateRegimeValues
    idio_intensity_per_year: RateRegimeValues
    mean_log: dict[str, float]
    std_log: dict[str, float]
    size_correlation: float = Field(default=0.8, ge=0.0, le=1.0)

    @field_validator("mean_log")
    @classmethod
    def _means_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for asset, mean in value.items():
            if not -1.0 <= mean <= 1.0:
                raise ValueError(f"mean_log[{asset}]={mean} must be in [-1, 1] (log return)")
        return value

    @field_validator("std_log")
    @classmethod
    def _stds_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for asset, std in value.items():
            if not 0.0 <= std <= 1.0:
                raise ValueError(f"std_log[{asset}]={std} must be in [0, 1] (log return)")
        return value


class DepegParams(_Strict):
    """Rare depegs of the numeraire: the price drops to ``1 - depth`` and recovers with a half-life."""

    intensity_per_year: RateRegimeValues
    depth_min: float = Field(
        default=0.03, gt=0.0, lt=0.9, description="smallest dip, fraction of $1"
    )
    depth_max: float = Field(
        default=0.10, gt=0.0, lt=0.9, description="largest dip, fraction of $1"
    )
    half_life_days: float = Field(default=2.0, gt=0.0, le=365.0)
    noise_bps: float = Field(default=3.0, ge=0.0, le=100.0, description="daily peg noise std, bp")

    @model_validator(mode="after")
    def _ordered(self) -> DepegParams:
        if self.depth_max < self.depth_min:
            raise ValueError(f"depth_max={self.depth_max} must be >= depth_min={self.depth_min}")
        return self


class EthFallbackParams(_Strict):
    """ETH path used for gas costs when ETH is not one of the risky assets."""

    garch: GarchParams = Field(
        default_factory=lambda: GarchParams(omega_daily=2.5e-4, alpha=0.125, beta=0.835)
    )
    initial_price_usd: float = Field(default=1200.0, gt=0.0)


def _stationary_distribution(transition: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eig(transition.T)
    vec = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1.0))]))
    return vec / vec.sum()


class SyntheticParams(_Strict):
    """The regime-switching GARCH-t + jumps + depeg market (see ``envs/market/synthetic.py``)."""

    transition_daily: list[list[float]] = Field(
        default_factory=lambda: [[0.92, 0.05, 0.03], [0.07, 0.91, 0.02], [0.10, 0.02, 0.88]],
        description="P[i][j] = P(regime j tomorrow | regime i today), regimes calm, bull, crash",
    )
    drift: DriftParams = Field(
        default_factory=ArithmeticDrift,
        description="drift convention, a mapping on kind: arithmetic (default), sharpe or log",
    )
    vol_multiplier: PositiveRegimeValues = Field(
        default_factory=lambda: PositiveRegimeValues(calm=0.8, bull=1.05, crash=1.4)
    )
    correlation: RegimeCorrelations = Field(default_factory=default_correlations)
    garch: dict[str, GarchParams] = Field(default_factory=default_garch)
    nu: float = Field(default=4.5, gt=2.0, le=200.0, description="Student-t degrees of freedom")
    initial_price_usd: dict[str, float] = Field(
        default_factory=lambda: {
            "BTC": 16500.0,
            "ETH": 1200.0,
            "SOL": 10.0,
            "LINK": 5.6,
            "AVAX": 11.0,
        }
    )
    jumps: JumpParams = Field(default_factory=default_jumps)
    depeg: DepegParams = Field(
        default_factory=lambda: DepegParams(
            intensity_per_year=RateRegimeValues(calm=0.15, bull=0.15, crash=0.6)
        )
    )
    eth_fallback: EthFallbackParams = Field(default_factory=EthFallbackParams)
    range_scale: float = Field(
        default=1.0, gt=0.0, le=5.0, description="scale on the high/low bridge vol"
    )
    burn_in_steps: int = Field(
        default=30, ge=0, le=10_000, description="steps simulated and dropped"
    )
    max_variance_multiple: float = Field(
        default=25.0,
        gt=1.0,
        description="cap on GARCH variance, multiple of its unconditional level",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_old_drift_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "drift_log_per_year" in data:
            raise old_drift_key_error(data["drift_log_per_year"])
        return data

    @field_validator("transition_daily")
    @classmethod
    def _rows_sum_to_one(cls, value: list[list[float]]) -> list[list[float]]:
        arr = _check_matrix("transition_daily", value, len(REGIME_NAMES))
        if np.any(arr < 0) or np.any(arr > 1):
            raise ValueError("transition_daily entries must be probabilities in [0, 1]")
        sums = arr.sum(axis=1)
        for name, total in zip(REGIME_NAMES, sums, strict=True):
            if abs(total - 1.0) > 1e-6:
                raise ValueError(
                    f"transition_daily row {name!r} sums to {total:.8f}; each row must sum to 1"
                )
        return value

    @field_validator("initial_price_usd")
    @classmethod
    def _positive_prices(cls, value: dict[str, float]) -> dict[str, float]:
        for asset, price in value.items():
            if not 0.0 < price < 1e12:
                raise ValueError(f"initial_price_usd[{asset}]={price} must be in (0, 1e12)")
        return value

    def transition_array(self) -> np.ndarray:
        arr = np.asarray(self.transition_daily, dtype=np.float64)
        return arr / arr.sum(axis=1, keepdims=True)

    def stationary_distribution(self) -> np.ndarray:
        """``(3,)`` long-run share of each regime under ``transition_daily``."""
        return _stationary_distribution(self.transition_array())

    def missing_assets(self, assets: list[str]) -> list[str]:
        """``"table[asset]"`` for every asset that a per-asset table lacks."""
        tables = {
            "garch": self.garch,
            "initial_price_usd": self.initial_price_usd,
            "jumps.mean_log": self.jumps.mean_log,
            "jumps.std_log": self.jumps.std_log,
            "correlation.assets": self.correlation.assets,
        }
        return [
            f"synthetic.{name}[{a}]"
            for name, table in tables.items()
            for a in assets
            if a not in table
        ]


class LiquidityParams(_Strict):
    """Pool depth multiplier: a per-regime level times a lognormal AR(1) factor."""

    depth_multiplier: PositiveRegimeValues = Field(
        default_factory=lambda: PositiveRegimeValues(calm=1.0, bull=1.15, crash=0.5)
    )
    log_noise_std: float = Field(
        default=0.1, ge=0.0, le=2.0, description="stationary std of log factor"
    )
    persistence_daily: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="AR(1) coefficient per day"
    )


class GasParams(_Strict):
    """Gas price: per-regime level x lognormal AR(1) factor x occasional spikes (mostly in crashes)."""

    gwei: PositiveRegimeValues = Field(
        default_factory=lambda: PositiveRegimeValues(calm=25.0, bull=45.0, crash=90.0)
    )
    log_noise_std: float = Field(default=0.35, ge=0.0, le=3.0)
    persistence_daily: float = Field(default=0.8, ge=0.0, lt=1.0)
    spike_probability: ProbabilityRegimeValues = Field(
        default_factory=lambda: ProbabilityRegimeValues(calm=0.0, bull=0.01, crash=0.10),
        description="probability per step of a spike",
    )
    spike_multiplier_min: float = Field(default=3.0, ge=1.0, le=1000.0)
    spike_multiplier_max: float = Field(default=12.0, ge=1.0, le=1000.0)

    @model_validator(mode="after")
    def _ordered(self) -> GasParams:
        if self.spike_multiplier_max < self.spike_multiplier_min:
            raise ValueError(
                f"spike_multiplier_max={self.spike_multiplier_max} must be >= "
                f"spike_multiplier_min={self.spike_multiplier_min}"
            )
        return self


class RegimeRuleParams(_Strict):
    """Causal labelling of real data on the equal-weight index of the assets (see ``label_regimes``).

    Defaults were chosen on 2021-2022 data to isolate a stress state: crash spells of ~7-8 days,
    ~1.7x the calm vol, and a mean pairwise correlation ~0.24 above calm (docs/market.md).
    """

    crash_window_days: int = Field(default=7, ge=1, le=365)
    crash_return: float = Field(
        default=0.15, gt=0.0, le=5.0, description="crash if window log return <= -this"
    )
    vol_window_days: int = Field(default=10, ge=5, le=365)
    crash_vol_ann: float = Field(
        default=0.8, gt=0.0, le=20.0, description="...or annualized vol >= this"
    )
    trend_window_days: int = Field(default=30, ge=2, le=365)
    bull_return: float = Field(
        default=0.25, gt=0.0, le=5.0, description="bull if trend log return >= this"
    )


class BootstrapParams(_Strict):
    """Stationary block bootstrap (Politis-Romano 1994) of historical days."""

    mean_block_length: float = Field(default=20.0, ge=1.0, le=365.0, description="days")


class MarketConfig(_Strict):
    """The market section: which scenario source, which assets, and every source's parameters."""

    source: Literal["synthetic", "replay", "bootstrap"] = "synthetic"
    assets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ASSETS), min_length=1, max_length=50
    )
    numeraire: str = Field(default="USDC", pattern=r"^[A-Z0-9]{2,12}$")
    step_days: float = Field(default=1.0, gt=0.0, le=30.0, description="days per step")
    data_dir: str = Field(default="data/crypto-daily", min_length=1)
    start: dt.date | None = Field(
        default=None, description="first decision date (replay/bootstrap)"
    )
    end: dt.date | None = Field(
        default=LAST_DEVELOPMENT_DATE, description="last date (replay/bootstrap)"
    )
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    bootstrap: BootstrapParams = Field(default_factory=BootstrapParams)
    regime_rule: RegimeRuleParams = Field(default_factory=RegimeRuleParams)
    liquidity: LiquidityParams = Field(default_factory=LiquidityParams)
    gas: GasParams = Field(default_factory=GasParams)

    @field_validator("assets")
    @classmethod
    def _valid_symbols(cls, value: list[str]) -> list[str]:
        for asset in value:
            if not (
                asset.isascii() and asset.isalnum() and asset.isupper() and 1 <= len(asset) <= 12
            ):
                raise ValueError(
                    f"asset {asset!r} must be an upper-case symbol of 1-12 letters/digits"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"assets has duplicates: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MarketConfig:
        if self.numeraire in self.assets:
            raise ValueError(
                f"numeraire {self.numeraire!r} must not also be a risky asset ({self.assets})"
            )
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"start={self.start} must be <= end={self.end}")
        if self.source in ("replay", "bootstrap") and self.step_days != 1.0:
            raise ValueError(
                f"step_days={self.step_days}: source {self.source!r} uses daily data, set 1.0"
            )
        if self.source == "synthetic":
            missing = self.synthetic.missing_assets(self.assets)
            if missing:
                raise ValueError(f"per-asset tables lack assets: {', '.join(missing)}")
        return self

    def resolved_data_dir(self) -> Path:
        """``data_dir`` as a path: absolute as given; relative to the cwd if it exists there, else the repo."""
        return resolve_data_dir(self.data_dir)


def resolve_data_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def check_sample_request(seeds: Any, length: int, warmup: int) -> np.ndarray:
    """Validate a path request; returns ``seeds`` as a 1-D int64 array."""
    arr = np.asarray(seeds)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"seeds must be a non-empty 1-D array of integers, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"seeds must be integers, got dtype {arr.dtype}")
    if np.any(arr < 0):
        raise ValueError(f"seeds must be >= 0, got {arr[arr < 0][:3].tolist()}")
    if not isinstance(length, int | np.integer) or length < 2:
        raise ValueError(f"length={length} must be an integer >= 2")
    if not isinstance(warmup, int | np.integer) or not 0 <= warmup < length:
        raise ValueError(f"warmup={warmup} must be an integer in [0, length={length})")
    return arr.astype(np.int64)


def load_market_config(path: str | Path) -> MarketConfig:
    """Load a market-section YAML file (a mapping of MarketConfig keys, or ``{market: {...}}``).

    Raises:
        ValueError: missing file, invalid YAML, or invalid keys/values (each named with its value).
    """
    file = Path(path)
    data = read_yaml_mapping(file, "market config")
    if set(data) == {"market"} and isinstance(data["market"], dict):
        data = data["market"]
    try:
        return MarketConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(
            format_validation_error(exc, header=f"invalid market config {file}")
        ) from None
