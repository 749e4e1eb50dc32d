"""Validated configuration of a simulation: the ``market`` section and the ``env`` section.

A config is a YAML file whose top-level keys are sections. A section may be given inline or as a
path to its own YAML file (relative to the file that names it, or to the repository root)::

    market: configs/market/default.yaml
    env: configs/env/default.yaml

Every model forbids unknown keys and bounds its numbers, so a typo or an out-of-range value fails
on load with the dotted key, the value and what is allowed (see :func:`format_validation_error`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from defialloc.envs.config_protocols import (  # noqa: F401  (re-exported: envs.config is their public home)
    CascadesConfig,
    LendingConfig,
    OptionsConfig,
    PerpsConfig,
)
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.envs.market.config import MarketConfig
from defialloc.envs.yaml_io import (  # noqa: F401  (format_validation_error is re-exported)
    REPO_ROOT,
    ConfigError,
    format_validation_error,
    read_yaml_mapping,
    resolve_config_path,
)

DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PoolTier(StrictModel):
    """One constant-product pool of a pair: its fee tier and its share of the pair's depth."""

    fee: float = Field(ge=0.0, lt=0.1, description="swap fee as a fraction (0.003 = 30 bp)")
    depth_share: float = Field(gt=0.0, le=1.0, description="share of the pair's total depth")


class AmmConfig(StrictModel):
    """Fragmented liquidity: every risky asset trades against the numeraire in several pools."""

    tiers: list[PoolTier] = Field(
        default_factory=lambda: [
            PoolTier(fee=0.0005, depth_share=0.5),
            PoolTier(fee=0.003, depth_share=0.35),
            PoolTier(fee=0.01, depth_share=0.15),
        ],
        min_length=1,
        max_length=4,
    )
    depth_usd: dict[str, float] = Field(
        default_factory=lambda: {
            "BTC": 150e6,
            "ETH": 250e6,
            "SOL": 30e6,
            "LINK": 12e6,
            "AVAX": 8e6,
        },
        description="baseline total value locked per pair in USD (both sides), before the regime multiplier",
    )
    default_depth_usd: float = Field(default=10e6, gt=0.0, description="depth of pairs not listed")
    price_noise_bps: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="reserved: pools start each step at the market price (arbitraged within the fee band)",
    )

    @field_validator("depth_usd")
    @classmethod
    def _positive_depths(cls, value: dict[str, float]) -> dict[str, float]:
        for asset, depth in value.items():
            if not depth > 0:
                raise ValueError(f"depth_usd[{asset}]={depth} must be > 0")
        return value

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> AmmConfig:
        total = sum(t.depth_share for t in self.tiers)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"tiers depth_share values sum to {total:.6f}; they must sum to 1")
        return self

    def pair_depth_usd(self, asset: str) -> float:
        return float(self.depth_usd.get(asset, self.default_depth_usd))


class GasConfig(StrictModel):
    """Gas units per operation (price and ETH come from the market path)."""

    router_overhead_units: float = Field(default=29_000, ge=0.0, description="per swap order")
    units_per_pool: float = Field(
        default=73_000, ge=0.0, description="per pool touched (pair swap)"
    )
    enabled: bool = True


