"""Everything training sends to MLflow that is not a plain log call.

- :class:`MLflowKVWriter`: an SB3 ``KVWriter`` that forwards each logger dump (``train/loss``,
  ``rollout/ep_rew_mean``, ``time/fps``, ...) to the run as metrics at the current timestep, as
  they are produced (SB3 has no MLflow output of its own).
- :func:`log_metrics`: a batch of finite metrics at a step.

The registered policy model (ONNX + a pyfunc that needs no code of this repository) is logged by
``agents/registry.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from stable_baselines3.common.logger import KVWriter, Logger, make_output_format

#: SB3's name for this output in ``logger.record(..., exclude=...)``
FORMAT_NAME = "mlflow"
#: MLflow's batch limit on metrics per ``log_batch`` call
MAX_METRICS_PER_BATCH = 1000


class MLflowKVWriter(KVWriter):
    """Forward SB3 logger dumps to an MLflow run as metrics (step = SB3's ``num_timesteps``).

    Non-numeric values (strings, videos, figures) and keys excluded for ``"mlflow"`` are skipped.
    Writes go to the given ``run_id`` through a client, so they do not depend on the active run.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.n_writes = 0

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        now_ms = int(time.time() * 1000)
        metrics = []
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if (
                FORMAT_NAME in excluded
                or isinstance(value, bool)
                or not isinstance(value, Real | np.number)
            ):
                continue
            if not np.isfinite(float(value)):
                continue
            metrics.append(Metric(key=key, value=float(value), timestamp=now_ms, step=int(step)))
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH]
            )
        self.n_writes += 1

    def close(self) -> None:
        return None


def make_sb3_logger(
    run_id: str, stdout: bool = False, client: MlflowClient | None = None
) -> Logger:
    """An SB3 ``Logger`` writing to MLflow (and to stdout as SB3's table when ``stdout``)."""
    formats: list[KVWriter] = [MLflowKVWriter(run_id, client)]
    if stdout:
        formats.append(make_output_format("stdout", ""))  # type: ignore[arg-type]
    return Logger(folder=None, output_formats=formats)


def log_metrics(
    run_id: str, metrics: Mapping[str, float], step: int, client: MlflowClient | None = None
) -> None:
    """Log finite metrics at ``step`` in one batch (NaN/inf dropped: MLflow rejects or mis-plots them)."""
    now_ms = int(time.time() * 1000)
    batch = [
        Metric(key=k, value=float(v), timestamp=now_ms, step=int(step))
        for k, v in metrics.items()
        if np.isfinite(float(v))
    ]
    if batch:
        (client or MlflowClient()).log_batch(run_id, metrics=batch)
