"""Validated training configuration (``configs/train/*.yaml``).

A training config names the simulation config it trains on (a path, resolved like the sections of
``envs/config.py``, or an inline mapping) and holds everything else a run needs: the algorithm and
its hyperparameters, the network, normalization, the budget in env steps, seeds, evaluation,
checkpoints and the MLflow destination. Every model forbids unknown keys and bounds its numbers; an
error names the dotted key, the bad value and what is allowed.

Overrides use ``section.key=value`` (``ppo.learning_rate=1e-4``, ``n_envs=32``). Keys starting with
``simulation.``, ``env.`` or ``market.`` go to the simulation config (``env.horizon=60``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from defialloc.agents.mlflow_store import default_experiment
from defialloc.envs.config import (
    REPO_ROOT,
    ConfigError,
    SimulationConfig,
    StrictModel,
    apply_overrides,
    format_validation_error,
    load_config,
)
from defialloc.envs.yaml_io import read_yaml_mapping, resolve_config_path

SIMULATION_PREFIXES = ("simulation.", "env.", "market.")


class PolicyNetConfig(StrictModel):
    """Actor/critic networks (see ``defialloc.agents.sb3.policy_kwargs``)."""

    net_arch: list[int] = Field(default_factory=lambda: [64, 64], min_length=1, max_length=6)
    critic_arch: list[int] | None = Field(
        default=None, max_length=6, description="default: net_arch"
    )
    activation: Literal["tanh", "relu", "elu", "leaky_relu"] = "tanh"
    log_std_init: float = Field(
        default=0.0, ge=-5.0, le=2.0, description="initial log std of the Gaussian"
    )

    @field_validator("net_arch", "critic_arch")
    @classmethod
    def _positive_widths(cls, value: list[int] | None) -> list[int] | None:
        for width in value or []:
            if not 1 <= width <= 4096:
                raise ValueError(f"layer width {width} must be in [1, 4096]")
        return value


@dataclass(frozen=True)
class LinearSchedule:
    """SB3 schedule: ``initial`` at the start, ``final`` at the end, linear in between.

    SB3 calls it with ``progress_remaining`` (1 at the start of training, 0 at the end) and logs the
    value it returns (``train/learning_rate``) at every update.
    """

    initial: float
    final: float

    def __call__(self, progress_remaining: float) -> float:
        return self.final + (self.initial - self.final) * progress_remaining


class PPOConfig(StrictModel):
    """PPO hyperparameters (SB3 names). One rollout is ``n_steps * n_envs`` env steps."""

    learning_rate: float = Field(default=3e-4, gt=0.0, le=1.0)
    learning_rate_final: float | None = Field(
        default=None, gt=0.0, le=1.0, description="linear decay to this at the end (None: constant)"
    )
    n_steps: int = Field(default=64, ge=1, le=100_000, description="vec-env steps per rollout")
    batch_size: int = Field(default=512, ge=2, le=1_000_000)
    n_epochs: int = Field(default=10, ge=1, le=100)
    gamma: float = Field(default=0.99, gt=0.0, le=1.0)
    gae_lambda: float = Field(default=0.95, ge=0.0, le=1.0)
    clip_range: float = Field(default=0.2, gt=0.0, le=1.0)
    ent_coef: float = Field(default=0.0, ge=0.0, le=1.0)
    ent_coef_final: float | None = Field(
        default=None, ge=0.0, le=1.0, description="linear decay to this at the end (None: constant)"
    )
    vf_coef: float = Field(default=0.5, ge=0.0, le=10.0)
    max_grad_norm: float = Field(default=0.5, gt=0.0, le=100.0)
    target_kl: float | None = Field(default=None, gt=0.0, le=1.0)
    normalize_advantage: bool = True


class SACConfig(StrictModel):
    """SAC hyperparameters (SB3 names). ``train_freq`` counts vec-env steps, each ``n_envs`` transitions,
    so the update-to-data ratio is ``gradient_steps / (train_freq * n_envs)``."""

    learning_rate: float = Field(default=3e-4, gt=0.0, le=1.0)
    learning_rate_final: float | None = Field(
        default=None, gt=0.0, le=1.0, description="linear decay to this at the end (None: constant)"
    )
    buffer_size: int = Field(default=200_000, ge=100, le=10_000_000)
    learning_starts: int = Field(
        default=5_000, ge=0, description="env steps of random actions first"
    )
    batch_size: int = Field(default=256, ge=2, le=100_000)
    tau: float = Field(default=0.005, gt=0.0, le=1.0)
    gamma: float = Field(default=0.99, gt=0.0, le=1.0)
    train_freq: int = Field(default=1, ge=1, le=10_000, description="vec-env steps between updates")
    gradient_steps: int = Field(default=2, ge=1, le=10_000, description="gradient steps per update")
    ent_coef: str | float = Field(
        default="auto", description="'auto', 'auto_<init>' or a fixed float > 0"
    )
    target_entropy: str | float = "auto"

    @field_validator("ent_coef")
    @classmethod
    def _ent_coef(cls, value: str | float) -> str | float:
        if isinstance(value, str):
            if value != "auto" and not value.startswith("auto_"):
                raise ValueError(f"ent_coef={value!r} must be 'auto', 'auto_<init>' or a float > 0")
        elif not value > 0:
            raise ValueError(f"ent_coef={value} must be > 0")
        return value

    @field_validator("target_entropy")
    @classmethod
    def _target_entropy(cls, value: str | float) -> str | float:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"target_entropy={value!r} must be 'auto' or a float")
        return value


class NormalizeConfig(StrictModel):
    """SB3 ``VecNormalize`` (its statistics are saved with every model)."""

    obs: bool = True
    reward: bool = False
    clip_obs: float = Field(default=10.0, gt=0.0, le=1000.0)
    clip_reward: float = Field(default=10.0, gt=0.0, le=1000.0)


class EvalConfig(StrictModel):
    """Validation during training and the final evaluation against the baselines."""

    every_steps: int = Field(
        default=50_000, ge=0, description="env steps between validations (0: never)"
    )
    n_scenarios: int = Field(default=32, ge=1, le=10_000, description="validation scenario seeds")
    metric: Literal["mean_log_growth", "mean_sharpe", "median_log_growth"] = "mean_log_growth"
    final: bool = Field(default=True, description="backtest vs the baselines when training ends")
    test_scenarios: int = Field(default=64, ge=1, le=10_000, description="test scenario seeds")
    held_out: bool = Field(default=True, description="also backtest on the real held-out period")
    held_out_period: str = Field(
        default="heldout_2023", description="a period named in the evaluation config"
    )
    baselines: list[str] | None = Field(
        default=None,
        description="baseline names (default: policies_to_run of configs/evaluation/default.yaml)",
    )
    workers: int = Field(default=1, ge=1, le=64, description="backtest processes")
    plots: bool = Field(
        default=True, description="log the backtest plots (PNG) with the evaluation runs"
    )


class CheckpointConfig(StrictModel):
    """Checkpoints (model, VecNormalize, SAC replay buffer, step count) for ``--resume``."""

    every_steps: int = Field(
        default=50_000, ge=0, description="env steps between checkpoints (0: end only)"
    )
    replay_buffer: bool = Field(default=True, description="SAC: save the replay buffer too")


class MlflowConfig(StrictModel):
    """Where the run is tracked."""

    experiment: str = Field(
        default_factory=default_experiment,
        min_length=1,
        max_length=200,
        description="default: $MLFLOW_EXPERIMENT_NAME, else defialloc (shared by every command)",
    )
    run_name: str | None = Field(default=None, max_length=200)
    register_model: bool = True
    registered_name: str | None = Field(
        default=None, description="registry name (default: defialloc-<algo>)"
    )
    alias: str = Field(
        default="candidate",
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="set on the new version",
    )


class TrainConfig(StrictModel):
    """One training run."""

    algo: Literal["ppo", "sac"]
    simulation: SimulationConfig
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="seeds torch, numpy and the envs")
    n_envs: int = Field(default=64, ge=1, le=4096, description="envs stepped together")
    total_timesteps: int = Field(
        ge=1, le=10**10, description="training budget in env steps (all envs)"
    )
    torch_threads: int = Field(
        default=1, ge=1, le=256, description="1 is fastest for small MLPs on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = Field(
        default="runs", description="checkpoints and models go to <output_dir>/<run_id>/"
    )
    policy: PolicyNetConfig = Field(default_factory=PolicyNetConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    sac: SACConfig = Field(default_factory=SACConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @model_validator(mode="after")
    def _consistent_batches(self) -> TrainConfig:
        if self.algo == "ppo":
            rollout = self.ppo.n_steps * self.n_envs
            if self.ppo.batch_size > rollout:
                raise ValueError(
                    f"ppo.batch_size={self.ppo.batch_size} must be <= ppo.n_steps * n_envs = {rollout}"
                )
            if rollout < 2:
                raise ValueError("ppo.n_steps * n_envs must be >= 2 (advantage normalization)")
        else:
            if self.sac.batch_size > self.sac.buffer_size:
                raise ValueError(
                    f"sac.batch_size={self.sac.batch_size} must be <= sac.buffer_size={self.sac.buffer_size}"
                )
            if self.sac.buffer_size < self.n_envs:
                raise ValueError(
                    f"sac.buffer_size={self.sac.buffer_size} must be >= n_envs={self.n_envs}"
                )
        return self

    # ---------------------------------------------------------------- views
    def agent_kwargs(self) -> dict[str, Any]:
        """The mapping ``defialloc.agents.sb3.make_agent`` takes: the policy block plus the algorithm's keys."""
        policy = self.policy.model_dump()
        hyper = self.ppo.model_dump() if self.algo == "ppo" else self.sac.model_dump()
        final = hyper.pop("learning_rate_final")
        if final is not None:
            hyper["learning_rate"] = LinearSchedule(hyper["learning_rate"], final)
        hyper.pop("ent_coef_final", None)  # a callback moves PPO's ent_coef (training/train.py)
        return {"policy": policy, **hyper}

    @property
    def registered_name(self) -> str:
        """Model Registry name of this run's policy."""
        return self.mlflow.registered_name or f"defialloc-{self.algo}"

    def resolved(self) -> dict[str, Any]:
        """The fully resolved config as plain data (simulation inline); loads back unchanged."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False)

    def config_hash(self) -> str:
        """Short stable hash of the resolved config (MLflow tag ``config_hash``)."""
        blob = json.dumps(self.resolved(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def flat_params(self) -> dict[str, str]:
        """The resolved config flattened to ``{"ppo.learning_rate": "0.0003", ...}`` (MLflow params)."""
        return flatten(self.resolved())


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys; lists and scalars become their JSON text."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = data if isinstance(data, str) else json.dumps(data)
    return out


def _read_mapping(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "training config")


def _find(name: str, base: Path) -> Path:
    return resolve_config_path(name, base)


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split dotted overrides into (training keys, simulation keys without the ``simulation.`` prefix)."""
    train: dict[str, Any] = {}
    sim: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if dotted.startswith("simulation."):
            sim[dotted.removeprefix("simulation.")] = value
        elif dotted.startswith(SIMULATION_PREFIXES):
            sim[dotted] = value
        else:
            train[dotted] = value
    return train, sim