class ActionConfig(StrictModel):
    """How the Box action becomes targets (weights, leverage, hedges): ``envs/action_kinds.py``.

    ``kind``: ``target`` (the action is the target itself), ``anchored`` (an anchor portfolio plus
    bounded deviations) or ``delta`` (trades relative to the current portfolio, at most
    ``max_turnover`` per decision). The deviation / change bounds of each kind apply to the spot
    weights, the leverage block (lending) and the hedge block (perps).
    """

    kind: Literal["target", "anchored", "delta"] = "target"
    no_trade_band: float = Field(
        default=0.01,
        ge=0.0,
        le=0.5,
        description="skip an asset whose |target - current| weight is below this",
    )
    anchor: Literal["equal_weight", "inverse_vol", "cash"] = Field(
        default="equal_weight",
        description="anchored: the anchor portfolio (inverse_vol: 1 / trailing realized vol)",
    )
    max_deviation: float = Field(
        default=0.1, gt=0.0, le=1.0, description="anchored: weight deviation at an output of +-1"
    )
    max_turnover: float = Field(
        default=0.1, gt=0.0, le=1.0, description="delta: one-sided turnover per decision, at most"
    )
    leverage_deviation: float = Field(
        default=0.5, gt=0.0, le=50.0, description="anchored: debt/equity above the anchor's 0 at +1"
    )
    max_leverage_change: float = Field(
        default=0.25, gt=0.0, le=50.0, description="delta: debt/equity change per decision"
    )
    hedge_deviation: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="anchored: hedge ratio around 0 at an output of +-1",
    )
    max_hedge_change: float = Field(
        default=0.25, gt=0.0, le=1.0, description="delta: hedge-ratio change per decision"
    )
    option_deviation: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="anchored: covered-call / protective-put share above the anchor's 0 at +1",
    )
    max_option_change: float = Field(
        default=0.25, gt=0.0, le=1.0, description="delta: option share change per decision"
    )


#: Every observation block, in the order of the docs' table (envs/features/__init__.py has sizes and formulas).
OBSERVATION_BLOCKS = (
    "returns",
    "realized_vol",
    "garch_vol",
    "correlations",
    "regime",
    "market",
    "weights",
    "drawdown",
    "protocol",
    "greeks",
)
#: The default observation (``env.observation.blocks``): change it here, in one place.
DEFAULT_OBSERVATION_BLOCKS = (
    "returns",
    "realized_vol",
    "correlations",
    "market",
    "weights",
    "drawdown",
    "protocol",
)
#: Blocks computed from the market section's calibrated model (a trader's GARCH and regime filter).
MODEL_BLOCKS = ("garch_vol", "regime")


class ObservationConfig(StrictModel):
    """Observation features (see envs/features/__init__.py for the layout)."""

    blocks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OBSERVATION_BLOCKS),
        min_length=1,
        description=f"ordered observation blocks, from {', '.join(OBSERVATION_BLOCKS)}",
    )
    return_window: int = Field(
        default=10, ge=1, le=120, description="trailing log returns per asset"
    )
    vol_window: int = Field(
        default=20, ge=2, le=250, description="steps in the realized-vol window"
    )
    corr_halflife: float = Field(
        default=20.0, gt=0.0, le=250.0, description="EWMA correlation half-life, steps"
    )
    corr_window: int = Field(default=60, ge=5, le=500, description="EWMA correlation window, steps")
    return_scale: float = Field(
        default=0.05, gt=0.0, description="per-step log return that maps to 1.0"
    )
    clip: float = Field(
        default=10.0, gt=0.0, description="every feature is clipped to [-clip, clip]"
    )
    regime_emission: Literal["student_t", "gaussian"] = Field(
        default="student_t",
        description="the regime filter's return density: the market's Student-t (nu) or a Gaussian",
    )

    @field_validator("blocks")
    @classmethod
    def _known_unique_blocks(cls, value: list[str]) -> list[str]:
        unknown = [b for b in value if b not in OBSERVATION_BLOCKS]
        if unknown:
            raise ValueError(
                f"unknown observation block(s) {unknown}; allowed: {', '.join(OBSERVATION_BLOCKS)}"
            )
        repeated = sorted({b for b in value if value.count(b) > 1})
        if repeated:
            raise ValueError(f"observation block(s) {repeated} listed more than once")
        return value

    @property
    def history_needed(self) -> int:
        """Number of past price points a full observation needs (warmup must be at least this).

        The longest window of the selected blocks, plus 1: ``return_window`` (returns),
        ``vol_window`` (realized_vol), ``corr_window`` (correlations); the recursive blocks
        (garch_vol, regime) need one return. They start from the model's prior (its unconditional
        variance, its stationary regime law) at the path's first point, so a longer warmup burns them in.
        """
        windows = {
            "returns": self.return_window,
            "realized_vol": self.vol_window,
            "correlations": self.corr_window,
            "garch_vol": 1,
            "regime": 1,
        }
        return max((windows[b] for b in self.blocks if b in windows), default=0) + 1


