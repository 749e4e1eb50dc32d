"""Multi-seed experiments: several training configs x training seeds, one MLflow experiment, one comparison.

An experiment file (``configs/experiments/*.yaml``) lists training configs, the training seeds of each and
overrides; every run trains, keeps its best validated model and is then backtested against the baselines
on the test scenarios and the held-out period (the training config's ``eval`` section). The comparison
(``evaluation.report.compare``) stratifies the bootstrap over training seeds.

An optional ``ablation`` section runs first: each variant (a set of overrides: action kind, decision
interval, observation blocks, reward, ...) of a base training config is trained on its seeds WITHOUT
any test or held-out evaluation, scored by its best validation metric (validation scenarios only), and
the winning variant's overrides are applied to the runs named in ``apply_to``. The ablation's runs
live in their own MLflow experiment (``<experiment>-ablation``) with a summary run holding the table,
so the test scenarios and the held-out period are evaluated once, at the end, on the chosen settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from envs.config import ConfigError, format_validation_error
from training.config import load_train_config


class ExperimentRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="training config YAML")
    seeds: list[int] = Field(min_length=1, description="training seeds")
    overrides: dict[str, Any] = Field(default_factory=dict)


class AblationConfig(BaseModel):
    """Variants of a base config compared on validation scenarios only (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="base training config YAML of every variant")
    seeds: list[int] = Field(min_length=1, description="training seeds of every variant")
    overrides: dict[str, Any] = Field(default_factory=dict, description="shared by every variant")
    variants: dict[str, dict[str, Any]] = Field(min_length=2, description="name -> overrides")
    apply_to: list[str] = Field(
        default_factory=list,
        description="run configs (as written under runs) that get the winner's overrides",
    )


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(min_length=1, description="MLflow experiment of every run")
    ablation: AblationConfig | None = None
    runs: list[ExperimentRun] = Field(min_length=1)

    @model_validator(mode="after")
    def _apply_to_names_runs(self) -> ExperimentConfig:
        if self.ablation is not None:
            unknown = sorted(set(self.ablation.apply_to) - {run.config for run in self.runs})
            if unknown:
                raise ValueError(
                    f"ablation.apply_to names configs that are not runs: {unknown}; runs: "
                    f"{sorted({run.config for run in self.runs})}"
                )
        return self


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment file; errors name the key, the value and what is allowed."""
    data = yaml.safe_load(Path(path).read_text())
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def run_experiment(
    path: str | Path,
    console: Console,
    *,
    out: Path | None = None,
    cache: bool = False,
    only: list[str] | None = None,
) -> None:
    """Train every (config, seed) of the experiment, then print and write the comparison.

    With ``cache`` the baselines' backtests run once per scenario set, not once per trained run
    (:mod:`evaluation.backtest_cache`). ``only`` trains just the runs of these configs (as written
    under ``runs``), e.g. to run two halves of an experiment in two processes; the ablation (reused
    once finished) and the comparison still cover the whole experiment.
    """
    from evaluation.report import compare
    from training.train import train

    spec = load_experiment(path)
    known = [run.config for run in spec.runs]
    unknown = sorted(set(only or []) - set(known))
    if unknown:
        raise ConfigError(f"--runs {unknown}: not runs of {path}; runs: {known}")
    chosen: dict[str, Any] = {}
    if spec.ablation is not None:
        chosen = run_ablation(spec.experiment, spec.ablation, console, cache=cache)
    for run in spec.runs:
        if only and run.config not in only:
            continue
        for seed in run.seeds:
            selected = chosen if spec.ablation and run.config in spec.ablation.apply_to else {}
            overrides = {
                **run.overrides,
                **selected,
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


def run_ablation(
    experiment: str, ablation: AblationConfig, console: Console, *, cache: bool = False
) -> dict[str, Any]:
    """Train every variant x seed (no test or held-out evaluation), score it by its best
    validation metric, log the table, and return the winning variant's overrides.

    A finished ablation of the same spec (a summary run in ``<experiment>-ablation`` tagged with
    the spec's hash) is reused, not re-run: an interrupted experiment resumes after its ablation.
    """
    import hashlib
    import json

    import mlflow
    import numpy as np

    from evaluation.tracking import setup_mlflow
    from training.train import train

    name = f"{experiment}-ablation"
    spec_hash = hashlib.sha256(
        json.dumps(ablation.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()[:12]
    experiment_id = setup_mlflow(name)
    done = mlflow.MlflowClient().search_runs(
        [experiment_id],
        f"tags.kind = 'ablation' and tags.spec_hash = '{spec_hash}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if done:
        winner = done[0].data.tags["winner"]
        console.print(
            f"ablation {spec_hash} already ran (run {done[0].info.run_id}): winner {winner}"
        )
        return dict(ablation.variants[winner])
    scores: dict[str, list[float]] = {}
    metric = ""
    for variant, changes in ablation.variants.items():
        for seed in ablation.seeds:
            overrides = {
                **ablation.overrides,
                **changes,
                "seed": seed,
                "eval.final": False,  # validation only: the test set is for the final runs
                "mlflow.experiment": name,
                "mlflow.run_name": f"{variant}-seed{seed}",
                "mlflow.register_model": False,
            }
            cfg = load_train_config(ablation.config, overrides)
            metric = cfg.eval.metric
            best = _finished_ablation_run(experiment_id, spec_hash, variant, seed, metric)
            if best is not None:
                console.print(f"{name}: {variant} seed {seed} already trained (best {best:+.4f})")
                scores.setdefault(variant, []).append(best)
                continue
            console.rule(f"{name}: {variant} seed {seed} ({cfg.total_timesteps:,} env steps)")
            result = train(cfg, cache=cache, tags=_ablation_tags(spec_hash, variant, seed))
            if result.best_metric is None:
                raise ConfigError(
                    f"ablation variant {variant!r} has no validation score: set eval.every_steps > 0"
                )
            scores.setdefault(variant, []).append(float(result.best_metric))
    table = sorted(((float(np.mean(v)), variant, v) for variant, v in scores.items()), reverse=True)
    winner = table[0][1]
    rows = [
        {"variant": v, f"mean best validation {metric}": m, "per seed": ", ".join(f"{x:+.4f}" for x in xs),
         "overrides": ", ".join(f"{k}={w}" for k, w in ablation.variants[v].items())}
        for m, v, xs in table
    ]  # fmt: skip
    with mlflow.start_run(experiment_id=experiment_id, run_name="ablation-summary"):
        mlflow.set_tags({"kind": "ablation", "winner": winner, "spec_hash": spec_hash})
        mlflow.log_params({f"winner.{k}": str(v) for k, v in ablation.variants[winner].items()})
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "ablation.json")
    from rich.table import Table

    out = Table(title=f"ablation on validation scenarios ({metric}); winner: {winner}")
    for key in ("variant", "mean", "per seed", "overrides"):
        out.add_column(key)
    for m, v, xs in table:  # the MLflow table has the full overrides; the console a short form
        short = ", ".join(_short_override(k, w) for k, w in ablation.variants[v].items())
        out.add_row(v, f"{m:+.4f}", ", ".join(f"{x:+.4f}" for x in xs), short)
    console.print(out)
    return dict(ablation.variants[winner])


def _short_override(key: str, value: Any) -> str:
    """``env.observation.blocks=[...]`` as ``blocks=garch_vol+regime+...`` (console tables)."""
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, list):
        return f"{name}={'+'.join(map(str, value))}"
    return f"{name}={value}"


def _ablation_tags(spec_hash: str, variant: str, seed: int) -> dict[str, str]:
    """Tags that identify one ablation run, so a resumed ablation reuses it (same spec only)."""
    return {
        "ablation.spec_hash": spec_hash,
        "ablation.variant": variant,
        "ablation.seed": str(seed),
    }


def _finished_ablation_run(
    experiment_id: str, spec_hash: str, variant: str, seed: int, metric: str
) -> float | None:
    """The best validation ``metric`` of a FINISHED run of this spec, variant and seed, if any."""
    import mlflow

    tags = _ablation_tags(spec_hash, variant, seed)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], f"{query} and attributes.status = 'FINISHED'", max_results=1
    )
    if not runs:
        return None
    value = runs[0].data.metrics.get(f"val/best_{metric}")
    return None if value is None else float(value)
