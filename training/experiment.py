"""Multi-seed experiments: several training configs x training seeds, one MLflow experiment, one comparison.

An experiment file (``configs/experiments/*.yaml``) lists training configs, the training seeds of each and
overrides; every run trains, keeps its best validated model and is then backtested against the baselines
on the test scenarios and the held-out period (the training config's ``eval`` section). The comparison
(``evaluation.report.compare``) stratifies the bootstrap over training seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from envs.config import ConfigError, format_validation_error
from training.config import load_train_config


class ExperimentRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="training config YAML")
    seeds: list[int] = Field(min_length=1, description="training seeds")
    overrides: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(min_length=1, description="MLflow experiment of every run")
    runs: list[ExperimentRun] = Field(min_length=1)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment file; errors name the key, the value and what is allowed."""
    data = yaml.safe_load(Path(path).read_text())
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def run_experiment(
    path: str | Path, console: Console, *, out: Path | None = None, cache: bool = False
) -> None:
    """Train every (config, seed) of the experiment, then print and write the comparison.

    With ``cache`` the baselines' backtests run once per scenario set, not once per trained run
    (:mod:`evaluation.backtest_cache`).
    """
    from evaluation.report import compare
    from training.train import train

    spec = load_experiment(path)
    for run in spec.runs:
        for seed in run.seeds:
            overrides = {
                **run.overrides,
                "seed": seed,
                "mlflow.experiment": spec.experiment,
                "mlflow.run_name": f"{Path(run.config).stem}-seed{seed}",
            }
            cfg = load_train_config(run.config, overrides)
            console.rule(
                f"{spec.experiment}: {cfg.algo.upper()} seed {seed} ({cfg.total_timesteps:,} env steps)"
            )
            result = train(cfg, cache=cache)
            console.print(
                f"run {result.run_id}: {result.num_timesteps:,} steps at {result.env_steps_per_s:,.0f}/s"
            )
    report = out or Path("reports") / f"{spec.experiment}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    compare(spec.experiment, out=report, console=console)
    console.print(f"report: {report}")