class RewardConfig(StrictModel):
    """Per-step reward."""

    kind: Literal["log_growth", "differential_sharpe", "drawdown_penalized"] = "log_growth"
    scale: float = Field(default=1.0, gt=0.0, description="multiplies the reward")
    dsr_eta: float = Field(
        default=0.01, gt=0.0, lt=1.0, description="EMA rate of the differential Sharpe"
    )
    drawdown_penalty: float = Field(
        default=1.0, ge=0.0, description="weight on the drawdown increase"
    )
    cost_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description=(
            "subtract cost_weight x (the step's fees + slippage + gas, USD) / value before the step "
            "(on top of the costs' direct effect on the value; 0: off)"
        ),
    )


class EnvConfig(StrictModel):
    """The portfolio environment: capital, horizon and the cost/feature/reward models."""

    initial_value_usd: float = Field(default=100_000.0, gt=0.0)
    horizon: int = Field(default=365, ge=1, le=100_000, description="decision steps per episode")
    warmup: int = Field(
        default=61, ge=1, le=5_000, description="history points before the first decision"
    )
    ruin_fraction: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="terminate when value <= ruin_fraction * initial value (also the reward's floor)",
    )
    initial_weights: Literal["cash", "equal"] = "cash"
    decision_every: int = Field(
        default=1,
        ge=1,
        le=365,
        description=(
            "market steps per decision of the Gymnasium env (the market, carry and liquidations "
            "move every step; the reward sums the interval); the Gymnasium envs need env.horizon "
            "to be a multiple"
        ),
    )
    amm: AmmConfig = Field(default_factory=AmmConfig)
    gas: GasConfig = Field(default_factory=GasConfig)
    action: ActionConfig = Field(default_factory=ActionConfig)
    observation: ObservationConfig = Field(default_factory=ObservationConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    kill_switch: KillSwitchConfig = Field(default_factory=KillSwitchConfig)
    lending: LendingConfig = Field(default_factory=LendingConfig)
    perps: PerpsConfig = Field(default_factory=PerpsConfig)
    cascades: CascadesConfig = Field(default_factory=CascadesConfig)
    options: OptionsConfig = Field(default_factory=OptionsConfig)

    @property
    def cascades_enabled(self) -> bool:
        """Whether the borrower population's forced sales run (default: with lending)."""
        return self.lending.enabled if self.cascades.enabled is None else self.cascades.enabled

    @property
    def protocols_enabled(self) -> bool:
        """True when any of lending, perps, cascades or options is on (the spot-only fast path is off)."""
        return (
            self.lending.enabled
            or self.perps.enabled
            or self.cascades_enabled
            or self.options.enabled
        )

    @model_validator(mode="after")
    def _warmup_covers_windows(self) -> EnvConfig:
        need = self.observation.history_needed
        if self.warmup < need:
            raise ValueError(
                f"warmup={self.warmup} must be >= {need} (the longest observation window + 1)"
            )
        blocks = self.observation.blocks
        if all(b == "protocol" for b in blocks) and not self.protocols_enabled:
            raise ValueError(
                "observation.blocks = ['protocol'] is empty without lending, perps, cascades or options; "
                f"add blocks from {', '.join(OBSERVATION_BLOCKS)}"
            )
        return self

    def check_decision_interval(self) -> None:
        """The Gymnasium envs step whole decision intervals: ``horizon`` must be a multiple of
        ``decision_every`` (backtests and paper trading hold between decisions at any horizon)."""
        k = self.decision_every
        if self.horizon % k:
            below = self.horizon - self.horizon % k
            raise ConfigError(
                f"env.horizon={self.horizon} must be a multiple of env.decision_every={k} "
                f"(e.g. env.horizon={below}): every training episode ends on a decision boundary"
            )


def observation_model_missing(market: MarketConfig, blocks: list[str]) -> list[str]:
    """``market.synthetic.<table>[asset]`` for every table entry the model blocks ``blocks`` need and lack.

    garch_vol needs ``garch``; regime needs ``garch``, ``correlation`` and the jump tables (the drift
    convention's means are net of the jumps' compensator).
    """
    p = market.synthetic
    tables: dict[str, Any] = {"garch": p.garch}
    if "regime" in blocks:
        tables |= {
            "correlation.assets": p.correlation.assets,
            "jumps.mean_log": p.jumps.mean_log,
            "jumps.std_log": p.jumps.std_log,
        }
    return [
        f"market.synthetic.{name}[{a}]"
        for name, table in tables.items()
        for a in market.assets
        if a not in table
    ]


class SimulationConfig(StrictModel):
    """Everything a simulation needs: the market scenarios and the environment."""

    market: MarketConfig = Field(default_factory=MarketConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)

    @model_validator(mode="after")
    def _market_has_the_observation_model(self) -> SimulationConfig:
        """The garch_vol and regime blocks read ``market.synthetic``'s per-asset tables, whatever the source."""
        blocks = [b for b in self.env.observation.blocks if b in MODEL_BLOCKS]
        if blocks:
            missing = observation_model_missing(self.market, blocks)
            if missing:
                raise ValueError(
                    f"env.observation.blocks {blocks} use the market's calibrated model, whose "
                    f"per-asset tables lack: {', '.join(missing)}"
                )
        return self

    def config_hash(self) -> str:
        """Short stable hash of the resolved config (for MLflow tags and export manifests)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "config")


def _resolve_path(name: str, base: Path) -> Path:
    return resolve_config_path(name, base)


def _resolve_sections(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Replace a section given as a YAML path by the file's contents."""
    out = dict(data)
    for key, value in data.items():
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            out[key] = _read_yaml(_resolve_path(value, base))
    return out


def parse_override_value(text: str) -> Any:
    """Parse the right side of ``key=value`` as YAML (numbers, bools, lists) with strings as fallback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``env.horizon``, or ``env__horizon``) in a nested dict, returning a new dict."""
    result = json.loads(json.dumps(data, default=str))
    for dotted, value in overrides.items():
        parts = dotted.replace("__", ".").split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and child.endswith((".yaml", ".yml")):
                child = _read_yaml(_resolve_path(child, Path.cwd()))
                node[part] = child
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def parse_cli_overrides(items: list[str]) -> dict[str, Any]:
    """``["env.horizon=100", "market.source=replay"]`` -> ``{"env.horizon": 100, ...}``."""
    overrides: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_override_value(value.strip())
    return overrides


def load_config(
    config: str | Path | dict[str, Any] | SimulationConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> SimulationConfig:
    """Load and validate a simulation config.

    Args:
        config: a YAML path, a dict of sections, a ready :class:`SimulationConfig`, or None for
            ``configs/default.yaml``.
        overrides: dotted keys to set before validation, e.g. ``{"env.horizon": 100}``.

    Raises:
        ConfigError: naming every bad key with its value and the allowed range.
    """
    if isinstance(config, SimulationConfig):
        if not overrides:
            return config
        data: dict[str, Any] = config.model_dump(mode="json")
        base = REPO_ROOT
    elif config is None or isinstance(config, str | Path):
        path = Path(config) if config is not None else DEFAULT_CONFIG_PATH
        path = _resolve_path(str(path), Path.cwd())
        data = _read_yaml(path)
        base = path.parent
    elif isinstance(config, dict):
        data, base = config, Path.cwd()
    else:
        raise ConfigError(
            f"config must be a path, dict or SimulationConfig, got {type(config).__name__}"
        )
    data = _resolve_sections(data, base)
    if overrides:
        # a section may itself be overridden by a file: market=configs/market/replay_heldout.yaml
        data = _resolve_sections(apply_overrides(data, overrides), Path.cwd())
    try:
        return SimulationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
