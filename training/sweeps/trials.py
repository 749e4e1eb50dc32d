"""Trials: what each one trains, and the sources that hand them out (grid, random, Optuna TPE).

A :class:`TrialSpec` is one configuration (a set of overrides of a base training config) on one
training seed. A *source* hands specs out one at a time and hears each trial's score back
(:class:`FixedTrials` for a list known up front: grids, random draws, experiments;
:class:`OptunaTrials` asks Optuna's TPE sampler for each new configuration and tells it the mean
score over the configuration's seeds). Both are plain Python: the Ray backend wraps them in a
``ray.tune.search.Searcher``, the local backend calls them directly, so both run the same trials.

Reproducibility: grid and random configurations depend only on the sweep file (random draws use
``numpy.random.default_rng(sampler_seed)``), never on the number of workers or the finishing order.
TPE's later suggestions depend on which scores it has heard when it is asked, so with several
workers (or after a resumed driver) an Optuna sweep can differ from a one-worker run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from defialloc.training.sweeps.config import ParamSpec, SweepConfig

WAIT = "wait"  # a source has nothing to hand out until a running trial completes


@dataclass(frozen=True)
class TrialSpec:
    """One configuration on one training seed.

    Attributes:
        key: unique within the sweep (``<config_id>-seed<seed>``): finished keys are not re-run.
        config_id: groups the seeds of one configuration (a hash of its overrides, or a name).
        label: human-readable configuration (``ppo.learning_rate=0.001`` or a variant name).
        base: which base training config of the plan the overrides apply to.
        overrides: the searched (or variant) values, dotted keys.
        seed: the training seed.
        run_name: MLflow run name of the trial's training run.
    """

    key: str
    config_id: str
    label: str
    base: str
    overrides: dict[str, Any]
    seed: int
    run_name: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        return cls(**data)


def config_id(overrides: dict[str, Any]) -> str:
    """Short stable hash of a configuration's overrides (same values -> same id)."""
    blob = json.dumps(overrides, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def label_of(overrides: dict[str, Any]) -> str:
    """``key=value, ...`` with floats in 4 significant digits."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items()
    )


def specs_for(
    configurations: Iterable[dict[str, Any]], seeds: Sequence[int], prefix: str, base: str = "base"
) -> list[TrialSpec]:
    """Every configuration on every seed, configuration-major (all seeds of the first, then ...)."""
    out = []
    for overrides in configurations:
        cid = config_id(overrides)
        for seed in seeds:
            out.append(
                TrialSpec(
                    key=f"{cid}-seed{seed}",
                    config_id=cid,
                    label=label_of(overrides),
                    base=base,
                    overrides=dict(overrides),
                    seed=int(seed),
                    run_name=f"{prefix}-{cid}-seed{seed}",
                )
            )
    return out


def grid_configurations(space: dict[str, ParamSpec]) -> list[dict[str, Any]]:
    """The product of every axis, in the order the file lists axes and values."""
    keys = list(space)
    axes = [space[k].values or [] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


def _draw(spec: ParamSpec, rng: np.random.Generator) -> Any:
    if spec.values is not None:
        return spec.values[int(rng.integers(len(spec.values)))]
    if spec.uniform is not None:
        return float(rng.uniform(*spec.uniform))
    if spec.loguniform is not None:
        low, high = np.log(spec.loguniform)
        return float(np.exp(rng.uniform(low, high)))
    low, high = spec.integer  # type: ignore[misc]
    return int(rng.integers(low, high + 1))


def random_configurations(space: dict[str, ParamSpec], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` independent draws (uniform over values and ranges; log-uniform for ``loguniform``)."""
    rng = np.random.default_rng(seed)
    return [{k: _draw(spec, rng) for k, spec in space.items()} for _ in range(n)]


class FixedTrials:
    """Hands out a list of specs in order, skipping those already finished (a resumed driver)."""

    def __init__(self, specs: Sequence[TrialSpec], finished: Iterable[str] = ()) -> None:
        done = set(finished)
        self.specs = list(specs)
        self.pending = [s for s in self.specs if s.key not in done]

    def next_trial(self) -> TrialSpec | str | None:
        """The next spec; ``None`` once every spec has been handed out."""
        return self.pending.pop(0) if self.pending else None

    def complete(self, spec: TrialSpec, score: float | None) -> None:
        """Nothing to learn from scores: the list is fixed."""


@dataclass
class _OpenConfig:
    trial: Any  # optuna.trial.Trial
    spec_seeds: list[int]
    scores: dict[int, float | None] = field(default_factory=dict)


class OptunaTrials:
    """Optuna TPE (ask/tell): each asked configuration runs on every seed; Optuna is told the mean
    best validation score over the seeds that produced one (a configuration whose every seed failed
    is told FAIL). ``finished`` (a resumed driver) re-enters earlier configurations: complete ones
    as finished Optuna trials, partial ones re-asked first with only their missing seeds."""

    def __init__(
        self,
        sweep: SweepConfig,
        prefix: str,
        finished: dict[str, tuple[dict[str, Any], int, float | None]] | None = None,
    ) -> None:
        from defialloc.training.sweeps.config import require_extra

        require_extra("optuna", "method: optuna")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep = sweep
        self.prefix = prefix
        self.seeds = list(sweep.seeds)
        self.distributions = {k: _distribution(spec) for k, spec in sweep.space.items()}
        sampler = optuna.samplers.TPESampler(seed=sweep.sampler_seed)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.open: dict[str, _OpenConfig] = {}
        self.queue: list[TrialSpec] = []
        self.asked = 0
        self._restore(finished or {})

    def _restore(self, finished: dict[str, tuple[dict[str, Any], int, float | None]]) -> None:
        """``finished``: trial key -> (overrides, seed, score) of trials done before a resume."""
        import optuna

        by_config: dict[str, tuple[dict[str, Any], dict[int, float | None]]] = {}
        for overrides, seed, score in finished.values():
            by_config.setdefault(config_id(overrides), (overrides, {}))[1][seed] = score
        for overrides, scores in by_config.values():
            self.asked += 1
            if set(scores) >= set(self.seeds):
                valid = [s for s in scores.values() if s is not None]
                self.study.add_trial(
                    optuna.trial.create_trial(
                        params=overrides,
                        distributions=self.distributions,
                        value=float(np.mean(valid)) if valid else None,
                        state=optuna.trial.TrialState.COMPLETE
                        if valid
                        else optuna.trial.TrialState.FAIL,
                    )
                )
            else:  # re-ask the same parameters first and run only the missing seeds
                self.study.enqueue_trial(overrides)
                trial = self.study.ask(self.distributions)
                self._open(trial, [s for s in self.seeds if s not in scores], dict(scores))

    def _open(self, trial: Any, seeds: list[int], scores: dict[int, float | None]) -> None:
        overrides = dict(trial.params)
        specs = [s for s in specs_for([overrides], seeds, self.prefix)]
        self.open[config_id(overrides)] = _OpenConfig(trial, list(self.seeds), scores)
        self.queue.extend(specs)

    def next_trial(self) -> TrialSpec | str | None:
        if self.queue:
            return self.queue.pop(0)
        if self.asked < int(self.sweep.num_samples or 0):
            self.asked += 1
            self._open(self.study.ask(self.distributions), list(self.seeds), {})
            return self.queue.pop(0)
        return WAIT if self.open else None

    def complete(self, spec: TrialSpec, score: float | None) -> None:
        entry = self.open.get(spec.config_id)
        if entry is None:
            return
        entry.scores[spec.seed] = score
        if set(entry.scores) < set(entry.spec_seeds):
            return
        import optuna

        valid = [s for s in entry.scores.values() if s is not None and np.isfinite(s)]
        if valid:
            self.study.tell(entry.trial, float(np.mean(valid)))
        else:
            self.study.tell(entry.trial, state=optuna.trial.TrialState.FAIL)
        del self.open[spec.config_id]


def _distribution(spec: ParamSpec) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if spec.values is not None:
        return CategoricalDistribution(list(spec.values))
    if spec.uniform is not None:
        return FloatDistribution(*spec.uniform)
    if spec.loguniform is not None:
        return FloatDistribution(*spec.loguniform, log=True)
    return IntDistribution(*spec.integer)  # type: ignore[misc]


def sweep_source(
    sweep: SweepConfig,
    prefix: str,
    finished: dict[str, tuple[dict[str, Any], int, float | None]] | None = None,
) -> FixedTrials | OptunaTrials:
    """The source of a sweep file's trials; ``finished`` (key -> (overrides, seed, score)) are the
    trials a resumed driver must not run again."""
    if sweep.search == "optuna":
        return OptunaTrials(sweep, prefix, finished)
    if sweep.search == "grid":
        configurations = grid_configurations(sweep.space)
    else:
        configurations = random_configurations(
            sweep.space, int(sweep.num_samples or 0), sweep.sampler_seed
        )
    return FixedTrials(specs_for(configurations, sweep.seeds, prefix), finished or {})
