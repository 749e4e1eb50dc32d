"""``defialloc bench sweep``: wall time of one sweep with 1, 2, ... Ray workers.

Each worker count runs the whole sweep from scratch (``fresh``) on a local Ray, with its own
temporary MLflow store and output folder (nothing of the user's tracking store is read or
written), and is timed from the driver's start to its result table: Ray's start-up, every trial's
training and validation, and the table are all inside the figure, as a user waits for them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from defialloc.envs.config import ConfigError


def bench_sweep(
    config: str | Path,
    workers: list[int],
    overrides: dict[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the sweep file once per worker count; return the wall times (seconds) and trial counts.

    ``console`` receives the sweeps' own output (default: a console writing nowhere).
    """
    from defialloc.training.sweeps.config import load_sweep
    from defialloc.training.sweeps.driver import plan_from_sweep, run_plan

    if not workers or any(w < 1 for w in workers):
        raise ConfigError(f"--workers {workers}: allowed: positive integers, e.g. 1,2")
    sweep, base = load_sweep(config, overrides or {})
    quiet = console or Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    runs: list[dict[str, Any]] = []
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    os.environ.pop("RAY_ADDRESS", None)  # always this machine's own local Ray
    try:
        for count in workers:
            with tempfile.TemporaryDirectory(prefix="defialloc-bench-sweep-") as tmp:
                os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
                plan = plan_from_sweep(sweep, base)
                plan.out_dir = Path(tmp) / "reports"
                start = time.perf_counter()
                outcome = run_plan(
                    plan,
                    quiet,
                    backend="ray",
                    workers=count,
                    fresh=True,
                    output_dir=Path(tmp) / "runs",
                )
                wall = time.perf_counter() - start
            if outcome.failed:
                raise ConfigError(
                    f"bench sweep: trials failed with {count} worker(s): {outcome.failed}"
                )
            runs.append({"workers": count, "wall_s": wall, "trials": outcome.n_trials})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    first = runs[0]["wall_s"]
    for run in runs:
        run["speedup"] = first / run["wall_s"]
    return {
        "sweep": sweep.sweep,
        "config": str(config),
        "cpus": os.cpu_count(),
        "trial_cpus": sweep.resources.cpu,
        "total_timesteps": base.total_timesteps,
        "runs": runs,
    }
