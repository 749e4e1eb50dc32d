"""What every trial of one sweep shares, and the MLflow tags of trial runs (no heavy imports: the
driver uses this without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: MLflow tags of a trial run
SWEEP_TAG = "defialloc.sweep"  # the parent run's id
TRIAL_TAG = "defialloc.trial"  # the trial key (unique in the sweep)
CONFIG_TAG = "defialloc.config_id"
LABEL_TAG = "defialloc.config_label"
OVERRIDES_TAG = "defialloc.trial_overrides"  # JSON of the searched values
SEED_TAG = "defialloc.trial_seed"
EARLY_STOPPED = "early_stopped"  # value of ``defialloc.status`` of a trial the scheduler stopped
#: ``defialloc.status`` values of trials a resumed driver does not run again
DONE_STATUSES = frozenset({"completed", EARLY_STOPPED})
SCORES_ARTIFACT = "sweep"  # artifact folder of the per-scenario validation of the best model


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares (sent to Ray workers with the trainable).

    Paths and the tracking URI are absolute: trials may run in another working folder or node.
    ``bases`` are resolved training configs (plain data); ``trial_overrides`` apply to every trial
    (a sweep's ``eval.final: false``); ``resume_runs`` maps trial keys to the unfinished runs a
    resumed driver continues from their run folder's checkpoint.
    """

    sweep: str
    parent_run_id: str
    experiment: str
    tracking_uri: str
    output_dir: str
    bases: dict[str, dict[str, Any]]
    metric: str
    trial_overrides: dict[str, Any] = field(default_factory=dict)
    resume_runs: dict[str, str] = field(default_factory=dict)
    cache: bool = False