def load_train_config(
    config: str | Path | dict[str, Any] | TrainConfig,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Load and validate a training config.

    Args:
        config: a YAML path, a mapping (e.g. a run's resolved config), or a ready TrainConfig.
        overrides: dotted keys, e.g. ``{"ppo.learning_rate": 1e-4, "env.horizon": 60}``.

    Raises:
        ConfigError: naming every bad key (dotted from the training config's root), its value and
            the allowed range.
    """
    if isinstance(config, TrainConfig):
        data, base = config.resolved(), REPO_ROOT
    elif isinstance(config, dict):
        data, base = dict(config), Path.cwd()
    elif isinstance(config, str | Path):
        path = _find(str(config), Path.cwd())
        data, base = _read_mapping(path), path.parent
    else:
        raise ConfigError(
            f"training config must be a path, dict or TrainConfig, got {type(config).__name__}"
        )
    train_over, sim_over = split_overrides(overrides or {})
    if train_over:
        data = apply_overrides(data, train_over)
    # ``simulation_overrides``: dotted simulation keys the training config sets on top of its
    # simulation file (e.g. the ablation's winning action kind); command-line overrides win.
    file_sim_over = data.pop("simulation_overrides", None) or {}
    if not isinstance(file_sim_over, dict):
        raise ConfigError(
            f"simulation_overrides = {file_sim_over!r}: must be a mapping of dotted simulation keys, "
            "e.g. {env.action.kind: delta}"
        )
    sim_over = {**split_overrides(dict(file_sim_over))[1], **sim_over}
    stray = sorted(
        k for k in file_sim_over if not str(k).replace("__", ".").startswith(SIMULATION_PREFIXES)
    )
    if stray:
        raise ConfigError(
            f"simulation_overrides: {stray} are not simulation keys; allowed prefixes: "
            f"{', '.join(SIMULATION_PREFIXES)}"
        )
    if "simulation" not in data:
        raise ConfigError(
            "simulation: missing; name a simulation config, e.g. simulation: configs/default.yaml"
        )
    simulation = data["simulation"]
    if isinstance(simulation, str):
        simulation = _find(simulation, base)
    elif not isinstance(simulation, dict | SimulationConfig):
        raise ConfigError(
            f"simulation = {simulation!r}: must be a YAML path or a mapping of sections"
        )
    try:
        data["simulation"] = load_config(simulation, sim_over or None)
    except ConfigError as exc:
        raise ConfigError(f"simulation: {exc}") from None
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
