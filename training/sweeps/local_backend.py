"""Trials in this process, one after another (``--backend local``): no Ray, same trials.

Useful for debugging a trial and where starting Ray is not worth it (an experiment's few runs). A
failing trial stops the sweep with its error (there is no worker to retry on); a killed driver
resumes from the run folders' checkpoints. Early stopping needs the Ray backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from defialloc.training.sweeps.context import SweepContext
from defialloc.training.sweeps.trials import WAIT, FixedTrials, OptunaTrials, TrialSpec


def run_local(
    source: FixedTrials | OptunaTrials,
    ctx: SweepContext,
    on_result: Callable[[TrialSpec, dict[str, Any]], None],
) -> list[str]:
    """Run every trial the source hands out; returns the keys of failed trials (none: it raises)."""
    from defialloc.training.sweeps.trial import LocalSession, run_trial

    while True:
        spec = source.next_trial()
        if spec is None:
            return []
        if spec == WAIT or not isinstance(spec, TrialSpec):  # cannot happen one at a time
            raise RuntimeError("the trial source is waiting for a result while nothing runs")
        try:
            result = run_trial(spec, ctx, LocalSession())
        except BaseException:
            source.complete(spec, None)
            raise
        score = result.get("score")
        ok = isinstance(score, float) and math.isfinite(score)
        source.complete(spec, score if ok else None)
        on_result(spec, result)
