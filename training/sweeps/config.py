"""The sweep file (``configs/sweeps/*.yaml``), validated on load.

Example (``configs/sweeps/smoke.yaml``)::

    sweep: smoke                      # name of the parent run and of the result folder
    experiment: defialloc-sweeps      # MLflow experiment of the parent run and its nested trials
    config: configs/train/ppo.yaml    # base training config
    overrides: {total_timesteps: 20000, eval.every_steps: 5000}   # shared by every trial
    seeds: [0]                        # training seeds: every configuration runs on each
    search: grid                      # grid | random | optuna (TPE)
    space:
      ppo.learning_rate: {values: [3.0e-4, 1.0e-3]}
    scheduler: null                   # or {kind: asha | median, grace_steps: 10000, ...}

A parameter is one of ``{values: [...]}`` (a grid axis, or a categorical choice for random and
Optuna), ``{uniform: [low, high]}``, ``{loguniform: [low, high]}`` or ``{integer: [low, high]}``
(inclusive). Every key and every value (a range's ends) is checked against the base training
config when the file loads, so a typo fails before anything trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from defialloc.envs.config import ConfigError, StrictModel, format_validation_error
from defialloc.envs.yaml_io import read_yaml_mapping
from defialloc.training.config import TrainConfig, load_train_config

#: trials never evaluate on the test scenarios or the held-out period, nor register a model
TRIAL_OVERRIDES = {"eval.final": False, "mlflow.register_model": False}


class ParamSpec(StrictModel):
    """One searched hyperparameter: exactly one of the four forms."""

    values: list[Any] | None = Field(default=None, min_length=1, description="grid / categorical")
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ParamSpec:
        given = [
            k
            for k in ("values", "uniform", "loguniform", "integer")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of values, uniform, loguniform, integer (got {given or 'none'})"
            )
        for key in ("uniform", "loguniform", "integer"):
            bounds = getattr(self, key)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{key} = {list(bounds)}: need low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform = {list(self.loguniform)}: need low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(
            k
            for k in ("values", "uniform", "loguniform", "integer")
            if getattr(self, k) is not None
        )

    def probe_values(self) -> list[Any]:
        """Values checked against the base config on load: every grid value, or a range's ends."""
        return list(self.values) if self.values is not None else list(getattr(self, self.kind))


class SchedulerConfig(StrictModel):
    """Early stopping on the validation score (the trial's best ``eval.metric`` so far).

    Time is env steps: a trial is judged only after ``grace_steps``. ASHA keeps the best
    ``1 / reduction_factor`` of the trials at each rung; the median rule stops a trial whose best
    score is below the median of the other trials' running averages at the same step.
    """

    kind: Literal["asha", "median"]
    grace_steps: int = Field(ge=1, description="env steps before a trial can be stopped")
    reduction_factor: float = Field(default=2.0, gt=1.0, le=16.0, description="ASHA only")
    min_samples: int = Field(default=3, ge=1, le=1000, description="median rule only")


class ResourcesConfig(StrictModel):
    """Resources of one trial (Ray schedules trials onto nodes that have them)."""

    cpu: float = Field(default=1.0, gt=0.0, le=1024.0)
    gpu: float = Field(default=0.0, ge=0.0, le=64.0)


class SweepConfig(StrictModel):
    """A sweep: configurations of a base training config x training seeds (module docstring)."""

    sweep: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="sweep name")
    experiment: str = Field(default="defialloc-sweeps", min_length=1, max_length=200)
    config: str = Field(description="base training config YAML")
    overrides: dict[str, Any] = Field(default_factory=dict, description="shared by every trial")
    seeds: list[int] = Field(min_length=1, max_length=1000, description="training seeds")
    search: Literal["grid", "random", "optuna"] = "grid"
    space: dict[str, ParamSpec] = Field(min_length=1)
    num_samples: int | None = Field(
        default=None, ge=1, le=100_000, description="random / optuna: configurations to draw"
    )
    sampler_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="random / optuna")
    scheduler: SchedulerConfig | None = None
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_failures: int = Field(
        default=2, ge=0, le=100, description="retries of a failed trial (from its checkpoint)"
    )
    out: str = Field(
        default="reports/sweeps", description="folder of the result table and best config"
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds = {seeds}: need distinct integers >= 0")
        return seeds

    @model_validator(mode="after")
    def _search_needs(self) -> SweepConfig:
        if self.search == "grid":
            ranges = sorted(k for k, p in self.space.items() if p.values is None)
            if ranges:
                raise ValueError(
                    f"search = grid needs every space entry as {{values: [...]}}; ranges: {ranges} "
                    "(use search: random or optuna)"
                )
            if self.num_samples is not None:
                raise ValueError(
                    "num_samples is for random and optuna; a grid runs every combination"
                )
        elif self.num_samples is None:
            raise ValueError(f"search = {self.search} needs num_samples (configurations to draw)")
        return self

    def n_configurations(self) -> int:
        """Configurations the search will try (grid: the product of the axes)."""
        if self.search != "grid":
            return int(self.num_samples or 0)
        n = 1
        for spec in self.space.values():
            n *= len(spec.values or [])
        return n


def load_sweep(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[SweepConfig, TrainConfig]:
    """Load and validate a sweep file; return it with its base training config (shared overrides
    applied). ``overrides`` (``key=value`` of the command line) go to the shared overrides.

    Raises:
        ConfigError: naming the bad key (``space.ppo.learning_rate``, ``scheduler.kind``, ...), the
            value and what is allowed; every searched key and value is tried on the base config.
    """
    data = read_yaml_mapping(Path(path), "sweep config")
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if overrides:
        sweep = sweep.model_copy(update={"overrides": {**sweep.overrides, **overrides}})
    clash = sorted(set(sweep.overrides) & set(sweep.space))
    if clash:
        raise ConfigError(
            f"overrides and space both set {clash}: a key is either shared or searched"
        )
    try:
        base = load_train_config(sweep.config, sweep.overrides)
    except ConfigError as exc:
        raise ConfigError(f"config {sweep.config} with overrides: {exc}") from None
    for key, spec in sweep.space.items():
        for value in spec.probe_values():
            try:
                load_train_config(base, {key: value, **TRIAL_OVERRIDES})
            except ConfigError as exc:
                raise ConfigError(f"space.{key} = {value!r}: {exc}") from None
    if sweep.scheduler is not None:
        if base.eval.every_steps <= 0:
            raise ConfigError(
                "scheduler: early stopping needs validation: set eval.every_steps > 0"
            )
        if sweep.scheduler.grace_steps >= base.total_timesteps:
            raise ConfigError(
                f"scheduler.grace_steps = {sweep.scheduler.grace_steps} must be < total_timesteps = "
                f"{base.total_timesteps} (else nothing can be stopped)"
            )
    return sweep, base


def require_extra(module: str, what: str) -> None:
    """Refuse, with the install command, when the optional ``sweeps`` extra (Ray Tune, Optuna) is
    missing: `make demo` installs the runtime only; `make test` and ``pip install -e '.[sweeps]'`` add it."""
    import importlib.util

    from defialloc.envs.config import ConfigError

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{what} needs the optional package {module!r}, which is not installed: "
            "pip install -e '.[sweeps]' (or use --backend local and a grid or random search)"
        )
