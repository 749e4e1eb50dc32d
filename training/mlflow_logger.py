"""Everything training sends to MLflow that is not a plain log call.

- :class:`MLflowKVWriter`: an SB3 ``KVWriter`` that forwards each logger dump (``train/loss``,
  ``rollout/ep_rew_mean``, ``time/fps``, ...) to the run as metrics at the current timestep, as
  they are produced (SB3 has no MLflow output of its own).
- :class:`SB3PyfuncModel` and :func:`log_policy_model`: the trained policy as an MLflow pyfunc
  model (SB3 zip + VecNormalize statistics as artifacts) registered in the Model Registry, so
  ``mlflow.pyfunc.load_model("models:/defialloc-ppo@candidate").predict(raw_obs)`` returns actions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
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


class SB3PyfuncModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw observations ``(B, obs_dim)`` float32 -> deterministic actions ``(B, action_dim)``.

    Actions are in the env's Box ``[-1, 1]``; ``envs.actions.actions_to_weights`` maps them to
    target weights (cash last).
    """

    def __init__(self, algo: str) -> None:
        self.algo = algo
        self._policy = None

    def load_context(self, context: Any) -> None:
        from agents.sb3 import SB3Policy

        artifacts = context.artifacts
        self._policy = SB3Policy.load(
            self.algo,
            artifacts["model"],
            artifacts.get("vecnormalize"),
            name=self.algo,
            device="cpu",
        )

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            (model_input,) = model_input.values()
        obs = np.asarray(model_input, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
        return self._policy.act(obs).astype(np.float32)


def policy_signature(obs_dim: int, action_dim: int) -> ModelSignature:
    """Tensor signature ``(-1, obs_dim) float32 -> (-1, action_dim) float32``."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, obs_dim))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, action_dim))]),
    )


def _pip_requirements() -> list[str]:
    """Pinned requirements of the served model (given explicitly: inference would reload the model)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("stable-baselines3", "torch", "numpy", "gymnasium", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_policy_model(
    algo: str,
    model_path: str | Path,
    vecnormalize_path: str | Path | None,
    obs_dim: int,
    action_dim: int,
    registered_name: str | None,
    alias: str | None = None,
    name: str = "policy",
) -> ModelVersion | None:
    """Log the policy as a pyfunc model in the active run; register it (and set ``alias``) if named.

    Returns the new registry version (None when ``registered_name`` is None).
    """
    artifacts = {"model": str(model_path)}
    if vecnormalize_path is not None:
        artifacts["vecnormalize"] = str(vecnormalize_path)
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    # it warns that the wrapper object is cloudpickled: it is ours and holds no state but `algo`
    pyfunc_logger.setLevel(logging.ERROR)
    try:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=SB3PyfuncModel(algo),
            artifacts=artifacts,
            signature=policy_signature(obs_dim, action_dim),
            input_example=np.zeros((1, obs_dim), dtype=np.float32),
            pip_requirements=_pip_requirements(),
        )
    finally:
        pyfunc_logger.setLevel(level)
    if registered_name is None:
        return None
    version = mlflow.register_model(info.model_uri, registered_name)
    if alias:
        MlflowClient().set_registered_model_alias(registered_name, alias, version.version)
    return version
