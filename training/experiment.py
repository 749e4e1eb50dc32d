"""Multi-seed experiments: several training configs x training seeds, one MLflow experiment, one comparison.

An experiment file (``configs/experiments/*.yaml``) lists training configs, the training seeds of each and
overrides; every run trains, keeps its best validated model and is then backtested against the baselines
on the test scenarios and the held-out period (the training config's ``eval`` section). The comparison
(``defialloc.evaluation.report.compare``) stratifies the bootstrap over training seeds.

An optional ``ablation`` section runs first: each variant (a set of overrides: action kind, decision
interval, observation blocks, reward, ...) of a base training config is trained on its seeds WITHOUT
any test or held-out evaluation, scored by its best validation metric (validation scenarios only), and
the winning variant's overrides are applied to the runs named in ``apply_to``. The ablation's runs
live in their own MLflow experiment (``<experiment>-ablation``), nested under a parent run holding the
table, so the test scenarios and the held-out period are evaluated once, at the end, on the chosen
settings.

Both phases run through the sweep machinery (:mod:`defialloc.training.sweeps.driver`): every training run is a
trial nested under a parent run (``ablation`` in ``<experiment>-ablation``, ``<experiment>-runs`` in
the experiment), one after another in this process by default or on Ray (``--backend ray``, with
``--workers`` and ``--address``); running the same command again resumes an interrupted experiment
without re-running finished runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from defialloc.envs.config import ConfigError, format_validation_error
from defialloc.training.config import load_train_config
from defialloc.training.sweeps.config import TRIAL_OVERRIDES
from defialloc.training.sweeps.driver import SweepPlan
from defialloc.training.sweeps.trials import FixedTrials, TrialSpec


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
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    fresh: bool = False,
) -> None:
    """Train every (config, seed) of the experiment through the sweep machinery
    (:mod:`defialloc.training.sweeps.driver`: nested MLflow runs, resume, local or Ray backend), then print
    and write the comparison.

    With ``cache`` the baselines' backtests run once per scenario set, not once per trained run
    (:mod:`defialloc.evaluation.backtest_cache`). ``only`` trains just the runs of these configs (as written
    under ``runs``), e.g. to run two halves of an experiment in two processes; the ablation (reused
    once finished) and the comparison still cover the whole experiment.
    """
    from defialloc.evaluation.report import compare
    from defialloc.training.sweeps.driver import run_plan

    spec = load_experiment(path)
    known = [run.config for run in spec.runs]
    unknown = sorted(set(only or []) - set(known))
    if unknown:
        raise ConfigError(f"--runs {unknown}: not runs of {path}; runs: {known}")
    options = {"backend": backend, "address": address, "workers": workers, "fresh": fresh}
    chosen: dict[str, Any] = {}
    if spec.ablation is not None:
        chosen = run_ablation(spec.experiment, spec.ablation, console, cache=cache, **options)
    bases: dict[str, dict[str, Any]] = {}
    specs: list[TrialSpec] = []
    for index, run in enumerate(spec.runs):
        if only and run.config not in only:
            continue
        selected = chosen if spec.ablation and run.config in spec.ablation.apply_to else {}
        base = load_train_config(run.config, {**run.overrides, **selected})
        name = f"{index}:{run.config}"
        bases[name] = base.resolved()
        stem = Path(run.config).stem
        for seed in run.seeds:
            specs.append(
                TrialSpec(
                    key=f"{index}-{stem}-seed{seed}",
                    config_id=f"{index}-{stem}",
                    label=stem if not selected else f"{stem} ({', '.join(selected)} from ablation)",
                    base=name,
                    overrides={},
                    seed=seed,
                    run_name=f"{stem}-seed{seed}",
                )
            )
    first = load_train_config(bases[next(iter(bases))])
    plan = SweepPlan(
        name=f"{spec.experiment}-runs",
        experiment=spec.experiment,
        kind="experiment",
        bases=bases,
        source=lambda finished: FixedTrials(specs, finished),
        metric=first.eval.metric,
        periods_per_year=365.0 / first.simulation.market.step_days,
        max_steps=max(load_train_config(b).total_timesteps for b in bases.values()),
        params={
            "experiment": spec.model_dump(mode="json"),
            "ablation_winner": chosen,
            "only": sorted(only or []),
        },
    )
    run_plan(plan, console, cache=cache, output_dir=first.output_dir, **options)
    report = out or Path("reports") / f"{spec.experiment}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    compare(spec.experiment, out=report, console=console)
    console.print(f"report: {report}")


def run_ablation(
    experiment: str,
    ablation: AblationConfig,
    console: Console,
    *,
    cache: bool = False,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train every variant x seed (no test or held-out evaluation) as a sweep in
    ``<experiment>-ablation``, score each variant by the mean of its runs' best validation metric,
    log the table on the ablation's parent run (tag ``kind=ablation``, the winner's overrides as
    params ``winner.<key>``), and return the winning variant's overrides."""
    from defialloc.training.sweeps.driver import run_plan
    from defialloc.training.sweeps.tracking import finished_parent

    base = load_train_config(ablation.config, {**ablation.overrides, **TRIAL_OVERRIDES})
    if base.eval.every_steps <= 0:
        raise ConfigError("ablation: variants are scored on validation: set eval.every_steps > 0")
    for variant, changes in ablation.variants.items():  # every variant loads before anything trains
        try:
            load_train_config(base, changes)
        except ConfigError as exc:
            raise ConfigError(f"ablation.variants.{variant}: {exc}") from None
    specs = [
        TrialSpec(
            key=f"{variant}-seed{seed}",
            config_id=variant,
            label=variant,
            base="base",
            overrides=dict(changes),
            seed=seed,
            run_name=f"{variant}-seed{seed}",
        )
        for variant, changes in ablation.variants.items()
        for seed in ablation.seeds
    ]
    plan = SweepPlan(
        name="ablation",
        experiment=f"{experiment}-ablation",
        kind="ablation",
        bases={"base": base.resolved()},
        source=lambda finished: FixedTrials(specs, finished),
        metric=base.eval.metric,
        periods_per_year=365.0 / base.simulation.market.step_days,
        max_steps=base.total_timesteps,
        trial_overrides=dict(TRIAL_OVERRIDES),
        params={"ablation": ablation.model_dump(mode="json")},
    )
    done = None if fresh else finished_parent(plan.experiment, plan.name, plan.digest())
    winner = None if done is None else done.data.tags.get("winner")
    if winner in ablation.variants:  # an interrupted experiment resumes after its ablation
        console.print(f"ablation already ran (parent run {done.info.run_id}): winner {winner}")
        return dict(ablation.variants[winner])
    outcome = run_plan(
        plan,
        console,
        backend=backend,  # type: ignore[arg-type]
        address=address,
        workers=workers,
        fresh=fresh,
        cache=cache,
        output_dir=base.output_dir,
    )
    if outcome.winner_label is None:
        raise ConfigError("ablation: no variant completed with a validation score")
    return dict(ablation.variants[outcome.winner_label])
